//! bench::ip: the `ip-latency` scenario. A relay (a child in relay-server mode), the
//! ModemManager simulator with Alice's and Bob's modems, and their two daemons (children,
//! each on a private session bus), logged in to the relay. Alice follows Bob, and sends
//! N messages to Bob one at a time with the channel rule (`auto`: over IP, both being
//! online); each is timed from just before Alice's `SendMessage` call to Bob's
//! `MessageReceived` signal (the loop is [`super::timed::Series`]'s, shared with
//! `sms-latency`). The floor is measured in the same run: see [`FLOOR_NOTE`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::phones::{ALICE, BOB, Phones};
use super::proc::RelayServer;
use super::relay::{Ws as WebSocket, login, read, write};
use super::timed::{LatencyParams, Series};
use super::{BenchError, Latency, Setup, TempDir, median, ms, until};
use crate::domain::Channel;
use crate::relay::protocol::{ClientFrame, ServerFrame};
use crate::store::{NewIncoming, Store};

const MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);
/// The floor probe's two raw relay clients.
const PROBE_FROM: &str = "+15559000001";
const PROBE_TO: &str = "+15559000002";

/// How the floor is made (the JSON line carries it).
pub(super) const FLOOR_NOTE: &str = "floor = session_rtt_ms + ws_hop_ms + 2 x commit_ms, each the \
median of probes taken after every timed message: one org.freedesktop.DBus.Peer.Ping round \
trip to Alice's daemon on her session bus, one message from one raw websocket client to \
another through the same relay (send to deliver), and one durable commit of an incoming \
message (Store::insert_incoming) on the same disk (the sender's outbox and the recipient's \
inbox each need one).";

/// The figures of one run; field order is the JSON line's.
#[derive(Debug, Clone, Serialize)]
pub(super) struct IpFigures {
    pub scenario: &'static str,
    pub messages: usize,
    #[serde(flatten)]
    pub latency: Latency,
    pub session_rtt_ms: f64,
    pub ws_hop_ms: f64,
    pub commit_ms: f64,
    pub floor_note: &'static str,
}

pub(super) async fn run(setup: &Setup, params: &LatencyParams) -> Result<IpFigures, BenchError> {
    let dir = TempDir::new(setup.dir.as_deref(), "ip")?;
    let relay = RelayServer::start(setup, dir.path()).await?;
    eprintln!("ip-latency: starting the relay, the simulator and two daemons");
    let phones = Phones::start(setup, dir.path(), Some(&relay.addr)).await?;
    let (alice, bob, alice_conn) = (&phones.alice, &phones.bob, &phones.alice_conn);
    alice.watch(vec![BOB.into()]).await?;
    until("Alice to see Bob online", MESSAGE_TIMEOUT, async || {
        alice.get_presence(BOB).await.ok().as_deref() == Some("online")
    })
    .await?;

    let mut probe = FloorProbe::new(alice_conn, &relay.addr, dir.path()).await?;
    let series = Series {
        scenario: "ip-latency",
        sender: alice,
        receiver: bob,
        from: ALICE,
        to: BOB,
        options: HashMap::new(),
        channel: "ip",
        params,
    };
    let samples = series
        .run(async |i, text| probe.measure(i, text, i >= params.warmup).await)
        .await?;
    let FloorProbe {
        session_rtt,
        ws_hop,
        commit,
        ..
    } = probe;
    let (session_rtt, ws_hop, commit) = (median(session_rtt), median(ws_hop), median(commit));
    let floor = session_rtt + ws_hop + commit * 2;
    Ok(IpFigures {
        scenario: "ip-latency",
        messages: params.messages,
        latency: Latency::of(samples, floor),
        session_rtt_ms: ms(session_rtt),
        ws_hop_ms: ms(ws_hop),
        commit_ms: ms(commit),
        floor_note: FLOOR_NOTE,
    })
}

/// The floor's probes: a ping to Alice's daemon, a raw hop through the relay between two
/// clients of its own, a durable commit on the same disk.
struct FloorProbe {
    peer: zbus::fdo::PeerProxy<'static>,
    from: WebSocket,
    to: WebSocket,
    store: Store,
    session_rtt: Vec<Duration>,
    ws_hop: Vec<Duration>,
    commit: Vec<Duration>,
}

impl FloorProbe {
    async fn new(
        alice: &zbus::Connection,
        relay: &str,
        dir: &std::path::Path,
    ) -> Result<FloorProbe, BenchError> {
        Ok(FloorProbe {
            peer: zbus::fdo::PeerProxy::new(alice, "org.tandem.Messages1", "/org/tandem/Messages1")
                .await?,
            from: login(relay, PROBE_FROM, false).await?,
            to: login(relay, PROBE_TO, false).await?,
            store: Store::open(&dir.join("commit-probe.db"))?,
            session_rtt: Vec::new(),
            ws_hop: Vec::new(),
            commit: Vec::new(),
        })
    }

    /// Takes one of each probe, with the text of message `i`; keeps them if `counted`.
    async fn measure(&mut self, i: usize, text: &str, counted: bool) -> Result<(), BenchError> {
        let t = Instant::now();
        self.peer.ping().await?;
        let rtt = t.elapsed();
        let hop = self.hop(i, text).await?;
        let key = format!("bench:{i}");
        let t = Instant::now();
        self.store.insert_incoming(&NewIncoming {
            peer: ALICE,
            text,
            channel: Channel::Ip,
            timestamp_ms: 1_700_000_000_000 + i as i64,
            dedupe_key: &key,
        })?;
        let one_commit = t.elapsed();
        if counted {
            self.session_rtt.push(rtt);
            self.ws_hop.push(hop);
            self.commit.push(one_commit);
        }
        Ok(())
    }

    /// One message from one raw client to the other through the relay: send to deliver.
    async fn hop(&mut self, i: usize, text: &str) -> Result<Duration, BenchError> {
        let t = Instant::now();
        let probe_id = format!("probe-{i}");
        let send = ClientFrame::Send {
            id: probe_id.clone(),
            to: PROBE_TO.into(),
            text: text.to_owned(),
            ts: 0,
        };
        write(&mut self.from, &send).await?;
        loop {
            if let ServerFrame::Deliver { id, from, .. } = read(&mut self.to).await?
                && id == probe_id
            {
                let hop = t.elapsed();
                write(&mut self.to, &ClientFrame::Ack { from, id }).await?;
                return Ok(hop);
            }
        }
    }
}
