//! Wires the daemon together: opens the store, starts the adapters, the engine and the
//! API publisher as tasks connected by channels, serves the D-Bus API, and shuts it all
//! down in order. Shaped like mini-redis's `run(listener, shutdown)`: the caller owns the
//! configuration and the shutdown trigger, so tests and the binary start it the same way.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use crate::api::{self, ApiConfig, Messages};
use crate::config::Config;
use crate::contacts::{self, Contacts, ContactsConfig};
use crate::engine::{DaemonStatus, Engine, EngineCmd, EngineConfig};
use crate::logind;
use crate::modem::{self, ModemConfig, ModemEvent};
use crate::net;
use crate::notifier::{self, Notifier};
use crate::relay::{
    self,
    client::{ClientConfig, RelayCommand, RelayEvent},
};
use crate::sms_apps;
use crate::store::{Store, StoreError, StoreHandle};

/// Why the daemon could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot open the message store {path}: {source}")]
    Store {
        path: std::path::PathBuf,
        source: StoreError,
    },
    #[error("cannot connect to the session bus: {0}")]
    SessionBus(zbus::Error),
    #[error("cannot serve {name} on the session bus (is another tandemd running?): {source}")]
    Name {
        name: &'static str,
        source: zbus::Error,
    },
    #[error("another tandemd already serves {name} on this session bus; not starting a second one")]
    NameTaken { name: &'static str },
    #[error("lost {name} on the session bus; stopped so as not to consume messages unseen")]
    NameLost { name: &'static str },
}

/// Where the two buses are. `None` means the usual places (`DBUS_SESSION_BUS_ADDRESS`,
/// `DBUS_SYSTEM_BUS_ADDRESS`, then the defaults); the demo runs several daemons in one
/// process, each on buses of its own.
#[derive(Debug, Clone, Default)]
pub struct Buses {
    pub session: Option<String>,
    pub system: Option<String>,
}

fn builder(address: Option<&str>, system: bool) -> zbus::connection::Builder<'_> {
    match (address, system) {
        (Some(a), _) => zbus::connection::Builder::address(a),
        (None, false) => zbus::connection::Builder::session(),
        (None, true) => zbus::connection::Builder::system(),
    }
}

/// How long the daemon waits for its tasks to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Runs the daemon until `shutdown` completes, or until it loses its bus name (then
/// `Err(NameLost)`, after the same orderly stop). `Err(NameTaken)` when another daemon
/// already serves on the session bus.
pub async fn run(
    config: Config,
    db_path: &Path,
    buses: Buses,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    let store = open_store(db_path)?;
    let (engine_tx, engine_rx) = mpsc::channel(64);
    let (modem_cmd_tx, modem_cmd_rx) = mpsc::channel(64);
    let (modem_ev_tx, modem_ev_rx) = mpsc::channel(64);
    let (events_tx, events_rx) = mpsc::channel(256);
    let (status_tx, status_rx) = watch::channel(DaemonStatus::default());

    let session = builder(buses.session.as_deref(), false)
        .build()
        .await
        .map_err(DaemonError::SessionBus)?;
    let (contacts, filler) = contacts::pending();
    let (notifier, notifications) = Notifier::new(config.notifications.enabled);
    let engine = Engine::new(
        engine_config(&config),
        store.clone(),
        modem_cmd_tx,
        events_tx,
        status_tx,
        notifier,
    );
    // The IP channel, when a relay is configured. Its client starts once the bus name is
    // ours: a second daemon must not log in and take the first one's session.
    let (engine, relay_client) = with_relay(engine, &config, db_path);
    let (sms_apps_tx, sms_apps_rx) = watch::channel(Vec::new());
    let messages = Messages::new(
        store,
        engine_tx.clone(),
        status_rx.clone(),
        engine.presence_view(),
        sms_apps_rx.clone(),
        api_config(&config),
    )
    .with_contacts(contacts.clone());
    start_notifier(
        notifications,
        &buses,
        &engine_tx,
        messages.outbox(),
        contacts,
    );
    let name_lost = api::serve(&session, messages).await.map_err(name_error)?;
    info!(name = api::BUS_NAME, "serving on the session bus");
    let sms_apps = follow_sms_apps(&config, &session, sms_apps_tx, sms_apps_rx);
    let relay_task = relay_client.map(|(client, commands, events)| {
        tokio::spawn(run_relay(client, buses.system.clone(), commands, events))
    });

    let publisher = tokio::spawn(api::publish(session.clone(), status_rx, events_rx));
    let engine = tokio::spawn(engine.run(engine_rx, modem_ev_rx));
    let modem = tokio::spawn(run_modem(
        modem_config(&config),
        buses.system,
        modem_cmd_rx,
        modem_ev_tx,
    ));
    let _following = follow_contacts(filler, &config, db_path, &buses.session, &session);

    let lost = tokio::select! {
        () = shutdown => false,
        () = name_lost.wait() => true,
    };
    let tasks = join(engine, modem, relay_task, publisher);
    stop(lost, &session, &engine_tx, &sms_apps, tasks).await
}

/// The orderly stop: no more calls, then the engine (dropping it closes the channels that
/// keep the modem adapter and the publisher running), then waits for `tasks`.
async fn stop(
    lost: bool,
    session: &zbus::Connection,
    engine: &mpsc::Sender<EngineCmd>,
    sms_apps: &[JoinHandle<()>],
    tasks: impl Future<Output = ()>,
) -> Result<(), DaemonError> {
    if lost {
        error!(name = api::BUS_NAME, "lost the bus name: shutting down");
    }
    info!("shutting down");
    let _ = session.release_name(api::BUS_NAME).await;
    let _ = engine.send(EngineCmd::Shutdown).await;
    // They hold the session connection and would follow the bus for ever.
    sms_apps.iter().for_each(JoinHandle::abort);
    tasks.await;
    match lost {
        true => Err(DaemonError::NameLost {
            name: api::BUS_NAME,
        }),
        false => Ok(()),
    }
}

/// The store at `db_path`, on its own thread.
fn open_store(db_path: &Path) -> Result<StoreHandle, DaemonError> {
    let store = Store::open(db_path).map_err(|source| DaemonError::Store {
        path: db_path.to_owned(),
        source,
    })?;
    Ok(StoreHandle::spawn(store))
}

/// Follows the other SMS apps on the session bus (`sms_apps`) and publishes them as
/// `OtherSmsApps`: two tasks, to abort at shutdown.
fn follow_sms_apps(
    config: &Config,
    session: &zbus::Connection,
    apps: watch::Sender<Vec<String>>,
    present: watch::Receiver<Vec<String>>,
) -> [JoinHandle<()>; 2] {
    let receiving = if config.sms.receive {
        sms_apps::Receiving::Takes
    } else {
        sms_apps::Receiving::LeavesThem
    };
    let publisher = api::publish_sms_apps(session.clone(), present);
    [
        tokio::spawn(sms_apps::follow(session.clone(), receiving, apps)),
        tokio::spawn(async move {
            if let Err(e) = publisher.await {
                warn!(cause = %e, "OtherSmsApps is not published");
            }
        }),
    ]
}

/// Starts the notification task (when enabled), once the outbox its inline replies go
/// through exists.
fn start_notifier(
    inbox: Option<notifier::Inbox>,
    buses: &Buses,
    engine: &mpsc::Sender<EngineCmd>,
    outbox: api::Outbox,
    contacts: Contacts,
) {
    if let Some(inbox) = inbox {
        inbox.start(notifier::Wiring {
            address: buses.session.clone(),
            contacts,
            engine: engine.clone(),
            outbox,
        });
    }
}

/// The engine's part of the configuration.
fn engine_config(config: &Config) -> EngineConfig {
    EngineConfig {
        default_region: config.default_region.clone(),
        own_number: config.own_number.clone(),
        receive: config.sms.receive,
        delete_received: config.sms.delete_received,
        delete_sent: config.sms.delete_sent,
        max_parts: config.sms.max_parts,
        max_attempts: config.sms.max_attempts,
        send_timeout: Duration::from_secs(config.sms.send_timeout_s.into()),
        code_pattern: config.relay.code_pattern.clone(),
        presence_refresh: config.relay.presence_refresh(),
        fallback_timeout: config.relay.fallback_timeout(),
    }
}

/// The API's part of the configuration.
fn api_config(config: &Config) -> ApiConfig {
    ApiConfig {
        default_region: config.default_region.clone(),
        delivery_reports: config.sms.delivery_reports,
        max_text_chars: config.sms.max_text_chars as usize,
        max_parts: config.sms.max_parts,
    }
}

/// The modem adapter's part of the configuration.
fn modem_config(config: &Config) -> ModemConfig {
    ModemConfig {
        modem: config.sms.modem.clone(),
    }
}

/// Names from the address book, once the daemon's own start-up is done: a task of its
/// own, on a connection of its own (no address book is no error, only peers without
/// names), and `ContactsChanged` on the API's connection. Contacts' inline photos are
/// written next to the database. Both stop when the returned guard is dropped.
fn follow_contacts(
    filler: contacts::Filler,
    config: &Config,
    db_path: &Path,
    address: &Option<String>,
    session: &zbus::Connection,
) -> contacts::Following {
    let contacts_config = ContactsConfig {
        default_region: config.default_region.clone(),
        photo_dir: db_path
            .parent()
            .unwrap_or_else(|| Path::new("."))
            .join("contact-photos"),
    };
    tokio::spawn(api::publish_contacts(session.clone(), filler.changes()));
    filler.follow(address.clone(), contacts_config)
}

/// Waits for the tasks to end, at most [`SHUTDOWN_GRACE`].
async fn join(
    engine: JoinHandle<()>,
    modem: JoinHandle<()>,
    relay: Option<JoinHandle<()>>,
    publisher: JoinHandle<zbus::Result<()>>,
) {
    let stopped = tokio::time::timeout(SHUTDOWN_GRACE, async {
        let _ = engine.await;
        let _ = modem.await;
        if let Some(relay) = relay {
            let _ = relay.await;
        }
        let _ = publisher.await;
    })
    .await;
    if stopped.is_err() {
        warn!("tasks did not stop in time");
    }
}

/// The relay client's half of the IP channel: its configuration and channels.
type RelayHalf = (
    ClientConfig,
    mpsc::Receiver<RelayCommand>,
    mpsc::Sender<RelayEvent>,
);

/// Gives the engine a relay client when a relay is configured (a task like the modem
/// adapter, with the device token next to the database): the client's half.
fn with_relay(engine: Engine, config: &Config, db_path: &Path) -> (Engine, Option<RelayHalf>) {
    let Some(client) = relay_config(config, db_path) else {
        return (engine, None);
    };
    let (relay_cmd_tx, relay_cmd_rx) = mpsc::channel(64);
    let (relay_ev_tx, relay_ev_rx) = mpsc::channel(64);
    let engine = engine.with_relay(relay_cmd_tx, relay_ev_rx);
    (engine, Some((client, relay_cmd_rx, relay_ev_tx)))
}

/// The relay client's configuration, when a relay is configured. The device token lives
/// next to the database; it is made private, whatever it was.
fn relay_config(config: &Config, db_path: &Path) -> Option<ClientConfig> {
    let token_path = db_path
        .parent()
        .unwrap_or_else(|| Path::new("."))
        .join("relay-token");
    if let Err(e) = relay::client::make_token_private(&token_path) {
        warn!(cause = %e, "the relay token file may be readable by others");
    }
    Some(ClientConfig {
        url: config.relay.url.clone()?,
        token_path,
        min_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(300),
    })
}

/// Why the bus name could not be ours.
fn name_error(source: zbus::Error) -> DaemonError {
    match source {
        zbus::Error::NameTaken => DaemonError::NameTaken {
            name: api::BUS_NAME,
        },
        source => DaemonError::Name {
            name: api::BUS_NAME,
            source,
        },
    }
}

/// Completes on SIGTERM (systemd's stop) or SIGINT (Ctrl-C): the shutdown trigger of the
/// programs that run [`run`].
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Runs the relay client with the adapters it follows on the system bus when there is
/// one: the network (`net`, NetworkManager) and the system's sleep (`logind`): the
/// session is closed before the system sleeps and opened again when it wakes.
async fn run_relay(
    config: ClientConfig,
    system: Option<String>,
    commands: mpsc::Receiver<RelayCommand>,
    events: mpsc::Sender<RelayEvent>,
) {
    let Ok(system) = builder(system.as_deref(), true).build().await else {
        return relay::client::run(config, commands, events, None).await;
    };
    let (sleep_tx, sleep_rx) = mpsc::channel(4);
    let logind = tokio::spawn(logind::run(system.clone(), sleep_tx));
    let (net_tx, net_rx) = watch::channel(None);
    let network = tokio::spawn(net::run(system, net_tx));
    relay::client::run_with_sleep(config, commands, events, Some(net_rx), sleep_rx).await;
    // Its lock goes with it.
    logind.abort();
    network.abort();
}

/// Connects to the system bus (retrying while it is not there) and runs the adapter.
async fn run_modem(
    config: ModemConfig,
    address: Option<String>,
    commands: mpsc::Receiver<modem::ModemCommand>,
    events: mpsc::Sender<ModemEvent>,
) {
    let mut delay = Duration::from_secs(1);
    let system = loop {
        match builder(address.as_deref(), true).build().await {
            Ok(conn) => break conn,
            Err(e) => {
                warn!(cause = %e, retry_in = ?delay, "no system bus: no modem for now");
                // The engine starts with the modem absent; just wait and retry.
                if events.is_closed() {
                    return;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(60));
            }
        }
    };
    modem::run(config, system, commands, events).await;
}
