//! `tandemctl monitor`: prints the daemon's signals (`MessageReceived`,
//! `MessageStatusChanged`, `PresenceChanged`, `ConversationRead`, `MessageDeleted`,
//! `ConversationDeleted`, `ContactsChanged`) and its property changes as they happen,
//! one line each, until Ctrl-C. It only listens: it calls nothing but the property reads
//! that check the daemon is there.

use std::io::Write;

use futures_util::StreamExt;
use tracing::debug;
use zbus::fdo::PropertiesChanged;
use zbus::{MatchRule, MessageStream};

use super::CtlError;
use super::commands::Client;
use super::output::{EventJson, MessageJson, event_line, json_line};
use crate::api::{
    BUS_NAME, ContactsChanged, ConversationDeleted, ConversationRead, MessageDeleted,
    MessageReceived, MessageStatusChanged, OBJECT_PATH, PresenceChanged,
};
use crate::domain::now_ms;

type Result<T> = std::result::Result<T, CtlError>;

/// The interface whose property changes are shown (the same name as the bus name).
const INTERFACE: &str = "org.tandem.Messages1";

/// Subscribes, checks the daemon answers, says so on `err`, then prints every event on
/// `out` until Ctrl-C (exit 0) or the bus connection ends (an error).
pub(super) async fn run(
    client: &Client,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<()> {
    // One stream for the interface's signals and its PropertiesChanged, so that events
    // are printed in the order the daemon sent them. The bus resolves the well-known
    // sender to whoever owns it, also after a restart of the daemon.
    let rule = MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender(BUS_NAME)
        .path(OBJECT_PATH)
        .build()?;
    let mut signals = MessageStream::for_match_rule(rule, &client.conn, None).await?;
    // Subscribed first, then asked: from here on nothing is missed, and the banner (on
    // stderr, so that stdout stays events only) tells a script it may go on.
    let status = client.status().await?;
    writeln!(
        err,
        "monitoring tandemd (modem {}, relay {}, {} unread); Ctrl-C to stop",
        status.modem_state, status.relay_state, status.unread_count
    )?;
    err.flush()?;

    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            stopped = &mut ctrl_c => {
                stopped.map_err(CtlError::Signal)?;
                return Ok(());
            }
            signal = signals.next() => {
                match signal {
                    Some(Ok(signal)) => print_signal(signal, json, out)?,
                    Some(Err(e)) => debug!(cause = %e, "unreadable message skipped"),
                    None => return Err(lost()),
                }
            }
        }
    }
}

fn lost() -> CtlError {
    CtlError::NotRunning("lost the session bus".into())
}

fn emit(out: &mut dyn Write, json: bool, event: &EventJson<'_>) -> Result<()> {
    if json {
        json_line(out, event)?;
    } else {
        event_line(out, now_ms(), event)?;
    }
    Ok(())
}

/// Runs `print` on a signal's arguments; a signal whose arguments do not parse is skipped.
fn with_args<A>(
    args: zbus::Result<A>,
    signal: &str,
    print: impl FnOnce(A) -> Result<()>,
) -> Result<()> {
    match args {
        Ok(args) => print(args),
        Err(e) => {
            debug!(cause = %e, "malformed {signal} skipped");
            Ok(())
        }
    }
}

/// Prints one of the interface's signals; malformed ones are skipped.
fn print_signal(signal: zbus::Message, json: bool, out: &mut dyn Write) -> Result<()> {
    if let Some(s) = MessageReceived::from_message(signal.clone()) {
        with_args(s.args(), "MessageReceived", |args| {
            let message = MessageJson::from(&args.message);
            emit(out, json, &EventJson::MessageReceived { message })
        })?;
    } else if let Some(s) = MessageStatusChanged::from_message(signal.clone()) {
        with_args(s.args(), "MessageStatusChanged", |args| {
            let event = EventJson::MessageStatusChanged {
                id: args.id,
                status: args.status,
                channel: args.channel,
            };
            emit(out, json, &event)
        })?;
    } else if let Some(s) = PresenceChanged::from_message(signal.clone()) {
        with_args(s.args(), "PresenceChanged", |args| {
            let event = EventJson::PresenceChanged {
                number: args.number,
                presence: args.presence,
            };
            emit(out, json, &event)
        })?;
    } else if let Some(s) = ConversationRead::from_message(signal.clone()) {
        with_args(s.args(), "ConversationRead", |args| {
            emit(out, json, &EventJson::ConversationRead { peer: args.peer })
        })?;
    } else if let Some(s) = MessageDeleted::from_message(signal.clone()) {
        with_args(s.args(), "MessageDeleted", |args| {
            let event = EventJson::MessageDeleted {
                id: args.id,
                peer: args.peer,
            };
            emit(out, json, &event)
        })?;
    } else if let Some(s) = ConversationDeleted::from_message(signal.clone()) {
        with_args(s.args(), "ConversationDeleted", |args| {
            emit(
                out,
                json,
                &EventJson::ConversationDeleted { peer: args.peer },
            )
        })?;
    } else if ContactsChanged::from_message(signal.clone()).is_some() {
        emit(out, json, &EventJson::ContactsChanged)?;
    } else if let Some(s) = PropertiesChanged::from_message(signal) {
        let Ok(args) = s.args() else {
            debug!("malformed PropertiesChanged skipped");
            return Ok(());
        };
        if args.interface_name.as_str() != INTERFACE {
            return Ok(());
        }
        let mut changed: Vec<_> = args.changed_properties.iter().collect();
        changed.sort_by_key(|(name, _)| **name);
        for (name, value) in changed {
            if let Some((property, value)) = property_value(name, value) {
                emit(out, json, &EventJson::PropertyChanged { property, value })?;
            }
        }
    }
    Ok(())
}

/// A changed property under its `status --json` key, or `None` for unknown or ill-typed
/// ones.
fn property_value(
    name: &str,
    value: &zbus::Variant<'_>,
) -> Option<(&'static str, serde_json::Value)> {
    let text = |key| <&str>::try_from(value).ok().map(|s| (key, s.into()));
    match name {
        "OwnNumber" => text("own-number"),
        "ModemState" => text("modem-state"),
        "RelayState" => text("relay-state"),
        "UnreadCount" => u32::try_from(value)
            .ok()
            .map(|n| ("unread-count", n.into())),
        "OtherSmsApps" => <Vec<String>>::try_from(value.try_clone().ok()?)
            .ok()
            .map(|apps| ("other-sms-apps", apps.into())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::Variant;

    #[test]
    fn property_values() {
        let rows = [
            (
                "ModemState",
                Variant::from("registered"),
                Some(("modem-state", serde_json::json!("registered"))),
            ),
            (
                "UnreadCount",
                Variant::from(3u32),
                Some(("unread-count", serde_json::json!(3))),
            ),
            ("UnreadCount", Variant::from("3"), None),
            (
                "OtherSmsApps",
                Variant::from(vec!["sm.puri.Chatty"]),
                Some(("other-sms-apps", serde_json::json!(["sm.puri.Chatty"]))),
            ),
            ("OtherSmsApps", Variant::from("sm.puri.Chatty"), None),
            ("Colour", Variant::from("red"), None),
        ];
        for (name, value, expected) in rows {
            assert_eq!(property_value(name, &value), expected, "{name}");
        }
    }
}
