//! The quote book: each symbol's price, sequence number and waiters, and where a long-poll waits.
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
//! the next cursor; a quote with `seq > g` is left for the next poll, which answers at once.
//!
//! Seqs start at the server's start time in microseconds, so a cursor kept from an earlier run sorts
//! below every seq of this run (the client gets everything), and a cursor above the counter can
//! only come from elsewhere: it is answered with a full snapshot and the current cursor.
//!
//! # The wake-up path (the hot path)
//! A poll registers one [`Waiter`] on each symbol it follows, then parks with no timer. Each symbol
//! keeps one waiter list per may worker, and a poll registers on the list of the worker whose
//! epoll owns its socket (its *lane*, `fd % workers`, given by the connection layer). A change
//! swaps each list out under that list's lock and wakes it outside the lock: small lists inline,
//! large ones from one short coroutine spawned on that list's worker, whose unparks are plain
//! pushes onto that worker's own run queue. So a connection's coroutine is woken, answers, and
//! reads its next poll on one worker, as nginx workers own their connections: no eventfd write
//! per waiter, no coroutine hopping between cores, and two workers registering never contend for
//! one lock. (Measured, 10,000 subscribers of one symbol on 2 workers: server CPU per delivery
//! 27.9 -> 23.6 µs, see bench/README.md.) Woken handlers copy the pre-serialized quote bytes
//! straight into their answer.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::{ArcSwap, Guard};
use may::sync::Mutex;
use serde::Serialize;

use crate::error::ApiError;
use crate::metrics::{Metrics, Reason};
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

/// A quote as the cluster's Redis holds it (`cluster`): the seq and time it was given there, the
/// price, and the symbol's opening price that `change` is measured from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RemoteQuote {
    pub seq: u64,
    pub ts: u64,
    pub price: f64,
    pub open: f64,
}

/// A symbol's latest quote as readers see it: immutable, replaced whole at every change.
struct Latest {
    quote: Quote,
    /// `quote` serialized once per change; every answer that carries it copies these bytes.
    json: Box<[u8]>,
}

/// A loaded quote, seen as its JSON bytes by [`Answer::build`].
struct LatestJson(Guard<Arc<Latest>>);

impl AsRef<[u8]> for LatestJson {
    fn as_ref(&self) -> &[u8] {
        &self.0.json
    }
}

/// Polls waiting for a symbol's next change, on one lane. May hold answered (done) waiters of
/// polls that were woken by another symbol; they are pruned when the list grows.
struct WaiterList {
    waiters: Vec<Arc<Waiter>>,
    prune_at: usize,
}

/// A symbol in the book: its latest quote, the lock that orders its publishers, and its waiters.
/// Touched by publishers (change), by polls (register, read) and by nobody else. Its locks are
/// `may::sync::Mutex`es, so a contended lock parks the coroutine, not the thread.
pub struct Symbol {
    /// Read without a lock by every answer (module doc).
    latest: ArcSwap<Latest>,
    /// Up while a publisher holds a seq it has not stored yet (module doc).
    publishing: AtomicBool,
    /// Held by a publisher from taking its seq to storing its quote; guards the opening price
    /// `change` is measured from.
    publisher: Mutex<f64>,
    /// One list per lane (may worker); see the module doc.
    lanes: Box<[Mutex<WaiterList>]>,
}

const MIN_PRUNE: usize = 64;

fn lock<T>(m: &Mutex<T>) -> may::sync::MutexGuard<'_, T> {
    // A panic while holding one of these locks would be a bug in this module; the state is still
    // consistent field by field, so keep serving rather than poison every later request.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Symbol {
    fn new(quote: Quote, lanes: usize) -> Symbol {
        let open = quote.price;
        Symbol {
            latest: ArcSwap::from_pointee(Latest {
                json: serialize(&quote),
                quote,
            }),
            publishing: AtomicBool::new(false),
            publisher: Mutex::new(open),
            lanes: (0..lanes.max(1))
                .map(|_| {
                    Mutex::new(WaiterList {
                        waiters: Vec::new(),
                        prune_at: MIN_PRUNE,
                    })
                })
                .collect(),
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

    /// Wake every waiter of every lane (module doc). Call after the change is visible.
    pub fn wake_all(&self) {
        for (lane, list) in self.lanes.iter().enumerate() {
            let waiters = {
                let mut list = lock(list);
                list.prune_at = MIN_PRUNE;
                std::mem::take(&mut list.waiters)
            };
            wake(lane, waiters);
        }
    }

    /// Register `w` on `lane` for the next change unless the symbol already changed after
    /// `cursor`. Returns true when it has (the caller answers at once instead of parking).
    fn register(&self, cursor: u64, w: &Arc<Waiter>, lane: usize) -> bool {
        let mut list = lock(&self.lanes[lane % self.lanes.len()]);
        // Read under the list lock: a publisher stores its quote before it takes the lists, so
        // either it sees `w` in the list or we see its quote here.
        if self.latest.load().quote.seq > cursor {
            return true;
        }
        if list.waiters.len() >= list.prune_at {
            list.waiters.retain(|w| !w.is_done());
            list.prune_at = (list.waiters.len() * 2).max(MIN_PRUNE);
        }
        list.waiters.push(Arc::clone(w));
        false
    }
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

fn round_cents(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn serialize(q: &Quote) -> Box<[u8]> {
    // A Quote has no maps and only finite floats (checked at publish), so this cannot fail.
    serde_json::to_vec(q)
        .unwrap_or_else(|_| b"{}".to_vec())
        .into()
}

/// An answer to a snapshot or a poll: `{"cursor":N,"quotes":[...]}`, built once from the
/// pre-serialized quotes.
#[derive(Debug, Clone)]
pub struct Answer {
    pub cursor: u64,
    /// How many quotes `json` carries.
    pub quotes: usize,
    pub json: Vec<u8>,
    pub reason: Reason,
}

impl Answer {
    /// `{"cursor":N,"quotes":[...]}` from pre-serialized quotes.
    fn build<B: AsRef<[u8]>>(
        cursor: u64,
        reason: Reason,
        quotes: impl Iterator<Item = B>,
    ) -> Answer {
        // Room for a few quotes of ~110 bytes; one allocation for the usual answer.
        let mut json = Vec::with_capacity(256);
        // Writing into a Vec cannot fail; no temporary String for the number.
        let _ = write!(json, "{{\"cursor\":{cursor},\"quotes\":[");
        let mut n = 0;
        for q in quotes {
            if n > 0 {
                json.push(b',');
            }
            json.extend_from_slice(q.as_ref());
            n += 1;
        }
        json.extend_from_slice(b"]}");
        Answer {
            cursor,
            quotes: n,
            json,
            reason,
        }
    }

    /// No quotes: a timeout or shutdown answer, which hands the same cursor back.
    fn empty(cursor: u64, reason: Reason) -> Answer {
        Answer::build(cursor, reason, std::iter::empty::<&[u8]>())
    }
}

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

/// Lists up to this long are woken inline by the publisher; longer ones from a coroutine on their
/// own worker (module doc). Waking inline saves a spawn, but queues the woken coroutines on the
/// publisher's worker.
const INLINE_WAKE_MAX: usize = 16;

/// All symbols, the seq counter and the wake machinery. Shared by every handler and the feed.
pub struct QuoteBook {
    /// Name -> symbol, read without a lock by every request; grows when a publish creates one.
    symbols: Table<Symbol>,
    /// The last seq handed out. Incremented only under the changed symbol's publisher lock.
    seq: AtomicU64,
    /// Waiter lists per symbol: one per may worker.
    lanes: usize,
    /// How long a poll or stream with a cursor above this node's waits for the node to catch up
    /// before taking it for a cursor from elsewhere: 0 alone (no other node hands out cursors),
    /// a moment in a cluster (another node may have applied a change this one has not yet).
    catch_up: Duration,
    sweeper: Arc<Sweeper>,
    metrics: Arc<Metrics>,
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
            catch_up: Duration::ZERO,
            sweeper: Sweeper::new(),
            metrics,
        })
    }

    /// A book for a cluster node: seqs come from Redis (`apply_remote`), and a cursor up to
    /// `catch_up` ahead of this node is waited for rather than resynchronised.
    pub fn for_cluster(
        max_symbols: usize,
        lanes: usize,
        catch_up: Duration,
        metrics: Arc<Metrics>,
    ) -> Arc<QuoteBook> {
        Arc::new(QuoteBook {
            symbols: Table::new(max_symbols),
            seq: AtomicU64::new(0),
            lanes: lanes.max(1),
            catch_up,
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
                    self.metrics
                        .symbols
                        .store(self.symbols.len() as u64, Ordering::Relaxed);
                }
                Ok((sym, new))
            }
            Err(Full { max }) => Err(ApiError::SymbolLimit { max }),
        }
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
            self.metrics
                .symbols
                .store(self.symbols.len() as u64, Ordering::Relaxed);
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
            sym.latest.store(Arc::new(Latest {
                json: serialize(&quote),
                quote,
            }));
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

    /// Whether `cursor` is one this book could have handed out, for a stream that resumes. One
    /// above the counter is waited for (up to the catch-up time: in a cluster another node may
    /// be a change ahead); one still above it after that comes from elsewhere (an earlier run,
    /// another cluster), and is answered with a full snapshot. A stream opens once, so a check
    /// every millisecond does; a long-poll, which a client hopping between nodes sends with
    /// such a cursor all the time, waits on its symbols instead (`wait_to_catch_up`).
    pub fn is_future(&self, cursor: u64) -> bool {
        if cursor <= self.current_seq() {
            return false;
        }
        let until = Instant::now() + self.catch_up;
        while Instant::now() < until {
            nap();
            if cursor <= self.current_seq() {
                return false;
            }
        }
        true
    }

    /// A long-poll whose cursor is ahead of this node: in a cluster, the client had its last
    /// answer from a node that has applied a change this one is still receiving from Redis.
    /// The poll waits for it like for any change, on its symbols' waiter lists (a node that
    /// hops is answered the moment the change it waits for lands here, with no polling of the
    /// counter). `None` when the node is still behind the cursor after the catch-up time (or
    /// at once, alone): the cursor comes from elsewhere and the caller resynchronises.
    /// `wait_until(t)` is the poll's own wait on its symbols from `cursor`, up to `t`.
    fn wait_to_catch_up(
        &self,
        symbols: &[&Symbol],
        cursor: u64,
        deadline: Instant,
        wait_until: impl Fn(Instant) -> Wait,
    ) -> Option<Wait> {
        if self.catch_up.is_zero() {
            return None;
        }
        let behind_until = (Instant::now() + self.catch_up).min(deadline);
        loop {
            // A change at or below the cursor (one the client already has) also wakes the
            // waiter, and comes back as a Timeout with nothing to answer: look again.
            match wait_until(behind_until) {
                Wait::Timeout => {}
                other => return Some(other),
            }
            if cursor <= self.current_seq() {
                // Caught up: from here it is an ordinary poll.
                return Some(wait_until(deadline));
            }
            if Instant::now() >= behind_until {
                return None;
            }
            if symbols.iter().any(|s| s.latest.load().quote.seq > cursor) {
                // A change above the cursor is stored but the counter is not yet moved past it
                // (`apply_remote`, then `advance`): registering again would return at once.
                // Let the applying thread finish.
                nap();
            }
        }
    }

    /// Store a change that Redis gave its seq (`cluster`), creating the symbol if new, unless
    /// the book already has this one or a later one. Returns the symbol to wake, which the caller
    /// does only after [`QuoteBook::advance`]: a woken poll reads the counter first, and must
    /// find it at or past the change that woke it.
    pub fn apply_remote(&self, name: &str, q: RemoteQuote) -> Option<&Symbol> {
        let quote = |symbol: Arc<str>| Quote {
            symbol,
            price: q.price,
            change: round_cents(q.price - q.open),
            seq: q.seq,
            ts: q.ts,
        };
        let created = self.symbols.get_or_insert_with(name, |name| {
            let sym = Symbol::new(quote(name), self.lanes);
            *lock(&sym.publisher) = q.open;
            sym
        });
        let (sym, new) = match created {
            Ok(found) => found,
            Err(Full { max }) => {
                log::warn!("not following {name}: this node holds at most {max} symbols");
                return None;
            }
        };
        if new {
            self.metrics
                .symbols
                .store(self.symbols.len() as u64, Ordering::Relaxed);
            return Some(sym);
        }
        let mut open = lock(&sym.publisher);
        let current = sym.latest.load();
        if current.quote.seq >= q.seq {
            return None;
        }
        *open = q.open;
        let quote = quote(Arc::clone(&current.quote.symbol));
        sym.latest.store(Arc::new(Latest {
            json: serialize(&quote),
            quote,
        }));
        Some(sym)
    }

    /// Move the cursor of "now" up to `seq` (never down), once the changes up to it are stored.
    pub fn advance(&self, seq: u64) {
        self.seq.fetch_max(seq, Ordering::SeqCst);
    }

    /// Every symbol's latest quote with its opening price, for writing back to Redis.
    pub fn remote_quotes(&self) -> Vec<(String, RemoteQuote)> {
        self.symbols
            .names()
            .iter()
            .filter_map(|name| {
                let sym = self.symbols.get(name)?;
                let open = *lock(&sym.publisher);
                let q = sym.latest.load();
                Some((
                    name.to_string(),
                    RemoteQuote {
                        seq: q.quote.seq,
                        ts: q.quote.ts,
                        price: q.quote.price,
                        open,
                    },
                ))
            })
            .collect()
    }

    /// Wait until one of `symbols` has changed after `cursor`, until `deadline`, or until the
    /// hold sees the client leave; the heart of both the long-poll and the stream. `lane` is the
    /// caller's socket's lane ([`QuoteBook::lane_of`]): any value is correct, the right one is
    /// faster. `waiting` is the gauge that counts the caller while it is parked.
    pub fn wait_since(
        &self,
        symbols: &[&Symbol],
        cursor: u64,
        deadline: Instant,
        lane: usize,
        hold: &dyn Hold,
        waiting: &AtomicU64,
    ) -> Wait {
        let waiter = Waiter::new(hold.parker());
        let ready = symbols.iter().any(|s| s.register(cursor, &waiter, lane));
        let mut gone = false;
        if !ready && self.sweeper.add(deadline, waiter.clone()) {
            waiting.fetch_add(1, Ordering::Relaxed);
            gone = waiter.wait(hold) == Parked::ClientGone;
            waiting.fetch_sub(1, Ordering::Relaxed);
        }
        // Lets the waiter lists and the sweeper drop their entries.
        waiter.finish();
        if gone {
            return Wait::ClientGone;
        }
        let answer = self.changes_since(symbols, cursor);
        if answer.quotes > 0 {
            Wait::Changed(answer)
        } else if self.sweeper.is_shutting_down() {
            Wait::Shutdown
        } else {
            Wait::Timeout
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
        let waiting = &self.metrics.polls_waiting;
        // No cursor means "from now".
        let from = cursor.unwrap_or_else(|| self.current_seq());
        let wait_until = |until| self.wait_since(symbols, from, until, lane, hold, waiting);
        let waited = if from > self.current_seq() {
            match self.wait_to_catch_up(symbols, from, deadline, wait_until) {
                Some(waited) => waited,
                None => {
                    // Not a cursor this node (or its cluster) handed out: resynchronise.
                    let mut a = self.snapshot(symbols);
                    a.reason = Reason::Resync;
                    return Some(self.count(a));
                }
            }
        } else {
            wait_until(deadline)
        };
        let answer = match waited {
            Wait::Changed(answer) => answer,
            // The same cursor back, as the contract says.
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

/// Wake one lane's list of waiters (module doc): inline when short, else from a coroutine spawned
/// on the lane's worker, so each unpark is a push onto that worker's own run queue.
fn wake(lane: usize, waiters: Vec<Arc<Waiter>>) {
    if waiters.len() <= INLINE_WAKE_MAX {
        waiters.iter().for_each(|w| w.wake());
        return;
    }
    let builder = may::coroutine::Builder::new().id(lane);
    let spawned = may::go!(builder, move || waiters.iter().for_each(|w| w.wake()));
    if let Err(e) = spawned {
        // The waiters stay parked until their deadline; nothing else is lost.
        log::error!("cannot spawn the wake-up coroutine of lane {lane}: {e}");
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

    /// A cluster node's book holding IBM at seq 100, with a running sweeper.
    fn cluster_book(catch_up: Duration) -> Arc<QuoteBook> {
        let b = QuoteBook::for_cluster(10, 1, catch_up, Arc::new(Metrics::default()));
        b.start_threads().unwrap();
        apply(&b, "IBM", 100);
        b
    }

    /// What the cluster's subscriber does with a change from Redis: store, advance, wake.
    fn apply(b: &QuoteBook, name: &str, seq: u64) {
        let q = RemoteQuote {
            seq,
            ts: seq,
            price: seq as f64,
            open: 1.0,
        };
        let sym = b.apply_remote(name, q);
        b.advance(seq);
        if let Some(sym) = sym {
            sym.wake_all();
        }
    }

    fn wait_until_polls_waiting(b: &QuoteBook, n: u64) {
        for _ in 0..10_000 {
            if b.metrics.polls_waiting.load(Ordering::Relaxed) == n {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("never {n} polls waiting");
    }

    #[test]
    fn a_poll_ahead_of_a_cluster_node_waits_for_the_change_and_skips_what_it_has() {
        let b = cluster_book(Duration::from_secs(60));
        let poller = {
            let b = Arc::clone(&b);
            std::thread::spawn(move || {
                let syms = b.resolve(&["IBM".into()]).unwrap();
                b.poll(&syms, Some(105), Duration::from_secs(60), 0, &PlainHold)
            })
        };
        wait_until_polls_waiting(&b, 1);
        // The change the client already saw on another node lands here: nothing to answer.
        apply(&b, "IBM", 105);
        wait_until_polls_waiting(&b, 1);
        assert!(!poller.is_finished());
        apply(&b, "IBM", 107);
        let a = poller.join().unwrap().unwrap();
        assert_eq!(a.reason, Reason::Change);
        assert_eq!(a.cursor, 107);
        assert_eq!(parsed(&a)[0]["seq"], 107);
    }

    #[test]
    fn a_poll_still_ahead_after_the_catch_up_time_resyncs() {
        let b = cluster_book(Duration::from_millis(20));
        let syms = b.resolve(&["IBM".into()]).unwrap();
        let a = b
            .poll(&syms, Some(500), Duration::from_secs(60), 0, &PlainHold)
            .unwrap();
        assert_eq!(a.reason, Reason::Resync);
        assert_eq!(a.cursor, 100);
        assert_eq!(parsed(&a)[0]["seq"], 100);
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

    #[test]
    fn answer_json_joins_preserialized_quotes() {
        let a = Answer::build(
            7,
            Reason::Change,
            [&b"{\"a\":1}"[..], &b"{\"b\":2}"[..]].into_iter(),
        );
        assert_eq!(a.json, b"{\"cursor\":7,\"quotes\":[{\"a\":1},{\"b\":2}]}");
        assert_eq!(a.quotes, 2);
        assert_eq!(
            Answer::empty(9, Reason::Timeout).json,
            b"{\"cursor\":9,\"quotes\":[]}"
        );
    }
}
