//! server::hub: the relay's single owner of shared state, on a thread of its own.
//!
//! Owns the database ([`Db`]), which connection is logged in as which number, every
//! subscription and typing state, and each recipient's delivery window. Connection
//! tasks send it [`HubCmd`]s over one bounded channel and get [`Outbound`] items back
//! in their own bounded [`outbox`](super::outbox); the hub never waits for a connection
//! (a full outbox means a client that does not read: it is dropped with `overloaded`).
//! Every request is answered by exactly one [`Outbound::Answer`] or [`Outbound::Done`],
//! which is how a connection bounds the requests it has in flight (see `conn`).
//!
//! Owed receipts (a sender's backlog at login, expiries) go out paced, a batch at a time
//! while the outbox has room, so no backlog can overflow a reading client's outbox.
//!
//! Group commit: the hub takes every command already waiting (up to [`MAX_GROUP`]) and
//! runs them in one SQLite transaction; everything it has to send meanwhile is held back
//! and released only after that transaction's COMMIT returned, so nothing reaches a
//! client before what it reports is durable (WAL, `synchronous=FULL`). If the COMMIT
//! fails, nothing of the group is sent: each of its requests is answered `internal`,
//! and every connection the group touched is closed (its session state in the hub may
//! no longer match the database; a new login rebuilds it from the database).
//!
//! Because one thread handles every request in turn, each request is atomic with
//! respect to all others without a lock: in particular a `revoke` and the recipient's
//! `ack` of the same message are ordered, and exactly one of them settles it (the
//! database's compare-and-set, [`Db::settle`], is a second guard).
//!
//! The thread runs a current-thread tokio runtime of its own, so that SQLite's blocking
//! calls (fsync on every commit) never stall the connections' runtime, and so the SMS
//! command can run as a task without blocking the hub.
//!
//! Must not: touch sockets, parse JSON, or block on anything but SQLite.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tracing::{debug, error, info, warn};

use super::db::{Db, DbError, MsgState};
use super::outbox::{OutboxTx, PushError, Weigh};
use super::quota::{Bucket, Rate, address_key};
use super::secret::{self, RandomError};
use super::sms::{self, SmsError};
use super::{RelayConfig, RelayError, Verify, clip, excerpt};
use crate::relay::protocol::{
    ClientFrame, ConfirmOutcome, ErrorCode, ErrorFrame, MAX_ID_BYTES, PresenceEntry, PresenceState,
    ReceiptOutcome, RevokeOutcome, SendState, ServerFrame, encode, is_e164, is_message_id,
};

/// Identifies one connection for the hub's whole life.
pub type ConnId = u64;

/// Requests to the hub.
pub enum HubCmd {
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

/// What the hub sends a connection.
#[derive(Debug)]
pub enum Outbound {
    /// A frame to write.
    Frame(Utf8Bytes),
    /// A frame to write, answering one of the connection's requests (with the cost the
    /// connection gave it).
    Answer(Utf8Bytes, u32),
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

/// Capacity of the hub's request channel: connections wait (and stop reading their
/// socket) when the hub is this far behind. Large, because each connection already
/// bounds its own unanswered requests, and because a connection waiting here costs a
/// cross-thread wake-up for every command the hub takes.
const HUB_QUEUE: usize = 16 * 1024;

/// Most commands run in one transaction (one group commit).
pub(super) const MAX_GROUP: usize = 512;

/// Owed receipts (those of a sender who was offline, or of messages that expired) go
/// out at most this many at a time, and only to an outbox holding at most this many
/// items, so that a long backlog of receipts can never overflow a reading client's
/// outbox; the rest stay owed in the database.
const RECEIPT_BATCH: usize = 32;

/// How soon the hub sends the next batch of owed receipts.
const RECEIPT_PACE: Duration = Duration::from_millis(50);

/// `retry_after_ms` of a code request refused because every SMS command slot and
/// queue place is taken.
const SMS_BUSY_RETRY: Duration = Duration::from_secs(10);

/// How often, at most, the hub warns that the codes' total limit refuses requests, or
/// logs that one sender is over its quota.
const LIMIT_WARN_EVERY: Duration = Duration::from_secs(60);

/// The handle `run` keeps: the request channel and the thread's completion.
pub struct Hub {
    tx: mpsc::Sender<HubCmd>,
    done: oneshot::Receiver<()>,
}

impl Hub {
    /// Opens the database and starts the hub's thread.
    pub fn start(config: Arc<RelayConfig>) -> Result<Hub, RelayError> {
        let db = Db::open(config.db_path.as_deref())?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(RelayError::Thread)?;
        let (tx, rx) = mpsc::channel(HUB_QUEUE);
        let (done_tx, done) = oneshot::channel();
        let state = State::new(config, db, tx.clone());
        std::thread::Builder::new()
            .name("relay-hub".to_owned())
            .spawn(move || {
                runtime.block_on(state.run(rx));
                // Drops (kills) any SMS command still running, then reports the end.
                drop(runtime);
                let _ = done_tx.send(());
            })
            .map_err(RelayError::Thread)?;
        Ok(Hub { tx, done })
    }

    pub fn sender(&self) -> mpsc::Sender<HubCmd> {
        self.tx.clone()
    }

    /// Stops the hub and waits until its thread has closed the database.
    pub async fn stop(self) {
        let _ = self.tx.send(HubCmd::Stop).await;
        let _ = self.done.await;
    }
}

/// Why a request failed inside the relay (the client gets `internal`).
#[derive(Debug, thiserror::Error)]
enum HubError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Random(#[from] RandomError),
}

type Res = Result<(), HubError>;

/// One connection, as the hub sees it.
struct Conn {
    /// Where its frames go.
    tx: OutboxTx<Outbound>,
    /// The number it is logged in as.
    number: Option<String>,
    /// The numbers it follows, deduplicated, in request order.
    subs: Vec<String>,
    /// Whom it is typing to, and until when.
    typing: Option<(String, Instant)>,
    /// Queue position of the last message pushed to it in this session: the next
    /// delivery is the first pending message after it.
    cursor: i64,
    /// Messages pushed in this session and not yet acked (the delivery window).
    inflight: Vec<i64>,
    /// Its SMS command is running: one code request at a time per connection.
    sms_running: bool,
    /// Its address as the limits per address count it ([`address_key`]).
    addr: IpAddr,
}

/// Each sender's quotas of new messages and bytes of text per minute.
struct SenderLimits {
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

/// The limits on registration codes beyond those of each number: SMS commands at once,
/// codes per address and in total.
struct CodeLimits {
    /// Running and waiting SMS commands.
    pending: usize,
    /// Permits to run one: `sms_concurrency`.
    slots: Arc<Semaphore>,
    per_address: Option<Rate>,
    by_address: HashMap<IpAddr, Bucket>,
    /// The total limit and its bucket.
    total: Option<(Rate, Bucket)>,
    /// When the total limit last made the hub warn.
    warned: Option<Instant>,
}

struct State {
    config: Arc<RelayConfig>,
    db: Db,
    codes: CodeLimits,
    senders: SenderLimits,
    /// For the SMS tasks to report back.
    tx: mpsc::Sender<HubCmd>,
    conns: HashMap<ConnId, Conn>,
    /// Number → the connection logged in as it (at most one).
    online: HashMap<String, ConnId>,
    /// Number → the connections subscribed to it.
    watchers: HashMap<String, HashSet<ConnId>>,
    /// Typing deadlines, soonest first.
    typing: BTreeSet<(Instant, ConnId)>,
    next_sweep: Instant,
    /// Connections that may still be owed receipts beyond the batches sent so far.
    owed: BTreeSet<ConnId>,
    /// Connections whose delivery window has room while messages may wait for them, but
    /// whose outbox holds too many bytes to push more now (paced like `owed`).
    starved: BTreeSet<ConnId>,
    /// When the next batch of owed receipts goes out; set while some are owed, and not
    /// pushed back by traffic (a busy relay would otherwise never send them).
    next_pace: Option<Instant>,
    /// A group's transaction is open: what is sent waits in `held`.
    grouping: bool,
    /// What the open group sends, in order, released after its COMMIT.
    held: Vec<(ConnId, Outbound)>,
    /// How many items, and how many bytes, `held` has for each connection.
    held_for: HashMap<ConnId, (usize, usize)>,
    /// Connections detached during the open group: their outboxes until it ends.
    retired: HashMap<ConnId, OutboxTx<Outbound>>,
    /// The open group's requests: (connection, frame kind, message id, cost).
    requests: Vec<(ConnId, &'static str, Option<String>, u32)>,
    /// The connection whose request is being handled and not yet answered: its next
    /// frame is the answer.
    answering: Option<ConnId>,
    /// The cost of the request being handled, given back with its answer.
    answer_cost: u32,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

fn err(code: ErrorCode, message: impl Into<String>, re: &str) -> ErrorFrame {
    ErrorFrame::new(code, message).re(re)
}

/// The message of an `invalid-number` error: the number only as a short excerpt.
fn not_e164(number: &str) -> String {
    format!("{} is not an E.164 number", excerpt(number))
}

/// `error` with `id`: the id this answers, if it is short enough to echo (an invalid id
/// of any length may reach the relay; what it sends back stays small).
fn with_id(error: ErrorFrame, id: &str) -> ErrorFrame {
    if id.len() <= MAX_ID_BYTES {
        error.id(id)
    } else {
        error
    }
}

impl State {
    fn new(config: Arc<RelayConfig>, db: Db, tx: mpsc::Sender<HubCmd>) -> State {
        let hour = Duration::from_secs(3600);
        let now = Instant::now();
        let codes = CodeLimits {
            pending: 0,
            slots: Arc::new(Semaphore::new(config.sms_concurrency)),
            per_address: Rate::per(config.codes_per_address_per_hour.into(), hour),
            by_address: HashMap::new(),
            total: Rate::per(config.codes_per_hour.into(), hour)
                .map(|rate| (rate, Bucket::full(rate, now))),
            warned: None,
        };
        let minute = Duration::from_secs(60);
        let senders = SenderLimits {
            messages: Rate::per(config.sender_messages_per_min.into(), minute),
            bytes: Rate::per(config.sender_bytes_per_min, minute),
            by_sender: HashMap::new(),
        };
        State {
            codes,
            senders,
            next_sweep: Instant::now(),
            config,
            db,
            tx,
            conns: HashMap::new(),
            online: HashMap::new(),
            watchers: HashMap::new(),
            typing: BTreeSet::new(),
            owed: BTreeSet::new(),
            starved: BTreeSet::new(),
            next_pace: None,
            grouping: false,
            held: Vec::new(),
            held_for: HashMap::new(),
            retired: HashMap::new(),
            requests: Vec::new(),
            answering: None,
            answer_cost: 0,
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<HubCmd>) {
        loop {
            let mut deadline = self.next_sweep;
            if let Some(&(first, _)) = self.typing.first() {
                deadline = deadline.min(first);
            }
            if self.owed.is_empty() && self.starved.is_empty() {
                self.next_pace = None;
            } else {
                let pace = *self
                    .next_pace
                    .get_or_insert_with(|| Instant::now() + RECEIPT_PACE);
                deadline = deadline.min(pace);
            }
            let cmd = tokio::select! {
                cmd = rx.recv() => cmd,
                () = tokio::time::sleep_until(deadline) => {
                    let began = self.begin();
                    self.tick(Instant::now());
                    self.end(began);
                    continue;
                }
            };
            let Some(mut cmd) = cmd else { break };
            // One group: this command and every one already waiting, one transaction.
            let began = self.begin();
            let mut stop = false;
            let mut taken = 1;
            loop {
                if matches!(cmd, HubCmd::Stop) {
                    stop = true;
                    break;
                }
                self.handle(cmd);
                if began && !self.db.in_transaction() {
                    // SQLite rolled the whole group back (disk full, I/O error): take no
                    // more, or they would commit one by one while the group's answers
                    // say `internal` (no effect). The COMMIT fails and `end` aborts it.
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
            if stop {
                break;
            }
        }
        debug!("hub stopped");
    }

    fn handle(&mut self, cmd: HubCmd) {
        match cmd {
            HubCmd::Stop => {}
            HubCmd::Open { conn, tx, peer } => {
                self.conns.insert(
                    conn,
                    Conn {
                        tx,
                        number: None,
                        subs: Vec::new(),
                        typing: None,
                        cursor: 0,
                        inflight: Vec::new(),
                        sms_running: false,
                        addr: address_key(peer),
                    },
                );
            }
            HubCmd::Frame { conn, frame, cost } => self.frame(conn, frame, cost),
            HubCmd::Closed { conn } => self.detach(conn),
            HubCmd::SmsDone {
                conn,
                number,
                expires_ms,
                result,
            } => self.sms_done(conn, number, expires_ms, result),
        }
    }

    // Groups.

    /// Opens a group: its transaction, and holding back what is sent. Returns whether
    /// the transaction began; if not, each statement commits (durably) on its own.
    fn begin(&mut self) -> bool {
        self.grouping = true;
        if self.db.in_transaction() {
            // Left open by a failed COMMIT whose rollback failed too: never build on it.
            error!("a transaction is still open; rolling it back");
            if let Err(cause) = self.db.rollback() {
                error!(%cause, "rollback failed");
            }
        }
        match self.db.begin() {
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
        self.grouping = false;
        let committed = if began {
            self.db.commit()
        } else if self.db.in_transaction() {
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
        self.retired.clear();
    }

    /// Sends what the committed group held back.
    fn release(&mut self) {
        self.held_for.clear();
        let mut held = std::mem::take(&mut self.held);
        // Detached only once everything is out: a detach tells watchers `offline`, which
        // must not overtake what the group held for them.
        let mut overflowed = Vec::new();
        for (conn, item) in held.drain(..) {
            if overflowed.iter().any(|&(c, _)| c == conn) {
                continue;
            }
            let pushed = match self.conns.get(&conn) {
                Some(c) => c.tx.push(item),
                None => match self.retired.get(&conn) {
                    Some(tx) => tx.push(item),
                    None => continue,
                },
            };
            if let Err(why) = pushed
                && self.conns.contains_key(&conn)
            {
                overflowed.push((conn, why));
            }
        }
        for (conn, why) in overflowed {
            self.drop_conn(conn, why);
        }
        // Keep the buffer for the next group (unless one group made it huge).
        if held.capacity() <= 4 * MAX_GROUP {
            self.held = held;
        }
    }

    /// The group's COMMIT failed: nothing it held back is sent.
    fn abort(&mut self, cause: &DbError) {
        error!(%cause, requests = self.requests.len(), "group commit failed; failing its requests");
        if let Err(cause) = self.db.rollback() {
            error!(%cause, "rollback failed");
        }
        self.held_for.clear();
        let mut touched: Vec<ConnId> = self.held.drain(..).map(|(conn, _)| conn).collect();
        touched.extend(self.retired.keys().copied());
        let requests = std::mem::take(&mut self.requests);
        for (conn, kind, id, cost) in &requests {
            touched.push(*conn);
            let error = err(ErrorCode::Internal, "the relay failed; try again", kind);
            let error = match id {
                Some(id) => with_id(error, id),
                None => error,
            };
            let frame = Utf8Bytes::from(encode(&ServerFrame::Error(error)));
            self.push(*conn, Outbound::Answer(frame, *cost));
        }
        touched.sort_unstable();
        touched.dedup();
        for conn in touched {
            let message = "the relay could not store its data; reconnect";
            let fatal = Box::new(ErrorFrame::new(ErrorCode::Internal, message));
            match self.retired.get(&conn) {
                Some(tx) => {
                    let _ = tx.push(Outbound::Fatal(fatal));
                }
                None => {
                    self.push(conn, Outbound::Fatal(fatal));
                    self.detach(conn);
                }
            }
        }
    }

    // Sending to connections.

    /// Queues `frame` for `conn`; a connection whose outbox is full is dropped. The
    /// first frame to a connection whose request is being handled is its answer.
    fn send(&mut self, conn: ConnId, frame: &ServerFrame) {
        if !self.conns.contains_key(&conn) {
            return;
        }
        let text = Utf8Bytes::from(encode(frame));
        let item = if self.answering == Some(conn) {
            self.answering = None;
            Outbound::Answer(text, self.answer_cost)
        } else {
            Outbound::Frame(text)
        };
        self.push(conn, item);
    }

    /// Queues `item` for `conn`: held back while a group is open, else pushed now (a
    /// connection whose outbox is full is dropped).
    fn push(&mut self, conn: ConnId, item: Outbound) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if self.grouping {
            let held = self.held_for.entry(conn).or_default();
            held.0 += 1;
            held.1 += item.weight();
            self.held.push((conn, item));
        } else if let Err(why) = c.tx.push(item) {
            self.drop_conn(conn, why);
        }
    }

    /// Forgets a connection whose outbox refused a frame: one that does not read (its
    /// task is alive, its queue full), or one that is gone (its task ended, and its
    /// `Closed` is on the way).
    fn drop_conn(&mut self, conn: ConnId, why: PushError) {
        match why {
            PushError::Full => {
                let (items, bytes) = self.conns.get(&conn).map_or((0, 0), |c| c.tx.queued());
                warn!(
                    conn,
                    items, bytes, "client does not read its frames, dropping it"
                );
            }
            PushError::Closed => debug!(conn, "connection already gone"),
        }
        self.detach(conn);
    }

    /// Answers a request with an error; a fatal one also ends the connection.
    fn fail(&mut self, conn: ConnId, error: ErrorFrame) {
        if error.fatal {
            self.push(conn, Outbound::Fatal(Box::new(error)));
            self.detach(conn);
        } else {
            self.send(conn, &ServerFrame::Error(error));
        }
    }

    /// Forgets `conn`: its login, subscriptions and typing. Dropping its sender ends the
    /// connection's task once it has written what is queued.
    fn detach(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if self.answering == Some(conn) {
            self.answering = None;
        }
        self.owed.remove(&conn);
        self.starved.remove(&conn);
        for number in &c.subs {
            if let Some(set) = self.watchers.get_mut(number) {
                set.remove(&conn);
                if set.is_empty() {
                    self.watchers.remove(number);
                }
            }
        }
        if let Some((_, deadline)) = &c.typing {
            self.typing.remove(&(*deadline, conn));
        }
        if self.grouping {
            // What the group holds back for it still goes out after the COMMIT.
            self.retired.insert(conn, c.tx);
        }
        if let Some(number) = c.number
            && self.online.get(&number) == Some(&conn)
        {
            self.online.remove(&number);
            info!(%number, conn, "offline");
            self.broadcast(&number);
        }
    }

    // Presence.

    /// `number`'s state as `viewer` sees it.
    fn presence_of(&self, number: &str, viewer: Option<&str>) -> PresenceState {
        let Some(conn) = self.online.get(number).and_then(|id| self.conns.get(id)) else {
            return PresenceState::Offline;
        };
        match (&conn.typing, viewer) {
            (Some((to, _)), Some(viewer)) if to == viewer => PresenceState::Typing,
            _ => PresenceState::Online,
        }
    }

    /// Pushes `number`'s state to every connection subscribed to it.
    fn broadcast(&mut self, number: &str) {
        let Some(watchers) = self.watchers.get(number) else {
            return;
        };
        let watchers: Vec<ConnId> = watchers.iter().copied().collect();
        for watcher in watchers {
            self.push_presence(watcher, number);
        }
    }

    /// Pushes `number`'s state to `viewer`'s connection if it follows `number`.
    fn push_to_number(&mut self, viewer: &str, number: &str) {
        if let Some(&conn) = self.online.get(viewer)
            && self
                .watchers
                .get(number)
                .is_some_and(|set| set.contains(&conn))
        {
            self.push_presence(conn, number);
        }
    }

    fn push_presence(&mut self, watcher: ConnId, number: &str) {
        let viewer = self.conns.get(&watcher).and_then(|c| c.number.clone());
        let state = self.presence_of(number, viewer.as_deref());
        let frame = ServerFrame::Presence(PresenceEntry {
            number: number.to_owned(),
            // Only logged-in numbers change state, and only registered ones log in.
            registered: true,
            state,
        });
        self.send(watcher, &frame);
    }

    /// Ends `conn`'s typing state (if any) and tells its target.
    fn stop_typing(&mut self, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some((to, deadline)) = c.typing.take() else {
            return;
        };
        let me = c.number.clone().unwrap_or_default();
        self.typing.remove(&(deadline, conn));
        self.push_to_number(&to, &me);
    }

    // Timers.

    fn tick(&mut self, now: Instant) {
        while let Some(&(deadline, conn)) = self.typing.first() {
            if deadline > now {
                break;
            }
            self.typing.pop_first();
            if let Some(c) = self.conns.get(&conn)
                && c.typing.as_ref().is_some_and(|(_, d)| *d == deadline)
            {
                self.stop_typing(conn);
            }
        }
        if now >= self.next_sweep {
            self.next_sweep = now + self.config.sweep_interval;
            if let Err(err) = self.sweep() {
                error!(cause = %err, "sweep failed");
            }
        }
        if self.next_pace.is_some_and(|pace| pace > now) {
            return;
        }
        self.next_pace = None;
        let starved: Vec<ConnId> = self.starved.iter().copied().collect();
        for conn in starved {
            if let Err(err) = self.fill_window(conn) {
                error!(conn, cause = %err, "cannot deliver waiting messages");
            }
        }
        let owed: Vec<ConnId> = self.owed.iter().copied().collect();
        for conn in owed {
            if let Err(err) = self.send_owed(conn) {
                error!(conn, cause = %err, "cannot send owed receipts");
            }
        }
    }

    /// Whether a receipt may be pushed to `conn` now: none owed before it, and its outbox
    /// (with what the open group holds for it) below a batch.
    fn has_receipt_room(&self, conn: ConnId) -> bool {
        let Some(c) = self.conns.get(&conn) else {
            return false;
        };
        !self.owed.contains(&conn) && self.queued(conn, c).0 < RECEIPT_BATCH
    }

    /// Frames and bytes waiting for `conn`: in its outbox, and held back by the open
    /// group.
    fn queued(&self, conn: ConnId, c: &Conn) -> (usize, usize) {
        let (items, bytes) = c.tx.queued();
        let (held_items, held_bytes) = self.held_for.get(&conn).copied().unwrap_or((0, 0));
        (items + held_items, bytes + held_bytes)
    }

    /// Sends `conn` the next batch of the receipts owed to its number, if its outbox
    /// has room; keeps it in `owed` while more remain.
    fn send_owed(&mut self, conn: ConnId) -> Res {
        let Some(c) = self.conns.get(&conn) else {
            self.owed.remove(&conn);
            return Ok(());
        };
        let Some(number) = c.number.clone() else {
            self.owed.remove(&conn);
            return Ok(());
        };
        if self.queued(conn, c).0 > RECEIPT_BATCH {
            // Still writing earlier frames: try again at the next pace.
            self.owed.insert(conn);
            return Ok(());
        }
        let mut receipts = self.db.owed_receipts(&number, RECEIPT_BATCH + 1)?;
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
            self.send(conn, &frame);
            self.db.receipt_sent(receipt.seq)?;
        }
        if more {
            self.owed.insert(conn);
        } else {
            self.owed.remove(&conn);
        }
        Ok(())
    }

    /// Expires messages older than `max_age` (receipts to their senders), forgets old
    /// dedupe memory and stale codes.
    fn sweep(&mut self) -> Res {
        let now = now_ms();
        let expired = self.db.expire_before(now - ms(self.config.max_age), now)?;
        for msg in expired {
            info!(sender = %msg.sender, id = %msg.id, recipient = %msg.recipient, "message expired");
            // Owed (in the database) from now on; online senders get them paced.
            if let Some(&conn) = self.online.get(&msg.sender) {
                self.owed.insert(conn);
            }
        }
        // A full bucket says nothing a new one would not: forget it.
        let instant = Instant::now();
        if let Some(rate) = self.codes.per_address {
            self.codes
                .by_address
                .retain(|_, bucket| !bucket.is_full(rate, instant));
        }
        let SenderLimits {
            messages,
            bytes,
            by_sender,
        } = &mut self.senders;
        let full = |bucket: &mut Option<Bucket>, rate: Option<Rate>| match (bucket, rate) {
            (Some(bucket), Some(rate)) => bucket.is_full(rate, instant),
            _ => true,
        };
        by_sender.retain(|_, quota| {
            quota.blocked_until.is_some_and(|until| until > instant)
                || !full(&mut quota.messages, *messages)
                || !full(&mut quota.bytes, *bytes)
        });
        let forgotten = self.db.purge(
            now - ms(self.config.dedupe_retention),
            now - ms(self.config.code_resend),
        )?;
        if forgotten > 0 {
            debug!(forgotten, "dedupe memory purged");
        }
        Ok(())
    }

    // Requests.

    fn frame(&mut self, conn: ConnId, frame: ClientFrame, cost: u32) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let logged_in = c.number.is_some();
        let kind = frame.kind();
        let id = match &frame {
            ClientFrame::Send { id, .. } | ClientFrame::Revoke { id } => Some(id.clone()),
            _ => None,
        };
        self.requests.push((conn, kind, id.clone(), cost));
        self.answering = Some(conn);
        self.answer_cost = cost;
        let result = match (logged_in, frame) {
            (false, ClientFrame::Register { number }) => self.register(conn, number),
            (false, ClientFrame::Verify { number, code }) => self.verify(conn, number, code),
            (false, ClientFrame::Login { number, token }) => self.login(conn, number, token),
            (true, ClientFrame::Send { id, to, text, ts }) => self.send_msg(conn, id, to, text, ts),
            (true, ClientFrame::Ack { from, id }) => self.ack(conn, from, id),
            (true, ClientFrame::Revoke { id }) => self.revoke(conn, id),
            (true, ClientFrame::Subscribe { numbers }) => self.subscribe(conn, numbers),
            (true, ClientFrame::Typing { to, active }) => self.typing(conn, to, active),
            (logged_in, _) => {
                let when = if logged_in { "after" } else { "before" };
                let message = format!("`{kind}` is not allowed {when} login");
                self.fail(conn, err(ErrorCode::BadState, message, kind));
                Ok(())
            }
        };
        if let Err(cause) = result {
            error!(conn, frame = kind, %cause, "request failed");
            let error = err(ErrorCode::Internal, "the relay failed; try again", kind);
            let error = match &id {
                Some(id) => with_id(error, id),
                None => error,
            };
            self.fail(conn, error);
        }
        if self.answering.take() == Some(conn) {
            self.push(conn, Outbound::Done(cost));
        }
    }

    fn register(&mut self, conn: ConnId, number: String) -> Res {
        if !is_e164(&number) {
            let message = not_e164(&number);
            self.fail(conn, err(ErrorCode::InvalidNumber, message, "register"));
            return Ok(());
        }
        let now = now_ms();
        let command = match &self.config.verify {
            Verify::None => {
                let token = secret::new_token()?;
                if self
                    .db
                    .create_account(&number, &secret::token_hash(&token), now)?
                {
                    warn!(%number, "registered WITHOUT verification (--verify none)");
                    self.send(conn, &ServerFrame::Registered { number, token });
                } else {
                    let message = "this number already holds a token on another device, and \
                                   this relay cannot verify numbers (--verify none)";
                    self.fail(conn, err(ErrorCode::NumberTaken, message, "register"));
                }
                return Ok(());
            }
            Verify::SmsCommand(command) => command.clone(),
        };
        if self.conns.get(&conn).is_some_and(|c| c.sms_running) {
            let mut error = err(
                ErrorCode::RateLimited,
                "a code is being sent on this connection",
                "register",
            );
            error.retry_after_ms = Some(1000);
            self.fail(conn, error);
            return Ok(());
        }
        if let Some(code) = self.db.code(&number)? {
            let ready = code.sent_ms + ms(self.config.code_resend);
            if now < ready {
                let mut error = err(
                    ErrorCode::RateLimited,
                    "a code was sent to this number recently",
                    "register",
                );
                error.retry_after_ms = Some(u64::try_from(ready - now).unwrap_or(0));
                self.fail(conn, error);
                return Ok(());
            }
        }
        if let Some(error) = self.code_refusal(conn) {
            self.fail(conn, error);
            return Ok(());
        }
        let code = secret::new_code()?;
        let expires_ms = now + ms(self.config.code_ttl);
        self.db
            .put_code(&number, &secret::code_hash(&number, &code), now, expires_ms)?;
        self.charge_code(conn);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.sms_running = true;
        }
        self.codes.pending += 1;
        info!(%number, conn, pending = self.codes.pending, "sending a registration code");
        let tx = self.tx.clone();
        let timeout = self.config.sms_timeout;
        let slots = self.codes.slots.clone();
        tokio::spawn(async move {
            // At most `sms_concurrency` commands run; the others wait here, in order. The
            // semaphore is never closed.
            let _slot = slots.acquire_owned().await.ok();
            let result = sms::send_code(&command, &number, &code, timeout).await;
            let _ = tx
                .send(HubCmd::SmsDone {
                    conn,
                    number,
                    expires_ms,
                    result,
                })
                .await;
        });
        Ok(())
    }

    /// Why a code may not be sent now for `conn`, beyond its number's limits: every SMS
    /// command slot and queue place taken, or the limit of its address or the total one
    /// reached. Checks only; [`State::charge_code`] counts a code that is sent.
    fn code_refusal(&mut self, conn: ConnId) -> Option<ErrorFrame> {
        let limited = |message: &str, wait: Duration| {
            let mut error = err(ErrorCode::RateLimited, message, "register");
            error.retry_after_ms = Some(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
            error
        };
        let room = self.config.sms_concurrency + self.config.sms_queue;
        if self.codes.pending >= room {
            debug!(
                conn,
                pending = self.codes.pending,
                "code request refused: SMS commands busy"
            );
            let message = "the relay is sending many codes; try again shortly";
            return Some(limited(message, SMS_BUSY_RETRY));
        }
        let now = Instant::now();
        let addr = self.conns.get(&conn)?.addr;
        if let Some(rate) = self.codes.per_address
            && let Some(bucket) = self.codes.by_address.get_mut(&addr)
        {
            let wait = bucket.wait(rate, now, 1);
            if !wait.is_zero() {
                info!(%addr, conn, "code request refused: too many from this address");
                let message = "too many codes were requested from this address";
                return Some(limited(message, wait));
            }
        }
        if let Some((rate, bucket)) = &mut self.codes.total {
            let wait = bucket.wait(*rate, now, 1);
            if !wait.is_zero() {
                let quiet = self
                    .codes
                    .warned
                    .is_some_and(|at| now.duration_since(at) < LIMIT_WARN_EVERY);
                if !quiet {
                    self.codes.warned = Some(now);
                    warn!(
                        per_hour = self.config.codes_per_hour,
                        "the relay's limit of codes per hour refuses code requests"
                    );
                }
                let message = "the relay has sent as many codes as it may for now";
                return Some(limited(message, wait));
            }
        }
        None
    }

    /// Counts a code about to be sent for `conn` against its address and the total.
    fn charge_code(&mut self, conn: ConnId) {
        let now = Instant::now();
        if let (Some(rate), Some(c)) = (self.codes.per_address, self.conns.get(&conn)) {
            self.codes
                .by_address
                .entry(c.addr)
                .or_insert_with(|| Bucket::full(rate, now))
                .take(rate, now, 1);
        }
        if let Some((rate, bucket)) = &mut self.codes.total {
            bucket.take(*rate, now, 1);
        }
    }

    /// How long `sender` must wait before a new message of `bytes` bytes of text is
    /// accepted, if it is over its quota now. O(1): one map lookup.
    fn over_quota(&mut self, sender: &str, bytes: usize) -> Option<Duration> {
        let SenderLimits {
            messages: message_rate,
            bytes: byte_rate,
            by_sender,
        } = &mut self.senders;
        if message_rate.is_none() && byte_rate.is_none() {
            return None;
        }
        let quota = by_sender.get_mut(sender)?;
        let now = Instant::now();
        let blocked = quota.blocked_until.filter(|&until| until > now);
        let wait = match blocked {
            Some(until) => until - now,
            None => {
                let mut wait = Duration::ZERO;
                if let (Some(rate), Some(bucket)) = (*message_rate, &mut quota.messages) {
                    wait = wait.max(bucket.wait(rate, now, 1));
                }
                if let (Some(rate), Some(bucket)) = (*byte_rate, &mut quota.bytes) {
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
                wait
            }
        };
        Some(wait)
    }

    /// Counts an accepted message of `bytes` bytes of text against `sender`'s quotas.
    fn charge_sender(&mut self, sender: &str, bytes: usize) {
        let SenderLimits {
            messages: message_rate,
            bytes: byte_rate,
            by_sender,
        } = &mut self.senders;
        if message_rate.is_none() && byte_rate.is_none() {
            return;
        }
        let now = Instant::now();
        let quota = match by_sender.get_mut(sender) {
            Some(quota) => quota,
            None => by_sender.entry(sender.to_owned()).or_insert(SenderQuota {
                messages: message_rate.map(|rate| Bucket::full(rate, now)),
                bytes: byte_rate.map(|rate| Bucket::full(rate, now)),
                blocked_until: None,
                logged: None,
            }),
        };
        if let (Some(rate), Some(bucket)) = (*message_rate, &mut quota.messages) {
            bucket.take(rate, now, 1);
        }
        if let (Some(rate), Some(bucket)) = (*byte_rate, &mut quota.bytes) {
            bucket.take(rate, now, bytes as u64);
        }
    }

    fn sms_done(
        &mut self,
        conn: ConnId,
        number: String,
        expires_ms: i64,
        result: Result<(), SmsError>,
    ) {
        self.codes.pending = self.codes.pending.saturating_sub(1);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.sms_running = false;
        }
        match result {
            Ok(()) => {
                // The code's life began when it was made; it may have waited for a slot.
                let expires_in_ms = u64::try_from(expires_ms - now_ms()).unwrap_or(0);
                let frame = ServerFrame::CodeSent {
                    number,
                    expires_in_ms,
                };
                self.send(conn, &frame);
            }
            Err(cause) => {
                // The command's stderr is kept whole in the error: one escaped line.
                let cause = clip(&cause.to_string(), 800);
                error!(%number, %cause, "cannot send the registration code");
                // A code nobody received must not hold the number's rate limit.
                if let Err(err) = self.db.delete_code(&number) {
                    error!(%number, cause = %err, "cannot delete an unsent code");
                }
                let message = "the relay could not send the code SMS";
                self.fail(conn, err(ErrorCode::SmsFailed, message, "register"));
            }
        }
    }

    fn verify(&mut self, conn: ConnId, number: String, code: String) -> Res {
        let refuse = |code, message: &str| err(code, message, "verify");
        if !is_e164(&number) {
            let message = not_e164(&number);
            self.fail(conn, refuse(ErrorCode::InvalidNumber, &message));
            return Ok(());
        }
        if self.config.verify == Verify::None {
            let message = "this relay sends no codes (--verify none)";
            self.fail(conn, refuse(ErrorCode::NoCode, message));
            return Ok(());
        }
        let Some(pending) = self.db.code(&number)? else {
            let message = "no code is pending for this number";
            self.fail(conn, refuse(ErrorCode::NoCode, message));
            return Ok(());
        };
        let now = now_ms();
        if now >= pending.expires_ms {
            let message = "the code expired; ask for a new one";
            self.fail(conn, refuse(ErrorCode::CodeExpired, message));
            return Ok(());
        }
        let max = self.config.code_attempts;
        if pending.attempts >= max {
            let message = "too many wrong tries; ask for a new code";
            self.fail(conn, refuse(ErrorCode::TooManyAttempts, message));
            return Ok(());
        }
        if !secret::same(&secret::code_hash(&number, &code), &pending.code_hash) {
            let attempts = self.db.count_attempt(&number)?;
            warn!(%number, attempts, "wrong registration code");
            if attempts >= max {
                let message = "too many wrong tries; ask for a new code";
                self.fail(conn, refuse(ErrorCode::TooManyAttempts, message));
            } else {
                let mut error = refuse(ErrorCode::CodeInvalid, "wrong code");
                error.attempts_left = Some(max - attempts);
                self.fail(conn, error);
            }
            return Ok(());
        }
        let token = secret::new_token()?;
        self.db
            .set_account(&number, &secret::token_hash(&token), now)?;
        info!(%number, conn, "number verified; any earlier device token is void");
        if let Some(&old) = self.online.get(&number) {
            let message = "this number was registered on another device";
            self.fail(old, ErrorFrame::new(ErrorCode::Replaced, message));
        }
        self.send(conn, &ServerFrame::Registered { number, token });
        Ok(())
    }

    fn login(&mut self, conn: ConnId, number: String, token: String) -> Res {
        let known = if is_e164(&number) {
            self.db.token_hash(&number)?
        } else {
            None
        };
        let valid = known.is_some_and(|hash| secret::same(&hash, &secret::token_hash(&token)));
        if !valid {
            // Logged before it is known to be a number: only as an excerpt.
            let number = excerpt(&number);
            warn!(%number, conn, "login refused");
            let message = "unknown number or wrong token";
            self.fail(conn, err(ErrorCode::AuthFailed, message, "login"));
            return Ok(());
        }
        let queued = self.db.pending_count(&number)?;
        let old = self.online.insert(number.clone(), conn);
        let mut typing_to = None;
        if let Some(old) = old.filter(|&old| old != conn) {
            typing_to = self
                .conns
                .get(&old)
                .and_then(|c| c.typing.as_ref())
                .map(|(to, _)| to.clone());
            // `online` already points to the new connection: no offline blip.
            let message = "logged in again from another connection";
            self.fail(old, ErrorFrame::new(ErrorCode::Replaced, message));
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            self.online.remove(&number);
            return Ok(());
        };
        c.number = Some(number.clone());
        self.push(conn, Outbound::LoggedIn);
        info!(%number, conn, queued, "online");
        let frame = ServerFrame::LoggedIn {
            number: number.clone(),
            queued,
        };
        self.send(conn, &frame);
        self.fill_window(conn)?;
        self.send_owed(conn)?;
        match (old, typing_to) {
            // Already online on the connection it replaces: only the typing state ended.
            (Some(_), Some(to)) => self.push_to_number(&to, &number),
            (Some(_), None) => {}
            (None, _) => self.broadcast(&number),
        }
        Ok(())
    }

    /// Pushes the next pending messages to `conn` while its window has room.
    fn fill_window(&mut self, conn: ConnId) -> Res {
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
        if self.queued(conn, c).1 >= paced {
            self.starved.insert(conn);
            return Ok(());
        }
        let batch = self.db.pending_after(number, c.cursor, room as u32)?;
        let mut starved = false;
        for queued in batch {
            let Some(c) = self.conns.get(&conn) else {
                break;
            };
            if self.queued(conn, c).1 >= paced {
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
            self.send(conn, &frame);
        }
        if starved {
            self.starved.insert(conn);
        } else {
            self.starved.remove(&conn);
        }
        Ok(())
    }

    fn send_msg(&mut self, conn: ConnId, id: String, to: String, text: String, ts: i64) -> Res {
        let refuse =
            |code, message: String| with_id(ErrorFrame::new(code, message).re("send"), &id);
        if !is_message_id(&id) {
            let message = "message ids are 1 to 64 bytes of [A-Za-z0-9._:-]".to_owned();
            self.fail(conn, refuse(ErrorCode::InvalidId, message));
            return Ok(());
        }
        if !is_e164(&to) {
            let message = not_e164(&to);
            self.fail(conn, refuse(ErrorCode::InvalidNumber, message));
            return Ok(());
        }
        if text.len() > self.config.max_text_bytes {
            let message = format!(
                "the text has {} bytes, more than this relay's {}",
                text.len(),
                self.config.max_text_bytes
            );
            self.fail(conn, refuse(ErrorCode::TextTooLarge, message));
            return Ok(());
        }
        let Some(me) = self.conns.get(&conn).and_then(|c| c.number.clone()) else {
            return Ok(());
        };
        if let Some(row) = self.db.message(&me, &id)? {
            if row.recipient != to {
                let message = format!("id {id:?} was already used for another recipient");
                self.fail(conn, refuse(ErrorCode::IdConflict, message));
                return Ok(());
            }
            let state = match row.state {
                MsgState::Pending if self.online.contains_key(&to) => SendState::Online,
                MsgState::Pending => SendState::Queued,
                MsgState::Delivered => SendState::Delivered,
                MsgState::Revoked => SendState::Revoked,
                MsgState::Expired => SendState::Expired,
            };
            debug!(sender = %me, %id, ?state, "duplicate send");
            let frame = ServerFrame::Ack {
                id,
                to,
                state,
                duplicate: true,
            };
            self.send(conn, &frame);
            return Ok(());
        }
        // A resend of an accepted message is answered above, whatever the quota: only new
        // messages count.
        if let Some(wait) = self.over_quota(&me, text.len()) {
            let message = "this sender's quota (messages or bytes per minute) is used up";
            let mut error = refuse(ErrorCode::RateLimited, message.to_owned());
            error.retry_after_ms = Some(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
            self.fail(conn, error);
            return Ok(());
        }
        if !self.db.is_registered(&to)? {
            let message = format!("{to} is not registered on this relay");
            self.fail(conn, refuse(ErrorCode::RecipientUnregistered, message));
            return Ok(());
        }
        let bound = self.config.queue_per_recipient;
        if self.db.pending_count(&to)? >= bound {
            let message = format!("{to} already has {bound} undelivered messages");
            self.fail(conn, refuse(ErrorCode::QueueFull, message));
            return Ok(());
        }
        self.db.insert_message(&me, &id, &to, &text, ts, now_ms())?;
        self.charge_sender(&me, text.len());
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
        self.send(conn, &frame);
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

    fn ack(&mut self, conn: ConnId, from: String, id: String) -> Res {
        // `confirm` repeats `from` and `id`: only well-formed ones, never echoed input of
        // any size.
        if !is_e164(&from) {
            self.fail(conn, err(ErrorCode::InvalidNumber, not_e164(&from), "ack"));
            return Ok(());
        }
        if !is_message_id(&id) {
            let message = "message ids are 1 to 64 bytes of [A-Za-z0-9._:-]";
            let error = err(ErrorCode::InvalidId, message, "ack");
            self.fail(conn, with_id(error, &id));
            return Ok(());
        }
        let Some(me) = self.conns.get(&conn).and_then(|c| c.number.clone()) else {
            return Ok(());
        };
        let row = self
            .db
            .message(&from, &id)?
            .filter(|row| row.recipient == me);
        let Some(row) = row else {
            let frame = ServerFrame::Confirm {
                from,
                id,
                outcome: ConfirmOutcome::Unknown,
            };
            self.send(conn, &frame);
            return Ok(());
        };
        let outcome = match row.state {
            MsgState::Pending => {
                let sender = self.online.get(&row.sender).copied();
                // Pushed at once only to a sender with room; otherwise owed, and paced
                // (many recipients acking in one group must not overflow a sender).
                let live = sender.filter(|&s| self.has_receipt_room(s));
                let now = now_ms();
                if self
                    .db
                    .settle(row.seq, MsgState::Delivered, live.is_none(), now)?
                {
                    debug!(sender = %row.sender, %id, recipient = %me, "delivered");
                    if let (None, Some(sender)) = (live, sender) {
                        self.owed.insert(sender);
                    }
                    if let Some(sender) = live {
                        let receipt = ServerFrame::Receipt {
                            id: id.clone(),
                            to: me.clone(),
                            outcome: ReceiptOutcome::Delivered,
                            at: now,
                        };
                        self.send(sender, &receipt);
                    }
                    ConfirmOutcome::Delivered
                } else {
                    // Unreachable while the hub is the only writer; keep the answer safe.
                    ConfirmOutcome::Revoked
                }
            }
            MsgState::Delivered => ConfirmOutcome::Delivered,
            MsgState::Revoked | MsgState::Expired => ConfirmOutcome::Revoked,
        };
        if let Some(c) = self.conns.get_mut(&conn) {
            c.inflight.retain(|&seq| seq != row.seq);
        }
        let frame = ServerFrame::Confirm { from, id, outcome };
        self.send(conn, &frame);
        self.fill_window(conn)
    }

    fn revoke(&mut self, conn: ConnId, id: String) -> Res {
        let Some(me) = self.conns.get(&conn).and_then(|c| c.number.clone()) else {
            return Ok(());
        };
        // An id that is not one was never accepted: no need to look it up.
        let row = match is_message_id(&id) {
            true => self.db.message(&me, &id)?,
            false => None,
        };
        let Some(row) = row else {
            let message = "no message with this id from this number";
            let error = ErrorFrame::new(ErrorCode::UnknownMessage, message).re("revoke");
            self.fail(conn, with_id(error, &id));
            return Ok(());
        };
        let outcome = match row.state {
            MsgState::Pending => {
                if self
                    .db
                    .settle(row.seq, MsgState::Revoked, false, now_ms())?
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
        self.send(conn, &ServerFrame::RevokeResult { id, outcome });
        Ok(())
    }

    fn subscribe(&mut self, conn: ConnId, numbers: Vec<String>) -> Res {
        let max = self.config.max_subscriptions;
        if numbers.len() > max {
            let message = format!("{} numbers, more than this relay's {max}", numbers.len());
            self.fail(
                conn,
                err(ErrorCode::TooManySubscriptions, message, "subscribe"),
            );
            return Ok(());
        }
        if let Some(bad) = numbers.iter().find(|n| !is_e164(n)) {
            let message = not_e164(bad);
            self.fail(conn, err(ErrorCode::InvalidNumber, message, "subscribe"));
            return Ok(());
        }
        let mut seen = HashSet::with_capacity(numbers.len());
        let numbers: Vec<String> = numbers
            .into_iter()
            .filter(|n| seen.insert(n.clone()))
            .collect();
        let me = self.conns.get(&conn).and_then(|c| c.number.clone());
        let mut entries = Vec::with_capacity(numbers.len());
        for number in &numbers {
            let registered = self.online.contains_key(number) || self.db.is_registered(number)?;
            entries.push(PresenceEntry {
                number: number.clone(),
                registered,
                state: self.presence_of(number, me.as_deref()),
            });
        }
        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        let old = std::mem::replace(&mut c.subs, numbers);
        for number in &old {
            if let Some(set) = self.watchers.get_mut(number) {
                set.remove(&conn);
                if set.is_empty() {
                    self.watchers.remove(number);
                }
            }
        }
        for number in &c.subs {
            self.watchers
                .entry(number.clone())
                .or_default()
                .insert(conn);
        }
        self.send(conn, &ServerFrame::Snapshot { entries });
        Ok(())
    }

    fn typing(&mut self, conn: ConnId, to: String, active: bool) -> Res {
        if !is_e164(&to) {
            let message = not_e164(&to);
            self.fail(conn, err(ErrorCode::InvalidNumber, message, "typing"));
            return Ok(());
        }
        let Some(c) = self.conns.get(&conn) else {
            return Ok(());
        };
        let current = c.typing.as_ref().map(|(target, _)| target.clone());
        if !active {
            if current.as_deref() == Some(to.as_str()) {
                self.stop_typing(conn);
            }
            return Ok(());
        }
        if current.is_some() && current.as_deref() != Some(to.as_str()) {
            self.stop_typing(conn);
        }
        let deadline = Instant::now() + self.config.typing_ttl;
        let Some(c) = self.conns.get_mut(&conn) else {
            return Ok(());
        };
        let started = c.typing.is_none();
        if let Some((_, old)) = c.typing.replace((to.clone(), deadline)) {
            self.typing.remove(&(old, conn));
        }
        self.typing.insert((deadline, conn));
        if started {
            let me = c.number.clone().unwrap_or_default();
            self.push_to_number(&to, &me);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Mutex;

    use super::*;
    use crate::relay::server::outbox::outbox;

    /// A log sink for one test: what the hub logs, as text.
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<u8>>>);

    impl Write for Log {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("log").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_gone_connection_is_not_logged_as_a_slow_reader() {
        let log = Log::default();
        let sink = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || sink.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let (hub_tx, _hub_rx) = mpsc::channel(1);
            let config = Arc::new(RelayConfig::default());
            let mut state = State::new(config, Db::open(None).expect("db"), hub_tx);
            // Connection 1 has ended (its task dropped its outbox) but its `Closed` has
            // not reached the hub; connection 2 is alive and has not read its 2 frames.
            let (gone_tx, gone_rx) = outbox(16, 1 << 20);
            let (slow_tx, _slow_rx) = outbox(2, 1 << 20);
            let peer = IpAddr::from([127, 0, 0, 1]);
            state.handle(HubCmd::Open {
                conn: 1,
                tx: gone_tx,
                peer,
            });
            state.handle(HubCmd::Open {
                conn: 2,
                tx: slow_tx,
                peer,
            });
            drop(gone_rx);
            let began = state.begin();
            for conn in [1, 2, 2, 2] {
                state.send(conn, &ServerFrame::Pong { n: 1 });
            }
            state.end(began);
            assert!(state.conns.is_empty(), "both are forgotten");
        });
        let log = String::from_utf8(log.0.lock().expect("log").clone()).expect("utf-8");
        let slow: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("does not read"))
            .collect();
        let gone: Vec<&str> = log.lines().filter(|l| l.contains("already gone")).collect();
        assert_eq!(slow.len(), 1, "{log}");
        assert!(
            slow[0].contains("conn=2") && slow[0].contains("WARN"),
            "{log}"
        );
        assert_eq!(gone.len(), 1, "{log}");
        assert!(
            gone[0].contains("conn=1") && gone[0].contains("DEBUG"),
            "{log}"
        );
    }
}
