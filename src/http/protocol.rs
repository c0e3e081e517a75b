//! HTTP/1.1 protocol, apart from any socket: parsing a request head, decoding a chunked body, and
//! the bytes of a response head. Pure functions over bytes, unit-tested without I/O; `native` does
//! the reading and writing.

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
    /// `Transfer-Encoding: chunked`: see [`decode_chunked`].
    Chunked,
}

/// The parsed head: everything but the body, owned.
pub struct Head {
    pub req: Request,
    pub head_len: usize,
    pub body: BodyLength,
    pub keep_alive: bool,
}

/// Parse a complete request head from `buf`, or `Ok(None)` if more bytes are needed.
pub fn parse_head(buf: &[u8], max_body: usize) -> Result<Option<Head>, ApiError> {
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
    let http11 = parsed.version == Some(1);
    let mut keep_alive = http11;
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
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

/// Decode a complete chunked body (RFC 9112 §7.1) from the start of `buf`: the body and how many
/// bytes of `buf` it took, or `Ok(None)` if more bytes are needed. Chunk extensions and trailer
/// fields are ignored. A body that decodes to more than `max` bytes is 413; anything malformed
/// is 400 (the connection must then close: its framing is lost).
pub fn decode_chunked(buf: &[u8], max: usize) -> Result<Option<(Vec<u8>, usize)>, ApiError> {
    let bad = |why: &str| ApiError::BadRequest(format!("malformed chunked body: {why}"));
    let too_large = || ApiError::BodyTooLarge { max };
    let mut body = Vec::new();
    let mut pos = 0;
    // One line ending in CRLF starting at `pos`, without it; None if it has not all arrived.
    let line = |pos: usize| -> Result<Option<&[u8]>, ApiError> {
        match buf[pos..].windows(2).position(|w| w == b"\r\n") {
            Some(n) => Ok(Some(&buf[pos..pos + n])),
            None if buf.len() - pos > MAX_CHUNK_OVERHEAD => Err(too_large()),
            None => Ok(None),
        }
    };
    loop {
        let Some(size_line) = line(pos)? else {
            return Ok(None);
        };
        pos += size_line.len() + 2;
        let digits = size_line.split(|&b| b == b';').next().unwrap_or_default();
        if digits.is_empty() || digits.len() > 16 || !digits.iter().all(u8::is_ascii_hexdigit) {
            return Err(bad("bad chunk size"));
        }
        let size = digits.iter().fold(0usize, |n, &d| {
            n * 16 + (d as char).to_digit(16).unwrap_or(0) as usize
        });
        if size == 0 {
            // The trailer section: field lines up to an empty line.
            loop {
                let Some(trailer) = line(pos)? else {
                    return Ok(None);
                };
                pos += trailer.len() + 2;
                if trailer.is_empty() {
                    return Ok(Some((body, pos)));
                }
                if pos > max + MAX_CHUNK_OVERHEAD {
                    return Err(too_large());
                }
            }
        }
        if body.len() + size > max {
            return Err(too_large());
        }
        if pos > max + MAX_CHUNK_OVERHEAD {
            return Err(too_large());
        }
        if buf.len() < pos + size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&buf[pos..pos + size]);
        pos += size;
        if &buf[pos..pos + 2] != b"\r\n" {
            return Err(bad("chunk data not followed by CRLF"));
        }
        pos += 2;
    }
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
        let endless_size_line = vec![b'1'; MAX_CHUNK_OVERHEAD + 10];
        assert_eq!(status(&endless_size_line, 8), Some(413));
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
