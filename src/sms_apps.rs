//! Other SMS apps on the session bus: Chatty, Spacebar and mmsd-tng also read what
//! ModemManager receives, and two apps that both take incoming SMS race for every one of
//! them (both store it, both notify, one deletes it under the other).
//!
//! Owns: the table of the SMS apps Tandem knows ([`KNOWN`]: their well-known bus names and
//! what they take from the modem) and a task that follows their bus names
//! (`NameOwnerChanged`) for as long as the daemon runs, says loudly when one that competes
//! is there, and publishes the competing ones present into a `watch` channel (the API's
//! `OtherSmsApps` property, `tandemctl status`). Must not: act on the other app, or decide
//! anything about SMS: which app takes incoming SMS is the user's choice, `[sms] receive`.
//!
//! Who owns what, as each app was read in its public sources:
//! - Chatty (`sm.puri.Chatty`, the app running as its own background daemon on Phosh)
//!   reads every received text SMS from ModemManager, stores it, notifies and deletes it
//!   from the modem.
//! - Spacebar's `spacebar-daemon` (`org.kde.spacebar.Daemon`; before the split, the app
//!   itself, `org.kde.spacebar`) does the same on Plasma Mobile.
//! - mmsd-tng (`org.ofono.mms`) takes only MMS notifications, which arrive as data SMS:
//!   Tandem leaves every data SMS on the modem (`modem::sms`), so the two share the modem
//!   without a race. It is followed, but not reported as competing.

use std::collections::BTreeSet;

use futures_util::StreamExt;
use tokio::sync::watch;
use tracing::{debug, info, warn};
use zbus::fdo::DBusProxy;
use zbus::names::BusName;

/// One SMS app Tandem knows of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmsApp {
    /// Its well-known name on the session bus.
    pub bus_name: &'static str,
    /// What users call it.
    pub name: &'static str,
    /// Whether it takes incoming text SMS off the modem, as Tandem does by default.
    pub takes_text_sms: bool,
}

/// Every SMS app Tandem follows.
pub const KNOWN: &[SmsApp] = &[
    SmsApp {
        bus_name: "sm.puri.Chatty",
        name: "Chatty",
        takes_text_sms: true,
    },
    SmsApp {
        bus_name: "org.kde.spacebar.Daemon",
        name: "Spacebar",
        takes_text_sms: true,
    },
    SmsApp {
        bus_name: "org.kde.spacebar",
        name: "Spacebar",
        takes_text_sms: true,
    },
    SmsApp {
        bus_name: "org.ofono.mms",
        name: "mmsd-tng",
        takes_text_sms: false,
    },
];

/// The known app with this bus name.
pub fn describe(bus_name: &str) -> Option<&'static SmsApp> {
    KNOWN.iter().find(|app| app.bus_name == bus_name)
}

/// What the daemon does with incoming SMS, for the words of the warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Receiving {
    /// `[sms] receive = true`: Tandem takes them.
    Takes,
    /// `[sms] receive = false`: they are left on the modem for another app.
    LeavesThem,
}

/// Follows the known SMS apps on `conn`'s bus until the connection closes, publishing
/// the bus names of the competing ones present (sorted) into `present`.
pub async fn follow(
    conn: zbus::Connection,
    receiving: Receiving,
    present: watch::Sender<Vec<String>>,
) {
    if let Err(e) = run(&conn, receiving, &present).await {
        // Only a daemon without a working session bus gets here; it has bigger troubles.
        warn!(cause = %e, "cannot follow other SMS apps on the session bus");
    }
}

async fn run(
    conn: &zbus::Connection,
    receiving: Receiving,
    present: &watch::Sender<Vec<String>>,
) -> zbus::Result<()> {
    let dbus = DBusProxy::new(conn).await?;
    // Subscribed before the first look, so that nothing coming in between is missed.
    let mut changes = dbus.receive_name_owner_changed().await?;
    let mut running = BTreeSet::new();
    for app in KNOWN {
        let name = BusName::try_from(app.bus_name)?;
        if dbus.name_has_owner(name).await? {
            running.insert(app.bus_name);
            appeared(app, receiving);
        }
    }
    publish(present, &running);
    while let Some(change) = changes.next().await {
        let Ok(args) = change.args() else { continue };
        let Some(app) = describe(args.name().as_str()) else {
            continue;
        };
        let now = args.new_owner().is_some();
        let changed = if now {
            running.insert(app.bus_name)
        } else {
            running.remove(app.bus_name)
        };
        if !changed {
            continue;
        }
        if now {
            appeared(app, receiving);
        } else {
            info!(
                app = app.name,
                bus_name = app.bus_name,
                "SMS app has left the bus"
            );
        }
        publish(present, &running);
    }
    debug!("session bus closed: no longer following SMS apps");
    Ok(())
}

fn publish(present: &watch::Sender<Vec<String>>, running: &BTreeSet<&'static str>) {
    let competing: Vec<String> = running
        .iter()
        .filter(|name| describe(name).is_some_and(|app| app.takes_text_sms))
        .map(|name| (*name).to_owned())
        .collect();
    present.send_if_modified(|old| {
        let changed = *old != competing;
        *old = competing;
        changed
    });
}

fn appeared(app: &SmsApp, receiving: Receiving) {
    match (app.takes_text_sms, receiving) {
        (true, Receiving::Takes) => warn!(
            app = app.name,
            bus_name = app.bus_name,
            "{} is running and also takes incoming SMS from the modem: both apps will store \
             and notify each SMS, and either may delete it under the other. Stop one, or set \
             `receive = false` under [sms] in Tandem's config.toml to leave incoming SMS to it",
            app.name
        ),
        (true, Receiving::LeavesThem) => info!(
            app = app.name,
            bus_name = app.bus_name,
            "SMS app is running; incoming SMS are left to it (sms.receive = false)"
        ),
        (false, _) => info!(
            app = app.name,
            bus_name = app.bus_name,
            "SMS app is running; it takes only data SMS (MMS), which Tandem leaves on the modem"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_names_each_bus_name_once() {
        let names: BTreeSet<_> = KNOWN.iter().map(|app| app.bus_name).collect();
        assert_eq!(names.len(), KNOWN.len());
        for app in KNOWN {
            assert!(BusName::try_from(app.bus_name).is_ok(), "{}", app.bus_name);
            assert_eq!(describe(app.bus_name), Some(app));
        }
        assert_eq!(describe("org.tandem.Messages1"), None);
    }

    #[test]
    fn only_apps_that_take_text_sms_compete() {
        let (tx, rx) = watch::channel(Vec::new());
        let running: BTreeSet<&str> = ["org.ofono.mms", "sm.puri.Chatty"].into();
        publish(&tx, &running);
        assert_eq!(*rx.borrow(), ["sm.puri.Chatty"]);
        publish(&tx, &["org.ofono.mms"].into());
        assert!(rx.borrow().is_empty());
    }
}
