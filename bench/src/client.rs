//! The subscriber side of the latency bench, run in worker processes (`latency --child`): thousands
//! of long-poll subscribers as may coroutines on raw keep-alive HTTP/1.1 sockets, each re-polling
//! with the resume token of its last answer, recording which publish every delivered quote stands
//! for and when it arrived. The coordinator talks to a worker over stdin/stdout JSON lines.

use crate::hist::Histogram;
use crate::http;
use crate::plan::{self, Kind, Transport};
use crate::procstat;
use crate::sse;
use crate::tokens::TokenKey;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{self, BufRead, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::io::{FromRawFd, IntoRawFd};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// One server (a cluster node) the subscribers talk to.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Node {
    pub addr: SocketAddr,
    pub host: String,
    pub base: String,
}

/// What a worker process is asked to do (first stdin line).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChildSpec {
    pub child: usize,
    pub kind: Kind,
    pub transport: Transport,
    /// The servers subscribers talk to: subscriber i to node i % n, or with `hop` each poll to
    /// the next node.
    pub nodes: Vec<Node>,
    pub hop: bool,
    /// Global index of this worker's first subscriber and how many it runs.
    pub first_sub: usize,
    pub n_subs: usize,
    pub symbols: Vec<String>,
    pub k: usize,
    pub seed: u64,
    pub price_base: u64,
    /// Publishes planned for the run (indices decoded from prices must be below this).
    pub n_planned: usize,
    /// `timeout=` sent with our polls (seconds); Nchan's timeout is in its config.
    pub poll_timeout_s: f64,
    pub threads: usize,
    pub connect_concurrency: usize,
    pub src_ips: u32,
    /// Wall-clock deadline (µs since the epoch); the worker reports and exits by then whatever
    /// happened.
    pub deadline_us: u64,
    /// Most (publish, arrival) records kept; beyond this only counts are kept.
    pub max_log: usize,
    /// Report per-publish aggregates (fan-out rounds).
    pub per_publish: bool,
    /// Sign every subscriber its own token (ours: `Authorization: Bearer` on polls,
    /// `access_token=` on streams); `None`: no tokens.
    #[serde(default)]
    pub token_key: Option<TokenKey>,
}

/// The coordinator's second message: what was actually published.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct StopInfo {
    /// Send time (µs since the epoch) of every publish index; 0 = not sent or failed.
    pub send_us: Vec<u64>,
    /// How long to wait for subscribers to catch up with the last publishes.
    pub drain_s: f64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PublishAgg {
    pub received: u64,
    pub expected: u64,
    pub max_ts_us: u64,
    pub max_send_us: u64,
}

/// What a worker reports at the end.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ChildResult {
    pub child: usize,
    pub subs: usize,
    pub ready: usize,
    pub failed: usize,
    pub answers: u64,
    pub empty_answers: u64,
    pub reconnects: u64,
    pub bad_status: u64,
    pub parse_errors: u64,
    pub foreign: u64,
    pub dups: u64,
    pub late: u64,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    /// Subscribers that had not caught up with the last publish of each followed symbol when the
    /// drain ended.
    pub incomplete_subs: usize,
    pub drain_ms: u64,
    pub negative_latencies: u64,
    pub log_truncated: bool,
    pub lat_ts: Histogram,
    pub lat_send: Histogram,
    pub per_publish: Vec<PublishAgg>,
    pub cpu_total_s: f64,
    pub cpu_window_s: f64,
    pub deadline_hit: bool,
}

#[derive(Default)]
struct Counters {
    answers: AtomicU64,
    empty_answers: AtomicU64,
    reconnects: AtomicU64,
    bad_status: AtomicU64,
    parse_errors: AtomicU64,
    foreign: AtomicU64,
    dups: AtomicU64,
    late: AtomicU64,
    received: AtomicU64,
    logged: AtomicUsize,
    log_truncated: AtomicBool,
}

struct Sub {
    /// Followed symbols (indices into the symbol list), sorted.
    syms: Vec<u16>,
    /// Highest publish index received per followed symbol, -1 = none yet.
    max_idx: Vec<AtomicI64>,
    ready: AtomicBool,
    /// (publish index, arrival in µs after the worker's epoch) of every delivery that advanced
    /// `max_idx`. Locked only by its own coroutine and once by the final tally.
    log: Mutex<Vec<(u32, u32)>>,
}

struct Shared {
    spec: ChildSpec,
    sym_index: HashMap<String, u16>,
    pub_syms: Vec<u16>,
    subs: Vec<Sub>,
    epoch_us: u64,
    /// The `ts` carried by the quote of each publish index (first one seen).
    ts_of: Vec<AtomicU64>,
    stop: AtomicBool,
    ready: AtomicUsize,
    failed: AtomicUsize,
    connect_sem: may::sync::Semphore,
    c: Counters,
}

#[derive(Deserialize)]
struct Quote<'a> {
    #[serde(borrow)]
    symbol: Cow<'a, str>,
    price: f64,
    #[serde(default)]
    ts: u64,
}

#[derive(Deserialize)]
struct PollAnswer<'a> {
    cursor: u64,
    #[serde(borrow, default)]
    quotes: Vec<Quote<'a>>,
}

/// Creates a socket bound to `src`, starts a non-blocking connect to `dst` and hands the socket to
/// may; may has no bind-before-connect, and its own `connect` picks the source address itself.
/// Completion is polled (a loopback handshake finishes within microseconds, so the first or second
/// check normally succeeds) with a bounded number of 1 ms coroutine sleeps.
fn connect_from(
    src: Ipv4Addr,
    dst: SocketAddr,
    timeout: Duration,
) -> io::Result<may::net::TcpStream> {
    use socket2::{Domain, Protocol, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    sock.set_nodelay(true)?;
    sock.bind(&SocketAddr::new(src.into(), 0).into())?;
    sock.set_nonblocking(true)?;
    match sock.connect(&dst.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let fd = sock.into_raw_fd();
    // may's from_raw_fd panics if the epoll registration fails (out of memory); turn that into an
    // error instead of killing the coroutine. On that path the fd is closed by may's drop.
    let stream = std::panic::catch_unwind(|| {
        // SAFETY: `fd` is a freshly created socket we own and nothing else refers to it.
        unsafe { may::net::TcpStream::from_raw_fd(fd) }
    })
    .map_err(|_| io::Error::other("registering the socket with may failed"))?;
    let start = Instant::now();
    loop {
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
        if stream.peer_addr().is_ok() {
            return Ok(stream);
        }
        if start.elapsed() > timeout {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "connect timed out"));
        }
        may::coroutine::sleep(Duration::from_millis(1));
    }
}

impl Shared {
    /// The symbols a subscriber follows, as `A,B,C`.
    fn symbols_of(&self, sub: &Sub) -> String {
        self.names_of(sub).join(",")
    }

    fn names_of(&self, sub: &Sub) -> Vec<&str> {
        sub.syms
            .iter()
            .map(|&s| self.spec.symbols[s as usize].as_str())
            .collect()
    }

    /// Subscriber `global`'s own token, granting exactly its symbols until an hour after the
    /// run's deadline; `None` without a token key.
    fn token_of(&self, sub: &Sub, global: usize) -> Option<String> {
        let exp = self.spec.deadline_us / 1_000_000 + 3600;
        let key = self.spec.token_key.as_ref()?;
        Some(key.sign(global, &self.names_of(sub), exp))
    }

    fn deadline_passed(&self) -> bool {
        plan::now_us() >= self.spec.deadline_us
    }

    /// Books one quote that arrived for subscriber `sub` at `arrival_us`.
    fn on_quote(&self, sub: &Sub, symbol: &str, price: f64, ts: u64, arrival_us: u64) {
        let c = &self.c;
        let Some(&sym) = self.sym_index.get(symbol) else {
            c.foreign.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Some(pos) = sub.syms.iter().position(|&s| s == sym) else {
            c.foreign.fetch_add(1, Ordering::Relaxed);
            return;
        };
        // A price that is not one of this run's, or whose index belongs to another symbol, is a
        // quote from elsewhere (a feed, an earlier run's snapshot): not a delivery.
        let idx = match plan::decode_index(price, self.spec.price_base, self.spec.n_planned) {
            Some(i) if self.pub_syms[i] == sym => i,
            _ => {
                c.foreign.fetch_add(1, Ordering::Relaxed);
                return;
            }
        };
        if ts > 0 {
            let _ = self.ts_of[idx].compare_exchange(0, ts, Ordering::Relaxed, Ordering::Relaxed);
        }
        let prev = sub.max_idx[pos].load(Ordering::Relaxed);
        let idx_i = idx as i64;
        if idx_i > prev {
            sub.max_idx[pos].store(idx_i, Ordering::Relaxed);
            c.received.fetch_add(1, Ordering::Relaxed);
            if c.logged.fetch_add(1, Ordering::Relaxed) < self.spec.max_log {
                let off = arrival_us
                    .saturating_sub(self.epoch_us)
                    .min(u32::MAX as u64) as u32;
                sub.log.lock().unwrap().push((idx as u32, off));
            } else {
                c.log_truncated.store(true, Ordering::Relaxed);
            }
        } else if idx_i == prev {
            c.dups.fetch_add(1, Ordering::Relaxed);
        } else {
            // Older than something already seen on this symbol: publishes of one symbol go out in
            // order on one connection, so this is a reordering or a repeat.
            c.late.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Connect subscriber `global` from its source address, bounding the handshakes in flight so the
/// server's accept queue does not overflow into 1 s SYN retransmits. `None` after 5 failures
/// before the subscriber was ever ready (it then counts as failed); otherwise retried with backoff.
fn connect_sub(
    sh: &Shared,
    sub: &Sub,
    global: usize,
    node: &Node,
    failures: &mut u32,
) -> Option<may::net::TcpStream> {
    let src = plan::source_ip(global, sh.spec.src_ips);
    loop {
        if sh.stop.load(Ordering::Relaxed) || sh.deadline_passed() {
            return None;
        }
        sh.connect_sem.wait();
        let r = connect_from(src, node.addr, Duration::from_secs(5));
        sh.connect_sem.post();
        match r {
            Ok(s) => {
                *failures = 0;
                return Some(s);
            }
            Err(e) => {
                *failures += 1;
                if !sub.ready.load(Ordering::Relaxed) && *failures >= 5 {
                    eprintln!("subscriber {global}: giving up connecting from {src}: {e}");
                    sh.failed.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                let backoff = 50u64 << (*failures).min(4);
                may::coroutine::sleep(Duration::from_millis(backoff));
            }
        }
    }
}

/// Books one event's data: a poll answer (ours) or one published message (Nchan).
fn on_data(sh: &Shared, sub: &Sub, data: &[u8], arrival: u64) {
    match sh.spec.kind {
        Kind::Ours => match serde_json::from_slice::<PollAnswer>(data) {
            Ok(a) => {
                for q in &a.quotes {
                    sh.on_quote(sub, &q.symbol, q.price, q.ts, arrival);
                }
            }
            Err(_) => {
                sh.c.parse_errors.fetch_add(1, Ordering::Relaxed);
            }
        },
        Kind::Nchan => match serde_json::from_slice::<Quote>(data) {
            Ok(q) => sh.on_quote(sub, &q.symbol, q.price, q.ts, arrival),
            Err(_) => {
                sh.c.parse_errors.fetch_add(1, Ordering::Relaxed);
            }
        },
    }
}

/// One SSE subscriber: open the stream, book every event, and on any error reconnect with
/// `Last-Event-ID` set to the last event's id, so nothing is skipped. Runs until stop or the
/// deadline.
fn stream_subscriber(sh: Arc<Shared>, local: usize) {
    let spec = &sh.spec;
    let sub = &sh.subs[local];
    let global = spec.first_sub + local;
    let sym_csv = sh.symbols_of(sub);
    // A stream stays on one node: subscriber i on node i % n.
    let node = &spec.nodes[global % spec.nodes.len()];
    let path = match spec.kind {
        // No cursor: the first event is a snapshot of prices from before the run (foreign, not
        // counted); every later one is a delivery.
        Kind::Ours => match sh.token_of(sub, global) {
            Some(t) => format!(
                "{}/api/stream?symbols={sym_csv}&access_token={t}",
                node.base
            ),
            None => format!("{}/api/stream?symbols={sym_csv}", node.base),
        },
        Kind::Nchan => format!("{}/sub/{sym_csv}", node.base),
    };
    let mut last_id: Option<String> = None;
    let mut failures = 0u32;
    let (mut raw, mut body, mut events) = (Vec::with_capacity(2048), Vec::new(), Vec::new());
    while !sh.stop.load(Ordering::Relaxed) && !sh.deadline_passed() {
        let Some(mut stream) = connect_sub(&sh, sub, global, node, &mut failures) else {
            return;
        };
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAccept: text/event-stream\r\n",
            node.host
        );
        if let Some(id) = &last_id {
            req.push_str(&format!("Last-Event-ID: {id}\r\n"));
        }
        req.push_str("\r\n");
        if io::Write::write_all(&mut stream, req.as_bytes()).is_err() {
            sh.c.reconnects.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        raw.clear();
        body.clear();
        // The head: status and whether the body is chunked.
        let head = loop {
            if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&raw[..i]).to_ascii_lowercase();
                raw.drain(..i + 4);
                break Some(head);
            }
            if raw.len() > 64 * 1024 || read_more(&mut stream, &mut raw).is_err() {
                break None;
            }
        };
        let Some(head) = head else {
            sh.c.reconnects.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok());
        if status != Some(200) {
            sh.c.bad_status.fetch_add(1, Ordering::Relaxed);
            if sh.c.bad_status.load(Ordering::Relaxed) <= 3 {
                eprintln!(
                    "subscriber {global}: stream refused: {}",
                    head.lines().next().unwrap_or("")
                );
            }
            may::coroutine::sleep(Duration::from_millis(100));
            continue;
        }
        let mut chunks = head
            .lines()
            .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"))
            .then(sse::Dechunk::default);
        if !sub.ready.swap(true, Ordering::Relaxed) {
            sh.ready.fetch_add(1, Ordering::Relaxed);
        }
        // Read events until the stream breaks. No read timeout: the worker's deadline bounds it.
        loop {
            match chunks.as_mut() {
                Some(d) => {
                    if d.feed(&mut raw, &mut body).is_err() || d.done {
                        break;
                    }
                }
                None => body.append(&mut raw),
            }
            sse::take_events(&mut body, &mut events);
            if !events.is_empty() {
                let arrival = plan::now_us();
                for ev in events.drain(..) {
                    sh.c.answers.fetch_add(1, Ordering::Relaxed);
                    if ev.id.is_some() {
                        last_id = ev.id;
                    }
                    on_data(&sh, sub, &ev.data, arrival);
                }
            }
            if sh.stop.load(Ordering::Relaxed) || read_more(&mut stream, &mut raw).is_err() {
                break;
            }
        }
        if !sh.stop.load(Ordering::Relaxed) {
            sh.c.reconnects.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Read what is there (at least one byte) onto `buf`; end of stream is an error.
fn read_more(stream: &mut may::net::TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    let old = buf.len();
    buf.resize(old + 4096, 0);
    let r = io::Read::read(stream, &mut buf[old..]);
    buf.truncate(old + *r.as_ref().unwrap_or(&0));
    match r {
        Ok(0) => Err(io::ErrorKind::UnexpectedEof.into()),
        Ok(_) => Ok(()),
        Err(e) => Err(e),
    }
}

/// One subscriber: connect, poll, book the answer, re-poll with the new resume token; reconnect on
/// errors (keeping the token, so nothing is skipped). Runs until stop or the deadline.
fn subscriber(sh: Arc<Shared>, local: usize) {
    if sh.spec.transport == Transport::Sse {
        return stream_subscriber(sh, local);
    }
    let spec = &sh.spec;
    let sub = &sh.subs[local];
    let global = spec.first_sub + local;
    let sym_csv = sh.symbols_of(sub);
    // Sent as a header at every poll, as a page's fetch would.
    let auth = sh
        .token_of(sub, global)
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let mut cursor: Option<u64> = None;
    let mut last_modified: Option<String> = None;
    let mut etag: Option<String> = None;
    // One keep-alive connection per node this subscriber talks to.
    let n_nodes = spec.nodes.len();
    let mut conns: Vec<Option<may::net::TcpStream>> = (0..n_nodes).map(|_| None).collect();
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let mut connect_failures = 0u32;
    let mut req = String::with_capacity(256);
    let mut polls = 0usize;

    while !sh.stop.load(Ordering::Relaxed) && !sh.deadline_passed() {
        let at = if spec.hop {
            (global + polls) % n_nodes
        } else {
            global % n_nodes
        };
        polls += 1;
        let node = &spec.nodes[at];
        let conn = &mut conns[at];
        let stream = match conn.as_mut() {
            Some(s) => s,
            None => match connect_sub(&sh, sub, global, node, &mut connect_failures) {
                Some(s) => {
                    buf.clear();
                    conn.insert(s)
                }
                None => return,
            },
        };

        req.clear();
        match spec.kind {
            Kind::Ours => {
                req.push_str(&format!("GET {}/api/poll?symbols={sym_csv}", node.base));
                if let Some(c) = cursor {
                    req.push_str(&format!("&cursor={c}"));
                }
                req.push_str(&format!(
                    "&timeout={} HTTP/1.1\r\nHost: {}\r\n{auth}\r\n",
                    spec.poll_timeout_s, node.host
                ));
            }
            Kind::Nchan => {
                req.push_str(&format!(
                    "GET {}/sub/{sym_csv} HTTP/1.1\r\nHost: {}\r\n",
                    node.base, node.host
                ));
                if let (Some(lm), Some(et)) = (&last_modified, &etag) {
                    req.push_str(&format!(
                        "If-Modified-Since: {lm}\r\nIf-None-Match: {et}\r\n"
                    ));
                }
                req.push_str("\r\n");
            }
        }
        if let Err(_e) = io::Write::write_all(stream, req.as_bytes()) {
            *conn = None;
            sh.c.reconnects.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        if !sub.ready.swap(true, Ordering::Relaxed) {
            sh.ready.fetch_add(1, Ordering::Relaxed);
        }
        // No read timeout on purpose: a timer per poll costs the client a futex wake of may's timer
        // thread on every answer. The worker's deadline bounds a poll that never returns.
        let resp = match http::read_response(stream, &mut buf, false) {
            Ok(r) => r,
            Err(_) => {
                *conn = None;
                sh.c.reconnects.fetch_add(1, Ordering::Relaxed);
                continue;
            }
        };
        let arrival = plan::now_us();
        sh.c.answers.fetch_add(1, Ordering::Relaxed);
        match (spec.kind, resp.status) {
            (Kind::Ours, 200) => match serde_json::from_slice::<PollAnswer>(&resp.body) {
                Ok(a) => {
                    cursor = Some(a.cursor);
                    if a.quotes.is_empty() {
                        sh.c.empty_answers.fetch_add(1, Ordering::Relaxed);
                    }
                    for q in &a.quotes {
                        sh.on_quote(sub, &q.symbol, q.price, q.ts, arrival);
                    }
                }
                Err(_) => {
                    sh.c.parse_errors.fetch_add(1, Ordering::Relaxed);
                }
            },
            (Kind::Nchan, 200) => {
                last_modified = resp.last_modified.clone();
                etag = resp.etag.clone();
                on_data(&sh, sub, &resp.body, arrival);
            }
            // Nchan answers a long-poll that timed out with 408 (or 304): poll again, same token.
            (Kind::Nchan, 304 | 408) => {
                sh.c.empty_answers.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                sh.c.bad_status.fetch_add(1, Ordering::Relaxed);
                if sh.c.bad_status.load(Ordering::Relaxed) <= 3 {
                    eprintln!(
                        "subscriber {global}: HTTP {} {}",
                        resp.status,
                        String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)])
                    );
                }
                // Do not spin on a server that refuses us.
                may::coroutine::sleep(Duration::from_millis(100));
            }
        }
        if resp.close {
            *conn = None;
        }
    }
}

enum Cmd {
    Go,
    Stop(StopInfo),
    Eof,
}

fn emit(v: &serde_json::Value) {
    let mut out = io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// Entry point of a worker process. Never returns: it exits once its result is written.
pub fn child_main() -> ! {
    procstat::raise_nofile();
    let mut line = String::new();
    if io::stdin().lock().read_line(&mut line).unwrap_or(0) == 0 {
        eprintln!("latency --child: no spec on stdin");
        std::process::exit(2);
    }
    let spec: ChildSpec = match serde_json::from_str(&line) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("latency --child: bad spec: {e}");
            std::process::exit(2);
        }
    };
    may::config().set_workers(spec.threads.max(1));

    let n_sym = spec.symbols.len();
    let subs = (0..spec.n_subs)
        .map(|i| {
            let syms = plan::subscriber_symbols(spec.seed, spec.first_sub + i, n_sym, spec.k);
            let max_idx = syms.iter().map(|_| AtomicI64::new(-1)).collect();
            Sub {
                syms,
                max_idx,
                ready: AtomicBool::new(false),
                log: Mutex::new(Vec::new()),
            }
        })
        .collect();
    let sh = Arc::new(Shared {
        sym_index: spec
            .symbols
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i as u16))
            .collect(),
        pub_syms: plan::publish_symbols(spec.seed, spec.n_planned, n_sym),
        subs,
        epoch_us: plan::now_us(),
        ts_of: (0..spec.n_planned).map(|_| AtomicU64::new(0)).collect(),
        stop: AtomicBool::new(false),
        ready: AtomicUsize::new(0),
        failed: AtomicUsize::new(0),
        connect_sem: may::sync::Semphore::new(spec.connect_concurrency.max(1)),
        c: Counters::default(),
        spec,
    });

    // Commands from the coordinator arrive on stdin; a plain thread turns them into messages.
    let (tx, rx) = mpsc::channel::<Cmd>();
    std::thread::spawn(move || {
        let stdin = io::stdin();
        for line in stdin.lock().lines() {
            let Ok(line) = line else { break };
            let cmd = if line.trim() == "go" {
                Cmd::Go
            } else if let Some(rest) = line.strip_prefix("stop ") {
                Cmd::Stop(serde_json::from_str(rest).unwrap_or_default())
            } else {
                continue;
            };
            if tx.send(cmd).is_err() {
                return;
            }
        }
        let _ = tx.send(Cmd::Eof);
    });

    for i in 0..sh.spec.n_subs {
        let sh2 = sh.clone();
        may::go!(move || subscriber(sh2, i));
    }

    // Report readiness once every subscriber has sent its first poll or given up.
    let child = sh.spec.child;
    let time_left =
        |sh: &Shared| Duration::from_micros(sh.spec.deadline_us.saturating_sub(plan::now_us()));
    while sh.ready.load(Ordering::Relaxed) + sh.failed.load(Ordering::Relaxed) < sh.spec.n_subs
        && !sh.deadline_passed()
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    emit(&serde_json::json!({
        "type": "ready",
        "child": child,
        "ready": sh.ready.load(Ordering::Relaxed),
        "failed": sh.failed.load(Ordering::Relaxed),
    }));

    let mut cpu_go = procstat::self_cpu_s();
    let mut stop_info: Option<StopInfo> = None;
    let mut deadline_hit = false;
    loop {
        match rx.recv_timeout(time_left(&sh).min(Duration::from_millis(200))) {
            Ok(Cmd::Go) => cpu_go = procstat::self_cpu_s(),
            Ok(Cmd::Stop(s)) => {
                stop_info = Some(s);
                break;
            }
            // The coordinator is gone: nobody will read a result.
            Ok(Cmd::Eof) => std::process::exit(3),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if sh.deadline_passed() {
                    deadline_hit = true;
                    break;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => std::process::exit(3),
        }
    }
    let info = stop_info.unwrap_or_default();
    let (drain_ms, incomplete) = drain(&sh, &info, &mut deadline_hit);
    sh.stop.store(true, Ordering::Relaxed);
    let mut res = tally(&sh, &info);
    res.drain_ms = drain_ms;
    res.incomplete_subs = incomplete;
    res.cpu_total_s = procstat::self_cpu_s();
    res.cpu_window_s = res.cpu_total_s - cpu_go;
    res.deadline_hit = deadline_hit;
    let mut v = serde_json::to_value(&res).unwrap_or_default();
    v["type"] = "result".into();
    emit(&v);
    std::process::exit(0);
}

/// The highest successfully published index per symbol, -1 = none.
fn last_per_symbol(sh: &Shared, info: &StopInfo) -> Vec<i64> {
    let mut last = vec![-1i64; sh.spec.symbols.len()];
    for (i, &t) in info.send_us.iter().enumerate() {
        if t > 0 && i < sh.pub_syms.len() {
            last[sh.pub_syms[i] as usize] = i as i64;
        }
    }
    last
}

fn incomplete_count(sh: &Shared, last: &[i64]) -> usize {
    sh.subs
        .iter()
        .filter(|s| s.ready.load(Ordering::Relaxed))
        .filter(|s| {
            s.syms
                .iter()
                .zip(&s.max_idx)
                .any(|(&sym, m)| m.load(Ordering::Relaxed) < last[sym as usize])
        })
        .count()
}

/// Waits (bounded by the drain time and the deadline) until every subscriber has the last publish
/// of each symbol it follows. Returns the time waited and how many were still behind.
fn drain(sh: &Shared, info: &StopInfo, deadline_hit: &mut bool) -> (u64, usize) {
    let last = last_per_symbol(sh, info);
    let start = Instant::now();
    let limit = Duration::from_secs_f64(info.drain_s.max(0.0));
    loop {
        let behind = incomplete_count(sh, &last);
        if behind == 0 || start.elapsed() >= limit {
            return (start.elapsed().as_millis() as u64, behind);
        }
        if sh.deadline_passed() {
            *deadline_hit = true;
            return (start.elapsed().as_millis() as u64, behind);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Expected / received / lost and the latency histograms. A subscriber counts as having seen a
/// publish if it received that publish or a later one of the same symbol (comet-quotes merges
/// intermediate ticks of a symbol into its latest price; the same rule is applied to Nchan).
fn tally(sh: &Shared, info: &StopInfo) -> ChildResult {
    let n_sym = sh.spec.symbols.len();
    let mut per_sym: Vec<Vec<u32>> = vec![Vec::new(); n_sym];
    for (i, &t) in info.send_us.iter().enumerate() {
        if t > 0 && i < sh.pub_syms.len() {
            per_sym[sh.pub_syms[i] as usize].push(i as u32); // ascending by construction
        }
    }
    let mut per_pub: Vec<PublishAgg> = if sh.spec.per_publish {
        vec![PublishAgg::default(); info.send_us.len()]
    } else {
        Vec::new()
    };
    let mut r = ChildResult {
        child: sh.spec.child,
        subs: sh.spec.n_subs,
        ready: sh.ready.load(Ordering::Relaxed),
        failed: sh.failed.load(Ordering::Relaxed),
        ..Default::default()
    };
    let mut lat_ts = Histogram::new();
    let mut lat_send = Histogram::new();
    for sub in &sh.subs {
        if !sub.ready.load(Ordering::Relaxed) {
            continue;
        }
        for (&sym, m) in sub.syms.iter().zip(&sub.max_idx) {
            let pubs = &per_sym[sym as usize];
            let max = m.load(Ordering::Relaxed);
            r.expected += pubs.len() as u64;
            // Publishes after the highest one received were never seen.
            let seen = pubs.partition_point(|&i| (i as i64) <= max);
            r.lost += (pubs.len() - seen) as u64;
            if sh.spec.per_publish {
                for &i in pubs {
                    per_pub[i as usize].expected += 1;
                }
            }
        }
        let log = sub.log.lock().unwrap();
        for &(idx, off) in log.iter() {
            let arrival = sh.epoch_us + off as u64;
            let idx = idx as usize;
            let ts = sh.ts_of[idx].load(Ordering::Relaxed);
            let send = info.send_us.get(idx).copied().unwrap_or(0);
            let mut d_ts = None;
            let mut d_send = None;
            if ts > 0 {
                if arrival < ts {
                    r.negative_latencies += 1;
                }
                let d = arrival.saturating_sub(ts);
                lat_ts.record(d);
                d_ts = Some(d);
            }
            if send > 0 {
                let d = arrival.saturating_sub(send);
                lat_send.record(d);
                d_send = Some(d);
            }
            if let Some(p) = per_pub.get_mut(idx) {
                p.received += 1;
                p.max_ts_us = p.max_ts_us.max(d_ts.unwrap_or(0));
                p.max_send_us = p.max_send_us.max(d_send.unwrap_or(0));
            }
        }
    }
    let c = &sh.c;
    r.answers = c.answers.load(Ordering::Relaxed);
    r.empty_answers = c.empty_answers.load(Ordering::Relaxed);
    r.reconnects = c.reconnects.load(Ordering::Relaxed);
    r.bad_status = c.bad_status.load(Ordering::Relaxed);
    r.parse_errors = c.parse_errors.load(Ordering::Relaxed);
    r.foreign = c.foreign.load(Ordering::Relaxed);
    r.dups = c.dups.load(Ordering::Relaxed);
    r.late = c.late.load(Ordering::Relaxed);
    r.received = c.received.load(Ordering::Relaxed);
    r.log_truncated = c.log_truncated.load(Ordering::Relaxed);
    r.lat_ts = lat_ts.compact();
    r.lat_send = lat_send.compact();
    r.per_publish = per_pub;
    r
}
