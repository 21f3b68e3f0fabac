//! hub::core: what the hub decides, over plain data.
//!
//! [`Core`] holds who is logged in where, each connection's session (subscriptions,
//! typing, delivery window), the quotas and what is owed, and decides every request
//! against a [`Storage`]. It touches no socket, thread or clock: each call gets the time
//! ([`Now`]), and what it sends goes through a [`Link`] (the shell's outboxes, or a
//! test's recorder), which also tells it how much each connection has queued (the
//! pacing of deliveries and receipts), and runs the SMS command of a registration code.
//! The concerns live beside this file: `access` (registration, codes, login),
//! `deliver` (send, ack, revoke, windows, receipts, expiry, sender quotas) and
//! `presence` (subscriptions, typing).
//!
//! Must not: read a clock, block, or know how frames are encoded or written.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::super::outbox::PushError;
use super::super::quota::address_key;
use super::super::secret::RandomError;
use super::super::storage::{DbError, Storage};
use super::super::{RelayConfig, excerpt};
use super::access::CodeLimits;
use super::deliver::SenderLimits;
use crate::relay::protocol::{ClientFrame, ErrorCode, ErrorFrame, MAX_ID_BYTES, ServerFrame};

/// Identifies one connection for the hub's whole life.
pub(crate) type ConnId = u64;

/// Owed receipts (those of a sender who was offline, or of messages that expired) go
/// out at most this many at a time, and only to an outbox holding at most this many
/// items, so that a long backlog of receipts can never overflow a reading client's
/// outbox; the rest stay owed in the storage.
pub(super) const RECEIPT_BATCH: usize = 32;

/// How soon the hub sends the next batch of owed receipts.
const RECEIPT_PACE: Duration = Duration::from_millis(50);

/// The time of one call into the core: `at` for its timers and quotas, `ms` (ms since
/// the Unix epoch) for what it stores.
#[derive(Debug, Clone, Copy)]
pub(super) struct Now {
    pub at: Instant,
    pub ms: i64,
}

/// What the core sends a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Out {
    /// A frame to write.
    Frame(ServerFrame),
    /// A frame answering one of the connection's requests, with the cost it came with.
    Answer(ServerFrame, u32),
    /// One of the connection's requests was handled and needs no frame.
    Done(u32),
    /// The connection is logged in: its auth timer stops.
    LoggedIn,
    /// Write this error and close the connection.
    Fatal(ErrorFrame),
}

/// A registration code for the shell to send by SMS; it reports back with
/// [`Core::sms_done`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CodeJob {
    pub conn: ConnId,
    /// The operator's command.
    pub command: String,
    pub number: String,
    pub code: String,
    /// When the code expires (ms since the epoch).
    pub expires_ms: i64,
}

/// The core's way out: the connections' outboxes and the SMS command.
pub(super) trait Link {
    /// Queues `item` for `conn`. An error says its outbox refused it (full, or its task
    /// gone): the core then forgets the connection.
    fn push(&mut self, conn: ConnId, item: Out) -> Result<(), PushError>;
    /// Items and bytes queued for `conn` and not yet written.
    fn queued(&self, conn: ConnId) -> (usize, usize);
    /// The core forgot `conn`: its outbox closes once what is queued is written.
    fn close(&mut self, conn: ConnId);
    /// Runs the SMS command for a code.
    fn send_code(&mut self, job: CodeJob);
}

/// Why a request failed inside the relay (the client gets `internal`).
#[derive(Debug, thiserror::Error)]
pub(super) enum HubError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Random(#[from] RandomError),
}

pub(super) type Res = Result<(), HubError>;

/// One connection, as the hub sees it.
pub(super) struct Session {
    /// The number it is logged in as.
    pub(super) number: Option<String>,
    /// The numbers it follows, deduplicated, in request order.
    pub(super) subs: Vec<String>,
    /// Whom it is typing to, and until when.
    pub(super) typing: Option<(String, Instant)>,
    /// Queue position of the last message pushed to it in this session: the next
    /// delivery is the first pending message after it.
    pub(super) cursor: i64,
    /// Messages pushed in this session and not yet acked (the delivery window).
    pub(super) inflight: Vec<i64>,
    /// Its SMS command is running: one code request at a time per connection.
    pub(super) sms_running: bool,
    /// Its address as the limits per address count it ([`address_key`]).
    pub(super) addr: IpAddr,
}

/// The hub's decisions and the state they rest on.
pub(super) struct Core<S, L> {
    pub(super) config: Arc<RelayConfig>,
    pub(super) store: S,
    pub(super) link: L,
    /// The time of the call being handled.
    pub(super) now: Now,
    pub(super) codes: CodeLimits,
    pub(super) senders: SenderLimits,
    pub(super) conns: HashMap<ConnId, Session>,
    /// Number → the connection logged in as it (at most one).
    pub(super) online: HashMap<String, ConnId>,
    /// Number → the connections subscribed to it.
    pub(super) watchers: HashMap<String, HashSet<ConnId>>,
    /// Typing deadlines, soonest first.
    pub(super) typing: BTreeSet<(Instant, ConnId)>,
    pub(super) next_sweep: Instant,
    /// Connections that may still be owed receipts beyond the batches sent so far.
    pub(super) owed: BTreeSet<ConnId>,
    /// Connections whose delivery window has room while messages may wait for them, but
    /// whose outbox holds too many bytes to push more now (paced like `owed`).
    pub(super) starved: BTreeSet<ConnId>,
    /// When the next batch of owed receipts goes out; set while some are owed, and not
    /// pushed back by traffic (a busy relay would otherwise never send them).
    pub(super) next_pace: Option<Instant>,
    /// The connection whose request is being handled and not yet answered: its next
    /// frame is the answer.
    answering: Option<ConnId>,
    /// The cost of the request being handled, given back with its answer.
    answer_cost: u32,
}

pub(super) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

pub(super) fn err(code: ErrorCode, message: impl Into<String>, re: &str) -> ErrorFrame {
    ErrorFrame::new(code, message).re(re)
}

/// The message of an `invalid-number` error: the number only as a short excerpt.
pub(super) fn not_e164(number: &str) -> String {
    format!("{} is not an E.164 number", excerpt(number))
}

/// `error` with `id`: the id this answers, if it is short enough to echo (an invalid id
/// of any length may reach the relay; what it sends back stays small).
pub(super) fn with_id(error: ErrorFrame, id: &str) -> ErrorFrame {
    if id.len() <= MAX_ID_BYTES {
        error.id(id)
    } else {
        error
    }
}

/// The `internal` error answering a request of `kind` (with its id, if any).
pub(super) fn internal(kind: &str, id: Option<&str>) -> ErrorFrame {
    let error = err(ErrorCode::Internal, "the relay failed; try again", kind);
    match id {
        Some(id) => with_id(error, id),
        None => error,
    }
}

impl<S: Storage, L: Link> Core<S, L> {
    pub(super) fn new(config: Arc<RelayConfig>, store: S, link: L, now: Now) -> Self {
        Core {
            codes: CodeLimits::new(&config, now.at),
            senders: SenderLimits::new(&config),
            next_sweep: now.at,
            config,
            store,
            link,
            now,
            conns: HashMap::new(),
            online: HashMap::new(),
            watchers: HashMap::new(),
            typing: BTreeSet::new(),
            owed: BTreeSet::new(),
            starved: BTreeSet::new(),
            next_pace: None,
            answering: None,
            answer_cost: 0,
        }
    }

    /// Whether the core knows `conn` (opened and not forgotten).
    pub(super) fn is_open(&self, conn: ConnId) -> bool {
        self.conns.contains_key(&conn)
    }

    /// A connection said a valid `hello` from `peer`.
    pub(super) fn open(&mut self, conn: ConnId, peer: IpAddr, now: Now) {
        self.now = now;
        let session = Session {
            number: None,
            subs: Vec::new(),
            typing: None,
            cursor: 0,
            inflight: Vec::new(),
            sms_running: false,
            addr: address_key(peer),
        };
        self.conns.insert(conn, session);
    }

    /// The connection ended.
    pub(super) fn closed(&mut self, conn: ConnId, now: Now) {
        self.now = now;
        self.detach(conn);
    }

    /// When the core wants [`Core::tick`] next: a typing state ends, the sweep, or the
    /// next batch of owed receipts and paced deliveries.
    pub(super) fn deadline(&mut self, now: Instant) -> Instant {
        let mut deadline = self.next_sweep;
        if let Some(&(first, _)) = self.typing.first() {
            deadline = deadline.min(first);
        }
        if self.owed.is_empty() && self.starved.is_empty() {
            self.next_pace = None;
        } else {
            let pace = *self.next_pace.get_or_insert(now + RECEIPT_PACE);
            deadline = deadline.min(pace);
        }
        deadline
    }

    /// Runs what is due at `now`: typing states that end, the sweep, and the paced
    /// deliveries and receipts.
    pub(super) fn tick(&mut self, now: Now) {
        self.now = now;
        self.end_typing();
        if now.at >= self.next_sweep {
            self.next_sweep = now.at + self.config.sweep_interval;
            if let Err(err) = self.sweep() {
                error!(cause = %err, "sweep failed");
            }
        }
        if self.next_pace.is_some_and(|pace| pace > now.at) {
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

    /// Handles one decoded request of `conn`. It is answered by exactly one
    /// [`Out::Answer`] or [`Out::Done`] carrying `cost` (unless the connection is
    /// forgotten meanwhile).
    pub(super) fn frame(&mut self, conn: ConnId, frame: ClientFrame, cost: u32, now: Now) {
        self.now = now;
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let logged_in = c.number.is_some();
        let kind = frame.kind();
        let id = match &frame {
            ClientFrame::Send { id, .. } | ClientFrame::Revoke { id } => Some(id.clone()),
            _ => None,
        };
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
            self.fail(conn, internal(kind, id.as_deref()));
        }
        if self.answering.take() == Some(conn) {
            self.push(conn, Out::Done(cost));
        }
    }

    // Sending to connections.

    /// Queues `frame` for `conn`. The first frame to a connection whose request is
    /// being handled is its answer.
    pub(super) fn send(&mut self, conn: ConnId, frame: ServerFrame) {
        if !self.conns.contains_key(&conn) {
            return;
        }
        let item = if self.answering == Some(conn) {
            self.answering = None;
            Out::Answer(frame, self.answer_cost)
        } else {
            Out::Frame(frame)
        };
        self.push(conn, item);
    }

    /// Queues `item` for `conn`; a connection whose outbox refuses it is forgotten.
    pub(super) fn push(&mut self, conn: ConnId, item: Out) {
        if !self.conns.contains_key(&conn) {
            return;
        }
        if let Err(why) = self.link.push(conn, item) {
            self.drop_conn(conn, why);
        }
    }

    /// Forgets a connection whose outbox refused a frame: one that does not read (its
    /// task is alive, its queue full), or one that is gone (its task ended, and its
    /// `Closed` is on the way).
    pub(super) fn drop_conn(&mut self, conn: ConnId, why: PushError) {
        match why {
            PushError::Full => {
                let (items, bytes) = self.link.queued(conn);
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
    pub(super) fn fail(&mut self, conn: ConnId, error: ErrorFrame) {
        if error.fatal {
            self.push(conn, Out::Fatal(error));
            self.detach(conn);
        } else {
            self.send(conn, ServerFrame::Error(error));
        }
    }

    /// Forgets `conn`: its login, subscriptions and typing, and closes its outbox
    /// (once what is queued is written).
    pub(super) fn detach(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if self.answering == Some(conn) {
            self.answering = None;
        }
        self.owed.remove(&conn);
        self.starved.remove(&conn);
        for number in &c.subs {
            self.unwatch(number, conn);
        }
        if let Some((_, deadline)) = &c.typing {
            self.typing.remove(&(*deadline, conn));
        }
        self.link.close(conn);
        if let Some(number) = c.number
            && self.online.get(&number) == Some(&conn)
        {
            self.online.remove(&number);
            info!(%number, conn, "offline");
            self.broadcast(&number);
        }
    }

    /// The number `conn` is logged in as.
    pub(super) fn number_of(&self, conn: ConnId) -> Option<String> {
        self.conns.get(&conn).and_then(|c| c.number.clone())
    }
}
