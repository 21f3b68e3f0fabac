//! Tests of the daemon's relay client (`tandem::relay::client::run`) against the real
//! relay (`tandem::relay::run` on 127.0.0.1:0), against small fake relays where the
//! real one cannot misbehave on purpose (silence, hanging up at once), and against a
//! fake NetworkManager on a private bus. Loopback only.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tandem::devbus::PrivateBus;
use tandem::domain::{Presence, RelayState};
use tandem::relay::client::{
    ClientConfig, Confirmation, Delivery, Placement, PresenceReport, Refusal, RelayCommand,
    RelayEvent, Revocation, SendAnswer,
};
use tandem::relay::protocol::{
    ClientFrame, Limits, ServerFrame, VerifyMode, decode_client, encode,
};
use tandem::relay::{RelayConfig, RelayError, Verify};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// How long a test waits for an event that must come.
const WAIT: Duration = Duration::from_secs(10);

const ALICE: &str = "+15550001111";
const BOB: &str = "+15550002222";
const CAROL: &str = "+15550003333";

// ---------------------------------------------------------------------------------
// Harness: the relay

struct Relay {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), RelayError>>,
}

impl Relay {
    async fn start(config: RelayConfig) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Relay::serve(listener, config)
    }

    /// A relay on `addr` again (after a stop).
    async fn start_at(addr: SocketAddr, config: RelayConfig) -> Relay {
        let listener = TcpListener::bind(addr).await.expect("bind the same port");
        Relay::serve(listener, config)
    }

    fn serve(listener: TcpListener, config: RelayConfig) -> Relay {
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(tandem::relay::run(listener, config, async {
            let _ = stopped.await;
        }));
        Relay {
            addr,
            stop: Some(stop),
            task,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("the relay stops in time")
            .expect("the relay task")
            .expect("the relay stops cleanly");
    }
}

/// A relay without verification (`--verify none`).
fn open_relay() -> RelayConfig {
    RelayConfig {
        verify: Verify::None,
        ..RelayConfig::default()
    }
}

/// A relay that sends codes with a script appending `NUMBER CODE` lines to `dir/codes`.
fn sms_relay(dir: &Path) -> RelayConfig {
    sms_relay_slow(dir, "0")
}

/// The same, with the script taking `seconds` more after writing the code: the SMS
/// arrives before the relay's `code-sent`.
fn sms_relay_slow(dir: &Path, seconds: &str) -> RelayConfig {
    let script = dir.join("send-code");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nprintf '%s %s\\n' \"$1\" \"$2\" >> '{}'\nsleep {seconds}\n",
            dir.join("codes").display()
        ),
    )
    .expect("write the SMS script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    RelayConfig {
        verify: Verify::SmsCommand(script.display().to_string()),
        code_resend: Duration::from_millis(100),
        ..RelayConfig::default()
    }
}

/// A TCP forwarder to `target` that counts the connections it accepts.
async fn counting_proxy(target: SocketAddr) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    (addr, accepted)
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

// ---------------------------------------------------------------------------------
// Harness: the client

fn client_config(url: &str, token_path: &Path) -> ClientConfig {
    ClientConfig {
        url: url.to_owned(),
        token_path: token_path.to_owned(),
        min_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(400),
    }
}

struct Client {
    name: &'static str,
    commands: mpsc::Sender<RelayCommand>,
    events: mpsc::Receiver<RelayEvent>,
    task: JoinHandle<()>,
    /// Every event received, for failure messages.
    seen: Vec<RelayEvent>,
}

impl Client {
    fn start(name: &'static str, config: ClientConfig) -> Client {
        Client::start_with(name, config, None)
    }

    fn start_with(
        name: &'static str,
        config: ClientConfig,
        system: Option<zbus::Connection>,
    ) -> Client {
        let (commands, commands_rx) = mpsc::channel(16);
        let (events_tx, events) = mpsc::channel(16);
        // The network's adapter, as the daemon starts it beside the client.
        let net = system.map(tandem::net::spawn);
        let task = tokio::spawn(tandem::relay::client::run(
            config,
            commands_rx,
            events_tx,
            net,
        ));
        Client {
            name,
            commands,
            events,
            task,
            seen: Vec::new(),
        }
    }

    fn start_tls(
        name: &'static str,
        config: ClientConfig,
        tls: Arc<rustls::ClientConfig>,
    ) -> Client {
        let (commands, commands_rx) = mpsc::channel(16);
        let (events_tx, events) = mpsc::channel(16);
        let task = tokio::spawn(tandem::relay::client::run_with_tls(
            config,
            tls,
            commands_rx,
            events_tx,
            None,
        ));
        Client {
            name,
            commands,
            events,
            task,
            seen: Vec::new(),
        }
    }

    async fn cmd(&self, command: RelayCommand) {
        self.commands.send(command).await.expect("the client runs");
    }

    /// The next event, whatever it is.
    async fn next(&mut self) -> RelayEvent {
        let event = tokio::time::timeout(WAIT, self.events.recv())
            .await
            .unwrap_or_else(|_| panic!("{}: no event in time; seen {:?}", self.name, self.seen))
            .unwrap_or_else(|| panic!("{}: the client stopped", self.name));
        self.seen.push(event.clone());
        event
    }

    /// Waits for the first event `pick` accepts, skipping others.
    async fn expect<T>(&mut self, what: &str, mut pick: impl FnMut(&RelayEvent) -> Option<T>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            let event = match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) => event,
                Ok(None) => panic!("{}: the client stopped while waiting for {what}", self.name),
                Err(_) => panic!("{}: no {what} in time; seen {:?}", self.name, self.seen),
            };
            self.seen.push(event.clone());
            if let Some(value) = pick(&event) {
                return value;
            }
        }
    }

    /// Asserts that no event `bad` accepts comes within `wait` (others are skipped).
    async fn never(&mut self, wait: Duration, what: &str, bad: impl Fn(&RelayEvent) -> bool) {
        let deadline = Instant::now() + wait;
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            self.seen.push(event.clone());
            assert!(!bad(&event), "{}: unexpected {what}: {event:?}", self.name);
        }
    }

    async fn state(&mut self, state: RelayState) {
        self.expect(&format!("state {state:?}"), |e| {
            (*e == RelayEvent::State(state)).then_some(())
        })
        .await;
    }

    async fn logged_in(&mut self) -> u32 {
        self.state(RelayState::Online).await;
        self.expect("LoggedIn", |e| match e {
            RelayEvent::LoggedIn { queued } => Some(*queued),
            _ => None,
        })
        .await
    }

    async fn send_answer(&mut self, id: &str) -> SendAnswer {
        self.expect(&format!("the answer to send {id}"), |e| match e {
            RelayEvent::SendAnswer { id: got, answer } if got == id => Some(answer.clone()),
            _ => None,
        })
        .await
    }

    async fn revoke_answer(&mut self, id: &str) -> Option<Revocation> {
        self.expect(&format!("the answer to revoke {id}"), |e| match e {
            RelayEvent::RevokeAnswer { id: got, outcome } if got == id => Some(*outcome),
            _ => None,
        })
        .await
    }

    async fn send(&self, id: &str, to: &str, text: &str) {
        self.cmd(RelayCommand::Send {
            id: id.into(),
            to: to.into(),
            text: text.into(),
            ts: 1_700_000_000_000,
        })
        .await;
    }

    /// Closes the command channel and waits for the task to end.
    async fn stop(self) {
        let Client { commands, task, .. } = self;
        drop(commands);
        tokio::time::timeout(WAIT, task)
            .await
            .expect("the client stops when its commands close")
            .expect("the client task does not panic");
    }
}

/// A client for `number` on `url`, logged in.
async fn online(name: &'static str, url: &str, token: &Path, number: &str) -> Client {
    let mut client = Client::start(name, client_config(url, token));
    client
        .cmd(RelayCommand::OwnNumber(Some(number.to_owned())))
        .await;
    client.logged_in().await;
    client
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
    let relay = Relay::start(open_relay()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("data/tandem/relay-token");

    let mut alice = Client::start("alice", client_config(&relay.url(), &token));
    assert_eq!(alice.next().await, RelayEvent::State(RelayState::Offline));
    alice
        .cmd(RelayCommand::OwnNumber(Some(ALICE.to_owned())))
        .await;
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
    let mut alice = Client::start("alice again", client_config(&relay.url(), &token));
    alice
        .cmd(RelayCommand::OwnNumber(Some(ALICE.to_owned())))
        .await;
    assert_eq!(alice.logged_in().await, 0);
    assert_eq!(std::fs::read_to_string(&token).expect("token"), stored);

    // The same number again changes nothing; no number: offline, hung up.
    alice
        .cmd(RelayCommand::OwnNumber(Some(ALICE.to_owned())))
        .await;
    alice.cmd(RelayCommand::OwnNumber(None)).await;
    assert_eq!(alice.next().await, RelayEvent::State(RelayState::Offline));
    alice.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn a_void_token_registers_again() {
    // The relay lost its database: the stored token fails (auth-failed).
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("relay-token");
    let first = Relay::start(open_relay()).await;
    let alice = online("alice", &first.url(), &token, ALICE).await;
    let old = std::fs::read_to_string(&token).expect("token");
    alice.stop().await;
    first.stop().await;

    let second = Relay::start(open_relay()).await;
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
    let relay = Relay::start(open_relay()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let alice = online("alice", &relay.url(), &dir.path().join("a"), ALICE).await;

    // Another device without a token: register answers number-taken, every time.
    let mut config = client_config(&relay.url(), &dir.path().join("b"));
    config.max_backoff = Duration::from_millis(500);
    let mut mallory = Client::start("mallory", config);
    mallory
        .cmd(RelayCommand::OwnNumber(Some(ALICE.to_owned())))
        .await;
    let started = Instant::now();
    mallory
        .never(Duration::from_secs(2), "login", |e| {
            matches!(
                e,
                RelayEvent::LoggedIn { .. } | RelayEvent::State(RelayState::Online)
            )
        })
        .await;
    let attempts = mallory
        .seen
        .iter()
        .filter(|e| **e == RelayEvent::State(RelayState::Connecting))
        .count();
    let limit = (started.elapsed().as_millis() / 500) as usize + 1;
    assert!(
        (1..=limit).contains(&attempts),
        "{attempts} attempts in {:?}",
        started.elapsed()
    );
    assert!(!dir.path().join("b").exists());
    mallory.stop().await;
    alice.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn registration_by_sms_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(sms_relay(dir.path())).await;
    let token = dir.path().join("relay-token");

    let mut alice = Client::start("alice", client_config(&relay.url(), &token));
    // A code before any registration is ignored.
    alice.cmd(RelayCommand::Code("123456".to_owned())).await;
    alice
        .cmd(RelayCommand::OwnNumber(Some(ALICE.to_owned())))
        .await;
    let number = alice
        .expect("AwaitingCode", |e| match e {
            RelayEvent::AwaitingCode { number } => Some(number.clone()),
            _ => None,
        })
        .await;
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
    alice.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn a_slow_code_outlives_the_auth_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(RelayConfig {
        auth_timeout: Duration::from_millis(500),
        ..sms_relay(dir.path())
    })
    .await;
    let (proxy, connections) = counting_proxy(relay.addr).await;
    let token = dir.path().join("relay-token");
    let mut bob = Client::start("bob", client_config(&format!("ws://{proxy}"), &token));
    bob.cmd(RelayCommand::OwnNumber(Some(BOB.to_owned()))).await;
    bob.expect("AwaitingCode", |e| {
        matches!(e, RelayEvent::AwaitingCode { .. }).then_some(())
    })
    .await;
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
    bob.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn the_code_sms_may_come_before_code_sent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(sms_relay_slow(dir.path(), "0.5")).await;
    let token = dir.path().join("relay-token");
    let mut carol = Client::start("carol", client_config(&relay.url(), &token));
    carol
        .cmd(RelayCommand::OwnNumber(Some(CAROL.to_owned())))
        .await;
    let code = sent_code(dir.path(), CAROL, 0).await;
    carol.cmd(RelayCommand::Code(code)).await;
    carol
        .expect("AwaitingCode", |e| {
            matches!(e, RelayEvent::AwaitingCode { .. }).then_some(())
        })
        .await;
    carol.logged_in().await;
    carol.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn a_number_moved_to_another_device_is_not_taken_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let relay = Relay::start(sms_relay(dir.path())).await;
    let register = |name, token: PathBuf| {
        let relay_url = relay.url();
        let dir = dir.path().to_owned();
        async move {
            let mut client = Client::start(name, client_config(&relay_url, &token));
            client
                .cmd(RelayCommand::OwnNumber(Some(ALICE.to_owned())))
                .await;
            client
                .expect("AwaitingCode", |e| {
                    matches!(e, RelayEvent::AwaitingCode { .. }).then_some(())
                })
                .await;
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
    old.stop().await;
    new.stop().await;
    relay.stop().await;
}

// ---------------------------------------------------------------------------------
// Messages

#[tokio::test]
async fn messages_receipts_and_revokes() {
    let relay = Relay::start(open_relay()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut alice = online("alice", &relay.url(), &dir.path().join("a"), ALICE).await;
    let mut bob = online("bob", &relay.url(), &dir.path().join("b"), BOB).await;

    // Delivered with receipt.
    alice.send("m1", BOB, "hello").await;
    assert_eq!(
        alice.send_answer("m1").await,
        SendAnswer::Accepted {
            state: Placement::Online,
            duplicate: false
        }
    );
    let delivered = bob
        .expect("Deliver", |e| {
            matches!(e, RelayEvent::Deliver { .. }).then(|| e.clone())
        })
        .await;
    assert_eq!(
        delivered,
        RelayEvent::Deliver {
            from: ALICE.into(),
            id: "m1".into(),
            text: "hello".into(),
            ts: 1_700_000_000_000
        }
    );
    bob.cmd(RelayCommand::Ack {
        from: ALICE.into(),
        id: "m1".into(),
    })
    .await;
    let confirm = bob
        .expect("Confirm", |e| {
            matches!(e, RelayEvent::Confirm { .. }).then(|| e.clone())
        })
        .await;
    assert_eq!(
        confirm,
        RelayEvent::Confirm {
            from: ALICE.into(),
            id: "m1".into(),
            outcome: Confirmation::Delivered
        }
    );
    let receipt = alice
        .expect("Receipt", |e| {
            matches!(e, RelayEvent::Receipt { .. }).then(|| e.clone())
        })
        .await;
    assert_eq!(
        receipt,
        RelayEvent::Receipt {
            id: "m1".into(),
            to: BOB.into(),
            outcome: Delivery::Delivered
        }
    );

    // A resend is a duplicate; an unregistered number is refused.
    alice.send("m1", BOB, "hello").await;
    assert_eq!(
        alice.send_answer("m1").await,
        SendAnswer::Accepted {
            state: Placement::Delivered,
            duplicate: true
        }
    );
    alice.send("m2", CAROL, "hi").await;
    assert!(matches!(
        alice.send_answer("m2").await,
        SendAnswer::Refused {
            reason: Refusal::RecipientUnregistered,
            ..
        }
    ));

    // Revoked before Bob's ack: Bob's ack then learns it is revoked.
    alice.send("m3", BOB, "take this back").await;
    assert!(matches!(
        alice.send_answer("m3").await,
        SendAnswer::Accepted { .. }
    ));
    bob.expect("Deliver m3", |e| {
        matches!(e, RelayEvent::Deliver { id, .. } if id == "m3").then_some(())
    })
    .await;
    alice.cmd(RelayCommand::Revoke { id: "m3".into() }).await;
    assert_eq!(alice.revoke_answer("m3").await, Some(Revocation::Revoked));
    bob.cmd(RelayCommand::Ack {
        from: ALICE.into(),
        id: "m3".into(),
    })
    .await;
    let outcome = bob
        .expect("Confirm m3", |e| match e {
            RelayEvent::Confirm { id, outcome, .. } if id == "m3" => Some(*outcome),
            _ => None,
        })
        .await;
    assert_eq!(outcome, Confirmation::Revoked);

    // Too late to revoke m1; an id never sent will never be delivered: revoked.
    alice.cmd(RelayCommand::Revoke { id: "m1".into() }).await;
    assert_eq!(
        alice.revoke_answer("m1").await,
        Some(Revocation::AlreadyDelivered)
    );
    alice.cmd(RelayCommand::Revoke { id: "never".into() }).await;
    assert_eq!(
        alice.revoke_answer("never").await,
        Some(Revocation::Revoked)
    );

    // Bob to Alice, the other way round.
    bob.send("b1", ALICE, "back").await;
    assert!(matches!(
        bob.send_answer("b1").await,
        SendAnswer::Accepted { .. }
    ));
    alice
        .expect("Deliver b1", |e| {
            matches!(e, RelayEvent::Deliver { id, from, .. } if id == "b1" && from == BOB)
                .then_some(())
        })
        .await;
    bob.cmd(RelayCommand::Revoke { id: "b1".into() }).await;
    assert_eq!(bob.revoke_answer("b1").await, Some(Revocation::Revoked));

    // Larger than the relay's text limit: refused here, the connection stays.
    alice.send("big", BOB, &"x".repeat(64 * 1024 + 1)).await;
    assert!(matches!(
        alice.send_answer("big").await,
        SendAnswer::Refused {
            reason: Refusal::TextTooLarge,
            ..
        }
    ));
    // Within the text limit, but JSON-escaped beyond the frame limit: refused too.
    alice.send("escaped", BOB, &"\u{1}".repeat(60 * 1024)).await;
    assert!(matches!(
        alice.send_answer("escaped").await,
        SendAnswer::Refused {
            reason: Refusal::FrameTooLarge,
            ..
        }
    ));
    alice.send("m4", BOB, "still here").await;
    assert!(matches!(
        alice.send_answer("m4").await,
        SendAnswer::Accepted { .. }
    ));
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

    alice.stop().await;
    bob.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn sends_over_the_relays_quota_wait_and_keep_their_order() {
    // The relay accepts 60 messages a minute from one sender (a minute's worth at once):
    // the client sends 63 at once. The ones rate-limited are not refused to the engine
    // (that would send them by SMS): they go again when the relay says, in order.
    let relay = Relay::start(RelayConfig {
        sender_messages_per_min: 60,
        ..open_relay()
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut alice = online("alice", &relay.url(), &dir.path().join("a"), ALICE).await;
    let mut bob = online("bob", &relay.url(), &dir.path().join("b"), BOB).await;
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
        bob.cmd(RelayCommand::Ack {
            from: from.clone(),
            id: id.clone(),
        })
        .await;
        delivered.push(String::from(id));
    }
    assert_eq!(delivered, ids);
    alice.stop().await;
    bob.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn not_logged_in_answers_at_once_and_subscribes_later() {
    let relay = Relay::start(open_relay()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut bob = Client::start("bob", client_config(&relay.url(), &dir.path().join("b")));
    assert_eq!(bob.next().await, RelayEvent::State(RelayState::Offline));

    bob.send("m1", ALICE, "hi").await;
    assert_eq!(
        bob.next().await,
        RelayEvent::SendAnswer {
            id: "m1".into(),
            answer: SendAnswer::NotConnected
        }
    );
    bob.cmd(RelayCommand::Revoke { id: "m1".into() }).await;
    assert_eq!(
        bob.next().await,
        RelayEvent::RevokeAnswer {
            id: "m1".into(),
            outcome: None
        }
    );
    // Dropped: no answer at all.
    bob.cmd(RelayCommand::Ack {
        from: ALICE.into(),
        id: "x".into(),
    })
    .await;
    bob.cmd(RelayCommand::Typing {
        to: ALICE.into(),
        active: true,
    })
    .await;
    // Remembered for the login.
    bob.cmd(RelayCommand::Subscribe {
        numbers: vec![ALICE.into()],
    })
    .await;
    bob.never(Duration::from_millis(200), "an answer", |_| true)
        .await;

    bob.cmd(RelayCommand::OwnNumber(Some(BOB.to_owned()))).await;
    assert_eq!(bob.next().await, RelayEvent::State(RelayState::Connecting));
    // Sends while connecting: not connected either.
    bob.send("m2", ALICE, "hi").await;
    assert_eq!(bob.send_answer("m2").await, SendAnswer::NotConnected);
    bob.logged_in().await;
    let snapshot = bob
        .expect("Snapshot", |e| match e {
            RelayEvent::Snapshot(entries) => Some(entries.clone()),
            _ => None,
        })
        .await;
    assert_eq!(snapshot, [entry(ALICE, false, Presence::Offline)]);
    bob.stop().await;
    relay.stop().await;
}

// ---------------------------------------------------------------------------------
// Presence

#[tokio::test]
async fn presence_and_typing() {
    let relay = Relay::start(open_relay()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let bob_token = dir.path().join("b");
    let mut alice = online("alice", &relay.url(), &dir.path().join("a"), ALICE).await;
    let bob = online("bob", &relay.url(), &bob_token, BOB).await;

    let snapshot = |e: &RelayEvent| match e {
        RelayEvent::Snapshot(entries) => Some(entries.clone()),
        _ => None,
    };
    let presence = |e: &RelayEvent| match e {
        RelayEvent::Presence(entry) => Some(entry.clone()),
        _ => None,
    };
    alice
        .cmd(RelayCommand::Subscribe {
            numbers: vec![BOB.into(), CAROL.into()],
        })
        .await;
    assert_eq!(
        alice.expect("Snapshot", snapshot).await,
        [
            entry(BOB, true, Presence::Online),
            entry(CAROL, false, Presence::Offline)
        ]
    );

    bob.cmd(RelayCommand::Typing {
        to: ALICE.into(),
        active: true,
    })
    .await;
    assert_eq!(
        alice.expect("typing", presence).await,
        entry(BOB, true, Presence::Typing)
    );
    bob.cmd(RelayCommand::Typing {
        to: ALICE.into(),
        active: false,
    })
    .await;
    assert_eq!(
        alice.expect("online", presence).await,
        entry(BOB, true, Presence::Online)
    );

    // Bob's daemon stops (the client hangs up), then comes back.
    bob.stop().await;
    assert_eq!(
        alice.expect("offline", presence).await,
        entry(BOB, true, Presence::Offline)
    );
    let bob = online("bob again", &relay.url(), &bob_token, BOB).await;
    assert_eq!(
        alice.expect("online again", presence).await,
        entry(BOB, true, Presence::Online)
    );
    bob.stop().await;
    alice.stop().await;
    relay.stop().await;
}

// ---------------------------------------------------------------------------------
// Reconnecting

#[tokio::test]
async fn the_relay_restarts_and_the_client_logs_in_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("relay.db");
    let config = || RelayConfig {
        db_path: Some(db.clone()),
        ..open_relay()
    };
    let relay = Relay::start(config()).await;
    let addr = relay.addr;
    let mut alice = online("alice", &relay.url(), &dir.path().join("a"), ALICE).await;
    alice
        .cmd(RelayCommand::Subscribe {
            numbers: vec![BOB.into()],
        })
        .await;
    alice
        .expect("Snapshot", |e| {
            matches!(e, RelayEvent::Snapshot(_)).then_some(())
        })
        .await;

    relay.stop().await;
    alice.state(RelayState::Offline).await;
    alice.send("m1", BOB, "anyone?").await;
    assert_eq!(alice.send_answer("m1").await, SendAnswer::NotConnected);
    alice.cmd(RelayCommand::Revoke { id: "m1".into() }).await;
    assert_eq!(alice.revoke_answer("m1").await, None);

    // Same port, same database: the token still works; the subscription comes back.
    let relay = Relay::start_at(addr, config()).await;
    alice.logged_in().await;
    let snapshot = alice
        .expect("Snapshot", |e| match e {
            RelayEvent::Snapshot(entries) => Some(entries.clone()),
            _ => None,
        })
        .await;
    assert_eq!(snapshot, [entry(BOB, false, Presence::Offline)]);
    assert!(
        !alice
            .seen
            .iter()
            .any(|e| matches!(e, RelayEvent::AwaitingCode { .. })),
    );
    alice.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn keepalive_holds_an_idle_connection() {
    // The relay pings every 100 ms and drops a client silent for 300 ms; the client
    // treats 300 ms without a frame as dead. Only pings and pongs keep it up.
    let relay = Relay::start(RelayConfig {
        ping_interval: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(300),
        ..open_relay()
    })
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut alice = online("alice", &relay.url(), &dir.path().join("a"), ALICE).await;
    alice
        .never(Duration::from_millis(1500), "a state change", |e| {
            matches!(e, RelayEvent::State(_) | RelayEvent::LoggedIn { .. })
        })
        .await;
    alice.send("m1", ALICE, "to myself").await;
    assert!(matches!(
        alice.send_answer("m1").await,
        SendAnswer::Accepted { .. }
    ));
    alice.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn a_new_own_number_logs_in_as_that_number() {
    let relay = Relay::start(open_relay()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("relay-token");
    let mut phone = online("phone", &relay.url(), &token, ALICE).await;
    phone.send("m1", ALICE, "pending?").await;
    // A new SIM: the connection as Alice ends, the client registers Bob and logs in.
    phone
        .cmd(RelayCommand::OwnNumber(Some(BOB.to_owned())))
        .await;
    phone.logged_in().await;
    let stored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&token).expect("token")).expect("json");
    assert_eq!(stored["number"], BOB);
    phone.send("m2", BOB, "who am I").await;
    let delivered = phone
        .expect("Deliver", |e| match e {
            RelayEvent::Deliver { from, id, .. } if id == "m2" => Some(from.clone()),
            _ => None,
        })
        .await;
    assert_eq!(delivered, BOB);
    // Every send got its answer, whichever connection it went on.
    let answers = phone
        .seen
        .iter()
        .filter(|e| matches!(e, RelayEvent::SendAnswer { id, .. } if id == "m1"))
        .count();
    assert_eq!(answers, 1);
    phone.stop().await;
    relay.stop().await;
}

/// A fake relay: greets with `idle_timeout_ms`, registers and logs in anyone, then
/// reads everything and answers nothing, sends nothing (not even pings).
async fn silent_relay(idle_timeout_ms: u64) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
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
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn a_silent_relay_is_dead_and_owes_every_answer() {
    let (addr, accepted) = silent_relay(400).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut alice = online(
        "alice",
        &format!("ws://{addr}"),
        &dir.path().join("a"),
        ALICE,
    )
    .await;
    let since = Instant::now();
    alice.send("m1", BOB, "hello?").await;
    alice.cmd(RelayCommand::Revoke { id: "m0".into() }).await;
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
    let dir = tempfile::tempdir().expect("tempdir");
    // A server that hangs up at once.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            drop(stream);
        }
    });
    let mut config = client_config(&format!("ws://{addr}"), &dir.path().join("a"));
    config.min_backoff = Duration::from_millis(100);
    config.max_backoff = Duration::from_millis(400);
    let mut client = Client::start("closing", config.clone());
    // No number, or one the relay would refuse: no connection at all.
    client
        .cmd(RelayCommand::OwnNumber(Some("0555 0001111".to_owned())))
        .await;
    client
        .never(Duration::from_millis(300), "a state change", |e| {
            *e != RelayEvent::State(RelayState::Offline)
        })
        .await;
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
    client
        .cmd(RelayCommand::OwnNumber(Some(ALICE.to_owned())))
        .await;
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
    let mut client = Client::start("refused", config);
    client
        .cmd(RelayCommand::OwnNumber(Some(ALICE.to_owned())))
        .await;
    client
        .never(Duration::from_secs(2), "a login", |e| {
            matches!(e, RelayEvent::LoggedIn { .. })
        })
        .await;
    let attempts = client
        .seen
        .iter()
        .filter(|e| **e == RelayEvent::State(RelayState::Connecting))
        .count();
    assert!((3..=21).contains(&attempts), "{attempts} attempts in 2 s");
    client.stop().await;
}

// ---------------------------------------------------------------------------------
// NetworkManager

const NM_PATH: &str = "/org/freedesktop/NetworkManager";

struct FakeNm {
    connectivity: u32,
}

#[zbus::interface(name = "org.freedesktop.NetworkManager")]
impl FakeNm {
    #[zbus(property)]
    fn connectivity(&self) -> u32 {
        self.connectivity
    }
}

async fn fake_nm(bus: &PrivateBus, connectivity: u32) -> zbus::Connection {
    zbus::connection::Builder::address(bus.address())
        .serve_at(NM_PATH, FakeNm { connectivity })
        .name("org.freedesktop.NetworkManager")
        .build()
        .await
        .expect("fake NetworkManager on the private bus")
}

async fn set_connectivity(nm: &zbus::Connection, value: u32) {
    let iface = nm
        .object_server()
        .interface::<_, FakeNm>(NM_PATH)
        .await
        .expect("the fake's interface");
    iface.get_mut().await.connectivity = value;
    iface
        .get()
        .await
        .connectivity_changed(iface.signal_emitter())
        .await
        .expect("PropertiesChanged");
}

#[tokio::test]
async fn follows_network_manager() {
    let bus = PrivateBus::start().expect("private bus");
    let nm = fake_nm(&bus, 1).await;
    let relay = Relay::start(open_relay()).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = client_config(&relay.url(), &dir.path().join("a"));
    // Slow backoff: reconnecting within a second proves it did not wait for it.
    config.min_backoff = Duration::from_secs(5);
    config.max_backoff = Duration::from_secs(10);
    let system = bus.connect().await.expect("client's bus connection");
    let mut alice = Client::start_with("alice", config, Some(system));
    alice
        .cmd(RelayCommand::OwnNumber(Some(ALICE.to_owned())))
        .await;

    // No network: no dialing.
    alice
        .never(Duration::from_millis(500), "a connection", |e| {
            *e != RelayEvent::State(RelayState::Offline)
        })
        .await;
    set_connectivity(&nm, 4).await;
    alice.logged_in().await;

    // Gone, then back: offline at once, online again at once.
    set_connectivity(&nm, 1).await;
    alice.state(RelayState::Offline).await;
    let back = Instant::now();
    set_connectivity(&nm, 4).await;
    alice.logged_in().await;
    assert!(
        back.elapsed() < Duration::from_secs(2),
        "{:?}",
        back.elapsed()
    );

    // Limited connectivity changes nothing for a connected client.
    set_connectivity(&nm, 3).await;
    alice
        .never(Duration::from_millis(300), "a state change", |e| {
            matches!(e, RelayEvent::State(_))
        })
        .await;

    // NetworkManager says none, then goes away: the client just tries.
    set_connectivity(&nm, 1).await;
    alice.state(RelayState::Offline).await;
    drop(nm);
    alice.logged_in().await;

    alice.stop().await;
    relay.stop().await;
}

// ---------------------------------------------------------------------------------
// TLS

#[tokio::test]
async fn logs_in_over_wss() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sh = |script: &str| {
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run openssl");
        assert!(status.success(), "{script}");
    };
    std::fs::write(
        dir.path().join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write ext");
    sh(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout ca.key -out ca.pem -days 2 -subj /CN=tandem-test-ca",
    );
    sh(
        "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout key.pem -out leaf.csr -subj /CN=localhost",
    );
    sh(
        "openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
        -out cert.pem -days 2 -extfile leaf.ext",
    );

    let tls =
        tandem::relay::server::load_tls(&dir.path().join("cert.pem"), &dir.path().join("key.pem"))
            .expect("load TLS");
    let relay = Relay::start(RelayConfig {
        tls: Some(tls),
        ..open_relay()
    })
    .await;
    let roots = tandem::relay::client::tls_with_roots(&dir.path().join("ca.pem")).expect("roots");
    let url = format!("wss://127.0.0.1:{}/", relay.addr.port());
    let mut alice = Client::start_tls("alice", client_config(&url, &dir.path().join("a")), roots);
    alice
        .cmd(RelayCommand::OwnNumber(Some(ALICE.to_owned())))
        .await;
    alice.logged_in().await;
    alice.stop().await;

    // A relay whose certificate is not trusted: never logged in.
    let other = tandem::relay::client::tls_with_roots(&dir.path().join("cert.pem")).expect("roots");
    let mut mallory = Client::start_tls(
        "untrusting",
        client_config(&url, &dir.path().join("b")),
        other,
    );
    mallory
        .cmd(RelayCommand::OwnNumber(Some(BOB.to_owned())))
        .await;
    mallory
        .never(Duration::from_millis(500), "a login", |e| {
            matches!(e, RelayEvent::LoggedIn { .. })
        })
        .await;
    mallory.stop().await;
    relay.stop().await;
}
