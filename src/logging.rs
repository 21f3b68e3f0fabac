//! Logging set-up, one for every binary: `RUST_LOG` when set, else the binary's default
//! filter; to the journal with structured fields when systemd connected our stderr to it
//! (`JOURNAL_STREAM` names the device and inode of our own fd 2) and the journal answers,
//! else to stderr (coloured only on a terminal).

use std::ffi::OsStr;
use std::fs::File;
use std::io::IsTerminal as _;
use std::os::fd::AsFd as _;
use std::os::unix::fs::MetadataExt as _;

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

/// Whether `journal_stream` (the value of `JOURNAL_STREAM`, "DEVICE:INODE" in decimal)
/// names this process's standard error. systemd.exec(5): a program should log to the
/// journal only then, since the variable is inherited by children (a script run by a
/// service, a terminal opened from a session started by systemd) whose stderr is
/// something else, where their logs would silently go to the journal instead.
fn stderr_is_journal_stream(journal_stream: Option<&OsStr>) -> bool {
    journal_stream
        .and_then(parse_journal_stream)
        .is_some_and(|stream| stderr_identity() == Some(stream))
}

/// `(device, inode)` from "DEVICE:INODE"; `None` for anything else.
fn parse_journal_stream(value: &OsStr) -> Option<(u64, u64)> {
    let (dev, ino) = value.to_str()?.split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// The device and inode of fd 2, as systemd writes them into `JOURNAL_STREAM` (`st_dev`,
/// `st_ino` of `fstat`); `None` when fd 2 is closed or cannot be examined.
fn stderr_identity() -> Option<(u64, u64)> {
    let fd = std::io::stderr().as_fd().try_clone_to_owned().ok()?;
    let meta = File::from(fd).metadata().ok()?;
    Some((meta.dev(), meta.ino()))
}

/// Installs the global subscriber. `default_filter` is an `EnvFilter` directive
/// ("info", "warn,tandem=debug") used when `RUST_LOG` is unset or invalid.
pub fn init(default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let journal_stream = std::env::var_os("JOURNAL_STREAM");
    let journald = stderr_is_journal_stream(journal_stream.as_deref())
        .then(tracing_journald::layer)
        .and_then(Result::ok)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_is_chosen_only_for_our_own_stderr() {
        let (dev, ino) = stderr_identity().expect("the test runner has a stderr");
        let own = format!("{dev}:{ino}");
        assert!(stderr_is_journal_stream(Some(OsStr::new(&own))));
        // What a child of a service inherits: the service's stream, not its own stderr.
        for other in [
            format!("{dev}:{}", ino.wrapping_add(1)),
            format!("{}:{ino}", dev.wrapping_add(1)),
        ] {
            assert!(
                !stderr_is_journal_stream(Some(OsStr::new(&other))),
                "{other}"
            );
        }
        assert!(!stderr_is_journal_stream(None));
    }

    #[test]
    fn journal_stream_values_other_than_device_colon_inode_are_refused() {
        assert_eq!(parse_journal_stream(OsStr::new("8:1234")), Some((8, 1234)));
        for bad in [
            "", "8", "8:", ":1234", "8:12a", "-1:2", "8:1234:5", " 8:1234",
        ] {
            assert_eq!(parse_journal_stream(OsStr::new(bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn stderr_identity_is_fstat_of_fd_2() {
        // Compared with the file fd 2 is as /proc shows it (stat follows the magic link).
        let meta = std::fs::metadata("/proc/self/fd/2").expect("/proc/self/fd/2");
        assert_eq!(stderr_identity(), Some((meta.dev(), meta.ino())));
    }
}
