//! bench::idle: the `idle` scenario. One daemon (a child on a private session bus, its
//! modem in the ModemManager simulator) logged in to a relay (a child in relay-server
//! mode, every setting at its default), following N contacts registered on that relay,
//! some of them online (raw websocket clients in this process that only answer pings),
//! with no traffic at all, for S seconds. The daemon reaches the relay through a TCP
//! forwarding proxy in this process ([`Proxy`]) that counts the bytes of both directions
//! and parses their WebSocket frame headers ([`FrameCounter`]), so the line can say how
//! many frames were keepalives (ping, pong, close) and how many carried data.
//!
//! What is read of the daemon during the window comes from `/proc` only: `/proc/PID/stat`
//! (CPU), `/proc/PID/task/*/{status,stat,schedstat,comm}` (context switches and CPU per
//! thread, sampled every [`SAMPLE_EVERY`] so that threads that come and go are counted
//! too), `/proc/PID/status` (VmRSS, at the end).
//!
//! Must not: wake the daemon during the window (no D-Bus call to it, no polling it, no
//! frame to it but what the relay sends by itself), configure the daemon or the relay
//! otherwise than a user gets them, or count anything outside the window.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures_util::{StreamExt as _, stream};
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::phones::{SimThread, wait_registered};
use super::proc::{Daemon, RelayServer};
use super::relay::{login, read, write};
use super::{BenchError, Setup, TempDir, io, parse_stat_cpu, round3, status_kib, until};
use crate::api::MessagesProxy;
use crate::devbus::PrivateBus;
use crate::relay::protocol::{ClientFrame, PROTOCOL_VERSION, ServerFrame};

/// The daemon's own number (one of the simulator's modems).
const OWN: &str = "+15550001111";

/// How long setting up (logins, presence) may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Raw clients registering at the same time.
const CONCURRENCY: usize = 32;

/// Numbers passed to one `Watch` call.
const WATCH_BATCH: usize = 100;

/// How often the daemon's threads are read during the window.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// How each figure is measured (the JSON line carries it).
pub(super) const NOTE: &str = "The daemon (relay url = a counting TCP proxy in the bench in front \
of a relay with default settings) follows `contacts` numbers registered on the relay, \
`online_contacts` of them logged in (raw clients that only answer pings); after the daemon \
is online and sees them online, `settle_s` pass, then `seconds` are measured with no D-Bus \
call to the daemon. cpu_ms_per_min: utime+stime of /proc/PID/stat (all threads, clock \
ticks); sched_cpu_ms_per_min: the sum over threads of /proc/PID/task/*/schedstat run time \
(ns); wakeups_per_min: voluntary + nonvoluntary context switches summed over \
/proc/PID/task/*/status, threads sampled every 250 ms so that those that appear or vanish \
count up to their last sample; rss_mib: VmRSS at the end (rss_anon_mib, rss_file_mib: its RssAnon and RssFile; the \
file part is mostly the executable, which is the bench's own, shared with the bench and \
the relay); bytes_per_min: TCP payload \
bytes both ways through the proxy; data_frames / keepalive_frames: WebSocket frames \
(RFC 6455 headers parsed both ways) of text, binary or continuation vs ping and pong, \
close_frames apart; ping_interval_s: the relay's, from its welcome; threads: \
/proc/PID/task at the end; per_thread: each thread's switches and schedstat CPU in the \
window.";

/// The sizes of one run.
#[derive(Debug, Clone)]
pub(super) struct IdleParams {
    /// Length of the measured window (S).
    pub seconds: f64,
    /// Numbers the daemon follows (N).
    pub contacts: usize,
    /// Of those, logged in to the relay during the run.
    pub online: usize,
    /// Quiet time between the daemon being settled and the window.
    pub settle: Duration,
}

impl IdleParams {
    pub(super) fn new(quick: bool) -> IdleParams {
        IdleParams {
            seconds: if quick { 3.0 } else { 60.0 },
            contacts: if quick { 50 } else { 500 },
            online: if quick { 5 } else { 50 },
            settle: Duration::from_secs(if quick { 1 } else { 12 }),
        }
    }
}

/// One thread's share of the window.
#[derive(Debug, Clone, Serialize)]
pub(super) struct ThreadFigures {
    pub tid: u32,
    pub name: String,
    /// Voluntary + nonvoluntary context switches in the window.
    pub switches: u64,
    /// Run time in the window, from schedstat.
    pub cpu_ms: f64,
}

/// The figures of one run; field order is the JSON line's.
#[derive(Debug, Clone, Serialize)]
pub(super) struct IdleFigures {
    pub scenario: &'static str,
    pub seconds: f64,
    pub settle_s: f64,
    pub contacts: usize,
    pub online_contacts: usize,
    pub cpu_ms_per_min: f64,
    pub sched_cpu_ms_per_min: f64,
    pub wakeups_per_min: f64,
    pub rss_mib: f64,
    /// Of `rss_mib`: anonymous memory (heap, stacks) and mapped files (the executable's
    /// and libraries' pages, shared with other processes and reclaimable).
    pub rss_anon_mib: f64,
    pub rss_file_mib: f64,
    pub bytes_per_min: f64,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub data_frames: u64,
    pub keepalive_frames: u64,
    pub close_frames: u64,
    pub ping_interval_s: f64,
    /// Connections the daemon opened to the relay during the window (reconnects).
    pub connections_opened: u64,
    pub threads: usize,
    pub per_thread: Vec<ThreadFigures>,
    pub note: &'static str,
}

// ---------------------------------------------------------------------------------
// WebSocket frame headers, as the proxy sees them.

/// Frames of one direction, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct FrameCounts {
    /// Text, binary and continuation frames.
    pub data: u64,
    pub ping: u64,
    pub pong: u64,
    pub close: u64,
    /// Reserved opcodes (none in a sound stream).
    pub other: u64,
}

impl FrameCounts {
    fn minus(self, before: FrameCounts) -> FrameCounts {
        FrameCounts {
            data: self.data - before.data,
            ping: self.ping - before.ping,
            pong: self.pong - before.pong,
            close: self.close - before.close,
            other: self.other - before.other,
        }
    }

    fn plus(self, other: FrameCounts) -> FrameCounts {
        FrameCounts {
            data: self.data + other.data,
            ping: self.ping + other.ping,
            pong: self.pong + other.pong,
            close: self.close + other.close,
            other: self.other + other.other,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ParseState {
    /// The HTTP upgrade request or response: until `\r\n\r\n`, of which `matched`
    /// bytes have been seen.
    Http { matched: usize },
    /// A frame header, of which `have` bytes are in `header`.
    Header,
    /// The rest of a frame's payload.
    Payload { left: u64 },
}

/// Counts the WebSocket frames of one direction of a connection from its bytes, chunk
/// by chunk (a header may straddle chunks), after the HTTP handshake (RFC 6455 §5.2:
/// opcode in the low nibble of byte 0, mask bit and 7-bit length in byte 1, then a 16-
/// or 64-bit length for 126 and 127, then a 4-byte masking key if masked).
#[derive(Debug, Clone)]
pub(super) struct FrameCounter {
    state: ParseState,
    header: [u8; 14],
    have: usize,
    pub counts: FrameCounts,
}

impl Default for FrameCounter {
    fn default() -> Self {
        FrameCounter {
            state: ParseState::Http { matched: 0 },
            header: [0; 14],
            have: 0,
            counts: FrameCounts::default(),
        }
    }
}

impl FrameCounter {
    /// Reads the next bytes of the stream.
    pub(super) fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            match self.state {
                ParseState::Http { mut matched } => {
                    const END: &[u8] = b"\r\n\r\n";
                    let mut used = 0;
                    for &b in bytes {
                        used += 1;
                        matched = if b == END[matched] {
                            matched + 1
                        } else if b == END[0] {
                            1
                        } else {
                            0
                        };
                        if matched == END.len() {
                            break;
                        }
                    }
                    bytes = &bytes[used..];
                    self.state = if matched == END.len() {
                        self.have = 0;
                        ParseState::Header
                    } else {
                        ParseState::Http { matched }
                    };
                }
                ParseState::Header => {
                    let need = self.header_len();
                    let take = (need - self.have).min(bytes.len());
                    self.header[self.have..self.have + take].copy_from_slice(&bytes[..take]);
                    self.have += take;
                    bytes = &bytes[take..];
                    // The length may have grown once byte 1 is known.
                    if self.have == self.header_len() {
                        self.frame_done();
                    }
                }
                ParseState::Payload { left } => {
                    let take = u64::try_from(bytes.len()).unwrap_or(u64::MAX).min(left);
                    // `take` <= bytes.len(), so it fits in usize.
                    bytes = &bytes[usize::try_from(take).unwrap_or(bytes.len())..];
                    self.state = if left == take {
                        self.have = 0;
                        ParseState::Header
                    } else {
                        ParseState::Payload { left: left - take }
                    };
                }
            }
        }
    }

    /// The length of the header being read, as far as its first two bytes tell.
    fn header_len(&self) -> usize {
        if self.have < 2 {
            return 2;
        }
        let masked = self.header[1] & 0x80 != 0;
        let extended = match self.header[1] & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        2 + extended + if masked { 4 } else { 0 }
    }

    fn frame_done(&mut self) {
        match self.header[0] & 0x0f {
            0x0..=0x2 => self.counts.data += 1,
            0x8 => self.counts.close += 1,
            0x9 => self.counts.ping += 1,
            0xa => self.counts.pong += 1,
            _ => self.counts.other += 1,
        }
        let len = match self.header[1] & 0x7f {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => {
                let mut b = [0; 8];
                b.copy_from_slice(&self.header[2..10]);
                u64::from_be_bytes(b)
            }
            n => u64::from(n),
        };
        self.have = 0;
        self.state = if len == 0 {
            ParseState::Header
        } else {
            ParseState::Payload { left: len }
        };
    }
}

// ---------------------------------------------------------------------------------
// The proxy.

/// What the proxy has seen so far, over all connections.
#[derive(Debug, Clone, Copy, Default)]
struct ProxyCounts {
    connections: u64,
    /// Daemon to relay.
    up_bytes: u64,
    /// Relay to daemon.
    down_bytes: u64,
    up_frames: FrameCounts,
    down_frames: FrameCounts,
}

/// A TCP forwarder on 127.0.0.1 (an ephemeral port) to the relay, counting; stopped
/// with every connection on drop.
struct Proxy {
    addr: String,
    counts: Arc<Mutex<ProxyCounts>>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: &str) -> Result<Proxy, BenchError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(io("the proxy cannot listen on 127.0.0.1"))?;
        let addr = listener
            .local_addr()
            .map_err(io("the proxy's listener has no address"))?
            .to_string();
        let counts = Arc::new(Mutex::new(ProxyCounts::default()));
        let upstream = upstream.to_owned();
        let shared = counts.clone();
        let task = tokio::spawn(async move {
            // Dropped (aborting every connection's task) when this task is aborted.
            let mut connections = tokio::task::JoinSet::new();
            loop {
                let client = match listener.accept().await {
                    Ok((client, _)) => client,
                    Err(e) => {
                        // E.g. out of file descriptors: do not spin.
                        tracing::debug!(cause = %e, "the proxy cannot accept");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                lock(&shared).connections += 1;
                let upstream = upstream.clone();
                let shared = shared.clone();
                connections.spawn(async move {
                    if let Err(e) = forward(client, &upstream, shared).await {
                        tracing::debug!(cause = %e, "proxy connection ended");
                    }
                });
                // Reap the finished ones.
                while connections.try_join_next().is_some() {}
            }
        });
        Ok(Proxy { addr, counts, task })
    }

    fn counts(&self) -> ProxyCounts {
        *lock(&self.counts)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock(counts: &Mutex<ProxyCounts>) -> std::sync::MutexGuard<'_, ProxyCounts> {
    counts.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Forwards one connection both ways until either side closes.
async fn forward(
    client: TcpStream,
    upstream: &str,
    counts: Arc<Mutex<ProxyCounts>>,
) -> Result<(), BenchError> {
    let server = TcpStream::connect(upstream).await.map_err(io(format!(
        "the proxy cannot reach the relay at {upstream}"
    )))?;
    client
        .set_nodelay(true)
        .map_err(io("cannot set TCP_NODELAY"))?;
    server
        .set_nodelay(true)
        .map_err(io("cannot set TCP_NODELAY"))?;
    let (client_rx, client_tx) = client.into_split();
    let (server_rx, server_tx) = server.into_split();
    let up = pump(client_rx, server_tx, counts.clone(), true);
    let down = pump(server_rx, client_tx, counts, false);
    // A direction that reaches its end passes the end on (shutdown) and the other one
    // goes on, as TCP would without the proxy; an error ends both.
    tokio::try_join!(up, down).map(|_| ())
}

/// Copies one direction, counting bytes and frames.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    counts: Arc<Mutex<ProxyCounts>>,
    up: bool,
) -> Result<(), BenchError> {
    let mut frames = FrameCounter::default();
    let mut buf = vec![0; 16 * 1024];
    loop {
        let n = from
            .read(&mut buf)
            .await
            .map_err(io("the proxy cannot read"))?;
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(());
        }
        let before = frames.counts;
        frames.feed(&buf[..n]);
        let new = frames.counts.minus(before);
        {
            let mut c = lock(&counts);
            if up {
                c.up_bytes += n as u64;
                c.up_frames = c.up_frames.plus(new);
            } else {
                c.down_bytes += n as u64;
                c.down_frames = c.down_frames.plus(new);
            }
        }
        to.write_all(&buf[..n])
            .await
            .map_err(io("the proxy cannot write"))?;
    }
}

// ---------------------------------------------------------------------------------
// The daemon's threads, from /proc.

/// One thread at one moment.
#[derive(Debug, Clone, Default)]
struct ThreadSample {
    name: String,
    switches: u64,
    sched_ns: u64,
}

/// Every thread of `pid` now, by thread id; threads that end while being read are
/// left out.
fn sample_threads(pid: u32) -> Result<HashMap<u32, ThreadSample>, BenchError> {
    let dir = format!("/proc/{pid}/task");
    let entries = std::fs::read_dir(&dir).map_err(io(format!("cannot list {dir}")))?;
    let mut threads = HashMap::new();
    for entry in entries.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(entry.path().join("status")) else {
            continue;
        };
        let Some(switches) = parse_switches(&status) else {
            continue;
        };
        // Without schedstat (a kernel without CONFIG_SCHED_INFO) the run time reads 0.
        let sched_ns = std::fs::read_to_string(entry.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        threads.insert(
            tid,
            ThreadSample {
                name: name.trim().to_owned(),
                switches,
                sched_ns,
            },
        );
    }
    Ok(threads)
}

/// voluntary + nonvoluntary context switches of a `/proc/.../status`.
fn parse_switches(status: &str) -> Option<u64> {
    let field = |key: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))?
            .trim()
            .parse()
            .ok()
    };
    Some(field("voluntary_ctxt_switches:")? + field("nonvoluntary_ctxt_switches:")?)
}

/// utime + stime of the whole process (dead threads included).
fn process_cpu(pid: u32) -> Result<Duration, BenchError> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).map_err(io(format!("cannot read {path}")))?;
    parse_stat_cpu(&stat).ok_or_else(|| BenchError::Unexpected(format!("cannot parse {path}")))
}

/// Per-thread deltas between the window's first sample and each thread's last one
/// (threads born in the window count from zero).
fn thread_deltas(
    first: &HashMap<u32, ThreadSample>,
    last: &HashMap<u32, ThreadSample>,
) -> Vec<ThreadFigures> {
    let mut figures: Vec<ThreadFigures> = last
        .iter()
        .map(|(&tid, end)| {
            let start = first.get(&tid).cloned().unwrap_or_default();
            ThreadFigures {
                tid,
                name: end.name.clone(),
                switches: end.switches.saturating_sub(start.switches),
                cpu_ms: round3(end.sched_ns.saturating_sub(start.sched_ns) as f64 / 1e6),
            }
        })
        .collect();
    figures.sort_by_key(|t| t.tid);
    figures
}

// ---------------------------------------------------------------------------------
// The scenario.

fn config_for(relay: &str) -> String {
    format!(
        "default_region = \"US\"\n\n[relay]\nurl = \"ws://{relay}\"\n\n[sms]\nmodem = \"{OWN}\"\n\n[notifications]\nenabled = false\n"
    )
}

/// The `n`-th contact: valid E.164, distinct from the simulator's modems.
fn contact(n: usize) -> String {
    format!("+1555{:07}", 3_000_000 + n)
}

/// The relay's ping interval, as its `welcome` announces it.
async fn ping_interval(relay: &str) -> Result<Duration, BenchError> {
    let stream = TcpStream::connect(relay)
        .await
        .map_err(io(format!("cannot connect to the relay at {relay}")))?;
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{relay}/"), stream).await?;
    let hello = ClientFrame::Hello {
        v: PROTOCOL_VERSION,
        client: Some("tandem-bench".into()),
    };
    write(&mut ws, &hello).await?;
    match read(&mut ws).await? {
        ServerFrame::Welcome { limits, .. } => Ok(Duration::from_millis(limits.ping_interval_ms)),
        other => Err(BenchError::Unexpected(format!(
            "the relay answered hello with {other:?}"
        ))),
    }
}

/// A contact that stays logged in: reads (tungstenite answers the relay's pings) until
/// told to stop.
async fn stay_online(
    mut ws: tokio_tungstenite::WebSocketStream<TcpStream>,
    mut stop: watch::Receiver<bool>,
) {
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

/// Tells the online contacts' tasks to stop on drop.
struct StopOnDrop(watch::Sender<bool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

pub(super) async fn run(setup: &Setup, params: &IdleParams) -> Result<IdleFigures, BenchError> {
    let online = params.online.min(params.contacts);
    let dir = TempDir::new(setup.dir.as_deref(), "idle")?;
    eprintln!("idle: starting the relay, the simulator and the daemon");
    let relay = RelayServer::start(setup, dir.path()).await?;
    let ping_every = ping_interval(&relay.addr).await?;
    let proxy = Proxy::start(&relay.addr).await?;
    let system = PrivateBus::start()?;
    let _sim = SimThread::start(system.address())?;
    let bus = PrivateBus::start()?;

    let numbers: Vec<String> = (0..params.contacts).map(contact).collect();
    let _stop = register_contacts(&relay.addr, &numbers, online).await?;
    let (daemon, _) = Daemon::start(
        setup,
        &bus,
        &system,
        &dir.path().join("daemon"),
        &config_for(&proxy.addr),
    )
    .await?;
    settle_daemon(&bus, &numbers, online).await?;
    eprintln!(
        "idle: settled; {:?} of quiet, then {} s measured",
        params.settle, params.seconds
    );
    tokio::time::sleep(params.settle).await;

    let window = measure_window(&daemon, &proxy, Duration::from_secs_f64(params.seconds)).await?;
    Ok(window.figures(params, online, ping_every))
}

/// Registers every contact on the relay; the first `online` stay logged in until the
/// returned guard is dropped, the others hang up (registered, offline).
async fn register_contacts(
    relay: &str,
    numbers: &[String],
    online: usize,
) -> Result<StopOnDrop, BenchError> {
    eprintln!(
        "idle: registering {} contacts ({online} staying online)",
        numbers.len()
    );
    let logged_in: Vec<_> = stream::iter(numbers.iter().enumerate())
        .map(|(i, number)| async move {
            let ws = login(relay, number, true).await?;
            Ok::<_, BenchError>((i < online).then_some(ws))
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop = StopOnDrop(stop_tx);
    for ws in logged_in {
        if let Some(ws) = ws? {
            tokio::spawn(stay_online(ws, stop_rx.clone()));
        }
    }
    Ok(stop)
}

/// Waits until the daemon on `bus` is on its modem and the relay, follows every contact
/// and sees the first `online` of them online and the others offline; then lets go of
/// it: from here on, nothing is asked of the daemon.
async fn settle_daemon(
    bus: &PrivateBus,
    numbers: &[String],
    online: usize,
) -> Result<(), BenchError> {
    let conn = bus.connect().await?;
    let api = MessagesProxy::new(&conn).await?;
    wait_registered(&api, "Alice").await?;
    until(
        "the daemon to log in to the relay",
        SETUP_TIMEOUT,
        async || api.relay_state().await.ok().as_deref() == Some("online"),
    )
    .await?;
    for batch in numbers.chunks(WATCH_BATCH) {
        api.watch(batch.to_vec()).await?;
    }
    for number in &numbers[..online] {
        until(
            &format!("the daemon to see {number} online"),
            SETUP_TIMEOUT,
            async || api.get_presence(number).await.ok().as_deref() == Some("online"),
        )
        .await?;
    }
    for number in &numbers[online..] {
        let presence = api.get_presence(number).await?;
        if presence != "offline" {
            return Err(BenchError::Unexpected(format!(
                "{number} is offline, but the daemon says {presence}"
            )));
        }
    }
    Ok(())
}

/// What one measured window of the quiet daemon saw.
struct Window {
    elapsed: Duration,
    cpu: Duration,
    counts_before: ProxyCounts,
    counts_after: ProxyCounts,
    per_thread: Vec<ThreadFigures>,
    threads: usize,
    rss_mib: f64,
    rss_anon_mib: f64,
    rss_file_mib: f64,
}

/// Samples the daemon's threads through `window` and reads its CPU, memory and the
/// proxy's frame counts at both ends.
async fn measure_window(
    daemon: &Daemon,
    proxy: &Proxy,
    window: Duration,
) -> Result<Window, BenchError> {
    let pid = daemon.pid();
    let cpu_before = process_cpu(pid)?;
    let counts_before = proxy.counts();
    let first = sample_threads(pid)?;
    let mut last = first.clone();
    let started = Instant::now();
    let end = started + window;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        tokio::time::sleep((end - now).min(SAMPLE_EVERY)).await;
        for (tid, sample) in sample_threads(pid)? {
            last.insert(tid, sample);
        }
    }
    let cpu_after = process_cpu(pid)?;
    let counts_after = proxy.counts();
    let elapsed = started.elapsed();
    let mib = |key| Ok::<_, BenchError>(round3(status_kib(pid, key)? as f64 / 1024.0));
    Ok(Window {
        elapsed,
        cpu: cpu_after.saturating_sub(cpu_before),
        counts_before,
        counts_after,
        per_thread: thread_deltas(&first, &last),
        threads: sample_threads(pid)?.len(),
        rss_mib: daemon.rss_mib()?,
        rss_anon_mib: mib("RssAnon:")?,
        rss_file_mib: mib("RssFile:")?,
    })
}

impl Window {
    fn figures(self, params: &IdleParams, online: usize, ping_every: Duration) -> IdleFigures {
        let per_min = |x: f64| round3(x * 60.0 / self.elapsed.as_secs_f64());
        let switches: u64 = self.per_thread.iter().map(|t| t.switches).sum();
        let sched_ms: f64 = self.per_thread.iter().map(|t| t.cpu_ms).sum();
        let (before, after) = (&self.counts_before, &self.counts_after);
        let up = after.up_frames.minus(before.up_frames);
        let down = after.down_frames.minus(before.down_frames);
        let frames = up.plus(down);
        let bytes_sent = after.up_bytes - before.up_bytes;
        let bytes_received = after.down_bytes - before.down_bytes;
        IdleFigures {
            scenario: "idle",
            seconds: round3(self.elapsed.as_secs_f64()),
            settle_s: round3(params.settle.as_secs_f64()),
            contacts: params.contacts,
            online_contacts: online,
            cpu_ms_per_min: per_min(self.cpu.as_secs_f64() * 1000.0),
            sched_cpu_ms_per_min: per_min(sched_ms),
            wakeups_per_min: per_min(switches as f64),
            rss_mib: round3(self.rss_mib),
            rss_anon_mib: self.rss_anon_mib,
            rss_file_mib: self.rss_file_mib,
            bytes_per_min: per_min((bytes_sent + bytes_received) as f64),
            bytes_sent,
            bytes_received,
            data_frames: frames.data + frames.other,
            keepalive_frames: frames.ping + frames.pong,
            close_frames: frames.close,
            ping_interval_s: round3(ping_every.as_secs_f64()),
            connections_opened: after.connections - before.connections,
            threads: self.threads,
            per_thread: self.per_thread,
            note: NOTE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A frame header: opcode, masked or not, payload length (7, 16 or 64 bits).
    fn frame(opcode: u8, masked: bool, len: usize) -> Vec<u8> {
        let mask_bit = if masked { 0x80 } else { 0 };
        let mut f = vec![0x80 | opcode];
        if len < 126 {
            f.push(mask_bit | len as u8);
        } else if len <= 0xffff {
            f.push(mask_bit | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            f.push(mask_bit | 127);
            f.extend_from_slice(&(len as u64).to_be_bytes());
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        // A payload that looks like headers, to catch a parser that loses its place.
        f.extend(std::iter::repeat_n(0x89, len));
        f
    }

    fn stream(masked: bool) -> Vec<u8> {
        let mut bytes = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n".to_vec();
        bytes.extend(frame(0x1, masked, 20)); // text
        bytes.extend(frame(0x9, masked, 0)); // ping
        bytes.extend(frame(0xa, masked, 4)); // pong
        bytes.extend(frame(0x2, masked, 300)); // binary, 16-bit length
        bytes.extend(frame(0x1, masked, 70_000)); // text, 64-bit length
        bytes.extend(frame(0x8, masked, 2)); // close
        bytes
    }

    const EXPECTED: FrameCounts = FrameCounts {
        data: 3,
        ping: 1,
        pong: 1,
        close: 1,
        other: 0,
    };

    #[test]
    fn frames_are_counted_in_one_chunk_and_byte_by_byte() {
        for masked in [false, true] {
            let bytes = stream(masked);
            let mut whole = FrameCounter::default();
            whole.feed(&bytes);
            assert_eq!(whole.counts, EXPECTED, "masked: {masked}");
            let mut bytewise = FrameCounter::default();
            for b in &bytes {
                bytewise.feed(std::slice::from_ref(b));
            }
            assert_eq!(bytewise.counts, EXPECTED, "masked: {masked}");
            // Odd chunk sizes, so that headers straddle chunks everywhere.
            let mut chunked = FrameCounter::default();
            for chunk in bytes.chunks(7) {
                chunked.feed(chunk);
            }
            assert_eq!(chunked.counts, EXPECTED, "masked: {masked}");
        }
    }

    #[test]
    fn nothing_is_counted_inside_the_handshake() {
        let mut counter = FrameCounter::default();
        // A handshake with a lone "\r\n" and "\r\r\n" before its end.
        counter.feed(b"GET / HTTP/1.1\r\nHost: x\r\r\nA: \x89\x00\r\n");
        assert_eq!(counter.counts, FrameCounts::default());
        counter.feed(b"\r\n");
        counter.feed(&frame(0x9, true, 0));
        assert_eq!(counter.counts.ping, 1);
    }

    #[test]
    fn status_files_give_both_kinds_of_switches() {
        let status = "Name:\tx\nvoluntary_ctxt_switches:\t12\nnonvoluntary_ctxt_switches:\t3\n";
        assert_eq!(parse_switches(status), Some(15));
        assert_eq!(parse_switches("Name:\tx\n"), None);
    }

    #[test]
    fn threads_born_in_the_window_count_from_zero() {
        let sample = |name: &str, switches, sched_ns| ThreadSample {
            name: name.into(),
            switches,
            sched_ns,
        };
        let first = HashMap::from([(1, sample("main", 10, 1_000_000))]);
        let last = HashMap::from([
            (1, sample("main", 14, 3_500_000)),
            (2, sample("worker", 5, 2_000_000)),
        ]);
        let deltas = thread_deltas(&first, &last);
        assert_eq!(deltas.len(), 2);
        assert_eq!((deltas[0].switches, deltas[0].cpu_ms), (4, 2.5));
        assert_eq!((deltas[1].name.as_str(), deltas[1].switches), ("worker", 5));
    }

    #[test]
    fn our_own_threads_can_be_sampled() {
        let threads = sample_threads(std::process::id()).expect("sampled");
        assert!(!threads.is_empty());
        assert!(process_cpu(std::process::id()).is_ok());
    }
}
