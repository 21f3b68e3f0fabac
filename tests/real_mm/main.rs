//! The real ModemManager (Debian 12's 1.20) in its test mode on a private bus, driving a
//! fake AT modem written here (`at_modem`, with the PDU codec in `pdu`): `tandemd` end to
//! end through it, and the behaviour of ModemManager's SMS objects that the outbox relies
//! on. What `tandem-mmsim` simulates is checked against this, so a difference between the
//! simulator and the real daemon shows up here rather than on a phone.

#[path = "../common/mod.rs"]
mod common;

mod at_modem;
mod mm;
mod pdu;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use zbus::{MatchRule, OwnedObjectPath, OwnedVariant};

use at_modem::{FakeModem, Identity, Mem, SendReply};
use common::*;
use mm::ModemManager;
use pdu::Scts;

const ALICE: &str = "+15550001111";
const BOB: &str = "+15550002222";
const CAROL: &str = "+15559998888";

const MM_ERROR: &str = "org.freedesktop.ModemManager1.Error.";

/// 2024-05-20 12:34:56 at the SMS centre, UTC+2.
const SCTS: Scts = Scts {
    year: 2024,
    month: 5,
    day: 20,
    hour: 12,
    minute: 34,
    second: 56,
    offset_quarters: 8,
};
/// The same instant in milliseconds since the epoch (2024-05-20T10:34:56Z).
const SCTS_MS: i64 = 1_716_201_296_000;

/// A private bus with ModemManager on it and Alice's fake modem, not yet given to it.
/// Dropped in this order: ModemManager, the fake modem, the bus, the directory.
struct RealMm {
    mm: ModemManager,
    fake: FakeModem,
    bus: Bus,
    dir: tempfile::TempDir,
}

impl RealMm {
    async fn start() -> RealMm {
        let dir = temp_dir();
        let bus = Bus::start();
        let fake = FakeModem::start(
            &dir.path().join("modem.sock"),
            Identity {
                imei: "490154203237518".into(),
                imsi: "310410123456789".into(),
                own_number: Some(ALICE.into()),
            },
        );
        let mm = ModemManager::start(&bus, &dir.path().join("ModemManager.log")).await;
        RealMm { mm, fake, bus, dir }
    }
}

fn no_options() -> HashMap<String, OwnedVariant> {
    HashMap::new()
}

fn prop_u32(props: &HashMap<String, OwnedVariant>, name: &str) -> u32 {
    props
        .get(name)
        .and_then(|v| u32::try_from(v).ok())
        .unwrap_or_else(|| panic!("no u32 {name} in {props:?}"))
}

fn prop_str(props: &HashMap<String, OwnedVariant>, name: &str) -> String {
    props
        .get(name)
        .and_then(|v| <&str>::try_from(v).ok())
        .unwrap_or_else(|| panic!("no string {name} in {props:?}"))
        .to_owned()
}

#[tokio::test]
async fn tandemd_sends_and_receives_through_the_real_modem_manager() {
    let w = RealMm::start().await;
    // The daemon starts first, as at boot: the modem appears, initialises and registers
    // while it watches.
    let phone = Phone::start(&w.bus, &w.dir.path().join("tandem"), &config_for(ALICE)).await;
    let (signals, api) = (&phone.signals, &phone.api);
    let conn = w.bus.connect().await;
    let modem = mm::bring_up(&conn, &w.fake).await;

    eventually("ModemState registered", || async {
        api.modem_state().await.ok().as_deref() == Some("registered")
    })
    .await;
    assert_eq!(api.own_number().await.expect("OwnNumber"), ALICE);

    // One SMS: the modem gets one SMS-SUBMIT with Bob's number, the text, and a status
    // report requested (delivery reports are on by default).
    let text = "Hello Bob, this went through ModemManager";
    let id = api
        .send_message(BOB, text, no_options())
        .await
        .expect("SendMessage");
    signals
        .wait_until("sent", |s| s.statuses(&id).contains(&"sent".to_owned()))
        .await;
    let submitted = w.fake.submitted();
    assert_eq!(submitted.len(), 1, "{submitted:#?}");
    let first = &submitted[0];
    assert_eq!(first.submit.destination, BOB);
    assert_eq!(first.submit.text, text);
    assert!(first.submit.status_report_request);
    assert_eq!(first.submit.concat, None);
    let reference = first.reference.expect("the modem answered +CMGS");

    // The network's status report (+CDS) makes it delivered.
    w.fake.report_status(BOB, reference, 0, &SCTS);
    signals
        .wait_until("delivered", |s| {
            s.statuses(&id).last().map(String::as_str) == Some("delivered")
        })
        .await;
    assert_eq!(signals.statuses(&id), ["sending", "sent", "delivered"]);

    // A long text outside the GSM alphabet: ModemManager sends it as UCS-2 parts joined by
    // one concatenation reference.
    let long = "Grüße aus Tandem 👋 ".repeat(6);
    let id = api
        .send_message(CAROL, &long, no_options())
        .await
        .expect("SendMessage");
    signals
        .wait_until("sent", |s| s.statuses(&id).contains(&"sent".to_owned()))
        .await;
    let parts: Vec<_> = w.fake.submitted().into_iter().skip(1).collect();
    assert_eq!(parts.len(), 2, "{parts:#?}");
    let concat: Vec<_> = parts
        .iter()
        .map(|p| p.submit.concat.expect("a concatenation header"))
        .collect();
    assert_eq!(concat[0].reference, concat[1].reference);
    assert_eq!(
        concat
            .iter()
            .map(|c| (c.total, c.sequence))
            .collect::<Vec<_>>(),
        [(2, 1), (2, 2)]
    );
    assert!(parts.iter().all(|p| p.submit.destination == CAROL));
    let joined: String = parts.iter().map(|p| p.submit.text.as_str()).collect();
    assert_eq!(joined, long);

    // An incoming SMS: stored on the modem and announced with +CMTI; the daemon stores
    // it, announces it, and removes it from the modem (AT+CMGD).
    let incoming = "Hi Alice! 5€ for the {tickets}?";
    let (mem, index) = w.fake.deliver(CAROL, incoming, &SCTS);
    signals
        .wait_until("MessageReceived", |s| !s.received().is_empty())
        .await;
    let got = &signals.received()[0];
    assert_eq!(
        (got.peer.as_str(), got.text.as_str(), got.direction.as_str()),
        (CAROL, incoming, "incoming")
    );
    assert_eq!(
        (got.channel.as_str(), got.status.as_str()),
        ("sms", "received")
    );
    assert_eq!(got.timestamp, SCTS_MS);
    let stored = api.get_messages(CAROL, "", 10).await.expect("GetMessages");
    assert!(stored.iter().any(|m| m.id == got.id), "{stored:#?}");
    eventually("the SMS deleted from the modem's storage", || async {
        !w.fake.storage(mem).contains_key(&index)
    })
    .await;
    assert!(
        w.fake.commands().contains(&format!("AT+CMGD={index}")),
        "{:#?}",
        w.fake.commands()
    );

    // Nothing is left behind in ModemManager: sent SMS, the report and the incoming SMS
    // were all deleted.
    eventually("no SMS objects left in ModemManager", || async {
        mm::list_sms(&conn, &modem).await.is_empty()
    })
    .await;
    assert_eq!(signals.received().len(), 1, "announced once");
    assert!(w.fake.faults().is_empty(), "{:#?}", w.fake.faults());
}

/// ModemManager killed and started again under a running daemon. Unlike the simulator's,
/// the modem's storage outlives ModemManager: an SMS that arrived meanwhile is found there
/// when the modem comes back.
#[tokio::test]
async fn follows_the_real_modem_manager_going_away_and_coming_back() {
    let mut w = RealMm::start().await;
    let conn = w.bus.connect().await;
    mm::bring_up(&conn, &w.fake).await;
    let phone = Phone::start(&w.bus, &w.dir.path().join("tandem"), &config_for(ALICE)).await;
    let (signals, api) = (&phone.signals, &phone.api);
    let wait_modem = |state: &'static str| {
        let api = api.clone();
        async move {
            eventually(&format!("ModemState {state}"), || async {
                api.modem_state().await.ok().as_deref() == Some(state)
            })
            .await;
        }
    };
    wait_modem("registered").await;

    w.mm.kill();
    wait_modem("absent").await;
    let id = api
        .send_message(BOB, "while ModemManager was away", no_options())
        .await
        .expect("SendMessage");
    // Reaches the modem's storage; nobody hears the +CMTI.
    let (mem, index) = w.fake.deliver(CAROL, "sent while nobody listened", &SCTS);

    w.mm.restart().await;
    let modem = mm::bring_up(&conn, &w.fake).await;
    wait_modem("registered").await;
    signals
        .wait_until("sent", |s| s.statuses(&id).contains(&"sent".to_owned()))
        .await;
    let sent: Vec<_> = w
        .fake
        .submitted()
        .into_iter()
        .filter(|s| s.submit.text == "while ModemManager was away")
        .collect();
    assert_eq!(sent.len(), 1, "{sent:#?}");
    signals
        .wait_until("received", |s| s.received().len() == 1)
        .await;
    let got = &signals.received()[0];
    assert_eq!(
        (got.peer.as_str(), got.text.as_str(), got.timestamp),
        (CAROL, "sent while nobody listened", SCTS_MS)
    );
    eventually("the SMS deleted from the modem's storage", || async {
        !w.fake.storage(mem).contains_key(&index)
    })
    .await;
    eventually("no SMS objects left in ModemManager", || async {
        mm::list_sms(&conn, &modem).await.is_empty()
    })
    .await;
    assert_eq!(signals.received().len(), 1, "announced once");
}

/// Every `PropertiesChanged` of ModemManager's SMS objects: (path, State, MessageReference)
/// as far as the signal carried them.
type SmsChanges = Arc<Mutex<Vec<(String, Option<u32>, Option<u32>)>>>;

async fn record_sms_changes(bus: &Bus) -> SmsChanges {
    let rule = MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .interface("org.freedesktop.DBus.Properties")
        .member("PropertiesChanged")
        .path_namespace("/org/freedesktop/ModemManager1/SMS")
        .build()
        .expect("match rule");
    let seen = SmsChanges::default();
    let log = seen.clone();
    common::bus::on_messages(bus, rule, move |msg| {
        let path = msg.header().path().map(|p| p.to_string());
        let body = msg.body();
        let Ok((_, changed, _)) = body.deserialize::<(String, Dict, Vec<String>)>() else {
            return;
        };
        let get = |name: &str| changed.get(name).and_then(|v| u32::try_from(v).ok());
        let change = (
            path.unwrap_or_default(),
            get("State"),
            get("MessageReference"),
        );
        log.lock().expect("changes").push(change);
    })
    .await;
    seen
}

/// `Sms.Send` of `sms` in a task of its own, the network answering `ms` after the
/// SUBMIT; returns once the SUBMIT is at the modem.
async fn send_answered_late(
    fake: &FakeModem,
    conn: &zbus::Connection,
    sms: &OwnedObjectPath,
    ms: u64,
) -> tokio::task::JoinHandle<zbus::Result<()>> {
    let before = fake.submitted().len();
    fake.queue_send_replies([SendReply::AcceptAfter(Duration::from_millis(ms))]);
    let send = tokio::spawn({
        let (conn, sms) = (conn.clone(), sms.clone());
        async move { mm::send_sms(&conn, &sms).await }
    });
    eventually("the SUBMIT at the modem", || async {
        fake.submitted().len() > before
    })
    .await;
    send
}

/// `MMSmsState`
const SMS_UNKNOWN: u32 = 0;
const SMS_STORED: u32 = 1;
const SMS_SENDING: u32 = 4;
const SMS_SENT: u32 = 5;
/// `MMSmsStorage`
const STORAGE_UNKNOWN: u32 = 0;
const STORAGE_ME: u32 = 2;

/// What ModemManager 1.20 does with an SMS object around `Sms.Send`, which the outbox's
/// exactly-once rules depend on: the states it shows, what a second Send does, how
/// failures and timeouts are named, and what is left after ModemManager is killed.
#[tokio::test]
async fn modem_manager_sms_objects_around_a_send() {
    let mut w = RealMm::start().await;
    let changes = record_sms_changes(&w.bus).await;
    let conn = w.bus.connect().await;
    let modem = mm::bring_up(&conn, &w.fake).await;
    let submits_of = |text: &str| {
        w.fake
            .submitted()
            .into_iter()
            .filter(|s| s.submit.text == text)
            .collect::<Vec<_>>()
    };

    // Created: state unknown (not "stored"), no storage, no reference.
    let sms = mm::create_sms(&conn, &modem, BOB, "twice")
        .await
        .expect("Create");
    let props = mm::sms_properties(&conn, &sms).await;
    assert_eq!(
        (
            prop_u32(&props, "State"),
            prop_u32(&props, "Storage"),
            prop_u32(&props, "MessageReference")
        ),
        (SMS_UNKNOWN, STORAGE_UNKNOWN, 0)
    );

    // A Send the network answers late, and a second Send of the same object meanwhile:
    // the state never shows "sending", and the second Send is not refused: the modem gets
    // the SMS twice.
    let first = send_answered_late(&w.fake, &conn, &sms, 1500).await;
    let during: u32 = mm::property(&conn, &sms, mm::SMS_IFACE, "State").await;
    assert_eq!(during, SMS_UNKNOWN, "no 'sending' while the modem works");
    let second = tokio::spawn({
        let (conn, sms) = (conn.clone(), sms.clone());
        async move { mm::send_sms(&conn, &sms).await }
    });
    first.await.expect("join").expect("the first Send");
    second.await.expect("join").expect("the second Send");
    let twice = submits_of("twice");
    assert_eq!(twice.len(), 2, "{twice:#?}");
    let first_reference = twice[0].reference.expect("answered");
    // Sent, with the first attempt's reference; readable as soon as Send returned.
    let props = mm::sms_properties(&conn, &sms).await;
    assert_eq!(prop_u32(&props, "State"), SMS_SENT);
    assert_eq!(
        prop_u32(&props, "MessageReference"),
        u32::from(first_reference)
    );

    // Once sent, another Send is refused and nothing reaches the modem.
    let err = mm::send_sms(&conn, &sms).await.expect_err("a third Send");
    assert_eq!(
        mm::error_name(&err).as_deref(),
        Some("org.freedesktop.ModemManager1.Error.Core.Failed"),
        "{err}"
    );
    assert!(err.to_string().contains("already sent"), "{err}");
    assert_eq!(submits_of("twice").len(), 2);

    // One PropertiesChanged carried the new State and the reference together; no
    // "sending" was ever announced.
    eventually("PropertiesChanged with State sent", || async {
        changes
            .lock()
            .expect("changes")
            .iter()
            .any(|(path, state, _)| path == sms.as_str() && *state == Some(SMS_SENT))
    })
    .await;
    let of_sms: Vec<_> = changes
        .lock()
        .expect("changes")
        .iter()
        .filter(|(path, state, _)| path == sms.as_str() && state.is_some())
        .cloned()
        .collect();
    assert_eq!(
        of_sms,
        [(
            sms.to_string(),
            Some(SMS_SENT),
            Some(u32::from(first_reference))
        )]
    );

    // A send the network refuses: a Message error named after the CMS code; the object
    // keeps its state and stays; sending it again works.
    for (code, name) in [
        (500, "Message.Unknown"),
        (330, "Message.SmscAddressUnknown"),
    ] {
        let text = format!("refused with {code}");
        let failed = mm::create_sms(&conn, &modem, BOB, &text)
            .await
            .expect("Create");
        w.fake.queue_send_replies([SendReply::CmsError(code)]);
        let err = mm::send_sms(&conn, &failed).await.expect_err("refused");
        assert_eq!(
            mm::error_name(&err),
            Some(format!("{MM_ERROR}{name}")),
            "{err}"
        );
        let state: u32 = mm::property(&conn, &failed, mm::SMS_IFACE, "State").await;
        assert_eq!(state, SMS_UNKNOWN);
        assert!(mm::list_sms(&conn, &modem).await.contains(&failed));
        if code == 330 {
            mm::send_sms(&conn, &failed).await.expect("sent on retry");
            let state: u32 = mm::property(&conn, &failed, mm::SMS_IFACE, "State").await;
            assert_eq!(state, SMS_SENT);
            assert_eq!(submits_of(&text).len(), 2);
        }
    }

    // A modem that never answers AT+CMGS (no prompt): ModemManager gives up after its
    // serial timeout, about 10 s.
    let silent = mm::create_sms(&conn, &modem, BOB, "no prompt")
        .await
        .expect("Create");
    w.fake.queue_send_replies([SendReply::NoPrompt]);
    let started = Instant::now();
    let err = mm::send_sms(&conn, &silent).await.expect_err("timed out");
    let waited = started.elapsed();
    assert_eq!(
        mm::error_name(&err),
        Some(format!("{MM_ERROR}Serial.ResponseTimeout")),
        "{err}"
    );
    assert!(
        (Duration::from_secs(8)..Duration::from_secs(13)).contains(&waited),
        "{waited:?}"
    );
    assert!(submits_of("no prompt").is_empty());

    // Sent SMS objects stay until Messaging.Delete.
    let listed = mm::list_sms(&conn, &modem).await;
    assert!(listed.contains(&sms), "{listed:?}");
    mm::delete_sms(&conn, &modem, &sms).await;
    assert!(!mm::list_sms(&conn, &modem).await.contains(&sms));

    // An SMS stored on the modem first (AT+CMGW), then sent from storage (AT+CMSS).
    let stored = mm::create_sms(&conn, &modem, BOB, "stored first")
        .await
        .expect("Create");
    mm::store_sms(&conn, &stored).await.expect("Store");
    let props = mm::sms_properties(&conn, &stored).await;
    assert_eq!(
        (prop_u32(&props, "State"), prop_u32(&props, "Storage")),
        (SMS_STORED, STORAGE_ME)
    );
    mm::send_sms(&conn, &stored)
        .await
        .expect("Send from storage");
    assert!(submits_of("stored first")[0].from_storage);

    // ModemManager killed during a Send: the caller gets NoReply at once, while the modem
    // still sends the SMS.
    let killed = mm::create_sms(&conn, &modem, BOB, "cut off")
        .await
        .expect("Create");
    let pending = send_answered_late(&w.fake, &conn, &killed, 800).await;
    w.mm.kill();
    let err = pending
        .await
        .expect("join")
        .expect_err("no answer from a killed ModemManager");
    assert_eq!(
        mm::error_name(&err).as_deref(),
        Some("org.freedesktop.DBus.Error.NoReply"),
        "{err}"
    );
    eventually("the modem sent it anyway", || async {
        submits_of("cut off")[0].reference.is_some()
    })
    .await;

    // After a restart, only what is in the modem's storage comes back: the stored SMS, as
    // sent but without its reference. SMS paths start again from the first one, so an
    // old path can name a different SMS.
    w.mm.restart().await;
    let modem = mm::bring_up(&conn, &w.fake).await;
    let listed = mm::list_sms(&conn, &modem).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    let props = mm::sms_properties(&conn, &listed[0]).await;
    assert_eq!(prop_str(&props, "Text"), "stored first");
    assert_eq!(
        (
            prop_u32(&props, "State"),
            prop_u32(&props, "Storage"),
            prop_u32(&props, "MessageReference")
        ),
        (SMS_SENT, STORAGE_ME, 0)
    );
    let fresh = mm::create_sms(&conn, &modem, BOB, "after restart")
        .await
        .expect("Create");
    let first_path = OwnedObjectPath::try_from("/org/freedesktop/ModemManager1/SMS/0").unwrap();
    assert!(
        fresh == first_path || listed[0] == first_path,
        "paths start again: {fresh} {listed:?}"
    );
    assert_eq!(w.fake.storage(Mem::Me).len(), 1);
    assert!(
        changes
            .lock()
            .expect("changes")
            .iter()
            .all(|(_, state, _)| *state != Some(SMS_SENDING)),
        "never 'sending'"
    );
    assert!(w.fake.faults().is_empty(), "{:#?}", w.fake.faults());
}
