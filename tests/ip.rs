//! End-to-end: the IP channel with the real binaries. A relay on loopback, the simulator
//! hosting Alice's and Bob's modems (and the carrier between them) on a private system
//! bus, and one `tandemd` per phone, each on a private session bus of its own.

mod common;

use std::time::Duration;

use common::relay::script;
use common::*;

const ALICE: &str = "+15550001111";
const BOB: &str = "+15550002222";

/// A phone on the relay at `relay`, with a short fallback (2 s).
async fn phone(system: &Bus, dir: &std::path::Path, number: &str, relay: &str) -> Phone {
    Phone::start(system, dir, &config_with_relay(number, relay, 2)).await
}

struct World {
    dir: tempfile::TempDir,
    system: Bus,
    _sim: Sim,
    ctl: SimCtl,
    relay: Relay,
    alice: Phone,
    bob: Phone,
}

impl World {
    async fn new() -> World {
        let dir = temp_dir();
        let system = Bus::start();
        let sim = Sim::start(&system, &[ALICE, BOB]);
        let ctl = SimCtl::new(&system.connect().await).await;
        let relay = Relay::start(dir.path());
        let alice = phone(&system, &dir.path().join("alice"), ALICE, &relay.url()).await;
        let bob = phone(&system, &dir.path().join("bob"), BOB, &relay.url()).await;
        alice.online().await;
        bob.online().await;
        // Alice follows Bob (a contact without a conversation yet).
        alice.api.watch(vec![BOB.into()]).await.expect("Watch");
        alice.sees(BOB, "online").await;
        World {
            dir,
            system,
            _sim: sim,
            ctl,
            relay,
            alice,
            bob,
        }
    }
}

#[tokio::test]
async fn both_online_the_message_goes_over_ip_with_receipts() {
    let w = World::new().await;
    let id = w.alice.send(BOB, "hi Bob, over IP").await;
    w.alice.wait_status(&id, "delivered").await;
    assert_eq!(
        w.alice.signals.statuses(&id),
        ["sending", "sent", "delivered"]
    );
    let m = w.alice.api.get_message(&id).await.expect("GetMessage");
    assert_eq!((m.channel.as_str(), m.status.as_str()), ("ip", "delivered"));

    w.bob
        .signals
        .wait_until("Bob receives it", |s| s.received().len() == 1)
        .await;
    let got = &w.bob.signals.received()[0];
    assert_eq!(
        (got.peer.as_str(), got.text.as_str(), got.channel.as_str()),
        (ALICE, "hi Bob, over IP", "ip")
    );
    // Nothing went through the SMS centre.
    assert!(w.ctl.get_sent(ALICE).await.is_empty());
    assert!(w.ctl.list_sms(BOB).await.is_empty());
}

#[tokio::test]
async fn presence_follows_the_peer_and_an_offline_peer_gets_sms() {
    let mut w = World::new().await;
    w.bob.daemon.stop();
    w.alice.sees(BOB, "offline").await;
    assert!(
        w.alice.signals.all().iter().any(|s| matches!(s,
            Signal::Presence { number, presence } if number == BOB && presence == "offline")),
        "{:?}",
        w.alice.signals.all()
    );
    let id = w.alice.send(BOB, "you are offline, so SMS").await;
    w.alice.wait_status(&id, "sent").await;
    assert_eq!(w.alice.channel_of(&id).await, "sms");
    assert_eq!(w.ctl.get_sent(ALICE).await.len(), 1);

    // Bob comes back: he finds the SMS on his modem, and Alice sees him online again.
    w.bob.daemon.restart().await;
    w.alice.sees(BOB, "online").await;
    w.bob.gets("you are offline, so SMS", "sms").await;
    // Back to IP.
    let id = w.alice.send(BOB, "and IP again").await;
    w.alice.wait_status(&id, "delivered").await;
    assert_eq!(w.alice.channel_of(&id).await, "ip");
}

#[tokio::test]
async fn no_receipt_in_time_revokes_and_sends_by_sms_exactly_once() {
    let w = World::new().await;
    // Bob's daemon hangs: the relay still has him online, but nothing acks.
    signal(w.bob.daemon.pid(), "-STOP");
    let id = w.alice.send(BOB, "hello? (fallback)").await;
    w.alice.wait_status(&id, "delivered").await;
    signal(w.bob.daemon.pid(), "-CONT");
    let channel = w.alice.channel_of(&id).await;
    assert_eq!(channel, "sms", "{:?}", w.alice.signals.statuses(&id));
    assert_eq!(
        w.alice.signals.statuses(&id),
        ["sending", "sent", "queued", "sending", "sent", "delivered"]
    );
    // Bob gets it once, by SMS; the revoked IP copy is dropped unseen.
    w.bob
        .signals
        .wait_until("Bob gets the SMS", |s| !s.received().is_empty())
        .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let got = w.bob.signals.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].text.as_str(), got[0].channel.as_str()),
        ("hello? (fallback)", "sms")
    );
    let stored = w
        .bob
        .api
        .get_messages(ALICE, "", 10)
        .await
        .expect("GetMessages");
    assert_eq!(stored.len(), 1, "{stored:?}");
}

#[tokio::test]
async fn with_the_relay_down_messages_go_by_sms_at_once() {
    let mut w = World::new().await;
    w.relay.kill();
    w.alice
        .until("Alice offline", async |api| {
            api.relay_state().await.ok().as_deref() != Some("online")
        })
        .await;
    w.alice.sees(BOB, "offline").await;
    let id = w.alice.send(BOB, "relay is down").await;
    w.alice.wait_status(&id, "sent").await;
    assert_eq!(w.alice.channel_of(&id).await, "sms");
    // The relay returns: both log in again by themselves.
    w.relay.restart();
    w.alice.online().await;
    w.alice.sees(BOB, "online").await;
    let _ = (&w.dir, &w.system);
}

#[tokio::test]
async fn registration_proves_the_number_with_an_sms_code() {
    let dir = temp_dir();
    let system = Bus::start();
    let _sim = Sim::start(&system, &[ALICE]);
    // The operator's SMS gateway: here, the simulated carrier delivers the code SMS.
    let script = script(
        dir.path(),
        "send-code",
        &format!(
            "exec busctl --address='{}' call org.tandem.MMSim1 /org/tandem/MMSim1 \
             org.tandem.MMSim1 InjectSms sssa{{sv}} \"$1\" +15550000000 \"$TANDEM_TEXT\" 0 >/dev/null\n",
            system.address
        ),
    );
    let args = ["--verify", "sms-command", "--sms-command", &script];
    let relay = Relay::with_args(dir.path(), &args);
    let alice = phone(&system, &dir.path().join("alice"), ALICE, &relay.url()).await;
    alice.online().await;
    // The code SMS was answered and never shown.
    assert!(
        alice.signals.received().is_empty(),
        "{:?}",
        alice.signals.received()
    );
    assert!(
        alice
            .api
            .list_conversations(0, 10)
            .await
            .expect("list")
            .is_empty()
    );
    let token = dir.path().join("alice/data/tandem/relay-token");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&token).expect("token file").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
}

#[tokio::test]
async fn channel_ip_waits_on_the_relay_for_an_offline_peer() {
    let mut w = World::new().await;
    w.bob.daemon.stop();
    w.alice.sees(BOB, "offline").await;
    let id = w
        .alice
        .send_on(BOB, "kept for you by the relay", "ip")
        .await;
    w.alice.wait_status(&id, "sent").await;
    assert_eq!(w.alice.channel_of(&id).await, "ip");
    // Well past the fallback timeout: a forced IP message is not revoked.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!w.alice.signals.statuses(&id).iter().any(|s| s == "queued"));
    assert!(w.ctl.get_sent(ALICE).await.is_empty());

    w.bob.daemon.restart().await;
    w.alice.wait_status(&id, "delivered").await;
    w.bob.gets("kept for you by the relay", "ip").await;
}

#[tokio::test]
async fn typing_reaches_the_peer_and_ends_by_itself() {
    let w = World::new().await;
    w.bob.api.set_typing(ALICE, true).await.expect("SetTyping");
    w.alice.sees(BOB, "typing").await;
    // Not renewed: it ends after the relay's typing TTL (a few seconds).
    w.alice.sees(BOB, "online").await;
    let seen: Vec<String> = w
        .alice
        .signals
        .all()
        .into_iter()
        .filter_map(|s| match s {
            Signal::Presence { number, presence } if number == BOB => Some(presence),
            _ => None,
        })
        .collect();
    assert!(
        seen.ends_with(&["typing".to_string(), "online".to_string()]),
        "{seen:?}"
    );
}

/// The journal keeps INFO for long and is read by more than the user: numbers (the phone's
/// own among them) and texts are logged at DEBUG only. Two phones register, text over IP
/// and by SMS, with the daemon's default filter at INFO.
#[tokio::test]
async fn at_info_the_log_names_no_number_and_no_text() {
    let dir = temp_dir();
    let system = Bus::start();
    let _sim = Sim::start(&system, &[ALICE, BOB]);
    let relay = Relay::start(dir.path());
    let info = Some("warn,tandem=info,tandemd=info");
    let config = |number| config_with_relay(number, &relay.url(), 2);
    let start = |name: &str, number| {
        let path = dir.path().join(name);
        let config = config(number);
        let system = &system;
        async move { Phone::on_logging(Bus::start(), system, &path, &config, info).await }
    };
    let alice = start("alice", ALICE).await;
    let bob = start("bob", BOB).await;
    alice.online().await;
    bob.online().await;
    alice.api.watch(vec![BOB.into()]).await.expect("Watch");
    alice.sees(BOB, "online").await;
    let ip = alice.send(BOB, "secret over ip").await;
    alice.wait_status(&ip, "delivered").await;
    let sms = bob.send_on(ALICE, "secret by sms", "sms").await;
    bob.wait_status(&sms, "delivered").await;
    alice.gets("secret by sms", "sms").await;

    for (who, log) in [
        ("alice", alice.daemon.log_text()),
        ("bob", bob.daemon.log_text()),
    ] {
        // What the user sees in the journal is there: the test reads the right log.
        assert!(log.contains("logged in to the relay"), "{who}: {log}");
        assert!(!log.contains("DEBUG"), "{who} logged at DEBUG: {log}");
        for secret in [
            "5550001111",
            "5550002222",
            "secret over ip",
            "secret by sms",
        ] {
            assert!(
                !log.contains(secret),
                "{who} logged {secret:?} at INFO:\n{log}"
            );
        }
    }
}
