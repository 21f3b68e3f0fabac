//! server::db: the relay's SQLite storage ([`Storage`]), and the only SQL of the relay.
//!
//! Owns the schema (applied by `PRAGMA user_version`), the accounts (number and the
//! SHA-256 of its device token), the pending registration codes (hashed), and the
//! messages: queued ones with their text, settled ones as the `(sender, id)` dedupe
//! memory without their text, and the receipts still owed to offline senders.
//!
//! Must not: decide anything (the hub's core does), hold a token or a code in clear, or be
//! called from async code: only the hub's thread owns a [`Db`]. Times are ms since the
//! Unix epoch, passed in by the caller so the rules stay testable.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use tracing::warn;

use super::storage::{CodeRow, ExpiredMsg, MsgRow, MsgState, OwedReceipt, Queued, Storage};

/// The schema, version by version; `user_version` counts the ones applied.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE accounts (
    number        TEXT PRIMARY KEY,
    token_hash    BLOB NOT NULL,
    registered_ms INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE codes (
    number     TEXT PRIMARY KEY,
    code_hash  BLOB NOT NULL,
    sent_ms    INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;

-- One row per accepted message. `seq` is the queue order (AUTOINCREMENT: never
-- reused, so a connection's delivery cursor stays valid across purges).
-- state: 0 pending, 1 delivered, 2 revoked, 3 expired. `body` is NULL once settled.
CREATE TABLE messages (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    sender          TEXT NOT NULL,
    id              TEXT NOT NULL,
    recipient       TEXT NOT NULL,
    body            TEXT,
    ts              INTEGER NOT NULL,
    accepted_ms     INTEGER NOT NULL,
    state           INTEGER NOT NULL DEFAULT 0,
    settled_ms      INTEGER,
    receipt_pending INTEGER NOT NULL DEFAULT 0,
    UNIQUE (sender, id)
);
CREATE INDEX messages_pending ON messages (recipient, seq) WHERE state = 0;
CREATE INDEX messages_receipts ON messages (sender, seq) WHERE receipt_pending = 1;
CREATE INDEX messages_accepted ON messages (accepted_ms);
"#];

/// The queue of one recipient, in order. Written so that SQLite never compiles it again:
/// with a bare `recipient = ?1` (matched against a partial index, with `ORDER BY`) or a
/// `LIMIT ?`, SQLite lets the bound values shape the plan and expires the statement at
/// every new binding: re-preparing it was a third of the hub's time. `CAST` keeps the
/// same plan (the partial index, `recipient=? AND seq>?`); the caller stops reading
/// after its limit instead of binding one.
const PENDING_AFTER: &str = "SELECT seq, sender, id, body, ts, accepted_ms FROM messages
     WHERE recipient = CAST(?1 AS TEXT) AND state = 0 AND seq > ?2 ORDER BY seq";

/// The receipts owed to one sender, oldest first (written as [`PENDING_AFTER`] is).
const OWED_RECEIPTS: &str = "SELECT seq, id, recipient, state, settled_ms FROM messages
     WHERE sender = CAST(?1 AS TEXT) AND receipt_pending = 1 ORDER BY seq";

/// Prepared statements kept: more than this module has, so none is ever re-parsed.
const STATEMENT_CACHE: usize = 40;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("relay database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the relay database has schema version {found}, newer than this relay knows ({known})")]
    TooNew { found: i64, known: i64 },
    #[error("the relay database has a transaction open that was never committed")]
    NotCommitted,
    #[error("cannot create or open {path:?}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

pub(super) type Result<T> = std::result::Result<T, DbError>;

/// `messages.state` of each [`MsgState`].
fn state_code(state: MsgState) -> i64 {
    match state {
        MsgState::Pending => 0,
        MsgState::Delivered => 1,
        MsgState::Revoked => 2,
        MsgState::Expired => 3,
    }
}

fn state_from_code(code: i64) -> MsgState {
    match code {
        0 => MsgState::Pending,
        1 => MsgState::Delivered,
        2 => MsgState::Revoked,
        // Only this module writes the column; 3 is the only other value it writes.
        _ => MsgState::Expired,
    }
}

/// Creates `path` mode 0600 if it is missing, and makes it and its -wal and -shm 0600
/// if they exist with a wider mode.
fn private_files(path: &Path) -> Result<()> {
    let io_error = |path: &Path| {
        let path = path.to_owned();
        move |source| DbError::Io { path, source }
    };
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(io_error(path))?;
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let file = PathBuf::from(name);
        let mode = match fs::metadata(&file) {
            Ok(meta) => meta.permissions().mode(),
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(io_error(&file)(err)),
        };
        if mode & 0o077 != 0 {
            warn!(path = %file.display(), mode = format_args!("{:o}", mode & 0o777), "making the relay database private (0600)");
            fs::set_permissions(&file, fs::Permissions::from_mode(0o600))
                .map_err(io_error(&file))?;
        }
    }
    Ok(())
}

pub(super) struct Db {
    conn: Connection,
}

impl Db {
    /// Opens (creating if needed) the database at `path`, or an in-memory one. The file
    /// holds message texts until they settle: it is created mode 0600 (SQLite gives
    /// -wal and -shm the mode of the database file), and an existing one, or its -wal
    /// or -shm, readable by others is made 0600.
    pub(super) fn open(path: Option<&Path>) -> Result<Db> {
        let conn = match path {
            Some(path) => {
                private_files(path)?;
                Connection::open(path)?
            }
            None => Connection::open_in_memory()?,
        };
        // WAL + FULL: an `ack` says a message is stored, so the commit must be durable
        // before the ack leaves.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // Every statement of this module stays prepared (rusqlite's default keeps 16).
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let mut db = Db { conn };
        db.migrate()?;
        Ok(db)
    }

    fn migrate(&mut self) -> Result<()> {
        let known = MIGRATIONS.len() as i64;
        let found: i64 = self
            .conn
            .pragma_query_value(None, "user_version", |row| row.get(0))?;
        if found > known {
            return Err(DbError::TooNew { found, known });
        }
        for (index, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let tx = self.conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.pragma_update(None, "user_version", index as i64 + 1)?;
            tx.commit()?;
        }
        Ok(())
    }
}

impl Storage for Db {
    // Group commit: the hub runs every request it has waiting in one transaction and
    // answers none of them before `commit` returned.

    /// Starts the transaction of a group of requests.
    fn begin(&self) -> Result<()> {
        self.conn.prepare_cached("BEGIN")?.execute([])?;
        Ok(())
    }

    /// Commits the group's transaction: durable when this returns Ok (WAL, FULL).
    fn commit(&self) -> Result<()> {
        self.conn.prepare_cached("COMMIT")?.execute([])?;
        Ok(())
    }

    /// A transaction is open: statements are not durable until a `commit`.
    fn in_transaction(&self) -> bool {
        !self.conn.is_autocommit()
    }

    /// Abandons the group's transaction after a failed commit (if it is still open).
    fn rollback(&self) -> Result<()> {
        if !self.conn.is_autocommit() {
            self.conn.prepare_cached("ROLLBACK")?.execute([])?;
        }
        Ok(())
    }

    // Accounts.

    /// The token hash of `number`, if it is registered.
    fn token_hash(&self, number: &str) -> Result<Option<Vec<u8>>> {
        Ok(self
            .conn
            .prepare_cached("SELECT token_hash FROM accounts WHERE number = ?1")?
            .query_row([number], |row| row.get(0))
            .optional()?)
    }

    /// Gives `number` a new token (replacing any old one) and drops its pending code,
    /// in one transaction.
    fn set_account(&mut self, number: &str, token_hash: &[u8], now: i64) -> Result<()> {
        // A savepoint, not a transaction: the hub may already have one open.
        let tx = self.conn.savepoint()?;
        tx.prepare_cached(
            "INSERT INTO accounts (number, token_hash, registered_ms) VALUES (?1, ?2, ?3)
             ON CONFLICT (number) DO UPDATE SET token_hash = ?2, registered_ms = ?3",
        )?
        .execute(params![number, token_hash, now])?;
        tx.prepare_cached("DELETE FROM codes WHERE number = ?1")?
            .execute([number])?;
        tx.commit()?;
        Ok(())
    }

    /// Registers `number` only if it holds no token yet; false if it does.
    fn create_account(&mut self, number: &str, token_hash: &[u8], now: i64) -> Result<bool> {
        let inserted = self
            .conn
            .prepare_cached(
                "INSERT INTO accounts (number, token_hash, registered_ms) VALUES (?1, ?2, ?3)
                 ON CONFLICT (number) DO NOTHING",
            )?
            .execute(params![number, token_hash, now])?;
        Ok(inserted == 1)
    }

    // Codes.

    fn code(&self, number: &str) -> Result<Option<CodeRow>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT code_hash, sent_ms, expires_ms, attempts FROM codes WHERE number = ?1",
            )?
            .query_row([number], |row| {
                Ok(CodeRow {
                    code_hash: row.get(0)?,
                    sent_ms: row.get(1)?,
                    expires_ms: row.get(2)?,
                    attempts: row.get(3)?,
                })
            })
            .optional()?)
    }

    /// Stores a new code for `number`, replacing any earlier one (and its attempts).
    fn put_code(&self, number: &str, code_hash: &[u8], now: i64, expires: i64) -> Result<()> {
        self.conn
            .prepare_cached(
                "INSERT INTO codes (number, code_hash, sent_ms, expires_ms, attempts)
                 VALUES (?1, ?2, ?3, ?4, 0)
                 ON CONFLICT (number) DO UPDATE
                 SET code_hash = ?2, sent_ms = ?3, expires_ms = ?4, attempts = 0",
            )?
            .execute(params![number, code_hash, now, expires])?;
        Ok(())
    }

    /// Counts one wrong try; returns the tries made so far.
    fn count_attempt(&self, number: &str) -> Result<u32> {
        Ok(self
            .conn
            .prepare_cached(
                "UPDATE codes SET attempts = attempts + 1 WHERE number = ?1 RETURNING attempts",
            )?
            .query_row([number], |row| row.get(0))?)
    }

    fn delete_code(&self, number: &str) -> Result<()> {
        self.conn
            .prepare_cached("DELETE FROM codes WHERE number = ?1")?
            .execute([number])?;
        Ok(())
    }

    // Messages.

    fn message(&self, sender: &str, id: &str) -> Result<Option<MsgRow>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT seq, recipient, state FROM messages WHERE sender = ?1 AND id = ?2",
            )?
            .query_row([sender, id], |row| {
                Ok(MsgRow {
                    seq: row.get(0)?,
                    sender: sender.to_owned(),
                    recipient: row.get(1)?,
                    state: state_from_code(row.get(2)?),
                })
            })
            .optional()?)
    }

    /// Undelivered messages waiting for `recipient`.
    fn pending_count(&self, recipient: &str) -> Result<u32> {
        Ok(self
            .conn
            .prepare_cached("SELECT count(*) FROM messages WHERE recipient = ?1 AND state = 0")?
            .query_row([recipient], |row| row.get(0))?)
    }

    /// Stores an accepted message; returns its queue position.
    fn insert_message(
        &self,
        sender: &str,
        id: &str,
        recipient: &str,
        text: &str,
        ts: i64,
        now: i64,
    ) -> Result<i64> {
        Ok(self
            .conn
            .prepare_cached(
                "INSERT INTO messages (sender, id, recipient, body, ts, accepted_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) RETURNING seq",
            )?
            .query_row(params![sender, id, recipient, text, ts, now], |row| {
                row.get(0)
            })?)
    }

    /// Up to `limit` pending messages for `recipient` after queue position `after`.
    fn pending_after(&self, recipient: &str, after: i64, limit: u32) -> Result<Vec<Queued>> {
        let mut stmt = self.conn.prepare_cached(PENDING_AFTER)?;
        let rows = stmt.query_map(params![recipient, after], |row| {
            Ok(Queued {
                seq: row.get(0)?,
                sender: row.get(1)?,
                id: row.get(2)?,
                text: row.get::<_, Option<String>>(3)?.unwrap_or_default(),
                ts: row.get(4)?,
                accepted_ms: row.get(5)?,
            })
        })?;
        Ok(rows.take(limit as usize).collect::<rusqlite::Result<_>>()?)
    }

    /// Moves a *pending* message to `state` (dropping its text), owing the sender a
    /// receipt when `receipt` is set. Returns false if it was no longer pending: this
    /// compare-and-set is what makes `revoke` and the recipient's `ack` exclusive.
    fn settle(&self, seq: i64, state: MsgState, receipt: bool, now: i64) -> Result<bool> {
        let changed = self
            .conn
            .prepare_cached(
                "UPDATE messages SET state = ?2, body = NULL, settled_ms = ?3, receipt_pending = ?4
                 WHERE seq = ?1 AND state = 0",
            )?
            .execute(params![seq, state_code(state), now, receipt])?;
        Ok(changed == 1)
    }

    /// The first `limit` receipts owed to `sender`, oldest first.
    fn owed_receipts(&self, sender: &str, limit: usize) -> Result<Vec<OwedReceipt>> {
        let mut stmt = self.conn.prepare_cached(OWED_RECEIPTS)?;
        let rows = stmt.query_map([sender], |row| {
            Ok(OwedReceipt {
                seq: row.get(0)?,
                id: row.get(1)?,
                recipient: row.get(2)?,
                state: state_from_code(row.get(3)?),
                settled_ms: row.get::<_, Option<i64>>(4)?.unwrap_or_default(),
            })
        })?;
        // No `LIMIT ?` (see `PENDING_AFTER`).
        Ok(rows.take(limit).collect::<rusqlite::Result<_>>()?)
    }

    /// The receipt for `seq` reached its sender.
    fn receipt_sent(&self, seq: i64) -> Result<()> {
        self.conn
            .prepare_cached("UPDATE messages SET receipt_pending = 0 WHERE seq = ?1")?
            .execute([seq])?;
        Ok(())
    }

    /// Expires every pending message accepted before `cutoff`, owing each sender a
    /// receipt; returns them.
    fn expire_before(&mut self, cutoff: i64, now: i64) -> Result<Vec<ExpiredMsg>> {
        // A savepoint, not a transaction: the hub may already have one open.
        let tx = self.conn.savepoint()?;
        let expired = {
            let mut stmt = tx.prepare_cached(
                "UPDATE messages
                 SET state = 3, body = NULL, settled_ms = ?2, receipt_pending = 1
                 WHERE state = 0 AND accepted_ms < ?1
                 RETURNING seq, sender, id, recipient",
            )?;
            let rows = stmt.query_map(params![cutoff, now], |row| {
                Ok(ExpiredMsg {
                    seq: row.get(0)?,
                    sender: row.get(1)?,
                    id: row.get(2)?,
                    recipient: row.get(3)?,
                })
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        tx.commit()?;
        Ok(expired)
    }

    /// Forgets settled messages accepted before `messages_before` (the end of the dedupe
    /// memory, receipts still owed included) and codes that expired before
    /// `codes_before`. Returns the number of messages forgotten.
    fn purge(&self, messages_before: i64, codes_before: i64) -> Result<usize> {
        let forgotten = self
            .conn
            .prepare_cached("DELETE FROM messages WHERE state <> 0 AND accepted_ms < ?1")?
            .execute([messages_before])?;
        self.conn
            .prepare_cached("DELETE FROM codes WHERE expires_ms < ?1")?
            .execute([codes_before])?;
        Ok(forgotten)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Db {
        Db::open(None).expect("open")
    }

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn the_files_are_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Whatever the umask lets SQLite create, the database and its WAL are 0600.
        let new = dir.path().join("new.db");
        let db = Db::open(Some(&new)).expect("open");
        db.begin().unwrap();
        db.conn
            .execute("INSERT INTO accounts VALUES ('+1555', x'00', 1)", [])
            .unwrap();
        db.commit().unwrap();
        for suffix in ["", "-wal", "-shm"] {
            let file = PathBuf::from(format!("{}{suffix}", new.display()));
            assert_eq!(mode(&file), 0o600, "{file:?}");
        }
        drop(db);

        // Files found readable by others are made private at start.
        let old = dir.path().join("old.db");
        drop(Db::open(Some(&old)).expect("create"));
        let wal = dir.path().join("old.db-wal");
        fs::write(&wal, b"").expect("write");
        for file in [&old, &wal] {
            fs::set_permissions(file, fs::Permissions::from_mode(0o644)).expect("chmod");
        }
        let db = Db::open(Some(&old)).expect("reopen");
        assert!(!db.is_registered("+1555").unwrap());
        for file in [&old, &wal] {
            assert_eq!(mode(file), 0o600, "{file:?}");
        }
    }

    #[test]
    fn accounts_and_codes() {
        let mut db = db();
        assert!(!db.is_registered("+1555").unwrap());
        assert!(db.create_account("+1555", b"h1", 1).unwrap());
        assert!(
            !db.create_account("+1555", b"h2", 2).unwrap(),
            "no takeover"
        );
        assert_eq!(db.token_hash("+1555").unwrap().as_deref(), Some(&b"h1"[..]));
        db.put_code("+1555", b"c", 10, 20).unwrap();
        assert_eq!(db.count_attempt("+1555").unwrap(), 1);
        assert_eq!(db.count_attempt("+1555").unwrap(), 2);
        db.put_code("+1555", b"d", 11, 21).unwrap();
        let code = db.code("+1555").unwrap().expect("code");
        assert_eq!((code.attempts, code.sent_ms), (0, 11));
        db.set_account("+1555", b"h3", 3).unwrap();
        assert_eq!(db.token_hash("+1555").unwrap().as_deref(), Some(&b"h3"[..]));
        assert_eq!(db.code("+1555").unwrap(), None, "a used code is gone");
    }

    #[test]
    fn a_group_is_one_transaction_with_savepoints_inside() {
        let mut db = db();
        assert!(!db.in_transaction());
        db.begin().unwrap();
        assert!(db.in_transaction());
        db.insert_message("+1", "g", "+2", "G", 0, 100).unwrap();
        // The multi-statement writes use savepoints, so they work inside a group.
        db.set_account("+2", b"h", 1).unwrap();
        assert_eq!(db.expire_before(50, 200).unwrap().len(), 0);
        db.rollback().unwrap();
        assert_eq!(db.message("+1", "g").unwrap(), None, "rolled back");
        assert!(!db.is_registered("+2").unwrap());
        db.begin().unwrap();
        db.insert_message("+1", "g", "+2", "G", 0, 100).unwrap();
        db.commit().unwrap();
        assert!(!db.in_transaction());
        assert!(db.message("+1", "g").unwrap().is_some(), "committed");
        // Without an open transaction a rollback is a no-op, and a commit fails.
        db.rollback().unwrap();
        assert!(db.commit().is_err());
    }

    #[test]
    fn queue_reads_are_never_compiled_again() {
        let db = db();
        for n in 0..4 {
            let id = format!("m{n}");
            let seq = db.insert_message("+1", &id, "+2", "x", 0, 100).unwrap();
            db.settle(seq, MsgState::Delivered, n % 2 == 0, 110)
                .unwrap();
            db.insert_message("+3", &id, "+4", "y", 0, 100).unwrap();
        }
        for n in 0..6 {
            let recipient = if n % 2 == 0 { "+2" } else { "+4" };
            db.pending_after(recipient, n, 1 + n as u32).unwrap();
            db.owed_receipts(if n % 2 == 0 { "+1" } else { "+3" }, 2)
                .unwrap();
        }
        for sql in [PENDING_AFTER, OWED_RECEIPTS] {
            let stmt = db.conn.prepare_cached(sql).unwrap();
            let reprepared = stmt.get_status(rusqlite::StatementStatus::RePrepare);
            assert_eq!(reprepared, 0, "{sql}");
        }
    }

    #[test]
    fn settle_is_a_compare_and_set() {
        let db = db();
        let seq = db.insert_message("+1", "m", "+2", "hi", 5, 100).unwrap();
        assert!(
            db.insert_message("+1", "m", "+3", "x", 5, 100).is_err(),
            "unique"
        );
        assert_eq!(db.pending_count("+2").unwrap(), 1);
        assert!(db.settle(seq, MsgState::Revoked, false, 110).unwrap());
        assert!(!db.settle(seq, MsgState::Delivered, true, 120).unwrap());
        let row = db.message("+1", "m").unwrap().expect("row");
        assert_eq!(row.state, MsgState::Revoked);
        assert_eq!(db.pending_count("+2").unwrap(), 0);
        assert!(db.owed_receipts("+1", 10).unwrap().is_empty());
    }

    #[test]
    fn queue_order_expiry_and_purge() {
        let mut db = db();
        let a = db.insert_message("+1", "a", "+2", "A", 0, 100).unwrap();
        let b = db.insert_message("+3", "b", "+2", "B", 0, 200).unwrap();
        let queued = db.pending_after("+2", 0, 10).unwrap();
        assert_eq!(queued.iter().map(|q| q.seq).collect::<Vec<_>>(), [a, b]);
        assert_eq!(db.pending_after("+2", a, 10).unwrap()[0].text, "B");
        assert_eq!(db.pending_after("+2", 0, 1).unwrap().len(), 1);

        let expired = db.expire_before(150, 300).unwrap();
        assert_eq!(expired.len(), 1);
        assert_eq!(
            (expired[0].sender.as_str(), expired[0].id.as_str()),
            ("+1", "a")
        );
        let owed = db.owed_receipts("+1", 10).unwrap();
        assert_eq!(
            (owed[0].state, owed[0].settled_ms),
            (MsgState::Expired, 300)
        );
        db.receipt_sent(owed[0].seq).unwrap();
        assert!(db.owed_receipts("+1", 10).unwrap().is_empty());

        assert_eq!(db.purge(150, 0).unwrap(), 1, "settled and old");
        assert_eq!(db.message("+1", "a").unwrap(), None);
        assert_eq!(
            db.purge(1000, 0).unwrap(),
            0,
            "pending messages are never purged"
        );
        // AUTOINCREMENT: a purged seq is never handed out again.
        let c = db.insert_message("+1", "c", "+2", "C", 0, 400).unwrap();
        assert!(c > b);
    }
}
