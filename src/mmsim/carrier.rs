//! The simulated carrier: an SMS centre that carries SMS between the hosted modems, keeps
//! what it cannot deliver yet (store-and-forward), and sends status reports.
//!
//! It is one task that owns the undelivered queue (no lock: nobody else touches it) and
//! receives [`CarrierCmd`]s over an unbounded channel: submissions from `Sms.Send`,
//! deliveries from the control interface, and "this number is reachable again" from modems
//! that became registered. Each delivery runs as a child task (multipart parts arrive
//! `part_interval` apart, reports come `report_delay` after delivery); the children are
//! aborted when the carrier stops. It must not touch a modem's data directly: it calls
//! modem operations, which refuse (`Unreachable`) when the modem is not registered, and the
//! delivery then goes back into the queue.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};
use zbus::OwnedObjectPath;

use super::Context;
use super::mm::delivery_state;
use super::modem::{Modem, SmsProps};
use super::text;

/// An SMS a modem sent, handed to the carrier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Submission {
    /// The sender's own number (what the recipient sees as `Number`).
    pub from: String,
    /// The recipient as the sender wrote it.
    pub to: String,
    pub text: String,
    pub data: Vec<u8>,
    /// The text cut as the network carries it.
    pub parts: Vec<String>,
    pub delivery_report: bool,
    /// The sent SMS's `MessageReference` (the status report carries it back).
    pub reference: u32,
    /// Unix seconds when the SMS centre took it.
    pub submitted: i64,
}

/// Something the carrier hands to one modem.
#[derive(Debug, Clone)]
pub(super) enum Delivery {
    Sms {
        /// `Number` at the recipient.
        from: String,
        parts: Vec<String>,
        data: Vec<u8>,
        timestamp: String,
        smsc: String,
        interval: Duration,
        /// Where to send the status report once delivered, if one was requested.
        report: Option<ReportBack>,
    },
    Report {
        /// `Number` of the status report: the recipient of the original SMS.
        recipient: String,
        reference: u32,
        delivery_state: u32,
        timestamp: String,
        discharge_timestamp: String,
    },
}

/// A status report owed to a sender.
#[derive(Debug, Clone)]
pub(super) struct ReportBack {
    pub sender: String,
    pub recipient: String,
    pub reference: u32,
    pub submitted: String,
}

/// What the carrier is asked to do.
#[derive(Debug)]
pub(super) enum CarrierCmd {
    Submit(Submission),
    /// Deliver to the modem with number `to` now, or when it becomes reachable. `first`
    /// gets the SMS object's path once its first part is on the modem; it is dropped
    /// unanswered when the delivery is queued.
    Deliver {
        to: String,
        item: Delivery,
        first: Option<oneshot::Sender<OwnedObjectPath>>,
    },
    /// Like `Deliver`, after `delay`.
    DeliverAfter {
        delay: Duration,
        to: String,
        item: Delivery,
    },
    /// The modem with this number became registered: hand it what waits for it.
    Reachable {
        number: String,
    },
    Shutdown,
}

/// Numbers compare by their digits and a leading `+` (spaces, dashes, dots and brackets
/// are ignored); a sender name without digits compares as written.
pub(super) fn canonical_number(number: &str) -> String {
    let kept: String = number
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == '+')
        .collect();
    if kept.chars().any(|c| c.is_ascii_digit())
        && number
            .chars()
            .all(|c| c.is_ascii_digit() || " +-.()".contains(c))
    {
        kept
    } else {
        number.to_owned()
    }
}

/// The carrier task; see the module doc.
pub(super) struct Carrier {
    ctx: Arc<Context>,
    /// Deliveries waiting for their recipient (by canonical number), oldest first.
    queue: HashMap<String, VecDeque<Delivery>>,
    tasks: JoinSet<()>,
}

impl Carrier {
    pub(super) fn new(ctx: Arc<Context>) -> Self {
        Carrier {
            ctx,
            queue: HashMap::new(),
            tasks: JoinSet::new(),
        }
    }

    /// Runs until [`CarrierCmd::Shutdown`] or until every sender is gone.
    pub(super) async fn run(mut self, mut commands: mpsc::UnboundedReceiver<CarrierCmd>) {
        loop {
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    None | Some(CarrierCmd::Shutdown) => break,
                    Some(cmd) => self.handle(cmd),
                },
                Some(result) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    if let Err(error) = result {
                        warn!(%error, "carrier delivery task failed");
                    }
                }
            }
        }
        self.tasks.abort_all();
        let waiting: usize = self.queue.values().map(VecDeque::len).sum();
        debug!(waiting, "carrier stopped");
    }

    fn handle(&mut self, cmd: CarrierCmd) {
        match cmd {
            CarrierCmd::Submit(submission) => self.submit(submission),
            CarrierCmd::Deliver { to, item, first } => self.route(to, item, first),
            CarrierCmd::DeliverAfter { delay, to, item } => {
                let ctx = self.ctx.clone();
                self.tasks.spawn(async move {
                    tokio::time::sleep(delay).await;
                    ctx.carrier(CarrierCmd::Deliver {
                        to,
                        item,
                        first: None,
                    });
                });
            }
            CarrierCmd::Reachable { number } => self.flush(&number),
            CarrierCmd::Shutdown => {}
        }
    }

    fn submit(&mut self, s: Submission) {
        let settings = &self.ctx.settings;
        let submitted = text::mm_timestamp(s.submitted, settings.utc_offset_minutes);
        let to = canonical_number(&s.to);
        let report = s.delivery_report.then(|| ReportBack {
            sender: s.from.clone(),
            recipient: s.to.clone(),
            reference: s.reference,
            submitted: submitted.clone(),
        });
        if self.ctx.registry.is_known(&to) {
            let item = Delivery::Sms {
                from: s.from,
                parts: s.parts,
                data: s.data,
                timestamp: submitted,
                smsc: settings.smsc.clone(),
                interval: settings.part_interval,
                report,
            };
            self.route(to, item, None);
        } else {
            info!(from = %s.from, to = %s.to, text = %s.text, "sms left for the outside world");
            if let Some(report) = report {
                let item = report.completed(settings.utc_offset_minutes);
                self.handle(CarrierCmd::DeliverAfter {
                    delay: settings.report_delay,
                    to: report.sender,
                    item,
                });
            }
        }
    }

    /// Delivers now when the recipient is registered, else queues.
    fn route(
        &mut self,
        to: String,
        item: Delivery,
        first: Option<oneshot::Sender<OwnedObjectPath>>,
    ) {
        let to = canonical_number(&to);
        match self.ctx.modem_by_number(&to) {
            Some(modem) if modem.data().registered() => {
                self.tasks.spawn(deliver(modem, item, first));
            }
            _ => {
                debug!(to = %to, "recipient not reachable: sms kept by the carrier");
                self.queue.entry(to).or_default().push_back(item);
            }
        }
    }

    /// Hands a modem that became reachable everything that waits for it, in order.
    fn flush(&mut self, number: &str) {
        let number = canonical_number(number);
        let Some(items) = self.queue.remove(&number) else {
            return;
        };
        let Some(modem) = self.ctx.modem_by_number(&number) else {
            self.queue.insert(number, items);
            return;
        };
        info!(to = %number, count = items.len(), "delivering stored sms");
        self.tasks.spawn(async move {
            for item in items {
                deliver(modem.clone(), item, None).await;
            }
        });
    }
}

impl ReportBack {
    /// The status report for this SMS: delivered, now.
    fn completed(&self, utc_offset_minutes: i32) -> Delivery {
        Delivery::Report {
            recipient: self.recipient.clone(),
            reference: self.reference,
            delivery_state: delivery_state::COMPLETED_RECEIVED,
            timestamp: self.submitted.clone(),
            discharge_timestamp: text::mm_timestamp(text::now_unix(), utc_offset_minutes),
        }
    }
}

/// Puts one delivery on `modem`; gives it back to the carrier when the modem is not
/// reachable after all.
async fn deliver(modem: Modem, item: Delivery, first: Option<oneshot::Sender<OwnedObjectPath>>) {
    let ctx = modem.ctx.clone();
    let requeue = |item: Delivery| {
        ctx.carrier(CarrierCmd::Deliver {
            to: modem.own_number().to_owned(),
            item,
            first: None,
        })
    };
    match &item {
        Delivery::Sms {
            from,
            parts,
            data,
            timestamp,
            smsc,
            interval,
            report,
        } => {
            let mut props = SmsProps::deliver(from.clone(), timestamp.clone(), smsc.clone());
            props.data = data.clone();
            let total = u32::try_from(parts.len()).unwrap_or(u32::MAX).max(1);
            let (key, path) = match modem.receive(props, total, parts.first().cloned()).await {
                Ok(received) => received,
                Err(_) => return requeue(item),
            };
            debug!(to = %modem.cell.path, sms = %path, parts = total, "sms delivered (first part)");
            if let Some(first) = first {
                // The asker may have gone; nothing to do then.
                let _ = first.send(path);
            }
            for part in parts.iter().skip(1) {
                tokio::time::sleep(*interval).await;
                if let Err(error) = modem.add_part(key, part.clone()).await {
                    warn!(to = %modem.cell.path, %error, "multipart sms lost a part");
                    return;
                }
            }
            if let Some(report) = report {
                let settings = &ctx.settings;
                ctx.carrier(CarrierCmd::DeliverAfter {
                    delay: settings.report_delay,
                    to: report.sender.clone(),
                    item: report.completed(settings.utc_offset_minutes),
                });
            }
        }
        Delivery::Report {
            recipient,
            reference,
            delivery_state,
            timestamp,
            discharge_timestamp,
        } => {
            let props = SmsProps::status_report(
                recipient.clone(),
                *reference,
                *delivery_state,
                timestamp.clone(),
                discharge_timestamp.clone(),
                ctx.settings.smsc.clone(),
            );
            match modem.receive(props, 1, Some(String::new())).await {
                Ok((_, path)) => {
                    debug!(to = %modem.cell.path, sms = %path, reference, "status report delivered");
                    if let Some(first) = first {
                        let _ = first.send(path);
                    }
                }
                Err(_) => requeue(item),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_compare_by_digits() {
        for (written, canonical) in [
            ("+1 555 000-1111", "+15550001111"),
            ("+15550001111", "+15550001111"),
            ("(0151) 234.5678", "01512345678"),
            ("ACME", "ACME"),
            ("Bank 24", "Bank 24"),
        ] {
            assert_eq!(canonical_number(written), canonical, "{written}");
        }
    }
}
