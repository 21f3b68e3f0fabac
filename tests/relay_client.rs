//! Tests of the daemon's relay client (`tandem::relay::client::run`) against the real
//! relay (`tandem::relay::run` on 127.0.0.1:0), against small fake relays where the
//! real one cannot misbehave on purpose (silence, hanging up at once), and against a
//! fake NetworkManager on a private bus. Loopback only.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::relay::{make_certs, open_relay, script};
use common::relay_client::online;
use common::*;
use futures_util::{SinkExt as _, StreamExt as _};
use tandem::domain::{Presence, RelayState};
use tandem::net::Connectivity;
use tandem::relay::client::{
    Confirmation, Delivery, Placement, PresenceReport, Refusal, RelayCommand, RelayEvent,
    Revocation, SendAnswer,
};
use tandem::relay::protocol::{
    ClientFrame, Limits, ServerFrame, VerifyMode, decode_client, encode,
};
use tandem::relay::{RelayConfig, Verify};
use tempfile::TempDir;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

const ALICE: &str = "+15550001111";
const BOB: &str = "+15550002222";
const CAROL: &str = "+15550003333";

// ---------------------------------------------------------------------------------
// Harness

/// A relay that sends codes with a script appending `NUMBER CODE` lines to `dir/codes`.
fn sms_relay(dir: &Path) -> RelayConfig {
    sms_relay_slow(dir, "0")
}

/// The same, with the script taking `seconds` more after writing the code: the SMS
/// arrives before the relay's `code-sent`.
fn sms_relay_slow(dir: &Path, seconds: &str) -> RelayConfig {
    let codes = dir.join("codes");
    let body = format!(
        "printf '%s %s\\n' \"$1\" \"$2\" >> '{}'\nsleep {seconds}\n",
        codes.display()
    );
    RelayConfig {
        verify: Verify::SmsCommand(script(dir, "send-code", &body)),
        code_resend: Duration::from_millis(100),
        ..RelayConfig::default()
    }
}

/// The latest code the SMS script "sent" to `number` (waits for it).
async fn sent_code(dir: &Path, number: &str, skip: usize) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let codes = std::fs::read_to_string(dir.join("codes")).unwrap_or_default();
        let mine: Vec<&str> = codes
            .lines()
            .filter_map(|line| line.strip_prefix(number)?.strip_prefix(' '))
            .collect();
        if mine.len() > skip {
            return mine[mine.len() - 1].to_owned();
        }
        assert!(Instant::now() < deadline, "no code SMS for {number}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A relay with `config`, and Alice and Bob logged in on it (their tokens in the
/// directory).
async fn alice_and_bob(config: RelayConfig) -> (LocalRelay, TempDir, RelayClient, RelayClient) {
    let (relay, dir, alice) = alice_on(config).await;
    let bob = online("bob", &relay.url(), &dir.path().join("b"), BOB).await;
    (relay, dir, alice, bob)
}

/// A relay with `config`, and Alice logged in on it (her token in the directory).
async fn alice_on(config: RelayConfig) -> (LocalRelay, TempDir, RelayClient) {
    let relay = LocalRelay::start(config).await;
    let dir = temp_dir();
    let alice = online("alice", &relay.url(), &dir.path().join("a"), ALICE).await;
    (relay, dir, alice)
}

/// Stops the clients, then the relay.
async fn stop_all<const N: usize>(relay: LocalRelay, clients: [RelayClient; N]) {
    for client in clients {
        client.stop().await;
    }
    relay.stop().await;
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .expect("metadata")
        .permissions()
        .mode()
        & 0o777
}

fn entry(number: &str, registered: bool, presence: Presence) -> PresenceReport {
    PresenceReport {
        peer: number.into(),
        registered,
        presence,
    }
}

// ---------------------------------------------------------------------------------
// Registration and login

#[tokio::test]
async fn registers_once_then_logs_in_with_the_stored_token() {
    let relay = LocalRelay::start(open_relay()).await;
    let dir = temp_dir();
    let token = dir.path().join("data/tandem/relay-token");

    let mut alice = RelayClient::start("alice", client_config(&relay.url(), &token));
    assert_eq!(alice.next().await, RelayEvent::State(RelayState::Offline));
    alice.own_number(ALICE).await;
    assert_eq!(
        alice.next().await,
        RelayEvent::State(RelayState::Connecting)
    );
    assert_eq!(alice.next().await, RelayEvent::State(RelayState::Online));
    assert_eq!(alice.next().await, RelayEvent::LoggedIn { queued: 0 });

    assert_eq!(mode(&token), 0o600);
    assert_eq!(mode(&dir.path().join("data/tandem")), 0o700);
    let stored = std::fs::read_to_string(&token).expect("the token file");
    let json: serde_json::Value = serde_json::from_str(&stored).expect("json");
    assert_eq!(json["number"], ALICE);
    let secret = json["token"].as_str().expect("a token");
    assert_eq!(secret.len(), 64, "{secret}");
    alice.stop().await;

    // With --verify none a second `register` would be refused (number-taken): logging
    // in again proves the stored token is used.
    let mut alice = RelayClient::start("alice again", client_config(&relay.url(), &token));
    alice.own_number(ALICE).await;
    assert_eq!(alice.logged_in().await, 0);
    assert_eq!(std::fs::read_to_string(&token).expect("token"), stored);

    // The same number again changes nothing; no number: offline, hung up.
    alice.own_number(ALICE).await;
    alice.cmd(RelayCommand::OwnNumber(None)).await;
    assert_eq!(alice.next().await, RelayEvent::State(RelayState::Offline));
    stop_all(relay, [alice]).await;
}

#[tokio::test]
async fn a_void_token_registers_again() {
    // The relay lost its database: the stored token fails (auth-failed).
    let dir = temp_dir();
    let token = dir.path().join("relay-token");
    let first = LocalRelay::start(open_relay()).await;
    let alice = online("alice", &first.url(), &token, ALICE).await;
    let old = std::fs::read_to_string(&token).expect("token");
    alice.stop().await;
    first.stop().await;

    let second = LocalRelay::start(open_relay()).await;
    let alice = online("alice", &second.url(), &token, ALICE).await;
    let new = std::fs::read_to_string(&token).expect("a new token");
    assert_ne!(old, new);
    assert_eq!(mode(&token), 0o600);
    // Between the two: Connecting (login refused), Offline (backing off), then again.
    let states: Vec<&RelayEvent> = alice
        .seen
        .iter()
        .filter(|e| matches!(e, RelayEvent::State(_)))
        .collect();
    assert!(
        states.contains(&&RelayEvent::State(RelayState::Offline)),
        "{states:?}"
    );
    alice.cmd(RelayCommand::OwnNumber(None)).await;
    alice.stop().await;
    second.stop().await;
}

#[tokio::test]
async fn a_taken_number_backs_off() {
    let (relay, dir, alice) = alice_on(open_relay()).await;

    // Another device without a token: register answers number-taken, every time.
    let mut config = client_config(&relay.url(), &dir.path().join("b"));
    config.max_backoff = Duration::from_millis(500);
    let mut mallory = RelayClient::start("mallory", config);
    mallory.own_number(ALICE).await;
    let started = Instant::now();
    mallory
        .never(Duration::from_secs(2), "login", |e| {
            matches!(
                e,
                RelayEvent::LoggedIn { .. } | RelayEvent::State(RelayState::Online)
            )
        })
        .await;
    let attempts = mallory.attempts();
    let limit = (started.elapsed().as_millis() / 500) as usize + 1;
    assert!(
        (1..=limit).contains(&attempts),
        "{attempts} attempts in {:?}",
        started.elapsed()
    );
    assert!(!dir.path().join("b").exists());
    stop_all(relay, [mallory, alice]).await;
}

#[tokio::test]
async fn registration_by_sms_code() {
    let dir = temp_dir();
    let relay = LocalRelay::start(sms_relay(dir.path())).await;
    let token = dir.path().join("relay-token");

    let mut alice = RelayClient::start("alice", client_config(&relay.url(), &token));
    // A code before any registration is ignored.
    alice.cmd(RelayCommand::Code("123456".to_owned())).await;
    alice.own_number(ALICE).await;
    let number = alice.awaiting_code().await;
    assert_eq!(number, ALICE);
    let code = sent_code(dir.path(), ALICE, 0).await;

    // A wrong code (another SMS?) is refused; the client waits for the right one.
    let wrong = if code == "000000" { "111111" } else { "000000" };
    alice.cmd(RelayCommand::Code(wrong.to_owned())).await;
    alice
        .never(Duration::from_millis(300), "login", |e| {
            matches!(
                e,
                RelayEvent::LoggedIn { .. } | RelayEvent::State(RelayState::Offline)
            )
        })
        .await;
    alice.cmd(RelayCommand::Code(code)).await;
    alice.logged_in().await;
    assert_eq!(mode(&token), 0o600);
    alice.stop().await;

    // Logging in again needs no code.
    let alice = online("alice again", &relay.url(), &token, ALICE).await;
    assert!(
        !alice
            .seen
            .iter()
            .any(|e| matches!(e, RelayEvent::AwaitingCode { .. }))
    );
    alice.cmd(RelayCommand::OwnNumber(None)).await;
    stop_all(relay, [alice]).await;
}

#[tokio::test]
async fn a_slow_code_outlives_the_auth_timeout() {
    let dir = temp_dir();
    let relay = LocalRelay::start(RelayConfig {
        auth_timeout: Duration::from_millis(500),
        ..sms_relay(dir.path())
    })
    .await;
    let (proxy, connections) = counting_proxy(relay.addr).await;
    let token = dir.path().join("relay-token");
    let mut bob = RelayClient::start("bob", client_config(&format!("ws://{proxy}"), &token));
    bob.own_number(BOB).await;
    bob.awaiting_code().await;
    let code = sent_code(dir.path(), BOB, 0).await;
    // The relay hangs up (auth-timeout); the client waits for the code, still
    // registering, without dialing again.
    bob.never(Duration::from_millis(1500), "a change", |e| {
        matches!(e, RelayEvent::State(_) | RelayEvent::AwaitingCode { .. })
    })
    .await;
    assert_eq!(connections.load(Ordering::SeqCst), 1);
    // The code comes: verified on a new connection, at once.
    bob.cmd(RelayCommand::Code(code)).await;
    bob.logged_in().await;
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    assert!(token.exists());
    let sms = std::fs::read_to_string(dir.path().join("codes")).expect("codes");
    assert_eq!(sms.lines().count(), 1, "one code SMS only: {sms}");
    stop_all(relay, [bob]).await;
}

#[tokio::test]
async fn the_code_sms_may_come_before_code_sent() {
    let dir = temp_dir();
    let relay = LocalRelay::start(sms_relay_slow(dir.path(), "0.5")).await;
    let token = dir.path().join("relay-token");
    let mut carol = RelayClient::start("carol", client_config(&relay.url(), &token));
    carol.own_number(CAROL).await;
    let code = sent_code(dir.path(), CAROL, 0).await;
    carol.cmd(RelayCommand::Code(code)).await;
    carol.awaiting_code().await;
    carol.logged_in().await;
    stop_all(relay, [carol]).await;
}

#[tokio::test]
async fn a_number_moved_to_another_device_is_not_taken_back() {
    let dir = temp_dir();
    let relay = LocalRelay::start(sms_relay(dir.path())).await;
    let register = |name, token: PathBuf| {
        let relay_url = relay.url();
        let dir = dir.path().to_owned();
        async move {
            let mut client = RelayClient::start(name, client_config(&relay_url, &token));
            client.own_number(ALICE).await;
            client.awaiting_code().await;
            let skip = std::fs::read_to_string(dir.join("codes"))
                .unwrap_or_default()
                .lines()
                .count()
                .saturating_sub(1);
            let code = sent_code(&dir, ALICE, skip).await;
            client.cmd(RelayCommand::Code(code)).await;
            client.logged_in().await;
            client
        }
    };
    let old_token = dir.path().join("old-phone");
    let mut old = register("old phone", old_token.clone()).await;
    let new = register("new phone", dir.path().join("new-phone")).await;

    // The old phone is replaced, its token fails: it stops, without a code SMS.
    old.state(RelayState::Offline).await;
    old.never(Duration::from_secs(1), "a login or registration", |e| {
        matches!(
            e,
            RelayEvent::LoggedIn { .. } | RelayEvent::AwaitingCode { .. }
        )
    })
    .await;
    assert!(!old_token.exists(), "the void token is removed");
    let sms = std::fs::read_to_string(dir.path().join("codes")).expect("codes");
    assert_eq!(sms.lines().count(), 2, "{sms}");
    stop_all(relay, [old, new]).await;
}

// ---------------------------------------------------------------------------------
// Messages

#[tokio::test]
async fn messages_receipts_and_revokes() {
    let (relay, _dir, mut alice, mut bob) = alice_and_bob(open_relay()).await;

    // Delivered with receipt.
    alice.send("m1", BOB, "hello").await;
    assert_eq!(alice.placed("m1").await, (Placement::Online, false));
    bob.next_like(RelayEvent::Deliver {
        from: ALICE.into(),
        id: "m1".into(),
        text: "hello".into(),
        ts: 1_700_000_000_000,
    })
    .await;
    bob.ack(ALICE, "m1").await;
    bob.next_like(RelayEvent::Confirm {
        from: ALICE.into(),
        id: "m1".into(),
        outcome: Confirmation::Delivered,
    })
    .await;
    let receipt = alice.receipt("m1").await;
    assert_eq!(receipt, (BOB.to_owned(), Delivery::Delivered));

    // A resend is a duplicate; an unregistered number is refused.
    alice.send("m1", BOB, "hello").await;
    assert_eq!(alice.placed("m1").await, (Placement::Delivered, true));
    alice.send("m2", CAROL, "hi").await;
    assert_eq!(alice.refused("m2").await, Refusal::RecipientUnregistered);

    // Revoked before Bob's ack: Bob's ack then learns it is revoked.
    alice.send("m3", BOB, "take this back").await;
    alice.accepted("m3").await;
    bob.delivered("m3").await;
    alice.revoke("m3").await;
    assert_eq!(alice.revoke_answer("m3").await, Some(Revocation::Revoked));
    bob.ack(ALICE, "m3").await;
    assert_eq!(bob.confirmed("m3").await, Confirmation::Revoked);

    // Too late to revoke m1; an id never sent will never be delivered: revoked.
    alice.revoke("m1").await;
    assert_eq!(
        alice.revoke_answer("m1").await,
        Some(Revocation::AlreadyDelivered)
    );
    alice.revoke("never").await;
    assert_eq!(
        alice.revoke_answer("never").await,
        Some(Revocation::Revoked)
    );

    // Bob to Alice, the other way round.
    bob.send("b1", ALICE, "back").await;
    bob.accepted("b1").await;
    assert_eq!(alice.delivered("b1").await, BOB);
    bob.revoke("b1").await;
    assert_eq!(bob.revoke_answer("b1").await, Some(Revocation::Revoked));

    // Larger than the relay's text limit: refused here, the connection stays.
    alice.send("big", BOB, &"x".repeat(64 * 1024 + 1)).await;
    assert_eq!(alice.refused("big").await, Refusal::TextTooLarge);
    // Within the text limit, but JSON-escaped beyond the frame limit: refused too.
    alice.send("escaped", BOB, &"\u{1}".repeat(60 * 1024)).await;
    assert_eq!(alice.refused("escaped").await, Refusal::FrameTooLarge);
    alice.send("m4", BOB, "still here").await;
    alice.accepted("m4").await;
    // The refusals did not cost the connection.
    let online_at = alice
        .seen
        .iter()
        .position(|e| *e == RelayEvent::State(RelayState::Online))
        .expect("online");
    assert!(
        !alice.seen[online_at + 1..]
            .iter()
            .any(|e| matches!(e, RelayEvent::State(_))),
        "{:?}",
        alice.seen
    );

    stop_all(relay, [alice, bob]).await;
}

#[tokio::test]
async fn sends_over_the_relays_quota_wait_and_keep_their_order() {
    // The relay accepts 60 messages a minute from one sender (a minute's worth at once):
    // the client sends 63 at once. The ones rate-limited are not refused to the engine
    // (that would send them by SMS): they go again when the relay says, in order.
    let (relay, _dir, mut alice, mut bob) = alice_and_bob(RelayConfig {
        sender_messages_per_min: 60,
        ..open_relay()
    })
    .await;
    let count = 63;
    let ids: Vec<String> = (0..count).map(|n| format!("m{n:02}")).collect();
    for id in &ids {
        alice.send(id, BOB, "quick").await;
    }
    let mut answered = 0;
    while answered < count {
        let answer = alice
            .expect("a send answer", |e| match e {
                RelayEvent::SendAnswer { answer, .. } => Some(answer.clone()),
                _ => None,
            })
            .await;
        assert!(
            matches!(
                answer,
                SendAnswer::Accepted {
                    duplicate: false,
                    ..
                }
            ),
            "{answer:?}"
        );
        answered += 1;
    }
    let mut delivered = Vec::new();
    while delivered.len() < count {
        let (from, id) = bob
            .expect("Deliver", |e| match e {
                RelayEvent::Deliver { from, id, .. } => Some((from.clone(), id.clone())),
                _ => None,
            })
            .await;
        bob.ack(from.as_str(), id.as_str()).await;
        delivered.push(String::from(id));
    }
    assert_eq!(delivered, ids);
    stop_all(relay, [alice, bob]).await;
}

#[tokio::test]
async fn not_logged_in_answers_at_once_and_subscribes_later() {
    let relay = LocalRelay::start(open_relay()).await;
    let dir = temp_dir();
    let mut bob = RelayClient::start("bob", client_config(&relay.url(), &dir.path().join("b")));
    assert_eq!(bob.next().await, RelayEvent::State(RelayState::Offline));

    bob.send("m1", ALICE, "hi").await;
    assert_eq!(
        bob.next().await,
        RelayEvent::SendAnswer {
            id: "m1".into(),
            answer: SendAnswer::NotConnected
        }
    );
    bob.revoke("m1").await;
    assert_eq!(
        bob.next().await,
        RelayEvent::RevokeAnswer {
            id: "m1".into(),
            outcome: None
        }
    );
    // Dropped: no answer at all.
    bob.ack(ALICE, "x").await;
    bob.typing(ALICE, true).await;
    // Remembered for the login.
    bob.subscribe(&[ALICE]).await;
    bob.never(Duration::from_millis(200), "an answer", |_| true)
        .await;

    bob.own_number(BOB).await;
    assert_eq!(bob.next().await, RelayEvent::State(RelayState::Connecting));
    // Sends while connecting: not connected either.
    bob.send("m2", ALICE, "hi").await;
    assert_eq!(bob.send_answer("m2").await, SendAnswer::NotConnected);
    bob.logged_in().await;
    let snapshot = bob.snapshot().await;
    assert_eq!(snapshot, [entry(ALICE, false, Presence::Offline)]);
    stop_all(relay, [bob]).await;
}

// ---------------------------------------------------------------------------------
// Presence

#[tokio::test]
async fn presence_and_typing() {
    let (relay, dir, mut alice, bob) = alice_and_bob(open_relay()).await;
    let bob_token = dir.path().join("b");

    alice.subscribe(&[BOB, CAROL]).await;
    assert_eq!(
        alice.snapshot().await,
        [
            entry(BOB, true, Presence::Online),
            entry(CAROL, false, Presence::Offline)
        ]
    );

    bob.typing(ALICE, true).await;
    assert_eq!(
        alice.presence("typing").await,
        entry(BOB, true, Presence::Typing)
    );
    bob.typing(ALICE, false).await;
    assert_eq!(
        alice.presence("online").await,
        entry(BOB, true, Presence::Online)
    );

    // Bob's daemon stops (the client hangs up), then comes back.
    bob.stop().await;
    assert_eq!(
        alice.presence("offline").await,
        entry(BOB, true, Presence::Offline)
    );
    let bob = online("bob again", &relay.url(), &bob_token, BOB).await;
    assert_eq!(
        alice.presence("online again").await,
        entry(BOB, true, Presence::Online)
    );
    stop_all(relay, [bob, alice]).await;
}

// ---------------------------------------------------------------------------------
// Reconnecting

#[tokio::test]
async fn the_relay_restarts_and_the_client_logs_in_again() {
    let dir = temp_dir();
    let db = dir.path().join("relay.db");
    let config = || RelayConfig {
        db_path: Some(db.clone()),
        ..open_relay()
    };
    let relay = LocalRelay::start(config()).await;
    let addr = relay.addr;
    let mut alice = online("alice", &relay.url(), &dir.path().join("a"), ALICE).await;
    alice.subscribe(&[BOB]).await;
    alice.snapshot().await;

    relay.stop().await;
    alice.state(RelayState::Offline).await;
    alice.send("m1", BOB, "anyone?").await;
    assert_eq!(alice.send_answer("m1").await, SendAnswer::NotConnected);
    alice.revoke("m1").await;
    assert_eq!(alice.revoke_answer("m1").await, None);

    // Same port, same database: the token still works; the subscription comes back.
    let relay = LocalRelay::start_at(addr, config()).await;
    alice.logged_in().await;
    let snapshot = alice.snapshot().await;
    assert_eq!(snapshot, [entry(BOB, false, Presence::Offline)]);
    assert!(
        !alice
            .seen
            .iter()
            .any(|e| matches!(e, RelayEvent::AwaitingCode { .. })),
    );
    stop_all(relay, [alice]).await;
}

#[tokio::test]
async fn keepalive_holds_an_idle_connection() {
    // The relay pings every 100 ms and drops a client silent for 300 ms; the client
    // treats 300 ms without a frame as dead. Only pings and pongs keep it up.
    let (relay, _dir, mut alice) = alice_on(RelayConfig {
        ping_interval: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(300),
        ..open_relay()
    })
    .await;
    alice
        .never(Duration::from_millis(1500), "a state change", |e| {
            matches!(e, RelayEvent::State(_) | RelayEvent::LoggedIn { .. })
        })
        .await;
    alice.send("m1", ALICE, "to myself").await;
    alice.accepted("m1").await;
    stop_all(relay, [alice]).await;
}

#[tokio::test]
async fn a_new_own_number_logs_in_as_that_number() {
    let relay = LocalRelay::start(open_relay()).await;
    let dir = temp_dir();
    let token = dir.path().join("relay-token");
    let mut phone = online("phone", &relay.url(), &token, ALICE).await;
    phone.send("m1", ALICE, "pending?").await;
    // A new SIM: the connection as Alice ends, the client registers Bob and logs in.
    phone.own_number(BOB).await;
    phone.logged_in().await;
    let stored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&token).expect("token")).expect("json");
    assert_eq!(stored["number"], BOB);
    phone.send("m2", BOB, "who am I").await;
    assert_eq!(phone.delivered("m2").await, BOB);
    // Every send got its answer, whichever connection it went on.
    let answers = phone
        .seen
        .iter()
        .filter(|e| matches!(e, RelayEvent::SendAnswer { id, .. } if id == "m1"))
        .count();
    assert_eq!(answers, 1);
    stop_all(relay, [phone]).await;
}

/// A fake relay: greets with `idle_timeout_ms`, registers and logs in anyone, then
/// reads everything and answers nothing, sends nothing (not even pings).
async fn silent_relay(idle_timeout_ms: u64) -> (SocketAddr, Arc<AtomicUsize>) {
    counting_server(move |stream| async move {
        let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
            return;
        };
        while let Some(Ok(message)) = ws.next().await {
            let Message::Text(text) = message else {
                continue;
            };
            let answer = match decode_client(&text) {
                Ok(ClientFrame::Hello { .. }) => ServerFrame::Welcome {
                    v: 1,
                    server: "silent".to_owned(),
                    verify: VerifyMode::None,
                    limits: Limits {
                        max_frame_bytes: 262_144,
                        max_text_bytes: 65_536,
                        max_subscriptions: 1000,
                        queue_per_recipient: 1000,
                        max_age_ms: 1000,
                        ping_interval_ms: 30_000,
                        idle_timeout_ms,
                        typing_ttl_ms: 5000,
                        auth_timeout_ms: 30_000,
                    },
                },
                Ok(ClientFrame::Register { number }) => ServerFrame::Registered {
                    number,
                    token: "t".repeat(64),
                },
                Ok(ClientFrame::Login { number, .. }) => {
                    ServerFrame::LoggedIn { number, queued: 0 }
                }
                _ => continue,
            };
            let text = Utf8Bytes::from(encode(&answer));
            if ws.send(Message::Text(text)).await.is_err() {
                return;
            }
        }
    })
    .await
}

#[tokio::test]
async fn a_silent_relay_is_dead_and_owes_every_answer() {
    let (addr, accepted) = silent_relay(400).await;
    let dir = temp_dir();
    let mut alice = online(
        "alice",
        &format!("ws://{addr}"),
        &dir.path().join("a"),
        ALICE,
    )
    .await;
    let since = Instant::now();
    alice.send("m1", BOB, "hello?").await;
    alice.revoke("m0").await;
    assert_eq!(alice.send_answer("m1").await, SendAnswer::Lost);
    assert_eq!(alice.revoke_answer("m0").await, None);
    let waited = since.elapsed();
    assert!(
        waited >= Duration::from_millis(350) && waited < Duration::from_secs(3),
        "dead after {waited:?}"
    );
    // And it comes back by itself.
    alice.logged_in().await;
    assert!(accepted.load(Ordering::SeqCst) >= 2);
    alice.stop().await;
}

#[tokio::test]
async fn backoff_does_not_spin() {
    let dir = temp_dir();
    // A server that hangs up at once.
    let (addr, accepted) = counting_server(|stream| async move { drop(stream) }).await;
    let mut config = client_config(&format!("ws://{addr}"), &dir.path().join("a"));
    config.min_backoff = Duration::from_millis(100);
    config.max_backoff = Duration::from_millis(400);
    let mut client = RelayClient::start("closing", config.clone());
    // No number, or one the relay would refuse: no connection at all.
    client.own_number("0555 0001111").await;
    client
        .never(Duration::from_millis(300), "a state change", |e| {
            *e != RelayEvent::State(RelayState::Offline)
        })
        .await;
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
    client.own_number(ALICE).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let attempts = accepted.load(Ordering::SeqCst);
    assert!(
        (3..=21).contains(&attempts),
        "{attempts} connections in 2 s"
    );
    client.stop().await;

    // A port that refuses: count the attempts by their Connecting state.
    let refusing = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = refusing.local_addr().expect("addr");
    drop(refusing);
    config.url = format!("ws://{addr}");
    let mut client = RelayClient::start("refused", config);
    client.own_number(ALICE).await;
    client
        .never(Duration::from_secs(2), "a login", |e| {
            matches!(e, RelayEvent::LoggedIn { .. })
        })
        .await;
    let attempts = client.attempts();
    assert!((3..=21).contains(&attempts), "{attempts} attempts in 2 s");
    client.stop().await;
}

// ---------------------------------------------------------------------------------
// NetworkManager

#[tokio::test]
async fn follows_network_manager() {
    let bus = Bus::start();
    let nm = Nm::start(&bus, Connectivity::NoNetwork).await;
    let relay = LocalRelay::start(open_relay()).await;
    let dir = temp_dir();
    let mut config = client_config(&relay.url(), &dir.path().join("a"));
    // Slow backoff: reconnecting within a second proves it did not wait for it.
    config.min_backoff = Duration::from_secs(5);
    config.max_backoff = Duration::from_secs(10);
    let system = bus.connect().await;
    let mut alice = RelayClient::start_with("alice", config, Some(system));
    alice.own_number(ALICE).await;

    // No network: no dialing.
    alice
        .never(Duration::from_millis(500), "a connection", |e| {
            *e != RelayEvent::State(RelayState::Offline)
        })
        .await;
    nm.set_connectivity(Connectivity::Full).await;
    alice.logged_in().await;

    // Gone, then back: offline at once, online again at once.
    nm.set_connectivity(Connectivity::NoNetwork).await;
    alice.state(RelayState::Offline).await;
    let back = Instant::now();
    nm.set_connectivity(Connectivity::Full).await;
    alice.logged_in().await;
    assert!(
        back.elapsed() < Duration::from_secs(2),
        "{:?}",
        back.elapsed()
    );

    // Limited connectivity changes nothing for a connected client.
    nm.set_connectivity(Connectivity::Limited).await;
    alice
        .never(Duration::from_millis(300), "a state change", |e| {
            matches!(e, RelayEvent::State(_))
        })
        .await;

    // NetworkManager says none, then goes away: the client just tries.
    nm.set_connectivity(Connectivity::NoNetwork).await;
    alice.state(RelayState::Offline).await;
    drop(nm);
    alice.logged_in().await;

    stop_all(relay, [alice]).await;
}

// ---------------------------------------------------------------------------------
// TLS

#[tokio::test]
async fn logs_in_over_wss() {
    let dir = temp_dir();
    let (ca, cert, key) = make_certs(dir.path());
    let tls = tandem::relay::server::load_tls(&cert, &key).expect("load TLS");
    let relay = LocalRelay::start(RelayConfig {
        tls: Some(tls),
        ..open_relay()
    })
    .await;
    let roots = tandem::relay::client::tls_with_roots(&ca).expect("roots");
    let url = format!("wss://127.0.0.1:{}/", relay.addr.port());
    let mut alice =
        RelayClient::start_tls("alice", client_config(&url, &dir.path().join("a")), roots);
    alice.own_number(ALICE).await;
    alice.logged_in().await;
    alice.stop().await;

    // A relay whose certificate is not trusted: never logged in.
    let other = tandem::relay::client::tls_with_roots(&cert).expect("roots");
    let mut mallory = RelayClient::start_tls(
        "untrusting",
        client_config(&url, &dir.path().join("b")),
        other,
    );
    mallory.own_number(BOB).await;
    mallory
        .never(Duration::from_millis(500), "a login", |e| {
            matches!(e, RelayEvent::LoggedIn { .. })
        })
        .await;
    stop_all(relay, [mallory]).await;
}
