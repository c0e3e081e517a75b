//! The built-in random quote feed: every symbol moves at its own random moments.
//!
//! Each symbol's next change comes after an exponentially distributed gap (a Poisson process per
//! symbol), so changes never arrive in step; each change is a small random walk step in cents.
//! The feed runs on its own OS thread: it sleeps with `std::thread::sleep` (not a may worker).
//! In a cluster exactly one feed runs: every node that starts with one publishes through Redis,
//! but only while it holds the feed lease (`cluster`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::app::App;

/// A plausible opening price for a symbol: between $10 and $500, in cents.
pub fn opening_price(rng: &mut impl Rng) -> f64 {
    (rng.gen_range(1_000..50_000) as f64) / 100.0
}

/// An exponentially distributed gap with the given mean (inverse transform sampling).
pub fn exponential_gap(rng: &mut impl Rng, mean: Duration) -> Duration {
    let u: f64 = rng.gen_range(f64::EPSILON..1.0);
    Duration::from_secs_f64(-u.ln() * mean.as_secs_f64())
}

/// One random-walk step: up to ±0.5% of the price, at least one cent, never below one cent.
pub fn next_price(rng: &mut impl Rng, price: f64) -> f64 {
    let cents = (price * 100.0).round();
    let max_step = (cents * 0.005).max(1.0);
    let mut step = rng.gen_range(-max_step..=max_step).round();
    if step == 0.0 {
        step = if rng.gen_bool(0.5) { 1.0 } else { -1.0 };
    }
    // Bounce off the one-cent floor rather than stick to it: a tick always changes the price.
    let next = if cents + step < 1.0 {
        cents + step.abs()
    } else {
        cents + step
    };
    next / 100.0
}

/// Moves `symbols` of the book until `stop` is set. Holds no lock between ticks. Publishes the way
/// the routes do (`App::publish`): into the book alone, through Redis on a cluster node, and
/// there only while this node holds the feed lease.
pub struct Feed {
    pub app: Arc<App>,
    pub symbols: Vec<String>,
    pub mean_interval: Duration,
    pub rng: StdRng,
    pub stop: Arc<AtomicBool>,
}

impl Feed {
    pub fn new(
        app: Arc<App>,
        symbols: Vec<String>,
        mean_interval: Duration,
        seed: u64,
        stop: Arc<AtomicBool>,
    ) -> Feed {
        Feed {
            app,
            symbols,
            mean_interval,
            rng: StdRng::seed_from_u64(seed),
            stop,
        }
    }

    pub fn spawn(mut self) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("feed".into())
            .spawn(move || self.run())
    }

    fn run(&mut self) {
        let start = Instant::now();
        // Min-heap of (next change time, symbol index).
        let mut next: BinaryHeap<Reverse<(Instant, usize)>> = (0..self.symbols.len())
            .map(|i| {
                Reverse((
                    start + exponential_gap(&mut self.rng, self.mean_interval),
                    i,
                ))
            })
            .collect();
        while !self.stop.load(Ordering::Acquire) {
            let Some(Reverse((at, i))) = next.pop() else {
                return;
            };
            let now = Instant::now();
            if at > now {
                // Short naps so a stop request is noticed within 50 ms.
                std::thread::sleep((at - now).min(Duration::from_millis(50)));
                next.push(Reverse((at, i)));
                continue;
            }
            let symbol = &self.symbols[i];
            let leading = self.app.cluster.as_ref().is_none_or(|c| c.is_feed_leader());
            if let Some(sym) = self.app.book.get(symbol).filter(|_| leading) {
                let price = next_price(&mut self.rng, sym.quote().price);
                if let Err(e) = self.app.publish(&[(symbol.clone(), price)]) {
                    log::debug!("feed could not publish {symbol}: {e}");
                }
            }
            next.push(Reverse((
                at + exponential_gap(&mut self.rng, self.mean_interval),
                i,
            )));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_walk_in_cents_and_stay_positive() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut p = 0.02;
        for _ in 0..10_000 {
            let q = next_price(&mut rng, p);
            assert!(q >= 0.01);
            assert_ne!(q, p);
            assert!(((q * 100.0).round() - q * 100.0).abs() < 1e-6);
            p = q;
        }
    }

    #[test]
    fn gaps_average_to_the_mean() {
        let mut rng = StdRng::seed_from_u64(1);
        let mean = Duration::from_millis(100);
        let n = 20_000;
        let total: f64 = (0..n)
            .map(|_| exponential_gap(&mut rng, mean).as_secs_f64())
            .sum();
        let avg = total / n as f64;
        assert!((avg - 0.1).abs() < 0.005, "{avg}");
    }

    #[test]
    fn same_seed_gives_same_prices() {
        let walk = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..5).map(|_| opening_price(&mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(walk(3), walk(3));
        assert_ne!(walk(3), walk(4));
    }
}
