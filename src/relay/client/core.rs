//! client::core: the relay client's state machine, without I/O (sans-I/O).
//!
//! Owns every decision of the client: the connection's life (dial, `hello`,
//! register/verify, `login`, logged in, gone), the answers owed to the engine (every
//! `Send` and `Revoke` gets exactly one), the sends held for the relay's quota, the
//! reconnect schedule and the `RelayState` it shows. [`Core::handle`] takes one [`Input`]
//! (a frame, a command, the network, sleep, a deadline reached, the connection opened or
//! lost) with the time, and returns the [`Action`]s that follow, in order; the deadline of
//! the next tick is [`Core::deadline`]. This is also the only place where frames and the
//! engine's domain types meet: frames in become events, commands become frames out.
//!
//! A `send` the relay answers `rate-limited` (its sender's quota) is not refused to the
//! engine: it is a wait, not a verdict. The core keeps the frame of every unanswered send,
//! holds a rate-limited one (and every later one, so that the order stays) and writes them
//! again, in order, after `retry_after_ms`.
//! Must not: read a clock, touch a socket, a file or a channel, or interpret messages
//! (the engine does). The shell (`task`) does the I/O. (The backoff's jitter comes from
//! the system's random source: the one thing the tables cannot fix, so they never
//! assert a delay, only what happens when it has passed.)

use std::collections::VecDeque;
use std::fmt;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::backoff::Backoff;
use super::token::StoredToken;
use super::{
    Confirmation, Delivery, Placement, PresenceReport, Refusal, RelayCommand, RelayEvent,
    Revocation, SendAnswer,
};
use crate::domain::{MessageId, Peer, Presence, RelayState};
use crate::net::Connectivity;
use crate::number::is_e164;
use crate::relay::protocol::{
    ClientFrame, ConfirmOutcome, ErrorCode, ErrorFrame, Limits, PROTOCOL_VERSION, PresenceEntry,
    PresenceState, ReceiptOutcome, RevokeOutcome, SendState, ServerFrame, encode,
};

/// Dead-connection timeout until `welcome` tells the relay's (the protocol's default).
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// A login that lasted this long proves the relay works: the backoff starts over.
const STABLE_LOGIN: Duration = Duration::from_secs(60);
/// How long a send the relay rate-limited waits when the relay did not say.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// What happened, as the shell tells it.
#[derive(Debug)]
pub(super) enum Input {
    /// The engine's command (`OwnNumber` comes as [`Input::OwnNumber`]).
    Command(RelayCommand),
    /// The engine's `OwnNumber`, with the token file's content (if readable).
    OwnNumber {
        number: Option<String>,
        stored: Option<StoredToken>,
    },
    /// The dial asked for by [`Action::Dial`] gave an open WebSocket.
    Opened,
    /// The dial failed (the shell logged why) or timed out.
    DialFailed,
    /// A frame from the relay.
    Frame(ServerFrame),
    /// Anything else from the relay (a ping, an unreadable frame): a sign of life.
    Heard,
    /// The connection closed or failed (read or write).
    Lost(&'static str),
    /// The network's state changed.
    Connectivity(Connectivity),
    /// The system is going to sleep.
    Sleep,
    /// The closing handshake asked for by [`Action::CloseForSleep`] is over.
    SleepClosed,
    /// The system woke up (or nobody tells us about sleep any more).
    Resumed,
    /// The time of [`Core::deadline`] came.
    Tick,
    /// The engine is gone: hang up.
    Stop,
}

/// What the shell must do, in order.
#[derive(PartialEq, Eq)]
pub(super) enum Action {
    /// Start connecting (TCP, TLS, WebSocket); then [`Input::Opened`] or
    /// [`Input::DialFailed`].
    Dial,
    /// Write this text frame; a failure is [`Input::Lost`].
    Write(String),
    /// Drop the connection or the dial in progress, saying so first with a close frame
    /// (briefly) when `close`.
    Hangup { close: bool },
    /// Close with the closing handshake: our close frame, then the relay's frames (as
    /// [`Input::Frame`]) until its close; then [`Input::SleepClosed`].
    CloseForSleep,
    /// Hand this to the engine.
    Event(RelayEvent),
    /// Store the device token (mode 0600).
    SaveToken(StoredToken),
    /// The device token is void: remove the file.
    RemoveToken,
}

impl fmt::Debug for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Dial => f.write_str("Dial"),
            Action::Write(text) => write!(f, "Write({text})"),
            Action::Hangup { close } => write!(f, "Hangup {{ close: {close} }}"),
            Action::CloseForSleep => f.write_str("CloseForSleep"),
            Action::Event(event) => write!(f, "Event({event:?})"),
            // Never the token itself.
            Action::SaveToken(stored) => write!(f, "SaveToken({})", stored.number),
            Action::RemoveToken => f.write_str("RemoveToken"),
        }
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

/// The connection, as far as the protocol goes.
enum Link {
    Down,
    Dialing,
    Up(Box<Session>),
}

/// One open WebSocket to the relay.
struct Session {
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
    fn new(number: String, now: Instant) -> Session {
        Session {
            number,
            phase: Phase::Hello,
            last_rx: now,
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

    fn take_limits(&mut self, limits: &Limits) {
        if limits.idle_timeout_ms > 0 {
            self.idle_timeout = Duration::from_millis(limits.idle_timeout_ms);
        }
        self.max_text_bytes = limits.max_text_bytes;
        self.max_frame_bytes = limits.max_frame_bytes;
        if limits.max_subscriptions > 0 {
            self.max_subscriptions = limits.max_subscriptions;
        }
    }

    /// Writes a `send` (or holds it behind ones waiting for the relay's quota).
    fn send(&mut self, id: String, frame: String, out: &mut Vec<Action>) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let pending = PendingSend { id, seq, frame };
        if !self.deferred.is_empty() {
            self.deferred.push_back(pending);
            return;
        }
        out.push(Action::Write(pending.frame.clone()));
        self.sends.push_back(pending);
    }

    /// Holds a rate-limited send until `after` from `now`, in its place among the others
    /// held.
    fn defer(&mut self, pending: PendingSend, now: Instant, after: Duration) {
        let place = self.deferred.partition_point(|held| held.seq < pending.seq);
        self.deferred.insert(place, pending);
        let at = later(now, after);
        self.resend_at = Some(self.resend_at.map_or(at, |current| current.max(at)));
    }

    /// Sends `verify` with `code` for this connection's number.
    fn verify(&mut self, code: String, out: &mut Vec<Action>) {
        self.phase = Phase::Verify;
        self.verifying = Some(code.clone());
        let number = self.number.clone();
        out.push(write(&ClientFrame::Verify { number, code }));
    }
}

/// A `send` written to the relay and not answered yet.
struct PendingSend {
    id: String,
    /// Its order among this connection's sends.
    seq: u64,
    /// The frame, to write again if the relay rate-limits it.
    frame: String,
}

/// A registration under way for one number.
struct Registration {
    number: String,
    /// Set by `code-sent`: the code SMS is on its way, and valid until then.
    code_expires: Option<Instant>,
    /// A code the engine read from an SMS, until the relay answers its `verify`.
    code: Option<String>,
}

/// The client's whole state.
pub(super) struct Core {
    /// Whether the relay URL is usable at all (else the client never dials).
    endpoint_ok: bool,
    link: Link,
    /// The own number, from the engine; nothing happens without it.
    number: Option<String>,
    /// The device token, if it belongs to `number`.
    token: Option<StoredToken>,
    registration: Option<Registration>,
    /// The last `Subscribe` set, sent again after each login.
    subscription: Option<Vec<String>>,
    /// The network's state; `None` until the adapter's first word (no dialing before).
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
    /// The actions of the input being handled.
    out: Vec<Action>,
}

impl Core {
    /// A client that dials only once the network is known (`watch_net`) and the URL is
    /// usable (`endpoint_ok`).
    pub(super) fn new(backoff: Backoff, endpoint_ok: bool, watch_net: bool) -> Core {
        Core {
            endpoint_ok,
            link: Link::Down,
            number: None,
            token: None,
            registration: None,
            subscription: None,
            net: (!watch_net).then_some(Connectivity::Unknown),
            asleep: false,
            backoff,
            retry_at: None,
            replaced: false,
            parked: false,
            shown: None,
            paused: false,
            out: Vec::new(),
        }
    }

    /// Handles one input at `now`: the actions that follow, in order (ending with the
    /// state, when it changed).
    pub(super) fn handle(&mut self, now: Instant, input: Input) -> Vec<Action> {
        let result = match input {
            Input::Command(RelayCommand::OwnNumber(number)) => {
                self.set_number(now, number, None);
                Ok(())
            }
            Input::Command(command) => self.on_command(now, command),
            Input::OwnNumber { number, stored } => {
                self.set_number(now, number, stored);
                Ok(())
            }
            Input::Opened => {
                self.on_opened(now);
                Ok(())
            }
            Input::DialFailed => {
                self.on_dial_failed(now);
                Ok(())
            }
            Input::Frame(frame) => self.on_frame(now, frame),
            Input::Heard => {
                self.heard(now);
                Ok(())
            }
            Input::Lost(why) => Err(End::Lost(why)),
            Input::Connectivity(connectivity) => {
                self.on_connectivity(now, connectivity);
                Ok(())
            }
            Input::Sleep => {
                self.on_sleep();
                Ok(())
            }
            Input::SleepClosed => Err(End::Sleep),
            Input::Resumed => {
                self.on_resume(now);
                Ok(())
            }
            Input::Tick => self.on_tick(now),
            Input::Stop => Err(End::Local),
        };
        if let Err(end) = result {
            self.end_link(now, end);
        }
        self.update_state();
        std::mem::take(&mut self.out)
    }

    /// When to [`Input::Tick`] next: the earliest of the next dial, the dead-connection
    /// check, the code's expiry and the resend of rate-limited sends.
    pub(super) fn deadline(&self) -> Option<Instant> {
        [
            self.dial_deadline(),
            self.idle_deadline(),
            self.code_deadline(),
            self.resend_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Whether the shell reads the relay (it stops while the engine is behind): after a
    /// pause, silence is not the relay's fault, so the dead-connection check starts over.
    pub(super) fn set_reading(&mut self, reading: bool, now: Instant) {
        if reading
            && self.paused
            && let Link::Up(session) = &mut self.link
        {
            session.last_rx = now;
        }
        self.paused = !reading;
    }

    // ----- state -----

    /// Whether the client should be connected (or connecting) now.
    fn may_dial(&self) -> bool {
        self.number.is_some()
            && self.net.is_some_and(Connectivity::allows_dialing)
            && !self.asleep
            && !self.parked
            && self.endpoint_ok
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
            Link::Up(_) | Link::Dialing => RelayState::Connecting,
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
            self.event(RelayEvent::State(state));
        }
    }

    fn event(&mut self, event: RelayEvent) {
        self.out.push(Action::Event(event));
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
            Link::Up(session) if !self.paused => Some(later(session.last_rx, session.idle_timeout)),
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

    fn session(&mut self) -> Option<&mut Session> {
        match &mut self.link {
            Link::Up(session) => Some(session),
            _ => None,
        }
    }

    fn online_session(&mut self) -> Option<&mut Session> {
        self.session()
            .filter(|session| session.phase == Phase::Online)
    }

    fn heard(&mut self, now: Instant) {
        if let Some(session) = self.session() {
            session.last_rx = now;
        }
    }

    /// Dials again at once if the client may and is not waiting for the code SMS.
    fn dial_now(&mut self, now: Instant) {
        if matches!(self.link, Link::Down) && !self.waiting_for_code() {
            self.backoff.reset();
            self.retry_at = self.number.is_some().then_some(now);
        }
    }

    // ----- timers -----

    fn on_tick(&mut self, now: Instant) -> Result<(), End> {
        if self.dial_deadline().is_some_and(|at| at <= now) {
            self.retry_at = None;
            self.link = Link::Dialing;
            self.out.push(Action::Dial);
        }
        if self.idle_deadline().is_some_and(|at| at <= now) {
            return Err(End::Lost(
                "nothing received for the idle timeout: dead connection",
            ));
        }
        if self.code_deadline().is_some_and(|at| at <= now) {
            self.on_code_expired(now);
        }
        if self.resend_deadline().is_some_and(|at| at <= now) {
            self.resend_deferred();
        }
        Ok(())
    }

    /// Writes again, in order, the sends held for the relay's quota.
    fn resend_deferred(&mut self) {
        let Link::Up(session) = &mut self.link else {
            return;
        };
        session.resend_at = None;
        debug!(
            count = session.deferred.len(),
            "sending rate-limited messages again"
        );
        while let Some(pending) = session.deferred.pop_front() {
            self.out.push(Action::Write(pending.frame.clone()));
            session.sends.push_back(pending);
        }
    }

    fn on_code_expired(&mut self, now: Instant) {
        info!("the registration code did not come in time; asking for a new one");
        self.registration = None;
        match &self.link {
            Link::Up(session) if session.phase == Phase::AwaitCode => self.authenticate(),
            Link::Down => self.retry_at = Some(now),
            _ => {}
        }
    }

    // ----- connecting -----

    fn on_dial_failed(&mut self, now: Instant) {
        self.link = Link::Down;
        let delay = self.backoff.next_delay();
        info!(
            retry_in_ms = delay.as_millis() as u64,
            "cannot reach the relay"
        );
        self.retry_at = Some(later(now, delay));
    }

    fn on_opened(&mut self, now: Instant) {
        let number = match (&self.link, &self.number) {
            (Link::Dialing, Some(number)) => number.clone(),
            _ => {
                self.link = Link::Down;
                return self.out.push(Action::Hangup { close: false });
            }
        };
        self.link = Link::Up(Box::new(Session::new(number, now)));
        self.out.push(write(&ClientFrame::Hello {
            v: PROTOCOL_VERSION,
            client: Some(concat!("tandemd/", env!("CARGO_PKG_VERSION")).to_owned()),
        }));
    }

    /// After `welcome` (or when a registration starts over): `login` with the token,
    /// `verify` a code we have, wait for the code SMS, or `register`.
    fn authenticate(&mut self) {
        let Link::Up(session) = &mut self.link else {
            return;
        };
        let number = session.number.clone();
        if let Some(stored) = self.token.as_ref().filter(|t| t.number == number) {
            debug!(%number, "logging in");
            session.phase = Phase::Login;
            let token = stored.token.clone();
            return self.out.push(write(&ClientFrame::Login { number, token }));
        }
        if let Some(registration) = self.registration.as_ref().filter(|r| r.number == number) {
            if let Some(code) = &registration.code {
                info!("verifying the registration code");
                return session.verify(code.clone(), &mut self.out);
            }
            if registration.code_expires.is_some() {
                // The code SMS is on its way; `register` again would only be rate-limited.
                session.phase = Phase::AwaitCode;
                return;
            }
        }
        // The phone's own number is the user's: in the journal at DEBUG only.
        info!("registering with the relay");
        debug!(%number, "registering as");
        self.registration = Some(Registration {
            number: number.clone(),
            code_expires: None,
            code: self.registration.take().and_then(|r| r.code),
        });
        session.phase = Phase::Register;
        self.out.push(write(&ClientFrame::Register { number }));
    }

    /// Ends the connection (if any): answers what it owed, and plans the next one.
    fn end_link(&mut self, now: Instant, end: End) {
        let link = std::mem::replace(&mut self.link, Link::Down);
        let mut lasted = None;
        match link {
            Link::Down => {}
            Link::Dialing => self.out.push(Action::Hangup { close: false }),
            Link::Up(mut session) => {
                // Held ones were refused by the relay, so not stored; but a Lost one is
                // sent again after the next login anyway, which is what they wait for.
                let held = session.deferred.drain(..);
                for pending in session.sends.drain(..).chain(held) {
                    let id = MessageId::from(pending.id);
                    let answer = SendAnswer::Lost;
                    self.out
                        .push(Action::Event(RelayEvent::SendAnswer { id, answer }));
                }
                for id in session.revokes.drain(..) {
                    let id = MessageId::from(id);
                    self.out.push(Action::Event(RelayEvent::RevokeAnswer {
                        id,
                        outcome: None,
                    }));
                }
                lasted = session
                    .logged_in_at
                    .map(|at| now.saturating_duration_since(at));
                // We hang up on a working connection: say so (briefly). Closed already
                // before sleep; the others are gone anyway.
                let close = matches!(end, End::Local | End::Pause(..));
                self.out.push(Action::Hangup { close });
            }
        }
        if lasted.is_some_and(|lasted| lasted >= STABLE_LOGIN) {
            self.backoff.reset();
        }
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
        let delay = match code {
            ErrorCode::AuthFailed => {
                warn!(
                    reason = message,
                    "the relay refused the device token: it is void"
                );
                self.out.push(Action::RemoveToken);
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
                info!("registering again");
                self.backoff.next_delay()
            }
            ErrorCode::Replaced => {
                warn!(
                    reason = message,
                    "another connection logged in as this number"
                );
                self.replaced = true;
                self.backoff.next_delay()
            }
            ErrorCode::AuthTimeout if self.registration.is_some() => {
                // Registration outlived the relay's auth timeout: go on on a new
                // connection once there is something to say (the code stays valid).
                let has_code = self.registration.as_ref().is_some_and(|r| r.code.is_some());
                if !has_code && self.waiting_for_code() {
                    info!("waiting for the registration code SMS while disconnected");
                    self.retry_at = None;
                    return;
                }
                self.backoff.next_delay()
            }
            ErrorCode::UnsupportedVersion => {
                error!(
                    reason = message,
                    "the relay does not speak protocol version {PROTOCOL_VERSION}"
                );
                self.backoff.max()
            }
            _ => {
                info!(
                    code = code.as_str(),
                    reason = message,
                    "the relay closed the connection"
                );
                self.backoff.next_delay()
            }
        };
        debug!(retry_in_ms = delay.as_millis() as u64, "reconnecting later");
        self.retry_at = Some(later(now, delay));
    }

    // ----- the engine's commands -----

    fn on_command(&mut self, now: Instant, command: RelayCommand) -> Result<(), End> {
        match command {
            RelayCommand::OwnNumber(number) => self.set_number(now, number, None),
            RelayCommand::Code(code) => self.on_code(now, code),
            RelayCommand::Send { id, to, text, ts } => self.on_send(id, to, text, ts),
            RelayCommand::Revoke { id } => {
                let Some(session) = self.online_session() else {
                    self.event(RelayEvent::RevokeAnswer { id, outcome: None });
                    return Ok(());
                };
                session.revokes.push_back(id.as_str().to_owned());
                let id = id.into_string();
                self.out.push(write(&ClientFrame::Revoke { id }));
            }
            RelayCommand::Ack { from, id } => {
                let frame = ClientFrame::Ack {
                    from: from.into_string(),
                    id: id.into_string(),
                };
                self.write_online(frame, "ack dropped: not logged in");
            }
            RelayCommand::Subscribe { numbers } => {
                let numbers: Vec<String> = numbers.into_iter().map(Peer::into_string).collect();
                if let Some(session) = self.online_session() {
                    let frame = subscribe_frame(&numbers, session.max_subscriptions);
                    self.out.push(write(&frame));
                }
                self.subscription = Some(numbers);
            }
            RelayCommand::Typing { to, active } => {
                let to = to.into_string();
                self.write_online(
                    ClientFrame::Typing { to, active },
                    "typing dropped: offline",
                );
            }
        }
        Ok(())
    }

    /// Writes `frame` when logged in, else drops it.
    fn write_online(&mut self, frame: ClientFrame, dropped: &'static str) {
        if self.online_session().is_some() {
            self.out.push(write(&frame));
        } else {
            debug!(frame = frame.kind(), "{dropped}");
        }
    }

    fn on_send(&mut self, id: MessageId, to: Peer, text: String, ts: i64) {
        let session = match &mut self.link {
            Link::Up(session) if session.phase == Phase::Online => session,
            _ => {
                let answer = SendAnswer::NotConnected;
                return self.event(RelayEvent::SendAnswer { id, answer });
            }
        };
        let refuse = |reason, message| SendAnswer::Refused { reason, message };
        if text.len() as u64 > session.max_text_bytes {
            let message = format!(
                "{} bytes of text, more than the relay's {}",
                text.len(),
                session.max_text_bytes
            );
            let answer = refuse(Refusal::TextTooLarge, message);
            return self.event(RelayEvent::SendAnswer { id, answer });
        }
        let encoded = encode(&ClientFrame::Send {
            id: id.as_str().to_owned(),
            to: to.into_string(),
            text,
            ts,
        });
        if encoded.len() as u64 > session.max_frame_bytes {
            let message = format!(
                "a frame of {} bytes, more than the relay's {}",
                encoded.len(),
                session.max_frame_bytes
            );
            let answer = refuse(Refusal::FrameTooLarge, message);
            return self.event(RelayEvent::SendAnswer { id, answer });
        }
        session.send(id.into_string(), encoded, &mut self.out);
    }

    fn set_number(&mut self, now: Instant, number: Option<String>, stored: Option<StoredToken>) {
        let number = number.filter(|number| {
            let valid = is_e164(number);
            if !valid {
                error!("the own number is not E.164: the relay client stays offline");
                debug!(%number, "the own number that is not E.164");
            }
            valid
        });
        if number == self.number {
            return;
        }
        info!(known = number.is_some(), "own number changed");
        debug!(
            number = number.as_deref().unwrap_or("unknown"),
            "own number"
        );
        self.end_link(now, End::Local);
        self.number = number;
        self.registration = None;
        self.replaced = false;
        self.parked = false;
        self.token = None;
        if let (Some(number), Some(stored)) = (&self.number, stored) {
            if &stored.number == number {
                self.token = Some(stored);
            } else {
                info!(
                    stored = %stored.number,
                    "the stored relay token belongs to another number; registering this one"
                );
            }
        }
        self.backoff.reset();
        self.retry_at = self.number.is_some().then_some(now);
    }

    fn on_code(&mut self, now: Instant, code: String) {
        let Some(registration) = &mut self.registration else {
            return debug!("a registration code, but no registration is under way: ignored");
        };
        info!("registration code received");
        registration.code = Some(code.clone());
        let number = registration.number.clone();
        match &mut self.link {
            Link::Up(session) if session.phase == Phase::AwaitCode && session.number == number => {
                session.verify(code, &mut self.out)
            }
            // Verify on a new connection, at once (the code is what we waited for).
            Link::Down => self.retry_at = Some(now),
            // Used after `welcome` or `code-sent`.
            _ => {}
        }
    }

    // ----- the system and the network -----

    /// logind's `PrepareForSleep(true)`: close the session now, dial no more until resumed.
    fn on_sleep(&mut self) {
        if self.asleep {
            return;
        }
        self.asleep = true;
        self.retry_at = None;
        match self.link {
            Link::Down => info!("the system is going to sleep"),
            Link::Dialing => {
                info!("the system is going to sleep: no relay session yet");
                self.link = Link::Down;
                self.out.push(Action::Hangup { close: false });
            }
            Link::Up(_) => {
                info!("the system is going to sleep: closing the relay session");
                self.out.push(Action::CloseForSleep);
            }
        }
    }

    /// logind's `PrepareForSleep(false)`: connect at once, the backoff starts over. The
    /// login then brings what the relay kept meanwhile (messages, receipts, presence).
    fn on_resume(&mut self, now: Instant) {
        if !self.asleep {
            return;
        }
        self.asleep = false;
        info!("the system resumed: reconnecting to the relay");
        self.dial_now(now);
    }

    fn on_connectivity(&mut self, now: Instant, connectivity: Connectivity) {
        let before = self.net;
        if before == Some(connectivity) {
            return;
        }
        info!(?connectivity, "network connectivity");
        self.net = Some(connectivity);
        if !connectivity.allows_dialing() {
            return self.end_link(now, End::Local);
        }
        let returned = !before.is_some_and(Connectivity::allows_dialing)
            || (connectivity == Connectivity::Full && before != Some(Connectivity::Full));
        if returned {
            self.dial_now(now);
        }
    }

    // ----- the relay's frames -----

    fn on_frame(&mut self, now: Instant, frame: ServerFrame) -> Result<(), End> {
        let Link::Up(session) = &mut self.link else {
            return Ok(());
        };
        session.last_rx = now;
        match frame {
            ServerFrame::Welcome {
                server,
                verify,
                limits,
                ..
            } => {
                if session.phase == Phase::Hello {
                    debug!(%server, ?verify, "relay greeted");
                    session.take_limits(&limits);
                    self.authenticate();
                }
            }
            ServerFrame::CodeSent {
                number,
                expires_in_ms,
            } => self.on_code_sent(now, number, expires_in_ms),
            ServerFrame::Registered { number, token } => self.on_registered(number, token),
            ServerFrame::LoggedIn { number, queued } => self.on_logged_in(now, number, queued),
            ServerFrame::Ack {
                id,
                state,
                duplicate,
                ..
            } => match take_send(&mut session.sends, Some(&id)) {
                Some(PendingSend { id, .. }) => {
                    let answer = SendAnswer::Accepted {
                        state: placement(state),
                        duplicate,
                    };
                    let id = MessageId::from(id);
                    self.event(RelayEvent::SendAnswer { id, answer });
                }
                None => debug!(%id, "ack of no send of this connection"),
            },
            ServerFrame::RevokeResult { id, outcome } => {
                match take_pending(&mut session.revokes, Some(&id)) {
                    Some(id) => self.event(RelayEvent::RevokeAnswer {
                        id: MessageId::from(id),
                        outcome: Some(revocation(outcome)),
                    }),
                    None => debug!(%id, "revoke-result of no revoke of this connection"),
                }
            }
            ServerFrame::Error(error) => return self.on_error(now, error),
            other => {
                if let Some(event) = pushed_event(other) {
                    self.event(event);
                }
            }
        }
        Ok(())
    }

    fn on_code_sent(&mut self, now: Instant, number: String, expires_in_ms: u64) {
        let Link::Up(session) = &mut self.link else {
            return;
        };
        let registration = match &mut self.registration {
            Some(r) if r.number == number && session.phase == Phase::Register => r,
            _ => return,
        };
        info!(expires_in_ms, "the relay sent a code by SMS");
        let expires = later(now, Duration::from_millis(expires_in_ms));
        registration.code_expires = Some(expires);
        let code = registration.code.clone();
        self.out
            .push(Action::Event(RelayEvent::AwaitingCode { number }));
        match code {
            // The SMS was faster than `code-sent`.
            Some(code) => session.verify(code, &mut self.out),
            None => session.phase = Phase::AwaitCode,
        }
    }

    fn on_registered(&mut self, number: String, token: String) {
        let Link::Up(session) = &mut self.link else {
            return;
        };
        if number != session.number || !matches!(session.phase, Phase::Register | Phase::Verify) {
            return warn!("unexpected `registered`: ignored");
        }
        info!("registered with the relay");
        let stored = StoredToken { number, token };
        self.out.push(Action::SaveToken(stored.clone()));
        self.registration = None;
        session.phase = Phase::Login;
        self.out.push(write(&ClientFrame::Login {
            number: stored.number.clone(),
            token: stored.token.clone(),
        }));
        self.token = Some(stored);
    }

    fn on_logged_in(&mut self, now: Instant, number: String, queued: u32) {
        let Link::Up(session) = &mut self.link else {
            return;
        };
        if session.phase != Phase::Login {
            return;
        }
        info!(queued, "logged in to the relay");
        debug!(%number, "logged in as");
        session.phase = Phase::Online;
        session.logged_in_at = Some(now);
        let max_subscriptions = session.max_subscriptions;
        self.replaced = false;
        self.update_state();
        self.event(RelayEvent::LoggedIn { queued });
        if let Some(numbers) = &self.subscription {
            let frame = subscribe_frame(numbers, max_subscriptions);
            self.out.push(write(&frame));
        }
    }

    fn on_error(&mut self, now: Instant, error: ErrorFrame) -> Result<(), End> {
        if error.fatal {
            return Err(End::Fatal(error.code, error.message));
        }
        match error.re.as_deref() {
            Some("send") => self.on_send_error(now, error),
            Some("revoke") => self.on_revoke_error(error),
            Some("register") => return self.on_register_error(error),
            Some("verify") => return self.on_verify_error(error),
            re => {
                warn!(re = re.unwrap_or(""), code = error.code.as_str(), reason = %error.message,
                      "the relay refused a request");
            }
        }
        Ok(())
    }

    fn on_send_error(&mut self, now: Instant, error: ErrorFrame) {
        let Link::Up(session) = &mut self.link else {
            return;
        };
        let code = error.code.as_str();
        match take_send(&mut session.sends, error.id.as_deref()) {
            // The sender's quota: nothing was stored; the same frame goes again when the
            // relay says (the engine is not told: no SMS for a wait).
            Some(pending) if error.code == ErrorCode::RateLimited => {
                let after = error
                    .retry_after_ms
                    .map_or(DEFAULT_RETRY_AFTER, Duration::from_millis);
                if session.deferred.is_empty() {
                    info!(id = %pending.id, retry_after_ms = after.as_millis() as u64,
                          "the relay rate-limits this number's sends: sending again later");
                }
                session.defer(pending, now, after);
            }
            Some(PendingSend { id, .. }) => {
                debug!(%id, code, reason = %error.message, "send refused");
                let answer = SendAnswer::Refused {
                    reason: refusal(error.code),
                    message: error.message,
                };
                let id = MessageId::from(id);
                self.event(RelayEvent::SendAnswer { id, answer });
            }
            None => debug!(code, "refusal of no send of this connection"),
        }
    }

    fn on_revoke_error(&mut self, error: ErrorFrame) {
        let Link::Up(session) = &mut self.link else {
            return;
        };
        let code = error.code.as_str();
        match take_pending(&mut session.revokes, error.id.as_deref()) {
            Some(id) => {
                // `unknown-message`: the relay never accepted it, so it will never deliver
                // it: as good as revoked (the SMS may go). Anything else (`internal`):
                // unknown.
                let outcome =
                    (error.code == ErrorCode::UnknownMessage).then_some(Revocation::Revoked);
                debug!(%id, code, "revoke answered by an error");
                let id = MessageId::from(id);
                self.event(RelayEvent::RevokeAnswer { id, outcome });
            }
            None => debug!(code, "refusal of no revoke of this connection"),
        }
    }

    fn on_register_error(&mut self, error: ErrorFrame) -> Result<(), End> {
        let code = error.code.as_str();
        let number = self
            .registration
            .as_ref()
            .map(|r| r.number.clone())
            .unwrap_or_default();
        if error.code == ErrorCode::RateLimited {
            // A code may well be on its way: keep the registration, so it is used.
            let wait = Duration::from_millis(error.retry_after_ms.unwrap_or(0));
            info!(
                retry_after_ms = wait.as_millis() as u64,
                "registration rate-limited by the relay"
            );
            return Err(End::Pause(wait, "registration rate-limited"));
        }
        self.registration = None;
        Err(match error.code {
            ErrorCode::NumberTaken => {
                warn!(reason = %error.message,
                      "the number is registered on another device, and this relay cannot verify numbers: \
                       trying again rarely");
                End::Pause(self.backoff.max(), "number taken")
            }
            ErrorCode::InvalidNumber => {
                error!(%number, reason = %error.message, "the relay refuses the own number");
                End::Pause(self.backoff.max(), "invalid own number")
            }
            _ => {
                warn!(code, reason = %error.message, "registration failed");
                End::Pause(Duration::ZERO, "registration failed")
            }
        })
    }

    fn on_verify_error(&mut self, error: ErrorFrame) -> Result<(), End> {
        let code = error.code.as_str();
        let Some(registration) = &mut self.registration else {
            return Ok(());
        };
        debug!(number = %registration.number, code, "registration refused");
        match error.code {
            ErrorCode::CodeInvalid => {
                warn!(
                    attempts_left = error.attempts_left.unwrap_or(0),
                    "the relay says the code is wrong"
                );
                let Link::Up(session) = &mut self.link else {
                    return Ok(());
                };
                let tried = session.verifying.take();
                match registration.code.clone() {
                    // Another code came while this one was checked: try it.
                    Some(code) if Some(&code) != tried.as_ref() => {
                        session.verify(code, &mut self.out)
                    }
                    _ => {
                        registration.code = None;
                        session.phase = Phase::AwaitCode;
                    }
                }
                Ok(())
            }
            ErrorCode::CodeExpired | ErrorCode::NoCode => {
                info!(code, "the code is no longer valid; asking for a new one");
                self.registration = None;
                self.authenticate();
                Ok(())
            }
            ErrorCode::TooManyAttempts => {
                warn!("too many wrong codes; registering again later");
                self.registration = None;
                Err(End::Pause(Duration::ZERO, "too many attempts"))
            }
            _ => {
                warn!(code, reason = %error.message, "verification failed");
                self.registration = None;
                Err(End::Pause(Duration::ZERO, "verification failed"))
            }
        }
    }
}

// ----- frames and domain types -----

fn write(frame: &ClientFrame) -> Action {
    Action::Write(encode(frame))
}

/// The event of a frame the relay pushes on its own (a message, a confirm, a receipt,
/// presence); `None` for the others.
fn pushed_event(frame: ServerFrame) -> Option<RelayEvent> {
    Some(match frame {
        ServerFrame::Deliver {
            from, id, text, ts, ..
        } => RelayEvent::Deliver {
            from: Peer::from(from),
            id: MessageId::from(id),
            text,
            ts,
        },
        ServerFrame::Confirm { from, id, outcome } => RelayEvent::Confirm {
            from: Peer::from(from),
            id: MessageId::from(id),
            outcome: confirmation(outcome),
        },
        ServerFrame::Receipt {
            id, to, outcome, ..
        } => RelayEvent::Receipt {
            id: MessageId::from(id),
            to: Peer::from(to),
            outcome: match outcome {
                ReceiptOutcome::Delivered => Delivery::Delivered,
                ReceiptOutcome::Expired => Delivery::Expired,
            },
        },
        ServerFrame::Snapshot { entries } => {
            RelayEvent::Snapshot(entries.into_iter().map(presence_report).collect())
        }
        ServerFrame::Presence(entry) => RelayEvent::Presence(presence_report(entry)),
        _ => return None,
    })
}

fn placement(state: SendState) -> Placement {
    match state {
        SendState::Online => Placement::Online,
        SendState::Queued => Placement::Queued,
        SendState::Delivered => Placement::Delivered,
        SendState::Revoked => Placement::Revoked,
        SendState::Expired => Placement::Expired,
    }
}

fn refusal(code: ErrorCode) -> Refusal {
    match code {
        ErrorCode::RecipientUnregistered => Refusal::RecipientUnregistered,
        ErrorCode::TextTooLarge => Refusal::TextTooLarge,
        ErrorCode::FrameTooLarge => Refusal::FrameTooLarge,
        ErrorCode::QueueFull => Refusal::QueueFull,
        other => Refusal::Other(other.as_str()),
    }
}

fn revocation(outcome: RevokeOutcome) -> Revocation {
    match outcome {
        RevokeOutcome::Revoked => Revocation::Revoked,
        RevokeOutcome::AlreadyDelivered => Revocation::AlreadyDelivered,
    }
}

fn confirmation(outcome: ConfirmOutcome) -> Confirmation {
    match outcome {
        ConfirmOutcome::Delivered => Confirmation::Delivered,
        ConfirmOutcome::Revoked => Confirmation::Revoked,
        ConfirmOutcome::Unknown => Confirmation::Unknown,
    }
}

fn presence_report(entry: PresenceEntry) -> PresenceReport {
    PresenceReport {
        peer: Peer::from(entry.number),
        registered: entry.registered,
        presence: match entry.state {
            PresenceState::Online => Presence::Online,
            PresenceState::Typing => Presence::Typing,
            PresenceState::Offline => Presence::Offline,
        },
    }
}

/// `from + wait`, for waits that come from the configuration or the relay: capped at a
/// day, so no value can overflow the clock (and panic).
pub(super) fn later(from: Instant, wait: Duration) -> Instant {
    const LONGEST: Duration = Duration::from_secs(24 * 3600);
    from.checked_add(wait.min(LONGEST)).unwrap_or(from)
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
    //! The core as tables: each row starts from a state (a few inputs), feeds inputs and
    //! lists the actions they give, in order, in a short notation (`show`).

    use super::*;
    use crate::relay::protocol::{VerifyMode, decode_client};

    const ALICE: &str = "+15550001111";
    const BOB: &str = "+15550002222";
    const CAROL: &str = "+15550003333";
    const MS: Duration = Duration::from_millis(1);

    /// One step of a row.
    enum Step {
        /// This input, now.
        In(Input),
        /// Time passes.
        Wait(Duration),
        /// The time of the core's deadline comes: a `Tick` then.
        Due,
        /// There is no deadline (nothing will happen by itself).
        Idle,
    }
    use Step::{Due, Idle, In, Wait};

    /// A row: its name, the steps to its starting state, its steps, their actions.
    type Row = (&'static str, Vec<Step>, Vec<Step>, &'static [&'static str]);
    /// A [`Row`] that says whether the network is followed.
    type NetRow = (
        &'static str,
        bool,
        Vec<Step>,
        Vec<Step>,
        &'static [&'static str],
    );

    struct Rig {
        core: Core,
        now: Instant,
    }

    impl Rig {
        fn new(watch_net: bool) -> Rig {
            let backoff = Backoff::new(100 * MS, 1000 * MS);
            let mut rig = Rig {
                core: Core::new(backoff, true, watch_net),
                now: Instant::now(),
            };
            assert_eq!(rig.run(vec![In(Input::Tick)]), ["state offline"]);
            rig
        }

        fn run(&mut self, steps: Vec<Step>) -> Vec<String> {
            let mut shown = Vec::new();
            for step in steps {
                let input = match step {
                    In(input) => input,
                    Wait(wait) => {
                        self.now += wait;
                        continue;
                    }
                    Due => {
                        let due = self.core.deadline().expect("a deadline");
                        assert!(due >= self.now, "a deadline in the past");
                        self.now = due;
                        Input::Tick
                    }
                    Idle => {
                        assert_eq!(self.core.deadline(), None, "a deadline");
                        continue;
                    }
                };
                let actions = self.core.handle(self.now, input);
                shown.extend(actions.iter().map(show));
            }
            shown
        }
    }

    /// An action in a few words: `write` and the frame's type and main field.
    fn show(action: &Action) -> String {
        match action {
            Action::Dial => "dial".into(),
            Action::Write(text) => match decode_client(text).expect("a client frame") {
                ClientFrame::Hello { .. } => "write hello".into(),
                ClientFrame::Register { number } => format!("write register {number}"),
                ClientFrame::Verify { code, .. } => format!("write verify {code}"),
                ClientFrame::Login { token, .. } => format!("write login {token}"),
                ClientFrame::Send { id, .. } => format!("write send {id}"),
                ClientFrame::Ack { id, .. } => format!("write ack {id}"),
                ClientFrame::Revoke { id } => format!("write revoke {id}"),
                ClientFrame::Subscribe { numbers } => {
                    format!("write subscribe {}", numbers.join(","))
                }
                ClientFrame::Typing { to, active } => format!("write typing {to} {active}"),
                ClientFrame::Ping { .. } => "write ping".into(),
            },
            Action::Hangup { close } => format!("hangup close={close}"),
            Action::CloseForSleep => "close for sleep".into(),
            Action::SaveToken(stored) => format!("save token {}", stored.token),
            Action::RemoveToken => "remove token".into(),
            Action::Event(event) => match event {
                RelayEvent::State(state) => format!("state {state}"),
                RelayEvent::LoggedIn { queued } => format!("logged in {queued}"),
                RelayEvent::AwaitingCode { number } => format!("awaiting code {number}"),
                RelayEvent::SendAnswer { id, answer } => format!("answer {id} {answer:?}"),
                RelayEvent::RevokeAnswer { id, outcome } => format!("revoked {id} {outcome:?}"),
                other => format!("{other:?}"),
            },
        }
    }

    // ----- inputs -----

    fn own(number: &str, token: Option<&str>) -> Step {
        In(Input::OwnNumber {
            number: Some(number.to_owned()),
            stored: token.map(|token| StoredToken {
                number: number.to_owned(),
                token: token.to_owned(),
            }),
        })
    }

    fn frame(frame: ServerFrame) -> Step {
        In(Input::Frame(frame))
    }

    fn command(command: RelayCommand) -> Step {
        In(Input::Command(command))
    }

    fn limits() -> Limits {
        Limits {
            max_frame_bytes: 65_536,
            max_text_bytes: 4096,
            max_subscriptions: 500,
            queue_per_recipient: 1000,
            max_age_ms: 1_000_000,
            ping_interval_ms: 30_000,
            idle_timeout_ms: 75_000,
            typing_ttl_ms: 6000,
            auth_timeout_ms: 30_000,
        }
    }

    fn welcome_with(limits: Limits) -> Step {
        frame(ServerFrame::Welcome {
            v: PROTOCOL_VERSION,
            server: "test".into(),
            verify: VerifyMode::SmsCommand,
            limits,
        })
    }

    fn welcome() -> Step {
        welcome_with(limits())
    }

    fn logged_in(queued: u32) -> Step {
        frame(ServerFrame::LoggedIn {
            number: ALICE.into(),
            queued,
        })
    }

    fn error(code: ErrorCode, re: &str, id: Option<&str>) -> Step {
        let mut error = ErrorFrame::new(code, "no").re(re);
        error.id = id.map(str::to_owned);
        frame(ServerFrame::Error(error))
    }

    fn fatal(code: ErrorCode) -> Step {
        frame(ServerFrame::Error(ErrorFrame::new(code, "bye")))
    }

    fn rate_limited(id: &str, after_ms: u64) -> Step {
        let mut error = ErrorFrame::new(ErrorCode::RateLimited, "slow down")
            .re("send")
            .id(id);
        error.retry_after_ms = Some(after_ms);
        frame(ServerFrame::Error(error))
    }

    fn send(id: &str, text: &str) -> Step {
        command(RelayCommand::Send {
            id: id.into(),
            to: BOB.into(),
            text: text.into(),
            ts: 1,
        })
    }

    fn acked(id: &str, state: SendState) -> Step {
        frame(ServerFrame::Ack {
            id: id.into(),
            to: BOB.into(),
            state,
            duplicate: false,
        })
    }

    fn revoke(id: &str) -> Step {
        command(RelayCommand::Revoke { id: id.into() })
    }

    fn code(code: &str) -> Step {
        command(RelayCommand::Code(code.into()))
    }

    // ----- starting states -----

    /// Alice's number known with a token, the connection dialing.
    fn dialing() -> Vec<Step> {
        vec![own(ALICE, Some("tok")), Due]
    }

    /// Alice logged in, with the relay's `limits`.
    fn online_with(limits: Limits) -> Vec<Step> {
        let mut steps = dialing();
        steps.extend([In(Input::Opened), welcome_with(limits), logged_in(0)]);
        steps
    }

    fn online() -> Vec<Step> {
        online_with(limits())
    }

    fn then(mut start: Vec<Step>, more: impl IntoIterator<Item = Step>) -> Vec<Step> {
        start.extend(more);
        start
    }

    /// Runs `start`, then `steps`, and checks the actions of `steps`.
    fn check(name: &str, watch_net: bool, start: Vec<Step>, steps: Vec<Step>, expected: &[&str]) {
        let mut rig = Rig::new(watch_net);
        rig.run(start);
        let got = rig.run(steps);
        assert_eq!(got, expected, "row: {name}");
    }

    #[test]
    fn connecting_and_logging_in() {
        let rows: Vec<Row> = vec![
            (
                "login with the stored token",
                vec![],
                vec![
                    own(ALICE, Some("tok")),
                    Due,
                    In(Input::Opened),
                    welcome(),
                    logged_in(2),
                ],
                &[
                    "dial",
                    "state connecting",
                    "write hello",
                    "write login tok",
                    "state online",
                    "logged in 2",
                ],
            ),
            ("no own number: nothing to do", vec![], vec![Idle], &[]),
            (
                "an own number that is not E.164 counts as none",
                vec![],
                vec![
                    In(Input::OwnNumber {
                        number: Some("0555 0001111".into()),
                        stored: None,
                    }),
                    Idle,
                ],
                &[],
            ),
            (
                "a token of another number is not used: register",
                vec![],
                vec![
                    In(Input::OwnNumber {
                        number: Some(ALICE.into()),
                        stored: Some(StoredToken {
                            number: BOB.into(),
                            token: "bobs".into(),
                        }),
                    }),
                    Due,
                    In(Input::Opened),
                    welcome(),
                ],
                &[
                    "dial",
                    "state connecting",
                    "write hello",
                    "write register +15550001111",
                ],
            ),
            (
                "a failed dial waits for the backoff",
                dialing(),
                vec![In(Input::DialFailed), Wait(50 * MS), Due],
                &["state offline", "dial", "state connecting"],
            ),
            (
                "a lost connection: reconnect after the backoff",
                online(),
                vec![In(Input::Lost("read failed")), Due],
                &[
                    "hangup close=false",
                    "state offline",
                    "dial",
                    "state connecting",
                ],
            ),
            (
                "silence for the idle timeout: dead connection",
                online(),
                vec![Wait(Duration::from_secs(74)), In(Input::Heard), Due],
                &["hangup close=false", "state offline"],
            ),
            (
                "the own number goes away: hang up, offline",
                online(),
                vec![
                    In(Input::OwnNumber {
                        number: None,
                        stored: None,
                    }),
                    Idle,
                ],
                &["hangup close=true", "state offline"],
            ),
            (
                "the engine is gone: hang up",
                online(),
                vec![In(Input::Stop)],
                &["hangup close=true", "state offline"],
            ),
        ];
        for (name, start, steps, expected) in rows {
            check(name, false, start, steps, expected);
        }
    }

    #[test]
    fn registering_with_the_code_sms() {
        let code_sent = || {
            frame(ServerFrame::CodeSent {
                number: ALICE.into(),
                expires_in_ms: 10_000,
            })
        };
        let registered = || {
            frame(ServerFrame::Registered {
                number: ALICE.into(),
                token: "new".into(),
            })
        };
        let registering = || {
            vec![
                own(ALICE, None),
                Due,
                In(Input::Opened),
                welcome(),
                code_sent(),
            ]
        };
        let rows: Vec<Row> = vec![
            (
                "register, code SMS, verify, token stored, login",
                vec![own(ALICE, None), Due, In(Input::Opened)],
                vec![
                    welcome(),
                    code_sent(),
                    code("123456"),
                    registered(),
                    logged_in(0),
                ],
                &[
                    "write register +15550001111",
                    "awaiting code +15550001111",
                    "write verify 123456",
                    "save token new",
                    "write login new",
                    "state online",
                    "logged in 0",
                ],
            ),
            (
                "the SMS faster than `code-sent`: verified at once",
                vec![own(ALICE, None), Due, In(Input::Opened), welcome()],
                vec![code("123456"), code_sent()],
                &["awaiting code +15550001111", "write verify 123456"],
            ),
            (
                "a wrong code: waiting for the next",
                registering(),
                vec![
                    code("111111"),
                    error(ErrorCode::CodeInvalid, "verify", None),
                    code("222222"),
                ],
                &["write verify 111111", "write verify 222222"],
            ),
            (
                "the code expired: register again",
                registering(),
                vec![error(ErrorCode::CodeExpired, "verify", None)],
                &["write register +15550001111"],
            ),
            (
                "the code SMS does not come in time: register again",
                registering(),
                vec![Due],
                &["write register +15550001111"],
            ),
            (
                "the relay's auth timeout while waiting: wait for the SMS unconnected, then dial",
                registering(),
                vec![fatal(ErrorCode::AuthTimeout), code("123456"), Due],
                &[
                    "hangup close=false",
                    "state offline",
                    "dial",
                    "state connecting",
                ],
            ),
            (
                "registration rate-limited: a pause of at least retry_after",
                vec![own(ALICE, None), Due, In(Input::Opened), welcome()],
                vec![{
                    let mut error = ErrorFrame::new(ErrorCode::RateLimited, "later").re("register");
                    error.retry_after_ms = Some(5000);
                    frame(ServerFrame::Error(error))
                }],
                &["hangup close=true", "state offline"],
            ),
        ];
        for (name, start, steps, expected) in rows {
            check(name, false, start, steps, expected);
        }
    }

    #[test]
    fn sends_get_exactly_one_answer() {
        let rows: Vec<Row> = vec![
            (
                "accepted",
                online(),
                vec![send("m1", "hi"), acked("m1", SendState::Online)],
                &[
                    "write send m1",
                    "answer m1 Accepted { state: Online, duplicate: false }",
                ],
            ),
            (
                "refused by the relay",
                online(),
                vec![
                    send("m1", "hi"),
                    error(ErrorCode::RecipientUnregistered, "send", Some("m1")),
                ],
                &[
                    "write send m1",
                    "answer m1 Refused { reason: RecipientUnregistered, message: \"no\" }",
                ],
            ),
            (
                "not logged in: not connected, at once",
                dialing(),
                vec![send("m1", "hi")],
                &["answer m1 NotConnected"],
            ),
            (
                "the connection ends before the answer: lost",
                online(),
                vec![send("m1", "hi"), In(Input::Lost("write failed"))],
                &[
                    "write send m1",
                    "answer m1 Lost",
                    "hangup close=false",
                    "state offline",
                ],
            ),
            (
                "rate-limited: held, the later ones behind it, written again in order",
                online(),
                vec![
                    send("m1", "a"),
                    send("m2", "b"),
                    rate_limited("m1", 500),
                    send("m3", "c"),
                    rate_limited("m2", 800),
                    Wait(100 * MS),
                    Due,
                    acked("m1", SendState::Queued),
                ],
                &[
                    "write send m1",
                    "write send m2",
                    "write send m1",
                    "write send m2",
                    "write send m3",
                    "answer m1 Accepted { state: Queued, duplicate: false }",
                ],
            ),
            (
                "rate-limited and held when the connection ends: lost, every one",
                online(),
                vec![
                    send("m1", "a"),
                    rate_limited("m1", 500),
                    send("m2", "b"),
                    In(Input::Lost("read failed")),
                ],
                &[
                    "write send m1",
                    "answer m1 Lost",
                    "answer m2 Lost",
                    "hangup close=false",
                    "state offline",
                ],
            ),
            (
                "a text over the relay's limit is refused here",
                online_with(Limits {
                    max_text_bytes: 4,
                    ..limits()
                }),
                vec![send("m1", "hello")],
                &[
                    "answer m1 Refused { reason: TextTooLarge, message: \"5 bytes of text, more than the relay's 4\" }",
                ],
            ),
            (
                "a frame over the relay's limit is refused here",
                online_with(Limits {
                    max_frame_bytes: 40,
                    ..limits()
                }),
                vec![send("m1", "hello")],
                &[
                    "answer m1 Refused { reason: FrameTooLarge, message: \"a frame of 67 bytes, more than the relay's 40\" }",
                ],
            ),
        ];
        for (name, start, steps, expected) in rows {
            check(name, false, start, steps, expected);
        }
    }

    #[test]
    fn revokes_get_exactly_one_answer() {
        let revoked = |outcome| {
            frame(ServerFrame::RevokeResult {
                id: "m1".into(),
                outcome,
            })
        };
        let rows: Vec<Row> = vec![
            (
                "revoked",
                online(),
                vec![revoke("m1"), revoked(RevokeOutcome::Revoked)],
                &["write revoke m1", "revoked m1 Some(Revoked)"],
            ),
            (
                "already delivered",
                online(),
                vec![revoke("m1"), revoked(RevokeOutcome::AlreadyDelivered)],
                &["write revoke m1", "revoked m1 Some(AlreadyDelivered)"],
            ),
            (
                "an id the relay never accepted: as good as revoked",
                online(),
                vec![
                    revoke("m1"),
                    error(ErrorCode::UnknownMessage, "revoke", Some("m1")),
                ],
                &["write revoke m1", "revoked m1 Some(Revoked)"],
            ),
            (
                "the relay failed: unknown",
                online(),
                vec![
                    revoke("m1"),
                    error(ErrorCode::Internal, "revoke", Some("m1")),
                ],
                &["write revoke m1", "revoked m1 None"],
            ),
            (
                "not logged in: unknown, at once",
                vec![],
                vec![revoke("m1")],
                &["revoked m1 None"],
            ),
            (
                "the connection ends first: unknown",
                online(),
                vec![revoke("m1"), In(Input::Lost("read failed"))],
                &[
                    "write revoke m1",
                    "revoked m1 None",
                    "hangup close=false",
                    "state offline",
                ],
            ),
        ];
        for (name, start, steps, expected) in rows {
            check(name, false, start, steps, expected);
        }
    }

    #[test]
    fn subscriptions_acks_and_typing() {
        let subscribe = |numbers: &[&str]| {
            command(RelayCommand::Subscribe {
                numbers: numbers.iter().map(|n| Peer::from(*n)).collect(),
            })
        };
        let rows: Vec<Row> = vec![
            (
                "subscribe while offline: remembered, sent after the login",
                dialing(),
                vec![
                    subscribe(&[BOB]),
                    In(Input::Opened),
                    welcome(),
                    logged_in(0),
                ],
                &[
                    "write hello",
                    "write login tok",
                    "state online",
                    "logged in 0",
                    "write subscribe +15550002222",
                ],
            ),
            (
                "and again after every login",
                then(online(), [subscribe(&[BOB, CAROL])]),
                vec![
                    In(Input::Lost("read failed")),
                    Due,
                    In(Input::Opened),
                    welcome(),
                    logged_in(0),
                ],
                &[
                    "hangup close=false",
                    "state offline",
                    "dial",
                    "state connecting",
                    "write hello",
                    "write login tok",
                    "state online",
                    "logged in 0",
                    "write subscribe +15550002222,+15550003333",
                ],
            ),
            (
                "cut to the relay's limit, the first kept",
                online_with(Limits {
                    max_subscriptions: 1,
                    ..limits()
                }),
                vec![subscribe(&[BOB, CAROL])],
                &["write subscribe +15550002222"],
            ),
            (
                "ack and typing go only while logged in",
                dialing(),
                vec![
                    command(RelayCommand::Ack {
                        from: BOB.into(),
                        id: "b1".into(),
                    }),
                    command(RelayCommand::Typing {
                        to: BOB.into(),
                        active: true,
                    }),
                ],
                &[],
            ),
            (
                "ack and typing while logged in",
                online(),
                vec![
                    command(RelayCommand::Ack {
                        from: BOB.into(),
                        id: "b1".into(),
                    }),
                    command(RelayCommand::Typing {
                        to: BOB.into(),
                        active: true,
                    }),
                ],
                &["write ack b1", "write typing +15550002222 true"],
            ),
        ];
        for (name, start, steps, expected) in rows {
            check(name, false, start, steps, expected);
        }
    }

    #[test]
    fn pushed_frames_become_domain_events() {
        let rows: Vec<(ServerFrame, RelayEvent)> = vec![
            (
                ServerFrame::Deliver {
                    from: BOB.into(),
                    id: "b1".into(),
                    text: "hi".into(),
                    ts: 7,
                    relay_ts: 8,
                },
                RelayEvent::Deliver {
                    from: Peer::from(BOB),
                    id: MessageId::from("b1"),
                    text: "hi".into(),
                    ts: 7,
                },
            ),
            (
                ServerFrame::Confirm {
                    from: BOB.into(),
                    id: "b1".into(),
                    outcome: ConfirmOutcome::Revoked,
                },
                RelayEvent::Confirm {
                    from: Peer::from(BOB),
                    id: MessageId::from("b1"),
                    outcome: Confirmation::Revoked,
                },
            ),
            (
                ServerFrame::Receipt {
                    id: "m1".into(),
                    to: BOB.into(),
                    outcome: ReceiptOutcome::Expired,
                    at: 9,
                },
                RelayEvent::Receipt {
                    id: MessageId::from("m1"),
                    to: Peer::from(BOB),
                    outcome: Delivery::Expired,
                },
            ),
            (
                ServerFrame::Presence(PresenceEntry {
                    number: BOB.into(),
                    registered: true,
                    state: PresenceState::Typing,
                }),
                RelayEvent::Presence(PresenceReport {
                    peer: Peer::from(BOB),
                    registered: true,
                    presence: Presence::Typing,
                }),
            ),
            (
                ServerFrame::Snapshot {
                    entries: vec![PresenceEntry {
                        number: CAROL.into(),
                        registered: false,
                        state: PresenceState::Offline,
                    }],
                },
                RelayEvent::Snapshot(vec![PresenceReport {
                    peer: Peer::from(CAROL),
                    registered: false,
                    presence: Presence::Offline,
                }]),
            ),
        ];
        for (frame, expected) in rows {
            let mut rig = Rig::new(false);
            rig.run(online());
            let actions = rig.core.handle(rig.now, Input::Frame(frame));
            assert_eq!(actions, [Action::Event(expected)]);
        }
    }

    #[test]
    fn the_number_moved_away() {
        let rows: Vec<Row> = vec![
            (
                "replaced, then the token fails: offline for good",
                online(),
                vec![
                    fatal(ErrorCode::Replaced),
                    Due,
                    In(Input::Opened),
                    welcome(),
                    fatal(ErrorCode::AuthFailed),
                    Idle,
                ],
                &[
                    "hangup close=false",
                    "state offline",
                    "dial",
                    "state connecting",
                    "write hello",
                    "write login tok",
                    "hangup close=false",
                    "remove token",
                    "state offline",
                ],
            ),
            (
                "a failing token alone: register again",
                dialing(),
                vec![
                    In(Input::Opened),
                    welcome(),
                    fatal(ErrorCode::AuthFailed),
                    Due,
                    In(Input::Opened),
                    welcome(),
                ],
                &[
                    "write hello",
                    "write login tok",
                    "hangup close=false",
                    "remove token",
                    "state offline",
                    "dial",
                    "state connecting",
                    "write hello",
                    "write register +15550001111",
                ],
            ),
            (
                "parked until the own number changes",
                then(
                    online(),
                    [
                        fatal(ErrorCode::Replaced),
                        Due,
                        In(Input::Opened),
                        welcome(),
                        fatal(ErrorCode::AuthFailed),
                    ],
                ),
                vec![own(BOB, None), Due],
                &["dial", "state connecting"],
            ),
        ];
        for (name, start, steps, expected) in rows {
            check(name, false, start, steps, expected);
        }
    }

    #[test]
    fn sleep_and_the_network() {
        let rows: Vec<NetRow> = vec![
            (
                "sleep: closed with the handshake, frames meanwhile handled, no dial until resumed",
                false,
                then(online(), [send("m1", "hi"), send("m2", "hi")]),
                vec![
                    In(Input::Sleep),
                    acked("m1", SendState::Online),
                    In(Input::SleepClosed),
                    Idle,
                    In(Input::Resumed),
                    Due,
                ],
                &[
                    "close for sleep",
                    "answer m1 Accepted { state: Online, duplicate: false }",
                    "answer m2 Lost",
                    "hangup close=false",
                    "state offline",
                    "dial",
                    "state connecting",
                ],
            ),
            (
                "sleep while dialing: the dial is dropped",
                false,
                dialing(),
                vec![In(Input::Sleep), Idle],
                &["hangup close=false", "state offline"],
            ),
            (
                "the network's first word is awaited before dialing",
                true,
                vec![own(ALICE, Some("tok")), Idle],
                vec![In(Input::Connectivity(Connectivity::Full)), Due],
                &["dial", "state connecting"],
            ),
            (
                "no network: hang up and wait; back: dial at once",
                true,
                then(vec![In(Input::Connectivity(Connectivity::Full))], online()),
                vec![
                    In(Input::Connectivity(Connectivity::NoNetwork)),
                    Idle,
                    In(Input::Connectivity(Connectivity::Limited)),
                    Due,
                ],
                &[
                    "hangup close=true",
                    "state offline",
                    "dial",
                    "state connecting",
                ],
            ),
            (
                "a portal or limited network still dials",
                true,
                vec![own(ALICE, Some("tok"))],
                vec![In(Input::Connectivity(Connectivity::Portal)), Due],
                &["dial", "state connecting"],
            ),
        ];
        for (name, watch_net, start, steps, expected) in rows {
            check(name, watch_net, start, steps, expected);
        }
    }

    #[test]
    fn waits_from_outside_cannot_overflow() {
        let now = Instant::now();
        assert_eq!(later(now, 5 * MS), now + 5 * MS);
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
