//! The Server-Sent Events transport (`GET /api/stream`): a stream is the long-poll loop kept inside
//! one connection. Its coroutine waits until a followed symbol changes, writes one event with the
//! latest quote of every symbol that changed since the previous event, and waits again.
//!
//! There is no queue per client: after each write the stream asks the book for whatever changed
//! since the cursor of its last event, so a slow reader gets the merged latest quotes (the same
//! rule as the long-poll) and its memory never grows with its backlog. The framing is in `sse`;
//! the socket behind [`StreamIo`] is the connection layer's.

use std::io;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::app::App;
use crate::book::{Symbol, Wait};
use crate::error::ApiError;
use crate::metrics::Gauge;
use crate::sse;
use crate::waiter::Hold;

/// How long a browser waits before it reconnects a dropped stream (the `retry:` line).
pub const RETRY: Duration = Duration::from_secs(2);

/// A stream the routes accepted: what it follows and where it resumes.
pub struct Stream<'a> {
    pub symbols: Vec<&'a Symbol>,
    /// From `Last-Event-ID` or `cursor=`; `None` starts with a snapshot.
    pub cursor: Option<u64>,
    /// The lane of the connection's socket (`QuoteBook::lane_of`).
    pub lane: usize,
    /// When the reader's token expires: the stream ends then, with an `expired` event.
    pub expires: Option<Instant>,
    /// Headers the response head carries besides the stream's own (CORS).
    pub headers: Vec<(&'static str, String)>,
}

/// The connection a stream writes to, and parks on.
pub trait StreamIo: Hold {
    /// Write all of `bytes`. `ErrorKind::TimedOut` when the client read nothing for the write
    /// timeout; any other error when the connection is gone.
    fn send(&mut self, bytes: &[u8]) -> io::Result<()>;
}

/// Why a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    ClientGone,
    Slow,
    Lifetime,
    Shutdown,
    /// The reader's token expired.
    Expired,
}

/// When a stream ends: at a random moment in the last 10% of `max`, so that streams opened
/// together (after a restart, say) do not all reconnect together.
pub fn lifetime(max: Duration, rng: &mut impl Rng) -> Duration {
    max.mul_f64(rng.gen_range(0.9..=1.0))
}

/// Run a stream until it ends. `head` is the HTTP response head, sent together with the preamble
/// and (when the stream starts with one) the first event.
pub fn serve(app: &App, s: Stream<'_>, head: Vec<u8>, io: &mut dyn StreamIo) -> End {
    let m = &app.metrics;
    let _open = Gauge::enter(&m.streams_open);
    let end = run(app, s, head, io);
    let counter = match end {
        End::ClientGone => {
            m.clients_gone.fetch_add(1, Ordering::Relaxed);
            &m.streams_ended_client_gone
        }
        End::Slow => &m.streams_ended_slow,
        End::Lifetime => &m.streams_ended_lifetime,
        End::Shutdown => &m.streams_ended_shutdown,
        End::Expired => {
            m.count_auth_refused(&ApiError::ExpiredToken);
            &m.streams_ended_expired
        }
    };
    counter.fetch_add(1, Ordering::Relaxed);
    end
}

fn run(app: &App, s: Stream<'_>, mut out: Vec<u8>, io: &mut dyn StreamIo) -> End {
    let (book, config, m) = (&app.book, &app.config, &app.metrics);
    let end_at =
        Instant::now() + lifetime(config.max_stream, &mut rand::rngs::StdRng::from_entropy());
    sse::preamble(RETRY, &mut out);
    let mut cursor = match s.cursor {
        // On a cluster node that is behind this cursor, the stream waits for it to catch up
        // (`replica`): its first event is then what changed after the cursor, never older.
        Some(c) if !book.from_elsewhere(c) => c,
        // No cursor, or one from elsewhere: start with every requested quote.
        _ => {
            let snapshot = book.snapshot(&s.symbols);
            sse::event(snapshot.cursor, &snapshot.json, &mut out);
            m.stream_events.fetch_add(1, Ordering::Relaxed);
            snapshot.cursor
        }
    };
    if let Err(e) = io.send(&out) {
        return write_failed(&e);
    }
    // Freed while the stream waits, which is nearly always: a held stream keeps no buffer
    // (measured: 9.38 -> 8.4 KiB RSS per held stream at 19,000).
    out = Vec::new();
    let mut last_write = Instant::now();
    // Checked before every wait and before every write, not only when a wait times out: a
    // reader that keeps a busy stream's socket full never sees its waits time out, and would
    // otherwise be served past its token's expiry and its stream's lifetime.
    let over = |now: Instant| {
        if s.expires.is_some_and(|exp| now >= exp) {
            Some(End::Expired)
        } else if now >= end_at {
            Some(End::Lifetime)
        } else {
            None
        }
    };
    loop {
        if let Some(end) = over(Instant::now()) {
            if end == End::Expired {
                // The last event says why, so the client gets a fresh token before it comes
                // back with its Last-Event-ID (a plain reconnect would be refused).
                let _ = io.send(sse::EXPIRED);
            }
            return end;
        }
        let mut deadline = (last_write + config.heartbeat).min(end_at);
        if let Some(exp) = s.expires {
            deadline = deadline.min(exp);
        }
        let waited = book.wait_since(&s.symbols, cursor, deadline, s.lane, io, &m.streams_waiting);
        if over(Instant::now()).is_some() {
            continue; // ended above, before anything more is written
        }
        match waited {
            Wait::Changed(a) => {
                // One allocation for the frame: `id:` line, `data: ` and the blank line.
                out.reserve(a.json.len() + 48);
                sse::event(a.cursor, &a.json, &mut out);
                cursor = a.cursor;
                m.stream_events.fetch_add(1, Ordering::Relaxed);
                m.delivered.fetch_add(a.quotes as u64, Ordering::Relaxed);
            }
            Wait::Timeout => {
                out.extend_from_slice(sse::HEARTBEAT);
                m.stream_heartbeats.fetch_add(1, Ordering::Relaxed);
            }
            Wait::Shutdown => return End::Shutdown,
            Wait::ClientGone => return End::ClientGone,
        }
        if let Err(e) = io.send(&out) {
            return write_failed(&e);
        }
        out = Vec::new();
        last_write = Instant::now();
    }
}

fn write_failed(e: &io::Error) -> End {
    if e.kind() == io::ErrorKind::TimedOut {
        End::Slow
    } else {
        End::ClientGone
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_fall_in_the_last_tenth() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let max = Duration::from_secs(600);
        let all: Vec<Duration> = (0..1000).map(|_| lifetime(max, &mut rng)).collect();
        assert!(all
            .iter()
            .all(|d| *d >= Duration::from_secs(540) && *d <= max));
        // Spread out, not all at one moment.
        let (lo, hi) = (all.iter().min().unwrap(), all.iter().max().unwrap());
        assert!(*hi - *lo > Duration::from_secs(50), "{lo:?}..{hi:?}");
    }
}
