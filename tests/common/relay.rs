//! The relay: in-process (`tandem::relay::run` on 127.0.0.1:0) or the `tandem-relay`
//! binary, and a WebSocket client speaking protocol v1 to either. Loopback only.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use tandem::relay::protocol::{
    ClientFrame, ConfirmOutcome, ErrorCode, ErrorFrame, PresenceEntry, PresenceState,
    ReceiptOutcome, RevokeOutcome, SendState, ServerFrame, decode_server, encode,
};
use tandem::relay::{RelayConfig, RelayError, Verify};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::proc::{Proc, log_text, program};

/// How long a relay client waits for a frame that must come.
pub const FRAME_WAIT: Duration = Duration::from_secs(5);

/// The relay in this process, on 127.0.0.1, stopped by [`LocalRelay::stop`].
pub struct LocalRelay {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), RelayError>>,
}

impl LocalRelay {
    /// A relay on a free port.
    pub async fn start(config: RelayConfig) -> LocalRelay {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        LocalRelay::serve(listener, config)
    }

    /// A relay on `addr` again (after a stop).
    pub async fn start_at(addr: SocketAddr, config: RelayConfig) -> LocalRelay {
        let listener = TcpListener::bind(addr).await.expect("bind the same port");
        LocalRelay::serve(listener, config)
    }

    fn serve(listener: TcpListener, config: RelayConfig) -> LocalRelay {
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(tandem::relay::run(listener, config, async {
            let _ = stopped.await;
        }));
        LocalRelay {
            addr,
            stop: Some(stop),
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Stops it; it must stop cleanly and in time.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(FRAME_WAIT, &mut self.task)
            .await
            .expect("the relay stops in time")
            .expect("the relay task")
            .expect("the relay stops cleanly");
    }
}

/// The relay without verification (`--verify none`).
pub fn open_relay() -> RelayConfig {
    RelayConfig {
        verify: Verify::None,
        ..RelayConfig::default()
    }
}

/// The default relay without the senders' quotas: for tests of throughput and
/// backlogs, where one sender stands for many.
pub fn no_quotas() -> RelayConfig {
    RelayConfig {
        sender_messages_per_min: 0,
        sender_bytes_per_min: 0,
        ..RelayConfig::default()
    }
}

/// Writes an executable shell script `dir/name`; its path.
pub fn script(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).expect("write script");
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    path.display().to_string()
}

/// Makes a test CA and a certificate for 127.0.0.1 signed by it, with openssl.
pub fn make_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let sh = |script: &str| {
        let status = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(script)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("run openssl");
        assert!(status.success(), "{script}");
    };
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write ext");
    sh(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout ca.key -out ca.pem -days 2 -subj /CN=tandem-test-ca",
    );
    sh(
        "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout key.pem -out leaf.csr -subj /CN=localhost",
    );
    sh(
        "openssl x509 -req -in leaf.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
        -out cert.pem -days 2 -extfile leaf.ext",
    );
    (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    )
}

/// A TLS connector that trusts only the test CA.
pub fn connector(ca: &Path) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;

    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(cert.expect("ca cert")).expect("add root");
    }
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
}

/// Where a relay listens: what the test clients connect to.
pub trait Endpoint {
    fn socket_addr(&self) -> SocketAddr;

    /// A connected client that said nothing yet.
    async fn raw(&self) -> WsClient {
        let addr = self.socket_addr();
        let stream = TcpStream::connect(addr).await.expect("connect");
        WsClient::handshake(stream, &format!("ws://{addr}/")).await
    }

    /// A connected client that said `hello`.
    async fn client(&self) -> WsClient {
        let mut client = self.raw().await;
        client.hello().await;
        client
    }

    /// A client logged in as `number` (registered first, `--verify none`).
    async fn account(&self, number: &str) -> (WsClient, String) {
        let mut client = self.client().await;
        let token = client.register_none(number).await;
        client.login(number, &token).await;
        (client, token)
    }

    /// A client logged in as `number` with an existing token; and the `queued` count.
    async fn login(&self, number: &str, token: &str) -> (WsClient, u32) {
        let mut client = self.client().await;
        let queued = client.login(number, token).await;
        (client, queued)
    }
}

impl Endpoint for LocalRelay {
    fn socket_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Endpoint for Relay {
    fn socket_addr(&self) -> SocketAddr {
        self.addr.parse().expect("the relay's address")
    }
}

/// A running `tandem-relay` on 127.0.0.1 with its own database in `dir` and its log
/// (stderr) in `dir/relay.log`, killed on drop.
pub struct Relay {
    proc: Option<Proc>,
    pub addr: String,
    args: Vec<String>,
    dir: PathBuf,
}

impl Relay {
    /// Starts the relay binary with `--verify none` (development mode).
    pub fn start(dir: &Path) -> Relay {
        Self::with_args(dir, &["--verify", "none"])
    }

    /// Starts the relay binary with these extra arguments.
    pub fn with_args<S: AsRef<std::ffi::OsStr>>(dir: &Path, args: &[S]) -> Relay {
        let mut relay = Relay {
            proc: None,
            addr: "127.0.0.1:0".into(),
            args: args
                .iter()
                .map(|a| a.as_ref().to_string_lossy().into_owned())
                .collect(),
            dir: dir.to_owned(),
        };
        relay.spawn();
        relay
    }

    fn spawn(&mut self) {
        let mut cmd = program("tandem-relay");
        cmd.arg("--listen")
            .arg(&self.addr)
            .arg("--db")
            .arg(self.dir.join("relay.db"))
            .args(&self.args);
        let (proc, line) = Proc::start("tandem-relay", cmd, &self.dir.join("relay.log"));
        self.addr = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        self.proc = Some(proc);
    }

    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.proc.as_ref().expect("the relay runs").pid()
    }

    pub fn kill(&mut self) {
        self.proc = None;
    }

    /// Starts it again on the same address and database.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        log_text(&self.dir.join("relay.log"))
    }
}

/// Clients keep small buffers too: the memory test opens a thousand of them.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

pub struct WsClient<S = TcpStream> {
    pub ws: WebSocketStream<S>,
}

impl<S> WsClient<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    pub async fn handshake(stream: S, url: &str) -> WsClient<S> {
        let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config()))
            .await
            .expect("WebSocket handshake");
        WsClient { ws }
    }

    pub async fn put(&mut self, frame: &ClientFrame) {
        self.ws
            .send(Message::Text(Utf8Bytes::from(encode(frame))))
            .await
            .expect("send");
    }

    pub async fn put_raw(&mut self, message: Message) {
        self.ws.send(message).await.expect("send");
    }

    /// The next frame (skipping WebSocket pings and pongs).
    pub async fn recv(&mut self) -> ServerFrame {
        decode_server(&self.recv_text().await).expect("a valid frame")
    }

    /// The text of the next frame, undecoded (skipping WebSocket pings and pongs).
    pub async fn recv_text(&mut self) -> String {
        loop {
            let message = tokio::time::timeout(FRAME_WAIT, self.ws.next())
                .await
                .expect("a frame in time")
                .expect("the connection is open")
                .expect("a readable frame");
            match message {
                Message::Text(text) => return text.as_str().to_owned(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected message {other:?}"),
            }
        }
    }

    /// Asserts that no frame arrives within `wait`.
    pub async fn quiet(&mut self, wait: Duration) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return,
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
                Ok(other) => panic!("expected silence, got {other:?}"),
            }
        }
    }

    pub async fn error(&mut self, code: ErrorCode) -> ErrorFrame {
        match self.recv().await {
            ServerFrame::Error(error) if error.code == code => error,
            other => panic!("expected error {code:?}, got {other:?}"),
        }
    }

    /// Expects a fatal error with `code`, then a close frame with its close code, then
    /// the end of the connection.
    pub async fn fatal(&mut self, code: ErrorCode) -> ErrorFrame {
        let error = self.error(code).await;
        assert!(error.fatal, "{error:?}");
        let mut close_code = None;
        loop {
            match tokio::time::timeout(FRAME_WAIT, self.ws.next()).await {
                Err(_) => panic!("the relay did not close the connection"),
                Ok(None) => break,
                Ok(Some(Ok(Message::Close(Some(frame))))) => {
                    close_code = Some(u16::from(frame.code));
                }
                Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => {}
                Ok(Some(Ok(other))) => panic!("frame after a fatal error: {other:?}"),
                Ok(Some(Err(_))) => break,
            }
        }
        assert_eq!(
            close_code,
            Some(code.close_code()),
            "close code for {code:?}"
        );
        error
    }

    pub async fn hello(&mut self) {
        self.put(&ClientFrame::Hello {
            v: 1,
            client: Some("relay-test".to_owned()),
        })
        .await;
        match self.recv().await {
            ServerFrame::Welcome { v: 1, .. } => {}
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    /// `register` on a `--verify none` relay; returns the token.
    pub async fn register_none(&mut self, number: &str) -> String {
        self.register(number).await;
        self.registered(number).await
    }

    /// Expects `registered` for `number`; returns the token.
    pub async fn registered(&mut self, number: &str) -> String {
        match self.recv().await {
            ServerFrame::Registered { number: n, token } if n == number => token,
            other => panic!("expected registered, got {other:?}"),
        }
    }

    /// Logs in; returns the `queued` count.
    pub async fn login(&mut self, number: &str, token: &str) -> u32 {
        self.put(&ClientFrame::Login {
            number: number.to_owned(),
            token: token.to_owned(),
        })
        .await;
        match self.recv().await {
            ServerFrame::LoggedIn { number: n, queued } if n == number => queued,
            other => panic!("expected logged-in, got {other:?}"),
        }
    }

    pub async fn send_text(&mut self, id: &str, to: &str, text: &str) {
        self.put(&ClientFrame::Send {
            id: id.to_owned(),
            to: to.to_owned(),
            text: text.to_owned(),
            ts: 1_700_000_000_000,
        })
        .await;
    }

    /// Sends and expects an `ack`; returns its state and duplicate flag.
    pub async fn send_ok(&mut self, id: &str, to: &str, text: &str) -> (SendState, bool) {
        self.send_text(id, to, text).await;
        match self.recv().await {
            ServerFrame::Ack {
                id: acked,
                to: t,
                state,
                duplicate,
            } if acked == id && t == to => (state, duplicate),
            other => panic!("expected ack of {id}, got {other:?}"),
        }
    }

    /// Sends and expects an `ack` with this state and duplicate flag.
    pub async fn send_as(&mut self, id: &str, to: &str, text: &str, expected: (SendState, bool)) {
        assert_eq!(
            self.send_ok(id, to, text).await,
            expected,
            "the ack of {id}"
        );
    }

    /// Expects a `deliver`; returns (from, id, text).
    pub async fn delivered(&mut self) -> (String, String, String) {
        match self.recv().await {
            ServerFrame::Deliver { from, id, text, .. } => (from, id, text),
            other => panic!("expected deliver, got {other:?}"),
        }
    }

    pub async fn ack(&mut self, from: &str, id: &str) {
        self.put(&ClientFrame::Ack {
            from: from.to_owned(),
            id: id.to_owned(),
        })
        .await;
    }

    pub async fn confirmed(&mut self, from: &str, id: &str) -> ConfirmOutcome {
        match self.recv().await {
            ServerFrame::Confirm {
                from: f,
                id: i,
                outcome,
            } if f == from && i == id => outcome,
            other => panic!("expected confirm of {id}, got {other:?}"),
        }
    }

    pub async fn receipt(&mut self) -> (String, ReceiptOutcome) {
        match self.recv().await {
            ServerFrame::Receipt { id, outcome, .. } => (id, outcome),
            other => panic!("expected receipt, got {other:?}"),
        }
    }

    pub async fn revoke(&mut self, id: &str) -> RevokeOutcome {
        self.put(&ClientFrame::Revoke { id: id.to_owned() }).await;
        match self.recv().await {
            ServerFrame::RevokeResult { id: i, outcome } if i == id => outcome,
            other => panic!("expected revoke-result of {id}, got {other:?}"),
        }
    }

    pub async fn subscribe(&mut self, numbers: &[&str]) -> Vec<PresenceEntry> {
        let numbers = numbers.iter().map(|n| (*n).to_owned()).collect();
        self.put(&ClientFrame::Subscribe { numbers }).await;
        match self.recv().await {
            ServerFrame::Snapshot { entries } => entries,
            other => panic!("expected snapshot, got {other:?}"),
        }
    }

    pub async fn presence(&mut self) -> (String, PresenceState) {
        match self.recv().await {
            ServerFrame::Presence(entry) => (entry.number, entry.state),
            other => panic!("expected presence, got {other:?}"),
        }
    }

    /// Sends `register` for `number`.
    pub async fn register(&mut self, number: &str) {
        let number = number.to_owned();
        self.put(&ClientFrame::Register { number }).await;
    }

    /// Sends `verify` of `code` for `number`.
    pub async fn verify(&mut self, number: &str, code: &str) {
        let (number, code) = (number.to_owned(), code.to_owned());
        self.put(&ClientFrame::Verify { number, code }).await;
    }

    /// Sends `login` without waiting for the answer.
    pub async fn put_login(&mut self, number: &str, token: &str) {
        let (number, token) = (number.to_owned(), token.to_owned());
        self.put(&ClientFrame::Login { number, token }).await;
    }

    /// Sends `typing` to `to`.
    pub async fn typing(&mut self, to: &str, active: bool) {
        let to = to.to_owned();
        self.put(&ClientFrame::Typing { to, active }).await;
    }

    /// Expects a presence push: `number` is now `state`.
    pub async fn sees(&mut self, number: &str, state: PresenceState) {
        assert_eq!(self.presence().await, (number.to_owned(), state));
    }

    /// Acks every delivery until `count` confirms came back; the deliveries, in order, as
    /// (from, id).
    pub async fn ack_until_confirmed(&mut self, count: usize) -> Vec<(String, String)> {
        let (mut delivered, mut confirmed) = (Vec::new(), 0);
        while confirmed < count {
            match self.recv().await {
                ServerFrame::Deliver { from, id, .. } => {
                    self.ack(&from, &id).await;
                    delivered.push((from, id));
                }
                ServerFrame::Confirm { .. } => confirmed += 1,
                other => panic!("expected deliver or confirm, got {other:?}"),
            }
        }
        delivered
    }

    /// Expects `count` receipts, each of another message, each `delivered`.
    pub async fn receipts_delivered(&mut self, count: usize) {
        let mut seen = std::collections::HashSet::new();
        while seen.len() < count {
            let (id, outcome) = self.receipt().await;
            assert_eq!(outcome, ReceiptOutcome::Delivered);
            assert!(seen.insert(id), "each receipt once");
        }
    }

    /// A full round trip through the hub: everything the hub queued for this client
    /// before has arrived once this returns.
    pub async fn sync(&mut self) {
        self.put(&ClientFrame::Revoke {
            id: "sync".to_owned(),
        })
        .await;
        let error = self.error(ErrorCode::UnknownMessage).await;
        assert_eq!(error.id.as_deref(), Some("sync"));
    }
}
