//! Connection churn against comet-quotes, for the soak run: clients that connect and leave all the
//! time. Each loop opens a connection and does one of: a snapshot; a long-poll it waits out; a
//! long-poll it abandons mid-hold; a stream it reads for a while then drops; a stream it abandons
//! before the first change. A third of the connections leave in the middle of a held poll or
//! stream. Bounded in time (--duration) and in connections (--max-connections); loopback only.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use comet_bench::http;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Parser, Debug)]
#[command(
    name = "churn",
    about = "Clients that connect and leave all the time (soak runs)"
)]
struct Cli {
    /// Server URL (127.0.0.0/8 only).
    #[arg(long, default_value = "http://127.0.0.1:8090")]
    url: String,
    /// Client threads, each one connection at a time.
    #[arg(long, default_value_t = 16)]
    threads: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 600.0)]
    duration: f64,
    /// Stop after this many connections in all.
    #[arg(long, default_value_t = 5_000_000)]
    max_connections: u64,
    /// Symbols to follow, comma separated.
    #[arg(long, default_value = "S0,S1,S2,S3,S4")]
    symbols: String,
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

#[derive(Default)]
struct Counts {
    connections: AtomicU64,
    snapshots: AtomicU64,
    polls_answered: AtomicU64,
    polls_abandoned: AtomicU64,
    streams_read: AtomicU64,
    streams_abandoned: AtomicU64,
    errors: AtomicU64,
}

fn request(addr: SocketAddr, path: &str, extra: &str) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(70)))?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: churn\r\n{extra}\r\n").as_bytes())?;
    Ok(s)
}

/// Read until `bytes` have come or the connection ends.
fn read_some(s: &mut TcpStream, bytes: usize) -> std::io::Result<usize> {
    let mut buf = vec![0u8; 4096];
    let mut got = 0;
    while got < bytes {
        match s.read(&mut buf)? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

fn one(addr: SocketAddr, symbols: &str, rng: &mut StdRng, c: &Counts) -> std::io::Result<()> {
    // Nine kinds, three of which leave in the middle of a held poll or stream.
    match rng.gen_range(0..9) {
        // A snapshot, answered at once.
        0 | 1 => {
            let mut s = request(
                addr,
                &format!("/api/quotes?symbols={symbols}"),
                "Connection: close\r\n",
            )?;
            read_some(&mut s, usize::MAX)?;
            c.snapshots.fetch_add(1, Ordering::Relaxed);
        }
        // A long-poll waited out (a change or its 1 s timeout).
        2..=5 => {
            let mut s = request(
                addr,
                &format!("/api/poll?symbols={symbols}&timeout=1"),
                "Connection: close\r\n",
            )?;
            read_some(&mut s, usize::MAX)?;
            c.polls_answered.fetch_add(1, Ordering::Relaxed);
        }
        // A long-poll abandoned mid-hold (sometimes with a reset).
        6 => {
            let s = request(addr, &format!("/api/poll?symbols={symbols}&timeout=30"), "")?;
            std::thread::sleep(Duration::from_millis(rng.gen_range(1..300)));
            if rng.gen_bool(0.5) {
                socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO))?;
            }
            drop(s);
            c.polls_abandoned.fetch_add(1, Ordering::Relaxed);
        }
        // A stream read for a few events, then dropped.
        7 => {
            let mut s = request(
                addr,
                &format!("/api/stream?symbols={symbols}"),
                "Accept: text/event-stream\r\n",
            )?;
            read_some(&mut s, rng.gen_range(200..2000))?;
            c.streams_read.fetch_add(1, Ordering::Relaxed);
        }
        // A stream abandoned at once, before any change.
        _ => {
            let mut s = request(
                addr,
                &format!("/api/stream?symbols={symbols}"),
                "Accept: text/event-stream\r\n",
            )?;
            read_some(&mut s, 1)?;
            c.streams_abandoned.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

fn main() {
    let cli = Cli::parse();
    let target = match http::parse_loopback_url(&cli.url) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("churn: {e}");
            std::process::exit(2);
        }
    };
    let until = Instant::now() + Duration::from_secs_f64(cli.duration);
    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let threads: Vec<_> = (0..cli.threads)
        .map(|i| {
            let (counts, stop, symbols) =
                (Arc::clone(&counts), Arc::clone(&stop), cli.symbols.clone());
            let max = cli.max_connections;
            let mut rng = StdRng::seed_from_u64(cli.seed ^ (i as u64).wrapping_mul(0x9E37_79B9));
            std::thread::spawn(move || {
                while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    if counts.connections.fetch_add(1, Ordering::Relaxed) >= max {
                        stop.store(true, Ordering::Relaxed);
                        break;
                    }
                    if one(target.addr, &symbols, &mut rng, &counts).is_err() {
                        counts.errors.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        let _ = t.join();
    }
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let abandoned =
        g(&counts.polls_abandoned) + g(&counts.streams_abandoned) + g(&counts.streams_read);
    let total = g(&counts.connections).min(cli.max_connections);
    println!(
        "churn-json {}",
        serde_json::json!({
            "connections": total,
            "snapshots": g(&counts.snapshots),
            "polls_answered": g(&counts.polls_answered),
            "polls_abandoned": g(&counts.polls_abandoned),
            "streams_read_then_dropped": g(&counts.streams_read),
            "streams_abandoned": g(&counts.streams_abandoned),
            "left_mid_hold_fraction": if total > 0 { abandoned as f64 / total as f64 } else { 0.0 },
            "errors": g(&counts.errors),
        })
    );
}
