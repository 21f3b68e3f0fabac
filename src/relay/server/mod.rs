//! relay::server: the relay server, `run(listener, config, shutdown)`.
//!
//! Owns the accept loop, the optional TLS layer, and the shutdown sequence; the work is
//! split between
//! - [`conn`]: one task per connection: the WebSocket, the `hello` handshake, keepalive
//!   and dead-connection detection, frame size and syntax; it forwards every decoded
//!   request to the hub and writes whatever the hub sends back;
//! - [`hub`]: one thread that owns all shared state: who is logged in where,
//!   subscriptions, typing, delivery windows, and the storage. Being the single owner is
//!   what makes `revoke` and the recipient's `ack` atomic, without a lock. Its core
//!   decides over plain data; its shell runs the thread, group commit and the outboxes;
//! - [`storage`]: the `Storage` trait, what the hub keeps durably, and [`db`], the
//!   SQLite storage (the relay's only SQL);
//! - [`sms`]: runs the operator's SMS command for registration codes;
//! - [`quota`]: the token buckets of the rate limits (codes, senders);
//! - [`secret`]: tokens, codes and their hashes.
//!
//! Must not: share state between connections other than through the hub's channel, or
//! let one connection's failure (a malformed frame, a slow reader) touch another.

mod conn;
mod db;
mod hub;
mod outbox;
mod quota;
mod secret;
mod sms;
mod storage;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

pub use db::DbError;

use crate::relay::protocol::{Limits, VerifyMode};

/// Bytes one entry of a `snapshot` takes at most (a 16-byte number and the JSON
/// around it): how the relay estimates the answer to a `subscribe`.
pub(crate) const SNAPSHOT_ENTRY_BYTES: usize = 80;

/// Characters of a client-supplied string that a log line or an error frame shows.
const EXCERPT_CHARS: usize = 32;

/// A client-supplied string as a log line or an error frame may show it: quoted, at
/// most [`EXCERPT_CHARS`] characters, escaped as [`clip`] does, and its whole length
/// when it is cut. Whatever a client sends, it cannot start a log line, reach a
/// terminal as an escape sequence, or make a line long.
pub(crate) fn excerpt(text: &str) -> String {
    let cut = clip(text, EXCERPT_CHARS);
    if text.chars().nth(EXCERPT_CHARS).is_some() {
        format!("\"{cut}\" ({} bytes)", text.len())
    } else {
        format!("\"{cut}\"")
    }
}

/// `text` with at most `max` characters kept (then `...`), and every character outside
/// printable ASCII escaped (`\n`, `\u{1b}`, `\u{e9}`), as is `\`.
pub(crate) fn clip(text: &str, max: usize) -> String {
    use std::fmt::Write as _;

    let mut out = String::with_capacity(text.len().min(max) + 8);
    let mut chars = text.chars();
    for c in chars.by_ref().take(max) {
        match c {
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            _ => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
        }
    }
    if chars.next().is_some() {
        out.push_str("...");
    }
    out
}

/// How the relay checks that a number belongs to the one who registers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verify {
    /// Development only: tokens without proof. A number that holds a token still never
    /// moves to another device.
    None,
    /// Run this shell command to send the code SMS: `/bin/sh -c 'CMD "$@"'` with the
    /// number and the code appended as two arguments, and `TANDEM_NUMBER`,
    /// `TANDEM_CODE`, `TANDEM_TEXT` in its environment. Exit status 0 means sent.
    SmsCommand(String),
}

impl Verify {
    pub(crate) fn mode(&self) -> VerifyMode {
        match self {
            Verify::None => VerifyMode::None,
            Verify::SmsCommand(_) => VerifyMode::SmsCommand,
        }
    }
}

/// Everything the relay can be told. `Default` is for tests and examples: it verifies
/// nothing and keeps its database in memory; the binary always sets both.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The SQLite file; `None` keeps everything in memory (lost at exit).
    pub db_path: Option<PathBuf>,
    /// How registration proves a number.
    pub verify: Verify,
    /// Serve `wss://` with this TLS configuration; `None` serves plain `ws://`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Largest WebSocket message read from a client, in bytes: bounds the memory one
    /// client can make the relay hold.
    pub max_frame_bytes: usize,
    /// Largest `send.text`, in bytes: the issue's "64 KiB of text".
    pub max_text_bytes: usize,
    /// Most numbers in one `subscribe`: bounds the fan-out one client can cause.
    pub max_subscriptions: usize,
    /// Most bytes of frames queued for one connection: a client that does not read is
    /// dropped (`overloaded`) when its queue would exceed it. Deliveries are paced to a
    /// quarter of it, and a connection reads requests ahead of their answers for at most
    /// another quarter, so a client that reads is never dropped.
    pub max_outbox_bytes: usize,
    /// Most undelivered messages kept for one recipient (store-and-forward bound).
    pub queue_per_recipient: u32,
    /// How long an undelivered message waits before it expires.
    pub max_age: Duration,
    /// How long `(sender, id)` is remembered after a message settles (dedupe memory and
    /// `revoke` answers). Longer than any client's resend horizon.
    pub dedupe_retention: Duration,
    /// How long a registration code is valid.
    pub code_ttl: Duration,
    /// Wrong tries one code allows.
    pub code_attempts: u32,
    /// Minimum time between two code SMS for one number (rate limit, SMS cost).
    pub code_resend: Duration,
    /// How long the SMS command may run before it counts as failed and is killed.
    pub sms_timeout: Duration,
    /// Most SMS commands running at once (each is a process, and may cost money).
    pub sms_concurrency: usize,
    /// Code requests that may wait for a free SMS command beyond those running; more
    /// are refused (`rate-limited`).
    pub sms_queue: usize,
    /// Most codes sent per hour for requests from one address (an IPv4 address or an
    /// IPv6 /64), whatever the numbers; 0: no limit.
    pub codes_per_address_per_hour: u32,
    /// Most codes sent per hour in all: the bound of what codes can cost; 0: no limit.
    pub codes_per_hour: u32,
    /// Most new messages one sender may have accepted per minute (a minute's worth at
    /// once at most), so that one sender cannot take the relay from the others;
    /// 0: no limit.
    pub sender_messages_per_min: u32,
    /// Most bytes of text one sender may have accepted per minute; 0: no limit.
    pub sender_bytes_per_min: u64,
    /// A connection must log in within this time after it opens.
    pub auth_timeout: Duration,
    /// Silence after which the relay pings a client.
    pub ping_interval: Duration,
    /// Silence from a client after which its connection counts as dead.
    pub idle_timeout: Duration,
    /// A `typing` not renewed within this time ends.
    pub typing_ttl: Duration,
    /// Messages delivered to one recipient and not yet acked, at most: the flow control
    /// that keeps a backlog from flooding a connection's memory.
    pub deliver_window: u32,
    /// How often expired messages, stale codes and old dedupe memory are swept.
    pub sweep_interval: Duration,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            db_path: None,
            verify: Verify::None,
            tls: None,
            max_frame_bytes: 256 * 1024,
            max_text_bytes: 64 * 1024,
            max_subscriptions: 1000,
            max_outbox_bytes: 1536 * 1024,
            queue_per_recipient: 1000,
            max_age: Duration::from_secs(7 * 24 * 3600),
            dedupe_retention: Duration::from_secs(30 * 24 * 3600),
            code_ttl: Duration::from_secs(10 * 60),
            code_attempts: 5,
            code_resend: Duration::from_secs(60),
            sms_timeout: Duration::from_secs(30),
            sms_concurrency: 4,
            sms_queue: 32,
            codes_per_address_per_hour: 10,
            codes_per_hour: 200,
            sender_messages_per_min: 120,
            sender_bytes_per_min: 1024 * 1024,
            auth_timeout: Duration::from_secs(30),
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            typing_ttl: Duration::from_secs(5),
            deliver_window: 32,
            sweep_interval: Duration::from_secs(60),
        }
    }
}

impl RelayConfig {
    /// The limits and timings as `welcome` announces them.
    pub fn limits(&self) -> Limits {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Limits {
            max_frame_bytes: self.max_frame_bytes as u64,
            max_text_bytes: self.max_text_bytes as u64,
            max_subscriptions: self.max_subscriptions as u64,
            queue_per_recipient: u64::from(self.queue_per_recipient),
            max_age_ms: ms(self.max_age),
            ping_interval_ms: ms(self.ping_interval),
            idle_timeout_ms: ms(self.idle_timeout),
            typing_ttl_ms: ms(self.typing_ttl),
            auth_timeout_ms: ms(self.auth_timeout),
        }
    }

    fn check(&self) -> Result<(), RelayError> {
        let bad = |reason: &str| Err(RelayError::Config(reason.to_owned()));
        if self.max_text_bytes == 0 || self.max_frame_bytes < self.max_text_bytes + 512 {
            return bad("max_frame_bytes must exceed max_text_bytes by at least 512");
        }
        // The largest single frame a connection may have to queue: a delivery, or the
        // snapshot of a full `subscribe`.
        let largest = self
            .max_frame_bytes
            .max(SNAPSHOT_ENTRY_BYTES.saturating_mul(self.max_subscriptions));
        if self.max_outbox_bytes < (5 * largest).max(1024 * 1024) {
            return bad(
                "max_outbox_bytes must be at least 1 MiB and 5 times the largest frame \
                 (max_frame_bytes, or 80 bytes per subscription)",
            );
        }
        if self.deliver_window == 0 || self.queue_per_recipient == 0 {
            return bad("deliver_window and queue_per_recipient must be at least 1");
        }
        if self.ping_interval.is_zero() || self.idle_timeout <= self.ping_interval {
            return bad("idle_timeout must be longer than ping_interval");
        }
        if self.sms_concurrency == 0 {
            return bad("sms_concurrency must be at least 1");
        }
        if self.sender_bytes_per_min != 0 && self.sender_bytes_per_min < self.max_text_bytes as u64
        {
            return bad("sender_bytes_per_min must be 0 (no limit) or at least max_text_bytes");
        }
        if self.sweep_interval.is_zero() || self.code_attempts == 0 {
            return bad("sweep_interval and code_attempts must be non-zero");
        }
        if let Verify::SmsCommand(cmd) = &self.verify
            && cmd.trim().is_empty()
        {
            return bad("the SMS command is empty");
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("invalid relay configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("cannot read {path:?}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no {what} in {path:?}")]
    NoPem { what: &'static str, path: PathBuf },
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot start the relay's hub thread: {0}")]
    Thread(std::io::Error),
}

/// Builds a TLS server configuration (ring provider, TLS 1.2 and 1.3) from a PEM
/// certificate chain and a PEM private key.
pub fn load_tls(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, RelayError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| RelayError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read(cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .filter_map(Result::ok)
        .collect();
    if chain.is_empty() {
        return Err(RelayError::NoPem {
            what: "certificate",
            path: cert.to_owned(),
        });
    }
    let key_pem = read(key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| RelayError::NoPem {
        what: "private key",
        path: key.to_owned(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// Runs the relay on `listener` until `shutdown` completes, then tells every client
/// (`shutting-down`), waits for the connections to end and closes the database.
///
/// Fails only at start (configuration, database, thread); errors of single connections
/// are logged and end only that connection.
pub async fn run(
    listener: TcpListener,
    config: RelayConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RelayError> {
    config.check()?;
    let config = Arc::new(config);
    let hub = hub::Hub::start(config.clone())?;
    let local = listener.local_addr().ok();
    info!(
        addr = ?local,
        tls = config.tls.is_some(),
        verify = ?config.verify.mode(),
        "relay listening"
    );
    let tls = config.tls.clone().map(tokio_rustls::TlsAcceptor::from);

    // Every connection task holds a clone of `done_tx`; when they are all gone,
    // `done_rx.recv()` returns None (mini-redis's shutdown_complete).
    let (done_tx, mut done_rx) = mpsc::channel::<()>(1);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut next_id: u64 = 0;

    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(pair) => pair,
            Err(err) => {
                // EMFILE and the like: wait a little instead of spinning.
                warn!(cause = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        next_id += 1;
        let ctx = conn::Ctx {
            id: next_id,
            accepted: tokio::time::Instant::now(),
            peer,
            config: config.clone(),
            hub: hub.sender(),
            stop: stop_rx.clone(),
            _done: done_tx.clone(),
        };
        let _ = stream.set_nodelay(true);
        // Two kinds of task, so a plain connection's future is not as large as a TLS
        // handshake's.
        match &tls {
            None => tokio::spawn(conn::serve(stream, ctx)),
            Some(acceptor) => tokio::spawn(accept_tls(stream, peer, acceptor.clone(), ctx)),
        };
    }

    info!("relay stopping");
    let _ = stop_tx.send(true);
    drop(done_tx);
    let _ = done_rx.recv().await;
    hub.stop().await;
    info!("relay stopped");
    Ok(())
}

/// Finishes the TLS handshake and hands the stream to its connection task.
async fn accept_tls(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    ctx: conn::Ctx,
) {
    // Boxed: the TLS handshake's future would otherwise stay in the task for life.
    match Box::pin(ctx.handshake(acceptor.accept(stream))).await {
        Some(Ok(stream)) => conn::serve(stream, ctx).await,
        Some(Err(err)) => {
            let cause = clip(&err.to_string(), 200);
            debug!(%peer, %cause, "TLS handshake failed");
        }
        None => debug!(%peer, "TLS handshake timed out or the relay stops"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_are_short_escaped_and_one_line() {
        assert_eq!(excerpt("+15550001111"), r#""+15550001111""#);
        assert_eq!(
            excerpt("+1\n2024 FORGED\u{1b}[31m\\é\t"),
            r#""+1\n2024 FORGED\u{1b}[31m\\\u{e9}\t""#
        );
        let long = format!("+1\n{}", "9".repeat(200_000));
        let shown = excerpt(&long);
        assert_eq!(
            shown,
            format!("\"+1\\n{}...\" (200003 bytes)", "9".repeat(29))
        );
        for text in ["\u{202e}evil", "a\rb", "\u{0}", &"é".repeat(1000)] {
            let shown = excerpt(text);
            assert!(shown.len() < 32 * 10 + 32, "{shown}");
            assert!(shown.bytes().all(|b| (b' '..=b'~').contains(&b)), "{shown}");
        }
        assert_eq!(clip("abc", 2), "ab...");
        assert_eq!(clip("ab", 2), "ab");
    }
}
