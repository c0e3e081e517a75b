//! The HTTP API, end to end against the real server: snapshots, long-polls, publishing, restart.

mod common;

use std::time::{Duration, Instant};

use common::{request, Conn, TestServer};

#[test]
fn symbols_lists_the_configured_symbols_sorted() {
    let s = TestServer::start(&["--symbols", "MSFT,IBM,AAPL"]);
    let r = s.get("/api/symbols");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(
        r.json()["symbols"],
        serde_json::json!(["AAPL", "IBM", "MSFT"])
    );
}

#[test]
fn snapshot_returns_every_requested_quote_and_a_cursor() {
    let s = TestServer::start(&[]);
    s.publish("IBM", 123.45);
    let r = s.get("/api/quotes?symbols=IBM,msft");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let body = r.json();
    let quotes = body["quotes"].as_array().unwrap();
    assert_eq!(quotes.len(), 2);
    assert_eq!(quotes[0]["symbol"], "IBM");
    assert_eq!(quotes[0]["price"], 123.45);
    assert_eq!(quotes[1]["symbol"], "MSFT");
    for q in quotes {
        for field in ["symbol", "price", "change", "seq", "ts"] {
            assert!(q.get(field).is_some(), "{field} missing in {q}");
        }
        assert!(q["seq"].as_u64().unwrap() <= body["cursor"].as_u64().unwrap());
    }
}

#[test]
fn poll_wakes_on_a_publish() {
    let s = TestServer::start(&[]);
    let cursor = s.cursor("IBM");
    let mut poll = s.send_poll(&format!("symbols=IBM&cursor={cursor}"));
    s.wait_for_metric("comet_polls_waiting", 1);
    let seq = s.publish("IBM", 150.25);
    let r = poll.read_response().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.prices(), [("IBM".to_string(), 150.25)]);
    assert_eq!(r.json()["cursor"].as_u64(), Some(seq));
    assert_eq!(r.json()["quotes"][0]["seq"].as_u64(), Some(seq));
}

#[test]
fn poll_for_two_symbols_wakes_on_either() {
    let s = TestServer::start(&[]);
    for (changed, price) in [("MSFT", 301.5), ("IBM", 99.75)] {
        let cursor = s.cursor("IBM,MSFT");
        let mut poll = s.send_poll(&format!("symbols=IBM,MSFT&cursor={cursor}"));
        s.wait_for_metric("comet_polls_waiting", 1);
        s.publish(changed, price);
        let r = poll.read_response().unwrap();
        assert_eq!(r.prices(), [(changed.to_string(), price)]);
    }
}

#[test]
fn poll_returns_at_once_when_cursor_is_behind() {
    let s = TestServer::start(&[]);
    let cursor = s.cursor("IBM,MSFT");
    s.publish("IBM", 1.0);
    s.publish("IBM", 2.0); // intermediate ticks merge into the latest price
    let started = Instant::now();
    let r = s.get(&format!(
        "/api/poll?symbols=IBM,MSFT&cursor={cursor}&timeout=30"
    ));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(r.prices(), [("IBM".to_string(), 2.0)]);
}

#[test]
fn poll_without_cursor_waits_for_the_next_change() {
    let s = TestServer::start(&[]);
    let mut poll = s.send_poll("symbols=IBM");
    s.wait_for_metric("comet_polls_waiting", 1);
    s.publish("IBM", 42.0);
    assert_eq!(
        poll.read_response().unwrap().prices(),
        [("IBM".to_string(), 42.0)]
    );
}

#[test]
fn poll_timeout_gives_empty_answer_with_the_same_cursor() {
    let s = TestServer::start(&[]);
    let cursor = s.cursor("IBM");
    let started = Instant::now();
    let r = s.get(&format!(
        "/api/poll?symbols=IBM&cursor={cursor}&timeout=0.1"
    ));
    let waited = started.elapsed();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        serde_json::json!({ "cursor": cursor, "quotes": [] })
    );
    assert!(
        waited >= Duration::from_millis(95),
        "answered after {waited:?}"
    );
    assert_eq!(
        s.metric("comet_polls_answered_total{reason=\"timeout\"}"),
        1
    );
}

#[test]
fn default_poll_timeout_comes_from_the_flag() {
    let s = TestServer::start(&["--poll-timeout", "0.05"]);
    let cursor = s.cursor("IBM");
    let r = s.get(&format!("/api/poll?symbols=IBM&cursor={cursor}"));
    assert_eq!(r.json()["quotes"], serde_json::json!([]));
}

#[test]
fn zero_timeout_answers_without_hanging() {
    let s = TestServer::start(&[]);
    let cursor = s.cursor("IBM");
    let r = s.get(&format!("/api/poll?symbols=IBM&cursor={cursor}&timeout=0"));
    assert_eq!(r.json()["quotes"], serde_json::json!([]));
}

#[test]
fn future_cursor_resyncs_with_a_full_snapshot() {
    let s = TestServer::start(&[]);
    let now = s.cursor("IBM,MSFT");
    let r = s.get(&format!(
        "/api/poll?symbols=IBM,MSFT&cursor={}",
        now + 1_000_000
    ));
    let body = r.json();
    assert_eq!(body["cursor"].as_u64(), Some(now));
    assert_eq!(body["quotes"].as_array().unwrap().len(), 2);
}

#[test]
fn cursor_from_an_earlier_run_misses_nothing_after_restart() {
    let first = TestServer::start(&[]);
    let old_cursor = first.cursor("IBM,MSFT");
    drop(first);
    let second = TestServer::start(&[]);
    // Every seq of the new run sorts above the old cursor: the client gets all it asked for, at
    // once, and a cursor of the new run.
    let r = second.get(&format!(
        "/api/poll?symbols=IBM,MSFT&cursor={old_cursor}&timeout=5"
    ));
    let body = r.json();
    assert_eq!(body["quotes"].as_array().unwrap().len(), 2);
    assert!(body["cursor"].as_u64().unwrap() > old_cursor);
}

#[test]
fn publish_returns_the_seq_and_creates_new_symbols() {
    let s = TestServer::start(&[]);
    let before = s.cursor("IBM");
    let r = s.post(
        "/api/quotes",
        r#"[{"symbol":"IBM","price":10.5},{"symbol":"NEWCO","price":7}]"#,
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.json()["seq"].as_u64().unwrap() > before);
    assert!(s.get("/api/symbols").text().contains("\"NEWCO\""));
    assert_eq!(
        s.get("/api/quotes?symbols=NEWCO").prices(),
        [("NEWCO".to_string(), 7.0)]
    );
}

#[test]
fn change_is_measured_from_the_opening_price() {
    let s = TestServer::start(&[]);
    s.post("/api/quotes", r#"{"symbol":"ZZZ","price":100}"#);
    s.publish("ZZZ", 98.5);
    let q = &s.get("/api/quotes?symbols=ZZZ").json()["quotes"][0];
    assert_eq!(q["change"], -1.5);
}

#[test]
fn publish_with_a_token_needs_the_bearer_header() {
    let s = TestServer::start(&["--publish-token", "s3cret"]);
    let body = br#"{"symbol":"IBM","price":1}"#;
    let none = request(s.addr, "POST", "/api/quotes", &[], body);
    assert_eq!(none.status, 401);
    assert!(none.json()["error"].as_str().unwrap().contains("Bearer"));
    let wrong = request(
        s.addr,
        "POST",
        "/api/quotes",
        &[("Authorization", "Bearer nope")],
        body,
    );
    assert_eq!(wrong.status, 401);
    let right = request(
        s.addr,
        "POST",
        "/api/quotes",
        &[("Authorization", "Bearer s3cret")],
        body,
    );
    assert_eq!(right.status, 200);
}

#[test]
fn publish_token_can_come_from_the_environment() {
    // Flags and env vars feed the same Config.
    let s = TestServer::start_env(
        &["--listen", "127.0.0.1:0", "--no-feed"],
        &[("COMET_PUBLISH_TOKEN", "from-env")],
    );
    let body = br#"{"symbol":"IBM","price":1}"#;
    let status = |h: &[(&str, &str)]| request(s.addr, "POST", "/api/quotes", h, body).status;
    assert_eq!(status(&[]), 401);
    assert_eq!(status(&[("Authorization", "Bearer from-env")]), 200);
    assert!(!s.stderr().contains("COMET_PUBLISH_TOKEN="));
}

#[test]
fn index_page_is_served_with_an_etag_and_revalidates() {
    let s = TestServer::start(&[]);
    let r = s.get("/");
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    let etag = r.header("etag").expect("etag").to_string();
    let again = request(s.addr, "GET", "/", &[("If-None-Match", &etag)], b"");
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());
}

#[test]
fn metrics_are_prometheus_text() {
    let s = TestServer::start(&[]);
    s.publish("IBM", 5.0);
    let r = s.get("/metrics");
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    let text = r.text();
    for family in [
        "comet_connections_open",
        "comet_polls_waiting",
        "comet_polls_answered_total{reason=\"change\"}",
        "comet_polls_answered_total{reason=\"timeout\"}",
        "comet_quotes_published_total",
        "comet_quotes_delivered_total",
    ] {
        assert!(text.contains(family), "{family} missing");
    }
    assert!(s.metric("comet_quotes_published_total") >= 1);
}

#[test]
fn keep_alive_serves_several_requests_on_one_connection() {
    let s = TestServer::start(&[]);
    let mut c = Conn::open(s.addr).unwrap();
    for _ in 0..3 {
        c.send("GET", "/api/symbols", &[], b"", false).unwrap();
        assert_eq!(c.read_response().unwrap().status, 200);
    }
}

#[test]
fn sigterm_answers_waiting_polls_then_exits() {
    let mut s = TestServer::start(&["--poll-timeout", "60"]);
    let cursor = s.cursor("IBM");
    let mut polls: Vec<Conn> = (0..3)
        .map(|_| s.send_poll(&format!("symbols=IBM&cursor={cursor}")))
        .collect();
    s.wait_for_metric("comet_polls_waiting", 3);
    let started = Instant::now();
    let status = s.terminate();
    assert!(status.success(), "exit status {status:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    for p in &mut polls {
        let r = p.read_response().expect("answered before exit");
        assert_eq!(
            r.json(),
            serde_json::json!({ "cursor": cursor, "quotes": [] })
        );
    }
}

#[test]
fn random_feed_moves_prices_by_default() {
    let s = TestServer::start_raw(&["--listen", "127.0.0.1:0", "--feed-interval", "0.01"]);
    let symbols = s.get("/api/symbols").json()["symbols"]
        .as_array()
        .unwrap()
        .len();
    assert!(symbols >= 20, "only {symbols} symbols");
    let cursor = s.cursor("IBM,MSFT,AAPL");
    let r = s.get(&format!(
        "/api/poll?symbols=IBM,MSFT,AAPL&cursor={cursor}&timeout=10"
    ));
    assert!(!r.prices().is_empty(), "no feed change within 10 s");
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let s = TestServer::start(&[]);
    let mut c = Conn::open(s.addr).unwrap();
    c.send_raw(
        b"GET /api/quotes?symbols=IBM HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /api/quotes?symbols=MSFT HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /api/symbols HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .unwrap();
    assert_eq!(c.read_response().unwrap().prices()[0].0, "IBM");
    assert_eq!(c.read_response().unwrap().prices()[0].0, "MSFT");
    assert!(c.read_response().unwrap().json()["symbols"].is_array());
}

#[test]
fn request_head_larger_than_one_read_is_served() {
    // A 6 KB cookie: the head arrives in one burst but takes several reads to drain.
    let s = TestServer::start(&[]);
    let cookie = format!("big={}", "x".repeat(6000));
    let mut c = Conn::open(s.addr).unwrap();
    for _ in 0..2 {
        c.send(
            "GET",
            "/api/quotes?symbols=IBM",
            &[("Cookie", &cookie)],
            b"",
            false,
        )
        .unwrap();
        assert_eq!(c.read_response().unwrap().status, 200);
    }
}

#[test]
fn a_lone_node_is_healthy_and_ready() {
    let s = TestServer::start(&[]);
    for path in ["/healthz", "/readyz"] {
        let r = s.get(path);
        assert_eq!(r.status, 200, "{path}");
        assert!(r.json()["status"].is_string());
    }
    assert_eq!(request(s.addr, "POST", "/readyz", &[], b"x").status, 405);
}
