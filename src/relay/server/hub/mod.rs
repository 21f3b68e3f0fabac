//! server::hub: the relay's single owner of shared state, on a thread of its own.
//!
//! Split in two:
//! - the core ([`core::Core`], with `access`, `deliver` and `presence`): every decision
//!   (sessions and their replacement, registration codes and tries, login, delivery
//!   windows and pacing, receipts owed, `ack` against `revoke`, presence, quotas), over
//!   plain data and a [`Storage`]; no socket, thread or clock; tested as tables;
//! - this shell: the thread, the request channel, group commit, the connections'
//!   outboxes ([`Outboxes`], the core's [`Link`]) and the SMS command's tasks.
//!
//! Connection tasks send the hub [`HubCmd`]s over one bounded channel and get
//! [`Outbound`] items back in their own bounded [`outbox`](super::outbox); the hub never
//! waits for a connection (a full outbox means a client that does not read: it is
//! dropped with `overloaded`). Every request is answered by exactly one
//! [`Outbound::Answer`] or [`Outbound::Done`], which is how a connection bounds the
//! requests it has in flight (see `conn`).
//!
//! Group commit: the hub takes every command already waiting (up to [`MAX_GROUP`]) and
//! runs them in one storage transaction; everything it has to send meanwhile is held
//! back and released only after that transaction's COMMIT returned, so nothing reaches a
//! client before what it reports is durable (WAL, `synchronous=FULL`). If the COMMIT
//! fails, nothing of the group is sent: each of its requests is answered `internal`,
//! and every connection the group touched is closed (its session state in the hub may
//! no longer match the storage; a new login rebuilds it from the storage).
//!
//! Because one thread handles every request in turn, each request is atomic with
//! respect to all others without a lock: in particular a `revoke` and the recipient's
//! `ack` of the same message are ordered, and exactly one of them settles it (the
//! storage's compare-and-set, [`Storage::settle`], is a second guard).
//!
//! The thread runs a current-thread tokio runtime of its own, so that SQLite's blocking
//! calls (fsync on every commit) never stall the connections' runtime, and so the SMS
//! command can run as a task without blocking the hub.
//!
//! Must not: touch sockets, parse JSON, or block on anything but the storage.

mod access;
mod core;
mod deliver;
mod presence;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, error};

use self::core::{CodeJob, Core, Link, Now, Out, internal};
use super::db::Db;
use super::outbox::{OutboxTx, PushError, Weigh};
use super::sms::{self, SmsError};
use super::storage::{DbError, Storage};
use super::{RelayConfig, RelayError};
use crate::relay::protocol::{ClientFrame, ErrorCode, ErrorFrame, ServerFrame, encode};

pub(super) use self::core::ConnId;

/// Requests to the hub.
pub(super) enum HubCmd {
    /// A connection said a valid `hello`; frames for it go to `tx`.
    Open {
        conn: ConnId,
        tx: OutboxTx<Outbound>,
        /// The client's address, for the limits per address.
        peer: IpAddr,
    },
    /// A decoded frame other than `hello` and `ping`; `cost` comes back with its answer.
    Frame {
        conn: ConnId,
        frame: ClientFrame,
        cost: u32,
    },
    /// The connection ended.
    Closed { conn: ConnId },
    /// The SMS command for a `register` finished.
    SmsDone {
        conn: ConnId,
        number: String,
        /// When the code expires (ms since the epoch).
        expires_ms: i64,
        result: Result<(), SmsError>,
    },
    /// End the hub (sent by `run` once every connection has ended).
    Stop,
}

/// What the hub sends a connection: frames already encoded (JSON text), so the
/// connection's task only writes them.
#[derive(Debug)]
pub(super) enum Outbound {
    /// A frame to write.
    Frame(String),
    /// A frame to write, answering one of the connection's requests (with the cost the
    /// connection gave it).
    Answer(String, u32),
    /// One of the connection's requests was handled and needs no frame.
    Done(u32),
    /// The connection is logged in: its auth timer stops.
    LoggedIn,
    /// Write this error and close the connection. Boxed: it is rare, and every slot of
    /// every connection's channel is as large as the largest variant.
    Fatal(Box<ErrorFrame>),
}

impl Weigh for Outbound {
    fn weight(&self) -> usize {
        match self {
            Outbound::Frame(text) | Outbound::Answer(text, _) => text.len(),
            Outbound::Fatal(error) => error.message.len(),
            Outbound::Done(_) | Outbound::LoggedIn => 0,
        }
    }
}

impl From<Out> for Outbound {
    fn from(out: Out) -> Outbound {
        match out {
            Out::Frame(frame) => Outbound::Frame(encode(&frame)),
            Out::Answer(frame, cost) => Outbound::Answer(encode(&frame), cost),
            Out::Done(cost) => Outbound::Done(cost),
            Out::LoggedIn => Outbound::LoggedIn,
            Out::Fatal(error) => Outbound::Fatal(Box::new(error)),
        }
    }
}

/// Capacity of the hub's request channel: connections wait (and stop reading their
/// socket) when the hub is this far behind. Large, because each connection already
/// bounds its own unanswered requests, and because a connection waiting here costs a
/// cross-thread wake-up for every command the hub takes.
const HUB_QUEUE: usize = 16 * 1024;

/// Most commands run in one transaction (one group commit).
pub(super) const MAX_GROUP: usize = 512;

/// The handle `run` keeps: the request channel and the thread's completion.
pub(super) struct Hub {
    tx: mpsc::Sender<HubCmd>,
    done: oneshot::Receiver<()>,
}

impl Hub {
    /// Opens the database and starts the hub's thread.
    pub(super) fn start(config: Arc<RelayConfig>) -> Result<Hub, RelayError> {
        let db = Db::open(config.db_path.as_deref())?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(RelayError::Thread)?;
        let (tx, rx) = mpsc::channel(HUB_QUEUE);
        let (done_tx, done) = oneshot::channel();
        let outboxes = Outboxes::new(&config, tx.clone());
        let core = Core::new(config, db, outboxes, now());
        std::thread::Builder::new()
            .name("relay-hub".to_owned())
            .spawn(move || {
                runtime.block_on(Shell::new(core).run(rx));
                // Drops (kills) any SMS command still running, then reports the end.
                drop(runtime);
                let _ = done_tx.send(());
            })
            .map_err(RelayError::Thread)?;
        Ok(Hub { tx, done })
    }

    pub(super) fn sender(&self) -> mpsc::Sender<HubCmd> {
        self.tx.clone()
    }

    /// Stops the hub and waits until its thread has closed the database.
    pub(super) async fn stop(self) {
        let _ = self.tx.send(HubCmd::Stop).await;
        let _ = self.done.await;
    }
}

/// The time now, for one call into the core.
fn now() -> Now {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    Now {
        at: Instant::now(),
        ms,
    }
}

/// The connections' outboxes, as the core's [`Link`]: while a group is open, what the
/// core sends is held back (and counted as queued) until the group's COMMIT.
pub(super) struct Outboxes {
    txs: HashMap<ConnId, OutboxTx<Outbound>>,
    /// A group's transaction is open: what is sent waits in `held`.
    grouping: bool,
    /// What the open group sends, in order, released after its COMMIT.
    held: Vec<(ConnId, Outbound)>,
    /// How many items, and how many bytes, `held` has for each connection.
    held_for: HashMap<ConnId, (usize, usize)>,
    /// Connections the core forgot during the open group: their outboxes until it ends.
    retired: HashMap<ConnId, OutboxTx<Outbound>>,
    /// For the SMS tasks to report back.
    hub: mpsc::Sender<HubCmd>,
    /// Permits to run an SMS command: `sms_concurrency`.
    slots: Arc<Semaphore>,
    sms_timeout: Duration,
}

impl Outboxes {
    pub(super) fn new(config: &RelayConfig, hub: mpsc::Sender<HubCmd>) -> Outboxes {
        Outboxes {
            txs: HashMap::new(),
            grouping: false,
            held: Vec::new(),
            held_for: HashMap::new(),
            retired: HashMap::new(),
            hub,
            slots: Arc::new(Semaphore::new(config.sms_concurrency)),
            sms_timeout: config.sms_timeout,
        }
    }
}

impl Link for Outboxes {
    fn push(&mut self, conn: ConnId, item: Out) -> Result<(), PushError> {
        let item = Outbound::from(item);
        if self.grouping {
            let held = self.held_for.entry(conn).or_default();
            held.0 += 1;
            held.1 += item.weight();
            self.held.push((conn, item));
            return Ok(());
        }
        match self.txs.get(&conn) {
            Some(tx) => tx.push(item),
            None => Err(PushError::Closed),
        }
    }

    fn queued(&self, conn: ConnId) -> (usize, usize) {
        let (items, bytes) = self.txs.get(&conn).map_or((0, 0), OutboxTx::queued);
        let (held_items, held_bytes) = self.held_for.get(&conn).copied().unwrap_or((0, 0));
        (items + held_items, bytes + held_bytes)
    }

    fn close(&mut self, conn: ConnId) {
        // Dropping its sender ends the connection's task once it has written what is
        // queued; what the group holds back for it still goes out after the COMMIT.
        if let Some(tx) = self.txs.remove(&conn)
            && self.grouping
        {
            self.retired.insert(conn, tx);
        }
    }

    fn send_code(&mut self, job: CodeJob) {
        let tx = self.hub.clone();
        let timeout = self.sms_timeout;
        let slots = self.slots.clone();
        tokio::spawn(async move {
            // At most `sms_concurrency` commands run; the others wait here, in order. The
            // semaphore is never closed.
            let _slot = slots.acquire_owned().await.ok();
            let result = sms::send_code(&job.command, &job.number, &job.code, timeout).await;
            let done = HubCmd::SmsDone {
                conn: job.conn,
                number: job.number,
                expires_ms: job.expires_ms,
                result,
            };
            let _ = tx.send(done).await;
        });
    }
}

/// The hub's thread: the core, and the requests of the open group.
struct Shell<S> {
    core: Core<S, Outboxes>,
    /// The open group's requests: (connection, frame kind, message id, cost).
    requests: Vec<(ConnId, &'static str, Option<String>, u32)>,
}

impl<S: Storage> Shell<S> {
    fn new(core: Core<S, Outboxes>) -> Shell<S> {
        Shell {
            core,
            requests: Vec::new(),
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<HubCmd>) {
        loop {
            let deadline = self.core.deadline(Instant::now());
            let cmd = tokio::select! {
                cmd = rx.recv() => cmd,
                () = tokio::time::sleep_until(deadline) => {
                    let began = self.begin();
                    self.core.tick(now());
                    self.end(began);
                    continue;
                }
            };
            let Some(cmd) = cmd else { break };
            if self.group(cmd, &mut rx) {
                break;
            }
        }
        debug!("hub stopped");
    }

    /// Runs `cmd` and every command already waiting (up to [`MAX_GROUP`]) as one group.
    /// Returns whether the hub is to stop.
    fn group(&mut self, mut cmd: HubCmd, rx: &mut mpsc::Receiver<HubCmd>) -> bool {
        let began = self.begin();
        let mut stop = false;
        let mut taken = 1;
        loop {
            if matches!(cmd, HubCmd::Stop) {
                stop = true;
                break;
            }
            self.handle(cmd);
            if began && !self.core.store.in_transaction() {
                // The storage rolled the whole group back (disk full, I/O error): take no
                // more, or they would commit one by one while the group's answers say
                // `internal` (no effect). The COMMIT fails and `end` aborts it.
                break;
            }
            if taken == MAX_GROUP {
                break;
            }
            cmd = match rx.try_recv() {
                Ok(next) => next,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    stop = true;
                    break;
                }
            };
            taken += 1;
        }
        self.end(began);
        stop
    }

    fn handle(&mut self, cmd: HubCmd) {
        let now = now();
        match cmd {
            HubCmd::Stop => {}
            HubCmd::Open { conn, tx, peer } => {
                self.core.link.txs.insert(conn, tx);
                self.core.open(conn, peer, now);
            }
            HubCmd::Frame { conn, frame, cost } => {
                if self.core.is_open(conn) {
                    let id = match &frame {
                        ClientFrame::Send { id, .. } | ClientFrame::Revoke { id } => {
                            Some(id.clone())
                        }
                        _ => None,
                    };
                    self.requests.push((conn, frame.kind(), id, cost));
                }
                self.core.frame(conn, frame, cost, now);
            }
            HubCmd::Closed { conn } => self.core.closed(conn, now),
            HubCmd::SmsDone {
                conn,
                number,
                expires_ms,
                result,
            } => {
                let result = result.map_err(|cause| cause.to_string());
                self.core.sms_done(conn, number, expires_ms, result, now);
            }
        }
    }

    /// Opens a group: its transaction, and holding back what is sent. Returns whether
    /// the transaction began; if not, each statement commits (durably) on its own.
    fn begin(&mut self) -> bool {
        self.core.link.grouping = true;
        let store = &self.core.store;
        if store.in_transaction() {
            // Left open by a failed COMMIT whose rollback failed too: never build on it.
            error!("a transaction is still open; rolling it back");
            if let Err(cause) = store.rollback() {
                error!(%cause, "rollback failed");
            }
        }
        match store.begin() {
            Ok(()) => true,
            Err(cause) => {
                error!(%cause, "cannot begin a transaction; committing statement by statement");
                false
            }
        }
    }

    /// Ends the group: COMMIT, then release what it sent; or, if the COMMIT failed,
    /// fail its requests and close the connections it touched.
    fn end(&mut self, began: bool) {
        self.core.link.grouping = false;
        let store = &self.core.store;
        let committed = if began {
            store.commit()
        } else if store.in_transaction() {
            // Without our BEGIN the statements were to commit one by one; if they ran in
            // a transaction after all, nothing of the group is known to be durable.
            Err(DbError::NotCommitted)
        } else {
            Ok(())
        };
        match committed {
            Ok(()) => self.release(),
            Err(cause) => self.abort(&cause),
        }
        self.requests.clear();
        self.core.link.retired.clear();
    }

    /// Sends what the committed group held back.
    fn release(&mut self) {
        let link = &mut self.core.link;
        link.held_for.clear();
        let mut held = std::mem::take(&mut link.held);
        // Forgotten only once everything is out: forgetting tells watchers `offline`,
        // which must not overtake what the group held for them.
        let mut overflowed: Vec<(ConnId, PushError)> = Vec::new();
        for (conn, item) in held.drain(..) {
            if overflowed.iter().any(|&(c, _)| c == conn) {
                continue;
            }
            let pushed = match link.txs.get(&conn).or_else(|| link.retired.get(&conn)) {
                Some(tx) => tx.push(item),
                None => continue,
            };
            if let Err(why) = pushed
                && link.txs.contains_key(&conn)
            {
                overflowed.push((conn, why));
            }
        }
        // Keep the buffer for the next group (unless one group made it huge).
        if held.capacity() <= 4 * MAX_GROUP {
            link.held = held;
        }
        for (conn, why) in overflowed {
            self.core.drop_conn(conn, why);
        }
    }

    /// The group's COMMIT failed: nothing it held back is sent.
    fn abort(&mut self, cause: &DbError) {
        let requests = std::mem::take(&mut self.requests);
        error!(%cause, requests = requests.len(), "group commit failed; failing its requests");
        if let Err(cause) = self.core.store.rollback() {
            error!(%cause, "rollback failed");
        }
        let link = &mut self.core.link;
        link.held_for.clear();
        let mut touched: Vec<ConnId> = link.held.drain(..).map(|(conn, _)| conn).collect();
        touched.extend(link.retired.keys().copied());
        for (conn, kind, id, cost) in &requests {
            touched.push(*conn);
            let frame = ServerFrame::Error(internal(kind, id.as_deref()));
            self.core.push(*conn, Out::Answer(frame, *cost));
        }
        touched.sort_unstable();
        touched.dedup();
        for conn in touched {
            let message = "the relay could not store its data; reconnect";
            let fatal = ErrorFrame::new(ErrorCode::Internal, message);
            match self.core.link.retired.get(&conn) {
                Some(tx) => {
                    let _ = tx.push(Outbound::Fatal(Box::new(fatal)));
                }
                None => {
                    self.core.push(conn, Out::Fatal(fatal));
                    self.core.detach(conn);
                }
            }
        }
    }
}
