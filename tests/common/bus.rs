//! Private D-Bus buses, waiting, temporary directories.

use std::time::{Duration, Instant};

use tandem::devbus::PrivateBus;

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

/// Polls an async condition until it holds, for at most [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    wait_for(what, WAIT, check).await
}

/// Polls an async condition until it holds, for at most `within`.
pub async fn wait_for<F, Fut>(what: &str, within: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A fresh temporary directory for one test.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("tandem-test-")
        .tempdir()
        .expect("temp dir")
}
