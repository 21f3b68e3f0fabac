//! The hub's core as tables: each scenario is rows of (input → what every connection is
//! sent), run against the SQLite storage on `:memory:` (the real SQL, so the core is
//! tested with the storage it runs on; another storage gets the same tables), with a
//! recording [`Link`] and a clock the rows move.
//!
//! Lines read `CONN[=] TYPE FIELDS`: `=` marks the answer to the request, `done` a
//! request answered without a frame, `closed` a connection the core forgot, `sms N` a
//! code to send. Numbers show as A, B, C.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::core::{CodeJob, ConnId, Core, Link, Now, Out};
use super::{HubCmd, Outboxes, Shell};
use crate::relay::protocol::{ClientFrame, ServerFrame, encode};
use crate::relay::server::db::Db;
use crate::relay::server::outbox::{PushError, outbox};
use crate::relay::server::{RelayConfig, Verify};

const A: &str = "+15550000001";
const B: &str = "+15550000002";
const C: &str = "+15550000003";

/// A [`Link`] that writes down what the core does, and whose connections read
/// everything after each row unless told to hold.
#[derive(Default)]
struct Wire {
    lines: Vec<String>,
    unread: HashMap<ConnId, (usize, usize)>,
    holding: HashSet<ConnId>,
    refusing: HashSet<ConnId>,
    jobs: Vec<CodeJob>,
    /// The tokens `registered` gave, by number.
    tokens: HashMap<String, String>,
}

impl Link for Wire {
    fn push(&mut self, conn: ConnId, item: Out) -> Result<(), PushError> {
        if self.refusing.contains(&conn) {
            return Err(PushError::Full);
        }
        if let Out::Frame(ServerFrame::Registered { number, token })
        | Out::Answer(ServerFrame::Registered { number, token }, _) = &item
        {
            self.tokens.insert(number.clone(), token.clone());
        }
        let bytes = match &item {
            Out::Frame(frame) | Out::Answer(frame, _) => encode(frame).len(),
            _ => 0,
        };
        let unread = self.unread.entry(conn).or_default();
        unread.0 += 1;
        unread.1 += bytes;
        self.lines.push(line(conn, &item));
        Ok(())
    }

    fn queued(&self, conn: ConnId) -> (usize, usize) {
        self.unread.get(&conn).copied().unwrap_or_default()
    }

    fn close(&mut self, conn: ConnId) {
        self.lines.push(format!("{conn} closed"));
    }

    fn send_code(&mut self, job: CodeJob) {
        self.lines
            .push(short(&format!("{} sms {}", job.conn, job.number)));
        self.jobs.push(job);
    }
}

/// One item as a short line (see the module's comment).
fn line(conn: ConnId, item: &Out) -> String {
    let (mark, frame) = match item {
        Out::Frame(frame) => ("", frame),
        Out::Answer(frame, _) => ("=", frame),
        Out::Done(_) => return format!("{conn} done"),
        Out::LoggedIn => return format!("{conn} auth-ok"),
        Out::Fatal(error) => {
            let code = serde_json::to_value(error.code).expect("json");
            return format!("{conn} fatal {}", code.as_str().unwrap_or("?"));
        }
    };
    let value = serde_json::to_value(frame).expect("json");
    let mut out = format!("{conn}{mark} {}", value["type"].as_str().unwrap_or("?"));
    let bare = [
        "code", "number", "from", "id", "to", "text", "state", "outcome",
    ];
    for key in bare {
        match &value[key] {
            serde_json::Value::String(s) if key == "text" && s.len() > 10 => {
                out.push_str(&format!(" <{} bytes>", s.len()));
            }
            serde_json::Value::String(s) => out.push_str(&format!(" {s}")),
            _ => {}
        }
    }
    if let ServerFrame::Presence(entry) = frame
        && !entry.registered
    {
        out.push_str(" unregistered");
    }
    for key in ["queued", "attempts_left", "retry_after_ms"] {
        if let Some(n) = value[key].as_u64() {
            out.push_str(&format!(" {key}={n}"));
        }
    }
    if value["duplicate"] == true {
        out.push_str(" dup");
    }
    if let ServerFrame::Snapshot { entries } = frame {
        for entry in entries {
            let state = serde_json::to_value(entry.state).expect("json");
            let state = if entry.registered {
                state.as_str().unwrap_or("?").to_owned()
            } else {
                "unregistered".to_owned()
            };
            out.push_str(&format!(" {}:{state}", entry.number));
        }
    }
    short(&out)
}

/// `text` with the numbers A, B and C shown as such.
fn short(text: &str) -> String {
    text.replace(A, "A").replace(B, "B").replace(C, "C")
}

/// One row's input.
#[derive(Debug, Clone)]
enum In {
    Open(ConnId),
    /// A connection from 10.0.0.N.
    OpenFrom(ConnId, u8),
    Close(ConnId),
    Reg(ConnId, &'static str),
    /// `verify` with the last code sent for the number.
    Code(ConnId, &'static str),
    BadCode(ConnId, &'static str),
    /// The connection's SMS command finished: sent, or failed.
    SmsOk(ConnId),
    SmsFail(ConnId),
    /// `login` with the token the number got.
    Login(ConnId, &'static str),
    BadLogin(ConnId, &'static str),
    /// `send` of "hi".
    Send(ConnId, &'static str, &'static str),
    SendText(ConnId, &'static str, &'static str, usize),
    Ack(ConnId, &'static str, &'static str),
    Revoke(ConnId, &'static str),
    Sub(ConnId, &'static [&'static str]),
    Typing(ConnId, &'static str, bool),
    /// Time passes (ms), then the core's timers run.
    Wait(u64),
    /// The connection stops reading its frames, or reads them all again.
    Hold(ConnId),
    Read(ConnId),
    /// The connection's outbox refuses everything (full).
    Refuse(ConnId),
}

struct Rig {
    core: Core<Db, Wire>,
    start: Instant,
    elapsed: Duration,
}

/// The wall clock of the rows' start (ms since the epoch): a fixed day in 2026.
const START_MS: i64 = 1_780_000_000_000;

impl Rig {
    fn new(config: RelayConfig) -> Rig {
        let start = Instant::now();
        let now = Now {
            at: start,
            ms: START_MS,
        };
        let db = Db::open(None).expect("db");
        Rig {
            core: Core::new(Arc::new(config), db, Wire::default(), now),
            start,
            elapsed: Duration::ZERO,
        }
    }

    fn now(&self) -> Now {
        let ms = START_MS + i64::try_from(self.elapsed.as_millis()).expect("ms");
        Now {
            at: self.start + self.elapsed,
            ms,
        }
    }

    fn request(&mut self, conn: ConnId, frame: ClientFrame) {
        let now = self.now();
        self.core.frame(conn, frame, 1, now);
    }

    fn job(&self, conn: ConnId) -> CodeJob {
        let job = self.core.link.jobs.iter().rev().find(|j| j.conn == conn);
        job.expect("a code was sent").clone()
    }

    /// The last code sent for `number` (any, if none was).
    fn code_of(&self, number: &str) -> String {
        let job = self
            .core
            .link
            .jobs
            .iter()
            .rev()
            .find(|j| j.number == number);
        job.map_or_else(|| "123456".to_owned(), |job| job.code.clone())
    }

    fn run(&mut self, input: In) {
        let now = self.now();
        let hi = |id: &str, to: &str, text: String| ClientFrame::Send {
            id: id.to_owned(),
            to: to.to_owned(),
            text,
            ts: 7,
        };
        match input {
            In::Open(conn) => self.core.open(conn, IpAddr::from([127, 0, 0, 1]), now),
            In::OpenFrom(conn, n) => self.core.open(conn, IpAddr::from([10, 0, 0, n]), now),
            In::Close(conn) => self.core.closed(conn, now),
            In::Reg(conn, number) => {
                let number = number.to_owned();
                self.request(conn, ClientFrame::Register { number });
            }
            In::Code(conn, number) => {
                let code = self.code_of(number);
                let number = number.to_owned();
                self.request(conn, ClientFrame::Verify { number, code });
            }
            In::BadCode(conn, number) => {
                let code = if self.code_of(number) == "000000" {
                    "111111"
                } else {
                    "000000"
                };
                let (number, code) = (number.to_owned(), code.to_owned());
                self.request(conn, ClientFrame::Verify { number, code });
            }
            In::SmsOk(conn) | In::SmsFail(conn) => {
                let job = self.job(conn);
                let result = match input {
                    In::SmsOk(_) => Ok(()),
                    _ => Err("exit status 1".to_owned()),
                };
                self.core
                    .sms_done(conn, job.number, job.expires_ms, result, now);
            }
            In::Login(conn, number) | In::BadLogin(conn, number) => {
                let token = match input {
                    In::Login(..) => self.core.link.tokens[number].clone(),
                    _ => "wrong".to_owned(),
                };
                let number = number.to_owned();
                self.request(conn, ClientFrame::Login { number, token });
            }
            In::Send(conn, id, to) => self.request(conn, hi(id, to, "hi".to_owned())),
            In::SendText(conn, id, to, len) => self.request(conn, hi(id, to, "x".repeat(len))),
            In::Ack(conn, from, id) => {
                let (from, id) = (from.to_owned(), id.to_owned());
                self.request(conn, ClientFrame::Ack { from, id });
            }
            In::Revoke(conn, id) => {
                let id = id.to_owned();
                self.request(conn, ClientFrame::Revoke { id });
            }
            In::Sub(conn, numbers) => {
                let numbers = numbers.iter().map(|n| (*n).to_owned()).collect();
                self.request(conn, ClientFrame::Subscribe { numbers });
            }
            In::Typing(conn, to, active) => {
                let to = to.to_owned();
                self.request(conn, ClientFrame::Typing { to, active });
            }
            In::Wait(ms) => {
                self.elapsed += Duration::from_millis(ms);
                let now = self.now();
                self.core.tick(now);
            }
            In::Hold(conn) => {
                self.core.link.holding.insert(conn);
            }
            In::Read(conn) => {
                self.core.link.holding.remove(&conn);
                self.core.link.unread.remove(&conn);
            }
            In::Refuse(conn) => {
                self.core.link.refusing.insert(conn);
            }
        }
    }

    /// Runs the rows in order, checking what each one sends.
    fn rows(&mut self, rows: &[(In, &[&str])]) {
        for (i, (input, expected)) in rows.iter().enumerate() {
            self.run(input.clone());
            let lines = std::mem::take(&mut self.core.link.lines);
            assert_eq!(lines, *expected, "row {i}: {input:?}");
            let wire = &mut self.core.link;
            let holding = wire.holding.clone();
            wire.unread.retain(|conn, _| holding.contains(conn));
        }
    }
}

use In::*;

impl Rig {
    /// Registers `number` on a new connection `conn` (no verification) and logs it in.
    fn online(&mut self, conn: ConnId, number: &'static str) {
        for input in [Open(conn), Reg(conn, number), Login(conn, number)] {
            self.run(input);
        }
        let lines = std::mem::take(&mut self.core.link.lines);
        assert!(lines.contains(&format!("{conn} auth-ok")), "{lines:?}");
        self.core.link.unread.clear();
    }

    /// Registers `number` on a connection that then closes: it is offline.
    fn offline(&mut self, conn: ConnId, number: &'static str) {
        for input in [Open(conn), Reg(conn, number), Close(conn)] {
            self.run(input);
        }
        let lines = std::mem::take(&mut self.core.link.lines);
        assert!(
            lines[0].starts_with(&format!("{conn}= registered")),
            "{lines:?}"
        );
        assert_eq!(lines[1], format!("{conn} closed"));
        self.core.link.unread.clear();
    }
}

fn sms_config() -> RelayConfig {
    RelayConfig {
        verify: Verify::SmsCommand("true".to_owned()),
        code_attempts: 3,
        ..RelayConfig::default()
    }
}

#[test]
fn register_without_verification() {
    let mut rig = Rig::new(RelayConfig::default());
    rig.rows(&[
        (Open(1), &[]),
        (Reg(1, "15550000001"), &["1= error invalid-number"]),
        (Reg(1, A), &["1= registered A"]),
        (Open(2), &[]),
        (Reg(2, A), &["2= error number-taken"]),
        (Code(2, A), &["2= error no-code"]),
        (Login(2, A), &["2 auth-ok", "2= logged-in A queued=0"]),
        (Reg(2, B), &["2 fatal bad-state", "2 closed"]),
    ]);
}

#[test]
fn register_with_a_code_its_tries_and_expiry() {
    let mut rig = Rig::new(sms_config());
    rig.rows(&[
        (Open(1), &[]),
        (Reg(1, A), &["1 sms A", "1 done"]),
        // One code at a time per connection, and per number until `code_resend`.
        (Reg(1, A), &["1= error rate-limited retry_after_ms=1000"]),
        (SmsOk(1), &["1 code-sent A"]),
        (Open(2), &[]),
        (Reg(2, A), &["2= error rate-limited retry_after_ms=60000"]),
        (BadCode(1, A), &["1= error code-invalid attempts_left=2"]),
        (BadCode(1, A), &["1= error code-invalid attempts_left=1"]),
        (BadCode(1, A), &["1= error too-many-attempts"]),
        (Code(1, A), &["1= error too-many-attempts"]),
        (Wait(60_000), &[]),
        (Reg(1, A), &["1 sms A", "1 done"]),
        (SmsOk(1), &["1 code-sent A"]),
        (Code(1, A), &["1= registered A"]),
        (Code(1, A), &["1= error no-code"]),
        // A code that expired.
        (Reg(2, B), &["2 sms B", "2 done"]),
        (SmsOk(2), &["2 code-sent B"]),
        (Wait(600_000), &[]),
        (Code(2, B), &["2= error code-expired"]),
        // An SMS that failed holds nothing back.
        (Open(3), &[]),
        (Reg(3, C), &["3 sms C", "3 done"]),
        (SmsFail(3), &["3 error sms-failed"]),
        (Reg(3, C), &["3 sms C", "3 done"]),
    ]);
}

#[test]
fn a_verified_number_closes_its_older_session() {
    let mut rig = Rig::new(sms_config());
    rig.rows(&[
        (Open(1), &[]),
        (Reg(1, A), &["1 sms A", "1 done"]),
        (SmsOk(1), &["1 code-sent A"]),
        (Code(1, A), &["1= registered A"]),
        (Login(1, A), &["1 auth-ok", "1= logged-in A queued=0"]),
        (Open(2), &[]),
        (Wait(60_000), &[]),
        (Reg(2, A), &["2 sms A", "2 done"]),
        (SmsOk(2), &["2 code-sent A"]),
        (
            Code(2, A),
            &["1 fatal replaced", "1 closed", "2= registered A"],
        ),
        (Open(3), &[]),
        (BadLogin(3, A), &["3 fatal auth-failed", "3 closed"]),
    ]);
}

#[test]
fn login_replaces_the_older_session_without_an_offline_blip() {
    let mut rig = Rig::new(RelayConfig::default());
    rig.online(4, B);
    rig.rows(&[
        (Open(1), &[]),
        (Reg(1, A), &["1= registered A"]),
        (Sub(4, &[A]), &["4= snapshot A:offline"]),
        (
            Login(1, A),
            &[
                "1 auth-ok",
                "1= logged-in A queued=0",
                "4 presence A online",
            ],
        ),
        (Open(2), &[]),
        (BadLogin(2, A), &["2 fatal auth-failed", "2 closed"]),
        (Open(3), &[]),
        (
            Login(3, A),
            &[
                "1 fatal replaced",
                "1 closed",
                "3 auth-ok",
                "3= logged-in A queued=0",
            ],
        ),
        (Close(3), &["3 closed", "4 presence A offline"]),
    ]);
}

#[test]
fn send_queue_deliver_window_and_duplicates() {
    let config = RelayConfig {
        deliver_window: 2,
        ..RelayConfig::default()
    };
    let mut rig = Rig::new(config);
    rig.online(1, A);
    rig.offline(2, B);
    rig.rows(&[
        (Send(1, "m1", B), &["1= ack m1 B queued"]),
        (Send(1, "m1", B), &["1= ack m1 B queued dup"]),
        (Send(1, "m1", C), &["1= error id-conflict m1"]),
        (Send(1, "bad/id", B), &["1= error invalid-id bad/id"]),
        (Send(1, "m2", "5550000002"), &["1= error invalid-number m2"]),
        (Send(1, "m3", C), &["1= error recipient-unregistered m3"]),
        (
            SendText(1, "m3", B, 64 * 1024 + 1),
            &["1= error text-too-large m3"],
        ),
        (Send(1, "m2", B), &["1= ack m2 B queued"]),
        (Send(1, "m3", B), &["1= ack m3 B queued"]),
        (Open(3), &[]),
        (
            Login(3, B),
            &[
                "3 auth-ok",
                "3= logged-in B queued=3",
                "3 deliver A m1 hi",
                "3 deliver A m2 hi",
            ],
        ),
        // The window (2) is full: m3 and m4 wait for an ack.
        (Send(1, "m4", B), &["1= ack m4 B online"]),
        (
            Ack(3, A, "m1"),
            &[
                "1 receipt m1 B delivered",
                "3= confirm A m1 delivered",
                "3 deliver A m3 hi",
            ],
        ),
        (Ack(3, A, "m1"), &["3= confirm A m1 delivered"]),
        (Ack(3, A, "nope"), &["3= confirm A nope unknown"]),
        (Ack(3, C, "m2"), &["3= confirm C m2 unknown"]),
        (Send(1, "m1", B), &["1= ack m1 B delivered dup"]),
        (
            Ack(3, A, "m2"),
            &[
                "1 receipt m2 B delivered",
                "3= confirm A m2 delivered",
                "3 deliver A m4 hi",
            ],
        ),
    ]);
}

#[test]
fn ack_and_revoke_exclude_each_other_in_both_orders() {
    let mut rig = Rig::new(RelayConfig::default());
    rig.online(1, A);
    rig.online(2, B);
    rig.rows(&[
        (
            Send(1, "m1", B),
            &["1= ack m1 B online", "2 deliver A m1 hi"],
        ),
        (Revoke(1, "m1"), &["1= revoke-result m1 revoked"]),
        (Ack(2, A, "m1"), &["2= confirm A m1 revoked"]),
        (Revoke(1, "m1"), &["1= revoke-result m1 revoked"]),
        (Send(1, "m1", B), &["1= ack m1 B revoked dup"]),
        (
            Send(1, "m2", B),
            &["1= ack m2 B online", "2 deliver A m2 hi"],
        ),
        (
            Ack(2, A, "m2"),
            &["1 receipt m2 B delivered", "2= confirm A m2 delivered"],
        ),
        (Revoke(1, "m2"), &["1= revoke-result m2 already-delivered"]),
        (Revoke(1, "m9"), &["1= error unknown-message m9"]),
        (Revoke(2, "m2"), &["2= error unknown-message m2"]),
    ]);
}

#[test]
fn receipts_owed_to_an_offline_sender_come_at_its_login() {
    let mut rig = Rig::new(RelayConfig::default());
    rig.online(1, A);
    rig.offline(2, B);
    rig.rows(&[
        (Send(1, "m1", B), &["1= ack m1 B queued"]),
        (Close(1), &["1 closed"]),
        (Open(3), &[]),
        (
            Login(3, B),
            &["3 auth-ok", "3= logged-in B queued=1", "3 deliver A m1 hi"],
        ),
        (Ack(3, A, "m1"), &["3= confirm A m1 delivered"]),
        (Open(4), &[]),
        (
            Login(4, A),
            &[
                "4 auth-ok",
                "4= logged-in A queued=0",
                "4 receipt m1 B delivered",
            ],
        ),
        (Close(4), &["4 closed"]),
        (Open(5), &[]),
        (Login(5, A), &["5 auth-ok", "5= logged-in A queued=0"]),
    ]);
}

#[test]
fn a_sender_that_does_not_read_gets_its_receipts_paced() {
    let mut rig = Rig::new(RelayConfig::default());
    rig.online(1, A);
    rig.online(2, B);
    let lines = |rig: &mut Rig| std::mem::take(&mut rig.core.link.lines);
    // 34 answers, unread, fill A's outbox beyond a batch: the receipts are owed.
    rig.run(Hold(1));
    for id in IDS {
        rig.run(Send(1, id, B));
    }
    let sent = lines(&mut rig);
    let answers = sent.iter().filter(|l| l.starts_with("1= ack")).count();
    assert_eq!(answers, IDS.len(), "{sent:?}");
    for id in IDS {
        rig.run(Ack(2, A, id));
    }
    let sent = lines(&mut rig);
    let receipts = sent.iter().filter(|l| l.starts_with("1 receipt")).count();
    assert_eq!(receipts, 0, "A's outbox holds a batch already: {sent:?}");
    rig.rows(&[(Wait(50), &[]), (Read(1), &[])]);
    rig.run(Wait(50));
    let sent = lines(&mut rig);
    assert_eq!(sent.len(), 32, "{sent:?}");
    assert_eq!(sent[0], "1 receipt m00 B delivered");
    rig.run(Wait(50));
    let sent = lines(&mut rig);
    assert_eq!(
        sent,
        ["1 receipt m32 B delivered", "1 receipt m33 B delivered"]
    );
}

const IDS: [&str; 34] = [
    "m00", "m01", "m02", "m03", "m04", "m05", "m06", "m07", "m08", "m09", "m10", "m11", "m12",
    "m13", "m14", "m15", "m16", "m17", "m18", "m19", "m20", "m21", "m22", "m23", "m24", "m25",
    "m26", "m27", "m28", "m29", "m30", "m31", "m32", "m33",
];

#[test]
fn deliveries_are_paced_by_the_bytes_a_recipient_has_not_read() {
    let config = RelayConfig {
        max_outbox_bytes: 800,
        ..RelayConfig::default()
    };
    let mut rig = Rig::new(config);
    rig.online(1, A);
    rig.offline(2, B);
    rig.rows(&[
        (SendText(1, "m1", B, 150), &["1= ack m1 B queued"]),
        (SendText(1, "m2", B, 150), &["1= ack m2 B queued"]),
        (Open(3), &[]),
        (Hold(3), &[]),
        (
            Login(3, B),
            &[
                "3 auth-ok",
                "3= logged-in B queued=2",
                "3 deliver A m1 <150 bytes>",
            ],
        ),
        (Wait(50), &[]),
        (Read(3), &[]),
        (Wait(50), &["3 deliver A m2 <150 bytes>"]),
    ]);
}

#[test]
fn sender_quota_refuses_new_messages_only() {
    let config = RelayConfig {
        sender_messages_per_min: 2,
        ..RelayConfig::default()
    };
    let mut rig = Rig::new(config);
    rig.online(1, A);
    rig.offline(2, B);
    rig.rows(&[
        (Send(1, "m1", B), &["1= ack m1 B queued"]),
        (Send(1, "m2", B), &["1= ack m2 B queued"]),
        (
            Send(1, "m3", B),
            &["1= error rate-limited m3 retry_after_ms=30000"],
        ),
        (Send(1, "m1", B), &["1= ack m1 B queued dup"]),
        (Wait(10_000), &[]),
        (
            Send(1, "m4", B),
            &["1= error rate-limited m4 retry_after_ms=20000"],
        ),
        (Wait(20_001), &[]),
        (Send(1, "m3", B), &["1= ack m3 B queued"]),
    ]);
}

#[test]
fn queued_messages_expire_and_their_sender_is_told() {
    let config = RelayConfig {
        max_age: Duration::from_secs(3600),
        ..RelayConfig::default()
    };
    let mut rig = Rig::new(config);
    rig.online(1, A);
    rig.offline(2, B);
    rig.rows(&[
        (Send(1, "m1", B), &["1= ack m1 B queued"]),
        (Wait(1_800_000), &[]),
        (Send(1, "m2", B), &["1= ack m2 B queued"]),
        (Wait(1_800_001), &["1 receipt m1 B expired"]),
        (Send(1, "m1", B), &["1= ack m1 B expired dup"]),
        (Open(3), &[]),
        (
            Login(3, B),
            &["3 auth-ok", "3= logged-in B queued=1", "3 deliver A m2 hi"],
        ),
        (Ack(3, A, "m1"), &["3= confirm A m1 revoked"]),
    ]);
}

#[test]
fn presence_and_typing_reach_subscribers() {
    let mut rig = Rig::new(RelayConfig::default());
    rig.online(1, A);
    rig.online(2, B);
    rig.rows(&[
        (Sub(1, &[B, C, B]), &["1= snapshot B:online C:unregistered"]),
        (Typing(2, A, true), &["1 presence B typing", "2 done"]),
        (Typing(2, A, true), &["2 done"]),
        (Wait(5_000), &["1 presence B online"]),
        (Typing(2, A, true), &["1 presence B typing", "2 done"]),
        // A message to the one it types to ends the typing.
        (
            Send(2, "m1", A),
            &[
                "2= ack m1 A online",
                "1 presence B online",
                "1 deliver B m1 hi",
            ],
        ),
        (Typing(2, C, true), &["2 done"]),
        (Typing(2, A, false), &["2 done"]),
        (Typing(2, "x", true), &["2= error invalid-number"]),
        (Close(2), &["2 closed", "1 presence B offline"]),
        (Sub(1, &[]), &["1= snapshot"]),
        (Open(3), &[]),
        (Login(3, B), &["3 auth-ok", "3= logged-in B queued=0"]),
    ]);
}

#[test]
fn subscriptions_are_bounded_and_checked() {
    let config = RelayConfig {
        max_subscriptions: 2,
        ..RelayConfig::default()
    };
    let mut rig = Rig::new(config);
    rig.online(1, A);
    rig.rows(&[
        (Sub(1, &[A, B, C]), &["1= error too-many-subscriptions"]),
        (Sub(1, &[B, "5550000003"]), &["1= error invalid-number"]),
        (Sub(1, &[B, B]), &["1= snapshot B:unregistered"]),
        (Sub(1, &[A]), &["1= snapshot A:online"]),
    ]);
}

#[test]
fn a_connection_that_does_not_read_is_dropped_and_seen_offline() {
    let mut rig = Rig::new(RelayConfig::default());
    rig.online(1, A);
    rig.online(2, B);
    rig.rows(&[
        (Sub(1, &[B]), &["1= snapshot B:online"]),
        (Refuse(2), &[]),
        (
            Send(1, "m1", B),
            &["1= ack m1 B online", "2 closed", "1 presence B offline"],
        ),
        // Still queued for B's next login.
        (Open(3), &[]),
        (
            Login(3, B),
            &[
                "3 auth-ok",
                "3= logged-in B queued=1",
                "3 deliver A m1 hi",
                "1 presence B online",
            ],
        ),
    ]);
}

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

/// A shell over the SQLite storage in memory, as `Hub::start` builds it.
fn shell() -> Shell<Db> {
    let (hub_tx, _hub_rx) = tokio::sync::mpsc::channel(1);
    let config = Arc::new(RelayConfig::default());
    let outboxes = Outboxes::new(&config, hub_tx);
    let now = super::now();
    Shell::new(Core::new(
        config,
        Db::open(None).expect("db"),
        outboxes,
        now,
    ))
}

#[test]
fn answers_wait_for_the_group_commit() {
    let mut shell = shell();
    let (tx, mut rx) = outbox(16, 1 << 20);
    let peer = IpAddr::from([127, 0, 0, 1]);
    shell.handle(HubCmd::Open { conn: 1, tx, peer });
    let began = shell.begin();
    assert!(began);
    let number = A.to_owned();
    let frame = ClientFrame::Register { number };
    shell.handle(HubCmd::Frame {
        conn: 1,
        frame,
        cost: 9,
    });
    assert!(rx.try_recv().is_err(), "nothing before the COMMIT");
    assert_eq!(
        shell.core.link.queued(1).0,
        1,
        "held, and counted as queued"
    );
    shell.end(began);
    match rx.try_recv() {
        Ok(super::Outbound::Answer(text, 9)) => assert!(text.contains("registered")),
        other => panic!("{other:?}"),
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
        let mut shell = shell();
        // Connection 1 has ended (its task dropped its outbox) but its `Closed` has
        // not reached the hub; connection 2 is alive and has not read its 2 frames.
        let (gone_tx, gone_rx) = outbox(16, 1 << 20);
        let (slow_tx, _slow_rx) = outbox(2, 1 << 20);
        let peer = IpAddr::from([127, 0, 0, 1]);
        let open = |conn, tx| HubCmd::Open { conn, tx, peer };
        shell.handle(open(1, gone_tx));
        shell.handle(open(2, slow_tx));
        drop(gone_rx);
        let began = shell.begin();
        for conn in [1, 2, 2, 2] {
            shell.core.send(conn, ServerFrame::Pong { n: 1 });
        }
        shell.end(began);
        assert!(
            !shell.core.is_open(1) && !shell.core.is_open(2),
            "both are forgotten"
        );
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

#[test]
fn a_recipient_queue_is_bounded() {
    let config = RelayConfig {
        queue_per_recipient: 2,
        ..RelayConfig::default()
    };
    let mut rig = Rig::new(config);
    rig.online(1, A);
    rig.offline(2, B);
    rig.rows(&[
        (Send(1, "m1", B), &["1= ack m1 B queued"]),
        (Send(1, "m2", B), &["1= ack m2 B queued"]),
        (Send(1, "m3", B), &["1= error queue-full m3"]),
        (Revoke(1, "m1"), &["1= revoke-result m1 revoked"]),
        (Send(1, "m3", B), &["1= ack m3 B queued"]),
    ]);
}

#[test]
fn codes_are_limited_per_address_in_total_and_by_running_commands() {
    let config = RelayConfig {
        codes_per_address_per_hour: 2,
        codes_per_hour: 3,
        sms_concurrency: 1,
        sms_queue: 1,
        ..sms_config()
    };
    let mut rig = Rig::new(config);
    rig.rows(&[
        (Open(1), &[]),
        (Open(2), &[]),
        (Reg(1, A), &["1 sms A", "1 done"]),
        (Reg(2, B), &["2 sms B", "2 done"]),
        // Two commands pending: one running, one waiting; no room for a third.
        (Open(3), &[]),
        (Reg(3, C), &["3= error rate-limited retry_after_ms=10000"]),
        (SmsOk(1), &["1 code-sent A"]),
        // Room again, but this address had its 2 codes this hour.
        (Reg(3, C), &["3= error rate-limited retry_after_ms=1800000"]),
        (OpenFrom(4, 4), &[]),
        (Reg(4, C), &["4 sms C", "4 done"]),
        (SmsOk(2), &["2 code-sent B"]),
        (SmsOk(4), &["4 code-sent C"]),
        // The relay's 3 codes this hour are sent.
        (OpenFrom(5, 5), &[]),
        (
            Reg(5, "+15550000004"),
            &["5= error rate-limited retry_after_ms=1200000"],
        ),
    ]);
}
