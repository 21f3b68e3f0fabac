//! bench::store: the `store` scenario: a store of N messages over C conversations,
//! the daemon started on it, and the times of its read calls over D-Bus.
//!
//! Must not: write to the store once the daemon runs (the calls measured are reads).

use std::time::{Duration, Instant};

use serde::Serialize;

use super::proc::Daemon;
use super::{BenchError, Setup, TempDir, median, ms, round3};
use crate::api::MessagesProxy;
use crate::devbus::PrivateBus;
use crate::store::Store;

/// What to build and how often to call.
#[derive(Debug, Clone)]
pub(super) struct StoreParams {
    pub messages: u64,
    pub conversations: u32,
    /// Calls of each kind to take the median of.
    pub calls: usize,
}

impl StoreParams {
    /// The sizes, or CI's small ones.
    pub(super) fn new(quick: bool) -> StoreParams {
        StoreParams {
            messages: if quick { 20_000 } else { 1_000_000 },
            conversations: if quick { 200 } else { 5_000 },
            calls: 100,
        }
    }
}

/// The figures of one run; field order is the JSON line's.
#[derive(Debug, Clone, Serialize)]
pub(super) struct StoreFigures {
    pub scenario: &'static str,
    pub messages: u64,
    pub conversations: u32,
    pub build_s: f64,
    /// From spawning the daemon to its bus name being owned.
    pub startup_ms: f64,
    pub list_conversations_ms: f64,
    pub get_messages_ms: f64,
    pub search_ms: f64,
    pub bytes_per_message: f64,
    pub rss_start_mib: f64,
    /// After the calls.
    pub rss_mib: f64,
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

/// The median time of `calls` calls, after three unmeasured ones (so that first-call
/// costs, match rules and caches, are not counted as typical).
async fn time_calls<F, Fut, T>(calls: usize, mut call: F) -> Result<Duration, BenchError>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<T, BenchError>>,
{
    for i in 0..3 {
        call(i).await?;
    }
    let mut samples = Vec::with_capacity(calls);
    for i in 0..calls {
        let t = Instant::now();
        call(i + 3).await?;
        samples.push(t.elapsed());
    }
    Ok(median(samples))
}

pub(super) async fn run(setup: &Setup, params: &StoreParams) -> Result<StoreFigures, BenchError> {
    let StoreParams {
        messages,
        conversations,
        calls,
    } = *params;
    let dir = TempDir::new(setup.dir.as_deref(), "store")?;
    let db = dir.path().join("messages.db");
    eprintln!(
        "store: building {messages} messages over {conversations} conversations in {}",
        dir.path().display()
    );
    let t = Instant::now();
    {
        let mut store = Store::open(&db)?;
        super::synthetic::fill(&mut store, messages, conversations, 1)?;
    }
    // The file was just written: flush it to the disk now, so that the kernel's
    // write-back of a quarter gigabyte cannot land in the daemon's start-up (one run saw
    // 465 ms where the others see ~50). The page cache stays warm, as on a phone that
    // opened the store before.
    std::fs::File::open(&db)
        .and_then(|f| f.sync_all())
        .map_err(super::io(format!("cannot flush {}", db.display())))?;
    let build_s = t.elapsed().as_secs_f64();
    let db_bytes = std::fs::metadata(&db)
        .map_err(super::io(format!("cannot stat {}", db.display())))?
        .len();
    eprintln!("store: built in {build_s:.1} s, {db_bytes} bytes; starting the daemon");

    let session = PrivateBus::start()?;
    let system = PrivateBus::start()?;
    let config = "[notifications]\nenabled = false\n";
    let (daemon, startup) = Daemon::start(setup, &session, &system, dir.path(), config).await?;
    let rss_start = daemon.rss_mib()?;
    let conn = session.connect().await?;
    let api = MessagesProxy::new(&conn).await?;

    let peers: Vec<String> = api
        .list_conversations(0, 1000)
        .await?
        .into_iter()
        .map(|c| c.peer)
        .collect();
    if peers.is_empty() {
        return Err(BenchError::Unexpected(
            "the store has no conversations".into(),
        ));
    }
    let list = time_calls(calls, |_| async {
        Ok(api.list_conversations(0, 50).await?)
    })
    .await?;
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let picks: Vec<usize> = (0..calls + 3).map(|_| rng.below(peers.len())).collect();
    let page = time_calls(calls, |i| {
        let peer = peers[picks[i]].clone();
        let api = &api;
        async move { Ok(api.get_messages(&peer, "", 50).await?) }
    })
    .await?;
    let search = time_calls(calls, |_| async { Ok(api.search("tomorrow", 50).await?) }).await?;
    let rss = daemon.rss_mib()?;
    drop(daemon);

    Ok(StoreFigures {
        scenario: "store",
        messages,
        conversations,
        build_s: (build_s * 10.0).round() / 10.0,
        startup_ms: ms(startup),
        list_conversations_ms: ms(list),
        get_messages_ms: ms(page),
        search_ms: ms(search),
        bytes_per_message: (db_bytes as f64 / messages.max(1) as f64).round(),
        rss_start_mib: round3(rss_start),
        rss_mib: round3(rss),
    })
}
