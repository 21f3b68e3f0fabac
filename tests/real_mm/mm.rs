//! Debian's real `ModemManager` (1.20) in its test mode, on a private bus, and the few
//! D-Bus calls the tests make on it directly.
//!
//! `--test-session` puts it on the bus in `DBUS_SESSION_BUS_ADDRESS` (the private bus);
//! `DBUS_SYSTEM_BUS_ADDRESS` points there too, so nothing it does (polkit) reaches the
//! machine's system bus. `--test-no-udev --no-auto-scan --test-no-qrtr` keep it away from
//! every device of the machine, `--test-no-suspend-resume` away from logind. The only
//! modem it knows is the one a test creates with `Test.SetProfile` on a fake modem's
//! socket (the generic plugin, no probing). The process is killed on drop, and also if the
//! test process dies first (`PR_SET_PDEATHSIG`).

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use zbus::{OwnedObjectPath, OwnedVariant, Variant};

use super::at_modem::FakeModem;
use super::common::bus::until_owned;
use super::common::proc::log_text;
use super::common::{Bus, WAIT};

pub const SERVICE: &str = "org.freedesktop.ModemManager1";
pub const MANAGER: &str = "/org/freedesktop/ModemManager1";
pub const MODEM_IFACE: &str = "org.freedesktop.ModemManager1.Modem";
pub const MESSAGING_IFACE: &str = "org.freedesktop.ModemManager1.Modem.Messaging";
pub const SMS_IFACE: &str = "org.freedesktop.ModemManager1.Sms";

/// `MMModemState`
pub const STATE_DISABLED: i32 = 3;
pub const STATE_REGISTERED: i32 = 8;

/// Where ModemManager is: `TANDEM_MODEMMANAGER`, else Debian's `/usr/sbin/ModemManager`,
/// else `PATH`.
fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TANDEM_MODEMMANAGER") {
        return path.into();
    }
    let path_dirs = std::env::var_os("PATH").unwrap_or_default();
    ["/usr/sbin", "/usr/local/sbin", "/sbin"]
        .into_iter()
        .map(PathBuf::from)
        .chain(std::env::split_paths(&path_dirs))
        .map(|dir| dir.join("ModemManager"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "ModemManager is not installed: these tests run the real one \
                 (Debian: apt-get install modemmanager; or set TANDEM_MODEMMANAGER)"
            )
        })
}

/// A running ModemManager on a private bus.
pub struct ModemManager {
    child: Option<Child>,
    bus: String,
    log: PathBuf,
}

impl ModemManager {
    /// Starts it and waits until it owns its name.
    pub async fn start(bus: &Bus, log: &Path) -> ModemManager {
        let mut mm = ModemManager {
            child: None,
            bus: bus.address.clone(),
            log: log.to_owned(),
        };
        mm.spawn().await;
        mm
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("ModemManager log");
        let mut cmd = Command::new(binary());
        cmd.args([
            "--test-session",
            "--test-enable",
            "--test-no-udev",
            "--no-auto-scan",
            "--test-no-qrtr",
            "--test-no-suspend-resume",
            "--log-level=DEBUG",
            "--log-timestamps",
        ])
        .env("DBUS_SESSION_BUS_ADDRESS", &self.bus)
        .env("DBUS_SYSTEM_BUS_ADDRESS", &self.bus)
        .env_remove("DBUS_STARTER_ADDRESS")
        .env_remove("DBUS_STARTER_BUS_TYPE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = self.child.insert(cmd.spawn().expect("start ModemManager"));
        let log = self.log.clone();
        let exited = || child.try_wait().ok().flatten();
        until_owned(&self.bus, SERVICE, exited, || tail(&log_text(&log))).await;
    }

    /// kill -9: it has no chance to answer what it was doing.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again (it knows no modem until the next `SetProfile`).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// The end of its debug log.
    pub fn log_tail(&self) -> String {
        tail(&log_text(&self.log))
    }
}

/// The last 120 lines of a log.
fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(120)..].join("\n")
}

impl Drop for ModemManager {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- ModemManager log, last lines ({}) ----\n{}",
                self.log.display(),
                self.log_tail()
            );
        }
        self.kill();
    }
}

/// A generic proxy on one of ModemManager's objects.
pub async fn proxy(
    conn: &zbus::Connection,
    path: &str,
    interface: &'static str,
) -> zbus::Proxy<'static> {
    zbus::proxy::Builder::new(conn)
        .destination(SERVICE)
        .path(path.to_owned())
        .interface(interface)
        .cache_properties(zbus::proxy::CacheProperties::No)
        .build()
        .await
        .expect("proxy")
}

/// `Test.SetProfile`: a modem on the fake modem's socket, with the generic plugin.
pub async fn set_profile(conn: &zbus::Connection, id: &str, modem: &FakeModem) {
    let test = proxy(conn, MANAGER, "org.freedesktop.ModemManager1.Test").await;
    let () = test
        .call("SetProfile", &(id, "generic", vec![modem.port()]))
        .await
        .expect("Test.SetProfile");
}

/// Waits for ModemManager to export a modem that finished initialising (`disabled` or
/// further); returns its path.
pub async fn wait_for_modem(conn: &zbus::Connection) -> OwnedObjectPath {
    let manager = zbus::fdo::ObjectManagerProxy::builder(conn)
        .destination(SERVICE)
        .path(MANAGER)
        .build()
        .await
        .expect("object manager proxy");
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(objects) = manager.get_managed_objects().await {
            for (path, interfaces) in objects {
                let state = interfaces
                    .get(MODEM_IFACE)
                    .and_then(|props| props.get("State"))
                    .and_then(|v| i32::try_from(v).ok());
                match state {
                    Some(s) if s >= STATE_DISABLED => return path,
                    Some(-1) => panic!("ModemManager says the modem failed"),
                    _ => {}
                }
            }
        }
        assert!(Instant::now() < deadline, "no modem in ModemManager");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A property of one of ModemManager's objects.
pub async fn property<T>(
    conn: &zbus::Connection,
    path: &str,
    interface: &'static str,
    name: &str,
) -> T
where
    T: serde::de::DeserializeOwned + zbus::Type,
{
    proxy(conn, path, interface)
        .await
        .get_property::<T>(name)
        .await
        .unwrap_or_else(|e| panic!("{interface}.{name} of {path}: {e}"))
}

pub async fn modem_state(conn: &zbus::Connection, modem: &str) -> i32 {
    property(conn, modem, MODEM_IFACE, "State").await
}

/// `Modem.Enable(true)` (what NetworkManager does at boot), then waits for `registered`.
pub async fn enable(conn: &zbus::Connection, modem: &str) {
    let () = proxy(conn, modem, MODEM_IFACE)
        .await
        .call("Enable", &(true,))
        .await
        .expect("Modem.Enable");
    let deadline = Instant::now() + WAIT;
    while modem_state(conn, modem).await < STATE_REGISTERED {
        assert!(Instant::now() < deadline, "the modem did not register");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// `SetProfile`, then `Enable`: a registered modem on `fake`. Returns its path.
pub async fn bring_up(conn: &zbus::Connection, fake: &FakeModem) -> OwnedObjectPath {
    set_profile(conn, "tandem-fake", fake).await;
    let modem = wait_for_modem(conn).await;
    enable(conn, &modem).await;
    modem
}

/// `Messaging.Create` of a text SMS.
pub async fn create_sms(
    conn: &zbus::Connection,
    modem: &str,
    number: &str,
    text: &str,
) -> Result<OwnedObjectPath, zbus::Error> {
    let props: HashMap<&str, Variant<'_>> =
        HashMap::from([("number", number.into()), ("text", text.into())]);
    proxy(conn, modem, MESSAGING_IFACE)
        .await
        .call("Create", &(props,))
        .await
}

pub async fn list_sms(conn: &zbus::Connection, modem: &str) -> Vec<OwnedObjectPath> {
    proxy(conn, modem, MESSAGING_IFACE)
        .await
        .call("List", &())
        .await
        .expect("Messaging.List")
}

pub async fn delete_sms(conn: &zbus::Connection, modem: &str, sms: &OwnedObjectPath) {
    let () = proxy(conn, modem, MESSAGING_IFACE)
        .await
        .call("Delete", &(sms,))
        .await
        .expect("Messaging.Delete");
}

/// `Sms.Send`, with no timeout of our own beyond zbus's.
pub async fn send_sms(conn: &zbus::Connection, sms: &str) -> Result<(), zbus::Error> {
    proxy(conn, sms, SMS_IFACE).await.call("Send", &()).await
}

/// `Sms.Store` in the default storage.
pub async fn store_sms(conn: &zbus::Connection, sms: &str) -> Result<(), zbus::Error> {
    proxy(conn, sms, SMS_IFACE)
        .await
        .call("Store", &(0u32,))
        .await
}

/// Every `Sms` property, as `GetAll` gives them.
pub async fn sms_properties(conn: &zbus::Connection, sms: &str) -> HashMap<String, OwnedVariant> {
    proxy(conn, sms, "org.freedesktop.DBus.Properties")
        .await
        .call("GetAll", &(SMS_IFACE,))
        .await
        .unwrap_or_else(|e| panic!("GetAll of {sms}: {e}"))
}

/// The D-Bus error name of a failed call (`None`: not an error reply).
pub fn error_name(err: &zbus::Error) -> Option<String> {
    match err {
        zbus::Error::MethodError(name, _, _) => Some(name.to_string()),
        zbus::Error::FDO(fdo) => match &**fdo {
            zbus::fdo::Error::ZBus(inner) => error_name(inner),
            other => Some(zbus::DBusError::name(other).to_string()),
        },
        _ => None,
    }
}
