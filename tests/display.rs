//! Display-delay reports and the server clock pages measure them against, end to end: what is
//! taken into the histograms, what is refused and counted, and the per-connection limit.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{request, Conn, TestServer};

const GOOD: &[u8] = br#"{"samples":[{"arrival":1.2,"display":9.5},{"arrival":3,"display":20}]}"#;

fn report(s: &TestServer, body: &[u8]) -> common::Response {
    request(s.addr, "POST", "/api/display-delay", &[], body)
}

#[test]
fn the_time_endpoint_gives_the_server_clock_in_microseconds() {
    let s = TestServer::start(&[]);
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let r = s.get("/api/time");
    let after = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let now = r.json()["now"].as_u64().unwrap();
    assert!(before <= now && now <= after, "{before} {now} {after}");
    assert_eq!(r.json()["reports"], true);
}

#[test]
fn a_good_report_fills_both_histograms() {
    let s = TestServer::start(&[]);
    let r = report(&s, GOOD);
    assert_eq!(r.status, 204, "{}", r.text());
    let text = s.get("/metrics").text();
    for line in [
        "comet_display_delay_seconds_count 2",
        "comet_arrival_delay_seconds_count 2",
        "comet_display_delay_seconds_bucket{le=\"0.01\"} 1",
        "comet_display_delay_seconds_bucket{le=\"0.025\"} 2",
        "comet_arrival_delay_seconds_bucket{le=\"0.005\"} 2",
        "comet_display_reports_total{result=\"accepted\"} 1",
    ] {
        assert!(
            text.contains(&format!("{line}\n")),
            "no {line:?} in\n{text}"
        );
    }
}

#[test]
fn bad_reports_are_refused_counted_and_kept_out_of_the_histograms() {
    let s = TestServer::start(&[]);
    let many = format!(
        r#"{{"samples":[{}]}}"#,
        vec![r#"{"arrival":1,"display":2}"#; 101].join(",")
    );
    let bodies: Vec<&[u8]> = vec![
        br#"{"samples":[{"arrival":-5,"display":1}]}"#,
        br#"{"samples":[{"arrival":1,"display":100000000}]}"#,
        br#"{"samples":[{"arrival":1,"display":"2"}]}"#,
        br#"not json"#,
        many.as_bytes(),
    ];
    for body in &bodies {
        let r = report(&s, body);
        assert_eq!(r.status, 400, "{}", String::from_utf8_lossy(body));
        assert!(r.json()["error"].as_str().unwrap().contains("report"));
    }
    assert_eq!(
        s.metric("comet_display_reports_total{result=\"refused\"}"),
        bodies.len() as u64
    );
    assert_eq!(s.metric("comet_display_delay_seconds_count"), 0);
    assert_eq!(
        request(s.addr, "GET", "/api/display-delay", &[], b"").status,
        405
    );
}

#[test]
fn one_connection_reports_once_in_a_while() {
    let s = TestServer::start(&[]);
    let mut c = Conn::open(s.addr).unwrap();
    c.send("POST", "/api/display-delay", &[], GOOD, false)
        .unwrap();
    assert_eq!(c.read_response().unwrap().status, 204);
    c.send("POST", "/api/display-delay", &[], GOOD, false)
        .unwrap();
    let again = c.read_response().unwrap();
    assert_eq!(again.status, 429);
    assert_eq!(again.header("retry-after"), Some("10"));
    assert_eq!(
        s.metric("comet_display_reports_total{result=\"limited\"}"),
        1
    );
    assert_eq!(s.metric("comet_display_delay_seconds_count"), 2);
}

#[test]
fn reports_can_be_turned_off() {
    let s = TestServer::start(&["--no-display-reports"]);
    assert_eq!(s.get("/api/time").json()["reports"], false);
    assert_eq!(report(&s, GOOD).status, 404);
    assert_eq!(s.metric("comet_display_delay_seconds_count"), 0);
}

#[test]
fn with_a_jwt_key_only_a_reader_with_a_valid_token_reports() {
    use common::jwt::{hs256, now_secs, SECRET};
    let s = TestServer::start(&["--jwt-secret", SECRET]);
    assert_eq!(report(&s, GOOD).status, 401);
    let t = hs256(&serde_json::json!({"symbols": ["IBM"], "exp": now_secs() + 60}));
    let auth = format!("Bearer {t}");
    let r = request(
        s.addr,
        "POST",
        "/api/display-delay",
        &[("Authorization", &auth)],
        GOOD,
    );
    assert_eq!(r.status, 204, "{}", r.text());
}
