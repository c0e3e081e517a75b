//! At most one log line per interval for a condition that repeats (an accept that keeps failing,
//! a Redis that stays away): the first occurrence is said at once, the rest are counted and summed
//! up in the next line.

use std::time::{Duration, Instant};

/// Decides when a repeating condition may be logged again. Owned by the one loop that logs it.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    last: Option<Instant>,
    /// Occurrences not logged since the last line.
    pub suppressed: u64,
}

impl Throttle {
    pub fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            last: None,
            suppressed: 0,
        }
    }

    /// Whether to log this occurrence now; when not, it is counted in `suppressed`, which the
    /// caller reports (and this resets) the next time it may log.
    pub fn ready(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < self.every => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }

    /// The condition is over: the next occurrence is logged at once.
    pub fn reset(&mut self) {
        self.last = None;
        self.suppressed = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_and_the_rest_counted() {
        let mut t = Throttle::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(t.ready(t0), Some(0));
        assert_eq!(t.ready(t0 + Duration::from_millis(10)), None);
        assert_eq!(t.ready(t0 + Duration::from_millis(900)), None);
        assert_eq!(t.ready(t0 + Duration::from_millis(1000)), Some(2));
        t.reset();
        assert_eq!(t.ready(t0 + Duration::from_millis(1001)), Some(0));
    }
}
