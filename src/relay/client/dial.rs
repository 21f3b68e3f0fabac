//! client::dial: opening a WebSocket to the relay, `ws://` or `wss://`.
//!
//! Owns the relay URL's parsing, the TCP connection, TLS (rustls with ring, the system's
//! root certificates, read from the usual CA bundle files) and the WebSocket handshake
//! with small buffers. Must not: speak the protocol (that starts with `hello`, in the
//! client), or retry: one call is one attempt, bounded by the caller.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tracing::debug;

/// Bytes read from the socket at a time, and the read buffer's initial size. Frames are
/// small JSON objects; a larger one grows the buffer only while it lasts.
const READ_BUFFER: usize = 4096;

/// Largest WebSocket message accepted from the relay: a `deliver` of the relay's largest
/// text (64 KiB by default), even fully JSON-escaped, fits many times over; a relay
/// cannot make the daemon hold more than this for one frame.
const MAX_INBOUND: usize = 4 * 1024 * 1024;

/// Where distributions keep their bundle of trusted CA certificates (PEM), the first
/// that exists is used (`SSL_CERT_FILE`, when set, comes before them all).
const CA_BUNDLES: &[&str] = &[
    // Debian, Ubuntu, Alpine, postmarketOS, Arch, Gentoo
    "/etc/ssl/certs/ca-certificates.crt",
    // Fedora, RHEL
    "/etc/pki/tls/certs/ca-bundle.crt",
    // openSUSE
    "/etc/ssl/ca-bundle.pem",
    // others (Alpine, the BSDs, macOS)
    "/etc/ssl/cert.pem",
];

/// The client's side of a relay connection.
pub(crate) type Ws = WebSocketStream<Stream>;

/// Why a connection attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("invalid relay URL {url:?}: {reason}")]
    Url { url: String, reason: &'static str },
    #[error("cannot connect to {host}:{port}: {source}")]
    Connect {
        host: String,
        port: u16,
        source: io::Error,
    },
    #[error("{host:?} is not a valid TLS server name")]
    ServerName { host: String },
    #[error("no trusted root certificates: none in SSL_CERT_FILE or {CA_BUNDLES:?}")]
    NoRoots,
    #[error("TLS configuration: {0}")]
    TlsConfig(#[from] rustls::Error),
    #[error("TLS handshake with {host} failed: {source}")]
    Tls { host: String, source: io::Error },
    #[error("WebSocket handshake failed: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
}

/// A parsed relay URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// `wss://`: TLS first.
    pub tls: bool,
    /// The host name or address, without the brackets of an IPv6 address.
    pub host: String,
    pub port: u16,
    /// The URL for the WebSocket handshake: lower-case scheme, no user information.
    pub request: String,
}

impl Endpoint {
    /// Parses a `ws://` or `wss://` URL (the configuration has checked its form; this
    /// checks again, as the client may be started by others).
    pub(crate) fn parse(url: &str) -> Result<Endpoint, DialError> {
        let bad = |reason| DialError::Url {
            url: url.to_owned(),
            reason,
        };
        let lower = url.get(..6).unwrap_or(url).to_ascii_lowercase();
        let (tls, rest) = if lower.starts_with("wss://") {
            (true, &url[6..])
        } else if lower.starts_with("ws://") {
            (false, &url[5..])
        } else {
            return Err(bad("must start with ws:// or wss://"));
        };
        if url.chars().any(char::is_whitespace) {
            return Err(bad("must not contain spaces"));
        }
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        let authority = authority.rsplit('@').next().unwrap_or_default();
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            match v6.split_once(']') {
                Some((host, after)) => match after {
                    "" => (host, None),
                    _ => match after.strip_prefix(':') {
                        Some(port) => (host, Some(port)),
                        None => return Err(bad("has text after the IPv6 address")),
                    },
                },
                None => return Err(bad("has an unclosed '[' in the host")),
            }
        } else {
            match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err(bad("has no host"));
        }
        let port = match port {
            None => {
                if tls {
                    443
                } else {
                    80
                }
            }
            Some(port) => port
                .parse::<u16>()
                .map_err(|_| bad("has a port that is not a number from 0 to 65535"))?,
        };
        let path = match path {
            "" => "/",
            path if path.starts_with('/') => path,
            // "?x" or "#x" right after the authority
            _ => return Err(bad("has a query without a path")),
        };
        let scheme = if tls { "wss" } else { "ws" };
        let request = format!("{scheme}://{authority}{path}");
        Ok(Endpoint {
            tls,
            host: host.to_owned(),
            port,
            request,
        })
    }
}

/// The WebSocket settings of the client: small buffers, each frame written at once.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_INBOUND))
        .max_frame_size(Some(MAX_INBOUND))
}

/// One connection attempt: TCP, TLS for `wss://` (with `tls`, which the caller must
/// give for a `wss://` endpoint), then the WebSocket handshake.
pub(crate) async fn dial(
    endpoint: Endpoint,
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<Ws, DialError> {
    let tcp = TcpStream::connect((endpoint.host.as_str(), endpoint.port))
        .await
        .map_err(|source| DialError::Connect {
            host: endpoint.host.clone(),
            port: endpoint.port,
            source,
        })?;
    let _ = tcp.set_nodelay(true);
    let stream = match (endpoint.tls, tls) {
        (false, _) => Stream::Plain(tcp),
        (true, None) => return Err(DialError::NoRoots),
        (true, Some(config)) => {
            let name =
                rustls::pki_types::ServerName::try_from(endpoint.host.clone()).map_err(|_| {
                    DialError::ServerName {
                        host: endpoint.host.clone(),
                    }
                })?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|source| DialError::Tls {
                    host: endpoint.host.clone(),
                    source,
                })?;
            Stream::Tls(Box::new(tls))
        }
    };
    let (ws, _response) = tokio_tungstenite::client_async_with_config(
        endpoint.request.as_str(),
        stream,
        Some(ws_config()),
    )
    .await?;
    Ok(ws)
}

/// A TLS client configuration trusting the system's root certificates (ring provider,
/// TLS 1.2 and 1.3): `SSL_CERT_FILE` if set, else the first CA bundle found.
pub(crate) fn system_tls() -> Result<Arc<rustls::ClientConfig>, DialError> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(file) = std::env::var_os("SSL_CERT_FILE") {
        candidates.push(PathBuf::from(file));
    }
    candidates.extend(CA_BUNDLES.iter().map(PathBuf::from));
    for path in &candidates {
        if let Some(roots) = read_roots(path) {
            debug!(path = %path.display(), roots = roots.len(), "trusted root certificates");
            return tls_config(roots);
        }
    }
    Err(DialError::NoRoots)
}

/// The certificates of a PEM bundle, if it exists and holds at least one.
fn read_roots(path: &Path) -> Option<rustls::RootCertStore> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;

    let certs = CertificateDer::pem_file_iter(path)
        .ok()?
        .filter_map(Result::ok);
    let mut roots = rustls::RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(certs);
    if ignored > 0 {
        debug!(path = %path.display(), ignored, "unusable certificates in the CA bundle");
    }
    (added > 0).then_some(roots)
}

/// A TLS client configuration trusting exactly the certificates of `bundle` (PEM):
/// for a relay with a private CA, and for tests.
pub fn tls_with_roots(bundle: &Path) -> Result<Arc<rustls::ClientConfig>, DialError> {
    read_roots(bundle).map_or(Err(DialError::NoRoots), tls_config)
}

fn tls_config(roots: rustls::RootCertStore) -> Result<Arc<rustls::ClientConfig>, DialError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A plain or TLS connection (the TLS state is boxed: it is large, and rare).
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(url: &str, expected: Option<(bool, &str, u16, &str)>) {
        let got = Endpoint::parse(url).ok();
        let expected = expected.map(|(tls, host, port, request)| Endpoint {
            tls,
            host: host.to_owned(),
            port,
            request: request.to_owned(),
        });
        assert_eq!(got, expected, "{url}");
    }

    #[test]
    fn urls() {
        check(
            "ws://127.0.0.1:7000",
            Some((false, "127.0.0.1", 7000, "ws://127.0.0.1:7000/")),
        );
        check(
            "wss://relay.example.org",
            Some((true, "relay.example.org", 443, "wss://relay.example.org/")),
        );
        check(
            "WSS://relay.example.org/path?x=1",
            Some((
                true,
                "relay.example.org",
                443,
                "wss://relay.example.org/path?x=1",
            )),
        );
        check(
            "ws://user@host:81/a",
            Some((false, "host", 81, "ws://host:81/a")),
        );
        check(
            "ws://[::1]:7000/",
            Some((false, "::1", 7000, "ws://[::1]:7000/")),
        );
        check("ws://[::1]", Some((false, "::1", 80, "ws://[::1]/")));
        for bad in [
            "",
            "http://relay",
            "ws://",
            "ws://:80",
            "ws://host:http",
            "ws://host:70000",
            "ws://re lay",
            "ws://[::1",
            "ws://[::1]x",
            "ws://host?x",
            "w",
        ] {
            check(bad, None);
        }
    }

    #[test]
    fn roots_from_a_bundle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificates here\n").expect("write");
        assert!(matches!(tls_with_roots(&empty), Err(DialError::NoRoots)));
        assert!(matches!(
            tls_with_roots(&dir.path().join("missing.pem")),
            Err(DialError::NoRoots)
        ));
    }
}
