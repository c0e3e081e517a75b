//! `GET /api/stream`: Server-Sent Events against the real server, read by a plain SSE client.

mod common;

use std::time::{Duration, Instant};

use common::sse::{prices, Item, SseClient};
use common::TestServer;

fn ibm_msft() -> TestServer {
    TestServer::start(&["--symbols", "IBM,MSFT"])
}

#[test]
fn stream_opens_with_event_stream_headers_retry_and_a_comment() {
    let s = ibm_msft();
    let mut c = SseClient::open(s.addr, "symbols=IBM", &[]);
    assert_eq!(c.status, 200);
    assert_eq!(c.header("content-type"), Some("text/event-stream"));
    assert_eq!(c.header("cache-control"), Some("no-store"));
    assert_eq!(c.header("x-accel-buffering"), Some("no"));
    assert_eq!(c.header("content-length"), None);
    assert_eq!(c.header("content-encoding"), None);
    assert!(matches!(c.next(), Some(Item::Retry(ms)) if ms > 0));
    assert!(matches!(c.next(), Some(Item::Comment(_))));
}

#[test]
fn stream_without_a_cursor_starts_with_a_snapshot_whose_id_is_its_cursor() {
    let s = ibm_msft();
    let mut c = SseClient::open(s.addr, "symbols=IBM,MSFT", &[]);
    let (id, data) = c.next_event();
    assert_eq!(data["cursor"].as_u64(), Some(id));
    let mut got = prices(&data);
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let mut want = s.get("/api/quotes?symbols=IBM,MSFT").prices();
    want.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got, want);
}

#[test]
fn a_publish_reaches_the_stream_as_one_event_with_just_that_symbol() {
    let s = ibm_msft();
    let mut c = SseClient::open(s.addr, "symbols=IBM,MSFT", &[]);
    let (first, _) = c.next_event();
    let seq = s.publish("MSFT", 321.5);
    let (id, data) = c.next_event();
    assert_eq!(id, seq);
    assert!(id > first);
    assert_eq!(prices(&data), [("MSFT".to_string(), 321.5)]);
}

#[test]
fn a_stream_with_a_current_cursor_sends_nothing_until_a_change() {
    let s = ibm_msft();
    let cursor = s.cursor("IBM");
    let mut c = SseClient::open(s.addr, &format!("symbols=IBM&cursor={cursor}"), &[]);
    s.wait_for_metric("comet_streams_waiting", 1);
    s.publish("IBM", 7.25);
    // The first event is the change, not a snapshot.
    let (_, data) = c.next_event();
    assert_eq!(prices(&data), [("IBM".to_string(), 7.25)]);
}

#[test]
fn a_stream_with_an_old_cursor_gets_everything_since_at_once() {
    let s = ibm_msft();
    let cursor = s.cursor("IBM,MSFT");
    s.publish("IBM", 1.0);
    s.publish("IBM", 2.0);
    let mut c = SseClient::open(s.addr, &format!("symbols=IBM,MSFT&cursor={cursor}"), &[]);
    let (_, data) = c.next_event();
    // Intermediate ticks merge into the latest price; MSFT did not change.
    assert_eq!(prices(&data), [("IBM".to_string(), 2.0)]);
}

#[test]
fn last_event_id_wins_over_the_cursor_in_the_url() {
    let s = ibm_msft();
    let c0 = s.cursor("IBM,MSFT");
    let c1 = s.publish("IBM", 11.0);
    s.publish("MSFT", 22.0);
    // A reconnecting browser: the URL still has its first cursor, the header the last event.
    let mut c = SseClient::open(
        s.addr,
        &format!("symbols=IBM,MSFT&cursor={c0}"),
        &[("Last-Event-ID", &c1.to_string())],
    );
    let (_, data) = c.next_event();
    assert_eq!(prices(&data), [("MSFT".to_string(), 22.0)]);
}

#[test]
fn a_cursor_from_elsewhere_gets_a_full_snapshot() {
    let s = ibm_msft();
    let ahead = s.cursor("IBM") + 1_000_000;
    let mut c = SseClient::open(s.addr, &format!("symbols=IBM,MSFT&cursor={ahead}"), &[]);
    let (id, data) = c.next_event();
    assert_eq!(prices(&data).len(), 2);
    assert!(id < ahead);
}

#[test]
fn a_quiet_stream_gets_heartbeat_comments() {
    let s = TestServer::start(&["--symbols", "IBM", "--heartbeat", "0.05"]);
    let mut c = SseClient::open(s.addr, "symbols=IBM", &[]);
    c.next_event();
    let mut comments = 0;
    while comments < 3 {
        match c.next() {
            Some(Item::Comment(_)) => comments += 1,
            other => panic!("expected heartbeats, got {other:?}"),
        }
    }
    assert!(s.metric("comet_stream_heartbeats_total") >= 3);
}

#[test]
fn a_stream_ends_cleanly_after_its_lifetime() {
    let s = TestServer::start(&["--symbols", "IBM", "--max-stream", "0.3"]);
    let mut c = SseClient::open(s.addr, "symbols=IBM", &[]);
    c.next_event();
    c.read_to_end();
    s.wait_for_metric("comet_streams_ended_total{reason=\"lifetime\"}", 1);
    s.wait_for_metric("comet_streams_open", 0);
}

#[test]
fn a_reader_that_stops_reading_is_ended_as_slow() {
    // 100 symbols in one stream: every batch publish makes an event of ~11 KB, so the socket
    // buffers fill after a few hundred batches.
    let symbols: Vec<String> = (0..100).map(|i| format!("S{i}")).collect();
    let list = symbols.join(",");
    let s = TestServer::start(&["--symbols", &list, "--write-timeout", "0.2"]);
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&s.addr.into()).unwrap();
    let _c = SseClient::open_on(sock.into(), &format!("symbols={list}"), &[]);
    // Never read again; keep publishing until the server gives up on this reader.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut round = 0u32;
    while s.metric("comet_streams_ended_total{reason=\"slow\"}") == 0 {
        assert!(
            Instant::now() < deadline,
            "the stream was never ended as slow"
        );
        round += 1;
        let batch: Vec<serde_json::Value> = symbols
            .iter()
            .map(|sym| serde_json::json!({ "symbol": sym, "price": f64::from(round) }))
            .collect();
        let r = s.post("/api/quotes", &serde_json::Value::Array(batch).to_string());
        assert_eq!(r.status, 200);
    }
    s.wait_for_metric("comet_streams_open", 0);
}

#[test]
fn bad_stream_requests_get_json_errors_before_any_stream() {
    let s = TestServer::start(&["--symbols", "IBM,MSFT", "--max-symbols-per-request", "2"]);
    for (query, headers, status) in [
        ("", vec![], 400),
        ("symbols=NOPE", vec![], 404),
        ("symbols=IBM&cursor=abc", vec![], 400),
        ("symbols=IBM", vec![("Last-Event-ID", "x1")], 400),
        ("symbols=A,B,C", vec![], 400),
    ] {
        let mut c = SseClient::open(
            s.addr,
            query,
            &headers.iter().map(|(a, b)| (*a, *b)).collect::<Vec<_>>(),
        );
        assert_eq!(c.status, status, "{query} {headers:?}");
        assert_eq!(c.header("content-type"), Some("application/json"));
        assert!(c.error_body()["error"].is_string());
    }
    let r = s.post("/api/stream?symbols=IBM", "{}");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET"));
}

#[test]
fn shutdown_ends_every_stream_then_exits() {
    let mut s = ibm_msft();
    let mut clients: Vec<SseClient> = (0..5)
        .map(|_| SseClient::open(s.addr, "symbols=IBM", &[]))
        .collect();
    for c in &mut clients {
        c.next_event();
    }
    s.wait_for_metric("comet_streams_waiting", 5);
    assert!(s.terminate().success());
    for c in &mut clients {
        c.read_to_end();
    }
}
