//! The quote book: each symbol's price, sequence number and waiters, and where a long-poll waits.
//!
//! # The invariant, and how the sequence numbers keep it
//! Every change takes the next value of one server-wide counter (`seq`) *while holding that
//! symbol's lock*, and stores it with the new price before unlocking. A reader that first loads the
//! counter (`g`) and then locks each symbol therefore sees every change numbered `<= g`: the change
//! took its number before `g` was read, under the lock the reader takes afterwards. So an answer
//! carries every requested quote with `cursor < seq <= g` and hands back `g` as the next cursor;
//! a quote with `seq > g` (changed during the read) is left for the next poll, which answers at
//! once. Nothing changed after an answer can be missed by the next poll with its cursor.
//!
//! Seqs start at the server's start time in microseconds, so a cursor kept from an earlier run sorts
//! below every seq of this run (the client gets everything), and a cursor above the counter can
//! only come from elsewhere: it is answered with a full snapshot and the current cursor.
//!
//! # The wake-up path (the hot path)
//! A poll registers one [`Waiter`] on each symbol it follows, then parks with no timer. A change
//! swaps the symbol's waiter list out under the lock, serializes the new quote once, and wakes the
//! waiters outside the lock: no waiter ever queues on a shared lock to be woken. Woken handlers
//! copy the pre-serialized bytes (an `Arc<[u8]>` clone under a short per-symbol lock).

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use may::sync::{mpsc, Mutex};
use serde::Serialize;

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::table::{Full, Table};
use crate::waiter::{Sweeper, Waiter};

/// One quote as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Quote {
    pub symbol: Arc<str>,
    pub price: f64,
    pub change: f64,
    pub seq: u64,
    pub ts: u64,
}

/// A symbol's mutable state: all of it changes together, under [`Symbol`]'s lock.
struct SymbolState {
    quote: Quote,
    /// The first price of this run; `change` is measured from it.
    open: f64,
    /// `quote` serialized once per change; every answer that carries it copies these bytes.
    json: Arc<[u8]>,
    /// Polls waiting for this symbol's next change. May hold answered (done) waiters of polls
    /// that were woken by another symbol; they are pruned when the list grows (see `register`).
    waiters: Vec<Arc<Waiter>>,
    prune_at: usize,
}

/// A symbol in the book. Touched by publishers (change), by polls (register, read) and by nobody
/// else; its lock is a `may::sync::Mutex` so a contended lock parks the coroutine, not the thread.
pub struct Symbol {
    state: Mutex<SymbolState>,
}

const MIN_PRUNE: usize = 64;

impl Symbol {
    fn lock(&self) -> may::sync::MutexGuard<'_, SymbolState> {
        // A panic while holding this lock would be a bug in this module; the state is still
        // consistent field by field, so keep serving rather than poison every later request.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The latest quote's seq and bytes.
    fn latest(&self) -> (u64, Arc<[u8]>) {
        let st = self.lock();
        (st.quote.seq, Arc::clone(&st.json))
    }

    pub fn quote(&self) -> Quote {
        self.lock().quote.clone()
    }

    /// Register `w` for the next change unless the symbol already changed after `cursor`.
    /// Returns true when it has (the caller answers at once instead of parking).
    fn register(&self, cursor: u64, w: &Arc<Waiter>) -> bool {
        let mut st = self.lock();
        if st.quote.seq > cursor {
            return true;
        }
        if st.waiters.len() >= st.prune_at {
            st.waiters.retain(|w| !w.is_done());
            st.prune_at = (st.waiters.len() * 2).max(MIN_PRUNE);
        }
        st.waiters.push(Arc::clone(w));
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

fn serialize(q: &Quote) -> Arc<[u8]> {
    // A Quote has no maps and only finite floats (checked at publish), so this cannot fail.
    serde_json::to_vec(q)
        .unwrap_or_else(|_| b"{}".to_vec())
        .into()
}

/// An answer to a snapshot or a poll: the cursor to send next time and the quotes' JSON bytes.
#[derive(Debug, Clone)]
pub struct Answer {
    pub cursor: u64,
    pub quotes: Vec<Arc<[u8]>>,
    pub reason: Reason,
}

/// Why a poll was answered (for metrics and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A snapshot request.
    Snapshot,
    /// Something newer than the cursor (at once, or after waiting).
    Change,
    /// Nothing changed within the timeout.
    Timeout,
    /// The cursor was ahead of the server: a full snapshot.
    Resync,
    /// The server is shutting down.
    Shutdown,
}

impl Answer {
    /// `{"cursor":N,"quotes":[...]}` from the pre-serialized quotes; no per-answer serialization.
    pub fn to_json(&self) -> Vec<u8> {
        let len: usize = self.quotes.iter().map(|q| q.len() + 1).sum();
        let mut out = Vec::with_capacity(len + 48);
        // Writing into a Vec cannot fail; no temporary String for the number.
        let _ = write!(out, "{{\"cursor\":{},\"quotes\":[", self.cursor);
        for (i, q) in self.quotes.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(q);
        }
        out.extend_from_slice(b"]}");
        out
    }
}

/// Large wake batches go to the waker thread: unparking from a non-worker thread spreads the woken
/// coroutines over all may workers, while unparking from a worker queues them all on that worker
/// (the others only steal after their 10 ms epoll timeout). Small batches are woken inline, which
/// saves the hop to the waker thread.
const INLINE_WAKE_MAX: usize = 16;

/// All symbols, the seq counter and the wake machinery. Shared by every handler and the feed.
pub struct QuoteBook {
    /// Name -> symbol, read without a lock by every request; grows when a publish creates one.
    symbols: Table<Symbol>,
    /// The last seq handed out. Incremented only under the changed symbol's lock (see module doc).
    seq: AtomicU64,
    sweeper: Arc<Sweeper>,
    /// Set once by `start_threads`, taken on shutdown; a `may` lock because handlers read it.
    wake_tx: Mutex<Option<mpsc::Sender<Vec<Arc<Waiter>>>>>,
    metrics: Arc<Metrics>,
}

impl QuoteBook {
    /// A book whose seqs start at the current time in microseconds.
    pub fn new(max_symbols: usize, metrics: Arc<Metrics>) -> Arc<QuoteBook> {
        Self::with_first_seq(now_micros(), max_symbols, metrics)
    }

    pub fn with_first_seq(
        first_seq: u64,
        max_symbols: usize,
        metrics: Arc<Metrics>,
    ) -> Arc<QuoteBook> {
        Arc::new(QuoteBook {
            symbols: Table::new(max_symbols),
            seq: AtomicU64::new(first_seq),
            sweeper: Sweeper::new(),
            wake_tx: Mutex::new(None),
            metrics,
        })
    }

    /// Start the sweeper and waker threads. Without them, polls never time out and large wake
    /// batches are woken inline.
    pub fn start_threads(self: &Arc<Self>) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
        let (tx, rx) = mpsc::channel::<Vec<Arc<Waiter>>>();
        let waker = std::thread::Builder::new()
            .name("waker".into())
            .spawn(move || {
                // Ends when every sender is gone (the book is dropped or shut down).
                while let Ok(batch) = rx.recv() {
                    for w in batch {
                        w.wake();
                    }
                }
            })?;
        // Set once at start-up, before any handler runs; handlers only clone the sender.
        *self.wake_tx.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        Ok(vec![self.sweeper.spawn()?, waker])
    }

    /// The deadline sweeper, shared with the connection layer for idle timeouts.
    pub fn sweeper(&self) -> &Arc<Sweeper> {
        &self.sweeper
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
    pub fn get(&self, name: &str) -> Option<Arc<Symbol>> {
        self.symbols.get(name)
    }

    /// Resolve every name or fail on the first unknown one.
    pub fn resolve(&self, names: &[String]) -> Result<Vec<Arc<Symbol>>, ApiError> {
        names
            .iter()
            .map(|n| {
                self.symbols
                    .get(n)
                    .ok_or_else(|| ApiError::UnknownSymbol(n.clone()))
            })
            .collect()
    }

    fn get_or_create(&self, name: &str, price: f64) -> Result<(Arc<Symbol>, bool), ApiError> {
        let created = self.symbols.get_or_insert_with(name, |name| {
            // The creation is itself a change and takes a seq like any other, before the symbol
            // becomes reachable (so no reader can see it without its seq).
            let quote = Quote {
                symbol: name,
                price,
                change: 0.0,
                seq: self.seq.fetch_add(1, Ordering::SeqCst) + 1,
                ts: now_micros(),
            };
            Symbol {
                state: Mutex::new(SymbolState {
                    json: serialize(&quote),
                    quote,
                    open: price,
                    waiters: Vec::new(),
                    prune_at: MIN_PRUNE,
                }),
            }
        });
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

    /// Add a symbol at its opening price (start-up); an existing one is left as it is.
    pub fn add_symbol(&self, name: &str, price: f64) -> Result<(), ApiError> {
        self.get_or_create(name, price).map(|_| ())
    }

    /// Set one symbol's price (creating the symbol if new) and wake its waiters. Returns the seq.
    /// `price` must be finite and non-negative (the routes check it).
    pub fn publish(&self, name: &str, price: f64) -> Result<u64, ApiError> {
        let (sym, created) = self.get_or_create(name, price)?;
        if created {
            self.metrics.published.fetch_add(1, Ordering::Relaxed);
            return Ok(sym.lock().quote.seq);
        }
        let (seq, waiters) = {
            let mut st = sym.lock();
            let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
            st.quote.price = price;
            st.quote.change = round_cents(price - st.open);
            st.quote.seq = seq;
            st.quote.ts = now_micros();
            st.json = serialize(&st.quote);
            st.prune_at = MIN_PRUNE;
            (seq, std::mem::take(&mut st.waiters))
        };
        self.metrics.published.fetch_add(1, Ordering::Relaxed);
        self.wake(waiters);
        Ok(seq)
    }

    fn wake(&self, waiters: Vec<Arc<Waiter>>) {
        if waiters.is_empty() {
            return;
        }
        if waiters.len() > INLINE_WAKE_MAX && may::coroutine::is_coroutine() {
            let tx = self.wake_tx.lock().ok().and_then(|g| g.as_ref().cloned());
            if let Some(tx) = tx {
                // Sending fails only once the waker thread is gone, i.e. after shutdown, when the
                // sweeper has already woken every parked poll: nothing is left to wake.
                let _ = tx.send(waiters);
                return;
            }
        }
        for w in waiters {
            w.wake();
        }
    }

    /// The latest quotes of `symbols`, at once.
    pub fn snapshot(&self, symbols: &[Arc<Symbol>]) -> Answer {
        let cursor = self.current_seq();
        Answer {
            cursor,
            quotes: symbols.iter().map(|s| s.latest().1).collect(),
            reason: Reason::Snapshot,
        }
    }

    /// Every quote of `symbols` with `cursor < seq <= g`, read after loading `g` (module doc).
    fn changes_since(&self, symbols: &[Arc<Symbol>], cursor: u64) -> Answer {
        let g = self.current_seq();
        let quotes = symbols
            .iter()
            .map(|s| s.latest())
            .filter(|(seq, _)| *seq > cursor && *seq <= g)
            .map(|(_, json)| json)
            .collect();
        Answer {
            cursor: g,
            quotes,
            reason: Reason::Change,
        }
    }

    /// The long-poll: answer with the quotes of `symbols` changed after `cursor`, waiting up to
    /// `timeout` for the first such change. `cursor: None` means "from now".
    pub fn poll(&self, symbols: &[Arc<Symbol>], cursor: Option<u64>, timeout: Duration) -> Answer {
        let now_seq = self.current_seq();
        let cursor = match cursor {
            None => now_seq,
            Some(c) if c > now_seq => {
                // Not a cursor this run handed out: resynchronise the client.
                let mut a = self.snapshot(symbols);
                a.reason = Reason::Resync;
                return self.count(a);
            }
            Some(c) => c,
        };

        let waiter = Waiter::new();
        let ready = symbols.iter().any(|s| s.register(cursor, &waiter));
        // Round every wait up to at least 1 ms: the sweeper sleeps in whole milliseconds, and a
        // may wait under 1 ms never fires (should this ever wait on a may timer instead).
        let deadline = Instant::now() + timeout.max(Duration::from_millis(1));
        let mut reason = Reason::Change;
        if !ready {
            if self.sweeper.add(deadline, waiter.clone()) {
                self.metrics.polls_waiting.fetch_add(1, Ordering::Relaxed);
                waiter.wait();
                self.metrics.polls_waiting.fetch_sub(1, Ordering::Relaxed);
            }
            if self.sweeper.is_shutting_down() {
                reason = Reason::Shutdown;
            }
        }
        waiter.finish();

        let mut answer = self.changes_since(symbols, cursor);
        if answer.quotes.is_empty() {
            // Woken by the deadline or by shutdown: the same cursor back, as the contract says.
            answer.cursor = cursor;
            answer.reason = if reason == Reason::Shutdown {
                Reason::Shutdown
            } else {
                Reason::Timeout
            };
        }
        self.count(answer)
    }

    fn count(&self, a: Answer) -> Answer {
        self.metrics.count_answer(a.reason, a.quotes.len());
        a
    }

    /// Wake every waiting poll (answered empty) and refuse to park new ones.
    pub fn shutdown(&self) {
        self.sweeper.shutdown();
        if let Ok(mut tx) = self.wake_tx.lock() {
            tx.take();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book() -> Arc<QuoteBook> {
        let b = QuoteBook::with_first_seq(1000, 10, Arc::new(Metrics::default()));
        b.add_symbol("IBM", 100.0).unwrap();
        b.add_symbol("MSFT", 200.0).unwrap();
        b
    }

    fn parsed(a: &Answer) -> Vec<serde_json::Value> {
        a.quotes
            .iter()
            .map(|q| serde_json::from_slice(q).unwrap())
            .collect()
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
        let a = b.poll(&syms, Some(cursor), Duration::from_secs(60));
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
        let a = b.poll(&syms, Some(u64::MAX), Duration::from_secs(60));
        assert_eq!(a.reason, Reason::Resync);
        assert_eq!(a.quotes.len(), 2);
        assert_eq!(a.cursor, b.current_seq());
    }

    #[test]
    fn creating_a_symbol_over_the_limit_is_refused() {
        let b = QuoteBook::with_first_seq(1, 1, Arc::new(Metrics::default()));
        b.publish("A", 1.0).unwrap();
        assert_eq!(b.publish("B", 1.0), Err(ApiError::SymbolLimit { max: 1 }));
    }

    #[test]
    fn answer_json_joins_preserialized_quotes() {
        let a = Answer {
            cursor: 7,
            quotes: vec![Arc::from(&b"{\"a\":1}"[..]), Arc::from(&b"{\"b\":2}"[..])],
            reason: Reason::Change,
        };
        assert_eq!(
            a.to_json(),
            b"{\"cursor\":7,\"quotes\":[{\"a\":1},{\"b\":2}]}"
        );
    }
}
