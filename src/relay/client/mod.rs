//! The daemon's relay client: the only part of `tandemd` that talks to the relay.
//!
//! A task that owns the websocket connection and the device token, behind two channels
//! like the modem adapter: [`RelayCommand`]s in, [`RelayEvent`]s out. It logs in by
//! itself with the phone's own number whenever the network is up (registering first when
//! it has no token), reconnects with backoff, and reports what the relay says. It decides
//! nothing about messages: the engine (with the router) does, and it never touches the
//! store (the token file is its own).
//! The frames are those of `docs/relay-protocol.md`, from [`crate::relay::protocol`].
//!
//! Layout:
//! - `task`: the one task: the connection's state machine, commands, events, timers;
//! - `dial`: the relay URL, TCP, TLS (system roots) and the WebSocket handshake;
//! - `net`: NetworkManager's `Connectivity` on the system bus, as a stream (logind's
//!   sleep comes from [`crate::logind`], a task of its own, over a channel);
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
//!   (`text-too-large` / `frame-too-large`) without being sent: an oversized frame would
//!   make the relay close the connection, again after every resend.
//! - A send the relay answers `rate-limited` (the sender's quota) is no answer yet: the
//!   client writes it again after `retry_after_ms`, with the sends after it held
//!   behind it in order, and the engine hears only the final answer (or `Lost`).
//! - A revoke answered `unknown-message` is reported as `Some(RevokeOutcome::Revoked)`:
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
mod dial;
mod net;
mod task;
mod token;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::domain::RelayState;
pub use crate::logind::Sleep;
pub use crate::relay::protocol::{
    ConfirmOutcome, ErrorCode, PresenceEntry, PresenceState, ReceiptOutcome, RevokeOutcome,
    SendState,
};
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
        id: String,
        to: String,
        text: String,
        ts: i64,
    },
    /// `revoke`: answered by exactly one [`RelayEvent::RevokeAnswer`].
    Revoke { id: String },
    /// `ack` of a delivered message, once stored: answered by a [`RelayEvent::Confirm`].
    Ack { from: String, id: String },
    /// `subscribe`: replaces the followed numbers; answered by [`RelayEvent::Snapshot`].
    /// The client re-subscribes the last set by itself after each login.
    Subscribe { numbers: Vec<String> },
    /// `typing` towards a peer (renewing is the engine's job while the user types).
    Typing { to: String, active: bool },
}

/// The answer to a [`RelayCommand::Send`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendAnswer {
    /// `ack`: stored on the relay; `state` says where the message is now.
    Accepted { state: SendState, duplicate: bool },
    /// `error` on the send: nothing was accepted (e.g. `recipient-unregistered`).
    Refused { code: ErrorCode, message: String },
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
        id: String,
        answer: SendAnswer,
    },
    RevokeAnswer {
        id: String,
        outcome: Option<RevokeOutcome>,
    },
    /// A message for us: store it hidden, then [`RelayCommand::Ack`].
    Deliver {
        from: String,
        id: String,
        text: String,
        ts: i64,
    },
    Confirm {
        from: String,
        id: String,
        outcome: ConfirmOutcome,
    },
    Receipt {
        id: String,
        to: String,
        outcome: ReceiptOutcome,
    },
    /// The answer to a subscribe, or the re-subscribe after a login.
    Snapshot(Vec<PresenceEntry>),
    Presence(PresenceEntry),
}

/// Runs the client until `commands` closes. Never panics, never spins.
///
/// With `connectivity` (a system-bus connection) it follows NetworkManager: no network,
/// no dialing; when the network returns, it reconnects at once. Without it, or when
/// NetworkManager is absent, it just tries. `wss://` URLs trust the system's root
/// certificates (`SSL_CERT_FILE`, else the distribution's CA bundle).
pub async fn run(
    config: ClientConfig,
    commands: mpsc::Receiver<RelayCommand>,
    events: mpsc::Sender<RelayEvent>,
    connectivity: Option<zbus::Connection>,
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
    connectivity: Option<zbus::Connection>,
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
    connectivity: Option<zbus::Connection>,
) {
    task::run(config, Some(tls), commands, events, connectivity, None).await;
}
