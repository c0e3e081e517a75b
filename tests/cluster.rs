//! Nodes that share one quote book through a real `redis-server` (`--redis`).
//!
//! Without `redis-server` installed each test prints `SKIPPED cluster test` and passes, unless
//! `COMET_REQUIRE_REDIS=1` (as `.ci/run` sets).

mod common;

#[path = "common/redis.rs"]
mod redis_server;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::sse::{prices, SseClient};
use common::TestServer;
use redis_server::{redis_available, Partition, RedisServer};

const SYMBOLS: &str = "IBM,MSFT,AAPL";

/// How long a node may take to notice its link to Redis change, and to reconnect and sync: a few
/// seconds, and more on a loaded machine (no test asserts this bound; the silent-Redis test
/// asserts its own).
const LINK: Duration = Duration::from_secs(30);

fn node(r: &RedisServer, extra: &[&str]) -> TestServer {
    node_with(r, SYMBOLS, extra)
}

/// A node that brings `symbols` (created in Redis when nobody has them yet).
fn node_with(r: &RedisServer, symbols: &str, extra: &[&str]) -> TestServer {
    node_at(&r.url(), symbols, extra)
}

/// A node of the cluster in the Redis at `url` (Redis itself, or a `Partition` in front of it).
fn node_at(url: &str, symbols: &str, extra: &[&str]) -> TestServer {
    let mut args = vec!["--redis", url, "--symbols", symbols];
    args.extend_from_slice(extra);
    TestServer::start(&args)
}

/// Publish on `s`, retrying a 503 (Redis away) for up to 20 s. The seq, once acknowledged.
fn publish_acked(s: &TestServer, symbol: &str, price: f64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let body = serde_json::json!({ "symbol": symbol, "price": price }).to_string();
        let r = s.post("/api/quotes", &body);
        match r.status {
            200 => return r.json()["seq"].as_u64().expect("seq"),
            503 => {
                assert_eq!(r.header("retry-after"), Some("1"));
                assert!(Instant::now() < deadline, "Redis never came back");
                std::thread::sleep(Duration::from_millis(50));
            }
            other => panic!("publish answered {other}: {}", r.text()),
        }
    }
}

/// A poll answer that carries exactly `symbol` at `price`, with `seq` as its cursor.
fn assert_answer(answer: &common::Response, symbol: &str, price: f64, seq: u64) {
    assert_eq!(answer.prices(), [(symbol.to_string(), price)]);
    assert_eq!(answer.json()["cursor"].as_u64(), Some(seq));
}

/// The stream's next event carries exactly `symbol` at `price`, with `seq` as its id.
fn assert_next_event(stream: &mut SseClient, symbol: &str, price: f64, seq: u64) {
    let (id, data) = stream.next_event();
    assert_eq!(id, seq);
    assert_eq!(prices(&data), [(symbol.to_string(), price)]);
}

/// Wait (bounded) until `s` shows `symbol` at `price`.
/// Two nodes, each reaching Redis through its own [`Partition`] so a test can cut either off.
fn two_nodes_behind_partitions(r: &RedisServer) -> (Partition, TestServer, Partition, TestServer) {
    let (to_a, to_b) = (Partition::to(r.port), Partition::to(r.port));
    let a = node_at(&to_a.url(), SYMBOLS, &[]);
    let b = node_at(&to_b.url(), SYMBOLS, &[]);
    (to_a, a, to_b, b)
}

/// Cut `link` off, then Redis dies and comes back empty (no dump to load).
fn redis_forgets_while_cut_off(r: &mut RedisServer, link: &Partition) {
    link.cut();
    r.kill9();
    r.forget_dump();
    r.restart();
}

fn wait_price(s: &TestServer, symbol: &str, price: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = s.get(&format!("/api/quotes?symbols={symbol}"));
        if r.status == 200 && r.prices() == [(symbol.to_string(), price)] {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{symbol} never reached {price} on {}: {}",
            s.addr,
            r.text()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_poll_and_a_stream_on_one_node_are_woken_by_a_publish_on_another() {
    if !redis_available("a_poll_and_a_stream_on_one_node_are_woken_by_a_publish_on_another") {
        return;
    }
    let r = RedisServer::start();
    let (a, b) = (node(&r, &[]), node(&r, &[]));
    assert_eq!(b.metric("comet_redis_up"), 1);
    let cursor = b.cursor("IBM");
    let mut poll = b.send_poll(&format!("symbols=IBM&cursor={cursor}"));
    let mut stream = SseClient::open(b.addr, &format!("symbols=IBM&cursor={cursor}"), &[]);
    b.wait_for_metric("comet_polls_waiting", 1);
    b.wait_for_metric("comet_streams_waiting", 1);
    let seq = publish_acked(&a, "IBM", 77.5);
    assert_answer(&poll.read_response().unwrap(), "IBM", 77.5, seq);
    assert_next_event(&mut stream, "IBM", 77.5, seq);
}

#[test]
fn a_client_hopping_nodes_at_every_poll_gets_every_latest_price_once_and_in_order() {
    if !redis_available(
        "a_client_hopping_nodes_at_every_poll_gets_every_latest_price_once_and_in_order",
    ) {
        return;
    }
    let r = RedisServer::start();
    let nodes: Arc<Vec<TestServer>> = Arc::new((0..3).map(|_| node(&r, &[])).collect());
    let symbols = ["IBM", "MSFT", "AAPL"];
    const ROUNDS: u32 = 60;
    let done = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (nodes, done) = (Arc::clone(&nodes), Arc::clone(&done));
        std::thread::spawn(move || {
            // Every symbol climbs 1, 2, 3 ...: a client that sees a price go down saw it out of
            // order, one that sees a price twice got it repeated.
            for round in 1..=ROUNDS {
                for (i, sym) in symbols.iter().enumerate() {
                    let n = &nodes[(round as usize + i) % nodes.len()];
                    publish_acked(n, sym, f64::from(round));
                }
            }
            done.store(true, Ordering::Release);
        })
    };
    let mut cursor = nodes[0].cursor(SYMBOLS);
    let mut last: HashMap<String, f64> = HashMap::new();
    let mut seen_seqs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut hop = 0;
    loop {
        let finished = done.load(Ordering::Acquire);
        let n = &nodes[hop % nodes.len()];
        hop += 1;
        let a = n.get(&format!(
            "/api/poll?symbols={SYMBOLS}&cursor={cursor}&timeout=0.2"
        ));
        assert_eq!(a.status, 200, "{}", a.text());
        let body = a.json();
        let next = body["cursor"].as_u64().unwrap();
        assert!(next >= cursor, "cursor went back on {}", n.addr);
        cursor = next;
        for q in body["quotes"].as_array().unwrap() {
            let (sym, price, seq) = (
                q["symbol"].as_str().unwrap().to_string(),
                q["price"].as_f64().unwrap(),
                q["seq"].as_u64().unwrap(),
            );
            if let Some(&before) = last.get(&sym) {
                assert!(price > before, "{sym}: {price} after {before}");
            }
            seen_seqs.push(seq);
            last.insert(sym, price);
        }
        let all_final = symbols
            .iter()
            .all(|s| last.get(*s) == Some(&f64::from(ROUNDS)));
        if finished && all_final {
            break;
        }
        assert!(Instant::now() < deadline, "client stuck at {last:?}");
    }
    publisher.join().unwrap();
    let mut unique = seen_seqs.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), seen_seqs.len(), "a quote was delivered twice");
    eprintln!("{} polls over 3 nodes, {} quotes", hop, seen_seqs.len());
}

/// Publishes climbing prices on `s` until `stop`, recording the last acknowledged one per symbol.
fn climbing_publisher(
    s: Arc<TestServer>,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<HashMap<String, f64>>>,
) -> std::thread::JoinHandle<u32> {
    std::thread::spawn(move || {
        let mut n = 0u32;
        while !stop.load(Ordering::Acquire) {
            n += 1;
            let sym = ["IBM", "MSFT", "AAPL"][n as usize % 3];
            let price = f64::from(n);
            let body = serde_json::json!({ "symbol": sym, "price": price }).to_string();
            let r = s.post("/api/quotes", &body);
            match r.status {
                200 => {
                    acked.lock().unwrap().insert(sym.to_string(), price);
                }
                503 => std::thread::sleep(Duration::from_millis(20)),
                other => panic!("publish answered {other}: {}", r.text()),
            }
        }
        n
    })
}

#[test]
fn redis_killed_and_restarted_empty_mid_run_loses_no_acknowledged_publish() {
    if !redis_available("redis_killed_and_restarted_empty_mid_run_loses_no_acknowledged_publish") {
        return;
    }
    let mut r = RedisServer::start();
    let a = Arc::new(node(&r, &[]));
    let b = node(&r, &[]);
    let cursor = b.cursor(SYMBOLS);
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(HashMap::new()));
    let publisher = climbing_publisher(Arc::clone(&a), Arc::clone(&stop), Arc::clone(&acked));
    while acked.lock().unwrap().len() < 3 {
        std::thread::sleep(Duration::from_millis(5));
    }
    r.kill9();
    // While Redis is away: both nodes keep serving the last quotes they know.
    b.wait_for_metric_within("comet_redis_up", 0, LINK);
    assert_eq!(b.get(&format!("/api/quotes?symbols={SYMBOLS}")).status, 200);
    let held = b.send_poll(&format!("symbols={SYMBOLS}&cursor={cursor}&timeout=30"));
    drop(held);
    r.forget_dump();
    r.restart();
    a.wait_for_metric_within("comet_redis_up", 1, LINK);
    b.wait_for_metric_within("comet_redis_up", 1, LINK);
    // Publishing resumes; then stop and check that the last acknowledged price of every symbol
    // is what every node, and Redis, ends with.
    let resumed = acked.lock().unwrap().clone();
    while *acked.lock().unwrap() == resumed {
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Release);
    let n = publisher.join().unwrap();
    let last = acked.lock().unwrap().clone();
    for (sym, price) in &last {
        wait_price(&a, sym, *price);
        wait_price(&b, sym, *price);
    }
    // A node started now learns every symbol from Redis alone.
    let late = node_with(&r, "ZZZ", &[]);
    for (sym, price) in &last {
        wait_price(&late, sym, *price);
    }
    // And a poll with the cursor from before the loss gets the latest prices, nothing older.
    let since = b.get(&format!(
        "/api/poll?symbols={SYMBOLS}&cursor={cursor}&timeout=1"
    ));
    let mut got = since.prices();
    got.sort_by(|x, y| x.0.cmp(&y.0));
    let mut want: Vec<(String, f64)> = last.into_iter().collect();
    want.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(got, want);
    eprintln!("{n} publishes tried across the Redis restart");
}

#[test]
fn redis_restored_from_an_older_dump_hands_out_no_seq_below_one_already_seen() {
    if !redis_available("redis_restored_from_an_older_dump_hands_out_no_seq_below_one_already_seen")
    {
        return;
    }
    let mut r = RedisServer::start();
    let a = node(&r, &[]);
    publish_acked(&a, "IBM", 1.0);
    r.save(); // the older dump: IBM at 1
    let mut top = 0;
    for p in 2..=20 {
        top = publish_acked(&a, "IBM", f64::from(p));
    }
    publish_acked(&a, "MSFT", 555.0);
    let cursor = a.cursor(SYMBOLS);
    r.kill9();
    a.wait_for_metric_within("comet_redis_up", 0, LINK);
    r.restart(); // back from the dump, IBM at 1 and an older seq counter
    a.wait_for_metric_within("comet_redis_up", 1, LINK);
    wait_price(&a, "IBM", 20.0);
    let seq = publish_acked(&a, "AAPL", 9.0);
    assert!(
        seq > top && seq > cursor,
        "seq {seq} not above {top} / {cursor}"
    );
    let b = node(&r, &[]);
    wait_price(&b, "IBM", 20.0);
    wait_price(&b, "MSFT", 555.0);
    wait_price(&b, "AAPL", 9.0);
}

#[test]
fn a_node_started_late_sees_every_symbol_at_its_latest_price() {
    if !redis_available("a_node_started_late_sees_every_symbol_at_its_latest_price") {
        return;
    }
    let r = RedisServer::start();
    let a = node(&r, &[]);
    publish_acked(&a, "IBM", 10.0);
    publish_acked(&a, "NEWCO", 3.5); // created by a publish, on no node's command line
    let late = node_with(&r, "ORCL", &[]);
    let names = late.get("/api/symbols").json()["symbols"].clone();
    for sym in ["IBM", "MSFT", "AAPL", "NEWCO", "ORCL"] {
        assert!(
            names.as_array().unwrap().iter().any(|n| n == sym),
            "{sym} not in {names}"
        );
    }
    wait_price(&late, "IBM", 10.0);
    wait_price(&late, "NEWCO", 3.5);
    // ORCL, new with the late node, reached the first node too.
    let orcl = late.get("/api/quotes?symbols=ORCL").prices()[0].1;
    wait_price(&a, "ORCL", orcl);
}

#[test]
fn the_feed_runs_on_exactly_one_node_and_moves_when_that_node_dies() {
    if !redis_available("the_feed_runs_on_exactly_one_node_and_moves_when_that_node_dies") {
        return;
    }
    let r = RedisServer::start();
    let url = r.url();
    let start = || {
        TestServer::start_raw(&[
            "--listen",
            "127.0.0.1:0",
            "--redis",
            &url,
            "--symbols",
            SYMBOLS,
            "--feed-interval",
            "0.05",
        ])
    };
    let mut nodes: Vec<TestServer> = (0..3).map(|_| start()).collect();
    let leaders = |nodes: &[TestServer]| -> Vec<usize> {
        (0..nodes.len())
            .filter(|&i| nodes[i].metric("comet_feed_leader") == 1)
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let leader = loop {
        let l = leaders(&nodes);
        assert!(l.len() <= 1, "two feeds at once: {l:?}");
        if l.len() == 1 {
            break l[0];
        }
        assert!(Instant::now() < deadline, "no node took the feed");
        std::thread::sleep(Duration::from_millis(50));
    };
    // Only the leader's feed publishes: the others' stay idle.
    let published = |n: &TestServer| n.metric("comet_quotes_published_total");
    let before: Vec<u64> = nodes.iter().map(published).collect();
    std::thread::sleep(Duration::from_millis(500));
    for (i, n) in nodes.iter().enumerate() {
        let moved = published(n) - before[i];
        if i == leader {
            assert!(moved > 0, "the leader's feed did not publish");
        } else {
            assert_eq!(moved, 0, "node {i} published without the lease");
        }
    }
    let dead = nodes.remove(leader);
    drop(dead); // SIGKILL: no chance to give the lease up
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(15);
    loop {
        let l = leaders(&nodes);
        assert!(l.len() <= 1, "two feeds at once: {l:?}");
        if l.len() == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "nobody took the feed over");
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = killed.elapsed();
    eprintln!("feed taken over {took:?} after its node died");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    // And prices keep moving everywhere.
    let ibm = |n: &TestServer| n.get("/api/quotes?symbols=IBM").json()["quotes"][0]["seq"].clone();
    let was = ibm(&nodes[0]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while ibm(&nodes[0]) == was {
        assert!(
            Instant::now() < deadline,
            "no price moved after the takeover"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Why seqs are not a plain `INCR` counter: after Redis loses its data the counter starts over,
/// and every change numbered below a client's cursor is one that client never gets.
#[test]
fn a_plain_incr_counter_would_lose_updates_after_redis_loses_its_data() {
    if !redis_available("a_plain_incr_counter_would_lose_updates_after_redis_loses_its_data") {
        return;
    }
    let mut r = RedisServer::start();
    let incr = |r: &RedisServer| -> u64 {
        let mut c = r.connection().unwrap();
        redis::cmd("INCR").arg("plain:seq").query(&mut c).unwrap()
    };
    let mut cursor = 0;
    for _ in 0..100 {
        cursor = incr(&r);
    }
    r.kill9();
    r.restart();
    let after = incr(&r);
    // The next change gets a number the client has already passed: a poll with its cursor
    // (seq > cursor) never returns it.
    assert!(after <= cursor, "{after} > {cursor}");
    // The node's rule on the same data loss: the next seq is above the client's cursor.
    let mut r2 = RedisServer::start();
    let a = node(&r2, &[]);
    let mut cursor = 0;
    for i in 0..100 {
        cursor = publish_acked(&a, "IBM", f64::from(i));
    }
    r2.kill9();
    a.wait_for_metric_within("comet_redis_up", 0, LINK);
    r2.restart();
    a.wait_for_metric_within("comet_redis_up", 1, LINK);
    assert!(publish_acked(&a, "MSFT", 1.0) > cursor);
}

#[test]
fn grants_are_checked_on_every_node_and_a_jwt_publishes_through_redis() {
    if !redis_available("grants_are_checked_on_every_node_and_a_jwt_publishes_through_redis") {
        return;
    }
    use common::jwt::{hs256, now_secs, SECRET};
    let r = RedisServer::start();
    let a = node(&r, &["--jwt-secret", SECRET]);
    let b = node(&r, &["--jwt-secret", SECRET]);
    let exp = now_secs() + 60;
    let reader = hs256(&serde_json::json!({"symbols": ["IBM"], "exp": exp}));
    let writer = hs256(&serde_json::json!({"publish": ["IBM"], "exp": exp}));
    let get = |s: &TestServer, path: &str, t: &str| {
        common::request(
            s.addr,
            "GET",
            path,
            &[("Authorization", &format!("Bearer {t}"))],
            b"",
        )
    };
    // Node b refuses what the token does not grant, as a lone node would.
    assert_eq!(b.get("/api/quotes?symbols=IBM").status, 401);
    assert_eq!(get(&b, "/api/quotes?symbols=MSFT", &reader).status, 403);
    let cursor = get(&b, "/api/quotes?symbols=IBM", &reader).json()["cursor"]
        .as_u64()
        .unwrap();
    let mut poll = common::Conn::open(b.addr).unwrap();
    let auth = format!("Bearer {reader}");
    poll.send(
        "GET",
        &format!("/api/poll?symbols=IBM&cursor={cursor}&timeout=30"),
        &[("Authorization", &auth)],
        b"",
        true,
    )
    .unwrap();
    b.wait_for_metric("comet_polls_waiting", 1);
    // Publishing on node a with a JWT: its publish claim covers IBM, not MSFT.
    let publish = |body: &str, t: &str| {
        common::request(
            a.addr,
            "POST",
            "/api/quotes",
            &[("Authorization", &format!("Bearer {t}"))],
            body.as_bytes(),
        )
    };
    assert_eq!(
        publish(r#"{"symbol":"MSFT","price":5}"#, &writer).status,
        403
    );
    assert_eq!(
        publish(r#"{"symbol":"IBM","price":5}"#, &reader).status,
        403
    );
    let ok = publish(r#"{"symbol":"IBM","price":42.5}"#, &writer);
    assert_eq!(ok.status, 200, "{}", ok.text());
    let answer = poll.read_response().unwrap();
    assert_eq!(answer.prices(), [("IBM".to_string(), 42.5)]);
    assert_eq!(
        b.metric("comet_auth_refused_total{reason=\"forbidden\"}"),
        1
    );
    assert_eq!(
        a.metric("comet_auth_refused_total{reason=\"forbidden\"}"),
        2
    );
}

/// `cq:quotes`' entry for `symbol` in Redis: (seq, price).
fn stored(r: &RedisServer, symbol: &str) -> Option<(u64, f64)> {
    let mut c = r.connection().expect("connect to redis");
    let v: Option<String> = redis::cmd("HGET")
        .arg("cq:quotes")
        .arg(symbol)
        .query(&mut c)
        .expect("HGET");
    let v = v?;
    let mut parts = v.split(' ');
    let seq = parts.next()?.parse().ok()?;
    let price = parts.nth(1)?.parse().ok()?;
    Some((seq, price))
}

/// The seq of `symbol`'s latest quote on `s`.
fn seq_on(s: &TestServer, symbol: &str) -> u64 {
    s.get(&format!("/api/quotes?symbols={symbol}")).json()["quotes"][0]["seq"]
        .as_u64()
        .unwrap()
}

#[test]
fn a_silent_redis_is_noticed_publishes_fail_fast_and_held_polls_survive_it() {
    if !redis_available("a_silent_redis_is_noticed_publishes_fail_fast_and_held_polls_survive_it") {
        return;
    }
    let r = RedisServer::start();
    let a = node(&r, &[]);
    assert_eq!(a.get("/readyz").status, 200);
    let cursor = a.cursor("IBM");
    let mut poll = a.send_poll(&format!("symbols=IBM&cursor={cursor}&timeout=60"));
    a.wait_for_metric("comet_polls_waiting", 1);
    // Redis stops answering, closing nothing (a hung host, a partition).
    r.stop();
    let stopped = Instant::now();
    a.wait_for_metric_within("comet_redis_up", 0, Duration::from_secs(4));
    let ready = a.get("/readyz");
    assert_eq!(ready.status, 503);
    assert_eq!(ready.header("retry-after"), Some("1"));
    assert_eq!(a.get("/healthz").status, 200);
    let t = Instant::now();
    let refused = a.post("/api/quotes", r#"{"symbol":"IBM","price":5}"#);
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );
    // The node keeps serving its last quotes, and the held poll stays held, for the whole outage.
    while stopped.elapsed() < Duration::from_secs(10) {
        assert_eq!(a.get("/api/quotes?symbols=IBM").status, 200);
        assert_eq!(a.metric("comet_polls_waiting"), 1);
        std::thread::sleep(Duration::from_millis(500));
    }
    r.cont();
    a.wait_for_metric_within("comet_redis_up", 1, Duration::from_secs(15));
    assert_eq!(a.get("/readyz").status, 200);
    publish_acked(&a, "IBM", 55.5);
    assert_eq!(
        poll.read_response().unwrap().prices(),
        [("IBM".to_string(), 55.5)]
    );
}

#[test]
fn a_node_started_while_redis_is_down_says_so_answers_503_and_exits_on_sigterm() {
    if !redis_available(
        "a_node_started_while_redis_is_down_says_so_answers_503_and_exits_on_sigterm",
    ) {
        return;
    }
    let mut r = RedisServer::unstarted();
    let url = r.url();
    let args = [
        "--listen",
        "127.0.0.1:0",
        "--redis",
        url.as_str(),
        "--symbols",
        "IBM",
        "--publish-token",
        common::PUBLISH_TOKEN,
    ];
    let mut lone = TestServer::spawn(&args, &[("RUST_LOG", "warn")]);
    lone.wait_for_stderr(
        &format!("waiting for Redis at {url}"),
        Duration::from_secs(10),
    );
    assert_eq!(lone.get("/healthz").status, 200);
    for path in ["/readyz", "/api/quotes?symbols=IBM", "/api/symbols"] {
        let resp = lone.get(path);
        assert_eq!(resp.status, 503, "{path}");
        assert_eq!(resp.header("retry-after"), Some("1"), "{path}");
    }
    let t = Instant::now();
    assert!(lone.terminate().success());
    // Within the shutdown grace (2 s), plus the time to notice the signal.
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );

    // Another waits, says so at most once every 5 s, and becomes ready when Redis starts.
    let waiting = TestServer::spawn(&args, &[("RUST_LOG", "warn")]);
    waiting.wait_for_stderr("waiting for Redis", Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(6));
    let lines = waiting.stderr().matches("waiting for Redis").count();
    assert!(
        (1..=2).contains(&lines),
        "{lines} lines in 6 s:\n{}",
        waiting.stderr()
    );
    r.restart();
    let deadline = Instant::now() + Duration::from_secs(20);
    while waiting.get("/readyz").status != 200 {
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(waiting.get("/api/quotes?symbols=IBM").status, 200);
}

#[test]
fn after_redis_restarts_empty_each_held_poll_gets_exactly_the_next_real_change() {
    if !redis_available(
        "after_redis_restarts_empty_each_held_poll_gets_exactly_the_next_real_change",
    ) {
        return;
    }
    let mut r = RedisServer::start();
    let a = node(&r, &[]);
    let b = node(&r, &["--heartbeat", "60"]);
    publish_acked(&a, "IBM", 10.0);
    let msft = publish_acked(&a, "MSFT", 20.0);
    wait_price(&b, "MSFT", 20.0);
    let cursor = b.cursor(SYMBOLS);
    let mut polls: Vec<common::Conn> = (0..5)
        .map(|_| b.send_poll(&format!("symbols={SYMBOLS}&cursor={cursor}&timeout=60")))
        .collect();
    let id = cursor.to_string();
    let mut stream = SseClient::open(
        b.addr,
        &format!("symbols={SYMBOLS}"),
        &[("Last-Event-ID", &id)],
    );
    b.wait_for_metric("comet_polls_waiting", 5);
    b.wait_for_metric("comet_streams_waiting", 1);
    r.kill9();
    // Both nodes saw Redis go (else "up" below could be the old link's).
    a.wait_for_metric_within("comet_redis_up", 0, LINK);
    b.wait_for_metric_within("comet_redis_up", 0, LINK);
    r.forget_dump();
    r.restart();
    a.wait_for_metric_within("comet_redis_up", 1, LINK);
    b.wait_for_metric_within("comet_redis_up", 1, LINK);
    // Both nodes wrote their quotes back, each with the seq of its change: nobody was woken.
    assert_eq!(stored(&r, "MSFT"), Some((msft, 20.0)));
    assert_eq!(seq_on(&b, "MSFT"), msft);
    assert_eq!(b.metric("comet_polls_waiting"), 5);
    assert_eq!(b.metric("comet_streams_waiting"), 1);
    // The next real change is what they all get, and all they get.
    let seq = publish_acked(&a, "AAPL", 30.0);
    for p in &mut polls {
        assert_answer(&p.read_response().unwrap(), "AAPL", 30.0, seq);
    }
    assert_next_event(&mut stream, "AAPL", 30.0, seq);
}

#[test]
fn a_change_one_node_missed_ends_everywhere_whichever_node_writes_back_first() {
    if !redis_available("a_change_one_node_missed_ends_everywhere_whichever_node_writes_back_first")
    {
        return;
    }
    let mut r = RedisServer::start();
    let (to_a, a, to_b, b) = two_nodes_behind_partitions(&r);
    publish_acked(&a, "IBM", 100.0);
    wait_price(&b, "IBM", 100.0);
    // B is cut off, and misses IBM@101.
    to_b.cut();
    let seq101 = publish_acked(&a, "IBM", 101.0);
    wait_price(&a, "IBM", 101.0);
    b.wait_for_metric_within("comet_redis_up", 0, LINK);
    // Redis loses everything; B gets back to it first and writes back its older IBM@100.
    redis_forgets_while_cut_off(&mut r, &to_a);
    to_b.heal();
    b.wait_for_metric_within("comet_redis_up", 1, LINK);
    let (seq100, price) = stored(&r, "IBM").expect("B wrote IBM back");
    assert_eq!(price, 100.0);
    assert!(seq100 < seq101);
    // Then A: its IBM@101 is newer, so it wins, in Redis and on B.
    a.wait_for_metric_within("comet_redis_up", 0, LINK);
    to_a.heal();
    a.wait_for_metric_within("comet_redis_up", 1, LINK);
    wait_price(&b, "IBM", 101.0);
    wait_price(&a, "IBM", 101.0);
    assert_eq!(stored(&r, "IBM"), Some((seq101, 101.0)));
    assert_eq!(seq_on(&b, "IBM"), seq101);
}

#[test]
fn a_node_that_lags_never_moves_a_clients_prices_or_cursor_backwards() {
    if !redis_available("a_node_that_lags_never_moves_a_clients_prices_or_cursor_backwards") {
        return;
    }
    let r = RedisServer::start();
    let to_b = Partition::to(r.port);
    let a = node(&r, &[]);
    let b = node_at(&to_b.url(), SYMBOLS, &["--heartbeat", "0.2"]);
    publish_acked(&a, "IBM", 1.0);
    wait_price(&b, "IBM", 1.0);
    // B falls behind: it still serves, with the last quotes it has.
    to_b.cut();
    publish_acked(&a, "IBM", 2.0);
    publish_acked(&a, "MSFT", 3.0);
    let ahead = a.cursor(SYMBOLS);
    // A client that had its last answer from A comes to B: held, then its own cursor back.
    let answer = b.get(&format!(
        "/api/poll?symbols={SYMBOLS}&cursor={ahead}&timeout=0.5"
    ));
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["cursor"].as_u64(), Some(ahead));
    assert!(answer.prices().is_empty(), "{}", answer.text());
    // A stream resuming there: heartbeats, no event with B's older quotes.
    let id = ahead.to_string();
    let mut stream = SseClient::open(
        b.addr,
        &format!("symbols={SYMBOLS}"),
        &[("Last-Event-ID", &id)],
    );
    for _ in 0..4 {
        match stream.next() {
            Some(common::sse::Item::Comment(_)) | Some(common::sse::Item::Retry(_)) => {}
            other => panic!("a lagging node sent {other:?}"),
        }
    }
    let mut held = b.send_poll(&format!("symbols={SYMBOLS}&cursor={ahead}&timeout=60"));
    b.wait_for_metric("comet_polls_waiting", 1);
    // B catches up with what the client already has: nothing for it; then the next change.
    to_b.heal();
    wait_price(&b, "MSFT", 3.0);
    assert_eq!(b.metric("comet_polls_waiting"), 1);
    let seq = publish_acked(&a, "IBM", 4.0);
    assert_answer(&held.read_response().unwrap(), "IBM", 4.0, seq);
    assert_next_event(&mut stream, "IBM", 4.0, seq);
}

#[test]
fn a_change_written_back_after_later_seqs_were_issued_still_reaches_clients_past_it() {
    if !redis_available(
        "a_change_written_back_after_later_seqs_were_issued_still_reaches_clients_past_it",
    ) {
        return;
    }
    let mut r = RedisServer::start();
    let (to_a, a, to_b, b) = two_nodes_behind_partitions(&r);
    publish_acked(&a, "IBM", 10.0);
    wait_price(&b, "IBM", 10.0);
    // B misses IBM@77; then Redis loses everything while A is cut off too.
    to_b.cut();
    let s1 = publish_acked(&a, "IBM", 77.0);
    b.wait_for_metric_within("comet_redis_up", 0, LINK);
    redis_forgets_while_cut_off(&mut r, &to_a);
    // B comes back first and the cluster moves on: a publish takes a seq above IBM@77's.
    to_b.heal();
    b.wait_for_metric_within("comet_redis_up", 1, LINK);
    let s3 = publish_acked(&b, "MSFT", 5.0);
    assert!(s3 > s1);
    // The ack comes from Redis; B applies its own change when the announcement comes back.
    wait_price(&b, "MSFT", 5.0);
    let cursor = b.cursor(SYMBOLS);
    assert!(cursor >= s3, "{cursor} < {s3}");
    let mut held = b.send_poll(&format!("symbols={SYMBOLS}&cursor={cursor}&timeout=60"));
    b.wait_for_metric("comet_polls_waiting", 1);
    // A writes IBM@77 back: under its old seq B's client, whose cursor is past it, would never
    // get it. It comes under a new one, and A takes that seq without waking anyone.
    a.wait_for_metric_within("comet_redis_up", 0, LINK);
    to_a.heal();
    a.wait_for_metric_within("comet_redis_up", 1, LINK);
    let answer = held.read_response().unwrap();
    assert_eq!(answer.prices(), [("IBM".to_string(), 77.0)]);
    let (s4, price) = stored(&r, "IBM").unwrap();
    assert_eq!(price, 77.0);
    assert!(s4 > s3, "{s4} <= {s3}");
    assert_eq!(answer.json()["cursor"].as_u64(), Some(s4));
    wait_price(&a, "IBM", 77.0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while seq_on(&a, "IBM") != s4 {
        assert!(Instant::now() < deadline, "A kept the old seq");
        std::thread::sleep(Duration::from_millis(20));
    }
}
