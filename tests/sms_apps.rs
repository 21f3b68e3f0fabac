//! End-to-end: Tandem beside another SMS app (Chatty, Spacebar, mmsd-tng) on the same
//! phone. A competing app on the session bus is reported (log, `OtherSmsApps`,
//! `tandemctl status`) as long as it runs; `[sms] receive = false` leaves every incoming
//! SMS to it; data SMS (MMS notifications, mmsd-tng's) are never Tandem's.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use common::*;
use futures_util::StreamExt;
use zbus::{ObjectPath, OwnedObjectPath, OwnedVariant, Variant};

const ALICE: &str = "+15550001111";
const BOB: &str = "+15550002222";
const MODEM: &str = "/org/freedesktop/ModemManager1/Modem/0";

/// A connection to `bus` owning `name`, as the app would.
async fn app_owning(bus: &Bus, name: &str) -> zbus::Connection {
    let conn = bus.connect().await;
    conn.request_name(name).await.expect("request name");
    conn
}

fn tandemctl_status(session: &Bus) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tandemctl"))
        .arg("status")
        .env("DBUS_SESSION_BUS_ADDRESS", &session.address)
        .output()
        .expect("tandemctl");
    assert!(out.status.success(), "tandemctl status: {out:?}");
    String::from_utf8(out.stdout).expect("utf-8")
}

#[tokio::test]
async fn a_competing_sms_app_is_reported_while_it_runs() {
    let w = DaemonRig::start(&[ALICE, BOB], &config_for(ALICE)).await;
    w.modem_is("registered").await;
    assert!(
        w.api
            .other_sms_apps()
            .await
            .expect("OtherSmsApps")
            .is_empty()
    );
    assert!(!tandemctl_status(&w.session).contains("warning"));

    let mut changes = w.api.receive_other_sms_apps_changed().await;
    let chatty = app_owning(&w.session, "sm.puri.Chatty").await;
    // mmsd-tng takes only MMS notifications, which Tandem leaves: not a competitor.
    let _mmsd = app_owning(&w.session, "org.ofono.mms").await;
    let announced = tokio::time::timeout(WAIT, changes.next())
        .await
        .expect("PropertiesChanged of OtherSmsApps")
        .expect("stream");
    assert_eq!(announced.get().await.expect("value"), ["sm.puri.Chatty"]);
    w.until("OtherSmsApps lists Chatty", async |api| {
        api.other_sms_apps().await.ok() == Some(vec!["sm.puri.Chatty".to_owned()])
    })
    .await;
    let status = tandemctl_status(&w.session);
    assert!(
        status.contains("warning     Chatty (sm.puri.Chatty) also takes incoming SMS"),
        "{status}"
    );
    let log = w.daemon.log_text();
    assert!(
        log.contains("WARN") && log.contains("Chatty is running and also takes incoming SMS"),
        "{log}"
    );

    drop(chatty);
    w.until("OtherSmsApps empty again", async |api| {
        api.other_sms_apps().await.ok() == Some(Vec::new())
    })
    .await;
    // An app already running when the daemon starts is found too.
    let _spacebar = app_owning(&w.session, "org.kde.spacebar.Daemon").await;
    let mut daemon = w.phone.daemon;
    daemon.restart().await;
    let api = client(&w.phone.session).await;
    wait_for("Spacebar found at start", WAIT, async || {
        api.other_sms_apps().await.ok() == Some(vec!["org.kde.spacebar.Daemon".to_owned()])
    })
    .await;
}

/// What a Chatty-like app does with each SMS ModemManager receives: read its text (it
/// would delete it from the modem next, once stored).
async fn chatty_like_reader(system: &Bus) -> Arc<Mutex<Vec<String>>> {
    let texts = Arc::new(Mutex::new(Vec::new()));
    let conn = system.connect().await;
    let messaging = zbus::Proxy::new(
        &conn,
        "org.freedesktop.ModemManager1",
        MODEM,
        "org.freedesktop.ModemManager1.Modem.Messaging",
    )
    .await
    .expect("messaging proxy");
    let mut added = messaging.receive_signal("Added").await.expect("Added");
    let kept = texts.clone();
    tokio::spawn(async move {
        while let Some(signal) = added.next().await {
            let (path, _received): (OwnedObjectPath, bool) =
                signal.body().deserialize().expect("Added args");
            let sms = zbus::Proxy::new(
                &conn,
                "org.freedesktop.ModemManager1",
                path,
                "org.freedesktop.DBus.Properties",
            )
            .await
            .expect("sms proxy");
            let props: HashMap<String, OwnedVariant> = sms
                .call("GetAll", &("org.freedesktop.ModemManager1.Sms",))
                .await
                .expect("GetAll");
            let text = props
                .get("Text")
                .and_then(|v| v.downcast_ref::<String>().ok())
                .unwrap_or_default();
            kept.lock().unwrap().push(text);
        }
    });
    texts
}

#[tokio::test]
async fn with_receive_off_incoming_sms_are_left_to_the_other_app() {
    let config = config_for(ALICE).replace("[sms]", "[sms]\nreceive = false");
    assert!(config.contains("receive = false"), "{config}");
    let w = DaemonRig::start(&[ALICE, BOB], &config).await;
    w.modem_is("registered").await;
    let chatty = chatty_like_reader(&w.system).await;
    let _chatty_name = app_owning(&w.session, "sm.puri.Chatty").await;

    let texts: Vec<String> = (1..=6).map(|n| format!("for the other app {n}")).collect();
    for text in &texts {
        w.ctl.inject_sms(ALICE, BOB, text).await;
    }
    eventually("the other app read all six", async || {
        chatty.lock().unwrap().len() == texts.len()
    })
    .await;
    let mut read = chatty.lock().unwrap().clone();
    read.sort();
    assert_eq!(read, texts);
    eventually("Tandem saw all six and left them", async || {
        w.daemon
            .log_text()
            .matches("left on the modem for another app")
            .count()
            == texts.len()
    })
    .await;
    // None stored, announced or deleted: all six wait on the modem for the other app.
    assert!(
        w.api
            .list_conversations(0, 50)
            .await
            .expect("list")
            .is_empty()
    );
    assert!(w.signals.received().is_empty());
    assert_eq!(w.api.unread_count().await.expect("UnreadCount"), 0);
    let on_modem: Vec<String> = w
        .ctl
        .list_sms(ALICE)
        .await
        .iter()
        .filter_map(|sms| sms.get("text")?.downcast_ref::<String>().ok())
        .collect();
    assert_eq!(on_modem.len(), texts.len(), "{on_modem:?}");
    // The user chose this: said once, calmly, not as a warning.
    let log = w.daemon.log_text();
    assert!(log.contains("incoming SMS are left to it"), "{log}");
    assert!(
        !log.contains("also takes incoming SMS from the modem"),
        "{log}"
    );

    // Sending is still Tandem's.
    let id = w.send(BOB, "still mine to send").await;
    w.wait_status(&id, "sent").await;
}

#[tokio::test]
async fn data_sms_are_left_on_the_modem() {
    let w = DaemonRig::start(&[ALICE, BOB], &config_for(ALICE)).await;
    w.modem_is("registered").await;
    // An MMS notification (WAP push) is a data SMS with no text.
    let wap_push: Vec<u8> = vec![0x01, 0x06, 0x04, 0xbe, 0xaf, 0x84, 0x8c, 0x82];
    let options = HashMap::from([("data", Variant::from(wap_push))]);
    let binary: OwnedObjectPath = w
        .ctl
        .proxy()
        .call("InjectSms", &(ALICE, BOB, "", options))
        .await
        .expect("InjectSms data");
    w.ctl.inject_sms(ALICE, BOB, "a text after it").await;
    w.gets("a text after it", "sms").await;
    eventually("the data SMS seen and left", async || {
        w.daemon
            .log_text()
            .contains("data SMS (not text) left on the modem")
    })
    .await;
    // The text one is deleted once stored; the data one stays for mmsd-tng.
    eventually("only the data SMS on the modem", async || {
        let on_modem = w.ctl.list_sms(ALICE).await;
        on_modem.len() == 1
    })
    .await;
    let on_modem = w.ctl.list_sms(ALICE).await;
    let path = on_modem[0]
        .get("path")
        .and_then(|v| v.downcast_ref::<ObjectPath<'_>>().ok())
        .map(OwnedObjectPath::from);
    assert_eq!(path.as_ref(), Some(&binary), "{on_modem:?}");
    let conversations = w.api.list_conversations(0, 50).await.expect("list");
    assert_eq!(conversations.len(), 1);
    let messages = w.api.get_messages(BOB, "", 50).await.expect("messages");
    assert_eq!(messages.len(), 1, "only the text is in the inbox");
}
