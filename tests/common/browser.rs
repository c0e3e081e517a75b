//! Browser-test helpers: Debian's `chromedriver` driving headless `/usr/bin/chromium` through the
//! W3C WebDriver protocol (`fantoccini`), DOM polling with deadlines, screenshots, and a recording
//! TCP proxy that shows the exact request heads a real browser sends.
//!
//! Used by `tests/browser.rs` (included there with `#[path]`, so the other test binaries do not
//! compile it).
#![allow(dead_code)]

use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const INSTALL_HINT: &str = "apt-get install chromium chromium-driver";

/// Browser tests run one at a time: a few Chromiums at once on a small CI machine would make the
/// timing checks (an update within 1 s) depend on the machine's load.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
static PROFILE_SEQ: AtomicUsize = AtomicUsize::new(0);

/// Whether the browser can run. When it cannot: panics if `COMET_REQUIRE_BROWSER=1` (CI), else
/// prints a loud skip line and returns false.
pub fn browser_available(test: &str) -> bool {
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var("COMET_REQUIRE_BROWSER").as_deref() == Ok("1") {
        panic!(
            "{test}: {} missing and COMET_REQUIRE_BROWSER=1: {INSTALL_HINT}",
            missing.join(" and ")
        );
    }
    // Straight to the stderr handle, not eprintln!, which the test harness captures (and shows
    // only for failing tests): a skip must be seen.
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED browser test {test}: chromium/chromedriver not installed ({INSTALL_HINT})"
    );
    false
}

/// A chromedriver process on a free loopback port; killed (with its browser) when dropped.
struct Driver {
    child: Child,
    port: u16,
}

impl Driver {
    fn start(log: &Path) -> Driver {
        for _ in 0..5 {
            let port = crate::common::free_port();
            let mut child = Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {CHROMEDRIVER}: {e}"));
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // exited: most likely the port was taken meanwhile; try another
                }
                if let Some(body) = http_text(port, "GET", "/status", "") {
                    if body.contains("\"ready\":true") {
                        return Driver { child, port };
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "chromedriver did not become ready; its log: {}",
            log.display()
        );
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Chromium is chromedriver's child: make sure it is gone too, by pid (chromedriver killed
        // with SIGKILL does not take its browser along, and the profile can only be removed once
        // Chromium stopped writing to it).
        let pid = self.child.id();
        let browsers: Vec<String> =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string)
                .collect();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let running = |p: &str| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .is_ok_and(|stat| !stat.rsplit(')').next().unwrap_or("").starts_with(" Z"))
        };
        for p in browsers.iter().filter(|p| running(p)) {
            let _ = Command::new("kill").args(["-TERM", p]).status();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while browsers.iter().any(|p| running(p)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// One HTTP/1.1 request with a real `Host: 127.0.0.1:port` (chromedriver refuses other hosts);
/// the body of a 200 answer, or None on any failure. chromedriver keeps the connection open
/// despite `Connection: close`, so the body is read by its Content-Length.
fn http_text(port: u16, method: &str, path: &str, body: &str) -> Option<String> {
    let s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    (&s).write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )
    .ok()?;
    let mut reader = BufReader::new(&s);
    let mut status = String::new();
    reader.read_line(&mut status).ok()?;
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        if line.trim().is_empty() {
            break;
        }
        if let Some((n, v)) = line.split_once(':') {
            if n.trim().eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    status
        .starts_with("HTTP/1.1 200")
        .then(|| String::from_utf8_lossy(&body).into_owned())
}

/// Where the test binary's target directory is: `CARGO_TARGET_DIR` when set, else the ancestor of
/// this executable that holds cargo's `CACHEDIR.TAG`, else `<manifest>/target`.
pub fn target_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return manifest.join(dir); // an absolute value replaces the manifest dir
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.ancestors()
                .find(|d| d.join("CACHEDIR.TAG").is_file())
                .map(Path::to_path_buf)
        })
        .unwrap_or_else(|| manifest.join("target"))
}

/// A headless Chromium session for one test. Dropping it deletes the session (closing Chromium),
/// stops chromedriver and removes the fresh profile directory.
pub struct Browser {
    pub client: Client,
    pub test: &'static str,
    session: Option<String>,
    driver: Option<Driver>,
    profile: PathBuf,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

impl Browser {
    /// Start chromedriver and a headless Chromium, or None when they are not installed (see
    /// [`browser_available`]).
    pub async fn start(test: &'static str) -> Option<Browser> {
        Self::start_with(test, &[], "normal").await
    }

    /// The same, with more Chromium switches (e.g. `--ignore-certificate-errors`) and a WebDriver
    /// page load strategy: "normal" (navigation commands return once the page has loaded) or
    /// "none" (they return at once, for a page that may never load).
    pub async fn start_with(
        test: &'static str,
        extra_args: &[&str],
        page_load_strategy: &str,
    ) -> Option<Browser> {
        if !browser_available(test) {
            return None;
        }
        let turn = ONE_AT_A_TIME.lock().await;
        let profile = std::env::temp_dir().join(format!(
            "comet-browser-{}-{}",
            std::process::id(),
            PROFILE_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&profile);
        std::fs::create_dir_all(profile.join("chromium")).expect("create the profile dir");
        let driver = Driver::start(&profile.join("chromedriver.log"));

        let mut args = vec![
            "--headless=new".to_string(),
            "--no-sandbox".to_string(), // tests run as root
            "--disable-gpu".to_string(),
            "--disable-dev-shm-usage".to_string(),
            "--disable-background-networking".to_string(),
            "--disable-component-update".to_string(),
            "--disable-sync".to_string(),
            "--no-first-run".to_string(),
            format!("--user-data-dir={}", profile.join("chromium").display()),
            "--window-size=1200,900".to_string(),
        ];
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let caps = json!({
            "browserName": "chrome",
            "pageLoadStrategy": page_load_strategy,
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
            "timeouts": { "pageLoad": 20_000, "script": 10_000 },
            // Keep the page's console, for failure messages (see `console`).
            "goog:loggingPrefs": { "browser": "ALL" },
        });
        let serde_json::Value::Object(caps) = caps else {
            unreachable!()
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(caps)
            .connect(&driver.url())
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "{test}: no WebDriver session ({e}); chromedriver log: {}",
                    profile.join("chromedriver.log").display()
                )
            });
        let session = client.session_id().await.ok().flatten();
        Some(Browser {
            client,
            test,
            session,
            driver: Some(driver),
            profile,
            _turn: turn,
        })
    }

    /// Navigate to `path` (starting with `/`) on `addr`.
    pub async fn open(&self, addr: SocketAddr, path: &str) {
        let url = format!("http://{addr}{path}");
        self.client
            .goto(&url)
            .await
            .unwrap_or_else(|e| panic!("{}: goto {url}: {e}", self.test));
    }

    /// Run a script in the page (`arguments[0..]` are `args`) and return its value; panics on error.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("{}: script failed ({e}): {script}", self.test))
    }

    /// The same, or None on an error (e.g. while a navigation replaces the document): for polling.
    pub async fn try_js(&self, script: &str, args: Vec<Value>) -> Option<Value> {
        self.client.execute(script, args).await.ok()
    }

    /// `textContent` of the first element matching `selector`, or None when there is none.
    pub async fn text(&self, selector: &str) -> Option<String> {
        let v = self
            .try_js(
                "const e = document.querySelector(arguments[0]); return e ? e.textContent : null;",
                vec![json!(selector)],
            )
            .await?;
        v.as_str().map(str::to_string)
    }

    /// An attribute of the first element matching `selector` (None: no element or no attribute).
    pub async fn attr(&self, selector: &str, name: &str) -> Option<String> {
        let v = self
            .try_js(
                "const e = document.querySelector(arguments[0]); return e ? e.getAttribute(arguments[1]) : null;",
                vec![json!(selector), json!(name)],
            )
            .await?;
        v.as_str().map(str::to_string)
    }

    /// Whether an element matches `selector`.
    pub async fn exists(&self, selector: &str) -> bool {
        self.try_js(
            "return document.querySelector(arguments[0]) !== null;",
            vec![json!(selector)],
        )
        .await
        .and_then(|v| v.as_bool())
        .unwrap_or(false)
    }

    /// The `data-symbol` of every quote row, in display order.
    pub async fn row_symbols(&self) -> Vec<String> {
        let v = self
            .try_js(
                "return Array.from(document.querySelectorAll('#quotes tr')).map(tr => tr.dataset.symbol);",
                vec![],
            )
            .await;
        v.and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default()
    }

    /// Poll `check` every 20 ms until it gives `Some`, for at most `timeout`. On timeout: save a
    /// `<test>-failed.png` screenshot and panic with `what` and the page's state.
    pub async fn wait_for<T, F, Fut>(&self, what: &str, timeout: Duration, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Option<T>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = check().await {
                return v;
            }
            if Instant::now() >= deadline {
                let shot = self.save_screenshot("failed").await;
                panic!(
                    "{}: timed out after {timeout:?} waiting for {what}\npage state: {}\nconsole:\n{}\nscreenshot: {}",
                    self.test,
                    self.state().await,
                    self.console(),
                    shot.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Wait until `#status` has `data-state="live"`.
    pub async fn wait_live(&self, timeout: Duration) {
        self.wait_for("#status[data-state=live]", timeout, || async {
            self.exists("#status[data-state=live]").await.then_some(())
        })
        .await
    }

    /// Wait until the row of `symbol` shows `price` (formatted with 2 decimals).
    pub async fn wait_price(&self, symbol: &str, price: f64, timeout: Duration) {
        let want = format!("{price:.2}");
        let sel = format!("tr[data-symbol={symbol}] .price");
        self.wait_for(&format!("{sel} = {want}"), timeout, || async {
            (self.text(&sel).await.as_deref() == Some(want.as_str())).then_some(())
        })
        .await
    }

    /// Wait until the rows show exactly `symbols`, in this order.
    pub async fn wait_rows(&self, symbols: &[&str], timeout: Duration) {
        self.wait_for(&format!("rows {symbols:?}"), timeout, || async {
            (self.row_symbols().await == symbols).then_some(())
        })
        .await
    }

    /// The page's `location.href` (None while no document answers).
    pub async fn href(&self) -> Option<String> {
        let v = self.try_js("return location.href;", vec![]).await?;
        v.as_str().map(str::to_string)
    }

    /// Reload as a user would: a plain reload (F5), or `hard`, bypassing the cache (Ctrl+Shift+R,
    /// which WebDriver has no command for: done through CDP). Waits until a new document (the
    /// page, or Chromium's error page) has replaced the old one.
    pub async fn reload(&self, hard: bool) {
        self.js("window.cometTestOldDocument = true;", vec![]).await;
        if hard {
            self.cdp("Page.reload", json!({ "ignoreCache": true }));
        } else {
            self.client
                .refresh()
                .await
                .unwrap_or_else(|e| panic!("{}: refresh: {e}", self.test));
        }
        let script = "return window.cometTestOldDocument === undefined && document.readyState !== 'loading';";
        self.wait_for("the reloaded document", Duration::from_secs(10), || async {
            let fresh = self.try_js(script, vec![]).await?.as_bool()?;
            fresh.then_some(())
        })
        .await
    }

    /// The browser console's entries since the last call (chromedriver's log endpoint), one per
    /// line: the page's console output, uncaught errors and failed loads.
    pub fn console(&self) -> String {
        let (Some(id), Some(driver)) = (&self.session, &self.driver) else {
            return String::new();
        };
        let path = format!("/session/{id}/se/log");
        let Some(body) = http_text(driver.port, "POST", &path, r#"{"type":"browser"}"#) else {
            return "(no console log)".to_string();
        };
        let entries: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        entries["value"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                format!(
                    "{} {}",
                    e["level"].as_str().unwrap_or("?"),
                    e["message"].as_str().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A one-line summary of the page for failure messages.
    pub async fn state(&self) -> String {
        let script = r#"
            const q = (s) => document.querySelector(s);
            return JSON.stringify({
              url: location.href,
              status: q('#status') && [q('#status').dataset.state, q('#status').textContent, q('#status').title],
              message: q('#message') && [q('#message').hidden, q('#message').textContent],
              rows: Array.from(document.querySelectorAll('#quotes tr')).map(tr =>
                Array.from(tr.children).map(td => td.textContent).join(' | ') + ' [' + tr.className + ']'),
              debug: window.cometDebug || null,
            });"#;
        match self.client.execute(script, vec![]).await {
            Ok(v) => v.as_str().unwrap_or_default().to_string(),
            Err(e) => format!("(no state: {e})"),
        }
    }

    /// Save a PNG of the window to `<target>/browser-screenshots/<test>[-suffix].png`.
    pub async fn save_screenshot(&self, suffix: &str) -> PathBuf {
        let dir = target_dir().join("browser-screenshots");
        std::fs::create_dir_all(&dir).expect("create the screenshot dir");
        let name = if suffix.is_empty() {
            format!("{}.png", self.test)
        } else {
            format!("{}-{suffix}.png", self.test)
        };
        let path = dir.join(name);
        match self.client.screenshot().await {
            Ok(png) => std::fs::write(&path, png).expect("write the screenshot"),
            Err(e) => eprintln!("{}: no screenshot: {e}", self.test),
        }
        path
    }

    /// Run a Chrome DevTools Protocol command through chromedriver's `goog/cdp/execute` (for what
    /// WebDriver has no command for, e.g. a reload that bypasses the cache).
    pub fn cdp(&self, cmd: &str, params: Value) -> Value {
        let id = self.session.as_deref().expect("a session id");
        let port = self.driver.as_ref().expect("a driver").port;
        let body = json!({ "cmd": cmd, "params": params }).to_string();
        let answer = http_text(
            port,
            "POST",
            &format!("/session/{id}/goog/cdp/execute"),
            &body,
        )
        .unwrap_or_else(|| panic!("{}: CDP {cmd} failed", self.test));
        serde_json::from_str(&answer).unwrap_or(Value::Null)
    }

    /// Type `text` into the element at `selector` with real key events.
    pub async fn type_into(&self, selector: &str, text: &str) {
        let el = self
            .client
            .find(Locator::Css(selector))
            .await
            .unwrap_or_else(|e| panic!("{}: find {selector}: {e}", self.test));
        el.clear().await.expect("clear");
        el.send_keys(text).await.expect("send_keys");
    }

    /// Click the element at `selector`.
    pub async fn click(&self, selector: &str) {
        self.client
            .find(Locator::Css(selector))
            .await
            .unwrap_or_else(|e| panic!("{}: find {selector}: {e}", self.test))
            .click()
            .await
            .unwrap_or_else(|e| panic!("{}: click {selector}: {e}", self.test));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(driver) = self.driver.take() {
            // DELETE the session synchronously (Drop cannot await): chromedriver quits Chromium.
            if let Some(id) = &self.session {
                let _ = http_text(driver.port, "DELETE", &format!("/session/{id}"), "");
            }
            drop(driver);
        }
        // Helper processes may still be finishing writes: retry briefly.
        for _ in 0..10 {
            if std::fs::remove_dir_all(&self.profile).is_ok() || !self.profile.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A TCP proxy in front of a server that keeps both directions of every connection, so a test
/// can show the exact request heads a browser sends and which of them were answered. (Requests
/// from the page are GETs without a body; answers carry a Content-Length.)
pub struct RecordingProxy {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<(Log, Log)>>>,
}

/// The bytes that went one way on one connection.
type Log = Arc<Mutex<Vec<u8>>>;

/// One request head as sent: the request line and the header lines.
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub line: String,
    pub headers: Vec<(String, String)>,
}

impl RequestHead {
    pub fn header(&self, name: &str) -> Option<&str> {
        crate::common::find_header(&self.headers, name)
    }

    /// The path of the request line.
    pub fn path(&self) -> &str {
        self.line.split_whitespace().nth(1).unwrap_or("")
    }
}

/// One connection through the proxy: the requests sent, in order, and the status of each answer
/// that came back (answers come in request order, so `statuses[i]` answers `requests[i]`).
#[derive(Debug, Clone)]
pub struct Connection {
    pub requests: Vec<RequestHead>,
    pub statuses: Vec<u16>,
}

impl RecordingProxy {
    pub fn start(upstream: SocketAddr) -> RecordingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<(Log, Log)>>> = Arc::default();
        let (stop2, conns2) = (Arc::clone(&stop), Arc::clone(&conns));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue; // upstream down: the browser sees the connection close
                };
                let (sent, answered): (Log, Log) = Default::default();
                conns2
                    .lock()
                    .unwrap()
                    .push((Arc::clone(&sent), Arc::clone(&answered)));
                pipe(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    sent,
                );
                pipe(server, client, answered);
            }
        });
        RecordingProxy { addr, stop, conns }
    }

    /// Every connection so far, in the order they were opened.
    pub fn connections(&self) -> Vec<Connection> {
        let conns = self.conns.lock().unwrap();
        conns
            .iter()
            .map(|(sent, answered)| Connection {
                requests: parse_requests(&sent.lock().unwrap()),
                statuses: parse_statuses(&answered.lock().unwrap()),
            })
            .collect()
    }

    /// Every request head seen so far (connection by connection, each in the order sent).
    pub fn requests(&self) -> Vec<RequestHead> {
        self.connections()
            .into_iter()
            .flat_map(|c| c.requests)
            .collect()
    }
}

impl Drop for RecordingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wake the accept loop
    }
}

/// Request heads in what a client sent (bodiless GETs, so heads follow each other).
fn parse_requests(bytes: &[u8]) -> Vec<RequestHead> {
    let text = String::from_utf8_lossy(bytes);
    text.split("\r\n\r\n")
        .filter(|h| !h.trim().is_empty())
        .map(|head| {
            let mut lines = head.split("\r\n");
            let line = lines.next().unwrap_or("").to_string();
            let headers = lines
                .filter_map(|l| l.split_once(':'))
                .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
                .collect();
            RequestHead { line, headers }
        })
        .collect()
}

/// The status of every complete answer in what a server sent (bodies skipped by Content-Length).
fn parse_statuses(bytes: &[u8]) -> Vec<u16> {
    let mut statuses = Vec::new();
    let mut rest = bytes;
    while let Some(end) = rest.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&rest[..end]);
        let Some(status) = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
        else {
            break;
        };
        let length: usize = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        let body_end = end + 4 + if status == 304 { 0 } else { length };
        if body_end > rest.len() {
            break; // still arriving
        }
        statuses.push(status);
        rest = &rest[body_end..];
    }
    statuses
}

/// Copy `from` to `to` on a thread, keeping a copy in `log`; on EOF or error, half-close `to`.
fn pipe(mut from: TcpStream, mut to: TcpStream, log: Log) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    log.lock().unwrap().extend_from_slice(&buf[..n]);
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(Shutdown::Write);
        let _ = from.shutdown(Shutdown::Read);
    });
}

/// A third-party web site for the cross-origin tests: serves one HTML page at `/` (and 404 for
/// anything else) from its own port, that is, its own origin. Stops when dropped.
pub struct StaticSite {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl StaticSite {
    pub fn serve(html: &str) -> StaticSite {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the site");
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = Arc::clone(&stop);
        let html = html.to_string();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let html = html.clone();
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    let mut line = String::new();
                    if reader.read_line(&mut line).is_err() {
                        return;
                    }
                    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                    loop {
                        let mut h = String::new();
                        match reader.read_line(&mut h) {
                            Ok(n) if n > 2 => {}
                            _ => break,
                        }
                    }
                    let (status, body) = if path == "/" || path.starts_with("/?") {
                        ("200 OK", html)
                    } else {
                        ("404 Not Found", "not found".to_string())
                    };
                    let _ = write!(
                        conn,
                        "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                });
            }
        });
        StaticSite { addr, stop }
    }

    /// The site's origin, as a browser writes it.
    pub fn origin(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for StaticSite {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
    }
}
