//! client::task: the shell around the client's core, one task and one loop.
//!
//! Owns what the core must not touch: the WebSocket (and the dial in progress), the
//! clock, the token file, the TLS configuration and the channels (commands, events,
//! the network's `watch`, logind's sleep notices). Everything happens in one `select!`;
//! each thing that happens becomes an [`Input`] for [`Core::handle`], and the shell does
//! the [`Action`]s it returns, in order (a write that fails becomes [`Input::Lost`]).
//! The one timer is the core's [`Core::deadline`], armed only when it means something,
//! so an idle logged-in client wakes only for the relay's pings.
//! Must not: decide anything about the protocol (the core does), spawn tasks, or block
//! the loop on anything unbounded: every write, dial and close has a timeout.

use std::collections::VecDeque;
use std::future::{Future, pending};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::mpsc;
use tokio::time::error::Elapsed;
use tokio::time::{Instant, sleep_until, timeout};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tracing::{debug, error, info, warn};

use super::backoff::Backoff;
use super::core::{Action, Core, Input, later};
use super::dial::{self, DialError, Endpoint, Ws};
use super::token;
use super::{ClientConfig, RelayCommand, RelayEvent};
use crate::logind::Sleep;
use crate::net::{Connectivity, ConnectivityWatch};
use crate::number::is_e164;
use crate::relay::protocol::decode_server;

/// Bound of one connection attempt: TCP, TLS and the WebSocket handshake.
const DIAL_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound of one write: a relay that stops reading does not hold the loop longer.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing handshake may take when the client hangs up itself (before sleep:
/// until the relay's answering close frame, the proof that the relay has read ours).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Events waiting for the engine beyond which the client stops reading the relay
/// (TCP then slows the relay down; its own limits apply).
const OUTBOX_HIGH: usize = 256;

/// Runs the client until `commands` closes.
pub(super) async fn run(
    config: ClientConfig,
    tls: Option<Arc<rustls::ClientConfig>>,
    mut commands: mpsc::Receiver<RelayCommand>,
    events: mpsc::Sender<RelayEvent>,
    mut net: Option<ConnectivityWatch>,
    mut sleep: Option<mpsc::Receiver<Sleep>>,
) {
    let mut shell = Shell::new(config, tls, net.is_some());
    shell.input(Input::Tick).await;
    let known = net.as_mut().and_then(|net| *net.borrow_and_update());
    if let Some(connectivity) = known {
        shell.input(Input::Connectivity(connectivity)).await;
    }
    loop {
        let reading = shell.out.queue.len() < OUTBOX_HIGH;
        shell.core.set_reading(reading, Instant::now());
        let deadline = shell.core.deadline();
        tokio::select! {
            command = commands.recv() => match command {
                Some(command) => shell.command(command).await,
                None => break,
            },
            permit = events.reserve(), if !shell.out.queue.is_empty() => match permit {
                Ok(permit) => {
                    if let Some(event) = shell.out.queue.pop_front() {
                        permit.send(event);
                    }
                    shell.out.trim();
                }
                Err(_) => shell.out.close(),
            },
            event = link_event(&mut shell.link, reading) => match event {
                LinkEvent::Message(message) => shell.on_message(message).await,
                LinkEvent::Dialed(result) => shell.on_dialed(result).await,
            },
            change = next_change(&mut net) => match change {
                Some(Some(connectivity)) => shell.input(Input::Connectivity(connectivity)).await,
                Some(None) => {}
                None => {
                    // The adapter stopped: just try.
                    net = None;
                    shell.input(Input::Connectivity(Connectivity::Unknown)).await;
                }
            },
            notice = next_notice(&mut sleep) => match notice {
                Some(Sleep::Preparing { closed }) => {
                    shell.input(Input::Sleep).await;
                    let _ = closed.send(());
                }
                Some(Sleep::Resumed) => shell.input(Input::Resumed).await,
                None => {
                    // Nobody tells us about sleep any more: we run, so we are awake.
                    sleep = None;
                    shell.input(Input::Resumed).await;
                }
            },
            () = at(deadline) => shell.input(Input::Tick).await,
        }
    }

    shell.input(Input::Stop).await;
    // The engine closed its side; hand over what fits without waiting.
    for event in shell.out.queue.drain(..) {
        if events.try_send(event).is_err() {
            break;
        }
    }
    debug!("relay client stopped");
}

/// The outcome of one connection attempt (the WebSocket boxed: it is large).
type Dialed = Result<Result<Box<Ws>, DialError>, Elapsed>;

/// The connection, if any (boxed: a connection is a few hundred bytes, and rare).
enum Link {
    Down,
    Dialing(Pin<Box<dyn Future<Output = Dialed> + Send>>),
    Up(Box<Ws>),
}

/// What the connection did.
enum LinkEvent {
    Message(Option<Result<Message, WsError>>),
    Dialed(Dialed),
}

async fn link_event(link: &mut Link, reading: bool) -> LinkEvent {
    match link {
        Link::Up(ws) if reading => LinkEvent::Message(ws.next().await),
        Link::Dialing(dialing) => LinkEvent::Dialed(dialing.as_mut().await),
        _ => pending().await,
    }
}

async fn next_notice(sleep: &mut Option<mpsc::Receiver<Sleep>>) -> Option<Sleep> {
    match sleep {
        Some(sleep) => sleep.recv().await,
        None => pending().await,
    }
}

/// The network's next state (`Some(None)`: not known yet); `None` once the adapter
/// stopped.
async fn next_change(net: &mut Option<ConnectivityWatch>) -> Option<Option<Connectivity>> {
    match net {
        Some(net) => match net.changed().await {
            Ok(()) => Some(*net.borrow_and_update()),
            Err(_) => None,
        },
        None => pending().await,
    }
}

async fn at(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => pending().await,
    }
}

/// The input a message from the relay makes.
fn input_of(message: Message) -> Input {
    match message {
        Message::Text(text) => match decode_server(&text) {
            Ok(frame) => Input::Frame(frame),
            Err(err) => {
                warn!(cause = %err, "unreadable frame from the relay: ignored");
                Input::Heard
            }
        },
        // tungstenite answers pings and closes by itself; they only prove life.
        _ => Input::Heard,
    }
}

/// Events for the engine, handed over as it takes them (the loop never waits on it).
struct Outbox {
    queue: VecDeque<RelayEvent>,
    /// False once the engine dropped its receiver: events are discarded.
    open: bool,
}

impl Outbox {
    fn push(&mut self, event: RelayEvent) {
        if self.open {
            self.queue.push_back(event);
        }
    }

    fn close(&mut self) {
        if self.open {
            warn!("nobody receives relay events any more");
        }
        self.open = false;
        self.queue = VecDeque::new();
    }

    /// Gives back the memory of a burst once it is delivered.
    fn trim(&mut self) {
        if self.queue.is_empty() && self.queue.capacity() > 32 {
            self.queue = VecDeque::new();
        }
    }
}

/// The core and the I/O it asks for.
struct Shell {
    config: ClientConfig,
    endpoint: Result<Endpoint, DialError>,
    /// The TLS configuration for `wss://`: given, or loaded from the system's roots at
    /// the first `wss://` dial.
    tls: Option<Arc<rustls::ClientConfig>>,
    core: Core,
    out: Outbox,
    link: Link,
}

impl Shell {
    fn new(config: ClientConfig, tls: Option<Arc<rustls::ClientConfig>>, watch_net: bool) -> Shell {
        let endpoint = Endpoint::parse(&config.url);
        if let Err(err) = &endpoint {
            error!(cause = %err, "the relay client cannot start");
        }
        let backoff = Backoff::new(config.min_backoff, config.max_backoff);
        Shell {
            core: Core::new(backoff, endpoint.is_ok(), watch_net),
            config,
            endpoint,
            tls,
            out: Outbox {
                queue: VecDeque::new(),
                open: true,
            },
            link: Link::Down,
        }
    }

    /// Has the core handle `input` (and what follows from doing its actions).
    async fn input(&mut self, input: Input) {
        let mut next = Some(input);
        while let Some(input) = next.take() {
            let actions = self.core.handle(Instant::now(), input);
            next = self.perform(actions).await;
        }
    }

    /// Does the core's actions in order; returns what came of them that the core must
    /// hear (a failed write or dial, the end of the closing handshake).
    async fn perform(&mut self, actions: Vec<Action>) -> Option<Input> {
        let mut next = None;
        for action in actions {
            match action {
                Action::Event(event) => self.out.push(event),
                // The connection is gone: the core hears it once the batch is done.
                Action::Write(_) if next.is_some() => {}
                Action::Write(text) => next = self.write(text).await.err().map(Input::Lost),
                Action::Dial => next = self.start_dial(),
                Action::Hangup { close } => {
                    // The core ended the connection itself: a failed write changes nothing.
                    next = None;
                    self.hangup(close).await;
                }
                Action::CloseForSleep => {
                    self.close_for_sleep().await;
                    next = Some(Input::SleepClosed);
                }
                action => self.store_token(action),
            }
        }
        next
    }

    fn store_token(&mut self, action: Action) {
        match action {
            Action::SaveToken(stored) => {
                if let Err(err) = token::save(&self.config.token_path, &stored) {
                    error!(cause = %err, "cannot store the relay token; it lasts until the daemon stops");
                }
            }
            Action::RemoveToken => {
                if let Err(err) = token::remove(&self.config.token_path) {
                    error!(cause = %err, "cannot remove the void relay token");
                }
            }
            _ => {}
        }
    }

    async fn command(&mut self, command: RelayCommand) {
        let input = match command {
            // The core reads no file: the stored token comes with the number.
            RelayCommand::OwnNumber(number) => {
                let stored = match number.as_deref().filter(|n| is_e164(n)) {
                    Some(_) => token::load(&self.config.token_path).unwrap_or_else(|err| {
                        warn!(cause = %err, "cannot use the stored relay token; registering");
                        None
                    }),
                    None => None,
                };
                Input::OwnNumber { number, stored }
            }
            command => Input::Command(command),
        };
        self.input(input).await;
    }

    async fn write(&mut self, text: String) -> Result<(), &'static str> {
        let Link::Up(ws) = &mut self.link else {
            return Ok(());
        };
        // `send` flushes: with no write buffer the frame leaves at once.
        match timeout(WRITE_TIMEOUT, ws.send(Message::Text(Utf8Bytes::from(text)))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => {
                debug!(cause = %err, "write to the relay failed");
                Err("write failed")
            }
            Err(_) => Err("write timed out: the relay does not read"),
        }
    }

    async fn hangup(&mut self, close: bool) {
        if let Link::Up(mut ws) = std::mem::replace(&mut self.link, Link::Down)
            && close
        {
            let _ = timeout(CLOSE_TIMEOUT, ws.close(None)).await;
        }
    }

    async fn on_message(&mut self, message: Option<Result<Message, WsError>>) {
        let input = match message {
            None => Input::Lost("closed by the relay"),
            Some(Err(err)) => {
                debug!(cause = %err, "read from the relay failed");
                Input::Lost("read failed")
            }
            Some(Ok(message)) => input_of(message),
        };
        self.input(input).await;
    }

    // ----- connecting -----

    /// Starts the dial; `DialFailed` if it cannot even start.
    fn start_dial(&mut self) -> Option<Input> {
        let endpoint = self.endpoint.as_ref().ok()?.clone();
        let tls = if endpoint.tls {
            match self.tls_config() {
                Ok(config) => Some(config),
                Err(err) => {
                    error!(cause = %err, "cannot use wss://");
                    return Some(Input::DialFailed);
                }
            }
        } else {
            None
        };
        debug!(url = %endpoint.request, "connecting to the relay");
        let dialing = async move {
            let result = timeout(DIAL_TIMEOUT, dial::dial(endpoint, tls)).await;
            result.map(|dialed| dialed.map(Box::new))
        };
        self.link = Link::Dialing(Box::pin(dialing));
        None
    }

    fn tls_config(&mut self) -> Result<Arc<rustls::ClientConfig>, DialError> {
        if let Some(config) = &self.tls {
            return Ok(config.clone());
        }
        let config = dial::system_tls()?;
        self.tls = Some(config.clone());
        Ok(config)
    }

    async fn on_dialed(&mut self, result: Dialed) {
        let input = match result {
            Ok(Ok(ws)) => {
                self.link = Link::Up(ws);
                Input::Opened
            }
            Ok(Err(err)) => {
                self.link = Link::Down;
                info!(cause = %err, "cannot reach the relay");
                Input::DialFailed
            }
            Err(_) => {
                self.link = Link::Down;
                info!("the relay did not answer in time");
                Input::DialFailed
            }
        };
        self.input(input).await;
    }

    /// Hangs up cleanly, within [`CLOSE_TIMEOUT`]: our close frame, then the relay's
    /// frames until its answering close, the proof that it has read ours (and so shows
    /// us offline at once). Frames that come meanwhile go to the core as usual, so no
    /// answer, receipt or message the relay pushed is dropped; what cannot be answered any
    /// more (an `ack` of a delivered message) the relay asks again after the next login.
    async fn close_for_sleep(&mut self) {
        let deadline = later(Instant::now(), CLOSE_TIMEOUT);
        let Link::Up(ws) = &mut self.link else {
            return;
        };
        match timeout(CLOSE_TIMEOUT, ws.close(None)).await {
            Ok(Ok(())) => {}
            _ => return debug!("the relay connection was already gone"),
        }
        loop {
            let Link::Up(ws) = &mut self.link else {
                return;
            };
            let message = match tokio::time::timeout_at(deadline, ws.next()).await {
                Ok(Some(Ok(Message::Close(_)))) | Ok(None) => {
                    return info!("relay session closed");
                }
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(WsError::ConnectionClosed))) => return info!("relay session closed"),
                Ok(Some(Err(err))) => {
                    return debug!(cause = %err, "the relay connection failed while closing");
                }
                Err(_) => return warn!("the relay did not answer the close in time"),
            };
            let actions = self.core.handle(Instant::now(), input_of(message));
            self.perform_closing(actions);
        }
    }

    /// [`Shell::perform`] while closing: writes would fail after our close frame (what
    /// they answer, the relay asks again after the next login), so they are not tried.
    fn perform_closing(&mut self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Event(event) => self.out.push(event),
                Action::Hangup { .. } => self.link = Link::Down,
                Action::Write(_) | Action::Dial | Action::CloseForSleep => {}
                action => self.store_token(action),
            }
        }
    }
}
