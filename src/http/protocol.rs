//! HTTP/1.1 protocol, apart from any socket: parsing a request head, and the bytes of a response
//! head. Pure functions over bytes, unit-tested without I/O; `native` does the reading and
//! writing.

use std::io::Write as _;
use std::net::IpAddr;

use crate::error::ApiError;
use crate::http::{reason_phrase, Reply, Request};

/// Largest request head (request line and headers) we read before answering 431.
pub const MAX_HEAD: usize = 16 * 1024;
/// Most headers in one request; more gets 431 (an answer, unlike may_minihttp's silent drop).
pub const MAX_HEADERS: usize = 64;
/// The parsed head: everything but the body, owned.
pub struct Head {
    pub req: Request,
    pub head_len: usize,
    pub content_length: usize,
    pub keep_alive: bool,
}

/// Parse a complete request head from `buf`, or `Ok(None)` if more bytes are needed.
pub fn parse_head(
    buf: &[u8],
    peer: Option<IpAddr>,
    max_body: usize,
) -> Result<Option<Head>, ApiError> {
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

/// The head of a reply with a body of `body_len` bytes: status line, headers, blank line.
pub fn reply_head(reply: &Reply, body_len: usize, keep_alive: bool, out: &mut Vec<u8>) {
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\nServer: comet-quotes\r\nContent-Type: {}\r\nCache-Control: {}\r\nContent-Length: {}\r\n",
        reply.status,
        reason_phrase(reply.status),
        reply.content_type,
        reply.cache_control,
        body_len
    );
    for (name, value) in &reply.headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The head of a Server-Sent Events stream. The body runs until the server closes the
/// connection (no length, no chunks); `X-Accel-Buffering: no` tells nginx not to buffer it.
pub fn stream_head(out: &mut Vec<u8>) {
    out.extend_from_slice(
        b"HTTP/1.1 200 OK\r\nServer: comet-quotes\r\nContent-Type: text/event-stream\r\n\
          Cache-Control: no-store\r\nX-Accel-Buffering: no\r\nConnection: close\r\n\r\n",
    );
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
    fn reply_head_names_length_type_and_close() {
        let mut out = Vec::new();
        reply_head(&Reply::json(200, b"{}".to_vec()), 2, false, &mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(text.contains("Content-Length: 2\r\n"));
        assert!(text.contains("Content-Type: application/json\r\n"));
        assert!(text.ends_with("Connection: close\r\n\r\n"));
    }

    #[test]
    fn stream_head_has_no_length_and_says_event_stream() {
        let mut out = Vec::new();
        stream_head(&mut out);
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("Content-Type: text/event-stream\r\n"));
        assert!(text.contains("X-Accel-Buffering: no\r\n"));
        assert!(!text.to_ascii_lowercase().contains("content-length"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn garbage_is_a_bad_request() {
        assert_eq!(
            head("\x01\x02 nonsense\r\n\r\n").err().map(|e| e.status()),
            Some(400)
        );
    }
}
