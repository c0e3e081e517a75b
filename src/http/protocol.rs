//! HTTP/1.1 protocol, apart from any socket: parsing a request head and decoding a chunked body,
//! both incrementally (each byte looked at once, however the bytes arrive), and the bytes of a
//! response head. Pure functions over bytes, unit-tested without I/O; `native` does the reading
//! and writing.

use std::io::Write as _;

use crate::error::ApiError;
use crate::reply::{reason_phrase, Reply};
use crate::request::Request;

/// Largest request head (request line and headers) we read before answering 431.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most headers in one request; more gets 431 (an answer, unlike may_minihttp's silent drop).
pub const MAX_HEADERS: usize = 64;
/// How the request body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    /// `Content-Length` bytes (0 without the header).
    Length(usize),
    /// `Transfer-Encoding: chunked`: see [`ChunkedDecoder`].
    Chunked,
}

/// The parsed head: everything but the body, owned.
pub struct Head {
    /// Boxed: a head is handed down through the parser, the connection loop and the routes, and
    /// every frame that moved a `Request` by value kept a copy of it on the coroutine stack, whose
    /// pages stay resident while a poll is held.
    pub req: Box<Request>,
    pub head_len: usize,
    pub body: BodyLength,
    pub keep_alive: bool,
}

fn head_too_large() -> ApiError {
    ApiError::HeadersTooLarge {
        max_bytes: MAX_HEAD,
        max_headers: MAX_HEADERS,
    }
}

/// Finds where a request head ends as its bytes arrive, and parses it once it is all in. Each call
/// looks only at the bytes that came in since the last, so a head trickled in a byte at a time
/// costs time in proportion to its length, not to its square.
#[derive(Debug, Default)]
pub struct HeadScanner {
    /// Where the head starts: after the empty lines a client may send before the request line
    /// (RFC 9112 §2.2 lets a server skip them), skipped once.
    start: usize,
    /// Where the search for the blank line that ends the head goes on from.
    scanned: usize,
}

impl HeadScanner {
    /// The parsed head once the buffer holds all of it, `Ok(None)` while more bytes are needed.
    /// `buf` must be the same buffer, grown, at every call.
    pub fn parse(&mut self, buf: &[u8], max_body: usize) -> Result<Option<Head>, ApiError> {
        if self.start == self.scanned {
            let blank = buf[self.start..]
                .iter()
                .take_while(|&&b| b == b'\r' || b == b'\n')
                .count();
            self.start += blank;
            self.scanned = self.start;
        }
        let Some(end) = self.find_end(buf) else {
            return if buf.len() > MAX_HEAD {
                Err(head_too_large())
            } else {
                Ok(None)
            };
        };
        if end > MAX_HEAD {
            return Err(head_too_large());
        }
        let mut head = parse_complete_head(&buf[self.start..end], max_body)?
            .ok_or_else(|| ApiError::BadRequest("incomplete request head".into()))?;
        head.head_len += self.start;
        Ok(Some(head))
    }

    /// The end of the first blank line (`\n\n` or `\n\r\n`) at or after `scanned`, just past
    /// it; `None` when it has not arrived, with `scanned` moved to where to look next time.
    fn find_end(&mut self, buf: &[u8]) -> Option<usize> {
        let mut i = self.scanned;
        while let Some(lf) = buf.get(i..)?.iter().position(|&b| b == b'\n') {
            let at = i + lf;
            match (buf.get(at + 1), buf.get(at + 2)) {
                (Some(b'\n'), _) => return Some(at + 2),
                (Some(b'\r'), Some(b'\n')) => return Some(at + 3),
                // What follows this line feed has not arrived: look at it again next time.
                (None, _) | (Some(b'\r'), None) => {
                    self.scanned = at;
                    return None;
                }
                _ => i = at + 1,
            }
        }
        self.scanned = buf.len();
        None
    }
}

/// Parse a request head from the start of `buf`, or `Ok(None)` if more bytes are needed: a
/// [`HeadScanner`] over this one buffer.
pub fn parse_head(buf: &[u8], max_body: usize) -> Result<Option<Head>, ApiError> {
    HeadScanner::default().parse(buf, max_body)
}

/// Parse a head that starts at the start of `buf` and ends with its blank line at its end.
/// `Ok(None)` if httparse still finds it incomplete.
fn parse_complete_head(buf: &[u8], max_body: usize) -> Result<Option<Head>, ApiError> {
    // On the heap, not the coroutine stack (every stack page a request ever touches stays
    // resident while its poll is held), and sized by the head's line count rather than for the
    // 64-header worst case (2 KiB), so the allocation stays small and cheap.
    let lines = buf.iter().filter(|&&b| b == b'\n').count();
    let mut headers = vec![httparse::EMPTY_HEADER; lines.clamp(1, MAX_HEADERS)];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(head_too_large()),
        Err(e) => return Err(ApiError::BadRequest(e.to_string())),
    };
    let (Some(method), Some(target)) = (parsed.method, parsed.path) else {
        return Err(ApiError::BadRequest("incomplete request line".into()));
    };
    let mut req = Box::new(Request::new(method, target));
    let http11 = parsed.version == Some(1);
    let mut keep_alive = http11;
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    for h in parsed.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let v = std::str::from_utf8(h.value).unwrap_or("").trim();
            // Digits only (RFC 9110 §8.6): Rust's parser would also take a leading `+`, which a
            // proxy in front may read differently.
            let n = Some(v)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<usize>().ok())
                .ok_or_else(|| ApiError::BadRequest(format!("bad Content-Length {v:?}")))?;
            if content_length.is_some_and(|m| m != n) {
                return Err(ApiError::BadRequest("conflicting Content-Length".into()));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Only `chunked`, alone: any other coding is one this server cannot undo.
            let v = String::from_utf8_lossy(h.value).to_ascii_lowercase();
            let codings: Vec<&str> = v.split(',').map(str::trim).collect();
            if codings != ["chunked"] || chunked {
                return Err(ApiError::UnsupportedTransferCoding(
                    v.chars().take(40).collect(),
                ));
            }
            chunked = true;
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
    let body = match (chunked, content_length) {
        // Both framings at once is how requests are smuggled past proxies (RFC 9112 §6.1).
        (true, Some(_)) => {
            return Err(ApiError::BadRequest(
                "both Transfer-Encoding and Content-Length".into(),
            ))
        }
        (true, None) if !http11 => {
            return Err(ApiError::BadRequest(
                "Transfer-Encoding needs HTTP/1.1".into(),
            ))
        }
        (true, None) => BodyLength::Chunked,
        (false, Some(n)) if n > max_body => return Err(ApiError::BodyTooLarge { max: max_body }),
        (false, n) => BodyLength::Length(n.unwrap_or(0)),
    };
    if req.method == "POST" && !chunked && content_length.is_none() {
        return Err(ApiError::LengthRequired);
    }
    Ok(Some(Head {
        req,
        head_len,
        body,
        keep_alive,
    }))
}

/// Most bytes of chunk framing (size lines, extensions, trailers) accepted around `max_body`
/// decoded bytes: a body of many tiny chunks, or a long trailer, is refused rather than read on.
pub const MAX_CHUNK_OVERHEAD: usize = 16 * 1024;

/// Decodes a chunked body (RFC 9112 §7.1) as it arrives, keeping its place between reads: each
/// byte is looked at once. Chunk extensions and trailer fields are skipped. A body that would
/// decode to more than `max` bytes, or that takes more than `max + MAX_CHUNK_OVERHEAD` bytes on
/// the wire, is 413; anything malformed is 400 (the connection must then close: its framing is
/// lost). Every size read from the wire is checked arithmetic: no input can overflow it.
#[derive(Debug)]
pub struct ChunkedDecoder {
    max: usize,
    body: Vec<u8>,
    /// Wire bytes taken so far, framing and data.
    taken: usize,
    state: Chunk,
}

/// Where a [`ChunkedDecoder`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// In a chunk-size line: the size so far and its number of hex digits, or past them in an
    /// extension.
    Size {
        size: u64,
        digits: u8,
        ext: bool,
    },
    /// The CR of a size line seen; its LF must follow.
    SizeLf {
        size: u64,
    },
    /// In a chunk's data: bytes left.
    Data {
        left: usize,
    },
    /// After a chunk's data: its CR, then its LF.
    DataCr,
    DataLf,
    /// In the trailer section, `line` bytes into a field line (0: at a line's start); `cr`: its
    /// CR seen.
    Trailer {
        line: usize,
        cr: bool,
    },
    Done,
}

/// A control byte other than HTAB (RFC 9110 §5.5 allows HTAB in field values, nothing else).
fn is_control(b: u8) -> bool {
    (b < 0x20 && b != b'\t') || b == 0x7f
}

/// A chunk size has at most this many hex digits (16 fill a u64).
const MAX_SIZE_DIGITS: u8 = 16;

impl ChunkedDecoder {
    pub fn new(max: usize) -> ChunkedDecoder {
        ChunkedDecoder {
            max,
            body: Vec::new(),
            taken: 0,
            state: Chunk::Size {
                size: 0,
                digits: 0,
                ext: false,
            },
        }
    }

    /// Decode what `input` holds: how many of its bytes were taken, and whether the body is
    /// complete. Until it is, every byte given is taken; once it is, the bytes after it (the next
    /// request) are left.
    pub fn feed(&mut self, input: &[u8]) -> Result<(usize, bool), ApiError> {
        let mut i = 0;
        while i < input.len() && self.state != Chunk::Done {
            if let Chunk::Data { left } = self.state {
                let n = left.min(input.len() - i);
                self.body.extend_from_slice(&input[i..i + n]);
                i += n;
                self.state = if n == left {
                    Chunk::DataCr
                } else {
                    Chunk::Data { left: left - n }
                };
            } else {
                self.step(input[i])?;
                i += 1;
            }
        }
        self.taken = self.taken.saturating_add(i);
        if self.taken > self.max.saturating_add(MAX_CHUNK_OVERHEAD) {
            return Err(self.too_large());
        }
        Ok((i, self.state == Chunk::Done))
    }

    /// The decoded body (complete once `feed` said so).
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }

    fn too_large(&self) -> ApiError {
        ApiError::BodyTooLarge { max: self.max }
    }

    fn step(&mut self, b: u8) -> Result<(), ApiError> {
        let bad = |why: &str| ApiError::BadRequest(format!("malformed chunked body: {why}"));
        self.state = match self.state {
            Chunk::Size { size, digits, ext } => match b {
                b'\r' if digits == 0 => return Err(bad("bad chunk size")),
                b'\r' => Chunk::SizeLf { size },
                // A bare LF or another control byte in an extension: a proxy in front could end
                // the line there and frame the body differently (request smuggling).
                _ if ext && is_control(b) => {
                    return Err(bad("control character in a chunk extension"))
                }
                _ if ext => self.state,
                b';' if digits > 0 => Chunk::Size {
                    size,
                    digits,
                    ext: true,
                },
                _ if b.is_ascii_hexdigit() && digits < MAX_SIZE_DIGITS => {
                    let d = u64::from((b as char).to_digit(16).unwrap_or(0));
                    let size = size
                        .checked_mul(16)
                        .and_then(|s| s.checked_add(d))
                        .ok_or_else(|| bad("bad chunk size"))?;
                    Chunk::Size {
                        size,
                        digits: digits + 1,
                        ext,
                    }
                }
                _ => return Err(bad("bad chunk size")),
            },
            Chunk::SizeLf { size } => {
                if b != b'\n' {
                    return Err(bad("chunk size line not ended by CRLF"));
                }
                if size == 0 {
                    Chunk::Trailer { line: 0, cr: false }
                } else {
                    // Compared with the room left, never added to what is there.
                    let room = self.max.saturating_sub(self.body.len());
                    match usize::try_from(size) {
                        Ok(left) if left <= room => Chunk::Data { left },
                        _ => return Err(self.too_large()),
                    }
                }
            }
            Chunk::DataCr if b == b'\r' => Chunk::DataLf,
            Chunk::DataLf if b == b'\n' => Chunk::Size {
                size: 0,
                digits: 0,
                ext: false,
            },
            Chunk::DataCr | Chunk::DataLf => {
                return Err(bad("chunk data not followed by CRLF"));
            }
            Chunk::Trailer { line, cr: false } => match b {
                b'\r' => Chunk::Trailer { line, cr: true },
                b'\n' => return Err(bad("trailer line not ended by CRLF")),
                _ if is_control(b) => return Err(bad("control character in a trailer")),
                _ => Chunk::Trailer {
                    line: line.saturating_add(1),
                    cr: false,
                },
            },
            Chunk::Trailer { line, cr: true } => match b {
                b'\n' if line == 0 => Chunk::Done,
                b'\n' => Chunk::Trailer { line: 0, cr: false },
                _ => return Err(bad("trailer line not ended by CRLF")),
            },
            // `feed` stops at Done.
            Chunk::Data { .. } | Chunk::Done => self.state,
        };
        Ok(())
    }
}

/// Decode a chunked body from the start of `buf`: the body and how many bytes of `buf` it took,
/// or `Ok(None)` if more bytes are needed. A [`ChunkedDecoder`] over this one buffer.
pub fn decode_chunked(buf: &[u8], max: usize) -> Result<Option<(Vec<u8>, usize)>, ApiError> {
    let mut decoder = ChunkedDecoder::new(max);
    let (used, done) = decoder.feed(buf)?;
    Ok(done.then(|| (decoder.into_body(), used)))
}

/// The head of a reply with a body of `body_len` bytes: status line, headers, blank line.
/// `date` is the `Date` header's value ([`crate::http::date`]).
/// A 204 has no content headers at all (RFC 9110 §8.6: no Content-Length).
pub fn reply_head(reply: &Reply, body_len: usize, keep_alive: bool, date: &str, out: &mut Vec<u8>) {
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\nServer: comet-quotes\r\nDate: {date}\r\nCache-Control: {}\r\n",
        reply.status,
        reason_phrase(reply.status),
        reply.cache_control,
    );
    if reply.status != 204 {
        let _ = write!(
            out,
            "Content-Type: {}\r\nContent-Length: {body_len}\r\n",
            reply.content_type
        );
    }
    for (name, value) in &reply.headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The head of a Server-Sent Events stream, with `headers` (CORS) added. The body runs until the
/// server closes the connection (no length, no chunks); `X-Accel-Buffering: no` tells nginx not
/// to buffer it.
pub fn stream_head(date: &str, headers: &[(&'static str, String)], out: &mut Vec<u8>) {
    let _ = write!(
        out,
        "HTTP/1.1 200 OK\r\nServer: comet-quotes\r\nDate: {date}\r\nContent-Type: text/event-stream\r\n\
         Cache-Control: no-store\r\nX-Accel-Buffering: no\r\nConnection: close\r\n"
    );
    for (name, value) in headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &str) -> Result<Option<Head>, ApiError> {
        parse_head(raw.as_bytes(), 100)
    }

    fn head_status(raw: &[u8]) -> Option<u16> {
        parse_head(raw, 100).err().map(|e| e.status())
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
        assert_eq!(e("POST / HTTP/1.1\r\n\r\n"), Some(411));
        assert_eq!(
            e("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Some(501)
        );
        assert_eq!(
            e("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"),
            Some(400)
        );
        assert_eq!(
            head("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n")
                .unwrap()
                .unwrap()
                .body,
            BodyLength::Length(5)
        );
        assert_eq!(
            head("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n")
                .unwrap()
                .unwrap()
                .body,
            BodyLength::Chunked
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
    fn chunked_bodies_decode_and_report_what_they_took() {
        let wire = b"4\r\nWiki\r\n6;ext=x\r\npedia \r\nE\r\nin \r\n\r\nchunks.\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let (body, used) = decode_chunked(wire, 100).unwrap().unwrap();
        assert_eq!(body, b"Wikipedia in \r\n\r\nchunks.");
        assert_eq!(&wire[used..], b"NEXT");
        // Every prefix is incomplete, not an error.
        for cut in 0..wire.len() - 4 {
            assert_eq!(decode_chunked(&wire[..cut], 100), Ok(None), "cut {cut}");
        }
    }

    #[test]
    fn chunked_bodies_that_are_malformed_or_too_large_are_refused() {
        let status = |wire: &[u8], max| decode_chunked(wire, max).err().map(|e| e.status());
        assert_eq!(status(b"zz\r\nab\r\n0\r\n\r\n", 100), Some(400));
        assert_eq!(status(b"2\r\nabc\r\n0\r\n\r\n", 100), Some(400));
        assert_eq!(status(b"\r\n", 100), Some(400));
        assert_eq!(status(b"ffffffffffffffffff\r\n", 100), Some(400));
        assert_eq!(
            status(b"5\r\nhello\r\n5\r\nworld\r\n0\r\n\r\n", 8),
            Some(413)
        );
        let mut endless_extension = b"1;".to_vec();
        endless_extension.extend(std::iter::repeat_n(b'x', MAX_CHUNK_OVERHEAD + 10));
        assert_eq!(status(&endless_extension, 8), Some(413));
        // 17 hex digits is one too many, whatever their value.
        assert_eq!(status(b"00000000000000001\r\n", 100), Some(400));
    }

    #[test]
    fn a_chunk_size_near_the_top_of_u64_after_a_chunk_is_413_not_an_overflow() {
        // The request that panicked the old decoder (body.len() + size overflowed).
        let wire = b"1\r\nA\r\nffffffffffffffff\r\nX";
        assert_eq!(
            decode_chunked(wire, 65536).err().map(|e| e.status()),
            Some(413)
        );
    }

    #[test]
    fn a_head_is_found_however_its_bytes_arrive() {
        let raw = b"\r\nGET /x?a=1 HTTP/1.1\r\nHost: h\r\n\r\nNEXT";
        for cut in 0..raw.len() {
            let mut scan = HeadScanner::default();
            let first = scan.parse(&raw[..cut], 10).unwrap();
            let head = match first {
                Some(h) => h,
                None => scan.parse(raw, 10).unwrap().unwrap(),
            };
            assert_eq!(head.req.path, "/x", "cut {cut}");
            assert_eq!(&raw[head.head_len..], b"NEXT");
        }
        // Bare line feeds end a head too.
        assert!(head("GET / HTTP/1.1\nHost: x\n\n").unwrap().is_some());
    }

    #[test]
    fn empty_lines_before_a_head_are_skipped_once() {
        let mut raw = "\r\n".repeat(2000);
        raw.push_str("GET /y HTTP/1.1\r\n\r\n");
        let h = head(&raw).unwrap().unwrap();
        assert_eq!((h.req.path.as_str(), h.head_len), ("/y", raw.len()));
        assert_eq!(head("\n\n\n").ok().flatten().map(|h| h.head_len), None);
    }

    #[test]
    fn a_content_length_is_digits_only() {
        for bad in ["+5", "-5", "5 5", "0x5", ""] {
            let raw = format!("POST / HTTP/1.1\r\nContent-Length: {bad}\r\n\r\n");
            assert_eq!(head(&raw).err().map(|e| e.status()), Some(400), "{bad:?}");
        }
    }

    #[test]
    fn control_characters_in_chunk_extensions_and_trailers_are_refused() {
        let status = |wire: &[u8]| decode_chunked(wire, 100).err().map(|e| e.status());
        assert_eq!(status(b"1a;x\nGARBAGE\r\n"), Some(400));
        assert_eq!(status(b"1;x\x00y\r\n"), Some(400));
        assert_eq!(status(b"0\r\nX: a\x01b\r\n\r\n"), Some(400));
        // HTAB is a field value's own.
        assert_eq!(
            decode_chunked(b"1;x=\ty\r\nA\r\n0\r\nX: a\tb\r\n\r\n", 100)
                .unwrap()
                .map(|(body, _)| body),
            Some(b"A".to_vec())
        );
    }

    #[test]
    fn a_head_over_the_limit_without_its_end_is_431() {
        let mut raw = b"GET / HTTP/1.1\r\nX: ".to_vec();
        raw.extend(std::iter::repeat_n(b'a', MAX_HEAD));
        assert_eq!(head_status(&raw), Some(431));
    }

    #[test]
    fn reply_head_names_length_type_and_close() {
        let mut out = Vec::new();
        let date = "Sun, 06 Nov 1994 08:49:37 GMT";
        reply_head(&Reply::json(200, b"{}".to_vec()), 2, false, date, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Length: 2\r\n"));
        assert!(text.contains("Content-Type: application/json\r\n"));
        assert!(text.ends_with("Connection: close\r\n\r\n"));
        assert!(text.contains("Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n"));
    }

    #[test]
    fn a_204_has_no_content_headers() {
        let mut out = Vec::new();
        reply_head(&Reply::no_content(), 0, true, "d", &mut out);
        let text = String::from_utf8(out).unwrap().to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 204 no content\r\n"));
        assert!(!text.contains("content-length") && !text.contains("content-type"));
    }

    #[test]
    fn stream_head_has_no_length_and_says_event_stream() {
        let mut out = Vec::new();
        stream_head(
            "Sun, 06 Nov 1994 08:49:37 GMT",
            &[("Vary", "Origin".into())],
            &mut out,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Content-Type: text/event-stream\r\n"));
        assert!(text.contains("X-Accel-Buffering: no\r\n"));
        assert!(!text.to_ascii_lowercase().contains("content-length"));
        assert!(text.ends_with("Vary: Origin\r\n\r\n"));
    }

    #[test]
    fn garbage_is_a_bad_request() {
        assert_eq!(
            head("\x01\x02 nonsense\r\n\r\n").err().map(|e| e.status()),
            Some(400)
        );
    }
}
