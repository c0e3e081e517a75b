//! Credentials, end to end against the real server: publishing always needs one; with a JWT key,
//! reading needs a token that grants the symbols; every refusal says why and is counted; a held
//! poll or stream ends when its token does.

mod common;

use std::time::{Duration, Instant};

use common::jwt::{self, hs256, now_secs};
use common::sse::{prices, Item, SseClient};
use common::{request, Conn, Response, TestServer};
use serde_json::json;

const IBM: &[u8] = br#"{"symbol":"IBM","price":1}"#;

/// A server that verifies HS256 tokens, IBM public, MSFT and AAPL guarded.
fn guarded(extra: &[&str]) -> TestServer {
    let mut args = vec![
        "--symbols",
        "IBM,MSFT,AAPL",
        "--jwt-secret",
        jwt::SECRET,
        "--public-symbols",
        "IBM",
    ];
    args.extend_from_slice(extra);
    TestServer::start(&args)
}

/// A token for `claims`, valid for a minute unless they say otherwise.
fn token(claims: serde_json::Value) -> String {
    let mut claims = claims;
    if claims.get("exp").is_none() {
        claims["exp"] = json!(now_secs() + 60);
    }
    hs256(&claims)
}

fn get(s: &TestServer, path: &str, headers: &[(&str, &str)]) -> Response {
    request(s.addr, "GET", path, headers, b"")
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn assert_refused(r: &Response, status: u16, challenge: &str, says: &str) {
    assert_eq!(r.status, status, "{}", r.text());
    assert_eq!(r.header("www-authenticate"), Some(challenge));
    let error = r.json()["error"].as_str().unwrap().to_string();
    assert!(error.contains(says), "{error:?} does not say {says:?}");
}

fn refused(s: &TestServer, reason: &str) -> u64 {
    s.metric(&format!("comet_auth_refused_total{{reason=\"{reason}\"}}"))
}

#[test]
fn publishing_with_default_flags_needs_the_token_the_server_printed() {
    let s = TestServer::start_raw(&["--listen", "127.0.0.1:0", "--no-feed"]);
    let none = request(s.addr, "POST", "/api/quotes", &[], IBM);
    assert_refused(&none, 401, "Bearer", "token");
    // Neither loopback nor a header a client can send vouches for it.
    let forwarded = request(
        s.addr,
        "POST",
        "/api/quotes",
        &[
            ("X-Forwarded-For", "203.0.113.9"),
            ("X-Real-IP", "127.0.0.1"),
        ],
        IBM,
    );
    assert_eq!(forwarded.status, 401);
    let printed = s.wait_for_stderr("export COMET_PUBLISH_TOKEN=", Duration::from_secs(5));
    let token = printed
        .split("export COMET_PUBLISH_TOKEN=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap()
        .to_string();
    assert!(token.len() >= 32, "{token:?}");
    let ok = request(
        s.addr,
        "POST",
        "/api/quotes",
        &[("Authorization", &bearer(&token))],
        IBM,
    );
    assert_eq!(ok.status, 200, "{}", ok.text());
    assert_eq!(refused(&s, "missing"), 2);
}

#[test]
fn the_built_in_feed_publishes_without_a_token() {
    let s = TestServer::start_raw(&["--listen", "127.0.0.1:0", "--feed-interval", "0.01"]);
    let cursor = s.cursor("IBM,MSFT");
    let r = s.get(&format!(
        "/api/poll?symbols=IBM,MSFT&cursor={cursor}&timeout=10"
    ));
    assert!(!r.prices().is_empty(), "no feed change within 10 s");
}

#[test]
fn publishing_through_a_jwt_needs_a_publish_claim_naming_every_symbol() {
    let s = guarded(&[]);
    let post = |t: &str, body: &[u8]| {
        request(
            s.addr,
            "POST",
            "/api/quotes",
            &[("Authorization", &bearer(t))],
            body,
        )
    };
    let ibm_only = token(json!({"publish": ["IBM"], "sub": "feeder"}));
    assert_eq!(post(&ibm_only, IBM).status, 200);
    let both = br#"[{"symbol":"IBM","price":2},{"symbol":"MSFT","price":3}]"#;
    let r = post(&ibm_only, both);
    assert_refused(&r, 403, r#"Bearer error="insufficient_scope""#, "MSFT");
    assert!(!r.json()["error"].as_str().unwrap().contains("IBM"));
    // All or none: IBM did not move either.
    assert_eq!(s.get("/api/quotes?symbols=IBM").prices()[0].1, 1.0);
    let reader = token(json!({"symbols": "*"}));
    assert_eq!(post(&reader, IBM).status, 403);
    let everything = token(json!({"publish": "*"}));
    assert_eq!(post(&everything, both).status, 200);
    let expired = token(json!({"publish": "*", "exp": now_secs() - 10}));
    assert_refused(
        &post(&expired, IBM),
        401,
        r#"Bearer error="invalid_token""#,
        "expired",
    );
    // The publish token still works alongside JWTs.
    assert_eq!(post(common::PUBLISH_TOKEN, IBM).status, 200);
    // A token in the cookie or the query does not publish (a page could forge that).
    let cookie = format!("comet_token={everything}");
    let r = request(s.addr, "POST", "/api/quotes", &[("Cookie", &cookie)], IBM);
    assert_eq!(r.status, 401);
    let r = request(
        s.addr,
        "POST",
        &format!("/api/quotes?access_token={everything}"),
        &[],
        IBM,
    );
    assert_eq!(r.status, 401);
    assert_eq!(refused(&s, "forbidden"), 2);
    assert_eq!(refused(&s, "expired"), 1);
    assert_eq!(refused(&s, "missing"), 2);
}

#[test]
fn every_read_refusal_has_its_status_challenge_and_counter() {
    let s = guarded(&[]);
    let cursor = s.cursor("IBM");
    for path in [
        "/api/quotes?symbols=MSFT".to_string(),
        format!("/api/poll?symbols=MSFT&cursor={cursor}&timeout=0"),
    ] {
        let missing = get(&s, &path, &[]);
        assert_refused(&missing, 401, "Bearer", "token");

        let other_key = {
            let mut t = token(json!({"symbols": "*"}));
            t.push('x'); // the signature no longer matches
            t
        };
        let invalid = get(&s, &path, &[("Authorization", &bearer(&other_key))]);
        assert_refused(&invalid, 401, r#"Bearer error="invalid_token""#, "invalid");

        let garbage = get(&s, &path, &[("Authorization", "Bearer not.a.jwt")]);
        assert_refused(&garbage, 401, r#"Bearer error="invalid_token""#, "invalid");

        let old = token(json!({"symbols": "*", "exp": now_secs() - 1}));
        let expired = get(&s, &path, &[("Authorization", &bearer(&old))]);
        assert_refused(&expired, 401, r#"Bearer error="invalid_token""#, "expired");

        let aapl = token(json!({"symbols": ["AAPL"]}));
        let forbidden = get(&s, &path, &[("Authorization", &bearer(&aapl))]);
        assert_refused(
            &forbidden,
            403,
            r#"Bearer error="insufficient_scope""#,
            "MSFT",
        );
    }
    let mut stream = SseClient::open(s.addr, "symbols=IBM,MSFT", &[]);
    assert_eq!(stream.status, 401);
    assert_eq!(stream.header("www-authenticate"), Some("Bearer"));
    assert!(stream.error_body()["error"].is_string());
    assert_eq!(refused(&s, "missing"), 3);
    assert_eq!(refused(&s, "invalid"), 4);
    assert_eq!(refused(&s, "expired"), 2);
    assert_eq!(refused(&s, "forbidden"), 2);
}

#[test]
fn a_token_is_read_from_the_header_then_the_query_then_the_cookie() {
    let s = guarded(&[]);
    let good = token(json!({"symbols": ["MSFT"]}));
    let cookie = format!("theme=dark; comet_token={good}");
    let path = "/api/quotes?symbols=MSFT";
    assert_eq!(
        get(&s, path, &[("Authorization", &bearer(&good))]).status,
        200
    );
    assert_eq!(
        get(&s, &format!("{path}&access_token={good}"), &[]).status,
        200
    );
    assert_eq!(get(&s, path, &[("Cookie", &cookie)]).status, 200);
    // The first one present is the one that counts: a bad header is not rescued by a cookie.
    let r = get(
        &s,
        path,
        &[("Authorization", "Bearer bad"), ("Cookie", &cookie)],
    );
    assert_eq!(r.status, 401);
    // A stream takes the query parameter or the cookie (an EventSource sets no header).
    let mut c = SseClient::open(s.addr, &format!("symbols=MSFT&access_token={good}"), &[]);
    assert_eq!(c.status, 200);
    assert!(matches!(c.next(), Some(Item::Retry(_))));
    let c = SseClient::open(s.addr, "symbols=MSFT", &[("Cookie", &cookie)]);
    assert_eq!(c.status, 200);
}

#[test]
fn public_symbols_the_symbol_list_and_the_page_need_no_token() {
    let s = guarded(&[]);
    assert_eq!(s.get("/api/quotes?symbols=IBM").status, 200);
    assert_eq!(s.get("/api/symbols").status, 200);
    assert_eq!(s.get("/").status, 200);
    assert_eq!(s.get("/app.js").status, 200);
    let c = SseClient::open(s.addr, "symbols=IBM", &[]);
    assert_eq!(c.status, 200);
    // A request for a public and a guarded symbol needs the guarded one granted.
    assert_eq!(s.get("/api/quotes?symbols=IBM,MSFT").status, 401);
    let msft = token(json!({"symbols": ["MSFT"]}));
    let r = get(
        &s,
        "/api/quotes?symbols=IBM,MSFT",
        &[("Authorization", &bearer(&msft))],
    );
    assert_eq!(r.status, 200);
    let all = TestServer::start(&["--jwt-secret", jwt::SECRET, "--public-symbols", "*"]);
    assert_eq!(all.get("/api/quotes?symbols=IBM,MSFT").status, 200);
}

#[test]
fn rs256_and_es256_tokens_verify_against_a_public_key_file() {
    for (key, sign) in [
        (
            jwt::rsa_public_key(),
            jwt::rs256 as fn(&serde_json::Value) -> String,
        ),
        (jwt::ec_public_key(), jwt::es256),
    ] {
        let s = TestServer::start(&["--symbols", "IBM", "--jwt-public-key", &key]);
        let good = sign(&json!({"symbols": ["IBM"], "exp": now_secs() + 60}));
        let r = get(
            &s,
            "/api/quotes?symbols=IBM",
            &[("Authorization", &bearer(&good))],
        );
        assert_eq!(r.status, 200, "{key}: {}", r.text());
        // An HS256 token (say, signed with the public key as its secret) is refused.
        let hs = hs256(&json!({"symbols": ["IBM"], "exp": now_secs() + 60}));
        let r = get(
            &s,
            "/api/quotes?symbols=IBM",
            &[("Authorization", &bearer(&hs))],
        );
        assert_eq!(r.status, 401, "{key}");
    }
}

#[test]
fn malformed_tokens_are_refused_and_never_crash_the_server() {
    let s = guarded(&[]);
    let good = token(json!({"symbols": "*"}));
    let (header, rest) = good.split_once('.').unwrap();
    let payload = rest.split('.').next().unwrap();
    let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"; // {"alg":"none","typ":"JWT"}
    let rs = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9"; // {"alg":"RS256","typ":"JWT"}
    let huge = "A".repeat(12_000);
    for bad in [
        "x".to_string(),
        "a.b".into(),
        "a.b.c.d".into(),
        "%%%.%%%.%%%".into(),
        format!("{none}.{payload}."),
        format!("{rs}.{payload}.AAAA"),
        format!("{huge}.{payload}.x"),
        format!("{header}.{payload}"),
        format!("{header}.!!!.x"),
        format!("{header}..{}", rest.rsplit('.').next().unwrap()),
    ] {
        let r = get(
            &s,
            "/api/quotes?symbols=MSFT",
            &[("Authorization", &bearer(&bad))],
        );
        assert!(
            r.status == 401 || r.status == 431,
            "{bad:.40}: {} {}",
            r.status,
            r.text()
        );
    }
    assert_eq!(s.get("/api/quotes?symbols=IBM").status, 200);
}

#[test]
fn a_held_poll_is_answered_401_when_its_token_expires() {
    let s = guarded(&["--poll-timeout", "60"]);
    let exp = now_secs() + 2;
    let t = token(json!({"symbols": ["MSFT"], "exp": exp}));
    let cursor = s.cursor("IBM");
    let mut poll = Conn::open(s.addr).unwrap();
    let auth = bearer(&t);
    poll.send(
        "GET",
        &format!("/api/poll?symbols=MSFT&cursor={cursor}&timeout=60"),
        &[("Authorization", &auth)],
        b"",
        true,
    )
    .unwrap();
    s.wait_for_metric("comet_polls_waiting", 1);
    let r = poll.read_response().unwrap();
    let answered = now_secs();
    assert_refused(&r, 401, r#"Bearer error="invalid_token""#, "expired");
    assert!(
        answered >= exp && answered <= exp + 1,
        "answered at {answered}, exp {exp}"
    );
    assert_eq!(refused(&s, "expired"), 1);
}

#[test]
fn a_stream_ends_at_expiry_and_resumes_with_a_fresh_token_missing_nothing() {
    let s = guarded(&["--heartbeat", "60"]);
    let first = token(json!({"symbols": ["MSFT", "AAPL"], "exp": now_secs() + 2}));
    let mut c = SseClient::open(
        s.addr,
        &format!("symbols=MSFT,AAPL&access_token={first}"),
        &[],
    );
    assert_eq!(c.status, 200);
    let (mut last_id, _) = c.next_event(); // the snapshot
    s.publish("MSFT", 11.0);
    let (id, data) = c.next_event();
    assert_eq!(prices(&data), [("MSFT".to_string(), 11.0)]);
    last_id = last_id.max(id);
    // The token expires: one last `expired` event, then the server closes the stream.
    let ended = loop {
        match c.next() {
            Some(Item::Named { event, data }) => break (event, data),
            Some(Item::Event { id: Some(id), .. }) => last_id = id,
            Some(_) => {}
            None => panic!("the stream closed without an expired event"),
        }
    };
    assert_eq!(ended.0, "expired");
    assert_eq!(ended.1, json!({"error": "token expired"}));
    assert!(c.next().is_none(), "the stream stays open after expired");
    // Changes while the client fetches a fresh token.
    s.publish("AAPL", 22.0);
    s.publish("MSFT", 12.0);
    let fresh = token(json!({"symbols": ["MSFT", "AAPL"]}));
    let id = last_id.to_string();
    let mut again = SseClient::open(
        s.addr,
        &format!("symbols=MSFT,AAPL&access_token={fresh}"),
        &[("Last-Event-ID", &id)],
    );
    assert_eq!(again.status, 200);
    let (_, data) = again.next_event();
    let mut got = prices(&data);
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got,
        [("AAPL".to_string(), 22.0), ("MSFT".to_string(), 12.0)]
    );
    assert_eq!(s.metric("comet_streams_ended_total{reason=\"expired\"}"), 1);
}

#[test]
fn a_stream_of_public_symbols_does_not_expire() {
    let s = guarded(&["--heartbeat", "0.2"]);
    let short = token(json!({"symbols": ["MSFT"], "exp": now_secs() + 1}));
    // IBM is public: the token is not needed, so its expiry does not end the stream.
    let mut c = SseClient::open(s.addr, &format!("symbols=IBM&access_token={short}"), &[]);
    let started = Instant::now();
    c.next_event();
    while started.elapsed() < Duration::from_millis(2500) {
        match c.next() {
            Some(Item::Comment(_)) | Some(Item::Event { .. }) | Some(Item::Retry(_)) => {}
            other => panic!("the stream of a public symbol ended: {other:?}"),
        }
    }
}

#[test]
fn the_jwt_flags_are_checked_at_start() {
    let fails = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_comet-quotes"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(fails(&["--jwt-secret", "short"]).contains("--jwt-secret"));
    assert!(fails(&["--jwt-public-key", "/nonexistent.pem"]).contains("--jwt-public-key"));
    let not_a_key = jwt::keys_dir().join("README.md");
    assert!(fails(&["--jwt-public-key", not_a_key.to_str().unwrap()]).contains("PEM"));
    assert!(fails(&["--public-symbols", "IBM"]).contains("--public-symbols"));
    let p384 = jwt::keys_dir().join("ec_p384_public.pem");
    assert!(fails(&["--jwt-public-key", p384.to_str().unwrap()]).contains("P-256"));
    let rsa1024 = jwt::keys_dir().join("rsa1024_public.pem");
    assert!(fails(&["--jwt-public-key", rsa1024.to_str().unwrap()]).contains("2048"));
    assert!(fails(&["--jwt-issuer", "x"]).contains("--jwt-issuer"));
    assert!(fails(&["--cors-origins", "*", "--engine", "minihttp"]).contains("native"));
    assert!(fails(&["--cors-origins", "example.com"]).contains("--cors-origins"));
}

#[test]
fn a_busy_stream_read_slowly_gets_nothing_changed_after_its_token_expired() {
    // The feed changes IBM and MSFT every millisecond or so: the stream's socket stays full,
    // so its waits never time out, yet it must end at exp.
    let s = TestServer::start_raw(&[
        "--listen",
        "127.0.0.1:0",
        "--symbols",
        "IBM,MSFT",
        "--feed-interval",
        "0.001",
        "--jwt-secret",
        jwt::SECRET,
    ]);
    let exp = now_secs() + 2;
    let t = token(json!({"symbols": "*", "exp": exp}));
    let mut c = SseClient::open(s.addr, &format!("symbols=IBM,MSFT&access_token={t}"), &[]);
    assert_eq!(c.status, 200);
    c.throttle(Duration::from_millis(2));
    let mut events = 0;
    loop {
        match c.next() {
            Some(Item::Event { data, .. }) => {
                events += 1;
                for q in data["quotes"].as_array().unwrap() {
                    let ts = q["ts"].as_u64().unwrap();
                    assert!(ts < exp * 1_000_000, "a change at {ts} after exp {exp}");
                }
            }
            Some(Item::Named { event, .. }) => {
                assert_eq!(event, "expired");
                break;
            }
            Some(_) => {}
            None => panic!("closed without an expired event after {events} events"),
        }
    }
    assert!(
        events > 10,
        "only {events} events: the feed did not keep the stream busy"
    );
}
