//! A private D-Bus bus for the demo, the benchmarks and the tests: a `dbus-daemon` of its
//! own on a socket in a fresh directory, with no service activation (so nothing on the
//! machine is ever started by a call to a missing name), killed and removed on drop.
//! It never touches the machine's session or system bus.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Why a private bus could not start.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("cannot start dbus-daemon (install the dbus-daemon package): {0}")]
    Spawn(std::io::Error),
    #[error("cannot prepare the bus directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("dbus-daemon printed no address")]
    NoAddress,
}

/// A running private bus. Its address goes into `DBUS_SESSION_BUS_ADDRESS` or
/// `DBUS_SYSTEM_BUS_ADDRESS` of the programs under test.
#[derive(Debug)]
pub struct PrivateBus {
    child: Child,
    address: String,
    /// Holds the socket and the bus configuration; removed on drop.
    dir: PathBuf,
}

impl PrivateBus {
    pub fn start() -> Result<PrivateBus, BusError> {
        static SEQUENCE: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "tandem-bus-{}-{}",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        ));
        let dir_error = |source| BusError::Dir {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(dir_error)?;
        let config = dir.join("bus.conf");
        std::fs::write(&config, bus_config(&dir)).map_err(dir_error)?;
        let mut child = Command::new("dbus-daemon")
            .arg(format!("--config-file={}", config.display()))
            .args(["--nofork", "--nopidfile", "--print-address=1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(BusError::Spawn)?;
        let mut line = String::new();
        if let Some(stdout) = child.stdout.take() {
            let _ = BufReader::new(stdout).read_line(&mut line);
        }
        let address = line.trim().to_owned();
        let bus = PrivateBus {
            child,
            address,
            dir,
        };
        if bus.address.is_empty() {
            return Err(BusError::NoAddress);
        }
        Ok(bus)
    }

    /// The bus address (`unix:path=...,guid=...`).
    pub fn address(&self) -> &str {
        &self.address
    }

    /// A new connection to the bus.
    pub async fn connect(&self) -> zbus::Result<zbus::Connection> {
        zbus::connection::Builder::address(self.address.as_str())
            .build()
            .await
    }
}

impl Drop for PrivateBus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A session-type bus that lets everyone talk to everyone, listens only in `dir`, and
/// has no service directories (no activation).
fn bus_config(dir: &std::path::Path) -> String {
    format!(
        r#"<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:dir={}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"#,
        dir.display()
    )
}
