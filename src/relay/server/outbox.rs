//! server::outbox: one connection's queue of items from the hub.
//!
//! Owns a bounded FIFO between exactly one producer (the hub's thread, [`OutboxTx`]) and
//! one consumer (the connection's task, [`OutboxRx`]). It exists instead of a tokio
//! `mpsc` channel for memory: an empty outbox holds no buffer at all (a tokio channel
//! allocates a block of 32 slots up front, about 1.8 KB per idle connection); the buffer
//! is allocated when items arrive and freed when the consumer has taken the last one.
//!
//! Must not: block or wait on either side (a push to a full outbox fails at once; the
//! hub decides what that means), or hold its lock while waking the consumer.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

/// Creates an outbox that holds at most `capacity` items.
pub fn outbox<T>(capacity: usize) -> (OutboxTx<T>, OutboxRx<T>) {
    let shared = Arc::new(Shared {
        capacity,
        inner: Mutex::new(Inner {
            queue: VecDeque::new(),
            waker: None,
            tx_gone: false,
            rx_gone: false,
        }),
    });
    (OutboxTx(shared.clone()), OutboxRx(shared))
}

struct Shared<T> {
    capacity: usize,
    inner: Mutex<Inner<T>>,
}

struct Inner<T> {
    queue: VecDeque<T>,
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
pub enum PushError {
    #[error("the outbox is full")]
    Full,
    #[error("the connection is gone")]
    Closed,
}

/// Why no item could be taken now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TryRecvError {
    /// Nothing queued; more may come.
    Empty,
    /// Nothing queued, and the producer is gone.
    Closed,
}

/// The producer's end (the hub's). Dropping it ends the stream once the consumer has
/// taken what is queued.
pub struct OutboxTx<T>(Arc<Shared<T>>);

impl<T> OutboxTx<T> {
    /// Items queued and not yet taken.
    pub fn len(&self) -> usize {
        self.0.lock().queue.len()
    }

    /// Queues `item`, or fails at once if the outbox is full or its consumer gone.
    pub fn push(&self, item: T) -> Result<(), PushError> {
        let waker = {
            let mut inner = self.0.lock();
            if inner.rx_gone {
                return Err(PushError::Closed);
            }
            if inner.queue.len() >= self.0.capacity {
                return Err(PushError::Full);
            }
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
pub struct OutboxRx<T>(Arc<Shared<T>>);

impl<T> OutboxRx<T> {
    /// The next item; `None` once the producer is gone and everything was taken.
    pub async fn recv(&mut self) -> Option<T> {
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
    pub fn try_recv(&mut self) -> Result<T, TryRecvError> {
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
fn pop<T>(inner: &mut Inner<T>) -> Option<T> {
    let item = inner.queue.pop_front()?;
    if inner.queue.is_empty() {
        inner.queue = VecDeque::new();
    }
    Some(item)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_fifo_that_ends_after_its_producer() {
        let (tx, mut rx) = outbox(2);
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
        let (tx, mut rx) = outbox(4);
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
}
