//! `tandem-demo`: two simulated phones texting each other, with no phone and none of
//! your buses involved: parses the command line, sets up logging and runs
//! [`tandem::demo::run`] (what it plays is described there).

use std::process::ExitCode;

use clap::Parser;

/// Two simulated phones texting each other through Tandem, on private buses.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Play the script, then stop (instead of staying up until Ctrl-C)
    #[arg(long)]
    exit: bool,
    /// Show the daemons' logs (-v info, -vv debug)
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let level = match args.verbose {
        0 => "error",
        1 => "info",
        _ => "debug",
    };
    tandem::logging::init(&format!("warn,tandem={level}"));
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tandem-demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(tandem::demo::run(!args.exit)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tandem-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}
