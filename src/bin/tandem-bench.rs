//! `tandem-bench`: measures what users feel, printing one JSON line per scenario on
//! stdout (progress on stderr). Sets up everything itself — private buses, the daemon,
//! temporary directories on the normal disk — and cleans up after.
//!
//! Scenarios so far: `store` (a big history: start-up, list, page, search, size, memory).
//! The daemon measured is this same binary re-executed in daemon mode (`--daemon`), which
//! runs exactly `tandem::daemon::run`, like `tandemd`: so one `cargo run --bin
//! tandem-bench` builds all that a run needs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use tandem::api::MessagesProxy;
use tandem::config::Config;
use tandem::devbus::PrivateBus;
use tandem::store::{self, Store};

/// Benchmarks of the Tandem daemon; one JSON line per scenario on stdout.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    scenario: Option<Scenario>,
    /// Small sizes, for a CI smoke run (figures are not meaningful)
    #[arg(long, global = true)]
    quick: bool,
    /// Where to put temporary files [default: /var/tmp, on disk rather than tmpfs]
    #[arg(long, global = true, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Internal: run as the daemon on this database (used by the scenarios)
    #[arg(long, hide = true, value_name = "DB")]
    daemon: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    /// A store of N messages over C conversations: daemon start-up, ListConversations,
    /// GetMessages and Search times over D-Bus, bytes per message, RSS
    Store {
        /// Messages in the store [default: 1000000; --quick: 20000]
        #[arg(long)]
        messages: Option<u64>,
        /// Conversations [default: 5000; --quick: 200]
        #[arg(long)]
        conversations: Option<u32>,
        /// Calls of each kind to take the median of
        #[arg(long, default_value_t = 100)]
        calls: usize,
    },
}

/// A temporary directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(parent: Option<&Path>) -> Result<TempDir> {
        let parent = parent.map_or_else(|| PathBuf::from("/var/tmp"), Path::to_owned);
        let dir = parent.join(format!("tandem-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running daemon (this binary in daemon mode), killed on drop.
struct Daemon {
    child: Child,
}

impl Daemon {
    /// Starts it and returns once it owns its name, with the time that took.
    async fn start(
        session: &PrivateBus,
        system: &PrivateBus,
        dir: &Path,
        db: &Path,
    ) -> Result<(Daemon, Duration)> {
        let conn = zbus::connection::Builder::address(session.address())
            .build()
            .await?;
        let dbus = zbus::fdo::DBusProxy::new(&conn).await?;
        let mut owner_changes = dbus
            .receive_name_owner_changed_with_args(&[(0, "org.tandem.Messages1")])
            .await?;
        let started = Instant::now();
        let child = Command::new(std::env::current_exe()?)
            .arg("--daemon")
            .arg(db)
            .env("DBUS_SESSION_BUS_ADDRESS", session.address())
            .env("DBUS_SYSTEM_BUS_ADDRESS", system.address())
            .env("XDG_CONFIG_HOME", dir.join("config"))
            .env("XDG_DATA_HOME", dir.join("data"))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let daemon = Daemon { child };
        tokio::time::timeout(Duration::from_secs(60), owner_changes.next())
            .await
            .context("the daemon did not take its name within 60 s")?;
        Ok((daemon, started.elapsed()))
    }

    /// Resident memory, from /proc.
    fn rss_mib(&self) -> Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .context("no VmRSS")?;
        Ok(kib / 1024.0)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A small deterministic generator (xorshift64*), enough to pick peers.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n.max(1)
    }
}

fn median_ms(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    samples
        .get(samples.len() / 2)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

async fn time_calls<F, Fut, T>(calls: usize, mut call: F) -> Result<f64>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    // A few calls first, so that the first-call costs (match rules, caches) are not
    // counted as typical.
    for i in 0..3 {
        call(i).await?;
    }
    let mut samples = Vec::with_capacity(calls);
    for i in 0..calls {
        let t = Instant::now();
        call(i).await?;
        samples.push(t.elapsed());
    }
    Ok(median_ms(samples))
}

async fn store_scenario(
    args: &Args,
    messages: u64,
    conversations: u32,
    calls: usize,
) -> Result<String> {
    let dir = TempDir::new(args.dir.as_deref())?;
    let db = dir.0.join("messages.db");
    eprintln!(
        "building a store of {messages} messages over {conversations} conversations in {}",
        dir.0.display()
    );
    let t = Instant::now();
    {
        let mut store = Store::open(&db)?;
        store::fill_synthetic(&mut store, messages, conversations, 1)?;
    }
    let build_s = t.elapsed().as_secs_f64();
    let db_bytes = std::fs::metadata(&db)?.len();
    eprintln!("built in {build_s:.1} s, {db_bytes} bytes; starting the daemon");

    let session = PrivateBus::start()?;
    let system = PrivateBus::start()?;
    let (daemon, startup) = Daemon::start(&session, &system, &dir.0, &db).await?;
    let rss_start = daemon.rss_mib()?;
    let conn = zbus::connection::Builder::address(session.address())
        .build()
        .await?;
    let api = MessagesProxy::new(&conn).await?;

    let peers: Vec<String> = api
        .list_conversations(0, 1000)
        .await?
        .into_iter()
        .map(|c| c.peer)
        .collect();
    if peers.is_empty() {
        bail!("the store has no conversations");
    }
    let list_ms = time_calls(calls, |_| async {
        Ok(api.list_conversations(0, 50).await?)
    })
    .await?;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let picks: Vec<usize> = (0..calls + 3).map(|_| rng.below(peers.len())).collect();
    let page_ms = time_calls(calls, |i| {
        let peer = peers[picks[i]].clone();
        let api = &api;
        async move { Ok(api.get_messages(&peer, "", 50).await?) }
    })
    .await?;
    let search_ms = time_calls(calls, |_| async { Ok(api.search("tomorrow", 50).await?) }).await?;
    let rss = daemon.rss_mib()?;
    drop(daemon);

    Ok(format!(
        concat!(
            "{{\"scenario\":\"store\",\"messages\":{},\"conversations\":{},\"build_s\":{:.1},",
            "\"startup_ms\":{:.1},\"list_conversations_ms\":{:.3},\"get_messages_ms\":{:.3},",
            "\"search_ms\":{:.3},\"bytes_per_message\":{:.0},\"rss_start_mib\":{:.1},\"rss_mib\":{:.1}}}"
        ),
        messages,
        conversations,
        build_s,
        startup.as_secs_f64() * 1000.0,
        list_ms,
        page_ms,
        search_ms,
        db_bytes as f64 / messages.max(1) as f64,
        rss_start,
        rss,
    ))
}

/// Daemon mode: exactly what `tandemd --db DB` does, with the default configuration.
fn run_daemon(db: &Path) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tandem-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = Config {
        notifications: tandem::config::NotificationsConfig { enabled: false },
        ..Config::default()
    };
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    match runtime.block_on(tandem::daemon::run(
        config,
        db,
        Default::default(),
        shutdown,
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tandem-bench daemon: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(db) = &args.daemon {
        return run_daemon(db);
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tandem-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    let scenarios: Vec<&Scenario> = match &args.scenario {
        Some(s) => vec![s],
        None if args.quick => Vec::new(),
        None => {
            eprintln!("tandem-bench: name a scenario (store), or --quick for all of them small");
            return ExitCode::from(2);
        }
    };
    let quick_store = Scenario::Store {
        messages: None,
        conversations: None,
        calls: 100,
    };
    let scenarios = if scenarios.is_empty() {
        vec![&quick_store]
    } else {
        scenarios
    };
    for scenario in scenarios {
        let result = match scenario {
            Scenario::Store {
                messages,
                conversations,
                calls,
            } => {
                let messages = messages.unwrap_or(if args.quick { 20_000 } else { 1_000_000 });
                let conversations = conversations.unwrap_or(if args.quick { 200 } else { 5_000 });
                runtime.block_on(store_scenario(&args, messages, conversations, *calls))
            }
        };
        match result {
            Ok(line) => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
            }
            Err(e) => {
                eprintln!("tandem-bench: {e:#}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}
