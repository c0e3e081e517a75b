//! Results bookkeeping for the latency bench: the run record appended to bench/results/runs.jsonl
//! (commit, machine, parameters, figures), the per-run table, and the side-by-side ours-vs-Nchan
//! table (with ratios) over all runs of one group.

use serde_json::{json, Value};
use std::io::{BufRead, Write};
use std::path::Path;
use std::process::Command;

/// The default results file, next to this crate's Cargo.toml.
pub fn default_results_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("results")
        .join("runs.jsonl")
}

/// The short commit hash of the repository (read-only `git rev-parse`), "none" before the first
/// commit or outside git.
pub fn commit_hash() -> String {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    Command::new("git")
        .arg("-C")
        .arg(&repo)
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "none".to_string())
}

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Host name, CPU model and count, memory and kernel: enough to tell runs on different machines apart.
pub fn machine_info() -> Value {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
    });
    let mem_gib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
        s.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| (kb / 1024.0 / 1024.0 * 10.0).round() / 10.0)
    });
    json!({
        "host": read_trim("/proc/sys/kernel/hostname"),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "cpu_model": cpu_model,
        "mem_gib": mem_gib,
        "kernel": read_trim("/proc/sys/kernel/osrelease"),
    })
}

/// Appends one JSON line (creating the directory if needed).
pub fn append_record(path: &Path, rec: &Value) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(f, "{rec}")
}

#[derive(Clone, Copy)]
enum Fmt {
    Int,
    F1,
    F2,
    F3,
    Pct,
    Text,
}

/// The rows of the tables: title, JSON pointer into a run record, format.
const ROWS: &[(&str, &str, Fmt)] = &[
    ("subscribers connected", "/figures/connected", Fmt::Int),
    ("connect failures", "/figures/connect_failed", Fmt::Int),
    (
        "publishes sent / planned",
        "/figures/published/sent_of_planned",
        Fmt::Text,
    ),
    (
        "publish rate achieved /s",
        "/figures/published/achieved_rate",
        Fmt::F1,
    ),
    (
        "publisher lag p99 ms",
        "/figures/published/lag_ms/p99",
        Fmt::F3,
    ),
    (
        "publish answer p50 ms",
        "/figures/published/resp_ms/p50",
        Fmt::F3,
    ),
    (
        "publish answer p99 ms",
        "/figures/published/resp_ms/p99",
        Fmt::F3,
    ),
    (
        "deliveries expected",
        "/figures/deliveries/expected",
        Fmt::Int,
    ),
    (
        "deliveries received",
        "/figures/deliveries/received",
        Fmt::Int,
    ),
    ("lost", "/figures/deliveries/lost", Fmt::Int),
    ("lost fraction", "/figures/deliveries/lost_frac", Fmt::Pct),
    (
        "subs behind after drain",
        "/figures/deliveries/incomplete_subs",
        Fmt::Int,
    ),
    (
        "answers (all polls)",
        "/figures/deliveries/answers",
        Fmt::Int,
    ),
    ("reconnects", "/figures/deliveries/reconnects", Fmt::Int),
    (
        "latency from ts p50 ms",
        "/figures/latency_ts_ms/p50",
        Fmt::F3,
    ),
    (
        "latency from ts p90 ms",
        "/figures/latency_ts_ms/p90",
        Fmt::F3,
    ),
    (
        "latency from ts p99 ms",
        "/figures/latency_ts_ms/p99",
        Fmt::F3,
    ),
    (
        "latency from ts p99.9 ms",
        "/figures/latency_ts_ms/p999",
        Fmt::F3,
    ),
    (
        "latency from ts max ms",
        "/figures/latency_ts_ms/max",
        Fmt::F3,
    ),
    (
        "latency from send p50 ms",
        "/figures/latency_send_ms/p50",
        Fmt::F3,
    ),
    (
        "latency from send p99 ms",
        "/figures/latency_send_ms/p99",
        Fmt::F3,
    ),
    (
        "latency from send max ms",
        "/figures/latency_send_ms/max",
        Fmt::F3,
    ),
    (
        "fan-out last arrival, worst ms",
        "/figures/fanout/last_ts_ms_max",
        Fmt::F3,
    ),
    (
        "fan-out last arrival (ts) ms",
        "/figures/fanout/last_ts_ms_median",
        Fmt::F3,
    ),
    (
        "fan-out last arrival (send) ms",
        "/figures/fanout/last_send_ms_median",
        Fmt::F3,
    ),
    ("fan-out rounds", "/figures/fanout/rounds_text", Fmt::Text),
    ("held long-polls", "/figures/hold/held", Fmt::Int),
    (
        "server-side waiting polls",
        "/figures/server/waiting_seen",
        Fmt::Int,
    ),
    (
        "waiting when measured",
        "/figures/hold/waiting_at_measure",
        Fmt::Int,
    ),
    (
        "server RSS before MB",
        "/figures/server/rss_before_mb",
        Fmt::F1,
    ),
    ("server RSS held MB", "/figures/hold/rss_held_mb", Fmt::F1),
    (
        "RSS per held connection KB",
        "/figures/hold/rss_per_conn_kb",
        Fmt::F2,
    ),
    ("server peak RSS MB", "/figures/server/peak_rss_mb", Fmt::F1),
    (
        "server threads (max)",
        "/figures/server/threads_max",
        Fmt::Int,
    ),
    ("server CPU s (window)", "/figures/server/cpu_s", Fmt::F2),
    ("server CPU % of a core", "/figures/server/cpu_pct", Fmt::F1),
    (
        "server CPU per delivery us",
        "/figures/server/cpu_us_per_delivery",
        Fmt::F2,
    ),
    (
        "bench CPU s (window)",
        "/figures/bench/cpu_window_s",
        Fmt::F2,
    ),
    ("bench CPU s (total)", "/figures/bench/cpu_total_s", Fmt::F2),
    (
        "other CPU on machine s",
        "/figures/machine/other_cpu_s",
        Fmt::F2,
    ),
    ("verdict", "/figures/verdict/text", Fmt::Text),
];

fn fmt_val(v: Option<&Value>, f: Fmt) -> String {
    let Some(v) = v.filter(|v| !v.is_null()) else {
        return "-".to_string();
    };
    match (f, v.as_f64()) {
        (Fmt::Int, Some(x)) => format!("{}", x.round() as i64),
        (Fmt::F1, Some(x)) => format!("{x:.1}"),
        (Fmt::F2, Some(x)) => format!("{x:.2}"),
        (Fmt::F3, Some(x)) => format!("{x:.3}"),
        (Fmt::Pct, Some(x)) => format!("{:.3}%", x * 100.0),
        _ => match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        },
    }
}

/// The table of one run.
pub fn print_run(rec: &Value) {
    println!(
        "\n== {} {} ({}) ==",
        rec["target"].as_str().unwrap_or("?"),
        rec["label"].as_str().unwrap_or(""),
        rec["mode"].as_str().unwrap_or("?")
    );
    println!("params: {}", rec["params"]);
    for (title, ptr, f) in ROWS {
        let v = rec.pointer(ptr);
        if v.is_some_and(|v| !v.is_null()) {
            println!("  {title:<32} {}", fmt_val(v, *f));
        }
    }
}

/// wrk runs: requests/s and latency per script and target (ours, nchan, hello reference), with
/// ours/other ratios of requests/s.
fn print_wrk(runs: &[Value], labels: &[String], is_wrk: &dyn Fn(&str) -> bool) {
    let wrk_labels: Vec<&String> = labels.iter().filter(|l| is_wrk(l)).collect();
    if wrk_labels.is_empty() {
        return;
    }
    println!("\n## wrk (2 threads, 100 connections)");
    println!(
        "{:<14} {:<7} {:>11} {:>9} {:>9} {:>7} {:>12}",
        "script", "target", "req/s", "p50 ms", "p99 ms", "errors", "ours/this"
    );
    for label in wrk_labels {
        let rows: Vec<&Value> = ["ours", "nchan", "hello"]
            .iter()
            .filter_map(|t| {
                runs.iter()
                    .rev()
                    .find(|r| r["label"] == *label && r["target"] == *t)
            })
            .collect();
        let ours_rps = rows
            .iter()
            .find(|r| r["target"] == "ours")
            .and_then(|r| r.pointer("/figures/wrk/rps"))
            .and_then(Value::as_f64);
        for r in rows {
            let w = &r["figures"]["wrk"];
            let errors: u64 = w["errors"]
                .as_object()
                .map(|o| o.values().filter_map(Value::as_u64).sum())
                .unwrap_or(0);
            let ratio = match (ours_rps, w["rps"].as_f64()) {
                (Some(a), Some(b)) if b > 0.0 && r["target"] != "ours" => format!("{:.2}", a / b),
                _ => "-".to_string(),
            };
            println!(
                "{:<14} {:<7} {:>11} {:>9} {:>9} {:>7} {:>12}",
                label.trim_start_matches("wrk-"),
                r["target"].as_str().unwrap_or("?"),
                fmt_val(w.get("rps"), Fmt::F1),
                fmt_val(w.get("p50_ms"), Fmt::F3),
                fmt_val(w.get("p99_ms"), Fmt::F3),
                errors,
                ratio
            );
        }
    }
}

/// One line per step of the sustained-rate search (labels `w5-uN`).
fn print_w5_steps(runs: &[Value]) {
    let mut steps: Vec<(f64, &str, &Value)> = runs
        .iter()
        .filter(|r| r["label"].as_str().is_some_and(|l| l.starts_with("w5-")))
        .filter_map(|r| Some((r.pointer("/params/u")?.as_f64()?, r["target"].as_str()?, r)))
        .collect();
    if steps.is_empty() {
        return;
    }
    steps.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(b.1)));
    println!("\n## w5 steps (C = {})", steps[0].2["params"]["c"]);
    println!(
        "{:>7} {:<6} {:>10} {:>10} {:>9}  verdict",
        "U/s", "target", "p50 ms", "p99 ms", "lost"
    );
    for (u, t, r) in steps {
        println!(
            "{u:>7} {t:<6} {:>10} {:>10} {:>9}  {}",
            fmt_val(r.pointer("/figures/latency_ts_ms/p50"), Fmt::F3),
            fmt_val(r.pointer("/figures/latency_ts_ms/p99"), Fmt::F3),
            fmt_val(r.pointer("/figures/deliveries/lost_frac"), Fmt::Pct),
            fmt_val(r.pointer("/figures/verdict/text"), Fmt::Text)
        );
    }
}

/// For the "highest sustained U" search (labels `w5-...`): the highest U whose verdict was
/// "sustained", per target.
fn best_sustained(runs: &[Value], target: &str, prefix: &str) -> Option<f64> {
    runs.iter()
        .filter(|r| r["target"] == target)
        .filter(|r| r["label"].as_str().is_some_and(|l| l.starts_with(prefix)))
        .filter(|r| r.pointer("/figures/verdict/sustained") == Some(&Value::Bool(true)))
        .filter_map(|r| r.pointer("/params/u").and_then(Value::as_f64))
        .fold(None, |m: Option<f64>, u| Some(m.map_or(u, |m| m.max(u))))
}

/// Prints ours vs Nchan side by side, with ours/Nchan ratios, for every label of `group` in
/// `path`. A label with several runs per target shows the last of each.
pub fn print_group(path: &Path, group: &str) -> std::io::Result<()> {
    let f = std::fs::File::open(path)?;
    let runs: Vec<Value> = std::io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
        .filter(|r| r["group"] == group)
        .collect();
    if runs.is_empty() {
        println!("no runs of group {group:?} in {}", path.display());
        return Ok(());
    }
    let mut labels: Vec<String> = Vec::new();
    for r in &runs {
        let l = r["label"].as_str().unwrap_or("").to_string();
        if !labels.contains(&l) {
            labels.push(l);
        }
    }
    let first = &runs[0];
    println!(
        "# group {group}  commit {}  machine {}",
        first["commit"].as_str().unwrap_or("?"),
        first["machine"]
    );
    let is_wrk = |label: &str| {
        runs.iter()
            .any(|r| r["label"] == label && r["mode"] == "wrk")
    };
    for label in labels
        .iter()
        .filter(|l| !l.starts_with("w5-") && !is_wrk(l))
    {
        let last = |t: &str| {
            runs.iter()
                .rev()
                .find(|r| r["label"] == *label && r["target"] == t)
        };
        let (ours, nchan) = (last("ours"), last("nchan"));
        let any = ours.or(nchan).expect("label comes from a run");
        println!(
            "\n## {label} ({})  params {}",
            any["mode"].as_str().unwrap_or("?"),
            any["params"]
        );
        println!(
            "{:<32} {:>14} {:>14} {:>10}",
            "", "ours", "nchan", "ours/nchan"
        );
        for &(title, ptr, f) in ROWS {
            // Long texts do not fit the columns: the per-round list is left out and the verdict
            // shrinks to sustained true/false (both are in the per-run tables and the JSON).
            let ptr = match title {
                "fan-out rounds" => continue,
                "verdict" => "/figures/verdict/sustained",
                _ => ptr,
            };
            let a = ours.and_then(|r| r.pointer(ptr)).filter(|v| !v.is_null());
            let b = nchan.and_then(|r| r.pointer(ptr)).filter(|v| !v.is_null());
            if a.is_none() && b.is_none() {
                continue;
            }
            let ratio = match (a.and_then(Value::as_f64), b.and_then(Value::as_f64)) {
                (Some(x), Some(y)) if y != 0.0 => format!("{:.2}", x / y),
                _ => "-".to_string(),
            };
            println!(
                "{title:<32} {:>14} {:>14} {ratio:>10}",
                fmt_val(a, f),
                fmt_val(b, f)
            );
        }
    }
    print_wrk(&runs, &labels, &is_wrk);
    print_w5_steps(&runs);
    if labels.iter().any(|l| l.starts_with("w5-")) {
        let a = best_sustained(&runs, "ours", "w5-");
        let b = best_sustained(&runs, "nchan", "w5-");
        let show = |x: Option<f64>| x.map_or("none".to_string(), |v| format!("{v:.0}"));
        let ratio = match (a, b) {
            (Some(x), Some(y)) if y > 0.0 => format!("{:.2}", x / y),
            _ => "-".to_string(),
        };
        println!("\n## w5 summary: highest U/s sustained at the search's C");
        println!(
            "{:<32} {:>14} {:>14} {ratio:>10}",
            "max sustained U/s",
            show(a),
            show(b)
        );
    }
    Ok(())
}
