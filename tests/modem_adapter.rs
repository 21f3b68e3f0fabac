//! The ModemManager adapter against the real `tandem-mmsim` binary on a private bus: picking
//! a modem, its state and number, sending (and failing to), receiving single, multipart and
//! stored SMS and status reports, and following the simulator or a modem going away and
//! coming back. Each test has its own `dbus-daemon`; nothing touches the machine's buses.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tandem::devbus::PrivateBus;
use tandem::domain::ModemState;
use tandem::modem::{
    self, ModemCommand, ModemConfig, ModemEvent, SendFailure, SendOutcome, SmsObject,
};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, timeout};
use zbus::{ObjectPath, OwnedObjectPath, OwnedVariant, Variant};

const A: &str = "+15550001111";
const B: &str = "+15550002222";
const C: &str = "+15550003333";
/// How long any one expected event may take.
const PATIENCE: Duration = Duration::from_secs(10);
/// How long we watch for an event that must not come.
const QUIET: Duration = Duration::from_millis(700);

#[zbus::proxy(
    interface = "org.tandem.MMSim1",
    default_service = "org.tandem.MMSim1",
    default_path = "/org/tandem/MMSim1"
)]
trait MMSim {
    fn add_modem(
        &self,
        own_number: &str,
        options: HashMap<&str, &Variant<'_>>,
    ) -> zbus::Result<OwnedObjectPath>;
    fn remove_modem(&self, modem: &str) -> zbus::Result<()>;
    fn set_modem_state(&self, modem: &str, state: i32) -> zbus::Result<()>;
    fn inject_sms(
        &self,
        modem: &str,
        from: &str,
        text: &str,
        options: HashMap<&str, &Variant<'_>>,
    ) -> zbus::Result<OwnedObjectPath>;
    fn begin_multipart(
        &self,
        modem: &str,
        from: &str,
        total_parts: u32,
    ) -> zbus::Result<OwnedObjectPath>;
    fn add_part(&self, sms: &ObjectPath<'_>, text: &str) -> zbus::Result<()>;
    fn inject_status_report(
        &self,
        modem: &str,
        number: &str,
        reference: u32,
        delivery_state: u32,
    ) -> zbus::Result<OwnedObjectPath>;
    fn get_sent(&self, modem: &str) -> zbus::Result<Vec<HashMap<String, OwnedVariant>>>;
    fn list_sms(&self, modem: &str) -> zbus::Result<Vec<HashMap<String, OwnedVariant>>>;
    fn fail_next_send(&self, modem: &str, error_name: &str, message: &str) -> zbus::Result<()>;
    fn set_delete_blocked(&self, modem: &str, blocked: bool) -> zbus::Result<()>;
    fn set_send_delay(&self, modem: &str, ms: u32) -> zbus::Result<()>;
}

/// A child process that is killed when dropped, with its stderr in a file that is printed
/// when the test fails.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `cmd` and returns it with the first line of its stdout.
    async fn start(name: &'static str, mut cmd: Command, log: PathBuf) -> (Proc, String) {
        let stderr = std::fs::File::create(&log).expect("log file");
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let stdout = child.stdout.take().expect("piped stdout");
        let line = tokio::task::spawn_blocking(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            reader.read_line(&mut line).map(|_| line)
        });
        let line = timeout(PATIENCE, line)
            .await
            .unwrap_or_else(|_| panic!("{name} did not start"))
            .expect("join")
            .expect("read stdout");
        let proc = Proc { name, child, log };
        assert!(!line.is_empty(), "{name} exited: {}", proc.log_text());
        (proc, line.trim().to_owned())
    }

    fn log_text(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("----- {} log -----\n{}", self.name, self.log_text());
        }
    }
}

/// A private bus, the simulator on it, and the adapter under test.
struct Rig {
    dir: tempfile::TempDir,
    address: String,
    sim: Option<Proc>,
    sim_starts: u32,
    sim_args: Vec<String>,
    control: MMSimProxy<'static>,
    commands: Option<mpsc::Sender<ModemCommand>>,
    events: mpsc::Receiver<ModemEvent>,
    /// Events received while waiting for another one, in order.
    backlog: Vec<ModemEvent>,
    adapter: Option<JoinHandle<()>>,
    // Kept last: dropped (killed) after the simulator.
    _bus: PrivateBus,
}

impl Rig {
    /// A bus and the simulator hosting `modems` (`NUMBER[,flags]`), without the adapter.
    async fn new(modems: &[&str]) -> Rig {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter("tandem::modem=debug")
            .try_init();
        let dir = tempfile::tempdir().expect("tempdir");
        let bus = PrivateBus::start().expect("a private dbus-daemon");
        let address = bus.address().to_owned();

        let conn = zbus::connection::Builder::address(address.as_str())
            .build()
            .await
            .expect("connect to the private bus");
        let control = MMSimProxy::new(&conn).await.expect("control proxy");
        let (_tx, events) = mpsc::channel(1);
        let mut rig = Rig {
            dir,
            address,
            sim: None,
            sim_starts: 0,
            sim_args: modems
                .iter()
                .flat_map(|m| ["--modem".to_owned(), m.to_string()])
                .collect(),
            control,
            commands: None,
            events,
            backlog: Vec::new(),
            adapter: None,
            _bus: bus,
        };
        rig.start_sim().await;
        rig
    }

    /// [`Rig::new`], then the adapter.
    async fn with_adapter(modems: &[&str], config: ModemConfig) -> Rig {
        let mut rig = Rig::new(modems).await;
        rig.start_adapter(config).await;
        rig
    }

    async fn start_sim(&mut self) {
        self.sim_starts += 1;
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tandem-mmsim"));
        cmd.arg("--bus").arg(&self.address).args(&self.sim_args);
        let log = self
            .dir
            .path()
            .join(format!("mmsim-{}.log", self.sim_starts));
        let (sim, line) = Proc::start("tandem-mmsim", cmd, log).await;
        assert_eq!(line, "ready", "tandem-mmsim said: {}", sim.log_text());
        self.sim = Some(sim);
    }

    fn kill_sim(&mut self) {
        if let Some(mut sim) = self.sim.take() {
            let _ = sim.child.kill();
            let _ = sim.child.wait();
        }
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
        let object = match self.created(id).await {
            Ok(object) => object,
            Err(outcome) => return outcome,
        };
        self.command(ModemCommand::Send {
            id: id.to_owned(),
            object,
            budget,
        })
        .await;
        self.outcome(id).await
    }

    /// Sends an object made earlier with `budget`, and how it ended.
    async fn send_outcome_of(
        &mut self,
        object: &SmsObject,
        id: &str,
        budget: Duration,
    ) -> SendOutcome {
        self.command(ModemCommand::Send {
            id: id.to_owned(),
            object: object.clone(),
            budget,
        })
        .await;
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
    async fn until_stored(
        &self,
        modem: &str,
        what: &str,
        done: impl Fn(&[HashMap<String, OwnedVariant>]) -> bool,
    ) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let stored = self.control.list_sms(modem).await.expect("ListSms");
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

fn options<'a>(entries: &'a [(&'a str, Variant<'a>)]) -> HashMap<&'a str, &'a Variant<'a>> {
    entries.iter().map(|(k, v)| (*k, v)).collect()
}

fn get<'a, T>(dict: &'a HashMap<String, OwnedVariant>, key: &str) -> T
where
    T: TryFrom<&'a OwnedVariant>,
    <T as TryFrom<&'a OwnedVariant>>::Error: std::fmt::Debug,
{
    T::try_from(&dict[key]).expect(key)
}

fn get_str(dict: &HashMap<String, OwnedVariant>, key: &str) -> String {
    dict[key].downcast_ref::<&str>().expect(key).to_owned()
}

fn path(p: &OwnedObjectPath) -> ObjectPath<'_> {
    p.as_ref()
}

fn sms_states(stored: &[HashMap<String, OwnedVariant>]) -> Vec<u32> {
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
        rig.control
            .set_modem_state(A, raw)
            .await
            .expect("SetModemState");
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
    rig.kill_sim();
    rig.start_adapter(ModemConfig::default()).await;
    assert_eq!(rig.next().await, ModemEvent::State(ModemState::Absent));
    rig.send("x", B, "hello", false).await;
    assert_eq!(rig.send_refused("x").await, "no modem");

    // ModemManager appears later.
    rig.start_sim().await;
    rig.state(ModemState::Registered).await;
    assert_eq!(rig.own_number().await, Some(A.to_owned()));
}

#[tokio::test]
async fn sends_and_deletes_the_sent_sms() {
    let mut rig = Rig::with_adapter(&[A], ModemConfig::default()).await;
    rig.state(ModemState::Registered).await;

    rig.send("m1", B, "hello there", true).await;
    let object = rig.created("m1").await.expect("created");
    let SendOutcome::Sent {
        reference: Some(reference),
    } = rig.send_outcome_of(&object, "m1", PATIENCE).await
    else {
        panic!("not sent with a reference");
    };

    let sent = rig.control.get_sent(A).await.expect("GetSent");
    assert_eq!(sent.len(), 1);
    assert_eq!(get_str(&sent[0], "number"), B);
    assert_eq!(get_str(&sent[0], "text"), "hello there");
    assert!(get::<bool>(&sent[0], "delivery-report"));
    assert_eq!(get::<u32>(&sent[0], "reference"), reference);

    // Kept until the daemon, having stored the outcome, says to remove it.
    let sent_objects = |stored: &[HashMap<String, OwnedVariant>]| {
        sms_states(stored).into_iter().filter(|s| *s == 5).count()
    };
    tokio::time::sleep(QUIET).await;
    assert_eq!(
        sent_objects(&rig.control.list_sms(A).await.expect("ListSms")),
        1
    );
    rig.command(ModemCommand::Discard { object }).await;
    rig.until_stored(A, "the sent SMS is deleted", |s| sent_objects(s) == 0)
        .await;

    // A second one gets the next reference.
    rig.send("m2", B, "again", false).await;
    let second = rig.send_result("m2").await.expect("sent");
    assert_ne!(second, reference);
    let sent = rig.control.get_sent(A).await.expect("GetSent");
    assert!(!get::<bool>(&sent[1], "delivery-report"));
}

#[tokio::test]
async fn keeps_the_sent_sms_unless_asked() {
    let mut rig = Rig::with_adapter(&[A], ModemConfig::default()).await;
    rig.state(ModemState::Registered).await;
    rig.send("m1", B, "keep me", false).await;
    rig.send_result("m1").await.expect("sent");
    let stored = rig.control.list_sms(A).await.expect("ListSms");
    assert_eq!(sms_states(&stored), [5], "one SMS, sent");
}

#[tokio::test]
async fn failed_sends_are_classified_and_cleaned_up() {
    let mut rig = Rig::with_adapter(&[A], ModemConfig::default()).await;
    rig.state(ModemState::Registered).await;

    rig.control
        .fail_next_send(
            A,
            "org.freedesktop.ModemManager1.Error.Message.NetworkTimeout",
            "Network timeout",
        )
        .await
        .expect("FailNextSend");
    rig.send("t", B, "temporary", false).await;
    let temporary = rig.created("t").await.expect("created");
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
        .await
        .expect("FailNextSend");
    rig.send("f", "not a number", "final", false).await;
    let last = rig.created("f").await.expect("created");
    let SendOutcome::NotSent(failure) = rig.send_outcome_of(&last, "f", PATIENCE).await else {
        panic!("not a plain failure");
    };
    assert!(!failure.temporary, "{failure:?}");

    // Nothing was sent; both objects stay until the daemon says to remove them.
    assert!(rig.control.get_sent(A).await.expect("GetSent").is_empty());
    assert_eq!(rig.control.list_sms(A).await.expect("ListSms").len(), 2);
    for object in [temporary, last] {
        rig.command(ModemCommand::Discard {
            object: object.clone(),
        })
        .await;
        let discarded = rig
            .wait_for("discarded", |e| match e {
                ModemEvent::Discarded { object } => Some(object.clone()),
                _ => None,
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
    let mut rig = Rig::with_adapter(&[A], ModemConfig::default()).await;
    rig.state(ModemState::Registered).await;
    rig.control
        .set_modem_state(A, 3)
        .await
        .expect("SetModemState");
    rig.state(ModemState::Disabled).await;
    rig.send("d", B, "hello", false).await;
    assert_eq!(rig.send_refused("d").await, "modem not registered");
    assert!(rig.control.get_sent(A).await.expect("GetSent").is_empty());
}

#[tokio::test]
async fn receives_a_single_sms() {
    let mut rig = Rig::with_adapter(&[A], ModemConfig::default()).await;
    rig.state(ModemState::Registered).await;
    let ts = Variant::from("2024-05-01T12:34:56+02");
    let injected = rig
        .control
        .inject_sms(A, C, "hi there", options(&[("timestamp", ts)]))
        .await
        .expect("InjectSms");

    let sms = rig.incoming().await;
    assert_eq!(sms.path, injected);
    assert_eq!(sms.number, C);
    assert_eq!(sms.text, "hi there");
    assert_eq!(sms.smsc_timestamp, "2024-05-01T12:34:56+02");
    assert_eq!(sms.timestamp_ms, Some(1_714_559_696_000));
    rig.assert_none("second report", |e| matches!(e, ModemEvent::Incoming(_)))
        .await;
}

#[tokio::test]
async fn reports_a_multipart_sms_once_complete() {
    let mut rig = Rig::with_adapter(&[A], ModemConfig::default()).await;
    rig.state(ModemState::Registered).await;

    let sms = rig
        .control
        .begin_multipart(A, C, 3)
        .await
        .expect("BeginMultipart");
    rig.control
        .add_part(&path(&sms), "one, ")
        .await
        .expect("part");
    rig.control
        .add_part(&path(&sms), "two, ")
        .await
        .expect("part");
    rig.assert_none("incomplete SMS", |e| matches!(e, ModemEvent::Incoming(_)))
        .await;
    rig.control
        .add_part(&path(&sms), "three")
        .await
        .expect("part");
    let got = rig.incoming().await;
    assert_eq!((got.path, got.text.as_str()), (sms, "one, two, three"));
    rig.assert_none("second report", |e| matches!(e, ModemEvent::Incoming(_)))
        .await;

    // The carrier's own multipart delivery.
    let parts = Variant::from(3u32);
    let text = "a long message cut in three parts by the network";
    rig.control
        .inject_sms(A, B, text, options(&[("parts", parts)]))
        .await
        .expect("InjectSms");
    assert_eq!(rig.incoming().await.text, text);
    rig.assert_none("second report", |e| matches!(e, ModemEvent::Incoming(_)))
        .await;
}

#[tokio::test]
async fn reports_sms_present_at_start_once() {
    let mut rig = Rig::new(&[A]).await;
    let first = rig
        .control
        .inject_sms(A, B, "waiting for you", HashMap::new())
        .await
        .expect("InjectSms");
    let partial = rig.control.begin_multipart(A, C, 2).await.expect("begin");
    rig.control
        .add_part(&path(&partial), "half ")
        .await
        .expect("part");

    rig.start_adapter(ModemConfig::default()).await;
    rig.state(ModemState::Registered).await;
    let got = rig.incoming().await;
    assert_eq!((&got.path, got.text.as_str()), (&first, "waiting for you"));
    rig.assert_none("incomplete or repeated SMS", |e| {
        matches!(e, ModemEvent::Incoming(_))
    })
    .await;

    rig.control
        .add_part(&path(&partial), "and half")
        .await
        .expect("part");
    let got = rig.incoming().await;
    assert_eq!((&got.path, got.text.as_str()), (&partial, "half and half"));
}

#[tokio::test]
async fn reports_status_reports() {
    let mut rig = Rig::with_adapter(&[A, B], ModemConfig::default()).await;
    rig.state(ModemState::Registered).await;
    assert_eq!(rig.own_number().await, Some(A.to_owned()));

    let injected = rig
        .control
        .inject_status_report(A, C, 42, 0)
        .await
        .expect("InjectStatusReport");
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
    let mut rig = Rig::with_adapter(&[A], ModemConfig::default()).await;
    rig.state(ModemState::Registered).await;
    assert_eq!(rig.own_number().await, Some(A.to_owned()));

    rig.kill_sim();
    rig.state(ModemState::Absent).await;
    // The SIM's number went with it.
    assert_eq!(rig.own_number().await, None);
    rig.send("gone", B, "anyone?", false).await;
    assert_eq!(rig.send_refused("gone").await, "no modem");

    rig.start_sim().await;
    rig.state(ModemState::Registered).await;
    assert_eq!(rig.own_number().await, Some(A.to_owned()));

    // Paths start again from the beginning in the new instance: still reported.
    rig.control
        .inject_sms(A, C, "after restart", HashMap::new())
        .await
        .expect("InjectSms");
    assert_eq!(rig.incoming().await.text, "after restart");
    rig.send("back", B, "hello again", false).await;
    rig.send_result("back").await.expect("sent");
}

#[tokio::test]
async fn follows_the_modem_being_removed_and_added() {
    let mut rig = Rig::with_adapter(&[A], ModemConfig::default()).await;
    rig.state(ModemState::Registered).await;
    assert_eq!(rig.own_number().await, Some(A.to_owned()));

    rig.control.remove_modem(A).await.expect("RemoveModem");
    rig.state(ModemState::Absent).await;
    assert_eq!(
        rig.own_number().await,
        None,
        "the number left with the modem"
    );

    let state = Variant::from(3i32);
    rig.control
        .add_modem(A, options(&[("state", state)]))
        .await
        .expect("AddModem");
    rig.state(ModemState::Disabled).await;
    assert_eq!(rig.own_number().await, Some(A.to_owned()));
    rig.control
        .set_modem_state(A, 8)
        .await
        .expect("SetModemState");
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
    assert_eq!(rig.control.get_sent(B).await.expect("GetSent").len(), 1);
    assert!(rig.control.get_sent(A).await.expect("GetSent").is_empty());

    // SMS to the other modem are not ours.
    rig.control
        .inject_sms(A, C, "for A", HashMap::new())
        .await
        .expect("InjectSms");
    rig.control
        .inject_sms(B, C, "for B", HashMap::new())
        .await
        .expect("InjectSms");
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
    rig.control
        .add_modem(B, HashMap::new())
        .await
        .expect("AddModem");
    rig.state(ModemState::Registered).await;
    assert_eq!(rig.own_number().await, Some(B.to_owned()));
}

#[tokio::test]
async fn a_blocked_delete_does_not_freeze_the_adapter() {
    let mut rig = Rig::with_adapter(&[A], ModemConfig::default()).await;
    rig.state(ModemState::Registered).await;
    rig.control
        .inject_sms(A, C, "delete me", HashMap::new())
        .await
        .expect("InjectSms");
    let first = rig.incoming().await;

    rig.control
        .set_delete_blocked(A, true)
        .await
        .expect("block");
    rig.command(ModemCommand::Delete {
        path: first.path.clone(),
    })
    .await;
    rig.send("s", B, "still sending", false).await;
    rig.send_result("s")
        .await
        .expect("sent while a delete hangs");
    rig.control
        .inject_sms(A, C, "still receiving", HashMap::new())
        .await
        .expect("InjectSms");
    assert_eq!(rig.incoming().await.text, "still receiving");

    rig.control
        .set_delete_blocked(A, false)
        .await
        .expect("unblock");
    let gone = first.path.clone();
    rig.until_stored(A, "the first SMS is deleted", |stored| {
        stored
            .iter()
            .all(|s| s["path"].downcast_ref::<ObjectPath<'_>>().expect("path") != path(&gone))
    })
    .await;
}

#[tokio::test]
async fn deletes_and_ignores_unknown_paths() {
    let mut rig = Rig::with_adapter(&[A], ModemConfig::default()).await;
    rig.state(ModemState::Registered).await;
    let unknown = OwnedObjectPath::try_from("/org/freedesktop/ModemManager1/SMS/999").unwrap();
    rig.command(ModemCommand::Delete { path: unknown }).await;

    rig.control
        .inject_sms(A, C, "short-lived", HashMap::new())
        .await
        .expect("InjectSms");
    let sms = rig.incoming().await;
    rig.command(ModemCommand::Delete { path: sms.path }).await;
    rig.until_stored(A, "deleted", |s| s.is_empty()).await;

    rig.send("s", B, "still fine", false).await;
    rig.send_result("s").await.expect("sent");
}

#[tokio::test]
async fn re_enabling_lists_the_sms_again_under_new_paths() {
    let mut rig = Rig::with_adapter(&[A], ModemConfig::default()).await;
    rig.state(ModemState::Registered).await;
    rig.control
        .inject_sms(A, C, "kept on the SIM", HashMap::new())
        .await
        .expect("InjectSms");
    let before = rig.incoming().await;

    rig.control.set_modem_state(A, 3).await.expect("disable");
    rig.state(ModemState::Disabled).await;
    rig.control.set_modem_state(A, 8).await.expect("enable");
    rig.state(ModemState::Registered).await;
    let after = rig.incoming().await;
    assert_eq!(after.text, before.text);
    assert_ne!(after.path, before.path);
    rig.assert_none("a third report", |e| matches!(e, ModemEvent::Incoming(_)))
        .await;
}

#[tokio::test]
async fn stops_when_commands_close_and_answers_every_send() {
    let mut rig = Rig::with_adapter(&[A], ModemConfig::default()).await;
    rig.state(ModemState::Registered).await;
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
    let mut rig = Rig::with_adapter(&[A], ModemConfig::default()).await;
    rig.state(ModemState::Registered).await;
    // A frozen ModemManager: the send hangs in Messaging.Create.
    let pid = rig.sim.as_ref().expect("simulator").child.id().to_string();
    let stopped = Command::new("kill").args(["-STOP", &pid]).status();
    assert!(stopped.expect("kill").success());
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
    let mut rig = Rig::with_adapter(&[A], ModemConfig::default()).await;
    rig.state(ModemState::Registered).await;
    rig.send("m", B, "gone out", false).await;
    let object = rig.created("m").await.expect("created");
    rig.command(ModemCommand::Send {
        id: "m".into(),
        object: object.clone(),
        budget: PATIENCE,
    })
    .await;
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
    let sent = rig.control.get_sent(A).await.expect("GetSent");
    assert_eq!(sent.len(), 1, "sent once");
}

#[tokio::test]
async fn an_object_never_sent_resolves_unsent_once_settled() {
    let mut rig = Rig::with_adapter(&[A], ModemConfig::default()).await;
    rig.state(ModemState::Registered).await;
    rig.send("m", B, "created, then a crash", false).await;
    let object = rig.created("m").await.expect("created");
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
        sms_states(&rig.control.list_sms(A).await.expect("ListSms")),
        vec![0],
        "still there, unsent: the daemon removes it once it has stored that"
    );
    assert!(rig.control.get_sent(A).await.expect("GetSent").is_empty());
}

#[tokio::test]
async fn a_send_still_running_when_resolved_is_found_sent() {
    let mut rig = Rig::with_adapter(&[A], ModemConfig::default()).await;
    rig.state(ModemState::Registered).await;
    rig.control.set_send_delay(A, 800).await.expect("delay");
    rig.send("m", B, "slow network", false).await;
    let object = rig.created("m").await.expect("created");
    // The budget is shorter than the modem takes: no answer in time, but the object is
    // watched as long again, and it turns `sent`.
    let outcome = rig
        .send_outcome_of(&object, "m", Duration::from_millis(500))
        .await;
    assert!(matches!(outcome, SendOutcome::Sent { .. }), "{outcome:?}");
    assert_eq!(rig.control.get_sent(A).await.expect("GetSent").len(), 1);
}

#[tokio::test]
async fn modem_manager_dying_during_a_send_leaves_its_outcome_unknown() {
    let mut rig = Rig::with_adapter(&[A], ModemConfig::default()).await;
    rig.state(ModemState::Registered).await;
    rig.control.set_send_delay(A, 5000).await.expect("delay");
    rig.send("m", B, "in the air", false).await;
    let object = rig.created("m").await.expect("created");
    rig.command(ModemCommand::Send {
        id: "m".into(),
        object: object.clone(),
        budget: PATIENCE,
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    rig.kill_sim();
    assert!(matches!(
        rig.outcome("m").await,
        SendOutcome::Unknown { .. }
    ));
    // A new ModemManager reuses the path for another SMS: the object is asked at the
    // instance that made it, so it is gone, never mistaken for the new one.
    rig.start_sim().await;
    rig.until_state(ModemState::Registered).await;
    rig.send("n", B, "a new one", false).await;
    let new = rig.created("n").await.expect("created");
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
    assert!(rig.control.get_sent(A).await.expect("GetSent").is_empty());
}

#[tokio::test]
async fn unsent_objects_of_an_earlier_run_are_reported_as_drafts() {
    let mut rig = Rig::with_adapter(&[A], ModemConfig::default()).await;
    rig.state(ModemState::Registered).await;
    rig.send("m", B, "left behind", false).await;
    let orphan = rig.created("m").await.expect("created");
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
