//! A log-linear latency histogram in microseconds (about 1.6 % resolution) that serializes sparsely,
//! so worker processes can ship theirs to the coordinator and be merged exactly.

use serde::{Deserialize, Serialize};

/// Sub-buckets per power of two; 64 keeps the relative error under 1/64.
const SUB: u64 = 64;
const SUB_BITS: u32 = 6;

/// Bucket index of a value: values below 64 get their own bucket, larger ones 64 per octave.
fn bucket_of(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= 6
    let m = v >> (e - SUB_BITS); // in [64, 128)
    (SUB + (e - SUB_BITS) as u64 * SUB + (m - SUB)) as usize
}

/// The smallest value that falls in bucket `b`.
fn bucket_low(b: usize) -> u64 {
    let b = b as u64;
    if b < SUB {
        return b;
    }
    let octave = (b - SUB) / SUB;
    let m = SUB + (b - SUB) % SUB;
    m << octave
}

/// The largest value that falls in bucket `b`.
fn bucket_high(b: usize) -> u64 {
    bucket_low(b + 1).saturating_sub(1).max(bucket_low(b))
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Histogram {
    /// (bucket, count) pairs, only the non-empty ones once compacted for shipping.
    #[serde(default)]
    sparse: Vec<(u32, u64)>,
    #[serde(skip)]
    dense: Vec<u64>,
    pub count: u64,
    pub sum: u128,
    pub min: u64,
    pub max: u64,
}

impl Histogram {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn record(&mut self, v: u64) {
        self.unpack();
        let b = bucket_of(v);
        if self.dense.len() <= b {
            self.dense.resize(b + 1, 0);
        }
        self.dense[b] += 1;
        if self.count == 0 || v < self.min {
            self.min = v;
        }
        self.max = self.max.max(v);
        self.count += 1;
        self.sum += v as u128;
    }

    /// Moves the sparse (deserialized) form into the dense form used for recording and queries.
    fn unpack(&mut self) {
        for (b, c) in std::mem::take(&mut self.sparse) {
            let b = b as usize;
            if self.dense.len() <= b {
                self.dense.resize(b + 1, 0);
            }
            self.dense[b] += c;
        }
    }

    /// Prepares for serialization: the dense array becomes (bucket, count) pairs.
    pub fn compact(mut self) -> Self {
        self.unpack();
        self.sparse = self
            .dense
            .iter()
            .enumerate()
            .filter(|(_, &c)| c > 0)
            .map(|(b, &c)| (b as u32, c))
            .collect();
        self.dense.clear();
        self
    }

    pub fn merge(&mut self, other: &Histogram) {
        if other.count == 0 {
            return;
        }
        self.unpack();
        let mut o = other.clone();
        o.unpack();
        if self.dense.len() < o.dense.len() {
            self.dense.resize(o.dense.len(), 0);
        }
        for (i, c) in o.dense.iter().enumerate() {
            self.dense[i] += c;
        }
        if self.count == 0 || o.min < self.min {
            self.min = o.min;
        }
        self.max = self.max.max(o.max);
        self.count += o.count;
        self.sum += o.sum;
    }

    /// The value at quantile `q` (0..=1): the middle of its bucket, clamped to the exact min/max.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let mut h = self.clone();
        h.unpack();
        let rank = ((q * h.count as f64).ceil() as u64).clamp(1, h.count);
        let mut seen = 0;
        for (b, &c) in h.dense.iter().enumerate() {
            seen += c;
            if seen >= rank {
                let mid = (bucket_low(b) + bucket_high(b)) / 2;
                return Some(mid.clamp(h.min, h.max));
            }
        }
        Some(h.max)
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum as f64 / self.count as f64)
    }

    /// The usual summary in milliseconds, for tables and the JSON record.
    pub fn summary_ms(&self) -> serde_json::Value {
        // Values are whole microseconds, so /1000 gives milliseconds with exactly 3 decimals.
        let ms = |v: Option<u64>| v.map(|x| x as f64 / 1000.0);
        serde_json::json!({
            "count": self.count,
            "mean": self.mean().map(|m| m.round() / 1000.0),
            "p50": ms(self.quantile(0.50)),
            "p90": ms(self.quantile(0.90)),
            "p99": ms(self.quantile(0.99)),
            "p999": ms(self.quantile(0.999)),
            "max": ms((self.count > 0).then_some(self.max)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_tight() {
        for v in [0u64, 1, 63, 64, 65, 127, 128, 1000, 123_456, 9_999_999_999] {
            let b = bucket_of(v);
            assert!(bucket_low(b) <= v && v <= bucket_high(b), "v={v} b={b}");
            let width = bucket_high(b) - bucket_low(b) + 1;
            assert!(width as f64 <= (v as f64 / 64.0).max(1.0) + 1.0);
        }
        for b in 0..2000 {
            assert_eq!(bucket_high(b) + 1, bucket_low(b + 1));
        }
    }

    #[test]
    fn quantiles_and_merge() {
        let mut a = Histogram::new();
        let mut b = Histogram::new();
        for v in 1..=1000u64 {
            if v % 2 == 0 {
                a.record(v * 1000);
            } else {
                b.record(v * 1000);
            }
        }
        let a = a.compact();
        let json = serde_json::to_string(&a).unwrap();
        let mut m: Histogram = serde_json::from_str(&json).unwrap();
        m.merge(&b.compact());
        assert_eq!(m.count, 1000);
        assert_eq!(m.max, 1_000_000);
        assert_eq!(m.min, 1000);
        let p50 = m.quantile(0.5).unwrap() as f64;
        assert!((p50 - 500_000.0).abs() / 500_000.0 < 0.02, "{p50}");
        let p99 = m.quantile(0.99).unwrap() as f64;
        assert!((p99 - 990_000.0).abs() / 990_000.0 < 0.02, "{p99}");
    }
}
