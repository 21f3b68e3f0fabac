//! The store as an actor: one std::thread ("tandem-store") owns the [`Store`] and runs
//! the closures sent to it one after the other, so SQLite I/O never blocks the async
//! runtime and there is never more than one writer. It knows nothing of what the
//! closures do; it must not hold the store anywhere else.
//!
//! Searches, whose cost depends on what the caller asks, run on a second thread
//! ("tandem-search") with a read-only use of a connection of its own, opened at the first
//! search ([`StoreHandle::call_read`]): a costly search then delays other searches, never
//! a send or an incoming message. An in-memory store has no second connection; its reads
//! run on the store thread.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;

use tokio::sync::oneshot;
use tracing::{debug, error};

use super::{Result, Store, StoreError};

/// One unit of work for the store thread.
type Job = Box<dyn FnOnce(&mut Store) + Send>;

/// A cheap, cloneable handle to the store thread.
#[derive(Clone)]
pub struct StoreHandle {
    /// Work for the store thread. A std channel: sending never blocks (unbounded) and
    /// the thread blocks on it without a runtime. When the last handle is dropped the
    /// thread ends and closes the database.
    jobs: mpsc::Sender<Job>,
    /// Reads for the search thread; `None` for an in-memory store (or when that thread
    /// could not start): then they go to `jobs`.
    reads: Option<mpsc::Sender<Job>>,
}

impl std::fmt::Debug for StoreHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreHandle").finish_non_exhaustive()
    }
}

impl StoreHandle {
    /// Starts the store thread. If the thread cannot be started (the system is out of
    /// threads), the error is logged and every call returns [`StoreError::Closed`].
    pub fn spawn(store: Store) -> StoreHandle {
        let reads = store.file_path().and_then(|path| {
            let (reads, queue) = mpsc::channel::<Job>();
            let started = thread::Builder::new()
                .name("tandem-search".to_owned())
                .spawn(move || run_reader(path, queue));
            match started {
                Ok(_) => Some(reads),
                Err(err) => {
                    error!(cause = %err, "cannot start the search thread; searching on the store thread");
                    None
                }
            }
        });
        let (jobs, queue) = mpsc::channel::<Job>();
        let started = thread::Builder::new()
            .name("tandem-store".to_owned())
            .spawn(move || run(store, queue));
        if let Err(err) = started {
            error!(cause = %err, "cannot start the store thread");
        }
        StoreHandle { jobs, reads }
    }

    /// Runs f on the store thread and returns its result; Err(Closed) if the thread is gone.
    pub async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |store| {
            // The caller may have gone away (its future dropped): nothing to tell then.
            let _ = reply.send(f(store));
        });
        self.jobs.send(job).map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs f, which must only read, on the search thread's own connection (it sees every
    /// committed write); on the store thread for an in-memory store. Err(Closed) if the
    /// thread is gone or its connection cannot be opened (logged).
    pub async fn call_read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let Some(reads) = &self.reads else {
            return self.call(f).await;
        };
        let (reply, answer) = oneshot::channel();
        let job: Job = Box::new(move |store| {
            let _ = reply.send(f(store));
        });
        reads.send(job).map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

/// The search thread: opens its connection at the first job (a daemon that is never
/// asked to search never pays for it), again after a failure.
fn run_reader(path: PathBuf, queue: mpsc::Receiver<Job>) {
    let mut reader: Option<Store> = None;
    while let Ok(job) = queue.recv() {
        if reader.is_none() {
            match Store::open_reader(&path) {
                Ok(store) => reader = Some(store),
                Err(err) => {
                    // Dropping the job tells its caller Closed.
                    error!(cause = %err, path = %path.display(), "cannot open the search connection");
                    continue;
                }
            }
        }
        if let Some(store) = reader.as_mut()
            && catch_unwind(AssertUnwindSafe(|| job(store))).is_err()
        {
            error!("a search job panicked");
        }
    }
    debug!("search thread finished");
}

fn run(mut store: Store, queue: mpsc::Receiver<Job>) {
    debug!("store thread started");
    while let Ok(job) = queue.recv() {
        // A panicking job rolls its transaction back as it unwinds (rusqlite's guard) and
        // its caller gets Closed; the store itself stays usable for everyone else.
        if catch_unwind(AssertUnwindSafe(|| job(&mut store))).is_err() {
            error!("a store job panicked; its transaction was rolled back");
        }
    }
    debug!("store thread finished");
}
