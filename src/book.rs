//! The quote book: each symbol's price and sequence number, and where a long-poll or a stream
//! waits for the next change.
//!
//! # The invariant, and how the sequence numbers keep it
//! Every change takes the next value of one server-wide counter (`seq`) while it holds that
//! symbol's publisher lock, and stores it with the new price before letting go. A reader that first
//! loads the counter (`g`) and then reads each symbol must therefore see every change numbered
//! `<= g`. Readers take no lock: a symbol's latest quote is one immutable value swapped whole
//! ([`ArcSwap`]). The one moment a lock-free read could miss a change is between a publisher's
//! taking its seq and storing its quote, so the publisher raises the symbol's `publishing` flag
//! *before* it takes the seq and lowers it after the store; a reader that sees the flag up waits
//! for that publisher on its lock. (All four steps are `SeqCst`: if the seq is `<= g`, the flag
//! went up before the reader loaded `g`, so the reader sees it up, or sees the stored quote.)
//! An answer then carries every requested quote with `cursor < seq <= g` and hands back `g` as
//! the next cursor; a quote with `seq > g` is left for the next poll, which answers at once. So
//! no answer ever carries a quote its cursor already covers, and a cursor never goes back.
//!
//! Seqs start at the server's start time in microseconds, so a cursor kept from an earlier run sorts
//! below every seq of this run (the client gets everything), and a cursor above the counter can
//! only come from elsewhere: it is answered with a full snapshot and the current cursor. A cluster
//! node's book takes its seqs from Redis instead (`replica`), where a cursor above the counter
//! means the node is behind, and the client waits for it.
//!
//! # Waiting
//! A poll registers one [`Waiter`] on each symbol it follows (on its lane, `lanes`), then parks
//! with no timer; the sweeper ends it at its deadline. Woken handlers copy the pre-serialized
//! quote bytes straight into their answer (`answer`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, Guard};
use may::sync::Mutex;
use serde::Serialize;

pub use crate::answer::Answer;
use crate::error::ApiError;
use crate::lanes::{lock, Lanes};
use crate::metrics::{Gauge, Metrics, Reason};
use crate::table::{Full, Table};
use crate::waiter::{Hold, Parked, Sweeper, Waiter};

/// One quote as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Quote {
    pub symbol: Arc<str>,
    pub price: f64,
    pub change: f64,
    pub seq: u64,
    pub ts: u64,
}

/// A symbol's latest quote as readers see it: immutable, replaced whole at every change.
pub(crate) struct Latest {
    pub(crate) quote: Quote,
    /// `quote` serialized once per change; every answer that carries it copies these bytes.
    json: Box<[u8]>,
}

impl Latest {
    pub(crate) fn new(quote: Quote) -> Latest {
        Latest {
            json: serialize(&quote),
            quote,
        }
    }
}

/// A loaded quote, seen as its JSON bytes by [`Answer::build`].
struct LatestJson(Guard<Arc<Latest>>);

impl AsRef<[u8]> for LatestJson {
    fn as_ref(&self) -> &[u8] {
        &self.0.json
    }
}

/// A symbol in the book: its latest quote, the lock that orders its publishers, and its waiters.
/// Touched by publishers (change), by polls (register, read) and by nobody else.
pub struct Symbol {
    /// Read without a lock by every answer (module doc).
    pub(crate) latest: ArcSwap<Latest>,
    /// Up while a publisher holds a seq it has not stored yet (module doc).
    publishing: AtomicBool,
    /// Held by a publisher from taking its seq to storing its quote; guards the opening price
    /// `change` is measured from.
    pub(crate) publisher: Mutex<f64>,
    /// Who waits for this symbol's next change.
    lanes: Lanes,
}

impl Symbol {
    pub(crate) fn new(quote: Quote, lanes: usize) -> Symbol {
        let open = quote.price;
        Symbol {
            latest: ArcSwap::from_pointee(Latest::new(quote)),
            publishing: AtomicBool::new(false),
            publisher: Mutex::new(open),
            lanes: Lanes::new(lanes),
        }
    }

    /// The latest quote, complete up to every seq handed out before this call (module doc).
    /// The guard must not be held across a park: it borrows a slot of the current thread.
    fn latest(&self) -> Guard<Arc<Latest>> {
        if self.publishing.load(Ordering::SeqCst) {
            // A publisher is between taking a seq and storing it: wait for it on its lock.
            let _publisher = lock(&self.publisher);
            return self.latest.load();
        }
        self.latest.load()
    }

    pub fn quote(&self) -> Quote {
        self.latest.load().quote.clone()
    }

    /// Wake everyone waiting for this symbol. Call after the change is visible.
    pub fn wake_all(&self) {
        self.lanes.wake_all();
    }

    /// Register `w` on `lane` for the next change unless the symbol already changed after
    /// `cursor`. Returns true when it has (the caller answers at once instead of parking).
    fn register(&self, cursor: u64, w: &Arc<Waiter>, lane: usize) -> bool {
        // Read under the list's lock (`Lanes::register`): a publisher stores its quote before
        // it takes the lists.
        self.lanes
            .register(lane, w, || self.latest.load().quote.seq > cursor)
    }
}

pub(crate) fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

pub(crate) fn round_cents(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn serialize(q: &Quote) -> Box<[u8]> {
    // A Quote has no maps and only finite floats (checked at publish), so this cannot fail.
    serde_json::to_vec(q)
        .unwrap_or_else(|_| b"{}".to_vec())
        .into()
}

/// How far ahead of a cluster node's clock a cursor may be and still be one of its cluster's
/// (`QuoteBook::from_elsewhere`): clocks that disagree by an hour are broken, not skewed.
const FOREIGN_AHEAD_US: u64 = 3600 * 1_000_000;

/// How a wait for changes ended ([`QuoteBook::wait_since`]).
#[derive(Debug)]
pub enum Wait {
    /// Something newer than the cursor: the answer that carries it.
    Changed(Answer),
    /// Nothing changed before the deadline.
    Timeout,
    /// The server is shutting down.
    Shutdown,
    /// The client closed its connection while it waited.
    ClientGone,
}

/// Marks a waiter done when its wait ends, however it ends, so that the waiter lists and the
/// sweeper drop it.
struct Finish<'a>(&'a Waiter);

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        self.0.finish();
    }
}

/// All symbols, the seq counter and the wake machinery. Shared by every handler and the feed.
pub struct QuoteBook {
    /// Name -> symbol, read without a lock by every request; grows when a publish creates one.
    pub(crate) symbols: Table<Symbol>,
    /// The last seq handed out. Incremented only under the changed symbol's publisher lock
    /// (alone), or moved up by `advance` once Redis's changes are stored (a cluster node).
    pub(crate) seq: AtomicU64,
    /// Waiter lists per symbol: one per may worker.
    pub(crate) lanes: usize,
    /// A cluster node's book: seqs come from Redis, and a cursor above the counter means this
    /// node is behind (`replica`), not that the cursor comes from elsewhere.
    replica: bool,
    sweeper: Arc<Sweeper>,
    pub(crate) metrics: Arc<Metrics>,
}

impl QuoteBook {
    /// A book whose seqs start at the current time in microseconds, with one waiter lane per may
    /// worker.
    pub fn new(max_symbols: usize, lanes: usize, metrics: Arc<Metrics>) -> Arc<QuoteBook> {
        Self::with_first_seq(now_micros(), max_symbols, lanes, metrics)
    }

    pub fn with_first_seq(
        first_seq: u64,
        max_symbols: usize,
        lanes: usize,
        metrics: Arc<Metrics>,
    ) -> Arc<QuoteBook> {
        Arc::new(QuoteBook {
            symbols: Table::new(max_symbols),
            seq: AtomicU64::new(first_seq),
            lanes: lanes.max(1),
            replica: false,
            sweeper: Sweeper::new(),
            metrics,
        })
    }

    /// A book for a cluster node: seqs come from Redis (`apply_remote`), and a cursor ahead of
    /// this node is waited for, never resynchronised (`replica`).
    pub fn for_cluster(max_symbols: usize, lanes: usize, metrics: Arc<Metrics>) -> Arc<QuoteBook> {
        Arc::new(QuoteBook {
            symbols: Table::new(max_symbols),
            seq: AtomicU64::new(0),
            lanes: lanes.max(1),
            replica: true,
            sweeper: Sweeper::new(),
            metrics,
        })
    }

    /// Start the sweeper thread. Without it, polls never time out.
    pub fn start_threads(self: &Arc<Self>) -> std::io::Result<std::thread::JoinHandle<()>> {
        self.sweeper.spawn()
    }

    /// The deadline sweeper, shared with the connection layer for idle timeouts.
    pub fn sweeper(&self) -> &Arc<Sweeper> {
        &self.sweeper
    }

    /// The lane of a socket: the may worker whose epoll owns it (may registers fd % workers).
    pub fn lane_of(&self, fd: usize) -> usize {
        fd % self.lanes
    }

    /// The last seq handed out: the cursor of "now".
    pub fn current_seq(&self) -> u64 {
        self.seq.load(Ordering::SeqCst)
    }

    pub fn symbol_names(&self) -> Vec<Arc<str>> {
        self.symbols.names()
    }

    pub fn len(&self) -> usize {
        self.symbols.len()
    }

    pub fn is_empty(&self) -> bool {
        self.symbols.is_empty()
    }

    /// Look a (normalized) symbol up.
    pub fn get(&self, name: &str) -> Option<&Symbol> {
        self.symbols.get(name)
    }

    /// Resolve every name or fail on the first unknown one.
    pub fn resolve(&self, names: &[String]) -> Result<Vec<&Symbol>, ApiError> {
        names
            .iter()
            .map(|n| {
                self.symbols
                    .get(n)
                    .ok_or_else(|| ApiError::UnknownSymbol(n.clone()))
            })
            .collect()
    }

    fn get_or_create(&self, name: &str, price: f64) -> Result<(&Symbol, bool), ApiError> {
        let created = self
            .symbols
            .get_or_insert_with(name, |name| self.new_symbol(name, price));
        match created {
            Ok((sym, new)) => {
                if new {
                    self.count_symbols();
                }
                Ok((sym, new))
            }
            Err(Full { max }) => Err(ApiError::SymbolLimit { max }),
        }
    }

    pub(crate) fn count_symbols(&self) {
        self.metrics
            .symbols
            .store(self.symbols.len() as u64, Ordering::Relaxed);
    }

    /// A symbol opening at `price`. The creation is itself a change and takes a seq like any
    /// other, before the symbol becomes reachable (so no reader can see it without its seq).
    fn new_symbol(&self, name: Arc<str>, price: f64) -> Symbol {
        let quote = Quote {
            symbol: name,
            price,
            change: 0.0,
            seq: self.seq.fetch_add(1, Ordering::SeqCst) + 1,
            ts: now_micros(),
        };
        Symbol::new(quote, self.lanes)
    }

    /// Add a symbol at its opening price (start-up); an existing one is left as it is.
    pub fn add_symbol(&self, name: &str, price: f64) -> Result<(), ApiError> {
        self.get_or_create(name, price).map(|_| ())
    }

    /// Apply a batch of (symbol, price) changes, in order, all or none: the symbols it would
    /// create must all fit under `--max-symbols`, or nothing is applied. Returns the last seq.
    /// Prices must be finite and non-negative (the routes check them).
    pub fn publish_batch(&self, updates: &[(String, f64)]) -> Result<u64, ApiError> {
        let names: Vec<&str> = updates.iter().map(|(n, _)| n.as_str()).collect();
        // A new symbol opens at the first price the batch gives it; that creation is its change.
        let first_price = |name: &str| {
            updates
                .iter()
                .find(|(n, _)| n == name)
                .map_or(0.0, |(_, p)| *p)
        };
        let mut created = self
            .symbols
            .insert_missing(&names, |name| {
                let price = first_price(&name);
                self.new_symbol(name, price)
            })
            .map_err(|Full { max }| ApiError::SymbolLimit { max })?;
        if !created.is_empty() {
            self.count_symbols();
        }
        let mut seq = 0;
        for (name, price) in updates {
            if let Some(i) = created.iter().position(|c| **c == **name) {
                created.swap_remove(i);
                self.metrics.published.fetch_add(1, Ordering::Relaxed);
                seq = seq.max(self.get(name).map_or(0, |s| s.latest.load().quote.seq));
                continue;
            }
            seq = seq.max(self.publish(name, *price)?);
        }
        Ok(seq)
    }

    /// Set one symbol's price (creating the symbol if new) and wake its waiters. Returns the seq.
    /// `price` must be finite and non-negative (the routes check it).
    pub fn publish(&self, name: &str, price: f64) -> Result<u64, ApiError> {
        let (sym, created) = self.get_or_create(name, price)?;
        if created {
            self.metrics.published.fetch_add(1, Ordering::Relaxed);
            return Ok(sym.latest.load().quote.seq);
        }
        let seq = {
            let open = lock(&sym.publisher);
            // Flag up before the seq is taken, down after it is stored (module doc).
            sym.publishing.store(true, Ordering::SeqCst);
            let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
            let quote = Quote {
                symbol: Arc::clone(&sym.latest.load().quote.symbol),
                price,
                change: round_cents(price - *open),
                seq,
                ts: now_micros(),
            };
            sym.latest.store(Arc::new(Latest::new(quote)));
            sym.publishing.store(false, Ordering::SeqCst);
            seq
        };
        self.metrics.published.fetch_add(1, Ordering::Relaxed);
        // After the store: a poll registering from now on sees the new quote (`register`).
        sym.wake_all();
        Ok(seq)
    }

    /// The latest quotes of `symbols`, at once.
    pub fn snapshot(&self, symbols: &[&Symbol]) -> Answer {
        let cursor = self.current_seq();
        // Each guard lives only while its bytes are copied.
        let quotes = symbols.iter().map(|s| LatestJson(s.latest()));
        Answer::build(cursor, Reason::Snapshot, quotes)
    }

    /// Every quote of `symbols` with `cursor < seq <= g`, read after loading `g` (module doc).
    fn changes_since(&self, symbols: &[&Symbol], cursor: u64) -> Answer {
        let g = self.current_seq();
        let quotes = symbols
            .iter()
            .map(|s| s.latest())
            .filter(|l| l.quote.seq > cursor && l.quote.seq <= g)
            .map(LatestJson);
        Answer::build(g, Reason::Change, quotes)
    }

    /// Whether `cursor` comes from elsewhere (an earlier run, another server): above everything
    /// this book handed out, on a book that hands out its own seqs. Such a cursor is answered
    /// with a full snapshot. On a cluster node a cursor above the counter means the node is
    /// behind: the request waits for it to catch up (`replica`), and is never answered with a
    /// quote its cursor already covers; only one far ahead of any clock is from elsewhere.
    pub fn from_elsewhere(&self, cursor: u64) -> bool {
        if self.replica {
            // Seqs are Redis's clock in µs: a cursor more than an hour ahead of this node's
            // clock was never handed out by any node (a bogus or foreign one), and waiting for
            // the cluster to catch up with it would hold the client forever.
            return cursor > now_micros().saturating_add(FOREIGN_AHEAD_US);
        }
        cursor > self.current_seq()
    }

    /// Wait until one of `symbols` has changed after `cursor`, until `deadline`, or until the
    /// hold sees the client leave; the heart of both the long-poll and the stream. `lane` is the
    /// caller's socket's lane ([`QuoteBook::lane_of`]): any value is correct, the right one is
    /// faster. `waiting` is the gauge that counts the caller while it is parked.
    ///
    /// Returns `Changed` only with quotes after `cursor`, and `Timeout` only at the deadline: a
    /// wake that brings nothing newer (a change the client already has reaching a cluster node
    /// that is behind, or a change stored but not yet counted, see `replica`) waits again.
    pub fn wait_since(
        &self,
        symbols: &[&Symbol],
        cursor: u64,
        deadline: Instant,
        lane: usize,
        hold: &dyn Hold,
        waiting: &AtomicU64,
    ) -> Wait {
        loop {
            let waiter = Waiter::new(hold.parker());
            // However this wait ends, the waiter lists and the sweeper drop the waiter.
            let finish = Finish(&waiter);
            let ready = symbols.iter().any(|s| s.register(cursor, &waiter, lane));
            if !ready && self.sweeper.add(deadline, waiter.clone()) {
                let _parked = Gauge::enter(waiting);
                if waiter.wait(hold) == Parked::ClientGone {
                    return Wait::ClientGone;
                }
            }
            drop(finish);
            let answer = self.changes_since(symbols, cursor);
            if answer.quotes > 0 {
                return Wait::Changed(answer);
            }
            if self.sweeper.is_shutting_down() {
                return Wait::Shutdown;
            }
            if Instant::now() >= deadline {
                return Wait::Timeout;
            }
            if ready {
                // A change above the cursor is stored but the counter is not yet moved past it
                // (`apply_remote`, then `advance`): registering again would return at once.
                // Let the applying thread finish.
                nap();
            }
        }
    }

    /// The long-poll: answer with the quotes of `symbols` changed after `cursor`, waiting up to
    /// `timeout` for the first such change. `cursor: None` means "from now". `None` when the
    /// client left while it waited.
    pub fn poll(
        &self,
        symbols: &[&Symbol],
        cursor: Option<u64>,
        timeout: Duration,
        lane: usize,
        hold: &dyn Hold,
    ) -> Option<Answer> {
        // Round every wait up to at least 1 ms: the sweeper sleeps in whole milliseconds, and a
        // may wait under 1 ms never fires (should this ever wait on a may timer instead).
        let deadline = Instant::now() + timeout.max(Duration::from_millis(1));
        // No cursor means "from now".
        let from = cursor.unwrap_or_else(|| self.current_seq());
        if self.from_elsewhere(from) {
            // Not a cursor this server handed out: resynchronise.
            let mut a = self.snapshot(symbols);
            a.reason = Reason::Resync;
            return Some(self.count(a));
        }
        let waiting = &self.metrics.polls_waiting;
        let answer = match self.wait_since(symbols, from, deadline, lane, hold, waiting) {
            Wait::Changed(answer) => answer,
            // The same cursor back, as the contract says (also from a cluster node still
            // behind the client's cursor at the timeout).
            Wait::Timeout => Answer::empty(from, Reason::Timeout),
            Wait::Shutdown => Answer::empty(from, Reason::Shutdown),
            Wait::ClientGone => {
                self.metrics.clients_gone.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        Some(self.count(answer))
    }

    fn count(&self, a: Answer) -> Answer {
        self.metrics.count_answer(a.reason, a.quotes);
        a
    }

    /// Wake every waiting poll (answered empty) and refuse to park new ones.
    pub fn shutdown(&self) {
        self.sweeper.shutdown();
    }
}

/// Sleep 1 ms without blocking a may worker: a coroutine sleeps on may's timer, a plain thread
/// (tests, the cluster's threads) on the OS's.
fn nap() {
    if may::coroutine::is_coroutine() {
        may::coroutine::sleep(Duration::from_millis(1));
    } else {
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::waiter::PlainHold;

    fn book() -> Arc<QuoteBook> {
        let b = QuoteBook::with_first_seq(1000, 10, 2, Arc::new(Metrics::default()));
        b.add_symbol("IBM", 100.0).unwrap();
        b.add_symbol("MSFT", 200.0).unwrap();
        b
    }

    fn parsed(a: &Answer) -> Vec<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_slice(&a.json).unwrap();
        assert_eq!(v["cursor"], a.cursor);
        v["quotes"].as_array().unwrap().clone()
    }

    #[test]
    fn publish_sets_price_change_and_next_seq() {
        let b = book();
        let before = b.current_seq();
        let seq = b.publish("IBM", 101.26).unwrap();
        assert_eq!(seq, before + 1);
        let q = b.get("IBM").unwrap().quote();
        assert_eq!(q.price, 101.26);
        assert_eq!(q.change, 1.26);
        assert_eq!(q.seq, seq);
    }

    #[test]
    fn poll_returns_at_once_when_cursor_is_behind() {
        let b = book();
        let cursor = b.current_seq();
        b.publish("MSFT", 201.0).unwrap();
        let syms = b.resolve(&["IBM".into(), "MSFT".into()]).unwrap();
        let a = b
            .poll(&syms, Some(cursor), Duration::from_secs(60), 0, &PlainHold)
            .unwrap();
        assert_eq!(a.reason, Reason::Change);
        assert_eq!(a.cursor, b.current_seq());
        let q = parsed(&a);
        assert_eq!(q.len(), 1);
        assert_eq!(q[0]["symbol"], "MSFT");
    }

    #[test]
    fn poll_with_future_cursor_resyncs_with_full_snapshot() {
        let b = book();
        let syms = b.resolve(&["IBM".into(), "MSFT".into()]).unwrap();
        let a = b
            .poll(
                &syms,
                Some(u64::MAX),
                Duration::from_secs(60),
                1,
                &PlainHold,
            )
            .unwrap();
        assert_eq!(a.reason, Reason::Resync);
        assert_eq!(parsed(&a).len(), 2);
        assert_eq!(a.cursor, b.current_seq());
    }

    #[test]
    fn creating_a_symbol_over_the_limit_is_refused() {
        let b = QuoteBook::with_first_seq(1, 1, 1, Arc::new(Metrics::default()));
        b.publish("A", 1.0).unwrap();
        assert_eq!(b.publish("B", 1.0), Err(ApiError::SymbolLimit { max: 1 }));
    }

    #[test]
    fn a_batch_that_would_pass_the_symbol_limit_applies_nothing() {
        let b = QuoteBook::with_first_seq(1, 3, 1, Arc::new(Metrics::default()));
        b.publish("A", 1.0).unwrap();
        let before = b.current_seq();
        let batch = [
            ("A".to_string(), 2.0),
            ("B".into(), 3.0),
            ("C".into(), 4.0),
            ("D".into(), 5.0),
        ];
        assert_eq!(
            b.publish_batch(&batch),
            Err(ApiError::SymbolLimit { max: 3 })
        );
        assert_eq!(b.current_seq(), before);
        assert_eq!(b.get("A").unwrap().quote().price, 1.0);
        assert!(b.get("B").is_none());
        // Within the limit, the whole batch applies, in order.
        let seq = b.publish_batch(&batch[..3]).unwrap();
        assert_eq!(seq, b.current_seq());
        assert_eq!(b.get("A").unwrap().quote().price, 2.0);
        assert_eq!(b.get("C").unwrap().quote().price, 4.0);
    }
}
