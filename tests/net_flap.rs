//! NetworkManager connectivity flapping, end to end: a fake NetworkManager on the private
//! "system" bus (zbus, as in `tests/suspend.rs`) whose `Connectivity` and `State` go
//! full → none → full many times, quickly and irregularly, while two `tandemd`s text each
//! other through the relay. Nothing may be lost or delivered twice, each message goes out
//! on one channel only, the clients must not spin (every TCP connection to the relay is
//! counted by a proxy in front of it), and both end online.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use tandem::api::MessagesProxy;
use tokio::net::{TcpListener, TcpStream};

const ALICE: &str = "+15550001111";
const BOB: &str = "+15550002222";

/// Full → none → full cycles.
const FLAPS: usize = 30;
/// Messages each way.
const MESSAGES: usize = 40;

// ---------------------------------------------------------------------------------
// A fake NetworkManager

const NM_PATH: &str = "/org/freedesktop/NetworkManager";
/// `NMConnectivityState`.
const CONNECTIVITY_NONE: u32 = 1;
const CONNECTIVITY_FULL: u32 = 4;
/// `NMState`.
const STATE_DISCONNECTED: u32 = 20;
const STATE_CONNECTED_GLOBAL: u32 = 70;

struct FakeNm {
    connectivity: u32,
    state: u32,
}

#[zbus::interface(name = "org.freedesktop.NetworkManager")]
impl FakeNm {
    #[zbus(property)]
    fn connectivity(&self) -> u32 {
        self.connectivity
    }

    #[zbus(property)]
    fn state(&self) -> u32 {
        self.state
    }
}

async fn fake_nm(bus: &Bus) -> zbus::Connection {
    zbus::connection::Builder::address(bus.address.as_str())
        .serve_at(
            NM_PATH,
            FakeNm {
                connectivity: CONNECTIVITY_FULL,
                state: STATE_CONNECTED_GLOBAL,
            },
        )
        .name("org.freedesktop.NetworkManager")
        .build()
        .await
        .expect("fake NetworkManager on the private bus")
}

/// The network up or down, as NetworkManager says it: `State`, then `Connectivity`.
async fn set_network(nm: &zbus::Connection, up: bool) {
    let iface = nm
        .object_server()
        .interface::<_, FakeNm>(NM_PATH)
        .await
        .expect("the fake's interface");
    {
        let mut fake = iface.get_mut().await;
        (fake.state, fake.connectivity) = if up {
            (STATE_CONNECTED_GLOBAL, CONNECTIVITY_FULL)
        } else {
            (STATE_DISCONNECTED, CONNECTIVITY_NONE)
        };
    }
    let fake = iface.get().await;
    let emitter = iface.signal_emitter();
    fake.state_changed(emitter)
        .await
        .expect("PropertiesChanged");
    fake.connectivity_changed(emitter)
        .await
        .expect("PropertiesChanged");
}

// ---------------------------------------------------------------------------------
// Harness

/// A TCP proxy in front of the relay that counts the connections made through it.
async fn counting_proxy(target: String) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let target = target.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = TcpStream::connect(&target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (format!("ws://{addr}"), count)
}

struct Phone {
    _session: Bus,
    _daemon: Daemon,
    signals: SignalLog,
    api: MessagesProxy<'static>,
}

impl Phone {
    async fn start(system: &Bus, dir: &std::path::Path, number: &str, relay: &str) -> Phone {
        let session = Bus::start();
        let signals = SignalLog::start(&session).await;
        // A short fallback: receipts that a dropped connection holds up end in revokes,
        // the path where a message could go out on both channels.
        let config = config_with_relay(number, relay, 2);
        let daemon = Daemon::start(&session, system, dir, &config).await;
        let api = client(&session).await;
        Phone {
            _session: session,
            _daemon: daemon,
            signals,
            api,
        }
    }

    async fn online(&self) {
        eventually("RelayState online", || async {
            self.api.relay_state().await.ok().as_deref() == Some("online")
        })
        .await;
    }

    async fn sees(&self, number: &str, presence: &str) {
        eventually(&format!("{number} {presence}"), || async {
            self.api.get_presence(number).await.ok().as_deref() == Some(presence)
        })
        .await;
    }

    async fn send(&self, to: &str, text: &str) -> String {
        self.api
            .send_message(to, text, HashMap::new())
            .await
            .expect("SendMessage")
    }

    /// How often each text was received.
    fn received_counts(&self) -> HashMap<String, Vec<String>> {
        let mut counts: HashMap<String, Vec<String>> = HashMap::new();
        for m in self.signals.received() {
            counts.entry(m.text).or_default().push(m.channel);
        }
        counts
    }
}

/// A small deterministic generator of waits (xorshift), so a failure can be replayed.
struct Waits(u64);

impl Waits {
    fn next_ms(&mut self, lo: u64, hi: u64) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_millis(lo + self.0 % (hi - lo + 1))
    }
}

/// Waits until every message in `ids` is `delivered` (none may fail).
async fn all_delivered(phone: &Phone, ids: &[String], who: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut pending = Vec::new();
        for id in ids {
            let m = phone.api.get_message(id).await.expect("GetMessage");
            assert_ne!(m.status, "failed", "{who}'s {id} failed: {m:?}");
            if m.status != "delivered" {
                pending.push((m.text, m.status, m.channel));
            }
        }
        if pending.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{who}'s messages not delivered: {pending:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn connectivity_flapping_loses_nothing_and_doubles_nothing() {
    let dir = temp_dir();
    let system = Bus::start();
    let _sim = Sim::start(&system, &[ALICE, BOB]);
    let ctl = SimCtl::new(&system.connect().await).await;
    let nm = fake_nm(&system).await;
    let relay = Relay::start(dir.path());
    let (url, connections) = counting_proxy(relay.addr.clone()).await;
    let alice = Phone::start(&system, &dir.path().join("alice"), ALICE, &url).await;
    let bob = Phone::start(&system, &dir.path().join("bob"), BOB, &url).await;
    alice.online().await;
    bob.online().await;
    alice.api.watch(vec![BOB.into()]).await.expect("Watch");
    bob.api.watch(vec![ALICE.into()]).await.expect("Watch");
    alice.sees(BOB, "online").await;
    bob.sees(ALICE, "online").await;
    let before = connections.load(Ordering::SeqCst);
    assert_eq!(before, 2, "one connection each");

    // The network flaps while both keep texting.
    let flapping = async {
        let mut waits = Waits(0x9e37_79b9_7f4a_7c15);
        for _ in 0..FLAPS {
            set_network(&nm, false).await;
            tokio::time::sleep(waits.next_ms(20, 300)).await;
            set_network(&nm, true).await;
            tokio::time::sleep(waits.next_ms(20, 600)).await;
        }
    };
    let texting = async {
        let mut waits = Waits(0x2545_f491_4f6c_dd1d);
        let mut sent = (Vec::new(), Vec::new());
        for i in 0..MESSAGES {
            sent.0
                .push(alice.send(BOB, &format!("alice to bob #{i}")).await);
            tokio::time::sleep(waits.next_ms(40, 200)).await;
            sent.1
                .push(bob.send(ALICE, &format!("bob to alice #{i}")).await);
            tokio::time::sleep(waits.next_ms(40, 200)).await;
        }
        sent
    };
    let ((), (from_alice, from_bob)) = tokio::join!(flapping, texting);

    // The network stays up now: both end online, seeing each other.
    alice.online().await;
    bob.online().await;
    alice.sees(BOB, "online").await;
    bob.sees(ALICE, "online").await;

    // Everything delivered, each on one channel, exactly once.
    all_delivered(&alice, &from_alice, "Alice").await;
    all_delivered(&bob, &from_bob, "Bob").await;
    // Longer than the fallback: a late revoke or resend would show now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (sender, recipient, ids, prefix) in [
        (&alice, &bob, &from_alice, "alice to bob"),
        (&bob, &alice, &from_bob, "bob to alice"),
    ] {
        let counts = recipient.received_counts();
        assert_eq!(counts.len(), MESSAGES, "{prefix}: {counts:?}");
        for (i, id) in ids.iter().enumerate() {
            let text = format!("{prefix} #{i}");
            let m = sender.api.get_message(id).await.expect("GetMessage");
            assert_eq!(m.status, "delivered", "{text}");
            assert_eq!(
                counts.get(&text),
                Some(&vec![m.channel.clone()]),
                "{text} received once, on the channel it was sent on"
            );
        }
    }
    let sms = |phone: &Phone| {
        phone
            .signals
            .received()
            .iter()
            .filter(|m| m.channel == "sms")
            .count()
    };
    // Each SMS went to the carrier once.
    assert_eq!(ctl.get_sent(ALICE).await.len(), sms(&bob), "Alice's SMS");
    assert_eq!(ctl.get_sent(BOB).await.len(), sms(&alice), "Bob's SMS");

    // No spinning: one connection per daemon for each time the network came back (a
    // dial cut short by the next drop included), and the first ones; a little room for
    // a reconnect after a connection the relay ended (none seen: exactly 2 + 2 × FLAPS).
    // A client that spins, or dials twice per change, is far past it.
    let made = connections.load(Ordering::SeqCst);
    let ip = 2 * MESSAGES - sms(&alice) - sms(&bob);
    eprintln!(
        "{FLAPS} flaps: {made} relay connections, {ip} messages over IP, {} by SMS",
        sms(&alice) + sms(&bob)
    );
    assert!(
        made <= before + 2 * FLAPS + 4,
        "{made} connections for {FLAPS} flaps"
    );
    assert!(
        made > before + FLAPS,
        "{made} connections: the flaps did not reach the clients"
    );
}
