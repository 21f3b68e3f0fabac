//! relay: the IP channel's server side, `tandem-relay`, and its wire protocol.
//!
//! - [`protocol`]: the versioned JSON frames, shared with the daemon's relay client.
//! - [`client`]: the daemon's relay client, a task behind two channels.
//! - [`server`]: the relay server: `run(listener, config, shutdown)`, its SQLite
//!   database, presence and store-and-forward.
//!
//! The relay is a separate program that happens to live in this crate. Its SQL stays in
//! `server::db` (the daemon's `store` remains the only SQL of the daemon), and nothing in
//! the daemon may depend on `server`: the daemon's client uses [`protocol`] only.
//! `docs/relay-protocol.md` is the protocol's normative description.

pub mod client;
pub mod protocol;
pub mod server;

pub use server::{RelayConfig, RelayError, Verify, run};
