//! A cluster node's quote book follows Redis: the rules by which it takes changes that Redis
//! numbered, and writes back what Redis lost.
//!
//! # The rule (README, "More than one process")
//! A quote keeps the seq Redis gave its change, on every node and in Redis, whatever happens:
//! - A node stores a change only if its seq is above the one it has for that symbol
//!   ([`QuoteBook::apply_remote`]), so an older price never replaces a newer one, in whatever
//!   order changes, loads and write-backs arrive. A quote it already has wakes nobody.
//! - A node moves its counter ("now", the cursor it hands out) only up, and only once the changes
//!   up to it are stored ([`QuoteBook::advance`]), so a woken request finds what woke it.
//! - Writing back to a Redis that came back empty or older restores each quote with its own seq
//!   (`cluster::wire`), only where Redis holds an older one: nobody is woken by a price that did
//!   not change. (Only when Redis has handed out a later seq since it came back is a quote
//!   announced again under a new one, so that clients past its old seq still get it; a node that
//!   shows it already takes the new seq and wakes nobody.)
//! - A request whose cursor is above this node's counter comes from a node that is ahead: it
//!   waits on its symbols until this node catches up, or is answered empty with its own cursor at
//!   its timeout ([`QuoteBook::from_elsewhere`] is false here). It is never answered with this
//!   node's older quotes, and its cursor never goes back.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::book::{round_cents, Latest, Quote, QuoteBook, Symbol};
use crate::lanes::lock;
use crate::table::Full;

/// A quote as the cluster's Redis holds it: the seq and time it was given there, the price, and
/// the symbol's opening price that `change` is measured from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RemoteQuote {
    pub seq: u64,
    pub ts: u64,
    pub price: f64,
    pub open: f64,
}

impl QuoteBook {
    /// Store a change that Redis gave its seq, creating the symbol if new, unless the book
    /// already has this one or a later one. Returns the symbol to wake, which the caller does
    /// only after [`QuoteBook::advance`]: a woken poll reads the counter first, and must find it
    /// at or past the change that woke it.
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
            self.count_symbols();
            return Some(sym);
        }
        let mut open = lock(&sym.publisher);
        let current = sym.latest.load();
        if current.quote.seq >= q.seq {
            return None;
        }
        // The same change again under a later seq (a write-back announced anew, see the module
        // doc): kept, so that seqs agree, but nobody's price changed, so nobody is woken.
        let same_change = current.quote.ts == q.ts && current.quote.price == q.price;
        *open = q.open;
        let quote = quote(Arc::clone(&current.quote.symbol));
        sym.latest.store(Arc::new(Latest::new(quote)));
        (!same_change).then_some(sym)
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Metrics, Reason};
    use crate::waiter::PlainHold;
    use std::time::Duration;

    /// A cluster node's book holding IBM at seq 100, with a running sweeper.
    fn cluster_book() -> Arc<QuoteBook> {
        let b = QuoteBook::for_cluster(10, 1, Arc::new(Metrics::default()));
        b.start_threads().unwrap();
        apply(&b, "IBM", 100, 100.0);
        b
    }

    /// What the cluster's subscriber does with a change from Redis: store, advance, wake.
    fn apply(b: &QuoteBook, name: &str, seq: u64, price: f64) {
        let q = RemoteQuote {
            seq,
            ts: seq,
            price,
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

    fn parsed(a: &crate::answer::Answer) -> Vec<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_slice(&a.json).unwrap();
        assert_eq!(v["cursor"], a.cursor);
        v["quotes"].as_array().unwrap().clone()
    }

    #[test]
    fn an_older_change_never_replaces_a_newer_one() {
        let b = cluster_book();
        apply(&b, "IBM", 105, 105.0);
        assert!(b
            .apply_remote(
                "IBM",
                RemoteQuote {
                    seq: 103,
                    ts: 103,
                    price: 103.0,
                    open: 1.0
                }
            )
            .is_none());
        // The same change again (a write-back restoring it with its own seq): nobody to wake.
        assert!(b
            .apply_remote(
                "IBM",
                RemoteQuote {
                    seq: 105,
                    ts: 105,
                    price: 105.0,
                    open: 1.0
                }
            )
            .is_none());
        assert_eq!(b.get("IBM").unwrap().quote().price, 105.0);
        b.advance(90);
        assert_eq!(b.current_seq(), 105);
    }

    #[test]
    fn the_same_change_under_a_later_seq_is_taken_but_wakes_nobody() {
        let b = cluster_book();
        let again = RemoteQuote {
            seq: 200,
            ts: 100,
            price: 100.0,
            open: 1.0,
        };
        assert!(b.apply_remote("IBM", again).is_none());
        assert_eq!(b.get("IBM").unwrap().quote().seq, 200);
    }

    #[test]
    fn a_poll_ahead_of_a_cluster_node_waits_for_the_change_and_skips_what_it_has() {
        let b = cluster_book();
        let poller = {
            let b = Arc::clone(&b);
            std::thread::spawn(move || {
                let syms = b.resolve(&["IBM".into()]).unwrap();
                b.poll(&syms, Some(105), Duration::from_secs(60), 0, &PlainHold)
            })
        };
        wait_until_polls_waiting(&b, 1);
        // The change the client already saw on another node lands here: nothing to answer.
        apply(&b, "IBM", 105, 105.0);
        wait_until_polls_waiting(&b, 1);
        assert!(!poller.is_finished());
        apply(&b, "IBM", 107, 107.0);
        let a = poller.join().unwrap().unwrap();
        assert_eq!(a.reason, Reason::Change);
        assert_eq!(a.cursor, 107);
        assert_eq!(parsed(&a)[0]["seq"], 107);
    }

    #[test]
    fn a_poll_ahead_of_a_node_that_never_catches_up_gets_its_own_cursor_back_empty() {
        let b = cluster_book();
        let syms = b.resolve(&["IBM".into()]).unwrap();
        let a = b
            .poll(&syms, Some(500), Duration::from_millis(30), 0, &PlainHold)
            .unwrap();
        // Not the node's older snapshot (IBM at 100) with its lower cursor.
        assert_eq!(a.reason, Reason::Timeout);
        assert_eq!(a.cursor, 500);
        assert!(parsed(&a).is_empty());
        assert!(!b.from_elsewhere(500));
        // A cursor no clock reaches is from elsewhere: a full snapshot, not a wait forever.
        let a = b
            .poll(
                &syms,
                Some(u64::MAX / 2),
                Duration::from_secs(60),
                0,
                &PlainHold,
            )
            .unwrap();
        assert_eq!(a.reason, Reason::Resync);
        assert_eq!(a.cursor, 100);
    }
}
