//! `ds-floor`: the bare websocket reader `ds-load --floor` runs in data-storage's place to
//! measure the floor of a load run (see `ds_tests::load::floor`). Started like data-storage,
//! `ds-floor --config <exchanges.toml> run`; reads and drops frames until SIGTERM or Ctrl-C,
//! then prints `ds-floor: connections=N frames=F bytes=B` and exits 0.

use std::path::PathBuf;
use std::process::ExitCode;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match args.as_slice() {
        [flag, path, run] if flag == "--config" && run == "run" => PathBuf::from(path),
        _ => {
            eprintln!("usage: ds-floor --config <exchanges.toml> run");
            return ExitCode::from(2);
        }
    };
    let urls = match ds_tests::load::floor::connection_urls(&config) {
        Ok(urls) => urls,
        Err(e) => {
            eprintln!("ds-floor: {e}");
            return ExitCode::from(2);
        }
    };
    // The same runtime as data-storage's (`host/src/main.rs`): multi-thread, one worker per core.
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ds-floor: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            let _ = stop_tx.send(true);
        });
        ds_tests::load::floor::read_until(urls, stop_rx).await
    });
    match outcome {
        Ok(c) => {
            println!(
                "ds-floor: connections={} frames={} bytes={}",
                c.connections, c.frames, c.bytes
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ds-floor: {e}");
            ExitCode::FAILURE
        }
    }
}
