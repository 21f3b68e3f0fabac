//! Desktop notifications for incoming messages, as a phone user expects them: one
//! notification per conversation, replaced as new messages arrive and withdrawn once the
//! conversation is read or deleted (from any frontend, or from the notification itself),
//! with the contact's name, and actions: open the conversation, mark it read, and reply
//! inline where the server allows it.
//!
//! Owns: the session-bus connection to the notification server (one, long-lived, made at
//! the first notification and made again after the bus or the server went away), which
//! notification shows which conversation, what a notification looks like, and turning
//! the server's signals into work for the engine, the outbox or the app. Must not: fail or
//! block a caller (the engine hands work over a bounded queue and never waits), retry a
//! notification (a dropped one is only a missed pop-up: the message itself is already
//! stored), or store anything itself: "Mark as read" goes to the engine
//! ([`EngineCmd::MarkRead`]), a reply to the API's own send path ([`Outbox::send`]).
//!
//! What was followed, and where:
//! - The Desktop Notifications Specification 1.2 (specifications.freedesktop.org,
//!   `notification-spec`): `Notify` with `replaces_id` to update a conversation's
//!   notification in place, `CloseNotification` to withdraw it, the `ActionInvoked`,
//!   `NotificationClosed` and `ActivationToken` signals (the token comes before the
//!   action it belongs to, and is handed on in `platform-data` as `activation-token`), the
//!   `default` action key for a click on the notification, the `category`
//!   (`im.received`), `desktop-entry`, `image-path`, `sound-name` and `urgency` hints,
//!   and `body-markup`: a server that advertises it gets summary and body escaped.
//! - KDE Plasma's extension for inline replies: the server advertises `inline-reply`, the
//!   client adds an action of that key (with `x-kde-reply-placeholder-text`), and the
//!   server sends `NotificationReplied(id, text)`.
//! - Phosh (`src/notifications/notify-manager.c` and `notify-feedback.c`): it reads the
//!   hints `category`, `desktop-entry`, `image-path`/`image-data`, `urgency`, `transient`,
//!   `resident` and `x-phosh-fb-profile`, and picks the feedbackd event (sound, vibration,
//!   LED) from the category: `im.received` gives `message-new-instant`, and
//!   `message-missed-instant` while the phone is locked or blanked. So feedback follows
//!   the category and the user's profile; we set no `x-phosh-fb-profile` of our own.
//! - Chatty (Purism's messenger) opens a conversation from its notification through an
//!   application action with the chat as parameter; we do the same over D-Bus, with
//!   `org.freedesktop.Application.ActivateAction` on the app of our `desktop-entry`
//!   (`docs/notifications.md` is the contract for that app).
//!
//! Senders choose the text, so it must never be taken for markup: a server that
//! advertises `body-markup` gets summary and body escaped (`&`, `<`, `>`); one that does
//! not shows text as it is, and gets it as it is. If the question fails, the text is
//! escaped: a stray `&amp;` is better than injected markup.

use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt as _;
use futures_util::stream::{self, BoxStream};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};
use zbus::Variant as Value;
use zbus::proxy::CacheProperties;

use crate::api::{Outbox, SendOptions};
use crate::contacts::Contacts;
use crate::engine::EngineCmd;

/// Jobs waiting for the task; more are dropped with a warning.
const QUEUE_CAPACITY: usize = 32;
/// Longest wait for any one call (connecting included): a hung server, or one the bus is
/// still activating, must not stall the queue for the bus's 25 s default.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Conversations whose notification is remembered (to replace or withdraw it); past that
/// the one updated longest ago is forgotten (it stays on screen until dismissed).
pub const MAX_SHOWN: usize = 64;
/// Characters of the message text shown in the notification body.
pub const PREVIEW_CHARS: usize = 100;
/// The application name every notification carries.
pub const APP_NAME: &str = "Tandem";
/// Icon-naming-spec name of the notification's icon: in Debian 12's Adwaita (43) it is
/// there at every size and as SVG (`scalable/status/mail-unread-symbolic.svg`), and it
/// stays in the Adwaita of later releases, which moved the full-colour `legacy` icons
/// (such as `mail-message-new`, only at 24 and 48 px in Debian 12) out of the theme.
pub const ICON: &str = "mail-unread-symbolic";
/// Freedesktop notification category of a received instant message.
pub const CATEGORY: &str = "im.received";
/// The sound-naming-spec sound of a received instant message (the `sound-name` hint).
pub const SOUND: &str = "message-new-instant";
/// The desktop entry (without `.desktop`) servers use to group and badge our
/// notifications; also the D-Bus name and application id of the app that opens them.
pub const DESKTOP_ENTRY: &str = "org.tandem.Messages";
/// The app's object path (its application id as a path, as GApplication exports it).
pub const APP_PATH: &str = "/org/tandem/Messages";
/// The application action that opens a conversation; its parameter is the peer (`s`).
pub const OPEN_ACTION: &str = "open-conversation";
/// Action keys of our notifications.
pub const ACTION_DEFAULT: &str = "default";
pub const ACTION_MARK_READ: &str = "mark-read";
pub const ACTION_REPLY: &str = "inline-reply";

const NOTIFICATIONS_NAME: &str = "org.freedesktop.Notifications";
const NOTIFICATIONS_PATH: &str = "/org/freedesktop/Notifications";
/// Signals of the server held while the task is busy; past that the bus connection
/// drops the oldest (a user's touches come far slower).
const SIGNAL_QUEUE: Option<std::num::NonZeroUsize> = std::num::NonZeroUsize::new(64);

#[zbus::proxy(
    interface = "org.freedesktop.Notifications",
    default_service = "org.freedesktop.Notifications",
    default_path = "/org/freedesktop/Notifications"
)]
trait Notifications {
    #[allow(clippy::too_many_arguments)]
    fn notify(
        &self,
        app_name: &str,
        replaces_id: u32,
        app_icon: &str,
        summary: &str,
        body: &str,
        actions: &[&str],
        hints: HashMap<&str, Value<'_>>,
        expire_timeout: i32,
    ) -> zbus::Result<u32>;

    fn close_notification(&self, id: u32) -> zbus::Result<()>;

    fn get_capabilities(&self) -> zbus::Result<Vec<String>>;
}

/// One incoming message to announce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The conversation: E.164, or a sender name kept verbatim.
    pub peer: String,
    /// The full text; the notification shows a preview.
    pub text: String,
}

/// What the engine (and the task itself) hands the task.
#[derive(Debug)]
enum Job {
    /// A new message: show or replace its conversation's notification.
    Show(Notice),
    /// The conversation was read or deleted: withdraw its notification.
    Withdraw(String),
    /// An inline reply was refused: say so on the conversation's notification.
    ReplyFailed { peer: String, why: String },
}

/// Handle to the notification task; cheap to clone. The task ends when every handle is
/// dropped.
#[derive(Clone, Debug)]
pub struct Notifier {
    /// `None` when notifications are disabled: then nothing is queued.
    queue: Option<mpsc::Sender<Job>>,
}

/// The task's end of the queue, until [`Inbox::start`] runs it.
#[derive(Debug)]
pub struct Inbox {
    jobs: mpsc::Receiver<Job>,
    own: mpsc::WeakSender<Job>,
}

/// What the task needs from the rest of the daemon.
pub struct Wiring {
    /// The session bus's address; `None`: `DBUS_SESSION_BUS_ADDRESS`.
    pub address: Option<String>,
    /// Names and photos for numbers.
    pub contacts: Contacts,
    /// Where "Mark as read" goes.
    pub engine: mpsc::Sender<EngineCmd>,
    /// Where inline replies go: the API's own send path.
    pub outbox: Outbox,
}

impl Notifier {
    /// A handle, and the queue's other end to start once the daemon is wired
    /// ([`Inbox::start`]); `None` when notifications are disabled.
    pub fn new(enabled: bool) -> (Notifier, Option<Inbox>) {
        if !enabled {
            return (Notifier::disabled(), None);
        }
        let (queue, jobs) = mpsc::channel(QUEUE_CAPACITY);
        let own = queue.downgrade();
        (Notifier { queue: Some(queue) }, Some(Inbox { jobs, own }))
    }

    /// A handle that does nothing.
    pub fn disabled() -> Notifier {
        Notifier { queue: None }
    }

    /// Shows (or replaces) the notification of `notice.peer`'s conversation. Never
    /// blocks, never fails: queues (bounded), drops with a warning when full.
    pub fn notify(&self, notice: Notice) {
        self.queue(Job::Show(notice));
    }

    /// Withdraws the notification of `peer`'s conversation, if one is shown. Never blocks.
    pub fn withdraw(&self, peer: &str) {
        self.queue(Job::Withdraw(peer.to_owned()));
    }

    fn queue(&self, job: Job) {
        let Some(queue) = &self.queue else {
            return;
        };
        // Numbers and texts are logged at DEBUG only.
        match queue.try_send(job) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(job)) => {
                warn!("notification queue full, dropped");
                debug!(?job, "dropped");
            }
            Err(mpsc::error::TrySendError::Closed(job)) => {
                warn!("notification task has stopped, dropped");
                debug!(?job, "dropped");
            }
        }
    }
}

impl Inbox {
    /// Runs the task on the current tokio runtime (panics outside one, like
    /// `tokio::spawn`). It connects to the session bus at its first notification.
    pub fn start(self, wiring: Wiring) {
        tokio::spawn(run(self, wiring));
    }
}

/// `text` with the characters that markup gives a meaning to (`&`, `<`, `>`) written as
/// entities, so that a markup-reading server shows it as it is.
pub fn escape_markup(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            '&' => escaped.push_str("&amp;"),
            '<' => escaped.push_str("&lt;"),
            '>' => escaped.push_str("&gt;"),
            other => escaped.push(other),
        }
    }
    escaped
}

/// The text shown as the body: trimmed, at most [`PREVIEW_CHARS`] graphemes (cut between
/// two, never inside one: an emoji keeps its skin tone), "…" when cut.
pub fn preview(text: &str) -> String {
    use unicode_segmentation::UnicodeSegmentation;
    let text = text.trim();
    match text.grapheme_indices(true).nth(PREVIEW_CHARS) {
        Some((cut, _)) => format!("{}…", text[..cut].trim_end()),
        None => text.to_owned(),
    }
}

/// Which conversation each shown notification belongs to, both ways, bounded by
/// [`MAX_SHOWN`]; with the activation token the server gave for each, if any.
#[derive(Debug, Default)]
struct Shown {
    /// peer → (notification id, when last updated).
    by_peer: HashMap<String, (u32, u64)>,
    by_id: HashMap<u32, String>,
    tokens: HashMap<u32, String>,
    clock: u64,
}

impl Shown {
    fn id_of(&self, peer: &str) -> Option<u32> {
        self.by_peer.get(peer).map(|&(id, _)| id)
    }

    fn peer_of(&self, id: u32) -> Option<&str> {
        self.by_id.get(&id).map(String::as_str)
    }

    fn insert(&mut self, peer: &str, id: u32) {
        if let Some(old) = self.id_of(peer).filter(|&old| old != id) {
            self.forget_id(old);
        }
        if !self.by_peer.contains_key(peer) && self.by_peer.len() >= MAX_SHOWN {
            let oldest = self
                .by_peer
                .iter()
                .min_by_key(|(_, (_, at))| *at)
                .map(|(_, &(id, _))| id);
            if let Some(oldest) = oldest {
                self.forget_id(oldest);
            }
        }
        // Another conversation's id given again: that one is gone.
        if self.peer_of(id).is_some_and(|other| other != peer) {
            self.forget_id(id);
        }
        self.clock += 1;
        self.by_peer.insert(peer.to_owned(), (id, self.clock));
        self.by_id.insert(id, peer.to_owned());
    }

    fn remove_peer(&mut self, peer: &str) -> Option<u32> {
        let id = self.id_of(peer)?;
        self.forget_id(id);
        Some(id)
    }

    fn forget_id(&mut self, id: u32) {
        if let Some(peer) = self.by_id.remove(&id) {
            self.by_peer.remove(&peer);
        }
        self.tokens.remove(&id);
    }

    fn clear(&mut self) {
        self.by_peer.clear();
        self.by_id.clear();
        self.tokens.clear();
    }

    fn len(&self) -> usize {
        self.by_peer.len()
    }
}

/// What the notification server tells us.
#[derive(Debug)]
enum ServerEvent {
    Action {
        id: u32,
        key: String,
    },
    Closed {
        id: u32,
    },
    Token {
        id: u32,
        token: String,
    },
    Replied {
        id: u32,
        text: String,
    },
    /// The server's name has a new owner (its unique name), or none: its ids are gone.
    NewServer(Option<String>),
}

/// A server event, with the unique name of the connection that sent it.
type FromServer = (Option<String>, ServerEvent);

/// The connection to the session bus, with the subscriptions to the server's signals.
struct Session {
    proxy: NotificationsProxy<'static>,
    events: BoxStream<'static, FromServer>,
    /// The current owner of the server's name: signals from anyone else are ignored (the
    /// bus filters broadcasts by that name, but a signal sent to us directly is not).
    owner: Option<String>,
    /// The server's capabilities, asked once per server.
    capabilities: Option<Vec<String>>,
}

/// Why one call to the server did not work (logged, never returned to a caller).
#[derive(Debug, thiserror::Error)]
enum NotifyError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Bus(#[from] zbus::Error),
}

/// `f` bounded by [`CALL_TIMEOUT`].
async fn bounded<T>(
    f: impl Future<Output = zbus::Result<T>>,
) -> std::result::Result<T, NotifyError> {
    match tokio::time::timeout(CALL_TIMEOUT, f).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(NotifyError::Timeout(CALL_TIMEOUT)),
    }
}

async fn connect(address: Option<&str>) -> Result<Session, NotifyError> {
    bounded(async {
        let builder = match address {
            Some(address) => zbus::connection::Builder::address(address),
            None => zbus::connection::Builder::session(),
        };
        let conn = builder.build().await?;
        let proxy = NotificationsProxy::builder(&conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        // One stream for all of the server's signals, so that they are taken in the order
        // sent: an `ActivationToken` comes before the `ActionInvoked` it belongs to. The bus
        // delivers only those its current owner sends.
        let rule = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .sender(NOTIFICATIONS_NAME)
            .path(NOTIFICATIONS_PATH)
            .interface(NOTIFICATIONS_NAME)
            .build()?;
        let signals = zbus::MessageStream::for_match_rule(rule, &conn, SIGNAL_QUEUE).await?;
        let signals = signals.filter_map(|msg| async move {
            let msg = msg.ok()?;
            let sender = msg.header().sender().map(|s| s.to_string());
            Some((sender, server_event(&msg)?))
        });
        let owners = proxy
            .inner()
            .receive_owner_changed()
            .await?
            .map(|owner| (None, ServerEvent::NewServer(owner.map(|o| o.to_string()))));
        // Asked once subscribed, so that no change in between is missed; none yet: `None`.
        let name = zbus::names::BusName::try_from(NOTIFICATIONS_NAME)?;
        let dbus = zbus::fdo::DBusProxy::new(&conn).await?;
        let owner = dbus.get_name_owner(name).await.ok().map(|o| o.to_string());
        // Both end with the connection; then the merged stream ends too.
        let events = stream::select(signals.boxed(), owners.boxed()).boxed();
        Ok(Session {
            proxy,
            events,
            owner,
            capabilities: None,
        })
    })
    .await
}

/// What one signal of the server means; `None` for one we do not use (or malformed).
fn server_event(msg: &zbus::Message) -> Option<ServerEvent> {
    let header = msg.header();
    let body = msg.body();
    Some(match header.member()?.as_str() {
        "ActionInvoked" => {
            let (id, key): (u32, String) = body.deserialize().ok()?;
            ServerEvent::Action { id, key }
        }
        "NotificationClosed" => {
            let (id, _reason): (u32, u32) = body.deserialize().ok()?;
            ServerEvent::Closed { id }
        }
        "ActivationToken" => {
            let (id, token): (u32, String) = body.deserialize().ok()?;
            ServerEvent::Token { id, token }
        }
        "NotificationReplied" => {
            let (id, text): (u32, String) = body.deserialize().ok()?;
            ServerEvent::Replied { id, text }
        }
        _ => return None,
    })
}

/// The task's state beside the connection.
struct Task {
    wiring: Wiring,
    shown: Shown,
    /// Our own queue, for work that comes back (a refused reply); weak, so that the task
    /// still ends when the engine drops its handles.
    own: mpsc::WeakSender<Job>,
    /// Warn once when notifications stop working, not for every message after.
    failing: bool,
}

/// The task: takes jobs and the server's signals until every handle is dropped.
async fn run(inbox: Inbox, wiring: Wiring) {
    let Inbox { mut jobs, own } = inbox;
    let mut task = Task {
        wiring,
        shown: Shown::default(),
        own,
        failing: false,
    };
    let mut session: Option<Session> = None;
    loop {
        let next_event = async {
            match session.as_mut() {
                Some(s) => s.events.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            job = jobs.recv() => match job {
                Some(job) => task.on_job(&mut session, job).await,
                None => break,
            },
            event = next_event => match event {
                Some(event) => task.on_server(&mut session, event).await,
                None => {
                    info!("the session bus connection ended; notifications reconnect at the next message");
                    session = None;
                    task.shown.clear();
                }
            },
        }
    }
    debug!("notification task finished");
}

impl Task {
    async fn on_job(&mut self, session: &mut Option<Session>, job: Job) {
        match job {
            Job::Show(notice) => {
                let body = preview(&notice.text);
                self.show(session, &notice.peer, None, &body).await;
            }
            Job::ReplyFailed { peer, why } => {
                let title = format!("Reply not sent to {}", self.name_of(&peer));
                self.show(session, &peer, Some(title), &why).await;
            }
            Job::Withdraw(peer) => {
                let Some(id) = self.shown.remove_peer(&peer) else {
                    return;
                };
                if let Some(s) = session.as_ref() {
                    match bounded(s.proxy.close_notification(id)).await {
                        Ok(()) => debug!(id, "notification withdrawn"),
                        Err(err) => debug!(id, cause = %err, "notification not withdrawn"),
                    }
                }
            }
        }
    }

    /// The contact's name, or the number as stored.
    fn name_of(&self, peer: &str) -> String {
        self.wiring
            .contacts
            .lookup(peer)
            .map_or_else(|| peer.to_owned(), |c| c.name)
    }

    /// Shows or replaces the notification of `peer`'s conversation; the summary is the
    /// contact's name unless `title` is given.
    async fn show(
        &mut self,
        session: &mut Option<Session>,
        peer: &str,
        title: Option<String>,
        body: &str,
    ) {
        let outcome = match session {
            Some(s) => self.notify(s, peer, title, body).await,
            None => match connect(self.wiring.address.as_deref()).await {
                Ok(s) => self.notify(session.insert(s), peer, title, body).await,
                Err(err) => Err(err),
            },
        };
        match outcome {
            Ok(id) => {
                if self.failing {
                    info!("desktop notifications work again");
                }
                self.failing = false;
                debug!(id, %peer, shown = self.shown.len(), "notification shown");
            }
            Err(err) => {
                if self.failing {
                    debug!(cause = %err, "notification not shown");
                } else {
                    warn!(cause = %err, "notification not shown");
                }
                self.failing = true;
            }
        }
    }

    async fn notify(
        &mut self,
        s: &mut Session,
        peer: &str,
        title: Option<String>,
        body: &str,
    ) -> Result<u32, NotifyError> {
        if s.capabilities.is_none() {
            match bounded(s.proxy.get_capabilities()).await {
                Ok(capabilities) => s.capabilities = Some(capabilities),
                Err(err) => debug!(cause = %err, "cannot ask the server its capabilities"),
            }
        }
        // Unknown capabilities: escape (a stray `&amp;` rather than injected markup).
        let can = |c: &str| {
            s.capabilities
                .as_ref()
                .is_none_or(|all| all.iter().any(|a| a == c))
        };
        let markup = can("body-markup");
        // A sender name (a bank, a carrier) cannot be answered: no reply offered.
        let reply =
            s.capabilities.is_some() && can(ACTION_REPLY) && self.wiring.outbox.can_send_to(peer);
        let contact = self.wiring.contacts.lookup(peer);
        let mut summary = title.unwrap_or_else(|| {
            contact
                .as_ref()
                .map_or_else(|| peer.to_owned(), |c| c.name.clone())
        });
        // Cut first (the caller did), then escape: an entity is never cut in half.
        let mut body = body.to_owned();
        if markup {
            summary = escape_markup(&summary);
            body = escape_markup(&body);
        }
        let mut actions = Vec::new();
        if app_available(s.proxy.inner().connection()).await {
            actions.extend([ACTION_DEFAULT, "Open"]);
        }
        actions.extend([ACTION_MARK_READ, "Mark as read"]);
        let mut hints: HashMap<&str, Value<'_>> = HashMap::from([
            ("category", Value::from(CATEGORY)),
            ("desktop-entry", Value::from(DESKTOP_ENTRY)),
            ("sound-name", Value::from(SOUND)),
            ("urgency", Value::from(1u8)),
        ]);
        if reply {
            actions.extend([ACTION_REPLY, "Reply"]);
            hints.insert("x-kde-reply-placeholder-text", Value::from("Reply…"));
        }
        let photo = contact
            .and_then(|c| c.photo)
            .and_then(|p| p.to_str().map(str::to_owned));
        if let Some(photo) = &photo {
            hints.insert("image-path", Value::from(photo.as_str()));
        }
        let replaces = self.shown.id_of(peer).unwrap_or(0);
        let id = bounded(s.proxy.notify(
            APP_NAME, replaces, ICON, &summary, &body, &actions, hints, -1,
        ))
        .await?;
        self.shown.insert(peer, id);
        Ok(id)
    }

    async fn on_server(&mut self, session: &mut Option<Session>, (sender, event): FromServer) {
        let Some(s) = session.as_mut() else { return };
        if let ServerEvent::NewServer(owner) = event {
            info!("the notification server changed; its notifications are gone");
            self.shown.clear();
            s.owner = owner;
            s.capabilities = None;
            return;
        }
        if sender.is_none() || sender != s.owner {
            return debug!(
                ?sender,
                "a signal not from the notification server, ignored"
            );
        }
        match event {
            ServerEvent::NewServer(_) => {}
            ServerEvent::Closed { id } => self.shown.forget_id(id),
            ServerEvent::Token { id, token } => {
                if self.shown.peer_of(id).is_some() {
                    self.shown.tokens.insert(id, token);
                }
            }
            ServerEvent::Action { id, key } => {
                let Some(peer) = self.shown.peer_of(id).map(str::to_owned) else {
                    return debug!(id, %key, "action on a notification not ours");
                };
                let token = self.shown.tokens.remove(&id);
                match key.as_str() {
                    ACTION_DEFAULT => {
                        let conn = s.proxy.inner().connection().clone();
                        tokio::spawn(open_conversation(conn, peer, token));
                    }
                    ACTION_MARK_READ => {
                        let engine = self.wiring.engine.clone();
                        tokio::spawn(mark_read(engine, peer));
                    }
                    other => debug!(id, action = %other, "action ignored"),
                }
            }
            ServerEvent::Replied { id, text } => {
                let Some(peer) = self.shown.peer_of(id).map(str::to_owned) else {
                    return debug!(id, "a reply to a notification not ours");
                };
                let outbox = self.wiring.outbox.clone();
                let engine = self.wiring.engine.clone();
                tokio::spawn(reply(outbox, engine, self.own.clone(), peer, text));
            }
        }
    }
}

/// Whether the app that opens conversations is there: running, or activatable by the bus.
/// When it is not, no `default` action is offered, and a click on the notification does
/// what the desktop does by default (for most, open the `desktop-entry`'s app, or
/// nothing but dismiss it).
async fn app_available(conn: &zbus::Connection) -> bool {
    let asked = bounded(async {
        let dbus = zbus::fdo::DBusProxy::new(conn).await?;
        let name = zbus::names::BusName::try_from(DESKTOP_ENTRY)?;
        if dbus.name_has_owner(name).await? {
            return Ok(true);
        }
        let activatable = dbus.list_activatable_names().await?;
        Ok(activatable.iter().any(|n| n.as_str() == DESKTOP_ENTRY))
    })
    .await;
    asked.unwrap_or_else(|err| {
        debug!(cause = %err, "cannot ask the bus whether the app is there");
        false
    })
}

/// Opens the conversation with `peer` in the app: `ActivateAction("open-conversation",
/// [<peer>], {"activation-token": <token>})` on `org.freedesktop.Application`, which
/// starts the app by D-Bus activation if it is not running.
async fn open_conversation(conn: zbus::Connection, peer: String, token: Option<String>) {
    let mut platform_data: HashMap<&str, Value<'_>> = HashMap::new();
    if let Some(token) = &token {
        platform_data.insert("activation-token", Value::from(token.as_str()));
        // X11's name for it, as GLib sends both.
        platform_data.insert("desktop-startup-id", Value::from(token.as_str()));
    }
    let parameter = vec![Value::from(peer.as_str())];
    let called = bounded(conn.call_method(
        Some(DESKTOP_ENTRY),
        APP_PATH,
        Some("org.freedesktop.Application"),
        "ActivateAction",
        &(OPEN_ACTION, parameter, platform_data),
    ))
    .await;
    match called {
        Ok(_) => debug!(%peer, "conversation opened in the app"),
        Err(err) => {
            warn!(cause = %err, app = DESKTOP_ENTRY, "cannot open the conversation in the app")
        }
    }
}

/// "Mark as read": the engine stores it and announces it as an API `MarkRead`.
async fn mark_read(engine: mpsc::Sender<EngineCmd>, peer: String) {
    let sent = tokio::time::timeout(CALL_TIMEOUT, engine.send(EngineCmd::MarkRead { peer })).await;
    if !matches!(sent, Ok(Ok(()))) {
        warn!("the engine did not take a notification's \"Mark as read\"");
    }
}

/// An inline reply: sent exactly as `SendMessage` sends (validated, durable in the
/// outbox, then the engine), and the conversation marked read, as after any answer. A
/// reply the outbox refuses is logged and shown on the conversation's notification.
async fn reply(
    outbox: Outbox,
    engine: mpsc::Sender<EngineCmd>,
    own: mpsc::WeakSender<Job>,
    peer: String,
    text: String,
) {
    match outbox.send(&peer, &text, SendOptions::default()).await {
        Ok(id) => {
            info!(%id, "inline reply queued");
            mark_read(engine, peer).await;
        }
        Err(err) => {
            warn!(cause = %err, chars = text.chars().count(), "inline reply not sent");
            if let Some(own) = own.upgrade() {
                let why = format!("{err}");
                let _ = own.try_send(Job::ReplyFailed { peer, why });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn previews() {
        for (text, expected) in [
            ("", ""),
            ("hello", "hello"),
            ("  padded\n", "padded"),
            ("line one\nline two", "line one\nline two"),
        ] {
            assert_eq!(preview(text), expected, "{text:?}");
        }
        let exact = "a".repeat(PREVIEW_CHARS);
        assert_eq!(preview(&exact), exact);
        let long = "b".repeat(PREVIEW_CHARS + 1);
        assert_eq!(preview(&long), format!("{}…", "b".repeat(PREVIEW_CHARS)));
        // Multi-byte characters are cut on a char boundary, counted as characters.
        let emoji = "😀".repeat(PREVIEW_CHARS + 5);
        assert_eq!(preview(&emoji), format!("{}…", "😀".repeat(PREVIEW_CHARS)));
        // A thumb with its skin tone is one grapheme of two chars: never split.
        let thumbs = "👍🏽".repeat(PREVIEW_CHARS + 1);
        assert_eq!(preview(&thumbs), format!("{}…", "👍🏽".repeat(PREVIEW_CHARS)));
        let cyrillic = "ж".repeat(PREVIEW_CHARS * 3);
        assert_eq!(preview(&cyrillic).chars().count(), PREVIEW_CHARS + 1);
        // No space before the ellipsis when the cut falls after a word.
        let words = format!("{} tail", "w".repeat(PREVIEW_CHARS - 1));
        assert_eq!(
            preview(&words),
            format!("{}…", "w".repeat(PREVIEW_CHARS - 1))
        );
    }

    #[test]
    fn markup_is_escaped() {
        for (text, expected) in [
            ("plain", "plain"),
            ("<b>wine</b>", "&lt;b&gt;wine&lt;/b&gt;"),
            ("fish & chips", "fish &amp; chips"),
            ("&amp;", "&amp;amp;"),
            (
                "<a href=\"https://x\">pay</a>",
                "&lt;a href=\"https://x\"&gt;pay&lt;/a&gt;",
            ),
            ("<img src=\"/etc/x\"/>", "&lt;img src=\"/etc/x\"/&gt;"),
            ("Grüße 😀 it's \"fine\"", "Grüße 😀 it's \"fine\""),
            ("", ""),
        ] {
            assert_eq!(escape_markup(text), expected, "{text:?}");
        }
    }

    #[test]
    fn shown_notifications_are_one_per_conversation_and_bounded() {
        let mut shown = Shown::default();
        shown.insert("+15550000001", 7);
        shown.tokens.insert(7, "tok".into());
        // Replaced in place: the same id, still one entry, the token kept.
        shown.insert("+15550000001", 7);
        assert_eq!((shown.len(), shown.id_of("+15550000001")), (1, Some(7)));
        assert_eq!(shown.tokens.get(&7).map(String::as_str), Some("tok"));
        // A server that gives a new id for a replacement: the old id is forgotten.
        shown.insert("+15550000001", 8);
        assert_eq!(shown.peer_of(7), None);
        assert_eq!(shown.peer_of(8), Some("+15550000001"));
        assert!(shown.tokens.is_empty());
        // An id given again to another conversation: the first one's is gone.
        shown.insert("+15550000002", 8);
        assert_eq!(shown.id_of("+15550000001"), None);
        assert_eq!(shown.len(), 1);
        // Closed by the server: forgotten both ways.
        shown.forget_id(8);
        assert_eq!((shown.len(), shown.peer_of(8)), (0, None));
        // Bounded: the conversation updated longest ago goes first.
        for n in 0..MAX_SHOWN as u32 {
            shown.insert(&format!("+1555100{n:04}"), 100 + n);
        }
        shown.insert("+15551000000", 100);
        shown.insert("+15559999999", 999);
        assert_eq!(shown.len(), MAX_SHOWN);
        assert_eq!(shown.id_of("+15551000000"), Some(100), "refreshed, kept");
        assert_eq!(shown.id_of("+15551000001"), None, "the oldest, forgotten");
        assert_eq!(shown.peer_of(101), None);
        assert_eq!(shown.remove_peer("+15559999999"), Some(999));
        assert_eq!(shown.remove_peer("+15559999999"), None);
    }

    #[tokio::test]
    async fn disabled_notifier_ignores_notices() {
        let (notifier, inbox) = Notifier::new(false);
        assert!(notifier.queue.is_none() && inbox.is_none());
        notifier.notify(Notice {
            peer: "+15551234567".to_owned(),
            text: "hi".to_owned(),
        });
        notifier.withdraw("+15551234567");
    }

    #[tokio::test]
    async fn full_queue_drops_without_blocking() {
        // A queue whose task never reads: notify must neither block nor panic.
        let (notifier, _inbox) = Notifier::new(true);
        let started = std::time::Instant::now();
        for n in 0..(QUEUE_CAPACITY + 10) {
            notifier.notify(Notice {
                peer: format!("+1555000{n:04}"),
                text: "x".to_owned(),
            });
        }
        notifier.withdraw("+15550000001");
        assert!(started.elapsed() < Duration::from_secs(1));
        let queue = notifier.queue.as_ref().map(|q| q.capacity());
        assert_eq!(
            queue,
            Some(0),
            "the queue holds its 32, the rest were dropped"
        );
    }
}
