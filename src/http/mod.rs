//! The connection layers, and the request/reply values the routes see instead of either of them.
//!
//! Routes take a [`Request`] and return a [`Reply`]; neither knows which engine carried them, so a
//! connection layer can be swapped without touching the routes.

pub mod date;
pub mod minihttp;
pub mod native;
pub mod protocol;

use std::net::IpAddr;

/// The parts of an HTTP request the routes use. Owned and small: a held long-poll keeps it alive
/// for up to a minute, so the connection's read buffer is not borrowed.
#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The raw query string after `?` (not yet percent-decoded), or empty.
    pub query: String,
    pub authorization: Option<String>,
    pub if_none_match: Option<String>,
    /// Where a reconnecting `EventSource` resumes.
    pub last_event_id: Option<String>,
    pub body: Vec<u8>,
    /// The client's address, where the engine knows it.
    pub peer: Option<IpAddr>,
    /// The waiter lane of the connection's socket (`QuoteBook::lane_of`): a held poll is woken on
    /// the may worker that also reads its socket. 0 where the engine does not tell.
    pub lane: usize,
}

impl Request {
    /// Build from a request target such as `/api/poll?symbols=IBM`.
    pub fn new(method: &str, target: &str) -> Request {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, q),
            None => (target, ""),
        };
        Request {
            method: method.to_string(),
            path: path.to_string(),
            query: query.to_string(),
            ..Request::default()
        }
    }

    /// Keep the headers the routes care about (names compared case-insensitively).
    pub fn set_header(&mut self, name: &str, value: &[u8]) {
        let value = || String::from_utf8_lossy(value).trim().to_string();
        if name.eq_ignore_ascii_case("authorization") {
            self.authorization = Some(value());
        } else if name.eq_ignore_ascii_case("if-none-match") {
            self.if_none_match = Some(value());
        } else if name.eq_ignore_ascii_case("last-event-id") {
            self.last_event_id = Some(value());
        }
    }
}

/// A reply body: borrowed from the binary (static assets) or built for this request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Static(&'static [u8]),
    Owned(Vec<u8>),
}

impl Body {
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Body::Static(b) => b,
            Body::Owned(v) => v,
        }
    }
}

/// What the routes answer. Header names and most values are static strings, as both engines like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub cache_control: &'static str,
    /// Extra headers: `Allow` on a 405, `ETag` on static files.
    pub headers: Vec<(&'static str, String)>,
    pub body: Body,
}

impl Reply {
    pub fn json(status: u16, body: Vec<u8>) -> Reply {
        Reply {
            status,
            content_type: "application/json",
            cache_control: "no-store",
            headers: Vec::new(),
            body: Body::Owned(body),
        }
    }

    pub fn text(status: u16, content_type: &'static str, body: Vec<u8>) -> Reply {
        Reply {
            status,
            content_type,
            cache_control: "no-store",
            headers: Vec::new(),
            body: Body::Owned(body),
        }
    }

    pub fn header(mut self, name: &'static str, value: String) -> Reply {
        self.headers.push((name, value));
        self
    }
}

pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        304 => "Not Modified",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Payload Too Large",
        422 => "Unprocessable Entity",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}
