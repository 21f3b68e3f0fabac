//! `tandem-bench`'s command line: the scenarios and their options (clap), the hidden
//! modes in which the bench re-runs itself as the daemon or the relay, and the loop that
//! runs the chosen scenarios and prints one JSON line each.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde::Serialize;

use super::{BenchError, Setup};

/// Benchmarks of Tandem; one JSON line per scenario on stdout.
#[derive(Debug, Parser)]
#[command(version, about)]
pub struct Args {
    #[command(subcommand)]
    pub scenario: Option<Scenario>,
    /// Small sizes, for a CI smoke run (figures are not meaningful); without a
    /// scenario, runs every scenario
    #[arg(long, global = true)]
    pub quick: bool,
    /// Where to put temporary files [default: /var/tmp, on disk rather than tmpfs]
    #[arg(long, global = true, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Internal: run as the daemon on this database (used by the scenarios)
    #[arg(long, hide = true, value_name = "DB", requires = "daemon_config")]
    pub daemon: Option<PathBuf>,
    /// Internal: the daemon's configuration file
    #[arg(long, hide = true, value_name = "PATH", requires = "daemon")]
    pub daemon_config: Option<PathBuf>,
    /// Internal: run as the relay server, writing its address to this file
    #[arg(long, hide = true, value_name = "ADDR_FILE", conflicts_with = "daemon")]
    pub relay_server: Option<PathBuf>,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Scenario {
    /// A store of N messages over C conversations: daemon start-up, ListConversations,
    /// GetMessages and Search times over D-Bus, bytes per message, RSS
    Store {
        /// Messages in the store [default: 1000000; --quick: 20000]
        #[arg(long)]
        messages: Option<u64>,
        /// Conversations [default: 5000; --quick: 200]
        #[arg(long)]
        conversations: Option<u32>,
        /// Calls of each kind to take the median of [default: 100]
        #[arg(long)]
        calls: Option<usize>,
    },
    /// Alice's daemon sends N messages to Bob's over IP through a relay, one at a time:
    /// SendMessage to MessageReceived, next to the floor (D-Bus round trip, relay hop,
    /// two commits)
    IpLatency {
        /// Messages timed [default: 1000; --quick: 20]
        #[arg(long)]
        messages: Option<usize>,
    },
    /// Alice's daemon sends N SMS to Bob's, one at a time, through the simulator's
    /// carrier: SendMessage to MessageReceived, next to the D-Bus round-trip floor
    SmsLatency {
        /// Messages timed [default: 1000; --quick: 20]
        #[arg(long)]
        messages: Option<usize>,
        /// Pause after each message has settled, before the next one, in ms [default: 5]
        #[arg(long, value_name = "MS")]
        pause_ms: Option<u64>,
    },
    /// One daemon logged in to a relay, following N contacts, no traffic, for S seconds:
    /// its CPU, wakeups (context switches), RSS and bytes on the relay connection per
    /// minute
    Idle {
        /// Seconds measured, S [default: 60; --quick: 3]
        #[arg(long)]
        seconds: Option<f64>,
        /// Contacts followed, N [default: 500; --quick: 50]
        #[arg(long)]
        contacts: Option<usize>,
        /// Of those, logged in to the relay [default: 50; --quick: 5]
        #[arg(long)]
        online: Option<usize>,
        /// Quiet seconds between the daemon being settled and the window [default: 12;
        /// --quick: 1]
        #[arg(long, value_name = "SECONDS")]
        settle: Option<f64>,
    },
    /// K idle logged-in websocket clients (the relay's memory per connection), then P
    /// pairs exchanging messages as fast as acks allow (messages/s, latency)
    Relay {
        /// Idle clients, K [default: 10000; --quick: 200]
        #[arg(long)]
        clients: Option<usize>,
        /// Pairs exchanging messages, P [default: 50; --quick: 5]
        #[arg(long)]
        pairs: Option<usize>,
        /// Sends each sender keeps in flight, W [default: 32]
        #[arg(long)]
        window: Option<usize>,
        /// Seconds of exchange, S [default: 10; --quick: 1]
        #[arg(long)]
        seconds: Option<f64>,
    },
}

impl Scenario {
    /// Every scenario with its defaults, in the order `--quick` runs them.
    fn all() -> Vec<Scenario> {
        vec![
            Scenario::Store {
                messages: None,
                conversations: None,
                calls: None,
            },
            Scenario::SmsLatency {
                messages: None,
                pause_ms: None,
            },
            Scenario::Relay {
                clients: None,
                pairs: None,
                window: None,
                seconds: None,
            },
            Scenario::IpLatency { messages: None },
            Scenario::Idle {
                seconds: None,
                contacts: None,
                online: None,
                settle: None,
            },
        ]
    }
}

fn json_line<T: Serialize>(figures: &T) -> Result<String, BenchError> {
    serde_json::to_string(figures)
        .map_err(|e| BenchError::Unexpected(format!("cannot write JSON: {e}")))
}

async fn run_one(setup: &Setup, scenario: Scenario, quick: bool) -> Result<String, BenchError> {
    match scenario {
        Scenario::Store {
            messages,
            conversations,
            calls,
        } => {
            let mut params = super::store::StoreParams::new(quick);
            params.messages = messages.unwrap_or(params.messages);
            params.conversations = conversations.unwrap_or(params.conversations);
            params.calls = calls.unwrap_or(params.calls);
            json_line(&super::store::run(setup, &params).await?)
        }
        Scenario::SmsLatency { messages, pause_ms } => {
            let mut params = super::LatencyParams::new(quick);
            params.messages = messages.unwrap_or(params.messages);
            if let Some(pause) = pause_ms {
                params.pause = std::time::Duration::from_millis(pause);
            }
            json_line(&super::sms::run(setup, &params).await?)
        }
        Scenario::IpLatency { messages } => {
            let mut params = super::LatencyParams::new(quick);
            params.messages = messages.unwrap_or(params.messages);
            json_line(&super::ip::run(setup, &params).await?)
        }
        Scenario::Idle {
            seconds,
            contacts,
            online,
            settle,
        } => {
            let mut params = super::idle::IdleParams::new(quick);
            params.seconds = seconds.unwrap_or(params.seconds);
            params.contacts = contacts.unwrap_or(params.contacts);
            params.online = online.unwrap_or(params.online);
            if let Some(settle) = settle {
                params.settle = std::time::Duration::try_from_secs_f64(settle)
                    .map_err(|e| BenchError::Unexpected(format!("--settle {settle}: {e}")))?;
            }
            json_line(&super::idle::run(setup, &params).await?)
        }
        Scenario::Relay {
            clients,
            pairs,
            window,
            seconds,
        } => {
            let mut params = super::relay::RelayParams::new(quick);
            params.clients = clients.unwrap_or(params.clients);
            params.pairs = pairs.unwrap_or(params.pairs);
            params.window = window.unwrap_or(params.window);
            params.seconds = seconds.unwrap_or(params.seconds);
            json_line(&super::relay::run(setup, &params).await?)
        }
    }
}

/// Runs what the command line asks: a hidden mode, one scenario, or all of them small.
pub fn main(args: Args) -> ExitCode {
    if let Some(code) = hidden_mode(&args) {
        return code;
    }
    crate::logging::init("warn");
    let scenarios = match (args.scenario.clone(), args.quick) {
        (Some(s), _) => vec![s],
        (None, true) => Scenario::all(),
        (None, false) => {
            eprintln!(
                "tandem-bench: name a scenario (store, sms-latency, relay, ip-latency, idle), or --quick \
                 for all of them small"
            );
            return ExitCode::from(2);
        }
    };
    match run_all(&args, scenarios) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tandem-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The modes in which the scenarios re-run this executable: the daemon, the relay.
fn hidden_mode(args: &Args) -> Option<ExitCode> {
    let (what, result) = if let (Some(db), Some(config)) = (&args.daemon, &args.daemon_config) {
        crate::logging::init("warn");
        ("daemon", super::daemon_mode(db, config))
    } else if let Some(addr_file) = &args.relay_server {
        // The relay logs as `tandem-relay` does by default; its stderr is a file.
        crate::logging::init("info");
        ("relay server", super::relay_server_mode(addr_file))
    } else {
        return None;
    };
    Some(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tandem-bench {what}: {e}");
            ExitCode::FAILURE
        }
    })
}

fn run_all(args: &Args, scenarios: Vec<Scenario>) -> Result<(), BenchError> {
    let exe = std::env::current_exe()
        .map_err(|e| BenchError::Unexpected(format!("cannot find its own executable: {e}")))?;
    let setup = Setup {
        exe,
        dir: args.dir.clone(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::Unexpected(format!("cannot start the runtime: {e}")))?;
    for scenario in scenarios {
        let line = runtime.block_on(run_one(&setup, scenario, args.quick))?;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
    Ok(())
}
