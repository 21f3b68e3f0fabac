//! The `org.tandem.Messages1` D-Bus interface on the session bus, served at
//! `/org/tandem/Messages1`: the public contract, whose normative text is
//! `dbus/org.tandem.Messages1.xml` (checked against this definition by `tests/api.rs`).
//!
//! A thin layer: it converts and validates arguments, reads from the store, hands work to
//! the engine over a channel, and converts results back. It owns no state of its own: the
//! properties come from the engine's [`DaemonStatus`] watch, the signals from the engine's
//! [`Event`] channel (see [`publish`]). Which modules speak D-Bus is listed in
//! ARCHITECTURE.md's invariants (checked by `tests/architecture.rs`); the engine and the
//! relay client do not.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};
use zbus::object_server::SignalEmitter;
use zbus::{DeserializeDict, OwnedVariant, SerializeDict, Type, interface};

use crate::contacts::{self, Contact, Contacts};
use crate::domain::{Channel, ChannelRequest, Conversation, Message, Presence, RelayState};
use crate::engine::{Announcement, DaemonStatus, EngineCmd, Event, PresenceView, routing_facts};
use crate::router::{self, Refusal};
use crate::store::{DELETE_BATCH, MAX_SEARCH_BYTES, NewOutgoing, StoreError, StoreHandle};
use crate::{number, sms_text};

/// The well-known name the daemon owns on the session bus.
pub const BUS_NAME: &str = "org.tandem.Messages1";
/// The one object it serves.
pub const OBJECT_PATH: &str = "/org/tandem/Messages1";
/// Largest `limit` a listing call accepts.
pub const MAX_LIMIT: u32 = 1000;
/// Longest conversation peer accepted (`GetMessages`, `MarkRead`, `DeleteConversation`),
/// in bytes: room for any number and for the sender names networks use (11 characters).
pub const MAX_PEER_BYTES: usize = 256;
/// Longest message id accepted, in bytes; ids are UUIDs (36 characters).
pub const MAX_ID_BYTES: usize = 64;
/// Most numbers one `Watch` call may add.
pub const MAX_WATCH_NUMBERS: usize = 256;
/// Most numbers followed in all (conversation peers and watched numbers that can be on
/// the relay): the relay's own default limit of subscriptions.
pub const MAX_FOLLOWED: usize = 1000;
/// Longest `client-token`, in bytes.
pub const MAX_CLIENT_TOKEN_BYTES: usize = 256;
/// Longest piece of a caller's input repeated in an error message, in characters.
const SHOWN_CHARS: usize = 64;

/// The contract's errors; each becomes `org.tandem.Messages1.Error.<Variant>`.
#[derive(Debug, zbus::DBusError)]
#[zbus(prefix = "org.tandem.Messages1.Error")]
pub enum ApiError {
    #[zbus(error)]
    ZBus(zbus::Error),
    /// Not a phone number (nor a short code or alphanumeric sender).
    InvalidNumber(String),
    /// Empty or oversized text, bad option, out-of-range argument.
    InvalidArgument(String),
    /// Unknown message id or conversation.
    NotFound(String),
    /// The asked-for channel or feature is not available.
    Unavailable(String),
    /// The daemon itself failed (its store); the message says how.
    Failed(String),
}

type Result<T> = std::result::Result<T, ApiError>;

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(id) => {
                ApiError::NotFound(format!("no message with id {}", shown(&id)))
            }
            StoreError::QueryTooLong { .. }
            | StoreError::TooManyTerms { .. }
            | StoreError::OverBudget { .. } => ApiError::InvalidArgument(e.to_string()),
            other => {
                warn!(cause = %other, "store failed");
                ApiError::Failed(format!("the message store failed: {other}"))
            }
        }
    }
}

/// A message as the contract's `a{sv}` (wire type; the domain type is [`Message`]).
#[derive(Debug, Clone, PartialEq, Eq, SerializeDict, DeserializeDict, Type)]
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
    /// The peer's name in the address book, when it knows the peer.
    pub name: Option<String>,
    /// The peer's photo (an image file's absolute path), when the address book has one.
    pub photo: Option<String>,
}

impl MessageDict {
    /// With the peer's name and photo, when the address book knows the peer.
    pub fn with_contact(mut self, contact: Option<Contact>) -> Self {
        (self.name, self.photo) = contact_keys(contact);
        self
    }
}

/// The `name` and `photo` keys of a peer's contact.
fn contact_keys(contact: Option<Contact>) -> (Option<String>, Option<String>) {
    match contact {
        Some(c) => (
            Some(c.name),
            c.photo.map(|p| p.to_string_lossy().into_owned()),
        ),
        None => (None, None),
    }
}

impl From<Message> for MessageDict {
    fn from(m: Message) -> Self {
        MessageDict {
            id: m.id.into_string(),
            peer: m.peer.into_string(),
            direction: m.direction.to_string(),
            text: m.text,
            channel: m.channel.map(Channel::as_str).unwrap_or("").to_owned(),
            status: m.status.to_string(),
            timestamp: m.timestamp_ms,
            read: m.read,
            error: m.error,
            name: None,
            photo: None,
        }
    }
}

/// A conversation as the contract's `a{sv}`.
#[derive(Debug, Clone, PartialEq, Eq, SerializeDict, DeserializeDict, Type)]
#[zbus(signature = "a{sv}", rename_all = "kebab-case")]
pub struct ConversationDict {
    pub peer: String,
    pub last_id: String,
    pub last_text: String,
    pub last_timestamp: i64,
    pub last_direction: String,
    pub unread: u32,
    pub presence: String,
    /// The peer's name in the address book, when it knows the peer.
    pub name: Option<String>,
    /// The peer's photo (an image file's absolute path), when the address book has one.
    pub photo: Option<String>,
}

impl ConversationDict {
    fn new(c: Conversation, presence: Presence) -> Self {
        ConversationDict {
            peer: c.peer.into_string(),
            last_id: c.last_id.into_string(),
            last_text: c.last_text,
            last_timestamp: c.last_timestamp_ms,
            last_direction: c.last_direction.to_string(),
            unread: c.unread,
            presence: presence.to_string(),
            name: None,
            photo: None,
        }
    }

    /// With the peer's name and photo, when the address book knows the peer.
    pub fn with_contact(mut self, contact: Option<Contact>) -> Self {
        (self.name, self.photo) = contact_keys(contact);
        self
    }
}

/// `EstimateSms`'s reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Type)]
pub struct SmsEstimate {
    pub segments: u32,
    pub encoding: String,
    pub remaining: u32,
}

/// The limits and defaults the API applies, from the configuration.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Region for numbers written without `+country`.
    pub default_region: Option<String>,
    /// `delivery-report` when the option is absent.
    pub delivery_reports: bool,
    /// Texts longer than this (in characters) are refused.
    pub max_text_chars: usize,
    /// `sms.max_parts`.
    pub max_parts: u32,
}

/// The one way into the outbox: what `SendMessage` does after parsing its options
/// (validation, the router's refusals, the durable insert, [`EngineCmd::Outbox`]). The API
/// and a notification's inline reply (`notifier`) both send through it, so that a message
/// is checked and stored the same way whoever wrote it. Cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    store: StoreHandle,
    engine: mpsc::Sender<EngineCmd>,
    status: watch::Receiver<DaemonStatus>,
    presence: watch::Receiver<PresenceView>,
    config: ApiConfig,
}

impl Outbox {
    /// A number to send to (or to follow over IP): E.164 or a short code; a sender name
    /// such as "Bank" is refused, since nothing can be sent to it.
    fn recipient(&self, input: &str) -> Result<String> {
        number::normalize_recipient(input, self.config.default_region.as_deref())
            .map_err(|e| ApiError::InvalidNumber(e.to_string()))
    }

    /// Refuses a text longer than the configured limit, without counting the characters
    /// of a text whose size in bytes already says so.
    fn check_text(&self, text: &str) -> Result<()> {
        let max = self.config.max_text_chars;
        // A character is at most 4 bytes of UTF-8.
        let chars = if text.len() > max.saturating_mul(4) {
            None
        } else {
            Some(text.chars().count())
        };
        match chars {
            Some(chars) if chars <= max => Ok(()),
            Some(chars) => Err(ApiError::InvalidArgument(format!(
                "the text is {chars} characters long, more than the limit of {max}"
            ))),
            None => Err(ApiError::InvalidArgument(format!(
                "the text is {} bytes long, more than the limit of {max} characters",
                text.len()
            ))),
        }
    }

    /// Whether a message can be sent to `peer` at all (a sender name such as "Bank"
    /// cannot be answered).
    pub fn can_send_to(&self, peer: &str) -> bool {
        self.recipient(peer).is_ok()
    }

    /// Validates, stores the message durably in the outbox (status `queued`), tells the
    /// engine, and returns its id (the id of the first message with the same
    /// `client-token`, which is not stored twice).
    pub async fn send(&self, recipient: &str, text: &str, options: SendOptions) -> Result<String> {
        let peer = self.recipient(recipient)?;
        if text.trim().is_empty() {
            return Err(ApiError::InvalidArgument("the text is empty".into()));
        }
        self.check_text(text)?;
        let status = self.status.borrow().clone();
        let facts = routing_facts(
            options.channel,
            &status,
            &self.presence.borrow(),
            &peer,
            text,
            self.config.max_parts,
        );
        match router::refuse_at_once(&facts) {
            Some(Refusal::Unavailable(why)) => return Err(ApiError::Unavailable(why)),
            Some(Refusal::InvalidArgument(why)) => return Err(ApiError::InvalidArgument(why)),
            None => {}
        }
        let delivery_report = options
            .delivery_report
            .unwrap_or(self.config.delivery_reports);
        let text = text.to_owned();
        let (message, created) = self
            .store
            .call(move |s| {
                s.insert_outgoing(&NewOutgoing {
                    peer: &peer,
                    text: &text,
                    requested: options.channel,
                    delivery_report,
                    client_token: options.client_token.as_deref(),
                    timestamp_ms: crate::domain::now_ms(),
                })
            })
            .await?;
        if created {
            debug!(id = %message.id, peer = %message.peer, "message queued");
            if self.engine.send(EngineCmd::Outbox).await.is_err() {
                warn!("the engine is gone; request not forwarded");
            }
        }
        Ok(message.id.into_string())
    }
}

/// The served object. Cheap to construct; everything it holds is a handle.
pub struct Messages {
    /// Reads and the outbox insert go straight to the store actor.
    store: StoreHandle,
    /// Tells the engine about new outbox entries and read/delete changes.
    engine: mpsc::Sender<EngineCmd>,
    /// The properties, as the engine publishes them.
    status: watch::Receiver<DaemonStatus>,
    /// Contacts' presence, as the engine publishes it.
    presence: watch::Receiver<PresenceView>,
    /// Other apps on the bus that take incoming SMS too (`sms_apps`).
    sms_apps: watch::Receiver<Vec<String>>,
    /// Peers' names and photos, from the address book.
    contacts: Contacts,
    config: ApiConfig,
    /// `SendMessage`'s way into the outbox, shared with the notifier's inline replies.
    outbox: Outbox,
}

impl Messages {
    pub fn new(
        store: StoreHandle,
        engine: mpsc::Sender<EngineCmd>,
        status: watch::Receiver<DaemonStatus>,
        presence: watch::Receiver<PresenceView>,
        sms_apps: watch::Receiver<Vec<String>>,
        config: ApiConfig,
    ) -> Self {
        let outbox = Outbox {
            store: store.clone(),
            engine: engine.clone(),
            status: status.clone(),
            presence: presence.clone(),
            config: config.clone(),
        };
        Messages {
            store,
            engine,
            status,
            presence,
            sms_apps,
            contacts: Contacts::none(),
            config,
            outbox,
        }
    }

    /// The way into the outbox that `SendMessage` uses, for other senders (the
    /// notifier's inline reply).
    pub fn outbox(&self) -> Outbox {
        self.outbox.clone()
    }

    /// The same, naming peers from `contacts` (the address book).
    pub fn with_contacts(mut self, contacts: Contacts) -> Self {
        self.contacts = contacts;
        self
    }

    /// A message as the contract's dictionary, with its peer's name when known.
    fn message_dict(&self, m: Message) -> MessageDict {
        let contact = self.contacts.lookup(m.peer.as_str());
        MessageDict::from(m).with_contact(contact)
    }

    fn normalize(&self, input: &str) -> Result<String> {
        number::normalize(input, self.config.default_region.as_deref())
            .map_err(|e| ApiError::InvalidNumber(e.to_string()))
    }

    fn recipient(&self, input: &str) -> Result<String> {
        self.outbox.recipient(input)
    }

    /// The conversation a frontend names: normalised like any number, or, for senders kept
    /// verbatim (names like "DHL-Express", numbers the network wrote oddly), exactly as
    /// listed by `ListConversations`.
    async fn conversation_peer(&self, input: &str) -> Result<String> {
        if input.len() > MAX_PEER_BYTES {
            return Err(ApiError::InvalidNumber(format!(
                "a peer of {} bytes is longer than the limit of {MAX_PEER_BYTES}",
                input.len()
            )));
        }
        match self.normalize(input) {
            Ok(peer) => Ok(peer),
            Err(invalid) => {
                let verbatim = input.to_owned();
                let known = self
                    .store
                    .call(move |s| s.has_conversation(&verbatim))
                    .await?;
                if known {
                    Ok(input.to_owned())
                } else {
                    Err(invalid)
                }
            }
        }
    }

    async fn tell_engine(&self, cmd: EngineCmd) {
        if self.engine.send(cmd).await.is_err() {
            warn!("the engine is gone; request not forwarded");
        }
    }

    /// A contact's presence since our current login to the relay (offline when unknown).
    fn presence_of(&self, peer: &str) -> Presence {
        self.presence
            .borrow()
            .get(peer)
            .map_or(Presence::Offline, |p| p.presence)
    }
}

/// Options of `SendMessage`, parsed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SendOptions {
    pub channel: ChannelRequest,
    pub delivery_report: Option<bool>,
    pub client_token: Option<String>,
}

/// Parses `SendMessage`'s options; unknown keys and wrong types are refused by name.
pub fn parse_send_options(options: &HashMap<String, OwnedVariant>) -> Result<SendOptions> {
    let mut parsed = SendOptions::default();
    for (key, value) in options {
        let wrong_type = |expected: &str| {
            ApiError::InvalidArgument(format!(
                "option {} must be of type {expected}, not {}",
                shown(key),
                value.value_signature()
            ))
        };
        match key.as_str() {
            "channel" => {
                let s: &str = value.try_into().map_err(|_| wrong_type("s"))?;
                parsed.channel = s.parse().map_err(|_| {
                    ApiError::InvalidArgument(format!(
                        "option \"channel\" must be \"auto\", \"sms\" or \"ip\", not {}",
                        shown(s)
                    ))
                })?;
            }
            "delivery-report" => {
                parsed.delivery_report = Some(value.try_into().map_err(|_| wrong_type("b"))?);
            }
            "client-token" => {
                let s: &str = value.try_into().map_err(|_| wrong_type("s"))?;
                if s.is_empty() || s.len() > MAX_CLIENT_TOKEN_BYTES {
                    return Err(ApiError::InvalidArgument(format!(
                        "option \"client-token\" must be 1 to {MAX_CLIENT_TOKEN_BYTES} bytes long"
                    )));
                }
                parsed.client_token = Some(s.to_owned());
            }
            other => {
                return Err(ApiError::InvalidArgument(format!(
                    "unknown option {} (known: channel, delivery-report, client-token)",
                    shown(other)
                )));
            }
        }
    }
    Ok(parsed)
}

/// A caller's string for an error message: quoted, and cut to [`SHOWN_CHARS`]
/// characters, so that an error never echoes a huge argument back.
fn shown(input: &str) -> String {
    match input.char_indices().nth(SHOWN_CHARS) {
        Some((cut, _)) => format!("{:?}… ({} bytes)", &input[..cut], input.len()),
        None => format!("{input:?}"),
    }
}

/// Refuses a message id that cannot be one by its length alone (ids are UUIDs).
fn check_id(what: &str, id: &str) -> Result<()> {
    if id.len() > MAX_ID_BYTES {
        return Err(ApiError::InvalidArgument(format!(
            "{what} is {} bytes long; message ids are UUIDs of 36 characters",
            id.len()
        )));
    }
    Ok(())
}

fn check_limit(limit: u32) -> Result<()> {
    if (1..=MAX_LIMIT).contains(&limit) {
        Ok(())
    } else {
        Err(ApiError::InvalidArgument(format!(
            "limit must be between 1 and {MAX_LIMIT}, not {limit}"
        )))
    }
}

#[interface(
    name = "org.tandem.Messages1",
    proxy(
        default_service = "org.tandem.Messages1",
        default_path = "/org/tandem/Messages1",
    )
)]
impl Messages {
    /// Validates, stores the message durably in the outbox (status `queued`), replies with
    /// its id and delivers it asynchronously.
    ///
    /// Bounds: `recipient` is a phone number or a short code of at most 64 bytes (a sender
    /// name such as "Bank" is InvalidNumber: nothing can be sent to one); `text` is not
    /// blank and has at most `sms.max_text_chars` characters (10,000 by default), and
    /// without IP at most `sms.max_parts` SMS parts; `client-token` has 1 to 256 bytes.
    async fn send_message(
        &self,
        recipient: &str,
        text: &str,
        options: HashMap<String, OwnedVariant>,
    ) -> Result<String> {
        let options = parse_send_options(&options)?;
        self.outbox.send(recipient, text, options).await
    }

    /// Conversations, newest activity first.
    ///
    /// Bounds: `limit` from 1 to 1000.
    async fn list_conversations(&self, offset: u32, limit: u32) -> Result<Vec<ConversationDict>> {
        check_limit(limit)?;
        let list = self
            .store
            .call(move |s| s.list_conversations(offset, limit))
            .await?;
        Ok(list
            .into_iter()
            .map(|c| {
                let presence = self.presence_of(&c.peer);
                let contact = self.contacts.lookup(&c.peer);
                ConversationDict::new(c, presence).with_contact(contact)
            })
            .collect())
    }

    /// The conversation with `peer`, newest first, strictly older than `before_id` if set.
    ///
    /// Bounds: `peer` at most 256 bytes, `before_id` "" or a message id (at most 64 bytes),
    /// `limit` from 1 to 1000.
    async fn get_messages(
        &self,
        peer: &str,
        before_id: &str,
        limit: u32,
    ) -> Result<Vec<MessageDict>> {
        check_limit(limit)?;
        check_id("before_id", before_id)?;
        let peer = self.conversation_peer(peer).await?;
        let before = (!before_id.is_empty()).then(|| before_id.to_owned());
        let list = self
            .store
            .call(move |s| s.get_messages(&peer, before.as_deref(), limit))
            .await?;
        Ok(list.into_iter().map(|m| self.message_dict(m)).collect())
    }

    /// Bounds: `id` at most 64 bytes (ids are UUIDs).
    async fn get_message(&self, id: &str) -> Result<MessageDict> {
        check_id("the id", id)?;
        let id = id.to_owned();
        let message = self.store.call(move |s| s.get_message(&id)).await?;
        Ok(self.message_dict(message))
    }

    /// Marks every incoming message of the conversation read.
    ///
    /// Bounds: `peer` at most 256 bytes.
    async fn mark_read(&self, peer: &str) -> Result<()> {
        let peer = self.conversation_peer(peer).await?;
        let key = peer.clone();
        let changed = self.store.call(move |s| s.mark_read(&key)).await?;
        if changed > 0 {
            self.tell_engine(EngineCmd::Read { peer }).await;
        }
        Ok(())
    }

    /// Bounds: `id` at most 64 bytes (ids are UUIDs).
    async fn delete_message(&self, id: &str) -> Result<()> {
        check_id("the id", id)?;
        let id = id.to_owned();
        let deleted = self.store.call(move |s| s.delete_message(&id)).await?;
        let unread = deleted.direction == crate::domain::Direction::Incoming && !deleted.read;
        self.tell_engine(EngineCmd::MessageDeleted {
            id: deleted.id.into_string(),
            peer: deleted.peer.into_string(),
            unread,
        })
        .await;
        Ok(())
    }

    /// Bounds: `peer` at most 256 bytes.
    async fn delete_conversation(&self, peer: &str) -> Result<()> {
        let peer = self.conversation_peer(peer).await?;
        // In parts, each its own store call, so that a long conversation never holds the
        // store (a send, an incoming SMS) for more than one part.
        let mut deleted = 0u32;
        loop {
            let key = peer.clone();
            let (part, done) = self
                .store
                .call(move |s| s.delete_conversation_part(&key, DELETE_BATCH))
                .await?;
            deleted = deleted.saturating_add(part);
            if done {
                break;
            }
        }
        if deleted == 0 {
            return Err(ApiError::NotFound(format!(
                "no conversation with {}",
                shown(&peer)
            )));
        }
        self.tell_engine(EngineCmd::ConversationDeleted { peer })
            .await;
        Ok(())
    }

    /// Full-text search over all bodies, newest first.
    ///
    /// Bounds: `query` is not blank, at most 1024 bytes and 16 different words (a word
    /// given twice counts once), `limit` from 1 to 1000; a search still running after
    /// 100 ms is stopped with InvalidArgument. Searches run beside the daemon's other work:
    /// a costly one never holds up a send or an incoming message.
    async fn search(&self, query: &str, limit: u32) -> Result<Vec<MessageDict>> {
        check_limit(limit)?;
        if query.len() > MAX_SEARCH_BYTES {
            return Err(StoreError::QueryTooLong {
                bytes: query.len(),
                max: MAX_SEARCH_BYTES,
            }
            .into());
        }
        if query.trim().is_empty() {
            return Err(ApiError::InvalidArgument(
                "the search query is empty".into(),
            ));
        }
        let query = query.to_owned();
        let found = self
            .store
            .call_read(move |s| s.search(&query, limit))
            .await?;
        Ok(found.into_iter().map(|m| self.message_dict(m)).collect())
    }

    /// Bounds: `number` at most 64 bytes.
    async fn get_presence(&self, number: &str) -> Result<String> {
        let number = self.normalize(number)?;
        Ok(self.presence_of(&number).to_string())
    }

    /// Adds numbers to the contacts whose presence is followed.
    ///
    /// Bounds: at most 256 numbers per call, each a phone number or short code (not a
    /// sender name) of at most 64 bytes, and at most 1000 numbers watched in all. The
    /// relay follows as many as it allows (1000 by default): the watched numbers first,
    /// then the conversation peers, most recent first.
    async fn watch(&self, numbers: Vec<String>) -> Result<()> {
        if numbers.len() > MAX_WATCH_NUMBERS {
            return Err(ApiError::InvalidArgument(format!(
                "{} numbers in one call, more than the limit of {MAX_WATCH_NUMBERS}",
                numbers.len()
            )));
        }
        let numbers = numbers
            .iter()
            .map(|n| self.recipient(n))
            .collect::<Result<Vec<String>>>()?;
        // Counted and added in one store call, so that two calls cannot both pass.
        let refused = self
            .store
            .call(move |s| {
                let mut watched: HashSet<String> = s.watched()?.into_iter().collect();
                watched.extend(numbers.iter().cloned());
                if watched.len() > MAX_FOLLOWED {
                    return Ok(Some(watched.len()));
                }
                s.watch(&numbers)?;
                Ok(None)
            })
            .await?;
        if let Some(total) = refused {
            return Err(ApiError::InvalidArgument(format!(
                "that would watch {total} numbers, more than the limit of {MAX_FOLLOWED}"
            )));
        }
        self.tell_engine(EngineCmd::Followed).await;
        Ok(())
    }

    /// Tells the peer, over IP, that we are typing.
    ///
    /// Bounds: `peer` a phone number or short code (not a sender name) of at most 64
    /// bytes.
    async fn set_typing(&self, peer: &str, typing: bool) -> Result<()> {
        let peer = self.recipient(peer)?;
        let relay = self.status.borrow().relay;
        if relay == RelayState::Disabled {
            return Err(ApiError::Unavailable(
                "typing notices go over IP, and no relay is configured".into(),
            ));
        }
        // Typing is ephemeral: while the relay is offline the client drops it.
        self.tell_engine(EngineCmd::Typing {
            peer,
            active: typing,
        })
        .await;
        Ok(())
    }

    /// How many SMS parts the text needs, the encoding, and characters left in the last part.
    ///
    /// Bounds: `text` has at most `sms.max_text_chars` characters, as for SendMessage.
    #[zbus(out_args("segments", "encoding", "remaining"))]
    async fn estimate_sms(&self, text: &str) -> Result<(u32, String, u32)> {
        self.outbox.check_text(text)?;
        let e = sms_text::estimate(text);
        Ok((e.segments, e.encoding.as_str().to_owned(), e.remaining))
    }

    /// How often the daemon met each case its reliability rules count
    /// (docs/reliability.md), by name, since the database was made: `sms-outcome-unknown`
    /// (an SMS failed because whether it went out could not be known, and was not sent
    /// again), `sms-orphan-removed` (an unsent SMS object left by a crash, removed from the
    /// modem). A name not listed has not happened; names are added over time.
    async fn get_counters(&self) -> Result<HashMap<String, u64>> {
        let counters = self.store.call(|s| s.counters()).await?;
        Ok(counters.into_iter().collect())
    }

    #[zbus(signal)]
    pub async fn message_received(
        emitter: &SignalEmitter<'_>,
        message: MessageDict,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    pub async fn message_status_changed(
        emitter: &SignalEmitter<'_>,
        id: &str,
        status: &str,
        channel: &str,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    pub async fn presence_changed(
        emitter: &SignalEmitter<'_>,
        number: &str,
        presence: &str,
    ) -> zbus::Result<()>;

    /// Every incoming message of the conversation with `peer` is read now (`MarkRead`
    /// from any frontend, or a notification's "Mark as read").
    #[zbus(signal)]
    pub async fn conversation_read(emitter: &SignalEmitter<'_>, peer: &str) -> zbus::Result<()>;

    /// The message `id` of the conversation with `peer` was deleted.
    #[zbus(signal)]
    pub async fn message_deleted(
        emitter: &SignalEmitter<'_>,
        id: &str,
        peer: &str,
    ) -> zbus::Result<()>;

    /// The conversation with `peer` was deleted, every message of it.
    #[zbus(signal)]
    pub async fn conversation_deleted(emitter: &SignalEmitter<'_>, peer: &str) -> zbus::Result<()>;

    /// The address book changed: peers' names and photos may be different.
    #[zbus(signal)]
    pub async fn contacts_changed(emitter: &SignalEmitter<'_>) -> zbus::Result<()>;

    #[zbus(property)]
    async fn own_number(&self) -> String {
        self.status.borrow().own_number.clone()
    }

    #[zbus(property)]
    async fn relay_state(&self) -> String {
        self.status.borrow().relay.to_string()
    }

    #[zbus(property)]
    async fn modem_state(&self) -> String {
        self.status.borrow().modem.to_string()
    }

    #[zbus(property)]
    async fn unread_count(&self) -> u32 {
        self.status.borrow().unread
    }

    /// Well-known bus names of other apps running on this bus that also take incoming
    /// SMS from the modem (Chatty, Spacebar), sorted; empty when there is none.
    #[zbus(property)]
    async fn other_sms_apps(&self) -> Vec<String> {
        self.sms_apps.borrow().clone()
    }
}

/// Serves `iface` on `conn` and only then requests the well-known name, so that an
/// activated service never gets a call it cannot answer.
///
/// One daemon per user: the name is requested without queueing and without allowing
/// replacement (zbus's default allows both), so a second daemon gets
/// `zbus::Error::NameTaken` instead of silently taking the name from the first, after
/// which both would consume every incoming SMS. The returned [`NameLost`] completes if
/// the name is ever taken away anyway, or the bus connection ends.
pub async fn serve(conn: &zbus::Connection, iface: Messages) -> zbus::Result<NameLost> {
    conn.object_server().at(OBJECT_PATH, iface).await?;
    // Listening before asking, so that a loss right after cannot be missed.
    let lost = zbus::fdo::DBusProxy::new(conn)
        .await?
        .receive_name_lost_with_args(&[(0, BUS_NAME)])
        .await?;
    conn.request_name_with_flags(BUS_NAME, zbus::fdo::RequestNameFlags::DO_NOT_QUEUE)
        .await?;
    Ok(NameLost(lost))
}

/// The daemon's hold on [`BUS_NAME`] (see [`serve`]).
pub struct NameLost(zbus::fdo::NameLostStream);

impl NameLost {
    /// Completes when the bus says the name is lost, or when the connection to the bus
    /// ends (no signal can come then, and no call either).
    pub async fn wait(mut self) {
        use futures_util::StreamExt;
        match self.0.next().await {
            Some(_) => warn!(name = BUS_NAME, "the bus took our name away"),
            None => warn!(name = BUS_NAME, "the connection to the session bus ended"),
        }
    }
}

/// Turns the engine's status changes into `PropertiesChanged` and its events into signals,
/// until the engine's channels close. A signal that cannot be emitted is logged and
/// skipped: one failure must not silence the daemon for the rest of its life.
pub async fn publish(
    conn: zbus::Connection,
    mut status: watch::Receiver<DaemonStatus>,
    mut events: mpsc::Receiver<Announcement>,
) -> zbus::Result<()> {
    let iface = conn
        .object_server()
        .interface::<_, Messages>(OBJECT_PATH)
        .await?;
    let emitter = iface.signal_emitter().clone();
    let mut last = status.borrow_and_update().clone();
    let mut status_open = true;
    loop {
        tokio::select! {
            changed = status.changed(), if status_open => {
                if changed.is_err() {
                    status_open = false;
                    continue;
                }
                let now = status.borrow_and_update().clone();
                let messages = iface.get().await;
                let emitted = [
                    (now.own_number != last.own_number, "OwnNumber"),
                    (now.relay != last.relay, "RelayState"),
                    (now.modem != last.modem, "ModemState"),
                    (now.unread != last.unread, "UnreadCount"),
                ];
                for (changed, property) in emitted {
                    if !changed {
                        continue;
                    }
                    let sent = match property {
                        "OwnNumber" => messages.own_number_changed(&emitter).await,
                        "RelayState" => messages.relay_state_changed(&emitter).await,
                        "ModemState" => messages.modem_state_changed(&emitter).await,
                        _ => messages.unread_count_changed(&emitter).await,
                    };
                    if let Err(e) = sent {
                        warn!(property, cause = %e, "could not emit PropertiesChanged");
                    }
                }
                last = now;
            }
            announcement = events.recv() => {
                let Some(Announcement { event, emitted }) = announcement else { break };
                let sent = match event {
                    Event::Received(m) => {
                        let message = iface.get().await.message_dict(m);
                        Messages::message_received(&emitter, message).await
                    }
                    Event::StatusChanged { id, status, channel } => {
                        let channel = channel.map(Channel::as_str).unwrap_or("");
                        Messages::message_status_changed(&emitter, &id, status.as_str(), channel).await
                    }
                    Event::Presence { number, presence } => {
                        Messages::presence_changed(&emitter, &number, presence.as_str()).await
                    }
                    Event::ConversationRead { peer } => {
                        Messages::conversation_read(&emitter, &peer).await
                    }
                    Event::MessageDeleted { id, peer } => {
                        Messages::message_deleted(&emitter, &id, &peer).await
                    }
                    Event::ConversationDeleted { peer } => {
                        Messages::conversation_deleted(&emitter, &peer).await
                    }
                };
                if let Err(e) = sent {
                    warn!(cause = %e, "could not emit a signal");
                }
                if let Some(emitted) = emitted {
                    let _ = emitted.send(());
                }
            }
        }
    }
    Ok(())
}

/// Emits `PropertiesChanged` for `OtherSmsApps` each time the apps present change, until
/// their watcher stops.
pub async fn publish_sms_apps(
    conn: zbus::Connection,
    mut apps: watch::Receiver<Vec<String>>,
) -> zbus::Result<()> {
    let iface = conn
        .object_server()
        .interface::<_, Messages>(OBJECT_PATH)
        .await?;
    while apps.changed().await.is_ok() {
        let messages = iface.get().await;
        if let Err(e) = messages
            .other_sms_apps_changed(iface.signal_emitter())
            .await
        {
            warn!(property = "OtherSmsApps", cause = %e, "could not emit PropertiesChanged");
        }
    }
    Ok(())
}

/// Emits `ContactsChanged` for each new snapshot of the address book once the interface
/// is served (before, no one can have read a name), until the address book is no longer
/// followed.
pub async fn publish_contacts(
    conn: zbus::Connection,
    mut changes: watch::Receiver<Arc<contacts::Book>>,
) {
    while changes.changed().await.is_ok() {
        let Ok(iface) = conn
            .object_server()
            .interface::<_, Messages>(OBJECT_PATH)
            .await
        else {
            continue;
        };
        if let Err(e) = Messages::contacts_changed(iface.signal_emitter()).await {
            warn!(cause = %e, "could not emit ContactsChanged");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zbus::Variant;

    fn opts(pairs: &[(&str, Variant<'static>)]) -> HashMap<String, OwnedVariant> {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    (*k).to_owned(),
                    OwnedVariant::try_from(v).expect("plain value"),
                )
            })
            .collect()
    }

    #[test]
    fn send_options() {
        let ok = parse_send_options(&opts(&[
            ("channel", Variant::from("sms")),
            ("delivery-report", Variant::from(false)),
            ("client-token", Variant::from("abc")),
        ]))
        .expect("valid options");
        assert_eq!(
            ok,
            SendOptions {
                channel: ChannelRequest::Sms,
                delivery_report: Some(false),
                client_token: Some("abc".into()),
            }
        );
        assert_eq!(
            parse_send_options(&opts(&[])).expect("empty"),
            SendOptions::default()
        );

        let rows: [(&str, Variant<'static>, &str); 5] = [
            (
                "channel",
                Variant::from("pigeon"),
                "must be \"auto\", \"sms\" or \"ip\"",
            ),
            ("channel", Variant::from(3u32), "must be of type s, not u"),
            (
                "delivery-report",
                Variant::from("yes"),
                "must be of type b, not s",
            ),
            ("client-token", Variant::from(""), "1 to 256 bytes"),
            ("colour", Variant::from("red"), "unknown option \"colour\""),
        ];
        for (key, value, expected) in rows {
            match parse_send_options(&opts(&[(key, value)])) {
                Err(ApiError::InvalidArgument(msg)) => {
                    assert!(msg.contains(expected), "{key}: {msg:?} lacks {expected:?}")
                }
                other => panic!("{key}: expected InvalidArgument, got {other:?}"),
            }
        }
    }

    #[test]
    fn errors_show_at_most_a_short_piece_of_the_input() {
        assert_eq!(shown("Bank"), "\"Bank\"");
        assert_eq!(shown(""), "\"\"");
        let exact = "é".repeat(SHOWN_CHARS);
        assert_eq!(shown(&exact), format!("{exact:?}"));
        let long = "é".repeat(100_000);
        assert_eq!(
            shown(&long),
            format!("{:?}… (200000 bytes)", "é".repeat(SHOWN_CHARS))
        );
        // A control character is escaped, never written raw.
        assert_eq!(shown("a\nb\u{1b}[2J"), "\"a\\nb\\u{1b}[2J\"");
        assert!(check_id("the id", &"0".repeat(MAX_ID_BYTES)).is_ok());
        match check_id("the id", &"0".repeat(MAX_ID_BYTES + 1)) {
            Err(ApiError::InvalidArgument(m)) => {
                assert!(m.starts_with("the id is 65 bytes"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn message_dict_keys() {
        let m = Message {
            id: "x".into(),
            peer: "+15551234567".into(),
            direction: crate::domain::Direction::Outgoing,
            text: "hi".into(),
            channel: None,
            status: crate::domain::Status::Queued,
            timestamp_ms: 5,
            read: true,
            error: None,
        };
        let d = MessageDict::from(m);
        assert_eq!(d.channel, "");
        assert_eq!(d.status, "queued");
        assert_eq!(d.direction, "outgoing");
    }
}
