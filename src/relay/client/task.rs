//! client::task: the client's one task, a state machine around one loop.
//!
//! Owns the connection's life (dial, `hello`, register/verify, `login`, logged in, gone),
//! the answers owed to the engine (every `Send` and `Revoke` gets exactly one), the
//! reconnect schedule and the `RelayState` it shows. Everything happens in one
//! `select!`: commands, the WebSocket, the dial in progress, NetworkManager's changes,
//! logind's sleep notices and at most four timers (the next dial, the dead-connection
//! check, the code's expiry, the resend of sends the relay rate-limited), each armed only
//! when it means something, so an idle logged-in client wakes only for the relay's pings.
//!
//! A `send` the relay answers `rate-limited` (its sender's quota) is not refused to the
//! engine: it is a wait, not a verdict. The client keeps the frame of every unanswered
//! send, holds a rate-limited one (and every later one, so that the order stays) and
//! writes them again, in order, after `retry_after_ms`.
//! Must not: interpret messages (the engine does), spawn tasks, or block the loop on
//! anything unbounded: every write and every dial has a timeout.

use std::collections::VecDeque;
use std::future::{Future, pending};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::mpsc;
use tokio::time::error::Elapsed;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tracing::{debug, error, info, warn};

use super::backoff::Backoff;
use super::dial::{self, DialError, Endpoint, Ws};
use super::net::{self, Connectivity};
use super::token::{self, StoredToken};
use super::{ClientConfig, RelayCommand, RelayEvent, SendAnswer};
use crate::domain::RelayState;
use crate::logind::Sleep;
use crate::relay::protocol::{
    ClientFrame, ErrorCode, ErrorFrame, PROTOCOL_VERSION, RevokeOutcome, ServerFrame,
    decode_server, encode, is_e164,
};

/// Bound of one connection attempt: TCP, TLS and the WebSocket handshake.
const DIAL_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound of one write: a relay that stops reading does not hold the loop longer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing handshake may take when the client hangs up itself (before sleep:
/// until the relay's answering close frame, the proof that the relay has read ours).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Dead-connection timeout until `welcome` tells the relay's (the protocol's default).
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// A login that lasted this long proves the relay works: the backoff starts over.
const STABLE_LOGIN: Duration = Duration::from_secs(60);
/// Events waiting for the engine beyond which the client stops reading the relay
/// (TCP then slows the relay down; its own limits apply).
const OUTBOX_HIGH: usize = 256;
/// How long a send the relay rate-limited waits when the relay did not say.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Runs the client until `commands` closes.
pub(super) async fn run(
    config: ClientConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    mut commands: mpsc::Receiver<RelayCommand>,
    events: mpsc::Sender<RelayEvent>,
    connectivity: Option<zbus::Connection>,
    mut sleep: Option<mpsc::Receiver<Sleep>>,
) {
    let mut net_changes = connectivity.map(net::watch);
    let mut client = Client::new(config, tls, net_changes.is_some());
    client.update_state();

    loop {
        let reading = client.out.queue.len() < OUTBOX_HIGH;
        client.note_reading(reading);
        let dial_at = client.dial_deadline();
        let idle_at = client.idle_deadline();
        let code_at = client.code_deadline();
        let resend_at = client.resend_deadline();
        tokio::select! {
            command = commands.recv() => match command {
                Some(command) => {
                    let result = client.on_command(command).await;
                    client.check(result).await;
                }
                None => break,
            },
            permit = events.reserve(), if !client.out.queue.is_empty() => match permit {
                Ok(permit) => {
                    if let Some(event) = client.out.queue.pop_front() {
                        permit.send(event);
                    }
                    client.out.trim();
                }
                Err(_) => client.out.close(),
            },
            event = link_event(&mut client.link, reading) => match event {
                LinkEvent::Message(message) => {
                    let result = client.on_message(message).await;
                    client.check(result).await;
                }
                LinkEvent::Dialed(result) => client.on_dialed(result).await,
            },
            change = next_change(&mut net_changes) => match change {
                Some(connectivity) => client.on_connectivity(connectivity).await,
                None => {
                    net_changes = None;
                    client.on_connectivity(Connectivity::Unknown).await;
                }
            },
            notice = next_notice(&mut sleep) => match notice {
                Some(Sleep::Preparing { closed }) => {
                    client.on_sleep().await;
                    client.update_state();
                    let _ = closed.send(());
                }
                Some(Sleep::Resumed) => client.on_resume(),
                None => {
                    // Nobody tells us about sleep any more: we run, so we are awake.
                    sleep = None;
                    client.on_resume();
                }
            },
            () = at(dial_at) => client.start_dial(),
            () = at(idle_at) => {
                let end = End::Lost("nothing received for the idle timeout: dead connection");
                client.end_link(end).await;
            }
            () = at(code_at) => {
                let result = client.on_code_expired().await;
                client.check(result).await;
            }
            () = at(resend_at) => {
                let result = client.resend_deferred().await;
                client.check(result).await;
            }
        }
        client.update_state();
    }

    client.end_link(End::Local).await;
    // The engine closed its side; hand over what fits without waiting.
    for event in client.out.queue.drain(..) {
        if events.try_send(event).is_err() {
            break;
        }
    }
    debug!("relay client stopped");
}

/// The outcome of one connection attempt (the WebSocket boxed: it is large).
type Dialed = Result<Result<Box<Ws>, DialError>, Elapsed>;

/// The connection, if any (boxed: a connection is a few hundred bytes, and rare).
enum Link {
    Down,
    Dialing(Pin<Box<dyn Future<Output = Dialed> + Send>>),
    Up(Box<Session>),
}

/// What the connection did.
enum LinkEvent {
    Message(Option<Result<Message, WsError>>),
    Dialed(Dialed),
}

async fn link_event(link: &mut Link, reading: bool) -> LinkEvent {
    match link {
        Link::Up(session) if reading => LinkEvent::Message(session.ws.next().await),
        Link::Dialing(dialing) => LinkEvent::Dialed(dialing.as_mut().await),
        _ => pending().await,
    }
}

async fn next_notice(sleep: &mut Option<mpsc::Receiver<Sleep>>) -> Option<Sleep> {
    match sleep {
        Some(sleep) => sleep.recv().await,
        None => pending().await,
    }
}

async fn next_change(
    changes: &mut Option<BoxStream<'static, Connectivity>>,
) -> Option<Connectivity> {
    match changes {
        Some(changes) => changes.next().await,
        None => pending().await,
    }
}

/// `from + wait`, for waits that come from the configuration or the relay: capped at a
/// day, so no value can overflow the clock (and panic).
fn later(from: Instant, wait: Duration) -> Instant {
    const LONGEST: Duration = Duration::from_secs(24 * 3600);
    from.checked_add(wait.min(LONGEST)).unwrap_or(from)
}

async fn at(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => pending().await,
    }
}

/// Where a connection is in the protocol (`docs/relay-protocol.md` §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// `hello` sent, waiting for `welcome`.
    Hello,
    /// `register` sent.
    Register,
    /// `code-sent` received; waiting for the engine's `Code`.
    AwaitCode,
    /// `verify` sent.
    Verify,
    /// `login` sent.
    Login,
    /// Logged in.
    Online,
}

/// One open WebSocket to the relay.
struct Session {
    ws: Ws,
    /// The number this connection registers or logs in as.
    number: String,
    phase: Phase,
    /// When anything (frames, pings) last arrived: the dead-connection check.
    last_rx: Instant,
    /// The relay's `idle_timeout_ms`, from `welcome`.
    idle_timeout: Duration,
    /// The relay's limits, from `welcome`: a send that would break them is refused here
    /// (an oversized frame would make the relay close the connection).
    max_text_bytes: u64,
    max_frame_bytes: u64,
    /// How many numbers one `subscribe` may name (the daemon's list comes in order of
    /// importance, so the first ones are kept).
    max_subscriptions: u64,
    logged_in_at: Option<Instant>,
    /// The code of the `verify` in flight (a newer one may have come meanwhile).
    verifying: Option<String>,
    /// `send`s written and not answered yet, oldest first.
    sends: VecDeque<PendingSend>,
    /// `send`s the relay rate-limited, and any written after, in order: written again
    /// at `resend_at`.
    deferred: VecDeque<PendingSend>,
    resend_at: Option<Instant>,
    /// The order of the next `send` on this connection.
    next_seq: u64,
    /// Ids of `revoke`s not answered yet, oldest first.
    revokes: VecDeque<String>,
}

impl Session {
    fn new(ws: Ws, number: String) -> Session {
        Session {
            ws,
            number,
            phase: Phase::Hello,
            last_rx: Instant::now(),
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_text_bytes: u64::MAX,
            max_frame_bytes: u64::MAX,
            max_subscriptions: u64::MAX,
            logged_in_at: None,
            verifying: None,
            sends: VecDeque::new(),
            deferred: VecDeque::new(),
            resend_at: None,
            next_seq: 0,
            revokes: VecDeque::new(),
        }
    }

    /// Writes a `send` (or holds it behind ones waiting for the relay's quota).
    async fn send(&mut self, id: String, frame: Utf8Bytes) -> Result<(), End> {
        let seq = self.next_seq;
        self.next_seq += 1;
        let pending = PendingSend { id, seq, frame };
        if !self.deferred.is_empty() {
            self.deferred.push_back(pending);
            return Ok(());
        }
        let message = Message::Text(pending.frame.clone());
        self.sends.push_back(pending);
        self.write_message(message).await
    }

    /// Holds a rate-limited send until `after` from now, in its place among the others
    /// held.
    fn defer(&mut self, pending: PendingSend, after: Duration) {
        let place = self.deferred.partition_point(|held| held.seq < pending.seq);
        self.deferred.insert(place, pending);
        let at = later(Instant::now(), after);
        self.resend_at = Some(self.resend_at.map_or(at, |current| current.max(at)));
    }

    /// Sends `verify` with `code` for this connection's number.
    async fn verify(&mut self, code: String) -> Result<(), End> {
        self.phase = Phase::Verify;
        self.verifying = Some(code.clone());
        let number = self.number.clone();
        self.write(&ClientFrame::Verify { number, code }).await
    }

    async fn write(&mut self, frame: &ClientFrame) -> Result<(), End> {
        self.write_text(encode(frame)).await
    }

    async fn write_text(&mut self, text: String) -> Result<(), End> {
        self.write_message(Message::Text(Utf8Bytes::from(text)))
            .await
    }

    async fn write_message(&mut self, message: Message) -> Result<(), End> {
        // `send` flushes: with no write buffer the frame leaves at once.
        match timeout(WRITE_TIMEOUT, self.ws.send(message)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => {
                debug!(cause = %err, "write to the relay failed");
                Err(End::Lost("write failed"))
            }
            Err(_) => Err(End::Lost("write timed out: the relay does not read")),
        }
    }
}

/// A `send` written to the relay and not answered yet.
struct PendingSend {
    id: String,
    /// Its order among this connection's sends.
    seq: u64,
    /// The frame, to write again if the relay rate-limits it.
    frame: Utf8Bytes,
}

/// Removes `id` (or, for an answer without id, the oldest) from the unanswered requests.
fn take_pending(queue: &mut VecDeque<String>, id: Option<&str>) -> Option<String> {
    match id {
        Some(id) => {
            let index = queue.iter().position(|pending| pending == id)?;
            queue.remove(index)
        }
        None => queue.pop_front(),
    }
}

/// [`take_pending`] for sends.
fn take_send(queue: &mut VecDeque<PendingSend>, id: Option<&str>) -> Option<PendingSend> {
    match id {
        Some(id) => {
            let index = queue.iter().position(|pending| pending.id == id)?;
            queue.remove(index)
        }
        None => queue.pop_front(),
    }
}

/// Why a connection ends, and so what comes next.
#[derive(Debug)]
enum End {
    /// The connection closed or failed: reconnect after the backoff.
    Lost(&'static str),
    /// The relay's fatal error (it closes the connection).
    Fatal(ErrorCode, String),
    /// The relay refused to go on for now: reconnect after at least this long.
    Pause(Duration, &'static str),
    /// The client hangs up itself; the caller decides what next.
    Local,
    /// The system is going to sleep: hung up already, with the closing handshake.
    Sleep,
}

/// A registration under way for one number.
struct Registration {
    number: String,
    /// Set by `code-sent`: the code SMS is on its way, and valid until then.
    code_expires: Option<Instant>,
    /// A code the engine read from an SMS, until the relay answers its `verify`.
    code: Option<String>,
}

/// Events for the engine, handed over as it takes them (the loop never waits on it).
struct Outbox {
    queue: VecDeque<RelayEvent>,
    /// False once the engine dropped its receiver: events are discarded.
    open: bool,
}

impl Outbox {
    fn push(&mut self, event: RelayEvent) {
        if self.open {
            self.queue.push_back(event);
        }
    }

    fn close(&mut self) {
        if self.open {
            warn!("nobody receives relay events any more");
        }
        self.open = false;
        self.queue = VecDeque::new();
    }

    /// Gives back the memory of a burst once it is delivered.
    fn trim(&mut self) {
        if self.queue.is_empty() && self.queue.capacity() > 32 {
            self.queue = VecDeque::new();
        }
    }
}

struct Client {
    config: ClientConfig,
    endpoint: Result<Endpoint, DialError>,
    /// The TLS configuration for `wss://`: given, or loaded from the system's roots at
    /// the first `wss://` dial.
    tls: Option<Arc<rustls::ClientConfig>>,
    out: Outbox,
    link: Link,
    /// The own number, from the engine; nothing happens without it.
    number: Option<String>,
    /// The device token, if it belongs to `number`.
    token: Option<StoredToken>,
    registration: Option<Registration>,
    /// The last `Subscribe` set, sent again after each login.
    subscription: Option<Vec<String>>,
    /// NetworkManager's view; `None` until its first answer (no dialing before).
    net: Option<Connectivity>,
    /// logind said the system is going to sleep, and not yet that it resumed.
    asleep: bool,
    backoff: Backoff,
    /// When to dial next (while down); `None`: not until something changes.
    retry_at: Option<Instant>,
    /// The relay said `replaced`: if the token now fails, the number moved away.
    replaced: bool,
    /// The number moved to another device: no automatic registration until the number
    /// changes or the daemon restarts (that would take it back, and send SMS, in a loop).
    parked: bool,
    /// The state last reported.
    shown: Option<RelayState>,
    /// Reading the relay is paused while the engine catches up with the events.
    paused: bool,
}

impl Client {
    fn new(
        config: ClientConfig,
        tls: Option<Arc<rustls::ClientConfig>>,
        watch_net: bool,
    ) -> Client {
        let endpoint = Endpoint::parse(&config.url);
        if let Err(err) = &endpoint {
            error!(cause = %err, "the relay client cannot start");
        }
        let backoff = Backoff::new(config.min_backoff, config.max_backoff);
        Client {
            config,
            endpoint,
            tls,
            out: Outbox {
                queue: VecDeque::new(),
                open: true,
            },
            link: Link::Down,
            number: None,
            token: None,
            registration: None,
            subscription: None,
            net: if watch_net {
                None
            } else {
                Some(Connectivity::Unknown)
            },
            asleep: false,
            backoff,
            retry_at: None,
            replaced: false,
            parked: false,
            shown: None,
            paused: false,
        }
    }

    // ----- state -----

    /// Whether the client should be connected (or connecting) now.
    fn may_dial(&self) -> bool {
        self.number.is_some()
            && self.net.is_some_and(Connectivity::allows_dialing)
            && !self.asleep
            && !self.parked
            && self.endpoint.is_ok()
    }

    /// Registration waits for the code SMS (connected or not).
    fn waiting_for_code(&self) -> bool {
        self.registration
            .as_ref()
            .is_some_and(|r| r.code_expires.is_some() && r.code.is_none())
    }

    fn current_state(&self) -> RelayState {
        match &self.link {
            Link::Up(session) if session.phase == Phase::Online => RelayState::Online,
            Link::Up(_) | Link::Dialing(_) => RelayState::Connecting,
            Link::Down if self.may_dial() && self.waiting_for_code() => RelayState::Connecting,
            Link::Down => RelayState::Offline,
        }
    }

    /// Reports the state if it changed.
    fn update_state(&mut self) {
        let state = self.current_state();
        if self.shown != Some(state) {
            info!(state = %state, "relay state");
            self.shown = Some(state);
            self.out.push(RelayEvent::State(state));
        }
    }

    /// Follows whether the loop reads the relay: after a pause, silence is not the
    /// relay's fault, so the dead-connection check starts over.
    fn note_reading(&mut self, reading: bool) {
        if reading
            && self.paused
            && let Link::Up(session) = &mut self.link
        {
            session.last_rx = Instant::now();
        }
        self.paused = !reading;
    }

    fn dial_deadline(&self) -> Option<Instant> {
        match self.link {
            // Waiting for the code SMS: a connection would only time out.
            Link::Down if self.may_dial() && !self.waiting_for_code() => self.retry_at,
            _ => None,
        }
    }

    fn idle_deadline(&self) -> Option<Instant> {
        match &self.link {
            Link::Up(session) if self.out.queue.len() < OUTBOX_HIGH => {
                Some(later(session.last_rx, session.idle_timeout))
            }
            _ => None,
        }
    }

    fn code_deadline(&self) -> Option<Instant> {
        self.registration.as_ref().and_then(|r| r.code_expires)
    }

    fn resend_deadline(&self) -> Option<Instant> {
        match &self.link {
            Link::Up(session) => session.resend_at,
            _ => None,
        }
    }

    /// Writes again, in order, the sends held for the relay's quota.
    async fn resend_deferred(&mut self) -> Result<(), End> {
        let Link::Up(session) = &mut self.link else {
            return Ok(());
        };
        session.resend_at = None;
        debug!(
            count = session.deferred.len(),
            "sending rate-limited messages again"
        );
        while let Some(pending) = session.deferred.pop_front() {
            let message = Message::Text(pending.frame.clone());
            session.sends.push_back(pending);
            session.write_message(message).await?;
        }
        Ok(())
    }

    fn online_session(&mut self) -> Option<&mut Session> {
        match &mut self.link {
            Link::Up(session) if session.phase == Phase::Online => Some(session),
            _ => None,
        }
    }

    /// Ends the connection if a handler said so.
    async fn check(&mut self, result: Result<(), End>) {
        if let Err(end) = result {
            self.end_link(end).await;
        }
    }

    // ----- connecting -----

    fn start_dial(&mut self) {
        self.retry_at = None;
        let endpoint = match &self.endpoint {
            Ok(endpoint) => endpoint.clone(),
            Err(_) => return,
        };
        let tls = if endpoint.tls {
            match self.tls_config() {
                Ok(config) => Some(config),
                Err(err) => {
                    let delay = self.backoff.next_delay();
                    error!(cause = %err, retry_in_ms = delay.as_millis() as u64, "cannot use wss://");
                    self.retry_at = Some(later(Instant::now(), delay));
                    return;
                }
            }
        } else {
            None
        };
        debug!(url = %endpoint.request, "connecting to the relay");
        let dialing = async move {
            let result = timeout(DIAL_TIMEOUT, dial::dial(endpoint, tls)).await;
            result.map(|dialed| dialed.map(Box::new))
        };
        self.link = Link::Dialing(Box::pin(dialing));
    }

    fn tls_config(&mut self) -> Result<Arc<rustls::ClientConfig>, DialError> {
        if let Some(config) = &self.tls {
            return Ok(config.clone());
        }
        let config = dial::system_tls()?;
        self.tls = Some(config.clone());
        Ok(config)
    }

    async fn on_dialed(&mut self, result: Dialed) {
        let (ws, number) = match (result, &self.number) {
            (Ok(Ok(ws)), Some(number)) => (ws, number.clone()),
            (Ok(Ok(_)), None) => {
                self.link = Link::Down;
                return;
            }
            (Ok(Err(err)), _) => {
                self.link = Link::Down;
                let delay = self.backoff.next_delay();
                info!(cause = %err, retry_in_ms = delay.as_millis() as u64, "cannot reach the relay");
                self.retry_at = Some(later(Instant::now(), delay));
                return;
            }
            (Err(_), _) => {
                self.link = Link::Down;
                let delay = self.backoff.next_delay();
                info!(
                    retry_in_ms = delay.as_millis() as u64,
                    "the relay did not answer in time"
                );
                self.retry_at = Some(later(Instant::now(), delay));
                return;
            }
        };
        let mut session = Box::new(Session::new(*ws, number));
        let hello = ClientFrame::Hello {
            v: PROTOCOL_VERSION,
            client: Some(concat!("tandemd/", env!("CARGO_PKG_VERSION")).to_owned()),
        };
        let result = session.write(&hello).await;
        self.link = Link::Up(session);
        self.check(result).await;
    }

    /// After `welcome` (or when a registration starts over): `login` with the token,
    /// `verify` a code we have, wait for the code SMS, or `register`.
    async fn authenticate(&mut self) -> Result<(), End> {
        let Link::Up(session) = &mut self.link else {
            return Ok(());
        };
        let number = session.number.clone();
        if let Some(stored) = self.token.as_ref().filter(|t| t.number == number) {
            debug!(%number, "logging in");
            session.phase = Phase::Login;
            let token = stored.token.clone();
            return session.write(&ClientFrame::Login { number, token }).await;
        }
        if let Some(registration) = self.registration.as_ref().filter(|r| r.number == number) {
            if let Some(code) = &registration.code {
                info!(%number, "verifying the registration code");
                return session.verify(code.clone()).await;
            }
            if registration.code_expires.is_some() {
                // The code SMS is on its way; `register` again would only be rate-limited.
                session.phase = Phase::AwaitCode;
                return Ok(());
            }
        }
        info!(%number, "registering with the relay");
        self.registration = Some(Registration {
            number: number.clone(),
            code_expires: None,
            code: self.registration.take().and_then(|r| r.code),
        });
        session.phase = Phase::Register;
        session.write(&ClientFrame::Register { number }).await
    }

    /// Ends the connection (if any): answers what it owed, and plans the next one.
    async fn end_link(&mut self, end: End) {
        let link = std::mem::replace(&mut self.link, Link::Down);
        let mut lasted = None;
        if let Link::Up(mut session) = link {
            // Held ones were refused by the relay, so not stored; but a Lost one is sent
            // again after the next login anyway, which is what they wait for.
            let held = session.deferred.drain(..);
            for pending in session.sends.drain(..).chain(held) {
                let answer = SendAnswer::Lost;
                let id = pending.id;
                self.out.push(RelayEvent::SendAnswer { id, answer });
            }
            for id in session.revokes.drain(..) {
                self.out
                    .push(RelayEvent::RevokeAnswer { id, outcome: None });
            }
            lasted = session.logged_in_at.map(|at| at.elapsed());
            match end {
                End::Local | End::Pause(..) => {
                    // We hang up on a working connection: say so (briefly).
                    let _ = timeout(CLOSE_TIMEOUT, session.ws.close(None)).await;
                }
                // Closed already (`on_sleep`); the others are gone anyway.
                End::Sleep | End::Lost(_) | End::Fatal(..) => {}
            }
        }
        if lasted.is_some_and(|lasted| lasted >= STABLE_LOGIN) {
            self.backoff.reset();
        }
        let now = Instant::now();
        match end {
            End::Local | End::Sleep => {}
            End::Lost(why) => {
                let delay = self.backoff.next_delay();
                info!(
                    why,
                    retry_in_ms = delay.as_millis() as u64,
                    "relay connection lost"
                );
                self.retry_at = Some(later(now, delay));
            }
            End::Pause(at_least, why) => {
                let delay = self.backoff.next_delay().max(at_least);
                info!(
                    why,
                    retry_in_ms = delay.as_millis() as u64,
                    "relay connection paused"
                );
                self.retry_at = Some(later(now, delay));
            }
            End::Fatal(code, message) => self.after_fatal(code, &message, now),
        }
    }

    fn after_fatal(&mut self, code: ErrorCode, message: &str, now: Instant) {
        let code_str = code.as_str();
        match code {
            ErrorCode::AuthFailed => {
                warn!(
                    reason = message,
                    "the relay refused the device token: it is void"
                );
                if let Err(err) = token::remove(&self.config.token_path) {
                    error!(cause = %err, "cannot remove the void relay token");
                }
                self.token = None;
                if self.replaced {
                    warn!(
                        "the number moved to another device: not registering again until the \
                         own number changes or the daemon restarts"
                    );
                    self.parked = true;
                    self.retry_at = None;
                    return;
                }
                let delay = self.backoff.next_delay();
                info!(retry_in_ms = delay.as_millis() as u64, "registering again");
                self.retry_at = Some(later(now, delay));
            }
            ErrorCode::Replaced => {
                warn!(
                    reason = message,
                    "another connection logged in as this number"
                );
                self.replaced = true;
                self.retry_at = Some(later(now, self.backoff.next_delay()));
            }
            ErrorCode::AuthTimeout if self.registration.is_some() => {
                // Registration outlived the relay's auth timeout: go on on a new
                // connection once there is something to say (the code stays valid).
                let has_code = self.registration.as_ref().is_some_and(|r| r.code.is_some());
                if has_code || !self.waiting_for_code() {
                    self.retry_at = Some(later(now, self.backoff.next_delay()));
                } else {
                    info!("waiting for the registration code SMS while disconnected");
                    self.retry_at = None;
                }
            }
            ErrorCode::UnsupportedVersion => {
                let delay = self.backoff.max();
                error!(
                    reason = message,
                    retry_in_ms = delay.as_millis() as u64,
                    "the relay does not speak protocol version {PROTOCOL_VERSION}"
                );
                self.retry_at = Some(later(now, delay));
            }
            _ => {
                let delay = self.backoff.next_delay();
                info!(
                    code = code_str,
                    reason = message,
                    retry_in_ms = delay.as_millis() as u64,
                    "the relay closed the connection"
                );
                self.retry_at = Some(later(now, delay));
            }
        }
    }

    // ----- the engine's commands -----

    async fn on_command(&mut self, command: RelayCommand) -> Result<(), End> {
        match command {
            RelayCommand::OwnNumber(number) => {
                self.set_number(number).await;
                Ok(())
            }
            RelayCommand::Code(code) => self.on_code(code).await,
            RelayCommand::Send { id, to, text, ts } => {
                let Some(session) = self.online_session() else {
                    let answer = SendAnswer::NotConnected;
                    self.out.push(RelayEvent::SendAnswer { id, answer });
                    return Ok(());
                };
                if text.len() as u64 > session.max_text_bytes {
                    let message = format!(
                        "{} bytes of text, more than the relay's {}",
                        text.len(),
                        session.max_text_bytes
                    );
                    let answer = SendAnswer::Refused {
                        code: ErrorCode::TextTooLarge,
                        message,
                    };
                    self.out.push(RelayEvent::SendAnswer { id, answer });
                    return Ok(());
                }
                let encoded = encode(&ClientFrame::Send {
                    id: id.clone(),
                    to,
                    text,
                    ts,
                });
                if encoded.len() as u64 > session.max_frame_bytes {
                    let message = format!(
                        "a frame of {} bytes, more than the relay's {}",
                        encoded.len(),
                        session.max_frame_bytes
                    );
                    let answer = SendAnswer::Refused {
                        code: ErrorCode::FrameTooLarge,
                        message,
                    };
                    self.out.push(RelayEvent::SendAnswer { id, answer });
                    return Ok(());
                }
                session.send(id, Utf8Bytes::from(encoded)).await
            }
            RelayCommand::Revoke { id } => {
                let Some(session) = self.online_session() else {
                    self.out
                        .push(RelayEvent::RevokeAnswer { id, outcome: None });
                    return Ok(());
                };
                session.revokes.push_back(id.clone());
                session.write(&ClientFrame::Revoke { id }).await
            }
            RelayCommand::Ack { from, id } => match self.online_session() {
                Some(session) => session.write(&ClientFrame::Ack { from, id }).await,
                None => {
                    debug!(%from, %id, "ack dropped: not logged in");
                    Ok(())
                }
            },
            RelayCommand::Subscribe { numbers } => {
                let result = match self.online_session() {
                    Some(session) => {
                        let frame = subscribe_frame(&numbers, session.max_subscriptions);
                        session.write(&frame).await
                    }
                    None => Ok(()),
                };
                self.subscription = Some(numbers);
                result
            }
            RelayCommand::Typing { to, active } => match self.online_session() {
                Some(session) => session.write(&ClientFrame::Typing { to, active }).await,
                None => Ok(()),
            },
        }
    }

    async fn set_number(&mut self, number: Option<String>) {
        let number = number.filter(|number| {
            let valid = is_e164(number);
            if !valid {
                error!(%number, "the own number is not E.164: the relay client stays offline");
            }
            valid
        });
        if number == self.number {
            return;
        }
        info!(
            number = number.as_deref().unwrap_or("unknown"),
            "own number"
        );
        if !matches!(self.link, Link::Down) {
            self.end_link(End::Local).await;
        }
        self.number = number;
        self.registration = None;
        self.replaced = false;
        self.parked = false;
        self.token = None;
        if let Some(number) = &self.number {
            match token::load(&self.config.token_path) {
                Ok(Some(stored)) if &stored.number == number => self.token = Some(stored),
                Ok(Some(stored)) => info!(
                    stored = %stored.number,
                    "the stored relay token belongs to another number; registering this one"
                ),
                Ok(None) => {}
                Err(err) => warn!(cause = %err, "cannot use the stored relay token; registering"),
            }
        }
        self.backoff.reset();
        self.retry_at = self.number.is_some().then(Instant::now);
    }

    async fn on_code(&mut self, code: String) -> Result<(), End> {
        let Some(registration) = &mut self.registration else {
            debug!("a registration code, but no registration is under way: ignored");
            return Ok(());
        };
        info!(number = %registration.number, "registration code received");
        registration.code = Some(code.clone());
        let number = registration.number.clone();
        match &mut self.link {
            Link::Up(session) if session.phase == Phase::AwaitCode && session.number == number => {
                session.verify(code).await
            }
            // Verify on a new connection, at once (the code is what we waited for).
            Link::Down => {
                self.retry_at = Some(Instant::now());
                Ok(())
            }
            // Used after `welcome` or `code-sent`.
            _ => Ok(()),
        }
    }

    async fn on_code_expired(&mut self) -> Result<(), End> {
        info!("the registration code did not come in time; asking for a new one");
        self.registration = None;
        match &self.link {
            Link::Up(session) if session.phase == Phase::AwaitCode => self.authenticate().await,
            Link::Down => {
                self.retry_at = Some(Instant::now());
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// logind's `PrepareForSleep(true)`: close the session now, dial no more until resumed.
    async fn on_sleep(&mut self) {
        if self.asleep {
            return;
        }
        self.asleep = true;
        self.retry_at = None;
        if matches!(self.link, Link::Down) {
            info!("the system is going to sleep");
            return;
        }
        info!("the system is going to sleep: closing the relay session");
        self.close_handshake().await;
        self.end_link(End::Sleep).await;
    }

    /// Hangs up cleanly, within [`CLOSE_TIMEOUT`]: our close frame, then the relay's
    /// frames until its answering close, the proof that it has read ours (and so shows
    /// us offline at once). Frames that come meanwhile are handled as usual, so no
    /// answer, receipt or message the relay pushed is dropped; what cannot be answered any
    /// more (an `ack` of a delivered message) the relay asks again after the next login.
    async fn close_handshake(&mut self) {
        let deadline = later(Instant::now(), CLOSE_TIMEOUT);
        let Link::Up(session) = &mut self.link else {
            return;
        };
        match timeout(CLOSE_TIMEOUT, session.ws.close(None)).await {
            Ok(Ok(())) => {}
            _ => return debug!("the relay connection was already gone"),
        }
        loop {
            let Link::Up(session) = &mut self.link else {
                return;
            };
            let message = match tokio::time::timeout_at(deadline, session.ws.next()).await {
                Ok(Some(Ok(Message::Close(_)))) | Ok(None) => {
                    return info!("relay session closed");
                }
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(WsError::ConnectionClosed))) => return info!("relay session closed"),
                Ok(Some(Err(err))) => {
                    return debug!(cause = %err, "the relay connection failed while closing");
                }
                Err(_) => return warn!("the relay did not answer the close in time"),
            };
            // Writes fail after our close frame; the session ends anyway.
            let _ = self.on_message(Some(Ok(message))).await;
        }
    }

    /// logind's `PrepareForSleep(false)`: connect at once, the backoff starts over. The
    /// login then brings what the relay kept meanwhile (messages, receipts, presence).
    fn on_resume(&mut self) {
        if !self.asleep {
            return;
        }
        self.asleep = false;
        info!("the system resumed: reconnecting to the relay");
        if matches!(self.link, Link::Down) && !self.waiting_for_code() {
            self.backoff.reset();
            self.retry_at = self.number.is_some().then(Instant::now);
        }
    }

    async fn on_connectivity(&mut self, now: Connectivity) {
        let before = self.net;
        if before == Some(now) {
            return;
        }
        info!(connectivity = ?now, "network connectivity");
        self.net = Some(now);
        if !now.allows_dialing() {
            if !matches!(self.link, Link::Down) {
                self.end_link(End::Local).await;
            }
            return;
        }
        let returned = !before.is_some_and(Connectivity::allows_dialing)
            || (now == Connectivity::Full && before != Some(Connectivity::Full));
        if returned && matches!(self.link, Link::Down) && !self.waiting_for_code() {
            self.backoff.reset();
            self.retry_at = self.number.is_some().then(Instant::now);
        }
    }

    // ----- the relay's frames -----

    async fn on_message(&mut self, message: Option<Result<Message, WsError>>) -> Result<(), End> {
        let Link::Up(session) = &mut self.link else {
            return Ok(());
        };
        let message = match message {
            None => return Err(End::Lost("closed by the relay")),
            Some(Err(err)) => {
                debug!(cause = %err, "read from the relay failed");
                return Err(End::Lost("read failed"));
            }
            Some(Ok(message)) => message,
        };
        session.last_rx = Instant::now();
        match message {
            Message::Text(text) => match decode_server(&text) {
                Ok(frame) => self.on_frame(frame).await,
                Err(err) => {
                    warn!(cause = %err, "unreadable frame from the relay: ignored");
                    Ok(())
                }
            },
            // tungstenite answers pings and closes by itself; they only prove life.
            _ => Ok(()),
        }
    }

    async fn on_frame(&mut self, frame: ServerFrame) -> Result<(), End> {
        let Link::Up(session) = &mut self.link else {
            return Ok(());
        };
        match frame {
            ServerFrame::Welcome {
                server,
                verify,
                limits,
                ..
            } => {
                if session.phase != Phase::Hello {
                    return Ok(());
                }
                debug!(%server, ?verify, "relay greeted");
                if limits.idle_timeout_ms > 0 {
                    session.idle_timeout = Duration::from_millis(limits.idle_timeout_ms);
                }
                session.max_text_bytes = limits.max_text_bytes;
                session.max_frame_bytes = limits.max_frame_bytes;
                if limits.max_subscriptions > 0 {
                    session.max_subscriptions = limits.max_subscriptions;
                }
                self.authenticate().await
            }
            ServerFrame::CodeSent {
                number,
                expires_in_ms,
            } => {
                let registration = match &mut self.registration {
                    Some(r) if r.number == number && session.phase == Phase::Register => r,
                    _ => return Ok(()),
                };
                info!(%number, expires_in_ms, "the relay sent a code by SMS");
                let expires = later(Instant::now(), Duration::from_millis(expires_in_ms));
                registration.code_expires = Some(expires);
                self.out.push(RelayEvent::AwaitingCode {
                    number: number.clone(),
                });
                match &registration.code {
                    // The SMS was faster than `code-sent`.
                    Some(code) => session.verify(code.clone()).await,
                    None => {
                        session.phase = Phase::AwaitCode;
                        Ok(())
                    }
                }
            }
            ServerFrame::Registered { number, token } => {
                if number != session.number
                    || !matches!(session.phase, Phase::Register | Phase::Verify)
                {
                    warn!(%number, "unexpected `registered`: ignored");
                    return Ok(());
                }
                info!(%number, "registered with the relay");
                let stored = StoredToken { number, token };
                if let Err(err) = token::save(&self.config.token_path, &stored) {
                    error!(cause = %err, "cannot store the relay token; it lasts until the daemon stops");
                }
                self.registration = None;
                session.phase = Phase::Login;
                let frame = ClientFrame::Login {
                    number: stored.number.clone(),
                    token: stored.token.clone(),
                };
                self.token = Some(stored);
                session.write(&frame).await
            }
            ServerFrame::LoggedIn { number, queued } => {
                if session.phase != Phase::Login {
                    return Ok(());
                }
                info!(%number, queued, "logged in to the relay");
                session.phase = Phase::Online;
                session.logged_in_at = Some(Instant::now());
                self.replaced = false;
                self.update_state();
                self.out.push(RelayEvent::LoggedIn { queued });
                match (&mut self.link, &self.subscription) {
                    (Link::Up(session), Some(numbers)) => {
                        let frame = subscribe_frame(numbers, session.max_subscriptions);
                        session.write(&frame).await
                    }
                    _ => Ok(()),
                }
            }
            ServerFrame::Ack {
                id,
                state,
                duplicate,
                ..
            } => {
                match take_send(&mut session.sends, Some(&id)) {
                    Some(PendingSend { id, .. }) => {
                        let answer = SendAnswer::Accepted { state, duplicate };
                        self.out.push(RelayEvent::SendAnswer { id, answer });
                    }
                    None => debug!(%id, "ack of no send of this connection"),
                }
                Ok(())
            }
            ServerFrame::Deliver {
                from, id, text, ts, ..
            } => {
                self.out.push(RelayEvent::Deliver { from, id, text, ts });
                Ok(())
            }
            ServerFrame::Confirm { from, id, outcome } => {
                self.out.push(RelayEvent::Confirm { from, id, outcome });
                Ok(())
            }
            ServerFrame::Receipt {
                id, to, outcome, ..
            } => {
                self.out.push(RelayEvent::Receipt { id, to, outcome });
                Ok(())
            }
            ServerFrame::RevokeResult { id, outcome } => {
                match take_pending(&mut session.revokes, Some(&id)) {
                    Some(id) => {
                        let outcome = Some(outcome);
                        self.out.push(RelayEvent::RevokeAnswer { id, outcome });
                    }
                    None => debug!(%id, "revoke-result of no revoke of this connection"),
                }
                Ok(())
            }
            ServerFrame::Snapshot { entries } => {
                self.out.push(RelayEvent::Snapshot(entries));
                Ok(())
            }
            ServerFrame::Presence(entry) => {
                self.out.push(RelayEvent::Presence(entry));
                Ok(())
            }
            ServerFrame::Error(error) => self.on_error(error).await,
            ServerFrame::Pong { .. } | ServerFrame::Unknown => Ok(()),
        }
    }

    async fn on_error(&mut self, error: ErrorFrame) -> Result<(), End> {
        let Link::Up(session) = &mut self.link else {
            return Ok(());
        };
        let code = error.code.as_str();
        if error.fatal {
            return Err(End::Fatal(error.code, error.message));
        }
        match error.re.as_deref() {
            Some("send") => {
                match take_send(&mut session.sends, error.id.as_deref()) {
                    // The sender's quota: nothing was stored; the same frame goes again
                    // when the relay says (the engine is not told: no SMS for a wait).
                    Some(pending) if error.code == ErrorCode::RateLimited => {
                        let after = error
                            .retry_after_ms
                            .map_or(DEFAULT_RETRY_AFTER, Duration::from_millis);
                        if session.deferred.is_empty() {
                            info!(id = %pending.id, retry_after_ms = after.as_millis() as u64,
                                  "the relay rate-limits this number's sends: sending again later");
                        }
                        session.defer(pending, after);
                    }
                    Some(PendingSend { id, .. }) => {
                        debug!(%id, code, reason = %error.message, "send refused");
                        let answer = SendAnswer::Refused {
                            code: error.code,
                            message: error.message,
                        };
                        self.out.push(RelayEvent::SendAnswer { id, answer });
                    }
                    None => debug!(code, "refusal of no send of this connection"),
                }
                Ok(())
            }
            Some("revoke") => {
                match take_pending(&mut session.revokes, error.id.as_deref()) {
                    Some(id) => {
                        // `unknown-message`: the relay never accepted it, so it will never
                        // deliver it: as good as revoked (the SMS may go). Anything else
                        // (`internal`): unknown.
                        let outcome = (error.code == ErrorCode::UnknownMessage)
                            .then_some(RevokeOutcome::Revoked);
                        debug!(%id, code, "revoke answered by an error");
                        self.out.push(RelayEvent::RevokeAnswer { id, outcome });
                    }
                    None => debug!(code, "refusal of no revoke of this connection"),
                }
                Ok(())
            }
            Some("register") => self.on_register_error(error),
            Some("verify") => self.on_verify_error(error).await,
            re => {
                warn!(re = re.unwrap_or(""), code, reason = %error.message, "the relay refused a request");
                Ok(())
            }
        }
    }

    fn on_register_error(&mut self, error: ErrorFrame) -> Result<(), End> {
        let code = error.code.as_str();
        let number = self
            .registration
            .as_ref()
            .map(|r| r.number.clone())
            .unwrap_or_default();
        match error.code {
            ErrorCode::RateLimited => {
                // A code may well be on its way: keep the registration, so it is used.
                let wait = Duration::from_millis(error.retry_after_ms.unwrap_or(0));
                info!(%number, retry_after_ms = wait.as_millis() as u64, "registration rate-limited by the relay");
                Err(End::Pause(wait, "registration rate-limited"))
            }
            ErrorCode::NumberTaken => {
                self.registration = None;
                warn!(%number, reason = %error.message,
                      "the number is registered on another device, and this relay cannot verify numbers: \
                       trying again rarely");
                Err(End::Pause(self.backoff.max(), "number taken"))
            }
            ErrorCode::InvalidNumber => {
                self.registration = None;
                error!(%number, reason = %error.message, "the relay refuses the own number");
                Err(End::Pause(self.backoff.max(), "invalid own number"))
            }
            _ => {
                self.registration = None;
                warn!(%number, code, reason = %error.message, "registration failed");
                Err(End::Pause(Duration::ZERO, "registration failed"))
            }
        }
    }

    async fn on_verify_error(&mut self, error: ErrorFrame) -> Result<(), End> {
        let code = error.code.as_str();
        let Some(registration) = &mut self.registration else {
            return Ok(());
        };
        let number = registration.number.clone();
        match error.code {
            ErrorCode::CodeInvalid => {
                warn!(%number, attempts_left = error.attempts_left.unwrap_or(0),
                      "the relay says the code is wrong");
                let Link::Up(session) = &mut self.link else {
                    return Ok(());
                };
                let tried = session.verifying.take();
                if registration.code.is_some() && registration.code != tried {
                    // Another code came while this one was checked: try it.
                    let code = registration.code.clone().unwrap_or_default();
                    return session.verify(code).await;
                }
                registration.code = None;
                session.phase = Phase::AwaitCode;
                Ok(())
            }
            ErrorCode::CodeExpired | ErrorCode::NoCode => {
                info!(%number, code, "the code is no longer valid; asking for a new one");
                self.registration = None;
                self.authenticate().await
            }
            ErrorCode::TooManyAttempts => {
                warn!(%number, "too many wrong codes; registering again later");
                self.registration = None;
                Err(End::Pause(Duration::ZERO, "too many attempts"))
            }
            _ => {
                warn!(%number, code, reason = %error.message, "verification failed");
                self.registration = None;
                Err(End::Pause(Duration::ZERO, "verification failed"))
            }
        }
    }
}

/// The `subscribe` for `numbers`, cut to the relay's limit: the daemon lists them in order
/// of importance (watched numbers, then the most recent conversations), so those beyond
/// the limit are the ones least likely to be written to; they simply stay without
/// presence (offline for the channel rule).
fn subscribe_frame(numbers: &[String], max: u64) -> ClientFrame {
    let keep = usize::try_from(max)
        .unwrap_or(usize::MAX)
        .min(numbers.len());
    if keep < numbers.len() {
        debug!(
            numbers = numbers.len(),
            kept = keep,
            "more numbers to follow than the relay allows; following the first"
        );
    }
    ClientFrame::Subscribe {
        numbers: numbers[..keep].to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscription_is_cut_to_the_relays_limit_keeping_the_first() {
        let numbers: Vec<String> = (0..5).map(|i| format!("+1555000000{i}")).collect();
        let ClientFrame::Subscribe { numbers: kept } = subscribe_frame(&numbers, 3) else {
            panic!("not a subscribe");
        };
        assert_eq!(kept, numbers[..3]);
        let ClientFrame::Subscribe { numbers: all } = subscribe_frame(&numbers, u64::MAX) else {
            panic!("not a subscribe");
        };
        assert_eq!(all, numbers);
    }

    #[test]
    fn waits_from_outside_cannot_overflow() {
        let now = Instant::now();
        assert_eq!(
            later(now, Duration::from_millis(5)),
            now + Duration::from_millis(5)
        );
        let far = later(now, Duration::MAX);
        assert_eq!(far, now + Duration::from_secs(24 * 3600));
        let _ = later(now, Duration::from_millis(u64::MAX));
    }

    #[test]
    fn answers_match_their_requests() {
        let mut queue: VecDeque<String> = ["a", "b", "a"].map(String::from).into();
        assert_eq!(take_pending(&mut queue, Some("b")).as_deref(), Some("b"));
        assert_eq!(take_pending(&mut queue, Some("x")), None);
        // An answer without id answers the oldest request.
        assert_eq!(take_pending(&mut queue, None).as_deref(), Some("a"));
        assert_eq!(take_pending(&mut queue, Some("a")).as_deref(), Some("a"));
        assert_eq!(take_pending(&mut queue, None), None);
    }
}
