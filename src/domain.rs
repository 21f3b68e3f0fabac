//! Domain types shared by every module: messages, their states, and the states of the
//! two channels. Plain data, no I/O. Wire forms (D-Bus dictionaries, SQL rows, relay
//! frames) are converted to and from these at the edges, never passed through the core.

use std::fmt;
use std::str::FromStr;

/// Which way a message went, seen from this phone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    Incoming,
    Outgoing,
}

/// The channel that carried (or will carry) a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    Sms,
    Ip,
}

/// The channel a sender asked for in `SendMessage`'s `channel` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ChannelRequest {
    /// The founding method's rule: IP when both sides are online on the relay, else SMS.
    #[default]
    Auto,
    Sms,
    Ip,
}

/// Life cycle of a message. Outgoing: `Queued` → `Sending` → `Sent` → `Delivered`, or
/// `Failed` from any of them. Incoming messages are always `Received`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    Queued,
    Sending,
    Sent,
    Delivered,
    Failed,
    Received,
}

/// What the daemon knows of the modem, as the `ModemState` property shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ModemState {
    /// No modem, or no ModemManager on the system bus.
    #[default]
    Absent,
    /// The SIM needs a PIN or PUK.
    Locked,
    /// Present but not enabled (includes enabling/disabling transitions).
    Disabled,
    /// Enabled, looking for a network.
    Searching,
    /// Registered on a network: SMS can go out.
    Registered,
    /// ModemManager gave up on the modem.
    Failed,
}

/// The relay connection, as the `RelayState` property shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RelayState {
    /// No relay URL configured: the IP channel is off.
    #[default]
    Disabled,
    Offline,
    Connecting,
    Online,
}

/// A contact's state on the relay. A number not registered there is `Offline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Presence {
    #[default]
    Offline,
    Online,
    /// Online and writing to us.
    Typing,
}

/// Gives a string newtype what every edge needs: building it from and reading it as a
/// `str`, `Display`, and comparison with plain strings (tests and wire forms).
macro_rules! string_newtype {
    ($(#[$doc:meta])* $ty:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
        pub struct $ty(String);

        impl $ty {
            pub fn new(value: impl Into<String>) -> Self {
                $ty(value.into())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
            pub fn into_string(self) -> String {
                self.0
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        /// Reads as the string it is (`&peer` where a `&str` is wanted); building one
        /// from a string is explicit.
        impl std::ops::Deref for $ty {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }
        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl std::borrow::Borrow<str> for $ty {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
        impl From<String> for $ty {
            fn from(value: String) -> Self {
                $ty(value)
            }
        }
        impl From<&str> for $ty {
            fn from(value: &str) -> Self {
                $ty(value.to_owned())
            }
        }
        impl From<$ty> for String {
            fn from(value: $ty) -> String {
                value.0
            }
        }
        impl PartialEq<str> for $ty {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }
        impl PartialEq<&str> for $ty {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
        impl PartialEq<String> for $ty {
            fn eq(&self, other: &String) -> bool {
                &self.0 == other
            }
        }
        impl PartialEq<$ty> for String {
            fn eq(&self, other: &$ty) -> bool {
                self == &other.0
            }
        }
        impl PartialEq<$ty> for &str {
            fn eq(&self, other: &$ty) -> bool {
                *self == other.0
            }
        }
    };
}

string_newtype!(
    /// The other party of a message or a conversation, as stored: an E.164 number
    /// ("+15551234567", what [`crate::number::normalize`] gives for any phone number), or a
    /// short code or alphanumeric sender kept verbatim ("12345", "ACME"). Only an E.164
    /// peer can be reached over the relay ([`Peer::is_e164`]).
    Peer
);

string_newtype!(
    /// A message's id: a UUID for messages made here, the relay's id (the sender's UUID)
    /// for IP messages, and a store-made id for incoming SMS. Opaque everywhere but where
    /// it is made; the relay's rule for ids is [`crate::relay::protocol::is_message_id`].
    MessageId
);

impl Peer {
    /// Whether this peer is an E.164 number, the only kind the relay knows.
    pub fn is_e164(&self) -> bool {
        crate::number::is_e164(&self.0)
    }
}

/// One stored message, as frontends see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Opaque, stable id (a UUID for our own messages).
    pub id: MessageId,
    /// The other party: E.164, or a short code / alphanumeric sender kept verbatim.
    pub peer: Peer,
    pub direction: Direction,
    pub text: String,
    /// `None` while an outgoing message has not been handed to a channel yet.
    pub channel: Option<Channel>,
    pub status: Status,
    /// Milliseconds since the Unix epoch, UTC. Outgoing: when `SendMessage` accepted it;
    /// incoming: the sender's or SMS centre's time.
    pub timestamp_ms: i64,
    /// Incoming: read by the user. Outgoing: always true.
    pub read: bool,
    /// Why a failed message failed.
    pub error: Option<String>,
}

/// One conversation in the list, newest activity first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    pub peer: Peer,
    pub last_id: MessageId,
    pub last_text: String,
    pub last_timestamp_ms: i64,
    pub last_direction: Direction,
    pub unread: u32,
}

/// Error for a string that names no known value of one of the enums above.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?}")]
pub struct UnknownValue {
    pub kind: &'static str,
    pub value: String,
}

/// Gives each enum its fixed contract spelling (`as_str`, `Display`, `FromStr`).
macro_rules! spelled {
    ($ty:ident, $kind:literal, { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            /// The spelling fixed by the D-Bus contract.
            pub const fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $text),+ }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl FromStr for $ty {
            type Err = UnknownValue;
            fn from_str(s: &str) -> Result<Self, UnknownValue> {
                match s {
                    $($text => Ok($ty::$variant),)+
                    _ => Err(UnknownValue { kind: $kind, value: s.to_owned() }),
                }
            }
        }
    };
}

spelled!(Direction, "direction", { Incoming => "incoming", Outgoing => "outgoing" });
spelled!(Channel, "channel", { Sms => "sms", Ip => "ip" });
spelled!(ChannelRequest, "channel", { Auto => "auto", Sms => "sms", Ip => "ip" });
spelled!(Status, "status", {
    Queued => "queued", Sending => "sending", Sent => "sent",
    Delivered => "delivered", Failed => "failed", Received => "received",
});
spelled!(ModemState, "modem state", {
    Absent => "absent", Locked => "locked", Disabled => "disabled",
    Searching => "searching", Registered => "registered", Failed => "failed",
});
spelled!(RelayState, "relay state", {
    Disabled => "disabled", Offline => "offline", Connecting => "connecting", Online => "online",
});
spelled!(Presence, "presence", { Offline => "offline", Online => "online", Typing => "typing" });

impl Status {
    /// No further change will happen to a message in this state.
    pub const fn is_final(self) -> bool {
        matches!(self, Status::Delivered | Status::Failed | Status::Received)
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newtypes_read_as_their_strings() {
        let peer = Peer::from("+15551234567");
        assert!(peer.is_e164());
        assert!(!Peer::new("ACME").is_e164());
        assert_eq!(peer, "+15551234567");
        assert_eq!(peer.to_string(), "+15551234567");
        let mut peers = std::collections::HashSet::new();
        peers.insert(peer.clone());
        assert!(peers.contains("+15551234567"));
        assert_eq!(String::from(MessageId::new("a-1")), "a-1");
    }

    #[test]
    fn spellings_round_trip() {
        for s in [
            "queued",
            "sending",
            "sent",
            "delivered",
            "failed",
            "received",
        ] {
            assert_eq!(s.parse::<Status>().unwrap().as_str(), s);
        }
        for s in [
            "absent",
            "locked",
            "disabled",
            "searching",
            "registered",
            "failed",
        ] {
            assert_eq!(s.parse::<ModemState>().unwrap().to_string(), s);
        }
        assert_eq!("typing".parse::<Presence>(), Ok(Presence::Typing));
        assert_eq!("auto".parse::<ChannelRequest>(), Ok(ChannelRequest::Auto));
        let err = "carrier-pigeon".parse::<Channel>().unwrap_err();
        assert_eq!(err.to_string(), "unknown channel \"carrier-pigeon\"");
    }
}
