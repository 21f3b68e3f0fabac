//! Contact names (and photos) for phone numbers, from the user's address books.
//!
//! Owns: the answer to "who is this number?" for the rest of the daemon, as a cheap,
//! clonable, never-blocking handle ([`Contacts`]). Must not: block a caller, fail a
//! caller (an unknown number, or no address book at all, is simply `None`), or be asked
//! over D-Bus per lookup: lookups read an in-memory snapshot.
//!
//! This file is the seam only: [`Contacts::none`] knows no one. The adapter that fills
//! the snapshot from Evolution Data Server replaces the inside, not the handle.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::watch;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nobody_is_known_without_an_address_book() {
        assert_eq!(Contacts::none().lookup("+15551234567"), None);
    }
}
