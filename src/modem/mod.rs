//! The ModemManager adapter: the only module that talks to ModemManager (system bus).
//!
//! It is a task that owns the system-bus connection and the modem it picked, and talks to
//! the rest of the daemon only through two channels: [`ModemCommand`]s in, [`ModemEvent`]s
//! out. It must not touch the store or decide anything about messages: it reports what the
//! modem did and does what it is told.
//!
//! Layout:
//! - `adapter`: the task ([`run`]): discovery, picking, state, and the SMS it follows.
//! - `sms`: one-shot helper jobs (list, read, send, delete), each bounded by a timeout.
//! - `pick`: what is known of each modem, which one to use, the state mapping (pure).
//! - `errors`: temporary or final, for failed sends (pure).
//! - `timestamp`: [`parse_mm_timestamp`] (pure).
//! - `proxies`: zbus proxies generated from ModemManager's XML (`proxies/regenerate.sh`).

mod adapter;
mod errors;
mod pick;
mod proxies;
mod sms;
mod timestamp;

pub use adapter::run;
pub use timestamp::parse_mm_timestamp;

use zbus::OwnedObjectPath;

use crate::domain::ModemState;

/// What the adapter needs from the configuration.
#[derive(Debug, Clone, Default)]
pub struct ModemConfig {
    /// Pick this modem rather than the first one with Messaging: matched against the
    /// modem's object path, its `EquipmentIdentifier`, or one of its `OwnNumbers`.
    pub modem: Option<String>,
    /// Remove our SMS objects from the modem once they are sent.
    pub delete_sent: bool,
}

/// Work the daemon asks the adapter to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModemCommand {
    /// Create and send one SMS (ModemManager splits long texts into a multipart SMS).
    /// Answered by exactly one [`ModemEvent::SendResult`] with the same `id`.
    Send {
        id: String,
        number: String,
        text: String,
        delivery_report: bool,
    },
    /// Remove an SMS (a stored incoming one, or an applied status report) from the modem.
    Delete { path: OwnedObjectPath },
}

/// A complete incoming SMS found on the modem (state `received`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingSms {
    /// Where it lives now; not an identity (paths change when the modem is re-enabled).
    pub path: OwnedObjectPath,
    /// The sender as the network gave it (not normalised).
    pub number: String,
    pub text: String,
    /// The SMS centre's timestamp, verbatim (`2024-05-01T12:34:56+02`), "" if none.
    pub smsc_timestamp: String,
    /// The same instant in milliseconds since the epoch, when it could be parsed.
    pub timestamp_ms: Option<i64>,
}

/// A status report (PDU type 3) found on the modem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusReport {
    pub path: OwnedObjectPath,
    /// The recipient of the original SMS, as the network gave it.
    pub number: String,
    /// The `MessageReference` of the SMS it reports on.
    pub reference: u32,
    /// ModemManager's `MMSmsDeliveryState` value.
    pub delivery_state: u32,
}

/// Why a send did not go out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendFailure {
    /// Worth retrying later (modem busy, network lost, timeout) rather than final.
    pub temporary: bool,
    pub reason: String,
}

/// What the adapter tells the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModemEvent {
    /// The modem's state changed (also sent once at start and when ModemManager or the
    /// modem goes away: `Absent`).
    State(ModemState),
    /// The SIM's own number (first of `OwnNumbers`), `None` when the SIM does not carry it.
    OwnNumber(Option<String>),
    Incoming(IncomingSms),
    StatusReport(StatusReport),
    /// The answer to [`ModemCommand::Send`] when the modem tried: on success the SMS's
    /// `MessageReference` (`None` when it went out but the reference could not be read).
    SendResult {
        id: String,
        result: Result<Option<u32>, SendFailure>,
    },
    /// The answer to [`ModemCommand::Send`] when nothing was tried: no modem, or it is not
    /// registered. Not a failed attempt; the message should wait for the modem.
    SendRefused {
        id: String,
        reason: String,
    },
}
