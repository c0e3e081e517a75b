//! Concurrency and scale: no lost update with concurrent publishers, 1,000 held polls on few threads.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{thread_count, Conn, TestServer};

const SYMBOLS: [&str; 4] = ["IBM", "MSFT", "AAPL", "ORCL"];

/// Follow `symbols` from `cursor` until every one has reached `want` (bounded); returns the
/// sequence of prices seen per symbol.
fn follow(s: &TestServer, symbols: &str, mut cursor: u64, want: f64) -> HashMap<String, Vec<f64>> {
    let mut seen: HashMap<String, Vec<f64>> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let done = |seen: &HashMap<String, Vec<f64>>| {
        symbols
            .split(',')
            .all(|sym| seen.get(sym).and_then(|v| v.last()) == Some(&want))
    };
    while !done(&seen) {
        assert!(Instant::now() < deadline, "subscriber stuck; saw {seen:?}");
        let r = s.get(&format!(
            "/api/poll?symbols={symbols}&cursor={cursor}&timeout=2"
        ));
        assert_eq!(r.status, 200);
        let body = r.json();
        let next = body["cursor"].as_u64().unwrap();
        assert!(next >= cursor, "cursor went back from {cursor} to {next}");
        cursor = next;
        for (sym, price) in r.prices() {
            seen.entry(sym).or_default().push(price);
        }
    }
    seen
}

#[test]
fn no_update_is_lost_with_concurrent_publishers() {
    let s = Arc::new(TestServer::start(&["--symbols", &SYMBOLS.join(",")]));
    let all = SYMBOLS.join(",");
    let start = s.cursor(&all);
    const TICKS: u32 = 150;
    let publishers: Vec<_> = (0..4)
        .map(|p| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                // Each publisher walks every symbol upwards; with four racing, each symbol's
                // final price is TICKS, and a subscriber that loses an update stays below it.
                for tick in 1..=TICKS {
                    let sym = SYMBOLS[(tick as usize + p) % SYMBOLS.len()];
                    let price = f64::from(tick) + f64::from(p as u32) / 10.0;
                    s.publish(sym, price.min(f64::from(TICKS)));
                }
                for sym in SYMBOLS {
                    s.publish(sym, f64::from(TICKS));
                }
            })
        })
        .collect();
    let subscribers: Vec<_> = (0..4)
        .map(|_| {
            let s = Arc::clone(&s);
            let all = all.clone();
            std::thread::spawn(move || follow(&s, &all, start, f64::from(TICKS)))
        })
        .collect();
    for p in publishers {
        p.join().unwrap();
    }
    let final_prices = s.get(&format!("/api/quotes?symbols={all}")).prices();
    for sub in subscribers {
        let seen = sub.join().unwrap();
        for (sym, price) in &final_prices {
            assert_eq!(seen[sym].last(), Some(price), "{sym}: {:?}", seen[sym]);
        }
    }
}

#[test]
fn each_answer_carries_only_quotes_newer_than_the_cursor() {
    let s = TestServer::start(&["--symbols", &SYMBOLS.join(",")]);
    let cursor = s.cursor("IBM,MSFT");
    s.publish("IBM", 1.0);
    let first = s.get(&format!("/api/poll?symbols=IBM,MSFT&cursor={cursor}"));
    let next = first.json()["cursor"].as_u64().unwrap();
    for q in first.json()["quotes"].as_array().unwrap() {
        assert!(q["seq"].as_u64().unwrap() > cursor && q["seq"].as_u64().unwrap() <= next);
    }
    s.publish("MSFT", 2.0);
    let second = s.get(&format!("/api/poll?symbols=IBM,MSFT&cursor={next}"));
    assert_eq!(second.prices(), [("MSFT".to_string(), 2.0)]);
}

#[test]
fn thousand_held_polls_on_at_most_twenty_threads_all_get_the_change() {
    const N: usize = 1000;
    let s = TestServer::start(&["--poll-timeout", "60"]);
    let cursor = s.cursor("IBM");
    let mut polls: Vec<Conn> = (0..N)
        .map(|_| s.send_poll(&format!("symbols=IBM,MSFT&cursor={cursor}")))
        .collect();
    s.wait_for_metric("comet_polls_waiting", N as u64);
    let threads = thread_count(s.pid());
    assert!(threads <= 20, "{threads} OS threads for {N} held polls");
    let rss = common::rss_kib(s.pid());
    eprintln!("{N} held polls: {threads} threads, {rss} KiB RSS");

    s.publish("IBM", 77.7);
    for p in &mut polls {
        let r = p.read_response().expect("every held poll is answered");
        assert_eq!(r.prices(), [("IBM".to_string(), 77.7)]);
    }
    assert_eq!(s.metric("comet_polls_waiting"), 0);
}
