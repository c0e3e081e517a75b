//! Cross-origin requests (`--cors-origins`), end to end: which `/api/` answers carry CORS headers,
//! and what a preflight is answered with.

mod common;

use common::jwt::{self, hs256, now_secs};
use common::sse::SseClient;
use common::{request, Response, TestServer};
use serde_json::json;

const APP: &str = "https://app.example.com";

fn from(s: &TestServer, method: &str, path: &str, origin: &str) -> Response {
    request(s.addr, method, path, &[("Origin", origin)], b"")
}

fn cors_headers(r: &Response) -> Vec<(String, String)> {
    r.headers
        .iter()
        .filter(|(n, _)| {
            let n = n.to_ascii_lowercase();
            n.starts_with("access-control-") || n == "vary"
        })
        .cloned()
        .collect()
}

#[test]
fn a_listed_origin_gets_cors_headers_on_every_api_answer() {
    let s = TestServer::start(&[
        "--cors-origins",
        "https://app.example.com, http://localhost:3000",
        "--jwt-secret",
        jwt::SECRET,
    ]);
    let t = hs256(&json!({"symbols": "*", "exp": now_secs() + 60}));
    let ok = from(
        &s,
        "GET",
        &format!("/api/quotes?symbols=IBM&access_token={t}"),
        APP,
    );
    let refused = from(&s, "GET", "/api/quotes?symbols=IBM", APP);
    let unknown = from(&s, "GET", "/api/nope", APP);
    let symbols = from(&s, "GET", "/api/symbols", APP);
    for r in [&ok, &refused, &unknown, &symbols] {
        assert_eq!(
            r.header("access-control-allow-origin"),
            Some(APP),
            "{}",
            r.status
        );
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
        assert_eq!(r.header("vary"), Some("Origin"));
    }
    assert_eq!((ok.status, refused.status, unknown.status), (200, 401, 404));
    // The stream's head too.
    let stream = SseClient::open(
        s.addr,
        &format!("symbols=IBM&access_token={t}"),
        &[("Origin", "http://localhost:3000")],
    );
    assert_eq!(stream.status, 200);
    assert_eq!(
        stream.header("access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    assert_eq!(
        stream.header("access-control-allow-credentials"),
        Some("true")
    );
    // Not the page itself: it is not an /api/ answer.
    assert!(cors_headers(&from(&s, "GET", "/", APP)).is_empty());
}

#[test]
fn a_preflight_is_answered_204_with_methods_headers_and_max_age() {
    let s = TestServer::start(&["--cors-origins", APP]);
    let r = request(
        s.addr,
        "OPTIONS",
        "/api/poll?symbols=IBM",
        &[
            ("Origin", APP),
            ("Access-Control-Request-Method", "GET"),
            ("Access-Control-Request-Headers", "authorization"),
        ],
        b"",
    );
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    assert_eq!(r.header("content-length"), None);
    assert_eq!(r.header("access-control-allow-origin"), Some(APP));
    assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
    let methods = r.header("access-control-allow-methods").unwrap();
    assert!(
        methods.contains("GET") && methods.contains("POST"),
        "{methods}"
    );
    let headers = r.header("access-control-allow-headers").unwrap();
    for h in ["Authorization", "Content-Type", "Last-Event-ID"] {
        assert!(headers.contains(h), "{headers}");
    }
    let age: u32 = r.header("access-control-max-age").unwrap().parse().unwrap();
    assert!(age > 0);
    // The connection is still good for the request the preflight was for.
    assert_eq!(s.get("/api/quotes?symbols=IBM").status, 200);
}

#[test]
fn star_lets_any_origin_read_without_credentials() {
    let s = TestServer::start(&["--cors-origins", "*"]);
    let r = from(
        &s,
        "GET",
        "/api/quotes?symbols=IBM",
        "https://anyone.example",
    );
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert_eq!(r.header("access-control-allow-credentials"), None);
    let pre = from(&s, "OPTIONS", "/api/stream", "https://anyone.example");
    assert_eq!(pre.status, 204);
    assert_eq!(pre.header("access-control-allow-origin"), Some("*"));
    assert!(pre.header("access-control-allow-headers").is_some());
}

#[test]
fn an_unlisted_origin_or_no_flag_gets_no_cors_headers() {
    let listed = TestServer::start(&["--cors-origins", APP]);
    let none = TestServer::start(&[]);
    for (s, origin) in [
        (&listed, "https://evil.example"),
        (&listed, "null"),
        (&none, APP),
    ] {
        for (method, path) in [("GET", "/api/quotes?symbols=IBM"), ("OPTIONS", "/api/poll")] {
            let r = from(s, method, path, origin);
            assert!(
                cors_headers(&r).is_empty(),
                "{method} {path} from {origin}: {:?}",
                cors_headers(&r)
            );
        }
    }
    let stream = SseClient::open(
        listed.addr,
        "symbols=IBM",
        &[("Origin", "https://evil.example")],
    );
    assert_eq!(stream.header("access-control-allow-origin"), None);
}
