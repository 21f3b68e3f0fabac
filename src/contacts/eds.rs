//! The Evolution Data Server adapter: a task that owns a session-bus connection of its
//! own and keeps [`super::Contacts`]' snapshot in step with the user's address books.
//!
//! - The source registry (`org.gnome.evolution.dataserver.Sources5`, an object manager
//!   at `/org/gnome/evolution/dataserver/SourceManager`): every source object carries a
//!   `UID` and its key file (`Data`); those with an `[Address Book]` group that are
//!   enabled (with their parents) are followed, at most [`MAX_BOOKS`]. Sources added and
//!   removed (`InterfacesAdded`/`InterfacesRemoved`) and key files changed
//!   (`PropertiesChanged`: a book switched off) are followed live. The registry may be
//!   absent (EDS not installed: a debug log, and the handle knows no one), activated by
//!   our first call, stop, or restart (followed through its name's owner).
//! - Each address book, in a task of its own: `OpenAddressBook` on the factory
//!   (`org.gnome.evolution.dataserver.AddressBook10`), `Open` on the book, then a view of
//!   every contact (`GetView`), whose `ObjectsAdded`/`ObjectsModified` (vCards) and
//!   `ObjectsRemoved` (UIDs) signals keep the index current: the initial contents come
//!   as `ObjectsAdded` after `Start`. If the book's service goes away, the book is opened
//!   again with backoff (the names known stay meanwhile).
//! - The snapshot is published at most every [`SETTLE`] while changes come in, and only
//!   when it differs.
//!
//! Must not: fail the daemon (every failure is logged and retried or given up quietly),
//! block (every call is bounded by a timeout), or log names and numbers above DEBUG.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, warn};
use zbus::proxy::CacheProperties;
use zbus::{OwnedObjectPath, Variant};

use super::index::{Entry, Index, normalise_numbers};
use super::photos::PhotoCache;
use super::vcard::{self, Card, Photo};
use super::{Book, ContactsConfig, MAX_BOOKS};

const SOURCES: &str = "org.gnome.evolution.dataserver.Sources5";
const SOURCES_PATH: &str = "/org/gnome/evolution/dataserver/SourceManager";
const SOURCE_IFACE: &str = "org.gnome.evolution.dataserver.Source";
/// The view's query: every contact (`e_book_query_any_field_contains("")`).
const ALL_CONTACTS: &str = "(contains \"x-evolution-any-field\" \"\")";
/// Bound of a call that may start EDS (activation) or open a remote book.
const SLOW_CALL: Duration = Duration::from_secs(60);
/// Bound of every other call.
const CALL: Duration = Duration::from_secs(10);
/// How long changes are gathered before the snapshot is published.
const SETTLE: Duration = Duration::from_millis(100);
const MIN_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(120);

#[zbus::proxy(
    interface = "org.gnome.evolution.dataserver.AddressBookFactory",
    default_service = "org.gnome.evolution.dataserver.AddressBook10",
    default_path = "/org/gnome/evolution/dataserver/AddressBookFactory"
)]
trait AddressBookFactory {
    /// The object path and bus name of the book of `source_uid`.
    fn open_address_book(&self, source_uid: &str) -> zbus::Result<(String, String)>;
}

#[zbus::proxy(interface = "org.gnome.evolution.dataserver.AddressBook")]
trait AddressBook {
    fn open(&self) -> zbus::Result<Vec<String>>;
    fn get_view(&self, query: &str) -> zbus::Result<OwnedObjectPath>;
}

#[zbus::proxy(interface = "org.gnome.evolution.dataserver.AddressBookView")]
trait AddressBookView {
    fn start(&self) -> zbus::Result<()>;
    #[zbus(signal)]
    fn objects_added(&self, objects: Vec<String>) -> zbus::Result<()>;
    #[zbus(signal)]
    fn objects_modified(&self, objects: Vec<String>) -> zbus::Result<()>;
    #[zbus(signal)]
    fn objects_removed(&self, uids: Vec<String>) -> zbus::Result<()>;
}

/// What a book's task reports.
#[derive(Debug)]
enum BookEvent {
    /// The view is (re)started: what was known of the book is replaced by what follows.
    Reset {
        book: String,
    },
    /// Contacts added or changed.
    Cards {
        book: String,
        cards: Vec<Card>,
    },
    Removed {
        book: String,
        uids: Vec<String>,
    },
}

/// A source of the registry, as far as we care.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Source {
    uid: String,
    parent: Option<String>,
    enabled: bool,
    address_book: bool,
}

impl Source {
    /// From the source's `UID` and key file (`Data`).
    fn read(uid: String, data: &str) -> Source {
        let mut group = "";
        let mut source = Source {
            uid,
            parent: None,
            enabled: true,
            address_book: false,
        };
        for line in data.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                group = name;
                source.address_book |= name == "Address Book";
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            match (group, key.trim(), value.trim()) {
                ("Data Source", "Enabled", value) => source.enabled = value != "false",
                ("Data Source", "Parent", value) if !value.is_empty() => {
                    source.parent = Some(value.to_owned())
                }
                _ => {}
            }
        }
        source
    }
}

/// The address books to follow among `sources`: enabled, and their parents too; the
/// built-in one first, then by UID, at most [`MAX_BOOKS`].
fn books_to_follow(sources: &HashMap<String, Source>) -> Vec<String> {
    let enabled = |source: &Source| {
        let mut current = Some(source);
        // Parents form a chain; a cycle (a broken registry) is cut by the bound.
        for _ in 0..16 {
            let Some(s) = current else { return true };
            if !s.enabled {
                return false;
            }
            current = s.parent.as_ref().and_then(|p| sources.get(p));
        }
        true
    };
    let mut books: Vec<String> = sources
        .values()
        .filter(|s| s.address_book && enabled(s))
        .map(|s| s.uid.clone())
        .collect();
    books.sort_by_key(|uid| (uid != "system-address-book", uid.clone()));
    if books.len() > MAX_BOOKS {
        warn!(
            books = books.len(),
            max = MAX_BOOKS,
            "more address books than followed"
        );
        books.truncate(MAX_BOOKS);
    }
    books
}

/// A string property of a source object.
fn text(
    props: &HashMap<impl AsRef<str>, impl std::ops::Deref<Target = Variant<'static>>>,
    key: &str,
) -> Option<String> {
    props
        .iter()
        .find(|(k, _)| k.as_ref() == key)
        .and_then(|(_, v)| match &**v {
            Variant::Str(s) => Some(s.to_string()),
            _ => None,
        })
}

/// Follows the address books on the session bus at `address` into `tx`, until nobody
/// reads it.
pub(super) async fn run(
    address: Option<String>,
    config: ContactsConfig,
    tx: watch::Sender<Arc<Book>>,
) {
    let builder = match address.as_deref() {
        Some(a) => zbus::connection::Builder::address(a),
        None => zbus::connection::Builder::session(),
    };
    let conn = match builder.build().await {
        Ok(conn) => conn,
        Err(e) => {
            debug!(cause = %e, "no session bus for the address book: names unknown");
            return;
        }
    };
    let (events_tx, events) = mpsc::channel(16);
    let adapter = Adapter {
        conn,
        region: config.default_region.clone(),
        photos: Some(PhotoCache::open(&config.photo_dir)),
        tx,
        index: Index::default(),
        sources: HashMap::new(),
        paths: HashMap::new(),
        books: HashMap::new(),
        events_tx,
        publish_at: None,
        full_logged: false,
    };
    adapter.run(events).await;
}

/// The registry's signals, while it is followed.
struct Registry {
    added: zbus::fdo::InterfacesAddedStream,
    removed: zbus::fdo::InterfacesRemovedStream,
    changed: zbus::MessageStream,
    /// Its unique name, to tell its own activation from a restart.
    owner: Option<String>,
}

/// What the registry says.
enum Update {
    Added(OwnedObjectPath, Source),
    Removed(OwnedObjectPath),
    Data(OwnedObjectPath, String),
    /// Its signals ended (our connection is gone).
    Ended,
}

impl Registry {
    /// Subscribes to the registry's signals, then asks for every source (which starts
    /// the registry if it is activatable).
    async fn follow(
        conn: &zbus::Connection,
    ) -> zbus::Result<(Registry, Vec<(OwnedObjectPath, Source)>)> {
        let manager = zbus::fdo::ObjectManagerProxy::builder(conn)
            .destination(SOURCES)
            .path(SOURCES_PATH)
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        let added = manager.receive_interfaces_added().await?;
        let removed = manager.receive_interfaces_removed().await?;
        let rule = zbus::MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .sender(SOURCES)
            .interface("org.freedesktop.DBus.Properties")
            .member("PropertiesChanged")
            .path_namespace(SOURCES_PATH)
            .build()?;
        let changed = zbus::MessageStream::for_match_rule(rule, conn, None).await?;
        let objects = tokio::time::timeout(SLOW_CALL, manager.get_managed_objects())
            .await
            .map_err(|_| zbus::Error::Failure("the source registry did not answer".into()))??;
        let sources = objects
            .into_iter()
            .filter_map(|(path, ifaces)| {
                let props = ifaces.iter().find(|(i, _)| i.as_str() == SOURCE_IFACE)?.1;
                let source = Source::read(text(props, "UID")?, &text(props, "Data")?);
                Some((path, source))
            })
            .collect();
        let owner = zbus::fdo::DBusProxy::new(conn)
            .await?
            .get_name_owner(SOURCES.try_into()?)
            .await
            .ok()
            .map(|o| o.to_string());
        let registry = Registry {
            added,
            removed,
            changed,
            owner,
        };
        Ok((registry, sources))
    }

    async fn next(&mut self) -> Update {
        loop {
            tokio::select! {
                signal = self.added.next() => {
                    let Some(signal) = signal else { return Update::Ended };
                    let Ok(args) = signal.args() else { continue };
                    let Some(props) = args
                        .interfaces_and_properties()
                        .iter()
                        .find(|(i, _)| i.as_str() == SOURCE_IFACE)
                        .map(|(_, p)| p)
                    else {
                        continue;
                    };
                    let uid = props.get("UID").and_then(|v| match v { Variant::Str(s) => Some(s.to_string()), _ => None });
                    let data = props.get("Data").and_then(|v| match v { Variant::Str(s) => Some(s.to_string()), _ => None });
                    if let (Some(uid), Some(data)) = (uid, data) {
                        let path = OwnedObjectPath::from(args.object_path().to_owned());
                        return Update::Added(path, Source::read(uid, &data));
                    }
                }
                signal = self.removed.next() => {
                    let Some(signal) = signal else { return Update::Ended };
                    let Ok(args) = signal.args() else { continue };
                    if args.interfaces().iter().any(|i| i.as_str() == SOURCE_IFACE) {
                        return Update::Removed(OwnedObjectPath::from(args.object_path().to_owned()));
                    }
                }
                message = self.changed.next() => {
                    let Some(message) = message else { return Update::Ended };
                    if let Some(update) = message.ok().and_then(|m| data_changed(&m)) {
                        return update;
                    }
                }
            }
        }
    }
}

/// A source's new key file, from a `PropertiesChanged` of its `Source` interface.
fn data_changed(message: &zbus::Message) -> Option<Update> {
    let path = OwnedObjectPath::from(message.header().path()?.to_owned());
    let body = message.body();
    let (iface, changed, _): (String, HashMap<String, zbus::OwnedVariant>, Vec<String>) =
        body.deserialize().ok()?;
    if iface != SOURCE_IFACE {
        return None;
    }
    Some(Update::Data(path, text(&changed, "Data")?))
}

/// The adapter's state: the registry's sources, the books' tasks, the index.
struct Adapter {
    conn: zbus::Connection,
    region: Option<String>,
    /// Taken while a blocking task writes photos.
    photos: Option<PhotoCache>,
    tx: watch::Sender<Arc<Book>>,
    index: Index,
    /// Source UID → source.
    sources: HashMap<String, Source>,
    /// Object path → source UID (`InterfacesRemoved` gives only the path).
    paths: HashMap<OwnedObjectPath, String>,
    /// Followed book (source UID) → its task.
    books: HashMap<String, JoinHandle<()>>,
    events_tx: mpsc::Sender<BookEvent>,
    /// When the snapshot is published next, if something changed.
    publish_at: Option<Instant>,
    /// Whether "too many contacts" was logged.
    full_logged: bool,
}

/// Sleeps until `at`, or forever when `None`.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn next_update(registry: &mut Option<Registry>) -> Update {
    match registry {
        Some(registry) => registry.next().await,
        None => std::future::pending().await,
    }
}

/// Whether a failed call means there is no address book service at all (so we wait for
/// one to appear rather than retry).
fn unavailable(e: &zbus::Error) -> bool {
    use zbus::fdo::Error as Fdo;
    match e {
        zbus::Error::FDO(e) => matches!(
            **e,
            Fdo::ServiceUnknown(_)
                | Fdo::NameHasNoOwner(_)
                | Fdo::SpawnExecFailed(_)
                | Fdo::SpawnForkFailed(_)
                | Fdo::SpawnChildExited(_)
                | Fdo::SpawnChildSignaled(_)
                | Fdo::SpawnFailed(_)
                | Fdo::SpawnServiceNotFound(_)
                | Fdo::SpawnServiceNotValid(_)
                | Fdo::SpawnFileInvalid(_)
        ),
        zbus::Error::MethodError(name, _, _) => {
            let name = name.as_str();
            name == "org.freedesktop.DBus.Error.ServiceUnknown"
                || name.starts_with("org.freedesktop.DBus.Error.Spawn")
        }
        _ => false,
    }
}

impl Adapter {
    async fn run(mut self, mut events: mpsc::Receiver<BookEvent>) {
        let Ok(dbus) = zbus::fdo::DBusProxy::new(&self.conn).await else {
            return;
        };
        let Ok(mut owners) = dbus
            .receive_name_owner_changed_with_args(&[(0, SOURCES)])
            .await
        else {
            return;
        };
        let mut registry: Option<Registry> = None;
        let mut retry_at = Some(Instant::now());
        let mut backoff = MIN_BACKOFF;
        loop {
            tokio::select! {
                () = sleep_until(retry_at) => {
                    retry_at = None;
                    match Registry::follow(&self.conn).await {
                        Ok((followed, sources)) => {
                            self.set_sources(sources);
                            registry = Some(followed);
                            backoff = MIN_BACKOFF;
                        }
                        Err(e) if unavailable(&e) => {
                            debug!(cause = %e, "no address book service (evolution-data-server): contact names unknown");
                        }
                        Err(e) => {
                            debug!(cause = %e, retry_in = ?backoff, "cannot read the address book sources");
                            retry_at = Some(Instant::now() + backoff);
                            backoff = (backoff * 2).min(MAX_BACKOFF);
                        }
                    }
                }
                change = owners.next() => {
                    let Some(change) = change else { break };
                    let Ok(args) = change.args() else { continue };
                    let owner = args.new_owner().as_ref().map(|o| o.to_string());
                    if owner.is_some() && owner == registry.as_ref().and_then(|r| r.owner.clone()) {
                        continue;
                    }
                    // Gone (started again by our next call, after a pause) or replaced.
                    info!(running = owner.is_some(), "the address book registry changed");
                    registry = None;
                    let pause = if owner.is_some() { Duration::ZERO } else { backoff };
                    retry_at = Some(Instant::now() + pause);
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                update = next_update(&mut registry) => {
                    if matches!(update, Update::Ended) {
                        break;
                    }
                    self.on_update(update);
                }
                event = events.recv() => {
                    // `events_tx` is ours: the channel never closes here.
                    if let Some(event) = event {
                        self.on_event(event).await;
                    }
                }
                () = sleep_until(self.publish_at) => self.publish().await,
                () = self.tx.closed() => break,
            }
        }
        for (_, task) in self.books.drain() {
            task.abort();
        }
    }

    /// Every source, as the registry lists them at start.
    fn set_sources(&mut self, sources: Vec<(OwnedObjectPath, Source)>) {
        self.sources.clear();
        self.paths.clear();
        for (path, source) in sources {
            self.paths.insert(path, source.uid.clone());
            self.sources.insert(source.uid.clone(), source);
        }
        self.sync_books();
    }

    fn on_update(&mut self, update: Update) {
        match update {
            Update::Added(path, source) => {
                self.paths.insert(path, source.uid.clone());
                self.sources.insert(source.uid.clone(), source);
            }
            Update::Removed(path) => {
                if let Some(uid) = self.paths.remove(&path) {
                    self.sources.remove(&uid);
                }
            }
            Update::Data(path, data) => {
                let Some(uid) = self.paths.get(&path) else {
                    return;
                };
                let source = Source::read(uid.clone(), &data);
                self.sources.insert(uid.clone(), source);
            }
            Update::Ended => return,
        }
        self.sync_books();
    }

    /// Starts a task for each address book to follow, stops those of books gone.
    fn sync_books(&mut self) {
        let wanted = books_to_follow(&self.sources);
        let gone: Vec<String> = self
            .books
            .keys()
            .filter(|b| !wanted.contains(b))
            .cloned()
            .collect();
        for book in gone {
            if let Some(task) = self.books.remove(&book) {
                task.abort();
            }
            debug!(book, "address book no longer followed");
            if self.index.remove_book(&book) {
                self.changed();
            }
        }
        for book in wanted {
            if self.books.contains_key(&book) {
                continue;
            }
            debug!(book, "following an address book");
            let task = tokio::spawn(follow_book(
                self.conn.clone(),
                book.clone(),
                self.events_tx.clone(),
            ));
            self.books.insert(book, task);
        }
    }

    fn changed(&mut self) {
        self.publish_at
            .get_or_insert_with(|| Instant::now() + SETTLE);
    }

    async fn on_event(&mut self, event: BookEvent) {
        match event {
            BookEvent::Reset { book } => {
                self.index.remove_book(&book);
            }
            BookEvent::Removed { book, uids } => {
                for uid in uids {
                    self.index.remove(&book, &uid);
                }
            }
            BookEvent::Cards { book, cards } => {
                if !self.books.contains_key(&book) {
                    return; // Stopped meanwhile.
                }
                for (uid, entry) in self.entries(cards).await {
                    self.keep(&book, &uid, entry);
                }
            }
        }
        self.changed();
    }

    /// Adds, replaces or (without a usable number) removes one contact.
    fn keep(&mut self, book: &str, uid: &str, entry: Entry) {
        if entry.numbers.is_empty() {
            self.index.remove(book, uid);
            return;
        }
        if !self.index.put(book, uid, entry) && !self.full_logged {
            warn!(
                max = super::MAX_CONTACTS,
                "too many contacts: the ones past the limit are not shown by name"
            );
            self.full_logged = true;
        }
    }

    /// The index's entries of `cards`: numbers normalised, inline photos written (off
    /// the runtime's thread).
    async fn entries(&mut self, cards: Vec<Card>) -> Vec<(String, Entry)> {
        let region = self.region.clone();
        let mut photos = self.photos.take();
        let done = tokio::task::spawn_blocking(move || {
            let entries = cards
                .into_iter()
                .map(|card| {
                    let photo = match card.photo {
                        Some(Photo::File(path)) => Some(path),
                        Some(Photo::Inline { bytes, extension }) => photos
                            .as_mut()
                            .and_then(|cache| cache.store(&bytes, extension)),
                        None => None,
                    };
                    let entry = Entry {
                        name: card.name,
                        numbers: normalise_numbers(&card.numbers, region.as_deref()),
                        photo,
                    };
                    (card.uid, entry)
                })
                .collect();
            (photos, entries)
        })
        .await;
        match done {
            Ok((photos, entries)) => {
                self.photos = photos;
                entries
            }
            Err(e) => {
                warn!(cause = %e, "reading contacts failed");
                Vec::new()
            }
        }
    }

    /// Publishes the snapshot if it changed, and removes the photo files no contact uses.
    async fn publish(&mut self) {
        self.publish_at = None;
        let book = self.index.snapshot();
        if **self.tx.borrow() == book {
            return;
        }
        info!(
            contacts = self.index.len(),
            numbers = book.len(),
            "address book read"
        );
        self.tx.send_replace(Arc::new(book));
        let keep: HashSet<std::path::PathBuf> = self.index.photos().cloned().collect();
        if let Some(mut photos) = self.photos.take() {
            let pruned = tokio::task::spawn_blocking(move || {
                let keep: HashSet<&Path> = keep.iter().map(|p| p.as_path()).collect();
                photos.prune(&keep);
                photos
            })
            .await;
            self.photos = pruned.ok();
        }
    }
}

/// One address book's task: opens it and follows its view, again with backoff when its
/// service goes away or cannot be asked, until aborted.
async fn follow_book(conn: zbus::Connection, book: String, events: mpsc::Sender<BookEvent>) {
    let mut backoff = MIN_BACKOFF;
    loop {
        match View::open(&conn, &book).await {
            Ok(view) => {
                backoff = MIN_BACKOFF;
                if view.follow(&book, &events).await.is_err() {
                    return; // The adapter is gone.
                }
                debug!(book, "the address book's service went away");
            }
            Err(e) => debug!(book, cause = %e, retry_in = ?backoff, "cannot open the address book"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// A started view of every contact of one book, with its signals.
struct View {
    /// Kept so that the book stays open as long as the view is followed.
    _book: AddressBookProxy<'static>,
    view: AddressBookViewProxy<'static>,
    added: ObjectsAddedStream,
    modified: ObjectsModifiedStream,
    removed: ObjectsRemovedStream,
    owner: zbus::proxy::OwnerChangedStream<'static>,
}

/// `fut`, bounded by `within`.
async fn bounded<T>(
    within: Duration,
    fut: impl std::future::Future<Output = zbus::Result<T>>,
) -> zbus::Result<T> {
    tokio::time::timeout(within, fut)
        .await
        .map_err(|_| zbus::Error::Failure("the address book did not answer in time".into()))?
}

impl View {
    async fn open(conn: &zbus::Connection, uid: &str) -> zbus::Result<View> {
        let factory = AddressBookFactoryProxy::builder(conn)
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        let (path, bus) = bounded(SLOW_CALL, factory.open_address_book(uid)).await?;
        let book = AddressBookProxy::builder(conn)
            .destination(bus.clone())
            .path(path)
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        bounded(SLOW_CALL, book.open()).await?;
        let view_path = bounded(CALL, book.get_view(ALL_CONTACTS)).await?;
        let view = AddressBookViewProxy::builder(conn)
            .destination(bus)
            .path(view_path)
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        // Subscribed before the view starts, so that nothing it sends is missed.
        let added = view.receive_objects_added().await?;
        let modified = view.receive_objects_modified().await?;
        let removed = view.receive_objects_removed().await?;
        let owner = view.inner().receive_owner_changed().await?;
        Ok(View {
            _book: book,
            view,
            added,
            modified,
            removed,
            owner,
        })
    }

    /// Starts the view and reports what it sends until the book's service goes away
    /// (`Ok`), or the adapter does (`Err`).
    async fn follow(mut self, book: &str, events: &mpsc::Sender<BookEvent>) -> Result<(), ()> {
        let send = |event| async { events.send(event).await.map_err(|_| ()) };
        send(BookEvent::Reset {
            book: book.to_owned(),
        })
        .await?;
        if let Err(e) = bounded(CALL, self.view.start()).await {
            debug!(book, cause = %e, "cannot start the address book's view");
            return Ok(());
        }
        loop {
            let event = tokio::select! {
                signal = self.added.next() => signal.and_then(|s| s.args().ok().map(|a| cards(book, a.objects))),
                signal = self.modified.next() => signal.and_then(|s| s.args().ok().map(|a| cards(book, a.objects))),
                signal = self.removed.next() => signal.and_then(|s| {
                    s.args().ok().map(|a| BookEvent::Removed {
                        book: book.to_owned(),
                        uids: a.uids,
                    })
                }),
                owner = self.owner.next() => match owner {
                    Some(Some(_)) => continue,
                    _ => return Ok(()),
                },
            };
            let Some(event) = event else { return Ok(()) };
            send(event).await?;
        }
    }
}

/// The cards of a view's `ObjectsAdded`/`ObjectsModified`: vCards each followed by its
/// UID (as `EBookClientView` reads them); those that cannot be read are skipped.
fn cards(book: &str, objects: Vec<String>) -> BookEvent {
    let cards = objects
        .chunks_exact(2)
        .filter_map(|pair| {
            let uid = Some(pair[1].as_str()).filter(|u| !u.is_empty());
            vcard::parse(&pair[0], uid)
                .map_err(|e| debug!(book, cause = %e, "contact skipped"))
                .ok()
        })
        .collect();
    BookEvent::Cards {
        book: book.to_owned(),
        cards,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(uid: &str, data: &str) -> (String, Source) {
        (uid.to_owned(), Source::read(uid.to_owned(), data))
    }

    #[test]
    fn address_books_are_the_enabled_sources_with_an_address_book_group() {
        let sources: HashMap<String, Source> = [
            source(
                "system-address-book",
                "\n[Data Source]\nDisplayName=Personal\nEnabled=true\nParent=local-stub\n\n[Address Book]\nBackendName=local\n",
            ),
            source("local-stub", "[Data Source]\nDisplayName=On This Computer\nEnabled=true\n"),
            source("calendar", "[Data Source]\nEnabled=true\n[Calendar]\nBackendName=local\n"),
            source("off", "[Data Source]\nEnabled=false\n[Address Book]\nBackendName=local\n"),
            source("account", "[Data Source]\nEnabled=false\n[Collection]\nBackendName=google\n"),
            source("google-contacts", "[Data Source]\nParent=account\n[Address Book]\nBackendName=carddav\n"),
            source("a-carddav", "[Data Source]\nEnabled=true\n[Address Book]\nBackendName=carddav\n"),
        ]
        .into_iter()
        .collect();
        assert_eq!(
            books_to_follow(&sources),
            ["system-address-book", "a-carddav"]
        );
    }

    #[test]
    fn a_view_sends_each_vcard_with_its_uid() {
        let objects = [
            "BEGIN:VCARD\r\nVERSION:3.0\r\nFN:Alice\r\nTEL:+15550001111\r\nEND:VCARD",
            "pas-id-1",
            "not a vcard",
            "pas-id-2",
            "BEGIN:VCARD\r\nUID:own\r\nFN:Bob\r\nEND:VCARD",
            "",
            "a vCard without its UID",
        ];
        let BookEvent::Cards { book, cards } = cards("b", objects.map(String::from).to_vec())
        else {
            panic!("cards expected");
        };
        assert_eq!(book, "b");
        let read: Vec<(&str, &str)> = cards
            .iter()
            .map(|c| (c.uid.as_str(), c.name.as_str()))
            .collect();
        assert_eq!(read, [("pas-id-1", "Alice"), ("own", "Bob")]);
    }

    #[test]
    fn no_more_books_than_the_bound() {
        let sources: HashMap<String, Source> = (0..MAX_BOOKS + 5)
            .map(|i| source(&format!("book-{i:03}"), "[Address Book]\n"))
            .collect();
        let books = books_to_follow(&sources);
        assert_eq!(books.len(), MAX_BOOKS);
        assert_eq!(books[0], "book-000");
    }
}
