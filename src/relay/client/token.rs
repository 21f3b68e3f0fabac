//! client::token: the device token file, the client's only file.
//!
//! Owns the file's format (a small JSON object: the number the token belongs to and the
//! token) and how it is written: a temporary file of mode 0600 in the same directory,
//! synced, then renamed over the old one, so a crash leaves the old token or the new one,
//! never half of one; missing parent directories are created with mode 0700. A file
//! found with another mode than 0600 is set back to it ([`make_private`]).
//! Must not: log the token (its `Debug` hides it), or decide when to register.

use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{ErrorKind, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tracing::warn;

/// Why the token file could not be read, written or removed.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the relay token {path:?}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the relay token file {path:?} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot write the relay token {path:?}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot remove the relay token {path:?}: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot make the relay token {path:?} private: {source}")]
    Mode {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A device token and the number it was issued for: a token is only used to log in as
/// that number (after a SIM change the client registers the new number instead).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredToken {
    pub number: String,
    pub token: String,
}

impl std::fmt::Debug for StoredToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredToken")
            .field("number", &self.number)
            .field("token", &"<secret>")
            .finish()
    }
}

/// Reads the token file; `Ok(None)` when there is none.
pub(crate) fn load(path: &Path) -> Result<Option<StoredToken>, TokenError> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(TokenError::Read {
                path: path.to_owned(),
                source,
            });
        }
    };
    make_private(path)?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|source| TokenError::Parse {
            path: path.to_owned(),
            source,
        })
}

/// Gives the token file mode 0600, whatever it had, with a log line when that changes
/// anything; no file is fine. The daemon calls it at start (relay configured or not: a
/// token left by an earlier configuration is a secret too), and [`load`] before reading.
pub fn make_private(path: &Path) -> Result<(), TokenError> {
    let mode = match fs::metadata(path) {
        Ok(meta) => meta.permissions().mode() & 0o7777,
        Err(err) if err.kind() == ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(TokenError::Mode {
                path: path.to_owned(),
                source,
            });
        }
    };
    if mode == 0o600 {
        return Ok(());
    }
    warn!(
        path = %path.display(),
        from = format_args!("{mode:o}"),
        "the relay token file was not private; making it 0600"
    );
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(|source| {
        TokenError::Mode {
            path: path.to_owned(),
            source,
        }
    })
}

/// Replaces the token file with `token` (mode 0600; parent directories made 0700).
pub(crate) fn save(path: &Path, token: &StoredToken) -> Result<(), TokenError> {
    let write_error = |source| TokenError::Write {
        path: path.to_owned(),
        source,
    };
    let parent = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)
        .map_err(write_error)?;
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_else(|| "relay-token".to_owned());
    let temp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    // A leftover of a crash may have another mode: start afresh.
    match fs::remove_file(&temp) {
        Ok(()) => {}
        Err(err) if err.kind() == ErrorKind::NotFound => {}
        Err(err) => return Err(write_error(err)),
    }
    let mut body = serde_json::to_vec(token).map_err(|err| write_error(err.into()))?;
    body.push(b'\n');
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        file.write_all(&body)?;
        file.sync_all()?;
        fs::rename(&temp, path)
    })();
    if let Err(err) = written {
        let _ = fs::remove_file(&temp);
        return Err(write_error(err));
    }
    // Make the rename itself durable; a failure here leaves a valid file anyway.
    if let Ok(dir) = fs::File::open(parent) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Removes the token file (a void token); no file is fine.
pub(crate) fn remove(path: &Path) -> Result<(), TokenError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == ErrorKind::NotFound => Ok(()),
        Err(source) => Err(TokenError::Remove {
            path: path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o777
    }

    #[test]
    fn save_load_replace_remove() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a/b/relay-token");
        assert!(load(&path).expect("load").is_none());

        let first = StoredToken {
            number: "+15550001111".to_owned(),
            token: "ab".repeat(32),
        };
        save(&path, &first).expect("save");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("a")), 0o700);
        assert_eq!(mode(&dir.path().join("a/b")), 0o700);
        assert_eq!(load(&path).expect("load"), Some(first.clone()));
        assert!(
            !format!("{first:?}").contains("abab"),
            "Debug shows the token"
        );

        let second = StoredToken {
            token: "cd".repeat(32),
            ..first
        };
        save(&path, &second).expect("replace");
        assert_eq!(load(&path).expect("load"), Some(second));
        assert_eq!(mode(&path), 0o600);
        let names: Vec<_> = fs::read_dir(dir.path().join("a/b"))
            .expect("list")
            .map(|entry| entry.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["relay-token"], "no temporary file is left");

        remove(&path).expect("remove");
        assert!(load(&path).expect("load").is_none());
        remove(&path).expect("removing nothing is fine");
    }

    #[test]
    fn a_token_file_of_any_mode_is_made_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("relay-token");
        make_private(&path).expect("no file is fine");
        let token = StoredToken {
            number: "+15550001111".to_owned(),
            token: "ef".repeat(32),
        };
        for loose in [0o644, 0o666, 0o400, 0o755] {
            save(&path, &token).expect("save");
            fs::set_permissions(&path, fs::Permissions::from_mode(loose)).expect("chmod");
            make_private(&path).expect("make private");
            assert_eq!(mode(&path), 0o600, "from {loose:o}");
            fs::set_permissions(&path, fs::Permissions::from_mode(loose)).expect("chmod");
            assert_eq!(load(&path).expect("load"), Some(token.clone()));
            assert_eq!(mode(&path), 0o600, "load, from {loose:o}");
        }
    }

    #[test]
    fn garbage_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("relay-token");
        fs::write(&path, "not json").expect("write");
        assert!(matches!(load(&path), Err(TokenError::Parse { .. })));
        let unwritable = dir.path().join("relay-token/inside");
        assert!(matches!(
            save(
                &unwritable,
                &StoredToken {
                    number: "+1555".to_owned(),
                    token: "t".to_owned()
                }
            ),
            Err(TokenError::Write { .. })
        ));
    }
}
