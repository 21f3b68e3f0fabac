//! Tandem: one inbox for SMS and IP messages on Linux phones.
//!
//! Layout, one line per module (see ARCHITECTURE.md for the invariants):
//! - [`domain`]: messages, statuses, channel and modem states; plain data.
//! - [`config`]: the TOML configuration and its defaults.
//! - [`number`]: phone-number normalisation to E.164 (the `phonenumber` crate).
//! - [`sms_text`]: how many SMS parts a text needs (GSM 03.38 / UCS-2).
//! - [`router`]: the channel rule and outbox decisions; pure logic, no I/O, never fails.
//! - [`store`]: SQLite; the only module that knows SQL. Runs as an actor on its own thread.
//! - [`modem`]: the ModemManager adapter (system bus), a task behind two channels.
//! - [`logging`]: the one logging set-up of the binaries (journal under systemd, else stderr).
//! - [`manpage`]: the man pages of `tandemd` and `tandem-relay`, from their clap definitions.
//! - [`logind`]: the system's sleep (logind, system bus): closes the relay session before.
//! - [`net`]: the network's state (NetworkManager, system bus), for the relay client.
//! - [`contacts`]: names (and photos) of numbers from the address book; never blocks.
//! - [`notifier`]: desktop notifications, a task that can never block a message.
//! - [`sms_apps`]: other SMS apps on the session bus (Chatty, Spacebar), said loudly.
//! - [`engine`]: the daemon's core task: applies router decisions to store and adapters.
//! - [`api`]: the `org.tandem.Messages1` D-Bus interface (session bus).
//! - [`daemon`]: wires everything together: `run(config, db_path, buses, shutdown)`.
//! - [`ctl`]: `tandemctl`, the command-line client of the API (through its generated proxy).
//! - [`demo`]: `tandem-demo`'s two simulated phones (private buses, simulator, relay).
//! - [`devbus`]: private `dbus-daemon`s for the demo, the benchmarks and the tests.
//! - [`mmsim`]: `tandem-mmsim`, a ModemManager simulator with a simulated carrier.
//! - [`relay`]: `tandem-relay`, the IP relay server (own SQLite), and its wire protocol.
//! - [`bench`]: `tandem-bench`'s scenarios (set-up, measurement, figures); no daemon code.

// A `pub` item must be reachable from outside the crate: everything else is
// `pub(crate)`, so that the dead-code lint sees what nothing uses.
#![warn(unreachable_pub)]

pub mod api;
pub mod bench;
pub mod config;
pub mod contacts;
pub mod ctl;
pub mod daemon;
pub mod demo;
pub mod devbus;
pub mod domain;
mod engine;
pub mod logging;
pub mod logind;
pub mod manpage;
pub mod mmsim;
pub mod modem;
pub mod net;
pub mod notifier;
// Their items stay `pub`: the fuzz crate compiles these files as a library of its own.
#[allow(unreachable_pub)]
mod number;
pub mod relay;
mod router;
pub mod sms_apps;
#[allow(unreachable_pub)]
mod sms_text;
pub mod store;
