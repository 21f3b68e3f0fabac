//! NetworkManager connectivity flapping, end to end: a fake NetworkManager on the private
//! "system" bus (zbus, as in `tests/suspend.rs`) whose `Connectivity` and `State` go
//! full → none → full many times, quickly and irregularly, while two `tandemd`s text each
//! other through the relay. Nothing may be lost or delivered twice, each message goes out
//! on one channel only, the clients must not spin (every TCP connection to the relay is
//! counted by a proxy in front of it), and both end online.

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::*;
use tandem::net::Connectivity;

const ALICE: &str = "+15550001111";
const BOB: &str = "+15550002222";

/// Full → none → full cycles.
const FLAPS: usize = 30;
/// Messages each way.
const MESSAGES: usize = 40;

// ---------------------------------------------------------------------------------
// Harness

/// How often each text was received, on which channels.
fn received_counts(phone: &Phone) -> HashMap<String, Vec<String>> {
    let mut counts: HashMap<String, Vec<String>> = HashMap::new();
    for m in phone.signals.received() {
        counts.entry(m.text).or_default().push(m.channel);
    }
    counts
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
    let (_sim, ctl) = Sim::with_ctl(&system, &[ALICE, BOB]).await;
    let nm = Nm::start(&system, Connectivity::Full).await;
    let relay = Relay::start(dir.path());
    let (proxy, connections) = counting_proxy(relay.addr.parse().expect("address")).await;
    let url = format!("ws://{proxy}");
    // A short fallback: receipts that a dropped connection holds up end in revokes, the
    // path where a message could go out on both channels.
    let (alice, bob) = Phone::pair(&system, dir.path(), [ALICE, BOB], &url, 2).await;
    let before = connections.load(Ordering::SeqCst);
    assert_eq!(before, 2, "one connection each");

    // The network flaps while both keep texting.
    let flapping = async {
        let mut waits = Waits(0x9e37_79b9_7f4a_7c15);
        for _ in 0..FLAPS {
            nm.set_network(false).await;
            tokio::time::sleep(waits.next_ms(20, 300)).await;
            nm.set_network(true).await;
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
    alice.relay_is("online").await;
    bob.relay_is("online").await;
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
        let counts = received_counts(recipient);
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
