//! Test helpers: start the real server binary on a free port, and talk plain HTTP/1.1 to it.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod jwt;
pub mod sse;

/// The publish token `TestServer::start` gives a server unless the test names its own.
pub const PUBLISH_TOKEN: &str = "test-publish-token";

/// A loopback port free now, for a process that binds it later (a Redis, a chromedriver, an
/// nginx), perhaps again after a restart. Taken below Linux's ephemeral range (32768-60999), so
/// that no `:0` listener or outgoing connection of the parallel tests is handed it meanwhile.
pub fn free_port() -> u16 {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    for _ in 0..1000 {
        let port = rng.gen_range(20_000..32_768);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000-32767");
}

/// A server process started for one test; killed when dropped.
pub struct TestServer {
    pub child: Child,
    pub addr: SocketAddr,
    /// The `--publish-token` it was started with: `post` and `publish` send it.
    pub publish_token: Option<String>,
    /// Everything it wrote to stderr so far (also echoed to the test's stderr).
    stderr: Arc<Mutex<String>>,
}

impl TestServer {
    /// Start `comet-quotes --listen 127.0.0.1:0 --no-feed --seed 1 --publish-token
    /// test-publish-token <extra>` and wait until it answers. The random feed is off so prices
    /// change only when a test publishes; `extra` may name another `--publish-token`.
    pub fn start(extra: &[&str]) -> TestServer {
        Self::start_at("127.0.0.1:0", extra)
    }

    /// The same on the address `listen` (a server restarted on the port of one that stopped).
    pub fn start_at(listen: &str, extra: &[&str]) -> TestServer {
        let mut args = vec!["--listen", listen, "--no-feed", "--seed", "1"];
        if !extra.contains(&"--publish-token") {
            args.extend_from_slice(&["--publish-token", PUBLISH_TOKEN]);
        }
        args.extend_from_slice(extra);
        Self::start_raw(&args)
    }

    /// Start with exactly these arguments (must include a `--listen`).
    pub fn start_raw(args: &[&str]) -> TestServer {
        Self::start_env(args, &[("RUST_LOG", "warn")])
    }

    /// Start with exactly these arguments and environment variables, and wait until it answers.
    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> TestServer {
        let server = Self::spawn(args, env);
        server.wait_until_ready();
        server
    }

    /// Start with exactly these arguments and environment variables; return once it listens,
    /// without waiting for it to answer.
    pub fn spawn(args: &[&str], env: &[(&str, &str)]) -> TestServer {
        Self::spawn_limited(args, env, None)
    }

    /// Start with these arguments under an open-file limit (soft and hard) of `nofile`, as
    /// `ulimit -n` would set it, and wait until it answers.
    pub fn start_with_nofile(args: &[&str], nofile: u64) -> TestServer {
        let server = Self::spawn_limited(args, &[("RUST_LOG", "warn")], Some(nofile));
        server.wait_until_ready();
        server
    }

    fn spawn_limited(args: &[&str], env: &[(&str, &str)], nofile: Option<u64>) -> TestServer {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_comet-quotes"));
        if let Some(n) = nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: only setrlimit, async-signal-safe, between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: n,
                        rlim_max: n,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn comet-quotes");
        let stderr = Arc::new(Mutex::new(String::new()));
        let pipe = child.stderr.take().expect("piped stderr");
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                eprintln!("{line}");
                let mut all = sink.lock().unwrap();
                all.push_str(&line);
                all.push('\n');
            }
        });
        // The server prints its address once it is bound; read that line.
        let stdout = child.stdout.take().expect("piped stdout");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("read the listening line");
        let addr: SocketAddr = line
            .trim()
            .rsplit("http://")
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        let publish_token = args
            .iter()
            .position(|a| *a == "--publish-token")
            .and_then(|i| args.get(i + 1))
            .map(|t| t.to_string());
        TestServer {
            child,
            addr,
            publish_token,
            stderr,
        }
    }

    /// What the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Wait (bounded) until the server's stderr contains `text`; returns all of it.
    pub fn wait_for_stderr(&self, text: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let all = self.stderr();
            if all.contains(text) {
                return all;
            }
            assert!(
                Instant::now() < deadline,
                "{text:?} not on stderr after {within:?}; it has:\n{all}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(r) = try_request(self.addr, "GET", "/api/symbols", &[], b"") {
                if r.status == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("server on {} did not answer within 10 s", self.addr);
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn get(&self, path: &str) -> Response {
        request(self.addr, "GET", path, &[], b"")
    }

    /// POST with the server's publish token, if it has one.
    pub fn post(&self, path: &str, body: &str) -> Response {
        let auth = self.publish_token.as_ref().map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> =
            auth.iter().map(|a| ("Authorization", a.as_str())).collect();
        request(self.addr, "POST", path, &headers, body.as_bytes())
    }

    /// Open a connection and send `GET /api/poll?{query}` on it (with `Connection: close`);
    /// the answer is read later, from the returned connection.
    pub fn send_poll(&self, query: &str) -> Conn {
        let mut c = Conn::open(self.addr).expect("connect");
        c.send("GET", &format!("/api/poll?{query}"), &[], b"", true)
            .expect("send poll");
        c
    }

    /// Open a keep-alive connection and send `GET /api/poll?{query}` on it; the answer is read
    /// later, and the connection can carry more requests.
    pub fn send_poll_keep_alive(&self, query: &str) -> Conn {
        let mut c = Conn::open(self.addr).expect("connect");
        c.send("GET", &format!("/api/poll?{query}"), &[], b"", false)
            .expect("send poll");
        c
    }

    /// Publish one price; returns the new seq.
    pub fn publish(&self, symbol: &str, price: f64) -> u64 {
        let r = self.post(
            "/api/quotes",
            &serde_json::json!({ "symbol": symbol, "price": price }).to_string(),
        );
        assert_eq!(r.status, 200, "publish failed: {}", r.text());
        r.json()["seq"].as_u64().expect("seq")
    }

    /// The current cursor, from a snapshot of `symbols`.
    pub fn cursor(&self, symbols: &str) -> u64 {
        self.get(&format!("/api/quotes?symbols={symbols}")).json()["cursor"]
            .as_u64()
            .expect("cursor")
    }

    /// A value from `/metrics`, by its full series name.
    pub fn metric(&self, series: &str) -> u64 {
        let text = self.get("/metrics").text();
        text.lines()
            .find_map(|l| {
                l.strip_prefix(series)?
                    .strip_prefix(' ')?
                    .trim()
                    .parse()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no metric {series} in:\n{text}"))
    }

    /// Wait (bounded) until `/metrics` shows `series` at `value`.
    pub fn wait_for_metric(&self, series: &str, value: u64) {
        self.wait_for_metric_within(series, value, Duration::from_secs(10));
    }

    /// Wait until `/metrics` shows `series` at `value`; fail if it takes longer than `within`.
    pub fn wait_for_metric_within(&self, series: &str, value: u64, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let now = self.metric(series);
            if now == value {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{series} is {now}, not {value}, after {within:?}"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Send SIGTERM and wait (bounded) for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The value of header `name` (case-insensitive) in a parsed header list.
pub fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// Symbol -> price of every quote in a snapshot or poll answer.
    pub fn prices(&self) -> Vec<(String, f64)> {
        quote_prices(&self.json())
    }
}

/// Symbol -> price of every quote in a `{"cursor":N,"quotes":[...]}` answer or stream event.
pub fn quote_prices(answer: &Value) -> Vec<(String, f64)> {
    answer["quotes"]
        .as_array()
        .expect("quotes array")
        .iter()
        .map(|q| {
            (
                q["symbol"].as_str().unwrap().to_string(),
                q["price"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// One request on a fresh connection (`Connection: close`); panics on I/O errors.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    try_request(addr, method, path, headers, body)
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

pub fn try_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut conn = Conn::open(addr)?;
    conn.send(method, path, headers, body, true)?;
    conn.read_response()
}

/// A keep-alive client connection: send now, read the answer later (for held polls).
pub struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Conn {
            reader: BufReader::new(stream),
        })
    }

    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        close: bool,
    ) -> std::io::Result<()> {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
        for (n, v) in headers {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        if !body.is_empty() {
            req.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        if close {
            req.push_str("Connection: close\r\n");
        }
        req.push_str("\r\n");
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.reader.get_mut().write_all(&bytes)
    }

    /// Write raw bytes (for malformed requests).
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.reader.get_mut().write_all(bytes)
    }

    pub fn read_response(&mut self) -> std::io::Result<Response> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed without an answer",
            ));
        }
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let mut headers = Vec::new();
        let mut length = 0usize;
        loop {
            line.clear();
            self.reader.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((n, v)) = l.split_once(':') {
                if n.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
                headers.push((n.trim().to_string(), v.trim().to_string()));
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        Ok(Response {
            status,
            headers,
            body,
        })
    }

    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    pub fn set_read_timeout(&self, t: Duration) {
        self.reader.get_ref().set_read_timeout(Some(t)).unwrap();
    }
}

/// Open file descriptors of a process, from /proc/PID/fd.
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// CPU time a process has used (user + system), in seconds, from /proc/PID/stat.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read stat");
    // Fields after the command name (which may hold spaces) start at its closing parenthesis.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    // SAFETY: sysconf with a valid name.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}

/// Threads of a process, from /proc/PID/status.
pub fn thread_count(pid: u32) -> usize {
    proc_status_field(pid, "Threads:")
}

/// Resident memory of a process in KiB, from /proc/PID/status.
pub fn rss_kib(pid: u32) -> usize {
    proc_status_field(pid, "VmRSS:")
}

fn proc_status_field(pid: u32, field: &str) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}
