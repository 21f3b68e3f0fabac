//! server::outbox: one connection's queue of items from the hub.
//!
//! Owns a bounded FIFO between exactly one producer (the hub's thread, [`OutboxTx`]) and
//! one consumer (the connection's task, [`OutboxRx`]). It exists instead of a tokio
//! `mpsc` channel for memory: an empty outbox holds no buffer at all (a tokio channel
//! allocates a block of 32 slots up front, about 1.8 KB per idle connection); the buffer
//! is allocated when items arrive and freed when the consumer has taken the last one.
//!
//! It is bounded twice: in items, and in bytes ([`Weigh`]), so what one connection that
//! does not read can make the relay hold is bounded whatever its frames' sizes.
//!
//! Must not: block or wait on either side (a push to a full outbox fails at once; the
//! hub decides what that means), or hold its lock while waking the consumer.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

/// What an item costs in an outbox's byte bound.
pub(super) trait Weigh {
    /// The bytes the item holds (its frame's text), as counted against the bound.
    fn weight(&self) -> usize;
}

/// Creates an outbox that holds at most `capacity` items and `max_bytes` bytes of them.
pub(super) fn outbox<T: Weigh>(capacity: usize, max_bytes: usize) -> (OutboxTx<T>, OutboxRx<T>) {
    let shared = Arc::new(Shared {
        capacity,
        max_bytes,
        inner: Mutex::new(Inner {
            queue: VecDeque::new(),
            bytes: 0,
            waker: None,
            tx_gone: false,
            rx_gone: false,
        }),
    });
    (OutboxTx(shared.clone()), OutboxRx(shared))
}

struct Shared<T> {
    capacity: usize,
    max_bytes: usize,
    inner: Mutex<Inner<T>>,
}

struct Inner<T> {
    queue: VecDeque<T>,
    /// The weight of everything in `queue`.
    bytes: usize,
    /// The consumer waiting for an item.
    waker: Option<Waker>,
    tx_gone: bool,
    rx_gone: bool,
}

impl<T> Shared<T> {
    /// Both sides only push, pop and set flags under the lock: a panic cannot leave the
    /// queue half-changed, so a poisoned lock is still consistent.
    fn lock(&self) -> MutexGuard<'_, Inner<T>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Why a push failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum PushError {
    /// The consumer is there but has not taken what is queued: a client that does not
    /// read (or whose network cannot carry its frames).
    #[error("the outbox is full")]
    Full,
    /// The consumer is gone: the connection ended.
    #[error("the connection is gone")]
    Closed,
}

/// Why no item could be taken now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TryRecvError {
    /// Nothing queued; more may come.
    Empty,
    /// Nothing queued, and the producer is gone.
    Closed,
}

/// The producer's end (the hub's). Dropping it ends the stream once the consumer has
/// taken what is queued.
pub(super) struct OutboxTx<T>(Arc<Shared<T>>);

impl<T: Weigh> OutboxTx<T> {
    /// Items and bytes queued and not yet taken.
    pub(super) fn queued(&self) -> (usize, usize) {
        let inner = self.0.lock();
        (inner.queue.len(), inner.bytes)
    }

    /// Queues `item`, or fails at once if it does not fit (in items or in bytes) or the
    /// consumer is gone.
    pub(super) fn push(&self, item: T) -> Result<(), PushError> {
        let weight = item.weight();
        let waker = {
            let mut inner = self.0.lock();
            if inner.rx_gone {
                return Err(PushError::Closed);
            }
            if inner.queue.len() >= self.0.capacity
                || inner.bytes.saturating_add(weight) > self.0.max_bytes
            {
                return Err(PushError::Full);
            }
            inner.bytes += weight;
            inner.queue.push_back(item);
            inner.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }
}

impl<T> Drop for OutboxTx<T> {
    fn drop(&mut self) {
        let waker = {
            let mut inner = self.0.lock();
            inner.tx_gone = true;
            inner.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The consumer's end (the connection task's).
pub(super) struct OutboxRx<T>(Arc<Shared<T>>);

impl<T: Weigh> OutboxRx<T> {
    /// The next item; `None` once the producer is gone and everything was taken.
    pub(super) async fn recv(&mut self) -> Option<T> {
        std::future::poll_fn(|cx| self.poll_recv(cx)).await
    }

    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut inner = self.0.lock();
        if let Some(item) = pop(&mut inner) {
            return Poll::Ready(Some(item));
        }
        if inner.tx_gone {
            return Poll::Ready(None);
        }
        match &mut inner.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// The next item if one is queued.
    pub(super) fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let mut inner = self.0.lock();
        match pop(&mut inner) {
            Some(item) => Ok(item),
            None if inner.tx_gone => Err(TryRecvError::Closed),
            None => Err(TryRecvError::Empty),
        }
    }
}

impl<T> Drop for OutboxRx<T> {
    fn drop(&mut self) {
        let queue = {
            let mut inner = self.0.lock();
            inner.rx_gone = true;
            inner.waker = None;
            std::mem::take(&mut inner.queue)
        };
        // The items are dropped outside the lock.
        drop(queue);
    }
}

/// Takes the first item; frees the buffer when that empties the queue, so an idle
/// connection holds none.
fn pop<T: Weigh>(inner: &mut Inner<T>) -> Option<T> {
    let item = inner.queue.pop_front()?;
    inner.bytes -= item.weight();
    if inner.queue.is_empty() {
        inner.queue = VecDeque::new();
    }
    Some(item)
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Weigh for i32 {
        fn weight(&self) -> usize {
            0
        }
    }

    impl Weigh for &str {
        fn weight(&self) -> usize {
            self.len()
        }
    }

    #[tokio::test]
    async fn bounded_fifo_that_ends_after_its_producer() {
        let (tx, mut rx) = outbox(2, 0);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Empty));
        tx.push(1).unwrap();
        tx.push(2).unwrap();
        assert_eq!(tx.push(3), Err(PushError::Full));
        assert_eq!(rx.recv().await, Some(1));
        tx.push(3).unwrap();
        drop(tx);
        assert_eq!(rx.try_recv(), Ok(2));
        assert_eq!(rx.recv().await, Some(3));
        assert_eq!(rx.recv().await, None);
        assert_eq!(rx.try_recv(), Err(TryRecvError::Closed));
    }

    #[tokio::test]
    async fn a_push_wakes_the_waiting_consumer_and_fails_once_it_is_gone() {
        let (tx, mut rx) = outbox(4, 100);
        let waiter = tokio::spawn(async move {
            let first = rx.recv().await;
            (first, rx)
        });
        tokio::task::yield_now().await;
        tx.push("x").unwrap();
        let (first, rx) = waiter.await.unwrap();
        assert_eq!(first, Some("x"));
        drop(rx);
        assert_eq!(tx.push("y"), Err(PushError::Closed));
    }

    #[tokio::test]
    async fn bounded_in_bytes_too() {
        let (tx, mut rx) = outbox(100, 10);
        tx.push("abcd").unwrap();
        tx.push("efgh").unwrap();
        assert_eq!(tx.queued(), (2, 8));
        // One more item fits the count but not the bytes.
        assert_eq!(tx.push("ijk"), Err(PushError::Full));
        tx.push("ij").unwrap();
        assert_eq!(rx.recv().await, Some("abcd"));
        assert_eq!(tx.queued(), (2, 6));
        tx.push("klmn").unwrap();
        assert_eq!(tx.push(""), Ok(()));
        assert_eq!(tx.push("x"), Err(PushError::Full));
        drop(rx);
        assert_eq!(tx.push("x"), Err(PushError::Closed));
    }
}
