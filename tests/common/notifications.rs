//! A fake `org.freedesktop.Notifications` server on a private session bus, recording
//! every `Notify` and `CloseNotification`, with the capabilities a test gives it, and
//! able to send the server's signals (`ActionInvoked`, `NotificationClosed`,
//! `ActivationToken`, and KDE's `NotificationReplied`) as a user's touch would; and a fake
//! app (`org.freedesktop.Application` as `org.tandem.Messages`) recording the actions it
//! is asked to activate.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;
use zbus::OwnedVariant;
use zbus::object_server::SignalEmitter;

const PATH: &str = "/org/freedesktop/Notifications";
const IFACE: &str = "org.freedesktop.Notifications";

/// What the fake server was called with, and the id it answered.
#[derive(Debug)]
pub struct Call {
    pub id: u32,
    pub app_name: String,
    pub replaces_id: u32,
    pub icon: String,
    pub summary: String,
    pub body: String,
    pub actions: Vec<String>,
    pub string_hints: HashMap<String, String>,
    pub hints: HashMap<String, OwnedVariant>,
    pub expire_timeout: i32,
}

impl Call {
    /// The action keys (the even entries of `actions`).
    pub fn action_keys(&self) -> Vec<&str> {
        self.actions.iter().step_by(2).map(String::as_str).collect()
    }
}

struct FakeServer {
    calls: mpsc::UnboundedSender<Call>,
    closes: mpsc::UnboundedSender<u32>,
    capabilities: Vec<String>,
    last_id: u32,
}

#[zbus::interface(name = "org.freedesktop.Notifications")]
impl FakeServer {
    #[allow(clippy::too_many_arguments)]
    fn notify(
        &mut self,
        app_name: String,
        replaces_id: u32,
        app_icon: String,
        summary: String,
        body: String,
        actions: Vec<String>,
        hints: HashMap<String, OwnedVariant>,
        expire_timeout: i32,
    ) -> u32 {
        // As the spec says: a replacement keeps its id; otherwise a new one, never 0.
        let id = if replaces_id != 0 {
            replaces_id
        } else {
            self.last_id += 1;
            self.last_id
        };
        let string_hints = hints
            .iter()
            .filter_map(|(key, value)| {
                <&str>::try_from(value)
                    .ok()
                    .map(|value| (key.clone(), value.to_owned()))
            })
            .collect();
        let _ = self.calls.send(Call {
            id,
            app_name,
            replaces_id,
            icon: app_icon,
            summary,
            body,
            actions,
            string_hints,
            hints,
            expire_timeout,
        });
        id
    }

    /// Records the call and, as a server does, says the notification is closed (reason
    /// 3: by a call to `CloseNotification`).
    async fn close_notification(
        &self,
        id: u32,
        #[zbus(signal_emitter)] emitter: SignalEmitter<'_>,
    ) {
        let _ = self.closes.send(id);
        let _ = FakeServer::notification_closed(&emitter, id, 3).await;
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

    #[zbus(signal)]
    async fn notification_closed(
        emitter: &SignalEmitter<'_>,
        id: u32,
        reason: u32,
    ) -> zbus::Result<()>;
}

/// A running fake server: its connection (dropping it makes the server go away), the
/// calls it got, and its signals.
pub struct Notifications {
    pub conn: zbus::Connection,
    pub calls: mpsc::UnboundedReceiver<Call>,
    pub closes: mpsc::UnboundedReceiver<u32>,
}

impl Notifications {
    /// The server on the bus at `address`, with these capabilities.
    pub async fn start(address: &str, capabilities: &[&str]) -> Notifications {
        let (calls, received) = mpsc::unbounded_channel();
        let (closes, closed) = mpsc::unbounded_channel();
        let server = FakeServer {
            calls,
            closes,
            capabilities: capabilities.iter().map(|c| c.to_string()).collect(),
            last_id: 0,
        };
        let conn = zbus::connection::Builder::address(address)
            .serve_at(PATH, server)
            .name("org.freedesktop.Notifications")
            .build()
            .await
            .expect("fake notification server on the private bus");
        Notifications {
            conn,
            calls: received,
            closes: closed,
        }
    }

    /// The next `Notify`, within 10 s.
    pub async fn next_call(&mut self) -> Call {
        next_call(&mut self.calls).await
    }

    /// The id of the next `CloseNotification`, within 10 s.
    pub async fn next_close(&mut self) -> u32 {
        tokio::time::timeout(Duration::from_secs(10), self.closes.recv())
            .await
            .expect("CloseNotification was not called within 10 s")
            .expect("fake server gone")
    }

    async fn emit<B>(&self, member: &str, body: &B)
    where
        B: serde::Serialize + zbus::DynamicType,
    {
        self.conn
            .emit_signal(None::<zbus::names::BusName<'_>>, PATH, IFACE, member, body)
            .await
            .unwrap_or_else(|e| panic!("emit {member}: {e}"));
    }

    /// The user chose the action `key` of notification `id`.
    pub async fn action(&self, id: u32, key: &str) {
        self.emit("ActionInvoked", &(id, key)).await
    }

    /// The activation token of an action about to be invoked on `id`.
    pub async fn activation_token(&self, id: u32, token: &str) {
        self.emit("ActivationToken", &(id, token)).await
    }

    /// Notification `id` closed (`reason` 1 expired, 2 dismissed by the user).
    pub async fn closed(&self, id: u32, reason: u32) {
        self.emit("NotificationClosed", &(id, reason)).await
    }

    /// The user replied `text` inline to notification `id` (KDE Plasma).
    pub async fn replied(&self, id: u32, text: &str) {
        self.emit("NotificationReplied", &(id, text)).await
    }
}

/// A fake notification server on the bus at `address`, with these capabilities; the
/// connection that keeps it, and its calls.
pub async fn start_server(
    address: &str,
    capabilities: &[&str],
) -> (zbus::Connection, mpsc::UnboundedReceiver<Call>) {
    let server = Notifications::start(address, capabilities).await;
    (server.conn, server.calls)
}

/// The next call of the fake server, within 10 s.
pub async fn next_call(calls: &mut mpsc::UnboundedReceiver<Call>) -> Call {
    tokio::time::timeout(Duration::from_secs(10), calls.recv())
        .await
        .expect("Notify was not called within 10 s")
        .expect("fake server gone")
}

/// One `ActivateAction` the fake app got: the action, its parameters (as strings) and
/// the platform data's string entries.
#[derive(Debug, PartialEq, Eq)]
pub struct Activation {
    pub action: String,
    pub parameter: Vec<String>,
    pub platform_data: HashMap<String, String>,
}

struct FakeApp {
    activations: mpsc::UnboundedSender<Activation>,
}

#[zbus::interface(name = "org.freedesktop.Application")]
impl FakeApp {
    fn activate(&self, _platform_data: HashMap<String, OwnedVariant>) {}

    fn open(
        &self,
        _uris: Vec<String>,
        _hint: String,
        _platform_data: HashMap<String, OwnedVariant>,
    ) {
    }

    fn activate_action(
        &self,
        action_name: String,
        parameter: Vec<OwnedVariant>,
        platform_data: HashMap<String, OwnedVariant>,
    ) {
        let strings = |v: &OwnedVariant| <&str>::try_from(v).ok().map(str::to_owned);
        let _ = self.activations.send(Activation {
            action: action_name,
            parameter: parameter.iter().filter_map(strings).collect(),
            platform_data: platform_data
                .iter()
                .filter_map(|(k, v)| strings(v).map(|v| (k.clone(), v)))
                .collect(),
        });
    }
}

/// A fake `org.tandem.Messages` app on the bus at `address`: its connection and the
/// actions it was asked to activate.
pub async fn start_app(address: &str) -> (zbus::Connection, mpsc::UnboundedReceiver<Activation>) {
    let (activations, received) = mpsc::unbounded_channel();
    let conn = zbus::connection::Builder::address(address)
        .serve_at("/org/tandem/Messages", FakeApp { activations })
        .name("org.tandem.Messages")
        .build()
        .await
        .expect("fake app on the private bus");
    (conn, received)
}
