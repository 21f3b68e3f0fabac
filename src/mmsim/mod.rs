//! `tandem-mmsim`: a ModemManager 1.20 simulator with a simulated carrier, so the daemon,
//! its tests and frontend authors can work without a phone.
//!
//! It serves, on a bus connection it is given, the bus name `org.freedesktop.ModemManager1`
//! with ModemManager's objects (manager with `ObjectManager`, modems, SIMs, SMS) as the
//! real daemon shows them, and the control interface `org.tandem.MMSim1` at
//! `/org/tandem/MMSim1` (also owning that name) that tests use to add and remove modems,
//! change their state, inject SMS and inspect what was sent. It must never touch the
//! machine's real system bus on its own: the caller picks the connection.
//!
//! Layout:
//! - [`mm`]: ModemManager's names, enum values and errors.
//! - `modem`: one modem's data and operations (the rules, unit-tested without a bus).
//! - `dbus`: the ModemManager objects, thin wrappers over a modem handle.
//! - `carrier`: the SMS centre task (routing, store-and-forward, status reports).
//! - `control`: `org.tandem.MMSim1`.
//! - `text`: GSM 7-bit / UCS-2 splitting and ModemManager's timestamp format.
//!
//! State design: there is no global lock. Each modem's state and SMS storage sit in its own
//! `ModemCell` (a std mutex for the data, never held across `.await`, plus a tokio mutex
//! that orders operations); the D-Bus objects of that modem hold a handle to it. They do
//! not own their data inside zbus's object server because zbus holds an interface's lock
//! for the whole of a method call: a `Messaging.Delete` held by `SetDeleteBlocked` would
//! then stall every writer of that interface, and behind it `GetManagedObjects`. So every
//! interface method takes `&self` and no interface is ever locked for writing. The carrier
//! task alone owns the undelivered SMS; everything else reaches it over its channel.
//! [`Context`] is the small shared part: the connection, the settings, the id counters and
//! the registry of hosted modems.

pub mod mm;

mod carrier;
mod control;
mod dbus;
mod modem;
mod text;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use zbus::object_server::SignalEmitter;
use zbus::{Connection, OwnedObjectPath};

use carrier::{Carrier, CarrierCmd, canonical_number};
use control::ControlIface;
use dbus::{ManagerIface, MessagingIface, Modem3gppIface, ModemIface, SimIface};
use modem::{Modem, ModemCell, object_path};

/// The control interface's bus name, interface name and object path.
pub const CONTROL_NAME: &str = "org.tandem.MMSim1";
pub const CONTROL_PATH: &str = "/org/tandem/MMSim1";

/// One modem to host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModemSpec {
    /// The number the carrier knows the modem by.
    pub own_number: String,
    /// Whether the SIM carries the number, i.e. `OwnNumbers` shows it (many SIMs do not,
    /// and the daemon must cope with that).
    pub sim_own_number: bool,
    /// Initial `MMModemState` (default 8, registered).
    pub state: i32,
}

impl ModemSpec {
    pub fn new(own_number: impl Into<String>) -> Self {
        ModemSpec {
            own_number: own_number.into(),
            sim_own_number: true,
            state: mm::modem_state::REGISTERED,
        }
    }
}

/// Everything the simulator is started with.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Modems hosted from the start (more can be added over the control interface).
    pub modems: Vec<ModemSpec>,
    /// Time between a delivery and its status report reaching the sender.
    pub report_delay: Duration,
    /// Time between the parts of a multipart SMS the carrier delivers.
    pub part_interval: Duration,
    /// The SMS centre number incoming SMS carry.
    pub smsc: String,
    /// The SMS centre's UTC offset, shown in SMS timestamps.
    pub utc_offset_minutes: i32,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            modems: Vec::new(),
            report_delay: Duration::from_millis(100),
            part_interval: Duration::from_millis(20),
            smsc: "+15550000000".to_owned(),
            utc_offset_minutes: 0,
        }
    }
}

/// Why the simulator could not start, or a modem could not be added or found.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("D-Bus: {0}")]
    Bus(#[from] zbus::Error),
    #[error("a modem with number {0:?} is already hosted")]
    Duplicate(String),
    #[error("invalid modem: {0}")]
    InvalidModem(String),
    #[error("no modem {0:?}")]
    NotFound(String),
}

/// The settings the carrier and the modems read (a copy of part of [`SimConfig`]).
#[derive(Debug, Clone)]
struct Settings {
    report_delay: Duration,
    part_interval: Duration,
    smsc: String,
    utc_offset_minutes: i32,
}

/// Object path counters: ModemManager never reuses an index while it runs.
#[derive(Debug, Default)]
struct Ids {
    modem: AtomicU32,
    sim: AtomicU32,
    sms: AtomicU32,
}

/// The hosted modems. A std mutex: lookups are short and never await.
#[derive(Debug, Default)]
struct Registry {
    inner: Mutex<RegistryInner>,
}

#[derive(Debug, Default)]
struct RegistryInner {
    modems: Vec<Arc<ModemCell>>,
    /// Every number ever hosted: SMS to one of them that is absent now wait at the
    /// carrier; SMS to any other number leave for the outside world.
    known: HashSet<String>,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, RegistryInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `cell` unless its number is hosted already.
    fn try_insert(&self, cell: Arc<ModemCell>) -> bool {
        let number = canonical_number(&cell.own_number);
        let mut inner = self.lock();
        if inner
            .modems
            .iter()
            .any(|m| canonical_number(&m.own_number) == number)
        {
            return false;
        }
        inner.known.insert(number);
        inner.modems.push(cell);
        true
    }

    fn remove(&self, index: u32) {
        self.lock().modems.retain(|m| m.index != index);
    }

    /// A modem named by its object path or its own number.
    fn find(&self, name: &str) -> Option<Arc<ModemCell>> {
        let number = canonical_number(name);
        self.lock()
            .modems
            .iter()
            .find(|m| m.path.as_str() == name || canonical_number(&m.own_number) == number)
            .cloned()
    }

    fn is_known(&self, number: &str) -> bool {
        self.lock().known.contains(&canonical_number(number))
    }

    fn all(&self) -> Vec<Arc<ModemCell>> {
        self.lock().modems.clone()
    }
}

/// What the modems, the D-Bus objects, the control interface and the carrier share.
struct Context {
    conn: Connection,
    settings: Settings,
    ids: Ids,
    registry: Registry,
    carrier_tx: mpsc::UnboundedSender<CarrierCmd>,
}

impl Context {
    fn carrier(&self, cmd: CarrierCmd) {
        if self.carrier_tx.send(cmd).is_err() {
            debug!("carrier stopped: command dropped");
        }
    }

    fn next_sms_path(&self) -> OwnedObjectPath {
        object_path(mm::sms_path(self.ids.sms.fetch_add(1, Ordering::Relaxed)))
    }

    fn handle(self: &Arc<Self>, cell: Arc<ModemCell>) -> Modem {
        Modem {
            cell,
            ctx: self.clone(),
        }
    }

    fn modem(self: &Arc<Self>, name: &str) -> Option<Modem> {
        self.registry.find(name).map(|cell| self.handle(cell))
    }

    fn modem_by_number(self: &Arc<Self>, number: &str) -> Option<Modem> {
        let number = canonical_number(number);
        self.registry
            .all()
            .into_iter()
            .find(|m| canonical_number(&m.own_number) == number)
            .map(|cell| self.handle(cell))
    }

    /// Hosts a new modem: SIM, then `Messaging` and `Modem3gpp`, then `Modem` last (a
    /// client that waits for the `Modem` interface finds the others already there).
    async fn add_modem(self: &Arc<Self>, spec: ModemSpec) -> Result<Modem, SimError> {
        if canonical_number(&spec.own_number).is_empty() {
            return Err(SimError::InvalidModem("empty number".to_owned()));
        }
        if !(mm::modem_state::FAILED..=mm::modem_state::CONNECTED).contains(&spec.state) {
            return Err(SimError::InvalidModem(format!(
                "no modem state {}",
                spec.state
            )));
        }
        if self.registry.find(&spec.own_number).is_some() {
            return Err(SimError::Duplicate(spec.own_number));
        }
        let cell = Arc::new(ModemCell::new(
            self.ids.modem.fetch_add(1, Ordering::Relaxed),
            self.ids.sim.fetch_add(1, Ordering::Relaxed),
            spec.own_number,
            spec.sim_own_number,
            spec.state,
        ));
        let modem = self.handle(cell.clone());
        let server = self.conn.object_server();
        server
            .at(&cell.sim_path, SimIface::new(modem.clone()))
            .await?;
        server
            .at(&cell.path, MessagingIface::new(modem.clone()))
            .await?;
        server
            .at(&cell.path, Modem3gppIface::new(modem.clone()))
            .await?;
        server
            .at(&cell.path, ModemIface::new(modem.clone()))
            .await?;
        if !self.registry.try_insert(cell.clone()) {
            modem.remove().await;
            return Err(SimError::Duplicate(cell.own_number.clone()));
        }
        info!(modem = %cell.path, number = %cell.own_number, state = spec.state, "modem added");
        if modem.data().registered() {
            self.carrier(CarrierCmd::Reachable {
                number: cell.own_number.clone(),
            });
        }
        Ok(modem)
    }

    async fn remove_modem(&self, modem: &Modem) {
        self.registry.remove(modem.cell.index);
        modem.remove().await;
        info!(modem = %modem.cell.path, number = %modem.cell.own_number, "modem removed");
    }

    /// The control interface's `Sent` signal.
    async fn emit_sent(&self, modem: &str, to: &str, text: &str) {
        let result = match SignalEmitter::new(&self.conn, CONTROL_PATH) {
            Ok(emitter) => ControlIface::sent(&emitter, modem, to, text).await,
            Err(error) => Err(error),
        };
        if let Err(error) = result {
            warn!(%error, "could not emit Sent");
        }
    }
}

/// A running simulator: a handle to add modems from Rust and to stop it.
pub struct Simulator {
    ctx: Arc<Context>,
    carrier: JoinHandle<()>,
}

impl Simulator {
    /// Hosts one more modem; returns its object path.
    pub async fn add_modem(&self, spec: ModemSpec) -> Result<OwnedObjectPath, SimError> {
        Ok(self.ctx.add_modem(spec).await?.cell.path.clone())
    }

    /// Removes a modem named by its own number or object path.
    pub async fn remove_modem(&self, name: &str) -> Result<(), SimError> {
        let modem = self
            .ctx
            .modem(name)
            .ok_or_else(|| SimError::NotFound(name.to_owned()))?;
        self.ctx.remove_modem(&modem).await;
        Ok(())
    }

    /// The object paths of the hosted modems.
    pub fn modems(&self) -> Vec<OwnedObjectPath> {
        self.ctx
            .registry
            .all()
            .iter()
            .map(|m| m.path.clone())
            .collect()
    }

    /// Stops the carrier (undelivered SMS are dropped) and takes every modem off the bus.
    pub async fn shutdown(self) {
        self.ctx.carrier(CarrierCmd::Shutdown);
        if let Err(error) = self.carrier.await {
            warn!(%error, "carrier task ended badly");
        }
        for cell in self.ctx.registry.all() {
            let modem = self.ctx.handle(cell);
            self.ctx.remove_modem(&modem).await;
        }
    }
}

/// Serves the simulator on `conn`: the objects first, then the names
/// `org.freedesktop.ModemManager1` and `org.tandem.MMSim1`.
pub async fn serve(conn: &Connection, config: SimConfig) -> Result<Simulator, SimError> {
    let (carrier_tx, carrier_rx) = mpsc::unbounded_channel();
    let ctx = Arc::new(Context {
        conn: conn.clone(),
        settings: Settings {
            report_delay: config.report_delay,
            part_interval: config.part_interval,
            smsc: config.smsc,
            utc_offset_minutes: config.utc_offset_minutes,
        },
        ids: Ids::default(),
        registry: Registry::default(),
        carrier_tx,
    });
    let carrier = tokio::spawn(Carrier::new(ctx.clone()).run(carrier_rx));
    let simulator = Simulator { ctx, carrier };
    if let Err(error) = publish(conn, &simulator, config.modems).await {
        simulator.shutdown().await;
        return Err(error);
    }
    info!(modems = simulator.modems().len(), "simulator ready");
    Ok(simulator)
}

/// Serves the objects, hosts the first modems, then takes the names.
async fn publish(
    conn: &Connection,
    simulator: &Simulator,
    modems: Vec<ModemSpec>,
) -> Result<(), SimError> {
    let server = conn.object_server();
    server
        .at(mm::MANAGER_PATH, zbus::fdo::ObjectManager)
        .await?;
    server.at(mm::MANAGER_PATH, ManagerIface).await?;
    server
        .at(CONTROL_PATH, ControlIface::new(simulator.ctx.clone()))
        .await?;
    for spec in modems {
        simulator.ctx.add_modem(spec).await?;
    }
    conn.request_name(mm::BUS_NAME).await?;
    conn.request_name(CONTROL_NAME).await?;
    Ok(())
}
