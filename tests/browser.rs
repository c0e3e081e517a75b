//! Real-browser tests of the quotes page: headless Chromium driven through W3C WebDriver
//! (Debian's `chromedriver`), against the real server binary. Each test waits for conditions by
//! polling the DOM with a deadline and saves a screenshot to
//! `<target>/browser-screenshots/<test>.png`.
//!
//! Without `/usr/bin/chromium` and `/usr/bin/chromedriver` each test prints a SKIPPED line and
//! passes, unless `COMET_REQUIRE_BROWSER=1` (CI), where it fails: `apt-get install chromium
//! chromium-driver`.

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use browser::{Browser, RecordingProxy};
use common::TestServer;
use fantoccini::cookies::Cookie;

/// Page start-up (symbol list, snapshot) on a loaded 2-core machine: generous.
const LOAD: Duration = Duration::from_secs(10);
/// A published price must reach the page within this (the long-poll answers at once).
const LIVE: Duration = Duration::from_secs(1);

/// The server's current price of each of `symbols`.
fn snapshot(s: &TestServer, symbols: &str) -> Vec<(String, f64)> {
    s.get(&format!("/api/quotes?symbols={symbols}")).prices()
}

/// The server's `change` of `symbol`, formatted as the page shows it ("+1.23" / "-1.23").
fn server_change_text(s: &TestServer, symbol: &str) -> String {
    let change = s.get(&format!("/api/quotes?symbols={symbol}")).json()["quotes"][0]["change"]
        .as_f64()
        .expect("change");
    format!(
        "{}{:.2}",
        if change < 0.0 { "-" } else { "+" },
        change.abs()
    )
}

fn cents(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Open `/?symbols=IBM,MSFT` and wait until both rows show the server's prices and the page is live.
async fn open_ibm_msft(b: &Browser, s: &TestServer, addr: std::net::SocketAddr) {
    b.open(addr, "/?symbols=IBM,MSFT").await;
    for (symbol, price) in snapshot(s, "IBM,MSFT") {
        b.wait_price(&symbol, price, LOAD).await;
    }
    b.wait_live(LOAD).await;
}

#[tokio::test]
async fn watch_list_from_url_shows_server_prices() {
    let Some(b) = Browser::start("watch_list_from_url_shows_server_prices").await else {
        return;
    };
    let s = TestServer::start(&[]);
    let prices = snapshot(&s, "IBM,MSFT");
    assert_eq!(prices.len(), 2);

    b.open(s.addr, "/?symbols=IBM,MSFT").await;
    for (symbol, price) in &prices {
        b.wait_price(symbol, *price, LOAD).await;
    }
    // Exactly the URL's symbols, in its order: no default watch list mixed in.
    assert_eq!(b.row_symbols().await, ["IBM", "MSFT"]);
    b.wait_live(LOAD).await;
    // Nothing went wrong on the way: no uncaught error, no failed load (favicon included).
    let console = b.console();
    assert!(
        !console.contains("SEVERE"),
        "errors in the console:\n{console}"
    );
    b.save_screenshot("").await;
}

#[tokio::test]
async fn published_price_arrives_over_the_stream_within_a_second_with_flash_and_sign() {
    let Some(b) = Browser::start(
        "published_price_arrives_over_the_stream_within_a_second_with_flash_and_sign",
    )
    .await
    else {
        return;
    };
    let s = TestServer::start(&[]);
    open_ibm_msft(&b, &s, s.addr).await;
    assert_eq!(
        b.text("#transport").await.as_deref(),
        Some("stream (EventSource)")
    );
    // The page's stream waits on the server: what follows measures delivery, not start-up.
    s.wait_for_metric("comet_streams_waiting", 1);
    assert_eq!(s.metric("comet_polls_waiting"), 0);

    // No price was published in this run yet, so the snapshot price is IBM's first ("opening")
    // price, which `change` is relative to: +10 is above it, -10 below.
    let open = snapshot(&s, "IBM")[0].1;
    let row = "tr[data-symbol=IBM]";
    for (price, flash, sign) in [
        (cents(open + 10.0), "flash-up", "+"),
        (cents(open - 10.0), "flash-down", "-"),
    ] {
        let want = format!("{price:.2}");
        let sent = Instant::now();
        s.publish("IBM", price);
        let (shown, class) = b
            .wait_for(
                &format!("IBM row at {want} with {flash} within {LIVE:?}"),
                LIVE,
                || async {
                    let shown = b.text(&format!("{row} .price")).await?;
                    let class = b.attr(row, "class").await.unwrap_or_default();
                    (shown == want && class.split(' ').any(|c| c == flash))
                        .then_some((shown, class))
                },
            )
            .await;
        eprintln!(
            "IBM {shown} shown {:?} after the publish, row class {class:?}",
            sent.elapsed()
        );
        let other = if flash == "flash-up" {
            "flash-down"
        } else {
            "flash-up"
        };
        assert!(!class.split(' ').any(|c| c == other), "class {class:?}");
        let change = b.text(&format!("{row} .change")).await.unwrap_or_default();
        assert!(
            change.starts_with(sign),
            "IBM at {want} (open {open}): change {change:?} should start with {sign:?}"
        );
        assert_eq!(change, server_change_text(&s, "IBM"));
    }
    b.save_screenshot("").await;
}

#[tokio::test]
async fn adding_and_removing_symbols_survives_reload() {
    let Some(b) = Browser::start("adding_and_removing_symbols_survives_reload").await else {
        return;
    };
    let s = TestServer::start(&[]);
    let known = s.get("/api/symbols").json()["symbols"].clone();
    let known: Vec<String> = serde_json::from_value(known).expect("symbols");
    assert!(known.iter().any(|k| k == "AAPL"), "AAPL not in {known:?}");
    assert!(
        !known.iter().any(|k| k == "ZZZZ"),
        "ZZZZ is known: {known:?}"
    );

    open_ibm_msft(&b, &s, s.addr).await;
    // Add AAPL as a user would: type (lower case is fine) and press the Add button.
    b.type_into("form#add-form input#add-symbol", "aapl").await;
    b.click("form#add-form button[type=submit]").await;
    b.wait_rows(&["IBM", "MSFT", "AAPL"], LOAD).await;
    let aapl = snapshot(&s, "AAPL")[0].1;
    b.wait_price("AAPL", aapl, LOAD).await;
    // Remove MSFT with its row's button.
    b.click("tr[data-symbol=MSFT] button.remove").await;
    b.wait_rows(&["IBM", "AAPL"], LOAD).await;

    let url = b.client.current_url().await.expect("current url");
    assert_eq!(url.query(), Some("symbols=IBM,AAPL"), "URL {url}");
    let stored = b
        .js(
            "return localStorage.getItem('comet-quotes:symbols');",
            vec![],
        )
        .await;
    assert_eq!(stored, "IBM,AAPL");

    // A reload keeps the list (from the URL) ...
    b.reload(false).await;
    b.wait_rows(&["IBM", "AAPL"], LOAD).await;
    b.wait_price("AAPL", aapl, LOAD).await;
    b.wait_live(LOAD).await;
    // ... and so does opening the bare page (from localStorage), which writes it back to the URL.
    b.open(s.addr, "/").await;
    b.wait_rows(&["IBM", "AAPL"], LOAD).await;
    b.wait_live(LOAD).await;
    let url = b.client.current_url().await.expect("current url");
    assert_eq!(url.query(), Some("symbols=IBM,AAPL"), "URL {url}");

    // An unknown symbol is refused with a message, and the list stays as it was.
    b.type_into("input#add-symbol", "ZZZZ").await;
    b.click("form#add-form button[type=submit]").await;
    let message = b
        .wait_for("#message naming ZZZZ", LOAD, || async {
            let visible = b.attr("#message", "hidden").await.is_none();
            let text = b.text("#message").await?;
            (visible && text.contains("ZZZZ")).then_some(text)
        })
        .await;
    assert!(message.contains("Unknown symbol"), "message {message:?}");
    assert_eq!(
        b.attr("#message", "data-kind").await.as_deref(),
        Some("error")
    );
    assert_eq!(b.row_symbols().await, ["IBM", "AAPL"]);
    b.save_screenshot("").await;
}

#[tokio::test]
async fn stopping_the_server_shows_reconnecting_and_the_stream_resumes_with_last_event_id() {
    let Some(b) = Browser::start(
        "stopping_the_server_shows_reconnecting_and_the_stream_resumes_with_last_event_id",
    )
    .await
    else {
        return;
    };
    let mut s = TestServer::start(&[]);
    let addr = s.addr;
    // Through a proxy that keeps the request heads: it reconnects to whatever listens on `addr`.
    let proxy = RecordingProxy::start(addr);
    open_ibm_msft(&b, &s, proxy.addr).await;
    s.wait_for_metric("comet_streams_waiting", 1);

    s.terminate();
    let text = b
        .wait_for("#status reconnecting in N s", LOAD, || async {
            let state = b.attr("#status", "data-state").await?;
            let text = b.text("#status").await?;
            let counting = text
                .strip_prefix("reconnecting in ")
                .and_then(|t| t.strip_suffix(" s"))
                .is_some_and(|n| n.parse::<u32>().is_ok());
            (state == "reconnecting" && counting).then_some(text)
        })
        .await;
    eprintln!("status while the server is down: {text:?}");

    // A new server on the same port (SO_REUSEADDR: only a listener still there would stop it).
    let deadline = Instant::now() + LOAD;
    while TcpListener::bind(addr).is_err() {
        assert!(
            Instant::now() < deadline,
            "port {} stays taken",
            addr.port()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let s2 = TestServer::start_at(&addr.to_string(), &[]);
    let restarted = Instant::now();
    // Published before the page is back: only a resume from the last event id brings it.
    let open = snapshot(&s2, "IBM")[0].1;
    let price = cents(open + 3.21);
    s2.publish("IBM", price);
    b.wait_live(Duration::from_secs(15)).await;
    b.wait_price("IBM", price, LOAD).await;
    eprintln!("live again {:?} after the restart", restarted.elapsed());

    // The browser's reconnect named the last event it had.
    let resumed: Vec<String> = proxy
        .requests()
        .iter()
        .filter(|r| r.path().starts_with("/api/stream?"))
        .filter_map(|r| r.header("last-event-id").map(str::to_string))
        .collect();
    eprintln!("stream reconnects with Last-Event-ID: {resumed:?}");
    assert!(
        !resumed.is_empty(),
        "no stream request carried Last-Event-ID"
    );
    assert!(resumed.iter().all(|id| id.parse::<u64>().is_ok()));

    // And it keeps going on the new server.
    s2.wait_for_metric("comet_streams_waiting", 1);
    let price = cents(open + 4.56);
    s2.publish("IBM", price);
    b.wait_price("IBM", price, LIVE).await;
    b.save_screenshot("").await;
}

#[tokio::test]
async fn the_long_poll_transport_still_delivers() {
    let Some(b) = Browser::start("the_long_poll_transport_still_delivers").await else {
        return;
    };
    let s = TestServer::start(&[]);
    b.open(s.addr, "/?symbols=IBM,MSFT&transport=poll").await;
    for (symbol, price) in snapshot(&s, "IBM,MSFT") {
        b.wait_price(&symbol, price, LOAD).await;
    }
    b.wait_live(LOAD).await;
    assert_eq!(b.text("#transport").await.as_deref(), Some("long-poll"));
    s.wait_for_metric("comet_polls_waiting", 1);
    assert_eq!(s.metric("comet_streams_open"), 0);
    let price = cents(snapshot(&s, "MSFT")[0].1 + 2.5);
    s.publish("MSFT", price);
    b.wait_price("MSFT", price, LIVE).await;
    b.save_screenshot("").await;
}

#[tokio::test]
async fn the_page_falls_back_to_long_poll_when_the_server_cannot_stream() {
    let Some(b) =
        Browser::start("the_page_falls_back_to_long_poll_when_the_server_cannot_stream").await
    else {
        return;
    };
    // may_minihttp answers one body per request: /api/stream is refused with 501 there.
    let s = TestServer::start(&["--engine", "minihttp"]);
    b.open(s.addr, "/?symbols=IBM,MSFT").await;
    let transport = b
        .wait_for("#transport saying long-poll (fallback)", LOAD, || async {
            let t = b.text("#transport").await?;
            (t == "long-poll (fallback)").then_some(t)
        })
        .await;
    eprintln!("transport: {transport}");
    for (symbol, price) in snapshot(&s, "IBM,MSFT") {
        b.wait_price(&symbol, price, LOAD).await;
    }
    b.wait_live(LOAD).await;
    s.wait_for_metric("comet_polls_waiting", 1);
    let price = cents(snapshot(&s, "IBM")[0].1 - 1.25);
    s.publish("IBM", price);
    b.wait_price("IBM", price, LIVE).await;
    b.save_screenshot("").await;
}

/// Set `n` cookies with 100-byte values for the page's host, 127.0.0.1 (the page must be open).
async fn add_cookies(b: &Browser, n: usize) {
    for i in 0..n {
        let cookie = Cookie::build((format!("c{i}"), "x".repeat(100)))
            // chromedriver refuses the null domain fantoccini sends for a cookie without one.
            .domain("127.0.0.1")
            .path("/")
            // Chromium refuses fantoccini's default SameSite=None on plain HTTP.
            .same_site(cookie::SameSite::Lax)
            .build();
        b.client.add_cookie(cookie).await.expect("add cookie");
    }
}

#[tokio::test]
async fn reload_with_cookies_and_revalidation_reaches_the_server() {
    let Some(b) = Browser::start("reload_with_cookies_and_revalidation_reaches_the_server").await
    else {
        return;
    };
    // No display-delay reports: this test reads the proxied bytes as bodiless GETs, and a report
    // (a POST with a body, answered 204) may come at any time after the first live update.
    let s = TestServer::start(&["--no-display-reports"]);
    // The browser talks to the server through a proxy that keeps its request heads.
    let proxy = RecordingProxy::start(s.addr);
    open_ibm_msft(&b, &s, proxy.addr).await;
    add_cookies(&b, 3).await;

    // Two plain reloads (app.js and style.css revalidated with If-None-Match: no-cache + ETag),
    // then a reload bypassing the cache: each time the page comes back live.
    for hard in [false, false, true] {
        b.reload(hard).await;
        b.wait_rows(&["IBM", "MSFT"], LOAD).await;
        b.wait_live(LOAD).await;
    }
    // (No wait for the page's stream here: each reload closed one and opened another; the
    // snapshot or the cursor makes the change reach the page whichever it is.)
    let price = cents(snapshot(&s, "IBM")[0].1 + 1.5);
    s.publish("IBM", price);
    b.wait_price("IBM", price, LOAD).await;

    // What the browser sent: revalidations of the static files, cookies, and requests with more
    // than 16 headers (which may_minihttp 0.1.11 would drop).
    let requests = proxy.requests();
    let revalidated: Vec<&str> = requests
        .iter()
        .filter(|r| r.header("if-none-match").is_some())
        .map(|r| r.path())
        .collect();
    for file in ["/app.js", "/style.css"] {
        assert!(
            revalidated.contains(&file),
            "{file} never revalidated; revalidated: {revalidated:?}"
        );
    }
    assert!(requests
        .iter()
        .filter_map(|r| r.header("cookie"))
        .any(|c| c.contains("c0=") && c.contains("c2=")));
    let most = requests.iter().max_by_key(|r| r.headers.len()).unwrap();
    eprintln!(
        "{} browser requests; most headers: {} on {}; revalidated: {revalidated:?}",
        requests.len(),
        most.headers.len(),
        most.line
    );
    assert!(
        most.headers.len() > 16,
        "no request over 16 headers: {most:?}"
    );

    // Every request was answered (200, or 304 for a revalidation; a stream counts from its head),
    // except a poll still held, which can only be the last on its connection; no client errors.
    let mut not_modified = 0;
    for c in proxy.connections() {
        let unanswered = &c.requests[c.statuses.len().min(c.requests.len())..];
        assert!(
            unanswered.is_empty()
                || (unanswered.len() == 1 && unanswered[0].path().starts_with("/api/poll?")),
            "unanswered: {unanswered:?} (answers {:?})",
            c.statuses
        );
        assert!(
            c.statuses.iter().all(|&st| st == 200 || st == 304),
            "{:?}",
            c.statuses
        );
        not_modified += c.statuses.iter().filter(|&&st| st == 304).count();
    }
    assert!(not_modified >= 4, "{not_modified} answers 304 Not Modified");
    assert_eq!(s.metric("comet_client_errors_total"), 0);
    b.save_screenshot("").await;
}

/// Evidence for the README's limits, in a real browser. may_minihttp sends no ETag, so Chromium
/// never revalidates against it, and a plain reload with a cookie sends 16 headers: answered. A
/// reload that bypasses the cache (Ctrl+Shift+R) adds `Pragma` and `Cache-Control: no-cache`:
/// 17 headers, which may_minihttp 0.1.11 drops without an answer, and Chromium shows its error
/// page. The native engine serves the same flow (see the test above). If this starts failing, the
/// limit is gone or Chromium sends fewer headers.
#[tokio::test]
async fn minihttp_engine_drops_a_browser_hard_reload_with_a_cookie() {
    let Some(b) = Browser::start("minihttp_engine_drops_a_browser_hard_reload_with_a_cookie").await
    else {
        return;
    };
    let s = TestServer::start(&["--engine", "minihttp"]);
    let proxy = RecordingProxy::start(s.addr);
    open_ibm_msft(&b, &s, proxy.addr).await;
    add_cookies(&b, 1).await;
    // A plain reload with the cookie still works ...
    b.reload(false).await;
    b.wait_rows(&["IBM", "MSFT"], LOAD).await;
    b.wait_live(LOAD).await;
    // ... a hard reload does not.
    b.reload(true).await;
    let href = b
        .wait_for("Chromium's error page", LOAD, || async {
            let href = b.href().await?;
            href.starts_with("chrome-error://").then_some(href)
        })
        .await;
    // "127.0.0.1 didn't send any data": the connection closed without an answer.
    let page = b.text("body").await.unwrap_or_default();
    assert!(page.contains("ERR_EMPTY_RESPONSE"), "error page: {page:?}");
    // The hard reload's document request(s) (Chromium tries twice): more than 16 headers, and
    // no answer on their connection.
    let mut dropped = Vec::new();
    for c in proxy.connections() {
        for (i, r) in c.requests.iter().enumerate() {
            if r.path() == "/?symbols=IBM,MSFT" && r.header("pragma") == Some("no-cache") {
                assert!(i >= c.statuses.len(), "answered: {r:?}");
                dropped.push(r.headers.len());
            }
        }
    }
    eprintln!("hard reload -> {href}; its unanswered document requests had {dropped:?} headers");
    assert!(
        !dropped.is_empty() && dropped.iter().all(|&n| n > 16),
        "hard reload requests: {dropped:?} headers"
    );
    b.save_screenshot("").await;
}
