//! End-to-end checks of the D-Bus contract itself: named errors for every kind of bad
//! input, the contract's `busctl` examples as written, the introspection XML, the
//! command line and configuration errors, and notifications.

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};

use common::*;
use tandem::api::ApiError;
use zbus::{OwnedVariant, interface};

const ALICE: &str = "+15550001111";
const BOB: &str = "+15550002222";

struct Setup {
    _dir: tempfile::TempDir,
    session: Bus,
    _system: Bus,
    _sim: Sim,
    _daemon: Daemon,
}

async fn setup(config: &str) -> Setup {
    let dir = temp_dir();
    let session = Bus::start();
    let system = Bus::start();
    let sim = Sim::start(&system, &[ALICE, BOB]);
    let daemon = Daemon::start(&session, &system, dir.path(), config).await;
    Setup {
        _dir: dir,
        session,
        _system: system,
        _sim: sim,
        _daemon: daemon,
    }
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

fn opts(pairs: &[(&str, zbus::Variant<'static>)]) -> HashMap<String, OwnedVariant> {
    pairs
        .iter()
        .map(|(k, v)| {
            (
                (*k).to_owned(),
                OwnedVariant::try_from(v).expect("plain value"),
            )
        })
        .collect()
}

#[tokio::test]
async fn bad_input_gets_the_named_error() {
    let s = setup(&config_for(ALICE)).await;
    let api = client(&s.session).await;
    let e = "org.tandem.Messages1.Error.";
    let long = "x".repeat(10_001);
    let cases: Vec<(&str, Result<String, ApiError>, &str, &str)> = vec![
        (
            "invalid number",
            api.send_message("not a number", "hi", opts(&[])).await,
            "InvalidNumber",
            "not a number",
        ),
        (
            "too short",
            api.send_message("+1 555", "hi", opts(&[])).await,
            "InvalidNumber",
            "+1 555",
        ),
        (
            "empty text",
            api.send_message(BOB, "", opts(&[])).await,
            "InvalidArgument",
            "empty",
        ),
        (
            "blank text",
            api.send_message(BOB, "  \n", opts(&[])).await,
            "InvalidArgument",
            "empty",
        ),
        (
            "oversized text",
            api.send_message(BOB, &long, opts(&[])).await,
            "InvalidArgument",
            "10001 characters",
        ),
        (
            "too many SMS parts without IP",
            api.send_message(BOB, &"y".repeat(153 * 10 + 1), opts(&[]))
                .await,
            "InvalidArgument",
            "11 SMS parts",
        ),
        (
            "bad channel",
            api.send_message(BOB, "hi", opts(&[("channel", "fax".into())]))
                .await,
            "InvalidArgument",
            "\"fax\"",
        ),
        (
            "unknown option",
            api.send_message(BOB, "hi", opts(&[("priority", 1u32.into())]))
                .await,
            "InvalidArgument",
            "unknown option \"priority\"",
        ),
        (
            "option of the wrong type",
            api.send_message(BOB, "hi", opts(&[("delivery-report", "yes".into())]))
                .await,
            "InvalidArgument",
            "delivery-report",
        ),
        (
            "ip without a relay",
            api.send_message(BOB, "hi", opts(&[("channel", "ip".into())]))
                .await,
            "Unavailable",
            "no relay",
        ),
    ];
    for (what, result, name, needle) in cases {
        let (got, message) = error_of(result);
        assert_eq!(got, format!("{e}{name}"), "{what}: {message}");
        assert!(
            message.contains(needle),
            "{what}: {message:?} should mention {needle:?}"
        );
    }

    let unknown = "00000000-0000-4000-8000-000000000000";
    let (name, _) = error_of(api.get_message(unknown).await);
    assert_eq!(name, format!("{e}NotFound"));
    let (name, _) = error_of(api.delete_message(unknown).await);
    assert_eq!(name, format!("{e}NotFound"));
    let (name, _) = error_of(api.get_messages(BOB, unknown, 10).await);
    assert_eq!(name, format!("{e}NotFound"));
    let (name, _) = error_of(api.delete_conversation(BOB).await);
    assert_eq!(name, format!("{e}NotFound"));
    let (name, _) = error_of(api.get_messages("+1 555", "", 10).await);
    assert_eq!(name, format!("{e}InvalidNumber"));
    let (name, msg) = error_of(api.list_conversations(0, 0).await);
    assert_eq!(name, format!("{e}InvalidArgument"), "{msg}");
    let (name, _) = error_of(api.search("", 10).await);
    assert_eq!(name, format!("{e}InvalidArgument"));
    let (name, _) = error_of(api.watch(vec![BOB.into(), "555-12x".into()]).await);
    assert_eq!(name, format!("{e}InvalidNumber"));
    let (name, _) = error_of(api.set_typing(BOB, true).await);
    assert_eq!(name, format!("{e}Unavailable"));

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
    let s = setup(&config_for(ALICE)).await;
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
    let s = setup(&config_for(ALICE)).await;
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

/// A fake notification server, recording every `Notify`.
#[derive(Clone, Default)]
struct FakeNotifications {
    seen: Arc<Mutex<Vec<(String, String, String)>>>,
}

#[interface(name = "org.freedesktop.Notifications")]
impl FakeNotifications {
    #[allow(clippy::too_many_arguments)]
    fn notify(
        &self,
        app_name: String,
        _replaces_id: u32,
        _app_icon: String,
        summary: String,
        body: String,
        _actions: Vec<String>,
        _hints: HashMap<String, OwnedVariant>,
        _expire_timeout: i32,
    ) -> u32 {
        let mut seen = self.seen.lock().expect("fake");
        seen.push((app_name, summary, body));
        seen.len() as u32
    }

    fn get_capabilities(&self) -> Vec<String> {
        vec!["body".into()]
    }

    #[zbus(out_args("name", "vendor", "version", "spec_version"))]
    fn get_server_information(&self) -> (String, String, String, String) {
        (
            "fake".into(),
            "tandem tests".into(),
            "1".into(),
            "1.2".into(),
        )
    }
}

#[tokio::test]
async fn an_incoming_sms_raises_one_notification() {
    let dir = temp_dir();
    let session = Bus::start();
    let system = Bus::start();
    let _sim = Sim::start(&system, &[ALICE]);
    let fake = FakeNotifications::default();
    let _server = zbus::connection::Builder::address(session.address.as_str())
        .serve_at("/org/freedesktop/Notifications", fake.clone())
        .name("org.freedesktop.Notifications")
        .build()
        .await
        .expect("fake notification server");
    let config = format!("default_region = \"US\"\n[sms]\nmodem = \"{ALICE}\"\n");
    let _daemon = Daemon::start(&session, &system, dir.path(), &config).await;
    let ctl = SimCtl::new(&system.connect().await).await;
    ctl.inject_sms(ALICE, BOB, "ping from Bob").await;
    eventually("a notification", || async {
        !fake.seen.lock().expect("fake").is_empty()
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let seen = fake.seen.lock().expect("fake").clone();
    assert_eq!(
        seen,
        [(
            "Tandem".to_string(),
            BOB.to_string(),
            "ping from Bob".to_string()
        )]
    );
}
