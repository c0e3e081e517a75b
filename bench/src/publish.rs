//! The publishing side of the latency bench, in the coordinator process: paced price changes over a
//! few blocking keep-alive connections (each symbol always on the same connection, so the server sees
//! a symbol's changes in index order), plus small blocking GETs for server-side counters.

use crate::hist::Histogram;
use crate::http::{self, Target};
use crate::plan::{self, Kind, Transport};
use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// A blocking keep-alive connection with bounded reads and writes.
pub struct Conn {
    target: Target,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Conn {
    pub fn new(target: &Target) -> Conn {
        Conn {
            target: target.clone(),
            stream: None,
            buf: Vec::new(),
        }
    }

    fn stream(&mut self) -> io::Result<&mut TcpStream> {
        if self.stream.is_none() {
            let s = TcpStream::connect_timeout(&self.target.addr, IO_TIMEOUT)?;
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(IO_TIMEOUT))?;
            s.set_write_timeout(Some(IO_TIMEOUT))?;
            self.buf.clear();
            self.stream = Some(s);
        }
        Ok(self.stream.as_mut().expect("just set"))
    }

    /// Sends one request (already formatted) and reads the answer; any error drops the connection
    /// so the next call reconnects.
    pub fn exchange(&mut self, req: &[u8]) -> io::Result<http::Response> {
        let r = (|| {
            let s = self.stream()?;
            s.write_all(req)?;
            let mut buf = std::mem::take(&mut self.buf);
            let s = self.stream.as_mut().expect("connected");
            let r = http::read_response(s, &mut buf, false);
            self.buf = buf;
            r
        })();
        match &r {
            Ok(resp) if !resp.close => {}
            _ => self.stream = None,
        }
        r
    }

    pub fn get(&mut self, path: &str) -> io::Result<http::Response> {
        let req = format!(
            "GET {}{path} HTTP/1.1\r\nHost: {}\r\n\r\n",
            self.target.base, self.target.host
        );
        self.exchange(req.as_bytes())
    }
}

/// How many subscribers the server says are waiting: comet-quotes' `comet_polls_waiting` (or
/// `comet_streams_waiting`) gauge or Nchan's stub-status `subscribers:` line (either transport).
/// None if the server does not tell.
pub fn server_waiting(kind: Kind, transport: Transport, target: &Target) -> Option<u64> {
    let mut c = Conn::new(target);
    match kind {
        Kind::Ours => {
            let r = c.get("/metrics").ok()?;
            if r.status != 200 {
                return None;
            }
            let text = String::from_utf8_lossy(&r.body);
            let mut total = None;
            for line in text.lines() {
                let gauge = match transport {
                    Transport::Poll => "comet_polls_waiting",
                    Transport::Sse => "comet_streams_waiting",
                };
                let Some(rest) = line.strip_prefix(gauge) else {
                    continue;
                };
                // `comet_polls_waiting 12` or `comet_polls_waiting{...} 12`
                if !(rest.starts_with(' ') || rest.starts_with('{')) {
                    continue;
                }
                let v: f64 = rest.rsplit(' ').next()?.trim().parse().ok()?;
                *total.get_or_insert(0) += v as u64;
            }
            total
        }
        Kind::Nchan => {
            let r = c.get("/nchan_status").ok()?;
            if r.status != 200 {
                return None;
            }
            let text = String::from_utf8_lossy(&r.body);
            text.lines()
                .find_map(|l| l.strip_prefix("subscribers:"))
                .and_then(|v| v.trim().parse().ok())
        }
    }
}

/// The waiting subscribers of several servers (cluster nodes), summed; None if any does not tell.
pub fn servers_waiting(kind: Kind, transport: Transport, targets: &[Target]) -> Option<u64> {
    targets
        .iter()
        .map(|t| server_waiting(kind, transport, t))
        .sum()
}

/// Builds the publish request for index `idx`; `send_us` goes into Nchan's message as its `ts`
/// (comet-quotes stamps its own `ts` at the change).
pub fn publish_request(
    kind: Kind,
    target: &Target,
    auth: &str,
    symbol: &str,
    price_base: u64,
    idx: usize,
    send_us: u64,
) -> String {
    let price = plan::format_price(plan::price_cents(price_base, idx));
    let (path, body) = match kind {
        Kind::Ours => (
            format!("{}/api/quotes", target.base),
            format!("{{\"symbol\":\"{symbol}\",\"price\":{price}}}"),
        ),
        Kind::Nchan => (
            format!("{}/pub/{symbol}", target.base),
            format!("{{\"symbol\":\"{symbol}\",\"price\":{price},\"ts\":{send_us}}}"),
        ),
    };
    format!(
        "POST {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nAccept: text/json\r\nContent-Length: {}\r\n\r\n{body}",
        target.host,
        body.len()
    )
}

/// What the publishers did.
#[derive(Default)]
pub struct PubOutcome {
    /// Send time (µs since the epoch) per index; 0 = not sent (past the deadline) or failed.
    pub send_us: Vec<u64>,
    pub sent: usize,
    pub failed: usize,
    pub first_error: Option<String>,
    /// How late each send was against its schedule (µs).
    pub lag: Histogram,
    /// Time from send to the server's answer (µs).
    pub resp: Histogram,
    /// Seconds from the first to the last send.
    pub span_s: f64,
}

pub struct PubPlan {
    pub kind: Kind,
    pub transport: Transport,
    /// The servers whose waiting subscribers a fan-out round waits for.
    pub waiting_on: Vec<Target>,
    pub target: Target,
    pub symbols: Vec<String>,
    /// Symbol of each publish.
    pub pub_syms: Vec<u16>,
    /// Scheduled offset of each publish from the start, in µs.
    pub offsets_us: Vec<u64>,
    pub price_base: u64,
    pub connections: usize,
    /// `Authorization: Bearer <publish token>\r\n` (ours), or empty.
    pub auth: String,
}

impl PubPlan {
    /// The request of publish `idx`, stamped now, and that stamp (µs since the epoch).
    fn request(&self, idx: usize) -> (String, u64) {
        let sym = &self.symbols[self.pub_syms[idx] as usize];
        let send_us = plan::now_us();
        let req = publish_request(
            self.kind,
            &self.target,
            &self.auth,
            sym,
            self.price_base,
            idx,
            send_us,
        );
        (req, send_us)
    }
}

/// Most requests one lane keeps unanswered before its writer waits (that wait shows up as lag).
const MAX_IN_FLIGHT: usize = 512;

/// What one lane's reader reports per answered (or failed) publish.
struct Answered {
    idx: usize,
    send_us: u64,
    /// The answer time in µs, or why the publish failed.
    outcome: Result<u64, String>,
}

/// Reads the answers of one pipelined connection in order. Stops at the first error; the requests
/// still queued are then reported as failed (their fate is unknown).
fn lane_reader(
    mut stream: TcpStream,
    queue: mpsc::Receiver<(usize, u64, Instant)>,
    done: mpsc::Sender<Answered>,
    in_flight: Arc<AtomicUsize>,
    broken: Arc<AtomicBool>,
) {
    let mut buf = Vec::new();
    let mut failed_from: Option<String> = None;
    while let Ok((idx, send_us, t0)) = queue.recv() {
        let outcome = if let Some(e) = &failed_from {
            Err(e.clone())
        } else {
            match http::read_response(&mut stream, &mut buf, false) {
                Ok(r) => {
                    let ok = (200..300).contains(&r.status);
                    let e = if ok {
                        "server closed the publish connection".to_string()
                    } else {
                        format!("HTTP {} {}", r.status, String::from_utf8_lossy(&r.body))
                    };
                    if r.close {
                        failed_from = Some(e.clone());
                        broken.store(true, Ordering::Relaxed);
                    }
                    if ok {
                        Ok(t0.elapsed().as_micros() as u64)
                    } else {
                        Err(e)
                    }
                }
                Err(e) => {
                    failed_from = Some(e.to_string());
                    broken.store(true, Ordering::Relaxed);
                    Err(e.to_string())
                }
            }
        };
        let a = Answered {
            idx,
            send_us,
            outcome,
        };
        in_flight.fetch_sub(1, Ordering::Relaxed);
        if done.send(a).is_err() {
            return;
        }
    }
}

/// The writing half of one pipelined publish connection; its answers are read by `lane_reader`.
struct Lane {
    writer: TcpStream,
    queue: mpsc::Sender<(usize, u64, Instant)>,
    in_flight: Arc<AtomicUsize>,
    broken: Arc<AtomicBool>,
}

impl Lane {
    fn connect(
        target: &Target,
        done: &mpsc::Sender<Answered>,
    ) -> io::Result<(Lane, thread::JoinHandle<()>)> {
        let writer = TcpStream::connect_timeout(&target.addr, IO_TIMEOUT)?;
        writer.set_nodelay(true)?;
        writer.set_read_timeout(Some(IO_TIMEOUT))?;
        writer.set_write_timeout(Some(IO_TIMEOUT))?;
        let reader = writer.try_clone()?;
        let (queue, queue_rx) = mpsc::channel();
        let lane = Lane {
            writer,
            queue,
            in_flight: Arc::new(AtomicUsize::new(0)),
            broken: Arc::new(AtomicBool::new(false)),
        };
        let (d, f, b) = (done.clone(), lane.in_flight.clone(), lane.broken.clone());
        let handle = thread::spawn(move || lane_reader(reader, queue_rx, d, f, b));
        Ok((lane, handle))
    }
}

fn failed(idx: usize, e: &io::Error) -> Answered {
    Answered {
        idx,
        send_us: 0,
        outcome: Err(e.to_string()),
    }
}

/// One publisher connection: sends the publishes of the symbols assigned to lane `j` on schedule.
/// Returns the schedule lag of each send.
fn publish_lane(
    plan: &PubPlan,
    j: usize,
    lanes: usize,
    start: Instant,
    stop_at: Instant,
    done: &mpsc::Sender<Answered>,
) -> Histogram {
    let mut lag = Histogram::new();
    let mut lane: Option<Lane> = None;
    let mut readers = Vec::new();
    let n = plan.pub_syms.len();
    for idx in (0..n).filter(|&i| plan.pub_syms[i] as usize % lanes == j) {
        let due = start + Duration::from_micros(plan.offsets_us[idx]);
        if due >= stop_at || Instant::now() >= stop_at {
            break;
        }
        let now = Instant::now();
        if due > now {
            thread::sleep(due - now);
        }
        if lane
            .as_ref()
            .is_some_and(|l| l.broken.load(Ordering::Relaxed))
        {
            lane = None; // reconnect after an error
        }
        if lane.is_none() {
            match Lane::connect(&plan.target, done) {
                Ok((l, h)) => {
                    readers.push(h);
                    lane = Some(l);
                }
                Err(e) => {
                    let _ = done.send(failed(idx, &e));
                    continue;
                }
            }
        }
        let l = lane.as_mut().expect("connected above");
        // Bounded pipeline depth; waiting here is counted as lag.
        while l.in_flight.load(Ordering::Relaxed) >= MAX_IN_FLIGHT
            && !l.broken.load(Ordering::Relaxed)
            && Instant::now() < stop_at
        {
            thread::sleep(Duration::from_micros(200));
        }
        lag.record(Instant::now().saturating_duration_since(due).as_micros() as u64);
        let (req, send_us) = plan.request(idx);
        l.in_flight.fetch_add(1, Ordering::Relaxed);
        let t0 = Instant::now();
        if let Err(e) = l.writer.write_all(req.as_bytes()) {
            l.in_flight.fetch_sub(1, Ordering::Relaxed);
            l.broken.store(true, Ordering::Relaxed);
            let _ = done.send(failed(idx, &e));
            continue;
        }
        let _ = l.queue.send((idx, send_us, t0));
    }
    // Closing the queues lets each reader finish the answers still owed (bounded by the read
    // timeout) and exit.
    drop(lane);
    for r in readers {
        let _ = r.join();
    }
    lag
}

/// Runs the paced publishers until every publish is sent or `stop_at` passes. Open loop: publish `i`
/// is written at `start + offsets_us[i]` whether or not earlier ones were answered (HTTP/1.1
/// pipelining on each connection, answers read by a separate thread), so a slow server shows up as
/// slow answers and late deliveries rather than as a publisher that quietly slowed down. Each
/// symbol always uses the same connection, so the server sees a symbol's changes in index order.
pub fn run(plan: &PubPlan, start: Instant, stop_at: Instant) -> PubOutcome {
    let n = plan.pub_syms.len();
    let lanes = plan.connections.clamp(1, plan.symbols.len().max(1));
    let (done_tx, done_rx) = mpsc::channel::<Answered>();
    let lag = thread::scope(|scope| {
        let handles: Vec<_> = (0..lanes)
            .map(|j| {
                let done = done_tx.clone();
                scope.spawn(move || publish_lane(plan, j, lanes, start, stop_at, &done))
            })
            .collect();
        let mut lag = Histogram::new();
        for h in handles {
            if let Ok(l) = h.join() {
                lag.merge(&l);
            }
        }
        lag
    });
    drop(done_tx);
    let mut out = PubOutcome {
        send_us: vec![0; n],
        lag,
        ..Default::default()
    };
    let (mut lo, mut hi) = (u64::MAX, 0u64);
    for a in done_rx.try_iter() {
        match a.outcome {
            Ok(resp_us) => {
                out.send_us[a.idx] = a.send_us;
                out.sent += 1;
                out.resp.record(resp_us);
                lo = lo.min(a.send_us);
                hi = hi.max(a.send_us);
            }
            Err(e) => {
                out.failed += 1;
                if out.first_error.is_none() {
                    out.first_error = Some(e);
                }
            }
        }
    }
    if hi >= lo {
        out.span_s = (hi - lo) as f64 / 1e6;
    }
    out
}

/// Fan-out rounds: before each single change, wait (bounded) until the server reports at least
/// `want_waiting` parked polls, so every round starts with all subscribers waiting again.
pub fn run_fanout(
    plan: &PubPlan,
    want_waiting: u64,
    gap: Duration,
    wait_max: Duration,
    stop_at: Instant,
) -> (PubOutcome, Vec<Option<u64>>) {
    let n = plan.pub_syms.len();
    let mut out = PubOutcome {
        send_us: vec![0; n],
        ..Default::default()
    };
    let mut waiting_seen = Vec::new();
    let mut conn = Conn::new(&plan.target);
    for idx in 0..n {
        if Instant::now() + gap >= stop_at {
            break;
        }
        thread::sleep(gap);
        let t = Instant::now();
        let mut seen = servers_waiting(plan.kind, plan.transport, &plan.waiting_on);
        while seen.is_some_and(|w| w < want_waiting)
            && t.elapsed() < wait_max
            && Instant::now() < stop_at
        {
            thread::sleep(Duration::from_millis(20));
            seen = servers_waiting(plan.kind, plan.transport, &plan.waiting_on);
        }
        waiting_seen.push(seen);
        let (req, send_us) = plan.request(idx);
        let t0 = Instant::now();
        match conn.exchange(req.as_bytes()) {
            Ok(r) if (200..300).contains(&r.status) => {
                out.resp.record(t0.elapsed().as_micros() as u64);
                out.lag.record(0);
                out.send_us[idx] = send_us;
                out.sent += 1;
            }
            Ok(r) => {
                out.failed += 1;
                out.first_error.get_or_insert_with(|| {
                    format!("HTTP {} {}", r.status, String::from_utf8_lossy(&r.body))
                });
            }
            Err(e) => {
                out.failed += 1;
                out.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    (out, waiting_seen)
}
