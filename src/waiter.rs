//! One held request (`Waiter`), how it parks (`Hold`), and the sweeper thread that ends the ones
//! whose time is up.
//!
//! Who wakes whom:
//! - a publisher wakes the waiters registered on the symbol it changed ([`Waiter::wake`]);
//! - the sweeper thread wakes waiters whose deadline passed, and all of them on shutdown; it also
//!   ends idle keep-alive connections (anything that implements [`Expire`]);
//! - the client's socket wakes its own held request when the client goes away: the connection
//!   layer's [`Hold`] parks in may's `wait_io`, so one park covers a change, a deadline and the
//!   socket, and a request whose client has left is freed at once instead of at its deadline;
//! - the waiting handler coroutine itself only parks, and marks itself done when it returns.
//!
//! Why a sweeper instead of `park(Some(timeout))`: every park with a timeout registers with may's
//! single timer thread, and every early wake must cancel that timer with a futex wake of that
//! thread (measured: ~3.5 µs per waiter, 14% of a 10,000-waiter fan-out). Waiters here park with
//! no timeout; one heap of deadlines, swept by one thread, bounds every wait instead.

use std::cmp::Ordering as CmpOrdering;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WAITING: u8 = 0;
const WOKEN: u8 = 1;
const DONE: u8 = 2;

/// How a waiter's wake reaches the one who waits on it.
pub enum Parker {
    /// A coroutine parked with `may::coroutine::park`.
    Coroutine(may::coroutine::Coroutine),
    /// A plain thread (unit tests).
    Thread(std::thread::Thread),
    /// A coroutine parked in `wait_io` on its client's socket (the native connection layer).
    Io(may::io::WaitIoWaker),
}

impl Parker {
    /// The parker of the calling coroutine, or thread.
    pub fn current() -> Parker {
        if may::coroutine::is_coroutine() {
            Parker::Coroutine(may::coroutine::current())
        } else {
            Parker::Thread(std::thread::current())
        }
    }
}

/// What a park ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parked {
    /// Woken, or nothing in particular: look at the waiter's state again.
    Again,
    /// The client closed its connection (FIN or RST): stop waiting for it.
    ClientGone,
}

/// Where a held request parks. Implemented by the connection layer on its socket; [`PlainHold`]
/// where there is no socket to watch.
pub trait Hold {
    /// A handle that wakes [`Hold::park`]; taken once per wait.
    fn parker(&self) -> Parker;
    /// Park until woken, or until the client's socket has news. May return early for no reason.
    fn park(&self) -> Parked;
}

/// A hold with no socket: parks the calling coroutine (or thread) and never sees a client leave.
pub struct PlainHold;

impl Hold for PlainHold {
    fn parker(&self) -> Parker {
        Parker::current()
    }

    fn park(&self) -> Parked {
        if may::coroutine::is_coroutine() {
            may::coroutine::park();
        } else {
            // Only ever a plain thread (tests): never a may worker.
            std::thread::park();
        }
        Parked::Again
    }
}

/// A held request (poll or stream) waiting on one or more symbols. Shared (`Arc`) between the
/// handler coroutine that parks on it, the waiter lists of the symbols it follows, and the
/// sweeper's deadline heap.
///
/// It wakes the coroutine itself (a handle to the coroutine, or its socket's `wait_io`) rather
/// than a `may::sync::Blocker`, which would allocate a park of its own: a held request is 48 bytes
/// smaller, which counts at tens of thousands of them.
pub struct Waiter {
    state: AtomicU8,
    parker: Parker,
}

impl Waiter {
    /// A waiter woken through `parker`: [`Hold::parker`] of the hold that will wait on it.
    pub fn new(parker: Parker) -> Arc<Waiter> {
        Arc::new(Waiter {
            state: AtomicU8::new(WAITING),
            parker,
        })
    }

    /// Wake the waiter if it is still waiting. Only the first wake unparks; later ones are no-ops,
    /// so a waiter registered on several symbols is woken once however many of them change.
    pub fn wake(&self) {
        if self
            .state
            .compare_exchange(WAITING, WOKEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            match &self.parker {
                Parker::Coroutine(co) => co.unpark(),
                Parker::Thread(t) => t.unpark(),
                Parker::Io(waker) => waker.wakeup(),
            }
        }
    }

    /// Park on `hold` until woken; the sweeper guarantees a wake by the deadline. Returns
    /// [`Parked::ClientGone`] instead when the hold sees the client leave first.
    pub fn wait(&self, hold: &dyn Hold) -> Parked {
        // Every park keeps a wake token (a flag on the socket for `wait_io`), so a wake that lands
        // before we park is not lost. A token left over from an earlier wait of the same coroutine
        // only makes one park return early: the loop checks this waiter's own state again.
        while self.state.load(Ordering::Acquire) == WAITING {
            if hold.park() == Parked::ClientGone {
                return Parked::ClientGone;
            }
        }
        Parked::Again
    }

    /// The poll has been answered: waiter lists and the deadline heap may drop this entry.
    pub fn finish(&self) {
        self.state.store(DONE, Ordering::Release);
    }

    pub fn is_done(&self) -> bool {
        self.state.load(Ordering::Acquire) == DONE
    }
}

/// Something the sweeper ends at a deadline: a parked poll, or an idle connection.
pub trait Expire: Send + Sync {
    /// Called at (or after) the deadline, or for every entry once the server shuts down.
    /// Returns a later deadline to be called again at, or `None` when finished.
    fn expire(&self, now: Instant, shutting_down: bool) -> Option<Instant>;
    /// Finished early: the sweeper may drop the entry without calling it.
    fn is_done(&self) -> bool;
}

impl Expire for Waiter {
    fn expire(&self, _now: Instant, _shutting_down: bool) -> Option<Instant> {
        self.wake();
        None
    }
    fn is_done(&self) -> bool {
        Waiter::is_done(self)
    }
}

struct Entry {
    deadline: Instant,
    item: Arc<dyn Expire>,
}

// Ordered so that the heap's top is the earliest deadline.
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> CmpOrdering {
        other.deadline.cmp(&self.deadline)
    }
}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<CmpOrdering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.deadline == other.deadline
    }
}
impl Eq for Entry {}

/// The sweeper thread's own deadline heap (no lock: only that thread touches it).
struct Deadlines {
    heap: BinaryHeap<Entry>,
    // Answered polls stay in the heap until their deadline; when the heap reaches this size it is
    // compacted, and the next threshold is twice what survived: O(1) per entry amortized.
    compact_at: usize,
}

impl Deadlines {
    fn new() -> Deadlines {
        Deadlines {
            heap: BinaryHeap::new(),
            compact_at: MIN_COMPACT,
        }
    }

    fn push(&mut self, e: Entry) {
        if self.heap.len() >= self.compact_at {
            self.heap.retain(|e| !e.item.is_done());
            self.compact_at = (self.heap.len() * 2).max(MIN_COMPACT);
        }
        self.heap.push(e);
    }
}

/// Ends long-polls at their deadline. Handlers hand their deadlines over through a lock-free
/// queue, so registering a poll never waits on a lock shared by every poll; the sweeper thread
/// moves them into its private heap and wakes the expired ones.
pub struct Sweeper {
    incoming: may::queue::mpsc::Queue<Entry>,
    shutting_down: AtomicBool,
}

/// How often the sweeper looks at its heap: a timeout fires at most this late.
const SWEEP_TICK: Duration = Duration::from_millis(5);
const MIN_COMPACT: usize = 1024;

impl Sweeper {
    pub fn new() -> Arc<Sweeper> {
        Arc::new(Sweeper {
            incoming: may::queue::mpsc::Queue::new(),
            shutting_down: AtomicBool::new(false),
        })
    }

    /// Arrange for `waiter` to be woken at `deadline`. Returns false when the server is shutting
    /// down: the caller answers at once instead of parking. (A waiter added while shutdown begins
    /// is still woken: the sweeper wakes everything it receives from then on.)
    pub fn add(&self, deadline: Instant, item: Arc<dyn Expire>) -> bool {
        if self.is_shutting_down() {
            return false;
        }
        self.incoming.push(Entry { deadline, item });
        true
    }

    /// Take in new deadlines, wake every waiter whose deadline is at or before `now` (all of
    /// them once shutting down); returns the next deadline.
    fn sweep(&self, d: &mut Deadlines, now: Instant) -> Option<Instant> {
        while let Some(e) = self.incoming.pop() {
            d.push(e);
        }
        let all = self.is_shutting_down();
        let mut again = Vec::new();
        while d.heap.peek().is_some_and(|e| all || e.deadline <= now) {
            if let Some(e) = d.heap.pop() {
                if e.item.is_done() {
                    continue;
                }
                if let Some(next) = e.item.expire(now, all) {
                    // Never re-arm at or before now, or this loop would not end.
                    let deadline = next.max(now + Duration::from_millis(1));
                    again.push(Entry {
                        deadline,
                        item: e.item,
                    });
                }
            }
        }
        for e in again {
            d.push(e);
        }
        d.heap.peek().map(|e| e.deadline)
    }

    /// Refuse new waits and wake every waiting poll (they answer empty) within one sweep tick.
    pub fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Run the sweeper on its own OS thread (not a may worker: it sleeps with `std::thread::sleep`)
    /// until the process exits. It keeps running through shutdown, so no waiter added late is
    /// left parked.
    pub fn spawn(self: &Arc<Self>) -> std::io::Result<std::thread::JoinHandle<()>> {
        let me = Arc::clone(self);
        std::thread::Builder::new()
            .name("sweeper".into())
            .spawn(move || {
                let mut deadlines = Deadlines::new();
                loop {
                    let now = Instant::now();
                    let next = me.sweep(&mut deadlines, now);
                    let nap = next
                        .map(|n| n.saturating_duration_since(now))
                        .unwrap_or(SWEEP_TICK)
                        .clamp(Duration::from_millis(1), SWEEP_TICK);
                    std::thread::sleep(nap);
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn waiter() -> Arc<Waiter> {
        Waiter::new(Parker::current())
    }

    #[test]
    fn wake_before_wait_is_not_lost() {
        let w = waiter();
        w.wake();
        assert_eq!(w.wait(&PlainHold), Parked::Again); // returns at once
        w.finish();
        assert!(w.is_done());
    }

    #[test]
    fn sweep_wakes_only_expired_waiters() {
        let s = Sweeper::new();
        let mut d = Deadlines::new();
        let now = Instant::now();
        let early = waiter();
        let late = waiter();
        assert!(s.add(now, early.clone()));
        assert!(s.add(now + Duration::from_secs(60), late.clone()));
        let next = s.sweep(&mut d, now + Duration::from_millis(1));
        assert_eq!(next, Some(now + Duration::from_secs(60)));
        early.wait(&PlainHold); // woken by the sweep
        assert_eq!(late.state.load(Ordering::Acquire), WAITING);
    }

    #[test]
    fn shutdown_wakes_all_and_refuses_new_waits() {
        let s = Sweeper::new();
        let mut d = Deadlines::new();
        let w = waiter();
        assert!(s.add(Instant::now() + Duration::from_secs(60), w.clone()));
        s.sweep(&mut d, Instant::now());
        s.shutdown();
        assert!(!s.add(Instant::now(), waiter()));
        assert_eq!(s.sweep(&mut d, Instant::now()), None);
        w.wait(&PlainHold);
        assert!(s.is_shutting_down());
    }

    #[test]
    fn answered_waiters_are_compacted_out_of_the_heap() {
        let mut d = Deadlines::new();
        let far = Instant::now() + Duration::from_secs(60);
        for _ in 0..(MIN_COMPACT * 3) {
            let w = waiter();
            w.finish();
            d.push(Entry {
                deadline: far,
                item: w,
            });
        }
        assert!(d.heap.len() <= MIN_COMPACT + 1);
    }
}
