//! Request parsing, apart from any socket: the request value the routes see, its query string
//! (percent-decoding), the parameters of the API (symbols, cursor, timeout) and the publish body.
//! Pure functions over strings and bytes, unit-tested without HTTP; the connection layers fill a
//! [`Request`] and the routes read it.

use std::borrow::Cow;
use std::time::Duration;

use serde_json::Value;

use crate::error::ApiError;
use crate::names::normalize_symbol;

/// Most updates one publish request may carry.
pub const MAX_BATCH: usize = 1000;
/// Deepest JSON nesting a publish body may have. Checked on the raw bytes *before* parsing, so a
/// hostile body cannot recurse the parser through a coroutine's small stack.
pub const MAX_JSON_DEPTH: usize = 8;

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
    /// Every `Cookie` header, joined with `; `.
    pub cookie: Option<String>,
    /// The `Origin` header of a browser's cross-origin request (CORS).
    pub origin: Option<String>,
    pub if_none_match: Option<String>,
    /// Where a reconnecting `EventSource` resumes.
    pub last_event_id: Option<String>,
    pub body: Vec<u8>,
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
        } else if name.eq_ignore_ascii_case("origin") {
            self.origin = Some(value());
        } else if name.eq_ignore_ascii_case("cookie") {
            // HTTP/2 lets a proxy split cookies over several headers (RFC 9113 §8.2.3).
            let v = value();
            match &mut self.cookie {
                Some(c) => {
                    c.push_str("; ");
                    c.push_str(&v);
                }
                None => self.cookie = Some(v),
            }
        }
    }

    /// The token of `Authorization: Bearer <token>`, if that is the header's scheme.
    pub fn bearer(&self) -> Option<&str> {
        bearer(self.authorization.as_deref()?)
    }

    /// A reader's token, from the first of these that is present (RFC 6750 §2): the
    /// `Authorization: Bearer` header, the `access_token` query parameter (an `EventSource`
    /// cannot set headers), the [`TOKEN_COOKIE`] cookie (`EventSource` with `withCredentials`).
    pub fn read_token<'q>(&'q self, query: &'q Query<'_>) -> Option<&'q str> {
        self.bearer()
            .or_else(|| query.get("access_token").filter(|t| !t.is_empty()))
            .or_else(|| cookie(self.cookie.as_deref()?, TOKEN_COOKIE))
    }
}

/// What the server keeps about a connection across its requests, for the routes: lent to every
/// request on it by the connection layer.
#[derive(Debug, Default)]
pub struct ConnState {
    /// When this connection's last display-delay report was taken (`display`).
    pub last_report: Option<std::time::Instant>,
}

/// The cookie a reader's token may come in.
pub const TOKEN_COOKIE: &str = "comet_token";

/// `Bearer <token>` -> the token (the scheme is case-insensitive, RFC 9110 §11.1); `None` for
/// another scheme or an empty token.
pub fn bearer(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The value of cookie `name` in a `Cookie` header (`a=1; b=2`, RFC 6265 §4.2.1), without the
/// optional double quotes; `None` if absent or empty.
pub fn cookie<'c>(header: &'c str, name: &str) -> Option<&'c str> {
    header.split(';').find_map(|pair| {
        let (n, v) = pair.split_once('=')?;
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        (n.trim() == name && !v.is_empty()).then_some(v)
    })
}

/// A decoded query string; later duplicates of a key are ignored. Borrows from the request
/// unless a value needs decoding (this runs on every poll).
pub struct Query<'a>(Vec<(Cow<'a, str>, Cow<'a, str>)>);

impl<'a> Query<'a> {
    pub fn parse(query: &'a str) -> Query<'a> {
        Query(
            query
                .split('&')
                .filter(|kv| !kv.is_empty())
                .map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (percent_decode(k), percent_decode(v))
                })
                .collect(),
        )
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_ref())
    }
}

/// `%XX` and `+` decoding; malformed escapes are kept literally (they then fail validation).
fn percent_decode(s: &str) -> Cow<'_, str> {
    if !s.contains(['%', '+']) {
        return Cow::Borrowed(s);
    }
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => match (
                bytes.get(i + 1).and_then(|&b| hex(b)),
                bytes.get(i + 2).and_then(|&b| hex(b)),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

/// `symbols=IBM,MSFT` -> normalized, de-duplicated names, at most `max`.
pub fn parse_symbols(value: Option<&str>, max: usize) -> Result<Vec<String>, ApiError> {
    let value = value.unwrap_or("");
    let mut out: Vec<String> = Vec::new();
    for raw in value.split(',').filter(|s| !s.trim().is_empty()) {
        let s = normalize_symbol(raw)?;
        if !out.contains(&s) {
            if out.len() == max {
                return Err(ApiError::TooManySymbols { max });
            }
            out.push(s);
        }
    }
    if out.is_empty() {
        return Err(ApiError::MissingSymbols);
    }
    Ok(out)
}

/// `cursor=N`: absent means "from now"; otherwise a non-negative integer.
pub fn parse_cursor(value: Option<&str>) -> Result<Option<u64>, ApiError> {
    match value {
        None | Some("") => Ok(None),
        Some(v) => v
            .parse::<u64>()
            .map(Some)
            .map_err(|_| ApiError::BadCursor(v.chars().take(40).collect())),
    }
}

/// `timeout=S` in seconds (decimals allowed); absent -> `default`, longer than `max` -> `max`.
pub fn parse_timeout(
    value: Option<&str>,
    default: Duration,
    max: Duration,
) -> Result<Duration, ApiError> {
    let Some(v) = value.filter(|v| !v.is_empty()) else {
        return Ok(default);
    };
    match v.parse::<f64>() {
        Ok(s) if s.is_finite() && s >= 0.0 => Ok(Duration::from_secs_f64(s.min(max.as_secs_f64()))),
        _ => Err(ApiError::BadTimeout(v.chars().take(40).collect())),
    }
}

/// Nesting depth of a JSON text, counting brackets outside strings. Malformed text is left to
/// the parser; this only has to be right for text that is deep.
fn json_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut max, mut in_str, mut escaped) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_str {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_str = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// A publish body: `{"symbol":"IBM","price":123.45}` or an array of them.
pub fn parse_publish(body: &[u8]) -> Result<Vec<(String, f64)>, ApiError> {
    if body.is_empty() {
        return Err(ApiError::BadJson(
            "empty body: send {\"symbol\":\"IBM\",\"price\":123.45}".into(),
        ));
    }
    if json_depth(body) > MAX_JSON_DEPTH {
        return Err(ApiError::BadJson(format!(
            "nested deeper than {MAX_JSON_DEPTH} levels"
        )));
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|e| ApiError::BadJson(e.to_string()))?;
    let items = match value {
        Value::Array(items) => items,
        one @ Value::Object(_) => vec![one],
        _ => {
            return Err(ApiError::BadJson(
                "expected an object or an array of objects".into(),
            ))
        }
    };
    if items.is_empty() {
        return Err(ApiError::BadJson("empty array".into()));
    }
    if items.len() > MAX_BATCH {
        return Err(ApiError::BadJson(format!(
            "at most {MAX_BATCH} updates per request"
        )));
    }
    items.iter().map(parse_update).collect()
}

fn parse_update(item: &Value) -> Result<(String, f64), ApiError> {
    let obj = item
        .as_object()
        .ok_or_else(|| ApiError::BadJson("each update must be an object".into()))?;
    let symbol = obj
        .get("symbol")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::BadJson("missing string field \"symbol\"".into()))?;
    let symbol = normalize_symbol(symbol)?;
    let price = match obj.get("price") {
        Some(Value::Number(n)) => n.as_f64(),
        Some(_) => return Err(ApiError::BadPrice { symbol }),
        None => {
            return Err(ApiError::BadJson(format!(
                "missing number field \"price\" for {symbol}"
            )))
        }
    };
    match price {
        Some(p) if (0.0..1e12).contains(&p) => Ok((symbol, p)),
        _ => Err(ApiError::BadPrice { symbol }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: Duration = Duration::from_secs(1);

    #[test]
    fn symbols_are_uppercased_deduplicated_and_capped() {
        assert_eq!(
            parse_symbols(Some("ibm,MSFT,,ibm"), 10).unwrap(),
            ["IBM", "MSFT"]
        );
        assert_eq!(parse_symbols(None, 10), Err(ApiError::MissingSymbols));
        assert_eq!(parse_symbols(Some(","), 10), Err(ApiError::MissingSymbols));
        assert_eq!(
            parse_symbols(Some("A,B,C"), 2),
            Err(ApiError::TooManySymbols { max: 2 })
        );
        assert!(matches!(
            parse_symbols(Some("IBM,<script>"), 10),
            Err(ApiError::BadSymbol(_))
        ));
    }

    #[test]
    fn query_values_are_percent_decoded() {
        let q = Query::parse("symbols=IBM%2CMSFT&cursor=5&x");
        assert_eq!(q.get("symbols"), Some("IBM,MSFT"));
        assert_eq!(q.get("cursor"), Some("5"));
        assert_eq!(q.get("x"), Some(""));
        assert_eq!(q.get("nope"), None);
        assert_eq!(Query::parse("a=%zz%4").get("a"), Some("%zz%4"));
    }

    #[test]
    fn a_readers_token_comes_from_the_header_then_the_query_then_the_cookie() {
        let mut req = Request::new("GET", "/api/poll?access_token=q&symbols=IBM");
        req.set_header("Cookie", b"a=1; comet_token=c");
        assert_eq!(req.read_token(&Query::parse(&req.query)), Some("q"));
        req.set_header("Authorization", b"bearer   h ");
        assert_eq!(req.read_token(&Query::parse(&req.query)), Some("h"));
        let plain = Request::new("GET", "/x");
        let mut with_cookie = plain.clone();
        with_cookie.set_header("cookie", b"x=\"y\"");
        with_cookie.set_header("cookie", b"comet_token=\"c2\"");
        let empty = Query::parse("");
        assert_eq!(with_cookie.read_token(&empty), Some("c2"));
        assert_eq!(plain.read_token(&Query::parse("access_token=")), None);
    }

    #[test]
    fn only_the_bearer_scheme_carries_a_token() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("BEARER abc"), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("Bearer"), None);
        assert_eq!(cookie("comet_token=", "comet_token"), None);
        assert_eq!(cookie("other=1", "comet_token"), None);
        assert_eq!(cookie("xcomet_token=1", "comet_token"), None);
    }

    #[test]
    fn cursor_must_be_a_non_negative_integer() {
        assert_eq!(parse_cursor(None), Ok(None));
        assert_eq!(parse_cursor(Some("42")), Ok(Some(42)));
        assert!(parse_cursor(Some("-1")).is_err());
        assert!(parse_cursor(Some("abc")).is_err());
        assert!(parse_cursor(Some("99999999999999999999999")).is_err());
    }

    #[test]
    fn timeout_defaults_caps_and_rejects_garbage() {
        assert_eq!(parse_timeout(None, 30 * SEC, 60 * SEC), Ok(30 * SEC));
        assert_eq!(parse_timeout(Some("0.25"), SEC, 60 * SEC), Ok(SEC / 4));
        assert_eq!(parse_timeout(Some("600"), SEC, 60 * SEC), Ok(60 * SEC));
        for bad in ["-1", "NaN", "inf", "soon"] {
            assert!(parse_timeout(Some(bad), SEC, 60 * SEC).is_err(), "{bad}");
        }
    }

    #[test]
    fn publish_accepts_one_or_many() {
        assert_eq!(
            parse_publish(br#"{"symbol":"ibm","price":123.45}"#).unwrap(),
            [("IBM".to_string(), 123.45)]
        );
        assert_eq!(
            parse_publish(br#"[{"symbol":"A","price":1},{"symbol":"B","price":2.5}]"#)
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn publish_rejects_bad_prices_and_shapes() {
        for body in [
            &br#"{"symbol":"IBM","price":-1}"#[..],
            br#"{"symbol":"IBM","price":"12"}"#,
            br#"{"symbol":"IBM","price":1e400}"#,
            br#"{"symbol":"IBM"}"#,
            br#"{"price":1}"#,
            br#"[]"#,
            br#"42"#,
            br#"{"symbol":"IBM","price":1"#,
            b"",
        ] {
            assert!(
                parse_publish(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn deeply_nested_json_is_refused_before_parsing() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(
            matches!(parse_publish(deep.as_bytes()), Err(ApiError::BadJson(m)) if m.contains("nested"))
        );
        // Brackets inside strings do not count.
        assert_eq!(json_depth(br#"{"symbol":"[[[[[[[[[[[[","price":1}"#), 1);
    }
}
