//! bench: the scenarios of `tandem-bench`, each of which sets up everything it needs
//! (private buses, the simulator, daemons, a relay, temporary directories on the normal
//! disk), measures, cleans up and returns its figures as one serialisable struct (the
//! binary prints it as one JSON line).
//!
//! - [`store`]: a big history: daemon start-up, list, page, search, bytes, memory.
//! - [`sms`]: `sms-latency`: Alice's daemon to Bob's through the simulator's carrier,
//!   next to the floor of the D-Bus round trips an SMS needs.
//! - [`relay`]: idle websocket connections (memory per connection) and message
//!   throughput through the relay server.
//! - [`ip`]: `ip-latency`: the same as `sms-latency` over IP, through a relay.
//! - [`idle`]: a daemon logged in to a relay, following many contacts, with no
//!   traffic: its CPU, wakeups, memory and bytes on the wire per minute.
//! - `proc`: the programs measured, as children: the daemon and the relay server are
//!   this same executable re-run in a hidden mode ([`daemon_mode`], [`relay_server_mode`])
//!   that does exactly what `tandemd` and `tandem-relay` do, so that one
//!   `cargo run --bin tandem-bench` builds everything a run needs.
//!
//! Must not: change what it measures (the daemon and the relay run the library's own
//! `run` functions with their usual settings), touch the machine's real buses or any
//! address but loopback, or leave files behind (every temporary directory and child
//! process is removed or killed on drop, also on failure).

pub mod cli;
mod idle;
mod ip;
mod phones;
mod proc;
mod relay;
mod sms;
mod store;
pub mod synthetic;
mod timed;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

pub use proc::{daemon_mode, relay_server_mode};
pub use timed::LatencyParams;

/// Where a run puts its things and which program it re-runs as daemon or relay.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The `tandem-bench` executable, re-run in its hidden modes.
    pub exe: PathBuf,
    /// Parent of the temporary directory; `None`: `/var/tmp` (a disk, not tmpfs).
    pub dir: Option<PathBuf>,
}

/// Why a scenario or a hidden mode failed.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    PrivateBus(#[from] crate::devbus::BusError),
    #[error("D-Bus: {0}")]
    Bus(#[from] zbus::Error),
    #[error("D-Bus: {0}")]
    Fdo(#[from] zbus::fdo::Error),
    #[error("the daemon answered: {0}")]
    Api(#[from] crate::api::ApiError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("the simulator: {0}")]
    Sim(#[from] crate::mmsim::SimError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Daemon(#[from] crate::daemon::DaemonError),
    #[error(transparent)]
    Relay(#[from] crate::relay::RelayError),
    #[error("websocket: {0}")]
    WebSocket(Box<tokio_tungstenite::tungstenite::Error>),
    #[error("relay frame: {0}")]
    Decode(#[from] crate::relay::protocol::DecodeError),
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: String, after: Duration },
    /// Something answered, but not what the scenario needs.
    #[error("{0}")]
    Unexpected(String),
    #[error("{what} exited ({status}) while {doing}")]
    Exited {
        what: &'static str,
        status: std::process::ExitStatus,
        doing: &'static str,
    },
}

impl From<tokio_tungstenite::tungstenite::Error> for BenchError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        BenchError::WebSocket(Box::new(e))
    }
}

/// Builds an [`BenchError::Io`] naming what failed.
fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
    let what = what.into();
    move |source| BenchError::Io { what, source }
}

/// A temporary directory, removed with everything in it on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(parent: Option<&Path>, name: &str) -> Result<TempDir, BenchError> {
        let parent = parent.map_or_else(|| PathBuf::from("/var/tmp"), Path::to_owned);
        let dir = parent.join(format!("tandem-bench-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(io(format!("cannot create {}", dir.display())))?;
        Ok(TempDir(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `check` every 20 ms until it holds; fails after `timeout`.
async fn until(
    what: &str,
    timeout: Duration,
    check: impl AsyncFn() -> bool,
) -> Result<(), BenchError> {
    let deadline = std::time::Instant::now() + timeout;
    while !check().await {
        if std::time::Instant::now() > deadline {
            return Err(BenchError::Timeout {
                what: what.to_owned(),
                after: timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A duration in milliseconds, rounded to microseconds (for JSON).
fn ms(d: Duration) -> f64 {
    round3(d.as_secs_f64() * 1000.0)
}

/// Rounds to three decimals, so that the JSON shows what is meaningful.
fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// The `p`-th quantile (0 to 1) of sorted samples, by nearest rank; zero when empty.
fn quantile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median of unsorted samples.
fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort_unstable();
    quantile(&samples, 0.5)
}

/// A latency series against its floor, as the two latency scenarios print it.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub floor_ms: f64,
    /// p50 / floor.
    pub ratio: f64,
}

impl Latency {
    fn of(mut samples: Vec<Duration>, floor: Duration) -> Latency {
        samples.sort_unstable();
        let p50 = quantile(&samples, 0.5);
        let ratio = if floor.is_zero() {
            0.0
        } else {
            p50.as_secs_f64() / floor.as_secs_f64()
        };
        Latency {
            p50_ms: ms(p50),
            p99_ms: ms(quantile(&samples, 0.99)),
            max_ms: ms(quantile(&samples, 1.0)),
            floor_ms: ms(floor),
            ratio: round3(ratio),
        }
    }
}

/// A process's resident memory in KiB, from `/proc/PID/status`.
fn rss_kib(pid: u32) -> Result<u64, BenchError> {
    status_kib(pid, "VmRSS:")
}

/// A `kB` field of `/proc/PID/status` (`key` with its colon, e.g. `RssAnon:`).
fn status_kib(pid: u32, key: &str) -> Result<u64, BenchError> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(io(format!("cannot read {path}")))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| BenchError::Unexpected(format!("no {key} in {path}")))
}

/// CPU time (user + system) used so far by each thread of a process, by thread name,
/// from `/proc/PID/task/*/stat`.
fn thread_cpu(pid: u32) -> Result<Vec<(String, Duration)>, BenchError> {
    let dir = format!("/proc/{pid}/task");
    let entries = std::fs::read_dir(&dir).map_err(io(format!("cannot list {dir}")))?;
    let mut threads = Vec::new();
    for entry in entries.flatten() {
        // A thread may end between the listing and the read: skip it.
        if let Ok(stat) = std::fs::read_to_string(entry.path().join("stat"))
            && let Some(cpu) = parse_stat_cpu(&stat)
        {
            let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            threads.push((name.trim().to_owned(), cpu));
        }
    }
    Ok(threads)
}

/// utime + stime of a `/proc/.../stat` line (fields 14 and 15, counted after the
/// parenthesised command name, which may contain spaces).
fn parse_stat_cpu(stat: &str) -> Option<Duration> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = u64::try_from(ticks).ok().filter(|&t| t > 0).unwrap_or(100);
    Some(Duration::from_secs_f64(
        (utime + stime) as f64 / ticks as f64,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_take_the_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&samples, 0.5), Duration::from_millis(50));
        assert_eq!(quantile(&samples, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&samples, 1.0), Duration::from_millis(100));
        assert_eq!(quantile(&samples[..1], 0.99), Duration::from_millis(1));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
        let unsorted = vec![
            Duration::from_millis(3),
            Duration::from_millis(1),
            Duration::from_millis(2),
        ];
        assert_eq!(median(unsorted), Duration::from_millis(2));
    }

    #[test]
    fn stat_lines_give_user_plus_system_time() {
        // A command name with a space and a parenthesis, as /proc allows.
        let stat = "42 (relay hub) x) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 2 0";
        let cpu = parse_stat_cpu(stat).expect("parsed");
        // SAFETY: as in parse_stat_cpu.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        assert!((cpu.as_secs_f64() - 300.0 / ticks).abs() < 1e-9, "{cpu:?}");
        assert_eq!(parse_stat_cpu("garbage"), None);
    }

    #[test]
    fn our_own_process_has_memory_and_threads() {
        let pid = std::process::id();
        assert!(rss_kib(pid).expect("rss") > 0);
        assert!(!thread_cpu(pid).expect("threads").is_empty());
    }
}
