//! The engine's side of the IP channel: the relay connection's state, registration by
//! SMS code, the presence of followed contacts (the method's presence store and its
//! periodic refresh), and IP messages delivered to us (held hidden, acked, shown only
//! when the relay confirms them: protocol §8).

use std::collections::HashMap;
use std::sync::Arc;

use tracing::{debug, info, warn};

use std::time::Duration;

use super::{Deferred, Engine, Event};
use crate::domain::{
    ChannelRequest, Message, MessageId, Peer, Presence, RelayState, Status, now_ms,
};
use crate::modem::{IncomingSms, ModemCommand};
use crate::relay::client::{
    Confirmation, Delivery, Placement, PresenceReport, RelayCommand, RelayEvent, Revocation,
    SendAnswer,
};
use crate::store::{PresenceRecord, RelayPending, RelayStage};

/// How long an early code SMS waits for the registration to ask for it.
const EARLY_CODE_WAIT: Duration = Duration::from_secs(60);

/// Presence as known since the current login: what the channel rule and the API go by.
/// Absent numbers are offline (unknown, unregistered, or not refreshed since a restart).
pub type PresenceView = Arc<HashMap<String, PeerPresence>>;

/// One followed number's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerPresence {
    pub presence: Presence,
    /// Whether the number has an account on the relay.
    pub registered: bool,
}

/// The registration code in `text`, if `text` is the relay's code SMS as configured
/// (`pattern` with `{code}` standing for the six digits; surrounding blanks ignored).
pub fn code_in(pattern: &str, text: &str) -> Option<String> {
    let (before, after) = pattern.split_once("{code}")?;
    let code = text
        .trim()
        .strip_prefix(before.trim_start())?
        .strip_suffix(after.trim_end())?;
    (code.len() == crate::relay::protocol::CODE_DIGITS && code.bytes().all(|b| b.is_ascii_digit()))
        .then(|| code.to_owned())
}

/// Whether code SMS `a` is newer than `b`: by the SMS centre's clock when both have it
/// and it tells them apart, else `b`, the one that came later.
fn newer(a: &IncomingSms, b: &IncomingSms) -> bool {
    match (a.timestamp_ms, b.timestamp_ms) {
        (Some(ta), Some(tb)) if ta != tb => ta > tb,
        _ => false,
    }
}

impl Engine {
    pub(super) async fn on_relay(&mut self, event: RelayEvent) {
        match event {
            RelayEvent::State(state) => {
                info!(relay = %state, "relay state");
                self.status.send_modify(|s| s.relay = state);
                if state != RelayState::Online {
                    // What we knew of others holds no longer: offline until refreshed.
                    self.forget_presence().await;
                }
            }
            RelayEvent::LoggedIn { queued } => {
                info!(queued, "logged in to the relay");
                self.awaiting_code = false;
                if let Some((sms, _)) = self.early_code.take() {
                    // Logged in without it: a code that came while we registered or logged
                    // in, void now. Most often the very code of our token, left on the
                    // modem by a daemon killed after storing the token and before the
                    // deletion. Codes are never shown (protocol §5.1): deleted, unseen.
                    info!("a registration code SMS left from before the login: deleted");
                    self.command(ModemCommand::Delete { path: sms.path }).await;
                }
                self.subscribe_followed().await;
                self.reack_held().await;
                self.resume_on_relay().await;
            }
            RelayEvent::AwaitingCode { number } => {
                info!(%number, "relay registration: waiting for the code SMS");
                self.awaiting_code = true;
                if let Some((sms, _)) = self.early_code.take() {
                    Box::pin(self.on_incoming(sms)).await;
                }
            }
            RelayEvent::Deliver { from, id, text, ts } => self.on_deliver(from, id, text, ts).await,
            RelayEvent::Confirm { from, id, outcome } => self.on_confirm(from, id, outcome).await,
            RelayEvent::Snapshot(entries) => {
                // The method's periodic refresh (claim 5): the next full snapshot is due.
                self.next_refresh = self
                    .config
                    .presence_refresh
                    .map(|every| tokio::time::Instant::now() + every);
                self.apply_presence(entries, true).await
            }
            RelayEvent::Presence(entry) => self.apply_presence(vec![entry], false).await,
            RelayEvent::SendAnswer { id, answer } => self.on_send_answer(id, answer).await,
            RelayEvent::RevokeAnswer { id, outcome } => self.on_revoke_answer(id, outcome).await,
            RelayEvent::Receipt { id, outcome, .. } => self.on_receipt(id, outcome).await,
        }
    }

    /// Takes the relay's registration-code SMS out of the SMS path: while a registration
    /// waits for it, the code goes to the relay client and the SMS is deleted, never
    /// stored. One that comes while we are not logged in but before the registration
    /// asked (the SMS can beat the relay's answer, or a killed daemon left it) is kept
    /// aside, still on the modem: the newest only (each new code voids the one before;
    /// older ones are deleted), used when the registration asks, deleted unseen when we
    /// log in without it. Anything else is given back, to be handled as an ordinary SMS.
    pub(super) async fn take_code_sms(&mut self, sms: IncomingSms) -> Option<IncomingSms> {
        if self.relay.is_none() {
            return Some(sms);
        }
        let Some(code) = code_in(&self.config.code_pattern, &sms.text) else {
            return Some(sms);
        };
        if self.awaiting_code {
            info!("registration code received by SMS");
            self.relay_command(RelayCommand::Code(code)).await;
            self.command(ModemCommand::Delete { path: sms.path }).await;
            return None;
        }
        let logged_in = self.status.borrow().relay == RelayState::Online;
        if logged_in {
            return Some(sms);
        }
        // Two code SMS before the registration asked: a daemon killed after its code was
        // sent left one, and its restart asked for another. Each `register` voids the
        // code before it, so the newer one is kept and the older deleted, unseen.
        let (keep, void) = match self.early_code.take() {
            Some((held, _)) if held.path == sms.path => (sms, None),
            Some((held, _)) if newer(&held, &sms) => (held, Some(sms)),
            Some((held, _)) => (sms, Some(held)),
            None => (sms, None),
        };
        if let Some(void) = void {
            debug!("a newer code SMS than the one kept aside: the older is void, deleted");
            self.command(ModemCommand::Delete { path: void.path }).await;
        }
        debug!("a code SMS before the registration asked for it: kept aside");
        self.early_code = Some((keep, tokio::time::Instant::now() + EARLY_CODE_WAIT));
        None
    }

    /// Follows the conversation peers and watched numbers that can be on the relay.
    pub(super) async fn subscribe_followed(&mut self) {
        if self.relay.is_none() {
            return;
        }
        let numbers = match self.store.call(|s| s.followed()).await {
            Ok(numbers) => numbers,
            Err(e) => return warn!(cause = %e, "cannot read the followed numbers"),
        };
        let numbers: Vec<String> = numbers
            .into_iter()
            .filter(|n| crate::number::is_e164(n))
            .collect();
        let now = tokio::time::Instant::now();
        for number in &numbers {
            if !self.subscribed.contains(number) {
                self.presence_asked.insert(number.clone(), now);
            }
        }
        self.subscribed = numbers.iter().cloned().collect();
        self.presence_asked
            .retain(|n, _| self.subscribed.contains(n));
        let numbers = numbers.into_iter().map(Peer::from).collect();
        self.relay_command(RelayCommand::Subscribe { numbers })
            .await;
    }

    async fn reack_held(&mut self) {
        let held = match self.store.call(|s| s.held_incoming_ip()).await {
            Ok(held) => held,
            Err(e) => return warn!(cause = %e, "cannot read held IP messages"),
        };
        for h in held {
            self.relay_command(RelayCommand::Ack {
                from: Peer::from(h.sender),
                id: MessageId::from(h.id),
            })
            .await;
        }
    }

    /// Store hidden, then ack: the relay's `confirm` decides whether it is shown.
    pub(super) async fn on_deliver(&mut self, from: Peer, id: MessageId, text: String, ts: i64) {
        let (sender, key, body) = (from.clone(), id.clone(), text.clone());
        let held = self
            .store
            .call(move |s| s.hold_incoming_ip(sender.as_str(), key.as_str(), &body, ts))
            .await;
        match held {
            // New, or held already (delivered again): ack either way; the confirm decides.
            Ok(_) => self.relay_command(RelayCommand::Ack { from, id }).await,
            // Not stored: no ack (the relay keeps it and delivers it again at the next
            // login), and tried again meanwhile, so that freeing the disk is enough.
            Err(e) => {
                warn!(%from, %id, cause = %e, "cannot store an IP message; will try again");
                self.defer(Deferred::IpDeliver { from, id, text, ts });
            }
        }
    }

    pub(super) async fn on_confirm(&mut self, from: Peer, id: MessageId, outcome: Confirmation) {
        let (sender, key) = (from.clone(), id.clone());
        if outcome != Confirmation::Delivered {
            // Revoked (it comes by SMS) or unknown: never shown.
            debug!(%from, %id, ?outcome, "IP message dropped");
            if let Err(e) = self
                .store
                .call(move |s| s.drop_incoming_ip(sender.as_str(), key.as_str()))
                .await
            {
                warn!(%from, %id, cause = %e, "cannot drop a revoked IP message; will try again");
                self.defer(Deferred::IpConfirm { from, id, outcome });
            }
            return;
        }
        match self
            .store
            .call(move |s| s.confirm_incoming_ip(sender.as_str(), key.as_str()))
            .await
        {
            Ok(Some(message)) => {
                info!(id = %message.id, peer = %message.peer, "ip message received");
                let new_contact = !self.subscribed.contains(&message.peer);
                let id = message.id.clone();
                if !self.announce_received(message).await {
                    self.defer(Deferred::Announced { id, delete: None });
                }
                self.recount().await;
                if new_contact {
                    self.subscribe_followed().await;
                }
            }
            Ok(None) => debug!(%from, %id, "confirmed IP message already shown"),
            Err(e) => {
                warn!(%from, %id, cause = %e, "cannot store a confirmed IP message; will try again");
                self.defer(Deferred::IpConfirm { from, id, outcome });
            }
        }
    }

    /// Takes what the relay said of some numbers: into the store's cache, into the view,
    /// and a `PresenceChanged` for each change. A snapshot is the whole truth: numbers it
    /// does not list are no longer followed.
    async fn apply_presence(&mut self, entries: Vec<PresenceReport>, snapshot: bool) {
        let now = now_ms();
        let records: Vec<PresenceRecord> = entries
            .iter()
            .map(|e| PresenceRecord {
                number: String::from(e.peer.clone()),
                registered: e.registered,
                presence: e.presence,
                updated_ms: now,
            })
            .collect();
        let cached = records.clone();
        if let Err(e) = self.store.call(move |s| s.set_presence(&cached)).await {
            warn!(cause = %e, "cannot cache presence");
        }
        if snapshot {
            // The relay answers for these: they are followed.
            self.subscribed
                .extend(entries.iter().map(|e| String::from(e.peer.clone())));
        }
        for e in &entries {
            self.presence_asked.remove(e.peer.as_str());
        }
        let before = self.presence.borrow().clone();
        let mut view: HashMap<String, PeerPresence> = if snapshot {
            HashMap::new()
        } else {
            (*before).clone()
        };
        for r in records {
            view.insert(
                r.number,
                PeerPresence {
                    presence: r.presence,
                    registered: r.registered,
                },
            );
        }
        self.publish_presence(&before, view).await;
    }

    async fn forget_presence(&mut self) {
        self.next_refresh = None;
        let before = self.presence.borrow().clone();
        if !before.is_empty() {
            self.publish_presence(&before, HashMap::new()).await;
        }
    }

    /// Replaces the view and announces every number whose presence changed.
    async fn publish_presence(
        &mut self,
        before: &PresenceView,
        after: HashMap<String, PeerPresence>,
    ) {
        let shown = |view: &HashMap<String, PeerPresence>, n: &str| {
            view.get(n).map_or(Presence::Offline, |p| p.presence)
        };
        let mut changes: Vec<(String, Presence)> = after
            .keys()
            .chain(before.keys())
            .filter(|n| shown(before, n) != shown(&after, n))
            .map(|n| (n.clone(), shown(&after, n)))
            .collect();
        changes.sort_by(|a, b| a.0.cmp(&b.0));
        changes.dedup_by(|a, b| a.0 == b.0);
        self.presence.send_replace(Arc::new(after));
        for (number, presence) in changes {
            self.announce(Event::Presence { number, presence }).await;
        }
        // Someone came online: messages waiting for IP may go now.
        self.pump().await;
    }

    /// Hands an outgoing message to the relay (the router chose IP).
    pub(super) async fn send_ip(&mut self, message: Message, requested: ChannelRequest) {
        // Its SMS object is being made: the router chose SMS a moment ago (the relay was
        // not online yet, e.g. just after a start) and the message stays `queued` until
        // the object is recorded. It goes by SMS; over IP too, it would arrive twice.
        if self.in_flight.as_deref() == Some(message.id.as_str()) {
            return debug!(id = %message.id, "on its way by SMS already: not over IP");
        }
        debug!(id = %message.id, ?requested, "sending over IP");
        // Both marks in one trip to the store (the stage's commit makes both durable),
        // before the relay; the signal after it, so that the send does not wait for it.
        let key = message.id.clone();
        let marked = self
            .store
            .call(move |s| {
                let marked = s.update_status(&key, Status::Sending, None, None)?;
                s.set_relay_stage(&key, Some(RelayStage::Sent), None)?;
                Ok(marked)
            })
            .await;
        let marked = match marked {
            Ok(marked) => marked,
            Err(e) => return warn!(id = %message.id, cause = %e, "cannot record an IP send"),
        };
        self.relay_command(send_command(message)).await;
        self.announce(Event::status_of(marked)).await;
    }

    /// The message of ours on the relay with this id, if any.
    async fn on_relay_entry(&self, id: &str) -> Option<RelayPending> {
        let key = id.to_owned();
        match self
            .store
            .call(move |s| Ok(s.relay_pending()?.into_iter().find(|p| p.message.id == key)))
            .await
        {
            Ok(entry) => entry,
            Err(e) => {
                warn!(%id, cause = %e, "cannot read messages on the relay");
                None
            }
        }
    }

    async fn on_send_answer(&mut self, id: MessageId, answer: SendAnswer) {
        let id = String::from(id);
        let Some(entry) = self.on_relay_entry(&id).await else {
            self.resent.remove(&id);
            return debug!(%id, ?answer, "answer for a message no longer on the relay");
        };
        match answer {
            // A resend that did not go: the earlier send may be on the relay.
            SendAnswer::NotConnected if self.resent.contains(&id) => {
                info!(%id, "the relay is not reachable; asked again after the next login");
                return;
            }
            SendAnswer::Lost => {}
            _ => {
                self.resent.remove(&id);
            }
        }
        match answer {
            SendAnswer::Accepted {
                state: Placement::Online | Placement::Queued,
                ..
            } => {
                // Waiting for the receipt; for `auto` only as long as the fallback allows
                // (a text too long for SMS waits on the relay's store-and-forward).
                // Asked again after a login (see `resume_on_relay`): its deadline stands.
                let deadline = if entry.stage == RelayStage::Accepted {
                    entry.deadline_ms
                } else {
                    (entry.requested == ChannelRequest::Auto && self.fits_sms(&entry.message))
                        .then(|| now_ms() + self.config.fallback_timeout.as_millis() as i64)
                };
                let key = id.clone();
                match self
                    .store
                    .call(move |s| s.mark_sent_ip(&key, deadline))
                    .await
                {
                    Ok(m) => self.announce(Event::status_of(m)).await,
                    Err(e) => warn!(%id, cause = %e, "cannot record an accepted IP message"),
                }
                self.schedule_deadlines().await;
            }
            SendAnswer::Accepted {
                state: Placement::Delivered,
                ..
            } => self.delivered_ip(&id).await,
            SendAnswer::Accepted {
                state: Placement::Revoked | Placement::Expired,
                ..
            } => {
                self.leave_relay(entry, "the relay will not deliver it")
                    .await
            }
            SendAnswer::Refused { reason, message } => {
                info!(%id, ?reason, %message, "the relay refused an IP message");
                self.leave_relay(entry, &format!("the relay refused it: {message}"))
                    .await
            }
            // Asked for IP: it waits for the relay (as the router has it wait), rather than
            // fail because the connection dropped between the router's choice and the send.
            SendAnswer::NotConnected if entry.requested == ChannelRequest::Ip => {
                info!(%id, "the relay is not reachable: waiting for it");
                let key = id.clone();
                match self.store.call(move |s| s.requeue_off_relay(&key)).await {
                    Ok(m) => self.announce(Event::status_of(m)).await,
                    Err(e) => warn!(%id, cause = %e, "cannot put a message back in the outbox"),
                }
                self.schedule_deadlines().await;
                self.pump().await;
            }
            SendAnswer::NotConnected => {
                info!(%id, "the relay is not reachable");
                self.leave_relay(entry, "the relay is not reachable").await
            }
            // It may be on the relay: it stays `sending` and is sent again with the same
            // id after the next login, whose answer decides. Never by SMS before that,
            // or it could arrive on both channels.
            SendAnswer::Lost => info!(%id, "connection lost before the relay answered"),
        }
    }

    async fn on_receipt(&mut self, id: MessageId, outcome: Delivery) {
        let id = String::from(id);
        let Some(entry) = self.on_relay_entry(&id).await else {
            return debug!(%id, ?outcome, "receipt for a message no longer on the relay");
        };
        match outcome {
            Delivery::Delivered => self.delivered_ip(&id).await,
            _ => self.leave_relay(entry, "it expired on the relay").await,
        }
    }

    async fn on_revoke_answer(&mut self, id: MessageId, outcome: Option<Revocation>) {
        let id = String::from(id);
        let Some(entry) = self.on_relay_entry(&id).await else {
            return debug!(%id, ?outcome, "revoke answer for a message no longer on the relay");
        };
        match outcome {
            Some(Revocation::Revoked) => {
                info!(%id, "no receipt in time and revoked: sending it by SMS");
                self.leave_relay(entry, "no receipt in time").await
            }
            Some(Revocation::AlreadyDelivered) => self.delivered_ip(&id).await,
            // Not connected: revoked again after the next login (the relay decides then).
            _ => debug!(%id, "revoke not answered; again after the next login"),
        }
    }

    async fn delivered_ip(&mut self, id: &str) {
        self.resent.remove(id);
        let key = id.to_owned();
        match self.store.call(move |s| s.mark_delivered_ip(&key)).await {
            Ok(m) => self.announce(Event::status_of(m)).await,
            Err(e) => warn!(%id, cause = %e, "cannot record an IP message delivered"),
        }
        self.schedule_deadlines().await;
        self.pump().await;
    }

    /// The IP channel will not carry this message: by SMS when the sender let the router
    /// choose, failed when the sender asked for IP.
    async fn leave_relay(&mut self, entry: RelayPending, why: &str) {
        let id = entry.message.id;
        self.resent.remove(&id);
        let key = id.clone();
        if entry.requested == ChannelRequest::Ip {
            let error = format!("not sent over IP: {why}");
            match self
                .store
                .call(move |s| s.fail_off_relay(&key, &error))
                .await
            {
                Ok(m) => self.announce(Event::status_of(m)).await,
                Err(e) => warn!(%id, cause = %e, "cannot record an IP message failed"),
            }
        } else {
            match self.store.call(move |s| s.requeue_for_sms(&key)).await {
                Ok(m) => self.announce(Event::status_of(m)).await,
                Err(e) => warn!(%id, cause = %e, "cannot requeue a message for SMS"),
            }
        }
        self.schedule_deadlines().await;
        self.pump().await;
    }

    /// After a login: what the relay did not answer before is asked again. A send with
    /// the same id is no second message (the relay deduplicates); a revoke is idempotent.
    async fn resume_on_relay(&mut self) {
        let pending = match self.store.call(|s| s.relay_pending()).await {
            Ok(pending) => pending,
            Err(e) => return warn!(cause = %e, "cannot read messages on the relay"),
        };
        for p in pending {
            match p.stage {
                RelayStage::Sent => {
                    self.resent.insert(p.message.id.clone());
                    self.relay_command(send_command(p.message)).await
                }
                RelayStage::Revoking => {
                    let id = MessageId::from(p.message.id);
                    self.relay_command(RelayCommand::Revoke { id }).await
                }
                // Its receipt may have been pushed into the connection that died (the
                // relay sends a receipt once, protocol §9). With a deadline, the revoke
                // at the deadline tells; without one (asked for IP, or too long for SMS)
                // nothing else would: ask with the same id, the answer says where it is.
                RelayStage::Accepted if p.deadline_ms.is_none() => {
                    self.relay_command(send_command(p.message)).await
                }
                RelayStage::Accepted => {}
            }
        }
        self.schedule_deadlines().await;
    }

    /// Sets the timer for the earliest receipt deadline.
    pub(super) async fn schedule_deadlines(&mut self) {
        let pending = match self.store.call(|s| s.relay_pending()).await {
            Ok(pending) => pending,
            Err(e) => return warn!(cause = %e, "cannot read messages on the relay"),
        };
        let now = now_ms();
        self.next_deadline = pending
            .iter()
            .filter(|p| p.stage == RelayStage::Accepted)
            .filter_map(|p| p.deadline_ms)
            .min()
            .map(|due| {
                tokio::time::Instant::now()
                    + Duration::from_millis(due.saturating_sub(now).max(0) as u64)
            });
    }

    /// No receipt in time: revoke; the answer decides between SMS and delivered.
    pub(super) async fn revoke_overdue(&mut self) {
        let pending = match self.store.call(|s| s.relay_pending()).await {
            Ok(pending) => pending,
            Err(e) => return warn!(cause = %e, "cannot read messages on the relay"),
        };
        let now = now_ms();
        for p in pending {
            if p.stage != RelayStage::Accepted || p.deadline_ms.is_none_or(|d| d > now) {
                continue;
            }
            let id = p.message.id;
            info!(%id, "no delivery receipt in time: revoking");
            let key = id.clone();
            if let Err(e) = self
                .store
                .call(move |s| s.set_relay_stage(&key, Some(RelayStage::Revoking), None))
                .await
            {
                warn!(%id, cause = %e, "cannot record a revoke");
                continue;
            }
            let id = MessageId::from(id);
            self.relay_command(RelayCommand::Revoke { id }).await;
        }
        self.schedule_deadlines().await;
    }

    fn fits_sms(&self, message: &Message) -> bool {
        crate::sms_text::estimate(&message.text).segments <= self.config.max_parts
    }

    /// Sends a command to the relay client, if there is one.
    pub(super) async fn relay_command(&self, cmd: RelayCommand) {
        if let Some(relay) = &self.relay
            && relay.send(cmd).await.is_err()
        {
            warn!("the relay client is gone");
        }
    }
}

/// The relay's `send` of one of our messages.
fn send_command(message: Message) -> RelayCommand {
    RelayCommand::Send {
        id: MessageId::from(message.id),
        to: Peer::from(message.peer),
        text: message.text,
        ts: message.timestamp_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_sms_is_recognised_exactly() {
        let pattern = "Tandem code: {code}";
        for (text, expected) in [
            ("Tandem code: 482913", Some("482913")),
            ("  Tandem code: 482913\n", Some("482913")),
            ("Tandem code: 48291", None),
            ("Tandem code: 4829134", None),
            ("Tandem code: 48a913", None),
            ("tandem code: 482913", None),
            ("Your Tandem code: 482913", None),
            ("Tandem code: 482913 (do not share)", None),
            ("", None),
        ] {
            assert_eq!(code_in(pattern, text).as_deref(), expected, "{text:?}");
        }
        assert_eq!(
            code_in("{code} is your code", "123456 is your code").as_deref(),
            Some("123456")
        );
        assert_eq!(code_in("no placeholder", "no placeholder"), None);
    }
}
