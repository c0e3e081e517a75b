//! Tokens and other origins in a real browser (headless Chromium through chromedriver): a page on
//! another origin follows quotes with `EventSource` (cookie or `access_token`) and with `fetch`
//! plus an `Authorization` header (a CORS preflight); a page on an origin that is not listed
//! cannot read; the quotes page says "not authorized" and does not retry a refusal in a loop.
//!
//! Skipped (with a SKIPPED line) without chromium and chromedriver, unless
//! `COMET_REQUIRE_BROWSER=1`.

#[path = "common/browser.rs"]
mod browser;
mod common;

use std::time::Duration;

use browser::{Browser, StaticSite};
use common::jwt::{hs256, now_secs, SECRET};
use common::TestServer;
use fantoccini::cookies::Cookie;
use serde_json::{json, Value};

const LOAD: Duration = Duration::from_secs(10);

/// A page of someone else's site: helpers the tests call through WebDriver.
const PAGE: &str = r#"<!doctype html><html><head><meta charset="utf-8"><title>elsewhere</title></head>
<body><p>A page on another origin.</p><script>
window.events = []; window.errors = 0; window.polled = null; window.blocked = null;
window.follow = (url, withCredentials) => {
  if (window.es) window.es.close();
  window.events = []; window.errors = 0;
  const es = new EventSource(url, { withCredentials });
  es.onmessage = (e) => window.events.push(JSON.parse(e.data));
  es.onerror = () => { window.errors += 1; if (es.readyState === EventSource.CLOSED) es.close(); };
  window.es = es;
};
window.longPoll = async (base, symbols, token) => {
  const headers = { Authorization: `Bearer ${token}` };
  try {
    const snap = await (await fetch(`${base}/api/quotes?symbols=${symbols}`, { headers })).json();
    window.cursor = snap.cursor;
    const r = await fetch(`${base}/api/poll?symbols=${symbols}&cursor=${snap.cursor}&timeout=30`, { headers });
    window.polled = await r.json();
  } catch (e) { window.blocked = String(e); }
};
</script></body></html>"#;

/// Wait until `script` returns something truthy; returns it.
async fn wait_js(b: &Browser, what: &str, script: &str) -> Value {
    b.wait_for(what, LOAD, || async {
        let v = b.try_js(script, vec![]).await?;
        let truthy = !(v.is_null() || v == json!(false) || v == json!(0) || v == json!(""));
        truthy.then_some(v)
    })
    .await
}

/// The prices of every event the page's EventSource got so far.
async fn event_prices(b: &Browser) -> Vec<f64> {
    let v = b.js("return window.events;", vec![]).await;
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|e| e["quotes"].as_array().unwrap().clone())
        .map(|q| q["price"].as_f64().unwrap())
        .collect()
}

/// A server for `symbols` that checks tokens signed with [`SECRET`] and lets `site` read.
fn server_listing(site: &StaticSite, symbols: &str) -> TestServer {
    TestServer::start(&[
        "--symbols",
        symbols,
        "--jwt-secret",
        SECRET,
        "--cors-origins",
        &site.origin(),
    ])
}

fn token(symbols: Value, exp_in: u64) -> String {
    hs256(&json!({"symbols": symbols, "exp": now_secs() + exp_in}))
}

#[tokio::test]
async fn a_page_on_a_listed_origin_streams_with_the_cookie_and_with_access_token() {
    let site = StaticSite::serve(PAGE);
    let s = server_listing(&site, "IBM,MSFT");
    let Some(b) =
        Browser::start("a_page_on_a_listed_origin_streams_with_the_cookie_and_with_access_token")
            .await
    else {
        return;
    };
    let t = token(json!(["IBM"]), 300);
    // The token cookie, set on the quotes server's host (a login there would set it).
    b.open(s.addr, "/api/symbols").await;
    let cookie = Cookie::build(("comet_token", t.clone()))
        .domain("127.0.0.1")
        .path("/")
        .same_site(cookie::SameSite::Lax)
        .build();
    b.client.add_cookie(cookie).await.expect("add cookie");
    b.open(site.addr, "/").await;

    let stream = format!("http://{}/api/stream?symbols=IBM", s.addr);
    let with_token = format!("{stream}&access_token={t}");
    for (url, credentials, how, price) in [
        (&stream, true, "the cookie", 101.25),
        (&with_token, false, "access_token", 102.5),
    ] {
        b.js(
            "follow(arguments[0], arguments[1])",
            vec![json!(url), json!(credentials)],
        )
        .await;
        let first = format!("the snapshot event ({how})");
        wait_js(&b, &first, "return window.events.length").await;
        s.publish("IBM", price);
        b.wait_for(&format!("IBM {price} over the stream"), LOAD, || async {
            event_prices(&b).await.contains(&price).then_some(())
        })
        .await;
    }

    // Without credentials the cookie stays home, and without a token the stream is refused.
    b.js("follow(arguments[0], false)", vec![json!(stream)])
        .await;
    wait_js(&b, "the refusal", "return window.errors").await;
    assert!(event_prices(&b).await.is_empty());
    assert!(s.metric("comet_auth_refused_total{reason=\"missing\"}") >= 1);
    b.save_screenshot("").await;
}

#[tokio::test]
async fn a_page_on_a_listed_origin_long_polls_with_an_authorization_header() {
    let site = StaticSite::serve(PAGE);
    let s = server_listing(&site, "IBM,MSFT");
    let Some(b) =
        Browser::start("a_page_on_a_listed_origin_long_polls_with_an_authorization_header").await
    else {
        return;
    };
    b.open(site.addr, "/").await;
    let t = token(json!(["MSFT"]), 300);
    let base = format!("http://{}", s.addr);
    b.js(
        "longPoll(arguments[0], 'MSFT', arguments[1])",
        vec![json!(base), json!(t)],
    )
    .await;
    s.wait_for_metric("comet_polls_waiting", 1);
    s.publish("MSFT", 333.33);
    let polled = wait_js(
        &b,
        "the poll's answer",
        "return window.polled || window.blocked",
    )
    .await;
    assert_eq!(polled["quotes"][0]["price"], json!(333.33), "{polled}");
    // The Authorization header made the browser ask first: the preflight reached the server.
    let requests = s.metric("comet_requests_total");
    assert!(
        requests >= 4,
        "{requests} requests: two preflights, a snapshot, a poll"
    );
}

#[tokio::test]
async fn a_page_on_an_origin_that_is_not_listed_cannot_read() {
    let listed = StaticSite::serve(PAGE);
    let other = StaticSite::serve(PAGE);
    let s = server_listing(&listed, "IBM");
    let Some(b) = Browser::start("a_page_on_an_origin_that_is_not_listed_cannot_read").await else {
        return;
    };
    b.open(other.addr, "/").await;
    let t = token(json!("*"), 300);
    let stream = format!("http://{}/api/stream?symbols=IBM&access_token={t}", s.addr);
    b.js("follow(arguments[0], false)", vec![json!(stream)])
        .await;
    wait_js(&b, "the stream to fail", "return window.errors").await;
    assert!(event_prices(&b).await.is_empty());
    let base = format!("http://{}", s.addr);
    b.js(
        "longPoll(arguments[0], 'IBM', arguments[1])",
        vec![json!(base), json!(t)],
    )
    .await;
    let blocked = wait_js(
        &b,
        "fetch to be blocked",
        "return window.blocked || window.polled",
    )
    .await;
    assert!(blocked.is_string(), "the page read {blocked}");
}

#[tokio::test]
async fn the_quotes_page_says_not_authorized_and_does_not_retry_a_refusal() {
    let s = TestServer::start(&["--symbols", "IBM,MSFT", "--jwt-secret", SECRET]);
    let Some(b) =
        Browser::start("the_quotes_page_says_not_authorized_and_does_not_retry_a_refusal").await
    else {
        return;
    };
    let unauthorized = "#status[data-state=unauthorized]";
    let wait_state = |what: &'static str| {
        let b = &b;
        async move {
            b.wait_for(what, LOAD, || async { b.exists(what).await.then_some(()) })
                .await
        }
    };
    // A token for MSFT only, on a page for IBM: 403, said once, not retried.
    let msft = token(json!(["MSFT"]), 300);
    b.open(s.addr, &format!("/?symbols=IBM&access_token={msft}"))
        .await;
    wait_state(unauthorized).await;
    assert_eq!(b.text("#status").await.as_deref(), Some("not authorized"));
    let forbidden = "comet_auth_refused_total{reason=\"forbidden\"}";
    let after_refusal = s.metric(forbidden);
    // A page that retried would have come back within its first backoff (0.5-1 s).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(s.metric(forbidden), after_refusal, "the page retried a 403");
    b.save_screenshot("forbidden").await;

    // A good token that expires soon: live, then "not authorized" when the stream ends.
    let short = hs256(&json!({"symbols": ["IBM"], "exp": now_secs() + 3}));
    b.open(s.addr, &format!("/?symbols=IBM&access_token={short}"))
        .await;
    b.wait_live(LOAD).await;
    wait_state(unauthorized).await;
    assert_eq!(s.metric("comet_streams_ended_total{reason=\"expired\"}"), 1);

    // The token the URL brought is kept: a plain reload (no token in the URL) still uses it.
    let good = token(json!(["IBM"]), 300);
    b.open(s.addr, &format!("/?symbols=IBM&access_token={good}"))
        .await;
    b.wait_live(LOAD).await;
    // ... out of the address bar (history, bookmarks, shared links), into localStorage.
    let href = b.href().await.unwrap_or_default();
    assert!(!href.contains("access_token"), "{href}");
    assert!(href.contains("symbols=IBM"), "{href}");
    b.open(s.addr, "/?symbols=IBM").await;
    b.wait_live(LOAD).await;
    let price = 77.77;
    s.publish("IBM", price);
    b.wait_price("IBM", price, LOAD).await;
}
