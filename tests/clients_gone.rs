//! A held poll or stream whose client goes away is freed at once, not at its timeout.

mod common;

use std::time::Duration;

use common::sse::SseClient;
use common::{Conn, TestServer};

#[test]
fn closing_500_held_polls_and_streams_frees_their_connections_within_a_second() {
    // Polls wait up to 60 s; without noticing the close they would stay that long.
    let s = TestServer::start(&["--symbols", "IBM,MSFT", "--poll-timeout", "60"]);
    let polls: Vec<Conn> = (0..250)
        .map(|_| s.send_poll("symbols=IBM,MSFT&timeout=60"))
        .collect();
    let mut streams: Vec<SseClient> = (0..250)
        .map(|_| SseClient::open(s.addr, "symbols=IBM", &[]))
        .collect();
    for c in &mut streams {
        c.next_event();
    }
    s.wait_for_metric("comet_polls_waiting", 250);
    s.wait_for_metric("comet_streams_waiting", 250);
    // Half of each close with a FIN, half with a reset (SO_LINGER 0).
    for (i, c) in polls.iter().enumerate() {
        if i % 2 == 0 {
            socket2::SockRef::from(c.stream())
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
    }
    for (i, c) in streams.iter().enumerate() {
        if i % 2 == 0 {
            socket2::SockRef::from(c.stream())
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
    }
    drop(polls);
    drop(streams);
    // Only the connection that asks for /metrics is left.
    s.wait_for_metric_within("comet_connections_open", 1, Duration::from_secs(1));
    assert_eq!(s.metric("comet_clients_gone_total"), 500);
    assert_eq!(s.metric("comet_polls_waiting"), 0);
    assert_eq!(s.metric("comet_streams_open"), 0);
    assert_eq!(
        s.metric("comet_streams_ended_total{reason=\"client_gone\"}"),
        250
    );
}

#[test]
fn a_request_pipelined_behind_a_held_poll_is_answered_after_it() {
    let s = TestServer::start(&["--symbols", "IBM"]);
    let cursor = s.cursor("IBM");
    let mut c = s.send_poll_keep_alive(&format!("symbols=IBM&cursor={cursor}"));
    s.wait_for_metric("comet_polls_waiting", 1);
    // The second request arrives while the poll is held; the client does not close.
    c.send("GET", "/api/symbols", &[], b"", false).unwrap();
    s.publish("IBM", 99.0);
    let poll = c.read_response().unwrap();
    assert_eq!(poll.status, 200);
    assert_eq!(poll.prices(), [("IBM".to_string(), 99.0)]);
    let symbols = c.read_response().unwrap();
    assert_eq!(symbols.status, 200);
    assert_eq!(symbols.json()["symbols"][0], "IBM");
    assert_eq!(s.metric("comet_clients_gone_total"), 0);
}
