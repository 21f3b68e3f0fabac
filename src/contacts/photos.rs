//! The files of contacts' inline photos, so that frontends get a path like for the
//! photos the address book keeps as files itself.
//!
//! A directory of the daemon's own (mode 0700), one file per distinct image (mode 0600),
//! named by its SHA-256, so writing the same photo again is a no-op and two contacts with
//! one photo share a file. At most [`PHOTO_BUDGET_BYTES`] in all: a photo that would go
//! over is not written (its contact keeps its name). Files no contact refers to any more
//! are removed by [`PhotoCache::prune`]. Blocking file I/O: the caller runs it off the
//! async runtime's thread.

use std::collections::{HashMap, HashSet};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use tracing::{debug, warn};

use super::PHOTO_BUDGET_BYTES;

/// The photo directory and what is in it.
#[derive(Debug)]
pub(super) struct PhotoCache {
    dir: PathBuf,
    /// File name → size, of the photo files in `dir`.
    files: HashMap<String, u64>,
    budget: u64,
}

impl PhotoCache {
    /// The cache in `dir` (made, private, with its first photo); the files already there
    /// count.
    pub(super) fn open(dir: &Path) -> PhotoCache {
        PhotoCache::with_budget(dir, PHOTO_BUDGET_BYTES)
    }

    pub(super) fn with_budget(dir: &Path, budget: u64) -> PhotoCache {
        let mut files = HashMap::new();
        if let Ok(list) = std::fs::read_dir(dir) {
            for item in list.flatten() {
                let (Ok(name), Ok(meta)) = (item.file_name().into_string(), item.metadata()) else {
                    continue;
                };
                if meta.is_file() && !name.starts_with('.') {
                    files.insert(name, meta.len());
                }
            }
        }
        PhotoCache {
            dir: dir.to_owned(),
            files,
            budget,
        }
    }

    fn used(&self) -> u64 {
        self.files.values().sum()
    }

    /// The file holding `bytes` (written now if it is not there yet), or `None` when it
    /// would go over the budget or cannot be written.
    pub(super) fn store(&mut self, bytes: &[u8], extension: &str) -> Option<PathBuf> {
        let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
        let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        let name = format!("{hex}.{extension}");
        let path = self.dir.join(&name);
        if self.files.contains_key(&name) {
            return Some(path);
        }
        let size = bytes.len() as u64;
        if self.used() + size > self.budget {
            debug!(size, "contact photo not cached: over the photo budget");
            return None;
        }
        match make_private_dir(&self.dir).and_then(|()| write_private(&self.dir, &name, bytes)) {
            Ok(()) => {
                self.files.insert(name, size);
                Some(path)
            }
            Err(e) => {
                warn!(cause = %e, "cannot write a contact photo");
                None
            }
        }
    }

    /// Removes the files not in `keep`.
    pub(super) fn prune(&mut self, keep: &HashSet<&Path>) {
        let dir = self.dir.clone();
        self.files.retain(|name, _| {
            let path = dir.join(name);
            if keep.contains(path.as_path()) {
                return true;
            }
            match std::fs::remove_file(&path) {
                Ok(()) => false,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
                Err(e) => {
                    warn!(cause = %e, "cannot remove an old contact photo");
                    true
                }
            }
        });
    }
}

/// Makes `dir` (and its parents) if missing, and private (0700).
fn make_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Writes `bytes` to `dir/name` with mode 0600, whole or not at all (a temporary file
/// renamed).
fn write_private(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_file(&tmp);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes));
    match written.and_then(|()| std::fs::rename(&tmp, dir.join(name))) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "tandem-photos-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        dir.join("contact-photos")
    }

    #[test]
    fn photos_are_private_shared_bounded_and_pruned() {
        let dir = temp();
        let mut cache = PhotoCache::with_budget(&dir, 10);
        assert!(!dir.exists(), "made with the first photo only");
        let a = cache.store(b"aaaa", "png").expect("stored");
        assert_eq!(std::fs::read(&a).expect("file"), b"aaaa");
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&a), 0o600);
        assert_eq!(mode(&dir), 0o700);
        // The same photo again is the same file, and costs nothing more.
        assert_eq!(cache.store(b"aaaa", "png"), Some(a.clone()));
        let b = cache.store(b"bbbbbb", "jpg").expect("stored");
        assert_ne!(a, b);
        // 4 + 6 bytes used of 10: nothing more fits.
        assert_eq!(cache.store(b"c", "gif"), None);
        // Reopened, the files there count.
        let mut cache = PhotoCache::with_budget(&dir, 10);
        assert_eq!(cache.store(b"c", "gif"), None);
        cache.prune(&HashSet::from([b.as_path()]));
        assert!(!a.exists());
        assert!(b.exists());
        assert!(cache.store(b"c", "gif").is_some());
        let listed = std::fs::read_dir(&dir).expect("dir").count();
        assert_eq!(listed, 2, "no temporary file is left");
        std::fs::remove_dir_all(dir.parent().expect("parent")).expect("clean up");
    }
}
