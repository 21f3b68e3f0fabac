//! The engine's IP side: the relay connection's state, registration by SMS code, the
//! presence of followed contacts (the store's cache, the view the API reads, the periodic
//! refresh), IP messages delivered to us (held hidden, acked, shown only when the relay
//! confirms them: protocol §8), and ours on the relay (receipt deadlines, revoke, SMS
//! fallback).
//!
//! [`IpSide`] owns that state and makes the decisions over plain data: what a code SMS
//! is, what a snapshot changes, what an answer of the relay means for a message of ours
//! ([`IpStep`]), what to ask again after a login. The `impl Engine` below carries them
//! out: the store, the announcements, the relay client's channel, the outbox. The engine
//! gives the IP side what it needs (the stored entry of a message, the time) and does what
//! it returns.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};
use zbus::OwnedObjectPath;

use super::{DaemonStatus, Deferred, Engine, Event};
use crate::domain::{
    ChannelRequest, Message, MessageId, Peer, Presence, RelayState, Status, now_ms,
};
use crate::modem::{IncomingSms, ModemCommand};
use crate::relay::client::{
    Confirmation, Delivery, Placement, PresenceReport, RelayCommand, RelayEvent, Revocation,
    SendAnswer,
};
use crate::router::Facts;
use crate::store::{PresenceRecord, RelayPending, RelayStage};

/// How long an early code SMS waits for the registration to ask for it.
const EARLY_CODE_WAIT: Duration = Duration::from_secs(60);

/// How long a message to a new contact waits for the contact's presence.
pub(super) const NEW_CONTACT_WAIT: Duration = Duration::from_secs(2);

/// Presence as known since the current login: what the channel rule and the API go by.
/// Absent numbers are offline (unknown, unregistered, or not refreshed since a restart).
pub(crate) type PresenceView = Arc<HashMap<String, PeerPresence>>;

/// One followed number's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerPresence {
    pub presence: Presence,
    /// Whether the number has an account on the relay.
    pub registered: bool,
}

/// The facts the router decides on for a message of `text` to `peer`: the one place
/// they are gathered, for the API (what `SendMessage` refuses at once) and the engine
/// (the route). `peer_registered` is what the presence view knows (`None`: not known).
pub(crate) fn routing_facts(
    requested: ChannelRequest,
    status: &DaemonStatus,
    presence: &PresenceView,
    peer: &str,
    text: &str,
    max_parts: u32,
) -> Facts {
    let known = presence.get(peer);
    Facts {
        requested,
        relay: status.relay,
        presence: known.map_or(Presence::Offline, |p| p.presence),
        peer_registered: known.map(|p| p.registered),
        modem: status.modem,
        sms_parts: crate::sms_text::estimate(text).segments,
        max_parts,
    }
}

/// The registration code in `text`, if `text` is the relay's code SMS as configured
/// (`pattern` with `{code}` standing for the six digits; surrounding blanks ignored).
pub(crate) fn code_in(pattern: &str, text: &str) -> Option<String> {
    let (before, after) = pattern.split_once("{code}")?;
    let code = text
        .trim()
        .strip_prefix(before.trim_start())?
        .strip_suffix(after.trim_end())?;
    (code.len() == crate::relay::client::CODE_DIGITS && code.bytes().all(|b| b.is_ascii_digit()))
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

/// What to do with an incoming SMS that may be the relay's code.
#[derive(Debug)]
pub(super) enum CodeSms {
    /// Not a code (or no registration could want it): an ordinary SMS.
    Ordinary(IncomingSms),
    /// The code the registration waits for: to the relay client; the SMS is deleted,
    /// never stored.
    ToRelay {
        code: String,
        delete: OwnedObjectPath,
    },
    /// Kept aside, on the modem, until the registration asks; an older one it voids is
    /// deleted.
    KeptAside { delete: Option<OwnedObjectPath> },
    /// Logged in, and it was on the modem before we watched: a code from before a restart
    /// (most often the very code of our token, left by a daemon killed before deleting it).
    /// Void, deleted unseen, as at login (codes are never shown, protocol §5.1).
    Void { delete: OwnedObjectPath },
}

/// What the relay's answer means for a message of ours, for the engine to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum IpStep {
    /// Nothing to do now.
    Nothing,
    /// The relay holds it: `sent`, waiting for the receipt until `deadline_ms` (`None`: as
    /// long as the relay keeps it).
    Sent { deadline_ms: Option<i64> },
    /// The recipient has it.
    Delivered,
    /// The IP channel will not carry it: by SMS, or failed when IP was asked for.
    Leave(String),
    /// Asked for IP and the relay is not reachable: back in the outbox, waiting for it.
    Requeue,
}

/// Whether the outbox may route a message to a peer now, as far as presence goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PresenceGate {
    /// Route it with what is known.
    Route,
    /// A new contact: follow it first (one relay round trip), then route.
    Follow,
    /// Just followed: its presence should come before this.
    WaitUntil(Instant),
}

/// The engine's IP side: its state, and the decisions over it.
pub(super) struct IpSide {
    /// Commands to the relay client; `None` when no relay is configured.
    relay: Option<mpsc::Sender<RelayCommand>>,
    /// Contacts' presence since the current login; the IP side is its only writer.
    presence: watch::Sender<PresenceView>,
    /// A relay registration waits for its code SMS.
    awaiting_code: bool,
    /// An SMS that looks like the relay's code, come before the registration said it
    /// waits for one (the code SMS can beat the relay's `code-sent`): kept on the modem,
    /// unstored, until the registration asks for it or this deadline passes.
    early_code: Option<(IncomingSms, Instant)>,
    /// When the next full presence refresh is due (while logged in).
    pub(super) next_refresh: Option<Instant>,
    /// The numbers last subscribed to on the relay.
    subscribed: HashSet<String>,
    /// When a number was first subscribed to, until its presence came: messages to it
    /// wait that long ([`NEW_CONTACT_WAIT`]) for it rather than go by SMS at once.
    presence_asked: HashMap<String, Instant>,
    /// When the earliest IP message waiting for its receipt is due to be revoked.
    pub(super) next_deadline: Option<Instant>,
    /// Messages sent to the relay again after a login, because an earlier send's fate is
    /// unknown: a `NotConnected` answer says only that the resend did not go, not that
    /// the relay does not hold the message (it waits for the next login, not for SMS).
    resent: HashSet<MessageId>,
}

impl IpSide {
    pub(super) fn new() -> IpSide {
        IpSide {
            relay: None,
            presence: watch::channel(PresenceView::default()).0,
            awaiting_code: false,
            early_code: None,
            next_refresh: None,
            subscribed: HashSet::new(),
            presence_asked: HashMap::new(),
            next_deadline: None,
            resent: HashSet::new(),
        }
    }

    pub(super) fn with_relay(&mut self, commands: mpsc::Sender<RelayCommand>) {
        self.relay = Some(commands);
    }

    /// Whether a relay is configured.
    pub(super) fn enabled(&self) -> bool {
        self.relay.is_some()
    }

    pub(super) fn presence_view(&self) -> watch::Receiver<PresenceView> {
        self.presence.subscribe()
    }

    /// The presence view as it is now.
    pub(super) fn presence(&self) -> PresenceView {
        self.presence.borrow().clone()
    }

    /// Sends a command to the relay client, if there is one.
    pub(super) async fn command(&self, cmd: RelayCommand) {
        if let Some(relay) = &self.relay
            && relay.send(cmd).await.is_err()
        {
            warn!("the relay client is gone");
        }
    }

    /// Whether `peer` is followed on the relay (a new contact is not).
    pub(super) fn follows(&self, peer: &str) -> bool {
        self.subscribed.contains(peer)
    }

    // ----- registration -----

    /// When the code SMS kept aside stops waiting for the registration.
    pub(super) fn early_code_due(&self) -> Option<Instant> {
        self.early_code.as_ref().map(|(_, at)| *at)
    }

    pub(super) fn take_early_code(&mut self) -> Option<IncomingSms> {
        self.early_code.take().map(|(sms, _)| sms)
    }

    /// The registration waits for the code SMS: the one kept aside, if any, is it.
    pub(super) fn awaiting_code(&mut self) -> Option<IncomingSms> {
        self.awaiting_code = true;
        self.take_early_code()
    }

    /// Logged in: no code is awaited; one kept aside is void (to delete, unseen).
    pub(super) fn logged_in(&mut self) -> Option<IncomingSms> {
        self.awaiting_code = false;
        self.take_early_code()
    }

    /// Takes the relay's registration-code SMS out of the SMS path: while a registration
    /// waits for it, the code goes to the relay client and the SMS is deleted, never
    /// stored. One that comes while we are not logged in but before the registration
    /// asked (the SMS can beat the relay's answer, or a killed daemon left it) is kept
    /// aside, still on the modem: the newest only (each new code voids the one before;
    /// older ones are deleted), used when the registration asks, deleted unseen when we
    /// log in without it. Anything else is an ordinary SMS.
    pub(super) fn code_sms(
        &mut self,
        sms: IncomingSms,
        pattern: &str,
        logged_in: bool,
        now: Instant,
    ) -> CodeSms {
        if !self.enabled() {
            return CodeSms::Ordinary(sms);
        }
        let Some(code) = code_in(pattern, &sms.text) else {
            return CodeSms::Ordinary(sms);
        };
        if self.awaiting_code {
            info!("registration code received by SMS");
            return CodeSms::ToRelay {
                code,
                delete: sms.path,
            };
        }
        if logged_in && sms.listed {
            return CodeSms::Void { delete: sms.path };
        }
        if logged_in {
            // Arrived while we are logged in and asked for nothing: a text that merely
            // looks like a code, an ordinary message.
            return CodeSms::Ordinary(sms);
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
        debug!("a code SMS before the registration asked for it: kept aside");
        self.early_code = Some((keep, now + EARLY_CODE_WAIT));
        CodeSms::KeptAside {
            delete: void.map(|void| void.path),
        }
    }

    // ----- presence -----

    /// Follows `numbers` (those that can be on the relay): the `subscribe` to send.
    pub(super) fn follow(&mut self, numbers: Vec<String>, now: Instant) -> RelayCommand {
        let numbers: Vec<String> = numbers
            .into_iter()
            .filter(|n| crate::number::is_e164(n))
            .collect();
        for number in &numbers {
            if !self.subscribed.contains(number) {
                self.presence_asked.insert(number.clone(), now);
            }
        }
        self.subscribed = numbers.iter().cloned().collect();
        self.presence_asked
            .retain(|n, _| self.subscribed.contains(n));
        RelayCommand::Subscribe {
            numbers: numbers.into_iter().map(Peer::from).collect(),
        }
    }

    /// What the relay said of some numbers, as records for the store's cache.
    pub(super) fn presence_records(
        entries: Vec<PresenceReport>,
        now_ms: i64,
    ) -> Vec<PresenceRecord> {
        entries
            .into_iter()
            .map(|e| PresenceRecord {
                number: String::from(e.peer),
                registered: e.registered,
                presence: e.presence,
                updated_ms: now_ms,
            })
            .collect()
    }

    /// Takes what the relay said of some numbers into the view: every number whose
    /// presence changed. A snapshot is the whole truth: numbers it does not list are no
    /// longer followed.
    pub(super) fn apply_presence(
        &mut self,
        records: &[PresenceRecord],
        snapshot: bool,
    ) -> Vec<(String, Presence)> {
        for r in records {
            if snapshot {
                // The relay answers for these: they are followed.
                self.subscribed.insert(r.number.clone());
            }
            self.presence_asked.remove(&r.number);
        }
        let before = self.presence();
        let mut view: HashMap<String, PeerPresence> = if snapshot {
            HashMap::new()
        } else {
            (*before).clone()
        };
        for r in records {
            let known = PeerPresence {
                presence: r.presence,
                registered: r.registered,
            };
            view.insert(r.number.clone(), known);
        }
        self.publish(&before, view)
    }

    /// Not logged in any more: what we knew of others holds no longer (offline until
    /// refreshed). The numbers whose presence changed; `None` when nothing was known.
    pub(super) fn forget_presence(&mut self) -> Option<Vec<(String, Presence)>> {
        self.next_refresh = None;
        let before = self.presence();
        if before.is_empty() {
            return None;
        }
        Some(self.publish(&before, HashMap::new()))
    }

    /// Replaces the view; the numbers whose presence changed, in order.
    fn publish(
        &mut self,
        before: &PresenceView,
        after: HashMap<String, PeerPresence>,
    ) -> Vec<(String, Presence)> {
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
        changes
    }

    /// Whether a message to `peer` may be routed now, as far as its presence goes: a new
    /// contact's presence is learnt first, so that the first message to it can go over
    /// IP too; one just followed waits for the answer, a little.
    pub(super) fn gate(
        &self,
        peer: &str,
        view: &PresenceView,
        relay_online: bool,
        now: Instant,
    ) -> PresenceGate {
        if !relay_online || view.contains_key(peer) || !crate::number::is_e164(peer) {
            return PresenceGate::Route;
        }
        if !self.subscribed.contains(peer) {
            return PresenceGate::Follow;
        }
        match self.presence_asked.get(peer) {
            Some(asked) if *asked + NEW_CONTACT_WAIT > now => {
                PresenceGate::WaitUntil(*asked + NEW_CONTACT_WAIT)
            }
            _ => PresenceGate::Route,
        }
    }

    // ----- our messages on the relay -----

    /// What the relay's answer to a send means. `entry` is the message's record on the
    /// relay (`None`: no longer there); `fits_sms`, whether it could fall back to SMS;
    /// `fallback`, how long an `auto` message waits for its receipt.
    pub(super) fn send_answer(
        &mut self,
        entry: Option<&RelayPending>,
        answer: &SendAnswer,
        fits_sms: bool,
        fallback: Duration,
        now_ms: i64,
    ) -> IpStep {
        let Some(entry) = entry else {
            return IpStep::Nothing;
        };
        let id = &entry.message.id;
        match answer {
            // A resend that did not go: the earlier send may be on the relay.
            SendAnswer::NotConnected if self.resent.contains(id) => {
                info!(%id, "the relay is not reachable; asked again after the next login");
                return IpStep::Nothing;
            }
            SendAnswer::Lost => {}
            _ => {
                self.resent.remove(id);
            }
        }
        match answer {
            SendAnswer::Accepted {
                state: Placement::Online | Placement::Queued,
                ..
            } => {
                // Waiting for the receipt; for `auto` only as long as the fallback allows
                // (a text too long for SMS waits on the relay's store-and-forward).
                // Asked again after a login (see `resume`): its deadline stands.
                let deadline_ms = if entry.stage == RelayStage::Accepted {
                    entry.deadline_ms
                } else {
                    (entry.requested == ChannelRequest::Auto && fits_sms)
                        .then(|| now_ms + fallback.as_millis() as i64)
                };
                IpStep::Sent { deadline_ms }
            }
            SendAnswer::Accepted {
                state: Placement::Delivered,
                ..
            } => IpStep::Delivered,
            SendAnswer::Accepted {
                state: Placement::Revoked | Placement::Expired,
                ..
            } => IpStep::Leave("the relay will not deliver it".into()),
            SendAnswer::Refused { reason, message } => {
                info!(%id, ?reason, %message, "the relay refused an IP message");
                IpStep::Leave(format!("the relay refused it: {message}"))
            }
            // Asked for IP: it waits for the relay (as the router has it wait), rather than
            // fail because the connection dropped between the router's choice and the send.
            SendAnswer::NotConnected if entry.requested == ChannelRequest::Ip => {
                info!(%id, "the relay is not reachable: waiting for it");
                IpStep::Requeue
            }
            SendAnswer::NotConnected => {
                info!(%id, "the relay is not reachable");
                IpStep::Leave("the relay is not reachable".into())
            }
            // It may be on the relay: it stays `sending` and is sent again with the same
            // id after the next login, whose answer decides. Never by SMS before that,
            // or it could arrive on both channels.
            SendAnswer::Lost => {
                info!(%id, "connection lost before the relay answered");
                IpStep::Nothing
            }
        }
    }

    /// What a receipt means.
    pub(super) fn receipt(outcome: Delivery) -> IpStep {
        match outcome {
            Delivery::Delivered => IpStep::Delivered,
            Delivery::Expired => IpStep::Leave("it expired on the relay".into()),
        }
    }

    /// What the answer to a revoke (at the receipt deadline) means.
    pub(super) fn revoke_answer(id: &str, outcome: Option<Revocation>) -> IpStep {
        match outcome {
            Some(Revocation::Revoked) => {
                info!(%id, "no receipt in time and revoked: sending it by SMS");
                IpStep::Leave("no receipt in time".into())
            }
            Some(Revocation::AlreadyDelivered) => IpStep::Delivered,
            // Not connected: revoked again after the next login (the relay decides then).
            None => {
                debug!(%id, "revoke not answered; again after the next login");
                IpStep::Nothing
            }
        }
    }

    /// The message is settled (delivered, or off the relay): no resend is pending.
    pub(super) fn settled(&mut self, id: &str) {
        self.resent.remove(id);
    }

    /// After a login: what the relay did not answer before is asked again. A send with
    /// the same id is no second message (the relay deduplicates); a revoke is idempotent.
    pub(super) fn resume(&mut self, pending: Vec<RelayPending>) -> Vec<RelayCommand> {
        let mut commands = Vec::new();
        for p in pending {
            match p.stage {
                RelayStage::Sent => {
                    self.resent.insert(p.message.id.clone());
                    commands.push(send_command(p.message));
                }
                RelayStage::Revoking => {
                    let id = p.message.id;
                    commands.push(RelayCommand::Revoke { id });
                }
                // Its receipt may have been pushed into the connection that died (the
                // relay sends a receipt once, protocol §9). With a deadline, the revoke
                // at the deadline tells; without one (asked for IP, or too long for SMS)
                // nothing else would: ask with the same id, the answer says where it is.
                RelayStage::Accepted if p.deadline_ms.is_none() => {
                    commands.push(send_command(p.message));
                }
                RelayStage::Accepted => {}
            }
        }
        commands
    }
}

/// The earliest receipt deadline among `pending`, as an instant (`now_ms` is `now`).
fn earliest_deadline(pending: &[RelayPending], now_ms: i64, now: Instant) -> Option<Instant> {
    pending
        .iter()
        .filter(|p| p.stage == RelayStage::Accepted)
        .filter_map(|p| p.deadline_ms)
        .min()
        .map(|due| now + Duration::from_millis(due.saturating_sub(now_ms).max(0) as u64))
}

/// The ids of the messages whose receipt deadline passed (`now_ms`).
fn overdue(pending: Vec<RelayPending>, now_ms: i64) -> Vec<MessageId> {
    pending
        .into_iter()
        .filter(|p| p.stage == RelayStage::Accepted && p.deadline_ms.is_some_and(|d| d <= now_ms))
        .map(|p| p.message.id)
        .collect()
}

/// The relay's `send` of one of our messages.
fn send_command(message: Message) -> RelayCommand {
    RelayCommand::Send {
        id: message.id,
        to: message.peer,
        text: message.text,
        ts: message.timestamp_ms,
    }
}

impl Engine {
    pub(super) async fn on_relay(&mut self, event: RelayEvent) {
        match event {
            RelayEvent::State(state) => {
                info!(relay = %state, "relay state");
                self.status.send_modify(|s| s.relay = state);
                if state != RelayState::Online
                    && let Some(changes) = self.ip.forget_presence()
                {
                    self.presence_changed(changes).await;
                }
            }
            RelayEvent::LoggedIn { queued } => {
                info!(queued, "logged in to the relay");
                if let Some(sms) = self.ip.logged_in() {
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
                info!("relay registration: waiting for the code SMS");
                debug!(%number, "the code SMS is awaited for");
                if let Some(sms) = self.ip.awaiting_code() {
                    Box::pin(self.on_incoming(sms)).await;
                }
            }
            RelayEvent::Deliver { from, id, text, ts } => self.on_deliver(from, id, text, ts).await,
            RelayEvent::Confirm { from, id, outcome } => self.on_confirm(from, id, outcome).await,
            RelayEvent::Snapshot(entries) => {
                // The periodic refresh: the next full snapshot is due.
                self.ip.next_refresh = self
                    .config
                    .presence_refresh
                    .map(|every| Instant::now() + every);
                self.apply_presence(entries, true).await
            }
            RelayEvent::Presence(entry) => self.apply_presence(vec![entry], false).await,
            RelayEvent::SendAnswer { id, answer } => self.on_send_answer(id, answer).await,
            RelayEvent::RevokeAnswer { id, outcome } => {
                let id = String::from(id);
                let step = IpSide::revoke_answer(&id, outcome);
                self.on_relay_step(&id, step).await
            }
            RelayEvent::Receipt { id, outcome, .. } => {
                let id = String::from(id);
                self.on_relay_step(&id, IpSide::receipt(outcome)).await
            }
        }
    }

    /// Takes the relay's registration-code SMS out of the SMS path ([`IpSide::code_sms`]);
    /// gives back anything else, to be handled as an ordinary SMS.
    pub(super) async fn take_code_sms(&mut self, sms: IncomingSms) -> Option<IncomingSms> {
        let logged_in = self.status.borrow().relay == RelayState::Online;
        let pattern = &self.config.code_pattern;
        match self.ip.code_sms(sms, pattern, logged_in, Instant::now()) {
            CodeSms::Ordinary(sms) => Some(sms),
            CodeSms::ToRelay { code, delete } => {
                self.relay_command(RelayCommand::Code(code)).await;
                self.command(ModemCommand::Delete { path: delete }).await;
                None
            }
            CodeSms::Void { delete } => {
                info!("a registration code SMS left from before the restart: deleted");
                self.command(ModemCommand::Delete { path: delete }).await;
                None
            }
            CodeSms::KeptAside { delete } => {
                if let Some(path) = delete {
                    debug!("a newer code SMS than the one kept aside: the older is void, deleted");
                    self.command(ModemCommand::Delete { path }).await;
                }
                None
            }
        }
    }

    /// Follows the conversation peers and watched numbers that can be on the relay.
    pub(super) async fn subscribe_followed(&mut self) {
        if !self.ip.enabled() {
            return;
        }
        let numbers = match self.store.call(|s| s.followed()).await {
            Ok(numbers) => numbers,
            Err(e) => return warn!(cause = %e, "cannot read the followed numbers"),
        };
        let subscribe = self.ip.follow(numbers, Instant::now());
        self.relay_command(subscribe).await;
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
                info!(id = %message.id, "ip message received");
                debug!(id = %message.id, peer = %message.peer, "ip message received from");
                let new_contact = !self.ip.follows(&message.peer);
                let id = message.id.to_string();
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

    /// Takes what the relay said of some numbers: into the store's cache, then into the
    /// view and a `PresenceChanged` for each change (with no wait between the two, so
    /// that the API never shows a presence whose signal is still to come).
    async fn apply_presence(&mut self, entries: Vec<PresenceReport>, snapshot: bool) {
        let records = IpSide::presence_records(entries, now_ms());
        let cached = records.clone();
        if let Err(e) = self.store.call(move |s| s.set_presence(&cached)).await {
            warn!(cause = %e, "cannot cache presence");
        }
        let changes = self.ip.apply_presence(&records, snapshot);
        self.presence_changed(changes).await;
    }

    /// Announces presence changes; someone may have come online: messages waiting for IP
    /// may go now.
    async fn presence_changed(&mut self, changes: Vec<(String, Presence)>) {
        for (number, presence) in changes {
            self.announce(Event::Presence { number, presence }).await;
        }
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
            .call(move |s| {
                Ok(s.relay_pending()?
                    .into_iter()
                    .find(|p| p.message.id == key.as_str()))
            })
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
        let entry = self.on_relay_entry(&id).await;
        let fits_sms = entry.as_ref().is_some_and(|e| self.fits_sms(&e.message));
        let fallback = self.config.fallback_timeout;
        let step = self
            .ip
            .send_answer(entry.as_ref(), &answer, fits_sms, fallback, now_ms());
        match entry {
            Some(entry) => self.carry_out(entry, step).await,
            None => {
                self.ip.settled(&id);
                debug!(%id, ?answer, "answer for a message no longer on the relay");
            }
        }
    }

    /// Carries out `step` for the message `id`, if it is still on the relay.
    async fn on_relay_step(&mut self, id: &str, step: IpStep) {
        match self.on_relay_entry(id).await {
            Some(entry) => self.carry_out(entry, step).await,
            None => debug!(%id, ?step, "answer for a message no longer on the relay"),
        }
    }

    /// Does what the IP side decided for a message of ours on the relay.
    async fn carry_out(&mut self, entry: RelayPending, step: IpStep) {
        let id = entry.message.id.clone();
        let key = id.clone();
        match step {
            IpStep::Nothing => {}
            IpStep::Sent { deadline_ms } => {
                match self
                    .store
                    .call(move |s| s.mark_sent_ip(&key, deadline_ms))
                    .await
                {
                    Ok(m) => self.announce(Event::status_of(m)).await,
                    Err(e) => warn!(%id, cause = %e, "cannot record an accepted IP message"),
                }
                self.schedule_deadlines().await;
            }
            IpStep::Delivered => self.delivered_ip(&id).await,
            IpStep::Leave(why) => self.leave_relay(entry, &why).await,
            IpStep::Requeue => {
                match self.store.call(move |s| s.requeue_off_relay(&key)).await {
                    Ok(m) => self.announce(Event::status_of(m)).await,
                    Err(e) => warn!(%id, cause = %e, "cannot put a message back in the outbox"),
                }
                self.schedule_deadlines().await;
                self.pump().await;
            }
        }
    }

    async fn delivered_ip(&mut self, id: &str) {
        self.ip.settled(id);
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
        self.ip.settled(&id);
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

    /// After a login: what the relay did not answer before is asked again
    /// ([`IpSide::resume`]).
    async fn resume_on_relay(&mut self) {
        let pending = match self.store.call(|s| s.relay_pending()).await {
            Ok(pending) => pending,
            Err(e) => return warn!(cause = %e, "cannot read messages on the relay"),
        };
        for command in self.ip.resume(pending) {
            self.relay_command(command).await;
        }
        self.schedule_deadlines().await;
    }

    /// Sets the timer for the earliest receipt deadline.
    pub(super) async fn schedule_deadlines(&mut self) {
        let pending = match self.store.call(|s| s.relay_pending()).await {
            Ok(pending) => pending,
            Err(e) => return warn!(cause = %e, "cannot read messages on the relay"),
        };
        self.ip.next_deadline = earliest_deadline(&pending, now_ms(), Instant::now());
    }

    /// No receipt in time: revoke; the answer decides between SMS and delivered.
    pub(super) async fn revoke_overdue(&mut self) {
        let pending = match self.store.call(|s| s.relay_pending()).await {
            Ok(pending) => pending,
            Err(e) => return warn!(cause = %e, "cannot read messages on the relay"),
        };
        for id in overdue(pending, now_ms()) {
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
            self.relay_command(RelayCommand::Revoke { id }).await;
        }
        self.schedule_deadlines().await;
    }

    fn fits_sms(&self, message: &Message) -> bool {
        crate::sms_text::estimate(&message.text).segments <= self.config.max_parts
    }

    /// Sends a command to the relay client, if there is one.
    pub(super) async fn relay_command(&self, cmd: RelayCommand) {
        self.ip.command(cmd).await;
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

    const BOB: &str = "+15550002222";
    const MIN: Duration = Duration::from_secs(60);

    fn pending(
        requested: ChannelRequest,
        stage: RelayStage,
        deadline_ms: Option<i64>,
    ) -> RelayPending {
        RelayPending {
            message: Message {
                id: "m1".into(),
                peer: BOB.into(),
                direction: crate::domain::Direction::Outgoing,
                text: "hi".into(),
                channel: None,
                status: Status::Sending,
                timestamp_ms: 1,
                read: true,
                error: None,
            },
            requested,
            stage,
            deadline_ms,
        }
    }

    fn accepted(state: Placement) -> SendAnswer {
        SendAnswer::Accepted {
            state,
            duplicate: false,
        }
    }

    #[test]
    fn what_an_answer_to_a_send_means() {
        use ChannelRequest::{Auto, Ip};
        use RelayStage::{Accepted, Sent};
        let leave = |why: &str| IpStep::Leave(why.into());
        let refused = SendAnswer::Refused {
            reason: crate::relay::client::Refusal::RecipientUnregistered,
            message: "not here".into(),
        };
        // (requested, stage, deadline, fits SMS, resent), answer -> step. Mostly a
        // message sent once, no deadline yet, that fits an SMS:
        let auto = (Auto, Sent, None, true, false);
        let ip_only = (Ip, Sent, None, true, false);
        let auto_resent = (Auto, Sent, None, true, true);
        let fallback = IpStep::Sent {
            deadline_ms: Some(1000 + 60_000),
        };
        let no_deadline = IpStep::Sent { deadline_ms: None };
        let wont = || leave("the relay will not deliver it");
        let refusal = || leave("the relay refused it: not here");
        let rows = [
            (auto, accepted(Placement::Online), fallback.clone()),
            (auto, accepted(Placement::Queued), fallback),
            // Too long for SMS, or asked for IP: no fallback, so no deadline.
            (
                (Auto, Sent, None, false, false),
                accepted(Placement::Online),
                no_deadline.clone(),
            ),
            (ip_only, accepted(Placement::Online), no_deadline),
            // Asked again after a login: the deadline it had stands.
            (
                (Auto, Accepted, Some(5), true, true),
                accepted(Placement::Queued),
                IpStep::Sent {
                    deadline_ms: Some(5),
                },
            ),
            (auto, accepted(Placement::Delivered), IpStep::Delivered),
            (auto, accepted(Placement::Revoked), wont()),
            (auto, accepted(Placement::Expired), wont()),
            (auto, refused.clone(), refusal()),
            (ip_only, refused, refusal()),
            // Never sent: by SMS at once, or back to the outbox when IP was asked for.
            (
                auto,
                SendAnswer::NotConnected,
                leave("the relay is not reachable"),
            ),
            (ip_only, SendAnswer::NotConnected, IpStep::Requeue),
            // A resend that did not go says nothing of the first send: wait for the login.
            (auto_resent, SendAnswer::NotConnected, IpStep::Nothing),
            // Its fate is unknown: never by SMS before the relay's answer.
            (auto, SendAnswer::Lost, IpStep::Nothing),
            (auto_resent, SendAnswer::Lost, IpStep::Nothing),
        ];
        for ((requested, stage, deadline, fits, resent), answer, expected) in rows {
            let mut ip = IpSide::new();
            let entry = pending(requested, stage, deadline);
            if resent {
                ip.resent.insert("m1".into());
            }
            let step = ip.send_answer(Some(&entry), &answer, fits, MIN, 1000);
            assert_eq!(step, expected, "{requested:?} {stage:?} {answer:?}");
        }
        // No longer on the relay: nothing.
        let step = IpSide::new().send_answer(None, &SendAnswer::Lost, true, MIN, 0);
        assert_eq!(step, IpStep::Nothing);
    }

    #[test]
    fn what_receipts_and_revokes_mean() {
        assert_eq!(IpSide::receipt(Delivery::Delivered), IpStep::Delivered);
        assert_eq!(
            IpSide::receipt(Delivery::Expired),
            IpStep::Leave("it expired on the relay".into())
        );
        for (outcome, expected) in [
            (
                Some(Revocation::Revoked),
                IpStep::Leave("no receipt in time".into()),
            ),
            (Some(Revocation::AlreadyDelivered), IpStep::Delivered),
            (None, IpStep::Nothing),
        ] {
            assert_eq!(IpSide::revoke_answer("m1", outcome), expected);
        }
    }

    #[test]
    fn after_a_login_what_was_not_answered_is_asked_again() {
        use RelayStage::{Accepted, Revoking, Sent};
        let rows = [
            (Sent, None, Some("send")),
            (Revoking, Some(5), Some("revoke")),
            // Its receipt may be lost: without a deadline, nothing else would ask.
            (Accepted, None, Some("send")),
            // With one, the revoke at the deadline tells.
            (Accepted, Some(5), None),
        ];
        for (stage, deadline, expected) in rows {
            let mut ip = IpSide::new();
            let commands = ip.resume(vec![pending(ChannelRequest::Auto, stage, deadline)]);
            let got = commands.first().map(|c| match c {
                RelayCommand::Send { .. } => "send",
                RelayCommand::Revoke { .. } => "revoke",
                _ => "other",
            });
            assert_eq!(got, expected, "{stage:?} {deadline:?}");
            assert!(commands.len() <= 1);
            // A resent send is remembered as such (its `NotConnected` then says nothing).
            assert_eq!(ip.resent.contains("m1"), stage == Sent);
        }
    }

    #[test]
    fn deadlines_and_overdue_messages() {
        let now = Instant::now();
        let list = vec![
            pending(ChannelRequest::Auto, RelayStage::Accepted, Some(3000)),
            pending(ChannelRequest::Auto, RelayStage::Accepted, Some(1500)),
            pending(ChannelRequest::Auto, RelayStage::Sent, Some(100)),
        ];
        assert_eq!(
            earliest_deadline(&list, 1000, now),
            Some(now + Duration::from_millis(500))
        );
        assert_eq!(overdue(list.clone(), 1499), Vec::<String>::new());
        assert_eq!(overdue(list, 1500), ["m1"]);
    }

    #[test]
    fn a_new_contact_is_followed_before_its_first_message_is_routed() {
        let now = Instant::now();
        let mut ip = IpSide::new();
        let empty = PresenceView::default();
        // (relay online, peer) -> gate, before following BOB
        assert_eq!(ip.gate(BOB, &empty, true, now), PresenceGate::Follow);
        assert_eq!(ip.gate(BOB, &empty, false, now), PresenceGate::Route);
        assert_eq!(ip.gate("12345", &empty, true, now), PresenceGate::Route);
        let subscribe = ip.follow(vec![BOB.into(), "ACME".into()], now);
        assert_eq!(
            subscribe,
            RelayCommand::Subscribe {
                numbers: vec![Peer::from(BOB)]
            }
        );
        assert_eq!(
            ip.gate(BOB, &empty, true, now),
            PresenceGate::WaitUntil(now + NEW_CONTACT_WAIT)
        );
        assert_eq!(
            ip.gate(BOB, &empty, true, now + NEW_CONTACT_WAIT),
            PresenceGate::Route
        );
        let records = IpSide::presence_records(
            vec![PresenceReport {
                peer: Peer::from(BOB),
                registered: true,
                presence: Presence::Online,
            }],
            7,
        );
        assert_eq!(records.len(), 1);
        let changes = ip.apply_presence(&records, true);
        assert_eq!(changes, [(BOB.to_owned(), Presence::Online)]);
        assert_eq!(ip.gate(BOB, &ip.presence(), true, now), PresenceGate::Route);
        assert_eq!(
            ip.forget_presence(),
            Some(vec![(BOB.to_owned(), Presence::Offline)])
        );
        assert_eq!(ip.forget_presence(), None);
    }

    #[test]
    fn the_code_sms_is_taken_out_of_the_sms_path() {
        let pattern = "Tandem code: {code}";
        let sms = |path: &str, text: &str, ts: i64| IncomingSms {
            path: OwnedObjectPath::try_from(path).expect("path"),
            number: "+15550009999".into(),
            text: text.into(),
            smsc_timestamp: String::new(),
            timestamp_ms: Some(ts),
            listed: false,
        };
        let now = Instant::now();
        let (tx, _rx) = mpsc::channel(1);
        let mut ip = IpSide::new();
        // No relay: an ordinary SMS.
        let got = ip.code_sms(sms("/s/1", "Tandem code: 123456", 1), pattern, false, now);
        assert!(matches!(got, CodeSms::Ordinary(_)));
        ip.with_relay(tx);
        assert!(matches!(
            ip.code_sms(sms("/s/1", "hello", 1), pattern, false, now),
            CodeSms::Ordinary(_)
        ));
        // Before the registration asks: kept aside; a newer one voids it.
        let got = ip.code_sms(sms("/s/1", "Tandem code: 111111", 1), pattern, false, now);
        assert!(matches!(got, CodeSms::KeptAside { delete: None }));
        let got = ip.code_sms(sms("/s/2", "Tandem code: 222222", 2), pattern, false, now);
        assert!(matches!(got, CodeSms::KeptAside { delete: Some(ref p) } if p.as_str() == "/s/1"));
        assert_eq!(ip.early_code_due(), Some(now + EARLY_CODE_WAIT));
        // The registration asks: the one kept aside is it.
        let kept = ip.awaiting_code().expect("kept aside");
        assert_eq!(kept.path.as_str(), "/s/2");
        let got = ip.code_sms(kept, pattern, false, now);
        assert!(matches!(got, CodeSms::ToRelay { ref code, .. } if code == "222222"));
        // Logged in: an ordinary SMS again, if it came while we watched; one that was on
        // the modem already (listed after a restart that logged in first) is void.
        assert!(ip.logged_in().is_none());
        assert!(matches!(
            ip.code_sms(sms("/s/3", "Tandem code: 333333", 3), pattern, true, now),
            CodeSms::Ordinary(_)
        ));
        let left = IncomingSms {
            listed: true,
            ..sms("/s/4", "Tandem code: 444444", 4)
        };
        assert!(matches!(
            ip.code_sms(left, pattern, true, now),
            CodeSms::Void { delete } if delete.as_str() == "/s/4"
        ));
        let listed_text = IncomingSms {
            listed: true,
            ..sms("/s/5", "see you at 5", 5)
        };
        assert!(matches!(
            ip.code_sms(listed_text, pattern, true, now),
            CodeSms::Ordinary(_)
        ));
    }
}
