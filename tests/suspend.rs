//! Suspend: logind's `PrepareForSleep` on a private "system" bus, from a fake logind
//! written here with zbus (the interface is two members; python3-dbusmock's template
//! would add a Python dependency to CI for no more realism: what matters, the inhibitor
//! descriptor, is a real pipe whose closing the fake sees, as logind does).
//!
//! - End to end, two `tandemd`s and the relay: Alice's phone goes to sleep (the fake
//!   logind signals her daemon only, found by the pid of its inhibitor, as logind knows
//!   it), and her daemon is frozen (SIGSTOP) the moment it releases its lock, as the
//!   kernel would. Bob must see her offline at once (the relay's keepalive would take
//!   75 s), his messages follow the channel rule meanwhile, and after the resume
//!   everything the relay kept for her (a message, a receipt) and the SMS waiting on her
//!   modem arrive exactly once.
//! - The logind task alone: the lock is released after its bound when the close hangs,
//!   taken again after resume and when logind restarts; logind gone while asleep counts as
//!   awake.
//! - The relay client alone: asleep, nothing makes it dial (not even the network coming
//!   back); resumed, it logs in at once; a close the relay does not answer (a proxy that
//!   holds every byte back) holds the sleep back for the client's 1 s, not more.

mod common;

use std::io::Read as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use tandem::domain::RelayState;
use tandem::logind::{CLOSE_BOUND, Sleep};
use tandem::net::Connectivity;
use tandem::relay::client::{ClientConfig, RelayEvent, SendAnswer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use zbus::message::Header;
use zbus::names::BusName;
use zbus::object_server::SignalEmitter;

const ALICE: &str = "+15550001111";
const BOB: &str = "+15550002222";

/// The relay's default keepalive: without a clean close, a sleeping phone stays online
/// on the relay this long (`tandem-relay --help`: `idle_timeout`).
const RELAY_IDLE_TIMEOUT: Duration = Duration::from_secs(75);

// ---------------------------------------------------------------------------------
// A fake logind

const LOGIN1: &str = "org.freedesktop.login1";
const LOGIN1_PATH: &str = "/org/freedesktop/login1";
const MANAGER: &str = "org.freedesktop.login1.Manager";

/// One inhibitor lock handed out.
#[derive(Debug, Clone)]
struct Lock {
    what: String,
    who: String,
    why: String,
    mode: String,
    /// The unique bus name of the connection that took it.
    holder: String,
    pid: u32,
    /// When the holder closed its descriptor (the fake read EOF on its end of the pipe).
    released: Arc<Mutex<Option<Instant>>>,
}

impl Lock {
    fn released_at(&self) -> Option<Instant> {
        *self.released.lock().expect("lock state")
    }
}

#[derive(Clone, Default)]
struct Locks(Arc<Mutex<Vec<Lock>>>);

struct Manager {
    locks: Locks,
}

#[zbus::interface(name = "org.freedesktop.login1.Manager")]
impl Manager {
    /// Like logind: a pipe, the caller gets the write end; the lock lasts until EOF.
    async fn inhibit(
        &self,
        what: String,
        who: String,
        why: String,
        mode: String,
        #[zbus(header)] header: Header<'_>,
        #[zbus(connection)] conn: &zbus::Connection,
    ) -> zbus::fdo::Result<zbus::OwnedFd> {
        let holder = header
            .sender()
            .ok_or_else(|| zbus::fdo::Error::Failed("no sender".into()))?
            .to_string();
        let dbus = zbus::fdo::DBusProxy::new(conn).await?;
        let name = BusName::try_from(holder.as_str())?;
        let pid = dbus.get_connection_unix_process_id(name).await?;
        let (mut reader, writer) =
            std::io::pipe().map_err(|e| zbus::fdo::Error::IOError(e.to_string()))?;
        let released = Arc::new(Mutex::new(None));
        let seen = released.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 16];
            while matches!(reader.read(&mut buf), Ok(n) if n > 0) {}
            *seen.lock().expect("lock state") = Some(Instant::now());
        });
        self.locks.0.lock().expect("locks").push(Lock {
            what,
            who,
            why,
            mode,
            holder,
            pid,
            released,
        });
        Ok(std::os::fd::OwnedFd::from(writer).into())
    }
}

struct FakeLogind {
    conn: zbus::Connection,
    locks: Locks,
}

impl FakeLogind {
    async fn start(bus: &Bus) -> FakeLogind {
        FakeLogind::start_with(bus, Locks::default()).await
    }

    /// A logind (again) keeping its locks in `locks`.
    async fn start_with(bus: &Bus, locks: Locks) -> FakeLogind {
        let conn = zbus::connection::Builder::address(bus.address.as_str())
            .serve_at(
                LOGIN1_PATH,
                Manager {
                    locks: locks.clone(),
                },
            )
            .name(LOGIN1)
            .build()
            .await
            .expect("fake logind on the private bus");
        FakeLogind { conn, locks }
    }

    fn locks_of(&self, pid: u32) -> Vec<Lock> {
        self.locks
            .0
            .lock()
            .expect("locks")
            .iter()
            .filter(|l| l.pid == pid)
            .cloned()
            .collect()
    }

    /// The lock `pid` holds now, waiting for it to be taken; it must be its `count`-th.
    async fn held(&self, pid: u32, count: usize) -> Lock {
        eventually(
            &format!("lock number {count} held by pid {pid}"),
            || async {
                let locks = self.locks_of(pid);
                locks.len() == count && locks.last().is_some_and(|l| l.released_at().is_none())
            },
        )
        .await;
        self.locks_of(pid).pop().expect("the lock")
    }

    /// Waits for `lock` to be released; when it was.
    async fn released(&self, lock: &Lock) -> Instant {
        eventually("the lock released", || async {
            lock.released_at().is_some()
        })
        .await;
        lock.released_at().expect("released")
    }

    /// `PrepareForSleep(start)`, to one connection only (logind broadcasts it; here the
    /// phones share a bus, and only one of them sleeps).
    async fn prepare_for_sleep(&self, to: &str, start: bool) {
        let to = BusName::try_from(to.to_owned()).expect("unique name");
        SignalEmitter::new(&self.conn, LOGIN1_PATH)
            .expect("emitter")
            .set_destination(to)
            .emit(MANAGER, "PrepareForSleep", &(start,))
            .await
            .expect("PrepareForSleep");
    }
}

fn assert_tandemd_lock(lock: &Lock) {
    assert_eq!(
        (
            lock.what.as_str(),
            lock.who.as_str(),
            lock.why.as_str(),
            lock.mode.as_str()
        ),
        (
            "sleep",
            "tandemd",
            "close the relay session cleanly",
            "delay"
        )
    );
}

// ---------------------------------------------------------------------------------
// End to end

#[tokio::test]
async fn sleep_closes_the_session_first_and_resume_catches_up() {
    let dir = temp_dir();
    let system = Bus::start();
    let (_sim, ctl) = Sim::with_ctl(&system, &[ALICE, BOB]).await;
    let logind = FakeLogind::start(&system).await;
    let relay = Relay::start(dir.path());
    // A fallback far beyond the test: every IP message waits for its receipt.
    let (alice, bob) = Phone::pair(&system, dir.path(), [ALICE, BOB], &relay.url(), 600).await;

    // Awake, each daemon holds a delay lock on sleep.
    let alice_lock = logind.held(alice.pid(), 1).await;
    let bob_lock = logind.held(bob.pid(), 1).await;
    assert_tandemd_lock(&alice_lock);
    assert_tandemd_lock(&bob_lock);

    // A receipt to owe Alice while she sleeps: Bob's daemon hangs, so her message is
    // delivered to his connection but not acked yet.
    signal(bob.pid(), "-STOP");
    let before = alice.send_on(BOB, "good night (ip)", "ip").await;
    alice.wait_status(&before, "sent").await;

    // Alice's phone goes to sleep. The kernel freezes her daemon once it lets go of the
    // lock: whatever it did not do by then, it does not do before the resume.
    let slept = Instant::now();
    logind.prepare_for_sleep(&alice_lock.holder, true).await;
    let released = logind.released(&alice_lock).await;
    signal(alice.pid(), "-STOP");
    assert!(
        released - slept < CLOSE_BOUND,
        "the lock was held {:?}: the close hung",
        released - slept
    );

    // Bob wakes up: he acks Alice's message (its receipt now waits on the relay for her)
    // and already knows she is gone, from the relay, not from a keepalive timeout.
    signal(bob.pid(), "-CONT");
    bob.sees(ALICE, "offline").await;
    let noticed = slept.elapsed();
    assert!(
        noticed < RELAY_IDLE_TIMEOUT / 5,
        "Bob saw Alice offline after {noticed:?}"
    );
    eprintln!(
        "sleep: lock released {:?} after PrepareForSleep(true); Bob saw Alice offline after {noticed:?}",
        released - slept
    );
    bob.signals
        .wait_until("Bob gets Alice's message", |s| {
            s.received().iter().any(|m| m.text == "good night (ip)")
        })
        .await;

    // Meanwhile the channel rule applies as for any offline peer: `auto` goes by SMS (IP
    // only when both are online), and a message sent as `ip` waits on the relay.
    let by_rule = bob.send_on(ALICE, "asleep, so by SMS", "auto").await;
    let kept = bob.send_on(ALICE, "asleep, kept by the relay", "ip").await;
    bob.wait_status(&by_rule, "sent").await;
    bob.wait_status(&kept, "sent").await;
    assert_eq!(bob.channel_of(&by_rule).await, "sms");
    assert_eq!(bob.channel_of(&kept).await, "ip");
    assert_eq!(ctl.get_sent(BOB).await.len(), 1, "one SMS, Bob's");

    // The system resumes: processes thaw, then logind says so.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !bob.signals.statuses(&kept).iter().any(|s| s == "delivered"),
        "delivered to a sleeping phone: {:?}",
        bob.signals.statuses(&kept)
    );
    signal(alice.pid(), "-CONT");
    logind.prepare_for_sleep(&alice_lock.holder, false).await;
    let resumed = Instant::now();
    alice.relay_is("online").await;
    eprintln!(
        "resume: Alice online {:?} after PrepareForSleep(false)",
        resumed.elapsed()
    );
    bob.sees(ALICE, "online").await;
    alice.sees(BOB, "online").await;
    let alice_relock = logind.held(alice.pid(), 2).await;
    assert_tandemd_lock(&alice_relock);

    // The catch-up: the relay's message and receipt, the SMS from her modem.
    alice
        .signals
        .wait_until("Alice's catch-up", |s| {
            s.received().len() == 2 && s.statuses(&before).iter().any(|st| st == "delivered")
        })
        .await;
    bob.wait_status(&kept, "delivered").await;
    assert_eq!(alice.channel_of(&before).await, "ip");

    // Exactly once, and nothing more arriving late.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(alice.received_channels("asleep, so by SMS"), ["sms"]);
    assert_eq!(alice.received_channels("asleep, kept by the relay"), ["ip"]);
    assert_eq!(bob.received_channels("good night (ip)"), ["ip"]);
    assert_eq!(alice.signals.received().len(), 2);
    assert_eq!(bob.signals.received().len(), 1);
    assert!(ctl.get_sent(ALICE).await.is_empty(), "Alice sent no SMS");
    assert_eq!(ctl.get_sent(BOB).await.len(), 1);
    assert_eq!(
        alice.api.modem_state().await.expect("ModemState"),
        "registered",
        "the modem is not the relay client's business"
    );
    // The relay answered the close before the lock went (the closing handshake, not
    // just our frame written into a socket the sleep may never flush).
    let log = alice.daemon.log_text();
    assert!(
        log.contains("relay session closed") && !log.contains("did not answer the close"),
        "no closing handshake before sleep:\n{log}"
    );
    // Bob never slept: his one lock is still held.
    assert_eq!(logind.locks_of(bob.pid()).len(), 1);
    assert!(bob_lock.released_at().is_none());
}

// ---------------------------------------------------------------------------------
// The logind task alone

/// The next notice, within `WAIT`.
async fn notice(rx: &mut mpsc::Receiver<Sleep>) -> Sleep {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("a sleep notice in time")
        .expect("the logind task runs")
}

#[tokio::test]
async fn the_sleep_lock_is_bounded_and_follows_logind() {
    let bus = Bus::start();
    let logind = FakeLogind::start(&bus).await;
    let (tx, mut rx) = mpsc::channel(4);
    let task = tokio::spawn(tandem::logind::run(bus.connect().await, tx));
    let me = std::process::id();
    let lock = logind.held(me, 1).await;
    assert_tandemd_lock(&lock);

    // The client never answers: the lock goes after the bound all the same.
    logind.prepare_for_sleep(&lock.holder, true).await;
    let asked = Instant::now();
    let Sleep::Preparing { closed: unanswered } = notice(&mut rx).await else {
        panic!("expected Preparing");
    };
    let released = logind.released(&lock).await;
    let held = released - asked;
    assert!(
        held >= CLOSE_BOUND - Duration::from_millis(100),
        "released after {held:?}, without waiting for the close"
    );
    assert!(held < CLOSE_BOUND + Duration::from_secs(2), "held {held:?}");
    drop(unanswered);

    // Resumed: said, and the lock is taken again.
    logind.prepare_for_sleep(&lock.holder, false).await;
    assert!(matches!(notice(&mut rx).await, Sleep::Resumed));
    let lock = logind.held(me, 2).await;

    // A client that answers: the lock goes as soon as it did.
    logind.prepare_for_sleep(&lock.holder, true).await;
    let Sleep::Preparing { closed } = notice(&mut rx).await else {
        panic!("expected Preparing");
    };
    assert!(lock.released_at().is_none(), "released before the answer");
    let answered = Instant::now();
    closed.send(()).expect("the logind task waits");
    let released = logind.released(&lock).await;
    assert!(
        released - answered < CLOSE_BOUND,
        "{:?}",
        released - answered
    );
    // A repeated `true` while asleep asks nothing more.
    logind.prepare_for_sleep(&lock.holder, true).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(rx.try_recv().is_err(), "asked again");

    // logind stops while we wait for the resume: we run, so we are awake; a new logind
    // gets a new lock.
    let holder = lock.holder.clone();
    let locks = logind.locks.clone();
    drop(logind);
    assert!(matches!(notice(&mut rx).await, Sleep::Resumed));
    let logind = FakeLogind::start_with(&bus, locks).await;
    let lock = logind.held(me, 3).await;
    assert_eq!(lock.holder, holder, "the same connection");
    assert!(rx.try_recv().is_err(), "no second Resumed");

    // The client gone: the task ends and lets go of its lock.
    drop(rx);
    tokio::time::timeout(WAIT, task)
        .await
        .expect("the logind task ends")
        .expect("no panic");
    logind.released(&lock).await;
}

#[tokio::test]
async fn without_logind_nothing_is_held_and_nothing_is_said() {
    let bus = Bus::start();
    let (tx, mut rx) = mpsc::channel(4);
    let task = tokio::spawn(tandem::logind::run(bus.connect().await, tx));
    // logind comes later: it gets asked for a lock then.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(rx.try_recv().is_err());
    let logind = FakeLogind::start(&bus).await;
    logind.held(std::process::id(), 1).await;
    drop(rx);
    tokio::time::timeout(WAIT, task)
        .await
        .expect("the logind task ends")
        .expect("no panic");
}

// ---------------------------------------------------------------------------------
// The relay client alone

/// A client of the relay at `url`, told of sleep, logged in as Alice.
async fn sleeping_client(
    url: String,
    dir: &std::path::Path,
    backoff: (Duration, Duration),
    net: Option<tandem::net::ConnectivityWatch>,
) -> RelayClient {
    let config = ClientConfig {
        url,
        token_path: dir.join("token"),
        min_backoff: backoff.0,
        max_backoff: backoff.1,
    };
    let mut client = RelayClient::start_sleeping("alice", config, net);
    client.own_number(ALICE).await;
    client.until("login", logged_in).await;
    client
}

fn logged_in(e: &RelayEvent) -> bool {
    matches!(e, RelayEvent::LoggedIn { .. })
}

fn offline(e: &RelayEvent) -> bool {
    *e == RelayEvent::State(RelayState::Offline)
}

#[tokio::test]
async fn asleep_the_client_stays_offline_until_resumed() {
    let dir = temp_dir();
    let relay = Relay::start(dir.path());
    let bus = Bus::start();
    let nm = Nm::start(&bus, Connectivity::Full).await;
    // A slow backoff: a login within a second of the resume did not wait for it.
    let backoff = (Duration::from_secs(5), Duration::from_secs(10));
    let net = tandem::net::spawn(bus.connect().await);
    let mut client = sleeping_client(relay.url(), dir.path(), backoff, Some(net)).await;

    // Going to sleep: answered once closed, and offline.
    client.sleep().await;
    client.until("offline", offline).await;
    // Asleep, nothing makes it dial: not the network coming back, not a send.
    nm.set_connectivity(Connectivity::NoNetwork).await;
    nm.set_connectivity(Connectivity::Full).await;
    client.send("asleep-1", BOB, "not now").await;
    assert_eq!(
        client.send_answer("asleep-1").await,
        SendAnswer::NotConnected
    );
    client
        .never(Duration::from_millis(1500), "dialed while asleep", |e| {
            matches!(e, RelayEvent::State(_) | RelayEvent::LoggedIn { .. })
        })
        .await;
    // Asked again while asleep: answered at once.
    client.sleep().await;

    // Resumed: logged in at once, not after the 5 s backoff.
    let resumed = Instant::now();
    client.resume().await;
    client.until("login after resume", logged_in).await;
    assert!(
        resumed.elapsed() < Duration::from_secs(2),
        "{:?}",
        resumed.elapsed()
    );

    // Asleep again, then nobody tells about sleep any more: awake, logged in again.
    client.sleep().await;
    client.until("offline", offline).await;
    client.deaf_to_sleep();
    client.until("login without logind", logged_in).await;
    client.stop().await;
}

/// A TCP proxy in front of the relay that can hold every byte back (a relay, or a
/// network, that stops answering), without closing anything.
async fn valve(target: String) -> (String, watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (open, _) = watch::channel(true);
    let opened = open.clone();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = TcpStream::connect(&target).await else {
                continue;
            };
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            tokio::spawn(flow(in_read, out_write, opened.subscribe()));
            tokio::spawn(flow(out_read, in_write, opened.subscribe()));
        }
    });
    (format!("ws://{addr}"), open)
}

async fn flow(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut open: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if open.wait_for(|open| *open).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn a_close_the_relay_does_not_answer_holds_the_sleep_back_briefly() {
    let dir = temp_dir();
    let relay = Relay::start(dir.path());
    let (url, open) = valve(relay.addr.clone()).await;
    let backoff = (Duration::from_millis(100), Duration::from_secs(1));
    let mut client = sleeping_client(url, dir.path(), backoff, None).await;

    // Nothing gets through any more: our close frame is written, no answer comes.
    open.send_replace(false);
    let asked = Instant::now();
    client.sleep().await;
    let held = asked.elapsed();
    eprintln!("an unanswered close held the sleep back {held:?}");
    assert!(
        held >= Duration::from_millis(900),
        "answered after {held:?}: it did not wait for the relay's close"
    );
    assert!(
        held < CLOSE_BOUND,
        "held {held:?}, longer than logind's task waits"
    );
    client.until("offline", offline).await;

    // Awake, with the relay reachable again: logged in again.
    open.send_replace(true);
    client.resume().await;
    client.until("login after resume", logged_in).await;
    client.stop().await;
}
