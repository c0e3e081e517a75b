//! The may_minihttp engine (`--engine minihttp`) serves the same routes through the thin adapter.

mod common;

use common::{request, TestServer};

fn start() -> TestServer {
    TestServer::start(&["--engine", "minihttp"])
}

#[test]
fn minihttp_engine_serves_snapshot_and_poll() {
    let s = start();
    let cursor = s.cursor("IBM");
    let mut poll = s.send_poll_keep_alive(&format!("symbols=IBM&cursor={cursor}"));
    s.wait_for_metric("comet_polls_waiting", 1);
    s.publish("IBM", 12.5);
    let r = poll.read_response().unwrap();
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.prices(), [("IBM".to_string(), 12.5)]);
}

#[test]
fn minihttp_engine_reports_errors_as_json() {
    let s = start();
    let r = s.get("/api/poll?symbols=NOPE");
    assert_eq!(r.status, 404);
    assert!(r.json()["error"].as_str().unwrap().contains("NOPE"));
    let r = s.post("/api/quotes", r#"{"symbol":"IBM","price":-1}"#);
    assert_eq!(r.status, 400);
}

/// Evidence for the README's limits: may_minihttp 0.1.11 drops a request with 17 headers without
/// any answer (a browser revalidation sends that many). If this starts failing, the limit is gone.
#[test]
fn minihttp_engine_drops_a_request_with_seventeen_headers() {
    let s = start();
    let names: Vec<String> = (0..14).map(|i| format!("X-H{i}")).collect();
    let mut headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    // With the Host and Connection headers our client adds, 16 headers in all: answered.
    assert_eq!(
        request(s.addr, "GET", "/api/symbols", &headers, b"").status,
        200
    );
    headers.push(("X-One-More", "v"));
    let r = common::try_request(s.addr, "GET", "/api/symbols", &headers, b"");
    assert!(r.is_err(), "expected a dropped connection, got {r:?}");
}
