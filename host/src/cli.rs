//! The command line: `run` (default), `check [--online]`, `plugins`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use ds_api::ConfigError;

use crate::{config, online_check};

/// Exit code for an invalid configuration (contract 7).
pub const EXIT_CONFIG: u8 = 2;

#[derive(Debug, Parser)]
#[command(name = "data-storage", version, about = "Stores crypto exchange order books in InfluxDB (or line-protocol files).")]
pub struct Cli {
    /// The configuration file.
    #[arg(long, short, global = true, default_value = "exchanges.toml")]
    pub config: PathBuf,
    /// Run only shard i of n of every feed's symbols (`0/2`, `1/2`): n instances with the same
    /// config cover every symbol once. Overrides `[service] shard`.
    #[arg(long, global = true, value_name = "i/n")]
    pub shard: Option<crate::shard::Shard>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the feeds (the default).
    Run,
    /// Validate the configuration without connecting anywhere; exit code 2 when invalid.
    Check {
        /// Also ask every exchange whether the configured symbols exist and trade, and reach
        /// every sink (InfluxDB ping and an empty write: database, credentials); exit code 2
        /// on any problem.
        #[arg(long)]
        online: bool,
    },
    /// List the registered connector and sink plugins.
    Plugins,
    /// Run a feed's parser and sequence checks over a capture or plain JSONL file of frames.
    Replay {
        /// The `[[feed]]` whose connector and options to use.
        #[arg(long)]
        feed: String,
        /// A capture file (`capture_dir`, gzip or plain) or one frame per line.
        #[arg(long)]
        input: PathBuf,
        /// A `[[sink]]` name, or `null` to store nothing (default: the feed's sink).
        #[arg(long)]
        sink: Option<String>,
        /// Write line protocol to stdout instead of a sink.
        #[arg(long)]
        stdout: bool,
        /// `SYMBOL=FILE`: a REST depth snapshot body for a plain file (Binance); repeatable.
        #[arg(long, value_name = "SYMBOL=FILE")]
        snapshot: Vec<String>,
    },
}

/// Prints every config error, one per line, to stderr.
pub fn report_config_errors(path: &std::path::Path, errors: &[ConfigError]) {
    eprintln!("error: {} has {} problem(s):", path.display(), errors.len());
    for e in errors {
        eprintln!("  - {e}");
    }
}

pub fn plugins() -> ExitCode {
    println!("connectors:");
    for p in ds_api::plugin::connectors() {
        println!("  {:<24} {:<22} {}", p.name, p.crate_name, p.description);
    }
    println!("sinks:");
    for p in ds_api::plugin::sinks() {
        println!("  {:<24} {:<22} {}", p.name, p.crate_name, p.description);
    }
    ExitCode::SUCCESS
}

pub fn check(path: &std::path::Path, online: bool) -> ExitCode {
    check_sharded(path, online, None)
}

/// `check` with `--shard`: also prints this instance's part of the symbols.
pub fn check_sharded(path: &std::path::Path, online: bool, shard: Option<crate::shard::Shard>) -> ExitCode {
    match config::load_sharded(path, shard) {
        Ok(c) => {
            println!("{}: valid: {} feed(s) enabled, {} disabled, {} sink(s) in use", path.display(), c.feeds.len(), c.disabled_feeds.len(), c.sinks.len());
            for f in &c.feeds {
                println!("  feed {:<24} {:<24} -> sink {}", f.name, f.connector, f.sink);
            }
            if let Some(plan) = &c.shard {
                println!("{plan}");
            }
            if !online {
                return ExitCode::SUCCESS;
            }
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let problems = runtime.block_on(online_check::run(c));
            if problems.is_empty() {
                println!("online: every check passed");
                ExitCode::SUCCESS
            } else {
                eprintln!("error: {}: the online check found {} problem(s):", path.display(), problems.len());
                for p in &problems {
                    eprintln!("  - {p}");
                }
                ExitCode::from(EXIT_CONFIG)
            }
        }
        Err(errors) => {
            report_config_errors(path, &errors);
            ExitCode::from(EXIT_CONFIG)
        }
    }
}
