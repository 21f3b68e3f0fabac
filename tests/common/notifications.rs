//! A fake `org.freedesktop.Notifications` server on a private session bus, recording
//! every `Notify`.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;

/// What the fake server was called with.
#[derive(Debug)]
pub struct Call {
    pub app_name: String,
    pub replaces_id: u32,
    pub icon: String,
    pub summary: String,
    pub body: String,
    pub actions: Vec<String>,
    pub string_hints: HashMap<String, String>,
    pub expire_timeout: i32,
}

struct FakeServer {
    calls: mpsc::UnboundedSender<Call>,
    capabilities: Vec<String>,
}

#[zbus::interface(name = "org.freedesktop.Notifications")]
impl FakeServer {
    #[allow(clippy::too_many_arguments)]
    fn notify(
        &self,
        app_name: String,
        replaces_id: u32,
        app_icon: String,
        summary: String,
        body: String,
        actions: Vec<String>,
        hints: HashMap<String, zbus::OwnedVariant>,
        expire_timeout: i32,
    ) -> u32 {
        let string_hints = hints
            .into_iter()
            .filter_map(|(key, value)| String::try_from(value).ok().map(|value| (key, value)))
            .collect();
        let _ = self.calls.send(Call {
            app_name,
            replaces_id,
            icon: app_icon,
            summary,
            body,
            actions,
            string_hints,
            expire_timeout,
        });
        42
    }

    fn get_capabilities(&self) -> Vec<String> {
        self.capabilities.clone()
    }

    fn get_server_information(&self) -> (String, String, String, String) {
        (
            "fake".to_owned(),
            "tandem tests".to_owned(),
            "1".to_owned(),
            "1.2".to_owned(),
        )
    }
}

/// A fake notification server on the bus at `address`, with these capabilities; the
/// connection that keeps it, and its calls.
pub async fn start_server(
    address: &str,
    capabilities: &[&str],
) -> (zbus::Connection, mpsc::UnboundedReceiver<Call>) {
    let (calls, received) = mpsc::unbounded_channel();
    let server = FakeServer {
        calls,
        capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
    };
    let connection = zbus::connection::Builder::address(address)
        .serve_at("/org/freedesktop/Notifications", server)
        .name("org.freedesktop.Notifications")
        .build()
        .await
        .expect("fake notification server on the private bus");
    (connection, received)
}

/// The next call of the fake server, within 10 s.
pub async fn next_call(calls: &mut mpsc::UnboundedReceiver<Call>) -> Call {
    tokio::time::timeout(Duration::from_secs(10), calls.recv())
        .await
        .expect("Notify was not called within 10 s")
        .expect("fake server gone")
}
