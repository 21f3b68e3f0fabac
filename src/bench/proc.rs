//! bench::proc: the programs a scenario measures, run as children of the benchmark.
//!
//! `tandem-bench` re-runs itself in two hidden modes: `--daemon DB --daemon-config CFG`
//! ([`daemon_mode`], what `tandemd --db DB --config CFG` does) and `--relay-server
//! ADDR_FILE` ([`relay_server_mode`], what `tandem-relay --listen 127.0.0.1:0 --verify
//! none` does without the per-sender quotas, writing the address it got to a file
//! instead of stdout). [`Daemon`] and [`RelayServer`] start those children and kill them
//! on drop.
//!
//! Must not: configure the daemon or the relay otherwise than their binaries would
//! (beyond the file the daemon is given and the relay's quotas), or leave a child
//! running.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::net::TcpListener;

use super::{BenchError, Setup, io, rss_kib};
use crate::config::Config;
use crate::devbus::PrivateBus;
use crate::relay::{RelayConfig, Verify};

/// How long a child may take to get ready.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a child may take to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Daemon mode: exactly `tandemd --db DB --config CONFIG`, until SIGTERM or SIGINT.
pub fn daemon_mode(db: &Path, config: &Path) -> Result<(), BenchError> {
    let config = Config::load(config, true)?;
    let runtime = current_thread()?;
    runtime.block_on(crate::daemon::run(
        config,
        db,
        Default::default(),
        crate::daemon::shutdown_signal(),
    ))?;
    Ok(())
}

/// Relay-server mode: what `tandem-relay --listen 127.0.0.1:0 --verify none --db
/// DIR/relay.db --sender-messages-per-min 0 --sender-bytes-per-min 0` does, with every
/// other setting at its default, until SIGTERM or SIGINT. The database is `relay.db`
/// next to `addr_file`; once it listens, the address is written to `addr_file` (whole,
/// by a rename).
pub fn relay_server_mode(addr_file: &Path) -> Result<(), BenchError> {
    let runtime = current_thread()?;
    runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(io("cannot listen on 127.0.0.1"))?;
        let addr = listener
            .local_addr()
            .map_err(io("the listener has no address"))?;
        let config = RelayConfig {
            db_path: Some(addr_file.with_file_name("relay.db")),
            verify: Verify::None,
            // The scenarios measure what the relay can carry: each of their senders
            // stands for many users, so the per-sender quotas are off.
            sender_messages_per_min: 0,
            sender_bytes_per_min: 0,
            ..RelayConfig::default()
        };
        let partial = addr_file.with_extension("partial");
        std::fs::write(&partial, addr.to_string())
            .map_err(io(format!("cannot write {}", partial.display())))?;
        std::fs::rename(&partial, addr_file)
            .map_err(io(format!("cannot write {}", addr_file.display())))?;
        crate::relay::run(listener, config, crate::daemon::shutdown_signal()).await?;
        Ok(())
    })
}

fn current_thread() -> Result<tokio::runtime::Runtime, BenchError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io("cannot start the async runtime"))
}

/// A child process, stopped (and reaped) on drop.
struct Guard {
    child: Child,
    what: &'static str,
}

impl Guard {
    /// Fails if the child has exited.
    fn check_running(&mut self, doing: &'static str) -> Result<(), BenchError> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(BenchError::Exited {
                what: self.what,
                status,
                doing,
            }),
            Ok(None) => Ok(()),
            Err(e) => Err(BenchError::Io {
                what: format!("cannot watch {}", self.what),
                source: e,
            }),
        }
    }
}

impl Drop for Guard {
    /// SIGTERM, as systemd stops the real programs, then SIGKILL if it lingers.
    fn drop(&mut self) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill has no memory preconditions; `pid` is our own unreaped child,
            // so it cannot name another process.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + STOP_GRACE;
            while Instant::now() < deadline {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running daemon (this executable in daemon mode), killed on drop.
pub(super) struct Daemon {
    guard: Guard,
}

impl Daemon {
    /// Starts a daemon on the given buses with its database and configuration file in
    /// `dir` (`messages.db`, which may exist already, and `config.toml`, written from
    /// `config`), and returns once it owns its bus name, with the time from spawning to
    /// that.
    pub(super) async fn start(
        setup: &Setup,
        session: &PrivateBus,
        system: &PrivateBus,
        dir: &Path,
        config: &str,
    ) -> Result<(Daemon, Duration), BenchError> {
        std::fs::create_dir_all(dir).map_err(io(format!("cannot create {}", dir.display())))?;
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, config)
            .map_err(io(format!("cannot write {}", config_path.display())))?;
        let db = dir.join("messages.db");
        let conn = session.connect().await?;
        let dbus = zbus::fdo::DBusProxy::new(&conn).await?;
        let mut owner_changes = dbus
            .receive_name_owner_changed_with_args(&[(0, "org.tandem.Messages1")])
            .await?;
        let started = Instant::now();
        let child = Command::new(&setup.exe)
            .arg("--daemon")
            .arg(&db)
            .arg("--daemon-config")
            .arg(&config_path)
            .env("DBUS_SESSION_BUS_ADDRESS", session.address())
            .env("DBUS_SYSTEM_BUS_ADDRESS", system.address())
            .env("XDG_CONFIG_HOME", dir.join("config"))
            .env("XDG_DATA_HOME", dir.join("data"))
            .env_remove("JOURNAL_STREAM")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(io("cannot start the daemon"))?;
        let mut guard = Guard {
            child,
            what: "the daemon",
        };
        let deadline = started + START_TIMEOUT;
        loop {
            let tick = tokio::time::sleep(Duration::from_millis(50));
            tokio::select! {
                _ = owner_changes.next() => break,
                () = tick => {
                    guard.check_running("starting")?;
                    if Instant::now() > deadline {
                        return Err(BenchError::Timeout {
                            what: "the daemon to own org.tandem.Messages1".into(),
                            after: START_TIMEOUT,
                        });
                    }
                }
            }
        }
        Ok((Daemon { guard }, started.elapsed()))
    }

    pub(super) fn pid(&self) -> u32 {
        self.guard.child.id()
    }

    /// Resident memory in MiB.
    pub(super) fn rss_mib(&self) -> Result<f64, BenchError> {
        Ok(rss_kib(self.guard.child.id())? as f64 / 1024.0)
    }
}

/// A running relay server (this executable in relay-server mode), killed on drop.
pub(super) struct RelayServer {
    guard: Guard,
    pub addr: String,
}

impl RelayServer {
    /// Starts it with its database, address file and log (its stderr) in `dir`, and
    /// returns once it listens.
    pub(super) async fn start(setup: &Setup, dir: &Path) -> Result<RelayServer, BenchError> {
        let addr_file: PathBuf = dir.join("relay.addr");
        let log_path = dir.join("relay.log");
        let log = std::fs::File::create(&log_path)
            .map_err(io(format!("cannot create {}", log_path.display())))?;
        let child = Command::new(&setup.exe)
            .arg("--relay-server")
            .arg(&addr_file)
            .env_remove("JOURNAL_STREAM")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(io("cannot start the relay server"))?;
        let mut guard = Guard {
            child,
            what: "the relay server",
        };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(addr) = std::fs::read_to_string(&addr_file) {
                return Ok(RelayServer { guard, addr });
            }
            guard.check_running("starting")?;
            if Instant::now() > deadline {
                return Err(BenchError::Timeout {
                    what: "the relay server to listen".into(),
                    after: START_TIMEOUT,
                });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(super) fn pid(&self) -> u32 {
        self.guard.child.id()
    }

    /// Fails if it has exited.
    pub(super) fn check_running(&mut self, doing: &'static str) -> Result<(), BenchError> {
        self.guard.check_running(doing)
    }
}
