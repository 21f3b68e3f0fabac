//! Bulk import of history: many messages written in one transaction, with the FTS index
//! built once at the end. `tandem-bench` fills its stores through it (its generator is
//! `bench::synthetic`), and it is the way in for an importer of another app's history.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use rusqlite::{TransactionBehavior, params};
use tracing::info;
use uuid::Uuid;

use super::codec::{channel_code, key_digest, request_code, status_code};
use super::{Result, Store, advance_conversation, conversation_id};
use crate::domain::{Channel, ChannelRequest, Direction, Status};

/// One message as an import gives it. Messages must come in the order they arrived
/// (the store orders by arrival) and their ids must be new.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportedMessage {
    pub id: Uuid,
    /// Normalised, as for every write of the store.
    pub peer: String,
    pub direction: Direction,
    pub status: Status,
    pub channel: Channel,
    pub timestamp_ms: i64,
    /// Incoming: read by the user (outgoing are always read).
    pub read: bool,
    pub text: String,
    /// Incoming: the idempotency key the message would have had on arrival.
    pub dedupe_key: Option<String>,
    /// Outgoing: the `SendMessage` idempotency token, if one was given.
    pub token: Option<String>,
    /// Outgoing SMS: a delivery report was asked for.
    pub delivery_report: bool,
    /// Outgoing SMS: the SMS centre's reference.
    pub sms_ref: Option<i64>,
    /// Why a failed message failed.
    pub error: Option<String>,
}

/// Page cache during an import, in KiB (negative: SQLite's unit for a size). The
/// random-order indexes (ids, dedupe and token digests) touch pages all over the file.
const IMPORT_CACHE_SIZE: i64 = -64 * 1024;

impl Store {
    /// The newest conversation activity stored, for an import that continues after it.
    pub fn newest_activity_ms(&self) -> Result<Option<i64>> {
        Ok(self
            .conn
            .query_row("SELECT max(last_ts) FROM conversations", [], |row| {
                row.get(0)
            })?)
    }

    /// Writes `messages` in one transaction (all or nothing) and returns how many.
    pub fn import(&mut self, messages: impl IntoIterator<Item = ImportedMessage>) -> Result<u64> {
        let cache_size: i64 = self
            .conn
            .pragma_query_value(None, "cache_size", |row| row.get(0))?;
        self.conn
            .pragma_update(None, "cache_size", IMPORT_CACHE_SIZE)?;
        let imported = self.import_in_one_transaction(messages.into_iter());
        self.conn.pragma_update(None, "cache_size", cache_size)?;
        let count = imported?;
        info!(count, "messages imported");
        Ok(count)
    }

    fn import_in_one_transaction(
        &mut self,
        messages: impl Iterator<Item = ImportedMessage>,
    ) -> Result<u64> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // The FTS insert trigger makes every INSERT a multi-write statement, whose
        // statement savepoint flushes FTS5's pending terms each time: a one-row segment
        // per message, and most of the import spent merging them. So the trigger is set
        // aside and the new bodies indexed in one statement at the end, all in this
        // transaction (DDL is transactional: a failure restores the trigger).
        let trigger: String = tx.query_row(
            "SELECT sql FROM sqlite_schema WHERE type = 'trigger' AND name = 'messages_fts_insert'",
            [],
            |row| row.get(0),
        )?;
        let indexed_up_to: i64 =
            tx.query_row("SELECT coalesce(max(seq), 0) FROM messages", [], |row| {
                row.get(0)
            })?;
        tx.execute_batch("DROP TRIGGER messages_fts_insert")?;
        // Per peer: (conversations.id, newest seq, its timestamp, unread added).
        let mut convs: HashMap<String, (i64, i64, i64, i64)> = HashMap::new();
        let mut count = 0;
        {
            let mut insert = tx.prepare(
                "INSERT INTO messages (uuid, conv, outgoing, status, channel, timestamp_ms, \
                 read, body, dedupe_hash, token_hash, requested, delivery_report, attempts, \
                 sms_ref, error) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
            )?;
            for m in messages {
                let entry = match convs.entry(m.peer) {
                    Entry::Occupied(entry) => entry.into_mut(),
                    Entry::Vacant(slot) => {
                        let conv = conversation_id(&tx, slot.key())?;
                        slot.insert((conv, 0, 0, 0))
                    }
                };
                let outgoing = m.direction == Direction::Outgoing;
                let unread = !outgoing && !m.read;
                insert.execute(params![
                    m.id.as_bytes(),
                    entry.0,
                    outgoing,
                    status_code(m.status),
                    channel_code(m.channel),
                    m.timestamp_ms,
                    !unread,
                    m.text,
                    m.dedupe_key.as_deref().map(key_digest),
                    m.token.as_deref().map(key_digest),
                    outgoing.then_some(request_code(ChannelRequest::Auto)),
                    outgoing.then_some(m.delivery_report),
                    outgoing.then_some(1),
                    m.sms_ref,
                    m.error,
                ])?;
                entry.1 = tx.last_insert_rowid();
                entry.2 = m.timestamp_ms;
                entry.3 += i64::from(unread);
                count += 1;
            }
        }
        for &(conv, seq, ts, unread) in convs.values() {
            advance_conversation(&tx, conv, seq, ts, unread)?;
        }
        tx.execute(
            "INSERT INTO messages_fts (rowid, body) SELECT seq, body FROM messages WHERE seq > ?1",
            [indexed_up_to],
        )?;
        tx.execute_batch(&trigger)?;
        tx.commit()?;
        Ok(count)
    }
}
