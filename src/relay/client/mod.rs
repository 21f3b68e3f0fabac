//! The daemon's relay client: the only part of `tandemd` that talks to the relay.
//!
//! A task that owns the websocket connection and the device token, behind two channels
//! like the modem adapter: [`RelayCommand`]s in, [`RelayEvent`]s out. It logs in by
//! itself with the phone's own number whenever the network is up (registering first when
//! it has no token), reconnects with backoff, and reports what the relay says. It decides
//! nothing about messages: the engine (with the router) does, and it never touches the
//! store (the token file is its own).
//! The frames are those of `docs/relay-protocol.md`, from [`crate::relay::protocol`].

use std::path::PathBuf;
use std::time::Duration;

use crate::domain::RelayState;
pub use crate::relay::protocol::{
    ConfirmOutcome, ErrorCode, PresenceEntry, PresenceState, ReceiptOutcome, RevokeOutcome,
    SendState,
};

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
    /// Not logged in, or the connection died before the answer: whether the relay got it
    /// is unknown; the same id may be sent again (the relay deduplicates).
    NotConnected,
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
