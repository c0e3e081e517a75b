//! The deployment in `deploy/`, tried for real: `deploy/try-https.sh` runs nginx with the shipped
//! `deploy/nginx.conf` and a self-signed certificate in front of a test node, and headless
//! Chromium opens 8 windows of the quotes page through it over HTTPS. They all talk HTTP/2, all go
//! live, all get a published change; publishing and `/metrics` are refused by nginx. And the
//! reason for the recipe: the same 8 pages over HTTP/1.1 straight to the node do not all get it,
//! since a browser opens at most 6 connections per origin and each live page holds one.
//!
//! Without nginx or openssl these tests print a SKIPPED line and pass, unless
//! `COMET_REQUIRE_NGINX=1` (CI); without Chromium, likewise unless `COMET_REQUIRE_BROWSER=1`.

#[path = "common/browser.rs"]
mod browser;
mod common;
#[path = "common/tools.rs"]
mod tools;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use browser::{Browser, RecordingProxy};
use common::TestServer;
use fantoccini::wd::WindowHandle;
use serde_json::{json, Value};
use tools::Tool;

/// Pages open at once: more than the 6 connections a browser opens to one HTTP/1.1 origin.
const PAGES: usize = 8;
/// Page start-up, with 8 pages and nginx on a loaded 2-core machine: generous.
const LOAD: Duration = Duration::from_secs(20);
/// Headless Chromium may throttle or park pages that are not in front; every window here must
/// keep running, so that "not live" can only mean "no connection".
const KEEP_RUNNING: [&str; 3] = [
    "--disable-background-timer-throttling",
    "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
];

/// Whether nginx and openssl are there (else the test is skipped, or fails in CI).
fn nginx_available(test: &str) -> bool {
    tools::require(
        test,
        &[Tool::on_path("nginx"), Tool::on_path("openssl")],
        "COMET_REQUIRE_NGINX",
        "apt-get install nginx-light openssl",
    )
    .is_some()
}

/// `deploy/try-https.sh PORT http://NODE`, running; stopped (SIGTERM, as Ctrl-C would) when
/// dropped.
struct TryHttps {
    child: Child,
    port: u16,
    /// Where the script keeps the certificate, nginx's config, pid and logs.
    run_dir: PathBuf,
}

impl TryHttps {
    fn start(node: SocketAddr) -> TryHttps {
        let mut failures = Vec::new();
        // A free port is only free until someone takes it: try another if nginx could not bind.
        for _ in 0..3 {
            match Self::try_start(common::free_port(), node) {
                Ok(t) => return t,
                Err(why) if why.contains("Address already in use") => failures.push(why),
                Err(why) => panic!("deploy/try-https.sh failed: {why}"),
            }
        }
        panic!("deploy/try-https.sh found no free port: {failures:#?}");
    }

    fn try_start(port: u16, node: SocketAddr) -> Result<TryHttps, String> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/try-https.sh");
        let mut child = Command::new("bash")
            .arg(&script)
            .arg(port.to_string())
            .arg(format!("http://{node}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", script.display()));
        let stderr = child.stderr.take().expect("piped stderr");
        let stderr: JoinHandle<String> = std::thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("try-https.sh: {line}");
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                eprintln!("try-https.sh: {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // The script prints the URL once nginx listens, then where its files are.
        let url = format!("https://127.0.0.1:{port}/");
        let (mut listening, mut run_dir) = (false, None);
        while !listening || run_dir.is_none() {
            match lines.recv_timeout(LOAD) {
                Ok(line) => {
                    listening |= line.contains(&url);
                    if let Some(dir) = line.split("its files in ").nth(1) {
                        run_dir = dir.split(';').next().map(PathBuf::from);
                    }
                }
                Err(e) => {
                    let _ = child.kill();
                    let status = child.wait();
                    let stderr = stderr.join().unwrap_or_default();
                    return Err(format!(
                        "no {url} from it ({e}; {status:?}); its stderr:\n{stderr}"
                    ));
                }
            }
        }
        let run_dir = run_dir.expect("the run dir");
        Ok(TryHttps {
            child,
            port,
            run_dir,
        })
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    /// SIGTERM, as Ctrl-C would stop it, and wait (bounded) for it to exit; None if it did not
    /// within 10 s (then it is killed).
    fn stop(&mut self) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for TryHttps {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The window that is in front now, and `n - 1` new ones (windows, not tabs: each page is in
/// front in its own).
async fn windows(b: &Browser, n: usize) -> Vec<WindowHandle> {
    let mut all = vec![b.client.window().await.expect("the first window")];
    for _ in 1..n {
        let w = b.client.new_window(false).await.expect("a new window");
        all.push(w.handle);
    }
    all
}

async fn switch(b: &Browser, w: &WindowHandle) {
    b.client
        .switch_to_window(w.clone())
        .await
        .unwrap_or_else(|e| panic!("{}: switch to {w:?}: {e}", b.test));
}

async fn goto(b: &Browser, url: &str) {
    b.client
        .goto(url)
        .await
        .unwrap_or_else(|e| panic!("{}: goto {url}: {e}", b.test));
}

/// The protocol of the page's own load and of every `/api/` request it has finished, after one
/// more data request of the test's (`/api/symbols`) has finished too.
async fn protocols(b: &Browser) -> Value {
    b.js(
        "return fetch('/api/symbols', { cache: 'no-store' }).then((r) => r.text()).then(() => true);",
        vec![],
    )
    .await;
    let script = r#"
        const api = performance.getEntriesByType('resource')
          .map((e) => [new URL(e.name).pathname, e.nextHopProtocol])
          .filter(([path]) => path.startsWith('/api/'));
        if (!api.some(([path]) => path === '/api/symbols')) return null;
        return {
          scheme: location.protocol,
          navigation: performance.getEntriesByType('navigation')[0].nextHopProtocol,
          api,
        };"#;
    b.wait_for(
        "the resource timing entry of /api/symbols",
        LOAD,
        || async { b.try_js(script, vec![]).await.filter(|v| !v.is_null()) },
    )
    .await
}

#[tokio::test]
async fn eight_pages_over_https_and_http2_through_the_shipped_nginx_config_all_get_a_change() {
    const TEST: &str =
        "eight_pages_over_https_and_http2_through_the_shipped_nginx_config_all_get_a_change";
    if !nginx_available(TEST) {
        return;
    }
    let mut args = vec!["--ignore-certificate-errors"]; // the script's self-signed certificate
    args.extend(KEEP_RUNNING);
    let Some(b) = Browser::start_with(TEST, &args, "normal").await else {
        return;
    };
    let s = TestServer::start(&[]);
    let mut https = TryHttps::start(s.addr);
    let page = https.url("/?symbols=IBM");

    let windows = windows(&b, PAGES).await;
    for (i, w) in windows.iter().enumerate() {
        switch(&b, w).await;
        goto(&b, &page).await;
        b.wait_live(LOAD).await;
        let seen = protocols(&b).await;
        eprintln!("page {}: {seen}", i + 1);
        assert_eq!(seen["scheme"], "https:", "page {}: {seen}", i + 1);
        assert_eq!(seen["navigation"], "h2", "page {}: {seen}", i + 1);
        let api = seen["api"].as_array().expect("api entries");
        assert!(
            api.iter().all(|e| e[1] == "h2"),
            "page {}: a data request not over HTTP/2: {seen}",
            i + 1
        );
    }
    // Every page's stream is through nginx and waits at the node.
    s.wait_for_metric("comet_streams_waiting", PAGES as u64);

    let price = 123.45;
    s.publish("IBM", price);
    for w in &windows {
        switch(&b, w).await;
        b.wait_price("IBM", price, LOAD).await;
    }
    b.save_screenshot("").await;

    // What the world may not do through nginx, asked from a page: publish (with the right token,
    // which the node itself takes) and read /metrics. Its reads and the display-delay reports
    // pass.
    let script = r#"
        const answer = (r) => r.text().then((body) => ({ status: r.status, body }));
        return Promise.all([
          fetch('/api/quotes', {
            method: 'POST',
            headers: { Authorization: 'Bearer ' + arguments[0], 'Content-Type': 'application/json' },
            body: JSON.stringify({ symbol: 'IBM', price: 1 }),
          }).then(answer),
          fetch('/metrics').then(answer),
          fetch('/api/display-delay', {
            method: 'POST',
            headers: { 'Content-Type': 'application/json' },
            body: '{"samples":[{"arrival":1,"display":2}]}',
          }).then(answer),
          fetch('/api/quotes?symbols=IBM').then(answer),
        ]);"#;
    let answers = b.js(script, vec![json!(common::PUBLISH_TOKEN)]).await;
    eprintln!("through nginx: {answers}");
    let [publish, metrics, report, read] = [0, 1, 2, 3].map(|i| answers[i].clone());
    for (what, a) in [("POST /api/quotes", &publish), ("GET /metrics", &metrics)] {
        assert_eq!(a["status"], 403, "{what}: {a}");
        // nginx's own refusal page, not the node's JSON.
        assert!(
            a["body"].as_str().unwrap_or("").contains("nginx"),
            "{what}: {a}"
        );
    }
    assert_eq!(report["status"], 204, "POST /api/display-delay: {report}");
    assert_eq!(read["status"], 200, "GET /api/quotes: {read}");
    // The refused publish never reached the node.
    assert_eq!(s.metric("comet_quotes_published_total"), 1);
    let now = s.get("/api/quotes?symbols=IBM").prices();
    assert_eq!(now, [("IBM".to_string(), price)]);

    // Ctrl-C (SIGTERM) stops nginx and leaves nothing behind.
    let nginx_pid = std::fs::read_to_string(https.run_dir.join("nginx.pid"))
        .expect("nginx's pid file")
        .trim()
        .to_string();
    let stopped = https.stop();
    assert!(
        stopped.is_some(),
        "try-https.sh still ran 10 s after SIGTERM"
    );
    assert!(!https.run_dir.exists(), "{:?} is left", https.run_dir);
    assert!(
        !Path::new(&format!("/proc/{nginx_pid}")).exists(),
        "nginx {nginx_pid} still runs"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", https.port)).is_err(),
        "port {} still takes connections",
        https.port
    );
}

#[tokio::test]
async fn eight_pages_over_http1_straight_to_the_node_stall_past_six() {
    const TEST: &str = "eight_pages_over_http1_straight_to_the_node_stall_past_six";
    // Navigation must not wait for a page to load: the 7th will not while 6 are live.
    let Some(b) = Browser::start_with(TEST, &KEEP_RUNNING, "none").await else {
        return;
    };
    let s = TestServer::start(&[]);
    // A TCP recorder in front of the node shows what reached it. (A script in a window whose
    // navigation is stalled may never return, so the stalled windows are not asked.)
    let proxy = RecordingProxy::start(s.addr);
    let page = format!("http://{}/?symbols=IBM", proxy.addr);
    let page_loads = || {
        proxy
            .requests()
            .iter()
            .filter(|r| r.path() == "/?symbols=IBM")
            .count()
    };

    // One page after the other, each live (its stream held at the node) before the next starts:
    // the 6th loads through the one connection the 5 before it leave.
    let windows = windows(&b, PAGES).await;
    for (i, w) in windows[..6].iter().enumerate() {
        switch(&b, w).await;
        goto(&b, &page).await;
        b.wait_live(LOAD).await;
        s.wait_for_metric("comet_streams_waiting", i as u64 + 1);
    }
    for w in &windows[6..] {
        switch(&b, w).await;
        goto(&b, &page).await;
    }

    let price = 123.45;
    s.publish("IBM", price);
    for w in &windows[..6] {
        switch(&b, w).await;
        b.wait_price("IBM", price, LOAD).await;
    }
    // The 6 have it; the 7th and 8th have not even been served the page: their request for it
    // waits for one of the 6 connections, which the live pages hold.
    assert_eq!(
        page_loads(),
        6,
        "pages requested from the node: {:#?}",
        proxy.requests()
    );
    assert_eq!(s.metric("comet_streams_open"), 6);

    // Close two live pages: their connections go to the two waiting pages, which load, go live
    // and show the change.
    for w in &windows[..2] {
        switch(&b, w).await;
        b.client.close_window().await.expect("close a window");
    }
    for w in &windows[6..] {
        switch(&b, w).await;
        b.wait_live(LOAD).await;
        b.wait_price("IBM", price, LOAD).await;
    }
    assert_eq!(page_loads(), PAGES);
    s.wait_for_metric("comet_streams_open", 6);
    b.save_screenshot("").await;
}
