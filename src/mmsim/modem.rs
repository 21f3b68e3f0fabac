//! One simulated modem: its state, its SMS storage, and the operations that change them.
//!
//! Two layers:
//! - [`ModemData`] is plain data with synchronous transitions that return the [`Effect`]s
//!   the change must have on the bus (export this SMS object, emit `Added`, ...). It does
//!   no I/O, so the rules (paths re-created on re-enable, references wrapping, multipart
//!   completion) are unit-tested without a bus.
//! - [`Modem`] is the cheap cloneable handle the D-Bus objects, the control interface and
//!   the carrier hold. Each operation takes the modem's `op` lock (a tokio mutex, so that
//!   the bus effects of one operation are all emitted before the next operation starts:
//!   an `Added` never overtakes the object it names), runs one transition under the `data`
//!   lock (a std mutex: it is never held across an `.await`, and property getters only
//!   take it for a copy), then applies the effects.
//!
//! It must not decide where an SMS goes (that is the carrier) nor parse D-Bus arguments
//! (that is the interface layer).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;
use tracing::{debug, warn};
use zbus::object_server::SignalEmitter;
use zbus::{ObjectPath, OwnedObjectPath};

use super::Context;
use super::carrier::{CarrierCmd, Submission};
use super::dbus::{MessagingIface, Modem3gppIface, ModemIface, SmsIface};
use super::mm::{self, MmError, delivery_state, modem_state, pdu_type, sms_state, storage};
use super::text;

/// The properties of one SMS object, as `org.freedesktop.ModemManager1.Sms` shows them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmsProps {
    pub state: u32,
    pub pdu_type: u32,
    pub number: String,
    pub text: String,
    pub data: Vec<u8>,
    pub smsc: String,
    /// Relative validity in minutes, when the creator gave one.
    pub validity: Option<u32>,
    pub class: i32,
    pub delivery_report_request: bool,
    pub message_reference: u32,
    pub timestamp: String,
    pub discharge_timestamp: String,
    pub delivery_state: u32,
    pub storage: u32,
}

impl SmsProps {
    /// An SMS as `Messaging.Create` makes it: submit, state `unknown` (ModemManager 1.20
    /// shows `stored` only once `Sms.Store` put it in the modem's storage), not sent.
    pub fn submit(number: String, text: String) -> Self {
        SmsProps {
            state: sms_state::UNKNOWN,
            pdu_type: pdu_type::SUBMIT,
            number,
            text,
            data: Vec::new(),
            smsc: String::new(),
            validity: None,
            class: -1,
            delivery_report_request: false,
            message_reference: 0,
            timestamp: String::new(),
            discharge_timestamp: String::new(),
            delivery_state: delivery_state::UNKNOWN,
            storage: storage::UNKNOWN,
        }
    }

    /// An SMS arriving from the network (its text is filled in as its parts arrive).
    pub fn deliver(from: String, timestamp: String, smsc: String) -> Self {
        SmsProps {
            state: sms_state::RECEIVED,
            pdu_type: pdu_type::DELIVER,
            timestamp,
            smsc,
            storage: storage::ME,
            ..SmsProps::submit(from, String::new())
        }
    }

    /// A status report about the SMS with `reference` sent to `recipient`.
    pub fn status_report(
        recipient: String,
        reference: u32,
        delivery_state: u32,
        timestamp: String,
        discharge_timestamp: String,
        smsc: String,
    ) -> Self {
        SmsProps {
            pdu_type: pdu_type::STATUS_REPORT,
            message_reference: reference,
            delivery_state,
            discharge_timestamp,
            ..SmsProps::deliver(recipient, timestamp, smsc)
        }
    }
}

/// One SMS in the modem's storage. It survives the modem being disabled; its D-Bus object
/// does not (`path` is `None` while the modem is below `enabled`).
#[derive(Debug, Clone)]
struct SmsRecord {
    path: Option<OwnedObjectPath>,
    props: SmsProps,
    /// Parts a multipart incoming SMS has in all (1 for everything else).
    parts_expected: u32,
    /// The texts of the parts that arrived so far.
    parts: Vec<String>,
}

/// What `GetSent` reports about one SMS the modem sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentRecord {
    pub number: String,
    pub text: String,
    pub delivery_report: bool,
    pub reference: u32,
    pub timestamp: String,
    pub path: OwnedObjectPath,
}

/// What `ListSms` reports about one SMS in storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSms {
    /// `None` while the modem is disabled.
    pub path: Option<OwnedObjectPath>,
    pub props: SmsProps,
}

/// A bus effect of a transition, applied in order by [`Modem::apply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Serve an `Sms` object for the SMS with this storage key at `path`.
    Export {
        key: u64,
        path: OwnedObjectPath,
    },
    Unexport {
        path: OwnedObjectPath,
    },
    Added {
        path: OwnedObjectPath,
        received: bool,
    },
    Deleted {
        path: OwnedObjectPath,
    },
    /// `Messaging.Messages` changed.
    Messages,
    SmsState {
        path: OwnedObjectPath,
    },
    SmsText {
        path: OwnedObjectPath,
    },
    /// A send completed: `MessageReference` and `State` change in one PropertiesChanged,
    /// as ModemManager emits them.
    SmsSent {
        path: OwnedObjectPath,
    },
    SmsStorage {
        path: OwnedObjectPath,
    },
    /// `StateChanged` and every property that follows the state.
    State {
        old: i32,
        new: i32,
        reason: u32,
    },
}

/// The recipient modem is not registered (or gone): the carrier keeps the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("modem not registered")]
pub struct Unreachable;

/// A modem's state and SMS storage. Plain data; see the module doc.
#[derive(Debug)]
pub struct ModemData {
    state: i32,
    /// Set once the modem was removed: every later operation is refused.
    removed: bool,
    /// Storage keys: stable for an SMS's life, unlike its object path.
    next_key: u64,
    sms: BTreeMap<u64, SmsRecord>,
    /// The TP-MR the next sent part gets (0..=255, wrapping).
    next_reference: u32,
    sent: Vec<SentRecord>,
    /// Set by `FailNextSend`, taken by the next `Send`.
    fail_next: Option<MmError>,
}

fn is_enabled(state: i32) -> bool {
    state >= modem_state::ENABLED
}

fn is_registered(state: i32) -> bool {
    state >= modem_state::REGISTERED
}

/// What a new SMS at `path` announces: its object, `Added` and the `Messages` property.
fn appeared(key: u64, path: OwnedObjectPath, received: bool) -> Vec<Effect> {
    vec![
        Effect::Export {
            key,
            path: path.clone(),
        },
        Effect::Added { path, received },
        Effect::Messages,
    ]
}

impl ModemData {
    pub fn new(state: i32) -> Self {
        ModemData {
            state,
            removed: false,
            next_key: 0,
            sms: BTreeMap::new(),
            next_reference: 1,
            sent: Vec::new(),
            fail_next: None,
        }
    }

    pub fn state(&self) -> i32 {
        self.state
    }

    pub fn registered(&self) -> bool {
        !self.removed && is_registered(self.state)
    }

    /// The exported SMS objects, oldest first (`Messaging.Messages`, `List`).
    pub fn messages(&self) -> Vec<OwnedObjectPath> {
        self.sms.values().filter_map(|r| r.path.clone()).collect()
    }

    pub fn sms(&self, key: u64) -> Option<&SmsProps> {
        self.sms.get(&key).map(|r| &r.props)
    }

    pub fn key_of(&self, path: &ObjectPath<'_>) -> Option<u64> {
        self.sms
            .iter()
            .find(|(_, r)| r.path.as_deref() == Some(path))
            .map(|(k, _)| *k)
    }

    pub fn stored(&self) -> Vec<StoredSms> {
        self.sms
            .values()
            .map(|r| StoredSms {
                path: r.path.clone(),
                props: r.props.clone(),
            })
            .collect()
    }

    pub fn sent(&self) -> &[SentRecord] {
        &self.sent
    }

    pub fn set_fail_next(&mut self, error: MmError) {
        self.fail_next = Some(error);
    }

    fn check_enabled(&self) -> Result<(), MmError> {
        if self.removed {
            Err(MmError::wrong_state("modem is gone"))
        } else if !is_enabled(self.state) {
            Err(MmError::wrong_state("modem not enabled"))
        } else {
            Ok(())
        }
    }

    /// Adds an SMS to storage, exported at a new path when the modem is enabled.
    fn insert(
        &mut self,
        props: SmsProps,
        parts_expected: u32,
        parts: Vec<String>,
        alloc: &mut dyn FnMut() -> OwnedObjectPath,
    ) -> (u64, Option<OwnedObjectPath>) {
        let key = self.next_key;
        self.next_key += 1;
        let path = is_enabled(self.state).then(&mut *alloc);
        self.sms.insert(
            key,
            SmsRecord {
                path: path.clone(),
                props,
                parts_expected,
                parts,
            },
        );
        (key, path)
    }

    /// `Messaging.Create`.
    pub fn create(
        &mut self,
        props: SmsProps,
        alloc: &mut dyn FnMut() -> OwnedObjectPath,
    ) -> Result<(OwnedObjectPath, Vec<Effect>), MmError> {
        self.check_enabled()?;
        let (key, path) = self.insert(props, 1, Vec::new(), alloc);
        let path = path.ok_or_else(|| MmError::wrong_state("modem not enabled"))?;
        Ok((path.clone(), appeared(key, path, false)))
    }

    /// `Messaging.Delete`: the SMS with all its parts.
    pub fn delete(&mut self, path: &ObjectPath<'_>) -> Result<Vec<Effect>, MmError> {
        self.check_enabled()?;
        let key = self
            .key_of(path)
            .ok_or_else(|| MmError::not_found(format!("No SMS found with path '{path}'")))?;
        self.sms.remove(&key);
        let path = OwnedObjectPath::from(path.to_owned());
        Ok(vec![
            Effect::Unexport { path: path.clone() },
            Effect::Deleted { path },
            Effect::Messages,
        ])
    }

    fn record_mut(&mut self, key: u64) -> Result<&mut SmsRecord, MmError> {
        self.sms
            .get_mut(&key)
            .ok_or_else(|| MmError::not_found("SMS was deleted"))
    }

    /// `Sms.Store`: the SMS gets a storage; a not yet sent SMS becomes `stored`.
    pub fn store(&mut self, key: u64, requested: u32) -> Result<Vec<Effect>, MmError> {
        self.check_enabled()?;
        let record = self.record_mut(key)?;
        let target = match requested {
            storage::UNKNOWN => storage::ME,
            storage::SM | storage::ME => requested,
            other => {
                return Err(MmError::unsupported(format!(
                    "storage {other} not supported"
                )));
            }
        };
        let mut fx = Vec::new();
        if let Some(path) = record.path.clone() {
            if record.props.storage != target {
                record.props.storage = target;
                fx.push(Effect::SmsStorage { path: path.clone() });
            }
            if record.props.pdu_type == pdu_type::SUBMIT
                && record.props.state != sms_state::STORED
                && record.props.state != sms_state::SENT
            {
                record.props.state = sms_state::STORED;
                fx.push(Effect::SmsState { path });
            }
        }
        Ok(fx)
    }

    /// What `Sms.Send` checks as soon as it is called, before it waits for the modem: an
    /// SMS received, or already sent, cannot be sent. As in ModemManager 1.20, nothing
    /// stops a second `Send` of an SMS whose first one is still waiting for the modem: it
    /// passes this check and goes out twice.
    pub fn check_sendable(&self, key: u64) -> Result<(), MmError> {
        let record = self
            .sms
            .get(&key)
            .ok_or_else(|| MmError::not_found("SMS was deleted"))?;
        if record.props.pdu_type != pdu_type::SUBMIT {
            return Err(MmError::failed("This SMS was received, cannot send it"));
        }
        if record.props.state == sms_state::SENT {
            return Err(MmError::failed(
                "This SMS was already sent, cannot send it again",
            ));
        }
        Ok(())
    }

    /// First half of `Sms.Send`, once the modem is free: the modem's checks. The SMS keeps
    /// its state while the modem works on it (ModemManager shows no `sending`).
    pub fn begin_send(&mut self, key: u64) -> Result<(), MmError> {
        self.check_enabled()?;
        if !is_registered(self.state) {
            return Err(MmError::wrong_state(
                "Cannot send SMS: modem not registered in the network",
            ));
        }
        if let Some(error) = self.fail_next.take() {
            return Err(error);
        }
        self.record_mut(key).map(drop)
    }

    /// Second half of `Sms.Send`: one reference per part (the SMS shows the last one, as
    /// ModemManager does), `sent`, and what the carrier must carry.
    pub fn finish_send(
        &mut self,
        key: u64,
        from: &str,
        now: i64,
        timestamp: String,
    ) -> Result<(Submission, Vec<Effect>), MmError> {
        let mut reference = self.next_reference;
        let record = self
            .sms
            .get(&key)
            .ok_or_else(|| MmError::not_found("SMS was deleted"))?;
        let parts = if record.props.data.is_empty() {
            text::split_parts(&record.props.text)
        } else {
            vec![String::new()]
        };
        for _ in 0..parts.len() {
            reference = self.next_reference;
            self.next_reference = (self.next_reference + 1) % 256;
        }
        let record = self.record_mut(key)?;
        record.props.message_reference = reference;
        record.props.state = sms_state::SENT;
        let props = record.props.clone();
        let path = record.path.clone().unwrap_or_default();
        self.sent.push(SentRecord {
            number: props.number.clone(),
            text: props.text.clone(),
            delivery_report: props.delivery_report_request,
            reference,
            timestamp: timestamp.clone(),
            path: path.clone(),
        });
        let submission = Submission {
            from: from.to_owned(),
            to: props.number,
            text: props.text,
            data: props.data,
            parts,
            delivery_report: props.delivery_report_request,
            reference,
            submitted: now,
        };
        Ok((submission, vec![Effect::SmsSent { path }]))
    }

    /// An SMS (or its first part, or, with `first` `None`, only the announcement of a
    /// multipart SMS of `total` parts) arrives from the network.
    pub fn receive(
        &mut self,
        mut props: SmsProps,
        total: u32,
        first: Option<String>,
        alloc: &mut dyn FnMut() -> OwnedObjectPath,
    ) -> Result<(u64, OwnedObjectPath, Vec<Effect>), Unreachable> {
        if !self.registered() {
            return Err(Unreachable);
        }
        let parts: Vec<String> = first.into_iter().collect();
        let total = total.max(1);
        if parts.len() as u32 >= total {
            props.text = parts.concat();
            props.state = sms_state::RECEIVED;
        } else {
            props.text = String::new();
            props.state = sms_state::RECEIVING;
        }
        let (key, path) = self.insert(props, total, parts, alloc);
        let path = path.ok_or(Unreachable)?;
        Ok((key, path.clone(), appeared(key, path, true)))
    }

    /// The next part of a multipart SMS arrives; the last one completes it. Returns whether
    /// the SMS is now complete.
    pub fn add_part(&mut self, key: u64, part: String) -> Result<(bool, Vec<Effect>), MmError> {
        if self.removed {
            return Err(MmError::not_found("modem is gone"));
        }
        let record = self.record_mut(key)?;
        if record.props.state != sms_state::RECEIVING {
            return Err(MmError::wrong_state("SMS is not receiving parts"));
        }
        record.parts.push(part);
        if (record.parts.len() as u32) < record.parts_expected {
            return Ok((false, Vec::new()));
        }
        record.props.text = record.parts.concat();
        record.props.state = sms_state::RECEIVED;
        let fx = record
            .path
            .clone()
            .map(|path| {
                vec![
                    Effect::SmsText { path: path.clone() },
                    Effect::SmsState { path },
                ]
            })
            .unwrap_or_default();
        Ok((true, fx))
    }

    /// A state change. Leaving the enabled states unexports every SMS object; coming back
    /// re-creates them all under new paths (ModemManager reloads the storage on enable).
    pub fn set_state(
        &mut self,
        new: i32,
        reason: u32,
        alloc: &mut dyn FnMut() -> OwnedObjectPath,
    ) -> Vec<Effect> {
        let old = self.state;
        if old == new || self.removed {
            return Vec::new();
        }
        self.state = new;
        let mut fx = vec![Effect::State { old, new, reason }];
        if is_enabled(old) && !is_enabled(new) {
            for record in self.sms.values_mut() {
                if let Some(path) = record.path.take() {
                    fx.push(Effect::Unexport { path });
                }
            }
            fx.push(Effect::Messages);
        } else if !is_enabled(old) && is_enabled(new) {
            let mut added = Vec::new();
            for (key, record) in self.sms.iter_mut() {
                let path = alloc();
                record.path = Some(path.clone());
                fx.push(Effect::Export {
                    key: *key,
                    path: path.clone(),
                });
                added.push(Effect::Added {
                    path,
                    received: record.props.pdu_type != pdu_type::SUBMIT,
                });
            }
            fx.extend(added);
            fx.push(Effect::Messages);
        }
        fx
    }

    /// The modem goes away: returns every exported SMS path, to unexport.
    pub fn remove(&mut self) -> Vec<OwnedObjectPath> {
        self.removed = true;
        self.sms
            .values_mut()
            .filter_map(|r| r.path.take())
            .collect()
    }
}

/// One modem's identity (fixed) and its state (behind locks; see the module doc).
#[derive(Debug)]
pub struct ModemCell {
    pub index: u32,
    pub path: OwnedObjectPath,
    pub sim_path: OwnedObjectPath,
    /// The number the network knows this modem by.
    pub own_number: String,
    /// Whether the SIM carries the number (`OwnNumbers`); some SIMs do not.
    pub sim_own_number: bool,
    pub imei: String,
    pub imsi: String,
    pub iccid: String,
    data: Mutex<ModemData>,
    /// Serialises operations, so each one's bus effects go out together and in order.
    op: tokio::sync::Mutex<()>,
    /// `true` while `SetDeleteBlocked` holds `Messaging.Delete` calls.
    delete_gate: watch::Sender<bool>,
    /// `SetSendDelay`: how long the modem takes to send an SMS, in ms.
    send_delay_ms: AtomicU32,
}

impl ModemCell {
    pub fn new(
        index: u32,
        sim_index: u32,
        own_number: String,
        sim_own_number: bool,
        state: i32,
    ) -> Self {
        let seed = fnv1a(own_number.as_bytes());
        ModemCell {
            index,
            path: object_path(mm::modem_path(index)),
            sim_path: object_path(mm::sim_path(sim_index)),
            imei: luhn_complete(&format!("35{:012}", seed % 1_000_000_000_000)),
            imsi: format!("{}{:010}", mm::OPERATOR_CODE, (seed >> 8) % 10_000_000_000),
            iccid: luhn_complete(&format!("8901{:014}", (seed >> 4) % 100_000_000_000_000)),
            own_number,
            sim_own_number,
            data: Mutex::new(ModemData::new(state)),
            op: tokio::sync::Mutex::new(()),
            delete_gate: watch::Sender::new(false),
            send_delay_ms: AtomicU32::new(0),
        }
    }

    pub fn set_send_delay(&self, ms: u32) {
        self.send_delay_ms.store(ms, Ordering::Relaxed);
    }

    /// The data, for a short synchronous look or change (never held across `.await`).
    pub fn data(&self) -> MutexGuard<'_, ModemData> {
        self.data.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn set_delete_blocked(&self, blocked: bool) {
        self.delete_gate.send_replace(blocked);
    }

    /// Deletes waiting at the gate: each holds the one receiver it subscribed.
    pub fn blocked_deletes(&self) -> usize {
        self.delete_gate.receiver_count()
    }
}

/// Paths built from our own fixed prefixes are always valid object paths.
pub fn object_path(path: String) -> OwnedObjectPath {
    OwnedObjectPath::from(ObjectPath::from_string_unchecked(path))
}

/// 64-bit FNV-1a: a small deterministic hash for fake identifiers.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Appends the Luhn check digit (IMEIs and ICCIDs carry one).
fn luhn_complete(digits: &str) -> String {
    let sum: u32 = digits
        .chars()
        .rev()
        .filter_map(|c| c.to_digit(10))
        .enumerate()
        .map(|(i, d)| {
            if i % 2 == 0 {
                let d2 = d * 2;
                if d2 > 9 { d2 - 9 } else { d2 }
            } else {
                d
            }
        })
        .sum();
    format!("{digits}{}", (10 - sum % 10) % 10)
}

/// A handle on one modem: its cell plus the simulator context.
#[derive(Clone)]
pub struct Modem {
    pub cell: Arc<ModemCell>,
    pub ctx: Arc<Context>,
}

impl std::fmt::Debug for Modem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Modem")
            .field("path", &self.cell.path)
            .finish()
    }
}

impl Modem {
    pub fn data(&self) -> MutexGuard<'_, ModemData> {
        self.cell.data()
    }

    pub fn own_number(&self) -> &str {
        &self.cell.own_number
    }

    /// Runs one transition with a fresh-SMS-path allocator.
    fn transition<T>(
        &self,
        f: impl FnOnce(&mut ModemData, &mut dyn FnMut() -> OwnedObjectPath) -> T,
    ) -> T {
        let ctx = &self.ctx;
        let mut alloc = || ctx.next_sms_path();
        f(&mut self.data(), &mut alloc)
    }

    /// `Messaging.Create`.
    pub async fn create(&self, props: SmsProps) -> Result<OwnedObjectPath, MmError> {
        let _op = self.cell.op.lock().await;
        let (path, fx) = self.transition(|d, alloc| d.create(props, alloc))?;
        self.apply(fx).await;
        Ok(path)
    }

    /// `Messaging.Delete`; waits first while deletes are blocked (outside the op lock, so
    /// the rest of the modem keeps working).
    pub async fn delete(&self, path: OwnedObjectPath) -> Result<(), MmError> {
        let mut gate = self.cell.delete_gate.subscribe();
        if gate.wait_for(|blocked| !*blocked).await.is_err() {
            return Err(MmError::failed("modem is gone"));
        }
        let _op = self.cell.op.lock().await;
        let fx = self.data().delete(&path)?;
        self.apply(fx).await;
        Ok(())
    }

    /// `Sms.Store`.
    pub async fn store(&self, key: u64, requested: u32) -> Result<(), MmError> {
        let _op = self.cell.op.lock().await;
        let fx = self.data().store(key, requested)?;
        self.apply(fx).await;
        Ok(())
    }

    /// `Sms.Send`: `sending`, then `sent` with a reference, then the carrier takes it.
    pub async fn send(&self, key: u64) -> Result<(), MmError> {
        self.data().check_sendable(key)?;
        let _op = self.cell.op.lock().await;
        self.data().begin_send(key)?;
        // The modem at work (AT+CMGS until the network's answer): the SMS leaves at the
        // end, unless the simulator dies first.
        let delay = self.cell.send_delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(delay.into())).await;
        }
        let now = text::now_unix();
        let timestamp = text::mm_timestamp(now, self.ctx.settings.utc_offset_minutes);
        let (submission, fx) = self
            .data()
            .finish_send(key, self.own_number(), now, timestamp)?;
        self.apply(fx).await;
        debug!(modem = %self.cell.path, to = %submission.to, reference = submission.reference, "sms sent");
        let (to, text) = (submission.to.clone(), submission.text.clone());
        self.ctx.carrier(CarrierCmd::Submit(submission));
        self.ctx.emit_sent(self.own_number(), &to, &text).await;
        Ok(())
    }

    /// An SMS (or its first part) arrives; see [`ModemData::receive`].
    pub async fn receive(
        &self,
        props: SmsProps,
        total: u32,
        first: Option<String>,
    ) -> Result<(u64, OwnedObjectPath), Unreachable> {
        let _op = self.cell.op.lock().await;
        let (key, path, fx) = self.transition(|d, alloc| d.receive(props, total, first, alloc))?;
        self.apply(fx).await;
        Ok((key, path))
    }

    /// The next part of a multipart SMS arrives.
    pub async fn add_part(&self, key: u64, part: String) -> Result<bool, MmError> {
        let _op = self.cell.op.lock().await;
        let (complete, fx) = self.data().add_part(key, part)?;
        self.apply(fx).await;
        Ok(complete)
    }

    /// Jumps to `new` (`SetModemState`).
    pub async fn set_state(&self, new: i32, reason: u32) {
        let _op = self.cell.op.lock().await;
        self.step(new, reason).await;
    }

    /// `Modem.Enable`: walks through the transitional states like a real modem does.
    pub async fn enable(&self, enable: bool) -> Result<(), MmError> {
        let _op = self.cell.op.lock().await;
        let state = self.data().state();
        let steps: &[i32] = match (enable, state) {
            (_, s) if s < modem_state::DISABLED => {
                return Err(MmError::wrong_state(format!(
                    "modem in state {s} cannot be enabled or disabled"
                )));
            }
            (true, s) if s >= modem_state::ENABLED => &[],
            (true, _) => &[
                modem_state::ENABLING,
                modem_state::ENABLED,
                modem_state::REGISTERED,
            ],
            (false, modem_state::DISABLED) => &[],
            (false, _) => &[modem_state::DISABLING, modem_state::DISABLED],
        };
        for new in steps {
            self.step(*new, mm::change_reason::USER_REQUESTED).await;
        }
        Ok(())
    }

    /// One state change with its effects; tells the carrier when the modem can receive.
    async fn step(&self, new: i32, reason: u32) {
        let was_registered = self.data().registered();
        let fx = self.transition(|d, alloc| d.set_state(new, reason, alloc));
        self.apply(fx).await;
        if !was_registered && self.data().registered() {
            self.ctx.carrier(CarrierCmd::Reachable {
                number: self.cell.own_number.clone(),
            });
        }
    }

    /// Takes the modem off the bus: its SMS objects, its interfaces and its SIM.
    pub async fn remove(&self) {
        let _op = self.cell.op.lock().await;
        let paths = self.data().remove();
        self.cell.set_delete_blocked(false);
        let server = self.ctx.conn.object_server();
        let path = &self.cell.path;
        let results = [
            server.remove::<ModemIface, _>(path).await,
            server.remove::<Modem3gppIface, _>(path).await,
            server.remove::<MessagingIface, _>(path).await,
            server
                .remove::<super::dbus::SimIface, _>(&self.cell.sim_path)
                .await,
        ];
        for result in results {
            if let Err(error) = result {
                warn!(modem = %path, %error, "could not remove an interface");
            }
        }
        for sms in paths {
            if let Err(error) = server.remove::<SmsIface, _>(&sms).await {
                warn!(sms = %sms, %error, "could not remove an SMS object");
            }
        }
    }

    /// Applies effects in order. A failure is logged and the rest still applied: the
    /// storage is the truth, the bus only mirrors it.
    async fn apply(&self, effects: Vec<Effect>) {
        for effect in effects {
            if let Err(error) = self.apply_one(&effect).await {
                warn!(modem = %self.cell.path, ?effect, %error, "bus effect failed");
            }
        }
    }

    async fn apply_one(&self, effect: &Effect) -> zbus::Result<()> {
        let conn = &self.ctx.conn;
        let server = conn.object_server();
        let modem_emitter = || SignalEmitter::new(conn, self.cell.path.as_ref());
        match effect {
            Effect::Export { key, path } => {
                server.at(path, SmsIface::new(self.clone(), *key)).await?;
            }
            Effect::Unexport { path } => {
                server.remove::<SmsIface, _>(path).await?;
            }
            Effect::Added { path, received } => {
                MessagingIface::added(&modem_emitter()?, path.as_ref(), *received).await?;
            }
            Effect::Deleted { path } => {
                MessagingIface::deleted(&modem_emitter()?, path.as_ref()).await?;
            }
            Effect::Messages => {
                let iface = server
                    .interface::<_, MessagingIface>(&self.cell.path)
                    .await?;
                iface
                    .get()
                    .await
                    .messages_changed(iface.signal_emitter())
                    .await?;
            }
            Effect::SmsSent { path } => {
                let iface = server.interface::<_, SmsIface>(path).await?;
                let (state, reference) = {
                    let data = self.data();
                    data.key_of(&path.as_ref())
                        .and_then(|key| data.sms(key))
                        .map_or((0, 0), |sms| (sms.state, sms.message_reference))
                };
                zbus::fdo::Properties::properties_changed(
                    iface.signal_emitter(),
                    zbus::names::InterfaceName::from_static_str_unchecked(
                        "org.freedesktop.ModemManager1.Sms",
                    ),
                    HashMap::from([
                        ("MessageReference", zbus::Variant::from(reference)),
                        ("State", zbus::Variant::from(state)),
                    ]),
                    Cow::Borrowed(&[]),
                )
                .await?;
            }
            Effect::SmsState { path } | Effect::SmsText { path } | Effect::SmsStorage { path } => {
                let iface = server.interface::<_, SmsIface>(path).await?;
                let sms = iface.get().await;
                let emitter = iface.signal_emitter();
                match effect {
                    Effect::SmsState { .. } => sms.state_changed(emitter).await?,
                    Effect::SmsText { .. } => sms.text_changed(emitter).await?,
                    _ => sms.storage_changed(emitter).await?,
                }
            }
            Effect::State { old, new, reason } => {
                ModemIface::emit_state_changed(&modem_emitter()?, *old, *new, *reason).await?;
                let iface = server.interface::<_, ModemIface>(&self.cell.path).await?;
                let modem = iface.get().await;
                let emitter = iface.signal_emitter();
                modem.state_changed(emitter).await?;
                modem.power_state_changed(emitter).await?;
                modem.signal_quality_changed(emitter).await?;
                modem.access_technologies_changed(emitter).await?;
                let iface = server
                    .interface::<_, Modem3gppIface>(&self.cell.path)
                    .await?;
                let gpp = iface.get().await;
                let emitter = iface.signal_emitter();
                gpp.registration_state_changed(emitter).await?;
                gpp.operator_code_changed(emitter).await?;
                gpp.operator_name_changed(emitter).await?;
                gpp.packet_service_state_changed(emitter).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A data set with an allocator that counts paths from 0.
    struct Fixture {
        data: ModemData,
        next: u32,
    }

    impl Fixture {
        fn new(state: i32) -> Self {
            Fixture {
                data: ModemData::new(state),
                next: 0,
            }
        }

        fn run<T>(
            &mut self,
            f: impl FnOnce(&mut ModemData, &mut dyn FnMut() -> OwnedObjectPath) -> T,
        ) -> T {
            let next = &mut self.next;
            let mut alloc = || {
                let path = object_path(mm::sms_path(*next));
                *next += 1;
                path
            };
            f(&mut self.data, &mut alloc)
        }
    }

    fn p(n: u32) -> OwnedObjectPath {
        object_path(mm::sms_path(n))
    }

    fn incoming() -> SmsProps {
        SmsProps::deliver(
            "+15550001111".into(),
            "2024-05-01T12:34:56+02".into(),
            "+15550000000".into(),
        )
    }

    #[test]
    fn create_exports_and_announces() {
        let mut f = Fixture::new(modem_state::REGISTERED);
        let (path, fx) = f
            .run(|d, a| d.create(SmsProps::submit("+1555".into(), "hi".into()), a))
            .unwrap();
        assert_eq!(path, p(0));
        assert_eq!(
            fx,
            vec![
                Effect::Export { key: 0, path: p(0) },
                Effect::Added {
                    path: p(0),
                    received: false
                },
                Effect::Messages
            ]
        );
        assert_eq!(f.data.messages(), vec![p(0)]);
        assert_eq!(f.data.sms(0).unwrap().state, sms_state::UNKNOWN);
    }

    #[test]
    fn create_needs_an_enabled_modem() {
        let mut f = Fixture::new(modem_state::DISABLED);
        let err = f
            .run(|d, a| d.create(SmsProps::submit("+1555".into(), "hi".into()), a))
            .unwrap_err();
        assert_eq!(
            err.error_name(),
            "org.freedesktop.ModemManager1.Error.Core.WrongState"
        );
    }

    #[test]
    fn send_assigns_wrapping_references_per_part() {
        let mut f = Fixture::new(modem_state::REGISTERED);
        f.data.next_reference = 254;
        f.run(|d, a| d.create(SmsProps::submit("+1555".into(), "a".repeat(400)), a))
            .unwrap();
        f.data.check_sendable(0).unwrap();
        f.data.begin_send(0).unwrap();
        // No `sending`, as in ModemManager: the state holds until the modem answered.
        assert_eq!(f.data.sms(0).unwrap().state, sms_state::UNKNOWN);
        let (sub, _) = f.data.finish_send(0, "+1666", 0, "ts".into()).unwrap();
        // Three parts: 254, 255, 0; the SMS shows the last one.
        assert_eq!(sub.reference, 0);
        assert_eq!(sub.parts.len(), 3);
        assert_eq!(f.data.next_reference, 1);
        let sms = f.data.sms(0).unwrap();
        assert_eq!((sms.state, sms.message_reference), (sms_state::SENT, 0));
        assert_eq!(f.data.sent()[0].reference, 0);
        // Sent once: never again.
        let err = f.data.check_sendable(0).unwrap_err();
        assert!(err.to_string().contains("already sent"), "{err}");
    }

    #[test]
    fn send_needs_registration_and_honours_fail_next() {
        let mut f = Fixture::new(modem_state::ENABLED);
        f.run(|d, a| d.create(SmsProps::submit("+1555".into(), "hi".into()), a))
            .unwrap();
        let err = f.data.begin_send(0).unwrap_err();
        assert_eq!(
            err.error_name(),
            "org.freedesktop.ModemManager1.Error.Core.WrongState"
        );
        f.data.state = modem_state::REGISTERED;
        f.data.set_fail_next(MmError::failed("boom"));
        assert_eq!(f.data.begin_send(0).unwrap_err(), MmError::failed("boom"));
        // Only the next send fails.
        assert!(f.data.begin_send(0).is_ok());
    }

    #[test]
    fn multipart_completes_at_its_last_part() {
        let mut f = Fixture::new(modem_state::REGISTERED);
        let (key, path, fx) = f
            .run(|d, a| d.receive(incoming(), 3, Some("ab".into()), a))
            .unwrap();
        assert!(fx.contains(&Effect::Added {
            path: path.clone(),
            received: true
        }));
        let sms = f.data.sms(key).unwrap();
        assert_eq!((sms.state, sms.text.as_str()), (sms_state::RECEIVING, ""));
        assert_eq!(f.data.add_part(key, "cd".into()).unwrap(), (false, vec![]));
        let (done, fx) = f.data.add_part(key, "ef".into()).unwrap();
        assert!(done);
        assert_eq!(
            fx,
            vec![
                Effect::SmsText { path: path.clone() },
                Effect::SmsState { path }
            ]
        );
        let sms = f.data.sms(key).unwrap();
        assert_eq!(
            (sms.state, sms.text.as_str()),
            (sms_state::RECEIVED, "abcdef")
        );
        assert!(f.data.add_part(key, "gh".into()).is_err());
    }

    #[test]
    fn receive_needs_registration() {
        let mut f = Fixture::new(modem_state::ENABLED);
        assert_eq!(
            f.run(|d, a| d.receive(incoming(), 1, Some("x".into()), a))
                .unwrap_err(),
            Unreachable
        );
    }

    #[test]
    fn delete_removes_the_whole_sms() {
        let mut f = Fixture::new(modem_state::REGISTERED);
        let (key, path, _) = f
            .run(|d, a| d.receive(incoming(), 2, Some("a".into()), a))
            .unwrap();
        let fx = f.data.delete(&path).unwrap();
        assert_eq!(
            fx,
            vec![
                Effect::Unexport { path: path.clone() },
                Effect::Deleted { path: path.clone() },
                Effect::Messages
            ]
        );
        assert!(f.data.sms(key).is_none());
        let err = f.data.delete(&path).unwrap_err();
        assert_eq!(
            err.error_name(),
            "org.freedesktop.ModemManager1.Error.Core.NotFound"
        );
    }

    #[test]
    fn re_enabling_re_creates_paths() {
        let mut f = Fixture::new(modem_state::REGISTERED);
        f.run(|d, a| d.receive(incoming(), 1, Some("x".into()), a))
            .unwrap();
        f.run(|d, a| d.create(SmsProps::submit("+1555".into(), "y".into()), a))
            .unwrap();
        let fx = f.run(|d, a| d.set_state(modem_state::DISABLED, 0, a));
        assert_eq!(
            fx[0],
            Effect::State {
                old: 8,
                new: 3,
                reason: 0
            }
        );
        assert!(fx.contains(&Effect::Unexport { path: p(0) }));
        assert!(f.data.messages().is_empty());
        assert_eq!(f.data.stored().len(), 2);
        let fx = f.run(|d, a| d.set_state(modem_state::REGISTERED, 0, a));
        assert_eq!(f.data.messages(), vec![p(2), p(3)]);
        assert!(fx.contains(&Effect::Added {
            path: p(2),
            received: true
        }));
        assert!(fx.contains(&Effect::Added {
            path: p(3),
            received: false
        }));
        // Between enabled states nothing is re-created.
        let fx = f.run(|d, a| d.set_state(modem_state::SEARCHING, 0, a));
        assert_eq!(
            fx,
            vec![Effect::State {
                old: 8,
                new: 7,
                reason: 0
            }]
        );
    }

    #[test]
    fn fake_identifiers_are_deterministic_and_valid() {
        let a = ModemCell::new(0, 0, "+15550001111".into(), true, 8);
        let b = ModemCell::new(5, 5, "+15550001111".into(), true, 8);
        assert_eq!(a.imei, b.imei);
        assert_eq!(a.imei.len(), 15);
        assert_eq!(luhn_complete("7992739871"), "79927398713");
        assert_eq!(a.imsi.len(), 15);
        assert!(a.imsi.starts_with("00101"));
    }
}
