//! The store's part of the IP channel: the presence cache, the followed numbers, IP
//! messages held until the relay confirms them, and the relay progress of outgoing
//! messages (schema: `data/migrations/0003_ip.sql`). Same rules as the rest of the store:
//! SQL only here, one transaction per change that touches more than one row.

use rusqlite::{OptionalExtension, params};

use super::codec::{request_from_code, status_code};
use super::{NewIncoming, Result, Store, all_rows, insert_incoming_in, message_from_row, parse_id};
use crate::domain::{Channel, ChannelRequest, Message, Presence, Status};

/// A contact's presence as the relay last told it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresenceRecord {
    pub number: String,
    /// Whether the number holds an account on the relay (else: SMS only).
    pub registered: bool,
    pub presence: Presence,
    /// When the relay said so (ms since the epoch).
    pub updated_ms: i64,
}

/// Where an outgoing message is on its way through the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayStage {
    /// Handed to the relay, no answer yet.
    Sent,
    /// Accepted (`ack`), waiting for the delivery receipt.
    Accepted,
    /// No receipt in time: `revoke` sent, waiting for its answer.
    Revoking,
}

/// An outgoing message somewhere on the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayPending {
    pub message: Message,
    pub requested: ChannelRequest,
    pub stage: RelayStage,
    /// When waiting for the receipt ends (`None`: it waits as long as the relay keeps it).
    pub deadline_ms: Option<i64>,
}

/// An IP message delivered to us and stored, not yet confirmed by the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldIp {
    pub sender: String,
    pub id: String,
    pub text: String,
    pub ts: i64,
}

const fn presence_code(p: Presence) -> i64 {
    match p {
        Presence::Offline => 0,
        Presence::Online => 1,
        Presence::Typing => 2,
    }
}

const fn presence_from_code(code: i64) -> Option<Presence> {
    match code {
        0 => Some(Presence::Offline),
        1 => Some(Presence::Online),
        2 => Some(Presence::Typing),
        _ => None,
    }
}

const fn stage_code(s: RelayStage) -> i64 {
    match s {
        RelayStage::Sent => 0,
        RelayStage::Accepted => 1,
        RelayStage::Revoking => 2,
    }
}

const fn stage_from_code(code: i64) -> Option<RelayStage> {
    match code {
        0 => Some(RelayStage::Sent),
        1 => Some(RelayStage::Accepted),
        2 => Some(RelayStage::Revoking),
        _ => None,
    }
}

/// The dedupe key of an IP message: the relay identifies it by (sender, id).
fn ip_dedupe_key(sender: &str, id: &str) -> String {
    format!("ip:{sender}:{id}")
}

const RELAY_PENDING: &str = concat!(
    "SELECT m.uuid, c.peer, m.outgoing, m.body, m.channel, m.status, m.timestamp_ms, ",
    "m.read, m.error, m.requested, m.relay_stage, m.deadline_ms ",
    "FROM messages m INDEXED BY messages_on_relay JOIN conversations c ON c.id = m.conv ",
    "WHERE m.relay_stage IS NOT NULL ORDER BY m.seq"
);

impl Store {
    /// Records what the relay said of these numbers (a snapshot or pushes), in one
    /// transaction.
    pub fn set_presence(&mut self, records: &[PresenceRecord]) -> Result<()> {
        let tx = self.write()?;
        {
            let mut upsert = tx.prepare_cached(
                "INSERT INTO presence (number, registered, state, updated_ms) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (number) DO UPDATE SET \
                 registered = excluded.registered, state = excluded.state, \
                 updated_ms = excluded.updated_ms",
            )?;
            for r in records {
                upsert.execute(params![
                    r.number,
                    r.registered,
                    presence_code(r.presence),
                    r.updated_ms
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// What the relay last said of `number`, if it ever did.
    pub fn presence_of(&self, number: &str) -> Result<Option<PresenceRecord>> {
        let row: Option<(bool, i64, i64)> = self
            .conn
            .prepare_cached("SELECT registered, state, updated_ms FROM presence WHERE number = ?1")?
            .query_row([number], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
            .optional()?;
        Ok(row.map(|(registered, state, updated_ms)| PresenceRecord {
            number: number.to_owned(),
            registered,
            presence: presence_from_code(state).unwrap_or_default(),
            updated_ms,
        }))
    }

    /// Adds numbers to those followed besides the conversation peers (`Watch`).
    pub fn watch(&mut self, numbers: &[String]) -> Result<()> {
        let tx = self.write()?;
        {
            let mut insert =
                tx.prepare_cached("INSERT OR IGNORE INTO watched (number) VALUES (?1)")?;
            for n in numbers {
                insert.execute([n])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Every number whose presence is followed, each once, in the order they matter when
    /// the relay cannot follow them all: the watched numbers (sorted), then conversation
    /// peers by activity, most recent first. Peers kept verbatim (names, short codes) are
    /// included; the caller filters what the relay can know.
    pub fn followed(&self) -> Result<Vec<String>> {
        let mut followed = self.watched()?;
        let mut seen: std::collections::HashSet<String> = followed.iter().cloned().collect();
        let mut stmt = self.conn.prepare_cached(
            "SELECT peer FROM conversations INDEXED BY conversations_by_activity \
             ORDER BY last_seq DESC",
        )?;
        let peers = stmt.query_map([], |row| row.get::<_, String>(0))?;
        for peer in peers {
            let peer = peer?;
            if seen.insert(peer.clone()) {
                followed.push(peer);
            }
        }
        Ok(followed)
    }

    /// The numbers added with `Watch`, sorted.
    pub fn watched(&self) -> Result<Vec<String>> {
        all_rows(
            &self.conn,
            "SELECT number FROM watched ORDER BY number",
            [],
            |row| row.get(0),
        )
    }

    /// Stores an IP message delivered to us, hidden until confirmed. False when it is
    /// already held or already in the inbox (the relay delivers again after a reconnect).
    pub fn hold_incoming_ip(
        &mut self,
        sender: &str,
        id: &str,
        text: &str,
        ts: i64,
    ) -> Result<bool> {
        let tx = self.write()?;
        let digest = super::codec::key_digest(&ip_dedupe_key(sender, id));
        let known = tx
            .prepare_cached("SELECT 1 FROM messages WHERE dedupe_hash = ?1")?
            .exists([digest])?;
        let held = !known
            && tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO ip_inbox (sender, id, body, ts) VALUES (?1, ?2, ?3, ?4)",
                )?
                .execute(params![sender, id, text, ts])?
                == 1;
        tx.commit()?;
        Ok(held)
    }

    /// The IP messages held, oldest first (to ack again after a login).
    pub fn held_incoming_ip(&self) -> Result<Vec<HeldIp>> {
        all_rows(
            &self.conn,
            "SELECT sender, id, body, ts FROM ip_inbox ORDER BY ts",
            [],
            |row| {
                Ok(HeldIp {
                    sender: row.get(0)?,
                    id: row.get(1)?,
                    text: row.get(2)?,
                    ts: row.get(3)?,
                })
            },
        )
    }

    /// The relay confirmed a held message as delivered: it moves into the inbox (as an
    /// unannounced incoming message on channel IP) in one transaction. `None` when it is
    /// not held (already moved, or never delivered).
    pub fn confirm_incoming_ip(&mut self, sender: &str, id: &str) -> Result<Option<Message>> {
        let held: Option<(String, i64)> = self
            .conn
            .prepare_cached("SELECT body, ts FROM ip_inbox WHERE sender = ?1 AND id = ?2")?
            .query_row([sender, id], |row| Ok((row.get(0)?, row.get(1)?)))
            .optional()?;
        let Some((text, ts)) = held else {
            return Ok(None);
        };
        let key = ip_dedupe_key(sender, id);
        let tx = self.write()?;
        let message = insert_incoming_in(
            &tx,
            &NewIncoming {
                peer: sender,
                text: &text,
                channel: Channel::Ip,
                timestamp_ms: ts,
                dedupe_key: &key,
            },
        )?;
        tx.prepare_cached("DELETE FROM ip_inbox WHERE sender = ?1 AND id = ?2")?
            .execute([sender, id])?;
        tx.commit()?;
        Ok(message)
    }

    /// The relay says a held message was revoked (it goes by SMS) or is unknown: drop it,
    /// never to be shown. False when it was not held.
    pub fn drop_incoming_ip(&mut self, sender: &str, id: &str) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached("DELETE FROM ip_inbox WHERE sender = ?1 AND id = ?2")?
            .execute([sender, id])?
            == 1)
    }

    /// Records where an outgoing message is on the relay (`None`: no longer on it).
    pub fn set_relay_stage(
        &mut self,
        id: &str,
        stage: Option<RelayStage>,
        deadline_ms: Option<i64>,
    ) -> Result<()> {
        self.update_one(
            id,
            "UPDATE messages SET relay_stage = ?2, deadline_ms = ?3 WHERE uuid = ?1",
            params![parse_id(id)?, stage.map(stage_code), deadline_ms],
        )
    }

    /// The relay accepted an outgoing message: status Sent, channel IP, waiting for the
    /// receipt until `deadline_ms` (None: as long as the relay keeps it); one transaction.
    pub fn mark_sent_ip(&mut self, id: &str, deadline_ms: Option<i64>) -> Result<Message> {
        self.update_one(
            id,
            "UPDATE messages SET status = ?2, channel = 1, error = NULL, relay_stage = ?3, \
             deadline_ms = ?4 WHERE uuid = ?1",
            params![
                parse_id(id)?,
                status_code(Status::Sent),
                stage_code(RelayStage::Accepted),
                deadline_ms
            ],
        )?;
        self.get_message(id)
    }

    /// An outgoing message is delivered over IP: off the relay and `delivered`, in one
    /// statement. (Two steps would let a crash between them leave it off the relay but
    /// `sent`, where nothing would ever end it.)
    pub fn mark_delivered_ip(&mut self, id: &str) -> Result<Message> {
        self.update_one(
            id,
            "UPDATE messages SET status = ?2, channel = 1, error = NULL, relay_stage = NULL, \
             deadline_ms = NULL WHERE uuid = ?1",
            params![parse_id(id)?, status_code(Status::Delivered)],
        )?;
        self.get_message(id)
    }

    /// The IP channel will not carry a message that may only go over IP: off the relay
    /// and `failed` with `error`, in one statement (as [`Store::mark_delivered_ip`]).
    pub fn fail_off_relay(&mut self, id: &str, error: &str) -> Result<Message> {
        self.update_one(
            id,
            "UPDATE messages SET status = ?2, error = ?3, relay_stage = NULL, \
             deadline_ms = NULL WHERE uuid = ?1",
            params![parse_id(id)?, status_code(Status::Failed), error],
        )?;
        self.get_message(id)
    }

    /// An outgoing message never reached the relay (not connected): back to the outbox as
    /// it was asked, `queued`, off the relay, in one statement.
    pub fn requeue_off_relay(&mut self, id: &str) -> Result<Message> {
        self.update_one(
            id,
            "UPDATE messages SET status = ?2, channel = NULL, error = NULL, relay_stage = NULL, \
             deadline_ms = NULL, next_attempt_ms = NULL WHERE uuid = ?1",
            params![parse_id(id)?, status_code(Status::Queued)],
        )?;
        self.get_message(id)
    }

    /// The IP channel gave up on an outgoing message (refused, revoked in time, expired):
    /// it goes back to the outbox to go by SMS, with no channel yet, in one transaction.
    pub fn requeue_for_sms(&mut self, id: &str) -> Result<Message> {
        self.update_one(
            id,
            "UPDATE messages SET status = ?2, channel = NULL, requested = ?3, \
             relay_stage = NULL, deadline_ms = NULL, next_attempt_ms = NULL WHERE uuid = ?1",
            params![
                parse_id(id)?,
                status_code(Status::Queued),
                super::codec::request_code(ChannelRequest::Sms)
            ],
        )?;
        self.get_message(id)
    }

    /// Outgoing messages somewhere on the relay, in acceptance order.
    pub fn relay_pending(&self) -> Result<Vec<RelayPending>> {
        all_rows(&self.conn, RELAY_PENDING, [], |row| {
            let requested: i64 = row.get(9)?;
            let stage: i64 = row.get(10)?;
            Ok(RelayPending {
                message: message_from_row(row)?,
                requested: request_from_code(requested)
                    .ok_or(rusqlite::Error::IntegralValueOutOfRange(9, requested))?,
                stage: stage_from_code(stage)
                    .ok_or(rusqlite::Error::IntegralValueOutOfRange(10, stage))?,
                deadline_ms: row.get(11)?,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{NewOutgoing, StoreError};

    /// An outgoing message accepted by the relay, waiting for its receipt.
    fn accepted(store: &mut Store, requested: ChannelRequest) -> String {
        let (m, _) = store
            .insert_outgoing(&NewOutgoing {
                peer: "+15550002222",
                text: "on the relay",
                requested,
                delivery_report: false,
                client_token: None,
                timestamp_ms: 1,
            })
            .expect("queue");
        store
            .set_relay_stage(&m.id, Some(RelayStage::Sent), None)
            .expect("sent");
        store.mark_sent_ip(&m.id, None).expect("accepted");
        m.id.into_string()
    }

    #[test]
    fn a_message_leaves_the_relay_together_with_its_outcome() {
        let mut store = Store::open_in_memory().expect("store");
        let delivered = accepted(&mut store, ChannelRequest::Auto);
        let failed = accepted(&mut store, ChannelRequest::Ip);
        assert_eq!(store.relay_pending().expect("pending").len(), 2);

        let m = store.mark_delivered_ip(&delivered).expect("delivered");
        assert_eq!(
            (m.status, m.channel, m.error),
            (Status::Delivered, Some(Channel::Ip), None)
        );
        let m = store
            .fail_off_relay(&failed, "not sent over IP: refused")
            .expect("failed");
        assert_eq!(
            (m.status, m.error.as_deref()),
            (Status::Failed, Some("not sent over IP: refused"))
        );
        assert!(store.relay_pending().expect("pending").is_empty());

        // Never reached the relay: queued again, still asked for IP.
        let waiting = accepted(&mut store, ChannelRequest::Ip);
        let m = store.requeue_off_relay(&waiting).expect("requeued");
        assert_eq!((m.status, m.channel), (Status::Queued, None));
        let outbox = store.outbox().expect("outbox");
        assert_eq!(outbox.len(), 1);
        assert_eq!(outbox[0].requested, ChannelRequest::Ip);
        assert!(store.relay_pending().expect("pending").is_empty());

        let unknown = "6f1c2b1e-4e0e-4c39-9f3e-0a1b2c3d4e5f";
        assert!(matches!(
            store.mark_delivered_ip(unknown),
            Err(StoreError::NotFound(_))
        ));
        assert!(matches!(
            store.fail_off_relay(unknown, "x"),
            Err(StoreError::NotFound(_))
        ));
    }
}
