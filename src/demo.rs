//! The demo behind `tandem-demo`: two simulated phones texting each other, with no
//! phone and none of the user's buses involved. Starts private D-Bus buses, the
//! ModemManager simulator hosting Alice's and Bob's modems, a relay on loopback, and one
//! Tandem daemon per phone (all in this process, each daemon on a session bus of its
//! own). It plays the founding method: over IP while both are online, presence changes,
//! Bob's daemon stopped and the next message going by SMS, Bob back and IP again. Then it
//! prints the `busctl` commands to try and, unless told to exit, stays up until Ctrl-C.
//! Everything it started is stopped at the end.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures_util::StreamExt;
use tokio::sync::oneshot;

use crate::api::MessagesProxy;
use crate::config::Config;
use crate::daemon::{self, Buses};
use crate::devbus::PrivateBus;
use crate::mmsim::{self, ModemSpec, SimConfig};

const ALICE: &str = "+15550001111";
const BOB: &str = "+15550002222";

/// One simulated phone: its session bus, its daemon (which can be stopped and started
/// again on the same database), and a client of it.
struct Phone {
    name: &'static str,
    number: &'static str,
    session: PrivateBus,
    system: String,
    relay_url: String,
    db: PathBuf,
    daemon: Option<(oneshot::Sender<()>, tokio::task::JoinHandle<()>)>,
    api: MessagesProxy<'static>,
}

impl Phone {
    async fn start(
        name: &'static str,
        number: &'static str,
        system: &PrivateBus,
        relay_url: &str,
        dir: &Path,
    ) -> Result<Phone> {
        let session = PrivateBus::start()?;
        let conn = session.connect().await?;
        let api = MessagesProxy::new(&conn).await?;
        let mut phone = Phone {
            name,
            number,
            session,
            system: system.address().to_owned(),
            relay_url: relay_url.to_owned(),
            db: dir.join(name).join("messages.db"),
            daemon: None,
            api,
        };
        phone.start_daemon().await?;
        Ok(phone)
    }

    /// Runs `daemon::run` (what `tandemd` runs) for this phone.
    async fn start_daemon(&mut self) -> Result<()> {
        let mut config = Config {
            default_region: Some("US".into()),
            notifications: crate::config::NotificationsConfig { enabled: false },
            ..Default::default()
        };
        config.sms.modem = Some(self.number.into());
        config.relay.url = Some(self.relay_url.clone());
        let buses = Buses {
            session: Some(self.session.address().to_owned()),
            system: Some(self.system.clone()),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let (name, db) = (self.name, self.db.clone());
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            if let Err(e) = daemon::run(config, &db, buses, shutdown).await {
                eprintln!("{name}'s daemon failed: {e}");
            }
        });
        self.daemon = Some((stop, task));
        self.until("its daemon to come up", async || {
            Ok(self.api.modem_state().await? == "registered"
                && self.api.relay_state().await? == "online")
        })
        .await
    }

    async fn stop_daemon(&mut self) {
        if let Some((stop, task)) = self.daemon.take() {
            let _ = stop.send(());
            let _ = tokio::time::timeout(Duration::from_secs(6), task).await;
        }
    }

    async fn until(&self, what: &str, check: impl AsyncFn() -> Result<bool>) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !check().await.unwrap_or(false) {
            if Instant::now() > deadline {
                bail!("timed out waiting for {}'s {what}", self.name);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

/// Prints a line with the time since the demo started.
fn say(started: Instant, line: &str) {
    println!(
        "{:>6.0} ms  {line}",
        started.elapsed().as_secs_f64() * 1000.0
    );
}

/// Sends `text` from `from` to `to` and narrates what each side sees until it is
/// delivered and (when `to`'s daemon runs) received.
async fn converse(from: &Phone, to: &Phone, text: &str, started: Instant) -> Result<()> {
    let mut statuses = from.api.receive_message_status_changed().await?;
    let mut received = to.api.receive_message_received().await?;
    let id = from
        .api
        .send_message(to.number, text, Default::default())
        .await?;
    say(
        started,
        &format!("{}: SendMessage({}, {text:?}) → {id}", from.name, to.number),
    );
    let mut delivered = false;
    let mut arrived = to.daemon.is_none();
    let deadline = tokio::time::sleep(Duration::from_secs(40));
    tokio::pin!(deadline);
    while !(delivered && arrived) {
        tokio::select! {
            Some(signal) = statuses.next() => {
                let args = signal.args()?;
                if args.id() == &id {
                    say(started, &format!("{}: MessageStatusChanged {} via {:?}", from.name, args.status(), args.channel()));
                    delivered |= *args.status() == "delivered" || *args.status() == "failed";
                }
            }
            Some(signal) = received.next(), if !arrived => {
                let args = signal.args()?;
                let m = args.message();
                say(started, &format!("{}: MessageReceived from {} over {}: {:?}", to.name, m.peer, m.channel, m.text));
                arrived = true;
            }
            _ = &mut deadline => bail!("the message did not arrive in time"),
        }
    }
    Ok(())
}

/// Waits for `phone` to see `number` with `presence`, and says so.
async fn presence(phone: &Phone, number: &str, presence: &str, started: Instant) -> Result<()> {
    phone
        .until("presence change", async || {
            Ok(phone.api.get_presence(number).await? == presence)
        })
        .await?;
    say(
        started,
        &format!("{}: PresenceChanged {number} {presence}", phone.name),
    );
    Ok(())
}

/// Plays the demo in a temporary directory, removed at the end. With `stay_up`, waits
/// for Ctrl-C after the script.
pub async fn run(stay_up: bool) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("tandem-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = play(stay_up, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// The simulated world: the system bus with the simulator's two modems, and the relay.
struct World {
    system: PrivateBus,
    _sim: mmsim::Simulator,
    relay_url: String,
    stop_relay: oneshot::Sender<()>,
    relay: tokio::task::JoinHandle<Result<(), crate::relay::RelayError>>,
}

impl World {
    async fn start(dir: &Path) -> Result<World> {
        let system = PrivateBus::start()?;
        let sim_conn = system.connect().await?;
        let spec = |number: &str| ModemSpec {
            own_number: number.into(),
            sim_own_number: true,
            state: 8,
        };
        let sim = mmsim::serve(
            &sim_conn,
            SimConfig {
                modems: vec![spec(ALICE), spec(BOB)],
                ..Default::default()
            },
        )
        .await
        .context("cannot start the ModemManager simulator")?;
        println!(
            "ModemManager simulator: modems for Alice ({ALICE}) and Bob ({BOB}), one carrier."
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let relay_url = format!("ws://{}", listener.local_addr()?);
        let (stop_relay, relay_stopped) = oneshot::channel::<()>();
        let relay_config = crate::relay::RelayConfig {
            db_path: Some(dir.join("relay.db")),
            ..Default::default()
        };
        let relay = tokio::spawn(crate::relay::run(listener, relay_config, async move {
            let _ = relay_stopped.await;
        }));
        println!(
            "Relay on {relay_url} (development mode: numbers registered without an SMS code)."
        );
        Ok(World {
            system,
            _sim: sim,
            relay_url,
            stop_relay,
            relay,
        })
    }

    async fn stop(self) {
        let _ = self.stop_relay.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), self.relay).await;
    }
}

async fn play(stay_up: bool, dir: &Path) -> Result<()> {
    let world = World::start(dir).await?;
    let mut alice = Phone::start("Alice", ALICE, &world.system, &world.relay_url, dir).await?;
    let mut bob = Phone::start("Bob", BOB, &world.system, &world.relay_url, dir).await?;
    println!("Two phones, each with its own tandemd: modems registered, logged in to the relay.\n");
    script(&alice, &mut bob).await?;
    print_conversations(&alice).await?;
    print_try_it(&[&alice, &bob], &world.system);
    if stay_up {
        println!("\nRunning until Ctrl-C.");
        tokio::signal::ctrl_c().await?;
    }
    println!("Stopping.");
    alice.stop_daemon().await;
    bob.stop_daemon().await;
    world.stop().await;
    Ok(())
}

/// The founding method, told as it happens: IP while both are online, SMS while Bob is
/// away (waiting on his modem), IP again once he is back.
async fn script(alice: &Phone, bob: &mut Phone) -> Result<()> {
    let started = Instant::now();
    // Bob is in Alice's contacts: she follows his presence.
    alice.api.watch(vec![BOB.into()]).await?;
    presence(alice, BOB, "online", started).await?;
    converse(alice, bob, "Hi Bob! Dinner at eight?", started).await?;
    println!();
    converse(bob, alice, "Sounds good, see you then 🙂", started).await?;

    println!("\nBob's daemon stops (phone off the network):");
    bob.stop_daemon().await;
    presence(alice, BOB, "offline", started).await?;
    converse(alice, bob, "Shall I bring wine?", started).await?;
    println!("\nBob's daemon starts again:");
    let mut received = bob.api.receive_message_received().await?;
    bob.start_daemon().await?;
    if let Some(signal) = received.next().await {
        let args = signal.args()?;
        let m = args.message();
        say(
            started,
            &format!(
                "Bob: MessageReceived from {} over {}: {:?} (waited on his modem)",
                m.peer, m.channel, m.text
            ),
        );
    }
    presence(alice, BOB, "online", started).await?;
    converse(alice, bob, "See you at eight!", started).await
}

async fn print_conversations(phone: &Phone) -> Result<()> {
    println!("\n{}'s conversations:", phone.name);
    for c in phone.api.list_conversations(0, 10).await? {
        println!(
            "  {}  unread {}  presence {}  last: {:?} ({})",
            c.peer, c.unread, c.presence, c.last_text, c.last_direction
        );
    }
    Ok(())
}

/// The `busctl` lines to try on each phone's bus and on the simulated world's.
fn print_try_it(phones: &[&Phone], system: &PrivateBus) {
    let call = "org.tandem.Messages1 /org/tandem/Messages1 org.tandem.Messages1";
    println!("\nTry it yourself (in another terminal):");
    for phone in phones {
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
}
