//! hub::deliver: messages. `send` (checks, dedupe by id, quotas, the recipient's queue
//! bound), the recipient's delivery window and its pacing, `ack` and `revoke` (exactly
//! one of them settles a message), receipts (at once, or owed and paced), and the sweep
//! that expires old messages.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info};

use super::access::LIMIT_WARN_EVERY;
use super::core::{ConnId, Core, HubError, Link, RECEIPT_BATCH, Res, err, ms, not_e164, with_id};
use crate::relay::protocol::{
    ConfirmOutcome, ErrorCode, ErrorFrame, ReceiptOutcome, RevokeOutcome, SendState, ServerFrame,
    is_e164, is_message_id,
};
use crate::relay::server::RelayConfig;
use crate::relay::server::quota::{Bucket, Rate};
use crate::relay::server::storage::{MsgRow, MsgState, Storage};

/// A refusal decided with the storage's help: `Some` refuses, with this error.
type Refusal = Result<Option<ErrorFrame>, HubError>;

const BAD_ID: &str = "message ids are 1 to 64 bytes of [A-Za-z0-9._:-]";

/// Each sender's quotas of new messages and bytes of text per minute.
pub(super) struct SenderLimits {
    messages: Option<Rate>,
    bytes: Option<Rate>,
    /// Senders whose buckets are not full (the others are forgotten at the sweep).
    by_sender: HashMap<String, SenderQuota>,
}

struct SenderQuota {
    /// `None` where that kind has no limit.
    messages: Option<Bucket>,
    bytes: Option<Bucket>,
    /// A send was refused: every send before this is refused too, so that a later,
    /// smaller message cannot overtake the refused one (the client resends in order).
    blocked_until: Option<Instant>,
    /// When being over the quota was last logged.
    logged: Option<Instant>,
}

impl SenderLimits {
    pub(super) fn new(config: &RelayConfig) -> SenderLimits {
        let minute = Duration::from_secs(60);
        SenderLimits {
            messages: Rate::per(config.sender_messages_per_min.into(), minute),
            bytes: Rate::per(config.sender_bytes_per_min, minute),
            by_sender: HashMap::new(),
        }
    }

    /// How long `sender` must wait before a new message of `bytes` bytes of text is
    /// accepted, if it is over its quota now. O(1): one map lookup.
    fn over_quota(&mut self, sender: &str, bytes: usize, now: Instant) -> Option<Duration> {
        if self.messages.is_none() && self.bytes.is_none() {
            return None;
        }
        let quota = self.by_sender.get_mut(sender)?;
        if let Some(until) = quota.blocked_until.filter(|&until| until > now) {
            return Some(until - now);
        }
        let mut wait = Duration::ZERO;
        if let (Some(rate), Some(bucket)) = (self.messages, &mut quota.messages) {
            wait = wait.max(bucket.wait(rate, now, 1));
        }
        if let (Some(rate), Some(bucket)) = (self.bytes, &mut quota.bytes) {
            wait = wait.max(bucket.wait(rate, now, bytes as u64));
        }
        if wait.is_zero() {
            quota.blocked_until = None;
            return None;
        }
        quota.blocked_until = Some(now + wait);
        if quota
            .logged
            .is_none_or(|at| now.duration_since(at) >= LIMIT_WARN_EVERY)
        {
            quota.logged = Some(now);
            let wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
            info!(%sender, wait_ms, "sender over its quota: its sends are refused for now");
        }
        Some(wait)
    }

    /// Counts an accepted message of `bytes` bytes of text against `sender`'s quotas.
    fn charge(&mut self, sender: &str, bytes: usize, now: Instant) {
        let (message_rate, byte_rate) = (self.messages, self.bytes);
        if message_rate.is_none() && byte_rate.is_none() {
            return;
        }
        let quota = match self.by_sender.get_mut(sender) {
            Some(quota) => quota,
            None => self
                .by_sender
                .entry(sender.to_owned())
                .or_insert(SenderQuota {
                    messages: message_rate.map(|rate| Bucket::full(rate, now)),
                    bytes: byte_rate.map(|rate| Bucket::full(rate, now)),
                    blocked_until: None,
                    logged: None,
                }),
        };
        if let (Some(rate), Some(bucket)) = (message_rate, &mut quota.messages) {
            bucket.take(rate, now, 1);
        }
        if let (Some(rate), Some(bucket)) = (byte_rate, &mut quota.bytes) {
            bucket.take(rate, now, bytes as u64);
        }
    }

    /// Forgets the senders whose buckets are full (a new one would say the same).
    fn forget_full(&mut self, now: Instant) {
        let (messages, bytes) = (self.messages, self.bytes);
        let full = |bucket: &mut Option<Bucket>, rate: Option<Rate>| match (bucket, rate) {
            (Some(bucket), Some(rate)) => bucket.is_full(rate, now),
            _ => true,
        };
        self.by_sender.retain(|_, quota| {
            quota.blocked_until.is_some_and(|until| until > now)
                || !full(&mut quota.messages, messages)
                || !full(&mut quota.bytes, bytes)
        });
    }
}

impl<S: Storage, L: Link> Core<S, L> {
    /// Whether a receipt may be pushed to `conn` now: none owed before it, and its outbox
    /// below a batch.
    fn has_receipt_room(&self, conn: ConnId) -> bool {
        self.conns.contains_key(&conn)
            && !self.owed.contains(&conn)
            && self.link.queued(conn).0 < RECEIPT_BATCH
    }

    /// Sends `conn` the next batch of the receipts owed to its number, if its outbox
    /// has room; keeps it in `owed` while more remain.
    pub(super) fn send_owed(&mut self, conn: ConnId) -> Res {
        let Some(number) = self.number_of(conn) else {
            self.owed.remove(&conn);
            return Ok(());
        };
        if self.link.queued(conn).0 > RECEIPT_BATCH {
            // Still writing earlier frames: try again at the next pace.
            self.owed.insert(conn);
            return Ok(());
        }
        let mut receipts = self.store.owed_receipts(&number, RECEIPT_BATCH + 1)?;
        let more = receipts.len() > RECEIPT_BATCH;
        receipts.truncate(RECEIPT_BATCH);
        for receipt in receipts {
            let outcome = match receipt.state {
                MsgState::Delivered => ReceiptOutcome::Delivered,
                _ => ReceiptOutcome::Expired,
            };
            let frame = ServerFrame::Receipt {
                id: receipt.id,
                to: receipt.recipient,
                outcome,
                at: receipt.settled_ms,
            };
            self.send(conn, frame);
            self.store.receipt_sent(receipt.seq)?;
        }
        if more {
            self.owed.insert(conn);
        } else {
            self.owed.remove(&conn);
        }
        Ok(())
    }

    /// Expires messages older than `max_age` (receipts to their senders), forgets old
    /// dedupe memory, stale codes and full quota buckets.
    pub(super) fn sweep(&mut self) -> Res {
        let now = self.now.ms;
        let expired = self
            .store
            .expire_before(now - ms(self.config.max_age), now)?;
        for msg in expired {
            info!(sender = %msg.sender, id = %msg.id, recipient = %msg.recipient, "message expired");
            // Owed (in the storage) from now on; online senders get them paced.
            if let Some(&conn) = self.online.get(&msg.sender) {
                self.owed.insert(conn);
            }
        }
        let instant = self.now.at;
        if let Some(rate) = self.codes.per_address {
            self.codes
                .by_address
                .retain(|_, bucket| !bucket.is_full(rate, instant));
        }
        self.senders.forget_full(instant);
        let forgotten = self.store.purge(
            now - ms(self.config.dedupe_retention),
            now - ms(self.config.code_resend),
        )?;
        if forgotten > 0 {
            debug!(forgotten, "dedupe memory purged");
        }
        Ok(())
    }

    /// Pushes the next pending messages to `conn` while its window has room.
    pub(super) fn fill_window(&mut self, conn: ConnId) -> Res {
        let window = self.config.deliver_window as usize;
        let Some(c) = self.conns.get(&conn) else {
            return Ok(());
        };
        let Some(number) = &c.number else {
            return Ok(());
        };
        let room = window.saturating_sub(c.inflight.len());
        if room == 0 {
            self.starved.remove(&conn);
            return Ok(());
        }
        // Deliveries are paced by bytes too: no more while a quarter of the outbox's
        // bound is queued (then at the next pace, or the next ack), so that large
        // messages never overflow a client that reads.
        let paced = self.config.max_outbox_bytes / 4;
        if self.link.queued(conn).1 >= paced {
            self.starved.insert(conn);
            return Ok(());
        }
        let batch = self.store.pending_after(number, c.cursor, room as u32)?;
        let mut starved = false;
        for queued in batch {
            if !self.conns.contains_key(&conn) {
                break;
            }
            if self.link.queued(conn).1 >= paced {
                starved = true;
                break;
            }
            if let Some(c) = self.conns.get_mut(&conn) {
                c.cursor = queued.seq;
                c.inflight.push(queued.seq);
            }
            let frame = ServerFrame::Deliver {
                from: queued.sender,
                id: queued.id,
                text: queued.text,
                ts: queued.ts,
                relay_ts: queued.accepted_ms,
            };
            self.send(conn, frame);
        }
        if starved {
            self.starved.insert(conn);
        } else {
            self.starved.remove(&conn);
        }
        Ok(())
    }

    /// Why a `send` is refused before anything is looked up: its id, its number, its
    /// size.
    fn check_send(&self, id: &str, to: &str, text: &str) -> Option<ErrorFrame> {
        let refuse = |code, message: String| with_id(err(code, message, "send"), id);
        if !is_message_id(id) {
            return Some(refuse(ErrorCode::InvalidId, BAD_ID.to_owned()));
        }
        if !is_e164(to) {
            return Some(refuse(ErrorCode::InvalidNumber, not_e164(to)));
        }
        let max = self.config.max_text_bytes;
        if text.len() > max {
            let message = format!(
                "the text has {} bytes, more than this relay's {max}",
                text.len()
            );
            return Some(refuse(ErrorCode::TextTooLarge, message));
        }
        None
    }

    /// The answer to a `send` whose id `me` already used: the message's state, or a
    /// conflict if it went to another recipient.
    fn resend(&self, me: &str, row: MsgRow, id: String, to: String) -> ServerFrame {
        if row.recipient != to {
            let message = format!("id {id:?} was already used for another recipient");
            let error = with_id(err(ErrorCode::IdConflict, message, "send"), &id);
            return ServerFrame::Error(error);
        }
        let state = match row.state {
            MsgState::Pending if self.online.contains_key(&to) => SendState::Online,
            MsgState::Pending => SendState::Queued,
            MsgState::Delivered => SendState::Delivered,
            MsgState::Revoked => SendState::Revoked,
            MsgState::Expired => SendState::Expired,
        };
        debug!(sender = %me, %id, ?state, "duplicate send");
        ServerFrame::Ack {
            id,
            to,
            state,
            duplicate: true,
        }
    }

    /// Why a new message from `me` to `to` is not accepted now: the sender's quota, an
    /// unknown recipient, or its full queue.
    fn refuse_new(&mut self, me: &str, id: &str, to: &str, bytes: usize) -> Refusal {
        let refuse = |code, message: String| with_id(err(code, message, "send"), id);
        if let Some(wait) = self.senders.over_quota(me, bytes, self.now.at) {
            let message = "this sender's quota (messages or bytes per minute) is used up";
            let mut error = refuse(ErrorCode::RateLimited, message.to_owned());
            error.retry_after_ms = Some(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
            return Ok(Some(error));
        }
        if !self.store.is_registered(to)? {
            let message = format!("{to} is not registered on this relay");
            return Ok(Some(refuse(ErrorCode::RecipientUnregistered, message)));
        }
        let bound = self.config.queue_per_recipient;
        if self.store.pending_count(to)? >= bound {
            let message = format!("{to} already has {bound} undelivered messages");
            return Ok(Some(refuse(ErrorCode::QueueFull, message)));
        }
        Ok(None)
    }

    pub(super) fn send_msg(
        &mut self,
        conn: ConnId,
        id: String,
        to: String,
        text: String,
        ts: i64,
    ) -> Res {
        if let Some(error) = self.check_send(&id, &to, &text) {
            self.fail(conn, error);
            return Ok(());
        }
        let Some(me) = self.number_of(conn) else {
            return Ok(());
        };
        if let Some(row) = self.store.message(&me, &id)? {
            // Answered whatever the quota: only new messages count.
            let answer = self.resend(&me, row, id, to);
            self.send(conn, answer);
            return Ok(());
        }
        if let Some(error) = self.refuse_new(&me, &id, &to, text.len())? {
            self.fail(conn, error);
            return Ok(());
        }
        self.store
            .insert_message(&me, &id, &to, &text, ts, self.now.ms)?;
        self.senders.charge(&me, text.len(), self.now.at);
        let recipient = self.online.get(&to).copied();
        let state = match recipient {
            Some(_) => SendState::Online,
            None => SendState::Queued,
        };
        debug!(sender = %me, %id, recipient = %to, ?state, "accepted");
        let frame = ServerFrame::Ack {
            id,
            to: to.clone(),
            state,
            duplicate: false,
        };
        self.send(conn, frame);
        if self
            .conns
            .get(&conn)
            .and_then(|c| c.typing.as_ref())
            .is_some_and(|(target, _)| *target == to)
        {
            self.stop_typing(conn);
        }
        if let Some(recipient) = recipient {
            self.fill_window(recipient)?;
        }
        Ok(())
    }

    pub(super) fn ack(&mut self, conn: ConnId, from: String, id: String) -> Res {
        // `confirm` repeats `from` and `id`: only well-formed ones, never echoed input of
        // any size.
        if !is_e164(&from) {
            self.fail(conn, err(ErrorCode::InvalidNumber, not_e164(&from), "ack"));
            return Ok(());
        }
        if !is_message_id(&id) {
            let error = err(ErrorCode::InvalidId, BAD_ID, "ack");
            self.fail(conn, with_id(error, &id));
            return Ok(());
        }
        let Some(me) = self.number_of(conn) else {
            return Ok(());
        };
        let row = self
            .store
            .message(&from, &id)?
            .filter(|row| row.recipient == me);
        let Some(row) = row else {
            let outcome = ConfirmOutcome::Unknown;
            self.send(conn, ServerFrame::Confirm { from, id, outcome });
            return Ok(());
        };
        let outcome = match row.state {
            MsgState::Pending => self.deliver_receipt(&row, &id, &me)?,
            MsgState::Delivered => ConfirmOutcome::Delivered,
            MsgState::Revoked | MsgState::Expired => ConfirmOutcome::Revoked,
        };
        if let Some(c) = self.conns.get_mut(&conn) {
            c.inflight.retain(|&seq| seq != row.seq);
        }
        self.send(conn, ServerFrame::Confirm { from, id, outcome });
        self.fill_window(conn)
    }

    /// Settles a pending message as delivered to `me` and tells its sender: at once if
    /// it is online with room, else the receipt is owed (and paced: many recipients
    /// acking in one group must not overflow a sender).
    fn deliver_receipt(
        &mut self,
        row: &MsgRow,
        id: &str,
        me: &str,
    ) -> Result<ConfirmOutcome, HubError> {
        let sender = self.online.get(&row.sender).copied();
        let live = sender.filter(|&s| self.has_receipt_room(s));
        let now = self.now.ms;
        if !self
            .store
            .settle(row.seq, MsgState::Delivered, live.is_none(), now)?
        {
            // Revoked meanwhile (another relay node, or a storage shared otherwise).
            return Ok(ConfirmOutcome::Revoked);
        }
        debug!(sender = %row.sender, %id, recipient = %me, "delivered");
        if let (None, Some(sender)) = (live, sender) {
            self.owed.insert(sender);
        }
        if let Some(sender) = live {
            let receipt = ServerFrame::Receipt {
                id: id.to_owned(),
                to: me.to_owned(),
                outcome: ReceiptOutcome::Delivered,
                at: now,
            };
            self.send(sender, receipt);
        }
        Ok(ConfirmOutcome::Delivered)
    }

    pub(super) fn revoke(&mut self, conn: ConnId, id: String) -> Res {
        let Some(me) = self.number_of(conn) else {
            return Ok(());
        };
        // An id that is not one was never accepted: no need to look it up.
        let row = match is_message_id(&id) {
            true => self.store.message(&me, &id)?,
            false => None,
        };
        let Some(row) = row else {
            let message = "no message with this id from this number";
            let error = err(ErrorCode::UnknownMessage, message, "revoke");
            self.fail(conn, with_id(error, &id));
            return Ok(());
        };
        let outcome = match row.state {
            MsgState::Pending => {
                if self
                    .store
                    .settle(row.seq, MsgState::Revoked, false, self.now.ms)?
                {
                    info!(sender = %me, %id, recipient = %row.recipient, "revoked");
                    RevokeOutcome::Revoked
                } else {
                    RevokeOutcome::AlreadyDelivered
                }
            }
            MsgState::Delivered => RevokeOutcome::AlreadyDelivered,
            MsgState::Revoked | MsgState::Expired => RevokeOutcome::Revoked,
        };
        self.send(conn, ServerFrame::RevokeResult { id, outcome });
        Ok(())
    }
}
