//! The ModemManager adapter against the real `tandem-mmsim` binary on a private bus: picking
//! a modem, its state and number, sending (and failing to), receiving single, multipart and
//! stored SMS and status reports, and following the simulator or a modem going away and
//! coming back. Each test has its own `dbus-daemon`; nothing touches the machine's buses.

mod common;

use std::time::Duration;

use common::{Bus, Dict, Sim, SimCtl, dict_str, get, opts, signal};
use tandem::domain::ModemState;
use tandem::modem::{
    self, ModemCommand, ModemConfig, ModemEvent, SendFailure, SendOutcome, SmsObject,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use zbus::{ObjectPath, OwnedObjectPath, Variant};

const A: &str = "+15550001111";
const B: &str = "+15550002222";
const C: &str = "+15550003333";

/// A private bus, the simulator on it, and the adapter under test.
struct Rig {
    address: String,
    sim: Sim,
    control: SimCtl,
    commands: Option<mpsc::Sender<ModemCommand>>,
    events: mpsc::Receiver<ModemEvent>,
    /// Events received while waiting for another one, in order.
    backlog: Vec<ModemEvent>,
    adapter: Option<JoinHandle<()>>,
    // Kept last: dropped (killed) after the simulator.
    _bus: Bus,
}

/// How long any one expected event may take.
const PATIENCE: Duration = Duration::from_secs(10);
/// How long we watch for an event that must not come.
const QUIET: Duration = Duration::from_millis(700);

impl Rig {
    /// A bus and the simulator hosting `modems` (`NUMBER[,flags]`), without the adapter.
    async fn new(modems: &[&str]) -> Rig {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("tandem::modem=debug")
            .try_init();
        let bus = Bus::start();
        let args: Vec<&str> = modems.iter().flat_map(|m| ["--modem", m]).collect();
        let sim = Sim::with_args(&bus.address, &args);
        let control = SimCtl::new(&bus.connect().await).await;
        let (_tx, events) = mpsc::channel(1);
        Rig {
            address: bus.address.clone(),
            sim,
            control,
            commands: None,
            events,
            backlog: Vec::new(),
            adapter: None,
            _bus: bus,
        }
    }

    /// The adapter on modem A, once it is registered.
    async fn registered() -> Rig {
        let mut rig = Rig::with_adapter(&[A], ModemConfig::default()).await;
        rig.state(ModemState::Registered).await;
        rig
    }

    /// [`Rig::new`], then the adapter.
    async fn with_adapter(modems: &[&str], config: ModemConfig) -> Rig {
        let mut rig = Rig::new(modems).await;
        rig.start_adapter(config).await;
        rig
    }

    async fn start_adapter(&mut self, config: ModemConfig) {
        let conn = zbus::connection::Builder::address(self.address.as_str())
            .build()
            .await
            .expect("adapter connection");
        let (commands, commands_rx) = mpsc::channel(16);
        let (events_tx, events) = mpsc::channel(16);
        self.adapter = Some(tokio::spawn(modem::run(
            config,
            conn,
            commands_rx,
            events_tx,
        )));
        self.commands = Some(commands);
        self.events = events;
    }

    async fn command(&self, command: ModemCommand) {
        let commands = self.commands.as_ref().expect("adapter running");
        commands.send(command).await.expect("adapter alive");
    }

    /// Starts sending: the first step, `Create`; [`Rig::send_result`] does the rest.
    async fn send(&self, id: &str, number: &str, text: &str, delivery_report: bool) {
        self.command(ModemCommand::Create {
            id: id.to_owned(),
            number: number.to_owned(),
            text: text.to_owned(),
            delivery_report,
        })
        .await;
    }

    /// The next event (not yet seen), failing after [`PATIENCE`].
    async fn next(&mut self) -> ModemEvent {
        if !self.backlog.is_empty() {
            return self.backlog.remove(0);
        }
        match timeout(PATIENCE, self.events.recv()).await {
            Ok(Some(event)) => event,
            Ok(None) => panic!("the adapter stopped"),
            Err(_) => panic!("no event within {PATIENCE:?}"),
        }
    }

    /// The first event `pick` accepts; the others stay in the backlog, in order.
    async fn wait_for<T>(&mut self, what: &str, pick: impl Fn(&ModemEvent) -> Option<T>) -> T {
        if let Some(i) = self.backlog.iter().position(|e| pick(e).is_some()) {
            let event = self.backlog.remove(i);
            return pick(&event).expect("picked");
        }
        let deadline = Instant::now() + PATIENCE;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(event)) => match pick(&event) {
                    Some(found) => return found,
                    None => self.backlog.push(event),
                },
                Ok(None) => panic!("the adapter stopped while waiting for {what}"),
                Err(_) => panic!("no {what} within {PATIENCE:?}; got {:#?}", self.backlog),
            }
        }
    }

    /// Fails if an event `pick` accepts comes within [`QUIET`].
    async fn assert_none(&mut self, what: &str, pick: impl Fn(&ModemEvent) -> bool) {
        if let Some(event) = self.backlog.iter().find(|e| pick(e)) {
            panic!("unexpected {what}: {event:?}");
        }
        let deadline = Instant::now() + QUIET;
        while let Ok(Some(event)) = tokio::time::timeout_at(deadline, self.events.recv()).await {
            assert!(!pick(&event), "unexpected {what}: {event:?}");
            self.backlog.push(event);
        }
    }

    async fn state(&mut self, expected: ModemState) {
        let got = self
            .wait_for("a state", |e| match e {
                ModemEvent::State(s) => Some(*s),
                _ => None,
            })
            .await;
        assert_eq!(got, expected, "backlog: {:#?}", self.backlog);
    }

    /// Skips state events until `expected` comes.
    async fn until_state(&mut self, expected: ModemState) {
        self.wait_for("a state", |e| {
            matches!(e, ModemEvent::State(s) if *s == expected).then_some(())
        })
        .await
    }

    async fn own_number(&mut self) -> Option<String> {
        self.wait_for("an own number", |e| match e {
            ModemEvent::OwnNumber(n) => Some(n.clone()),
            _ => None,
        })
        .await
    }

    async fn incoming(&mut self) -> modem::IncomingSms {
        self.wait_for("an incoming SMS", |e| match e {
            ModemEvent::Incoming(sms) => Some(sms.clone()),
            _ => None,
        })
        .await
    }

    /// Creates the SMS `id` to B without a delivery report: its object.
    async fn create(&mut self, id: &str, text: &str) -> SmsObject {
        self.send(id, B, text, false).await;
        self.created(id).await.expect("created")
    }

    /// Sends an object made earlier, within `budget`.
    async fn start_send(&self, id: &str, object: &SmsObject, budget: Duration) {
        self.command(ModemCommand::Send {
            id: id.to_owned(),
            object: object.clone(),
            budget,
        })
        .await;
    }

    /// The object made for `id` by `Create`, or how creating it ended.
    async fn created(&mut self, id: &str) -> Result<SmsObject, SendOutcome> {
        self.wait_for("a created SMS", |e| match e {
            ModemEvent::Created { id: got, object } if got == id => Some(Ok(object.clone())),
            ModemEvent::SendResult { id: got, outcome } if got == id => Some(Err(outcome.clone())),
            _ => None,
        })
        .await
    }

    /// How the command answered under `id` ended.
    async fn outcome(&mut self, id: &str) -> SendOutcome {
        self.wait_for("a send result", |e| match e {
            ModemEvent::SendResult { id: got, outcome } if got == id => Some(outcome.clone()),
            _ => None,
        })
        .await
    }

    /// The rest of a send begun by [`Rig::send`]: waits for the object, sends it (as the
    /// daemon does once it has recorded the object) and returns how it ended.
    async fn send_outcome(&mut self, id: &str, budget: Duration) -> SendOutcome {
        match self.created(id).await {
            Ok(object) => self.send_outcome_of(&object, id, budget).await,
            Err(outcome) => outcome,
        }
    }

    /// Sends an object made earlier with `budget`, and how it ended.
    async fn send_outcome_of(
        &mut self,
        object: &SmsObject,
        id: &str,
        budget: Duration,
    ) -> SendOutcome {
        self.start_send(id, object, budget).await;
        self.outcome(id).await
    }

    /// The answer to a send the modem tried; the reference must be known on success.
    async fn send_result(&mut self, id: &str) -> Result<u32, SendFailure> {
        match self.send_outcome(id, PATIENCE).await {
            SendOutcome::Sent { reference } => Ok(reference.expect("the reference of a sent SMS")),
            SendOutcome::NotSent(failure) => Err(failure),
            SendOutcome::Unknown { reason } => panic!("outcome unknown: {reason}"),
        }
    }

    /// The refusal of a send the adapter could not even try.
    async fn send_refused(&mut self, id: &str) -> String {
        self.wait_for("a refused send", |e| match e {
            ModemEvent::SendRefused { id: got, reason } if got == id => Some(reason.clone()),
            _ => None,
        })
        .await
    }

    /// Polls `ListSms` until `done` holds for the modem's stored SMS.
    async fn until_stored(&self, modem: &str, what: &str, done: impl Fn(&[Dict]) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let stored = self.control.list_sms(modem).await;
            if done(&stored) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: stored {stored:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Closes the command channel and expects the adapter to return.
    async fn stop_adapter(&mut self) {
        self.commands = None;
        if let Some(adapter) = self.adapter.take() {
            timeout(PATIENCE, adapter)
                .await
                .expect("the adapter returns once commands are closed")
                .expect("the adapter does not panic");
        }
    }
}

fn sms_states(stored: &[Dict]) -> Vec<u32> {
    stored.iter().map(|s| get::<u32>(s, "state")).collect()
}

#[tokio::test]
async fn picks_the_modem_and_follows_its_state() {
    let mut rig = Rig::with_adapter(&[A], ModemConfig::default()).await;
    // The number before the state: whoever sees `registered` sees the number too.
    assert_eq!(rig.next().await, ModemEvent::OwnNumber(Some(A.to_owned())));
    assert_eq!(rig.next().await, ModemEvent::State(ModemState::Registered));

    for (raw, expected) in [
        (3, ModemState::Disabled),
        (5, ModemState::Disabled),
        (6, ModemState::Searching),
        (7, ModemState::Searching),
        (11, ModemState::Registered),
        (2, ModemState::Locked),
        (-1, ModemState::Failed),
        (8, ModemState::Registered),
    ] {
        rig.control.set_modem_state(A, raw).await;
        // 3 → 5 and 6 → 7 change nothing the daemon sees: no event for them.
        if raw == 5 || raw == 7 {
            rig.assert_none("state event", |e| matches!(e, ModemEvent::State(_)))
                .await;
            continue;
        }
        assert_eq!(
            rig.next().await,
            ModemEvent::State(expected),
            "raw state {raw}"
        );
    }
    rig.stop_adapter().await;
}

#[tokio::test]
async fn own_number_is_none_when_the_sim_has_none() {
    let mut rig = Rig::with_adapter(&["+15550001111,nosimnumber"], ModemConfig::default()).await;
    rig.state(ModemState::Registered).await;
    assert_eq!(rig.own_number().await, None);
}

#[tokio::test]
async fn without_modem_manager_the_state_is_absent_and_sends_are_refused() {
    let mut rig = Rig::new(&[A]).await;
    rig.sim.kill();
    rig.start_adapter(ModemConfig::default()).await;
    assert_eq!(rig.next().await, ModemEvent::State(ModemState::Absent));
    rig.send("x", B, "hello", false).await;
    assert_eq!(rig.send_refused("x").await, "no modem");

    // ModemManager appears later.
    rig.sim.start_again();
    rig.state(ModemState::Registered).await;
    assert_eq!(rig.own_number().await, Some(A.to_owned()));
}

#[tokio::test]
async fn sends_and_deletes_the_sent_sms() {
    let mut rig = Rig::registered().await;

    rig.send("m1", B, "hello there", true).await;
    let object = rig.created("m1").await.expect("created");
    let SendOutcome::Sent {
        reference: Some(reference),
    } = rig.send_outcome_of(&object, "m1", PATIENCE).await
    else {
        panic!("not sent with a reference");
    };

    let sent = rig.control.get_sent(A).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(dict_str(&sent[0], "number"), B);
    assert_eq!(dict_str(&sent[0], "text"), "hello there");
    assert!(get::<bool>(&sent[0], "delivery-report"));
    assert_eq!(get::<u32>(&sent[0], "reference"), reference);

    // Kept until the daemon, having stored the outcome, says to remove it.
    let sent_objects = |stored: &[Dict]| sms_states(stored).into_iter().filter(|s| *s == 5).count();
    tokio::time::sleep(QUIET).await;
    assert_eq!(sent_objects(&rig.control.list_sms(A).await), 1);
    rig.command(ModemCommand::Discard { object }).await;
    rig.until_stored(A, "the sent SMS is deleted", |s| sent_objects(s) == 0)
        .await;

    // A second one gets the next reference.
    rig.send("m2", B, "again", false).await;
    let second = rig.send_result("m2").await.expect("sent");
    assert_ne!(second, reference);
    let sent = rig.control.get_sent(A).await;
    assert!(!get::<bool>(&sent[1], "delivery-report"));
}

#[tokio::test]
async fn keeps_the_sent_sms_unless_asked() {
    let mut rig = Rig::registered().await;
    rig.send("m1", B, "keep me", false).await;
    rig.send_result("m1").await.expect("sent");
    let stored = rig.control.list_sms(A).await;
    assert_eq!(sms_states(&stored), [5], "one SMS, sent");
}

#[tokio::test]
async fn failed_sends_are_classified_and_cleaned_up() {
    let mut rig = Rig::registered().await;

    rig.control
        .fail_next_send(
            A,
            "org.freedesktop.ModemManager1.Error.Message.NetworkTimeout",
            "Network timeout",
        )
        .await;
    let temporary = rig.create("t", "temporary").await;
    assert_eq!(
        rig.send_outcome_of(&temporary, "t", PATIENCE).await,
        SendOutcome::NotSent(SendFailure {
            temporary: true,
            reason: "network timeout".to_owned()
        })
    );

    rig.control
        .fail_next_send(
            A,
            "org.freedesktop.ModemManager1.Error.Core.InvalidArgs",
            "Invalid number",
        )
        .await;
    rig.send("f", "not a number", "final", false).await;
    let last = rig.created("f").await.expect("created");
    let SendOutcome::NotSent(failure) = rig.send_outcome_of(&last, "f", PATIENCE).await else {
        panic!("not a plain failure");
    };
    assert!(!failure.temporary, "{failure:?}");

    // Nothing was sent; both objects stay until the daemon says to remove them.
    assert!(rig.control.get_sent(A).await.is_empty());
    assert_eq!(rig.control.list_sms(A).await.len(), 2);
    for object in [temporary, last] {
        rig.command(ModemCommand::Discard {
            object: object.clone(),
        })
        .await;
        let discarded = rig
            .wait_for("discarded", |e| {
                let ModemEvent::Discarded { object } = e else {
                    return None;
                };
                Some(object.clone())
            })
            .await;
        assert_eq!(discarded, object);
    }
    rig.until_stored(A, "failed SMS are deleted", |s| s.is_empty())
        .await;

    // The modem still works.
    rig.send("ok", B, "fine", false).await;
    rig.send_result("ok").await.expect("sent");
}

#[tokio::test]
async fn refuses_to_send_while_not_registered() {
    let mut rig = Rig::registered().await;
    rig.control.set_modem_state(A, 3).await;
    rig.state(ModemState::Disabled).await;
    rig.send("d", B, "hello", false).await;
    assert_eq!(rig.send_refused("d").await, "modem not registered");
    assert!(rig.control.get_sent(A).await.is_empty());
}

#[tokio::test]
async fn receives_a_single_sms() {
    let mut rig = Rig::registered().await;
    let ts = Variant::from("2024-05-01T12:34:56+02");
    let injected = rig
        .control
        .inject_sms_with(A, C, "hi there", opts(&[("timestamp", ts)]))
        .await;

    let sms = rig.incoming().await;
    assert_eq!(sms.path, injected);
    assert_eq!(sms.number, C);
    assert_eq!(sms.text, "hi there");
    assert_eq!(sms.smsc_timestamp, "2024-05-01T12:34:56+02");
    assert_eq!(sms.timestamp_ms, Some(1_714_559_696_000));
    assert!(!sms.listed, "announced by Added while watched");
    rig.assert_none("second report", |e| matches!(e, ModemEvent::Incoming(_)))
        .await;
}

#[tokio::test]
async fn reports_a_multipart_sms_once_complete() {
    let mut rig = Rig::registered().await;

    let sms = rig.control.begin_multipart(A, C, 3).await;
    rig.control.add_part(&sms, "one, ").await;
    rig.control.add_part(&sms, "two, ").await;
    rig.assert_none("incomplete SMS", |e| matches!(e, ModemEvent::Incoming(_)))
        .await;
    rig.control.add_part(&sms, "three").await;
    let got = rig.incoming().await;
    assert_eq!((got.path, got.text.as_str()), (sms, "one, two, three"));
    rig.assert_none("second report", |e| matches!(e, ModemEvent::Incoming(_)))
        .await;

    // The carrier's own multipart delivery.
    let parts = Variant::from(3u32);
    let text = "a long message cut in three parts by the network";
    rig.control
        .inject_sms_with(A, B, text, opts(&[("parts", parts)]))
        .await;
    assert_eq!(rig.incoming().await.text, text);
    rig.assert_none("second report", |e| matches!(e, ModemEvent::Incoming(_)))
        .await;
}

#[tokio::test]
async fn reports_sms_present_at_start_once() {
    let mut rig = Rig::new(&[A]).await;
    let first = rig.control.inject_sms(A, B, "waiting for you").await;
    let partial = rig.control.begin_multipart(A, C, 2).await;
    rig.control.add_part(&partial, "half ").await;

    rig.start_adapter(ModemConfig::default()).await;
    rig.state(ModemState::Registered).await;
    let got = rig.incoming().await;
    assert_eq!((&got.path, got.text.as_str()), (&first, "waiting for you"));
    assert!(got.listed, "on the modem before the adapter watched");
    rig.assert_none("incomplete or repeated SMS", |e| {
        matches!(e, ModemEvent::Incoming(_))
    })
    .await;

    rig.control.add_part(&partial, "and half").await;
    let got = rig.incoming().await;
    assert_eq!((&got.path, got.text.as_str()), (&partial, "half and half"));
}

#[tokio::test]
async fn reports_status_reports() {
    let mut rig = Rig::with_adapter(&[A, B], ModemConfig::default()).await;
    rig.state(ModemState::Registered).await;
    assert_eq!(rig.own_number().await, Some(A.to_owned()));

    let injected = rig.control.inject_status_report(A, C, 42, 0).await;
    let report = rig
        .wait_for("a status report", |e| match e {
            ModemEvent::StatusReport(r) => Some(r.clone()),
            _ => None,
        })
        .await;
    assert_eq!(
        report,
        modem::StatusReport {
            path: injected,
            number: C.to_owned(),
            reference: 42,
            delivery_state: 0,
        }
    );

    // End to end: B receives our SMS, the carrier reports it delivered.
    rig.send("r", B, "report this", true).await;
    let reference = rig.send_result("r").await.expect("sent");
    let report = rig
        .wait_for("the status report", |e| match e {
            ModemEvent::StatusReport(r) => Some(r.clone()),
            _ => None,
        })
        .await;
    assert_eq!(report.reference, reference);
    assert_eq!(report.delivery_state, 0, "completed-received");
}

#[tokio::test]
async fn follows_the_simulator_going_away_and_coming_back() {
    let mut rig = Rig::registered().await;
    assert_eq!(rig.own_number().await, Some(A.to_owned()));

    rig.sim.kill();
    rig.state(ModemState::Absent).await;
    // The SIM's number went with it.
    assert_eq!(rig.own_number().await, None);
    rig.send("gone", B, "anyone?", false).await;
    assert_eq!(rig.send_refused("gone").await, "no modem");

    rig.sim.start_again();
    rig.state(ModemState::Registered).await;
    assert_eq!(rig.own_number().await, Some(A.to_owned()));

    // Paths start again from the beginning in the new instance: still reported.
    rig.control.inject_sms(A, C, "after restart").await;
    assert_eq!(rig.incoming().await.text, "after restart");
    rig.send("back", B, "hello again", false).await;
    rig.send_result("back").await.expect("sent");
}

#[tokio::test]
async fn follows_the_modem_being_removed_and_added() {
    let mut rig = Rig::registered().await;
    assert_eq!(rig.own_number().await, Some(A.to_owned()));

    rig.control.remove_modem(A).await;
    rig.state(ModemState::Absent).await;
    assert_eq!(
        rig.own_number().await,
        None,
        "the number left with the modem"
    );

    let state = Variant::from(3i32);
    rig.control
        .add_modem_with(A, opts(&[("state", state)]))
        .await;
    rig.state(ModemState::Disabled).await;
    assert_eq!(rig.own_number().await, Some(A.to_owned()));
    rig.control.set_modem_state(A, 8).await;
    rig.state(ModemState::Registered).await;
    rig.send("s", B, "hi", false).await;
    rig.send_result("s").await.expect("sent");
}

#[tokio::test]
async fn uses_the_configured_modem() {
    let config = ModemConfig {
        modem: Some(B.to_owned()),
    };
    let mut rig = Rig::with_adapter(&[A, B], config).await;
    rig.state(ModemState::Registered).await;
    assert_eq!(rig.own_number().await, Some(B.to_owned()));

    rig.send("s", C, "from B", false).await;
    rig.send_result("s").await.expect("sent");
    assert_eq!(rig.control.get_sent(B).await.len(), 1);
    assert!(rig.control.get_sent(A).await.is_empty());

    // SMS to the other modem are not ours.
    rig.control.inject_sms(A, C, "for A").await;
    rig.control.inject_sms(B, C, "for B").await;
    assert_eq!(rig.incoming().await.text, "for B");
    rig.assert_none("SMS of the other modem", |e| {
        matches!(e, ModemEvent::Incoming(_))
    })
    .await;
}

#[tokio::test]
async fn waits_for_the_configured_modem() {
    let config = ModemConfig {
        modem: Some(B.to_owned()),
    };
    let mut rig = Rig::with_adapter(&[A], config).await;
    assert_eq!(rig.next().await, ModemEvent::State(ModemState::Absent));
    rig.control.add_modem(B).await;
    rig.state(ModemState::Registered).await;
    assert_eq!(rig.own_number().await, Some(B.to_owned()));
}

#[tokio::test]
async fn a_blocked_delete_does_not_freeze_the_adapter() {
    let mut rig = Rig::registered().await;
    rig.control.inject_sms(A, C, "delete me").await;
    let first = rig.incoming().await;

    rig.control.set_delete_blocked(A, true).await;
    rig.command(ModemCommand::Delete {
        path: first.path.clone(),
    })
    .await;
    rig.send("s", B, "still sending", false).await;
    rig.send_result("s")
        .await
        .expect("sent while a delete hangs");
    rig.control.inject_sms(A, C, "still receiving").await;
    assert_eq!(rig.incoming().await.text, "still receiving");

    rig.control.set_delete_blocked(A, false).await;
    let gone = first.path.clone();
    rig.until_stored(A, "the first SMS is deleted", |stored| {
        stored
            .iter()
            .all(|s| s["path"].downcast_ref::<ObjectPath<'_>>().expect("path") != gone.as_ref())
    })
    .await;
}

#[tokio::test]
async fn deletes_and_ignores_unknown_paths() {
    let mut rig = Rig::registered().await;
    let unknown = OwnedObjectPath::try_from("/org/freedesktop/ModemManager1/SMS/999").unwrap();
    rig.command(ModemCommand::Delete { path: unknown }).await;

    rig.control.inject_sms(A, C, "short-lived").await;
    let sms = rig.incoming().await;
    rig.command(ModemCommand::Delete { path: sms.path }).await;
    rig.until_stored(A, "deleted", |s| s.is_empty()).await;

    rig.send("s", B, "still fine", false).await;
    rig.send_result("s").await.expect("sent");
}

#[tokio::test]
async fn re_enabling_lists_the_sms_again_under_new_paths() {
    let mut rig = Rig::registered().await;
    rig.control.inject_sms(A, C, "kept on the SIM").await;
    let before = rig.incoming().await;

    rig.control.set_modem_state(A, 3).await;
    rig.state(ModemState::Disabled).await;
    rig.control.set_modem_state(A, 8).await;
    rig.state(ModemState::Registered).await;
    let after = rig.incoming().await;
    assert_eq!(after.text, before.text);
    assert_ne!(after.path, before.path);
    rig.assert_none("a third report", |e| matches!(e, ModemEvent::Incoming(_)))
        .await;
}

#[tokio::test]
async fn stops_when_commands_close_and_answers_every_send() {
    let mut rig = Rig::registered().await;
    rig.send("last", B, "bye", false).await;
    rig.stop_adapter().await;
    // Created or stopped: answered exactly once either way.
    let mut answers = 0;
    while let Ok(Some(event)) = timeout(QUIET, rig.events.recv()).await {
        if matches!(&event, ModemEvent::SendResult { id, .. } | ModemEvent::Created { id, .. } if id == "last")
        {
            answers += 1;
        }
    }
    assert_eq!(answers, 1);
}

#[tokio::test]
async fn a_send_cut_short_by_stopping_is_answered() {
    let mut rig = Rig::registered().await;
    // A frozen ModemManager: the send hangs in Messaging.Create.
    signal(rig.sim.pid(), "-STOP");
    rig.send("hang", B, "stuck", false).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    rig.stop_adapter().await;
    assert_eq!(
        rig.send_result("hang").await,
        Err(SendFailure {
            temporary: true,
            reason: "adapter stopped".to_owned()
        })
    );
    // Dropping the rig kills the stopped simulator (SIGKILL needs no SIGCONT).
}

// ----- exactly once: what the adapter says of a send it cannot see through -----

#[tokio::test]
async fn a_sent_object_is_found_sent_by_resolve() {
    let mut rig = Rig::registered().await;
    let object = rig.create("m", "gone out").await;
    rig.start_send("m", &object, PATIENCE).await;
    // (The adapter never deletes on its own: the sent object stays, as after a crash.)
    let SendOutcome::Sent { reference } = rig.outcome("m").await else {
        panic!("not sent");
    };
    rig.command(ModemCommand::Resolve {
        id: "again".into(),
        object,
        settle_until: Instant::now() + PATIENCE,
    })
    .await;
    assert_eq!(rig.outcome("again").await, SendOutcome::Sent { reference });
    let sent = rig.control.get_sent(A).await;
    assert_eq!(sent.len(), 1, "sent once");
}

#[tokio::test]
async fn an_object_never_sent_resolves_unsent_once_settled() {
    let mut rig = Rig::registered().await;
    let object = rig.create("m", "created, then a crash").await;
    let started = Instant::now();
    rig.command(ModemCommand::Resolve {
        id: "m".into(),
        object,
        settle_until: started + Duration::from_millis(1200),
    })
    .await;
    assert!(matches!(rig.outcome("m").await, SendOutcome::NotSent(_)));
    assert!(
        started.elapsed() >= Duration::from_millis(1200),
        "it waited for a send that might still be running"
    );
    assert_eq!(
        sms_states(&rig.control.list_sms(A).await),
        vec![0],
        "still there, unsent: the daemon removes it once it has stored that"
    );
    assert!(rig.control.get_sent(A).await.is_empty());
}

#[tokio::test]
async fn a_send_still_running_when_resolved_is_found_sent() {
    let mut rig = Rig::registered().await;
    rig.control.set_send_delay(A, 800).await;
    let object = rig.create("m", "slow network").await;
    // The budget is shorter than the modem takes: no answer in time, but the object is
    // watched as long again, and it turns `sent`.
    let outcome = rig
        .send_outcome_of(&object, "m", Duration::from_millis(500))
        .await;
    assert!(matches!(outcome, SendOutcome::Sent { .. }), "{outcome:?}");
    assert_eq!(rig.control.get_sent(A).await.len(), 1);
}

#[tokio::test]
async fn modem_manager_dying_during_a_send_leaves_its_outcome_unknown() {
    let mut rig = Rig::registered().await;
    rig.control.set_send_delay(A, 5000).await;
    let object = rig.create("m", "in the air").await;
    rig.start_send("m", &object, PATIENCE).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    rig.sim.kill();
    assert!(matches!(
        rig.outcome("m").await,
        SendOutcome::Unknown { .. }
    ));
    // A new ModemManager reuses the path for another SMS: the object is asked at the
    // instance that made it, so it is gone, never mistaken for the new one.
    rig.sim.start_again();
    rig.until_state(ModemState::Registered).await;
    let new = rig.create("n", "a new one").await;
    assert_eq!(
        new.path, object.path,
        "the simulator reuses paths, as ModemManager"
    );
    assert_ne!(new.owner, object.owner);
    rig.command(ModemCommand::Resolve {
        id: "old".into(),
        object,
        settle_until: Instant::now() + PATIENCE,
    })
    .await;
    assert!(matches!(
        rig.outcome("old").await,
        SendOutcome::Unknown { .. }
    ));
    // A Send of an object from the old instance is refused without being tried.
    rig.command(ModemCommand::Send {
        id: "stale".into(),
        object: SmsObject {
            owner: ":1.9999".into(),
            ..new.clone()
        },
        budget: PATIENCE,
    })
    .await;
    assert!(matches!(
        rig.outcome("stale").await,
        SendOutcome::NotSent(_)
    ));
    assert!(rig.control.get_sent(A).await.is_empty());
}

#[tokio::test]
async fn unsent_objects_of_an_earlier_run_are_reported_as_drafts() {
    let mut rig = Rig::registered().await;
    let orphan = rig.create("m", "left behind").await;
    // This run made it: never reported as a draft.
    rig.assert_none("a draft", |e| matches!(e, ModemEvent::Draft { .. }))
        .await;
    rig.stop_adapter().await;
    rig.start_adapter(ModemConfig::default()).await;
    rig.state(ModemState::Registered).await;
    let (object, number, text) = rig
        .wait_for("a draft", |e| match e {
            ModemEvent::Draft {
                object,
                number,
                text,
            } => Some((object.clone(), number.clone(), text.clone())),
            _ => None,
        })
        .await;
    assert_eq!(
        (object, number.as_str(), text.as_str()),
        (orphan.clone(), B, "left behind")
    );
    rig.command(ModemCommand::Discard { object: orphan }).await;
    rig.until_stored(A, "the orphan is removed", |s| s.is_empty())
        .await;
}
