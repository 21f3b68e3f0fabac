//! Logging set-up, one for every binary: `RUST_LOG` when set, else the binary's default
//! filter; to the journal with structured fields when started by systemd (it sets
//! `JOURNAL_STREAM`) and the journal answers, else to stderr (coloured only on a
//! terminal).

use std::io::IsTerminal as _;

use tracing_journald::{Priority, PriorityMappings};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::prelude::*;

/// The level of the usual `-v` count: none info, `-v` debug, `-vv` and more trace.
pub fn verbosity(count: u8) -> &'static str {
    match count {
        0 => "info",
        1 => "debug",
        _ => "trace",
    }
}

/// The journal's priority for each level: INFO is informational (6), not tracing-journald's
/// default of notice (5), which `journalctl -p notice` and the desktop's log viewers show
/// as something to look at; DEBUG and TRACE are debug (7).
fn journal_priorities() -> PriorityMappings {
    PriorityMappings {
        info: Priority::Informational,
        debug: Priority::Debug,
        trace: Priority::Debug,
        ..PriorityMappings::new()
    }
}

/// Installs the global subscriber. `default_filter` is an `EnvFilter` directive
/// ("info", "warn,tandem=debug") used when `RUST_LOG` is unset or invalid.
pub fn init(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let journald = std::env::var_os("JOURNAL_STREAM")
        .and_then(|_| tracing_journald::layer().ok())
        .map(|layer| layer.with_priority_mappings(journal_priorities()));
    let stderr = journald.is_none().then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(journald)
        .with(stderr)
        .init();
}
