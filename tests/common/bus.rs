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

/// Waits until `name` has an owner on the bus at `address`, for at most [`WAIT`], while
/// the program that should take it runs (`exited` is its exit status once it has
/// exited); a failure shows that program's `log`.
pub async fn until_owned(
    address: &str,
    name: &str,
    mut exited: impl FnMut() -> Option<std::process::ExitStatus>,
    log: impl Fn() -> String,
) {
    let conn = zbus::connection::Builder::address(address)
        .build()
        .await
        .expect("connect to the bus");
    let dbus = zbus::fdo::DBusProxy::new(&conn).await.expect("bus proxy");
    let owned = zbus::names::BusName::try_from(name).expect("a bus name");
    let deadline = Instant::now() + WAIT;
    while !dbus.name_has_owner(owned.clone()).await.unwrap_or(false) {
        if let Some(status) = exited() {
            panic!("exited with {status} before taking {name}:\n{}", log());
        }
        assert!(
            Instant::now() < deadline,
            "{name} not taken in time:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Calls `each` with every message matching `rule` on `bus`, from now on, in a task of
/// its own.
pub async fn on_messages(
    bus: &Bus,
    rule: zbus::MatchRule<'static>,
    mut each: impl FnMut(zbus::Message) + Send + 'static,
) {
    use futures_util::StreamExt as _;

    let conn = bus.connect().await;
    let mut stream = zbus::MessageStream::for_match_rule(rule, &conn, None)
        .await
        .expect("a message stream");
    tokio::spawn(async move {
        let _conn = conn;
        while let Some(Ok(msg)) = stream.next().await {
            each(msg);
        }
    });
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
