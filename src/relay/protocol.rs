//! The relay's wire protocol, version 1: every frame as a serde type, shared by the
//! server (`relay::server`) and the daemon's relay client.
//!
//! Owns: the JSON shape of each frame (a WebSocket text message holding one object with
//! a `"type"` field), the error codes, the protocol version and the format rules for
//! phone numbers and message ids. `docs/relay-protocol.md` is the normative description;
//! this module and that document must change together.
//!
//! Must not: know anything of the server's internals (database, tasks, limits in force)
//! or of the daemon's domain types. Converting to domain types happens in the client.
//!
//! Decoding is strict where the relay reads (an unknown client frame type or a missing
//! field is `malformed`), and lenient where clients read: unknown fields are ignored
//! everywhere, and a client decodes frame types and error codes it does not know as
//! [`ServerFrame::Unknown`] and [`ErrorCode::Unknown`], so a relay may add informational
//! frames or codes within version 1.

use serde::{Deserialize, Serialize};

/// The protocol version this module speaks, sent in `hello` and `welcome`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Longest message id, in bytes.
pub const MAX_ID_BYTES: usize = 64;

/// The text of the SMS that carries a registration code, with `{code}` replaced by the
/// code's six digits. The relay hands it to the SMS command as `TANDEM_TEXT`; a
/// daemon recognises the code SMS by it.
pub const CODE_SMS_TEMPLATE: &str = "Tandem code: {code}";

/// Number of digits of a registration code.
pub const CODE_DIGITS: usize = 6;

/// A frame sent by a client to the relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ClientFrame {
    /// First frame of every connection: the protocol version the client speaks.
    Hello {
        v: u32,
        /// Free-form client name and version, for the relay's log only.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
    },
    /// Asks for a device token for `number`: the relay sends a code by SMS (answer
    /// `code-sent`), or with `--verify none` issues the token at once (`registered`).
    Register { number: String },
    /// Proves a code received by SMS; answered by `registered`.
    Verify { number: String, code: String },
    /// Logs in as `number`; answered by `logged-in`, or a fatal `auth-failed`.
    Login { number: String, token: String },
    /// Sends `text` to `to`. `id` is chosen by the client and unique per sender: a resend
    /// with the same id is never a second message. Answered by `ack` or `error`.
    Send {
        id: String,
        to: String,
        text: String,
        /// When the user sent it, ms since the Unix epoch, by the sender's clock.
        ts: i64,
    },
    /// The recipient has stored the delivered message `(from, id)`. Answered by `confirm`.
    Ack { from: String, id: String },
    /// Withdraws an accepted message that is not yet delivered. Answered by
    /// `revoke-result`.
    Revoke { id: String },
    /// Replaces the set of numbers whose presence this connection follows (an empty
    /// list unsubscribes from all). Answered by `snapshot`, then `presence` pushes.
    Subscribe { numbers: Vec<String> },
    /// The user is typing to `to` (`active` true, renewed every few seconds), or stopped.
    Typing {
        to: String,
        #[serde(default = "yes")]
        active: bool,
    },
    /// Application-level keepalive; answered by `pong` with the same `n`.
    Ping {
        #[serde(default)]
        n: u64,
    },
}

fn yes() -> bool {
    true
}

impl ClientFrame {
    /// The frame's `type` string, as error frames name it in `re`.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientFrame::Hello { .. } => "hello",
            ClientFrame::Register { .. } => "register",
            ClientFrame::Verify { .. } => "verify",
            ClientFrame::Login { .. } => "login",
            ClientFrame::Send { .. } => "send",
            ClientFrame::Ack { .. } => "ack",
            ClientFrame::Revoke { .. } => "revoke",
            ClientFrame::Subscribe { .. } => "subscribe",
            ClientFrame::Typing { .. } => "typing",
            ClientFrame::Ping { .. } => "ping",
        }
    }
}

/// A frame sent by the relay to a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum ServerFrame {
    /// Answer to a supported `hello`: the version, how registration works and the limits
    /// and timings in force on this relay.
    Welcome {
        v: u32,
        /// Free-form relay name and version.
        server: String,
        verify: VerifyMode,
        limits: Limits,
    },
    /// A code was sent by SMS to `number`; prove it with `verify` within `expires_in_ms`.
    CodeSent { number: String, expires_in_ms: u64 },
    /// `number` now belongs to this device: keep `token` secret (it is shown only once)
    /// and log in with it. Any token issued before for this number no longer works.
    Registered { number: String, token: String },
    /// The connection is logged in as `number`. `queued` messages stored for it follow as
    /// `deliver` frames.
    LoggedIn { number: String, queued: u32 },
    /// Answer to `send`: the message is accepted (or was already, `duplicate`).
    Ack {
        id: String,
        to: String,
        state: SendState,
        duplicate: bool,
    },
    /// A message for this client. Store it, then answer `ack`; show it only after the
    /// relay's `confirm` says `delivered`.
    Deliver {
        from: String,
        id: String,
        text: String,
        /// The sender's `ts`.
        ts: i64,
        /// When the relay accepted it, ms since the Unix epoch, by the relay's clock.
        relay_ts: i64,
    },
    /// Answer to the recipient's `ack`: what to do with the stored message.
    Confirm {
        from: String,
        id: String,
        outcome: ConfirmOutcome,
    },
    /// The fate of a message this client sent, once settled.
    Receipt {
        id: String,
        to: String,
        outcome: ReceiptOutcome,
        /// When it was settled, ms since the Unix epoch, by the relay's clock.
        at: i64,
    },
    /// Answer to `revoke`.
    RevokeResult { id: String, outcome: RevokeOutcome },
    /// Answer to `subscribe`: the state of every subscribed number, in request order.
    Snapshot { entries: Vec<PresenceEntry> },
    /// A change of one subscribed number's state.
    Presence(PresenceEntry),
    /// Answer to `ping`.
    Pong { n: u64 },
    /// A request failed (`fatal` false) or the relay closes the connection (`fatal` true).
    Error(ErrorFrame),
    /// A frame type this version of the client does not know; ignore it.
    #[serde(other, skip_serializing)]
    Unknown,
}

/// How this relay checks that a number belongs to the one who registers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerifyMode {
    /// A one-time code sent by SMS must be proved.
    SmsCommand,
    /// Development mode: tokens are issued without proof, but a number that holds a
    /// token can never move to another device.
    None,
}

/// The limits and timings in force, announced in `welcome`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest WebSocket message the relay reads, in bytes.
    pub max_frame_bytes: u64,
    /// Largest `send.text`, in bytes of UTF-8.
    pub max_text_bytes: u64,
    /// Most numbers one `subscribe` may hold.
    pub max_subscriptions: u64,
    /// Most undelivered messages the relay keeps for one recipient.
    pub queue_per_recipient: u64,
    /// How long an undelivered message waits for its recipient before it expires.
    pub max_age_ms: u64,
    /// The relay sends a WebSocket ping after this much silence from it.
    pub ping_interval_ms: u64,
    /// A connection silent this long (no frame at all, pongs included) is dead.
    pub idle_timeout_ms: u64,
    /// A `typing` not renewed within this time ends by itself.
    pub typing_ttl_ms: u64,
    /// A connection not logged in within this time after it opened is closed.
    pub auth_timeout_ms: u64,
}

/// `ack.state`: where an accepted message is now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SendState {
    /// The recipient is logged in: the message is pushed to it (after the ones before
    /// it); a `receipt` follows when it acks.
    Online,
    /// The recipient is registered but offline: stored until it logs in.
    Queued,
    /// (Duplicates only.) The recipient has it.
    Delivered,
    /// (Duplicates only.) Revoked by the sender: it will never be delivered.
    Revoked,
    /// (Duplicates only.) Expired before the recipient came: never delivered.
    Expired,
}

/// `confirm.outcome`, for the recipient of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConfirmOutcome {
    /// The message is delivered: show it.
    Delivered,
    /// The sender revoked it (or it expired) before this ack: drop it silently, it
    /// reaches this client another way.
    Revoked,
    /// The relay has no such message for this client: drop it.
    Unknown,
}

/// `receipt.outcome`, for the sender of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReceiptOutcome {
    /// The recipient acked it: it is delivered, and can no longer be revoked.
    Delivered,
    /// It waited `max_age_ms` without its recipient logging in and was dropped.
    Expired,
}

/// `revoke-result.outcome`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RevokeOutcome {
    /// It will never be delivered by the relay (revoked now or before, or expired).
    Revoked,
    /// The recipient already acked it.
    AlreadyDelivered,
}

/// One number's state, in `snapshot` and `presence`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceEntry {
    pub number: String,
    /// Whether the number holds a device token on this relay. An unregistered number is
    /// always `offline`, and a `send` to it is refused with `recipient-unregistered`.
    pub registered: bool,
    pub state: PresenceState,
}

/// A number's state on the relay, as seen by one subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PresenceState {
    Offline,
    Online,
    /// Online and typing to this subscriber.
    Typing,
}

/// The body of an `error` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    pub code: ErrorCode,
    /// Human-readable detail, for logs; never parse it.
    pub message: String,
    /// The `type` of the client frame this answers, when it answers one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub re: Option<String>,
    /// The message id of the `send`, `revoke` or `ack` this answers (the relay omits an
    /// id longer than 64 bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// True when the relay closes the connection right after this frame.
    pub fatal: bool,
    /// For `rate-limited`: in how many ms a retry may succeed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// For `code-invalid`: how many more tries this code allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts_left: Option<u32>,
}

impl ErrorFrame {
    /// An error with only a code and a message; `fatal` follows [`ErrorCode::is_fatal`].
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ErrorFrame {
        ErrorFrame {
            code,
            message: message.into(),
            re: None,
            id: None,
            fatal: code.is_fatal(),
            retry_after_ms: None,
            attempts_left: None,
        }
    }

    /// Names the client frame (its `type`) this error answers.
    pub fn re(mut self, kind: &str) -> ErrorFrame {
        self.re = Some(kind.to_owned());
        self
    }

    /// Names the message id this error answers.
    pub fn id(mut self, id: &str) -> ErrorFrame {
        self.id = Some(id.to_owned());
        self
    }
}

/// Every error code, in `error.code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    // Fatal: the relay closes the connection after the frame.
    /// Not JSON, not an object, an unknown `type`, a missing or mistyped field, or a
    /// binary WebSocket message.
    Malformed,
    /// A WebSocket message larger than `limits.max_frame_bytes`.
    FrameTooLarge,
    /// The first frame was not `hello`.
    HelloRequired,
    /// `hello.v` is a version this relay does not speak.
    UnsupportedVersion,
    /// A frame that the connection's state does not allow (e.g. `send` before `login`).
    BadState,
    /// `login` with an unknown number or a wrong token.
    AuthFailed,
    /// Not logged in within `limits.auth_timeout_ms`.
    AuthTimeout,
    /// Another connection logged in as the same number, or the number moved to another
    /// device.
    Replaced,
    /// Nothing received from the client for `limits.idle_timeout_ms`.
    IdleTimeout,
    /// The client did not read its frames fast enough.
    Overloaded,
    /// The relay is stopping.
    ShuttingDown,
    // Not fatal: the request failed, the connection stays.
    /// A number that is not E.164 (`+` and 2 to 15 digits, no leading zero).
    InvalidNumber,
    /// A message id (of a `send` or an `ack`) that is empty, longer than 64 bytes or not
    /// `[A-Za-z0-9._:-]`.
    InvalidId,
    /// The relay could not send the code SMS.
    SmsFailed,
    /// A limit of the relay says "not now": for `register`, a limit on codes (per
    /// number, per address, in total, SMS commands busy); for `send`, the sender's
    /// quota. Nothing was done; send the same request again after `retry_after_ms` (for
    /// a `send`, this is no reason to fall back to SMS).
    RateLimited,
    /// No code is pending for this number (never asked, already used, or `--verify
    /// none`).
    NoCode,
    /// The code expired; ask for a new one.
    CodeExpired,
    /// Wrong code; see `attempts_left`.
    CodeInvalid,
    /// This code has had too many wrong tries; ask for a new one.
    TooManyAttempts,
    /// (`--verify none`) The number already holds a token on another device.
    NumberTaken,
    /// `send` to a number that is not registered on this relay.
    RecipientUnregistered,
    /// `send.text` larger than `limits.max_text_bytes`.
    TextTooLarge,
    /// The recipient already has `limits.queue_per_recipient` undelivered messages.
    QueueFull,
    /// `send` reuses an id this sender already used for another recipient.
    IdConflict,
    /// `revoke` of an id this sender never sent (or sent so long ago it is forgotten).
    UnknownMessage,
    /// `subscribe` with more than `limits.max_subscriptions` numbers.
    TooManySubscriptions,
    /// The relay failed (e.g. its database); the request did not take effect.
    Internal,
    /// A code this version of the client does not know.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// Whether the relay closes the connection after sending this code.
    pub fn is_fatal(self) -> bool {
        matches!(
            self,
            ErrorCode::Malformed
                | ErrorCode::FrameTooLarge
                | ErrorCode::HelloRequired
                | ErrorCode::UnsupportedVersion
                | ErrorCode::BadState
                | ErrorCode::AuthFailed
                | ErrorCode::AuthTimeout
                | ErrorCode::Replaced
                | ErrorCode::IdleTimeout
                | ErrorCode::Overloaded
                | ErrorCode::ShuttingDown
        )
    }

    /// The code's spelling on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::FrameTooLarge => "frame-too-large",
            ErrorCode::HelloRequired => "hello-required",
            ErrorCode::UnsupportedVersion => "unsupported-version",
            ErrorCode::BadState => "bad-state",
            ErrorCode::AuthFailed => "auth-failed",
            ErrorCode::AuthTimeout => "auth-timeout",
            ErrorCode::Replaced => "replaced",
            ErrorCode::IdleTimeout => "idle-timeout",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::ShuttingDown => "shutting-down",
            ErrorCode::InvalidNumber => "invalid-number",
            ErrorCode::InvalidId => "invalid-id",
            ErrorCode::SmsFailed => "sms-failed",
            ErrorCode::RateLimited => "rate-limited",
            ErrorCode::NoCode => "no-code",
            ErrorCode::CodeExpired => "code-expired",
            ErrorCode::CodeInvalid => "code-invalid",
            ErrorCode::TooManyAttempts => "too-many-attempts",
            ErrorCode::NumberTaken => "number-taken",
            ErrorCode::RecipientUnregistered => "recipient-unregistered",
            ErrorCode::TextTooLarge => "text-too-large",
            ErrorCode::QueueFull => "queue-full",
            ErrorCode::IdConflict => "id-conflict",
            ErrorCode::UnknownMessage => "unknown-message",
            ErrorCode::TooManySubscriptions => "too-many-subscriptions",
            ErrorCode::Internal => "internal",
            ErrorCode::Unknown => "unknown",
        }
    }

    /// The WebSocket close code the relay uses after this (fatal) error.
    pub fn close_code(self) -> u16 {
        match self {
            ErrorCode::FrameTooLarge => 1009,
            ErrorCode::AuthFailed | ErrorCode::AuthTimeout | ErrorCode::Replaced => 1008,
            ErrorCode::IdleTimeout | ErrorCode::ShuttingDown => 1001,
            ErrorCode::Overloaded => 1013,
            _ => 1002,
        }
    }
}

/// Why a text message is not a client frame.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DecodeError(#[from] serde_json::Error);

impl DecodeError {
    /// The frame is JSON, but not an object.
    fn not_an_object() -> DecodeError {
        DecodeError(serde::de::Error::custom("a frame must be a JSON object"))
    }
}

/// Whether `text` can only be a JSON object: its first non-blank character is `{`.
/// serde's tagged enums also take an array (`["ping"]` would be a `ping`), which the
/// protocol does not allow; the rest of the text is checked by the decoder, which takes
/// exactly one value.
fn is_object(text: &str) -> bool {
    text.trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('{')
}

/// Reads one client frame from the text of a WebSocket message.
pub fn decode_client(text: &str) -> Result<ClientFrame, DecodeError> {
    if !is_object(text) {
        return Err(DecodeError::not_an_object());
    }
    Ok(serde_json::from_str(text)?)
}

/// Reads one server frame from the text of a WebSocket message.
pub fn decode_server(text: &str) -> Result<ServerFrame, DecodeError> {
    if !is_object(text) {
        return Err(DecodeError::not_an_object());
    }
    Ok(serde_json::from_str(text)?)
}

/// Writes a frame as the text of one WebSocket message.
pub fn encode<T: Serialize>(frame: &T) -> String {
    // Serialising these types cannot fail: no maps with non-string keys, no custom
    // Serialize impls; `ServerFrame::Unknown` is never built to be sent.
    serde_json::to_string(frame).unwrap_or_else(|err| {
        tracing::error!(cause = %err, "cannot encode a frame");
        String::from(r#"{"type":"error","code":"internal","message":"encoding","fatal":false}"#)
    })
}

/// The E.164 rule the relay applies to every number (one rule, in [`crate::number`]).
pub use crate::number::is_e164;

/// Whether `id` is a valid message id: 1 to 64 bytes of `[A-Za-z0-9._:-]` (a UUID fits).
pub fn is_message_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_BYTES
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

/// The text of the code SMS for `code`.
pub fn code_sms_text(code: &str) -> String {
    CODE_SMS_TEMPLATE.replace("{code}", code)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `json` as a client frame, expects `expected`, and checks that encoding
    /// it again decodes to the same frame.
    #[track_caller]
    fn check_client(json: &str, expected: ClientFrame) {
        let frame = decode_client(json).unwrap_or_else(|err| panic!("{json}: {err}"));
        assert_eq!(frame, expected, "{json}");
        let again = decode_client(&encode(&frame)).expect("re-decode");
        assert_eq!(again, expected);
    }

    #[track_caller]
    fn check_server(expected_json: &str, frame: ServerFrame) {
        let encoded: serde_json::Value = serde_json::from_str(&encode(&frame)).expect("json");
        let expected: serde_json::Value = serde_json::from_str(expected_json).expect("json");
        assert_eq!(encoded, expected);
        assert_eq!(decode_server(expected_json).expect("decode"), frame);
    }

    #[test]
    fn client_frames_decode() {
        let s = String::from;
        check_client(
            r#"{"type":"hello","v":1}"#,
            ClientFrame::Hello { v: 1, client: None },
        );
        check_client(
            r#"{"type":"hello","v":1,"client":"tandemd/0.1","extra":true}"#,
            ClientFrame::Hello {
                v: 1,
                client: Some(s("tandemd/0.1")),
            },
        );
        check_client(
            r#"{"type":"register","number":"+15550001111"}"#,
            ClientFrame::Register {
                number: s("+15550001111"),
            },
        );
        check_client(
            r#"{"type":"verify","number":"+15550001111","code":"012345"}"#,
            ClientFrame::Verify {
                number: s("+15550001111"),
                code: s("012345"),
            },
        );
        check_client(
            r#"{"type":"login","number":"+1555","token":"ab"}"#,
            ClientFrame::Login {
                number: s("+1555"),
                token: s("ab"),
            },
        );
        check_client(
            r#"{"type":"send","id":"m1","to":"+1555","text":"hé \"x\"\n","ts":-5}"#,
            ClientFrame::Send {
                id: s("m1"),
                to: s("+1555"),
                text: s("hé \"x\"\n"),
                ts: -5,
            },
        );
        check_client(
            r#"{"type":"ack","from":"+1555","id":"m1"}"#,
            ClientFrame::Ack {
                from: s("+1555"),
                id: s("m1"),
            },
        );
        check_client(
            r#"{"type":"revoke","id":"m1"}"#,
            ClientFrame::Revoke { id: s("m1") },
        );
        check_client(
            r#"{"type":"subscribe","numbers":[]}"#,
            ClientFrame::Subscribe { numbers: vec![] },
        );
        check_client(
            r#"{"type":"typing","to":"+1555"}"#,
            ClientFrame::Typing {
                to: s("+1555"),
                active: true,
            },
        );
        check_client(
            r#"{"type":"typing","to":"+1555","active":false}"#,
            ClientFrame::Typing {
                to: s("+1555"),
                active: false,
            },
        );
        check_client(r#"{"type":"ping"}"#, ClientFrame::Ping { n: 0 });
        check_client(r#"{"type":"ping","n":7}"#, ClientFrame::Ping { n: 7 });
    }

    #[test]
    fn malformed_client_frames_are_refused() {
        for json in [
            "",
            "null",
            "[]",
            "\"hello\"",
            "{}",
            r#"{"v":1}"#,
            r#"{"type":"hello"}"#,
            r#"{"type":"hello","v":"1"}"#,
            r#"{"type":"hello","v":-1}"#,
            r#"{"type":"HELLO","v":1}"#,
            r#"{"type":"nonsense"}"#,
            r#"{"type":"send","id":"m","to":"+1","text":"x"}"#,
            r#"{"type":"send","id":"m","to":"+1","text":5,"ts":0}"#,
            r#"{"type":"subscribe","numbers":"+1555"}"#,
            r#"{"type":"ping","n":1.5}"#,
            r#"{"type":"hello","v":1} trailing"#,
            // serde's tagged enums take a sequence too; a frame is an object only.
            r#"["ping"]"#,
            r#"["ping",7]"#,
            r#" ["hello",1,"x"]"#,
            r#"["send","m","+15550001111","hi",0]"#,
            r#"["subscribe",[]]"#,
        ] {
            assert!(decode_client(json).is_err(), "accepted {json:?}");
        }
        // Blanks before the object are still JSON.
        assert_eq!(
            decode_client(" \r\n\t{\"type\":\"ping\"}").expect("decode"),
            ClientFrame::Ping { n: 0 }
        );
        for json in [
            r#"["pong",7]"#,
            r#"["error",["internal","m",null,null,true]]"#,
        ] {
            assert!(decode_server(json).is_err(), "accepted {json:?}");
        }
    }

    #[test]
    fn server_frames_encode() {
        let s = String::from;
        check_server(
            r#"{"type":"welcome","v":1,"server":"tandem-relay/0.1","verify":"sms-command",
                "limits":{"max_frame_bytes":1,"max_text_bytes":2,"max_subscriptions":3,
                "queue_per_recipient":4,"max_age_ms":5,"ping_interval_ms":6,
                "idle_timeout_ms":7,"typing_ttl_ms":8,"auth_timeout_ms":9}}"#,
            ServerFrame::Welcome {
                v: 1,
                server: s("tandem-relay/0.1"),
                verify: VerifyMode::SmsCommand,
                limits: Limits {
                    max_frame_bytes: 1,
                    max_text_bytes: 2,
                    max_subscriptions: 3,
                    queue_per_recipient: 4,
                    max_age_ms: 5,
                    ping_interval_ms: 6,
                    idle_timeout_ms: 7,
                    typing_ttl_ms: 8,
                    auth_timeout_ms: 9,
                },
            },
        );
        check_server(
            r#"{"type":"code-sent","number":"+1555","expires_in_ms":600000}"#,
            ServerFrame::CodeSent {
                number: s("+1555"),
                expires_in_ms: 600_000,
            },
        );
        check_server(
            r#"{"type":"registered","number":"+1555","token":"t"}"#,
            ServerFrame::Registered {
                number: s("+1555"),
                token: s("t"),
            },
        );
        check_server(
            r#"{"type":"logged-in","number":"+1555","queued":2}"#,
            ServerFrame::LoggedIn {
                number: s("+1555"),
                queued: 2,
            },
        );
        check_server(
            r#"{"type":"ack","id":"m","to":"+1555","state":"queued","duplicate":false}"#,
            ServerFrame::Ack {
                id: s("m"),
                to: s("+1555"),
                state: SendState::Queued,
                duplicate: false,
            },
        );
        check_server(
            r#"{"type":"deliver","from":"+1555","id":"m","text":"hi","ts":1,"relay_ts":2}"#,
            ServerFrame::Deliver {
                from: s("+1555"),
                id: s("m"),
                text: s("hi"),
                ts: 1,
                relay_ts: 2,
            },
        );
        check_server(
            r#"{"type":"confirm","from":"+1555","id":"m","outcome":"revoked"}"#,
            ServerFrame::Confirm {
                from: s("+1555"),
                id: s("m"),
                outcome: ConfirmOutcome::Revoked,
            },
        );
        check_server(
            r#"{"type":"receipt","id":"m","to":"+1555","outcome":"expired","at":3}"#,
            ServerFrame::Receipt {
                id: s("m"),
                to: s("+1555"),
                outcome: ReceiptOutcome::Expired,
                at: 3,
            },
        );
        check_server(
            r#"{"type":"revoke-result","id":"m","outcome":"already-delivered"}"#,
            ServerFrame::RevokeResult {
                id: s("m"),
                outcome: RevokeOutcome::AlreadyDelivered,
            },
        );
        check_server(
            r#"{"type":"snapshot","entries":[
                {"number":"+1555","registered":true,"state":"typing"},
                {"number":"+1666","registered":false,"state":"offline"}]}"#,
            ServerFrame::Snapshot {
                entries: vec![
                    PresenceEntry {
                        number: s("+1555"),
                        registered: true,
                        state: PresenceState::Typing,
                    },
                    PresenceEntry {
                        number: s("+1666"),
                        registered: false,
                        state: PresenceState::Offline,
                    },
                ],
            },
        );
        check_server(
            r#"{"type":"presence","number":"+1555","registered":true,"state":"online"}"#,
            ServerFrame::Presence(PresenceEntry {
                number: s("+1555"),
                registered: true,
                state: PresenceState::Online,
            }),
        );
        check_server(r#"{"type":"pong","n":7}"#, ServerFrame::Pong { n: 7 });
        check_server(
            r#"{"type":"error","code":"code-invalid","message":"wrong code","re":"verify",
                "fatal":false,"attempts_left":2}"#,
            ServerFrame::Error(ErrorFrame {
                attempts_left: Some(2),
                ..ErrorFrame::new(ErrorCode::CodeInvalid, "wrong code").re("verify")
            }),
        );
        check_server(
            r#"{"type":"error","code":"queue-full","message":"m","re":"send","id":"x",
                "fatal":false}"#,
            ServerFrame::Error(
                ErrorFrame::new(ErrorCode::QueueFull, "m")
                    .re("send")
                    .id("x"),
            ),
        );
    }

    #[test]
    fn clients_tolerate_what_they_do_not_know() {
        assert_eq!(
            decode_server(r#"{"type":"news","anything":[1,2]}"#).expect("decode"),
            ServerFrame::Unknown
        );
        let frame =
            decode_server(r#"{"type":"error","code":"brand-new","message":"","fatal":true}"#)
                .expect("decode");
        let ServerFrame::Error(error) = frame else {
            panic!("not an error: {frame:?}");
        };
        assert_eq!(error.code, ErrorCode::Unknown);
        assert!(error.fatal);
    }

    #[test]
    fn error_codes_spell_as_documented() {
        use ErrorCode::*;
        for code in [
            Malformed,
            FrameTooLarge,
            HelloRequired,
            UnsupportedVersion,
            BadState,
            AuthFailed,
            AuthTimeout,
            Replaced,
            IdleTimeout,
            Overloaded,
            ShuttingDown,
            InvalidNumber,
            InvalidId,
            SmsFailed,
            RateLimited,
            NoCode,
            CodeExpired,
            CodeInvalid,
            TooManyAttempts,
            NumberTaken,
            RecipientUnregistered,
            TextTooLarge,
            QueueFull,
            IdConflict,
            UnknownMessage,
            TooManySubscriptions,
            Internal,
        ] {
            let json = serde_json::to_string(&code).expect("encode");
            assert_eq!(json, format!("\"{}\"", code.as_str()));
            let doc = include_str!("../../docs/relay-protocol.md");
            assert!(
                doc.contains(&format!("`{}`", code.as_str())),
                "{} is not documented",
                code.as_str()
            );
        }
    }

    #[test]
    fn numbers_and_ids() {
        for (number, ok) in [
            ("+15550001111", true),
            ("+49", true),
            ("+123456789012345", true),
            ("+1234567890123456", false),
            ("+4", false),
            ("+0123", false),
            ("15550001111", false),
            ("+1555 0001111", false),
            ("+1555-0001111", false),
            ("", false),
            ("+", false),
            ("++15550001111", false),
            ("+１５５５", false),
        ] {
            assert_eq!(is_e164(number), ok, "{number:?}");
        }
        let long = "a".repeat(MAX_ID_BYTES);
        let too_long = "a".repeat(MAX_ID_BYTES + 1);
        for (id, ok) in [
            ("m1", true),
            ("6f1c2b1e-4e0e-4c39-9f3e-0a1b2c3d4e5f", true),
            ("a.b_c:d-e", true),
            (long.as_str(), true),
            (too_long.as_str(), false),
            ("", false),
            ("a b", false),
            ("a/b", false),
            ("é", false),
        ] {
            assert_eq!(is_message_id(id), ok, "{id:?}");
        }
        assert_eq!(code_sms_text("012345"), "Tandem code: 012345");
    }
}
