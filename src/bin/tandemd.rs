//! `tandemd`: the Tandem messaging daemon (a systemd user service).
//! Parses the command line, sets up logging, loads the configuration and runs
//! [`tandem::daemon::run`] until SIGTERM or SIGINT.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tandem::config::{self, Config};
use tracing::error;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

/// One inbox for SMS and IP messages: serves org.tandem.Messages1 on the session bus.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Configuration file [default: $XDG_CONFIG_HOME/tandem/config.toml]
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Message database [default: $XDG_DATA_HOME/tandem/messages.db]
    #[arg(long, value_name = "PATH")]
    db: Option<PathBuf>,
    /// More log output (-v debug, -vv trace); RUST_LOG overrides
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn init_logging(verbose: u8) {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("warn,tandem={level},tandemd={level}")));
    // Under systemd (JOURNAL_STREAM is set) log to the journal with structured fields.
    let journald = std::env::var_os("JOURNAL_STREAM").and_then(|_| tracing_journald::layer().ok());
    match journald {
        Some(layer) => tracing_subscriber::registry()
            .with(filter)
            .with(layer)
            .init(),
        None => tracing_subscriber::registry()
            .with(filter)
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal()),
            )
            .init(),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    init_logging(args.verbose);
    let (config_path, required) = match args.config {
        Some(path) => (path, true),
        None => (config::default_config_path(), false),
    };
    let config = match Config::load(&config_path, required) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("tandemd: {e}");
            return ExitCode::from(78); // EX_CONFIG
        }
    };
    let db = args.db.unwrap_or_else(config::default_db_path);
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tandemd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(tandem::daemon::run(
        config,
        &db,
        Default::default(),
        tandem::daemon::shutdown_signal(),
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("tandemd: {e}");
            ExitCode::FAILURE
        }
    }
}
