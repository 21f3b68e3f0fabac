//! End-to-end tests of `tandem-mmsim`: the real binary on a private bus started by each
//! test (never the machine's system bus), driven with plain zbus proxies as ModemManager's
//! clients and our tests drive it. The simulator's log is printed when a test fails.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Bus, Dict, Sim, SimCtl, eventually, get, no_opts, opts};
use futures_util::StreamExt;
use zbus::proxy::{CacheProperties, SignalStream};
use zbus::{Connection, OwnedObjectPath, Proxy, Variant};

const MM: &str = "org.freedesktop.ModemManager1";
const MANAGER: &str = "/org/freedesktop/ModemManager1";
const MODEM: &str = "org.freedesktop.ModemManager1.Modem";
const MESSAGING: &str = "org.freedesktop.ModemManager1.Modem.Messaging";
const GPP: &str = "org.freedesktop.ModemManager1.Modem.Modem3gpp";
const SMS: &str = "org.freedesktop.ModemManager1.Sms";
const A: &str = "+15550001111";
const B: &str = "+15550002222";
const WAIT: Duration = Duration::from_secs(5);

type Managed = HashMap<OwnedObjectPath, HashMap<String, Dict>>;

/// A private bus, the simulator on it, and a client connection.
struct Harness {
    conn: Connection,
    ctl: SimCtl,
    address: String,
    _sim: Sim,
    _bus: Bus,
}

async fn start(args: &[&str]) -> Harness {
    let bus = Bus::start();
    let sim = Sim::with_args(&bus.address, args);
    let conn = bus.connect().await;
    Harness {
        ctl: SimCtl::new(&conn).await,
        conn,
        address: bus.address.clone(),
        _sim: sim,
        _bus: bus,
    }
}

/// Two registered modems, A (Modem/0) and B (Modem/1).
async fn start_two() -> Harness {
    start(&["--modem", A, "--modem", B, "--part-interval-ms", "30"]).await
}

fn modem_path(n: u32) -> String {
    format!("{MANAGER}/Modem/{n}")
}

/// Fails unless `err` is the D-Bus error `name`.
#[track_caller]
fn assert_named(err: &zbus::Error, name: &str) {
    match err {
        zbus::Error::MethodError(got, _, _) => assert_eq!(got.as_str(), name),
        other => panic!("not a method error: {other}"),
    }
}

/// The properties of one SMS object.
#[derive(Debug)]
struct SmsView {
    state: u32,
    pdu_type: u32,
    number: String,
    text: String,
    reference: u32,
    delivery_state: u32,
    smsc: String,
    timestamp: String,
}

impl Harness {
    async fn proxy(&self, path: &str, iface: &str) -> Proxy<'static> {
        zbus::proxy::Builder::<Proxy<'static>>::new(&self.conn)
            .destination(MM.to_owned())
            .path(path.to_owned())
            .interface(iface.to_owned())
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .expect("proxy")
    }

    /// A property of the object at `path`.
    async fn property<T>(&self, path: &str, iface: &str, name: &str) -> T
    where
        T: serde::de::DeserializeOwned + zbus::Type,
    {
        let proxy = self.proxy(path, iface).await;
        let value = proxy.get_property(name).await;
        value.unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    async fn control(&self) -> Proxy<'static> {
        self.ctl.proxy().clone()
    }

    async fn signals(&self, path: &str, iface: &str, name: &'static str) -> SignalStream<'static> {
        self.proxy(path, iface)
            .await
            .receive_signal(name)
            .await
            .expect("signal stream")
    }

    async fn sms(&self, path: &OwnedObjectPath) -> SmsView {
        let p = self.proxy(path.as_str(), SMS).await;
        SmsView {
            state: p.get_property("State").await.expect("State"),
            pdu_type: p.get_property("PduType").await.expect("PduType"),
            number: p.get_property("Number").await.expect("Number"),
            text: p.get_property("Text").await.expect("Text"),
            reference: p.get_property("MessageReference").await.expect("ref"),
            delivery_state: p.get_property("DeliveryState").await.expect("ds"),
            smsc: p.get_property("SMSC").await.expect("SMSC"),
            timestamp: p.get_property("Timestamp").await.expect("Timestamp"),
        }
    }

    async fn list(&self, modem: &str) -> Vec<OwnedObjectPath> {
        self.proxy(modem, MESSAGING)
            .await
            .call("List", &())
            .await
            .expect("List")
    }

    async fn create(&self, modem: &str, to: &str, text: &str, report: bool) -> OwnedObjectPath {
        let props = opts(&[
            ("number", Variant::from(to)),
            ("text", Variant::from(text)),
            ("delivery-report-request", Variant::from(report)),
        ]);
        self.proxy(modem, MESSAGING)
            .await
            .call("Create", &(props,))
            .await
            .expect("Create")
    }

    async fn send(&self, sms: &OwnedObjectPath) -> zbus::Result<()> {
        self.proxy(sms.as_str(), SMS).await.call("Send", &()).await
    }

    async fn set_state(&self, modem: &str, state: i32) {
        self.ctl.set_modem_state(modem, state).await
    }

    async fn inject(&self, modem: &str, from: &str, text: &str) -> OwnedObjectPath {
        self.ctl.inject_sms(modem, from, text).await
    }

    async fn list_sms(&self, modem: &str) -> Vec<Dict> {
        self.ctl.list_sms(modem).await
    }
}

/// The next signal's body, or a failure after a few seconds.
async fn next<T>(stream: &mut SignalStream<'static>) -> T
where
    T: for<'d> serde::Deserialize<'d> + zbus::Type,
{
    let msg = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("signal in time")
        .expect("stream open");
    msg.body().deserialize::<T>().expect("signal body")
}

/// Fails if a signal comes within `quiet`.
async fn assert_quiet(stream: &mut SignalStream<'static>, quiet: Duration) {
    if let Ok(Some(msg)) = tokio::time::timeout(quiet, stream.next()).await {
        panic!("unexpected signal {msg:?}");
    }
}

#[tokio::test]
async fn managed_objects_list_modems_with_their_interfaces() {
    let h = start(&["--modem", A, "--modem", &format!("{B},nosimnumber")]).await;
    let manager = h.proxy(MANAGER, "org.freedesktop.DBus.ObjectManager").await;
    let objects: Managed = manager
        .call("GetManagedObjects", &())
        .await
        .expect("objects");
    let modem = |n: u32| {
        objects
            .iter()
            .find(|(p, _)| p.as_str() == modem_path(n))
            .map(|(_, i)| i)
            .unwrap_or_else(|| panic!("Modem/{n} in {:?}", objects.keys()))
    };
    for n in [0, 1] {
        for iface in [MODEM, GPP, MESSAGING] {
            assert!(modem(n).contains_key(iface), "Modem/{n} has {iface}");
        }
        let props = &modem(n)[MODEM];
        assert_eq!(get::<&str>(props, "Manufacturer"), "Tandem");
        assert_eq!(get::<&str>(props, "Model"), "mmsim");
        assert_eq!(get::<i32>(props, "State"), 8);
        assert_eq!(get::<&str>(&modem(n)[GPP], "Imei").len(), 15);
    }
    let own: Vec<String> = h.property(&modem_path(0), MODEM, "OwnNumbers").await;
    assert_eq!(own, vec![A.to_owned()]);
    let own: Vec<String> = h.property(&modem_path(1), MODEM, "OwnNumbers").await;
    assert!(own.is_empty(), "nosimnumber hides the number: {own:?}");
    let sim: OwnedObjectPath = h.property(&modem_path(0), MODEM, "Sim").await;
    assert!(objects[&sim].contains_key("org.freedesktop.ModemManager1.Sim"));
    let version: String = h.property(MANAGER, MM, "Version").await;
    assert!(version.starts_with("1.20"), "{version}");
}

#[tokio::test]
async fn sms_between_modems_arrives_with_a_status_report() {
    let h = start_two().await;
    let (a, b) = (modem_path(0), modem_path(1));
    let mut added_a = h.signals(&a, MESSAGING, "Added").await;
    let mut added_b = h.signals(&b, MESSAGING, "Added").await;
    let mut sent_signal = h
        .control()
        .await
        .receive_signal("Sent")
        .await
        .expect("Sent");

    let out = h.create(&a, B, "hello B", true).await;
    assert_eq!(
        next::<(OwnedObjectPath, bool)>(&mut added_a).await,
        (out.clone(), false)
    );
    let created = h.sms(&out).await;
    assert_eq!(
        (created.state, created.pdu_type),
        (0, 2),
        "submit, state unknown until sent (as ModemManager 1.20)"
    );

    h.send(&out).await.expect("Send");
    let sent = h.sms(&out).await;
    assert_eq!(sent.state, 5, "sent");
    assert_eq!(
        next::<(String, String, String)>(&mut sent_signal).await,
        (A.to_owned(), B.to_owned(), "hello B".to_owned())
    );

    let (incoming, received) = next::<(OwnedObjectPath, bool)>(&mut added_b).await;
    assert!(received);
    let got = h.sms(&incoming).await;
    assert_eq!((got.state, got.pdu_type), (3, 1), "received deliver");
    assert_eq!(got.number, A);
    assert_eq!(got.text, "hello B");
    assert_eq!(got.smsc, "+15550000000");
    assert!(
        got.timestamp.len() == 20 && got.timestamp.as_bytes()[10] == b'T',
        "MM timestamp: {}",
        got.timestamp
    );
    assert!(got.timestamp.ends_with('Z'), "{}", got.timestamp);

    let (report, received) = next::<(OwnedObjectPath, bool)>(&mut added_a).await;
    assert!(received);
    let report = h.sms(&report).await;
    assert_eq!(report.pdu_type, 3, "status report");
    assert_eq!(report.reference, sent.reference);
    assert_eq!(report.number, B);
    assert_eq!(report.delivery_state, 0, "completed-received");
    assert_eq!(
        h.sms(&out).await.delivery_state,
        0x100,
        "sent SMS keeps unknown"
    );

    let sent_log: Vec<Dict> = h
        .control()
        .await
        .call("GetSent", &(A,))
        .await
        .expect("GetSent");
    assert_eq!(sent_log.len(), 1);
    assert_eq!(get::<&str>(&sent_log[0], "number"), B);
    assert_eq!(get::<&str>(&sent_log[0], "text"), "hello B");
    assert!(get::<bool>(&sent_log[0], "delivery-report"));
    assert_eq!(get::<u32>(&sent_log[0], "reference"), sent.reference);
    assert_eq!(
        get::<&zbus::ObjectPath<'_>>(&sent_log[0], "path").as_str(),
        out.as_str()
    );
}

#[tokio::test]
async fn references_increment_and_no_report_unless_asked() {
    let h = start_two().await;
    let a = modem_path(0);
    let mut added_a = h.signals(&a, MESSAGING, "Added").await;
    let mut refs = Vec::new();
    for text in ["one", "two"] {
        let sms = h.create(&a, B, text, false).await;
        h.send(&sms).await.expect("Send");
        refs.push(h.sms(&sms).await.reference);
    }
    assert_eq!(refs[1], (refs[0] + 1) % 256);
    // Two Added for the two Create calls, and no status report.
    next::<(OwnedObjectPath, bool)>(&mut added_a).await;
    next::<(OwnedObjectPath, bool)>(&mut added_a).await;
    assert_quiet(&mut added_a, Duration::from_millis(400)).await;
}

#[tokio::test]
async fn long_text_arrives_as_one_multipart_sms() {
    let h = start(&["--modem", A, "--modem", B, "--part-interval-ms", "300"]).await;
    let (a, b) = (modem_path(0), modem_path(1));
    let mut added_b = h.signals(&b, MESSAGING, "Added").await;
    let text: String = (0..400)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let out = h.create(&a, B, &text, false).await;
    h.send(&out).await.expect("Send");

    let (incoming, received) = next::<(OwnedObjectPath, bool)>(&mut added_b).await;
    assert!(received);
    let first = h.sms(&incoming).await;
    assert_eq!(first.state, 2, "receiving");
    assert_eq!(first.text, "");
    eventually("multipart complete", || async {
        h.sms(&incoming).await.state == 3
    })
    .await;
    assert_eq!(h.sms(&incoming).await.text, text);
    assert_quiet(&mut added_b, Duration::from_millis(200)).await;
    assert_eq!(h.list(&b).await, vec![incoming]);
}

#[tokio::test]
async fn ucs2_text_over_seventy_characters_is_multipart() {
    let h = start_two().await;
    let b = modem_path(1);
    let mut added_b = h.signals(&b, MESSAGING, "Added").await;
    let text = "Привет ".repeat(11); // 77 characters, not GSM 7-bit
    let injected = h.inject(&b, "+4915112345678", &text).await;
    let (incoming, _) = next::<(OwnedObjectPath, bool)>(&mut added_b).await;
    assert_eq!(incoming, injected);
    assert_eq!(
        h.sms(&incoming).await.state,
        2,
        "two parts: receiving first"
    );
    eventually("complete", || async { h.sms(&incoming).await.state == 3 }).await;
    let got = h.sms(&incoming).await;
    assert_eq!((got.text, got.number), (text, "+4915112345678".to_owned()));
}

#[tokio::test]
async fn begin_multipart_and_add_part_under_test_control() {
    let h = start_two().await;
    let b = modem_path(1);
    let control = h.control().await;
    let mut added_b = h.signals(&b, MESSAGING, "Added").await;
    let sms: OwnedObjectPath = control
        .call("BeginMultipart", &(B, "+4912345", 2u32))
        .await
        .expect("BeginMultipart");
    assert_eq!(
        next::<(OwnedObjectPath, bool)>(&mut added_b).await,
        (sms.clone(), true)
    );
    assert_eq!(
        (h.sms(&sms).await.state, h.sms(&sms).await.text),
        (2, String::new())
    );
    control
        .call::<_, _, ()>("AddPart", &(&sms, "Hello, "))
        .await
        .expect("AddPart");
    assert_eq!(h.sms(&sms).await.state, 2);
    control
        .call::<_, _, ()>("AddPart", &(&sms, "world"))
        .await
        .expect("AddPart");
    let done = h.sms(&sms).await;
    assert_eq!((done.state, done.text.as_str()), (3, "Hello, world"));
    let result = control.call::<_, _, ()>("AddPart", &(&sms, "more")).await;
    assert_named(&result.unwrap_err(), "org.tandem.MMSim1.Error.WrongState");
    assert_quiet(&mut added_b, Duration::from_millis(100)).await;
}

#[tokio::test]
async fn delete_removes_every_part_and_can_be_held() {
    let h = start_two().await;
    let b = modem_path(1);
    let messaging = h.proxy(&b, MESSAGING).await;
    let mut deleted = h.signals(&b, MESSAGING, "Deleted").await;
    let manager = h.proxy(MANAGER, "org.freedesktop.DBus.ObjectManager").await;
    let mut removed = manager
        .receive_signal("InterfacesRemoved")
        .await
        .expect("stream");

    let parts = opts(&[
        ("parts", Variant::from(3u32)),
        ("part-interval-ms", Variant::from(10u32)),
    ]);
    let sms: OwnedObjectPath = h
        .control()
        .await
        .call("InjectSms", &(&b, "+4912345", "one two three", parts))
        .await
        .expect("InjectSms");
    eventually("complete", || async { h.sms(&sms).await.state == 3 }).await;
    assert_eq!(h.sms(&sms).await.text, "one two three");
    messaging
        .call::<_, _, ()>("Delete", &(&sms,))
        .await
        .expect("Delete");
    assert_eq!(next::<(OwnedObjectPath,)>(&mut deleted).await.0, sms);
    let (gone, ifaces) = next::<(OwnedObjectPath, Vec<String>)>(&mut removed).await;
    assert_eq!((gone, ifaces), (sms.clone(), vec![SMS.to_owned()]));
    assert!(h.list(&b).await.is_empty());
    assert!(
        h.list_sms(&b).await.is_empty(),
        "all parts gone from storage"
    );
    let err = messaging
        .call::<_, _, ()>("Delete", &(&sms,))
        .await
        .unwrap_err();
    assert_named(&err, "org.freedesktop.ModemManager1.Error.Core.NotFound");

    // Held deletes do not answer, and nothing else stalls meanwhile.
    let sms = h.inject(&b, "+4912345", "keep me a while").await;
    let control = h.control().await;
    control
        .call::<_, _, ()>("SetDeleteBlocked", &(B, true))
        .await
        .expect("block");
    let held = {
        let messaging = messaging.clone();
        let sms = sms.clone();
        tokio::spawn(async move { messaging.call::<_, _, ()>("Delete", &(&sms,)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!held.is_finished(), "Delete answered while blocked");
    let waiting: u32 = control
        .call("BlockedDeletes", &(B,))
        .await
        .expect("blocked deletes");
    assert_eq!(waiting, 1, "the held Delete is counted");
    assert_eq!(h.list(&b).await, vec![sms.clone()]);
    let _: Managed = manager
        .call("GetManagedObjects", &())
        .await
        .expect("objects");
    let other = h.inject(&b, "+4912345", "delivery goes on").await;
    assert_eq!(h.sms(&other).await.text, "delivery goes on");
    control
        .call::<_, _, ()>("SetDeleteBlocked", &(B, false))
        .await
        .expect("unblock");
    tokio::time::timeout(WAIT, held)
        .await
        .expect("Delete answers once unblocked")
        .expect("task")
        .expect("Delete");
    assert_eq!(h.list(&b).await, vec![other]);
    let waiting: u32 = control
        .call("BlockedDeletes", &(B,))
        .await
        .expect("blocked deletes");
    assert_eq!(waiting, 0, "nothing waits once unblocked");
}

#[tokio::test]
async fn fail_next_send_and_unregistered_send_fail_like_modemmanager() {
    let h = start_two().await;
    let a = modem_path(0);
    let control = h.control().await;
    control
        .call::<_, _, ()>(
            "FailNextSend",
            &(A, "org.freedesktop.ModemManager1.Error.Core.Failed", "boom"),
        )
        .await
        .expect("FailNextSend");
    let sms = h.create(&a, B, "try me", false).await;
    let err = h.send(&sms).await.unwrap_err();
    assert_named(&err, "org.freedesktop.ModemManager1.Error.Core.Failed");
    assert!(err.to_string().contains("boom"), "{err}");
    h.send(&sms).await.expect("only the next send fails");

    h.set_state(A, 6).await; // enabled, not registered
    let sms = h.create(&a, B, "no network", false).await;
    let err = h.send(&sms).await.unwrap_err();
    assert_named(&err, "org.freedesktop.ModemManager1.Error.Core.WrongState");

    let result = control
        .call::<_, _, ()>("FailNextSend", &(A, "not a name", "x"))
        .await;
    assert_named(
        &result.unwrap_err(),
        "org.tandem.MMSim1.Error.InvalidArgument",
    );
}

#[tokio::test]
async fn disabling_and_enabling_re_creates_sms_under_new_paths() {
    let h = start_two().await;
    let b = modem_path(1);
    let first = h.inject(&b, "+4912345", "survives").await;
    let mut changed = h.signals(&b, MODEM, "StateChanged").await;
    let mut props = h
        .proxy(&b, "org.freedesktop.DBus.Properties")
        .await
        .receive_signal("PropertiesChanged")
        .await
        .expect("stream");

    h.set_state(B, 3).await;
    assert_eq!(next::<(i32, i32, u32)>(&mut changed).await, (8, 3, 0));
    let (iface, changes, _): (String, Dict, Vec<String>) = next(&mut props).await;
    assert_eq!(iface, MODEM);
    assert_eq!(get::<i32>(&changes, "State"), 3);
    assert!(h.list(&b).await.is_empty());
    let registration: u32 = h.property(&b, GPP, "RegistrationState").await;
    assert_eq!(registration, 0, "idle");

    h.set_state(B, 8).await;
    let again = h.list(&b).await;
    assert_eq!(again.len(), 1);
    assert_ne!(again[0], first, "new path after re-enable");
    assert_eq!(h.sms(&again[0]).await.text, "survives");

    // Modem.Enable walks through the intermediate states.
    let modem = h.proxy(&b, MODEM).await;
    modem
        .call::<_, _, ()>("Enable", &(false,))
        .await
        .expect("Enable(false)");
    assert_eq!(next::<(i32, i32, u32)>(&mut changed).await, (3, 8, 0));
    assert_eq!(next::<(i32, i32, u32)>(&mut changed).await, (8, 4, 1));
    assert_eq!(next::<(i32, i32, u32)>(&mut changed).await, (4, 3, 1));
    modem
        .call::<_, _, ()>("Enable", &(true,))
        .await
        .expect("Enable(true)");
    for (old, new) in [(3, 5), (5, 6), (6, 8)] {
        assert_eq!(next::<(i32, i32, u32)>(&mut changed).await, (old, new, 1));
    }
    let third = h.list(&b).await;
    assert_eq!(third.len(), 1);
    assert!(third[0] != again[0] && third[0] != first);
}

#[tokio::test]
async fn removing_and_adding_modems_is_announced() {
    let h = start_two().await;
    let manager = h.proxy(MANAGER, "org.freedesktop.DBus.ObjectManager").await;
    let mut removed = manager
        .receive_signal("InterfacesRemoved")
        .await
        .expect("stream");
    let mut added = manager
        .receive_signal("InterfacesAdded")
        .await
        .expect("stream");
    let control = h.control().await;

    control
        .call::<_, _, ()>("RemoveModem", &(modem_path(1),))
        .await
        .expect("RemoveModem");
    let mut gone = Vec::new();
    while !gone.contains(&MODEM.to_owned()) {
        let (path, ifaces) = next::<(OwnedObjectPath, Vec<String>)>(&mut removed).await;
        if path.as_str() == modem_path(1) {
            gone.extend(ifaces);
        }
    }
    let objects: Managed = manager
        .call("GetManagedObjects", &())
        .await
        .expect("objects");
    assert!(!objects.keys().any(|p| p.as_str() == modem_path(1)));

    let options = opts(&[
        ("sim-own-number", Variant::from(false)),
        ("state", Variant::from(3i32)),
    ]);
    let path: OwnedObjectPath = control
        .call("AddModem", &(B, options))
        .await
        .expect("AddModem");
    assert_eq!(path.as_str(), modem_path(2), "indices are never reused");
    let mut seen = Vec::new();
    while !seen.contains(&MODEM.to_owned()) {
        let (p, ifaces) = next::<(OwnedObjectPath, HashMap<String, Dict>)>(&mut added).await;
        if p == path {
            seen.extend(ifaces.into_keys());
        }
    }
    let state: i32 = h.property(path.as_str(), MODEM, "State").await;
    assert_eq!(state, 3);
    let result = control
        .call::<_, _, OwnedObjectPath>("AddModem", &(B, no_opts()))
        .await;
    assert_named(
        &result.unwrap_err(),
        "org.tandem.MMSim1.Error.InvalidArgument",
    );
}

#[tokio::test]
async fn unknown_modems_and_sms_are_named_errors() {
    let h = start_two().await;
    let control = h.control().await;
    for result in [
        control
            .call::<_, _, ()>("SetModemState", &("+19998887777", 8i32))
            .await,
        control
            .call::<_, _, ()>("RemoveModem", &("/org/freedesktop/ModemManager1/Modem/9",))
            .await,
        control
            .call::<_, _, ()>(
                "AddPart",
                &(zbus::ObjectPath::from_static_str_unchecked("/x/SMS/9"), "x"),
            )
            .await,
    ] {
        assert_named(&result.unwrap_err(), "org.tandem.MMSim1.Error.NotFound");
    }
    let result = control
        .call::<_, _, Vec<Dict>>("GetSent", &("nobody",))
        .await;
    assert_named(&result.unwrap_err(), "org.tandem.MMSim1.Error.NotFound");
}

#[tokio::test]
async fn carrier_stores_and_forwards_to_unregistered_or_absent_modems() {
    let h = start(&["--modem", A, "--modem", B, "--report-delay-ms", "50"]).await;
    let a = modem_path(0);
    let mut added_a = h.signals(&a, MESSAGING, "Added").await;

    h.set_state(B, 3).await;
    let out = h.create(&a, B, "are you there?", true).await;
    next::<(OwnedObjectPath, bool)>(&mut added_a).await;
    h.send(&out).await.expect("Send");
    let reference = h.sms(&out).await.reference;
    assert_quiet(&mut added_a, Duration::from_millis(300)).await;
    assert!(h.list_sms(B).await.is_empty(), "kept by the carrier");

    let b = modem_path(1);
    let mut added_b = h.signals(&b, MESSAGING, "Added").await;
    h.set_state(B, 8).await;
    let (incoming, _) = next::<(OwnedObjectPath, bool)>(&mut added_b).await;
    assert_eq!(h.sms(&incoming).await.text, "are you there?");
    let (report, _) = next::<(OwnedObjectPath, bool)>(&mut added_a).await;
    let report = h.sms(&report).await;
    assert_eq!((report.pdu_type, report.reference), (3, reference));

    // A removed modem gets it when a modem with its number is added again.
    h.control()
        .await
        .call::<_, _, ()>("RemoveModem", &(B,))
        .await
        .expect("RemoveModem");
    let out = h.create(&a, B, "after the swap", false).await;
    h.send(&out).await.expect("Send");
    let path: OwnedObjectPath = h
        .control()
        .await
        .call("AddModem", &(B, no_opts()))
        .await
        .expect("AddModem");
    eventually("stored SMS delivered", || async {
        !h.list(path.as_str()).await.is_empty()
    })
    .await;
    let list = h.list(path.as_str()).await;
    assert_eq!(h.sms(&list[0]).await.text, "after the swap");

    // Injected SMS to an unregistered modem wait as well.
    h.set_state(B, 7).await;
    let queued = h.inject(B, "+4912345", "later").await;
    assert_eq!(queued.as_str(), "/");
    h.set_state(B, 8).await;
    eventually("injected SMS delivered", || async {
        h.list(path.as_str()).await.len() == 2
    })
    .await;
}

#[tokio::test]
async fn sms_to_the_outside_world_is_recorded_and_reported() {
    let h = start(&["--modem", A, "--report-delay-ms", "20"]).await;
    let a = modem_path(0);
    let mut added_a = h.signals(&a, MESSAGING, "Added").await;
    let out = h.create(&a, "+1 999 555-0100", "hello world", true).await;
    next::<(OwnedObjectPath, bool)>(&mut added_a).await;
    h.send(&out).await.expect("Send");
    let (report, received) = next::<(OwnedObjectPath, bool)>(&mut added_a).await;
    assert!(received);
    let report = h.sms(&report).await;
    assert_eq!((report.pdu_type, report.delivery_state), (3, 0));
    assert_eq!(report.reference, h.sms(&out).await.reference);
    let sent: Vec<Dict> = h
        .control()
        .await
        .call("GetSent", &(a.as_str(),))
        .await
        .expect("GetSent");
    assert_eq!(get::<&str>(&sent[0], "number"), "+1 999 555-0100");

    // InjectStatusReport makes one on demand.
    let injected: OwnedObjectPath = h
        .control()
        .await
        .call("InjectStatusReport", &(A, "+15550009999", 42u32, 0x41u32))
        .await
        .expect("InjectStatusReport");
    let injected = h.sms(&injected).await;
    assert_eq!(
        (
            injected.pdu_type,
            injected.reference,
            injected.delivery_state,
            injected.number.as_str()
        ),
        (3, 42, 0x41, "+15550009999")
    );
}

#[tokio::test]
async fn create_refuses_bad_properties_like_modemmanager() {
    let h = start_two().await;
    let messaging = h.proxy(&modem_path(0), MESSAGING).await;
    let bad = opts(&[
        ("number", Variant::from(B)),
        ("txet", Variant::from("typo")),
    ]);
    let err = messaging
        .call::<_, _, OwnedObjectPath>("Create", &(bad,))
        .await
        .unwrap_err();
    assert_named(&err, "org.freedesktop.ModemManager1.Error.Core.InvalidArgs");
    assert!(
        h.address.starts_with("unix:"),
        "a private bus: {}",
        h.address
    );
}
