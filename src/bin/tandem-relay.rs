//! `tandem-relay`: the IP relay server. Parses arguments, sets up logging, calls
//! `tandem::relay::run` until SIGINT/SIGTERM. Prints `listening on ADDR` on stdout once
//! it accepts connections, and nothing else; logs go to stderr.
//!
//! ```sh
//! # development, on loopback, no number verification:
//! tandem-relay --listen 127.0.0.1:7000 --db /tmp/relay.db --verify none
//! # production: TLS, codes sent by an operator script (number and code appended):
//! tandem-relay --listen 0.0.0.0:443 --db /var/lib/tandem-relay/relay.db \
//!   --sms-command /usr/local/bin/send-code --tls-cert cert.pem --tls-key key.pem
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{CommandFactory as _, FromArgMatches as _, Parser, ValueEnum};
use tandem::relay::server::load_tls;
use tandem::relay::{RelayConfig, Verify};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

/// The Tandem IP relay: accounts by phone number, presence, store-and-forward.
///
/// Protocol: docs/relay-protocol.md. Plain ws:// is served only on a loopback address
/// unless --insecure; anything else needs --tls-cert and --tls-key.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on, HOST:PORT (port 0: any free port, printed at start).
    #[arg(long, value_name = "HOST:PORT")]
    listen: String,
    /// The SQLite database (created if missing).
    /// Default: $STATE_DIRECTORY/relay.db under systemd, else ./tandem-relay.db.
    #[arg(long, value_name = "PATH")]
    db: Option<PathBuf>,
    /// How registration proves a number: by a code sent with --sms-command, or not at
    /// all (development only).
    #[arg(long, value_enum, default_value_t = VerifyArg::SmsCommand)]
    verify: VerifyArg,
    /// Shell command that sends the code SMS; run as `sh -c 'CMD "$@"' - NUMBER CODE`,
    /// with TANDEM_NUMBER, TANDEM_CODE and TANDEM_TEXT in its environment.
    #[arg(long, value_name = "CMD")]
    sms_command: Option<String>,
    /// PEM certificate chain: serve wss:// (with --tls-key).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Allow plain ws:// on a non-loopback address (behind a TLS-terminating proxy).
    #[arg(long)]
    insecure: bool,
    /// Largest WebSocket message read from a client, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 256 * 1024)]
    max_frame_bytes: usize,
    /// Largest message text, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 64 * 1024)]
    max_text_bytes: usize,
    /// Most undelivered messages kept for one recipient.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    queue_per_recipient: u32,
    /// How long an undelivered message waits for its recipient, in hours.
    #[arg(long, value_name = "HOURS", default_value_t = 7 * 24)]
    max_age_hours: u64,
    /// Most numbers one client may subscribe to.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    max_subscriptions: usize,
    /// Most bytes of frames queued for one connection; a client that does not read is
    /// dropped past it. At least 1 MiB and 5 times --max-frame-bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 1536 * 1024)]
    max_outbox_bytes: usize,
    /// How long a registration code is valid, in seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 600)]
    code_ttl_s: u64,
    /// Wrong tries one code allows.
    #[arg(long, value_name = "N", default_value_t = 5)]
    code_attempts: u32,
    /// Minimum seconds between two code SMS to one number.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    code_resend_s: u64,
    /// Most SMS commands running at once.
    #[arg(long, value_name = "N", default_value_t = 4)]
    sms_concurrency: usize,
    /// Code requests that may wait for a free SMS command; more are refused
    /// (rate-limited) until one is free.
    #[arg(long, value_name = "N", default_value_t = 32)]
    sms_queue: usize,
    /// Most codes per hour for requests from one address (IPv4 address or IPv6 /64),
    /// whatever the numbers; 0: no limit.
    #[arg(long, value_name = "N", default_value_t = 10)]
    codes_per_address_per_hour: u32,
    /// Most codes per hour in all (what codes may cost); 0: no limit.
    #[arg(long, value_name = "N", default_value_t = 200)]
    codes_per_hour: u32,
    /// Most new messages one sender may have accepted per minute (a minute's worth at
    /// once at most); past it, its sends are refused rate-limited for a while; 0: no
    /// limit.
    #[arg(long, value_name = "N", default_value_t = 120)]
    sender_messages_per_min: u32,
    /// Most bytes of text one sender may have accepted per minute; 0: no limit, else at
    /// least --max-text-bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 1024 * 1024)]
    sender_bytes_per_min: u64,
    /// Seconds between keepalive pings.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    ping_interval_s: u64,
    /// Seconds of silence after which a client counts as dead.
    #[arg(long, value_name = "SECONDS", default_value_t = 75)]
    idle_timeout_s: u64,
    /// More logging (-v debug, -vv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Print the man page tandem-relay(1) (roff) and exit; data/install.sh installs it.
    #[arg(long, hide = true, exclusive = true)]
    man: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum VerifyArg {
    None,
    SmsCommand,
}

impl Args {
    /// How registration proves numbers; refuses contradictory options, warns loudly on none.
    fn verify(&self) -> anyhow::Result<Verify> {
        Ok(match (self.verify, &self.sms_command) {
            (VerifyArg::SmsCommand, Some(command)) => Verify::SmsCommand(command.clone()),
            (VerifyArg::SmsCommand, None) => {
                bail!(
                    "give --sms-command CMD to send registration codes, or --verify none for development"
                )
            }
            (VerifyArg::None, Some(_)) => bail!("--sms-command makes no sense with --verify none"),
            (VerifyArg::None, None) => {
                eprintln!(
                    "WARNING: --verify none: tandem-relay hands out device tokens WITHOUT proving \
                     that a number belongs to the caller. Anyone can claim any unregistered \
                     number. Use this for development only, never on a reachable network."
                );
                Verify::None
            }
        })
    }

    /// The database: --db, else `$STATE_DIRECTORY/relay.db` under systemd, else ./.
    fn db_path(&self) -> PathBuf {
        self.db
            .clone()
            .unwrap_or_else(|| match std::env::var_os("STATE_DIRECTORY") {
                Some(dir) => PathBuf::from(dir).join("relay.db"),
                None => PathBuf::from("tandem-relay.db"),
            })
    }

    fn relay_config(&self, verify: Verify, tls: Option<Arc<rustls::ServerConfig>>) -> RelayConfig {
        RelayConfig {
            db_path: Some(self.db_path()),
            verify,
            tls,
            max_frame_bytes: self.max_frame_bytes,
            max_text_bytes: self.max_text_bytes,
            queue_per_recipient: self.queue_per_recipient,
            max_age: Duration::from_secs(self.max_age_hours * 3600),
            max_subscriptions: self.max_subscriptions,
            max_outbox_bytes: self.max_outbox_bytes,
            code_ttl: Duration::from_secs(self.code_ttl_s),
            code_attempts: self.code_attempts,
            code_resend: Duration::from_secs(self.code_resend_s),
            sms_concurrency: self.sms_concurrency,
            sms_queue: self.sms_queue,
            codes_per_address_per_hour: self.codes_per_address_per_hour,
            codes_per_hour: self.codes_per_hour,
            sender_messages_per_min: self.sender_messages_per_min,
            sender_bytes_per_min: self.sender_bytes_per_min,
            ping_interval: Duration::from_secs(self.ping_interval_s),
            idle_timeout: Duration::from_secs(self.idle_timeout_s),
            ..RelayConfig::default()
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    // Parsed in two steps so that `--man` needs no --listen (derive would ask for it).
    let matches = Args::command().get_matches();
    if matches.get_flag("man") {
        let mut out = std::io::stdout().lock();
        return tandem::manpage::write(Args::command(), &tandem::manpage::RELAY, &mut out)
            .context("cannot write the man page");
    }
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    tandem::logging::init(tandem::logging::verbosity(args.verbose));
    let verify = args.verify()?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(load_tls(cert, key).context("cannot set up TLS")?),
        _ => None,
    };
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr().context("no local address")?;
    if tls.is_none() && !addr.ip().is_loopback() && !args.insecure {
        bail!(
            "refusing plain ws:// on {addr}, which is not a loopback address: give \
             --tls-cert and --tls-key, or --insecure behind a TLS-terminating proxy"
        );
    }
    let config = args.relay_config(verify, tls);
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let shutdown = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    println!("listening on {addr}");
    tandem::relay::run(listener, config, shutdown)
        .await
        .context("the relay failed")
}
