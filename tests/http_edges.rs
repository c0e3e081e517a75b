//! HTTP/1.1 edges real clients hit: chunked bodies, a 413 the client can read, slow heads, whole
//! batches, and a Date on every response.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::sse::SseClient;
use common::{Conn, TestServer};

fn ibm_msft(extra: &[&str]) -> TestServer {
    let mut args = vec!["--symbols", "IBM,MSFT"];
    args.extend_from_slice(extra);
    TestServer::start(&args)
}

/// Send raw bytes on a fresh connection and read one answer.
fn raw(s: &TestServer, bytes: &[u8]) -> (Conn, common::Response) {
    let mut c = Conn::open(s.addr).unwrap();
    c.send_raw(bytes).unwrap();
    let r = c.read_response().expect("an answer");
    (c, r)
}

/// True when the server closed the connection (EOF) rather than keeping it open.
fn closed(c: &Conn) -> bool {
    let mut stream = c.stream();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    matches!(stream.read(&mut [0u8; 1]), Ok(0) | Err(_))
}

#[test]
fn a_chunked_publish_is_decoded_and_applied() {
    let s = ibm_msft(&[]);
    let body = br#"{"symbol":"IBM","price":123.45}"#;
    // Split as a streaming client would, with a chunk extension and a trailer.
    let mut wire = format!(
        "POST /api/quotes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Transfer-Encoding: chunked\r\n\r\n",
        common::PUBLISH_TOKEN
    )
    .into_bytes();
    wire.extend_from_slice(
        format!(
            "a;part=1\r\n{}\r\n",
            std::str::from_utf8(&body[..10]).unwrap()
        )
        .as_bytes(),
    );
    wire.extend_from_slice(format!("{:x}\r\n", body.len() - 10).as_bytes());
    wire.extend_from_slice(&body[10..]);
    wire.extend_from_slice(b"\r\n0\r\nX-Checksum: none\r\n\r\n");
    let (mut c, r) = raw(&s, &wire);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["seq"].as_u64().is_some());
    assert_eq!(
        s.get("/api/quotes?symbols=IBM").prices(),
        [("IBM".into(), 123.45)]
    );
    // The connection is still good for the next request.
    c.send("GET", "/api/symbols", &[], b"", true).unwrap();
    assert_eq!(c.read_response().unwrap().status, 200);
}

#[test]
fn a_chunked_body_over_max_body_is_413() {
    let s = ibm_msft(&["--max-body", "64"]);
    let mut wire = b"POST /api/quotes HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        wire.extend_from_slice(b"20\r\n");
        wire.extend_from_slice(&[b' '; 32]);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    let (_, r) = raw(&s, &wire);
    assert_eq!(r.status, 413, "{}", r.text());
}

#[test]
fn a_malformed_chunk_is_400_and_the_connection_closes() {
    let s = ibm_msft(&[]);
    let (c, r) = raw(
        &s,
        b"POST /api/quotes HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["error"].as_str().unwrap().contains("chunked"));
    assert_eq!(r.header("connection"), Some("close"));
    assert!(closed(&c));
}

#[test]
fn a_client_that_sends_a_whole_8_mib_body_first_reads_the_413() {
    let s = ibm_msft(&[]);
    let mut stream = TcpStream::connect(s.addr).unwrap();
    let body = vec![b'x'; 8 << 20];
    // As Python's http.client does: the head and the whole body, then read.
    let head = format!(
        "POST /api/quotes HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream
        .write_all(&body)
        .expect("the server reads the body it refused instead of resetting the connection");
    let mut answer = Vec::new();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .read_to_end(&mut answer)
        .expect("the 413, then a clean close");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 413 "), "{text}");
}

#[test]
fn a_head_trickled_past_the_header_timeout_gets_408_and_is_closed() {
    let s = ibm_msft(&["--header-timeout", "0.3", "--idle-timeout", "120"]);
    let mut stream = TcpStream::connect(s.addr).unwrap();
    let start = Instant::now();
    let head = b"GET /api/symbols HTTP/1.1\r\nHost: x\r\nX-Slow: ";
    let mut sent = 0;
    // One byte every 20 ms: each byte would have reset a plain idle timer.
    let answer = loop {
        stream.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 512];
        match stream.read(&mut buf) {
            Ok(n) if n > 0 => break String::from_utf8_lossy(&buf[..n]).into_owned(),
            _ => {}
        }
        stream.set_nonblocking(false).unwrap();
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no 408 after 10 s"
        );
        let byte = head.get(sent).copied().unwrap_or(b'a');
        if stream.write_all(&[byte]).is_err() {
            panic!("closed without an answer");
        }
        sent += 1;
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.contains("Connection: close"), "{answer}");
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = Vec::new();
    let _ = stream.read_to_end(&mut rest);
}

#[test]
fn an_idle_keep_alive_connection_is_not_cut_by_the_header_timeout() {
    let s = ibm_msft(&["--header-timeout", "0.1", "--idle-timeout", "30"]);
    let mut c = Conn::open(s.addr).unwrap();
    c.send("GET", "/api/symbols", &[], b"", false).unwrap();
    assert_eq!(c.read_response().unwrap().status, 200);
    // Idle between requests for longer than the header timeout.
    std::thread::sleep(Duration::from_millis(400));
    c.send("GET", "/api/symbols", &[], b"", false).unwrap();
    assert_eq!(c.read_response().unwrap().status, 200);
}

#[test]
fn a_batch_that_would_pass_the_symbol_limit_changes_nothing() {
    let s = ibm_msft(&["--max-symbols", "3"]);
    let before = s.get("/api/quotes?symbols=IBM,MSFT").prices();
    let r = s.post(
        "/api/quotes",
        r#"[{"symbol":"IBM","price":1},{"symbol":"MSFT","price":2},{"symbol":"NEW1","price":3},{"symbol":"NEW2","price":4}]"#,
    );
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(s.get("/api/quotes?symbols=IBM,MSFT").prices(), before);
    assert_eq!(s.get("/api/quotes?symbols=NEW1").status, 404);
    assert_eq!(s.metric("comet_symbols"), 2);
    // One new symbol fits: the whole batch applies.
    let r = s.post(
        "/api/quotes",
        r#"[{"symbol":"IBM","price":1},{"symbol":"NEW1","price":3}]"#,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        s.get("/api/quotes?symbols=IBM,NEW1").prices(),
        [("IBM".into(), 1.0), ("NEW1".into(), 3.0)]
    );
}

#[test]
fn every_response_carries_a_date() {
    let s = ibm_msft(&[]);
    let cursor = s.cursor("IBM");
    for path in [
        "/".to_string(),
        "/app.js".to_string(),
        "/api/quotes?symbols=IBM".to_string(),
        format!("/api/poll?symbols=IBM&cursor={cursor}&timeout=0"),
        "/api/symbols".to_string(),
        "/metrics".to_string(),
        "/nope".to_string(),
        "/api/quotes?symbols=NOPE".to_string(),
    ] {
        let r = s.get(&path);
        let date = r
            .header("date")
            .unwrap_or_else(|| panic!("no Date on {path}"));
        assert!(
            date.ends_with(" GMT") && date.len() == 29,
            "{path}: {date:?}"
        );
    }
    let stream = SseClient::open(s.addr, "symbols=IBM", &[]);
    assert!(stream.header("date").is_some_and(|d| d.ends_with(" GMT")));
}
