//! bench::sms: the `sms-latency` scenario. Alice's and Bob's daemons (children, each on
//! a private session bus of its own) share one private system bus, where the
//! ModemManager simulator hosts both modems (in this process, on a thread of its own,
//! with the carrier's delays at 0). Alice sends N SMS to Bob, one at a time; each is
//! timed from just before Alice's `SendMessage` call to Bob's `MessageReceived` signal.
//!
//! The floor is made of D-Bus round trips only, measured in the same run: see
//! [`FLOOR_NOTE`].
//!
//! The timed loop is [`super::timed::Series`]'s, shared with `ip-latency`.
//!
//! Must not: send a message before the previous one is settled (Bob announced it, Alice
//! saw its status report, and a short pause let the daemons' clean-up finish), so that
//! each figure is one message on a quiet system.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use zbus::OwnedVariant;

use super::phones::{ALICE, BOB, Phones};
use super::timed::{LatencyParams, Series};
use super::{BenchError, Latency, Setup, TempDir, median, ms};
use crate::domain::Channel;
use crate::store::{NewIncoming, Store};

/// Round trips of the floor on the system bus and on the session buses.
const SYSTEM_ROUND_TRIPS: f64 = 3.5;
const SESSION_ROUND_TRIPS: f64 = 1.0;

/// How the floor is made (the JSON line carries it).
pub(super) const FLOOR_NOTE: &str = "floor = 1 x session_rtt_ms + 3.5 x system_rtt_ms, each the \
median of org.freedesktop.DBus.Peer.Ping round trips measured in this run, one of each \
after every timed message (session: to Alice's daemon on her session bus; system: to the \
simulator). An SMS needs at least: \
SendMessage into Alice's daemon (half a session round trip), Messaging.Create and Sms.Send \
(ModemManager has no one-call send: 2 system round trips), Messaging.Added to Bob's daemon \
(half), one Properties.GetAll of the new SMS (Added carries no text, and ModemManager \
exports SMS objects outside its ObjectManager: 1), MessageReceived to the listener (half a \
session round trip). The daemons' SQLite commits and the carrier are not in the floor; \
commit_ms is the median durable commit of one incoming message (Store::insert_incoming) on \
the same disk, also one after every timed message, of which an SMS needs at least two (Alice's outbox, Bob's inbox).";

/// How many messages.
/// The figures of one run; field order is the JSON line's.
#[derive(Debug, Clone, Serialize)]
pub(super) struct SmsFigures {
    pub scenario: &'static str,
    pub messages: usize,
    pub pause_ms: f64,
    #[serde(flatten)]
    pub latency: Latency,
    pub session_rtt_ms: f64,
    pub system_rtt_ms: f64,
    /// Median durable commit of one message on the same disk (not in the floor).
    pub commit_ms: f64,
    pub floor_note: &'static str,
}

/// The floor's ingredients, measured between the messages (after each one settled), so
/// that they see the same machine, disk and load as the messages do.
struct FloorProbe {
    session: zbus::fdo::PeerProxy<'static>,
    system: zbus::fdo::PeerProxy<'static>,
    store: Store,
    count: i64,
    session_rtt: Vec<Duration>,
    system_rtt: Vec<Duration>,
    commit: Vec<Duration>,
}

impl FloorProbe {
    /// Pings go to Alice's daemon on her session bus and to the simulator on the system
    /// bus; commits go into a store of its own in `dir`, through the daemon's store code.
    async fn new(
        session: &zbus::Connection,
        system: &zbus::Connection,
        dir: &std::path::Path,
    ) -> Result<FloorProbe, BenchError> {
        let session =
            zbus::fdo::PeerProxy::new(session, "org.tandem.Messages1", "/org/tandem/Messages1")
                .await?;
        let system = zbus::fdo::PeerProxy::new(
            system,
            "org.freedesktop.ModemManager1",
            "/org/freedesktop/ModemManager1",
        )
        .await?;
        Ok(FloorProbe {
            session,
            system,
            store: Store::open(&dir.join("commit-probe.db"))?,
            count: 0,
            session_rtt: Vec::new(),
            system_rtt: Vec::new(),
            commit: Vec::new(),
        })
    }

    /// One round trip on each bus and one durable commit of an incoming message.
    async fn measure(&mut self) -> Result<(), BenchError> {
        let t = Instant::now();
        self.session.ping().await?;
        self.session_rtt.push(t.elapsed());
        let t = Instant::now();
        self.system.ping().await?;
        self.system_rtt.push(t.elapsed());
        self.count += 1;
        let key = format!("bench:{}", self.count);
        let message = NewIncoming {
            peer: ALICE,
            text: "See you tomorrow at the station?",
            channel: Channel::Sms,
            timestamp_ms: 1_700_000_000_000 + self.count,
            dedupe_key: &key,
        };
        let t = Instant::now();
        self.store.insert_incoming(&message)?;
        self.commit.push(t.elapsed());
        Ok(())
    }
}

pub(super) async fn run(setup: &Setup, params: &LatencyParams) -> Result<SmsFigures, BenchError> {
    let dir = TempDir::new(setup.dir.as_deref(), "sms")?;
    eprintln!("sms-latency: starting the simulator and two daemons");
    let phones = Phones::start(setup, dir.path(), None).await?;
    let (alice, bob, alice_conn) = (&phones.alice, &phones.bob, &phones.alice_conn);

    let system_conn = phones.system.connect().await?;
    let mut probe = FloorProbe::new(alice_conn, &system_conn, dir.path()).await?;
    let series = Series {
        scenario: "sms-latency",
        sender: alice,
        receiver: bob,
        from: ALICE,
        to: BOB,
        options: HashMap::from([(
            "channel".to_owned(),
            OwnedVariant::from(zbus::Str::from_static("sms")),
        )]),
        channel: "sms",
        params,
    };
    let samples = series
        .run(async |i, _| {
            probe.measure().await?;
            // Warm-up probes are not counted either (connection set-up, first commits).
            if i < params.warmup {
                probe.session_rtt.clear();
                probe.system_rtt.clear();
                probe.commit.clear();
            }
            Ok(())
        })
        .await?;

    let session_rtt = median(std::mem::take(&mut probe.session_rtt));
    let system_rtt = median(std::mem::take(&mut probe.system_rtt));
    let commit = median(std::mem::take(&mut probe.commit));

    let floor = session_rtt.mul_f64(SESSION_ROUND_TRIPS) + system_rtt.mul_f64(SYSTEM_ROUND_TRIPS);
    Ok(SmsFigures {
        scenario: "sms-latency",
        messages: params.messages,
        pause_ms: ms(params.pause),
        latency: Latency::of(samples, floor),
        session_rtt_ms: ms(session_rtt),
        system_rtt_ms: ms(system_rtt),
        commit_ms: ms(commit),
        floor_note: FLOOR_NOTE,
    })
}
