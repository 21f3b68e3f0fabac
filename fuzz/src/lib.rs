//! The parsers of `tandem` that take outside bytes, compiled from the crate's own source
//! files and nothing else, under the crate's module paths (`tandem::number`, ...).
//!
//! Why not a dependency on the `tandem` crate: the fuzz build instruments everything it
//! compiles, and the whole crate (D-Bus, tokio, SQLite, TLS) takes four times as long to
//! build as these modules and their few dependencies, on every CI run. The files are the
//! same ones the daemon and the relay are built from; a parser that starts to need
//! another module of the crate gets it added here.

#[path = "../../src/config.rs"]
pub mod config;

#[path = "../../src/number.rs"]
pub mod number;

#[path = "../../src/sms_text.rs"]
pub mod sms_text;

#[path = "../../src/modem/timestamp.rs"]
mod timestamp;

#[doc(hidden)]
#[path = "../../src/relay/protocol.rs"]
pub mod relay_protocol;

pub mod modem {
    //! `modem::parse_mm_timestamp`, as the crate exports it.
    pub use super::timestamp::parse_mm_timestamp;
}

pub mod relay {
    //! The relay's wire protocol.
    pub use super::relay_protocol as protocol;
}
