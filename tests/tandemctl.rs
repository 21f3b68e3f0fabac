//! End-to-end: the real `tandemctl` against the real `tandemd` and `tandem-mmsim`, each on
//! private buses. Every command's human and JSON output and its exit status, `send
//! --wait` to `delivered`, `failed` and a timeout, `monitor` until Ctrl-C, bad input, a
//! daemon that is not running, and the generated completions and man page.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const ALICE: &str = "+15550001111";
const BOB: &str = "+15550002222";
const CAROL: &str = "+15559998888";
const DAVE: &str = "+15557770000";

/// Longest a single `tandemctl` run may take before the test fails.
const RUN_LIMIT: Duration = Duration::from_secs(30);

/// What one run of `tandemctl` did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn ok(self) -> Run {
        assert_eq!(self.code, 0, "tandemctl failed: {self:#?}");
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not one JSON document ({e}): {:?}", self.stdout))
    }

    /// Exits with `code` and says `tandemctl: ...` containing `needle` on stderr.
    fn fails(&self, code: i32, needle: &str) {
        assert_eq!(self.code, code, "{self:#?}");
        assert!(
            self.stderr.starts_with("tandemctl: ") && self.stderr.contains(needle),
            "stderr lacks {needle:?}: {self:#?}"
        );
        assert!(self.stdout.is_empty(), "{self:#?}");
    }
}

/// How to run `tandemctl`: on which session bus, with what stdin and environment.
struct Ctl {
    bus: Option<String>,
}

impl Ctl {
    fn on(bus: &Bus) -> Ctl {
        Ctl {
            bus: Some(bus.address.clone()),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tandemctl"));
        cmd.args(args)
            .env("TZ", "UTC0")
            .env_remove("DBUS_SESSION_BUS_ADDRESS")
            .env_remove("RUST_LOG");
        if let Some(bus) = &self.bus {
            cmd.env("DBUS_SESSION_BUS_ADDRESS", bus);
        }
        cmd
    }

    fn run(&self, args: &[&str]) -> Run {
        self.run_with(self.command(args), "")
    }

    fn run_stdin(&self, args: &[&str], stdin: &str) -> Run {
        self.run_with(self.command(args), stdin)
    }

    fn run_with(&self, mut cmd: Command, stdin: &str) -> Run {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tandemctl starts");
        let mut input = child.stdin.take().expect("stdin");
        if let Err(e) = input.write_all(stdin.as_bytes()) {
            // A command that does not read its input may be gone already.
            assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe, "write stdin: {e}");
        }
        drop(input);
        let stdout = read_all(child.stdout.take().expect("stdout"));
        let stderr = read_all(child.stderr.take().expect("stderr"));
        let deadline = Instant::now() + RUN_LIMIT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for tandemctl") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("tandemctl {:?} did not finish", cmd.get_args());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Run {
            code: status.code().expect("exited, not killed"),
            stdout: stdout.recv().expect("stdout read"),
            stderr: stderr.recv().expect("stderr read"),
        }
    }
}

fn read_all(mut pipe: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        let _ = tx.send(text);
    });
    rx
}

/// A pipe read line by line on a thread, so that a test can wait with a deadline.
struct Lines {
    rx: mpsc::Receiver<String>,
}

impl Lines {
    fn new(pipe: impl Read + Send + 'static) -> Lines {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines { rx }
    }

    fn next(&self) -> String {
        self.rx
            .recv_timeout(WAIT)
            .expect("a line in time from tandemctl")
    }

    /// Reads lines until one satisfies `check`; returns it.
    fn until(&self, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) if check(&line) => return line,
                Ok(line) => seen.push(line),
                Err(_) => panic!("no line with {what}; saw {seen:#?}"),
            }
        }
    }
}

/// A daemon on Alice's modem (the simulator also hosts Bob's), and tandemctl for it.
struct World {
    rig: DaemonRig,
    ctl: Ctl,
}

impl World {
    async fn new() -> World {
        let rig = DaemonRig::start(&[ALICE, BOB], &config_for(ALICE)).await;
        rig.modem_is("registered").await;
        let ctl = Ctl::on(&rig.session);
        World { rig, ctl }
    }

    /// Alice's modem refuses the next send.
    async fn modem_refuses_next_send(&self) {
        let error = "org.freedesktop.ModemManager1.Error.Core.Unsupported";
        self.rig
            .ctl
            .fail_next_send(ALICE, error, "no SMS here")
            .await;
    }

    /// An SMS from `from` to Alice, once the daemon has stored and announced it.
    async fn incoming(&self, from: &str, text: &str) -> String {
        let before = self.rig.signals.received().len();
        self.rig.ctl.inject_sms(ALICE, from, text).await;
        self.rig
            .signals
            .wait_until("MessageReceived", |s| s.received().len() > before)
            .await;
        let got = self.rig.signals.received().pop().expect("received");
        assert_eq!(got.text, text);
        got.id
    }
}

fn keys(v: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

const MESSAGE_KEYS: [&str; 11] = [
    "channel",
    "direction",
    "error",
    "id",
    "name",
    "peer",
    "photo",
    "read",
    "status",
    "text",
    "timestamp",
];

fn is_uuid(s: &str) -> bool {
    s.len() == 36 && s.chars().all(|c| c.is_ascii_hexdigit() || c == '-')
}

/// `YYYY-MM-DD HH:MM` of `ms` in UTC, computed independently of the program under test
/// (days to civil date, after Howard Hinnant).
fn utc_minutes(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, in_day) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}",
        in_day / 3600,
        in_day % 3600 / 60
    )
}

#[test]
fn utc_minutes_is_right() {
    assert_eq!(utc_minutes(0), "1970-01-01 00:00");
    assert_eq!(utc_minutes(1_714_564_800_000), "2024-05-01 12:00");
    assert_eq!(utc_minutes(951_827_696_000), "2000-02-29 12:34");
}

#[tokio::test]
async fn send_prints_the_id_and_waits_for_delivery() {
    let w = World::new().await;

    let plain = w.ctl.run(&["send", BOB, "hello Bob"]).ok();
    assert!(is_uuid(plain.stdout.trim()), "{plain:?}");
    assert_eq!(plain.stdout.lines().count(), 1);
    assert!(plain.stderr.is_empty(), "{plain:?}");

    let waited = w.ctl.run(&["send", "--wait", BOB, "are you there?"]).ok();
    let id = waited.stdout.trim();
    assert!(is_uuid(id), "{waited:?}");
    let progress: Vec<&str> = waited.stderr.lines().collect();
    assert_eq!(
        progress.last().copied(),
        Some("delivered via sms"),
        "{waited:?}"
    );
    w.rig
        .signals
        .wait_until("delivered announced", |s| {
            s.statuses(id).contains(&"delivered".to_owned())
        })
        .await;

    let json = w
        .ctl
        .run(&[
            "--json",
            "send",
            "--wait",
            "--via",
            "sms",
            BOB,
            "json please",
        ])
        .ok();
    let m = json.json();
    assert_eq!(keys(&m), MESSAGE_KEYS);
    assert_eq!(
        (&m["status"], &m["channel"], &m["peer"], &m["text"]),
        (
            &json!("delivered"),
            &json!("sms"),
            &json!(BOB),
            &json!("json please")
        )
    );
    assert!(json.stderr.is_empty(), "{json:?}");

    // No delivery report asked: "sent" is the end.
    let sent = w
        .ctl
        .run(&[
            "--json",
            "send",
            "--wait",
            "--no-delivery-report",
            BOB,
            "quick",
        ])
        .ok();
    assert_eq!(sent.json()["status"], "sent");
    let sms = w.rig.ctl.get_sent(ALICE).await;
    let quick = sms
        .iter()
        .find(|s| dict_str(s, "text") == "quick")
        .expect("quick went out");
    assert_eq!(
        quick
            .get("delivery-report")
            .and_then(|v| bool::try_from(v).ok()),
        Some(false),
        "{quick:?}"
    );

    // From standard input, without its trailing newline.
    let piped = w
        .ctl
        .run_stdin(&["--json", "send", BOB, "-"], "from stdin\nsecond line\n")
        .ok();
    let piped = piped.json();
    assert_eq!(keys(&piped), ["id"]);
    let newest = w
        .ctl
        .run(&["--json", "messages", BOB, "--limit", "1"])
        .ok()
        .json();
    assert_eq!(newest[0]["id"], piped["id"]);
    assert_eq!(newest[0]["text"], "from stdin\nsecond line");
}

#[tokio::test]
async fn send_wait_fails_and_times_out_with_their_own_exit_codes() {
    let w = World::new().await;
    w.modem_refuses_next_send().await;
    let failed = w.ctl.run(&["send", "--wait", BOB, "doomed"]);
    assert_eq!(failed.code, 7, "{failed:#?}");
    let id = failed.stdout.trim();
    assert!(is_uuid(id), "{failed:?}");
    assert!(
        failed
            .stderr
            .lines()
            .any(|l| l.starts_with(&format!("tandemctl: message {id} failed: "))),
        "{failed:#?}"
    );

    w.modem_refuses_next_send().await;
    let failed_json = w.ctl.run(&["--json", "send", "--wait", BOB, "doomed too"]);
    assert_eq!(failed_json.code, 7, "{failed_json:#?}");
    let m = failed_json.json();
    assert_eq!(m["status"], "failed");
    assert!(m["error"].is_string(), "{m}");

    // The carrier's report comes 50 ms after delivery: a zero timeout cannot see it.
    let late = w
        .ctl
        .run(&["send", "--wait", "--timeout", "0", BOB, "so soon?"]);
    assert_eq!(late.code, 8, "{late:#?}");
    assert!(
        late.stderr
            .contains("timed out after 0 s waiting for message")
            && late.stderr.contains("to be delivered"),
        "{late:#?}"
    );
}

#[tokio::test]
async fn listing_searching_reading_and_deleting() {
    let w = World::new().await;
    let dinner = w.incoming(CAROL, "dinner at eight?").await;
    w.ctl.run(&["send", "--wait", CAROL, "yes, see you"]).ok();
    let long = "a long message that goes on and on, much longer than any table cell should be";
    w.incoming(DAVE, long).await;

    // conversations / ls
    let ls = w.ctl.run(&["ls"]).ok();
    // Both conversations' last messages come within the same second: their order is the
    // daemon's business, not this test's.
    let lines: Vec<&str> = ls.stdout.lines().collect();
    assert!(
        lines[0].starts_with("PEER") && lines[0].contains("UNREAD"),
        "{ls:?}"
    );
    assert_eq!(lines.len(), 3, "{ls:?}");
    let row = |peer: &str| {
        *lines
            .iter()
            .find(|l| l.starts_with(peer))
            .unwrap_or_else(|| panic!("no row for {peer}: {ls:?}"))
    };
    let dave_row = row(DAVE);
    assert!(
        dave_row.ends_with('…') && !dave_row.contains(long),
        "{ls:?}"
    );
    let carol_row = row(CAROL);
    let cells: Vec<&str> = carol_row.split_whitespace().collect();
    assert_eq!(&cells[..3], [CAROL, "1", "offline"], "{ls:?}");
    assert!(carol_row.ends_with("you: yes, see you"), "{ls:?}");

    let convs = w.ctl.run(&["--json", "conversations"]).ok().json();
    let list = convs.as_array().expect("array");
    assert_eq!(list.len(), 2, "{convs}");
    for c in list {
        assert_eq!(
            keys(c),
            [
                "last-direction",
                "last-id",
                "last-text",
                "last-timestamp",
                "name",
                "peer",
                "photo",
                "presence",
                "unread"
            ]
        );
    }
    let conv = |peer: &str| {
        list.iter()
            .find(|c| c["peer"] == peer)
            .unwrap_or_else(|| panic!("no {peer} in {convs}"))
            .clone()
    };
    assert_eq!(conv(DAVE)["last-text"], long, "JSON is never shortened");
    let carol = conv(CAROL);
    assert_eq!(
        (
            &carol["unread"],
            &carol["last-direction"],
            &carol["presence"]
        ),
        (&json!(1), &json!("outgoing"), &json!("offline"))
    );
    let paged = w
        .ctl
        .run(&["--json", "ls", "--offset", "1", "--limit", "1"])
        .ok()
        .json();
    assert_eq!(paged, json!([list[1].clone()]));

    // messages
    let msgs = w.ctl.run(&["--json", "messages", CAROL]).ok().json();
    let msgs = msgs.as_array().expect("array");
    assert_eq!(msgs.len(), 2);
    assert_eq!(keys(&msgs[0]), MESSAGE_KEYS);
    assert_eq!(
        (&msgs[0]["direction"], &msgs[0]["status"], &msgs[0]["text"]),
        (
            &json!("outgoing"),
            &json!("delivered"),
            &json!("yes, see you")
        )
    );
    assert_eq!(
        (&msgs[1]["id"], &msgs[1]["direction"], &msgs[1]["read"]),
        (&json!(dinner), &json!("incoming"), &json!(false))
    );
    let newest_id = msgs[0]["id"].as_str().expect("id");
    let older = w
        .ctl
        .run(&["--json", "messages", CAROL, "--before", newest_id])
        .ok()
        .json();
    assert_eq!(older, json!([msgs[1].clone()]));

    let table = w.ctl.run(&["messages", CAROL]).ok();
    let lines: Vec<&str> = table.stdout.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["TIME", "DIR", "VIA", "STATUS", "TEXT", "ID"]);
    assert!(
        lines[2].contains(" in ") && lines[2].contains(" unread ") && lines[2].ends_with(&dinner),
        "{table:?}"
    );
    assert!(lines[2].contains("dinner at eight?"), "{table:?}");

    // Local times: the C library's zone (TZ), compared with the UTC timestamp.
    let ts = msgs[1]["timestamp"].as_i64().expect("timestamp");
    assert!(lines[2].starts_with(&utc_minutes(ts)), "{table:?}");
    let mut east = w.ctl.command(&["messages", CAROL]);
    east.env("TZ", "XXX-2"); // POSIX: two hours east of UTC
    let east = w.ctl.run_with(east, "").ok();
    let east_rows: Vec<&str> = east.stdout.lines().collect();
    assert!(
        east_rows[2].starts_with(&utc_minutes(ts + 2 * 3_600_000)),
        "{east:?}"
    );

    // search
    let found = w.ctl.run(&["--json", "search", "dinner"]).ok().json();
    assert_eq!(found, json!([msgs[1].clone()]));
    let found = w.ctl.run(&["search", "dinner"]).ok();
    assert!(
        found
            .stdout
            .lines()
            .nth(1)
            .is_some_and(|l| l.contains(CAROL)),
        "{found:?}"
    );
    assert_eq!(
        w.ctl.run(&["search", "zebra"]).ok().stdout,
        "nothing found\n"
    );
    assert_eq!(
        w.ctl.run(&["--json", "search", "zebra"]).ok().json(),
        json!([])
    );

    // read
    let status = w.ctl.run(&["--json", "status"]).ok().json();
    assert_eq!(status["unread-count"], 2);
    let read = w.ctl.run(&["read", CAROL]).ok();
    assert_eq!(
        read.stdout,
        format!("marked the conversation with {CAROL} read\n")
    );
    assert_eq!(w.ctl.run(&["--json", "read", DAVE]).ok().json(), json!({}));
    let status = w.ctl.run(&["--json", "status"]).ok().json();
    assert_eq!(status["unread-count"], 0);
    let msgs = w.ctl.run(&["--json", "messages", CAROL]).ok().json();
    assert_eq!(msgs[1]["read"], true);

    // delete
    let deleted = w.ctl.run(&["delete", &dinner]).ok();
    assert_eq!(deleted.stdout, format!("deleted message {dinner}\n"));
    w.ctl
        .run(&["delete", &dinner])
        .fails(4, "no message with id");
    let gone = w.ctl.run(&["--json", "delete-conversation", CAROL]).ok();
    assert_eq!(gone.json(), json!({}));
    let convs = w.ctl.run(&["--json", "ls"]).ok().json();
    assert_eq!(convs.as_array().map(Vec::len), Some(1), "{convs}");
    w.ctl
        .run(&["delete-conversation", CAROL])
        .fails(4, "no conversation with");
    let deleted = w.ctl.run(&["delete-conversation", DAVE]).ok();
    assert_eq!(
        deleted.stdout,
        format!("deleted the conversation with {DAVE}\n")
    );
    assert_eq!(w.ctl.run(&["ls"]).ok().stdout, "no conversations\n");
    assert_eq!(w.ctl.run(&["messages", DAVE]).ok().stdout, "no messages\n");
}

#[tokio::test]
async fn status_estimate_presence_and_bad_input() {
    let w = World::new().await;

    let status = w.ctl.run(&["status"]).ok();
    assert_eq!(
        status.stdout,
        format!(
            "own number  {ALICE}\nmodem       registered\nrelay       disabled\nunread      0\n"
        )
    );
    assert_eq!(
        w.ctl.run(&["status", "--json"]).ok().json(),
        json!({"own-number": ALICE, "modem-state": "registered",
               "relay-state": "disabled", "unread-count": 0, "other-sms-apps": [],
               "counters": {}})
    );

    let estimate = w.ctl.run(&["estimate", "hello"]).ok();
    assert_eq!(
        estimate.stdout,
        "1 SMS part, gsm7, 155 characters left in the last part\n"
    );
    let unicode = w
        .ctl
        .run_stdin(
            &["--json", "estimate", "-"],
            &format!("{}\n", "😀".repeat(40)),
        )
        .ok();
    assert_eq!(
        unicode.json(),
        json!({"segments": 2, "encoding": "ucs2", "remaining": 53})
    );

    assert_eq!(w.ctl.run(&["presence", BOB]).ok().stdout, "offline\n");
    assert_eq!(
        w.ctl
            .run(&["--json", "presence", "555-000-2222"])
            .ok()
            .json(),
        json!({"number": "555-000-2222", "presence": "offline"})
    );
    let watched = w.ctl.run(&["watch-contacts", BOB, CAROL]).ok();
    assert_eq!(
        watched.stdout,
        format!("NUMBER        PRESENCE\n{BOB}  offline\n{CAROL}  offline\n")
    );
    assert_eq!(
        w.ctl.run(&["--json", "watch-contacts", BOB]).ok().json(),
        json!([{"number": BOB, "presence": "offline"}])
    );

    // The daemon refuses: its message, and the exit status of its error.
    let rows: [(&[&str], &str, i32, &str); 8] = [
        (&["send", "+1 555 12x", "hi"], "", 5, "not a phone number"),
        (&["send", BOB, ""], "", 5, "the text is empty"),
        (&["send", BOB, "   "], "", 5, "the text is empty"),
        (&["send", BOB, "-"], "\n", 5, "the text is empty"),
        (&["send", "--via", "ip", BOB, "hi"], "", 6, "relay"),
        (&["delete", "no-such-id"], "", 4, "no message with id"),
        (
            &["watch-contacts", BOB, "12+34"],
            "",
            5,
            "not a phone number",
        ),
        (&["presence", "+"], "", 5, "phone number"),
    ];
    for (args, stdin, code, needle) in rows {
        w.ctl.run_stdin(args, stdin).fails(code, needle);
    }
    // ... and in JSON mode, still an error on stderr and nothing on stdout.
    w.ctl
        .run(&["--json", "send", BOB, ""])
        .fails(5, "the text is empty");

    // The command line is wrong: clap's usage error, status 2, before any call.
    for args in [
        &["send", BOB, "hi", "--via", "pigeon"][..],
        &["send", BOB],
        &["send", "--timeout", "5", BOB, "hi"],
        &["ls", "--limit", "0"],
        &["messages", BOB, "--limit", "lots"],
        &["watch-contacts"],
        &["frobnicate"],
        &["--jsn", "status"],
        &[],
    ] {
        let run = w.ctl.run(args);
        assert_eq!(run.code, 2, "{args:?}: {run:#?}");
        assert!(run.stdout.is_empty(), "{args:?}: {run:#?}");
        assert!(
            run.stderr.contains("error:") || run.stderr.contains("Usage:"),
            "{args:?}: {run:#?}"
        );
    }
    assert!(w.rig.signals.all().is_empty(), "nothing was sent");
}

#[tokio::test]
async fn monitor_streams_events_until_ctrl_c() {
    let w = World::new().await;
    let spawn = |args: &[&str]| -> (Child, Lines, Lines) {
        let mut child = w
            .ctl
            .command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tandemctl monitor starts");
        let out = Lines::new(child.stdout.take().expect("stdout"));
        let err = Lines::new(child.stderr.take().expect("stderr"));
        (child, out, err)
    };
    let (mut json_child, json_out, json_err) = spawn(&["--json", "monitor"]);
    let (mut human_child, human_out, human_err) = spawn(&["monitor"]);
    // The banner comes once the monitor is subscribed: from then on nothing is missed.
    for err in [&json_err, &human_err] {
        let banner = err.next();
        assert!(
            banner.starts_with("monitoring tandemd (modem registered, relay disabled, 0 unread)"),
            "{banner}"
        );
    }

    w.rig.ctl.inject_sms(ALICE, CAROL, "ping from Carol").await;
    let line = json_out.until("message-received", |l| l.contains("message-received"));
    let event: Value = serde_json::from_str(&line).expect("a JSON line");
    assert_eq!(keys(&event), ["event", "message"]);
    assert_eq!(keys(&event["message"]), MESSAGE_KEYS);
    assert_eq!(
        (&event["message"]["peer"], &event["message"]["text"]),
        (&json!(CAROL), &json!("ping from Carol"))
    );
    let unread = json_out.until("unread-count", |l| l.contains("unread-count"));
    assert_eq!(
        serde_json::from_str::<Value>(&unread).expect("a JSON line"),
        json!({"event": "property-changed", "property": "unread-count", "value": 1})
    );
    let line = human_out.until("received", |l| l.contains("received"));
    let (clock, rest) = line.split_at(8);
    assert!(
        clock.len() == 8 && clock.as_bytes()[2] == b':' && clock.as_bytes()[5] == b':',
        "{line}"
    );
    assert_eq!(rest, format!("  received  {CAROL}  ping from Carol"));
    human_out.until("unread-count 1", |l| l.ends_with("  unread-count  1"));

    let sent = w.ctl.run(&["send", BOB, "watch me"]).ok();
    let id = sent.stdout.trim().to_owned();
    let line = json_out.until("delivered", |l| l.contains(&id) && l.contains("delivered"));
    assert_eq!(
        serde_json::from_str::<Value>(&line).expect("a JSON line"),
        json!({"event": "message-status-changed", "id": id, "status": "delivered", "channel": "sms"})
    );
    human_out.until("delivered", |l| {
        l.ends_with(&format!("  status    {id}  delivered (sms)"))
    });

    // What another frontend does shows too: a read, a deleted message, a deleted
    // conversation.
    w.ctl.run(&["read", CAROL]).ok();
    let line = json_out.until("conversation-read", |l| l.contains("conversation-read"));
    assert_eq!(
        serde_json::from_str::<Value>(&line).expect("a JSON line"),
        json!({"event": "conversation-read", "peer": CAROL})
    );
    human_out.until("read", |l| l.ends_with(&format!("  read      {CAROL}")));
    w.ctl.run(&["delete", &id]).ok();
    let line = json_out.until("message-deleted", |l| l.contains("message-deleted"));
    assert_eq!(
        serde_json::from_str::<Value>(&line).expect("a JSON line"),
        json!({"event": "message-deleted", "id": id, "peer": BOB})
    );
    w.ctl.run(&["delete-conversation", CAROL]).ok();
    human_out.until("conversation deleted", |l| {
        l.ends_with(&format!("  deleted   {CAROL}  (conversation)"))
    });

    // Ctrl-C is the normal end: status 0.
    for child in [&mut json_child, &mut human_child] {
        let pid = child.id().to_string();
        let kill = Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("kill");
        assert!(kill.success());
        let deadline = Instant::now() + WAIT;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            assert!(Instant::now() < deadline, "monitor ignored Ctrl-C");
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(status.code(), Some(0), "{status}");
    }
}

#[tokio::test]
async fn a_daemon_that_is_not_running_is_reported_quickly() {
    let session = Bus::start();
    let ctl = Ctl::on(&session);
    for args in [
        &["status"][..],
        &["send", BOB, "hi"],
        &["send", "--wait", BOB, "hi"],
        &["--json", "ls"],
        &["monitor"],
    ] {
        let started = Instant::now();
        let run = ctl.run(args);
        run.fails(3, "tandemd is not running");
        assert!(started.elapsed() < Duration::from_secs(5), "{args:?} hung");
    }

    // No bus at that address at all.
    let dir = temp_dir();
    let nowhere = format!("unix:path={}", dir.path().join("no-bus").display());
    let ctl = Ctl { bus: Some(nowhere) };
    ctl.run(&["status"])
        .fails(3, "cannot connect to the session bus");
    // No address and no $XDG_RUNTIME_DIR/bus.
    let ctl = Ctl { bus: None };
    let mut cmd = ctl.command(&["status"]);
    cmd.env("XDG_RUNTIME_DIR", dir.path());
    ctl.run_with(cmd, "")
        .fails(3, "cannot connect to the session bus");
}

#[test]
fn completions_and_man_page_need_no_bus() {
    let ctl = Ctl { bus: None };
    let bash = ctl.run(&["completions", "bash"]).ok();
    assert!(bash.stdout.contains("_tandemctl()"), "{bash:?}");
    assert!(bash.stdout.contains("delete-conversation"), "{bash:?}");
    let syntax = Command::new("bash")
        .args(["-n", "-c", &bash.stdout])
        .status()
        .expect("bash runs");
    assert!(syntax.success(), "the bash completion does not parse");
    let zsh = ctl.run(&["completions", "zsh"]).ok();
    assert!(zsh.stdout.starts_with("#compdef tandemctl"), "{zsh:?}");
    let fish = ctl.run(&["completions", "fish"]).ok();
    assert!(fish.stdout.contains("complete -c tandemctl"), "{fish:?}");
    assert!(fish.stdout.contains("watch-contacts"), "{fish:?}");

    let man = ctl.run(&["man"]).ok();
    for needle in [
        ".TH tandemctl 1",
        "EXIT STATUS",
        "watch\\-contacts",
        "DBUS_SESSION_BUS_ADDRESS",
    ] {
        assert!(man.stdout.contains(needle), "man page lacks {needle:?}");
    }
    let version = ctl.run(&["--version"]).ok();
    assert!(version.stdout.starts_with("tandemctl "), "{version:?}");
}
