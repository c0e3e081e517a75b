//! Every bad input gets a 4xx with a JSON error naming the problem, and the server keeps serving.

mod common;

use common::{request, Conn, TestServer};

/// Send `req` (raw bytes) on a fresh connection and return the answer.
fn raw(s: &TestServer, bytes: &[u8]) -> common::Response {
    let mut c = Conn::open(s.addr).unwrap();
    c.send_raw(bytes).unwrap();
    c.read_response()
        .expect("an answer, not a dropped connection")
}

/// The answer is `status` with `{"error": ...}` containing `needle`, and the server still works.
fn assert_error(s: &TestServer, r: common::Response, status: u16, needle: &str) {
    assert_eq!(r.status, status, "body: {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let msg = r.json()["error"]
        .as_str()
        .expect("error string")
        .to_string();
    assert!(msg.contains(needle), "{msg:?} does not mention {needle:?}");
    assert_eq!(s.get("/api/symbols").status, 200, "server stopped serving");
}

#[test]
fn missing_symbols_is_400() {
    let s = TestServer::start(&[]);
    assert_error(&s, s.get("/api/quotes"), 400, "missing symbols");
    assert_error(&s, s.get("/api/poll?symbols="), 400, "missing symbols");
}

#[test]
fn unknown_symbol_is_404_and_named() {
    let s = TestServer::start(&[]);
    assert_error(
        &s,
        s.get("/api/poll?symbols=IBM,NOPE&cursor=1"),
        404,
        "NOPE",
    );
}

#[test]
fn malformed_symbol_is_400() {
    let s = TestServer::start(&[]);
    assert_error(
        &s,
        s.get("/api/quotes?symbols=%3Cscript%3E"),
        400,
        "bad symbol",
    );
}

#[test]
fn too_many_symbols_is_400() {
    let s = TestServer::start(&["--max-symbols-per-request", "2"]);
    assert_error(
        &s,
        s.get("/api/quotes?symbols=IBM,MSFT,AAPL"),
        400,
        "at most 2",
    );
}

#[test]
fn bad_cursor_is_400() {
    let s = TestServer::start(&[]);
    for c in ["abc", "-5", "1.5", "99999999999999999999999"] {
        assert_error(
            &s,
            s.get(&format!("/api/poll?symbols=IBM&cursor={c}")),
            400,
            "cursor",
        );
    }
}

#[test]
fn bad_timeout_is_400() {
    let s = TestServer::start(&[]);
    for t in ["soon", "-1", "NaN", "inf"] {
        assert_error(
            &s,
            s.get(&format!("/api/poll?symbols=IBM&timeout={t}")),
            400,
            "timeout",
        );
    }
}

#[test]
fn bad_json_is_400() {
    let s = TestServer::start(&[]);
    for body in [
        "{",
        "not json",
        "42",
        "[]",
        r#"{"price":1}"#,
        r#"[{"symbol":"IBM"}]"#,
    ] {
        assert_error(&s, s.post("/api/quotes", body), 400, "JSON");
    }
}

#[test]
fn negative_or_non_numeric_price_is_400() {
    let s = TestServer::start(&[]);
    for body in [
        r#"{"symbol":"IBM","price":-1}"#,
        r#"{"symbol":"IBM","price":"12.5"}"#,
        r#"{"symbol":"IBM","price":null}"#,
    ] {
        assert_error(&s, s.post("/api/quotes", body), 400, "price");
    }
    // 1e999 overflows to infinity: serde_json refuses it as out of range.
    assert_error(
        &s,
        s.post("/api/quotes", r#"{"symbol":"IBM","price":1e999}"#),
        400,
        "JSON",
    );
}

#[test]
fn deeply_nested_json_is_400_not_a_stack_overflow() {
    let s = TestServer::start(&[]);
    for depth in [64, 10_000] {
        let body = format!("{}{}", "{\"a\":".repeat(depth), "}".repeat(depth));
        assert_error(&s, s.post("/api/quotes", &body), 400, "nested");
        let body = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert_error(&s, s.post("/api/quotes", &body), 400, "nested");
    }
}

#[test]
fn oversized_body_is_413() {
    let s = TestServer::start(&["--max-body", "1024"]);
    let body = format!(
        r#"{{"symbol":"IBM","price":1,"pad":"{}"}}"#,
        "x".repeat(2000)
    );
    assert_error(&s, s.post("/api/quotes", &body), 413, "1024");
}

#[test]
fn symbol_limit_is_422() {
    let s = TestServer::start(&["--symbols", "IBM", "--max-symbols", "2"]);
    assert_eq!(
        s.post("/api/quotes", r#"{"symbol":"B","price":1}"#).status,
        200
    );
    assert_error(
        &s,
        s.post("/api/quotes", r#"{"symbol":"C","price":1}"#),
        422,
        "at most 2",
    );
}

#[test]
fn wrong_method_is_405_with_allow() {
    let s = TestServer::start(&[]);
    let r = request(s.addr, "DELETE", "/api/quotes?symbols=IBM", &[], b"");
    assert_eq!(r.header("allow"), Some("GET, HEAD, POST"));
    assert_error(&s, r, 405, "not allowed");
    assert_error(
        &s,
        s.post("/api/poll?symbols=IBM", "{}"),
        405,
        "not allowed",
    );
}

#[test]
fn unknown_path_is_404() {
    let s = TestServer::start(&[]);
    assert_error(&s, s.get("/nope"), 404, "/nope");
}

#[test]
fn non_numeric_content_length_is_400() {
    let s = TestServer::start(&[]);
    let r = raw(
        &s,
        b"POST /api/quotes HTTP/1.1\r\nContent-Length: ten\r\n\r\n",
    );
    assert_error(&s, r, 400, "Content-Length");
}

#[test]
fn post_without_a_length_is_411() {
    let s = TestServer::start(&[]);
    let r = raw(&s, b"POST /api/quotes HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_error(&s, r, 411, "Content-Length");
}

#[test]
fn an_unknown_transfer_coding_is_501() {
    let s = TestServer::start(&[]);
    let r = raw(
        &s,
        b"POST /api/quotes HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    );
    assert_eq!(r.status, 501, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("chunked"));
}

#[test]
fn garbage_request_line_is_400() {
    let s = TestServer::start(&[]);
    assert_error(&s, raw(&s, b"\x00\x01\x02 HELLO\r\n\r\n"), 400, "malformed");
}

#[test]
fn twenty_headers_are_served() {
    // may_minihttp 0.1.11 drops such a request unanswered; the native engine serves it.
    let s = TestServer::start(&[]);
    let names: Vec<String> = (0..20).map(|i| format!("X-Header-{i}")).collect();
    let headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    assert_eq!(
        request(s.addr, "GET", "/api/symbols", &headers, b"").status,
        200
    );
}

#[test]
fn too_many_headers_is_431_not_a_silent_drop() {
    let s = TestServer::start(&[]);
    let names: Vec<String> = (0..100).map(|i| format!("X-Header-{i}")).collect();
    let headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    let r = request(s.addr, "GET", "/api/symbols", &headers, b"");
    assert_error(&s, r, 431, "too large");
}

#[test]
fn huge_request_head_is_431() {
    let s = TestServer::start(&[]);
    let long = "a".repeat(40_000);
    let mut c = Conn::open(s.addr).unwrap();
    c.send_raw(format!("GET /api/symbols?x={long} HTTP/1.1\r\n\r\n").as_bytes())
        .unwrap();
    assert_error(&s, c.read_response().unwrap(), 431, "too large");
}

#[test]
fn half_sent_request_does_not_block_others() {
    let s = TestServer::start(&[]);
    let mut stalled = Conn::open(s.addr).unwrap();
    stalled
        .send_raw(b"POST /api/quotes HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")
        .unwrap();
    assert_eq!(s.get("/api/symbols").status, 200);
}

#[test]
fn idle_connection_is_closed_after_the_idle_timeout() {
    let s = TestServer::start(&["--idle-timeout", "0.1"]);
    let mut c = Conn::open(s.addr).unwrap();
    c.set_read_timeout(std::time::Duration::from_secs(5));
    // No request sent: the server closes the connection; the read sees end of stream.
    let r = c.read_response();
    assert!(r.is_err(), "expected the idle connection to be closed");
}
