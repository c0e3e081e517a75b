//! The one error type of the HTTP boundary, and its mapping to a status code.

use std::fmt;

/// Everything a client can get wrong, from the socket up to the routes.
///
/// Each variant maps to exactly one HTTP status in [`ApiError::status`]; its `Display` is the text
/// sent back as `{"error": "..."}`, so it names the problem in words a client can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// The request line or headers could not be parsed.
    BadRequest(String),
    /// The request head is larger than we accept, or has too many headers.
    HeadersTooLarge {
        max_bytes: usize,
        max_headers: usize,
    },
    /// A POST with neither Content-Length nor Transfer-Encoding: chunked.
    LengthRequired,
    /// A transfer coding other than `chunked` alone.
    UnsupportedTransferCoding(String),
    /// A request head not complete within the header timeout.
    RequestTimeout,
    /// The body is larger than the configured cap.
    BodyTooLarge { max: usize },
    /// `symbols=` is absent or empty.
    MissingSymbols,
    /// A symbol name that is not well formed.
    BadSymbol(String),
    /// A well-formed symbol the server does not know.
    UnknownSymbol(String),
    /// More symbols in one request than allowed.
    TooManySymbols { max: usize },
    /// `cursor=` is not a non-negative integer.
    BadCursor(String),
    /// A `Last-Event-ID` header that is not a cursor.
    BadLastEventId(String),
    /// `timeout=` is not a finite non-negative number of seconds.
    BadTimeout(String),
    /// The publish body is not JSON of the expected shape.
    BadJson(String),
    /// A published price that is negative, NaN or infinite.
    BadPrice { symbol: String },
    /// Publishing would create more symbols than the configured maximum.
    SymbolLimit { max: usize },
    /// A request that needs a credential came without one (401).
    MissingToken,
    /// A credential that is malformed, badly signed or otherwise not accepted (401).
    InvalidToken(String),
    /// A JWT whose `exp` has passed (401).
    ExpiredToken,
    /// A valid credential that does not grant these symbols (403).
    NotGranted(Vec<String>),
    /// A known path with the wrong method; `allow` is the `Allow` header value.
    MethodNotAllowed { allow: &'static str },
    /// No such path.
    NotFound(String),
    /// A cluster node cannot reach Redis, so it cannot publish now (503, with Retry-After).
    Unavailable,
    /// A cluster node has not loaded the quote book from Redis yet (503, with Retry-After).
    NotReady,
    /// More connections than `--max-connections` (503, with Retry-After).
    Overloaded,
    /// A display-delay report that is malformed, too large, or has values that cannot be (400).
    BadReport(String),
    /// Display-delay reports are off (`--no-display-reports`) (404).
    ReportsOff,
    /// Too many display-delay reports from this connection, or in all, just now (429).
    TooManyReports,
}

impl ApiError {
    /// The single place where errors become HTTP status codes. All are 4xx, except a transfer
    /// coding the server does not implement (501, RFC 9112 §6.1) and a node that cannot serve now
    /// (503: no Redis, not synced yet, too many connections).
    pub fn status(&self) -> u16 {
        use ApiError::*;
        match self {
            BadRequest(_) | MissingSymbols | BadSymbol(_) | TooManySymbols { .. } => 400,
            BadCursor(_) | BadLastEventId(_) | BadTimeout(_) | BadJson(_) | BadPrice { .. } => 400,
            BadReport(_) => 400,
            ReportsOff => 404,
            TooManyReports => 429,
            MissingToken | InvalidToken(_) | ExpiredToken => 401,
            NotGranted(_) => 403,
            UnknownSymbol(_) | NotFound(_) => 404,
            MethodNotAllowed { .. } => 405,
            RequestTimeout => 408,
            LengthRequired => 411,
            UnsupportedTransferCoding(_) => 501,
            BodyTooLarge { .. } => 413,
            SymbolLimit { .. } => 422,
            HeadersTooLarge { .. } => 431,
            Unavailable | NotReady | Overloaded => 503,
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ApiError::*;
        match self {
            BadRequest(why) => write!(f, "malformed HTTP request: {why}"),
            HeadersTooLarge {
                max_bytes,
                max_headers,
            } => write!(
                f,
                "request head too large (at most {max_bytes} bytes and {max_headers} headers)"
            ),
            LengthRequired => write!(
                f,
                "a POST needs Content-Length or Transfer-Encoding: chunked"
            ),
            UnsupportedTransferCoding(c) => write!(
                f,
                "unsupported Transfer-Encoding {c:?}: only chunked is accepted"
            ),
            RequestTimeout => write!(f, "the request head did not arrive in time"),
            BodyTooLarge { max } => write!(f, "request body larger than {max} bytes"),
            MissingSymbols => write!(f, "missing symbols: pass symbols=IBM,MSFT"),
            BadSymbol(s) => write!(f, "bad symbol {s:?}: use 1-12 letters, digits, '.' or '-'"),
            UnknownSymbol(s) => write!(f, "unknown symbol: {s}"),
            TooManySymbols { max } => write!(f, "too many symbols: at most {max} per request"),
            BadCursor(s) => write!(f, "bad cursor {s:?}: expected a non-negative integer"),
            BadLastEventId(s) => write!(
                f,
                "bad Last-Event-ID {s:?}: expected an event id this server sent (an integer)"
            ),
            BadTimeout(s) => write!(
                f,
                "bad timeout {s:?}: expected a non-negative number of seconds"
            ),
            BadJson(why) => write!(f, "bad JSON body: {why}"),
            BadPrice { symbol } => write!(
                f,
                "bad price for {symbol}: expected a finite, non-negative number"
            ),
            SymbolLimit { max } => write!(f, "symbol limit reached: at most {max} symbols"),
            MissingToken => write!(
                f,
                "a token is needed: send Authorization: Bearer <token> (to read, also \
                 access_token=<token> or the comet_token cookie)"
            ),
            InvalidToken(why) => write!(f, "invalid token: {why}"),
            ExpiredToken => write!(f, "token expired"),
            NotGranted(symbols) => write!(f, "not granted: {}", symbols.join(", ")),
            MethodNotAllowed { allow } => write!(f, "method not allowed (allowed: {allow})"),
            NotFound(path) => write!(f, "not found: {path}"),
            Unavailable => write!(
                f,
                "cannot publish now: this node has lost its Redis; retry shortly"
            ),
            NotReady => write!(
                f,
                "not ready: this node has not loaded the quotes from Redis yet; retry shortly"
            ),
            Overloaded => write!(f, "too many connections; retry shortly"),
            BadReport(why) => write!(f, "bad display-delay report: {why}"),
            ReportsOff => write!(f, "display-delay reports are off on this server"),
            TooManyReports => write!(f, "too many display-delay reports; one per 10 s"),
        }
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_but_an_unknown_coding_is_a_client_error() {
        assert_eq!(
            ApiError::UnsupportedTransferCoding("gzip".into()).status(),
            501
        );
        for e in [
            ApiError::Unavailable,
            ApiError::NotReady,
            ApiError::Overloaded,
        ] {
            assert_eq!(e.status(), 503);
        }
        let all = [
            ApiError::BadRequest("x".into()),
            ApiError::HeadersTooLarge {
                max_bytes: 1,
                max_headers: 1,
            },
            ApiError::LengthRequired,
            ApiError::RequestTimeout,
            ApiError::BodyTooLarge { max: 1 },
            ApiError::MissingSymbols,
            ApiError::BadSymbol("x".into()),
            ApiError::UnknownSymbol("X".into()),
            ApiError::TooManySymbols { max: 1 },
            ApiError::BadCursor("x".into()),
            ApiError::BadLastEventId("x".into()),
            ApiError::BadTimeout("x".into()),
            ApiError::BadJson("x".into()),
            ApiError::BadPrice { symbol: "X".into() },
            ApiError::SymbolLimit { max: 1 },
            ApiError::MissingToken,
            ApiError::InvalidToken("x".into()),
            ApiError::ExpiredToken,
            ApiError::NotGranted(vec!["X".into()]),
            ApiError::BadReport("x".into()),
            ApiError::ReportsOff,
            ApiError::TooManyReports,
            ApiError::MethodNotAllowed { allow: "GET" },
            ApiError::NotFound("/x".into()),
        ];
        for e in all {
            assert!((400..500).contains(&e.status()), "{e:?}");
            assert!(!e.to_string().is_empty());
        }
    }
}
