//! bench::relay: the `relay` scenario. The relay server runs as a child (this executable
//! in relay-server mode, `--verify none`, its database on disk); the clients are raw
//! websocket clients in this process, one task each.
//!
//! 1. K clients say `hello`, `register` and `login`, then idle (reading, so that they
//!    answer the relay's pings): the relay's resident memory with them, minus its
//!    memory before the first, over K, is the cost of one idle connection.
//! 2. P pairs of further clients, in each a sender and a receiver, exchange messages as
//!    fast as the relay's `ack`s allow (the sender keeps W `send`s in flight, the
//!    receiver acks every `deliver`), for S seconds, while the K idle clients stay
//!    connected: deliveries per second counted at the receivers, and the time from
//!    `send` to `deliver`.
//!
//! Must not: speak anything but the protocol's frames to the relay, or count a delivery
//! outside the measured window.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::proc::RelayServer;
use super::{BenchError, Setup, TempDir, io, ms, quantile, round3, rss_kib, thread_cpu};
use crate::relay::protocol::{
    ClientFrame, ErrorCode, PROTOCOL_VERSION, ServerFrame, decode_server, encode,
};

pub(super) type Ws = WebSocketStream<TcpStream>;

/// How long one client may take to log in.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// How long senders wait for their last acks after the window.
const DRAIN: Duration = Duration::from_secs(10);

/// Time for the relay's memory to settle before it is read.
const SETTLE: Duration = Duration::from_secs(1);

/// File descriptors kept free beyond the connections.
const FD_SPARE: u64 = 256;

/// The sizes of one run.
#[derive(Debug, Clone)]
pub(super) struct RelayParams {
    /// Idle logged-in clients (K).
    pub clients: usize,
    /// Pairs exchanging messages (P).
    pub pairs: usize,
    /// `send`s each sender keeps in flight (W).
    pub window: usize,
    /// Length of the exchange (S).
    pub seconds: f64,
    /// Clients logging in at the same time.
    pub concurrency: usize,
}

impl RelayParams {
    pub(super) fn new(quick: bool) -> RelayParams {
        RelayParams {
            clients: if quick { 200 } else { 10_000 },
            pairs: if quick { 5 } else { 50 },
            window: 32,
            seconds: if quick { 1.0 } else { 10.0 },
            concurrency: 64,
        }
    }
}

/// The figures of one run; field order is the JSON line's.
#[derive(Debug, Clone, Serialize)]
pub(super) struct RelayFigures {
    pub scenario: &'static str,
    /// Idle clients actually connected (fewer than asked if the fd limit is too low).
    pub clients: usize,
    pub rss_base_mib: f64,
    pub rss_idle_mib: f64,
    pub kib_per_connection: f64,
    pub pairs: usize,
    pub window: usize,
    pub seconds: f64,
    /// Deliveries counted at the receivers within the window.
    pub messages: u64,
    pub messages_per_s: f64,
    /// `send` to `deliver` at the receiver.
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// `send`s the relay refused with `queue-full` (the receivers fell behind).
    pub refused: u64,
    /// CPU used during the exchange, in % of one core.
    pub relay_cpu_pct: f64,
    pub relay_hub_cpu_pct: f64,
    pub client_cpu_pct: f64,
    /// Median of a 4 KiB write + fsync in the relay's directory, just before the
    /// exchange: the disk's pace in this run (the relay's hub commits once per group of
    /// the requests waiting for it, however many messages that is).
    pub fsync_ms: f64,
    pub fd_limit: u64,
    pub note: String,
}

/// Raises the soft limit of open files towards `wanted` (as far as the hard limit
/// allows); returns the limit in force and what went wrong, if anything.
fn raise_fd_limit(wanted: u64) -> (u64, Option<String>) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own; no other precondition.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        let e = std::io::Error::last_os_error();
        return (0, Some(format!("cannot read the open-file limit: {e}")));
    }
    if limit.rlim_cur >= wanted {
        return (limit.rlim_cur, None);
    }
    let target = wanted.min(limit.rlim_max);
    let raised = libc::rlimit {
        rlim_cur: target,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: setrlimit reads the struct we own; no other precondition.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        let e = std::io::Error::last_os_error();
        let cur = limit.rlim_cur;
        return (
            cur,
            Some(format!(
                "could not raise the open-file limit from {cur} to {target}: {e}"
            )),
        );
    }
    if target < wanted {
        return (
            target,
            Some(format!(
                "the hard open-file limit is {}, below the {wanted} wanted",
                limit.rlim_max
            )),
        );
    }
    (target, None)
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The `n`-th number of a series (`+1555…`, `+1556…`): valid E.164, all distinct.
fn number(series: u32, n: usize) -> String {
    format!("+{series}{n:07}")
}

pub(super) async fn write(ws: &mut Ws, frame: &ClientFrame) -> Result<(), BenchError> {
    ws.send(Message::text(encode(frame))).await?;
    Ok(())
}

/// The next frame from the relay (control frames skipped); an `error` is a failure.
pub(super) async fn read(ws: &mut Ws) -> Result<ServerFrame, BenchError> {
    loop {
        match ws.next().await {
            None => return Err(BenchError::Unexpected("the relay hung up".into())),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(Message::Text(text))) => match decode_server(&text)? {
                ServerFrame::Error(e) => {
                    return Err(BenchError::Unexpected(format!(
                        "the relay answered {}: {}",
                        e.code.as_str(),
                        e.message
                    )));
                }
                frame => return Ok(frame),
            },
            Some(Ok(_)) => {}
        }
    }
}

/// Connects, says hello, registers `number` (the relay verifies nothing) and logs in.
/// `lean`: small buffers, each frame written at once (idle clients); otherwise
/// tungstenite's defaults, which let a busy client batch its writes.
pub(super) async fn login(addr: &str, number: &str, lean: bool) -> Result<Ws, BenchError> {
    let steps = async {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(io(format!("cannot connect to the relay at {addr}")))?;
        stream
            .set_nodelay(true)
            .map_err(io("cannot set TCP_NODELAY"))?;
        let config = if lean {
            WebSocketConfig::default()
                .read_buffer_size(4096)
                .write_buffer_size(0)
        } else {
            WebSocketConfig::default()
        };
        let url = format!("ws://{addr}/");
        let (mut ws, _) =
            tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?;
        let hello = ClientFrame::Hello {
            v: PROTOCOL_VERSION,
            client: Some("tandem-bench".into()),
        };
        write(&mut ws, &hello).await?;
        let ServerFrame::Welcome { .. } = read(&mut ws).await? else {
            return Err(BenchError::Unexpected("no welcome after hello".into()));
        };
        let register = ClientFrame::Register {
            number: number.to_owned(),
        };
        write(&mut ws, &register).await?;
        let ServerFrame::Registered { token, .. } = read(&mut ws).await? else {
            return Err(BenchError::Unexpected(format!(
                "{number} was not registered"
            )));
        };
        let login = ClientFrame::Login {
            number: number.to_owned(),
            token,
        };
        write(&mut ws, &login).await?;
        let ServerFrame::LoggedIn { .. } = read(&mut ws).await? else {
            return Err(BenchError::Unexpected(format!("{number} did not log in")));
        };
        Ok(ws)
    };
    tokio::time::timeout(LOGIN_TIMEOUT, steps)
        .await
        .map_err(|_| BenchError::Timeout {
            what: format!("{number} to log in"),
            after: LOGIN_TIMEOUT,
        })?
}

/// An idle client: reads (answering pings) until told to stop or the relay hangs up.
async fn idle(mut ws: Ws, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            message = ws.next() => match message {
                None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            _ = stop.wait_for(|stop| *stop) => return,
        }
    }
}

/// What one client of a pair counted.
#[derive(Debug, Default)]
struct PairStats {
    delivered: u64,
    refused: u64,
    latencies: Vec<Duration>,
}

/// One client of a pair. The sender sends to `peer` with `window` sends in flight
/// from `start` to `end`, then waits for its last acks; the receiver acks every
/// delivery and times those that arrive within the window, until `end`.
struct PairClient {
    ws: Ws,
    index: usize,
    peer: String,
    /// Sends in flight; 0 for the receiver.
    window: usize,
    epoch: Instant,
    start: Instant,
    end: Instant,
    inflight: usize,
    seq: u64,
    stats: PairStats,
}

impl PairClient {
    async fn run(mut self) -> Result<PairStats, BenchError> {
        tokio::time::sleep_until(self.start.into()).await;
        let drain_until = self.end + DRAIN;
        loop {
            let sending = Instant::now() < self.end;
            if sending {
                while self.inflight < self.window {
                    self.send().await?;
                }
            } else if self.inflight == 0 {
                // The receiver stops here too: later deliveries would not count.
                return Ok(self.stats);
            }
            self.ws.flush().await?;
            let deadline = if sending { self.end } else { drain_until };
            let first = match tokio::time::timeout_at(deadline.into(), self.ws.next()).await {
                Ok(message) => message,
                Err(_) if sending => continue,
                Err(_) => {
                    return Err(BenchError::Timeout {
                        what: format!("the relay's last {} acks", self.inflight),
                        after: DRAIN,
                    });
                }
            };
            self.handle(first).await?;
            // Whatever else has arrived, before the next flush: batched acks.
            for _ in 0..256 {
                match self.ws.next().now_or_never() {
                    Some(message) => self.handle(message).await?,
                    None => break,
                }
            }
        }
    }

    async fn send(&mut self) -> Result<(), BenchError> {
        self.seq += 1;
        let sent_us = self.epoch.elapsed().as_micros();
        let frame = ClientFrame::Send {
            id: format!("b{}-{}", self.index, self.seq),
            to: self.peer.clone(),
            text: format!(
                "{sent_us} bench message {}: see you at the station at eight?",
                self.seq
            ),
            ts: now_ms(),
        };
        self.ws.feed(Message::text(encode(&frame))).await?;
        self.inflight += 1;
        Ok(())
    }

    async fn handle(
        &mut self,
        message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) -> Result<(), BenchError> {
        let text = match message {
            None => return Err(BenchError::Unexpected("the relay hung up".into())),
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(Message::Text(text))) => text,
            Some(Ok(_)) => return Ok(()),
        };
        match decode_server(&text)? {
            ServerFrame::Ack { .. } => self.inflight = self.inflight.saturating_sub(1),
            ServerFrame::Deliver { from, id, text, .. } => {
                let now = Instant::now();
                if now >= self.start && now < self.end {
                    self.stats.delivered += 1;
                    let sent_us = text.split(' ').next().and_then(|t| t.parse::<u64>().ok());
                    if let Some(sent_us) = sent_us {
                        let sent = Duration::from_micros(sent_us);
                        let latency = now.duration_since(self.epoch).saturating_sub(sent);
                        self.stats.latencies.push(latency);
                    }
                }
                let ack = ClientFrame::Ack { from, id };
                self.ws.feed(Message::text(encode(&ack))).await?;
            }
            ServerFrame::Error(e) if e.code == ErrorCode::QueueFull && !e.fatal => {
                self.inflight = self.inflight.saturating_sub(1);
                self.stats.refused += 1;
            }
            ServerFrame::Error(e) => {
                return Err(BenchError::Unexpected(format!(
                    "the relay answered {}: {}",
                    e.code.as_str(),
                    e.message
                )));
            }
            _ => {}
        }
        Ok(())
    }
}

/// The median time of `count` 4 KiB writes, each followed by an fsync, in `dir`.
fn fsync_median(dir: &std::path::Path, count: usize) -> Result<Duration, BenchError> {
    use std::io::Write as _;
    let path = dir.join("fsync-probe");
    let mut file =
        std::fs::File::create(&path).map_err(io(format!("cannot create {}", path.display())))?;
    let block = [b'x'; 4096];
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        file.write_all(&block)
            .and_then(|()| file.sync_all())
            .map_err(io(format!("cannot write {}", path.display())))?;
        samples.push(t.elapsed());
    }
    drop(file);
    let _ = std::fs::remove_file(&path);
    Ok(super::median(samples))
}

/// CPU used so far by the relay (all threads, and its hub thread) and by this process.
fn cpu_now(relay_pid: u32) -> Result<(Duration, Duration, Duration), BenchError> {
    let relay = thread_cpu(relay_pid)?;
    let total = relay.iter().map(|(_, cpu)| *cpu).sum();
    let hub = relay
        .iter()
        .filter(|(name, _)| name == "relay-hub")
        .map(|(_, cpu)| *cpu)
        .sum();
    let us = thread_cpu(std::process::id())?
        .iter()
        .map(|(_, cpu)| *cpu)
        .sum();
    Ok((total, hub, us))
}

pub(super) async fn run(setup: &Setup, params: &RelayParams) -> Result<RelayFigures, BenchError> {
    let mut notes = Vec::new();
    let (clients, fd_limit) = clients_within_fd_limit(params, &mut notes);
    let dir = TempDir::new(setup.dir.as_deref(), "relay")?;
    let mut relay = RelayServer::start(setup, dir.path()).await?;
    let addr: Arc<str> = Arc::from(relay.addr.as_str());
    tokio::time::sleep(SETTLE).await;
    let rss_base = rss_kib(relay.pid())?;

    // 1. Idle clients.
    let (stop_tx, mut idle_tasks) = log_in_idle_clients(&addr, clients, params.concurrency).await?;
    tokio::time::sleep(SETTLE).await;
    relay.check_running("the clients logged in")?;
    let rss_idle = rss_kib(relay.pid())?;
    let kib_per_connection = if clients == 0 {
        0.0
    } else {
        (rss_idle as f64 - rss_base as f64) / clients as f64
    };

    // 2. Pairs.
    let seconds = params.seconds.max(0.1);
    let exchange = exchange(&addr, params, seconds, relay.pid(), dir.path()).await?;
    relay.check_running("the pairs exchanged messages")?;
    let _ = stop_tx.send(true);
    while idle_tasks.join_next().await.is_some() {}
    drop(relay);

    let pct =
        |a: Duration, b: Duration| round3(b.saturating_sub(a).as_secs_f64() / seconds * 100.0);
    let (cpu_start, cpu_end) = (exchange.cpu_start, exchange.cpu_end);
    let relay_cpu_pct = pct(cpu_start.0, cpu_end.0);
    let relay_hub_cpu_pct = pct(cpu_start.1, cpu_end.1);
    let client_cpu_pct = pct(cpu_start.2, cpu_end.2);
    notes.push(format!(
        "one machine, {} cores, shared: the relay (its connections on one thread, its SQLite \
         hub on another) and all clients (one thread of this process) compete for them; \
         during the exchange the relay used {relay_cpu_pct}% of a core (hub \
         {relay_hub_cpu_pct}%), the clients {client_cpu_pct}%. The hub runs every request \
         waiting for it in one durable SQLite transaction (WAL, synchronous=FULL) on {} and \
         answers none of them before its COMMIT returned (group commit): an fsync of {:.3} \
         ms now paces the groups, not each message. The {clients} idle clients stay \
         connected during the exchange",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        dir.path().parent().unwrap_or(dir.path()).display(),
        exchange.fsync.as_secs_f64() * 1000.0,
    ));

    let latencies = &exchange.latencies;
    Ok(RelayFigures {
        scenario: "relay",
        clients,
        rss_base_mib: round3(rss_base as f64 / 1024.0),
        rss_idle_mib: round3(rss_idle as f64 / 1024.0),
        kib_per_connection: round3(kib_per_connection),
        pairs: params.pairs,
        window: params.window,
        seconds,
        messages: exchange.delivered,
        messages_per_s: (exchange.delivered as f64 / seconds).round(),
        p50_ms: ms(quantile(latencies, 0.5)),
        p99_ms: ms(quantile(latencies, 0.99)),
        refused: exchange.refused,
        relay_cpu_pct,
        relay_hub_cpu_pct,
        client_cpu_pct,
        fsync_ms: ms(exchange.fsync),
        fd_limit,
        note: notes.join("; "),
    })
}

/// How many idle clients the descriptor limit allows (after raising it as far as it
/// goes), and that limit; a cut is noted.
fn clients_within_fd_limit(params: &RelayParams, notes: &mut Vec<String>) -> (usize, u64) {
    let wanted = (params.clients + 2 * params.pairs) as u64 + FD_SPARE;
    let (fd_limit, fd_problem) = raise_fd_limit(wanted);
    let mut clients = params.clients;
    if let Some(problem) = fd_problem {
        eprintln!("relay: {problem}");
        clients = usize::try_from(fd_limit.saturating_sub(2 * params.pairs as u64 + FD_SPARE))
            .unwrap_or(0)
            .min(params.clients);
        notes.push(format!(
            "{problem}: {clients} idle clients instead of {}",
            params.clients
        ));
    }
    (clients, fd_limit)
}

/// Logs `clients` idle clients in, `concurrency` at a time; they stay connected,
/// answering pings, until the returned sender says stop.
async fn log_in_idle_clients(
    addr: &Arc<str>,
    clients: usize,
    concurrency: usize,
) -> Result<(watch::Sender<bool>, JoinSet<()>), BenchError> {
    eprintln!("relay: {clients} clients log in to {addr}");
    let t = Instant::now();
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<Result<(), BenchError>>();
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for n in 0..clients {
        let permit = gate
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| BenchError::Unexpected("the login gate closed".into()))?;
        let (addr, ready, stop) = (addr.clone(), ready_tx.clone(), stop_rx.clone());
        tasks.spawn(async move {
            let ws = login(&addr, &number(1555, n), true).await;
            drop(permit);
            match ws {
                Ok(ws) => {
                    let _ = ready.send(Ok(()));
                    idle(ws, stop).await;
                }
                Err(e) => {
                    let _ = ready.send(Err(e));
                }
            }
        });
    }
    drop(ready_tx);
    for _ in 0..clients {
        match ready_rx.recv().await {
            Some(Ok(())) => {}
            Some(Err(e)) => return Err(e),
            None => return Err(BenchError::Unexpected("a client task vanished".into())),
        }
    }
    eprintln!(
        "relay: {clients} logged in in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Ok((stop_tx, tasks))
}

/// What the pairs' exchange measured.
struct Exchange {
    delivered: u64,
    refused: u64,
    latencies: Vec<Duration>,
    /// CPU of (relay, its hub, this process) at the start and the end of the window.
    cpu_start: (Duration, Duration, Duration),
    cpu_end: (Duration, Duration, Duration),
    fsync: Duration,
}

/// `params.pairs` senders and receivers exchanging messages for `seconds`.
async fn exchange(
    addr: &str,
    params: &RelayParams,
    seconds: f64,
    relay_pid: u32,
    dir: &std::path::Path,
) -> Result<Exchange, BenchError> {
    eprintln!(
        "relay: {} pairs exchange messages for {seconds} s (window {})",
        params.pairs, params.window
    );
    let mut sockets = Vec::with_capacity(2 * params.pairs);
    for n in 0..2 * params.pairs {
        sockets.push(login(addr, &number(1666, n), false).await?);
    }
    let fsync = fsync_median(dir, 100)?;
    let epoch = Instant::now();
    let start = epoch + Duration::from_millis(200);
    let end = start + Duration::from_secs_f64(seconds);
    let mut pairs = JoinSet::new();
    for (n, ws) in sockets.into_iter().enumerate() {
        let client = PairClient {
            ws,
            index: n,
            peer: number(1666, n ^ 1),
            // Even: the sender; odd: the receiver.
            window: if n % 2 == 0 { params.window.max(1) } else { 0 },
            epoch,
            start,
            end,
            inflight: 0,
            seq: 0,
            stats: PairStats::default(),
        };
        pairs.spawn(client.run());
    }
    tokio::time::sleep_until(start.into()).await;
    let cpu_start = cpu_now(relay_pid)?;
    tokio::time::sleep_until(end.into()).await;
    let cpu_end = cpu_now(relay_pid)?;
    let mut result = Exchange {
        delivered: 0,
        refused: 0,
        latencies: Vec::new(),
        cpu_start,
        cpu_end,
        fsync,
    };
    while let Some(joined) = pairs.join_next().await {
        let stats = joined.map_err(|e| BenchError::Unexpected(format!("a pair task: {e}")))??;
        result.delivered += stats.delivered;
        result.refused += stats.refused;
        result.latencies.extend(stats.latencies);
    }
    result.latencies.sort_unstable();
    Ok(result)
}
