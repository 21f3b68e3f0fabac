//! bench::phones: the two phones the latency scenarios (and `idle`) run on: the
//! ModemManager simulator with Alice's and Bob's modems on a private system bus (on a
//! thread of its own), and a daemon per phone (a child, each on a private session bus),
//! registered on its modem and, with a relay, logged in to it.

use std::time::{Duration, Instant};

use super::proc::Daemon;
use super::{BenchError, Setup, until};
use crate::api::MessagesProxy;
use crate::devbus::PrivateBus;
use crate::mmsim::{self, ModemSpec, SimConfig};

pub(super) const ALICE: &str = "+15550001111";
pub(super) const BOB: &str = "+15550002222";

/// How long one step may take before the run counts as broken.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// A daemon's configuration file: its modem, the relay when there is one, no
/// notifications.
pub(super) fn config_for(number: &str, relay: Option<&str>) -> String {
    let relay = relay.map_or(String::new(), |addr| {
        format!("[relay]\nurl = \"ws://{addr}\"\n\n")
    });
    format!(
        "default_region = \"US\"\n\n{relay}[sms]\nmodem = \"{number}\"\n\n[notifications]\nenabled = false\n"
    )
}

/// Alice's and Bob's phones, ready: modems registered (and logged in with a relay).
/// Fields drop in order: clients, then daemons, then buses and the simulator.
pub(super) struct Phones {
    pub alice: MessagesProxy<'static>,
    pub bob: MessagesProxy<'static>,
    pub alice_conn: zbus::Connection,
    pub system: PrivateBus,
    _daemons: Vec<Daemon>,
    _buses: [PrivateBus; 2],
    _sim: SimThread,
}

impl Phones {
    /// Starts both phones with their data under `dir` (`alice/`, `bob/`).
    pub(super) async fn start(
        setup: &Setup,
        dir: &std::path::Path,
        relay: Option<&str>,
    ) -> Result<Phones, BenchError> {
        let system = PrivateBus::start()?;
        let sim = SimThread::start(system.address())?;
        let buses = [PrivateBus::start()?, PrivateBus::start()?];
        let mut daemons = Vec::with_capacity(2);
        for (bus, number, name) in [(&buses[0], ALICE, "alice"), (&buses[1], BOB, "bob")] {
            let config = config_for(number, relay);
            let (daemon, _) = Daemon::start(setup, bus, &system, &dir.join(name), &config).await?;
            daemons.push(daemon);
        }
        let alice_conn = buses[0].connect().await?;
        let alice = MessagesProxy::new(&alice_conn).await?;
        let bob = MessagesProxy::new(&buses[1].connect().await?).await?;
        for (api, who) in [(&alice, "Alice"), (&bob, "Bob")] {
            wait_registered(api, who).await?;
            if relay.is_some() {
                until(
                    &format!("{who} to log in to the relay"),
                    MESSAGE_TIMEOUT,
                    async || api.relay_state().await.ok().as_deref() == Some("online"),
                )
                .await?;
            }
        }
        Ok(Phones {
            alice,
            bob,
            alice_conn,
            system,
            _daemons: daemons,
            _buses: buses,
            _sim: sim,
        })
    }
}

/// The simulator on a thread of its own (its own runtime), so that it neither waits for
/// the measuring task nor delays it; stopped and joined on drop.
pub(super) struct SimThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SimThread {
    pub(super) fn start(address: &str) -> Result<SimThread, BenchError> {
        let address = address.to_owned();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), BenchError>>();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("mmsim".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(super::io("cannot start a runtime")(e)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let config = SimConfig {
                        modems: vec![ModemSpec::new(ALICE), ModemSpec::new(BOB)],
                        report_delay: Duration::ZERO,
                        part_interval: Duration::ZERO,
                        ..SimConfig::default()
                    };
                    let started = async {
                        let conn = zbus::connection::Builder::address(address.as_str())
                            .build()
                            .await?;
                        let sim = mmsim::serve(&conn, config).await?;
                        Ok::<_, BenchError>((conn, sim))
                    };
                    match started.await {
                        Ok((_conn, sim)) => {
                            let _ = ready_tx.send(Ok(()));
                            let _ = stop_rx.await;
                            sim.shutdown().await;
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(e));
                        }
                    }
                });
            })
            .map_err(super::io("cannot start the simulator's thread"))?;
        let sim = SimThread {
            stop: Some(stop),
            thread: Some(thread),
        };
        match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(())) => Ok(sim),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(BenchError::Timeout {
                what: "the simulator to start".into(),
                after: Duration::from_secs(30),
            }),
        }
    }
}

impl Drop for SimThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Waits until the daemon has picked its modem.
pub(super) async fn wait_registered(api: &MessagesProxy<'_>, who: &str) -> Result<(), BenchError> {
    let deadline = Instant::now() + MESSAGE_TIMEOUT;
    loop {
        if api.modem_state().await.ok().as_deref() == Some("registered") {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(BenchError::Timeout {
                what: format!("{who}'s daemon to use its modem"),
                after: MESSAGE_TIMEOUT,
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
