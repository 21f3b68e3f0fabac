//! Contact names (and photos) for phone numbers, from the user's address books.
//!
//! Owns: the answer to "who is this number?" for the rest of the daemon, as a cheap,
//! clonable, never-blocking handle ([`Contacts`]). Must not: block a caller, fail a
//! caller (an unknown number, or no address book at all, is simply `None`), or be asked
//! over D-Bus per lookup: lookups read an in-memory snapshot.
//!
//! The snapshot is filled by [`Filler::follow`]: a task that owns a session-bus connection of its
//! own and follows Evolution Data Server's address books (`eds.rs`: the source registry,
//! each address book's live view), as Phosh, GNOME Contacts and Chatty do. Each contact's
//! vCard is read by `vcard.rs`, its numbers normalised to E.164 with [`crate::number`]
//! (the configured default region for numbers written nationally) by `index.rs`, which
//! keeps every contact of every book and builds the snapshot; inline photos are written
//! to private files by `photos.rs`. No address book (EDS not installed or not
//! activatable) is a debug log and a handle that knows no one, never an error.
//!
//! Bounds: at most [`MAX_BOOKS`] address books followed, [`MAX_CONTACTS`] contacts kept
//! (of all books), [`MAX_NUMBERS_PER_CONTACT`] numbers each, vCards of at most
//! [`MAX_VCARD_BYTES`], names cut to [`MAX_NAME_CHARS`] characters, inline photos of at
//! most [`MAX_PHOTO_BYTES`] and [`PHOTO_BUDGET_BYTES`] of them in all.

mod eds;
mod index;
mod photos;
mod vcard;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Most address books (EDS sources) followed at once.
pub const MAX_BOOKS: usize = 32;
/// Most contacts kept, of all address books together.
pub const MAX_CONTACTS: usize = 10_000;
/// Most numbers kept of one contact.
pub const MAX_NUMBERS_PER_CONTACT: usize = 16;
/// Largest vCard read, in bytes (a bigger one is skipped); room for an inline photo.
pub const MAX_VCARD_BYTES: usize = 1024 * 1024;
/// Longest name kept, in characters (a longer one is cut).
pub const MAX_NAME_CHARS: usize = 128;
/// Largest inline photo written to the cache, in bytes once decoded.
pub const MAX_PHOTO_BYTES: usize = 512 * 1024;
/// Most bytes of inline photos in the cache directory, in all.
pub const PHOTO_BUDGET_BYTES: u64 = 32 * 1024 * 1024;

/// What the address book says about one number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// The name to show ("Alice Martin"), never empty.
    pub name: String,
    /// A local image file of the contact's photo, when the address book has one.
    pub photo: Option<PathBuf>,
}

/// Every known number (normalised, E.164 where it can be) with its contact.
pub type Book = HashMap<String, Contact>;

/// Handle to the address book snapshot; cheap to clone, lookups never block.
#[derive(Debug, Clone)]
pub struct Contacts {
    book: watch::Receiver<Arc<Book>>,
}

impl Contacts {
    /// A handle that knows no one (no address book configured or reachable).
    pub fn none() -> Contacts {
        let (_tx, book) = watch::channel(Arc::new(Book::new()));
        Contacts { book }
    }

    /// The contact of `number` (as stored: E.164, or a sender name kept verbatim).
    pub fn lookup(&self, number: &str) -> Option<Contact> {
        self.book.borrow().get(number).cloned()
    }

    /// A receiver that sees each new snapshot (the address book changed).
    pub fn changes(&self) -> watch::Receiver<Arc<Book>> {
        self.book.clone()
    }
}

/// What the address-book task needs to know.
#[derive(Debug, Clone)]
pub struct ContactsConfig {
    /// Region of the numbers written without `+country` (the daemon's `default_region`).
    pub default_region: Option<String>,
    /// Where inline photos are written (a private directory of the daemon's state).
    pub photo_dir: PathBuf,
}

/// A handle that knows no one yet, and what fills it once [`Filler::follow`] starts
/// following the address books (the daemon starts that after its own start-up work).
pub fn pending() -> (Contacts, Filler) {
    let (tx, book) = watch::channel(Arc::new(Book::new()));
    (Contacts { book }, Filler(tx))
}

/// Fills the [`Contacts`] handle made with it by [`pending`].
#[derive(Debug)]
pub struct Filler(watch::Sender<Arc<Book>>);

impl Filler {
    /// A receiver of the snapshots this fills.
    pub fn changes(&self) -> watch::Receiver<Arc<Book>> {
        self.0.subscribe()
    }

    /// Starts following the address books on the session bus at `address` (`None`: the
    /// usual one), in a task of its own, stopped when [`Following`] is dropped. The
    /// handle knows no one until the first address book is read, and stays so when
    /// there is none.
    pub fn follow(self, address: Option<String>, config: ContactsConfig) -> Following {
        Following(tokio::spawn(eds::run(address, config, self.0)))
    }
}

/// The task that follows the address books; dropping this stops it (its connection to
/// the bus closes, and [`Contacts::changes`] ends).
#[derive(Debug)]
pub struct Following(JoinHandle<()>);

impl Drop for Following {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nobody_is_known_without_an_address_book() {
        assert_eq!(Contacts::none().lookup("+15551234567"), None);
    }
}
