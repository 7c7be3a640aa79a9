//! `ds-load`: the load rig of issue 8 (see `ds_tests::load` and README "Performance").
//!
//! ```sh
//! cargo build --release -p data-storage -p ds-tests --bin ds-load --bin ds-floor
//! target/release/ds-load --symbols 100 --seconds 30
//! ```

use std::process::ExitCode;

use clap::Parser;
use ds_tests::load::args::LoadArgs;

fn main() -> ExitCode {
    let args = LoadArgs::parse();
    // Two workers: the mock and the endpoint share the machine with the service they measure.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ds-load: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(ds_tests::load::run::run(&args)) {
        Ok(outcome) => {
            eprintln!("{}", outcome.summary.report());
            if let Some(dir) = &outcome.dir {
                eprintln!("ds-load: run directory kept: {}", dir.display());
            }
            println!("{}", outcome.summary.line());
            if outcome.failure.is_some() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("ds-load: {e}");
            ExitCode::from(2)
        }
    }
}
