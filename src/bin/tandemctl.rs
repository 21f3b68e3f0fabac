//! `tandemctl`: the command-line client of tandemd. Parses the command line, runs
//! [`tandem::ctl::run`] on the process's standard streams, and turns its error into
//! `tandemctl: <message>` and the documented exit status (`tandemctl --help`).

use std::io::{self, Write};
use std::process::ExitCode;

use clap::Parser;
use tandem::ctl::{self, Io, cli::Cli};

fn main() -> ExitCode {
    // Usage errors exit with status 2 (clap's own), help and version with 0.
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tandemctl: cannot start the async runtime: {e}");
            return ExitCode::from(ctl::exit::FAILURE);
        }
    };
    let (stdin, stdout, stderr) = (io::stdin(), io::stdout(), io::stderr());
    let (mut stdin, mut out, mut err) = (stdin.lock(), stdout.lock(), stderr.lock());
    let io = Io {
        stdin: &mut stdin,
        out: &mut out,
        err: &mut err,
    };
    let result = runtime.block_on(ctl::run(cli, io));
    let flushed = out.flush();
    match result.and(flushed.map_err(ctl::CtlError::Output)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_closed_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(err, "tandemctl: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
