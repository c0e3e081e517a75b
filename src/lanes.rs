//! Waiter lanes: a symbol's held requests, one list per may worker, and how a change wakes them.
//!
//! A poll or stream registers on the list of the worker whose epoll owns its socket (its *lane*,
//! `fd % workers`, given by the connection layer). A change swaps each list out under that list's
//! lock and wakes it outside the lock: small lists inline, large ones from one short coroutine
//! spawned on that list's worker, whose unparks are plain pushes onto that worker's own run
//! queue. So a connection's coroutine is woken, answers, and reads its next poll on one worker,
//! as nginx workers own their connections: no eventfd write per waiter, no coroutine hopping
//! between cores, and two workers registering never contend for one lock. (Measured, 10,000
//! subscribers of one symbol on 2 workers: server CPU per delivery 27.9 -> 23.6 µs, see
//! bench/README.md.)

use std::sync::Arc;

use may::sync::Mutex;

use crate::waiter::Waiter;

/// Lists up to this long are woken inline by the publisher; longer ones from a coroutine on their
/// own worker. Waking inline saves a spawn, but queues the woken coroutines on the publisher's
/// worker.
const INLINE_WAKE_MAX: usize = 16;
const MIN_PRUNE: usize = 64;

/// Lock a may mutex of the book. A panic while holding one would be a bug in the book; the state
/// is still consistent field by field, so keep serving rather than poison every later request.
pub fn lock<T>(m: &Mutex<T>) -> may::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Requests waiting for a symbol's next change, on one lane. May hold answered (done) waiters of
/// requests that were woken by another symbol; they are pruned when the list grows.
struct WaiterList {
    waiters: Vec<Arc<Waiter>>,
    prune_at: usize,
}

/// One symbol's waiter lists, one per lane (may worker). Their locks are `may::sync::Mutex`es, so
/// a contended lock parks the coroutine, not the thread.
pub struct Lanes {
    lists: Box<[Mutex<WaiterList>]>,
}

impl Lanes {
    pub fn new(lanes: usize) -> Lanes {
        Lanes {
            lists: (0..lanes.max(1))
                .map(|_| {
                    Mutex::new(WaiterList {
                        waiters: Vec::new(),
                        prune_at: MIN_PRUNE,
                    })
                })
                .collect(),
        }
    }

    /// Register `w` on `lane` for the next change, unless `changed()`, asked under the list's
    /// lock, says the change it waits for is already there: then return true, and the caller
    /// answers at once instead of parking. A publisher stores its change before it takes the
    /// lists (`wake_all`), so either it finds `w` in its list or `changed()` sees its change.
    pub fn register(&self, lane: usize, w: &Arc<Waiter>, changed: impl FnOnce() -> bool) -> bool {
        let mut list = lock(&self.lists[lane % self.lists.len()]);
        if changed() {
            return true;
        }
        if list.waiters.len() >= list.prune_at {
            list.waiters.retain(|w| !w.is_done());
            list.prune_at = (list.waiters.len() * 2).max(MIN_PRUNE);
        }
        list.waiters.push(Arc::clone(w));
        false
    }

    /// Wake every waiter of every lane. Call after the change is visible.
    pub fn wake_all(&self) {
        for (lane, list) in self.lists.iter().enumerate() {
            let waiters = {
                let mut list = lock(list);
                list.prune_at = MIN_PRUNE;
                std::mem::take(&mut list.waiters)
            };
            wake(lane, waiters);
        }
    }
}

/// Wake one lane's list of waiters: inline when short, else from a coroutine spawned on the lane's
/// worker, so each unpark is a push onto that worker's own run queue. When that coroutine cannot
/// be spawned (no stack to be had), inline all the same: the waiters are woken either way, and
/// the thread that publishes (the feed, the Redis subscriber) is never lost to the failure.
fn wake(lane: usize, waiters: Vec<Arc<Waiter>>) {
    if waiters.len() > INLINE_WAKE_MAX {
        let waiters = Arc::new(waiters);
        let theirs = Arc::clone(&waiters);
        let builder = may::coroutine::Builder::new().id(lane);
        // may panics when it cannot allocate the coroutine's stack.
        let spawned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            may::go!(builder, move || theirs.iter().for_each(|w| w.wake()))
        }));
        if matches!(spawned, Ok(Ok(_))) {
            return;
        }
        log::error!("cannot spawn the wake-up coroutine of lane {lane}; waking inline");
        waiters.iter().for_each(|w| w.wake());
        return;
    }
    waiters.iter().for_each(|w| w.wake());
}
