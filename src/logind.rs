//! logind: the system's sleep, as systemd-logind announces it on the system bus.
//!
//! A task that owns the proxy of `org.freedesktop.login1.Manager` and, while the system
//! is awake, a *delay* inhibitor lock on sleep (the file descriptor `Inhibit` returns,
//! kept open). It talks to the relay client over a channel of [`Sleep`] notices, the way
//! phone daemons do it:
//! - `PrepareForSleep(true)`: [`Sleep::Preparing`], then wait until the client says its
//!   session is closed (at most [`CLOSE_BOUND`]), then release the lock, which lets the
//!   system go to sleep. Contacts see us offline at once, instead of after the relay's
//!   keepalive timeout.
//! - `PrepareForSleep(false)` (resumed, or the sleep failed): [`Sleep::Resumed`], then
//!   take the lock again.
//!
//! logind may be absent, stop or restart at any time: without it there is no lock and
//! no notice; logind gone while we wait to sleep counts as resumed (we run, so we are
//! awake, and a restarted logind never sends the `false` of the old one's `true`).
//! Must not: decide anything about the relay connection, or block on anything unbounded:
//! every D-Bus call has a timeout, and the lock is released after [`CLOSE_BOUND`] even if
//! the client never answers (logind would otherwise hold the sleep back until its
//! `InhibitDelayMaxSec`, 5 s by default, and then sleep anyway).

use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;
use tracing::{debug, info, warn};
use zbus::proxy::CacheProperties;

/// Bound of each D-Bus step (subscribing, taking the lock).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a sleep waits for the relay session to close before the lock is released
/// anyway: below logind's default `InhibitDelayMaxSec` (5 s), above the client's own
/// bound on a clean close (1 s).
pub const CLOSE_BOUND: Duration = Duration::from_secs(3);

/// The lock's arguments, as `systemd-inhibit --list` shows them.
const WHAT: &str = "sleep";
const WHO: &str = "tandemd";
const WHY: &str = "close the relay session cleanly";
const MODE: &str = "delay";

#[zbus::proxy(
    interface = "org.freedesktop.login1.Manager",
    default_service = "org.freedesktop.login1",
    default_path = "/org/freedesktop/login1"
)]
trait Manager {
    /// Takes an inhibitor lock; it lasts as long as the returned descriptor is open.
    fn inhibit(&self, what: &str, who: &str, why: &str, mode: &str) -> zbus::Result<zbus::OwnedFd>;

    /// `true` just before the system sleeps (delay locks are waited for), `false` after.
    #[zbus(signal)]
    fn prepare_for_sleep(&self, start: bool) -> zbus::Result<()>;
}

/// What the system's sleep asks of the relay client.
#[derive(Debug)]
pub enum Sleep {
    /// The system is about to sleep: close the session now (cleanly, so the relay knows
    /// at once) and dial no more until [`Sleep::Resumed`]. Answer on `closed` once no
    /// connection is left (dropping it counts as an answer).
    Preparing { closed: oneshot::Sender<()> },
    /// The system is awake again: connect now.
    Resumed,
}

/// The subscriptions of a running watch.
struct Watch {
    proxy: ManagerProxy<'static>,
    owners: zbus::proxy::OwnerChangedStream<'static>,
    sleeps: PrepareForSleepStream,
}

/// Follows logind on `system` and tells `notices` about sleep, until `notices` closes
/// (the client stopped) or the bus connection stops delivering signals. The lock is
/// released when it returns.
pub async fn run(system: zbus::Connection, notices: mpsc::Sender<Sleep>) {
    let mut watch = match timeout(CALL_TIMEOUT, subscribe(&system)).await {
        Ok(Ok(watch)) => watch,
        Ok(Err(err)) => {
            warn!(cause = %err, "cannot follow logind: the relay session will not be closed before sleep");
            return;
        }
        Err(_) => {
            warn!("the system bus did not answer in time: not following logind's sleep");
            return;
        }
    };
    let mut lock = take_lock(&watch.proxy).await;
    let mut asleep = false;
    loop {
        tokio::select! {
            // In the order the bus delivered them, as far as it can be told: a signal
            // logind sent before it stopped comes before the news that it stopped.
            biased;
            () = notices.closed() => break,
            signal = watch.sleeps.next() => {
                let Some(signal) = signal else { break };
                let start = match signal.args() {
                    Ok(args) => args.start,
                    Err(err) => {
                        debug!(cause = %err, "unreadable PrepareForSleep: ignored");
                        continue;
                    }
                };
                if start {
                    if !asleep {
                        asleep = true;
                        prepare(&notices).await;
                    }
                    if lock.take().is_some() {
                        info!("released the sleep lock: ready to sleep");
                    }
                } else {
                    if asleep {
                        asleep = false;
                        info!("the system resumed");
                        if notices.send(Sleep::Resumed).await.is_err() {
                            break;
                        }
                    }
                    if lock.is_none() {
                        lock = take_lock(&watch.proxy).await;
                    }
                }
            }
            owner = watch.owners.next() => match owner {
                Some(Some(owner)) => {
                    info!(%owner, "logind appeared");
                    if asleep {
                        asleep = false;
                        if notices.send(Sleep::Resumed).await.is_err() {
                            break;
                        }
                    }
                    lock = take_lock(&watch.proxy).await;
                }
                Some(None) => {
                    info!("logind went away: no sleep lock until it returns");
                    lock = None;
                    if asleep {
                        asleep = false;
                        if notices.send(Sleep::Resumed).await.is_err() {
                            break;
                        }
                    }
                }
                None => break,
            },
        }
    }
    debug!("no longer following logind");
    drop(lock);
}

/// Tells the client the system is going to sleep and waits for its session to close,
/// at most [`CLOSE_BOUND`] in all.
async fn prepare(notices: &mpsc::Sender<Sleep>) {
    info!("the system is going to sleep: closing the relay session");
    let (closed, answer) = oneshot::channel();
    let waited = timeout(CLOSE_BOUND, async {
        if notices.send(Sleep::Preparing { closed }).await.is_ok() {
            // An answer, or the client gone: either way no session is left open.
            let _ = answer.await;
        }
    })
    .await;
    if waited.is_err() {
        warn!(
            bound_ms = CLOSE_BOUND.as_millis() as u64,
            "the relay session did not close in time; letting the system sleep anyway"
        );
    }
}

/// Subscribes to logind's owner and its `PrepareForSleep` (before taking the lock, so no
/// signal in between is lost).
async fn subscribe(system: &zbus::Connection) -> zbus::Result<Watch> {
    let proxy = ManagerProxy::builder(system)
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    let owners = proxy.inner().receive_owner_changed().await?;
    let sleeps = proxy.receive_prepare_for_sleep().await?;
    Ok(Watch {
        proxy,
        owners,
        sleeps,
    })
}

/// A delay lock on sleep, if logind gives one (absent or refusing: none, logged).
async fn take_lock(proxy: &ManagerProxy<'static>) -> Option<zbus::OwnedFd> {
    match timeout(CALL_TIMEOUT, proxy.inhibit(WHAT, WHO, WHY, MODE)).await {
        Ok(Ok(fd)) => {
            debug!("holding a delay lock on sleep");
            Some(fd)
        }
        Ok(Err(zbus::Error::MethodError(name, _, _)))
            if name.as_str() == "org.freedesktop.DBus.Error.ServiceUnknown" =>
        {
            debug!("logind is not running: no sleep lock");
            None
        }
        Ok(Err(err)) => {
            warn!(cause = %err, "logind refused a sleep lock: the relay session may still be open when the system sleeps");
            None
        }
        Err(_) => {
            warn!("logind did not give a sleep lock in time");
            None
        }
    }
}
