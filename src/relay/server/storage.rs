//! server::storage: what the hub keeps durably, as a trait, and the records it reads.
//!
//! The hub's core ([`super::hub`]) decides; a [`Storage`] only keeps: accounts (a number
//! and the hash of its device token), pending registration codes (hashed) and their
//! tries, and the messages: queued ones with their text, settled ones as the
//! `(sender, id)` dedupe memory, and the receipts still owed to their senders. The
//! SQLite storage ([`super::db::Db`]) is the one the relay runs on; the trait is the seam
//! another (Redis, several relay nodes) plugs into.
//!
//! What a storage must guarantee, whatever it is built on:
//! - group commit: every write between [`Storage::begin`] and [`Storage::commit`] is
//!   durable when `commit` returns Ok, and none of it is when it fails; the hub
//!   releases no answer of the group before `commit` returned;
//! - [`Storage::settle`] is one atomic compare-and-set (pending → settled): it is what
//!   makes a recipient's `ack` and the sender's `revoke` of one message exclusive;
//! - [`Storage::set_account`] and [`Storage::expire_before`] are each one atomic step;
//! - a message's queue position (`seq`) grows with acceptance per recipient and is never
//!   reused, so a delivery cursor stays valid across purges.
//!
//! Times are ms since the Unix epoch, always passed in by the caller.
//!
//! Must not: decide anything (the core does), or hold a token or a code in clear.

pub(super) use super::db::DbError;

/// What every storage call returns.
pub(super) type Result<T> = std::result::Result<T, DbError>;

/// Where a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MsgState {
    Pending,
    Delivered,
    Revoked,
    Expired,
}

/// A pending registration code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CodeRow {
    pub code_hash: Vec<u8>,
    pub sent_ms: i64,
    pub expires_ms: i64,
    pub attempts: u32,
}

/// What the dedupe memory knows of `(sender, id)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MsgRow {
    pub seq: i64,
    pub sender: String,
    pub recipient: String,
    pub state: MsgState,
}

/// A queued message, as delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Queued {
    pub seq: i64,
    pub sender: String,
    pub id: String,
    pub text: String,
    pub ts: i64,
    pub accepted_ms: i64,
}

/// A receipt owed to a sender.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct OwedReceipt {
    pub seq: i64,
    pub id: String,
    pub recipient: String,
    pub state: MsgState,
    pub settled_ms: i64,
}

/// A message that expired in a sweep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ExpiredMsg {
    pub seq: i64,
    pub sender: String,
    pub id: String,
    pub recipient: String,
}

/// The relay's durable state, as the hub's core uses it.
pub(super) trait Storage {
    // Group commit.

    /// Starts a group: what follows is durable only after [`Storage::commit`].
    fn begin(&self) -> Result<()>;
    /// Ends the group: everything in it is durable when this returns Ok.
    fn commit(&self) -> Result<()>;
    /// A group is open (its writes are not durable yet).
    fn in_transaction(&self) -> bool;
    /// Abandons the open group, if any, after a failed commit.
    fn rollback(&self) -> Result<()>;

    // Accounts.

    /// The token hash of `number`, if it is registered.
    fn token_hash(&self, number: &str) -> Result<Option<Vec<u8>>>;
    fn is_registered(&self, number: &str) -> Result<bool> {
        Ok(self.token_hash(number)?.is_some())
    }
    /// Gives `number` a new token (replacing any old one) and drops its pending code,
    /// in one atomic step.
    fn set_account(&mut self, number: &str, token_hash: &[u8], now: i64) -> Result<()>;
    /// Registers `number` only if it holds no token yet; false if it does.
    fn create_account(&mut self, number: &str, token_hash: &[u8], now: i64) -> Result<bool>;

    // Codes.

    fn code(&self, number: &str) -> Result<Option<CodeRow>>;
    /// Stores a new code for `number`, replacing any earlier one (and its tries).
    fn put_code(&self, number: &str, code_hash: &[u8], now: i64, expires: i64) -> Result<()>;
    /// Counts one wrong try; returns the tries made so far.
    fn count_attempt(&self, number: &str) -> Result<u32>;
    fn delete_code(&self, number: &str) -> Result<()>;

    // Messages.

    /// What is known of `(sender, id)`: queued, or settled and still remembered.
    fn message(&self, sender: &str, id: &str) -> Result<Option<MsgRow>>;
    /// Undelivered messages waiting for `recipient`.
    fn pending_count(&self, recipient: &str) -> Result<u32>;
    /// Stores an accepted message; returns its queue position.
    fn insert_message(
        &self,
        sender: &str,
        id: &str,
        recipient: &str,
        text: &str,
        ts: i64,
        now: i64,
    ) -> Result<i64>;
    /// Up to `limit` pending messages for `recipient` after queue position `after`.
    fn pending_after(&self, recipient: &str, after: i64, limit: u32) -> Result<Vec<Queued>>;
    /// Moves a *pending* message to `state` (dropping its text), owing the sender a
    /// receipt when `receipt` is set. Returns false if it was no longer pending: this
    /// compare-and-set is what makes `revoke` and the recipient's `ack` exclusive.
    fn settle(&self, seq: i64, state: MsgState, receipt: bool, now: i64) -> Result<bool>;
    /// The first `limit` receipts owed to `sender`, oldest first.
    fn owed_receipts(&self, sender: &str, limit: usize) -> Result<Vec<OwedReceipt>>;
    /// The receipt for `seq` reached its sender.
    fn receipt_sent(&self, seq: i64) -> Result<()>;
    /// Expires every pending message accepted before `cutoff`, owing each sender a
    /// receipt, in one atomic step; returns them.
    fn expire_before(&mut self, cutoff: i64, now: i64) -> Result<Vec<ExpiredMsg>>;
    /// Forgets settled messages accepted before `messages_before` (the end of the dedupe
    /// memory, receipts still owed included) and codes that expired before
    /// `codes_before`. Returns the number of messages forgotten.
    fn purge(&self, messages_before: i64, codes_before: i64) -> Result<usize>;
}
