//! The change-to-display delay, measured where it ends: N real headless Chromium pages show the
//! quotes page (which reports its display delays by default), one price change a second is
//! published for D seconds, and the server's own histograms (`comet_display_delay_seconds`, and
//! `comet_arrival_delay_seconds` for the same updates) give the p50 and p99 of what painting adds
//! to arriving. Each page is its own browser (its own profile): one browser would hold all pages'
//! streams on its six connections per host, and they would report over a shared pool.
//!
//! Drives Debian's chromedriver and chromium through WebDriver (fantoccini), as the browser tests
//! do. Loopback only; bounded in pages, duration and time.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use comet_bench::http;
use comet_bench::publish::Conn;
use fantoccini::{Client, ClientBuilder};
use serde_json::{json, Value};

#[derive(Parser, Debug)]
#[command(
    name = "display",
    about = "Change-to-display delay: N headless Chromium pages, one change a second, the server's histograms"
)]
struct Cli {
    /// The comet-quotes server (127.0.0.0/8 only), started with its defaults for reports.
    #[arg(long, default_value = "http://127.0.0.1:8090")]
    url: String,
    /// Pages (each its own headless Chromium).
    #[arg(long, default_value_t = 20)]
    pages: usize,
    /// Seconds of publishing, one change a second.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    /// The symbol the pages show and the changes move.
    #[arg(long, default_value = "IBM")]
    symbol: String,
    /// Bearer token of the publishes (the server's --publish-token).
    #[arg(long, env = "COMET_PUBLISH_TOKEN", hide_env_values = true)]
    publish_token: String,
    #[arg(long, default_value = "/usr/bin/chromedriver")]
    chromedriver: String,
    #[arg(long, default_value = "/usr/bin/chromium")]
    chromium: String,
    /// Group and label of the record appended to the results file.
    #[arg(long, default_value = "")]
    group: String,
    #[arg(long, default_value = "display")]
    label: String,
    /// Results file (JSON lines). Default bench/results/runs.jsonl.
    #[arg(long, default_value = "bench/results/runs.jsonl")]
    results: String,
    #[arg(long)]
    no_record: bool,
}

/// chromedriver on a free loopback port; killed (with its browsers) when dropped.
struct Driver(Child, u16);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_driver(path: &str) -> Result<Driver, String> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let child = Command::new(path)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{path}: {e} (apt-get install chromium chromium-driver)"))?;
    let driver = Driver(child, port);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return Err("chromedriver did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(driver)
}

async fn browser(cli: &Cli, driver: &Driver, n: usize) -> Result<Client, String> {
    let profile = std::env::temp_dir().join(format!("comet-display-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&profile);
    let caps = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": cli.chromium,
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--no-first-run",
                "--window-size=1000,700",
                format!("--user-data-dir={}", profile.display()),
            ],
        },
    });
    let Value::Object(caps) = caps else {
        unreachable!()
    };
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.1))
        .await
        .map_err(|e| format!("page {n}: no WebDriver session: {e}"))
}

/// `/metrics` of the server, as text.
fn metrics(conn: &mut Conn) -> Result<String, String> {
    let r = conn.get("/metrics").map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&r.body).into_owned())
}

/// A histogram's cumulative bucket counts (`le` -> count) and its count, from the metrics text.
fn histogram(text: &str, name: &str) -> (Vec<(f64, f64)>, f64) {
    let mut buckets = Vec::new();
    let mut count = 0.0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(&format!("{name}_bucket{{le=\"")) {
            let (le, value) = rest.split_once("\"} ").unwrap_or(("", "0"));
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::NAN)
            };
            buckets.push((le, value.trim().parse().unwrap_or(0.0)));
        } else if let Some(v) = line.strip_prefix(&format!("{name}_count ")) {
            count = v.trim().parse().unwrap_or(0.0);
        }
    }
    (buckets, count)
}

/// The q-quantile of the observations between two readings of one histogram, interpolated
/// linearly inside its bucket (as Prometheus's histogram_quantile does), in ms.
fn quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> Option<f64> {
    let diff: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, n)| {
            let was = before
                .iter()
                .find(|(l, _)| l == le)
                .map_or(0.0, |(_, n)| *n);
            (*le, n - was)
        })
        .collect();
    let total = diff.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, n) in &diff {
        if n >= rank {
            if le.is_infinite() {
                return Some(lower.0 * 1000.0);
            }
            let within = if n > lower.1 {
                (rank - lower.1) / (n - lower.1)
            } else {
                0.0
            };
            return Some((lower.0 + (le - lower.0) * within) * 1000.0);
        }
        lower = (le, n);
    }
    None
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(&cli).await {
        eprintln!("display: {e}");
        std::process::exit(1);
    }
}

async fn run(cli: &Cli) -> Result<(), String> {
    let target = http::parse_loopback_url(&cli.url)?;
    if cli.pages == 0 || cli.pages > 50 || cli.duration > 600 {
        return Err("at most 50 pages and 600 s".into());
    }
    let driver = start_driver(&cli.chromedriver)?;
    let page_url = format!("http://{}/?symbols={}", target.host, cli.symbol);
    let mut pages = Vec::new();
    for n in 0..cli.pages {
        let b = browser(cli, &driver, n).await?;
        b.goto(&page_url).await.map_err(|e| e.to_string())?;
        pages.push(b);
    }
    // Every page live: its stream is open and waiting.
    let deadline = Instant::now() + Duration::from_secs(60);
    for (n, b) in pages.iter().enumerate() {
        loop {
            let live = b
                .execute(
                    "return !!document.querySelector('#status[data-state=live]');",
                    vec![],
                )
                .await
                .ok()
                .and_then(|v| v.as_bool())
                .unwrap_or(false);
            if live {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("page {n} never went live"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    eprintln!(
        "display: {} pages live; publishing one change a second for {} s",
        cli.pages, cli.duration
    );
    let mut conn = Conn::new(&target);
    let before = metrics(&mut conn)?;
    let start = Instant::now();
    for i in 0..cli.duration {
        let at = start + Duration::from_secs(i);
        tokio::time::sleep(at.saturating_duration_since(Instant::now())).await;
        let price = 100.0 + (i % 50) as f64 / 4.0;
        let body = format!("{{\"symbol\":\"{}\",\"price\":{price:.2}}}", cli.symbol);
        let req = format!(
            "POST /api/quotes HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            target.host,
            cli.publish_token,
            body.len()
        );
        let r = conn.exchange(req.as_bytes()).map_err(|e| e.to_string())?;
        if r.status != 200 {
            return Err(format!("publish answered {}", r.status));
        }
    }
    // Pages report every 10 s: wait for the reports of the last changes.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let after = metrics(&mut conn)?;
    for b in pages {
        let _ = b.close().await;
    }
    let (d0, dn0) = histogram(&before, "comet_display_delay_seconds");
    let (d1, dn1) = histogram(&after, "comet_display_delay_seconds");
    let (a0, _) = histogram(&before, "comet_arrival_delay_seconds");
    let (a1, _) = histogram(&after, "comet_arrival_delay_seconds");
    let samples = dn1 - dn0;
    let f = |v: Option<f64>| v.map_or(Value::Null, |ms| json!((ms * 1000.0).round() / 1000.0));
    let figures = json!({
        "samples": samples,
        "expected": cli.pages as u64 * cli.duration,
        "display_ms": {"p50": f(quantile(&d0, &d1, 0.5)), "p99": f(quantile(&d0, &d1, 0.99))},
        "arrival_ms": {"p50": f(quantile(&a0, &a1, 0.5)), "p99": f(quantile(&a0, &a1, 0.99))},
    });
    println!("display-json {figures}");
    println!(
        "{} pages, {} changes, {} delays reported\n  arrival p50 / p99 ms  {} / {}\n  display p50 / p99 ms  {} / {}",
        cli.pages,
        cli.duration,
        samples,
        figures["arrival_ms"]["p50"],
        figures["arrival_ms"]["p99"],
        figures["display_ms"]["p50"],
        figures["display_ms"]["p99"]
    );
    if !cli.no_record {
        let record = json!({
            "time_us": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as u64),
            "group": cli.group,
            "label": cli.label,
            "target": "ours",
            "mode": "display",
            "commit": comet_bench::report::commit_hash(),
            "params": {"pages": cli.pages, "duration_s": cli.duration, "symbol": cli.symbol},
            "figures": figures,
        });
        use std::io::Write as _;
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&cli.results)
            .map_err(|e| format!("{}: {e}", cli.results))?;
        writeln!(out, "{record}").map_err(|e| e.to_string())?;
    }
    drop(driver);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_the_bucket_of_the_difference() {
        let before = [
            (0.001, 0.0),
            (0.01, 10.0),
            (0.1, 10.0),
            (f64::INFINITY, 10.0),
        ];
        let after = [
            (0.001, 0.0),
            (0.01, 10.0),
            (0.1, 20.0),
            (f64::INFINITY, 20.0),
        ];
        // The 10 new observations all fell in (0.01, 0.1]: the median is halfway through it.
        let p50 = quantile(&before, &after, 0.5).unwrap();
        assert!((p50 - 55.0).abs() < 1e-6, "{p50}");
        assert_eq!(quantile(&after, &after, 0.5), None);
    }
}
