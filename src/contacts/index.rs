//! Every contact of every followed address book, and the snapshot built from them.
//!
//! Contacts are kept by (address book, contact UID), as the address books' views add,
//! change and remove them; each with its name, its numbers normalised like messages'
//! peers ([`crate::number::normalize`] with the configured default region: E.164, or a
//! short code as written), and its photo file. The snapshot ([`Index::snapshot`]) maps
//! each number to its contact; when two contacts share a number, the one of the first
//! address book (by source UID), then of the first UID, wins, so the answer does not
//! depend on the order things arrived in. Pure: no I/O.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{Book, Contact, MAX_CONTACTS};
use crate::number;

/// What is kept of one contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) name: String,
    /// Normalised, without duplicates.
    pub(super) numbers: Vec<String>,
    pub(super) photo: Option<PathBuf>,
}

/// The numbers of `written` (a contact's `TEL`s) normalised: E.164 or a short code; what
/// is neither (a national number without a region, an extension, a word) is left out.
pub(super) fn normalise_numbers(written: &[String], region: Option<&str>) -> Vec<String> {
    let mut numbers: Vec<String> = Vec::new();
    for n in written {
        let Ok(normal) = number::normalize(n, region) else {
            continue;
        };
        let usable = number::is_e164(&normal) || normal.bytes().all(|b| b.is_ascii_digit());
        if usable && !numbers.contains(&normal) {
            numbers.push(normal);
        }
    }
    numbers
}

/// The contacts of all address books, at most `max` of them.
#[derive(Debug)]
pub(super) struct Index {
    /// (address book's source UID, contact UID) → contact.
    entries: BTreeMap<(String, String), Entry>,
    max: usize,
}

impl Default for Index {
    fn default() -> Self {
        Index::new(MAX_CONTACTS)
    }
}

impl Index {
    pub(super) fn new(max: usize) -> Index {
        Index {
            entries: BTreeMap::new(),
            max,
        }
    }

    /// Adds or replaces a contact; `false` (and nothing kept) when it is new and the
    /// index is full.
    pub(super) fn put(&mut self, book: &str, uid: &str, entry: Entry) -> bool {
        let key = (book.to_owned(), uid.to_owned());
        if let Some(kept) = self.entries.get_mut(&key) {
            *kept = entry;
            return true;
        }
        if self.entries.len() >= self.max {
            return false;
        }
        self.entries.insert(key, entry);
        true
    }

    /// Removes a contact; whether it was there.
    pub(super) fn remove(&mut self, book: &str, uid: &str) -> bool {
        self.entries
            .remove(&(book.to_owned(), uid.to_owned()))
            .is_some()
    }

    /// Removes every contact of an address book; whether there were any.
    pub(super) fn remove_book(&mut self, book: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|(b, _), _| b != book);
        before != self.entries.len()
    }

    pub(super) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The photo files the contacts refer to.
    pub(super) fn photos(&self) -> impl Iterator<Item = &PathBuf> {
        self.entries.values().filter_map(|e| e.photo.as_ref())
    }

    /// Every number with its contact.
    pub(super) fn snapshot(&self) -> Book {
        let mut book = Book::new();
        for entry in self.entries.values() {
            for number in &entry.numbers {
                book.entry(number.clone()).or_insert_with(|| Contact {
                    name: entry.name.clone(),
                    photo: entry.photo.clone(),
                });
            }
        }
        book
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, numbers: &[&str]) -> Entry {
        Entry {
            name: name.into(),
            numbers: numbers.iter().map(|n| (*n).to_owned()).collect(),
            photo: None,
        }
    }

    fn name_of(index: &Index, number: &str) -> Option<String> {
        index.snapshot().get(number).map(|c| c.name.clone())
    }

    #[test]
    fn numbers_are_normalised_like_peers() {
        let written: Vec<String> = [
            "(555) 987-6543",
            "+1 555 987 6543",
            "011 49 1512 3456789",
            "12345",
            "555-1234",
            "Home",
            "",
            "+1 555 987 6543 ext. 2",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        let rows: [(Option<&str>, &[&str]); 2] = [
            (Some("US"), &["+15559876543", "+4915123456789", "12345"]),
            // Without a region only numbers with their country code (and short codes)
            // can be read.
            (None, &["+15559876543", "12345"]),
        ];
        for (region, expected) in rows {
            assert_eq!(normalise_numbers(&written, region), expected, "{region:?}");
        }
    }

    #[test]
    fn contacts_come_and_go() {
        let mut index = Index::new(10);
        assert!(index.put("system", "a", entry("Alice", &["+15559876543"])));
        assert_eq!(name_of(&index, "+15559876543").as_deref(), Some("Alice"));
        // Edited: the new name and numbers replace the old ones.
        assert!(index.put("system", "a", entry("Alice M.", &["+15550001111"])));
        assert_eq!(name_of(&index, "+15559876543"), None);
        assert_eq!(name_of(&index, "+15550001111").as_deref(), Some("Alice M."));
        assert!(index.remove("system", "a"));
        assert!(!index.remove("system", "a"));
        assert!(index.snapshot().is_empty());
    }

    #[test]
    fn a_shared_number_goes_to_the_first_book_then_uid() {
        let mut index = Index::new(10);
        index.put("work", "b", entry("Bob (work)", &["+15552223333"]));
        index.put("personal", "z", entry("Bob", &["+15552223333"]));
        index.put(
            "personal",
            "y",
            entry("Robert", &["+15552223333", "+15554445555"]),
        );
        assert_eq!(name_of(&index, "+15552223333").as_deref(), Some("Robert"));
        assert_eq!(name_of(&index, "+15554445555").as_deref(), Some("Robert"));
        assert!(index.remove_book("personal"));
        assert!(!index.remove_book("personal"));
        assert_eq!(
            name_of(&index, "+15552223333").as_deref(),
            Some("Bob (work)")
        );
        assert_eq!(name_of(&index, "+15554445555"), None);
    }

    #[test]
    fn at_most_max_contacts_are_kept() {
        let mut index = Index::new(2);
        assert!(index.put("s", "1", entry("One", &["+15550000001"])));
        assert!(index.put("s", "2", entry("Two", &["+15550000002"])));
        assert!(!index.put("s", "3", entry("Three", &["+15550000003"])));
        assert_eq!(index.len(), 2);
        // A contact already kept may still change.
        assert!(index.put("s", "2", entry("Deux", &["+15550000002"])));
        assert_eq!(name_of(&index, "+15550000002").as_deref(), Some("Deux"));
        assert_eq!(name_of(&index, "+15550000003"), None);
    }
}
