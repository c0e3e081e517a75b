//! What the routes answer: a [`Reply`] value both connection layers can write, and the one place
//! an [`ApiError`] becomes a reply.

use crate::error::ApiError;

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
    /// `204 No Content`: no body, no content headers (RFC 9110 §15.3.5).
    pub fn no_content() -> Reply {
        Reply {
            status: 204,
            content_type: "",
            cache_control: "no-store",
            headers: Vec::new(),
            body: Body::Static(b""),
        }
    }

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
        204 => "No Content",
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
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// `{"error":"..."}` with the error's status, and the headers that go with it: `Allow` on a 405,
/// `Retry-After` on a 503, `WWW-Authenticate` on a refused credential (RFC 6750 §3: a bare
/// `Bearer` challenge when none was sent, `invalid_token` when it was refused,
/// `insufficient_scope` when it does not cover the request).
pub fn error_reply(e: &ApiError) -> Reply {
    let body = serde_json::json!({ "error": e.to_string() });
    let reply = Reply::json(e.status(), body.to_string().into_bytes());
    match e {
        ApiError::MethodNotAllowed { allow } => reply.header("Allow", (*allow).to_string()),
        ApiError::Unavailable | ApiError::NotReady | ApiError::Overloaded => {
            reply.header("Retry-After", "1".to_string())
        }
        ApiError::TooManyReports => reply.header("Retry-After", "10".to_string()),
        ApiError::MissingToken => reply.header("WWW-Authenticate", "Bearer".to_string()),
        ApiError::InvalidToken(_) | ApiError::ExpiredToken => reply.header(
            "WWW-Authenticate",
            r#"Bearer error="invalid_token""#.to_string(),
        ),
        ApiError::NotGranted(_) => reply.header(
            "WWW-Authenticate",
            r#"Bearer error="insufficient_scope""#.to_string(),
        ),
        _ => reply,
    }
}
