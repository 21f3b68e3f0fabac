//! The daemon's relay client: the only part of `tandemd` that talks to the relay.
//!
//! A task that owns the websocket connection and the device token, behind two channels
//! like the modem adapter: [`RelayCommand`]s in, [`RelayEvent`]s out. It logs in by
//! itself with the phone's own number whenever the network is up (registering first when
//! it has no token), reconnects with backoff, and reports what the relay says. It decides
//! nothing about messages: the engine (with the router) does, and it never touches the
//! store (the token file is its own).
//! The frames are those of `docs/relay-protocol.md`, from [`crate::relay::protocol`]; the
//! commands and events speak the domain's types (`Peer`, `MessageId`, `Presence`) and the
//! client's own small enums, never the wire's.
//!
//! Layout:
//! - `core`: the connection's state machine without I/O: inputs (frames, commands, the
//!   network, sleep, deadlines reached, with the time passed in) to actions (frames to
//!   write, dial, hang up, events, the token to store); all protocol decisions, and the
//!   only place where frames and the events' domain types meet;
//! - `task`: the shell around it, one task: the socket, the clock, the token file and
//!   the channels; it does what the core says and tells it what happened;
//! - `dial`: the relay URL, TCP, TLS (system roots) and the WebSocket handshake;
//!
//! The network's state comes from [`crate::net`] (NetworkManager) over a `watch`
//! channel, logind's sleep from [`crate::logind`] over a channel: both are tasks of their
//! own, so the client knows nothing of D-Bus.
//! - `token`: the token file (0600, written atomically);
//! - `backoff`: reconnect delays with jitter.
//!
//! Behaviour the engine can rely on:
//! - [`RelayEvent::State`] is sent at start and on every change: `Offline` (no own
//!   number, no network, or waiting to reconnect), `Connecting` (dialing, handshaking,
//!   registering, including while waiting for the code SMS, logging in), `Online`
//!   (logged in). Never `Disabled`.
//! - Every `Send` gets exactly one [`RelayEvent::SendAnswer`], every `Revoke` exactly one
//!   [`RelayEvent::RevokeAnswer`]: at once when not logged in (`NotConnected` / `None`),
//!   else the relay's answer, or `Lost` / `None` when the connection ends first.
//!   A send whose text or frame exceeds the relay's announced limits is `Refused` here
//!   (`Refusal::TextTooLarge` / `FrameTooLarge`) without being sent: an oversized frame would
//!   make the relay close the connection, again after every resend.
//! - A send the relay answers `rate-limited` (the sender's quota) is no answer yet: the
//!   client writes it again after `retry_after_ms`, with the sends after it held
//!   behind it in order, and the engine hears only the final answer (or `Lost`).
//! - A revoke answered `unknown-message` is reported as `Some(Revocation::Revoked)`:
//!   the relay never accepted that id, so it will never deliver it and the SMS may go.
//!   Other errors on a revoke (`internal`) give `None` (unknown).
//! - `Ack`, `Typing` while not logged in are dropped; `Subscribe` is remembered and sent
//!   again after every login (its answer is a [`RelayEvent::Snapshot`]; a set the relay
//!   refuses, `invalid-number` or `too-many-subscriptions`, is only logged).
//! - An own number that is not E.164 counts as none (logged): the relay would refuse it.
//! - Told that the system is going to sleep ([`Sleep::Preparing`]), it closes the session
//!   with the closing handshake (bounded: 1 s), handling what the relay still sends until
//!   its close, answers `closed`, shows `Offline` and dials no more until
//!   [`Sleep::Resumed`] (or the notices' channel closes); then it dials at once, backoff
//!   reset, and the login brings what the relay kept meanwhile.
//! - After `replaced` followed by a failing token (the number was verified on another
//!   device), the client stays `Offline` until the own number changes or the daemon
//!   restarts, instead of taking the number back in a loop of code SMS.

mod backoff;
mod core;
mod dial;
mod task;
mod token;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::domain::{MessageId, Peer, Presence, RelayState};
pub use crate::logind::Sleep;
use crate::net::ConnectivityWatch;
/// How many digits a registration code has (what the engine looks for in a code SMS).
pub use crate::relay::protocol::CODE_DIGITS;
pub use dial::{DialError, tls_with_roots};
pub use token::{TokenError, make_private as make_token_private};

/// What the client needs from the configuration.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `ws://` or `wss://` URL of the relay.
    pub url: String,
    /// Where the device token lives (mode 0600), e.g. `$XDG_DATA_HOME/tandem/relay-token`.
    pub token_path: PathBuf,
    /// First reconnect delay; doubles (with jitter) up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
}

/// Work the engine asks of the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayCommand {
    /// The phone's own number (E.164) became known or changed; `None`: unknown. The
    /// client logs in (or registers) only while it knows it.
    OwnNumber(Option<String>),
    /// A registration code read from an incoming SMS ("Tandem code: 123456").
    Code(String),
    /// `send`: answered by exactly one [`RelayEvent::SendAnswer`] with the same id.
    Send {
        id: MessageId,
        to: Peer,
        text: String,
        ts: i64,
    },
    /// `revoke`: answered by exactly one [`RelayEvent::RevokeAnswer`].
    Revoke { id: MessageId },
    /// `ack` of a delivered message, once stored: answered by a [`RelayEvent::Confirm`].
    Ack { from: Peer, id: MessageId },
    /// `subscribe`: replaces the followed numbers; answered by [`RelayEvent::Snapshot`].
    /// The client re-subscribes the last set by itself after each login.
    Subscribe { numbers: Vec<Peer> },
    /// `typing` towards a peer (renewing is the engine's job while the user types).
    Typing { to: Peer, active: bool },
}

/// Where a message the relay accepted is now (the protocol's `ack.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The recipient is logged in: the message is pushed to it; a receipt follows.
    Online,
    /// The recipient is registered but offline: stored until it logs in.
    Queued,
    /// (A send again of the same id.) The recipient has it.
    Delivered,
    /// (A send again of the same id.) Revoked or expired: the relay will never deliver it.
    Revoked,
    /// (A send again of the same id.) It waited too long and was dropped.
    Expired,
}

/// Why a send was refused: nothing was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The recipient has no account on the relay.
    RecipientUnregistered,
    /// The text is larger than the relay takes (checked here, before sending).
    TextTooLarge,
    /// The frame would be larger than the relay takes (checked here, before sending).
    FrameTooLarge,
    /// The recipient's queue on the relay is full.
    QueueFull,
    /// Anything else the relay said, by its code's spelling (e.g. `id-conflict`).
    Other(&'static str),
}

/// What a revoke did, when the relay answered it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revocation {
    /// The relay will never deliver it (revoked now or before, expired, or never
    /// accepted): the SMS may go.
    Revoked,
    /// The recipient already has it.
    AlreadyDelivered,
}

/// The relay's verdict on a message delivered to us and acked (the protocol's
/// `confirm.outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmation {
    /// Delivered: show it.
    Delivered,
    /// The sender revoked it (it comes another way): drop it unseen.
    Revoked,
    /// The relay has no such message for us: drop it.
    Unknown,
}

/// What became of a message of ours on the relay (the protocol's `receipt.outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The recipient has it.
    Delivered,
    /// It waited too long for its recipient and was dropped.
    Expired,
}

/// One followed number's state on the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceReport {
    pub peer: Peer,
    /// Whether the number has an account on the relay (an unregistered one is offline).
    pub registered: bool,
    pub presence: Presence,
}

/// The answer to a [`RelayCommand::Send`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendAnswer {
    /// `ack`: stored on the relay; `state` says where the message is now.
    Accepted { state: Placement, duplicate: bool },
    /// `error` on the send: nothing was accepted (e.g. `recipient-unregistered`).
    Refused { reason: Refusal, message: String },
    /// Not logged in: nothing was sent (the SMS may go at once).
    NotConnected,
    /// Sent, but the connection ended before the answer: whether the relay has it is
    /// unknown. Send it again with the same id after the next login (the relay
    /// deduplicates and tells where it is); never by SMS before knowing.
    Lost,
}

/// What the client tells the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayEvent {
    /// The connection's state, as `RelayState` shows it (reported on change).
    State(RelayState),
    /// Logged in (after a (re)connect): resend unanswered messages, re-ack hidden ones.
    LoggedIn {
        queued: u32,
    },
    /// Registration is waiting for the code SMS to this number.
    AwaitingCode {
        number: String,
    },
    SendAnswer {
        id: MessageId,
        answer: SendAnswer,
    },
    /// `None`: unknown (not connected, the connection ended first, or the relay failed).
    RevokeAnswer {
        id: MessageId,
        outcome: Option<Revocation>,
    },
    /// A message for us: store it hidden, then [`RelayCommand::Ack`].
    Deliver {
        from: Peer,
        id: MessageId,
        text: String,
        ts: i64,
    },
    Confirm {
        from: Peer,
        id: MessageId,
        outcome: Confirmation,
    },
    Receipt {
        id: MessageId,
        to: Peer,
        outcome: Delivery,
    },
    /// The answer to a subscribe, or the re-subscribe after a login.
    Snapshot(Vec<PresenceReport>),
    Presence(PresenceReport),
}

/// Runs the client until `commands` closes. Never panics, never spins.
///
/// With `connectivity` (the channel of [`crate::net`]'s adapter) it follows the network:
/// nothing before the adapter's first word, no dialing without a network, and when the
/// network returns it reconnects at once. Without it, or when NetworkManager is absent,
/// it just tries. `wss://` URLs trust the system's root
/// certificates (`SSL_CERT_FILE`, else the distribution's CA bundle).
pub async fn run(
    config: ClientConfig,
    commands: mpsc::Receiver<RelayCommand>,
    events: mpsc::Sender<RelayEvent>,
    connectivity: Option<ConnectivityWatch>,
) {
    task::run(config, None, commands, events, connectivity, None).await;
}

/// [`run`], following the system's sleep too: `sleep` carries logind's notices (see
/// [`crate::logind::run`]). The session is closed before the system sleeps, and opened
/// again at once when it wakes.
pub async fn run_with_sleep(
    config: ClientConfig,
    commands: mpsc::Receiver<RelayCommand>,
    events: mpsc::Sender<RelayEvent>,
    connectivity: Option<ConnectivityWatch>,
    sleep: mpsc::Receiver<Sleep>,
) {
    task::run(config, None, commands, events, connectivity, Some(sleep)).await;
}

/// [`run`], with this TLS configuration for `wss://` instead of the system's roots
/// (a relay with a private CA, see [`tls_with_roots`]; tests).
pub async fn run_with_tls(
    config: ClientConfig,
    tls: Arc<rustls::ClientConfig>,
    commands: mpsc::Receiver<RelayCommand>,
    events: mpsc::Sender<RelayEvent>,
    connectivity: Option<ConnectivityWatch>,
) {
    task::run(config, Some(tls), commands, events, connectivity, None).await;
}
