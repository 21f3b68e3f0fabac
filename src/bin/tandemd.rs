//! `tandemd`: the Tandem messaging daemon (a systemd user service).
//! Parses the command line, sets up logging, loads the configuration and runs
//! [`tandem::daemon::run`] until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory as _, Parser};
use tandem::config::{self, Config};
use tracing::error;

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
    /// Print the man page tandemd(1) (roff) and exit; data/install.sh installs it.
    #[arg(long, hide = true, exclusive = true)]
    man: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.man {
        return print_man();
    }
    let level = tandem::logging::verbosity(args.verbose);
    tandem::logging::init(&format!("warn,tandem={level},tandemd={level}"));
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

/// Writes tandemd(1) on stdout.
fn print_man() -> ExitCode {
    let mut out = std::io::stdout().lock();
    match tandem::manpage::write(Args::command(), &tandem::manpage::TANDEMD, &mut out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tandemd: cannot write the man page: {e}");
            ExitCode::FAILURE
        }
    }
}
