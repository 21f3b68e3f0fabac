//! `tandemctl`, the command-line client of `org.tandem.Messages1`: parses nothing itself
//! (that is [`cli`]), connects to the session bus, calls the daemon through the proxy
//! generated from [`crate::api`]'s interface, and prints tables or JSON ([`output`]).
//!
//! It owns no state and must not reach around the API: no store, no ModemManager, no
//! configuration file. Every failure becomes a [`CtlError`] with a documented exit status
//! ([`CtlError::exit_code`], listed in [`cli::EXIT_STATUS_HELP`]).

pub mod cli;
mod commands;
mod docs;
mod localtime;
mod monitor;
mod output;

use std::io::{self, Read, Write};
use std::time::Duration;

use crate::api::ApiError;

pub use commands::run;

/// How long connecting to the session bus may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one method call may take, D-Bus activation of the daemon included.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a command reads and writes; the binary hands in the process's standard streams,
/// tests hand in buffers.
pub struct Io<'a> {
    /// Only read by `send -` and `estimate -`.
    pub stdin: &'a mut dyn Read,
    /// Results: ids, tables, JSON.
    pub out: &'a mut dyn Write,
    /// Progress of `send --wait`, the monitor's banner.
    pub err: &'a mut dyn Write,
}

/// Why a command failed. The message is what the user sees after `tandemctl: `.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The session bus cannot be reached, or the daemon is not on it or does not answer.
    #[error("{0}")]
    NotRunning(String),
    /// The daemon's `NotFound`.
    #[error("{0}")]
    NotFound(String),
    /// The daemon's `InvalidNumber` or `InvalidArgument`, or unreadable input.
    #[error("{0}")]
    Invalid(String),
    /// The daemon's `Unavailable`.
    #[error("{0}")]
    Unavailable(String),
    /// The daemon's `Failed`: its own store failed.
    #[error("{0}")]
    Daemon(String),
    /// `send --wait`: the message ended `failed`.
    #[error("message {id} failed: {reason}")]
    SendFailed { id: String, reason: String },
    /// `send --wait`: no final status in time.
    #[error("timed out after {secs} s waiting for message {id} to be {wanted} (it is {status})")]
    WaitTimeout {
        id: String,
        secs: u64,
        wanted: &'static str,
        status: String,
    },
    /// Any other D-Bus failure.
    #[error("D-Bus: {0}")]
    Bus(zbus::Error),
    /// Ctrl-C cannot be caught (`monitor`).
    #[error("cannot watch for Ctrl-C: {0}")]
    Signal(io::Error),
    /// Reading standard input failed.
    #[error("cannot read standard input: {0}")]
    Stdin(io::Error),
    /// Writing the output failed (a closed pipe is not reported: see [`CtlError::is_closed_pipe`]).
    #[error("cannot write the output: {0}")]
    Output(#[from] io::Error),
}

/// The exit statuses; [`cli::EXIT_STATUS_HELP`] documents them.
pub mod exit {
    pub const FAILURE: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const NOT_RUNNING: u8 = 3;
    pub const NOT_FOUND: u8 = 4;
    pub const INVALID: u8 = 5;
    pub const UNAVAILABLE: u8 = 6;
    pub const SEND_FAILED: u8 = 7;
    pub const TIMEOUT: u8 = 8;
}

impl CtlError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::NotRunning(_) => exit::NOT_RUNNING,
            CtlError::NotFound(_) => exit::NOT_FOUND,
            CtlError::Invalid(_) => exit::INVALID,
            CtlError::Unavailable(_) => exit::UNAVAILABLE,
            CtlError::SendFailed { .. } => exit::SEND_FAILED,
            CtlError::WaitTimeout { .. } => exit::TIMEOUT,
            CtlError::Daemon(_)
            | CtlError::Bus(_)
            | CtlError::Signal(_)
            | CtlError::Stdin(_)
            | CtlError::Output(_) => exit::FAILURE,
        }
    }

    /// The reader of our output went away (`tandemctl monitor | head -1`): not an error
    /// worth a message.
    pub fn is_closed_pipe(&self) -> bool {
        matches!(self, CtlError::Output(e) if e.kind() == io::ErrorKind::BrokenPipe)
    }

    fn not_running() -> CtlError {
        CtlError::NotRunning(
            "tandemd is not running: nothing owns org.tandem.Messages1 on the session bus \
             and D-Bus cannot start it (try `systemctl --user start tandemd`)"
                .into(),
        )
    }

    fn not_answering() -> CtlError {
        CtlError::NotRunning(format!(
            "tandemd did not answer within {} s (see `journalctl --user -u tandemd`)",
            CALL_TIMEOUT.as_secs()
        ))
    }
}

impl From<ApiError> for CtlError {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::InvalidNumber(m) | ApiError::InvalidArgument(m) => CtlError::Invalid(m),
            ApiError::NotFound(m) => CtlError::NotFound(m),
            ApiError::Unavailable(m) => CtlError::Unavailable(m),
            ApiError::Failed(m) => CtlError::Daemon(m),
            ApiError::ZBus(e) => CtlError::from_bus(e),
        }
    }
}

impl From<zbus::Error> for CtlError {
    /// Through [`ApiError`] first, so that the contract's error names are recognised
    /// wherever they come from (property reads, signals).
    fn from(e: zbus::Error) -> Self {
        ApiError::from(e).into()
    }
}

/// The prefix of the errors D-Bus activation fails with.
const SPAWN_ERRORS: &str = "org.freedesktop.DBus.Error.Spawn";

impl CtlError {
    fn from_bus(e: zbus::Error) -> CtlError {
        use zbus::fdo::Error as Fdo;
        match &e {
            zbus::Error::FDO(fdo) => match fdo.as_ref() {
                Fdo::ServiceUnknown(_) | Fdo::NameHasNoOwner(_) => CtlError::not_running(),
                Fdo::NoReply(_) | Fdo::Timeout(_) | Fdo::TimedOut(_) => CtlError::not_answering(),
                Fdo::Disconnected(_) | Fdo::NoServer(_) => {
                    CtlError::NotRunning(format!("lost the session bus: {e}"))
                }
                other if zbus::DBusError::name(other).starts_with(SPAWN_ERRORS) => {
                    CtlError::NotRunning(format!("D-Bus could not start tandemd: {e}"))
                }
                _ => CtlError::Bus(e),
            },
            zbus::Error::InputOutput(io) if io.kind() == io::ErrorKind::TimedOut => {
                CtlError::not_answering()
            }
            zbus::Error::InputOutput(_) => {
                CtlError::NotRunning(format!("lost the session bus: {e}"))
            }
            _ => CtlError::Bus(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_daemons_errors() {
        let fdo = |e: zbus::fdo::Error| zbus::Error::FDO(Box::new(e));
        let rows: Vec<(CtlError, u8)> = vec![
            (ApiError::InvalidNumber("x".into()).into(), exit::INVALID),
            (ApiError::InvalidArgument("x".into()).into(), exit::INVALID),
            (ApiError::NotFound("x".into()).into(), exit::NOT_FOUND),
            (ApiError::Unavailable("x".into()).into(), exit::UNAVAILABLE),
            (ApiError::Failed("x".into()).into(), exit::FAILURE),
            (
                fdo(zbus::fdo::Error::ServiceUnknown("x".into())).into(),
                exit::NOT_RUNNING,
            ),
            (
                fdo(zbus::fdo::Error::NoReply("x".into())).into(),
                exit::NOT_RUNNING,
            ),
            (
                zbus::Error::InputOutput(io::Error::from(io::ErrorKind::TimedOut).into()).into(),
                exit::NOT_RUNNING,
            ),
            (
                fdo(zbus::fdo::Error::UnknownMethod("x".into())).into(),
                exit::FAILURE,
            ),
        ];
        for (error, code) in rows {
            assert_eq!(error.exit_code(), code, "{error:?}");
        }
        let closed = CtlError::Output(io::Error::from(io::ErrorKind::BrokenPipe));
        assert!(closed.is_closed_pipe());
    }

    #[test]
    fn the_daemons_message_is_shown_as_is() {
        let e: CtlError = ApiError::InvalidNumber("\"abc\" is not a phone number".into()).into();
        assert_eq!(e.to_string(), "\"abc\" is not a phone number");
    }
}
