//! `/metrics` as Prometheus's own checker sees it: `promtool check metrics` on the real server's
//! text, after traffic that puts values into every family (histograms included), must report no
//! error and no lint warning.
//!
//! promtool is found at the path in env `PROMTOOL`, else on PATH. Without it the tests print a
//! SKIPPED line and pass, unless `COMET_REQUIRE_PROMTOOL=1` (CI, which unpacks it from Debian's
//! `prometheus` package without installing the server).

mod common;
#[path = "common/tools.rs"]
mod tools;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::sse::SseClient;
use common::{request, TestServer};
use tools::Tool;

const PROMTOOL: Tool = Tool {
    name: "promtool",
    override_var: Some("PROMTOOL"),
};

fn promtool(test: &str) -> Option<PathBuf> {
    let found = tools::require(
        test,
        &[PROMTOOL],
        "COMET_REQUIRE_PROMTOOL",
        "apt-get download prometheus && dpkg -x prometheus_*.deb DIR, then PROMTOOL=DIR/usr/bin/promtool",
    )?;
    found.into_iter().next()
}

/// What `promtool check metrics` says about `text` (stdout and stderr), and whether it passed.
fn check_metrics(promtool: &Path, text: &str) -> (bool, String) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", promtool.display()));
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes())
        .expect("write the metrics to promtool");
    let out = child.wait_with_output().expect("promtool's output");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A lint warning alone exits 3; and whatever it prints is a problem it found.
    (out.status.success() && said.trim().is_empty(), said)
}

#[test]
fn promtool_finds_nothing_wrong_with_the_metrics_after_traffic_of_every_kind() {
    let Some(promtool) =
        promtool("promtool_finds_nothing_wrong_with_the_metrics_after_traffic_of_every_kind")
    else {
        return;
    };
    let s = TestServer::start(&[]);

    // A snapshot, a publish, and a held poll answered by a change.
    let cursor = s.cursor("IBM");
    let mut held = s.send_poll(&format!("symbols=IBM&cursor={cursor}"));
    s.wait_for_metric("comet_polls_waiting", 1);
    s.publish("IBM", 101.5);
    assert_eq!(held.read_response().expect("poll answer").status, 200);
    // A poll answered at its timeout, and one whose cursor is ahead of the server (resync).
    let cursor = s.cursor("IBM");
    let r = s.get(&format!(
        "/api/poll?symbols=IBM&cursor={cursor}&timeout=0.05"
    ));
    assert_eq!(r.status, 200);
    let r = s.get(&format!("/api/poll?symbols=IBM&cursor={}", u64::MAX / 2));
    assert_eq!(r.status, 200);

    // A stream that gets its snapshot and a change, then whose client leaves.
    let mut stream = SseClient::open(s.addr, "symbols=IBM", &[]);
    assert_eq!(stream.status, 200);
    stream.next_event();
    s.wait_for_metric("comet_streams_waiting", 1);
    s.publish("IBM", 102.5);
    stream.next_event();
    drop(stream);
    s.wait_for_metric("comet_streams_ended_total{reason=\"client_gone\"}", 1);

    // A display-delay report (into both histograms), a publish without a credential and a
    // request for an unknown symbol (a client error).
    for (path, body, status) in [
        (
            "/api/display-delay",
            r#"{"samples":[{"arrival":1,"display":2}]}"#,
            204,
        ),
        ("/api/quotes", r#"{"symbol":"IBM","price":1}"#, 401),
    ] {
        let r = request(s.addr, "POST", path, &[], body.as_bytes());
        assert_eq!(r.status, status, "POST {path}: {}", r.text());
    }
    assert_eq!(s.get("/api/quotes?symbols=NOPE").status, 404);

    let text = s.get("/metrics").text();
    // The traffic is in the text promtool reads (else this test would check empty families).
    for series in [
        "comet_polls_answered_total{reason=\"change\"} 1",
        "comet_polls_answered_total{reason=\"timeout\"} 1",
        "comet_polls_answered_total{reason=\"resync\"} 1",
        "comet_streams_ended_total{reason=\"client_gone\"} 1",
        "comet_auth_refused_total{reason=\"missing\"} 1",
        "comet_display_reports_total{result=\"accepted\"} 1",
        "comet_display_delay_seconds_count 1",
        "comet_arrival_delay_seconds_count 1",
        "comet_quotes_published_total 2",
    ] {
        assert!(
            text.contains(&format!("{series}\n")),
            "no {series:?} in\n{text}"
        );
    }
    let (ok, said) = check_metrics(&promtool, &text);
    assert!(
        ok,
        "promtool check metrics found problems:\n{said}\nin:\n{text}"
    );
}

/// The check above can fail: promtool, as this test runs it, reports a lint problem (a counter
/// without `_total`, without help) and a malformed line.
#[test]
fn promtool_as_run_here_reports_lint_problems_and_bad_lines() {
    let Some(promtool) = promtool("promtool_as_run_here_reports_lint_problems_and_bad_lines")
    else {
        return;
    };
    let (ok, said) = check_metrics(&promtool, "# TYPE comet_things counter\ncomet_things 1\n");
    assert!(!ok, "a counter without _total passed: {said:?}");
    assert!(said.contains("_total"), "{said}");
    let (ok, said) = check_metrics(&promtool, "comet_broken{ 1\n");
    assert!(!ok, "a malformed line passed: {said:?}");
}
