//! The may_minihttp 0.1.11 engine (`--engine minihttp`): a thin adapter onto the same routes.
//!
//! Kept as the reference the native layer is measured against, and to show the routes do not
//! depend on the engine. Its limits (README): requests with more than 16 headers are dropped
//! unanswered, `Connection: close` is ignored, there is no idle timeout, and no `ETag` is sent
//! (response header lines must be `&'static str`). It cannot stream (`/api/stream` answers 501),
//! and a held poll does not notice its client leaving.

use std::io::{self, Read};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use may_minihttp::{HttpServiceFactory, Request as MiniRequest, Response as MiniResponse};

use crate::app::App;
use crate::error::ApiError;
use crate::reply::{error_reply, reason_phrase, Reply};
use crate::request::{ConnState, Request};
use crate::routes::{self, Response};
use crate::waiter::PlainHold;

/// Creates one service per connection; may_minihttp passes the connection's fd as `id`.
pub struct Factory(pub Arc<App>);

pub struct Service {
    app: Arc<App>,
    state: ConnState,
    lane: usize,
}

impl HttpServiceFactory for Factory {
    type Service = Service;
    fn new_service(&self, id: usize) -> Service {
        Service {
            state: ConnState::default(),
            lane: self.0.book.lane_of(id),
            app: Arc::clone(&self.0),
        }
    }
}

fn content_type_line(ct: &str) -> &'static str {
    match ct {
        "application/json" => "Content-Type: application/json",
        "text/html; charset=utf-8" => "Content-Type: text/html; charset=utf-8",
        "text/javascript; charset=utf-8" => "Content-Type: text/javascript; charset=utf-8",
        "text/css; charset=utf-8" => "Content-Type: text/css; charset=utf-8",
        "image/svg+xml" => "Content-Type: image/svg+xml",
        "text/plain; version=0.0.4; charset=utf-8" => {
            "Content-Type: text/plain; version=0.0.4; charset=utf-8"
        }
        _ => "Content-Type: application/octet-stream",
    }
}

fn cache_line(cc: &str) -> &'static str {
    match cc {
        "no-cache" => "Cache-Control: no-cache",
        _ => "Cache-Control: no-store",
    }
}

/// The static header line for one of the routes' extra headers, where there is one. CORS answers
/// have none, so the configuration refuses `--cors-origins` with this engine.
fn header_line(name: &str, value: &str) -> Option<&'static str> {
    Some(match (name, value) {
        ("Allow", "GET, HEAD") => "Allow: GET, HEAD",
        ("Allow", "GET, HEAD, POST") => "Allow: GET, HEAD, POST",
        ("Allow", "GET, HEAD, POST, OPTIONS") => "Allow: GET, HEAD, POST, OPTIONS",
        ("Retry-After", "1") => "Retry-After: 1",
        ("Retry-After", "10") => "Retry-After: 10",
        ("Access-Control-Allow-Origin", "*") => "Access-Control-Allow-Origin: *",
        ("Allow", "POST") => "Allow: POST",
        ("Allow", "GET") => "Allow: GET",
        ("WWW-Authenticate", "Bearer") => "WWW-Authenticate: Bearer",
        ("WWW-Authenticate", r#"Bearer error="invalid_token""#) => {
            r#"WWW-Authenticate: Bearer error="invalid_token""#
        }
        ("WWW-Authenticate", r#"Bearer error="insufficient_scope""#) => {
            r#"WWW-Authenticate: Bearer error="insufficient_scope""#
        }
        _ => return None,
    })
}

impl Service {
    /// Our request view, with the body read up to the cap. The Content-Length is validated here:
    /// may_minihttp's own `body()` panics on a non-numeric one.
    fn request(&self, req: MiniRequest) -> Result<Request, ApiError> {
        let mut out = Request::new(req.method(), req.path());
        out.lane = self.lane;
        let mut length = 0usize;
        for h in req.headers() {
            if h.name.eq_ignore_ascii_case("content-length") {
                let v = std::str::from_utf8(h.value).unwrap_or("").trim();
                length = v
                    .parse()
                    .map_err(|_| ApiError::BadRequest(format!("bad Content-Length {v:?}")))?;
            } else {
                out.set_header(h.name, h.value);
            }
        }
        let max = self.app.config.max_body;
        if length > max {
            return Err(ApiError::BodyTooLarge { max });
        }
        if length > 0 {
            // The body reader stops at Content-Length; dropping it consumes the rest.
            let mut body = Vec::with_capacity(length);
            req.body()
                .take(max as u64)
                .read_to_end(&mut body)
                .map_err(|e| ApiError::BadRequest(e.to_string()))?;
            out.body = body;
        }
        Ok(out)
    }
}

impl may_minihttp::HttpService for Service {
    fn call(&mut self, req: MiniRequest, rsp: &mut MiniResponse) -> io::Result<()> {
        let head_only = req.method() == "HEAD";
        self.app.metrics.in_flight.fetch_add(1, Ordering::Relaxed);
        let reply: Reply = match self.request(req) {
            // No socket to park on here: a held poll cannot see its client leave.
            // A panic in the routes ends this request with a 500, not may_minihttp's connection
            // loop (as in the native layer, it is counted).
            Ok(req) => match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                routes::handle(&self.app, Box::new(req), &PlainHold, &mut self.state)
            })) {
                Ok(Response::Reply(reply)) => reply,
                // may_minihttp answers with one body; it cannot stream.
                Ok(Response::Stream(_)) => Reply::json(
                    501,
                    br#"{"error":"streaming needs the native engine (--engine native)"}"#.to_vec(),
                ),
                Ok(Response::ClientGone) => return Ok(()),
                Err(_) => {
                    self.app.metrics.panics.fetch_add(1, Ordering::Relaxed);
                    Reply::json(500, br#"{"error":"internal error"}"#.to_vec())
                }
            },
            Err(e) => {
                let r = error_reply(&e);
                self.app.metrics.count_request(r.status);
                r
            }
        };
        self.app.metrics.in_flight.fetch_sub(1, Ordering::Relaxed);
        rsp.status_code(usize::from(reply.status), reason_phrase(reply.status));
        rsp.header(content_type_line(reply.content_type));
        rsp.header(cache_line(reply.cache_control));
        for (name, value) in &reply.headers {
            if let Some(line) = header_line(name, value) {
                rsp.header(line);
            }
        }
        if !head_only && reply.status != 304 {
            rsp.body_vec(reply.body.as_bytes().to_vec());
        }
        Ok(())
    }
}
