//! The adapter task: one task that owns the system-bus connection, what it knows of
//! ModemManager's modems, the modem it picked and the SMS objects it is following. Every
//! D-Bus job that may take time (List, reading an SMS, sending, deleting) runs as a helper
//! task from [`super::sms`] and reports back over an internal channel, so nothing the modem
//! does can freeze the loop. It must not panic, give up on D-Bus errors, or share its state.
//!
//! Ordering: all of ModemManager's signals arrive on one match-rule stream that is subscribed
//! before `GetManagedObjects`; a modem-level signal received before that snapshot (by the
//! connection's receive order) is older than it and dropped, and signals from a previous
//! ModemManager instance (another unique name) are ignored. The `PropertiesChanged` of SMS
//! objects come on that same stream, subscribed before any SMS is read, so a multipart SMS
//! read as `receiving` cannot complete unseen: a State change during the read marks it for
//! another read.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::pending;
use std::num::NonZeroUsize;
use std::time::Duration;

use futures_util::stream::{self, BoxStream, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout};
use tracing::{debug, error, info, warn};
use zbus::message::{Sequence, Type};
use zbus::proxy::CacheProperties;
use zbus::{MatchRule, Message, MessageStream, OwnedObjectPath, Variant};

use super::errors::error_name;
use super::pick::{
    MESSAGING_IFACE, MODEM_IFACE, ModemInfo, choose, first_number, is_enabled, map_modem_state,
};
use super::proxies::{messaging, modem};
use super::sms::{self, CallError, MM_PATH, MM_SERVICE, Outgoing, Resolved, SMS_IFACE, SmsFound};
use super::{ModemCommand, ModemConfig, ModemEvent, SendFailure, SendOutcome, SmsObject};
use crate::domain::ModemState;

const DBUS_SERVICE: &str = "org.freedesktop.DBus";
const OBJECT_MANAGER_IFACE: &str = "org.freedesktop.DBus.ObjectManager";
const PROPERTIES_IFACE: &str = "org.freedesktop.DBus.Properties";

/// Pause before trying again to subscribe or to discover modems after a failure.
const RETRY_PAUSE: Duration = Duration::from_secs(5);
/// Bound of `GetManagedObjects`, the one call awaited inside the loop.
const DISCOVER_TIMEOUT: Duration = Duration::from_secs(10);
/// How often multipart SMS still `receiving` are read again, in case a signal was lost.
const RECHECK_PERIOD: Duration = Duration::from_secs(30);
/// Queue of ModemManager's signals; the loop drains it continuously.
const SIGNAL_QUEUE: usize = 1024;
/// How long the last events may take to be delivered when the adapter stops.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs until `commands` is closed. Never panics, never returns early on D-Bus errors:
/// it follows ModemManager going away and coming back.
pub async fn run(
    config: ModemConfig,
    system: zbus::Connection,
    mut commands: mpsc::Receiver<ModemCommand>,
    events: mpsc::Sender<ModemEvent>,
) {
    let (internal_tx, mut internal_rx) = mpsc::unbounded_channel();
    let mut adapter = Adapter::new(config, system, internal_tx);
    let mut signals: Option<BoxStream<'static, zbus::Result<Message>>> = None;
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(command) => adapter.on_command(command),
                None => break,
            },
            Some(done) = internal_rx.recv() => adapter.on_internal(done),
            item = next_signal(&mut signals) => match item {
                Some(Ok(msg)) => adapter.on_signal(&msg),
                Some(Err(err)) => debug!(error = %err, "unreadable signal"),
                None => {
                    warn!("the system bus connection stopped delivering signals");
                    signals = None;
                    adapter.forget_modem_manager();
                    adapter.retry_at = Some(Instant::now() + RETRY_PAUSE);
                }
            },
            permit = events.reserve(), if !adapter.outbox.is_empty() => match permit {
                Ok(permit) => {
                    if let Some(event) = adapter.outbox.pop_front() {
                        permit.send(event);
                    }
                }
                Err(_) => adapter.events_closed(),
            },
            () = sleep_until_some(adapter.retry_at) => {
                adapter.retry_at = None;
                if signals.is_none() {
                    match subscribe(&adapter.conn).await {
                        Ok(stream) => signals = Some(stream),
                        Err(err) => {
                            warn!(error = %err, "cannot subscribe to ModemManager's signals");
                            adapter.emit_state(ModemState::Absent);
                            adapter.retry_at = Some(Instant::now() + RETRY_PAUSE);
                            continue;
                        }
                    }
                }
                adapter.discover().await;
            },
            () = sleep_until_some(adapter.recheck_at) => {
                adapter.recheck_at = None;
                adapter.recheck_waiting();
            },
            Some(joined) = adapter.tasks.join_next_with_id(), if !adapter.tasks.is_empty() => {
                adapter.on_joined(joined);
            },
        }
    }
    adapter.stop(&mut internal_rx, &events).await;
}

/// A helper task's future.
type BoxFuture = std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

async fn next_signal(
    signals: &mut Option<BoxStream<'static, zbus::Result<Message>>>,
) -> Option<zbus::Result<Message>> {
    match signals {
        Some(stream) => stream.next().await,
        None => pending().await,
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => pending().await,
    }
}

/// One stream with every signal ModemManager emits under its path, and the bus's
/// NameOwnerChanged for ModemManager's name.
async fn subscribe(
    conn: &zbus::Connection,
) -> zbus::Result<BoxStream<'static, zbus::Result<Message>>> {
    let queue = NonZeroUsize::new(SIGNAL_QUEUE);
    let modem_manager = MatchRule::builder()
        .msg_type(Type::Signal)
        .sender(MM_SERVICE)
        .path_namespace(MM_PATH)
        .build()?;
    let owner = MatchRule::builder()
        .msg_type(Type::Signal)
        .sender(DBUS_SERVICE)
        .interface(DBUS_SERVICE)
        .member("NameOwnerChanged")
        .arg(0, MM_SERVICE)
        .build()?;
    let owner = MessageStream::for_match_rule(owner, conn, queue).await?;
    let modem_manager = MessageStream::for_match_rule(modem_manager, conn, queue).await?;
    Ok(stream::select(owner, modem_manager).boxed())
}

/// What a helper task reports back to the loop.
enum Done {
    Listed {
        generation: u64,
        result: Result<Vec<OwnedObjectPath>, CallError>,
    },
    Read {
        generation: u64,
        path: OwnedObjectPath,
        result: Result<SmsFound, CallError>,
    },
    Created {
        ticket: u64,
        object: Result<SmsObject, SendFailure>,
    },
    Sent {
        ticket: u64,
        outcome: SendOutcome,
    },
    Deleted {
        path: OwnedObjectPath,
        result: Result<(), CallError>,
    },
    Discarded {
        object: SmsObject,
    },
}

/// Where an SMS object of the picked modem stands. A path is only an address for as long as
/// the object lives: entries go when it is deleted, when a List no longer shows it, and when
/// the modem or ModemManager goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tracked {
    /// A read is running; `dirty` when its State changed meanwhile (read again if the read
    /// says `receiving`).
    Reading { dirty: bool },
    /// A multipart SMS waiting for parts: read again when its State changes.
    Waiting,
    /// Reported (or not something received): never reported again.
    Done,
}

/// The modem in use.
#[derive(Debug)]
struct Picked {
    path: OwnedObjectPath,
    /// Results of helper tasks started for an earlier pick are ignored.
    generation: u64,
    /// The last `MMModemState` acted upon, to notice changes and re-enabling.
    state: i32,
    /// The last own number reported.
    own_number: Option<String>,
}

/// A Create, Send or Resolve that has not been answered yet.
#[derive(Debug)]
struct PendingSend {
    id: String,
    /// To answer it if its task dies.
    task: tokio::task::Id,
    /// A Send or Resolve: the SMS may have gone out, so a task that dies leaves the
    /// outcome unknown (and a stopping adapter leaves it to the next run to resolve).
    may_have_gone: bool,
}

struct Adapter {
    config: ModemConfig,
    conn: zbus::Connection,
    /// Given to every helper task to report back.
    done_tx: mpsc::UnboundedSender<Done>,
    /// Every helper task, so that none outlives the adapter.
    tasks: JoinSet<()>,
    /// Events not delivered yet: the loop never waits on a slow receiver.
    outbox: VecDeque<ModemEvent>,
    /// False once the receiver of events is gone: nothing is queued any more.
    events_open: bool,
    /// Unique name of the ModemManager instance the snapshot came from.
    mm_owner: Option<String>,
    /// Receive position of that snapshot: modem-level signals received earlier are stale.
    snapshot_at: Option<Sequence>,
    /// Every object with the Modem or Messaging interface.
    modems: HashMap<OwnedObjectPath, ModemInfo>,
    picked: Option<Picked>,
    /// Incremented at every pick and unpick.
    generation: u64,
    tracked: HashMap<OwnedObjectPath, Tracked>,
    /// Of the tracked SMS, those a listing found (there before we watched) and not yet
    /// reported: `IncomingSms::listed`.
    listed: HashSet<OwnedObjectPath>,
    pending: HashMap<u64, PendingSend>,
    next_ticket: u64,
    /// SMS objects this run created (at the current ModemManager instance): never
    /// reported as [`ModemEvent::Draft`].
    ours: HashSet<OwnedObjectPath>,
    /// The last state reported; `None` before the first, which is always sent.
    last_state: Option<ModemState>,
    /// When to (re)subscribe and discover modems.
    retry_at: Option<Instant>,
    /// When to read the multipart SMS still waiting for parts again; `None` while none
    /// waits, so that an idle adapter has no timer at all.
    recheck_at: Option<Instant>,
}

impl Adapter {
    fn new(
        config: ModemConfig,
        conn: zbus::Connection,
        done_tx: mpsc::UnboundedSender<Done>,
    ) -> Self {
        Adapter {
            config,
            conn,
            done_tx,
            tasks: JoinSet::new(),
            outbox: VecDeque::new(),
            events_open: true,
            mm_owner: None,
            snapshot_at: None,
            modems: HashMap::new(),
            picked: None,
            generation: 0,
            tracked: HashMap::new(),
            listed: HashSet::new(),
            pending: HashMap::new(),
            next_ticket: 0,
            ours: HashSet::new(),
            last_state: None,
            retry_at: Some(Instant::now()),
            recheck_at: None,
        }
    }

    // ----- events -----

    fn emit(&mut self, event: ModemEvent) {
        if self.events_open {
            self.outbox.push_back(event);
        }
    }

    fn emit_state(&mut self, state: ModemState) {
        if self.last_state != Some(state) {
            info!(state = %state, "modem state");
            self.last_state = Some(state);
            self.emit(ModemEvent::State(state));
        }
    }

    fn events_closed(&mut self) {
        if self.events_open {
            warn!("nobody receives modem events any more");
        }
        self.events_open = false;
        self.outbox.clear();
    }

    // ----- discovery and picking -----

    /// `GetManagedObjects` on ModemManager: replaces everything known of its modems.
    async fn discover(&mut self) {
        let reply = timeout(DISCOVER_TIMEOUT, async {
            let manager = zbus::fdo::ObjectManagerProxy::builder(&self.conn)
                .destination(MM_SERVICE)
                .path(MM_PATH)
                .cache_properties(CacheProperties::No)
                .build()
                .await?;
            // The raw reply, for its sender and receive position (see the module docs).
            manager.inner().call_method("GetManagedObjects", &()).await
        })
        .await;
        let reply = match reply {
            Ok(Ok(reply)) => reply,
            Ok(Err(err)) => {
                let absent = error_name(&err).is_some_and(|(name, _)| {
                    name == "org.freedesktop.DBus.Error.ServiceUnknown"
                        || name == "org.freedesktop.DBus.Error.NameHasNoOwner"
                });
                self.forget_modem_manager();
                if absent {
                    info!("ModemManager is not running");
                } else {
                    warn!(error = %err, "cannot list ModemManager's modems");
                    self.retry_at = Some(Instant::now() + RETRY_PAUSE);
                }
                return;
            }
            Err(_) => {
                warn!("ModemManager did not list its modems in time");
                self.forget_modem_manager();
                self.retry_at = Some(Instant::now() + RETRY_PAUSE);
                return;
            }
        };

        let objects = reply.body().deserialize::<zbus::fdo::ManagedObjects>();
        let owner = reply.header().sender().map(|s| s.to_string());
        let (Some(owner), Ok(objects)) = (owner, objects) else {
            warn!("ModemManager's list of modems is unreadable");
            self.forget_modem_manager();
            self.retry_at = Some(Instant::now() + RETRY_PAUSE);
            return;
        };

        let mut modems = HashMap::new();
        for (path, interfaces) in &objects {
            let mut info = ModemInfo::default();
            for (interface, props) in interfaces {
                let props: HashMap<&str, &Variant<'_>> =
                    props.iter().map(|(k, v)| (k.as_str(), &**v)).collect();
                info.add_interface(interface.as_str(), &props);
            }
            if info.has_modem || info.has_messaging {
                modems.insert(path.clone(), info);
            }
        }
        info!(owner = %owner, modems = modems.len(), "found ModemManager");
        if self.mm_owner.as_deref() != Some(owner.as_str()) {
            // Another instance: nothing of the previous one holds.
            self.reset_modem_manager();
        }
        self.mm_owner = Some(owner);
        self.snapshot_at = Some(reply.recv_position());
        self.modems = modems;
        self.reconcile();
    }

    /// ModemManager went away (or we lost track of it): nothing we knew holds.
    fn forget_modem_manager(&mut self) {
        self.reset_modem_manager();
        self.emit_state(ModemState::Absent);
    }

    /// Forgets everything of the ModemManager instance we knew, without telling anyone yet.
    fn reset_modem_manager(&mut self) {
        self.mm_owner = None;
        self.ours.clear();
        self.snapshot_at = None;
        self.modems.clear();
        if self.picked.is_some() {
            self.unpick();
        }
    }

    /// Makes the pick agree with `modems`: drops a modem that went away, picks one if none,
    /// and reports changes of the picked modem.
    fn reconcile(&mut self) {
        if let Some(picked) = &self.picked
            && !self.modems.get(&picked.path).is_some_and(ModemInfo::usable)
        {
            info!(modem = %picked.path, "modem gone");
            self.unpick();
        }
        if self.picked.is_some() {
            self.sync_picked();
            return;
        }
        match choose(&self.modems, self.config.modem.as_deref()) {
            Some(path) => self.pick(path),
            None => {
                if let Some(wanted) = &self.config.modem
                    && self.modems.values().any(ModemInfo::usable)
                {
                    debug!(wanted = %wanted, "no modem matches the configured one");
                }
                self.emit_state(ModemState::Absent);
            }
        }
    }

    fn pick(&mut self, path: OwnedObjectPath) {
        let Some(info) = self.modems.get(&path) else {
            return;
        };
        let (state, own_number) = (info.state, first_number(&info.own_numbers));
        self.generation += 1;
        info!(modem = %path, state, "using modem");
        self.picked = Some(Picked {
            path,
            generation: self.generation,
            state,
            own_number: own_number.clone(),
        });
        // The number first: whoever sees the modem `registered` sees its number too.
        self.emit(ModemEvent::OwnNumber(own_number));
        self.emit_state(map_modem_state(state));
        if is_enabled(state) {
            self.spawn_list();
        }
    }

    fn unpick(&mut self) {
        // The number went with the SIM: the daemon falls back to its configuration.
        if self.picked.as_ref().is_some_and(|p| p.own_number.is_some()) {
            self.emit(ModemEvent::OwnNumber(None));
        }
        self.picked = None;
        self.generation += 1;
        self.tracked.clear();
        self.listed.clear();
    }

    /// Reports what changed on the picked modem since we last looked.
    fn sync_picked(&mut self) {
        let Some(picked) = self.picked.as_mut() else {
            return;
        };
        let Some(info) = self.modems.get(&picked.path) else {
            return;
        };
        let mut new_state = None;
        let mut enabled_again = false;
        if info.state != picked.state {
            debug!(modem = %picked.path, from = picked.state, to = info.state, "modem state changed");
            enabled_again = !is_enabled(picked.state) && is_enabled(info.state);
            picked.state = info.state;
            new_state = Some(map_modem_state(info.state));
        }
        let own_number = first_number(&info.own_numbers);
        let number_changed = own_number != picked.own_number;
        if number_changed {
            picked.own_number = own_number.clone();
        }

        if number_changed {
            self.emit(ModemEvent::OwnNumber(own_number));
        }
        if let Some(state) = new_state {
            self.emit_state(state);
        }
        if enabled_again {
            // Enabling re-creates every SMS object under new paths.
            self.spawn_list();
        }
    }

    // ----- signals -----

    fn on_signal(&mut self, msg: &Message) {
        let header = msg.header();
        let (Some(interface), Some(member), Some(path)) =
            (header.interface(), header.member(), header.path())
        else {
            return;
        };
        let (interface, member) = (interface.as_str(), member.as_str());
        if interface == DBUS_SERVICE && member == "NameOwnerChanged" {
            self.on_name_owner_changed(msg);
            return;
        }

        // Only signals of the ModemManager instance we listed count.
        let from_known = match (header.sender(), &self.mm_owner) {
            (Some(sender), Some(owner)) => sender.as_str() == owner,
            _ => false,
        };
        if !from_known {
            return;
        }
        let stale = self.snapshot_at.is_some_and(|at| msg.recv_position() < at);
        let path = OwnedObjectPath::from(path.to_owned());

        match (interface, member) {
            (OBJECT_MANAGER_IFACE, "InterfacesAdded") if !stale => self.on_interfaces_added(msg),
            (OBJECT_MANAGER_IFACE, "InterfacesRemoved") if !stale => {
                self.on_interfaces_removed(msg)
            }
            (PROPERTIES_IFACE, "PropertiesChanged") => {
                self.on_properties_changed(&path, msg, stale)
            }
            (MODEM_IFACE, "StateChanged") if !stale => {
                let new = modem::StateChanged::from_message(msg.clone())
                    .and_then(|signal| signal.args().ok().map(|args| args.new));
                if let (Some(new), Some(info)) = (new, self.modems.get_mut(&path)) {
                    info.state = new;
                    self.reconcile();
                }
            }
            (MESSAGING_IFACE, "Added") if self.is_picked(&path) => {
                let Some(args) = messaging::Added::from_message(msg.clone())
                    .and_then(|signal| signal.args().ok().map(|a| (a.path.into(), a.received)))
                else {
                    return;
                };
                let (sms, received): (OwnedObjectPath, bool) = args;
                if received {
                    debug!(modem = %path, sms = %sms, "SMS added");
                    self.track(sms);
                } else {
                    debug!(modem = %path, sms = %sms, "our own SMS added");
                }
            }
            (MESSAGING_IFACE, "Deleted") if self.is_picked(&path) => {
                if let Some(sms) = messaging::Deleted::from_message(msg.clone())
                    .and_then(|signal| signal.args().ok().map(|a| OwnedObjectPath::from(a.path)))
                {
                    debug!(modem = %path, sms = %sms, "SMS deleted");
                    self.tracked.remove(&sms);
                }
            }
            _ => {}
        }
    }

    fn is_picked(&self, path: &OwnedObjectPath) -> bool {
        self.picked.as_ref().is_some_and(|p| &p.path == path)
    }

    fn on_name_owner_changed(&mut self, msg: &Message) {
        let Some(signal) = zbus::fdo::NameOwnerChanged::from_message(msg.clone()) else {
            return;
        };
        let Ok(args) = signal.args() else {
            return;
        };
        if args.name().as_str() != MM_SERVICE {
            return;
        }
        let old_owner = args.old_owner().as_ref().map(|n| n.to_string());
        match args.new_owner().as_ref().map(|n| n.to_string()) {
            None => {
                if self.mm_owner.is_some() && old_owner == self.mm_owner {
                    info!("ModemManager went away");
                    self.forget_modem_manager();
                }
            }
            Some(new_owner) => {
                if self.mm_owner.as_ref() != Some(&new_owner) {
                    info!(owner = %new_owner, "ModemManager appeared");
                    self.forget_modem_manager();
                    self.retry_at = Some(Instant::now());
                }
            }
        }
    }

    fn on_interfaces_added(&mut self, msg: &Message) {
        let Some(signal) = zbus::fdo::InterfacesAdded::from_message(msg.clone()) else {
            return;
        };
        let Ok(args) = signal.args() else {
            return;
        };
        let interfaces = args.interfaces_and_properties();
        if !interfaces
            .keys()
            .any(|i| i.as_str() == MODEM_IFACE || i.as_str() == MESSAGING_IFACE)
        {
            return;
        }
        let path = OwnedObjectPath::from(args.object_path().to_owned());
        debug!(modem = %path, "modem interfaces added");
        let info = self.modems.entry(path).or_default();
        for (interface, props) in interfaces {
            let props: HashMap<&str, &Variant<'_>> = props.iter().map(|(k, v)| (*k, v)).collect();
            info.add_interface(interface.as_str(), &props);
        }
        self.reconcile();
    }

    fn on_interfaces_removed(&mut self, msg: &Message) {
        let Some(signal) = zbus::fdo::InterfacesRemoved::from_message(msg.clone()) else {
            return;
        };
        let Ok(args) = signal.args() else {
            return;
        };
        let path = OwnedObjectPath::from(args.object_path().to_owned());
        let Some(info) = self.modems.get_mut(&path) else {
            return;
        };
        debug!(modem = %path, "modem interfaces removed");
        for interface in args.interfaces().iter() {
            info.remove_interface(interface.as_str());
        }
        if !info.has_modem && !info.has_messaging {
            self.modems.remove(&path);
        }
        self.reconcile();
    }

    fn on_properties_changed(&mut self, path: &OwnedObjectPath, msg: &Message, stale: bool) {
        let Some(signal) = zbus::fdo::PropertiesChanged::from_message(msg.clone()) else {
            return;
        };
        let Ok(args) = signal.args() else {
            return;
        };
        match args.interface_name().as_str() {
            MODEM_IFACE if !stale => {
                if let Some(info) = self.modems.get_mut(path) {
                    let props: HashMap<&str, &Variant<'_>> = args
                        .changed_properties()
                        .iter()
                        .map(|(k, v)| (*k, v))
                        .collect();
                    info.update(&props);
                    self.reconcile();
                }
            }
            SMS_IFACE => {
                let state_changed = args.changed_properties().contains_key("State")
                    || args.invalidated_properties().contains(&"State");
                if state_changed {
                    self.on_sms_state_changed(path);
                }
            }
            _ => {}
        }
    }

    // ----- SMS objects -----

    /// Starts following an SMS object of the picked modem, unless we already do.
    fn track(&mut self, path: OwnedObjectPath) {
        if self.tracked.contains_key(&path) {
            return;
        }
        self.tracked
            .insert(path.clone(), Tracked::Reading { dirty: false });
        self.spawn_read(path);
    }

    fn on_sms_state_changed(&mut self, path: &OwnedObjectPath) {
        match self.tracked.get_mut(path) {
            Some(Tracked::Reading { dirty }) => *dirty = true,
            Some(entry @ Tracked::Waiting) => {
                *entry = Tracked::Reading { dirty: false };
                self.spawn_read(path.clone());
            }
            Some(Tracked::Done) | None => {}
        }
    }

    fn recheck_waiting(&mut self) {
        let waiting: Vec<OwnedObjectPath> = self
            .tracked
            .iter()
            .filter(|(_, t)| **t == Tracked::Waiting)
            .map(|(p, _)| p.clone())
            .collect();
        for path in waiting {
            self.tracked
                .insert(path.clone(), Tracked::Reading { dirty: false });
            self.spawn_read(path);
        }
    }

    fn on_listed(&mut self, paths: Vec<OwnedObjectPath>) {
        let listed: HashSet<&OwnedObjectPath> = paths.iter().collect();
        // Forget what is gone; a running read reports for itself.
        self.tracked
            .retain(|path, t| listed.contains(path) || matches!(t, Tracked::Reading { .. }));
        self.listed.retain(|path| listed.contains(path));
        debug!(count = paths.len(), "listed SMS");
        for path in paths {
            if !self.tracked.contains_key(&path) {
                self.listed.insert(path.clone());
            }
            self.track(path);
        }
    }

    fn on_read(&mut self, path: OwnedObjectPath, result: Result<SmsFound, CallError>) {
        let Some(Tracked::Reading { dirty }) = self.tracked.get(&path).copied() else {
            return;
        };
        let modem = self
            .picked
            .as_ref()
            .map(|p| p.path.to_string())
            .unwrap_or_default();
        match result {
            Ok(SmsFound::Incoming(mut sms)) => {
                info!(modem = %modem, sms = %path, "SMS received");
                sms.listed = self.listed.remove(&path);
                self.tracked.insert(path, Tracked::Done);
                self.emit(ModemEvent::Incoming(sms));
            }
            Ok(SmsFound::StatusReport(report)) => {
                info!(modem = %modem, sms = %path, reference = report.reference,
                    delivery_state = report.delivery_state, "status report received");
                self.tracked.insert(path, Tracked::Done);
                self.emit(ModemEvent::StatusReport(report));
            }
            Ok(SmsFound::Receiving) if dirty => {
                self.tracked
                    .insert(path.clone(), Tracked::Reading { dirty: false });
                self.spawn_read(path);
            }
            Ok(SmsFound::Receiving) => {
                debug!(modem = %modem, sms = %path, "multipart SMS waits for parts");
                self.tracked.insert(path, Tracked::Waiting);
                self.recheck_at
                    .get_or_insert_with(|| Instant::now() + RECHECK_PERIOD);
            }
            Ok(SmsFound::Draft { number, text }) => {
                self.tracked.insert(path.clone(), Tracked::Done);
                if let (false, Some(owner), Some(picked)) =
                    (self.ours.contains(&path), &self.mm_owner, &self.picked)
                {
                    debug!(modem = %modem, sms = %path, "unsent outgoing SMS found");
                    let object = SmsObject {
                        owner: owner.clone(),
                        modem: picked.path.clone(),
                        path,
                    };
                    self.emit(ModemEvent::Draft {
                        object,
                        number,
                        text,
                    });
                }
            }
            Ok(SmsFound::Binary { bytes }) => {
                // mmsd-tng reads MMS notifications from ModemManager itself, and deletes them.
                info!(modem = %modem, sms = %path, bytes, "data SMS (not text) left on the modem");
                self.tracked.insert(path, Tracked::Done);
            }
            Ok(SmsFound::Other(state)) => {
                debug!(modem = %modem, sms = %path, state, "SMS not received one, ignored");
                self.tracked.insert(path, Tracked::Done);
            }
            Err(err) => {
                if err.is_unknown_object() {
                    debug!(modem = %modem, sms = %path, "SMS vanished before it was read");
                } else {
                    warn!(modem = %modem, sms = %path, error = %err, "cannot read an SMS");
                }
                // Forgotten: the next List (at the next enabling) tries again.
                self.tracked.remove(&path);
            }
        }
    }

    // ----- helper tasks -----

    fn spawn_list(&mut self) {
        let Some(picked) = &self.picked else {
            return;
        };
        let (conn, modem, generation) = (self.conn.clone(), picked.path.clone(), picked.generation);
        let done = self.done_tx.clone();
        self.tasks.spawn(async move {
            let result = sms::list(&conn, &modem).await;
            let _ = done.send(Done::Listed { generation, result });
        });
    }

    fn spawn_read(&mut self, path: OwnedObjectPath) {
        let (conn, generation, done) = (self.conn.clone(), self.generation, self.done_tx.clone());
        self.tasks.spawn(async move {
            let result = sms::read(&conn, &path).await;
            let _ = done.send(Done::Read {
                generation,
                path,
                result,
            });
        });
    }

    /// Why a send cannot be tried now, if it cannot.
    fn refusal(&self) -> Option<&'static str> {
        match &self.picked {
            None => Some("no modem"),
            Some(p) if map_modem_state(p.state) != ModemState::Registered => {
                Some("modem not registered")
            }
            Some(_) if self.mm_owner.is_none() => Some("no modem"),
            Some(_) => None,
        }
    }

    /// Runs one job of the send path as a helper task, answered under `id`.
    fn spawn_send_job<F>(&mut self, id: String, may_have_gone: bool, job: F)
    where
        F: FnOnce(u64, zbus::Connection, mpsc::UnboundedSender<Done>) -> BoxFuture,
    {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let task = self
            .tasks
            .spawn(job(ticket, self.conn.clone(), self.done_tx.clone()));
        self.pending.insert(
            ticket,
            PendingSend {
                id,
                task: task.id(),
                may_have_gone,
            },
        );
    }

    fn on_command(&mut self, command: ModemCommand) {
        match command {
            ModemCommand::Create {
                id,
                number,
                text,
                delivery_report,
            } => self.create(
                id,
                Outgoing {
                    number,
                    text,
                    delivery_report,
                },
            ),
            ModemCommand::Send { id, object, budget } => self.send(id, object, budget),
            ModemCommand::Resolve {
                id,
                object,
                settle_until,
            } => self.resolve(id, object, settle_until),
            ModemCommand::Discard { object } => self.spawn_discard(object),
            ModemCommand::Delete { path } => self.delete(path),
        }
    }

    /// Tells the engine at once that an SMS cannot be created or sent now, and why.
    fn refuse(&mut self, id: String, reason: &str) {
        debug!(id = %id, reason, "SMS refused");
        self.emit(ModemEvent::SendRefused {
            id,
            reason: reason.to_owned(),
        });
    }

    fn create(&mut self, id: String, out: Outgoing) {
        let (Some(picked), Some(owner), None) = (&self.picked, &self.mm_owner, self.refusal())
        else {
            return self.refuse(id, self.refusal().unwrap_or("no modem"));
        };
        let (modem, owner) = (picked.path.clone(), owner.clone());
        debug!(modem = %modem, id = %id, "creating an SMS");
        self.spawn_send_job(id, false, move |ticket, conn, done| {
            Box::pin(async move {
                let object = sms::create(&conn, &modem, &out)
                    .await
                    .map(|path| SmsObject { owner, modem, path });
                let _ = done.send(Done::Created { ticket, object });
            })
        });
    }

    fn send(&mut self, id: String, object: SmsObject, budget: Duration) {
        if let Some(reason) = self.refusal() {
            return self.refuse(id, reason);
        }
        if self.mm_owner.as_deref() != Some(object.owner.as_str()) {
            // Its ModemManager is gone, and the object with it: never sent.
            self.emit(ModemEvent::SendResult {
                id,
                outcome: SendOutcome::NotSent(SendFailure {
                    temporary: true,
                    reason: "ModemManager restarted".to_owned(),
                }),
            });
            return;
        }
        debug!(sms = %object.path, id = %id, "sending an SMS");
        self.spawn_send_job(id, true, move |ticket, conn, done| {
            Box::pin(async move {
                let outcome = sms::send(&conn, &object, budget).await;
                let _ = done.send(Done::Sent { ticket, outcome });
            })
        });
    }

    fn resolve(&mut self, id: String, object: SmsObject, settle_until: Instant) {
        debug!(sms = %object.path, id = %id, "finding out whether an SMS went out");
        self.spawn_send_job(id, true, move |ticket, conn, done| {
            Box::pin(async move {
                let outcome = match sms::resolve(&conn, &object, settle_until).await {
                    Resolved::Sent(reference) => SendOutcome::Sent { reference },
                    Resolved::Unsent => SendOutcome::NotSent(SendFailure {
                        temporary: true,
                        reason: "not sent when the daemon stopped".to_owned(),
                    }),
                    Resolved::Gone => SendOutcome::Unknown {
                        reason: "ModemManager restarted (or the SMS was removed) \
                                 while it was being sent"
                            .to_owned(),
                    },
                    Resolved::Unreadable => SendOutcome::Unknown {
                        reason: "ModemManager does not say whether it was sent".to_owned(),
                    },
                };
                let _ = done.send(Done::Sent { ticket, outcome });
            })
        });
    }

    fn delete(&mut self, path: OwnedObjectPath) {
        let Some(picked) = &self.picked else {
            debug!(sms = %path, "no modem to delete an SMS from");
            return;
        };
        let (conn, modem, done) = (self.conn.clone(), picked.path.clone(), self.done_tx.clone());
        self.tasks.spawn(async move {
            let result = sms::delete(&conn, &modem, &path).await;
            let _ = done.send(Done::Deleted { path, result });
        });
    }

    fn spawn_discard(&mut self, object: SmsObject) {
        let (conn, done) = (self.conn.clone(), self.done_tx.clone());
        self.tasks.spawn(async move {
            if sms::discard(&conn, &object).await {
                let _ = done.send(Done::Discarded { object });
            }
        });
    }

    fn on_internal(&mut self, done: Done) {
        match done {
            Done::Listed { generation, result } => {
                if generation != self.generation {
                    return;
                }
                match result {
                    Ok(paths) => self.on_listed(paths),
                    Err(err) => warn!(error = %err, "cannot list the modem's SMS"),
                }
            }
            Done::Read {
                generation,
                path,
                result,
            } => {
                if generation == self.generation {
                    self.on_read(path, result);
                }
            }
            Done::Created { ticket, object } => {
                let Some(pending) = self.pending.remove(&ticket) else {
                    return;
                };
                let event = match object {
                    Ok(object) if self.mm_owner.as_deref() == Some(object.owner.as_str()) => {
                        self.ours.insert(object.path.clone());
                        ModemEvent::Created {
                            id: pending.id,
                            object,
                        }
                    }
                    // Made by a ModemManager that is gone since: gone with it, never sent.
                    Ok(_) => ModemEvent::SendResult {
                        id: pending.id,
                        outcome: SendOutcome::NotSent(SendFailure {
                            temporary: true,
                            reason: "ModemManager restarted".to_owned(),
                        }),
                    },
                    Err(failure) => ModemEvent::SendResult {
                        id: pending.id,
                        outcome: SendOutcome::NotSent(failure),
                    },
                };
                self.emit(event);
            }
            Done::Sent { ticket, outcome } => {
                if let Some(pending) = self.pending.remove(&ticket) {
                    self.emit(ModemEvent::SendResult {
                        id: pending.id,
                        outcome,
                    });
                }
            }
            Done::Discarded { object } => {
                self.ours.remove(&object.path);
                self.emit(ModemEvent::Discarded { object });
            }
            Done::Deleted { path, result } => {
                match result {
                    Ok(()) => debug!(sms = %path, "SMS deleted"),
                    Err(err) if err.is_unknown_object() => {
                        debug!(sms = %path, error = %err, "SMS to delete was not there")
                    }
                    Err(err) => {
                        warn!(sms = %path, error = %err, "cannot delete an SMS");
                        return;
                    }
                }
                self.tracked.remove(&path);
            }
        }
    }

    fn on_joined(&mut self, joined: Result<(tokio::task::Id, ()), tokio::task::JoinError>) {
        let Err(err) = joined else {
            return;
        };
        if !err.is_panic() {
            return;
        }
        error!(error = %err, "a modem helper task panicked");
        let task = err.id();
        let ticket = self
            .pending
            .iter()
            .find(|(_, p)| p.task == task)
            .map(|(t, _)| *t);
        if let Some(pending) = ticket.and_then(|t| self.pending.remove(&t)) {
            let reason = "internal error".to_owned();
            let outcome = if pending.may_have_gone {
                SendOutcome::Unknown { reason }
            } else {
                SendOutcome::NotSent(SendFailure {
                    temporary: true,
                    reason,
                })
            };
            self.emit(ModemEvent::SendResult {
                id: pending.id,
                outcome,
            });
        }
    }

    /// Answers the creates still running, stops every helper task and delivers the last
    /// events. A send or resolve still running is not answered: the daemon recorded its
    /// object and finds out at its next start what became of it.
    async fn stop(
        mut self,
        done_rx: &mut mpsc::UnboundedReceiver<Done>,
        events: &mpsc::Sender<ModemEvent>,
    ) {
        while let Ok(done) = done_rx.try_recv() {
            self.on_internal(done);
        }
        self.tasks.abort_all();
        let mut pending: Vec<(u64, PendingSend)> = self.pending.drain().collect();
        pending.sort_by_key(|(ticket, _)| *ticket);
        for (_, pending) in pending.into_iter().filter(|(_, p)| !p.may_have_gone) {
            self.emit(ModemEvent::SendResult {
                id: pending.id,
                outcome: SendOutcome::NotSent(SendFailure {
                    temporary: true,
                    reason: "adapter stopped".to_owned(),
                }),
            });
        }
        let outbox = std::mem::take(&mut self.outbox);
        let _ = timeout(FLUSH_TIMEOUT, async {
            for event in outbox {
                if events.send(event).await.is_err() {
                    break;
                }
            }
        })
        .await;
        info!("modem adapter stopped");
    }
}
