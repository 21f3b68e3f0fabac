//! The store's part of sending an SMS exactly once: the ModemManager object recorded for
//! each attempt before it is sent, what ends an attempt, and the reliability counters
//! (schema: `data/migrations/0004_sms_send.sql`). Same rules as the rest of the store:
//! SQL only here, one transaction per change that touches more than one row.

use rusqlite::{OptionalExtension, Transaction, params};

use super::codec::{channel_code, status_code};
use super::{Result, Store, StoreError, all_rows, parse_id, uuid_from_row};
use crate::domain::{Channel, Message, Status};

/// The SMS object recorded for an outgoing message's current attempt: `Sms.Send` may have
/// been called on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmsAttempt {
    /// The message's id.
    pub id: String,
    /// Unique bus name of the ModemManager instance that made the object.
    pub owner: String,
    pub modem: String,
    pub path: String,
    /// When it was recorded, ms since the epoch.
    pub since_ms: i64,
    /// How long ModemManager may take to send it, ms.
    pub budget_ms: i64,
}

/// The message's `seq` when it is an outgoing message still in the outbox.
const OUTBOX_SEQ: &str =
    "SELECT seq FROM messages WHERE uuid = ?1 AND outgoing = 1 AND status IN (0, 1)";
const ATTEMPTS: &str = "SELECT m.uuid, a.owner, a.modem, a.path, a.since_ms, a.budget_ms \
     FROM sms_attempt a JOIN messages m ON m.seq = a.msg ORDER BY a.msg";
const DELETE_ATTEMPT: &str = "DELETE FROM sms_attempt \
     WHERE msg = (SELECT seq FROM messages WHERE uuid = ?1) \
     RETURNING owner, modem, path, since_ms, budget_ms";

/// An SMS object of ours to remove from the modem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmsCleanup {
    pub owner: String,
    pub modem: String,
    pub path: String,
}

/// Deletes the attempt record of message `id` inside `tx` and returns it; with `cleanup`,
/// its object is kept in `sms_cleanup` until removed from the modem.
fn take_attempt(
    tx: &Transaction,
    id: &str,
    uuid: &[u8; 16],
    cleanup: bool,
) -> Result<Option<SmsAttempt>> {
    let attempt = tx
        .prepare_cached(DELETE_ATTEMPT)?
        .query_row([uuid], |row| {
            Ok(SmsAttempt {
                id: id.to_owned(),
                owner: row.get(0)?,
                modem: row.get(1)?,
                path: row.get(2)?,
                since_ms: row.get(3)?,
                budget_ms: row.get(4)?,
            })
        })
        .optional()?;
    if let (Some(a), true) = (&attempt, cleanup) {
        add_cleanup(tx, &a.owner, &a.modem, &a.path)?;
    }
    Ok(attempt)
}

fn add_cleanup(tx: &Transaction, owner: &str, modem: &str, path: &str) -> Result<()> {
    tx.prepare_cached(
        "INSERT OR IGNORE INTO sms_cleanup (owner, modem, path) VALUES (?1, ?2, ?3)",
    )?
    .execute(params![owner, modem, path])?;
    Ok(())
}

impl Store {
    /// Records the object made for `attempt.id` and marks the message `sending`, in one
    /// durable commit: after it, a crash leaves a record that `Sms.Send` may have been
    /// called. NotFound when the message is gone or no longer in the outbox (deleted or
    /// failed meanwhile): then it must not be sent.
    pub fn record_sms_attempt(&mut self, attempt: &SmsAttempt) -> Result<Message> {
        let uuid = parse_id(&attempt.id)?;
        let tx = self.write()?;
        let seq: i64 = tx
            .prepare_cached(OUTBOX_SEQ)?
            .query_row([&uuid], |row| row.get(0))
            .optional()?
            .ok_or_else(|| StoreError::NotFound(attempt.id.clone()))?;
        tx.prepare_cached(
            "INSERT OR REPLACE INTO sms_attempt (msg, owner, modem, path, since_ms, budget_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )?
        .execute(params![
            seq,
            attempt.owner,
            attempt.modem,
            attempt.path,
            attempt.since_ms,
            attempt.budget_ms
        ])?;
        tx.prepare_cached("UPDATE messages SET status = ?2, error = NULL WHERE seq = ?1")?
            .execute(params![seq, status_code(Status::Sending)])?;
        tx.commit()?;
        self.get_message(&attempt.id)
    }

    /// Every recorded attempt, oldest message first.
    pub fn sms_attempts(&self) -> Result<Vec<SmsAttempt>> {
        all_rows(&self.conn, ATTEMPTS, [], |row| {
            Ok(SmsAttempt {
                id: uuid_from_row(row, 0)?,
                owner: row.get(1)?,
                modem: row.get(2)?,
                path: row.get(3)?,
                since_ms: row.get(4)?,
                budget_ms: row.get(5)?,
            })
        })
    }

    /// The attempt went out as SMS: status Sent, channel SMS, the message reference the SMS
    /// centre gave (`None`: unknown), and its record gone (its object kept for removal
    /// with `cleanup`), in one transaction. Returns the message and the record.
    pub fn mark_sent_sms(
        &mut self,
        id: &str,
        reference: Option<u32>,
        cleanup: bool,
    ) -> Result<(Message, Option<SmsAttempt>)> {
        let uuid = parse_id(id)?;
        let tx = self.write()?;
        let attempt = take_attempt(&tx, id, &uuid, cleanup)?;
        let changed = tx
            .prepare_cached(
                "UPDATE messages SET status = ?2, channel = ?3, sms_ref = ?4, error = NULL \
                 WHERE uuid = ?1",
            )?
            .execute(params![
                uuid,
                status_code(Status::Sent),
                channel_code(Channel::Sms),
                reference
            ])?;
        if changed == 0 {
            return Err(StoreError::NotFound(id.to_owned()));
        }
        tx.commit()?;
        Ok((self.get_message(id)?, attempt))
    }

    /// The attempt ended without sending: its record goes (its object kept for removal),
    /// and the message takes `status` (Queued again, or Failed with `error`); with
    /// `attempts`, the count of attempts and when the next is due are recorded too. One
    /// transaction. Returns the message and the record it had, if any.
    pub fn end_sms_attempt(
        &mut self,
        id: &str,
        status: Status,
        error: Option<&str>,
        attempts: Option<(u32, i64)>,
    ) -> Result<(Message, Option<SmsAttempt>)> {
        let uuid = parse_id(id)?;
        let tx = self.write()?;
        let attempt = take_attempt(&tx, id, &uuid, true)?;
        let error = if status == Status::Failed {
            error
        } else {
            None
        };
        let changed = tx
            .prepare_cached("UPDATE messages SET status = ?2, error = ?3 WHERE uuid = ?1")?
            .execute(params![uuid, status_code(status), error])?;
        if changed == 0 {
            return Err(StoreError::NotFound(id.to_owned()));
        }
        if let Some((attempts, next_attempt_ms)) = attempts {
            tx.prepare_cached(
                "UPDATE messages SET attempts = ?2, next_attempt_ms = ?3 WHERE uuid = ?1",
            )?
            .execute(params![uuid, attempts, next_attempt_ms])?;
        }
        tx.commit()?;
        Ok((self.get_message(id)?, attempt))
    }

    /// Keeps an object of ours for removal (one made for a message deleted meanwhile).
    pub fn add_sms_cleanup(&mut self, owner: &str, modem: &str, path: &str) -> Result<()> {
        let tx = self.write()?;
        add_cleanup(&tx, owner, modem, path)?;
        tx.commit()?;
        Ok(())
    }

    /// Every object waiting to be removed from the modem.
    pub fn sms_cleanups(&self) -> Result<Vec<SmsCleanup>> {
        all_rows(
            &self.conn,
            "SELECT owner, modem, path FROM sms_cleanup",
            [],
            |row| {
                Ok(SmsCleanup {
                    owner: row.get(0)?,
                    modem: row.get(1)?,
                    path: row.get(2)?,
                })
            },
        )
    }

    /// The object is off the modem (or gone with its ModemManager).
    pub fn sms_cleaned(&mut self, owner: &str, path: &str) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM sms_cleanup WHERE owner = ?1 AND path = ?2")?
            .execute([owner, path])?;
        Ok(())
    }

    /// Whether an unsent object is an orphan of ours: neither recorded for an attempt nor
    /// waiting for removal, and carrying the number and text of one of our outgoing
    /// messages (in the outbox or already sent by a later attempt).
    pub fn is_orphan_draft(&self, owner: &str, path: &str, peer: &str, text: &str) -> Result<bool> {
        let known = self
            .conn
            .prepare_cached(
                "SELECT 1 FROM sms_attempt WHERE owner = ?1 AND path = ?2 \
                 UNION ALL SELECT 1 FROM sms_cleanup WHERE owner = ?1 AND path = ?2",
            )?
            .exists([owner, path])?;
        if known {
            return Ok(false);
        }
        Ok(self
            .conn
            .prepare_cached(
                "SELECT 1 FROM messages m JOIN conversations c ON c.id = m.conv \
                 WHERE c.peer = ?1 AND m.outgoing = 1 AND m.body = ?2 LIMIT 1",
            )?
            .exists([peer, text])?)
    }

    /// Adds one to the counter `name`.
    pub fn count(&mut self, name: &str) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO counters (name, value) VALUES (?1, 1) \
                 ON CONFLICT (name) DO UPDATE SET value = value + 1",
            )?
            .execute([name])?;
        Ok(())
    }

    /// Every counter, by name.
    pub fn counters(&self) -> Result<Vec<(String, u64)>> {
        all_rows(
            &self.conn,
            "SELECT name, value FROM counters ORDER BY name",
            [],
            |row| Ok((row.get(0)?, row.get::<_, i64>(1)?.max(0) as u64)),
        )
    }
}
