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

use super::proc::{Daemon, RelayServer};
use super::relay::{login, read, write};
use super::sms::{SimThread, wait_registered};
use super::timed::{LatencyParams, Series};
use super::{BenchError, Setup, TempDir, median, ms, quantile, round3, until};
use crate::api::MessagesProxy;
use crate::devbus::PrivateBus;
use crate::domain::Channel;
use crate::relay::protocol::{ClientFrame, ServerFrame};
use crate::store::{NewIncoming, Store};

const ALICE: &str = "+15550001111";
const BOB: &str = "+15550002222";
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// How the floor is made (the JSON line carries it).
pub const FLOOR_NOTE: &str = "floor = session_rtt_ms + ws_hop_ms + 2 x commit_ms, each the \
median of probes taken after every timed message: one org.freedesktop.DBus.Peer.Ping round \
trip to Alice's daemon on her session bus, one message from one raw websocket client to \
another through the same relay (send to deliver), and one durable commit of an incoming \
message (Store::insert_incoming) on the same disk (the sender's outbox and the recipient's \
inbox each need one).";

/// The figures of one run; field order is the JSON line's.
#[derive(Debug, Clone, Serialize)]
pub struct IpFigures {
    pub scenario: &'static str,
    pub messages: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub floor_ms: f64,
    /// p50 / floor.
    pub ratio: f64,
    pub session_rtt_ms: f64,
    pub ws_hop_ms: f64,
    pub commit_ms: f64,
    pub floor_note: &'static str,
}

fn config_for(number: &str, relay: &str) -> String {
    format!(
        "default_region = \"US\"\n\n[relay]\nurl = \"ws://{relay}\"\n\n[sms]\nmodem = \"{number}\"\n\n[notifications]\nenabled = false\n"
    )
}

pub async fn run(setup: &Setup, params: &LatencyParams) -> Result<IpFigures, BenchError> {
    let dir = TempDir::new(setup.dir.as_deref(), "ip")?;
    let relay = RelayServer::start(setup, dir.path()).await?;
    let system = PrivateBus::start()?;
    let _sim = SimThread::start(system.address())?;
    let alice_bus = PrivateBus::start()?;
    let bob_bus = PrivateBus::start()?;
    eprintln!("ip-latency: starting the relay, the simulator and two daemons");
    let (_alice, _) = Daemon::start(
        setup,
        &alice_bus,
        &system,
        &dir.path().join("alice"),
        &config_for(ALICE, &relay.addr),
    )
    .await?;
    let (_bob, _) = Daemon::start(
        setup,
        &bob_bus,
        &system,
        &dir.path().join("bob"),
        &config_for(BOB, &relay.addr),
    )
    .await?;
    let alice_conn = alice_bus.connect().await?;
    let bob_conn = bob_bus.connect().await?;
    let alice = MessagesProxy::new(&alice_conn).await?;
    let bob = MessagesProxy::new(&bob_conn).await?;
    wait_registered(&alice, "Alice").await?;
    wait_registered(&bob, "Bob").await?;
    for (api, who) in [(&alice, "Alice"), (&bob, "Bob")] {
        until(
            &format!("{who} to log in to the relay"),
            MESSAGE_TIMEOUT,
            async || api.relay_state().await.ok().as_deref() == Some("online"),
        )
        .await?;
    }
    alice.watch(vec![BOB.into()]).await?;
    until("Alice to see Bob online", MESSAGE_TIMEOUT, async || {
        alice.get_presence(BOB).await.ok().as_deref() == Some("online")
    })
    .await?;

    // The floor's probes: a ping to Alice's daemon, a raw hop through the relay, a commit.
    let peer =
        zbus::fdo::PeerProxy::new(&alice_conn, "org.tandem.Messages1", "/org/tandem/Messages1")
            .await?;
    let mut from = login(&relay.addr, "+15559000001", false).await?;
    let mut to = login(&relay.addr, "+15559000002", false).await?;
    let mut probe_store = Store::open(&dir.path().join("commit-probe.db"))?;
    let (mut session_rtt, mut ws_hop, mut commit) = (Vec::new(), Vec::new(), Vec::new());

    let series = Series {
        scenario: "ip-latency",
        sender: &alice,
        receiver: &bob,
        from: ALICE,
        to: BOB,
        options: HashMap::new(),
        channel: "ip",
        params,
    };
    let mut samples = series
        .run(async |i, text| {
            let t = Instant::now();
            peer.ping().await?;
            let rtt = t.elapsed();
            let t = Instant::now();
            let probe_id = format!("probe-{i}");
            write(
                &mut from,
                &ClientFrame::Send {
                    id: probe_id.clone(),
                    to: "+15559000002".into(),
                    text: text.to_owned(),
                    ts: 0,
                },
            )
            .await?;
            let hop = loop {
                if let ServerFrame::Deliver {
                    id: got,
                    from: sender,
                    ..
                } = read(&mut to).await?
                    && got == probe_id
                {
                    let hop = t.elapsed();
                    write(
                        &mut to,
                        &ClientFrame::Ack {
                            from: sender,
                            id: got,
                        },
                    )
                    .await?;
                    break hop;
                }
            };
            let key = format!("bench:{i}");
            let t = Instant::now();
            probe_store.insert_incoming(&NewIncoming {
                peer: ALICE,
                text,
                channel: Channel::Ip,
                timestamp_ms: 1_700_000_000_000 + i as i64,
                dedupe_key: &key,
            })?;
            let one_commit = t.elapsed();
            if i >= params.warmup {
                session_rtt.push(rtt);
                ws_hop.push(hop);
                commit.push(one_commit);
            }
            Ok(())
        })
        .await?;
    let (session_rtt, ws_hop, commit) = (median(session_rtt), median(ws_hop), median(commit));
    samples.sort_unstable();
    let p50 = quantile(&samples, 0.5);
    let floor = session_rtt + ws_hop + commit * 2;
    let ratio = if floor.is_zero() {
        0.0
    } else {
        p50.as_secs_f64() / floor.as_secs_f64()
    };
    Ok(IpFigures {
        scenario: "ip-latency",
        messages: params.messages,
        p50_ms: ms(p50),
        p99_ms: ms(quantile(&samples, 0.99)),
        max_ms: ms(quantile(&samples, 1.0)),
        floor_ms: ms(floor),
        ratio: round3(ratio),
        session_rtt_ms: ms(session_rtt),
        ws_hop_ms: ms(ws_hop),
        commit_ms: ms(commit),
        floor_note: FLOOR_NOTE,
    })
}
