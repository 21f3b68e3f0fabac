//! End-to-end checks of the D-Bus contract itself: named errors for every kind of bad
//! input, the contract's `busctl` examples as written, the introspection XML, the
//! command line and configuration errors, and notifications.

mod common;

use std::process::Command;

use common::notifications::{next_call, start_server};
use common::*;
use tandem::api::ApiError;

const ALICE: &str = "+15550001111";
const BOB: &str = "+15550002222";

/// The simulator with Alice's and Bob's modems, and a daemon with `config`.
async fn setup(config: &str) -> (Machine, Daemon) {
    let m = Machine::start(&[ALICE, BOB]);
    let daemon = m.daemon(config).await;
    (m, daemon)
}

/// The D-Bus error name and message of a failed call.
#[track_caller]
fn error_of<T: std::fmt::Debug>(result: Result<T, ApiError>) -> (String, String) {
    use zbus::DBusError;
    match result {
        Err(ApiError::ZBus(e)) => panic!("expected one of the contract's errors, got {e:?}"),
        Err(e) => (
            e.name().to_string(),
            e.description().unwrap_or_default().to_owned(),
        ),
        Ok(v) => panic!("expected an error, got {v:?}"),
    }
}

/// The prefix of the contract's error names.
const E: &str = "org.tandem.Messages1.Error.";

/// Fails unless the call failed with the contract's error `name` (without its prefix).
#[track_caller]
fn assert_named<T: std::fmt::Debug>(result: Result<T, ApiError>, name: &str) {
    let (got, message) = error_of(result);
    assert_eq!(got, format!("{E}{name}"), "{message}");
}

#[tokio::test]
async fn bad_input_gets_the_named_error() {
    let (s, _daemon) = setup(&config_for(ALICE)).await;
    let api = client(&s.session).await;
    let long = "x".repeat(10_001);
    let parts = "y".repeat(153 * 10 + 1);
    let (arg, num) = ("InvalidArgument", "InvalidNumber");
    let channel = |c: &'static str| opts(&[("channel", c.into())]);
    let cases = [
        (
            "invalid number",
            "not a number",
            "hi",
            no_opts(),
            num,
            "not a number",
        ),
        ("too short", "+1 555", "hi", no_opts(), num, "+1 555"),
        ("empty text", BOB, "", no_opts(), arg, "empty"),
        ("blank text", BOB, "  \n", no_opts(), arg, "empty"),
        (
            "oversized text",
            BOB,
            &long,
            no_opts(),
            arg,
            "10001 characters",
        ),
        (
            "too many SMS parts without IP",
            BOB,
            &parts,
            no_opts(),
            arg,
            "11 SMS parts",
        ),
        ("bad channel", BOB, "hi", channel("fax"), arg, "\"fax\""),
        (
            "unknown option",
            BOB,
            "hi",
            opts(&[("priority", 1u32.into())]),
            arg,
            "unknown option \"priority\"",
        ),
        (
            "option of the wrong type",
            BOB,
            "hi",
            opts(&[("delivery-report", "yes".into())]),
            arg,
            "delivery-report",
        ),
        (
            "ip without a relay",
            BOB,
            "hi",
            channel("ip"),
            "Unavailable",
            "no relay",
        ),
    ];
    for (what, to, text, options, name, needle) in cases {
        let (got, message) = error_of(api.send_message(to, text, options).await);
        assert_eq!(got, format!("{E}{name}"), "{what}: {message}");
        assert!(
            message.contains(needle),
            "{what}: {message:?} should mention {needle:?}"
        );
    }

    let unknown = "00000000-0000-4000-8000-000000000000";
    assert_named(api.get_message(unknown).await, "NotFound");
    assert_named(api.delete_message(unknown).await, "NotFound");
    assert_named(api.get_messages(BOB, unknown, 10).await, "NotFound");
    assert_named(api.delete_conversation(BOB).await, "NotFound");
    assert_named(api.get_messages("+1 555", "", 10).await, num);
    assert_named(api.list_conversations(0, 0).await, arg);
    assert_named(api.search("", 10).await, arg);
    assert_named(api.watch(vec![BOB.into(), "555-12x".into()]).await, num);
    assert_named(api.set_typing(BOB, true).await, "Unavailable");

    // Nothing of the above was stored.
    assert!(
        api.list_conversations(0, 50)
            .await
            .expect("list")
            .is_empty()
    );
    // The IP parts answer honestly while there is no relay.
    assert_eq!(api.relay_state().await.expect("RelayState"), "disabled");
    assert_eq!(
        api.get_presence("+1 555 000 2222")
            .await
            .expect("GetPresence"),
        "offline"
    );
    assert_eq!(
        api.estimate_sms("hello").await.expect("EstimateSms"),
        (1, "gsm7".into(), 155)
    );
    assert_eq!(
        api.estimate_sms("€").await.expect("EstimateSms"),
        (1, "gsm7".into(), 158)
    );
    assert_eq!(
        api.estimate_sms("😀").await.expect("EstimateSms"),
        (1, "ucs2".into(), 68)
    );
}

fn busctl(session: &Bus, args: &[&str]) -> String {
    let out = Command::new("busctl")
        .arg("--user")
        .args(args)
        .env("DBUS_SESSION_BUS_ADDRESS", &session.address)
        .output()
        .expect("busctl runs");
    assert!(
        out.status.success(),
        "busctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

#[tokio::test]
async fn the_contracts_busctl_examples_work_as_written() {
    let (s, _daemon) = setup(&config_for(ALICE)).await;
    let call = [
        "call",
        "org.tandem.Messages1",
        "/org/tandem/Messages1",
        "org.tandem.Messages1",
    ];
    let with = |rest: &[&'static str]| -> Vec<&'static str> {
        call.iter().copied().chain(rest.iter().copied()).collect()
    };

    let out = busctl(
        &s.session,
        &with(&["SendMessage", "ssa{sv}", "+15551234567", "hello", "0"]),
    );
    assert!(out.starts_with("s \""), "{out}");
    let out = busctl(
        &s.session,
        &with(&[
            "SendMessage",
            "ssa{sv}",
            "+15551234567",
            "hello",
            "1",
            "channel",
            "s",
            "sms",
        ]),
    );
    assert!(out.starts_with("s \""), "{out}");
    let out = busctl(
        &s.session,
        &[
            "get-property",
            "org.tandem.Messages1",
            "/org/tandem/Messages1",
            "org.tandem.Messages1",
            "RelayState",
        ],
    );
    assert_eq!(out.trim(), "s \"disabled\"");
    let out = busctl(
        &s.session,
        &[
            "--json=short",
            "call",
            "org.tandem.Messages1",
            "/org/tandem/Messages1",
            "org.tandem.Messages1",
            "GetMessages",
            "ssu",
            "+15551234567",
            "",
            "20",
        ],
    );
    assert!(out.contains("\"type\":\"aa{sv}\""), "{out}");
    assert_eq!(out.matches("\"hello\"").count(), 2, "{out}");
}

/// The `org.tandem.Messages1` interface element of an introspection document, with
/// comments and layout dropped.
fn interface_xml(doc: &str) -> String {
    let mut text = String::new();
    let mut rest = doc;
    while let Some(start) = rest.find("<!--") {
        text.push_str(&rest[..start]);
        let end = rest[start..]
            .find("-->")
            .map_or(rest.len(), |e| start + e + 3);
        rest = &rest[end..];
    }
    text.push_str(rest);
    let start = text
        .find("<interface name=\"org.tandem.Messages1\">")
        .expect("the interface is there");
    let end = start + text[start..].find("</interface>").expect("closed") + "</interface>".len();
    text[start..end]
        .split('>')
        .map(|part| part.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(">\n")
}

#[tokio::test]
async fn introspection_matches_the_committed_xml() {
    let (s, _daemon) = setup(&config_for(ALICE)).await;
    let conn = s.session.connect().await;
    let proxy = zbus::fdo::IntrospectableProxy::builder(&conn)
        .destination("org.tandem.Messages1")
        .path("/org/tandem/Messages1")
        .build()
        .await
        .expect("proxy");
    let live = proxy.introspect().await.expect("Introspect");
    let committed = include_str!("../dbus/org.tandem.Messages1.xml");
    assert_eq!(
        interface_xml(&live),
        interface_xml(committed),
        "dbus/org.tandem.Messages1.xml is out of date; the live introspection is:\n{live}"
    );
    for iface in [
        "org.freedesktop.DBus.Properties",
        "org.freedesktop.DBus.Introspectable",
        "org.freedesktop.DBus.Peer",
    ] {
        assert!(
            live.contains(&format!("<interface name=\"{iface}\">")),
            "{iface} missing"
        );
    }
}

#[test]
fn a_bad_config_names_the_file_and_key_and_fails() {
    let dir = temp_dir();
    let path = dir.path().join("config.toml");
    let rows = [
        ("[sms]\nmax_parts = \"ten\"\n", "sms.max_parts"),
        ("[sms]\nmax_part = 3\n", "max_part"),
        ("default_region = \"Atlantis\"\n", "default_region"),
        ("[relay]\nurl = \"http://example\"\n", "relay.url"),
        ("this is not toml", "config.toml"),
    ];
    for (text, key) in rows {
        std::fs::write(&path, text).expect("write config");
        let out = Command::new(env!("CARGO_BIN_EXE_tandemd"))
            .arg("--config")
            .arg(&path)
            .env(
                "DBUS_SESSION_BUS_ADDRESS",
                "unix:path=/nonexistent/tandem-test",
            )
            .env(
                "DBUS_SYSTEM_BUS_ADDRESS",
                "unix:path=/nonexistent/tandem-test",
            )
            .output()
            .expect("tandemd runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text:?} was accepted");
        assert!(
            stderr.contains(&path.display().to_string()),
            "{text:?}: {stderr}"
        );
        assert!(stderr.contains(key), "{text:?}: {stderr} should name {key}");
    }
    // An explicit --config that does not exist is an error too.
    let out = Command::new(env!("CARGO_BIN_EXE_tandemd"))
        .arg("--config")
        .arg(dir.path().join("missing.toml"))
        .output()
        .expect("tandemd runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
    // So is a bad flag.
    let out = Command::new(env!("CARGO_BIN_EXE_tandemd"))
        .arg("--colour")
        .output()
        .expect("tandemd runs");
    assert!(!out.status.success());
}

#[tokio::test]
async fn an_incoming_sms_raises_one_notification() {
    let (session, system) = (Bus::start(), Bus::start());
    let _sim = Sim::start(&system, &[ALICE]);
    let (_server, mut calls) = start_server(&session.address, &["body"]).await;
    let config = format!("default_region = \"US\"\n[sms]\nmodem = \"{ALICE}\"\n");
    let dir = temp_dir();
    let _phone = Phone::on(session, &system, dir.path(), &config).await;
    SimCtl::new(&system.connect().await)
        .await
        .inject_sms(ALICE, BOB, "ping from Bob")
        .await;
    let call = next_call(&mut calls).await;
    assert_eq!(
        (
            call.app_name.as_str(),
            call.summary.as_str(),
            call.body.as_str()
        ),
        ("Tandem", BOB, "ping from Bob")
    );
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(calls.try_recv().is_err(), "one notification only");
}

/// Every string, list and number argument of the contract has a bound, with a named
/// error past it, and no error message repeats a huge argument back.
#[tokio::test]
async fn every_input_has_a_bound() {
    let (s, _daemon) = setup(&config_for(ALICE)).await;
    let api = client(&s.session).await;
    let huge = "9".repeat(1 << 20);
    let long_peer = "D".repeat(257);
    let long_id = "0".repeat(65);
    let rows: Vec<(&str, Result<(), ApiError>, &str, &str)> = vec![
        (
            "a sender name as recipient",
            api.send_message("Bank", "hi", no_opts()).await.map(drop),
            "InvalidNumber",
            "\"Bank\" is a sender name",
        ),
        (
            "a two-word sender name as recipient",
            api.send_message("DHL Express", "hi", no_opts())
                .await
                .map(drop),
            "InvalidNumber",
            "sender name",
        ),
        (
            "an empty recipient",
            api.send_message("", "hi", no_opts()).await.map(drop),
            "InvalidNumber",
            "empty",
        ),
        (
            "a 65-byte recipient",
            api.send_message(&format!("+15550002222{}", " ".repeat(53)), "hi", no_opts())
                .await
                .map(drop),
            "InvalidNumber",
            "65 bytes is longer than the limit of 64",
        ),
        (
            "a 1 MiB recipient",
            api.send_message(&huge, "hi", no_opts()).await.map(drop),
            "InvalidNumber",
            "1048576 bytes",
        ),
        (
            "a text far over the limit, by bytes",
            api.send_message(BOB, &"€".repeat(20_000), no_opts())
                .await
                .map(drop),
            "InvalidArgument",
            "60000 bytes long, more than the limit of 10000 characters",
        ),
        (
            "a 257-byte client token",
            api.send_message(BOB, "hi", opts(&[("client-token", "t".repeat(257).into())]))
                .await
                .map(drop),
            "InvalidArgument",
            "1 to 256 bytes",
        ),
        (
            "a huge unknown option",
            api.send_message(BOB, "hi", opts(&[(&huge, 1u32.into())]))
                .await
                .map(drop),
            "InvalidArgument",
            "unknown option \"9999",
        ),
        (
            "a huge channel",
            api.send_message(BOB, "hi", opts(&[("channel", huge.clone().into())]))
                .await
                .map(drop),
            "InvalidArgument",
            "(1048576 bytes)",
        ),
        (
            "limit over 1000",
            api.list_conversations(0, 1001).await.map(drop),
            "InvalidArgument",
            "between 1 and 1000",
        ),
        (
            "a 257-byte peer",
            api.get_messages(&long_peer, "", 10).await.map(drop),
            "InvalidNumber",
            "257 bytes is longer than the limit of 256",
        ),
        (
            "a 65-byte cursor",
            api.get_messages(BOB, &long_id, 10).await.map(drop),
            "InvalidArgument",
            "before_id is 65 bytes long",
        ),
        (
            "GetMessages limit over 1000",
            api.get_messages(BOB, "", 1001).await.map(drop),
            "InvalidArgument",
            "between 1 and 1000",
        ),
        (
            "a 65-byte id",
            api.get_message(&long_id).await.map(drop),
            "InvalidArgument",
            "65 bytes long; message ids are UUIDs",
        ),
        (
            "a 1 MiB id to delete",
            api.delete_message(&huge).await,
            "InvalidArgument",
            "1048576 bytes long",
        ),
        (
            "MarkRead of a 257-byte peer",
            api.mark_read(&long_peer).await,
            "InvalidNumber",
            "limit of 256",
        ),
        (
            "DeleteConversation of a 257-byte peer",
            api.delete_conversation(&long_peer).await,
            "InvalidNumber",
            "limit of 256",
        ),
        (
            "a 1025-byte search",
            api.search(&"a".repeat(1025), 10).await.map(drop),
            "InvalidArgument",
            "1025 bytes long, more than the limit of 1024",
        ),
        (
            "a 1 MiB search",
            api.search(&"word ".repeat(1 << 18), 10).await.map(drop),
            "InvalidArgument",
            "1310720 bytes long",
        ),
        (
            "a search of 17 words",
            api.search(
                "one two three four five six seven eight nine ten eleven twelve thirteen \
                 fourteen fifteen sixteen seventeen",
                10,
            )
            .await
            .map(drop),
            "InvalidArgument",
            "17 different words, more than the limit of 16",
        ),
        (
            "Search limit over 1000",
            api.search("word", 1001).await.map(drop),
            "InvalidArgument",
            "between 1 and 1000",
        ),
        (
            "a 65-byte number's presence",
            api.get_presence(&huge[..65]).await.map(drop),
            "InvalidNumber",
            "limit of 64",
        ),
        (
            "257 numbers in one Watch",
            api.watch((0..257).map(|i| format!("+1555100{i:04}")).collect())
                .await,
            "InvalidArgument",
            "257 numbers in one call, more than the limit of 256",
        ),
        (
            "a sender name to watch",
            api.watch(vec![BOB.into(), "Bank".into()]).await,
            "InvalidNumber",
            "sender name",
        ),
        (
            "typing to a sender name",
            api.set_typing("Bank", true).await,
            "InvalidNumber",
            "sender name",
        ),
        (
            "estimating a text over the limit",
            api.estimate_sms(&"x".repeat(10_001)).await.map(drop),
            "InvalidArgument",
            "10001 characters long, more than the limit of 10000",
        ),
        (
            "estimating 1 MiB",
            api.estimate_sms(&huge).await.map(drop),
            "InvalidArgument",
            "1048576 bytes long",
        ),
    ];
    for (what, result, name, needle) in rows {
        let (got, message) = error_of(result);
        assert_eq!(got, format!("{E}{name}"), "{what}: {message}");
        assert!(
            message.contains(needle),
            "{what}: {message:?} should mention {needle:?}"
        );
        assert!(
            message.len() < 300,
            "{what}: a {} byte message",
            message.len()
        );
    }

    // At the bounds, the same calls work.
    let id = api
        .send_message(
            BOB,
            &"x".repeat(1530),
            opts(&[("client-token", "t".repeat(256).into())]),
        )
        .await
        .expect("a text of 10 parts, a 256-byte token");
    assert_eq!(api.get_message(&id).await.expect("GetMessage").peer, BOB);
    api.send_message("12345", "STOP", no_opts())
        .await
        .expect("a short code is a recipient");
    assert_eq!(
        api.estimate_sms(&"x".repeat(10_000))
            .await
            .expect("EstimateSms")
            .0,
        66
    );
    let sixteen = "one two three four five six seven eight nine ten eleven twelve thirteen \
                   fourteen fifteen sixteen sixteen SIXTEEN";
    assert!(
        api.search(sixteen, 1000)
            .await
            .expect("16 words")
            .is_empty()
    );
    assert_eq!(
        api.search(&format!("stop{}", " ".repeat(1020)), 10)
            .await
            .expect("1024 bytes")
            .len(),
        1
    );

    // Watch: 1000 numbers followed in all (conversation peers count), then no more.
    let peers = api.list_conversations(0, 1000).await.expect("list").len();
    assert_eq!(
        peers, 2,
        "BOB, and 12345, which cannot be on the relay: not counted"
    );
    let numbers: Vec<String> = (0..999).map(|i| format!("+1555100{i:04}")).collect();
    for chunk in numbers.chunks(250) {
        api.watch(chunk.to_vec())
            .await
            .expect("Watch within the bounds");
    }
    // Numbers already followed are no addition.
    api.watch(vec![BOB.into(), numbers[0].clone()])
        .await
        .expect("nothing new");
    let (name, message) = error_of(api.watch(vec!["+15552000000".into()]).await);
    assert_eq!(name, format!("{E}InvalidArgument"), "{message}");
    assert!(
        message.contains("1001 numbers, more than the limit of 1000"),
        "{message}"
    );
}

/// A storm of hostile searches (1 MiB, 50,000 words, 17 words, and the costliest
/// queries within the bounds) is refused or answered with the named error, and a
/// `SendMessage` made meanwhile is answered and stored: searches never hold up the
/// store. The latencies are printed for the record, not asserted.
#[tokio::test]
async fn hostile_searches_do_not_hold_up_sending() {
    let m = Machine::start(&[ALICE, BOB]);
    // A store with messages to search through, written before the daemon starts.
    let db = m.dir.path().join("data/tandem/messages.db");
    {
        let mut store = tandem::store::Store::open(&db).expect("store");
        tandem::bench::synthetic::fill(&mut store, 50_000, 200, 9).expect("fill");
    }
    let _daemon = m.daemon(&config_for(ALICE)).await;
    let api = client(&m.session).await;

    let common = "the I you to a and it is ok in me for that on be we";
    let mid = "dinner lunch coffee beer weekend friday saturday sunday monday party \
               birthday kids school dog shopping milk";
    let queries: Vec<String> = vec![
        "tomorrow ".repeat(1 << 17),
        (0..50_000)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" "),
        "a b c d e f g h i j k l m n o p q".into(),
        common.into(),
        mid.into(),
        format!("{mid} {}", "milk ".repeat(150)),
    ];
    let started = std::time::Instant::now();
    let searches: Vec<_> = (0..4)
        .flat_map(|_| queries.clone())
        .map(|query| {
            let api = api.clone();
            tokio::spawn(async move {
                let t = std::time::Instant::now();
                let outcome = api.search(&query, 1000).await;
                (query.len(), outcome.map(|found| found.len()), t.elapsed())
            })
        })
        .collect();
    let mut send_latencies = Vec::new();
    let mut ids = Vec::new();
    for n in 0..10 {
        let t = std::time::Instant::now();
        let id = tokio::time::timeout(
            WAIT,
            api.send_message(BOB, &format!("meanwhile {n}"), no_opts()),
        )
        .await
        .expect("SendMessage answered while searches run")
        .expect("SendMessage");
        send_latencies.push(t.elapsed());
        ids.push(id);
    }
    let mut refused = 0;
    for search in searches {
        let (bytes, outcome, took) = search.await.expect("search task");
        match outcome {
            Ok(found) => eprintln!("search of {bytes} bytes: {found} found in {took:?}"),
            Err(err) => {
                let (name, message) = error_of::<usize>(Err(err));
                assert_eq!(
                    name, "org.tandem.Messages1.Error.InvalidArgument",
                    "{bytes} bytes: {message}"
                );
                refused += 1;
                eprintln!("search of {bytes} bytes refused in {took:?}: {message}");
            }
        }
    }
    // The 1 MiB, 50,000-word and 17-word queries, four times each.
    assert!(refused >= 12, "{refused} refused");
    for id in &ids {
        assert_eq!(api.get_message(id).await.expect("stored").peer, BOB);
    }
    send_latencies.sort();
    eprintln!(
        "SendMessage during {} searches: median {:?}, max {:?}; all done in {:?}",
        4 * queries.len(),
        send_latencies[send_latencies.len() / 2],
        send_latencies[send_latencies.len() - 1],
        started.elapsed()
    );
}

/// One daemon per user: the same user starting tandemd again (same configuration, same
/// database) gets a clear refusal and a failure status, and the first daemon keeps its
/// name, keeps answering, and is the only one to take an incoming SMS.
#[tokio::test]
async fn a_second_daemon_refuses_to_start_and_the_first_keeps_its_name() {
    let m = Machine::start(&[ALICE, BOB]);
    let first = m.daemon(&config_for(ALICE)).await;
    let signals = SignalLog::start(&m.session).await;
    let conn = m.session.connect().await;
    let dbus = zbus::fdo::DBusProxy::new(&conn).await.expect("bus proxy");
    let name = zbus::names::BusName::try_from(tandem::api::BUS_NAME).expect("name");
    let owner = dbus.get_name_owner(name.clone()).await.expect("owner");

    let mut second = first
        .command()
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("second tandemd starts");
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = second.try_wait().expect("wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = second.kill();
            panic!("the second tandemd kept running beside the first");
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert!(!status.success(), "{status}: {stderr}");
    assert!(
        stderr.contains(
            "tandemd: another tandemd already serves org.tandem.Messages1 on this session bus"
        ),
        "{stderr}"
    );
    assert_eq!(dbus.get_name_owner(name).await.expect("owner"), owner);

    // The first still serves, and is the only one to take an incoming SMS.
    let api = client(&m.session).await;
    let id = api
        .send_message(BOB, "still here", no_opts())
        .await
        .expect("SendMessage");
    assert_eq!(
        api.get_message(&id).await.expect("GetMessage").text,
        "still here"
    );
    let ctl = SimCtl::new(&m.system.connect().await).await;
    ctl.inject_sms(ALICE, BOB, "one copy please").await;
    signals
        .wait_until("the SMS received", |s| !s.received().is_empty())
        .await;
    eventually("the SMS taken off the modem", || async {
        ctl.list_sms(ALICE)
            .await
            .iter()
            .all(|sms| dict_str(sms, "text") != "one copy please")
    })
    .await;
    let stored: Vec<_> = api
        .get_messages(BOB, "", 10)
        .await
        .expect("GetMessages")
        .into_iter()
        .filter(|m| m.text == "one copy please")
        .collect();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(signals.received().len(), 1, "{:?}", signals.all());
}

/// A daemon that loses its bus (and so its name) stops, with a failure status and a
/// log line saying why, instead of going on taking SMS off the modem that no client
/// can see.
#[tokio::test]
async fn a_daemon_that_loses_its_name_stops() {
    let m = Machine::start(&[ALICE, BOB]);
    let mut daemon = m.daemon(&config_for(ALICE)).await;
    let api = client(&m.session).await;
    eventually("the modem registered", || async {
        api.modem_state().await.ok().as_deref() == Some("registered")
    })
    .await;
    drop(api);
    drop(m.session);
    let status = daemon
        .wait_exit(WAIT)
        .await
        .expect("the daemon stopped after losing its bus");
    let log = daemon.log_text();
    assert!(!status.success(), "{status}\n{log}");
    assert!(log.contains("lost the bus name: shutting down"), "{log}");
    assert!(
        log.contains("lost org.tandem.Messages1 on the session bus"),
        "{log}"
    );
    // Stopped for good: an SMS arriving now stays on the modem.
    let ctl = SimCtl::new(&m.system.connect().await).await;
    ctl.inject_sms(ALICE, BOB, "nobody is taking this").await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(
        ctl.list_sms(ALICE)
            .await
            .iter()
            .any(|sms| dict_str(sms, "text") == "nobody is taking this")
    );
}

/// The database, its directory and the relay token file are private after start,
/// whatever modes they were found with, and the log says what was changed.
#[tokio::test]
async fn loose_files_are_made_private_at_start() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &std::path::Path| {
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    };
    let chmod = |path: &std::path::Path, mode: u32| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod")
    };
    let m = Machine::start(&[ALICE]);
    let mut daemon = m.daemon(&config_for(ALICE)).await;
    let api = client(&m.session).await;
    let id = api
        .send_message(BOB, "kept through the chmod", no_opts())
        .await
        .expect("SendMessage");
    daemon.stop();

    let db = daemon.db_path();
    let data = db.parent().expect("data dir").to_owned();
    let token = data.join("relay-token");
    std::fs::write(
        &token,
        "{\"number\":\"+15550001111\",\"token\":\"secret\"}\n",
    )
    .expect("token file");
    chmod(&token, 0o644);
    chmod(&db, 0o644);
    chmod(&data, 0o755);

    daemon.restart().await;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&db), 0o600);
    assert_eq!(mode(&token), 0o600);
    let log = daemon.log_text();
    for path in [&data, &db] {
        let line = log
            .lines()
            .find(|l| {
                l.contains("making it private") && l.contains(&format!("path={}", path.display()))
            })
            .unwrap_or_else(|| panic!("no log line for {}:\n{log}", path.display()));
        assert!(line.contains("to=") && line.contains("from="), "{line}");
    }
    assert!(
        log.contains("the relay token file was not private; making it 0600"),
        "{log}"
    );
    assert!(!log.contains("secret"), "the token went to the log:\n{log}");
    let api = client(&m.session).await;
    assert_eq!(
        api.get_message(&id).await.expect("GetMessage").text,
        "kept through the chmod"
    );
}
