//! The test kit, shared by every integration test: private D-Bus buses, the real
//! programs (`tandemd`, `tandem-mmsim`, `tandem-relay`) started on them with their logs
//! printed when a test fails, the relay in-process with a protocol client, options
//! dictionaries, and a log of every signal the daemon emits. Nothing here touches the
//! machine's real buses or any address but loopback: each test starts its own
//! `dbus-daemon`s, relays and directories and points the programs at them.
//!
//! Each test binary compiles the whole kit and uses a part of it, so unused items and
//! re-exports are allowed here, for the kit only (not in the tests themselves).

#![allow(dead_code, unused_imports)]

pub mod bus;
pub mod daemon;
pub mod eds;
pub mod faults;
pub mod nm;
pub mod notifications;
pub mod opts;
pub mod proc;
pub mod proxy;
pub mod relay;
pub mod relay_client;
pub mod signals;
pub mod sim;

pub use bus::{Bus, WAIT, eventually, temp_dir, wait_for};
pub use daemon::{Daemon, DaemonRig, Machine, Phone, client, config_for, config_with_relay};
pub use faults::{FaultRng, fault_points};
pub use nm::Nm;
pub use opts::{Dict, dict_str, get, no_opts, opts};
pub use proc::{Proc, Ran, program, signal};
pub use proxy::{counting_proxy, counting_server};
pub use relay::{Endpoint, LocalRelay, Relay, WsClient};
pub use relay_client::{RelayClient, client_config};
pub use signals::{Signal, SignalLog};
pub use sim::{Sim, SimCtl};
