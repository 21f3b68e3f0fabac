//! server::conn: one task per client connection.
//!
//! Owns the WebSocket (small buffers: an idle connection costs a few KiB), the `hello`
//! handshake, the auth timer, keepalive (a WebSocket ping every `ping_interval`; a
//! connection silent for `idle_timeout` is dead), frame size and JSON syntax, and
//! writing what the hub sends. Every request past `hello` goes to the hub; `ping` is
//! answered here.
//!
//! Flow control: the outbox the hub fills holds at most `deliver_window` deliveries
//! (the hub's window, paced to a quarter of `max_outbox_bytes`), [`REQUEST_BUDGET`]
//! answers to this client's own requests, and [`OUTBOUND_SLACK`] other frames (receipts,
//! presence), and at most `max_outbox_bytes` in all. The connection forwards a new
//! request only while fewer than `REQUEST_BUDGET` of its requests are unanswered and
//! their cost (their own bytes and an estimate of their answers', see [`cost`]) is below
//! a quarter of `max_outbox_bytes` (the hub answers each with exactly one `Answer` or
//! `Done`, which gives its cost back); beyond that it stops reading the socket until
//! answers have been written. So neither a client's requests nor their answers can make
//! the relay hold more than that, or overflow its outbox: only a client that does not
//! read its frames is dropped (`overloaded`).
//!
//! Must not: keep any state about other connections or decide anything about
//! accounts, messages or presence. Every write has a timeout, so a client that stops
//! reading cannot hold its task forever; a fatal error ends only this connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio::time::timeout_at;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tracing::{debug, info};

use super::hub::{ConnId, HubCmd, Outbound};
use super::outbox::{OutboxRx, TryRecvError, outbox};
use super::{RelayConfig, clip, excerpt};
use crate::relay::protocol::{
    ClientFrame, ErrorCode, ErrorFrame, PROTOCOL_VERSION, ServerFrame, decode_client, encode,
};

/// Bytes the WebSocket reads from the socket at a time, and its initial read buffer.
/// Frames are small JSON objects; a larger frame grows the buffer only while it lasts.
const READ_BUFFER: usize = 2048;

/// Frames the hub may queue for one connection beyond its delivery window and the
/// answers to its requests (receipts, presence, typing) before the connection counts as
/// not reading. Receipts are pushed only while fewer than a batch are queued (the rest
/// are owed and paced), but one group commit may release a presence or typing change
/// for every request in it at once (many contacts logging in together): room for a
/// whole group of those, so that such a burst cannot drop a client that reads. A bound,
/// not an allocation: an empty outbox holds no buffer.
const OUTBOUND_SLACK: usize = 64 + super::hub::MAX_GROUP;

/// Requests one connection may have at the hub, unanswered: past this it stops reading
/// its socket until answers are written.
const REQUEST_BUDGET: usize = 64;

/// What the relay counts for an answer that is not a snapshot: an `ack`, a `confirm`
/// or an error frame (whose client-supplied parts are short excerpts) is smaller.
const ANSWER_BYTES: usize = 512;

/// Bytes of frames the WebSocket gathers before writing them to the socket; a batch of
/// frames from the hub is written with one flush.
const WRITE_BUFFER: usize = 16 * 1024;

/// How long a closing connection waits for its last frames to go out and for the
/// client to hang up.
const LINGER: Duration = Duration::from_secs(1);

/// What a connection task needs, handed over by `run`.
pub(super) struct Ctx {
    pub id: ConnId,
    /// When the TCP connection was accepted: the TLS and WebSocket handshakes and the
    /// login must all be done within `auth_timeout` of it.
    pub accepted: Instant,
    pub peer: SocketAddr,
    pub config: Arc<RelayConfig>,
    pub hub: mpsc::Sender<HubCmd>,
    /// Becomes true when the relay stops.
    pub stop: watch::Receiver<bool>,
    /// Held until the task ends: `run` waits for all of these to drop.
    pub _done: mpsc::Sender<()>,
}

impl Ctx {
    /// Runs a handshake step until it ends, the auth deadline passes (`None`) or the
    /// relay stops (`None`).
    pub(super) async fn handshake<F: std::future::Future>(&self, step: F) -> Option<F::Output> {
        let mut stop = self.stop.clone();
        let deadline = self.accepted + self.config.auth_timeout;
        tokio::select! {
            result = tokio::time::timeout_at(deadline, step) => result.ok(),
            _ = stop.wait_for(|stopping| *stopping) => None,
        }
    }
}

/// The WebSocket settings of every connection.
fn ws_config(config: &RelayConfig) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        // Frames gather until a flush (or this much): a batch goes out in one write.
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(Some(config.max_frame_bytes))
        .max_frame_size(Some(config.max_frame_bytes))
}

/// Serves one connection until it closes.
pub(super) async fn serve<S>(stream: S, ctx: Ctx)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let config = ws_config(&ctx.config);
    let handshake = tokio_tungstenite::accept_async_with_config(stream, Some(config));
    // Boxed, like `close` below: the handshake's future is three times the size of the
    // connection's loop, and would otherwise stay in every connection's task for life.
    let ws = match Box::pin(ctx.handshake(handshake)).await {
        Some(Ok(ws)) => ws,
        Some(Err(err)) => {
            let cause = clip(&err.to_string(), 200);
            debug!(peer = %ctx.peer, %cause, "WebSocket handshake failed");
            return;
        }
        None => {
            debug!(peer = %ctx.peer, "WebSocket handshake timed out or the relay stops");
            return;
        }
    };
    let mut conn = Conn {
        ws,
        opened: false,
        last_rx: Instant::now(),
        ctx,
    };
    let end = conn.run().await;
    let Conn {
        mut ws,
        opened,
        ctx,
        ..
    } = conn;
    // The hub first (presence changes at once), then the goodbye, which may linger.
    if opened {
        let _ = ctx.hub.send(HubCmd::Closed { conn: ctx.id }).await;
    }
    match end {
        End::Fatal(error) => {
            debug!(conn = ctx.id, peer = %ctx.peer, code = error.code.as_str(), reason = %error.message, "closing");
            Box::pin(close(&mut ws, &error)).await;
        }
        End::Gone(why) => debug!(conn = ctx.id, peer = %ctx.peer, why, "connection ended"),
    }
}

/// Why a connection's loop ended.
enum End {
    /// Tell the client this, then close.
    Fatal(ErrorFrame),
    /// The client left or the socket failed: nothing more to say.
    Gone(&'static str),
}

struct Conn<S> {
    ws: WebSocketStream<S>,
    /// The hub knows this connection (after a valid `hello`).
    opened: bool,
    /// When the client last sent anything (pongs included).
    last_rx: Instant,
    ctx: Ctx,
}

impl<S> Conn<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async fn run(&mut self) -> End {
        let config = self.ctx.config.clone();
        let auth_deadline = tokio::time::sleep_until(self.ctx.accepted + config.auth_timeout);
        tokio::pin!(auth_deadline);
        let mut authenticated = false;
        let start = Instant::now();
        let mut ping = tokio::time::interval_at(start + config.ping_interval, config.ping_interval);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut outbound: Option<OutboxRx<Outbound>> = None;
        // This client's requests forwarded to the hub and not yet answered.
        let mut unanswered = InFlight {
            requests: 0,
            bytes: 0,
            budget: config.max_outbox_bytes / 4,
        };
        let mut stop = self.ctx.stop.clone();
        if *stop.borrow() {
            return fatal(ErrorCode::ShuttingDown, "the relay is stopping");
        }

        loop {
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() {
                        return fatal(ErrorCode::ShuttingDown, "the relay is stopping");
                    }
                }
                message = self.ws.next(), if unanswered.has_room() => {
                    if let Some(end) = self.read(message, &mut outbound, &mut unanswered).await {
                        return end;
                    }
                }
                item = recv(&mut outbound) => {
                    let Some(rx) = outbound.as_mut() else {
                        continue;
                    };
                    let mut batch = Batch {
                        authenticated: &mut authenticated,
                        unanswered: &mut unanswered,
                    };
                    if let Some(end) = self.write_batch(item, rx, &mut batch).await {
                        return end;
                    }
                }
                _ = ping.tick() => {
                    if self.last_rx.elapsed() >= config.idle_timeout {
                        info!(conn = self.ctx.id, peer = %self.ctx.peer, "dead connection: no answer to pings");
                        return fatal(ErrorCode::IdleTimeout, "nothing received for too long");
                    }
                    if let Some(end) = self.write(Message::Ping(Default::default())).await {
                        return end;
                    }
                }
                () = &mut auth_deadline, if !authenticated => {
                    return fatal(ErrorCode::AuthTimeout, "not logged in in time");
                }
            }
        }
    }

    /// Handles what the socket gave (a message, its end, or an error); `Some` ends the
    /// connection.
    async fn read(
        &mut self,
        message: Option<Result<Message, WsError>>,
        outbound: &mut Option<OutboxRx<Outbound>>,
        unanswered: &mut InFlight,
    ) -> Option<End> {
        let message = match message {
            None => return Some(End::Gone("closed by the client")),
            Some(Ok(message)) => message,
            Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                let message =
                    format!("a message of {size} bytes, more than this relay's {max_size}");
                return Some(fatal(ErrorCode::FrameTooLarge, message));
            }
            // A text message that is not UTF-8: the connection still works, so the
            // client hears why it is closed.
            Some(Err(WsError::Utf8(_))) => {
                return Some(fatal(
                    ErrorCode::Malformed,
                    "a text message that is not UTF-8",
                ));
            }
            Some(Err(err)) => {
                let cause = clip(&err.to_string(), 200);
                debug!(conn = self.ctx.id, %cause, "read failed");
                return Some(End::Gone("read failed"));
            }
        };
        self.last_rx = Instant::now();
        match message {
            Message::Text(text) => self.text(&text, outbound, unanswered).await,
            Message::Binary(_) => {
                let message = "binary messages are not part of the protocol";
                Some(fatal(ErrorCode::Malformed, message))
            }
            // Pongs only prove life; tungstenite answers pings and closes itself.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => None,
        }
    }

    /// Writes `first` and everything else queued in `rx`, then flushes once; `Some`
    /// ends the connection.
    async fn write_batch(
        &mut self,
        first: Option<Outbound>,
        rx: &mut OutboxRx<Outbound>,
        batch: &mut Batch<'_>,
    ) -> Option<End> {
        let deadline = Instant::now() + self.ctx.config.idle_timeout;
        let mut item = first;
        let mut fed = false;
        loop {
            let text = match item {
                Some(Outbound::Frame(text)) => Some(text),
                Some(Outbound::Answer(text, cost)) => {
                    batch.unanswered.answered(cost);
                    Some(text)
                }
                Some(Outbound::Done(cost)) => {
                    batch.unanswered.answered(cost);
                    None
                }
                Some(Outbound::LoggedIn) => {
                    *batch.authenticated = true;
                    None
                }
                // What was fed goes out with the error (`close` flushes).
                Some(Outbound::Fatal(error)) => return Some(End::Fatal(*error)),
                None => {
                    let message = "this client did not read its frames fast enough";
                    return Some(fatal(ErrorCode::Overloaded, message));
                }
            };
            if let Some(text) = text {
                match timeout_at(deadline, self.ws.feed(Message::Text(Utf8Bytes::from(text)))).await
                {
                    Ok(Ok(())) => fed = true,
                    Ok(Err(err)) => {
                        debug!(conn = self.ctx.id, cause = %err, "write failed");
                        return Some(End::Gone("write failed"));
                    }
                    Err(_) => return Some(End::Gone("write timed out: the client does not read")),
                }
            }
            item = match rx.try_recv() {
                Ok(next) => Some(next),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Closed) => None,
            };
        }
        if !fed {
            return None;
        }
        match timeout_at(deadline, self.ws.flush()).await {
            Ok(Ok(())) => None,
            Ok(Err(err)) => {
                debug!(conn = self.ctx.id, cause = %err, "write failed");
                Some(End::Gone("write failed"))
            }
            Err(_) => Some(End::Gone("write timed out: the client does not read")),
        }
    }

    /// Handles one text message; `Some` ends the connection.
    async fn text(
        &mut self,
        text: &str,
        outbound: &mut Option<OutboxRx<Outbound>>,
        unanswered: &mut InFlight,
    ) -> Option<End> {
        let frame = match decode_client(text) {
            Ok(frame) => frame,
            Err(err) => {
                // serde's message may quote the input: only a short, escaped part of it.
                let message = format!("not a valid frame: {}", clip(&err.to_string(), 120));
                return Some(fatal(ErrorCode::Malformed, message));
            }
        };
        match (self.opened, frame) {
            (false, ClientFrame::Hello { v, client }) => {
                if v != PROTOCOL_VERSION {
                    let message = format!("this relay speaks version {PROTOCOL_VERSION} only");
                    return Some(fatal(ErrorCode::UnsupportedVersion, message));
                }
                let client = excerpt(client.as_deref().unwrap_or(""));
                debug!(conn = self.ctx.id, peer = %self.ctx.peer, %client, "hello");
                let capacity =
                    self.ctx.config.deliver_window as usize + REQUEST_BUDGET + OUTBOUND_SLACK;
                let (tx, rx) = outbox(capacity, self.ctx.config.max_outbox_bytes);
                let open = HubCmd::Open {
                    conn: self.ctx.id,
                    tx,
                    peer: self.ctx.peer.ip(),
                };
                if self.ctx.hub.send(open).await.is_err() {
                    return Some(fatal(ErrorCode::ShuttingDown, "the relay is stopping"));
                }
                self.opened = true;
                *outbound = Some(rx);
                let welcome = ServerFrame::Welcome {
                    v: PROTOCOL_VERSION,
                    server: concat!("tandem-relay/", env!("CARGO_PKG_VERSION")).to_owned(),
                    verify: self.ctx.config.verify.mode(),
                    limits: self.ctx.config.limits(),
                };
                self.write(Message::Text(Utf8Bytes::from(encode(&welcome))))
                    .await
            }
            (false, frame) => {
                let message = format!("the first frame must be `hello`, not `{}`", frame.kind());
                Some(fatal(ErrorCode::HelloRequired, message))
            }
            (true, ClientFrame::Hello { .. }) => {
                Some(fatal(ErrorCode::BadState, "`hello` was already said"))
            }
            (true, ClientFrame::Ping { n }) => {
                let pong = encode(&ServerFrame::Pong { n });
                self.write(Message::Text(Utf8Bytes::from(pong))).await
            }
            (true, frame) => {
                let cost = cost(text, &frame);
                let request = HubCmd::Frame {
                    conn: self.ctx.id,
                    frame,
                    cost,
                };
                if self.ctx.hub.send(request).await.is_err() {
                    return Some(fatal(ErrorCode::ShuttingDown, "the relay is stopping"));
                }
                unanswered.sent(cost);
                None
            }
        }
    }

    /// Writes one message within the idle timeout; `Some` ends the connection.
    async fn write(&mut self, message: Message) -> Option<End> {
        match tokio::time::timeout(self.ctx.config.idle_timeout, self.ws.send(message)).await {
            Ok(Ok(())) => None,
            Ok(Err(err)) => {
                debug!(conn = self.ctx.id, cause = %err, "write failed");
                Some(End::Gone("write failed"))
            }
            Err(_) => Some(End::Gone("write timed out: the client does not read")),
        }
    }
}

fn fatal(code: ErrorCode, message: impl Into<String>) -> End {
    End::Fatal(ErrorFrame::new(code, message))
}

/// What a batch of hub items changes in the connection's loop.
struct Batch<'a> {
    authenticated: &'a mut bool,
    unanswered: &'a mut InFlight,
}

/// This client's requests at the hub, not yet answered.
struct InFlight {
    requests: usize,
    /// The sum of their [`cost`]s.
    bytes: usize,
    /// Most bytes of cost in flight (more only for a single request).
    budget: usize,
}

impl InFlight {
    /// Whether the connection may read (and forward) another request.
    fn has_room(&self) -> bool {
        self.requests < REQUEST_BUDGET && self.bytes < self.budget
    }

    fn sent(&mut self, cost: u32) {
        self.requests += 1;
        self.bytes += cost as usize;
    }

    fn answered(&mut self, cost: u32) {
        self.requests = self.requests.saturating_sub(1);
        self.bytes = self.bytes.saturating_sub(cost as usize);
    }
}

/// What a request costs while it is unanswered: its own bytes (it waits at the hub in
/// about that much memory) and what its answer will hold in the outbox.
fn cost(text: &str, frame: &ClientFrame) -> u32 {
    let answer = match frame {
        ClientFrame::Subscribe { numbers } => {
            64 + super::SNAPSHOT_ENTRY_BYTES.saturating_mul(numbers.len())
        }
        _ => ANSWER_BYTES,
    };
    u32::try_from(text.len().saturating_add(answer)).unwrap_or(u32::MAX)
}

/// The next item for the connection, or never before `hello`.
async fn recv(outbound: &mut Option<OutboxRx<Outbound>>) -> Option<Outbound> {
    match outbound {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Sends the fatal error and a close frame, then lingers briefly (discarding input) so
/// the client reads them before the socket goes away.
async fn close<S>(ws: &mut WebSocketStream<S>, error: &ErrorFrame)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = encode(&ServerFrame::Error(error.clone()));
    let close = CloseFrame {
        code: CloseCode::from(error.code.close_code()),
        reason: Utf8Bytes::from(error.code.as_str().to_owned()),
    };
    let goodbye = async {
        ws.feed(Message::Text(Utf8Bytes::from(frame))).await?;
        ws.send(Message::Close(Some(close))).await
    };
    if !matches!(tokio::time::timeout(LINGER, goodbye).await, Ok(Ok(()))) {
        return;
    }
    // Hang up our side (FIN), then read and drop whatever the client still sends, raw
    // (after an oversized frame the WebSocket layer cannot parse the rest), until it
    // hangs up too. Closing with unread input would reset the connection and could
    // destroy the error frame in flight.
    let raw = ws.get_mut();
    let drain = async {
        raw.shutdown().await?;
        let mut buf = [0u8; 1024];
        while raw.read(&mut buf).await? > 0 {}
        Ok::<(), std::io::Error>(())
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The task of an idle connection is mostly this future: keep the rare phases
    /// (handshake, closing) boxed so it stays small.
    #[test]
    fn the_connection_future_is_small() {
        let (_stop_tx, stop) = watch::channel(false);
        let (hub, _hub_rx) = mpsc::channel(1);
        let (done, _done_rx) = mpsc::channel(1);
        let ctx = Ctx {
            id: 1,
            accepted: Instant::now(),
            peer: SocketAddr::from(([127, 0, 0, 1], 1)),
            config: Arc::new(RelayConfig::default()),
            hub,
            stop,
            _done: done,
        };
        let (stream, _peer) = tokio::io::duplex(64);
        let task = serve(stream, ctx);
        let size = std::mem::size_of_val(&task);
        // About 2 KiB in a debug build (3.9 KiB with the handshake inline).
        assert!(size <= 2560, "the connection future has {size} bytes");
    }
}
