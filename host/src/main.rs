//! `data-storage`: see the README for the configuration and the schema.

use std::process::ExitCode;

use clap::Parser;

use data_storage::cli::{self, Cli, Command, EXIT_CONFIG};
use data_storage::{config, logging, plugins, run};

fn main() -> ExitCode {
    plugins::link();
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Plugins => cli::plugins(),
        Command::Replay { feed, input, sink, stdout, snapshot } => data_storage::replay::replay(&cli.config, &data_storage::replay::ReplayArgs { feed, input, sink, stdout, snapshots: snapshot }),
        Command::Check { online } => cli::check_sharded(&cli.config, online, cli.shard),
        Command::Run => {
            let config = match config::load_sharded(&cli.config, cli.shard) {
                Ok(c) => c,
                Err(errors) => {
                    cli::report_config_errors(&cli.config, &errors);
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let _log_guard = logging::init(&config.service);
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let report = runtime.block_on(async {
                tracing::info!(config = %config.path.display(), feeds = config.feeds.len(), sinks = config.sinks.len(), "data-storage starting");
                let (path, shard) = (cli.config.clone(), cli.shard);
                let reload = run::Reload { requests: reload_signal(), load: Box::new(move || config::load_sharded(&path, shard)), outcomes: None };
                run::run_with_reload(config, stop_signal(), Some(reload)).await
            });
            if report.failed {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
    }
}

/// A message per SIGHUP: reload exchanges.toml (see the README, "Reloading").
fn reload_signal() -> tokio::sync::mpsc::Receiver<()> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        tracing::info!("SIGHUP received: reloading the configuration");
                        // A full channel means a reload is already pending: it reads the file anew.
                        let _ = tx.try_send(());
                    }
                });
            }
            Err(e) => tracing::error!(error = %e, "cannot listen for SIGHUP; reload by restarting"),
        }
    }
    #[cfg(not(unix))]
    drop(tx);
    rx
}

/// Resolves on SIGINT or SIGTERM.
async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C will stop");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
            _ = term.recv() => tracing::info!("SIGTERM received"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
