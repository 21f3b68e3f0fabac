//! `tandem-demo`: two simulated phones texting each other, with no phone and none of
//! your buses involved. Starts private D-Bus buses, the ModemManager simulator hosting
//! Alice's and Bob's modems, and one Tandem daemon per phone (all in this process, each
//! daemon on a session bus of its own), plays a short script, prints the `busctl`
//! commands to try, and stays up until Ctrl-C. Everything it started is stopped at exit.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures_util::StreamExt;
use tandem::api::MessagesProxy;
use tandem::config::Config;
use tandem::daemon::{self, Buses};
use tandem::devbus::PrivateBus;
use tandem::mmsim::{self, ModemSpec, SimConfig};
use tokio::sync::oneshot;
use tracing_subscriber::EnvFilter;

const ALICE: &str = "+15550001111";
const BOB: &str = "+15550002222";

/// Two simulated phones texting each other through Tandem, on private buses.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Play the script, then stop (instead of staying up until Ctrl-C)
    #[arg(long)]
    exit: bool,
    /// Show the daemons' logs (-v info, -vv debug)
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

/// One simulated phone: its session bus, its daemon, and a client of it.
struct Phone {
    name: &'static str,
    number: &'static str,
    session: PrivateBus,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    api: MessagesProxy<'static>,
}

impl Phone {
    async fn start(
        name: &'static str,
        number: &'static str,
        system: &PrivateBus,
        dir: &Path,
    ) -> Result<Phone> {
        let session = PrivateBus::start()?;
        let config = Config {
            own_number: None,
            default_region: Some("US".into()),
            sms: tandem::config::SmsConfig {
                modem: Some(number.into()),
                ..Default::default()
            },
            notifications: tandem::config::NotificationsConfig { enabled: false },
            ..Default::default()
        };
        let db = dir.join(name).join("messages.db");
        let buses = Buses {
            session: Some(session.address().to_owned()),
            system: Some(system.address().to_owned()),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(e) = daemon::run(config, &db, buses, shutdown).await {
                eprintln!("{name}'s daemon failed: {e}");
            }
        });
        let conn = zbus::connection::Builder::address(session.address())
            .build()
            .await?;
        let dbus = zbus::fdo::DBusProxy::new(&conn).await?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !dbus
            .name_has_owner("org.tandem.Messages1".try_into()?)
            .await
            .unwrap_or(false)
        {
            if Instant::now() > deadline {
                bail!("{name}'s daemon did not come up");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let api = MessagesProxy::new(&conn).await?;
        Ok(Phone {
            name,
            number,
            session,
            stop: Some(stop),
            task,
            api,
        })
    }

    async fn wait_registered(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.api.modem_state().await? != "registered" {
            if Instant::now() > deadline {
                bail!("{}'s modem did not register", self.name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(6), &mut self.task).await;
    }
}

/// Sends `text` from `from` to `to` and narrates what each side sees until delivery.
async fn converse(from: &Phone, to: &Phone, text: &str, started: Instant) -> Result<()> {
    let mut statuses = from.api.receive_message_status_changed().await?;
    let mut received = to.api.receive_message_received().await?;
    let t = |started: Instant| format!("{:>6.0} ms", started.elapsed().as_secs_f64() * 1000.0);
    let id = from
        .api
        .send_message(to.number, text, Default::default())
        .await?;
    println!(
        "{}  {}: SendMessage({}, {text:?}) → {id}",
        t(started),
        from.name,
        to.number
    );
    let mut delivered = false;
    let mut arrived = false;
    let deadline = tokio::time::sleep(Duration::from_secs(15));
    tokio::pin!(deadline);
    while !(delivered && arrived) {
        tokio::select! {
            Some(signal) = statuses.next() => {
                let args = signal.args()?;
                if args.id() == &id {
                    println!("{}  {}: MessageStatusChanged {} via {:?}", t(started), from.name, args.status(), args.channel());
                    delivered |= *args.status() == "delivered" || *args.status() == "failed";
                }
            }
            Some(signal) = received.next() => {
                let args = signal.args()?;
                let m = args.message();
                println!("{}  {}: MessageReceived from {} over {}: {:?}", t(started), to.name, m.peer, m.channel, m.text);
                arrived = true;
            }
            _ = &mut deadline => bail!("the message did not arrive in time"),
        }
    }
    Ok(())
}

async fn demo(args: &Args) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("tandem-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let system = PrivateBus::start()?;

    let sim_conn = zbus::connection::Builder::address(system.address())
        .build()
        .await?;
    let spec = |number: &str| ModemSpec {
        own_number: number.into(),
        sim_own_number: true,
        state: 8,
    };
    let _sim = mmsim::serve(
        &sim_conn,
        SimConfig {
            modems: vec![spec(ALICE), spec(BOB)],
            ..Default::default()
        },
    )
    .await
    .context("cannot start the ModemManager simulator")?;
    println!("ModemManager simulator: modems for Alice ({ALICE}) and Bob ({BOB}), one carrier.");

    let alice = Phone::start("Alice", ALICE, &system, &dir).await?;
    let bob = Phone::start("Bob", BOB, &system, &dir).await?;
    alice.wait_registered().await?;
    bob.wait_registered().await?;
    println!("Two phones, each with its own tandemd; both modems registered.\n");

    let started = Instant::now();
    converse(&alice, &bob, "Hi Bob! Dinner at eight?", started).await?;
    println!();
    converse(&bob, &alice, "Sounds good, see you then 🙂", started).await?;

    println!("\nAlice's conversations:");
    for c in alice.api.list_conversations(0, 10).await? {
        println!(
            "  {}  unread {}  last: {:?} ({})",
            c.peer, c.unread, c.last_text, c.last_direction
        );
    }

    let call = "org.tandem.Messages1 /org/tandem/Messages1 org.tandem.Messages1";
    println!("\nTry it yourself (in another terminal):");
    for phone in [&alice, &bob] {
        let other = if phone.number == ALICE { BOB } else { ALICE };
        let env = format!("DBUS_SESSION_BUS_ADDRESS='{}'", phone.session.address());
        println!("  # {}'s phone", phone.name);
        println!("  {env} busctl --user call {call} SendMessage ssa{{sv}} '{other}' 'hello' 0");
        println!("  {env} busctl --user --json=short call {call} GetMessages ssu '{other}' '' 20");
        println!("  {env} busctl --user monitor org.tandem.Messages1");
    }
    println!("  # the simulated world: an SMS to Alice from outside");
    println!(
        "  busctl --address='{}' call org.tandem.MMSim1 /org/tandem/MMSim1 org.tandem.MMSim1 InjectSms sssa{{sv}} '{ALICE}' '+15559876543' 'hello from outside' 0",
        system.address()
    );

    if !args.exit {
        println!("\nRunning until Ctrl-C.");
        tokio::signal::ctrl_c().await?;
    }
    println!("Stopping.");
    alice.stop().await;
    bob.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let level = match args.verbose {
        0 => "error",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(format!("warn,tandem={level}")))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tandem-demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(demo(&args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tandem-demo: {e:#}");
            ExitCode::FAILURE
        }
    }
}
