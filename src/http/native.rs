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
use crate::http::protocol::{self, parse_head};
use crate::http::{Reply, Request};
use crate::routes::{self, Response};
use crate::stream::{self, StreamIo};
use crate::waiter::{Expire, Hold, Parked, Parker};

/// Bytes read at a time. Under 1 KiB so the buffer comes from glibc's per-thread cache (chunks up
/// to 1032 bytes): larger buffers, allocated and freed on every request, showed up as malloc
/// consolidation in a fan-out profile. Most requests fit in one chunk.
const READ_CHUNK: usize = 1000;

/// Accept connections forever on a coroutine; each connection gets its own coroutine.
pub fn serve(listener: TcpListener, app: Arc<App>) -> io::Result<may::coroutine::JoinHandle<()>> {
    let spawn = move || {
        for stream in listener.incoming() {
            match stream {
                Ok(stream) => {
                    let app = Arc::clone(&app);
                    may::go!(move || connection(stream, app));
                }
                Err(e) => {
                    // EMFILE and friends: without a pause the accept loop spins at 100% CPU
                    // until descriptors free up.
                    log::warn!("accept failed: {e}");
                    may::coroutine::sleep(Duration::from_millis(10));
                }
            }
        }
    };
    may::go!(
        may::coroutine::Builder::new().name("accept".to_owned()),
        spawn
    )
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
struct IdleWatch {
    waker: WaitIoWaker,
    /// The idle timeout in milliseconds (a u32, not a Duration: one allocation per connection,
    /// kept for its whole life, 16 bytes smaller).
    idle_ms: u32,
    start: Instant,
    /// Milliseconds after `start` of the last request byte read or answer written.
    last_active: AtomicU64,
    /// A request is being handled (a held poll is not idle).
    busy: AtomicBool,
    expired: AtomicBool,
    closed: AtomicBool,
}

impl IdleWatch {
    fn touch(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.last_active.store(ms, Ordering::Relaxed);
    }

    fn is_expired(&self) -> bool {
        self.expired.load(Ordering::Acquire)
    }

    fn idle(&self) -> Duration {
        Duration::from_millis(u64::from(self.idle_ms))
    }
}

impl Expire for IdleWatch {
    fn expire(&self, now: Instant, shutting_down: bool) -> Option<Instant> {
        if self.closed.load(Ordering::Acquire) {
            return None;
        }
        if self.busy.load(Ordering::Acquire) {
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
    app.metrics.connections_open.fetch_add(1, Ordering::Relaxed);
    app.metrics
        .connections_total
        .fetch_add(1, Ordering::Relaxed);
    let _open = Open(&app);
    let peer = stream.peer_addr().ok().map(|a| a.ip());
    let lane = app.book.lane_of(stream.as_raw_fd() as usize);
    // Answers are single small writes that must leave at once: no Nagle delay.
    let _ = stream.set_nodelay(true);
    keepalive(&stream);
    // A client that stops reading its answer holds the coroutine at most this long.
    if stream
        .set_write_timeout(Some(app.config.idle_timeout))
        .is_err()
    {
        return;
    }
    let watch = Arc::new(IdleWatch {
        waker: stream.waker(),
        // At least 1 ms; the config caps the timeout at a day, far below u32::MAX ms.
        idle_ms: (app.config.idle_timeout.as_millis() as u32).max(1),
        start: Instant::now(),
        last_active: AtomicU64::new(0),
        busy: AtomicBool::new(false),
        expired: AtomicBool::new(false),
        closed: AtomicBool::new(false),
    });
    let sweeper = Arc::clone(app.book.sweeper());
    if !sweeper.add(
        watch.start + watch.idle(),
        Arc::clone(&watch) as Arc<dyn Expire>,
    ) {
        return; // shutting down
    }
    let mut buf: Vec<u8> = Vec::new();
    let mut drained = false;
    loop {
        match next_request(
            &stream,
            &mut buf,
            peer,
            app.config.max_body,
            &watch,
            &mut drained,
        ) {
            Ok(Some((mut req, keep_alive))) => {
                req.lane = lane;
                if buf.is_empty() {
                    // Free the read buffer while the handler (maybe a minute-long poll) runs.
                    buf = Vec::new();
                }
                watch.busy.store(true, Ordering::Release);
                app.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
                let head_only = req.method == "HEAD";
                let mut conn = Conn::new(&mut stream);
                let go_on = match routes::handle(&app, req, &conn) {
                    Response::Reply(reply) => {
                        let sent = conn.send_reply(&reply, head_only, keep_alive);
                        sent.is_ok() && keep_alive
                    }
                    Response::Stream(s) => {
                        let mut head = Vec::with_capacity(512);
                        protocol::stream_head(&mut head);
                        // From here a write that makes no progress ends the stream as slow.
                        let _ = conn
                            .stream
                            .set_write_timeout(Some(app.config.write_timeout));
                        stream::serve(&app, s, head, &mut conn);
                        false // the stream's body ends when the connection closes
                    }
                    Response::ClientGone => false,
                };
                // Bytes that came in while the request was held, or an event cleared by a
                // blocking write, may be waiting: look before parking for the next request.
                if conn.unread.get() {
                    drained = false;
                }
                app.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
                watch.touch();
                watch.busy.store(false, Ordering::Release);
                if !go_on {
                    break;
                }
            }
            Ok(None) => break, // closed by the client, or idle too long
            Err(e) => {
                // A protocol error: answer it, then close (the stream's framing is lost).
                log::debug!("bad request from {peer:?}: {e}");
                let reply = routes::error_reply(&e);
                app.metrics.count_request(reply.status);
                let _ = Conn::new(&mut stream).send_reply(&reply, false, false);
                linger(&mut stream);
                break;
            }
        }
    }
    watch.closed.store(true, Ordering::Release);
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// epoll bits that mean the client is gone: it closed its side (FIN), reset the connection, or
/// the socket failed.
const GONE: usize = (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR) as usize;

/// One request's view of its connection: the socket a held request parks on ([`Hold`]) and the
/// stream writes to ([`StreamIo`]).
///
/// A held request parks in `wait_io`, so the one park is woken by a change (the waiter's
/// `WaitIoWaker`), by the sweeper, and by the socket itself: a FIN or RST ends the wait at once.
/// Bytes that arrive meanwhile (a pipelined request) are left in the socket and read after the
/// answer; `unread` tells the read loop to look for them.
struct Conn<'a> {
    stream: &'a mut TcpStream,
    unread: Cell<bool>,
}

impl<'a> Conn<'a> {
    fn new(stream: &'a mut TcpStream) -> Conn<'a> {
        Conn {
            stream,
            unread: Cell::new(false),
        }
    }

    /// Write all of `bytes`. A plain non-blocking write first: may's own write would also clear
    /// the socket's pending epoll events (a FIN that came in, a pipelined request), which a
    /// held request must see. Only when the socket is full does it fall back to may's write,
    /// which parks until the socket drains or the write timeout passes.
    fn send(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            match self.stream.inner().write(bytes) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.unread.set(true);
                    return self.stream.write_all(bytes);
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
        protocol::reply_head(reply, body.len(), keep_alive, &mut out);
        if !head_only && reply.status != 304 {
            out.extend_from_slice(body);
        }
        self.send(&out)
    }
}

impl Hold for Conn<'_> {
    fn parker(&self) -> Parker {
        Parker::Io(self.stream.waker())
    }

    fn park(&self) -> Parked {
        let events = self.stream.wait_io();
        if events & GONE != 0 {
            return Parked::ClientGone;
        }
        if events & libc::EPOLLIN as usize != 0 {
            self.unread.set(true);
        }
        Parked::Again
    }
}

impl StreamIo for Conn<'_> {
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        Conn::send(self, bytes)
    }
}

/// After an error answer, read and discard what the client is still sending (bounded in bytes
/// and time) before closing: closing with unread bytes makes the kernel send a reset, which can
/// destroy the answer before the client reads it.
fn linger(stream: &mut TcpStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    // On the heap: a 4 KiB array here would deepen every connection coroutine's stack (pages a
    // coroutine ever touches stay resident while its poll is held).
    let mut sink = vec![0u8; 4096];
    let mut left = 1 << 20;
    while left > 0 {
        match stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => left -= n.min(left),
        }
    }
}

/// Wait until the socket may have bytes (or the idle watch expired). No syscall and no may timer:
/// `wait_io` parks the coroutine until its epoll event or the sweeper's wake-up.
fn wait_readable(stream: &TcpStream, watch: &IdleWatch) -> bool {
    if watch.is_expired() {
        return false;
    }
    stream.wait_io();
    !watch.is_expired()
}

/// Read more bytes into `buf`. `Ok(false)` on end of stream or idle timeout.
///
/// Reads go to the non-blocking socket directly, one syscall per attempt (may's own `read`
/// retries a failing read once more before it parks, and arms a timer when a read timeout is
/// set). `drained` tracks whether the socket is known to be empty: then any new byte raises an
/// epoll event, so the coroutine waits for it first instead of trying a read that would fail.
/// After an answer the next request is rarely there yet, so this saves two syscalls per request.
fn fill(
    stream: &TcpStream,
    buf: &mut Vec<u8>,
    watch: &IdleWatch,
    drained: &mut bool,
) -> io::Result<bool> {
    let sock = stream.inner();
    loop {
        if *drained {
            if !wait_readable(stream, watch) {
                return Ok(false);
            }
            *drained = false;
        } else if buf.is_empty() {
            // Not known to be empty: look for a first byte without a buffer, so a connection
            // whose request has not arrived yet holds no read buffer.
            match sock.peek(&mut [0u8; 1]) {
                Ok(0) => return Ok(false),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    *drained = true;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        let len = buf.len();
        buf.resize(len + READ_CHUNK, 0);
        let got = (&*sock).read(&mut buf[len..]);
        buf.truncate(len + *got.as_ref().unwrap_or(&0));
        match got {
            Ok(0) => return Ok(false),
            Ok(n) => {
                // A short read emptied the socket; a full one may have left more behind.
                *drained = n < READ_CHUNK;
                watch.touch();
                return Ok(true);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => *drained = true,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Read the next request (head and body). `Ok(None)`: the connection ended cleanly or idled out.
fn next_request(
    stream: &TcpStream,
    buf: &mut Vec<u8>,
    peer: Option<IpAddr>,
    max_body: usize,
    watch: &IdleWatch,
    drained: &mut bool,
) -> Result<Option<(Request, bool)>, ApiError> {
    let head = loop {
        if !buf.is_empty() {
            if let Some(head) = parse_head(buf, peer, max_body)? {
                break head;
            }
        }
        match fill(stream, buf, watch, drained) {
            Ok(true) => {}
            Ok(false) | Err(_) => return Ok(None),
        }
    };
    let end = head.head_len + head.content_length;
    while buf.len() < end {
        match fill(stream, buf, watch, drained) {
            Ok(true) => {}
            Ok(false) | Err(_) => return Ok(None),
        }
    }
    let mut req = head.req;
    req.body = buf[head.head_len..end].to_vec();
    buf.drain(..end);
    Ok(Some((req, head.keep_alive)))
}
