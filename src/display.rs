//! Display-delay reports: pages say how long their quotes took from the change (the quote's `ts`,
//! server clock) to arriving, and to the first frame painted after the page showed them, and the
//! server keeps the distribution (`comet_display_delay_seconds`, `comet_arrival_delay_seconds`).
//!
//! A report is a client's word, so nothing in it is trusted into the histograms before it is
//! checked: the shape, the count of samples, and every value (finite, not negative, at most a
//! minute, a display no earlier than its arrival). A report that fails any check is refused
//! whole. Reports are rate-limited per connection and in all (`Limits`), so a page cannot flood
//! the server with them. Plain functions of the body and the clock, unit-tested without sockets.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::error::ApiError;

/// Most samples one report may carry.
pub const MAX_SAMPLES: usize = 100;
/// Largest delay accepted, in seconds: anything longer is not a display delay but a clock or a
/// page that slept.
pub const MAX_DELAY_S: f64 = 60.0;
/// One report per connection per this at most (a page reports every 10 s).
pub const PER_CONNECTION_EVERY: Duration = Duration::from_secs(5);
/// Reports accepted per second over all connections at most.
pub const PER_SECOND: u64 = 200;

/// One quote's delays, in seconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// From the change to the page receiving it.
    pub arrival: f64,
    /// From the change to the first frame painted after the page showed it.
    pub display: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    samples: Vec<RawSample>,
}

/// In milliseconds, as a page measures them.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSample {
    arrival: f64,
    display: f64,
}

/// `{"samples":[{"arrival":ms,"display":ms},...]}`, checked whole.
pub fn parse_report(body: &[u8]) -> Result<Vec<Sample>, ApiError> {
    let bad = |why: String| ApiError::BadReport(why);
    // Small before parsing: 100 samples of two numbers fit in well under 8 KiB.
    if body.len() > 16 * 1024 {
        return Err(bad("larger than 16 KiB".into()));
    }
    let parsed: Body = serde_json::from_slice(body).map_err(|e| {
        bad(format!(
            "expected {{\"samples\":[{{\"arrival\":ms,\"display\":ms}}]}}: {e}"
        ))
    })?;
    if parsed.samples.is_empty() {
        return Err(bad("no samples".into()));
    }
    if parsed.samples.len() > MAX_SAMPLES {
        return Err(bad(format!("more than {MAX_SAMPLES} samples")));
    }
    parsed
        .samples
        .iter()
        .map(|s| {
            let ok = |v: f64| v.is_finite() && (0.0..=MAX_DELAY_S * 1000.0).contains(&v);
            if !ok(s.arrival) || !ok(s.display) {
                return Err(bad(format!(
                    "a delay must be between 0 and {} ms",
                    MAX_DELAY_S * 1000.0
                )));
            }
            if s.display < s.arrival {
                return Err(bad("a quote cannot be displayed before it arrived".into()));
            }
            Ok(Sample {
                arrival: s.arrival / 1000.0,
                display: s.display / 1000.0,
            })
        })
        .collect()
}

/// The global limit: at most `PER_SECOND` reports in each whole second since start. Lock-free:
/// the second and the count in one atomic word.
#[derive(Debug)]
pub struct Limits {
    start: Instant,
    /// (second since start) << 32 | reports in it.
    window: AtomicU64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            start: Instant::now(),
            window: AtomicU64::new(0),
        }
    }
}

impl Limits {
    /// Whether one more report may be taken now, counting it if so.
    pub fn admit(&self, now: Instant) -> bool {
        let second = now.saturating_duration_since(self.start).as_secs() & 0xffff_ffff;
        let mut current = self.window.load(Ordering::Relaxed);
        loop {
            let (s, n) = (current >> 32, current & 0xffff_ffff);
            let next = if s == second {
                if n >= PER_SECOND {
                    return false;
                }
                current + 1
            } else {
                second << 32 | 1
            };
            match self.window.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(seen) => current = seen,
            }
        }
    }
}

/// Whether a connection whose last accepted report was at `last` may report at `now`.
pub fn connection_may_report(last: Option<Instant>, now: Instant) -> bool {
    last.is_none_or(|l| now.saturating_duration_since(l) >= PER_CONNECTION_EVERY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_report_becomes_seconds() {
        let s = parse_report(br#"{"samples":[{"arrival":1.5,"display":18.25}]}"#).unwrap();
        assert_eq!(
            s,
            [Sample {
                arrival: 0.0015,
                display: 0.01825
            }]
        );
    }

    #[test]
    fn bad_reports_are_refused_whole() {
        let many = format!(
            r#"{{"samples":[{}]}}"#,
            vec![r#"{"arrival":1,"display":2}"#; MAX_SAMPLES + 1].join(",")
        );
        for body in [
            &b""[..],
            b"[]",
            br#"{"samples":[]}"#,
            br#"{"samples":[{"arrival":-1,"display":2}]}"#,
            br#"{"samples":[{"arrival":1,"display":1e9}]}"#,
            br#"{"samples":[{"arrival":5,"display":2}]}"#,
            br#"{"samples":[{"arrival":"1","display":2}]}"#,
            br#"{"samples":[{"arrival":1}]}"#,
            br#"{"samples":[{"arrival":1,"display":2,"extra":3}]}"#,
            br#"{"samples":[{"arrival":1,"display":2}],"more":1}"#,
            many.as_bytes(),
        ] {
            assert!(
                matches!(parse_report(body), Err(ApiError::BadReport(_))),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn the_global_limit_counts_per_second() {
        let l = Limits::default();
        let t = l.start;
        for _ in 0..PER_SECOND {
            assert!(l.admit(t));
        }
        assert!(!l.admit(t + Duration::from_millis(999)));
        assert!(l.admit(t + Duration::from_secs(1)));
    }

    #[test]
    fn a_connection_reports_at_most_every_few_seconds() {
        let t = Instant::now();
        assert!(connection_may_report(None, t));
        assert!(!connection_may_report(Some(t), t + Duration::from_secs(1)));
        assert!(connection_may_report(Some(t), t + PER_CONNECTION_EVERY));
    }
}
