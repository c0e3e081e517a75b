//! Long-poll latency and scale bench for comet-quotes and Nchan: C subscribers (spread over worker
//! processes and 127.0.0.x source addresses) each following K of S symbols, U paced price changes
//! per second for D seconds, and per-delivery latency, losses and server resources; plus `--fanout`
//! (one change to C subscribers of one symbol) and `--hold` (memory per idle long-poll) modes.
//! Prints a table, appends a JSON line to bench/results/runs.jsonl; `--report GROUP` prints ours vs
//! Nchan side by side.

use clap::Parser;
use comet_bench::client::{self, ChildResult, ChildSpec, Node, StopInfo};
use comet_bench::hist::Histogram;
use comet_bench::http::{self, Target};
use comet_bench::plan::{self, Kind, Transport};
use comet_bench::procstat::{self, Sampler};
use comet_bench::publish::{self, PubPlan};
use comet_bench::report;
use comet_bench::tokens::TokenKey;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "latency",
    about = "Long-poll latency / fan-out / held-connection bench for comet-quotes and Nchan"
)]
struct Cli {
    /// Server under test.
    #[arg(long, value_enum, default_value_t = Kind::Ours)]
    target: Kind,
    /// How subscribers follow: long-poll, or Server-Sent Events (ours: /api/stream; Nchan: its
    /// EventSource subscriber on the same /sub/A,B,C location).
    #[arg(long, value_enum, default_value_t = Transport::Poll)]
    transport: Transport,
    /// Base URL (127.0.0.0/8 only). Default http://127.0.0.1:8090 (ours) or :8091 (nchan).
    #[arg(long)]
    url: Option<String>,
    /// Cluster nodes the subscribers talk to (comma separated, 127.0.0.0/8), instead of --url:
    /// subscriber i on node i % n (the publisher stays on --url). Waiting counts are summed.
    #[arg(long, value_delimiter = ',')]
    sub_urls: Vec<String>,
    /// With --sub-urls: every poll of a subscriber goes to the next node (its cursor from one
    /// node, its next poll on another).
    #[arg(long)]
    hop: bool,
    /// C: concurrent long-poll subscribers.
    #[arg(short = 'c', long = "conns", default_value_t = 1000)]
    conns: usize,
    /// K: symbols each subscriber follows (a seeded random subset of the S symbols).
    #[arg(short = 'k', long = "per-sub", default_value_t = 5)]
    k: usize,
    /// S: number of symbols, named PREFIX0..PREFIX{S-1} (ignored with --symbols).
    #[arg(short = 's', long = "num-symbols", default_value_t = 50)]
    num_symbols: usize,
    #[arg(long, default_value = "S")]
    symbol_prefix: String,
    /// Explicit symbol list (comma separated) instead of PREFIX0..PREFIX{S-1}.
    #[arg(long, value_delimiter = ',')]
    symbols: Option<Vec<String>>,
    /// U: price changes published per second (paced evenly, random symbols).
    #[arg(short = 'u', long = "rate", default_value_t = 200.0)]
    rate: f64,
    /// D: publishing duration in seconds.
    #[arg(short = 'd', long = "duration", default_value_t = 20.0)]
    duration: f64,
    /// Fan-out mode: C subscribers on ONE symbol, one change per round; reports the time until the
    /// last subscriber has it.
    #[arg(long, conflicts_with = "hold")]
    fanout: bool,
    /// Fan-out rounds (changes); p50/p99 cover every delivery of every round.
    #[arg(long, default_value_t = 20)]
    fanout_rounds: usize,
    /// The symbol of the fan-out (must exist on the server).
    #[arg(long, default_value = "S0")]
    fanout_symbol: String,
    /// Pause before each fan-out round (after which all subscribers must be waiting again).
    #[arg(long, default_value_t = 0.5)]
    fanout_gap: f64,
    /// Hold mode: open C idle long-polls, then report server RSS/threads and RSS per connection.
    #[arg(long)]
    hold: bool,
    /// How long to hold the idle polls before measuring.
    #[arg(long, default_value_t = 5.0)]
    hold_secs: f64,
    /// PID(s) of the server process to sample (/proc, every 100 ms), comma separated; for Nchan
    /// its worker (bench/nchan/start.sh writes it to RUN_DIR/worker.pid).
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Overall deadline in seconds (default: D+30, fan-out rounds*(gap+5)+30, hold hold_secs+30).
    #[arg(long)]
    deadline: Option<f64>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Subscribers per worker process (each worker stays well under the 20,000 open-file limit).
    #[arg(long, default_value_t = 5000)]
    per_child: usize,
    /// may worker threads in each worker process.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Publisher connections (each symbol always goes through the same one).
    #[arg(long, default_value_t = 4)]
    publishers: usize,
    /// `timeout=` of our polls in seconds (Nchan's is set in its config, 60 s).
    #[arg(long, default_value_t = 60.0)]
    poll_timeout: f64,
    /// Most seconds to wait, after all subscribers sent their first poll, for the server to report
    /// them all waiting.
    #[arg(long, default_value_t = 15.0)]
    settle_max: f64,
    /// Least seconds to wait after that before publishing.
    #[arg(long, default_value_t = 0.5)]
    settle: f64,
    /// Seconds to wait after the last publish for subscribers to catch up.
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
    /// Handshakes in flight per worker process.
    #[arg(long, default_value_t = 128)]
    connect_concurrency: usize,
    /// Source addresses used, from 127.0.0.2 (at most 254).
    #[arg(long, default_value_t = 254)]
    src_ips: u32,
    /// Label of this run in the results (e.g. w1); runs with the same group and label are paired.
    #[arg(long, default_value = "")]
    label: String,
    /// Group of runs (one run-all.sh invocation) for --report.
    #[arg(long, default_value = "")]
    group: String,
    /// Results file (JSON lines). Default bench/results/runs.jsonl.
    #[arg(long)]
    results: Option<PathBuf>,
    /// Do not append to the results file.
    #[arg(long)]
    no_record: bool,
    /// Bearer token the publisher sends (the server's --publish-token).
    #[arg(long, env = "COMET_PUBLISH_TOKEN", hide_env_values = true)]
    publish_token: Option<String>,
    /// Give every subscriber its own HS256 token, signed with this secret (the server's
    /// --jwt-secret), granting exactly its symbols.
    #[arg(long, conflicts_with = "jwt_private_key")]
    jwt_secret: Option<String>,
    /// The same with RS256 or ES256: the private key (PKCS#8 PEM) whose public half the server has
    /// as --jwt-public-key.
    #[arg(long)]
    jwt_private_key: Option<PathBuf>,
    /// Sustained (workload 5): p99 latency from ts at most this many ms ...
    #[arg(long, default_value_t = 500.0)]
    sustain_p99_ms: f64,
    /// ... and at most this fraction of deliveries lost.
    #[arg(long, default_value_t = 0.001)]
    sustain_max_loss: f64,
    /// Print the side-by-side table of a group from the results file, then exit.
    #[arg(long)]
    report: Option<String>,
    /// Price nonce (default: from the clock); prices are nonce*$10,000 + index cents.
    #[arg(long)]
    price_nonce: Option<u64>,
    /// Most per-delivery records kept per worker process (8 bytes each).
    #[arg(long, default_value_t = 30_000_000)]
    max_log: usize,
    /// The server's worker count (may workers / nginx worker processes), recorded with the run
    /// so the tables can tell 1-worker and 2-worker runs apart; the bench does not set it.
    #[arg(long)]
    server_workers: Option<usize>,
    /// Internal: run as a worker process (spec on stdin).
    #[arg(long, hide = true)]
    child: bool,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Run,
    Fanout,
    Hold,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Run => "run",
            Mode::Fanout => "fanout",
            Mode::Hold => "hold",
        }
    }
}

/// Worker processes; anything still running when this is dropped is killed (bounded cleanup on
/// every exit path).
struct Workers {
    children: Vec<Child>,
    stdins: Vec<Option<ChildStdin>>,
    rx: mpsc::Receiver<(usize, Option<String>)>,
}

impl Workers {
    fn send(&mut self, i: usize, line: &str) {
        if let Some(s) = self.stdins[i].as_mut() {
            if writeln!(s, "{line}").and_then(|_| s.flush()).is_err() {
                self.stdins[i] = None;
            }
        }
    }

    fn send_all(&mut self, line: &str) {
        for i in 0..self.stdins.len() {
            self.send(i, line);
        }
    }

    /// Collects one message of type `kind` from every worker, until `until`. Workers that exit
    /// early are reported as missing.
    fn collect(&mut self, kind: &str, until: Instant) -> Vec<Option<Value>> {
        let n = self.children.len();
        let mut got: Vec<Option<Value>> = vec![None; n];
        let mut gone = vec![false; n];
        while got.iter().zip(&gone).any(|(g, d)| g.is_none() && !d) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.rx.recv_timeout(left) {
                Ok((i, Some(line))) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&line) {
                        if v["type"] == kind {
                            got[i] = Some(v);
                        }
                    }
                }
                Ok((i, None)) => gone[i] = true,
                Err(_) => break,
            }
        }
        got
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stdins.iter_mut().for_each(|s| *s = None);
        let t = Instant::now();
        for c in &mut self.children {
            while t.elapsed() < Duration::from_secs(2) {
                if matches!(c.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(c.try_wait(), Ok(None)) {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

fn spawn_workers(specs: &[ChildSpec]) -> Result<Workers, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let (tx, rx) = mpsc::channel();
    let mut w = Workers {
        children: Vec::new(),
        stdins: Vec::new(),
        rx,
    };
    for spec in specs {
        let mut child = Command::new(&exe)
            .arg("--child")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("spawning worker: {e}"))?;
        let stdout = child.stdout.take().expect("piped");
        let stdin = child.stdin.take();
        let i = w.children.len();
        w.children.push(child);
        w.stdins.push(stdin);
        let line = serde_json::to_string(spec).map_err(|e| e.to_string())?;
        w.send(i, &line);
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send((i, Some(line))).is_err() {
                    return;
                }
            }
            let _ = tx.send((i, None));
        });
    }
    Ok(w)
}

fn mb(kb: u64) -> f64 {
    (kb as f64 / 1024.0 * 10.0).round() / 10.0
}

/// Waits (bounded) until the server reports at least `want` waiting polls; returns the last value
/// seen (None if the server has no such counter).
fn wait_server_waiting(
    kind: Kind,
    transport: Transport,
    targets: &[Target],
    want: u64,
    max: Duration,
) -> Option<u64> {
    let t = Instant::now();
    loop {
        let seen = publish::servers_waiting(kind, transport, targets);
        match seen {
            Some(w) if w < want && t.elapsed() < max => {
                std::thread::sleep(Duration::from_millis(50));
            }
            _ => return seen,
        }
    }
}

fn main() {
    if std::env::args().any(|a| a == "--child") {
        client::child_main();
    }
    let cli = Cli::parse();
    if let Some(group) = &cli.report {
        let path = cli
            .results
            .clone()
            .unwrap_or_else(report::default_results_path);
        if let Err(e) = report::print_group(&path, group) {
            eprintln!("latency: reading {}: {e}", path.display());
            std::process::exit(1);
        }
        return;
    }
    match run(&cli) {
        Ok(sustained) => {
            if let Some(s) = sustained {
                println!("verdict: {}", if s { "sustained" } else { "behind" });
            }
        }
        Err(e) => {
            eprintln!("latency: {e}");
            std::process::exit(1);
        }
    }
}

/// The whole coordinated run. Returns the sustain verdict for run mode.
fn run(cli: &Cli) -> Result<Option<bool>, String> {
    let nofile = procstat::raise_nofile();
    let kind = cli.target;
    let default_url = match kind {
        Kind::Ours => "http://127.0.0.1:8090",
        Kind::Nchan => "http://127.0.0.1:8091",
    };
    let url = cli.url.clone().unwrap_or_else(|| default_url.to_string());
    let target = http::parse_loopback_url(&url)?;
    let sub_targets: Vec<Target> = if cli.sub_urls.is_empty() {
        vec![target.clone()]
    } else {
        cli.sub_urls
            .iter()
            .map(|u| http::parse_loopback_url(u))
            .collect::<Result<_, _>>()?
    };
    let nodes: Vec<Node> = sub_targets
        .iter()
        .map(|t| Node {
            addr: t.addr,
            host: t.host.clone(),
            base: t.base.clone(),
        })
        .collect();
    let mode = if cli.fanout {
        Mode::Fanout
    } else if cli.hold {
        Mode::Hold
    } else {
        Mode::Run
    };
    if cli.conns == 0 {
        return Err("-c must be at least 1".into());
    }
    // Each worker holds per_child sockets plus a few; keep it under ~18,000 of the 20,000 limit.
    let per_child = cli.per_child.clamp(1, 18_000);
    if nofile > 0 && (per_child as u64 + 64) > nofile {
        return Err(format!(
            "--per-child {per_child} does not fit the open-file limit {nofile}"
        ));
    }
    let symbols: Vec<String> = match (&cli.symbols, mode) {
        (_, Mode::Fanout) => vec![cli.fanout_symbol.clone()],
        (Some(list), _) => list.clone(),
        (None, _) => plan::symbol_names(&cli.symbol_prefix, cli.num_symbols),
    };
    if symbols.is_empty() || symbols.len() > u16::MAX as usize {
        return Err("need between 1 and 65535 symbols".into());
    }
    let k = if mode == Mode::Fanout {
        1
    } else {
        cli.k.clamp(1, symbols.len())
    };

    // The publish plan: index -> (symbol, offset from the start).
    let (n_planned, offsets_us): (usize, Vec<u64>) = match mode {
        Mode::Run => {
            if !(cli.rate > 0.0 && cli.duration > 0.0) {
                return Err("-u and -d must be positive".into());
            }
            let n = (cli.rate * cli.duration).round() as usize;
            if n > plan::MAX_PUBLISHES {
                return Err(format!(
                    "U*D = {n} publishes; at most {}",
                    plan::MAX_PUBLISHES
                ));
            }
            (
                n,
                (0..n).map(|i| (i as f64 * 1e6 / cli.rate) as u64).collect(),
            )
        }
        Mode::Fanout => (cli.fanout_rounds.max(1), vec![0; cli.fanout_rounds.max(1)]),
        Mode::Hold => (0, Vec::new()),
    };
    let seed = cli.seed;
    let pub_syms = plan::publish_symbols(seed, n_planned, symbols.len());
    let nonce = cli
        .price_nonce
        .unwrap_or_else(|| plan::now_us() / 1000 % 97);
    let price_base = plan::price_base_cents(nonce);

    let active_s = match mode {
        Mode::Run => cli.duration,
        Mode::Fanout => n_planned as f64 * (cli.fanout_gap + 5.0),
        Mode::Hold => cli.hold_secs,
    };
    let deadline_s = cli.deadline.unwrap_or(active_s + 30.0).max(1.0);
    let t_start = Instant::now();
    let deadline = t_start + Duration::from_secs_f64(deadline_s);
    let deadline_wall_us = plan::now_us() + (deadline_s * 1e6) as u64;

    let mut sampler = Sampler::start(
        cli.server_pid.clone(),
        Duration::from_millis(100),
        Duration::from_secs_f64(deadline_s + 5.0),
    );
    if sampler.enabled() && sampler.mark().is_none() {
        return Err(format!(
            "server pid {:?} not found in /proc",
            cli.server_pid
        ));
    }
    let before = sampler.mark();
    let parent_cpu0 = procstat::self_cpu_s();

    let token_key = match (&cli.jwt_secret, &cli.jwt_private_key) {
        (Some(secret), _) => Some(TokenKey::secret(secret)),
        (None, Some(path)) => {
            let pem = std::fs::read_to_string(path)
                .map_err(|e| format!("--jwt-private-key {}: {e}", path.display()))?;
            Some(
                TokenKey::private_pem(&pem)
                    .map_err(|e| format!("--jwt-private-key {}: {e}", path.display()))?,
            )
        }
        (None, None) => None,
    };

    // Worker processes, each with a contiguous range of subscribers.
    let n_children = cli.conns.div_ceil(per_child);
    let base_share = cli.conns / n_children;
    let extra = cli.conns % n_children;
    let mut specs = Vec::new();
    let mut first = 0;
    for i in 0..n_children {
        let n = base_share + usize::from(i < extra);
        specs.push(ChildSpec {
            child: i,
            kind,
            transport: cli.transport,
            nodes: nodes.clone(),
            hop: cli.hop,
            first_sub: first,
            n_subs: n,
            symbols: symbols.clone(),
            k,
            seed,
            price_base,
            n_planned,
            poll_timeout_s: cli.poll_timeout,
            threads: cli.client_threads,
            connect_concurrency: cli.connect_concurrency,
            src_ips: cli.src_ips,
            // Workers must report before the coordinator gives up on them.
            deadline_us: deadline_wall_us.saturating_sub(1_500_000),
            max_log: cli.max_log,
            per_publish: mode == Mode::Fanout,
            token_key: token_key.clone(),
        });
        first += n;
    }
    eprintln!(
        "latency: {} {} {} C={} K={} S={} U={} D={} -> {} worker(s), deadline {:.0}s",
        kind.name(),
        cli.transport.name(),
        mode.name(),
        cli.conns,
        k,
        symbols.len(),
        cli.rate,
        cli.duration,
        n_children,
        deadline_s
    );
    let mut workers = spawn_workers(&specs)?;

    // 1. Everyone connected and polling.
    let readies = workers.collect("ready", deadline);
    let connected: usize = readies
        .iter()
        .flatten()
        .map(|v| v["ready"].as_u64().unwrap_or(0) as usize)
        .sum();
    let connect_failed: usize = readies
        .iter()
        .flatten()
        .map(|v| v["failed"].as_u64().unwrap_or(0) as usize)
        .sum();
    let missing = readies.iter().filter(|r| r.is_none()).count();
    let t_ready = t_start.elapsed().as_secs_f64();
    eprintln!("latency: {connected} subscribers polling ({connect_failed} failed, {missing} workers silent) after {t_ready:.1}s");
    let settle_budget = Duration::from_secs_f64(cli.settle_max)
        .min(deadline.saturating_duration_since(Instant::now()));
    let waiting_seen = wait_server_waiting(
        kind,
        cli.transport,
        &sub_targets,
        connected as u64,
        settle_budget,
    );
    std::thread::sleep(Duration::from_secs_f64(cli.settle.max(0.0)));
    eprintln!("latency: server reports {waiting_seen:?} waiting polls");

    let mut figures = json!({
        "connected": connected,
        "connect_failed": connect_failed,
        "workers_silent": missing,
        "setup_s": (t_ready * 10.0).round() / 10.0,
    });
    let mut server = json!({
        "pids": cli.server_pid,
        "waiting_seen": waiting_seen,
        "rss_before_mb": before.map(|(_, s)| mb(s.rss_kb)),
    });

    // 2. The measured phase.
    let go_mark = sampler.mark();
    let parent_cpu_go = procstat::self_cpu_s();
    let machine_go = procstat::machine_busy_s();
    let load_go = procstat::loadavg1();
    let go_instant = Instant::now();
    workers.send_all("go");
    let stop_at = deadline
        .checked_sub(Duration::from_secs_f64(cli.drain + 3.0))
        .unwrap_or(deadline);
    let pub_plan = PubPlan {
        kind,
        transport: cli.transport,
        waiting_on: sub_targets.clone(),
        target: target.clone(),
        symbols: symbols.clone(),
        pub_syms: pub_syms.clone(),
        offsets_us,
        price_base,
        connections: cli.publishers,
        auth: match (&cli.publish_token, kind) {
            (Some(t), Kind::Ours) => format!("Authorization: Bearer {t}\r\n"),
            _ => String::new(),
        },
    };
    let mut hold_figs = Value::Null;
    let mut fanout_waiting = Vec::new();
    let outcome = match mode {
        Mode::Run => publish::run(&pub_plan, go_instant, stop_at),
        Mode::Fanout => {
            let (o, w) = publish::run_fanout(
                &pub_plan,
                connected as u64,
                Duration::from_secs_f64(cli.fanout_gap),
                Duration::from_secs(5),
                stop_at,
            );
            fanout_waiting = w;
            o
        }
        Mode::Hold => {
            let until = (Instant::now() + Duration::from_secs_f64(cli.hold_secs)).min(stop_at);
            std::thread::sleep(until.saturating_duration_since(Instant::now()));
            let held = sampler.mark();
            let waiting_now = publish::servers_waiting(kind, cli.transport, &sub_targets);
            let per_conn_kb = match (before, held) {
                (Some((_, b)), Some((_, h))) if connected > 0 => Some(
                    ((h.rss_kb as f64 - b.rss_kb as f64) / connected as f64 * 100.0).round()
                        / 100.0,
                ),
                _ => None,
            };
            hold_figs = json!({
                "held": connected,
                "waiting_at_measure": waiting_now,
                "rss_held_mb": held.map(|(_, s)| mb(s.rss_kb)),
                "rss_per_conn_kb": per_conn_kb,
                "threads": held.map(|(_, s)| s.threads),
            });
            publish::PubOutcome::default()
        }
    };
    let publish_wall_s = go_instant.elapsed().as_secs_f64();

    // 3. Tell the workers what was published; they drain and report.
    let stop = StopInfo {
        send_us: outcome.send_us.clone(),
        drain_s: if mode == Mode::Hold { 0.0 } else { cli.drain },
    };
    workers.send_all(&format!(
        "stop {}",
        serde_json::to_string(&stop).map_err(|e| e.to_string())?
    ));
    let results_raw = workers.collect("result", deadline + Duration::from_secs(1));
    let end_mark = sampler.mark();
    let machine_end = procstat::machine_busy_s();
    let window_s = go_instant.elapsed().as_secs_f64();
    let parent_cpu_end = procstat::self_cpu_s();
    sampler.stop();
    drop(workers);

    let results: Vec<ChildResult> = results_raw
        .iter()
        .flatten()
        .filter_map(|v| serde_json::from_value(v.clone()).ok())
        .collect();
    let silent_at_end = n_children - results.len();
    let sum = |f: &dyn Fn(&ChildResult) -> u64| results.iter().map(f).sum::<u64>();
    let mut lat_ts = Histogram::new();
    let mut lat_send = Histogram::new();
    for r in &results {
        lat_ts.merge(&r.lat_ts);
        lat_send.merge(&r.lat_send);
    }
    let expected = sum(&|r| r.expected);
    let received = sum(&|r| r.received);
    let lost = sum(&|r| r.lost);
    let incomplete = sum(&|r| r.incomplete_subs as u64);
    let lost_frac = if expected > 0 {
        lost as f64 / expected as f64
    } else {
        0.0
    };
    let deadline_hit =
        Instant::now() > deadline || results.iter().any(|r| r.deadline_hit) || silent_at_end > 0;

    // Server figures over the measured window.
    if let (Some((t0, s0)), Some((t1, s1))) = (go_mark, end_mark) {
        let cpu = s1.cpu_s - s0.cpu_s;
        let peaks = sampler.peaks(0.0, t1);
        server["cpu_s"] = json!((cpu * 1000.0).round() / 1000.0);
        server["cpu_pct"] = json!((cpu / (t1 - t0).max(1e-3) * 1000.0).round() / 10.0);
        server["peak_rss_mb"] = json!(peaks.map(|p| mb(p.0)));
        server["threads_max"] = json!(peaks.map(|p| p.1));
        if received > 0 {
            server["cpu_us_per_delivery"] =
                json!((cpu * 1e6 / received as f64 * 100.0).round() / 100.0);
        }
        server["process_lost"] = json!(sampler.process_lost());
    }
    figures["server"] = server;
    let child_cpu_total: f64 = results.iter().map(|r| r.cpu_total_s).sum();
    let child_cpu_window: f64 = results.iter().map(|r| r.cpu_window_s).sum();
    figures["bench"] = json!({
        "cpu_total_s": ((parent_cpu_end - parent_cpu0 + child_cpu_total) * 1000.0).round() / 1000.0,
        "cpu_window_s": ((parent_cpu_end - parent_cpu_go + child_cpu_window) * 1000.0).round() / 1000.0,
        "window_s": (window_s * 100.0).round() / 100.0,
    });
    // CPU used on this machine by neither the server nor the bench during the window: should be
    // near zero; if not, the figures were taken on a busy machine.
    if let (Some(a), Some(b)) = (machine_go, machine_end) {
        let server_cpu = figures["server"]["cpu_s"].as_f64().unwrap_or(0.0);
        let bench_cpu = figures["bench"]["cpu_window_s"].as_f64().unwrap_or(0.0);
        figures["machine"] = json!({
            // Clamped: tick granularity and slightly different window edges can make it dip below 0.
            "other_cpu_s": ((((b - a) - server_cpu - bench_cpu) * 100.0).round() / 100.0).max(0.0),
            "loadavg1_at_start": load_go,
        });
    }
    figures["deadline_hit"] = json!(deadline_hit);
    figures["workers_silent_at_end"] = json!(silent_at_end);

    let mut verdict: Option<bool> = None;
    if mode != Mode::Hold {
        let achieved = if cli.duration > 0.0 && mode == Mode::Run {
            outcome.sent as f64 / cli.duration
        } else {
            outcome.sent as f64
        };
        let lag_ms = outcome.lag.summary_ms();
        figures["published"] = json!({
            "planned": n_planned,
            "sent": outcome.sent,
            "failed": outcome.failed,
            "first_error": outcome.first_error,
            "sent_of_planned": format!("{} / {}", outcome.sent, n_planned),
            "achieved_rate": (achieved * 10.0).round() / 10.0,
            "span_s": (outcome.span_s * 100.0).round() / 100.0,
            "wall_s": (publish_wall_s * 100.0).round() / 100.0,
            "lag_ms": lag_ms,
            "resp_ms": outcome.resp.summary_ms(),
        });
        figures["deliveries"] = json!({
            "expected": expected,
            "received": received,
            "lost": lost,
            "lost_frac": lost_frac,
            "incomplete_subs": incomplete,
            "answers": sum(&|r| r.answers),
            "empty_answers": sum(&|r| r.empty_answers),
            "reconnects": sum(&|r| r.reconnects),
            "bad_status": sum(&|r| r.bad_status),
            "parse_errors": sum(&|r| r.parse_errors),
            "foreign": sum(&|r| r.foreign),
            "dups": sum(&|r| r.dups),
            "late": sum(&|r| r.late),
            "negative_latencies": sum(&|r| r.negative_latencies),
            "log_truncated": results.iter().any(|r| r.log_truncated),
            "drain_ms_max": results.iter().map(|r| r.drain_ms).max(),
        });
        figures["latency_ts_ms"] = lat_ts.summary_ms();
        figures["latency_send_ms"] = lat_send.summary_ms();

        if mode == Mode::Fanout {
            let mut rounds = Vec::new();
            for idx in 0..n_planned {
                let mut agg = client::PublishAgg::default();
                for r in &results {
                    if let Some(p) = r.per_publish.get(idx) {
                        agg.received += p.received;
                        agg.expected += p.expected;
                        agg.max_ts_us = agg.max_ts_us.max(p.max_ts_us);
                        agg.max_send_us = agg.max_send_us.max(p.max_send_us);
                    }
                }
                if outcome.send_us.get(idx).copied().unwrap_or(0) > 0 {
                    rounds.push(json!({
                        "waiting_before": fanout_waiting.get(idx).copied().flatten(),
                        "received": agg.received,
                        "expected": agg.expected,
                        "last_ts_ms": agg.max_ts_us as f64 / 1000.0,
                        "last_send_ms": agg.max_send_us as f64 / 1000.0,
                    }));
                }
            }
            let sorted = |key: &str| {
                let mut v: Vec<f64> = rounds.iter().filter_map(|r| r[key].as_f64()).collect();
                v.sort_by(|a, b| a.total_cmp(b));
                v
            };
            let median = |key: &str| {
                let v = sorted(key);
                v.get(v.len() / 2).copied()
            };
            let worst = |key: &str| sorted(key).last().copied();
            let text = rounds
                .iter()
                .map(|r| {
                    format!(
                        "{}/{} {:.1}ms",
                        r["received"],
                        r["expected"],
                        r["last_ts_ms"].as_f64().unwrap_or(0.0)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            figures["fanout"] = json!({
                "last_ts_ms_median": median("last_ts_ms"),
                "last_ts_ms_max": worst("last_ts_ms"),
                "last_send_ms_median": median("last_send_ms"),
                "rounds": rounds,
                "rounds_text": text,
            });
        }

        if mode == Mode::Run {
            // "Sustained" = kept up: (nearly) every publish went out on schedule and was answered,
            // nothing (or almost nothing) was lost, subscribers caught up, and the tail stayed low.
            let mut reasons: Vec<String> = Vec::new();
            if (outcome.sent as f64) < 0.99 * n_planned as f64 || outcome.failed > 0 {
                reasons.push(format!(
                    "published {}/{} ({} failed)",
                    outcome.sent, n_planned, outcome.failed
                ));
            }
            if outcome.lag.quantile(0.99).unwrap_or(0) > 100_000 {
                reasons.push("publisher fell >100 ms behind schedule (p99)".into());
            }
            if lost_frac > cli.sustain_max_loss {
                reasons.push(format!("lost {:.3}%", lost_frac * 100.0));
            }
            if incomplete > 0 {
                reasons.push(format!("{incomplete} subscribers behind after drain"));
            }
            let p99_ms = lat_ts.quantile(0.99).map(|v| v as f64 / 1000.0);
            if p99_ms.is_none_or(|p| p > cli.sustain_p99_ms) {
                reasons.push(format!("p99 {p99_ms:?} ms > {} ms", cli.sustain_p99_ms));
            }
            if connected < cli.conns {
                reasons.push(format!(
                    "only {connected}/{} subscribers connected",
                    cli.conns
                ));
            }
            if deadline_hit {
                reasons.push("deadline hit".into());
            }
            let ok = reasons.is_empty();
            figures["verdict"] = json!({
                "sustained": ok,
                "reasons": reasons,
                "text": if ok { "sustained".to_string() } else { format!("behind: {}", reasons.join("; ")) },
            });
            verdict = Some(ok);
        }
    } else {
        figures["hold"] = hold_figs;
    }

    let params = json!({
        "c": cli.conns,
        "k": k,
        "s": symbols.len(),
        "u": if mode == Mode::Run { Some(cli.rate) } else { None },
        "d": if mode == Mode::Run { Some(cli.duration) } else { None },
        "fanout_rounds": if mode == Mode::Fanout { Some(n_planned) } else { None },
        "server_workers": cli.server_workers,
        "transport": cli.transport.name(),
        "sub_urls": cli.sub_urls,
        "hop": cli.hop,
        "hold_secs": if mode == Mode::Hold { Some(cli.hold_secs) } else { None },
        "seed": seed,
        "workers": n_children,
        "client_threads": cli.client_threads,
        "publishers": cli.publishers,
        "poll_timeout": cli.poll_timeout,
        "url": url,
    });
    let rec = json!({
        "time_us": plan::now_us(),
        "group": cli.group,
        "label": cli.label,
        "target": kind.name(),
        "mode": mode.name(),
        "commit": report::commit_hash(),
        "machine": report::machine_info(),
        "params": params,
        "figures": figures,
    });
    report::print_run(&rec);
    if !cli.no_record {
        let path = cli
            .results
            .clone()
            .unwrap_or_else(report::default_results_path);
        report::append_record(&path, &rec)
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        eprintln!("latency: appended to {}", path.display());
    }
    Ok(verdict)
}
