//! The project's own HTTP/1.1 connection layer on `may::net`: one coroutine per connection.
//!
//! Why not may_minihttp alone: 0.1.11 drops any request with more than 16 headers without an
//! answer (a browser reload with a cookie already sends 16), ignores `Connection: close`, has no
//! idle timeout, reads a body before it can be refused, and does not tell the handler the client's
//! address. This layer does all of that in a few hundred lines and keeps memory per held poll low:
//! the read buffer is freed while a handler waits.

use std::cell::Cell;
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use may::io::{WaitIo, WaitIoWaker};
use may::net::{TcpListener, TcpStream};

use crate::app::App;
use crate::error::ApiError;
use crate::http::date;
use crate::http::protocol::{self, BodyLength, ChunkedDecoder, HeadScanner};
use crate::metrics::Gauge;
use crate::reply::{error_reply, Reply};
use crate::request::{ConnState, Request};
use crate::routes::{self, Response};
use crate::stream::{self, StreamIo};
use crate::throttle::Throttle;
use crate::waiter::{Expire, Hold, Parked, Parker, Sweeper};

/// Bytes read at a time. Under 1 KiB so the buffer comes from glibc's per-thread cache (chunks up
/// to 1032 bytes): larger buffers, allocated and freed on every request, showed up as malloc
/// consolidation in a fan-out profile. Most requests fit in one chunk.
const READ_CHUNK: usize = 1000;

/// Accept connections forever on a coroutine; each connection gets its own coroutine.
pub fn serve(listener: TcpListener, app: Arc<App>) -> io::Result<may::coroutine::JoinHandle<()>> {
    may::go!(
        may::coroutine::Builder::new().name("accept".to_owned()),
        move || accept_loop(listener, app)
    )
}

/// Longest pause of the accept loop after a failure that more accepts would only repeat.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The accept loop. Nothing a client does, and no shortage of descriptors, memory or coroutine
/// stacks, ends it: the node would look healthy while refusing everyone.
/// - Past `--max-connections` a client gets a 503 with `Retry-After` and is closed at once.
/// - `EMFILE`, `ENFILE`, `ENOMEM`, `ENOBUFS` and a connection coroutine that cannot be spawned
///   make it pause, from 10 ms doubling to a second, instead of spinning on the same failure.
/// - It logs such trouble at most once a second, with the count of what it did not log.
fn accept_loop(listener: TcpListener, app: Arc<App>) {
    let mut backoff = AcceptBackoff {
        pause: Duration::ZERO,
        throttle: Throttle::new(Duration::from_secs(1)),
    };
    // Failures in a row that are not a shortage (a handshake a client aborted, say): one is
    // nothing to wait for, but one that keeps coming back is trouble like a shortage.
    let mut failing = 0u32;
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => {
                failing = 0;
                stream
            }
            Err(e) if is_shortage(&e) || failing >= 3 => {
                backoff.trouble(format_args!("accept failed: {e}"));
                continue;
            }
            Err(e) => {
                failing += 1;
                log::debug!("accept failed: {e}");
                continue;
            }
        };
        let m = &app.metrics;
        // Counted before the spawn, so the cap holds however fast clients come.
        if m.connections_open.fetch_add(1, Ordering::AcqRel) >= app.max_connections as u64 {
            m.connections_open.fetch_sub(1, Ordering::AcqRel);
            m.connections_refused.fetch_add(1, Ordering::Relaxed);
            refuse(stream);
            continue;
        }
        let app2 = Arc::clone(&app);
        // may panics when it cannot allocate a coroutine's stack (vm.max_map_count, memory); the
        // closure, and the socket in it, are dropped then, which closes the connection.
        let spawned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            may::go!(may::coroutine::Builder::new(), move || connection(
                stream, app2
            ))
        }));
        if !matches!(spawned, Ok(Ok(_))) {
            m.connections_open.fetch_sub(1, Ordering::AcqRel);
            m.connections_refused.fetch_add(1, Ordering::Relaxed);
            backoff.trouble(format_args!(
                "cannot start a connection's coroutine; closed it"
            ));
            continue;
        }
        m.connections_total.fetch_add(1, Ordering::Relaxed);
        backoff.ok();
    }
}

/// The accept loop's pause after trouble, and its log throttle.
struct AcceptBackoff {
    pause: Duration,
    throttle: Throttle,
}

impl AcceptBackoff {
    /// Log (at most once a second) and pause, longer each time in a row.
    fn trouble(&mut self, what: std::fmt::Arguments<'_>) {
        if let Some(more) = self.throttle.ready(Instant::now()) {
            log::warn!("{what} (and {more} more like it since the last such line)");
        }
        self.pause = (self.pause * 2).clamp(Duration::from_millis(10), ACCEPT_BACKOFF_MAX);
        may::coroutine::sleep(self.pause);
    }

    /// A connection started: the trouble, if any, is over.
    fn ok(&mut self) {
        if !self.pause.is_zero() {
            self.pause = Duration::ZERO;
            self.throttle.reset();
        }
    }
}

/// Whether an accept failed for want of descriptors or memory: accepting again at once would
/// fail the same way.
fn is_shortage(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOMEM | libc::ENOBUFS)
    )
}

/// A client past `--max-connections`: one 503 with `Retry-After` written straight to the new
/// socket (its buffer is empty, so the write does not block), then closed. No coroutine is
/// spent on it: a shortage of them may be why it is refused.
fn refuse(stream: TcpStream) {
    let reply = error_reply(&ApiError::Overloaded);
    let mut out = Vec::with_capacity(256);
    protocol::reply_head(
        &reply,
        reply.body.as_bytes().len(),
        false,
        &date::now(),
        &mut out,
    );
    out.extend_from_slice(reply.body.as_bytes());
    let sock = stream.inner();
    let _ = (&*sock).write(&out);
    // Read what the client already sent, so that closing does not reset the connection (which
    // can destroy the answer before the client reads it), then say we are done.
    let mut sink = [0u8; 1024];
    for _ in 0..64 {
        match (&*sock).read(&mut sink) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
    let _ = sock.shutdown(std::net::Shutdown::Write);
}

/// Counts an open connection for as long as it lives.
struct Open<'a>(&'a App);
impl Drop for Open<'_> {
    fn drop(&mut self) {
        self.0
            .metrics
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection's idle clock, watched by the sweeper thread instead of a may timer per read.
///
/// The connection coroutine waits for requests with `wait_io` (no timer, no syscall); the sweeper
/// checks this watch at its deadline and, if the connection has been idle too long (and is not
/// busy answering), marks it expired and wakes the coroutine, which then closes the connection.
///
/// It also times a request that is arriving: from the first byte of its head until it is all
/// in, `--header-timeout` governs instead of the idle timeout, so a client that trickles a byte
/// at a time cannot keep the connection for longer by each byte it sends.
struct IdleWatch {
    waker: WaitIoWaker,
    /// The idle and header timeouts in milliseconds (u32s, not Durations: one allocation per
    /// connection, kept for its whole life, kept small).
    idle_ms: u32,
    header_ms: u32,
    start: Instant,
    /// Milliseconds after `start` of the last request byte read or answer written.
    last_active: AtomicU64,
    /// Milliseconds after `start` of the first byte of the request now arriving; NO_REQUEST when
    /// none is.
    arriving_since: AtomicU64,
    /// A request is being handled (a held poll is not idle).
    busy: AtomicBool,
    expired: AtomicBool,
    /// The request now arriving missed the header timeout.
    too_slow: AtomicBool,
    closed: AtomicBool,
}

const NO_REQUEST: u64 = u64::MAX;

impl IdleWatch {
    fn elapsed_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn touch(&self) {
        self.last_active.store(self.elapsed_ms(), Ordering::Relaxed);
    }

    fn is_expired(&self) -> bool {
        self.expired.load(Ordering::Acquire)
    }

    fn idle(&self) -> Duration {
        Duration::from_millis(u64::from(self.idle_ms))
    }

    /// When the request now arriving must be in, if one is.
    fn arrival_due(&self) -> Option<Instant> {
        match self.arriving_since.load(Ordering::Acquire) {
            NO_REQUEST => None,
            since => Some(self.start + Duration::from_millis(since + u64::from(self.header_ms))),
        }
    }
}

/// The sweeper's entry for a request that did not arrive in one read: ends the connection if the
/// request is not all in by the header timeout. An entry of its own, separate from the idle
/// watch's, so that it lapses once the request is in.
struct ArrivalTimer(Arc<IdleWatch>);

impl Expire for ArrivalTimer {
    fn expire(&self, now: Instant, shutting_down: bool) -> Option<Instant> {
        let w = &self.0;
        let due = w.arrival_due()?;
        if due > now && !shutting_down {
            return Some(due);
        }
        w.too_slow.store(!shutting_down, Ordering::Release);
        w.expired.store(true, Ordering::Release);
        w.waker.wakeup();
        None
    }

    fn is_done(&self) -> bool {
        self.0.closed.load(Ordering::Acquire) || self.0.arrival_due().is_none()
    }
}

impl Expire for IdleWatch {
    fn expire(&self, now: Instant, shutting_down: bool) -> Option<Instant> {
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        // A request arriving is timed by its ArrivalTimer; a connection is not idle meanwhile.
        if self.busy.load(Ordering::Acquire) || self.arrival_due().is_some() {
            return Some(now + self.idle());
        }
        let due = self.start
            + Duration::from_millis(self.last_active.load(Ordering::Relaxed))
            + self.idle();
        if due > now && !shutting_down {
            return Some(due);
        }
        self.expired.store(true, Ordering::Release);
        self.waker.wakeup();
        None
    }

    fn is_done(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// TCP keepalive on every accepted socket: a peer that vanished without a FIN or RST (power cut,
/// NAT timeout) is found after 60 s idle plus 5 unanswered probes 10 s apart, about two minutes.
fn keepalive(stream: &TcpStream) {
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(60))
        .with_interval(Duration::from_secs(10))
        .with_retries(5);
    let _ = socket2::SockRef::from(stream.inner()).set_tcp_keepalive(&ka);
}

fn connection(mut stream: TcpStream, app: Arc<App>) {
    // Counted open by the accept loop; uncounted when this returns or unwinds.
    let _open = Open(&app);
    let peer = stream.peer_addr().ok().map(|a| a.ip());
    // Answers are single small writes that must leave at once: no Nagle delay.
    let _ = stream.set_nodelay(true);
    keepalive(&stream);
    let watch = Arc::new(IdleWatch {
        waker: stream.waker(),
        // At least 1 ms; the config caps the timeout at a day, far below u32::MAX ms.
        idle_ms: (app.config.idle_timeout.as_millis() as u32).max(1),
        header_ms: (app.config.header_timeout.as_millis() as u32).max(1),
        start: Instant::now(),
        last_active: AtomicU64::new(0),
        arriving_since: AtomicU64::new(NO_REQUEST),
        busy: AtomicBool::new(false),
        expired: AtomicBool::new(false),
        too_slow: AtomicBool::new(false),
        closed: AtomicBool::new(false),
    });
    let sweeper = Arc::clone(app.book.sweeper());
    if !sweeper.add(
        watch.start + watch.idle(),
        Arc::clone(&watch) as Arc<dyn Expire>,
    ) {
        return; // shutting down
    }
    // Whatever happens below, panics included, the sweeper lets go of the watch.
    let _closed = Closed(&watch);
    // A bug that panics while serving this connection ends this connection only: everything it
    // holds (the watch, a waiter, deadlines, counters) is let go of by guards as the panic
    // unwinds, and the socket is closed below.
    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        serve_requests(&mut stream, &app, &watch, &sweeper, peer)
    }));
    if let Err(panic) = served {
        report_panic(&app, peer, &*panic);
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// Count and log a panic that ended a connection.
#[cold]
#[inline(never)]
fn report_panic(app: &App, peer: Option<IpAddr>, panic: &(dyn std::any::Any + Send)) {
    app.metrics.panics.fetch_add(1, Ordering::Relaxed);
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    log::error!("a connection from {peer:?} panicked ({what}); closed it");
}

/// Marks a connection's idle watch closed when the connection ends, however it ends.
struct Closed<'a>(&'a IdleWatch);

impl Drop for Closed<'_> {
    fn drop(&mut self) {
        self.0.closed.store(true, Ordering::Release);
    }
}

/// Read requests and answer them until the connection is done.
fn serve_requests(
    stream: &mut TcpStream,
    app: &App,
    watch: &Arc<IdleWatch>,
    sweeper: &Sweeper,
    peer: Option<IpAddr>,
) {
    let lane = app.book.lane_of(stream.as_raw_fd() as usize);
    let mut state = ConnState::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut drained = false;
    loop {
        let mut reader = Reader {
            stream,
            buf: &mut buf,
            drained: &mut drained,
            watch,
        };
        match reader.next_request(app.config.max_body, sweeper) {
            Ok(Some((mut req, keep_alive))) => {
                req.lane = lane;
                if buf.is_empty() {
                    // Free the read buffer while the handler (maybe a minute-long poll) runs.
                    buf = Vec::new();
                }
                watch.busy.store(true, Ordering::Release);
                let in_flight = Gauge::enter(&app.metrics.in_flight);
                let head_only = req.method == "HEAD";
                let mut conn = Conn::new(stream, sweeper, app.config.write_timeout);
                let go_on = match routes::handle(app, req, &conn, &mut state) {
                    Response::Reply(reply) => {
                        let sent = conn.send_reply(&reply, head_only, keep_alive);
                        sent.is_ok() && keep_alive
                    }
                    Response::Stream(s) => {
                        serve_stream(app, s, &mut conn);
                        false // the stream's body ends when the connection closes
                    }
                    Response::ClientGone => false,
                };
                // Bytes that came in while the request was held, or an event cleared by a
                // blocking write, may be waiting: look before parking for the next request.
                if conn.unread.get() {
                    drained = false;
                }
                drop(in_flight);
                watch.touch();
                watch.busy.store(false, Ordering::Release);
                if !go_on {
                    return;
                }
            }
            Ok(None) => return, // closed by the client, or idle too long
            Err(e) => return refuse_request(stream, app, sweeper, peer, e),
        }
    }
}

/// A protocol error: answer it, then close (the stream's framing is lost).
#[cold]
#[inline(never)]
fn refuse_request(
    stream: &mut TcpStream,
    app: &App,
    sweeper: &Sweeper,
    peer: Option<IpAddr>,
    e: ApiError,
) {
    log::debug!("bad request from {peer:?}: {e}");
    let reply = error_reply(&e);
    app.metrics.count_request(reply.status);
    let mut conn = Conn::new(stream, sweeper, app.config.write_timeout);
    let _ = conn.send_reply(&reply, false, false);
    // A client that is still sending (a body we refused) reads the answer only once it is done;
    // one that trickles its head would only hold us up.
    if e != ApiError::RequestTimeout {
        conn.linger();
    }
}

/// Serve a Server-Sent Events stream on the connection until it ends. Not inlined, as the other
/// cold paths here, for the held polls' sake (see `routes::poll`).
#[inline(never)]
fn serve_stream(app: &App, s: stream::Stream<'_>, conn: &mut Conn<'_>) {
    let mut head = Vec::with_capacity(512);
    protocol::stream_head(&date::now(), &s.headers, &mut head);
    stream::serve(app, s, head, conn);
}

/// epoll bits that mean the client is gone: it closed its side (FIN), reset the connection, or
/// the socket failed.
const GONE: usize = (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as usize;

/// A time limit on one blocking socket operation (a write to a full socket, the lingering close),
/// kept by the sweeper: at `due` it marks itself fired and wakes the coroutine parked in
/// `wait_io`.
///
/// Why not may's own read and write timeouts: their timer lives in per-socket state that
/// `WaitIoWaker::wakeup` also touches, and other threads call that (a change, the sweeper); a
/// timeout firing on the socket's worker while another thread wakes the socket panicked a
/// worker ("already borrowed", seen once under load). With no may timer on a client socket,
/// the two cannot meet.
struct Deadline {
    due: Instant,
    waker: WaitIoWaker,
    fired: AtomicBool,
    done: AtomicBool,
}

/// The owner's end of a [`Deadline`]: dropping it (the operation finished) lets the sweeper drop
/// its entry without waking anyone.
struct Armed(Arc<Deadline>);

impl Drop for Armed {
    fn drop(&mut self) {
        self.0.done.store(true, Ordering::Release);
    }
}

impl Armed {
    fn fired(&self) -> bool {
        self.0.fired.load(Ordering::Acquire)
    }
}

impl Deadline {
    fn arm(stream: &TcpStream, sweeper: &Sweeper, within: Duration) -> Armed {
        let d = Arc::new(Deadline {
            due: Instant::now() + within.max(Duration::from_millis(1)),
            waker: stream.waker(),
            fired: AtomicBool::new(false),
            done: AtomicBool::new(false),
        });
        if !sweeper.add(d.due, Arc::clone(&d) as Arc<dyn Expire>) {
            // Shutting down: no more time for slow clients.
            d.fired.store(true, Ordering::Release);
        }
        Armed(d)
    }
}

impl Expire for Deadline {
    fn expire(&self, now: Instant, shutting_down: bool) -> Option<Instant> {
        if self.done.load(Ordering::Acquire) {
            return None;
        }
        if self.due > now && !shutting_down {
            return Some(self.due);
        }
        self.fired.store(true, Ordering::Release);
        self.waker.wakeup();
        None
    }

    fn is_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }
}

/// One request's view of its connection: the socket a held request parks on ([`Hold`]) and the
/// stream writes to ([`StreamIo`]).
///
/// A held request parks in `wait_io`, so the one park is woken by a change (the waiter's
/// `WaitIoWaker`), by the sweeper, and by the socket itself: a FIN or RST ends the wait at once.
/// Bytes that arrive meanwhile (a pipelined request) are left in the socket and read after the
/// answer; `unread` tells the read loop to look for them.
struct Conn<'a> {
    stream: &'a mut TcpStream,
    sweeper: &'a Sweeper,
    /// How long a write may make no progress before the client counts as too slow.
    write_timeout: Duration,
    unread: Cell<bool>,
}

impl<'a> Conn<'a> {
    fn new(stream: &'a mut TcpStream, sweeper: &'a Sweeper, write_timeout: Duration) -> Conn<'a> {
        Conn {
            stream,
            sweeper,
            write_timeout,
            unread: Cell::new(false),
        }
    }

    /// Wait for the socket's next epoll event (or a wake-up), noting bytes that came in.
    fn wait(&self) -> usize {
        let events = self.stream.wait_io();
        if events & libc::EPOLLIN as usize != 0 {
            self.unread.set(true);
        }
        events
    }

    /// Write all of `bytes`, straight to the non-blocking socket (may's own write would also
    /// clear the socket's pending epoll events, which a held request must see). When the socket
    /// is full, wait for it to drain; `ErrorKind::TimedOut` if it makes no progress for the
    /// write timeout.
    fn send(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        let mut deadline: Option<Armed> = None;
        while !bytes.is_empty() {
            match self.stream.inner().write(bytes) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    bytes = &bytes[n..];
                    deadline = None; // progress: the clock starts again
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let d = deadline.get_or_insert_with(|| {
                        Deadline::arm(self.stream, self.sweeper, self.write_timeout)
                    });
                    if d.fired() {
                        return Err(io::ErrorKind::TimedOut.into());
                    }
                    self.wait();
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Serialize and send one reply in a single write.
    fn send_reply(&mut self, reply: &Reply, head_only: bool, keep_alive: bool) -> io::Result<()> {
        let body = reply.body.as_bytes();
        let mut out = Vec::with_capacity(256 + body.len());
        protocol::reply_head(reply, body.len(), keep_alive, &date::now(), &mut out);
        if !head_only && reply.status != 304 {
            out.extend_from_slice(body);
        }
        self.send(&out)
    }

    /// After an error answer, read and discard what the client is still sending, for at most
    /// `LINGER` and `LINGER_BYTES`, before closing. Closing with unread bytes makes the kernel
    /// send a reset, which destroys the answer before a client that sends its whole body first
    /// (Python's http.client, requests) reads it. nginx's lingering close does the same.
    fn linger(&mut self) {
        const LINGER: Duration = Duration::from_secs(5);
        const LINGER_BYTES: usize = 64 << 20;
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
        let deadline = Deadline::arm(self.stream, self.sweeper, LINGER);
        // On the heap: a 16 KiB array here would deepen every connection coroutine's stack
        // (pages a coroutine ever touches stay resident while its poll is held).
        let mut sink = vec![0u8; 16 * 1024];
        let mut left = LINGER_BYTES;
        while left > 0 && !deadline.fired() {
            match self.stream.inner().read(&mut sink) {
                Ok(0) => break,
                Ok(n) => left -= n.min(left),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.wait();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
}

impl Hold for Conn<'_> {
    fn parker(&self) -> Parker {
        Parker::Io(self.stream.waker())
    }

    fn park(&self) -> Parked {
        if self.wait() & GONE != 0 {
            return Parked::ClientGone;
        }
        Parked::Again
    }
}

impl StreamIo for Conn<'_> {
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        Conn::send(self, bytes)
    }
}

/// Reads requests off one connection: its read buffer, and what is known about the socket.
struct Reader<'a> {
    stream: &'a TcpStream,
    buf: &'a mut Vec<u8>,
    /// The socket is known to be empty: wait for an epoll event before reading (see `fill`).
    drained: &'a mut bool,
    watch: &'a Arc<IdleWatch>,
}

impl Reader<'_> {
    /// Wait until the socket may have bytes (or the watch expired). No syscall and no may
    /// timer: `wait_io` parks the coroutine until its epoll event or the sweeper's wake-up.
    fn wait_readable(&self) -> bool {
        if self.watch.is_expired() {
            return false;
        }
        self.stream.wait_io();
        !self.watch.is_expired()
    }

    /// Read more bytes into the buffer. `Ok(false)` on end of stream or a timeout.
    ///
    /// Reads go to the non-blocking socket directly, one syscall per attempt (may's own `read`
    /// retries a failing read once more before it parks, and arms a timer when a read timeout
    /// is set). `drained` tracks whether the socket is known to be empty: then any new byte
    /// raises an epoll event, so the coroutine waits for it first instead of trying a read that
    /// would fail. After an answer the next request is rarely there yet, so this saves two
    /// syscalls per request.
    fn fill(&mut self) -> io::Result<bool> {
        let sock = self.stream.inner();
        loop {
            if *self.drained {
                if !self.wait_readable() {
                    return Ok(false);
                }
                *self.drained = false;
            } else if self.buf.is_empty() {
                // Not known to be empty: look for a first byte without a buffer, so a
                // connection whose request has not arrived yet holds no read buffer.
                match sock.peek(&mut [0u8; 1]) {
                    Ok(0) => return Ok(false),
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        *self.drained = true;
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
            let len = self.buf.len();
            self.buf.resize(len + READ_CHUNK, 0);
            let got = (&*sock).read(&mut self.buf[len..]);
            self.buf.truncate(len + *got.as_ref().unwrap_or(&0));
            match got {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    // A short read emptied the socket; a full one may have left more behind.
                    *self.drained = n < READ_CHUNK;
                    self.watch.touch();
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => *self.drained = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Read more of a request that has started to arrive. The first time its bytes do not all
    /// come in one read, the sweeper is told when the request must be in (`--header-timeout`):
    /// most requests arrive whole and cost the sweeper nothing.
    fn fill_request(&mut self, sweeper: &Sweeper, armed: &mut bool) -> Result<bool, ApiError> {
        let w = self.watch;
        if !*armed {
            *armed = true;
            if let Some(due) = w.arrival_due() {
                sweeper.add(due, Arc::new(ArrivalTimer(Arc::clone(w))));
            }
        }
        match self.fill() {
            Ok(true) => Ok(true),
            _ if w.too_slow.load(Ordering::Acquire) => Err(ApiError::RequestTimeout),
            _ => Ok(false),
        }
    }

    /// Read the next request (head and body). `Ok(None)`: the connection ended cleanly or idled
    /// out.
    fn next_request(
        &mut self,
        max_body: usize,
        sweeper: &Sweeper,
    ) -> Result<Option<(Box<Request>, bool)>, ApiError> {
        // Between requests the idle timeout governs: wait for the first byte.
        if self.buf.is_empty() && !self.fill().unwrap_or(false) {
            return Ok(None);
        }
        // From here the header timeout does.
        let w = self.watch;
        w.arriving_since.store(w.elapsed_ms(), Ordering::Release);
        let mut armed = false;
        // Both the head and a chunked body are parsed as they arrive, each byte once (a client
        // that trickles its request costs no more than one that sends it whole).
        let mut scanner = HeadScanner::default();
        let head = loop {
            if let Some(head) = scanner.parse(self.buf, max_body)? {
                break head;
            }
            if !self.fill_request(sweeper, &mut armed)? {
                return Ok(None);
            }
        };
        let body = match head.body {
            BodyLength::Length(n) => {
                // n <= max_body (checked with the head, itself capped by the config) and
                // head_len <= MAX_HEAD, so this cannot overflow; checked all the same.
                let end = head
                    .head_len
                    .checked_add(n)
                    .ok_or(ApiError::BodyTooLarge { max: max_body })?;
                while self.buf.len() < end {
                    if !self.fill_request(sweeper, &mut armed)? {
                        return Ok(None);
                    }
                }
                let body = self.buf[head.head_len..end].to_vec();
                self.buf.drain(..end);
                body
            }
            BodyLength::Chunked => {
                // The buffer keeps only what the decoder has not taken yet.
                self.buf.drain(..head.head_len);
                let mut decoder = ChunkedDecoder::new(max_body);
                loop {
                    let (used, done) = decoder.feed(self.buf)?;
                    self.buf.drain(..used);
                    if done {
                        break decoder.into_body();
                    }
                    if !self.fill_request(sweeper, &mut armed)? {
                        return Ok(None);
                    }
                }
            }
        };
        w.arriving_since.store(NO_REQUEST, Ordering::Release);
        let mut req = head.req;
        req.body = body;
        Ok(Some((req, head.keep_alive)))
    }
}
