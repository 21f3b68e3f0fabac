//! Test harness: private D-Bus buses, the real `tandem-mmsim` and `tandemd` binaries, and
//! a log of every signal the daemon emits. Nothing here touches the machine's real buses:
//! each test starts its own `dbus-daemon`s and points the programs at them.

#![allow(dead_code)] // each test binary uses a part of the harness

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tandem::api::{MessageDict, MessagesProxy};
use tandem::devbus::PrivateBus;
use zbus::{MatchRule, MessageStream, OwnedObjectPath, OwnedVariant, Variant};

/// How long a test waits for something that should happen quickly.
pub const WAIT: Duration = Duration::from_secs(15);

/// A private bus (see `tandem::devbus`), with its address at hand.
pub struct Bus {
    bus: PrivateBus,
    pub address: String,
}

impl Bus {
    pub fn start() -> Bus {
        let bus = PrivateBus::start().expect("a private dbus-daemon");
        let address = bus.address().to_owned();
        Bus { bus, address }
    }

    pub async fn connect(&self) -> zbus::Connection {
        self.bus
            .connect()
            .await
            .expect("connect to the private bus")
    }
}

/// A running `tandem-mmsim` on a private "system" bus.
pub struct Sim {
    child: Option<Child>,
    bus_address: String,
    modems: Vec<String>,
    report_delay_ms: u32,
}

impl Sim {
    /// Starts the simulator hosting one modem per number and waits until it is ready.
    pub fn start(bus: &Bus, modems: &[&str]) -> Sim {
        Self::with_report_delay(bus, modems, 50)
    }

    /// Same, with the carrier's status reports coming `report_delay_ms` after delivery.
    pub fn with_report_delay(bus: &Bus, modems: &[&str], report_delay_ms: u32) -> Sim {
        let mut sim = Sim {
            child: None,
            bus_address: bus.address.clone(),
            modems: modems.iter().map(|m| m.to_string()).collect(),
            report_delay_ms,
        };
        sim.spawn();
        sim
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tandem-mmsim"));
        let delay = self.report_delay_ms.to_string();
        cmd.args(["--bus", &self.bus_address, "--report-delay-ms", &delay]);
        for m in &self.modems {
            cmd.args(["--modem", m]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("tandem-mmsim starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("tandem-mmsim prints ready");
        assert_eq!(line.trim(), "ready", "tandem-mmsim did not get ready");
        self.child = Some(child);
    }

    /// Kills the simulator (like ModemManager crashing or being stopped).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again with the same modems.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The simulator's control interface, `org.tandem.MMSim1`, called generically.
pub struct SimCtl {
    proxy: zbus::Proxy<'static>,
}

pub type Dict = HashMap<String, OwnedVariant>;

impl SimCtl {
    pub async fn new(system: &zbus::Connection) -> SimCtl {
        let proxy = zbus::Proxy::new(
            system,
            "org.freedesktop.ModemManager1",
            "/org/tandem/MMSim1",
            "org.tandem.MMSim1",
        )
        .await
        .expect("simulator control proxy");
        SimCtl { proxy }
    }

    pub async fn inject_sms(&self, modem: &str, from: &str, text: &str) -> OwnedObjectPath {
        let options: HashMap<&str, Variant<'_>> = HashMap::new();
        self.proxy
            .call("InjectSms", &(modem, from, text, options))
            .await
            .expect("InjectSms")
    }

    pub async fn begin_multipart(&self, modem: &str, from: &str, parts: u32) -> OwnedObjectPath {
        self.proxy
            .call("BeginMultipart", &(modem, from, parts))
            .await
            .expect("BeginMultipart")
    }

    pub async fn add_part(&self, sms: &OwnedObjectPath, text: &str) {
        let () = self
            .proxy
            .call("AddPart", &(sms, text))
            .await
            .expect("AddPart");
    }

    pub async fn get_sent(&self, modem: &str) -> Vec<Dict> {
        self.proxy
            .call("GetSent", &(modem,))
            .await
            .expect("GetSent")
    }

    pub async fn list_sms(&self, modem: &str) -> Vec<Dict> {
        self.proxy
            .call("ListSms", &(modem,))
            .await
            .expect("ListSms")
    }

    pub async fn fail_next_send(&self, modem: &str, error: &str, message: &str) {
        let () = self
            .proxy
            .call("FailNextSend", &(modem, error, message))
            .await
            .expect("FailNextSend");
    }

    pub async fn set_send_delay(&self, modem: &str, ms: u32) {
        let () = self
            .proxy
            .call("SetSendDelay", &(modem, ms))
            .await
            .expect("SetSendDelay");
    }

    pub async fn set_delete_blocked(&self, modem: &str, blocked: bool) {
        let () = self
            .proxy
            .call("SetDeleteBlocked", &(modem, blocked))
            .await
            .expect("SetDeleteBlocked");
    }

    pub async fn add_modem(&self, number: &str) -> OwnedObjectPath {
        let options: HashMap<&str, Variant<'_>> = HashMap::new();
        self.proxy
            .call("AddModem", &(number, options))
            .await
            .expect("AddModem")
    }

    pub async fn remove_modem(&self, modem: &str) {
        let () = self
            .proxy
            .call("RemoveModem", &(modem,))
            .await
            .expect("RemoveModem");
    }

    pub async fn set_modem_state(&self, modem: &str, state: i32) {
        let () = self
            .proxy
            .call("SetModemState", &(modem, state))
            .await
            .expect("SetModemState");
    }
}

/// Reads a string entry of a dictionary the simulator returned.
pub fn dict_str(d: &Dict, key: &str) -> String {
    d.get(key)
        .and_then(|v| <&str>::try_from(v).ok())
        .unwrap_or_else(|| panic!("no string {key:?} in {d:?}"))
        .to_owned()
}

/// A running `tandemd` with its own config, database and log, on the given buses.
pub struct Daemon {
    child: Option<Child>,
    pub dir: PathBuf,
    session: String,
    system: String,
    log: PathBuf,
}

impl Daemon {
    /// Writes `config` as the daemon's config file and starts it; returns once it owns
    /// its bus name.
    pub async fn start(session: &Bus, system: &Bus, dir: &Path, config: &str) -> Daemon {
        std::fs::create_dir_all(dir).expect("daemon dir");
        std::fs::write(dir.join("config.toml"), config).expect("write config");
        let mut daemon = Daemon {
            child: None,
            dir: dir.to_owned(),
            session: session.address.clone(),
            system: system.address.clone(),
            log: dir.join("tandemd.log"),
        };
        daemon.spawn().await;
        daemon
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.join("data/tandem/messages.db")
    }

    /// The command that starts this daemon, without spawning it.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tandemd"));
        cmd.arg("--config")
            .arg(self.dir.join("config.toml"))
            .arg("-v")
            .env("DBUS_SESSION_BUS_ADDRESS", &self.session)
            .env("DBUS_SYSTEM_BUS_ADDRESS", &self.system)
            .env("XDG_DATA_HOME", self.dir.join("data"))
            .env("XDG_CONFIG_HOME", self.dir.join("config"))
            .env("HOME", &self.dir)
            .env_remove("JOURNAL_STREAM")
            .env_remove("RUST_LOG");
        cmd
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("daemon log");
        let child = self
            .command()
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("tandemd starts");
        self.child = Some(child);
        let conn = zbus::connection::Builder::address(self.session.as_str())
            .build()
            .await
            .expect("connect to the session bus");
        let dbus = zbus::fdo::DBusProxy::new(&conn).await.expect("bus proxy");
        let deadline = Instant::now() + WAIT;
        loop {
            let name = zbus::names::BusName::try_from("org.tandem.Messages1").expect("name");
            if dbus.name_has_owner(name).await.unwrap_or(false) {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "tandemd exited with {status} while starting:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "tandemd did not take its name:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log_text(&self) -> String {
        let mut text = String::new();
        if let Ok(mut f) = std::fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// kill -9: no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, as systemd stops it; waits for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let status = child.wait().expect("wait for tandemd");
            assert!(
                status.success(),
                "tandemd did not exit cleanly: {status}\n{}",
                self.log_text()
            );
        }
    }

    /// Waits up to `within` for the daemon to exit by itself; its status, or `None` if it
    /// is still running.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            let child = self.child.as_mut()?;
            if let Some(status) = child.try_wait().expect("wait for tandemd") {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- tandemd log ({}) ----\n{}",
                self.log.display(),
                self.log_text()
            );
        }
        self.kill9();
    }
}

/// A client of the daemon on the session bus.
pub async fn client(session: &Bus) -> MessagesProxy<'static> {
    let conn = session.connect().await;
    MessagesProxy::new(&conn).await.expect("Messages1 proxy")
}

/// One signal of `org.tandem.Messages1`, as seen on the bus.
#[derive(Debug, Clone, PartialEq)]
pub enum Signal {
    Received(MessageDict),
    Status {
        id: String,
        status: String,
        channel: String,
    },
    Presence {
        number: String,
        presence: String,
    },
}

/// Every `org.tandem.Messages1` signal on a bus, from any sender, recorded from the moment
/// of creation (so signals of a daemon started later are not missed).
#[derive(Clone)]
pub struct SignalLog {
    seen: Arc<Mutex<Vec<Signal>>>,
}

impl SignalLog {
    pub async fn start(bus: &Bus) -> SignalLog {
        let conn = bus.connect().await;
        let rule = MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .interface("org.tandem.Messages1")
            .build()
            .expect("match rule");
        let mut stream = MessageStream::for_match_rule(rule, &conn, None)
            .await
            .expect("signal stream");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = SignalLog { seen: seen.clone() };
        tokio::spawn(async move {
            let _conn = conn;
            while let Some(Ok(msg)) = stream.next().await {
                let header = msg.header();
                let member = header.member().map(|m| m.to_string()).unwrap_or_default();
                let body = msg.body();
                let signal = match member.as_str() {
                    "MessageReceived" => body
                        .deserialize::<(MessageDict,)>()
                        .ok()
                        .map(|(m,)| Signal::Received(m)),
                    "MessageStatusChanged" => body
                        .deserialize::<(String, String, String)>()
                        .ok()
                        .map(|(id, status, channel)| Signal::Status {
                            id,
                            status,
                            channel,
                        }),
                    "PresenceChanged" => body
                        .deserialize::<(String, String)>()
                        .ok()
                        .map(|(number, presence)| Signal::Presence { number, presence }),
                    _ => None,
                };
                if let Some(signal) = signal {
                    seen.lock().expect("signal log").push(signal);
                }
            }
        });
        log
    }

    pub fn all(&self) -> Vec<Signal> {
        self.seen.lock().expect("signal log").clone()
    }

    pub fn received(&self) -> Vec<MessageDict> {
        self.all()
            .into_iter()
            .filter_map(|s| match s {
                Signal::Received(m) => Some(m),
                _ => None,
            })
            .collect()
    }

    /// The statuses announced for one message, in order.
    pub fn statuses(&self, id: &str) -> Vec<String> {
        self.all()
            .into_iter()
            .filter_map(|s| match s {
                Signal::Status { id: i, status, .. } if i == id => Some(status),
                _ => None,
            })
            .collect()
    }

    /// Waits until `check` holds for the log.
    pub async fn wait_until(&self, what: &str, check: impl Fn(&SignalLog) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !check(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; signals: {:#?}",
                self.all()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Polls an async condition until it holds.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A fresh temporary directory for one test.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("tandem-test-")
        .tempdir()
        .expect("temp dir")
}

/// The config of a daemon using the simulator's modem with this own number.
pub fn config_for(modem: &str) -> String {
    format!(
        "default_region = \"US\"\n\n[sms]\nmodem = \"{modem}\"\n\n[notifications]\nenabled = false\n"
    )
}

/// A running `tandem-relay` on 127.0.0.1 with its own database, killed on drop.
pub struct Relay {
    child: Option<Child>,
    pub addr: String,
    args: Vec<String>,
    db: PathBuf,
}

impl Relay {
    /// Starts the relay binary with `--verify none` (development mode).
    pub fn start(dir: &Path) -> Relay {
        Self::with_args(dir, &["--verify", "none"])
    }

    /// Starts the relay binary with these extra arguments.
    pub fn with_args(dir: &Path, args: &[&str]) -> Relay {
        let mut relay = Relay {
            child: None,
            addr: "127.0.0.1:0".into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            db: dir.join("relay.db"),
        };
        relay.spawn();
        relay
    }

    fn spawn(&mut self) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tandem-relay"))
            .arg("--listen")
            .arg(&self.addr)
            .arg("--db")
            .arg(&self.db)
            .args(&self.args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("tandem-relay starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("tandem-relay prints its address");
        self.addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        self.child = Some(child);
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same address and database.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The config of a daemon on the simulator's modem `modem` and the relay at `url`.
pub fn config_with_relay(modem: &str, url: &str, fallback_timeout_s: u32) -> String {
    format!(
        "default_region = \"US\"\n\n[relay]\nurl = \"{url}\"\nfallback_timeout_s = {fallback_timeout_s}\n\n[sms]\nmodem = \"{modem}\"\n\n[notifications]\nenabled = false\n"
    )
}

impl Daemon {
    /// The process id, for SIGSTOP/SIGCONT.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("running")
    }
}

/// Kill points of one fault test: `TANDEM_FAULT_POINTS` if set, else `default` (small,
/// for CI).
pub fn fault_points(default: u32) -> u32 {
    std::env::var("TANDEM_FAULT_POINTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A small deterministic generator (xorshift64*) for fault tests, seeded from
/// `TANDEM_FAULT_SEED` or the clock and printed, so that a failing run can be replayed.
pub struct FaultRng {
    state: u64,
    pub seed: u64,
}

impl FaultRng {
    pub fn new() -> FaultRng {
        let seed = std::env::var("TANDEM_FAULT_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            })
            | 1;
        eprintln!("fault seed: {seed}");
        FaultRng { state: seed, seed }
    }

    /// A number in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }

    /// A duration of `0..=max` milliseconds.
    pub fn millis(&mut self, max: u64) -> Duration {
        Duration::from_millis(self.below(max + 1))
    }
}

impl Default for FaultRng {
    fn default() -> Self {
        Self::new()
    }
}
