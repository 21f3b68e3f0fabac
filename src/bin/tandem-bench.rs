//! `tandem-bench`: measures what users feel, printing one JSON line per scenario on
//! stdout (progress on stderr). A thin binary: its command line is
//! [`tandem::bench::cli`], and the scenarios of [`tandem::bench`] set up everything
//! themselves (private buses, simulator, daemons, relay, temporary directories on the
//! normal disk) and clean up after.
//!
//! Scenarios: `store`, `sms-latency`, `relay`, `ip-latency`, `idle`; `--quick` runs each
//! of them small (CI's smoke test). Hidden modes: `--daemon DB --daemon-config CFG` runs exactly what
//! `tandemd --db DB --config CFG` runs, and `--relay-server ADDR_FILE` what `tandem-relay`
//! runs; the scenarios re-run this executable in them, so that one `cargo run --bin
//! tandem-bench` builds everything a run needs.
//!
//! ```sh
//! cargo build --release --bin tandem-bench
//! target/release/tandem-bench relay          # or: store, sms-latency, ip-latency, idle
//! target/release/tandem-bench --quick        # every scenario, small
//! ```

use std::process::ExitCode;

use clap::Parser;
use tandem::bench::cli::{self, Args};

fn main() -> ExitCode {
    cli::main(Args::parse())
}
