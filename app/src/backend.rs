//! The D-Bus side of the app: a thread of its own running a tokio runtime (zbus's), which
//! owns the session-bus connection and talks to the GTK main loop only through two
//! channels: [`Command`]s in, [`Event`]s out. GTK never waits on D-Bus, and D-Bus never
//! touches a widget.
//!
//! It follows the daemon's name (`NameOwnerChanged`): when `tandemd` starts, or starts
//! again after a crash or an update, it reads the properties and the conversation list
//! afresh and says so ([`Event::Daemon`]), so the app reconnects by itself. Commands are
//! handled one at a time, in order, between signals: a message fetched after a send
//! (`GetMessage`) always reaches the screen before the status signals that follow it.

use std::num::NonZeroUsize;
use std::time::Duration;

use futures_util::StreamExt as _;
use zbus::proxy::CacheProperties;
use zbus::{MatchRule, MessageStream};

use crate::api::{self, Messages1Proxy};
use crate::model::{Conversation, Message};

/// How many conversations the list loads (the first page; paging comes later).
pub const LIST_PAGE: u32 = 200;
/// How many messages of a thread are loaded when it opens.
pub const THREAD_PAGE: u32 = 200;
/// The bound of every call to the daemon.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait before trying the session bus again.
const BUS_RETRY: Duration = Duration::from_secs(2);

/// What the screens ask of the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Load a thread (`GetMessages`), then mark it read (`MarkRead`) if it is in front
    /// of the user.
    OpenThread { peer: String, mark_read: bool },
    /// `MarkRead`, for a message that came into the open thread.
    MarkRead(String),
    /// `SendMessage` with the router's choice of channel.
    Send { peer: String, text: String },
    /// `EstimateSms` of the text being typed; `seq` tells answers to old texts apart.
    Estimate { text: String, seq: u64 },
    /// `GetMessage`: a message the screens do not know yet (sent by another client).
    Fetch(String),
    /// `ListConversations` again (after a deletion changed what a row shows).
    ReloadList,
}

/// The daemon's properties the screens show.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Props {
    pub modem_state: String,
    pub relay_state: String,
    pub own_number: String,
    pub unread_count: u32,
}

/// What happened, for the screens.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The daemon is there (after the properties and the list of a fresh start) or gone.
    Daemon(bool),
    Props(Props),
    Conversations(Vec<Conversation>),
    Thread {
        peer: String,
        messages: Vec<Message>,
    },
    /// `MessageReceived`.
    Received(Message),
    /// `MessageStatusChanged`.
    Status {
        id: String,
        status: String,
        channel: String,
    },
    /// A message as it is now, fetched by id.
    Message(Message),
    /// A message just sent from here to `to` as the user wrote it (the daemon's peer,
    /// `message.peer`, is the number normalised).
    Sent {
        to: String,
        message: Message,
    },
    /// A conversation's messages were all marked read.
    Read(String),
    /// A message or a conversation was deleted (signals the daemon is getting).
    MessageDeleted(String),
    ConversationDeleted(String),
    Estimate {
        seq: u64,
        /// `(segments, encoding, remaining)`, or why there is none.
        estimate: Result<(u32, String, u32), String>,
    },
    SendFailed {
        peer: String,
        text: String,
        error: String,
    },
    /// A call failed; the text says what and why.
    Error(String),
}

/// Starts the D-Bus thread on the session bus (`address`, or the environment's session
/// bus when `None`); it ends when the UI drops its ends of the channels.
pub fn spawn(
    address: Option<String>,
) -> (
    async_channel::Sender<Command>,
    async_channel::Receiver<Event>,
) {
    let (commands, command_rx) = async_channel::unbounded();
    let (event_tx, events) = async_channel::bounded(256);
    std::thread::Builder::new()
        .name("tandem-dbus".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            runtime.block_on(run(address, command_rx, event_tx));
        })
        .expect("the D-Bus thread");
    (commands, events)
}

/// Why a connection's loop ended.
enum End {
    /// The UI is gone: stop.
    UiGone,
    /// The bus connection failed: connect again.
    BusLost(String),
}

async fn run(
    address: Option<String>,
    commands: async_channel::Receiver<Command>,
    events: async_channel::Sender<Event>,
) {
    loop {
        let end = match connect(address.as_deref()).await {
            Ok(conn) => serve(&conn, &commands, &events)
                .await
                .unwrap_or_else(|e| End::BusLost(e.to_string())),
            Err(e) => End::BusLost(e.to_string()),
        };
        match end {
            End::UiGone => return,
            End::BusLost(why) => {
                eprintln!("tandem-messages: session bus: {why}; trying again");
                if events.send(Event::Daemon(false)).await.is_err() {
                    return;
                }
                tokio::time::sleep(BUS_RETRY).await;
            }
        }
    }
}

async fn connect(address: Option<&str>) -> zbus::Result<zbus::Connection> {
    match address {
        Some(address) => zbus::connection::Builder::address(address).build().await,
        None => zbus::Connection::session().await,
    }
}

fn rule(member: Option<&'static str>) -> zbus::Result<MatchRule<'static>> {
    let builder = MatchRule::builder()
        .msg_type(zbus::message::Type::Signal)
        .sender(api::SERVICE)
        .path(api::PATH);
    match member {
        // PropertiesChanged of our interface.
        Some(member) => builder
            .interface("org.freedesktop.DBus.Properties")
            .member(member)
            .add_arg(api::INTERFACE)
            .build(),
        None => builder.interface(api::INTERFACE).build(),
    }
}

/// One bus connection's life: follows the daemon's name, its signals and the UI's
/// commands until the UI or the bus goes.
async fn serve(
    conn: &zbus::Connection,
    commands: &async_channel::Receiver<Command>,
    events: &async_channel::Sender<Event>,
) -> zbus::Result<End> {
    let dbus = zbus::fdo::DBusProxy::new(conn).await?;
    let mut owners = dbus
        .receive_name_owner_changed_with_args(&[(0, api::SERVICE)])
        .await?;
    // Subscribed before anything is read, so nothing falls between a read and a signal.
    let mut signals =
        MessageStream::for_match_rule(rule(None)?, conn, NonZeroUsize::new(1024)).await?;
    let mut props = MessageStream::for_match_rule(
        rule(Some("PropertiesChanged"))?,
        conn,
        NonZeroUsize::new(64),
    )
    .await?;
    let proxy = Messages1Proxy::builder(conn)
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    let service = zbus::names::BusName::try_from(api::SERVICE)?;
    let running = dbus.name_has_owner(service).await.unwrap_or(false);
    let d = Daemon { proxy, events };
    if !d.started(running).await {
        return Ok(End::UiGone);
    }
    loop {
        let sent = tokio::select! {
            biased;
            change = owners.next() => match change {
                Some(change) => {
                    let running = change.args().is_ok_and(|a| a.new_owner().is_some());
                    d.started(running).await
                }
                None => return Ok(End::BusLost("the bus closed".into())),
            },
            msg = signals.next() => match msg {
                Some(Ok(msg)) => d.signal(&msg).await,
                Some(Err(e)) => return Ok(End::BusLost(e.to_string())),
                None => return Ok(End::BusLost("the bus closed".into())),
            },
            msg = props.next() => match msg {
                Some(_) => d.props().await,
                None => return Ok(End::BusLost("the bus closed".into())),
            },
            command = commands.recv() => match command {
                Ok(command) => d.command(command).await,
                Err(_) => return Ok(End::UiGone),
            },
        };
        if !sent {
            return Ok(End::UiGone);
        }
    }
}

/// The daemon as the backend sees it: its proxy, and where events go. Each method
/// returns false once the UI is gone.
struct Daemon<'a> {
    proxy: Messages1Proxy<'static>,
    events: &'a async_channel::Sender<Event>,
}

impl Daemon<'_> {
    async fn emit(&self, event: Event) -> bool {
        self.events.send(event).await.is_ok()
    }

    /// The daemon (re)started, or left: a fresh start reads everything again.
    async fn started(&self, running: bool) -> bool {
        if !running {
            return self.emit(Event::Daemon(false)).await;
        }
        if !self.props().await {
            return false;
        }
        match bounded(self.proxy.list_conversations(0, LIST_PAGE)).await {
            Ok(list) => {
                let list = list.into_iter().map(Conversation::from).collect();
                if !self.emit(Event::Conversations(list)).await {
                    return false;
                }
            }
            Err(e) => {
                if !self
                    .emit(Event::Error(format!("Cannot list the conversations: {e}")))
                    .await
                {
                    return false;
                }
            }
        }
        self.emit(Event::Daemon(true)).await
    }

    async fn props(&self) -> bool {
        let p = &self.proxy;
        let read = async {
            Ok::<_, zbus::Error>(Props {
                modem_state: p.modem_state().await?,
                relay_state: p.relay_state().await?,
                own_number: p.own_number().await?,
                unread_count: p.unread_count().await?,
            })
        };
        match bounded(read).await {
            Ok(props) => self.emit(Event::Props(props)).await,
            // The daemon is going or gone: NameOwnerChanged says so.
            Err(_) => true,
        }
    }

    async fn signal(&self, msg: &zbus::Message) -> bool {
        let header = msg.header();
        let Some(member) = header.member() else {
            return true;
        };
        let body = msg.body();
        let event =
            match member.as_str() {
                "MessageReceived" => body
                    .deserialize::<(api::MessageDict,)>()
                    .ok()
                    .map(|(m,)| Event::Received(m.into())),
                "MessageStatusChanged" => body.deserialize::<(String, String, String)>().ok().map(
                    |(id, status, channel)| Event::Status {
                        id,
                        status,
                        channel,
                    },
                ),
                // Signals being added to the daemon: the first argument is what they name.
                "ConversationRead" => first_string(&body).map(Event::Read),
                "MessageDeleted" => first_string(&body).map(Event::MessageDeleted),
                "ConversationDeleted" => first_string(&body).map(Event::ConversationDeleted),
                _ => None,
            };
        match event {
            Some(event) => self.emit(event).await,
            None => true,
        }
    }

    async fn command(&self, command: Command) -> bool {
        match command {
            Command::OpenThread { peer, mark_read } => {
                let messages = match bounded(self.proxy.get_messages(&peer, "", THREAD_PAGE)).await
                {
                    Ok(list) => list.into_iter().map(Message::from).collect(),
                    Err(e) => {
                        return self
                            .emit(Event::Error(format!("Cannot open the conversation: {e}")))
                            .await;
                    }
                };
                if !self
                    .emit(Event::Thread {
                        peer: peer.clone(),
                        messages,
                    })
                    .await
                {
                    return false;
                }
                !mark_read || self.mark_read(peer).await
            }
            Command::MarkRead(peer) => self.mark_read(peer).await,
            Command::Send { peer, text } => {
                let send = self.proxy.send_message(&peer, &text, api::send_options());
                match bounded(send).await {
                    Ok(id) => match bounded(self.proxy.get_message(&id)).await {
                        Ok(m) => {
                            let message = m.into();
                            self.emit(Event::Sent { to: peer, message }).await
                        }
                        // Accepted, then deleted or the daemon gone: nothing to show.
                        Err(_) => true,
                    },
                    Err(error) => self.emit(Event::SendFailed { peer, text, error }).await,
                }
            }
            Command::Estimate { text, seq } => {
                let estimate = bounded(self.proxy.estimate_sms(&text)).await;
                self.emit(Event::Estimate { seq, estimate }).await
            }
            Command::Fetch(id) => self.fetch(&id).await,
            Command::ReloadList => match bounded(self.proxy.list_conversations(0, LIST_PAGE)).await
            {
                Ok(list) => {
                    let list = list.into_iter().map(Conversation::from).collect();
                    self.emit(Event::Conversations(list)).await
                }
                Err(e) => self.emit(Event::Error(format!("Cannot list: {e}"))).await,
            },
        }
    }

    async fn mark_read(&self, peer: String) -> bool {
        match bounded(self.proxy.mark_read(&peer)).await {
            Ok(()) => self.emit(Event::Read(peer)).await,
            Err(e) => {
                self.emit(Event::Error(format!("Cannot mark read: {e}")))
                    .await
            }
        }
    }

    async fn fetch(&self, id: &str) -> bool {
        match bounded(self.proxy.get_message(id)).await {
            Ok(m) => self.emit(Event::Message(m.into())).await,
            // Deleted meanwhile, or the daemon is gone: nothing to show.
            Err(_) => true,
        }
    }
}

/// The first argument of a signal, if it is a string.
fn first_string(body: &zbus::message::Body) -> Option<String> {
    body.deserialize::<(String,)>()
        .map(|(s,)| s)
        .or_else(|_| body.deserialize::<(String, String)>().map(|(s, _)| s))
        .ok()
}

/// A call to the daemon, bounded by [`CALL_TIMEOUT`]; its error as a person reads it.
async fn bounded<T>(call: impl Future<Output = zbus::Result<T>>) -> Result<T, String> {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(describe(&e)),
        Err(_) => Err("the daemon did not answer in time".into()),
    }
}

/// The message of a D-Bus error (the daemon's errors carry a sentence), else the error.
fn describe(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(_, Some(text), _) => text.clone(),
        other => other.to_string(),
    }
}
