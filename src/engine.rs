//! The engine: the daemon's core task. It takes events from the adapters and commands from
//! the API, asks the router what to do, and carries it out on the store, the adapters, the
//! notifier and the API's signals, in an order that loses nothing on a crash:
//! store first (durable), then announce, then clean up on the modem.
//!
//! It owns the daemon's live state (modem state, own number, the SMS in flight) and is the
//! only writer of [`DaemonStatus`]. It knows no SQL and no D-Bus: it talks to the store
//! through [`StoreHandle`] and to everything else through channels.

use std::collections::HashSet;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::domain::{
    Channel, ChannelRequest, Message, ModemState, Presence, RelayState, Status, now_ms,
};
use crate::modem::{IncomingSms, ModemCommand, ModemEvent, SendFailure, StatusReport};
use crate::notifier::{Notice, Notifier};
use crate::router::{self, Delivery, Facts, Retry, Route};
use crate::store::{NewIncoming, OutboxEntry, StoreHandle};
use crate::{number, sms_text};

/// What the API asks of the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineCmd {
    /// A message was stored in the outbox: see whether it can go.
    Outbox,
    /// Messages were read or deleted: recount the unread ones.
    Recount,
    /// Stop: the daemon is shutting down.
    Shutdown,
}

/// What the engine tells the API to announce (as D-Bus signals).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new incoming message, already stored durably.
    Received(Message),
    StatusChanged {
        id: String,
        status: Status,
        channel: Option<Channel>,
    },
    Presence {
        number: String,
        presence: Presence,
    },
}

/// The daemon's state as the API's properties show it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DaemonStatus {
    /// E.164, or "" while unknown.
    pub own_number: String,
    pub modem: ModemState,
    pub relay: RelayState,
    pub unread: u32,
}

/// The part of the configuration the engine applies.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Region for numbers the network gives without `+country`.
    pub default_region: Option<String>,
    /// Our number when the SIM does not carry it (already E.164).
    pub own_number: Option<String>,
    /// Remove incoming SMS and status reports from the modem once applied.
    pub delete_received: bool,
    /// `sms.max_parts`.
    pub max_parts: u32,
    /// Send attempts before a message fails.
    pub max_attempts: u32,
}

/// The engine task's state. Build with [`Engine::new`], run with [`Engine::run`].
pub struct Engine {
    config: EngineConfig,
    store: StoreHandle,
    /// Commands to the ModemManager adapter.
    modem: mpsc::Sender<ModemCommand>,
    /// Announcements for the API.
    events: mpsc::Sender<Event>,
    /// The API's properties; the engine is their only writer.
    status: watch::Sender<DaemonStatus>,
    notifier: Notifier,
    /// The message handed to the modem and not answered yet: SMS go out one at a time,
    /// so that they leave in the order they were accepted.
    in_flight: Option<String>,
    /// When the earliest message waiting out a retry delay is due.
    next_retry: Option<Instant>,
}

impl Engine {
    pub fn new(
        config: EngineConfig,
        store: StoreHandle,
        modem: mpsc::Sender<ModemCommand>,
        events: mpsc::Sender<Event>,
        status: watch::Sender<DaemonStatus>,
        notifier: Notifier,
    ) -> Self {
        let own = config.own_number.clone().unwrap_or_default();
        status.send_modify(|s| s.own_number = own);
        Engine {
            config,
            store,
            modem,
            events,
            status,
            notifier,
            in_flight: None,
            next_retry: None,
        }
    }

    /// Runs until told to shut down (or every command sender is gone); dropping the engine
    /// then closes the adapters' command channels and the event channel, which stops the
    /// adapters and the API publisher in turn.
    pub async fn run(
        mut self,
        mut commands: mpsc::Receiver<EngineCmd>,
        mut modem_events: mpsc::Receiver<ModemEvent>,
    ) {
        self.recover().await;
        self.recount().await;
        let mut modem_open = true;
        loop {
            let retry_at = self.next_retry;
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(EngineCmd::Outbox) => self.pump().await,
                    Some(EngineCmd::Recount) => self.recount().await,
                    Some(EngineCmd::Shutdown) | None => break,
                },
                event = modem_events.recv(), if modem_open => match event {
                    Some(event) => self.on_modem(event).await,
                    None => modem_open = false,
                },
                _ = sleep_until(retry_at), if retry_at.is_some() => {
                    self.next_retry = None;
                    self.pump().await;
                }
            }
        }
        debug!("engine stopped");
    }

    /// After a crash or kill, a message may be left `sending`: whether the modem sent it
    /// is unknown, so it goes again (a possible duplicate SMS rather than a lost one).
    async fn recover(&mut self) {
        let outbox = match self.store.call(|s| s.outbox()).await {
            Ok(outbox) => outbox,
            Err(e) => return warn!(cause = %e, "cannot read the outbox"),
        };
        for entry in outbox
            .iter()
            .filter(|e| e.message.status == Status::Sending)
        {
            warn!(id = %entry.message.id, "message was being sent when the daemon stopped; sending it again");
            self.set_status(&entry.message.id, Status::Queued, None, None)
                .await;
        }
        self.pump().await;
    }

    async fn on_modem(&mut self, event: ModemEvent) {
        match event {
            ModemEvent::State(state) => {
                info!(modem = %state, "modem state");
                self.status.send_modify(|s| s.modem = state);
                if state == ModemState::Registered {
                    self.pump().await;
                }
            }
            ModemEvent::OwnNumber(sim) => {
                let own = sim
                    .and_then(|n| number::normalize(&n, self.config.default_region.as_deref()).ok())
                    .or_else(|| self.config.own_number.clone())
                    .unwrap_or_default();
                self.status.send_if_modified(|s| {
                    let changed = s.own_number != own;
                    s.own_number = own;
                    changed
                });
            }
            ModemEvent::Incoming(sms) => self.on_incoming(sms).await,
            ModemEvent::StatusReport(report) => self.on_report(report).await,
            ModemEvent::SendResult { id, result } => self.on_send_result(id, result).await,
        }
    }

    /// Store (durably, exactly once), then announce, then delete from the modem. A crash
    /// between any two steps leaves the SMS on the modem, and the next start finds it again:
    /// the store's dedupe key makes that a no-op instead of a second message.
    async fn on_incoming(&mut self, sms: IncomingSms) {
        let peer = self.peer_of(&sms.number);
        let key = dedupe_key(&sms);
        let timestamp_ms = sms.timestamp_ms.unwrap_or_else(now_ms);
        let text = sms.text.clone();
        let stored = self
            .store
            .call(move |s| {
                s.insert_incoming(&NewIncoming {
                    peer: &peer,
                    text: &text,
                    channel: Channel::Sms,
                    timestamp_ms,
                    dedupe_key: &key,
                })
            })
            .await;
        match stored {
            Ok(Some(message)) => {
                info!(id = %message.id, peer = %message.peer, "sms received");
                self.notifier.notify(Notice {
                    sender: message.peer.clone(),
                    text: message.text.clone(),
                });
                self.announce(Event::Received(message)).await;
                self.recount().await;
            }
            Ok(None) => debug!(path = %sms.path.as_str(), "sms already stored"),
            Err(e) => {
                // Leave it on the modem: the next start (or List) tries again.
                return warn!(cause = %e, path = %sms.path.as_str(), "cannot store an incoming sms");
            }
        }
        if self.config.delete_received {
            self.command(ModemCommand::Delete { path: sms.path }).await;
        }
    }

    async fn on_report(&mut self, report: StatusReport) {
        let peer = self.peer_of(&report.number);
        let reference = report.reference;
        let lookup = peer.clone();
        let found = self
            .store
            .call(move |s| s.find_by_sms_reference(&lookup, reference))
            .await;
        match found {
            Ok(Some(message)) => match router::delivery(report.delivery_state) {
                Delivery::Delivered => {
                    self.set_status(&message.id, Status::Delivered, Some(Channel::Sms), None)
                        .await
                }
                Delivery::Failed => {
                    let why = format!(
                        "the SMS centre could not deliver it (status {:#04x})",
                        report.delivery_state
                    );
                    self.set_status(&message.id, Status::Failed, Some(Channel::Sms), Some(why))
                        .await
                }
                Delivery::Pending => debug!(id = %message.id, "status report: still trying"),
            },
            Ok(None) => debug!(%peer, reference, "status report for no message of ours"),
            Err(e) => return warn!(cause = %e, "cannot apply a status report"),
        }
        if self.config.delete_received {
            self.command(ModemCommand::Delete { path: report.path })
                .await;
        }
    }

    async fn on_send_result(&mut self, id: String, result: Result<u32, SendFailure>) {
        if self.in_flight.as_deref() == Some(id.as_str()) {
            self.in_flight = None;
        }
        match result {
            Ok(reference) => {
                let key = id.clone();
                if let Err(e) = self
                    .store
                    .call(move |s| s.set_sms_reference(&key, reference))
                    .await
                {
                    warn!(%id, cause = %e, "cannot record the sms reference");
                }
                info!(%id, reference, "sms sent");
                self.set_status(&id, Status::Sent, Some(Channel::Sms), None)
                    .await;
            }
            Err(failure) => self.on_send_failure(&id, failure).await,
        }
        self.pump().await;
    }

    async fn on_send_failure(&mut self, id: &str, failure: SendFailure) {
        let key = id.to_owned();
        let entry = self
            .store
            .call(move |s| Ok(s.outbox()?.into_iter().find(|e| e.message.id == key)))
            .await;
        let Ok(Some(entry)) = entry else {
            return debug!(%id, "failed message is no longer in the outbox");
        };
        let attempts = entry.attempts + 1;
        match router::retry(attempts, self.config.max_attempts, failure.temporary) {
            Retry::After(delay) => {
                warn!(%id, attempts, reason = %failure.reason, ?delay, "sms send failed, will retry");
                let due = now_ms() + delay.as_millis() as i64;
                let key = id.to_owned();
                if let Err(e) = self
                    .store
                    .call(move |s| s.record_attempt(&key, attempts, due))
                    .await
                {
                    warn!(%id, cause = %e, "cannot record the attempt");
                }
                self.set_status(id, Status::Queued, None, None).await;
            }
            Retry::GiveUp => {
                warn!(%id, attempts, reason = %failure.reason, "sms send failed for good");
                let key = id.to_owned();
                if let Err(e) = self
                    .store
                    .call(move |s| s.record_attempt(&key, attempts, 0))
                    .await
                {
                    warn!(%id, cause = %e, "cannot record the attempt");
                }
                self.set_status(id, Status::Failed, None, Some(failure.reason))
                    .await;
            }
        }
    }

    /// Hands the next message that can go to its channel. Messages go strictly one at a
    /// time and, per peer, in acceptance order: a message waiting out a retry delay holds
    /// back the later ones to the same peer, not those to others.
    async fn pump(&mut self) {
        if self.in_flight.is_some() {
            return;
        }
        let outbox: Vec<OutboxEntry> = match self.store.call(|s| s.outbox()).await {
            Ok(outbox) => outbox,
            Err(e) => return warn!(cause = %e, "cannot read the outbox"),
        };
        let now = now_ms();
        let status = self.status.borrow().clone();
        let mut held_peers = HashSet::new();
        let mut next_due: Option<i64> = None;
        for entry in outbox {
            let message = entry.message;
            if !held_peers.insert(message.peer.clone()) {
                continue;
            }
            if entry.next_attempt_ms > now {
                next_due =
                    Some(next_due.map_or(entry.next_attempt_ms, |d| d.min(entry.next_attempt_ms)));
                continue;
            }
            let facts = Facts {
                requested: entry.requested,
                relay: status.relay,
                presence: Presence::Offline,
                peer_registered: None,
                modem: status.modem,
                sms_parts: sms_text::estimate(&message.text).segments,
                max_parts: self.config.max_parts,
            };
            match router::route(&facts) {
                Route::Sms => {
                    self.set_status(&message.id, Status::Sending, None, None)
                        .await;
                    self.in_flight = Some(message.id.clone());
                    self.command(ModemCommand::Send {
                        id: message.id,
                        number: message.peer,
                        text: message.text,
                        delivery_report: entry.delivery_report,
                    })
                    .await;
                    break;
                }
                Route::Fail(reason) => {
                    held_peers.remove(&message.peer);
                    self.set_status(&message.id, Status::Failed, None, Some(reason))
                        .await;
                }
                // The relay client does not exist yet, so IP waits like the relay does.
                Route::Ip | Route::Wait(_) => {
                    if entry.requested == ChannelRequest::Ip {
                        continue;
                    }
                    // Waiting for the modem holds every SMS alike.
                    break;
                }
            }
        }
        self.next_retry = next_due.map(|due| {
            Instant::now() + Duration::from_millis(due.saturating_sub(now).max(0) as u64)
        });
    }

    /// Stores a status change and announces it; a message deleted meanwhile is skipped.
    async fn set_status(
        &self,
        id: &str,
        status: Status,
        channel: Option<Channel>,
        error: Option<String>,
    ) {
        let key = id.to_owned();
        let updated = self
            .store
            .call(move |s| s.update_status(&key, status, channel, error.as_deref()))
            .await;
        match updated {
            Ok(message) => {
                self.announce(Event::StatusChanged {
                    id: message.id,
                    status: message.status,
                    channel: message.channel,
                })
                .await
            }
            Err(e) => debug!(%id, cause = %e, "status not updated"),
        }
    }

    async fn recount(&self) {
        match self.store.call(|s| s.unread_count()).await {
            Ok(unread) => {
                self.status.send_if_modified(|s| {
                    let changed = s.unread != unread;
                    s.unread = unread;
                    changed
                });
            }
            Err(e) => warn!(cause = %e, "cannot count unread messages"),
        }
    }

    async fn announce(&self, event: Event) {
        if self.events.send(event).await.is_err() {
            debug!("nobody publishes events any more");
        }
    }

    async fn command(&self, cmd: ModemCommand) {
        if self.modem.send(cmd).await.is_err() {
            warn!("the modem adapter is gone");
        }
    }

    /// A sender or recipient as the network gave it, in our canonical form when it is a
    /// phone number, verbatim otherwise (short codes, alphanumeric senders).
    fn peer_of(&self, raw: &str) -> String {
        number::normalize(raw, self.config.default_region.as_deref())
            .unwrap_or_else(|_| raw.trim().to_owned())
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The idempotency key of an incoming SMS: the sender and SMS-centre timestamp as the
/// network gave them, and a hash of the text. Stable across restarts and modem re-enables
/// (unlike the object path), so the same SMS found twice is stored once.
pub fn dedupe_key(sms: &IncomingSms) -> String {
    format!(
        "sms:{}:{}:{:016x}",
        sms.number,
        sms.smsc_timestamp,
        fnv1a64(sms.text.as_bytes())
    )
}

/// FNV-1a, 64 bits: a stable hash (std's `DefaultHasher` may change between releases,
/// and the key lives in the database).
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sms(number: &str, ts: &str, text: &str, path: &str) -> IncomingSms {
        IncomingSms {
            path: zbus::OwnedObjectPath::try_from(path).expect("path"),
            number: number.into(),
            text: text.into(),
            smsc_timestamp: ts.into(),
            timestamp_ms: None,
        }
    }

    #[test]
    fn dedupe_key_ignores_the_path_only() {
        let a = sms("+15550001111", "2024-05-01T12:34:56+02", "hi", "/sms/1");
        let moved = sms("+15550001111", "2024-05-01T12:34:56+02", "hi", "/sms/9");
        assert_eq!(dedupe_key(&a), dedupe_key(&moved));
        for other in [
            sms("+15550002222", "2024-05-01T12:34:56+02", "hi", "/sms/1"),
            sms("+15550001111", "2024-05-01T12:34:57+02", "hi", "/sms/1"),
            sms("+15550001111", "2024-05-01T12:34:56+02", "hi!", "/sms/1"),
        ] {
            assert_ne!(dedupe_key(&a), dedupe_key(&other), "{other:?}");
        }
    }

    #[test]
    fn fnv_is_the_published_function() {
        // Test vectors of the FNV reference implementation.
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }
}
