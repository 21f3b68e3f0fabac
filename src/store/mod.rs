//! store: the message store, one SQLite file. The only module that knows SQL.
//!
//! It owns the schema (`data/migrations/*.sql`, applied in order and counted in
//! `PRAGMA user_version`), the messages, the per-peer `conversations` summary kept in
//! the same transactions, and the FTS5 index over the bodies. It decides nothing about
//! delivery, numbers or channels: callers hand it normalised numbers and computed keys.
//! It must not be called from async code directly: the daemon wraps it in a
//! [`StoreHandle`], a dedicated thread, so SQLite I/O never blocks the runtime.
//!
//! Layout on disk, in short (the SQL file says more):
//! - `messages.seq`, the rowid, is the order of arrival, and messages are ordered by it:
//!   "newest" means last stored, as in Android's SMS provider. The `timestamp` a message
//!   shows is the sender's or SMS centre's clock, which has one-second resolution and
//!   its own skew: ordering by it would put a quick reply above the message it answers.
//!   The index `(conv)` (plus rowid) serves cursor paging; the FTS index uses the same
//!   dense rowids.
//! - ids are UUIDs stored as 16-byte BLOBs; enums are small integers; idempotency keys
//!   are stored as digests ([`codec`]).
//! - every write that touches more than one row or table is one transaction, and
//!   `synchronous=FULL` makes a commit durable when the method returns.

mod codec;
mod handle;
mod import;
mod ip;
mod sms;
#[cfg(test)]
mod tests;

pub use handle::StoreHandle;
pub use import::ImportedMessage;
pub use ip::{HeldIp, PresenceRecord, RelayPending, RelayStage};
pub use sms::{SmsAttempt, SmsCleanup};

use std::fs::{self, DirBuilder, OpenOptions};
use std::io;
use std::ops::Deref;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{
    Connection, ErrorCode, OptionalExtension, Row, Transaction, TransactionBehavior, params,
};
use tracing::{debug, info, warn};
use uuid::Uuid;

use crate::domain::{
    Channel, ChannelRequest, Conversation, Direction, Message, MessageId, Peer, Status,
};
use codec::{
    channel_code, channel_from_code, key_digest, request_code, request_from_code, status_code,
    status_from_code,
};

pub type Result<T> = std::result::Result<T, StoreError>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// An id (message id or `before_id` cursor) that is not in the store.
    #[error("no message with id {0:?}")]
    NotFound(String),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("cannot create or open {path:?}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The database was written by a newer Tandem (user_version higher than we know).
    #[error("the database has schema version {found}, newer than this Tandem knows ({known})")]
    TooNew { found: i64, known: i64 },
    /// The store thread is gone (only from StoreHandle).
    #[error("the store is closed")]
    Closed,
    /// A search query longer than [`MAX_SEARCH_BYTES`].
    #[error("the search query is {bytes} bytes long, more than the limit of {max}")]
    QueryTooLong { bytes: usize, max: usize },
    /// A search query with more different words than [`MAX_SEARCH_TERMS`].
    #[error("the search query has {terms} different words, more than the limit of {max}")]
    TooManyTerms { terms: usize, max: usize },
    /// A search still running when its [`SEARCH_BUDGET`] ran out, stopped there.
    #[error(
        "the search took longer than its budget of {} ms and was stopped; \
         try fewer or less common words",
        budget.as_millis()
    )]
    OverBudget { budget: Duration },
}

/// An outgoing message as `SendMessage` accepted it.
#[derive(Debug, Clone, Copy)]
pub struct NewOutgoing<'a> {
    pub peer: &'a str,
    pub text: &'a str,
    pub requested: ChannelRequest,
    pub delivery_report: bool,
    /// SendMessage's `client-token`: a second insert with the same token is a no-op.
    pub client_token: Option<&'a str>,
    pub timestamp_ms: i64,
}

/// An incoming message from either channel.
#[derive(Debug, Clone, Copy)]
pub struct NewIncoming<'a> {
    pub peer: &'a str,
    pub text: &'a str,
    pub channel: Channel,
    pub timestamp_ms: i64,
    /// idempotency key computed by the caller (e.g. "sms:<sender>:<smsc ts>:<hash of text>")
    pub dedupe_key: &'a str,
}

/// A pending outgoing message and what the engine needs to (re)try it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub message: Message,
    pub requested: ChannelRequest,
    pub delivery_report: bool,
    pub attempts: u32,
    /// When to try next, ms since the epoch; 0 when no attempt was recorded (due now).
    pub next_attempt_ms: i64,
}

/// The numbered migrations, in order; `PRAGMA user_version` counts the applied ones.
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_init",
        include_str!("../../data/migrations/0001_init.sql"),
    ),
    (
        "0002_announced",
        include_str!("../../data/migrations/0002_announced.sql"),
    ),
    ("0003_ip", include_str!("../../data/migrations/0003_ip.sql")),
    (
        "0004_sms_send",
        include_str!("../../data/migrations/0004_sms_send.sql"),
    ),
];

/// Longest search query, in bytes of UTF-8: a search box's words, with room to spare.
pub const MAX_SEARCH_BYTES: usize = 1024;
/// Most different words one search may have (after folding and removing repeats): every
/// word is one more posting list to walk, and FTS5 parses an expression of n words in
/// O(n²) (16,000 words took 0.4 s to parse on the development machine).
pub const MAX_SEARCH_TERMS: usize = 16;
/// Longest a search may run. Its statements are interrupted past it, checked every
/// [`PROGRESS_STEPS`] SQLite VM steps. One step inside FTS5 (finding the next row that
/// has every word) cannot be interrupted: on a million messages it is ~25 ms at worst for
/// real texts, but up to ~0.6 s for texts made so that 16 common words never meet. That
/// is why searches of a file store run on a connection and thread of their own
/// ([`StoreHandle::call_read`]): whatever a search costs, it never holds up the writer.
pub const SEARCH_BUDGET: Duration = Duration::from_millis(100);
/// SQLite VM steps between two looks at the deadline (a look costs one clock read).
const PROGRESS_STEPS: i32 = 1000;

/// Messages a conversation loses per transaction when it is deleted, so that other calls
/// get in between: 14,000 messages took 28 parts of 4 ms (median) to 12 ms each here in a
/// debug build, where one transaction for a 14,020-message conversation of a 1,000,000-
/// message store had held the store 1.6 s.
pub const DELETE_BATCH: u32 = 500;

/// The tokenizer of `messages_fts` (data/migrations/0001_init.sql), used to split search
/// queries the same way; a test checks that the two agree.
const QUERY_TOKENIZER: &str = "unicode61 remove_diacritics 2";

/// Columns read by [`message_from_row`], from `messages m JOIN conversations c`.
macro_rules! select_message {
    ($($rest:literal),* $(,)?) => {
        concat!(
            "SELECT m.uuid, c.peer, m.outgoing, m.body, m.channel, m.status, m.timestamp_ms, \
             m.read, m.error FROM messages m JOIN conversations c ON c.id = m.conv ",
            $($rest),*
        )
    };
}

// The statements the speed requirement rests on. A test checks every one's query plan:
// index searches only, never a scan of `messages`, never a sort of more than a page.
const GET_MESSAGE: &str = select_message!("WHERE m.uuid = ?1");
const BY_TOKEN: &str = select_message!("WHERE m.token_hash = ?1");
const DEDUPE_SEEN: &str = "SELECT 1 FROM messages WHERE dedupe_hash = ?1";
const CONVERSATION_BY_PEER: &str = "SELECT id FROM conversations WHERE peer = ?1";
/// `status = 2` (Sent) is a literal so that the partial index `messages_sent_refs` applies.
const BY_SMS_REF: &str = select_message!(
    "WHERE c.peer = ?1 AND m.sms_ref = ?2 AND m.status = 2 AND m.outgoing = 1 ",
    "ORDER BY m.seq DESC LIMIT 1"
);
const SENT_WITH_REF: &str = select_message!(
    "WHERE m.sms_ref = ?1 AND m.status = 2 AND m.outgoing = 1 ",
    "ORDER BY m.seq DESC LIMIT ?2"
);
const UNANNOUNCED: &str = select_message!("WHERE m.announced = 0 ORDER BY m.seq");
const OUTBOX: &str = concat!(
    "SELECT m.uuid, c.peer, m.outgoing, m.body, m.channel, m.status, m.timestamp_ms, ",
    "m.read, m.error, m.requested, m.delivery_report, m.attempts, m.next_attempt_ms ",
    "FROM messages m INDEXED BY messages_outbox JOIN conversations c ON c.id = m.conv ",
    "WHERE m.status IN (0, 1) AND m.outgoing = 1 ORDER BY m.seq"
);
/// The page of conversations is cut before the join, so rows skipped by OFFSET cost an
/// index step each and no message lookup.
const LIST_CONVERSATIONS: &str = concat!(
    "SELECT c.peer, m.uuid, m.body, m.timestamp_ms, m.outgoing, c.unread ",
    "FROM (SELECT peer, last_seq, unread ",
    "FROM conversations INDEXED BY conversations_by_activity ",
    "ORDER BY last_seq DESC LIMIT ?1 OFFSET ?2) c ",
    "JOIN messages m ON m.seq = c.last_seq ",
    "ORDER BY c.last_seq DESC"
);
const CURSOR: &str = "SELECT conv, seq FROM messages WHERE uuid = ?1";
const PAGE: &str = select_message!(
    "WHERE m.conv = ?1 AND m.seq < ?2 ",
    "ORDER BY m.seq DESC LIMIT ?3"
);
const SEARCH: &str = select_message!(
    "JOIN (SELECT rowid AS hit FROM messages_fts WHERE messages_fts MATCH ?1 ",
    "ORDER BY rowid DESC LIMIT ?2) f ON m.seq = f.hit ",
    "ORDER BY m.seq DESC"
);
const MARK_READ: &str = "UPDATE messages SET read = 1 WHERE read = 0 \
     AND conv = (SELECT id FROM conversations WHERE peer = ?1)";
const NEWEST_IN_CONVERSATION: &str = "SELECT seq, timestamp_ms FROM messages WHERE conv = ?1 \
     ORDER BY seq DESC LIMIT 1";
const UNREAD_COUNT: &str = "SELECT coalesce(sum(unread), 0) \
     FROM conversations INDEXED BY conversations_unread WHERE unread > 0";

/// The message store. Owns one SQLite connection; not `Sync`, use it from one thread
/// (see [`StoreHandle`]).
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Creates the parent directory (mode 0700) and the file (mode 0600, also -wal/-shm),
    /// WAL journal, synchronous=FULL (a commit survives power loss), migrations via
    /// PRAGMA user_version; refuses a newer schema (TooNew).
    ///
    /// Files and directory found with other modes are set to 0600 and 0700, with a log
    /// line; only a directory shared on purpose (sticky, like /tmp) or someone else's is
    /// left as it is, with a warning.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| io_error(dir, source))?;
            make_private(dir, 0o700)?;
        }
        // SQLite gives -wal and -shm the mode of the database file, so creating the file
        // ourselves with 0600 covers all three.
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|source| io_error(path, source))?;
        for file in [
            path.to_owned(),
            sidecar(path, "-wal"),
            sidecar(path, "-shm"),
        ] {
            make_private(&file, 0o600)?;
        }
        let conn = Connection::open(path)?;
        let store = Store::init(conn)?;
        info!(path = %path.display(), "message store open");
        Ok(store)
    }

    /// A private, empty store that vanishes when dropped (tests, tools).
    pub fn open_in_memory() -> Result<Store> {
        Store::init(Connection::open_in_memory()?)
    }

    fn init(mut conn: Connection) -> Result<Store> {
        // Only another process (a sqlite3 shell) can hold a lock; do not fail at once.
        conn.busy_timeout(Duration::from_secs(5))?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
        debug!(journal_mode = %mode, "store journal");
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", true)?;
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        migrate(&mut conn)?;
        create_query_tables(&conn)?;
        Ok(Store { conn })
    }

    /// A second connection to the database of `path`, already opened (and migrated) by
    /// [`Store::open`], for searches only: the [`StoreHandle`] runs them on a thread of
    /// their own with it, so that a search never holds up the writer. WAL lets it read
    /// while the store writes; it writes nothing but its own temp tables.
    pub(super) fn open_reader(path: &Path) -> Result<Store> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        create_query_tables(&conn)?;
        debug!(path = %path.display(), "search connection open");
        Ok(Store { conn })
    }

    /// The database file, `None` for an in-memory store.
    pub(super) fn file_path(&self) -> Option<PathBuf> {
        self.conn
            .path()
            .filter(|path| !path.is_empty())
            .map(PathBuf::from)
    }

    /// New outgoing message, status Queued, channel None, read true, id = new UUID v4.
    /// With a client_token already used: returns the existing message and false.
    pub fn insert_outgoing(&mut self, m: &NewOutgoing) -> Result<(Message, bool)> {
        let tx = self.write()?;
        let token = m.client_token.map(key_digest);
        if let Some(token) = &token {
            let existing = tx
                .prepare_cached(BY_TOKEN)?
                .query_row([token], message_from_row)
                .optional()?;
            if let Some(existing) = existing {
                debug!(id = %existing.id, "client token already used");
                return Ok((existing, false));
            }
        }
        let conv = conversation_id(&tx, m.peer)?;
        let uuid = Uuid::new_v4();
        tx.prepare_cached(
            "INSERT INTO messages (uuid, conv, outgoing, status, channel, timestamp_ms, \
             read, body, token_hash, requested, delivery_report, attempts) \
             VALUES (?1, ?2, 1, ?3, NULL, ?4, 1, ?5, ?6, ?7, ?8, 0)",
        )?
        .execute(params![
            uuid.as_bytes(),
            conv,
            status_code(Status::Queued),
            m.timestamp_ms,
            m.text,
            token,
            request_code(m.requested),
            m.delivery_report,
        ])?;
        advance_conversation(&tx, conv, tx.last_insert_rowid(), m.timestamp_ms, 0)?;
        tx.commit()?;
        debug!(id = %uuid, peer = m.peer, "outgoing message stored");
        let message = Message {
            id: MessageId::new(uuid.to_string()),
            peer: Peer::from(m.peer),
            direction: Direction::Outgoing,
            text: m.text.to_owned(),
            channel: None,
            status: Status::Queued,
            timestamp_ms: m.timestamp_ms,
            read: true,
            error: None,
        };
        Ok((message, true))
    }

    /// New incoming message (status Received, read false) or None when dedupe_key exists.
    pub fn insert_incoming(&mut self, m: &NewIncoming) -> Result<Option<Message>> {
        let tx = self.write()?;
        let message = insert_incoming_in(&tx, m)?;
        tx.commit()?;
        if let Some(message) = &message {
            debug!(id = %message.id, "incoming message stored");
        }
        Ok(message)
    }

    /// The message with this id; NotFound for an unknown id or one that is no UUID.
    pub fn get_message(&self, id: &str) -> Result<Message> {
        let uuid = parse_id(id)?;
        self.conn
            .prepare_cached(GET_MESSAGE)?
            .query_row([uuid], message_from_row)
            .optional()?
            .ok_or_else(|| StoreError::NotFound(id.to_owned()))
    }

    /// Sets status, channel (None = leave as is), error (set when Failed, cleared otherwise).
    ///
    /// Every status is a durable commit but `sending`: that one survives a crash or a
    /// kill of the daemon at once (it is in the WAL file), and reaches the disk with the
    /// next durable commit, which in practice follows within milliseconds (the relay
    /// stage of an IP send, the sent mark of an SMS). A power cut in between can only turn
    /// it back into `queued`, and the message goes again, which is what recovery does
    /// with a `sending` one anyway; so it need not cost an fsync on every send's path.
    pub fn update_status(
        &mut self,
        id: &str,
        status: Status,
        channel: Option<Channel>,
        error: Option<&str>,
    ) -> Result<Message> {
        if status == Status::Sending {
            self.conn.pragma_update(None, "synchronous", "NORMAL")?;
            let updated = self.set_status_row(id, status, channel, error);
            // Back to durable commits whatever happened; a failure here is the error.
            self.conn.pragma_update(None, "synchronous", "FULL")?;
            updated?;
        } else {
            self.set_status_row(id, status, channel, error)?;
        }
        debug!(id, status = %status, "message status updated");
        self.get_message(id)
    }

    fn set_status_row(
        &mut self,
        id: &str,
        status: Status,
        channel: Option<Channel>,
        error: Option<&str>,
    ) -> Result<()> {
        let uuid = parse_id(id)?;
        let error = if status == Status::Failed {
            error
        } else {
            None
        };
        let changed = self
            .conn
            .prepare_cached(
                "UPDATE messages SET status = ?2, channel = coalesce(?3, channel), error = ?4 \
                 WHERE uuid = ?1",
            )?
            .execute(params![
                uuid,
                status_code(status),
                channel.map(channel_code),
                error
            ])?;
        if changed == 0 {
            return Err(StoreError::NotFound(id.to_owned()));
        }
        Ok(())
    }

    /// Incoming messages stored but not yet announced, oldest first.
    pub fn unannounced(&self) -> Result<Vec<Message>> {
        all_rows(&self.conn, UNANNOUNCED, [], message_from_row)
    }

    /// Records that an incoming message was announced.
    pub fn mark_announced(&mut self, id: &str) -> Result<()> {
        self.update_one(
            id,
            "UPDATE messages SET announced = 1 WHERE uuid = ?1",
            params![parse_id(id)?],
        )
    }

    /// Outgoing SMS still `Sent` that carry this message reference, newest first (at most
    /// `limit`): for a status report whose number does not match a peer as written.
    pub fn sent_with_reference(&self, reference: u32, limit: u32) -> Result<Vec<Message>> {
        all_rows(
            &self.conn,
            SENT_WITH_REF,
            params![reference, limit],
            message_from_row,
        )
    }

    /// Whether a conversation with exactly this peer exists.
    pub fn has_conversation(&self, peer: &str) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached(CONVERSATION_BY_PEER)?
            .exists([peer])?)
    }

    /// The newest outgoing SMS to `peer` carrying that message reference, status Sent
    /// (references wrap at 256, so prefer the newest one not yet Delivered/Failed).
    ///
    /// Only messages still `Sent` qualify: a report must never turn an older, already
    /// final message with a recycled reference into something else.
    pub fn find_by_sms_reference(&self, peer: &str, reference: u32) -> Result<Option<Message>> {
        Ok(self
            .conn
            .prepare_cached(BY_SMS_REF)?
            .query_row(params![peer, reference], message_from_row)
            .optional()?)
    }

    /// Records how many sending attempts were made and when the next one is due.
    pub fn record_attempt(&mut self, id: &str, attempts: u32, next_attempt_ms: i64) -> Result<()> {
        self.update_one(
            id,
            "UPDATE messages SET attempts = ?2, next_attempt_ms = ?3 WHERE uuid = ?1",
            params![parse_id(id)?, attempts, next_attempt_ms],
        )
    }

    /// Outgoing messages with status Queued or Sending, oldest first (acceptance order).
    pub fn outbox(&self) -> Result<Vec<OutboxEntry>> {
        all_rows(&self.conn, OUTBOX, [], |row| {
            let requested: i64 = row.get(9)?;
            Ok(OutboxEntry {
                message: message_from_row(row)?,
                requested: request_from_code(requested)
                    .ok_or(rusqlite::Error::IntegralValueOutOfRange(9, requested))?,
                delivery_report: row.get::<_, Option<bool>>(10)?.unwrap_or(false),
                attempts: row.get::<_, Option<u32>>(11)?.unwrap_or(0),
                next_attempt_ms: row.get::<_, Option<i64>>(12)?.unwrap_or(0),
            })
        })
    }

    /// Newest activity first; see the contract's keys (peer, last-id, last-text,
    /// last-timestamp, last-direction, unread).
    pub fn list_conversations(&self, offset: u32, limit: u32) -> Result<Vec<Conversation>> {
        all_rows(
            &self.conn,
            LIST_CONVERSATIONS,
            params![limit, offset],
            |row| {
                Ok(Conversation {
                    peer: Peer::new(row.get::<_, String>(0)?),
                    last_id: MessageId::new(uuid_from_row(row, 1)?),
                    last_text: row.get(2)?,
                    last_timestamp_ms: row.get(3)?,
                    last_direction: direction(row.get(4)?),
                    unread: row.get(5)?,
                })
            },
        )
    }

    /// Newest first; before_id Some = strictly older than that message (cursor), NotFound
    /// if the cursor id is unknown (or belongs to another peer).
    pub fn get_messages(
        &self,
        peer: &str,
        before_id: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Message>> {
        let conv: Option<i64> = self
            .conn
            .prepare_cached(CONVERSATION_BY_PEER)?
            .query_row([peer], |row| row.get(0))
            .optional()?;
        // The cursor's seq: the page holds messages that arrived strictly before it.
        let before_seq = match before_id {
            None => i64::MAX,
            Some(cursor) => {
                let found: Option<(i64, i64)> = self
                    .conn
                    .prepare_cached(CURSOR)?
                    .query_row([parse_id(cursor)?], |row| Ok((row.get(0)?, row.get(1)?)))
                    .optional()?;
                match found {
                    Some((owner, seq)) if Some(owner) == conv => seq,
                    _ => return Err(StoreError::NotFound(cursor.to_owned())),
                }
            }
        };
        let Some(conv) = conv else {
            return Ok(Vec::new());
        };
        all_rows(
            &self.conn,
            PAGE,
            params![conv, before_seq, limit],
            message_from_row,
        )
    }

    /// Full-text search (FTS5) over all bodies, newest first. Any user text works: it is
    /// split into tokens by the index's own tokenizer (so `"`, `*`, `-`, `:`, `(`,
    /// `AND` ... are plain text or separators, never syntax), every token must match a
    /// whole word (case and accents aside), and a query without any token finds nothing.
    /// A word given twice counts once.
    ///
    /// Bounded: a query longer than [`MAX_SEARCH_BYTES`] is `QueryTooLong`, one with
    /// more than [`MAX_SEARCH_TERMS`] different words `TooManyTerms`, and a search still
    /// running after [`SEARCH_BUDGET`] is stopped with `OverBudget`, so one hostile query
    /// cannot hold up the store (and with it every send and every incoming message).
    ///
    /// Words do not match as prefixes: FTS5 answers a prefix query by merging the full
    /// posting lists of every matching word, 6 to 140 ms on a million messages, where a
    /// whole-word query walks its lists newest first and stops at `limit` (~0.1 ms).
    ///
    /// "Newest" is by arrival in the store, like everywhere in the store (the FTS index
    /// walks rowids backwards, which keeps this index-only).
    pub fn search(&mut self, query: &str, limit: u32) -> Result<Vec<Message>> {
        self.search_within(query, limit, SEARCH_BUDGET)
    }

    /// [`Store::search`] with another time budget (tests).
    fn search_within(&mut self, query: &str, limit: u32, budget: Duration) -> Result<Vec<Message>> {
        if query.len() > MAX_SEARCH_BYTES {
            return Err(StoreError::QueryTooLong {
                bytes: query.len(),
                max: MAX_SEARCH_BYTES,
            });
        }
        let conn = Deadline::start(&mut self.conn, budget)?;
        let found = (|| {
            let terms = distinct(query_tokens(&conn, query)?);
            if terms.len() > MAX_SEARCH_TERMS {
                return Err(StoreError::TooManyTerms {
                    terms: terms.len(),
                    max: MAX_SEARCH_TERMS,
                });
            }
            let Some(expr) = fts_expression(&terms) else {
                return Ok(Vec::new());
            };
            all_rows(&conn, SEARCH, params![expr, limit], message_from_row)
        })();
        match found {
            Err(StoreError::Sqlite(e))
                if e.sqlite_error_code() == Some(ErrorCode::OperationInterrupted) =>
            {
                debug!(
                    budget_ms = budget.as_millis(),
                    "search stopped at its budget"
                );
                Err(StoreError::OverBudget { budget })
            }
            other => other,
        }
    }

    /// Marks every incoming message of the conversation read; returns how many changed.
    pub fn mark_read(&mut self, peer: &str) -> Result<u32> {
        let tx = self.write()?;
        let changed = tx.prepare_cached(MARK_READ)?.execute([peer])?;
        tx.prepare_cached("UPDATE conversations SET unread = 0 WHERE peer = ?1 AND unread > 0")?
            .execute([peer])?;
        tx.commit()?;
        debug!(peer, changed, "conversation marked read");
        Ok(saturating_u32(changed))
    }

    /// Deletes one message and returns it; the conversation's last message and unread
    /// count follow, and a conversation left empty disappears.
    pub fn delete_message(&mut self, id: &str) -> Result<Message> {
        let uuid = parse_id(id)?;
        let tx = self.write()?;
        let (message, seq, conv): (Message, i64, i64) = tx
            .prepare_cached(concat!(
                "SELECT m.uuid, c.peer, m.outgoing, m.body, m.channel, m.status, ",
                "m.timestamp_ms, m.read, m.error, m.seq, m.conv ",
                "FROM messages m JOIN conversations c ON c.id = m.conv WHERE m.uuid = ?1"
            ))?
            .query_row([uuid], |row| {
                Ok((message_from_row(row)?, row.get(9)?, row.get(10)?))
            })
            .optional()?
            .ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
        tx.prepare_cached("DELETE FROM messages WHERE seq = ?1")?
            .execute([seq])?;
        if !message.read {
            tx.prepare_cached("UPDATE conversations SET unread = unread - 1 WHERE id = ?1")?
                .execute([conv])?;
        }
        let newest: Option<(i64, i64)> = tx
            .prepare_cached(NEWEST_IN_CONVERSATION)?
            .query_row([conv], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        match newest {
            Some((seq, ts)) => tx
                .prepare_cached(
                    "UPDATE conversations SET last_seq = ?2, last_ts = ?3 WHERE id = ?1",
                )?
                .execute([conv, seq, ts])?,
            None => tx
                .prepare_cached("DELETE FROM conversations WHERE id = ?1")?
                .execute([conv])?,
        };
        tx.commit()?;
        debug!(id, "message deleted");
        Ok(message)
    }

    /// Deletes every message with `peer` and the conversation; returns how many messages.
    /// One transaction per [`DELETE_BATCH`] messages (see [`Store::delete_conversation_part`]).
    pub fn delete_conversation(&mut self, peer: &str) -> Result<u32> {
        let mut total = 0u32;
        loop {
            let (deleted, done) = self.delete_conversation_part(peer, DELETE_BATCH)?;
            total = total.saturating_add(deleted);
            if done {
                return Ok(total);
            }
        }
    }

    /// Deletes the oldest `max` messages with `peer` in one transaction, and the
    /// conversation with its last one; returns how many, and whether none is left. The
    /// conversation stays whole meanwhile (its newest message and unread count hold), so
    /// a caller can let other work in between parts: deleting a long conversation in one
    /// go (its FTS entries above all) held the store for seconds.
    pub fn delete_conversation_part(&mut self, peer: &str, max: u32) -> Result<(u32, bool)> {
        let tx = self.write()?;
        let conv: Option<i64> = tx
            .prepare_cached(CONVERSATION_BY_PEER)?
            .query_row([peer], |row| row.get(0))
            .optional()?;
        let Some(conv) = conv else {
            return Ok((0, true));
        };
        let unread: i64 = tx
            .prepare_cached(
                "SELECT count(*) FROM (SELECT read FROM messages WHERE conv = ?1 \
                 ORDER BY seq LIMIT ?2) WHERE read = 0",
            )?
            .query_row(params![conv, max], |row| row.get(0))?;
        let deleted = tx
            .prepare_cached(
                "DELETE FROM messages WHERE seq IN \
                 (SELECT seq FROM messages WHERE conv = ?1 ORDER BY seq LIMIT ?2)",
            )?
            .execute(params![conv, max])?;
        let left = tx
            .prepare_cached("SELECT 1 FROM messages WHERE conv = ?1 LIMIT 1")?
            .exists([conv])?;
        if left {
            tx.prepare_cached("UPDATE conversations SET unread = unread - ?2 WHERE id = ?1")?
                .execute(params![conv, unread])?;
        } else {
            tx.prepare_cached("DELETE FROM conversations WHERE id = ?1")?
                .execute([conv])?;
        }
        tx.commit()?;
        debug!(peer, deleted, left, "conversation (partly) deleted");
        Ok((saturating_u32(deleted), !left))
    }

    /// All unread incoming messages.
    pub fn unread_count(&self) -> Result<u32> {
        let total: i64 = self
            .conn
            .prepare_cached(UNREAD_COUNT)?
            .query_row([], |row| row.get(0))?;
        Ok(u32::try_from(total).unwrap_or(u32::MAX))
    }

    /// Every conversation peer (for presence following, later), sorted.
    pub fn peers(&self) -> Result<Vec<String>> {
        all_rows(
            &self.conn,
            "SELECT peer FROM conversations ORDER BY peer",
            [],
            |row| row.get(0),
        )
    }

    /// A write transaction, taking the write lock up front.
    fn write(&mut self) -> Result<Transaction<'_>> {
        Ok(self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?)
    }

    /// Runs an UPDATE of one message by uuid (`?1`); NotFound when it matched nothing.
    fn update_one(&mut self, id: &str, sql: &str, params: &[&dyn rusqlite::ToSql]) -> Result<()> {
        match self.conn.prepare_cached(sql)?.execute(params)? {
            0 => Err(StoreError::NotFound(id.to_owned())),
            _ => Ok(()),
        }
    }
}

/// The temp FTS5 table that splits search queries (see [`query_tokens`]); only the
/// connection that makes it sees it, and it lives in memory.
fn create_query_tables(conn: &Connection) -> Result<()> {
    conn.execute_batch(&format!(
        "CREATE VIRTUAL TABLE temp.search_query USING fts5 (q, tokenize = '{QUERY_TOKENIZER}');
         CREATE VIRTUAL TABLE temp.search_query_terms
             USING fts5vocab ('temp', 'search_query', 'instance');"
    ))?;
    Ok(())
}

/// `query` split and folded exactly as the FTS index splits and folds bodies: through
/// the temp FTS5 table made in [`Store::init`] and its vocabulary (only this connection
/// sees it; it lives in memory).
fn query_tokens(conn: &Connection, query: &str) -> Result<Vec<String>> {
    conn.prepare_cached("DELETE FROM temp.search_query")?
        .execute([])?;
    conn.prepare_cached("INSERT INTO temp.search_query (rowid, q) VALUES (1, ?1)")?
        .execute([query])?;
    let mut stmt =
        conn.prepare_cached("SELECT term FROM temp.search_query_terms ORDER BY offset")?;
    let tokens = stmt.query_map([], |row| row.get(0))?;
    Ok(tokens.collect::<rusqlite::Result<_>>()?)
}

/// The tokens without repeats, in the order of their first appearance.
fn distinct(tokens: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    tokens
        .into_iter()
        .filter(|token| seen.insert(token.clone()))
        .collect()
}

/// The store's connection with a deadline: a statement still running past it is
/// interrupted (`SQLITE_INTERRUPT`, which rolls that statement back). The deadline goes
/// when this is dropped, whatever happened in between, so that no later statement of the
/// store (a write of the engine) can ever be interrupted by it.
struct Deadline<'c> {
    conn: &'c mut Connection,
}

impl<'c> Deadline<'c> {
    fn start(conn: &'c mut Connection, budget: Duration) -> Result<Deadline<'c>> {
        let end = Instant::now() + budget;
        conn.progress_handler(PROGRESS_STEPS, Some(move || Instant::now() >= end))?;
        Ok(Deadline { conn })
    }
}

impl Deref for Deadline<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for Deadline<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.conn.progress_handler(0, None::<fn() -> bool>) {
            warn!(cause = %e, "cannot remove the search deadline");
        }
    }
}

#[cfg(test)]
impl Store {
    /// Makes the database as full as a full disk would (no page may be added), or gives
    /// it room again: for tests of what the daemon does on a full disk.
    pub(crate) fn set_full(&mut self, full: bool) -> Result<()> {
        let pages: i64 = self
            .conn
            .query_row("PRAGMA page_count", [], |row| row.get(0))?;
        let max = if full { pages } else { 1_073_741_823 };
        self.conn.pragma_update(None, "max_page_count", max)?;
        Ok(())
    }
}

/// [`Store::insert_incoming`] inside the caller's transaction.
fn insert_incoming_in(tx: &Transaction, m: &NewIncoming) -> Result<Option<Message>> {
    let dedupe = key_digest(m.dedupe_key);
    let seen = tx.prepare_cached(DEDUPE_SEEN)?.exists([dedupe])?;
    if seen {
        debug!(dedupe_key = m.dedupe_key, "incoming message already stored");
        return Ok(None);
    }
    let conv = conversation_id(tx, m.peer)?;
    let uuid = Uuid::new_v4();
    tx.prepare_cached(
        "INSERT INTO messages (uuid, conv, outgoing, status, channel, timestamp_ms, \
         read, body, dedupe_hash, announced) VALUES (?1, ?2, 0, ?3, ?4, ?5, 0, ?6, ?7, 0)",
    )?
    .execute(params![
        uuid.as_bytes(),
        conv,
        status_code(Status::Received),
        channel_code(m.channel),
        m.timestamp_ms,
        m.text,
        dedupe,
    ])?;
    advance_conversation(tx, conv, tx.last_insert_rowid(), m.timestamp_ms, 1)?;
    debug!(id = %uuid, peer = m.peer, channel = %m.channel, "incoming message inserted");
    Ok(Some(Message {
        id: MessageId::new(uuid.to_string()),
        peer: Peer::from(m.peer),
        direction: Direction::Incoming,
        text: m.text.to_owned(),
        channel: Some(m.channel),
        status: Status::Received,
        timestamp_ms: m.timestamp_ms,
        read: false,
        error: None,
    }))
}

/// Applies the migrations not yet applied, each in its own transaction.
fn migrate(conn: &mut Connection) -> Result<()> {
    let known = MIGRATIONS.len() as i64;
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found: i64 = tx.pragma_query_value(None, "user_version", |row| row.get(0))?;
        // A negative version is no schema of ours either.
        let Some((name, sql)) = usize::try_from(found)
            .ok()
            .filter(|&applied| applied <= MIGRATIONS.len())
            .map(|applied| MIGRATIONS.get(applied))
            .ok_or(StoreError::TooNew { found, known })?
        else {
            return Ok(());
        };
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", found + 1)?;
        tx.commit()?;
        info!(
            migration = name,
            version = found + 1,
            "store schema migrated"
        );
    }
}

/// The conversation of `peer`, created if new (its last message is set by
/// [`advance_conversation`] in the same transaction).
fn conversation_id(tx: &Transaction, peer: &str) -> Result<i64> {
    let existing: Option<i64> = tx
        .prepare_cached(CONVERSATION_BY_PEER)?
        .query_row([peer], |row| row.get(0))
        .optional()?;
    if let Some(id) = existing {
        return Ok(id);
    }
    Ok(tx
        .prepare_cached(
            "INSERT INTO conversations (peer, last_seq, last_ts, unread) \
             VALUES (?1, 0, ?2, 0) RETURNING id",
        )?
        .query_row(params![peer, i64::MIN], |row| row.get(0))?)
}

/// Records a new message (`seq`, `timestamp_ms`) in its conversation: it becomes the last
/// message unless an older-stamped one is newer, and `unread` is added.
fn advance_conversation(
    tx: &Transaction,
    conv: i64,
    seq: i64,
    timestamp_ms: i64,
    unread: i64,
) -> Result<()> {
    // A new seq is above every stored one: the new message is the newest.
    tx.prepare_cached(
        "UPDATE conversations SET last_seq = ?2, last_ts = ?3, unread = unread + ?4 \
         WHERE id = ?1",
    )?
    .execute(params![conv, seq, timestamp_ms, unread])?;
    Ok(())
}

/// The FTS5 expression for tokens of the index's tokenizer: each one quoted (a quote
/// doubled, although the tokenizer never keeps one), implicitly AND-ed; `None` when
/// there are none. Each string is a single token, never a phrase, which `detail=none`
/// would refuse.
fn fts_expression(tokens: &[String]) -> Option<String> {
    let terms: Vec<String> = tokens
        .iter()
        .map(|token| format!("\"{}\"", token.replace('"', "\"\"")))
        .collect();
    (!terms.is_empty()).then(|| terms.join(" "))
}

/// Every row a (cached) statement answers, each read by `read`.
fn all_rows<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    read: impl FnMut(&Row<'_>) -> rusqlite::Result<T>,
) -> Result<Vec<T>> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params, read)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Reads the columns of [`select_message!`] (indexes 0 to 8).
fn message_from_row(row: &Row) -> rusqlite::Result<Message> {
    let status: i64 = row.get(5)?;
    let channel: Option<i64> = row.get(4)?;
    Ok(Message {
        id: MessageId::new(uuid_from_row(row, 0)?),
        peer: Peer::new(row.get::<_, String>(1)?),
        direction: direction(row.get(2)?),
        text: row.get(3)?,
        channel: match channel {
            None => None,
            Some(code) => Some(
                channel_from_code(code).ok_or(rusqlite::Error::IntegralValueOutOfRange(4, code))?,
            ),
        },
        status: status_from_code(status)
            .ok_or(rusqlite::Error::IntegralValueOutOfRange(5, status))?,
        timestamp_ms: row.get(6)?,
        read: row.get(7)?,
        error: row.get(8)?,
    })
}

fn uuid_from_row(row: &Row, idx: usize) -> rusqlite::Result<String> {
    let bytes: [u8; 16] = row.get(idx)?;
    Ok(Uuid::from_bytes(bytes).to_string())
}

const fn direction(outgoing: bool) -> Direction {
    if outgoing {
        Direction::Outgoing
    } else {
        Direction::Incoming
    }
}

/// The 16 stored bytes of an API id; an id that is no UUID names no message.
fn parse_id(id: &str) -> Result<[u8; 16]> {
    Uuid::parse_str(id)
        .map(|uuid| uuid.into_bytes())
        .map_err(|_| StoreError::NotFound(id.to_owned()))
}

fn saturating_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn io_error(path: &Path, source: io::Error) -> StoreError {
    StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `path` with `suffix` appended to the file name (SQLite's `-wal`, `-shm`).
fn sidecar(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Gives an existing file or directory exactly `mode` (0600, 0700), whatever it had, with
/// a log line when that changes anything; a missing file is fine. A directory with the
/// sticky bit (shared on purpose, like /tmp) or owned by another user is left as it is,
/// with a warning: it is not ours to close.
fn make_private(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = match fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(io_error(path, source)),
    };
    let found = meta.permissions().mode() & 0o7777;
    if found == mode {
        return Ok(());
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let ours = meta.uid() == unsafe { libc::geteuid() };
    if meta.is_dir() && (found & 0o1000 != 0 || !ours) {
        warn!(
            path = %path.display(),
            mode = format_args!("{found:o}"),
            "the database's directory is shared; left as it is (the files in it are private)"
        );
        return Ok(());
    }
    warn!(
        path = %path.display(),
        from = format_args!("{found:o}"),
        to = format_args!("{mode:o}"),
        "making it private"
    );
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|source| io_error(path, source))
}
