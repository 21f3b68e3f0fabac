//! The network's state, from NetworkManager on the system bus: an adapter like the modem's.
//!
//! A task ([`run`], or [`spawn`]) that owns a hand-written proxy for the one property the
//! daemon needs (`org.freedesktop.NetworkManager.Connectivity`) and the watch on it: the
//! `PropertiesChanged` signals and the name's owner, so NetworkManager may be absent,
//! stop or restart at any time (absent counts as [`Connectivity::Unknown`]: just try).
//! It publishes into a `tokio::sync::watch` channel: `None` until NetworkManager's first
//! answer (or the finding that it cannot be asked), then its current [`Connectivity`].
//! The relay client reads that channel; it knows nothing of D-Bus.
//! Must not: decide anything about the relay connection, or block anyone: every D-Bus
//! call is bounded by a timeout. The task ends (after publishing `Unknown`, and closing
//! the channel) only when the watch cannot be set up, the bus connection stops
//! delivering signals, or nobody reads the channel any more.

use std::time::Duration;

use futures_util::StreamExt as _;
use futures_util::stream::{self, BoxStream};
use tokio::sync::watch;
use tracing::{debug, info, warn};
use zbus::proxy::CacheProperties;

const NM_SERVICE: &str = "org.freedesktop.NetworkManager";
const NM_PATH: &str = "/org/freedesktop/NetworkManager";
const NM_IFACE: &str = "org.freedesktop.NetworkManager";

/// Bound of each D-Bus step (subscribing, reading the property).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

#[zbus::proxy(
    interface = "org.freedesktop.NetworkManager",
    default_service = "org.freedesktop.NetworkManager",
    default_path = "/org/freedesktop/NetworkManager"
)]
trait NetworkManager {
    /// `NMConnectivityState`: 0 unknown, 1 none, 2 portal, 3 limited, 4 full.
    #[zbus(property)]
    fn connectivity(&self) -> zbus::Result<u32>;
}

/// What NetworkManager says of the network (`NMConnectivityState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connectivity {
    /// NetworkManager is absent, or does not know (0): try anyway.
    Unknown,
    /// No network at all (1): do not dial.
    NoNetwork,
    /// Behind a captive portal (2).
    Portal,
    /// A network without the full Internet (3); a relay on that network may still answer.
    Limited,
    /// The Internet is reachable (4).
    Full,
}

impl Connectivity {
    pub fn from_nm(value: u32) -> Connectivity {
        match value {
            1 => Connectivity::NoNetwork,
            2 => Connectivity::Portal,
            3 => Connectivity::Limited,
            4 => Connectivity::Full,
            _ => Connectivity::Unknown,
        }
    }

    /// Whether dialing the relay can make sense. Only a certain "no network" stops the
    /// client: with a portal or limited connectivity the relay may still be reachable
    /// (on the local network, or allowed by the portal), and backoff bounds the cost.
    pub fn allows_dialing(self) -> bool {
        self != Connectivity::NoNetwork
    }
}

/// What the adapter publishes: `None` until NetworkManager's first answer.
pub type ConnectivityWatch = watch::Receiver<Option<Connectivity>>;

/// Starts the adapter on `system` as a task of its own; it stops by itself once every
/// receiver is dropped.
pub fn spawn(system: zbus::Connection) -> ConnectivityWatch {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(run(system, tx));
    rx
}

/// Follows NetworkManager's connectivity on `system` into `tx` until nobody reads it or
/// the watch ends (then `Unknown`: just try).
pub async fn run(system: zbus::Connection, tx: watch::Sender<Option<Connectivity>>) {
    let mut changes = watch_stream(system);
    loop {
        tokio::select! {
            change = changes.next() => match change {
                Some(now) => {
                    tx.send_replace(Some(now));
                }
                None => break,
            },
            () = tx.closed() => return,
        }
    }
    tx.send_replace(Some(Connectivity::Unknown));
}

/// The subscriptions of a running watch.
struct Watch {
    proxy: NetworkManagerProxy<'static>,
    owners: zbus::proxy::OwnerChangedStream<'static>,
    changes: zbus::fdo::PropertiesChangedStream,
}

enum Step {
    Start(zbus::Connection),
    Running(Box<Watch>),
    Done,
}

/// NetworkManager's connectivity on `system`: the current value first, then every
/// change. The stream ends if the watch cannot be set up or the bus connection stops
/// delivering signals; the caller then just tries.
fn watch_stream(system: zbus::Connection) -> BoxStream<'static, Connectivity> {
    stream::unfold(Step::Start(system), |step| async move {
        match step {
            Step::Start(system) => match tokio::time::timeout(CALL_TIMEOUT, subscribe(&system)).await
            {
                Ok(Ok(watch)) => {
                    let now = read(&watch.proxy).await;
                    info!(connectivity = ?now, "following NetworkManager's connectivity");
                    Some((now, Step::Running(Box::new(watch))))
                }
                Ok(Err(err)) => {
                    warn!(cause = %err, "cannot follow NetworkManager; connecting regardless");
                    Some((Connectivity::Unknown, Step::Done))
                }
                Err(_) => {
                    warn!("the system bus did not answer in time; connecting regardless of NetworkManager");
                    Some((Connectivity::Unknown, Step::Done))
                }
            },
            Step::Running(mut watch) => loop {
                tokio::select! {
                    owner = watch.owners.next() => match owner {
                        Some(Some(owner)) => {
                            info!(%owner, "NetworkManager appeared");
                            let now = read(&watch.proxy).await;
                            return Some((now, Step::Running(watch)));
                        }
                        Some(None) => {
                            info!("NetworkManager went away; connecting regardless");
                            return Some((Connectivity::Unknown, Step::Running(watch)));
                        }
                        None => break None,
                    },
                    signal = watch.changes.next() => match signal {
                        Some(signal) => {
                            if let Some(now) = changed(&signal, &watch.proxy).await {
                                return Some((now, Step::Running(watch)));
                            }
                        }
                        None => break None,
                    },
                }
            },
            Step::Done => None,
        }
    })
    .boxed()
}

/// Subscribes to NetworkManager's owner and property changes (before reading the value,
/// so no change between the two is lost).
async fn subscribe(system: &zbus::Connection) -> zbus::Result<Watch> {
    let proxy = NetworkManagerProxy::builder(system)
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    let owners = proxy.inner().receive_owner_changed().await?;
    let properties = zbus::fdo::PropertiesProxy::builder(system)
        .destination(NM_SERVICE)
        .path(NM_PATH)
        .cache_properties(CacheProperties::No)
        .build()
        .await?;
    let changes = properties
        .receive_properties_changed_with_args(&[(0, NM_IFACE)])
        .await?;
    Ok(Watch {
        proxy,
        owners,
        changes,
    })
}

/// Reads the property; NetworkManager absent (or not answering) is `Unknown`.
async fn read(proxy: &NetworkManagerProxy<'static>) -> Connectivity {
    match tokio::time::timeout(CALL_TIMEOUT, proxy.connectivity()).await {
        Ok(Ok(value)) => Connectivity::from_nm(value),
        Ok(Err(err)) => {
            debug!(cause = %err, "no connectivity from NetworkManager (not running?)");
            Connectivity::Unknown
        }
        Err(_) => {
            warn!("NetworkManager did not tell its connectivity in time");
            Connectivity::Unknown
        }
    }
}

/// The new value carried (or invalidated) by a `PropertiesChanged` signal, if it is
/// about `Connectivity`.
async fn changed(
    signal: &zbus::fdo::PropertiesChanged,
    proxy: &NetworkManagerProxy<'static>,
) -> Option<Connectivity> {
    let args = signal.args().ok()?;
    if args.interface_name().as_str() != NM_IFACE {
        return None;
    }
    if let Some(value) = args.changed_properties().get("Connectivity") {
        return match u32::try_from(value) {
            Ok(value) => Some(Connectivity::from_nm(value)),
            Err(_) => Some(read(proxy).await),
        };
    }
    if args.invalidated_properties().contains(&"Connectivity") {
        return Some(read(proxy).await);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nm_values() {
        for (value, expected, dial) in [
            (0, Connectivity::Unknown, true),
            (1, Connectivity::NoNetwork, false),
            (2, Connectivity::Portal, true),
            (3, Connectivity::Limited, true),
            (4, Connectivity::Full, true),
            (99, Connectivity::Unknown, true),
        ] {
            assert_eq!(Connectivity::from_nm(value), expected);
            assert_eq!(expected.allows_dialing(), dial);
        }
    }
}
