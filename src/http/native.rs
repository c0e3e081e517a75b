//! The project's own HTTP/1.1 connection layer on `may::net`: one coroutine per connection.
//!
//! Why not may_minihttp alone: 0.1.11 drops any request with more than 16 headers without an
//! answer (a browser reload with a cookie already sends 16), ignores `Connection: close`, has no
//! idle timeout, reads a body before it can be refused, and does not tell the handler the client's
//! address. This layer does all of that in a few hundred lines and keeps memory per held poll low:
//! the read buffer is freed while a handler waits.

use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use may::io::{WaitIo, WaitIoWaker};
use may::net::{TcpListener, TcpStream};

use crate::error::ApiError;
use crate::http::{reason_phrase, Reply, Request};
use crate::routes;
use crate::server::App;
use crate::waiter::Expire;

/// Largest request head (request line and headers) we read before answering 431.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most headers in one request; more gets 431 (an answer, unlike may_minihttp's silent drop).
pub const MAX_HEADERS: usize = 64;
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
                let reply = routes::handle(&app, req);
                let written = write_reply(&mut stream, &reply, head_only, keep_alive);
                app.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
                watch.touch();
                watch.busy.store(false, Ordering::Release);
                if written.is_err() || !keep_alive {
                    break;
                }
            }
            Ok(None) => break, // closed by the client, or idle too long
            Err(e) => {
                // A protocol error: answer it, then close (the stream's framing is lost).
                log::debug!("bad request from {peer:?}: {e}");
                let reply = routes::error_reply(&e);
                app.metrics.count_request(reply.status);
                let _ = write_reply(&mut stream, &reply, false, false);
                linger(&mut stream);
                break;
            }
        }
    }
    watch.closed.store(true, Ordering::Release);
    let _ = stream.shutdown(std::net::Shutdown::Both);
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

/// The parsed head: everything but the body, owned.
struct Head {
    req: Request,
    head_len: usize,
    content_length: usize,
    keep_alive: bool,
}

/// Parse a complete request head from `buf`, or `Ok(None)` if more bytes are needed.
fn parse_head(buf: &[u8], peer: Option<IpAddr>, max_body: usize) -> Result<Option<Head>, ApiError> {
    // On the heap, not the coroutine stack (every stack page a request ever touches stays
    // resident while its poll is held), and sized by the head's line count rather than for the
    // 64-header worst case (2 KiB), so the allocation stays small and cheap.
    let lines = buf.iter().filter(|&&b| b == b'\n').count();
    let mut headers = vec![httparse::EMPTY_HEADER; lines.clamp(1, MAX_HEADERS)];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(ApiError::HeadersTooLarge {
                max_bytes: MAX_HEAD,
                max_headers: MAX_HEADERS,
            })
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(ApiError::HeadersTooLarge {
                max_bytes: MAX_HEAD,
                max_headers: MAX_HEADERS,
            })
        }
        Err(e) => return Err(ApiError::BadRequest(e.to_string())),
    };
    if head_len > MAX_HEAD {
        return Err(ApiError::HeadersTooLarge {
            max_bytes: MAX_HEAD,
            max_headers: MAX_HEADERS,
        });
    }
    let (Some(method), Some(target)) = (parsed.method, parsed.path) else {
        return Err(ApiError::BadRequest("incomplete request line".into()));
    };
    let mut req = Request::new(method, target);
    req.peer = peer;
    let http11 = parsed.version == Some(1);
    let mut keep_alive = http11;
    let mut content_length: Option<usize> = None;
    for h in parsed.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value).unwrap_or("").trim();
            let n = v
                .parse::<usize>()
                .map_err(|_| ApiError::BadRequest(format!("bad Content-Length {v:?}")))?;
            if content_length.is_some_and(|m| m != n) {
                return Err(ApiError::BadRequest("conflicting Content-Length".into()));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(ApiError::LengthRequired);
        } else if name.eq_ignore_ascii_case("connection") {
            let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            if v.split(',').any(|t| t.trim() == "close") {
                keep_alive = false;
            } else if v.split(',').any(|t| t.trim() == "keep-alive") {
                keep_alive = true;
            }
        } else {
            req.set_header(name, h.value);
        }
    }
    let content_length = content_length.unwrap_or(0);
    if content_length > max_body {
        return Err(ApiError::BodyTooLarge { max: max_body });
    }
    Ok(Some(Head {
        req,
        head_len,
        content_length,
        keep_alive,
    }))
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

/// Serialize and send one reply in a single write.
fn write_reply(
    stream: &mut TcpStream,
    reply: &Reply,
    head_only: bool,
    keep_alive: bool,
) -> io::Result<()> {
    let body = reply.body.as_bytes();
    let mut out = Vec::with_capacity(256 + body.len());
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\nServer: comet-quotes\r\nContent-Type: {}\r\nCache-Control: {}\r\nContent-Length: {}\r\n",
        reply.status,
        reason_phrase(reply.status),
        reply.content_type,
        reply.cache_control,
        body.len()
    );
    for (name, value) in &reply.headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only && reply.status != 304 {
        out.extend_from_slice(body);
    }
    stream.write_all(&out)?;
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Result<Option<Head>, ApiError> {
        parse_head(raw.as_bytes(), None, 100)
    }

    #[test]
    fn partial_head_asks_for_more() {
        assert!(head("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
    }

    #[test]
    fn many_headers_are_accepted_up_to_the_limit() {
        let mut raw = String::from("GET /x?a=1 HTTP/1.1\r\n");
        for i in 0..40 {
            raw.push_str(&format!("X-H{i}: v\r\n"));
        }
        raw.push_str("If-None-Match: \"abc\"\r\n\r\n");
        let h = head(&raw).unwrap().unwrap();
        assert_eq!(h.req.path, "/x");
        assert_eq!(h.req.query, "a=1");
        assert_eq!(h.req.if_none_match.as_deref(), Some("\"abc\""));
        assert!(h.keep_alive);
    }

    #[test]
    fn too_many_headers_is_431() {
        let mut raw = String::from("GET / HTTP/1.1\r\n");
        for i in 0..(MAX_HEADERS + 1) {
            raw.push_str(&format!("X-H{i}: v\r\n"));
        }
        raw.push_str("\r\n");
        assert_eq!(head(&raw).err().map(|e| e.status()), Some(431));
    }

    #[test]
    fn content_length_is_checked_before_reading_the_body() {
        let e = |raw: &str| head(raw).err().map(|e| e.status());
        assert_eq!(
            e("POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n"),
            Some(413)
        );
        assert_eq!(
            e("POST / HTTP/1.1\r\nContent-Length: ten\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            e("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Some(411)
        );
        assert_eq!(
            head("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n")
                .unwrap()
                .unwrap()
                .content_length,
            5
        );
    }

    #[test]
    fn connection_close_and_http10_end_the_connection() {
        assert!(
            !head("GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
                .unwrap()
                .unwrap()
                .keep_alive
        );
        assert!(!head("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap().keep_alive);
        assert!(
            head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .unwrap()
                .unwrap()
                .keep_alive
        );
    }

    #[test]
    fn garbage_is_a_bad_request() {
        assert_eq!(
            head("\x01\x02 nonsense\r\n\r\n").err().map(|e| e.status()),
            Some(400)
        );
    }
}
