//! The daemon: `tandemd` on private buses with its own directory, and a phone (a daemon,
//! its session bus, its signals and a client of its API).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tandem::api::{MessageDict, MessagesProxy};
use zbus::{OwnedVariant, Variant};

use super::bus::until_owned;
use super::proc::{Proc, log_text, program, signal};
use super::signals::SignalLog;
use super::sim::{Sim, SimCtl};
use super::{Bus, WAIT, wait_for};

/// A running `tandemd` with its own config, database and log, on the given buses.
pub struct Daemon {
    proc: Option<Proc>,
    pub dir: PathBuf,
    session: String,
    system: String,
    log: PathBuf,
    /// `RUST_LOG` when not the tests' usual `-v` (debug).
    filter: Option<String>,
}

impl Daemon {
    /// Writes `config` as the daemon's config file and starts it; returns once it owns
    /// its bus name.
    pub async fn start(session: &Bus, system: &Bus, dir: &Path, config: &str) -> Daemon {
        Daemon::start_logging(session, system, dir, config, None).await
    }

    /// The same, logging with the filter `filter` (`RUST_LOG`) instead of at debug.
    pub async fn start_logging(
        session: &Bus,
        system: &Bus,
        dir: &Path,
        config: &str,
        filter: Option<&str>,
    ) -> Daemon {
        std::fs::create_dir_all(dir).expect("daemon dir");
        std::fs::write(dir.join("config.toml"), config).expect("write config");
        let mut daemon = Daemon {
            proc: None,
            dir: dir.to_owned(),
            session: session.address.clone(),
            system: system.address.clone(),
            log: dir.join("tandemd.log"),
            filter: filter.map(str::to_owned),
        };
        daemon.spawn().await;
        daemon
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.join("data/tandem/messages.db")
    }

    /// The command that starts this daemon, without spawning it.
    pub fn command(&self) -> Command {
        let mut cmd = program("tandemd");
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
        if let Some(filter) = &self.filter {
            cmd.env("RUST_LOG", filter);
        }
        cmd
    }

    async fn spawn(&mut self) {
        let mut cmd = self.command();
        cmd.stdout(Stdio::null());
        let proc = self.proc.insert(Proc::spawn("tandemd", cmd, &self.log));
        let log = self.log.clone();
        let exited = || proc.try_wait();
        until_owned(&self.session, "org.tandem.Messages1", exited, || {
            log_text(&log)
        })
        .await;
    }

    pub fn log_text(&self) -> String {
        log_text(&self.log)
    }

    /// kill -9: no chance to clean up.
    pub fn kill9(&mut self) {
        self.proc = None;
    }

    /// SIGTERM, as systemd stops it; waits for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut proc) = self.proc.take() {
            signal(proc.pid(), "-TERM");
            let status = proc.wait();
            assert!(status.success(), "tandemd did not exit cleanly: {status}");
        }
    }

    /// Waits up to `within` for the daemon to exit by itself; its status, or `None` if it
    /// is still running.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.proc.as_mut()?.try_wait() {
                self.proc = None;
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

    /// The process id, for SIGSTOP/SIGCONT.
    pub fn pid(&self) -> u32 {
        self.proc.as_ref().map(Proc::pid).expect("running")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // The log of a daemon still running is printed by its `Proc`.
        if std::thread::panicking() && self.proc.is_none() {
            eprintln!("---- tandemd log ----\n{}", self.log_text());
        }
    }
}

/// A client of the daemon on the session bus.
pub async fn client(session: &Bus) -> MessagesProxy<'static> {
    let conn = session.connect().await;
    MessagesProxy::new(&conn).await.expect("Messages1 proxy")
}

/// The config of a daemon using the simulator's modem with this own number.
pub fn config_for(modem: &str) -> String {
    format!(
        "default_region = \"US\"\n\n[sms]\nmodem = \"{modem}\"\n\n[notifications]\nenabled = false\n"
    )
}

/// The config of a daemon on the simulator's modem `modem` and the relay at `url`.
pub fn config_with_relay(modem: &str, url: &str, fallback_timeout_s: u32) -> String {
    format!(
        "default_region = \"US\"\n\n[relay]\nurl = \"{url}\"\nfallback_timeout_s = {fallback_timeout_s}\n\n[sms]\nmodem = \"{modem}\"\n\n[notifications]\nenabled = false\n"
    )
}

/// One phone: a daemon on a session bus of its own, with every signal recorded (across
/// restarts: the bus outlives the daemon). Waits last up to `patience`.
pub struct Phone {
    pub daemon: Daemon,
    pub signals: SignalLog,
    pub api: MessagesProxy<'static>,
    pub patience: Duration,
    // Kept last: the daemon stops before its bus.
    pub session: Bus,
}

impl Phone {
    /// A daemon with `config` in `dir`, on the system bus `system`.
    pub async fn start(system: &Bus, dir: &Path, config: &str) -> Phone {
        Phone::on(Bus::start(), system, dir, config).await
    }

    /// The same on a session bus made ready already (with a fake service, say).
    pub async fn on(session: Bus, system: &Bus, dir: &Path, config: &str) -> Phone {
        Phone::on_logging(session, system, dir, config, None).await
    }

    /// The same, its daemon logging with `filter` (`RUST_LOG`) instead of at debug.
    pub async fn on_logging(
        session: Bus,
        system: &Bus,
        dir: &Path,
        config: &str,
        filter: Option<&str>,
    ) -> Phone {
        let signals = SignalLog::start(&session).await;
        let daemon = Daemon::start_logging(&session, system, dir, config, filter).await;
        let api = client(&session).await;
        Phone {
            daemon,
            signals,
            api,
            patience: WAIT,
            session,
        }
    }

    /// Two phones texting through the relay at `url`, numbers `a` and `b` (their modems
    /// on the simulator on `system`), in `dir/alice` and `dir/bob`: both online, each
    /// watching the other and seeing it online.
    pub async fn pair(
        system: &Bus,
        dir: &Path,
        [a, b]: [&str; 2],
        url: &str,
        fallback_timeout_s: u32,
    ) -> (Phone, Phone) {
        let config = |number| config_with_relay(number, url, fallback_timeout_s);
        let alice = Phone::start(system, &dir.join("alice"), &config(a)).await;
        let bob = Phone::start(system, &dir.join("bob"), &config(b)).await;
        for (phone, other) in [(&alice, b), (&bob, a)] {
            phone.online().await;
            phone.api.watch(vec![other.into()]).await.expect("Watch");
        }
        alice.sees(b, "online").await;
        bob.sees(a, "online").await;
        (alice, bob)
    }

    /// Waits until `check` holds of the daemon's API.
    pub async fn until<F>(&self, what: &str, check: F)
    where
        F: AsyncFn(&MessagesProxy<'static>) -> bool,
    {
        wait_for(what, self.patience, || check(&self.api)).await
    }

    pub async fn relay_is(&self, state: &str) {
        let what = format!("RelayState {state}");
        self.until(&what, async |api| {
            api.relay_state().await.ok().as_deref() == Some(state)
        })
        .await
    }

    pub async fn modem_is(&self, state: &str) {
        let what = format!("ModemState {state}");
        self.until(&what, async |api| {
            api.modem_state().await.ok().as_deref() == Some(state)
        })
        .await
    }

    /// Logged in on the relay and with its modem registered.
    pub async fn online(&self) {
        self.relay_is("online").await;
        self.modem_is("registered").await;
    }

    pub async fn sees(&self, number: &str, presence: &str) {
        self.until(&format!("{number} {presence}"), async |api| {
            api.get_presence(number).await.ok().as_deref() == Some(presence)
        })
        .await
    }

    /// `SendMessage` with the router's choice of channel; the message id.
    pub async fn send(&self, to: &str, text: &str) -> String {
        self.send_with(to, text, HashMap::new()).await
    }

    /// `SendMessage` on `channel` ("ip" or "sms").
    pub async fn send_on(&self, to: &str, text: &str, channel: &str) -> String {
        let channel = OwnedVariant::try_from(Variant::from(channel)).expect("a string");
        let options = HashMap::from([("channel".to_owned(), channel)]);
        self.send_with(to, text, options).await
    }

    pub async fn send_with(
        &self,
        to: &str,
        text: &str,
        options: HashMap<String, OwnedVariant>,
    ) -> String {
        self.api
            .send_message(to, text, options)
            .await
            .unwrap_or_else(|e| panic!("SendMessage refused: {e}"))
    }

    /// Waits for a `MessageStatusChanged` of `id` to `status`.
    pub async fn wait_status(&self, id: &str, status: &str) {
        self.signals
            .wait_until(&format!("{id} {status}"), |s| {
                s.statuses(id).iter().any(|st| st == status)
            })
            .await;
    }

    /// The channel a message went on.
    pub async fn channel_of(&self, id: &str) -> String {
        self.api.get_message(id).await.expect("GetMessage").channel
    }

    /// Waits until a message with `text` is announced as received on `channel`.
    pub async fn gets(&self, text: &str, channel: &str) {
        self.signals
            .wait_until(&format!("{text:?} over {channel}"), |s| {
                s.received()
                    .iter()
                    .any(|m| m.text == text && m.channel == channel)
            })
            .await;
    }

    /// The messages announced as received with this text.
    pub fn received(&self, text: &str) -> Vec<MessageDict> {
        let mut all = self.signals.received();
        all.retain(|m| m.text == text);
        all
    }

    /// The channels a message with this text was announced as received on, once each
    /// time it was.
    pub fn received_channels(&self, text: &str) -> Vec<String> {
        self.received(text).into_iter().map(|m| m.channel).collect()
    }

    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }
}

/// A phone on the simulator's first modem, the simulator hosting all of `modems`, each
/// on a private bus, in a directory of its own: the set-up of most end-to-end tests. It
/// is the [`Phone`] for method calls (`rig.api`, `rig.signals`, `rig.daemon`...).
pub struct DaemonRig {
    pub phone: Phone,
    pub ctl: SimCtl,
    pub sim: Sim,
    pub system: Bus,
    pub dir: tempfile::TempDir,
}

impl DaemonRig {
    /// The daemon with `config` (in `dir/phone`) on the first of `modems`.
    pub async fn start(modems: &[&str], config: &str) -> DaemonRig {
        let system = Bus::start();
        let sim = Sim::start(&system, modems);
        Self::on(system, sim, config).await
    }

    /// The same with a simulator started already on `system`.
    pub async fn on(system: Bus, sim: Sim, config: &str) -> DaemonRig {
        let dir = super::temp_dir();
        let phone = Phone::start(&system, &dir.path().join("phone"), config).await;
        let ctl = SimCtl::new(&system.connect().await).await;
        DaemonRig {
            phone,
            ctl,
            sim,
            system,
            dir,
        }
    }
}

impl std::ops::Deref for DaemonRig {
    type Target = Phone;

    fn deref(&self) -> &Phone {
        &self.phone
    }
}

impl std::ops::DerefMut for DaemonRig {
    fn deref_mut(&mut self) -> &mut Phone {
        &mut self.phone
    }
}

/// Two private buses, the simulator on the system one, and a directory: what a test
/// starts its own daemons on.
pub struct Machine {
    pub session: Bus,
    pub system: Bus,
    pub sim: Sim,
    pub dir: tempfile::TempDir,
}

impl Machine {
    /// The buses, and the simulator hosting `modems`.
    pub fn start(modems: &[&str]) -> Machine {
        let system = Bus::start();
        Machine {
            session: Bus::start(),
            sim: Sim::start(&system, modems),
            system,
            dir: super::temp_dir(),
        }
    }

    /// A daemon with `config` in the machine's directory.
    pub async fn daemon(&self, config: &str) -> Daemon {
        Daemon::start(&self.session, &self.system, self.dir.path(), config).await
    }
}
