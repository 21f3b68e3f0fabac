//! The app's client of `org.tandem.Messages1`, written from the contract
//! (`dbus/org.tandem.Messages1.xml`), not from the daemon's code: the app knows the daemon
//! only through its D-Bus API. Wire types here, plain data in `model`.

use std::collections::HashMap;

use zbus::{DeserializeDict, Type};

use crate::model::{Conversation, Message};

/// The daemon's well-known bus name, object path and interface.
pub const SERVICE: &str = "org.tandem.Messages1";
pub const PATH: &str = "/org/tandem/Messages1";
pub const INTERFACE: &str = "org.tandem.Messages1";

#[zbus::proxy(
    interface = "org.tandem.Messages1",
    default_service = "org.tandem.Messages1",
    default_path = "/org/tandem/Messages1"
)]
pub trait Messages1 {
    fn send_message(
        &self,
        recipient: &str,
        text: &str,
        options: HashMap<&str, zbus::Variant<'_>>,
    ) -> zbus::Result<String>;

    fn list_conversations(&self, offset: u32, limit: u32) -> zbus::Result<Vec<ConversationDict>>;

    fn get_messages(
        &self,
        peer: &str,
        before_id: &str,
        limit: u32,
    ) -> zbus::Result<Vec<MessageDict>>;

    fn get_message(&self, id: &str) -> zbus::Result<MessageDict>;

    fn mark_read(&self, peer: &str) -> zbus::Result<()>;

    fn estimate_sms(&self, text: &str) -> zbus::Result<(u32, String, u32)>;

    #[zbus(property)]
    fn modem_state(&self) -> zbus::Result<String>;

    #[zbus(property)]
    fn relay_state(&self) -> zbus::Result<String>;

    #[zbus(property)]
    fn own_number(&self) -> zbus::Result<String>;

    #[zbus(property)]
    fn unread_count(&self) -> zbus::Result<u32>;
}

/// A message as the contract's `a{sv}`. Keys the app does not know are ignored, and
/// `name` (the contact's name, being added to the daemon) is read when present.
#[derive(Debug, Clone, PartialEq, Eq, Default, DeserializeDict, Type)]
#[zbus(signature = "a{sv}", rename_all = "kebab-case")]
pub struct MessageDict {
    pub id: String,
    pub peer: String,
    pub direction: String,
    pub text: String,
    pub channel: String,
    pub status: String,
    pub timestamp: i64,
    pub read: bool,
    pub error: Option<String>,
    pub name: Option<String>,
}

/// A conversation as the contract's `a{sv}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, DeserializeDict, Type)]
#[zbus(signature = "a{sv}", rename_all = "kebab-case")]
pub struct ConversationDict {
    pub peer: String,
    pub last_id: String,
    pub last_text: String,
    pub last_timestamp: i64,
    pub last_direction: String,
    pub unread: u32,
    pub presence: String,
    pub name: Option<String>,
}

impl From<MessageDict> for Message {
    fn from(d: MessageDict) -> Message {
        Message {
            id: d.id,
            peer: d.peer,
            name: d.name.filter(|n| !n.is_empty()),
            outgoing: d.direction == "outgoing",
            text: d.text,
            channel: d.channel,
            status: d.status,
            timestamp_ms: d.timestamp,
            error: d.error.filter(|e| !e.is_empty()),
        }
    }
}

impl From<ConversationDict> for Conversation {
    fn from(d: ConversationDict) -> Conversation {
        Conversation {
            peer: d.peer,
            name: d.name.filter(|n| !n.is_empty()),
            last_id: d.last_id,
            last_text: d.last_text,
            last_timestamp_ms: d.last_timestamp,
            last_outgoing: d.last_direction == "outgoing",
            unread: d.unread,
        }
    }
}

/// `SendMessage`'s options for the app's sends: the router's choice of channel.
pub fn send_options() -> HashMap<&'static str, zbus::Variant<'static>> {
    HashMap::from([("channel", zbus::Variant::from("auto"))])
}
