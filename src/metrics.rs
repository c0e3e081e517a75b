//! Server counters, and their Prometheus text rendering for `GET /metrics`.
//!
//! Plain atomics: any handler, the feed and the connection layer bump them without locking.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::ApiError;

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

/// Bucket bounds of the delay histograms, in seconds: 0.5 ms to 10 s.
pub const DELAY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A Prometheus histogram over [`DELAY_BUCKETS`], lock-free: a count per bucket, the number of
/// observations and their sum (in µs, rendered in seconds).
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations in each bucket alone (rendered cumulatively).
    buckets: [AtomicU64; DELAY_BUCKETS.len()],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    /// Count one observation of `seconds` (finite and not negative: callers check).
    pub fn observe(&self, seconds: f64) {
        if let Some(i) = DELAY_BUCKETS.iter().position(|&le| seconds <= le) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add((seconds * 1e6).round() as u64, Ordering::Relaxed);
    }

    fn render(&self, name: &str, help: &str, out: &mut String) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (le, n) in DELAY_BUCKETS.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Counts one in a gauge for as long as it lives, however that ends (a panic in a
/// connection's code included).
pub struct Gauge<'a>(&'a AtomicU64);

impl<'a> Gauge<'a> {
    pub fn enter(gauge: &'a AtomicU64) -> Gauge<'a> {
        gauge.fetch_add(1, Ordering::Relaxed);
        Gauge(gauge)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    /// Open client connections (gauge).
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
    /// Connections closed at once with a 503: past `--max-connections`, or no coroutine for them.
    pub connections_refused: AtomicU64,
    /// Panics caught: each ended one connection (or request), nothing else.
    pub panics: AtomicU64,
    /// Requests between parsed and answered, held polls included (gauge).
    pub in_flight: AtomicU64,
    /// Long-polls parked right now (gauge).
    pub polls_waiting: AtomicU64,
    /// Streams open now (gauge), and those of them parked for their next change (gauge).
    pub streams_open: AtomicU64,
    pub streams_waiting: AtomicU64,
    pub stream_events: AtomicU64,
    pub stream_heartbeats: AtomicU64,
    pub streams_ended_client_gone: AtomicU64,
    pub streams_ended_slow: AtomicU64,
    pub streams_ended_lifetime: AtomicU64,
    pub streams_ended_shutdown: AtomicU64,
    pub streams_ended_expired: AtomicU64,
    /// Held polls and streams whose client closed the connection while they waited.
    pub clients_gone: AtomicU64,
    pub answered_change: AtomicU64,
    pub answered_timeout: AtomicU64,
    pub answered_resync: AtomicU64,
    pub answered_shutdown: AtomicU64,
    pub snapshots: AtomicU64,
    /// Quotes carried by poll answers and stream events (one per quote per answer or event).
    pub delivered: AtomicU64,
    /// Price changes published through this server (its feed and HTTP publishes); on a cluster
    /// node, those it sent to Redis (the ones it applied from Redis are `redis_changes`).
    pub published: AtomicU64,
    pub requests: AtomicU64,
    /// Requests answered with a 4xx.
    pub client_errors: AtomicU64,
    /// Number of symbols in the book (gauge).
    pub symbols: AtomicU64,
    /// 1 while this cluster node is connected to its Redis (gauge; 0 without --redis).
    pub redis_up: AtomicU64,
    /// 1 while this node runs the random feed (gauge).
    pub feed_leader: AtomicU64,
    /// Redis connections lost and retried.
    pub redis_reconnects: AtomicU64,
    /// Changes applied from Redis (announced or loaded).
    pub redis_changes: AtomicU64,
    /// Requests refused for their credential, by reason (`Metrics::count_auth_refused`).
    pub auth_refused_missing: AtomicU64,
    pub auth_refused_invalid: AtomicU64,
    pub auth_refused_expired: AtomicU64,
    pub auth_refused_forbidden: AtomicU64,
    /// From a quote's change to its first painted frame on a page, as pages report it.
    pub display_delay: Histogram,
    /// From the same changes to their arrival on those pages.
    pub arrival_delay: Histogram,
    /// Display-delay reports, by what became of them.
    pub display_reports_accepted: AtomicU64,
    pub display_reports_refused: AtomicU64,
    pub display_reports_limited: AtomicU64,
}

impl Metrics {
    pub fn count_answer(&self, reason: Reason, quotes: usize) {
        let c = match reason {
            Reason::Snapshot => &self.snapshots,
            Reason::Change => &self.answered_change,
            Reason::Timeout => &self.answered_timeout,
            Reason::Resync => &self.answered_resync,
            Reason::Shutdown => &self.answered_shutdown,
        };
        c.fetch_add(1, Ordering::Relaxed);
        if reason != Reason::Snapshot {
            self.delivered.fetch_add(quotes as u64, Ordering::Relaxed);
        }
    }

    /// Count `e` by its reason if it refuses a credential; other errors are not counted here.
    pub fn count_auth_refused(&self, e: &ApiError) {
        let c = match e {
            ApiError::MissingToken => &self.auth_refused_missing,
            ApiError::InvalidToken(_) => &self.auth_refused_invalid,
            ApiError::ExpiredToken => &self.auth_refused_expired,
            ApiError::NotGranted(_) => &self.auth_refused_forbidden,
            _ => return,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count_request(&self, status: u16) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if (400..500).contains(&status) {
            self.client_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::with_capacity(2048);
        let mut one = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        one(
            "comet_connections_open",
            "gauge",
            "Open client connections.",
            g(&self.connections_open),
        );
        one(
            "comet_connections_total",
            "counter",
            "Client connections accepted.",
            g(&self.connections_total),
        );
        one(
            "comet_connections_refused_total",
            "counter",
            "Connections refused with a 503 (past --max-connections, or no coroutine for them).",
            g(&self.connections_refused),
        );
        one(
            "comet_panics_total",
            "counter",
            "Panics caught; each ended one connection and nothing else.",
            g(&self.panics),
        );
        one(
            "comet_requests_in_flight",
            "gauge",
            "Requests being handled now.",
            g(&self.in_flight),
        );
        one(
            "comet_polls_waiting",
            "gauge",
            "Long-polls waiting for a change now.",
            g(&self.polls_waiting),
        );
        one(
            "comet_streams_open",
            "gauge",
            "Server-Sent Events streams open now.",
            g(&self.streams_open),
        );
        one(
            "comet_streams_waiting",
            "gauge",
            "Streams waiting for their next change now.",
            g(&self.streams_waiting),
        );
        one(
            "comet_stream_events_total",
            "counter",
            "Events written to streams.",
            g(&self.stream_events),
        );
        one(
            "comet_stream_heartbeats_total",
            "counter",
            "Heartbeat comments written to quiet streams.",
            g(&self.stream_heartbeats),
        );
        one(
            "comet_clients_gone_total",
            "counter",
            "Held polls and streams freed because their client closed the connection.",
            g(&self.clients_gone),
        );
        one(
            "comet_snapshots_total",
            "counter",
            "Snapshot requests answered.",
            g(&self.snapshots),
        );
        one(
            "comet_quotes_published_total",
            "counter",
            "Price changes published through this server (feed and HTTP).",
            g(&self.published),
        );
        one(
            "comet_quotes_delivered_total",
            "counter",
            "Quotes delivered in poll answers and stream events.",
            g(&self.delivered),
        );
        one(
            "comet_requests_total",
            "counter",
            "HTTP requests answered.",
            g(&self.requests),
        );
        one(
            "comet_client_errors_total",
            "counter",
            "Requests answered with a 4xx.",
            g(&self.client_errors),
        );
        one(
            "comet_symbols",
            "gauge",
            "Symbols in the quote book.",
            g(&self.symbols),
        );
        one(
            "comet_redis_up",
            "gauge",
            "1 while this cluster node is connected to Redis (0 without --redis).",
            g(&self.redis_up),
        );
        one(
            "comet_feed_leader",
            "gauge",
            "1 while this node runs the random feed.",
            g(&self.feed_leader),
        );
        one(
            "comet_redis_reconnects_total",
            "counter",
            "Redis connections lost and retried.",
            g(&self.redis_reconnects),
        );
        one(
            "comet_redis_changes_total",
            "counter",
            "Changes applied from Redis.",
            g(&self.redis_changes),
        );
        // A counter family with one series per value of its `label`.
        let mut by_label = |name: &str, help: &str, label: &str, series: &[(&str, &AtomicU64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (value, v) in series {
                let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {}", g(v));
            }
        };
        by_label(
            "comet_polls_answered_total",
            "Long-polls answered, by reason.",
            "reason",
            &[
                ("change", &self.answered_change),
                ("timeout", &self.answered_timeout),
                ("resync", &self.answered_resync),
                ("shutdown", &self.answered_shutdown),
            ],
        );
        by_label(
            "comet_streams_ended_total",
            "Streams ended, by reason.",
            "reason",
            &[
                ("client_gone", &self.streams_ended_client_gone),
                ("slow", &self.streams_ended_slow),
                ("lifetime", &self.streams_ended_lifetime),
                ("shutdown", &self.streams_ended_shutdown),
                ("expired", &self.streams_ended_expired),
            ],
        );
        by_label(
            "comet_auth_refused_total",
            "Requests refused for their credential, by reason.",
            "reason",
            &[
                ("missing", &self.auth_refused_missing),
                ("invalid", &self.auth_refused_invalid),
                ("expired", &self.auth_refused_expired),
                ("forbidden", &self.auth_refused_forbidden),
            ],
        );
        by_label(
            "comet_display_reports_total",
            "Display-delay reports from pages, by result.",
            "result",
            &[
                ("accepted", &self.display_reports_accepted),
                ("refused", &self.display_reports_refused),
                ("limited", &self.display_reports_limited),
            ],
        );
        self.display_delay.render(
            "comet_display_delay_seconds",
            "From a quote's change to the first frame painted after a page showed it, as pages report it.",
            &mut out,
        );
        self.arrival_delay.render(
            "comet_arrival_delay_seconds",
            "From a quote's change to its arrival on a page, for the same reported quotes.",
            &mut out,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_has_every_family_once() {
        let m = Metrics::default();
        m.count_answer(Reason::Change, 3);
        m.count_answer(Reason::Timeout, 0);
        let text = m.render();
        assert!(text.contains("comet_quotes_delivered_total 3\n"));
        assert!(text.contains("comet_polls_answered_total{reason=\"change\"} 1\n"));
        assert!(text.contains("comet_polls_answered_total{reason=\"timeout\"} 1\n"));
        assert_eq!(text.matches("# TYPE comet_polls_waiting ").count(), 1);
        assert!(text.contains("comet_streams_ended_total{reason=\"slow\"} 0\n"));
    }

    #[test]
    fn histograms_render_cumulative_buckets_sum_and_count() {
        let m = Metrics::default();
        for s in [0.0004, 0.003, 0.003, 20.0] {
            m.display_delay.observe(s);
        }
        let text = m.render();
        assert!(text.contains("# TYPE comet_display_delay_seconds histogram\n"));
        assert!(text.contains("comet_display_delay_seconds_bucket{le=\"0.0005\"} 1\n"));
        assert!(text.contains("comet_display_delay_seconds_bucket{le=\"0.005\"} 3\n"));
        assert!(text.contains("comet_display_delay_seconds_bucket{le=\"10\"} 3\n"));
        assert!(text.contains("comet_display_delay_seconds_bucket{le=\"+Inf\"} 4\n"));
        assert!(text.contains("comet_display_delay_seconds_count 4\n"));
        assert!(text.contains("comet_display_delay_seconds_sum 20.0064\n"));
    }
}
