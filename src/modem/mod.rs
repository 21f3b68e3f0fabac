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
// Generated (zbus-xmlgen): its items are `pub` as generated.
#[allow(unreachable_pub)]
mod proxies;
mod sms;
mod timestamp;

pub use adapter::run;
pub use timestamp::parse_mm_timestamp;

use std::time::Duration;

use tokio::time::Instant;
use zbus::OwnedObjectPath;

use crate::domain::ModemState;

/// What the adapter needs from the configuration.
#[derive(Debug, Clone, Default)]
pub struct ModemConfig {
    /// Pick this modem rather than the first one with Messaging: matched against the
    /// modem's object path, its `EquipmentIdentifier`, or one of its `OwnNumbers`.
    pub modem: Option<String>,
}

/// ModemManager's SMS object made for one outgoing message. A path alone is no identity:
/// a restarted ModemManager numbers its objects from 0 again, so the object is named with
/// the unique bus name of the instance that made it, and every later call on it goes to
/// that name (a call to a vanished instance fails instead of reaching another SMS).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SmsObject {
    /// The unique bus name (`:1.42`) of the ModemManager instance that created it.
    pub owner: String,
    /// The modem it belongs to (`Messaging.Delete` is called there).
    pub modem: OwnedObjectPath,
    pub path: OwnedObjectPath,
}

impl SmsObject {
    /// An object named by strings as they were recorded; `None` when a path is invalid.
    pub fn parse(owner: &str, modem: &str, path: &str) -> Option<SmsObject> {
        Some(SmsObject {
            owner: owner.to_owned(),
            modem: OwnedObjectPath::try_from(modem).ok()?,
            path: OwnedObjectPath::try_from(path).ok()?,
        })
    }
}

/// Work the daemon asks the adapter to do.
///
/// An SMS goes out in two steps, so that the daemon can record the object durably before
/// anything can leave the phone: [`ModemCommand::Create`] answered by
/// [`ModemEvent::Created`], then [`ModemCommand::Send`] of that object, answered by exactly
/// one [`ModemEvent::SendResult`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModemCommand {
    /// Create the SMS object for a message, without sending it (ModemManager splits long
    /// texts into a multipart SMS). Answered by one [`ModemEvent::Created`],
    /// [`ModemEvent::SendResult`] (creating failed: nothing went out) or
    /// [`ModemEvent::SendRefused`] with the same `id`.
    Create {
        id: String,
        number: String,
        text: String,
        delivery_report: bool,
    },
    /// Send an object made by `Create`, allowing it `budget` (ModemManager's own worst
    /// case for all its parts). Answered by one [`ModemEvent::SendResult`] or
    /// [`ModemEvent::SendRefused`].
    Send {
        id: String,
        object: SmsObject,
        budget: Duration,
    },
    /// Find out what became of an object whose send an earlier run of the daemon may
    /// have started: `sent` at once, or after waiting until `settle_until` for a send
    /// that may still be running in ModemManager. Answered by one
    /// [`ModemEvent::SendResult`]: `Sent`, `NotSent` (still unsent when settled: it is safe
    /// to send again) or `Unknown` (the object is gone with its ModemManager).
    Resolve {
        id: String,
        object: SmsObject,
        settle_until: Instant,
    },
    /// Remove an SMS object of ours that is not needed any more: sent (and its status
    /// stored), unsent and given up, an orphan of a crash, or made for a message deleted
    /// meanwhile. Never done by the adapter on its own: only once the daemon has stored
    /// what the object told, so that a crash never leaves a record whose object is gone.
    /// Answered by [`ModemEvent::Discarded`] once it is off the modem (or was already
    /// gone); not answered when ModemManager could not remove it.
    Discard { object: SmsObject },
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
    /// Found on the modem by a listing (at start, or when the modem is enabled again): it
    /// was there before the adapter watched, rather than announced by `Added` meanwhile.
    pub listed: bool,
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

/// How a send ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendOutcome {
    /// It went out. `reference`: the SMS centre's `MessageReference` (`None` when it went
    /// out but the reference could not be read).
    Sent { reference: Option<u32> },
    /// It did not go out (ModemManager said so, or the object never left `stored`): it may
    /// be tried again.
    NotSent(SendFailure),
    /// Whether it went out cannot be known: ModemManager (or the modem) stopped answering
    /// while sending it, and the object that would tell is gone or never became `sent`.
    /// Sending it again could make it arrive twice.
    Unknown { reason: String },
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
    /// The object for [`ModemCommand::Create`]: not sent yet.
    Created {
        id: String,
        object: SmsObject,
    },
    /// How [`ModemCommand::Create`] (failed), [`ModemCommand::Send`] or
    /// [`ModemCommand::Resolve`] ended.
    SendResult {
        id: String,
        outcome: SendOutcome,
    },
    /// The answer to [`ModemCommand::Create`] or [`ModemCommand::Send`] when nothing was
    /// tried: no modem, or it is not registered (an object already made is removed). Not a
    /// failed attempt; the message should wait for the modem.
    SendRefused {
        id: String,
        reason: String,
    },
    /// The answer to [`ModemCommand::Discard`]: the object is off the modem.
    Discarded {
        object: SmsObject,
    },
    /// An outgoing SMS object that was never sent (`stored` or `unknown`), found when the
    /// modem's SMS were listed, and not made by this run of the adapter: perhaps one of
    /// ours, orphaned by a crash between `Create` and recording it.
    Draft {
        object: SmsObject,
        number: String,
        text: String,
    },
}
