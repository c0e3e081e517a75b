//! The deterministic parts of a run shared by the coordinator and its worker processes: symbol names,
//! which symbols each subscriber follows, which symbol each publish hits, how a publish index is
//! encoded into a unique price, and which 127.0.0.x source address each client socket uses.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::time::{SystemTime, UNIX_EPOCH};

/// Which server is under test; decides the URLs and the resume mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// comet-quotes: GET /api/poll?symbols=..&cursor=N, POST /api/quotes.
    Ours,
    /// Nchan: GET /sub/A,B,C with If-Modified-Since / If-None-Match, POST /pub/SYMBOL.
    Nchan,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Ours => "ours",
            Kind::Nchan => "nchan",
        }
    }
}

/// How subscribers follow their symbols.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// Long-poll: one request per answer, re-polled with the resume token.
    Poll,
    /// Server-Sent Events: one request, then an event per change; reconnects with Last-Event-ID.
    /// Ours: GET /api/stream; Nchan: GET /sub/A,B,C with Accept: text/event-stream.
    Sse,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Poll => "poll",
            Transport::Sse => "sse",
        }
    }
}

/// Wall clock in microseconds since the Unix epoch: the unit of the quotes' `ts`, so client arrival
/// times and server change times compare directly (same machine, same clock).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// `S0, S1, ...` style symbol names.
pub fn symbol_names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// Mixes the run seed with a stream number so every use gets an independent, reproducible stream.
fn rng_for(seed: u64, stream: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ stream.wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// The symbol (index into the symbol list) of every publish, uniformly at random.
pub fn publish_symbols(seed: u64, n_pub: usize, n_sym: usize) -> Vec<u16> {
    let mut rng = rng_for(seed, 1);
    (0..n_pub).map(|_| rng.gen_range(0..n_sym) as u16).collect()
}

/// The K distinct symbols subscriber number `sub` follows, sorted.
pub fn subscriber_symbols(seed: u64, sub: usize, n_sym: usize, k: usize) -> Vec<u16> {
    let mut rng = rng_for(seed, 1_000_003 + sub as u64);
    let mut v: Vec<u16> = rand::seq::index::sample(&mut rng, n_sym, k.min(n_sym))
        .into_iter()
        .map(|i| i as u16)
        .collect();
    v.sort_unstable();
    v
}

/// Prices are `base + index` cents, so every publish in a run has a distinct price and a subscriber
/// can tell exactly which publish a quote is. The base changes per run (a "nonce" of whole
/// $10,000s) so a run never re-publishes the price a symbol already has from an earlier run, which
/// a server might treat as no change.
pub const MAX_PUBLISHES: usize = 999_999;

pub fn price_base_cents(nonce: u64) -> u64 {
    (nonce % 99 + 1) * 1_000_000
}

pub fn price_cents(base: u64, idx: usize) -> u64 {
    base + idx as u64
}

pub fn format_price(cents: u64) -> String {
    format!("{}.{:02}", cents / 100, cents % 100)
}

/// The publish index a price stands for, if it is one of this run's prices.
pub fn decode_index(price: f64, base: u64, n_planned: usize) -> Option<usize> {
    if !price.is_finite() || price <= 0.0 {
        return None;
    }
    let cents = (price * 100.0).round() as u64;
    let idx = cents.checked_sub(base)? as usize;
    (idx < n_planned).then_some(idx)
}

/// Source address of client socket number `i`: 127.0.0.2 upwards, `n` addresses in all (at most
/// 254), so 20,000 connections never exhaust one address's ephemeral ports.
pub fn source_ip(i: usize, n: u32) -> Ipv4Addr {
    let n = n.clamp(1, 254) as usize;
    Ipv4Addr::new(127, 0, 0, 2 + (i % n) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_round_trip() {
        let base = price_base_cents(42);
        for idx in [0usize, 1, 99, 100, 12_345, MAX_PUBLISHES - 1] {
            let s = format_price(price_cents(base, idx));
            let p: f64 = s.parse().unwrap();
            assert_eq!(decode_index(p, base, MAX_PUBLISHES), Some(idx), "{s}");
        }
        assert_eq!(decode_index(1.0, base, 10), None);
        assert_eq!(decode_index(f64::NAN, base, 10), None);
    }

    #[test]
    fn deterministic_choices() {
        assert_eq!(publish_symbols(7, 50, 10), publish_symbols(7, 50, 10));
        let a = subscriber_symbols(7, 3, 50, 5);
        assert_eq!(a, subscriber_symbols(7, 3, 50, 5));
        assert_eq!(a.len(), 5);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(subscriber_symbols(7, 3, 1, 5), vec![0]);
        assert_eq!(source_ip(0, 254), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_ip(253, 254), Ipv4Addr::new(127, 0, 0, 255));
        assert_eq!(source_ip(254, 254), Ipv4Addr::new(127, 0, 0, 2));
    }
}
