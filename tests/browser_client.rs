//! `public/comet.js`, the client module, in a real browser (headless Chromium through
//! chromedriver) against the real server binary: on a bare page of another site, across a server
//! restart, by long-poll where the server cannot stream, where the browser has no EventSource and
//! behind a proxy that buffers the stream, with a token that expires, on a browser whose clock is
//! off; and the display delays the quotes page reports to the server.
//!
//! The bare page records what each subscription hands its callbacks (`window.logs[name]`); the
//! tests wait on those records with deadlines. Each test saves a screenshot to
//! `<target>/browser-screenshots/<test>.png`. Skipped (with a SKIPPED line) without chromium and
//! chromedriver, unless `COMET_REQUIRE_BROWSER=1`.

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use browser::{Browser, StaticSite};
use common::jwt::{hs256, now_secs, SECRET};
use common::TestServer;
use serde_json::{json, Value};

/// Page start-up and a delivery on a loaded 2-core machine: generous.
const LOAD: Duration = Duration::from_secs(10);
/// The module as the server serves it (`build.rs` embeds `public/`; checked in the first test).
const COMET_JS: &str = include_str!("../public/comet.js");

/// Run first on the bare page: keeps the page's true clock (`realNow`) and, with `?skew=MS`, puts
/// the page's clocks off by that much, the wall clock and the high-resolution one alike, as on a
/// machine whose clock is wrong. Then callbacks that record everything a subscription reports.
const HARNESS: &str = r#"
(() => {
  const origin = performance.timeOrigin;
  const now = performance.now.bind(performance);
  window.realNow = window.realNow || (() => origin + now());
  const skew = Number(new URLSearchParams(location.search).get("skew") || 0);
  if (skew) {
    Object.defineProperty(performance, "timeOrigin", { value: origin + skew, configurable: true });
    const dateNow = Date.now;
    Date.now = () => dateNow() + skew;
  }
})();
window.logs = window.logs || {};
window.subs = window.subs || {};
window.record = (name) => {
  const log = (window.logs[name] = { quotes: [], states: [], delays: [] });
  return {
    onQuote: (q, info) => log.quotes.push({ symbol: q.symbol, price: q.price, seq: q.seq, kind: info.kind, transport: info.transport }),
    onState: (state, d) => log.states.push({ state, ...d }),
    // The true display delay too: the page's real clock now, which is when comet.js measured it.
    onDelay: (q, d) => log.delays.push({ symbol: q.symbol, arrival: d.arrival, display: d.display, real: window.realNow() - q.ts / 1000 }),
  };
};
"#;

/// A page of another site that follows quotes with comet.js, imported from the quotes server
/// (`loadComet(serverUrl)`: the server lets any page import its `/comet.js`).
fn bare_page() -> String {
    format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>another site</title>
<script>{HARNESS}
window.loadComet = (base) => import(base + '/comet.js').then((m) => {{ window.comet = m; return true; }});
</script></head>
<body><p>A page of another site, following quotes with comet.js.</p></body></html>"#
    )
}

/// Another site serving the bare page, a server (with `extra` arguments) that lets pages of that
/// site read, and a browser showing the page; None where the browser tests are skipped.
struct BarePage {
    b: Browser,
    s: TestServer,
    site: StaticSite,
    /// The server's base URL, for the module's `url` option.
    url: Value,
}

async fn bare_page_and_server(test: &'static str, extra: &[&str]) -> Option<BarePage> {
    let site = StaticSite::serve(&bare_page());
    let origin = site.origin();
    let s = TestServer::start(&[&["--cors-origins", origin.as_str()], extra].concat());
    let b = Browser::start(test).await?;
    b.open(site.addr, "/").await;
    let url = json!(format!("http://{}", s.addr));
    b.js("return loadComet(arguments[0]);", vec![url.clone()])
        .await;
    Some(BarePage { b, s, site, url })
}

fn prices(s: &TestServer, symbols: &str) -> Vec<(String, f64)> {
    s.get(&format!("/api/quotes?symbols={symbols}")).prices()
}

fn cents(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// `window.subs[name] = comet.subscribe({...record(name), ...options})`; `options` is a JS object
/// literal that may use `arguments[1..]` (`args`).
async fn subscribe(b: &Browser, name: &str, options: &str, args: Vec<Value>) {
    let script = format!(
        "window.subs[arguments[0]] = window.comet.subscribe({{ ...window.record(arguments[0]), ...{options} }}); return true;"
    );
    b.js(&script, [vec![json!(name)], args].concat()).await;
}

/// What subscription `name` reported so far: `{quotes, states, delays}`.
async fn log(b: &Browser, name: &str) -> Value {
    b.try_js(
        "return (window.logs && window.logs[arguments[0]]) || null;",
        vec![json!(name)],
    )
    .await
    .unwrap_or(Value::Null)
}

fn list(log: &Value, key: &str) -> Vec<Value> {
    log[key].as_array().cloned().unwrap_or_default()
}

/// Wait until subscription `name` delivered `symbol` at `price`; returns the quote's record.
async fn wait_quote(b: &Browser, name: &str, symbol: &str, price: f64) -> Value {
    b.wait_for(&format!("{name}: {symbol} at {price}"), LOAD, || async {
        list(&log(b, name).await, "quotes")
            .into_iter()
            .find(|q| q["symbol"] == symbol && q["price"].as_f64() == Some(price))
    })
    .await
}

/// Wait until the last state subscription `name` reported is `state`; returns its detail.
async fn wait_state(b: &Browser, name: &str, state: &str) -> Value {
    b.wait_for(&format!("{name}: state {state}"), LOAD, || async {
        list(&log(b, name).await, "states")
            .pop()
            .filter(|s| s["state"] == state)
    })
    .await
}

/// Wait until subscription `name` has an estimate of the server's clock; returns its stats.
async fn wait_clock(b: &Browser, name: &str) -> Value {
    b.wait_for(&format!("{name}: a clock estimate"), LOAD, || async {
        let st = b
            .try_js(
                "return window.subs[arguments[0]].stats();",
                vec![json!(name)],
            )
            .await?;
        st["offsetMs"].is_number().then_some(st)
    })
    .await
}

/// Wait (bounded by `within`) until `/metrics` shows `series` at `at_least` or more.
async fn wait_metric_at_least(b: &Browser, s: &TestServer, series: &str, at_least: u64) -> u64 {
    b.wait_for(
        &format!("{series} >= {at_least}"),
        Duration::from_secs(20),
        || async {
            let n = s.metric(series);
            (n >= at_least).then_some(n)
        },
    )
    .await
}

#[tokio::test]
async fn on_a_bare_page_of_another_site_the_module_follows_changes_symbols_and_closes() {
    let test = "on_a_bare_page_of_another_site_the_module_follows_changes_symbols_and_closes";
    let Some(BarePage { b, s, url, .. }) = bare_page_and_server(test, &[]).await else {
        return;
    };
    assert_eq!(
        s.get("/comet.js").text(),
        COMET_JS,
        "the server's /comet.js"
    );
    let options = "{ url: arguments[1], symbols: ['IBM', 'MSFT'] }";
    subscribe(&b, "a", options, vec![url.clone()]).await;

    let opening = prices(&s, "IBM,MSFT");
    for (symbol, price) in &opening {
        assert_eq!(
            wait_quote(&b, "a", symbol, *price).await["kind"],
            "snapshot"
        );
    }
    let live = wait_state(&b, "a", "live").await;
    assert_eq!(live["transport"], "stream", "{live}");
    s.wait_for_metric("comet_streams_waiting", 1);
    let ibm = cents(opening[0].1 + 1.0);
    s.publish("IBM", ibm);
    assert_eq!(wait_quote(&b, "a", "IBM", ibm).await["kind"], "live");

    // Other symbols: AAPL's snapshot comes, IBM's quote is not delivered again, MSFT is no longer
    // followed.
    b.js("window.subs.a.setSymbols(['IBM', 'AAPL']);", vec![])
        .await;
    let aapl = prices(&s, "AAPL")[0].1;
    assert_eq!(wait_quote(&b, "a", "AAPL", aapl).await["kind"], "snapshot");
    s.wait_for_metric("comet_streams_open", 1);
    s.wait_for_metric("comet_streams_waiting", 1);
    let msft = cents(opening[1].1 + 2.0);
    s.publish("MSFT", msft);
    let aapl = cents(aapl + 3.0);
    s.publish("AAPL", aapl);
    assert_eq!(wait_quote(&b, "a", "AAPL", aapl).await["kind"], "live");
    let quotes = list(&log(&b, "a").await, "quotes");
    assert!(
        !quotes
            .iter()
            .any(|q| q["symbol"] == "MSFT" && q["price"] == json!(msft)),
        "{quotes:?}"
    );
    assert_eq!(
        quotes.iter().filter(|q| q["symbol"] == "IBM").count(),
        2,
        "IBM's snapshot and its one change: {quotes:?}"
    );
    let st = wait_clock(&b, "a").await;
    assert_eq!(st["transport"], "stream", "{st}");
    assert_eq!(st["fallback"], Value::Null, "{st}");
    let cursor = st["cursor"].as_str().unwrap_or_default();
    assert!(
        !cursor.is_empty() && cursor.bytes().all(|c| c.is_ascii_digit()),
        "{st}"
    );
    assert!(st["uncertaintyMs"].as_f64().unwrap() >= 0.0, "{st}");

    // Closed: its stream goes, and nothing more arrives. A second subscription on the page is the
    // signal that a change was delivered meanwhile.
    b.js("window.subs.a.close();", vec![]).await;
    s.wait_for_metric("comet_streams_open", 0);
    let count = list(&log(&b, "a").await, "quotes").len();
    subscribe(
        &b,
        "b",
        "{ url: arguments[1], symbols: ['IBM'] }",
        vec![url],
    )
    .await;
    wait_state(&b, "b", "live").await;
    s.wait_for_metric("comet_streams_waiting", 1);
    let ibm = cents(ibm + 1.0);
    s.publish("IBM", ibm);
    assert_eq!(wait_quote(&b, "b", "IBM", ibm).await["kind"], "live");
    let a = log(&b, "a").await;
    assert_eq!(list(&a, "quotes").len(), count, "{a}");
    assert_eq!(list(&a, "states").last().unwrap()["state"], "closed");
    b.save_screenshot("").await;
}

#[tokio::test]
async fn across_a_server_restart_the_module_resumes_and_loses_nothing() {
    let test = "across_a_server_restart_the_module_resumes_and_loses_nothing";
    let Some(BarePage {
        b,
        mut s,
        site,
        url,
    }) = bare_page_and_server(test, &[]).await
    else {
        return;
    };
    let addr = s.addr;
    subscribe(
        &b,
        "a",
        "{ url: arguments[1], symbols: ['IBM', 'MSFT'] }",
        vec![url],
    )
    .await;
    wait_state(&b, "a", "live").await;
    s.wait_for_metric("comet_streams_waiting", 1);
    let before = cents(prices(&s, "IBM")[0].1 + 1.0);
    s.publish("IBM", before);
    assert_eq!(wait_quote(&b, "a", "IBM", before).await["kind"], "live");
    let delivered = list(&log(&b, "a").await, "quotes").len();

    s.terminate();
    let down = wait_state(&b, "a", "reconnecting").await;
    eprintln!("while the server is down: {down}");
    // A new server on the same port: terminate() waited for the old one to exit, and the server
    // binds with SO_REUSEADDR.
    let s2 = TestServer::start_at(&addr.to_string(), &["--cors-origins", &site.origin()]);
    // Most likely published before the module is back: only its cursor brings it then.
    let during = cents(prices(&s2, "IBM")[0].1 + 3.21);
    s2.publish("IBM", during);
    let got = wait_quote(&b, "a", "IBM", during).await;
    eprintln!("the change made at the restart arrived as {}", got["kind"]);
    wait_state(&b, "a", "live").await;
    s2.wait_for_metric("comet_streams_waiting", 1);
    let after = cents(during + 1.0);
    s2.publish("IBM", after);
    assert_eq!(wait_quote(&b, "a", "IBM", after).await["kind"], "live");

    // The first answer after the reconnect catches up (the new run's quotes all have seqs above
    // the old cursor), and no quote came twice: each symbol's seqs only go up.
    let quotes = list(&log(&b, "a").await, "quotes");
    assert_eq!(quotes[delivered]["kind"], "catchup", "{quotes:?}");
    for symbol in ["IBM", "MSFT"] {
        let seqs: Vec<u64> = quotes
            .iter()
            .filter(|q| q["symbol"] == symbol)
            .map(|q| q["seq"].as_u64().unwrap())
            .collect();
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{symbol}: {seqs:?}");
    }
    let during_count = quotes
        .iter()
        .filter(|q| q["price"] == json!(during))
        .count();
    assert_eq!(during_count, 1, "{quotes:?}");
    b.save_screenshot("").await;
}

#[tokio::test]
async fn a_page_kept_in_the_back_forward_cache_lets_its_stream_go_and_catches_up_on_return() {
    let test = "a_page_kept_in_the_back_forward_cache_lets_its_stream_go_and_catches_up_on_return";
    let Some(BarePage { b, s, site, url }) = bare_page_and_server(test, &[]).await else {
        return;
    };
    subscribe(
        &b,
        "a",
        "{ url: arguments[1], symbols: ['IBM'] }",
        vec![url],
    )
    .await;
    wait_state(&b, "a", "live").await;
    s.wait_for_metric("comet_streams_waiting", 1);

    // Another page: this one goes into the back/forward cache, where Chromium would keep its
    // stream open. comet.js lets it go.
    b.open(site.addr, "/?elsewhere").await;
    s.wait_for_metric("comet_streams_open", 0);
    let price = cents(prices(&s, "IBM")[0].1 + 4.0);
    s.publish("IBM", price);

    b.client.back().await.expect("back");
    b.wait_for("the page restored from the cache", LOAD, || async {
        let restored = b
            .try_js("return Boolean(window.logs && window.logs.a);", vec![])
            .await?;
        (restored == json!(true)).then_some(())
    })
    .await;
    assert_eq!(wait_quote(&b, "a", "IBM", price).await["kind"], "catchup");
    wait_state(&b, "a", "live").await;
    s.wait_for_metric("comet_streams_waiting", 1);
    let price = cents(price + 1.0);
    s.publish("IBM", price);
    assert_eq!(wait_quote(&b, "a", "IBM", price).await["kind"], "live");
    b.save_screenshot("").await;
}

#[tokio::test]
async fn where_the_server_cannot_stream_the_module_long_polls() {
    // may_minihttp answers one body per request: /api/stream is refused with 501 there. It takes
    // no --cors-origins, so the module runs in a document of the server's own origin (any will
    // do: a JSON answer), imported from /comet.js.
    let s = TestServer::start(&["--engine", "minihttp"]);
    let Some(b) = Browser::start("where_the_server_cannot_stream_the_module_long_polls").await
    else {
        return;
    };
    b.open(s.addr, "/api/symbols").await;
    b.js(
        "return import('/comet.js').then((m) => { window.comet = m; return true; });",
        vec![],
    )
    .await;
    b.js(HARNESS, vec![]).await;
    subscribe(&b, "a", "{ symbols: ['IBM', 'MSFT'] }", vec![]).await;

    let opening = prices(&s, "IBM,MSFT");
    for (symbol, price) in &opening {
        let q = wait_quote(&b, "a", symbol, *price).await;
        assert_eq!(q["kind"], "snapshot", "{q}");
    }
    let live = wait_state(&b, "a", "live").await;
    assert_eq!(live["transport"], "poll", "{live}");
    let why = live["fallback"].as_str().unwrap_or_default();
    assert!(why.contains("501"), "{live}");
    s.wait_for_metric("comet_polls_waiting", 1);
    assert_eq!(s.metric("comet_streams_open"), 0);
    let ibm = cents(opening[0].1 - 1.25);
    s.publish("IBM", ibm);
    let q = wait_quote(&b, "a", "IBM", ibm).await;
    assert_eq!(
        (&q["kind"], &q["transport"]),
        (&json!("live"), &json!("poll"))
    );

    // Other symbols by long-poll too. (No wait for the new poll: this engine does not notice the
    // old one leave, and the new one's snapshot or cursor brings MSFT whenever it is published.)
    b.js("window.subs.a.setSymbols(['MSFT']);", vec![]).await;
    let ibm = cents(ibm + 1.0);
    s.publish("IBM", ibm);
    let msft = cents(opening[1].1 + 0.5);
    s.publish("MSFT", msft);
    wait_quote(&b, "a", "MSFT", msft).await;
    let quotes = list(&log(&b, "a").await, "quotes");
    assert!(
        !quotes.iter().any(|q| q["price"] == json!(ibm)),
        "{quotes:?}"
    );
    b.js("window.subs.a.close();", vec![]).await;
    wait_state(&b, "a", "closed").await;
    b.save_screenshot("").await;
}

#[tokio::test]
async fn in_a_browser_without_eventsource_the_module_long_polls() {
    let test = "in_a_browser_without_eventsource_the_module_long_polls";
    let Some(BarePage { b, s, url, .. }) = bare_page_and_server(test, &[]).await else {
        return;
    };
    b.js("window.EventSource = undefined; return true;", vec![])
        .await;
    subscribe(
        &b,
        "a",
        "{ url: arguments[1], symbols: ['IBM'] }",
        vec![url],
    )
    .await;
    let live = wait_state(&b, "a", "live").await;
    assert_eq!(live["transport"], "poll", "{live}");
    assert_eq!(
        live["fallback"], "this browser has no EventSource",
        "{live}"
    );
    let opening = prices(&s, "IBM")[0].1;
    let q = wait_quote(&b, "a", "IBM", opening).await;
    assert_eq!(q["kind"], "snapshot", "{q}");
    s.wait_for_metric("comet_polls_waiting", 1);
    assert_eq!(s.metric("comet_streams_open"), 0);
    let ibm = cents(opening + 0.25);
    s.publish("IBM", ibm);
    let q = wait_quote(&b, "a", "IBM", ibm).await;
    assert_eq!(
        (&q["kind"], &q["transport"]),
        (&json!("live"), &json!("poll"))
    );
    b.save_screenshot("").await;
}

/// A proxy in front of the server that keeps an answer until it ends, as nginx does with
/// `proxy_buffering on` (and the server's `X-Accel-Buffering: no` ignored): a stream never ends,
/// so nothing of it reaches the page. The rest passes straight through.
struct BufferingProxy {
    addr: SocketAddr,
}

impl BufferingProxy {
    fn to(upstream: SocketAddr) -> BufferingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                std::thread::spawn(move || relay(client, upstream));
            }
        });
        BufferingProxy { addr }
    }
}

/// One client connection through [`BufferingProxy`]. A browser sends a request only once the
/// previous answer on its connection is in, and its head in one write: so once a read from the
/// client starts `GET /api/stream`, everything the server sends back on that connection is the
/// stream's, and is kept.
fn relay(client: TcpStream, upstream: SocketAddr) {
    let Ok(server) = TcpStream::connect(upstream) else {
        return;
    };
    let hold = Arc::new(AtomicBool::new(false));
    let (Ok(mut to_client), Ok(mut from_server)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let holding = Arc::clone(&hold);
    let back = std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        let mut kept = Vec::new();
        loop {
            match from_server.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) if holding.load(Ordering::SeqCst) => kept.extend_from_slice(&buf[..n]),
                Ok(n) => {
                    if to_client.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        // The answer ended: a buffering proxy sends it now, whole.
        let _ = to_client.write_all(&kept);
        let _ = to_client.shutdown(Shutdown::Both);
    });
    let (mut from_client, mut to_server) = (client, server);
    let mut buf = [0u8; 16384];
    loop {
        match from_client.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if buf[..n].starts_with(b"GET /api/stream") {
                    hold.store(true, Ordering::SeqCst);
                }
                if to_server.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    // The client left (the module gave the stream up): so does the proxy, and the server sees it.
    let _ = to_server.shutdown(Shutdown::Both);
    let _ = back.join();
}

#[tokio::test]
async fn behind_a_proxy_that_buffers_the_stream_the_module_long_polls() {
    let test = "behind_a_proxy_that_buffers_the_stream_the_module_long_polls";
    let Some(BarePage { b, s, .. }) = bare_page_and_server(test, &[]).await else {
        return;
    };
    let proxy = BufferingProxy::to(s.addr);
    let url = json!(format!("http://{}", proxy.addr));
    subscribe(
        &b,
        "a",
        "{ url: arguments[1], symbols: ['IBM', 'MSFT'] }",
        vec![url],
    )
    .await;
    // The stream reaches the server, and none of it the page: after a few seconds without its
    // first event the module long-polls instead, and lets the stream go.
    s.wait_for_metric("comet_streams_open", 1);
    let live = wait_state(&b, "a", "live").await;
    assert_eq!(live["transport"], "poll", "{live}");
    let why = live["fallback"].as_str().unwrap_or_default();
    assert!(why.contains("buffered"), "{live}");
    let opening = prices(&s, "IBM,MSFT");
    for (symbol, price) in &opening {
        let q = wait_quote(&b, "a", symbol, *price).await;
        assert_eq!(
            (&q["kind"], &q["transport"]),
            (&json!("snapshot"), &json!("poll")),
            "{q}"
        );
    }
    s.wait_for_metric("comet_streams_open", 0);
    s.wait_for_metric("comet_polls_waiting", 1);
    let msft = cents(opening[1].1 - 0.5);
    s.publish("MSFT", msft);
    let q = wait_quote(&b, "a", "MSFT", msft).await;
    assert_eq!(
        (&q["kind"], &q["transport"]),
        (&json!("live"), &json!("poll"))
    );
    b.save_screenshot("").await;
}

#[tokio::test]
async fn a_token_function_is_asked_again_when_the_token_expires_and_nothing_is_missed() {
    let test = "a_token_function_is_asked_again_when_the_token_expires_and_nothing_is_missed";
    let extra = ["--symbols", "IBM,MSFT", "--jwt-secret", SECRET];
    let Some(BarePage { b, s, url, .. }) = bare_page_and_server(test, &extra).await else {
        return;
    };
    // A short-lived token first; the second ask waits for the test's go (window.release), so
    // that a change can be published while the subscription has no stream.
    let short = hs256(&json!({"symbols": ["IBM"], "exp": now_secs() + 3}));
    let long = hs256(&json!({"symbols": ["IBM"], "exp": now_secs() + 300}));
    b.js(
        "window.tokenCalls = 0; window.tokens = [arguments[0], arguments[1]];
         window.gate = new Promise((resolve) => { window.release = resolve; });",
        vec![json!(short), json!(long)],
    )
    .await;
    let options = "{ url: arguments[1], symbols: ['IBM'], token: async () => {
        window.tokenCalls += 1;
        if (window.tokenCalls > 1) await window.gate;
        return window.tokens[Math.min(window.tokenCalls, 2) - 1];
    } }";
    subscribe(&b, "a", options, vec![url]).await;
    wait_state(&b, "a", "live").await;
    let open = list(&log(&b, "a").await, "quotes")[0]["price"]
        .as_f64()
        .unwrap();

    // The stream ends at the token's expiry with its `expired` event; the module asks again.
    b.wait_for("a second ask for a token", LOAD, || async {
        let n = b.try_js("return window.tokenCalls;", vec![]).await?;
        (n == json!(2)).then_some(())
    })
    .await;
    s.wait_for_metric("comet_streams_ended_total{reason=\"expired\"}", 1);
    s.wait_for_metric("comet_streams_open", 0);
    let between = cents(open + 2.5);
    s.publish("IBM", between);
    b.js("window.release();", vec![]).await;
    let q = wait_quote(&b, "a", "IBM", between).await;
    assert_eq!(q["kind"], "catchup", "{q}");

    wait_state(&b, "a", "live").await;
    s.wait_for_metric("comet_streams_waiting", 1);
    let after = cents(between + 1.0);
    s.publish("IBM", after);
    assert_eq!(wait_quote(&b, "a", "IBM", after).await["kind"], "live");
    assert_eq!(b.js("return window.tokenCalls;", vec![]).await, json!(2));
    // Only the stream's end counted as expired: the module never came back with the old token.
    assert_eq!(s.metric("comet_auth_refused_total{reason=\"expired\"}"), 1);
    let states = list(&log(&b, "a").await, "states");
    assert!(
        !states.iter().any(|st| st["state"] == "unauthorized"),
        "{states:?}"
    );
    b.save_screenshot("").await;
}

#[tokio::test]
async fn the_quotes_page_reports_its_display_delays_into_the_servers_histogram() {
    let s = TestServer::start(&[]);
    let Some(b) =
        Browser::start("the_quotes_page_reports_its_display_delays_into_the_servers_histogram")
            .await
    else {
        return;
    };
    b.open(s.addr, "/?symbols=IBM,MSFT").await;
    b.wait_live(LOAD).await;
    // A report the server refuses whole (display before arrival): 400, counted, not taken in.
    let status = b
        .js(
            "return fetch('/api/display-delay', { method: 'POST', headers: { 'Content-Type': 'application/json' },
               body: JSON.stringify({ samples: [{ arrival: 5, display: 1 }] }) }).then((r) => r.status);",
            vec![],
        )
        .await;
    assert_eq!(status, json!(400));
    assert_eq!(
        s.metric("comet_display_reports_total{result=\"refused\"}"),
        1
    );
    assert_eq!(s.metric("comet_display_delay_seconds_count"), 0);

    // The page knows the server's clock before the changes come, so that each is measured.
    b.wait_for("the page's clock estimate", LOAD, || async {
        let u = b
            .try_js("return window.cometDebug.stats().uncertaintyMs;", vec![])
            .await?;
        u.is_number().then_some(())
    })
    .await;
    s.wait_for_metric("comet_streams_waiting", 1);
    let mut price = prices(&s, "IBM")[0].1;
    for _ in 0..3 {
        price = cents(price + 0.5);
        s.publish("IBM", price);
        b.wait_price("IBM", price, LOAD).await;
    }
    let accepted = wait_metric_at_least(
        &b,
        &s,
        "comet_display_reports_total{result=\"accepted\"}",
        1,
    )
    .await;
    let display = s.metric("comet_display_delay_seconds_count");
    let arrival = s.metric("comet_arrival_delay_seconds_count");
    eprintln!("{accepted} report(s) accepted, {display} display delays");
    assert!(display >= 1 && display == arrival, "{display} {arrival}");

    // The page shows its own figures: the row's delay, p50 and p99, the clock's uncertainty;
    // never a negative one.
    let row = b
        .wait_for("IBM's display delay", LOAD, || async {
            b.text("tr[data-symbol=IBM] .delay")
                .await?
                .parse::<f64>()
                .ok()
        })
        .await;
    let figure = |sel: &'static str| {
        let b = &b;
        async move {
            b.text(sel)
                .await
                .and_then(|t| t.parse::<f64>().ok())
                .unwrap_or_else(|| panic!("{sel} is not a number"))
        }
    };
    let (p50, p99, clock) = (
        figure("#delay-p50").await,
        figure("#delay-p99").await,
        figure("#clock-uncertainty").await,
    );
    eprintln!("IBM row {row} ms; p50 {p50} ms, p99 {p99} ms, clock ± {clock} ms");
    assert!(row >= 0.0 && 0.0 <= p50 && p50 <= p99 && clock >= 0.0);
    let st = b.js("return window.cometDebug.stats();", vec![]).await;
    assert_eq!(st["display"]["count"], 3, "{st}");
    b.save_screenshot("").await;
}

#[tokio::test]
async fn a_browser_whose_clock_is_off_still_measures_true_delays() {
    let test = "a_browser_whose_clock_is_off_still_measures_true_delays";
    let Some(BarePage { b, s, site, url }) = bare_page_and_server(test, &[]).await else {
        return;
    };
    // What the estimate may be off by beyond its uncertainty: the page's real clock against the
    // server's (one machine's clock, read by two processes) and the µs of the readings.
    const MARGIN_MS: f64 = 5.0;
    // An hour ahead, and a minute and a half behind. The first page reports its delays: the
    // server refuses a report with a negative delay (and comet.js never makes one).
    for (i, skew) in [3_600_000.0_f64, -90_000.0].into_iter().enumerate() {
        let name = format!("skew{i}");
        b.open(site.addr, &format!("/?skew={skew}")).await;
        b.js("return loadComet(arguments[0]);", vec![url.clone()])
            .await;
        let seen = b
            .js(
                "return performance.timeOrigin + performance.now() - window.realNow();",
                vec![],
            )
            .await;
        assert!((seen.as_f64().unwrap() - skew).abs() < 1.0, "{seen}");
        let options = format!(
            "{{ url: arguments[1], symbols: ['IBM'], reportDelays: {} }}",
            i == 0
        );
        subscribe(&b, &name, &options, vec![url.clone()]).await;
        wait_state(&b, &name, "live").await;
        let st = wait_clock(&b, &name).await;
        s.wait_for_metric("comet_streams_open", 1);
        s.wait_for_metric("comet_streams_waiting", 1);
        let mut price = prices(&s, "IBM")[0].1;
        for n in 1..=5 {
            price = cents(price + 0.25);
            s.publish("IBM", price);
            b.wait_for(&format!("{name}: delay {n}"), LOAD, || async {
                (list(&log(&b, &name).await, "delays").len() == n).then_some(())
            })
            .await;
        }

        let (offset, uncertainty) = (
            st["offsetMs"].as_f64().unwrap(),
            st["uncertaintyMs"].as_f64().unwrap(),
        );
        eprintln!("skew {skew} ms: offset {offset:.3} ms ± {uncertainty:.3} ms");
        // The offset undoes the skew (the true offset is -skew: one machine, one clock).
        assert!(
            (offset + skew).abs() <= uncertainty + MARGIN_MS,
            "skew {skew}: offset {offset} ± {uncertainty}"
        );
        for d in list(&log(&b, &name).await, "delays") {
            let (arrival, display, real) = (
                d["arrival"].as_f64().unwrap(),
                d["display"].as_f64().unwrap(),
                d["real"].as_f64().unwrap(),
            );
            eprintln!("  arrival {arrival:.3} ms, display {display:.3} ms (true {real:.3} ms)");
            assert!(
                0.0 <= arrival && arrival <= display && display < 1000.0,
                "{d}"
            );
            assert!(
                (display - real).abs() <= uncertainty + MARGIN_MS,
                "{d}: ± {uncertainty}"
            );
        }
        if i == 0 {
            // Before the page goes: its report is taken, whole.
            wait_metric_at_least(
                &b,
                &s,
                "comet_display_reports_total{result=\"accepted\"}",
                1,
            )
            .await;
            assert_eq!(
                s.metric("comet_display_reports_total{result=\"refused\"}"),
                0
            );
            let count = s.metric("comet_display_delay_seconds_count");
            assert_eq!(
                s.metric("comet_display_delay_seconds_bucket{le=\"1\"}"),
                count
            );
            assert!(count >= 1);
        }
        b.save_screenshot(&name).await;
    }
}
