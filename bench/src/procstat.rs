//! Process resource figures from /proc (server RSS, threads, CPU seconds, sampled every 100 ms on a
//! background thread) and getrusage for the benchmark's own CPU, since client and server share the
//! same cores.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// One reading of one or more processes (summed).
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    pub rss_kb: u64,
    pub threads: u64,
    /// utime + stime in seconds.
    pub cpu_s: f64,
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Reads /proc/PID/status (VmRSS, Threads) and /proc/PID/stat (utime, stime). None if the process
/// is gone.
pub fn sample_pid(pid: u32) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let mut s = Sample::default();
    for line in status.lines() {
        if let Some(v) = line.strip_prefix("VmRSS:") {
            s.rss_kb = v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("Threads:") {
            s.threads = v.trim().parse().unwrap_or(0);
        }
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; the numeric fields start after the last ')'.
    let after = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After ')' the first field is field 3 (state); utime is field 14 and stime field 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    s.cpu_s = (utime + stime) / clk_tck();
    Some(s)
}

/// Sums the readings of several processes (e.g. a server and its helper); None if any is gone.
pub fn sample_pids(pids: &[u32]) -> Option<Sample> {
    let mut total = Sample::default();
    for &pid in pids {
        let s = sample_pid(pid)?;
        total.rss_kb += s.rss_kb;
        total.threads += s.threads;
        total.cpu_s += s.cpu_s;
    }
    Some(total)
}

/// Busy CPU seconds of the whole machine so far (all cores: user, nice, system, irq, softirq,
/// steal from /proc/stat). Compared with the server's and the bench's own CPU it shows how much
/// other load (a compiler, say) shared the cores during a run.
pub fn machine_busy_s() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy =
        v.first()? + v.get(1)? + v.get(2)? + v.get(5)? + v.get(6)? + v.get(7).unwrap_or(&0.0);
    Some(busy / clk_tck())
}

/// 1-minute load average.
pub fn loadavg1() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// CPU seconds (user + system) used so far by the calling process.
pub fn self_cpu_s() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass; RUSAGE_SELF is always valid.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Raises the soft open-file limit to the hard limit and returns the new soft limit.
pub fn raise_nofile() -> u64 {
    // SAFETY: plain get/setrlimit on a local struct.
    unsafe {
        let mut rl: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return 0;
        }
        if rl.rlim_cur < rl.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: rl.rlim_max,
                rlim_max: rl.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                return rl.rlim_max as u64;
            }
        }
        rl.rlim_cur as u64
    }
}

#[derive(Default)]
struct Series {
    /// (seconds since the sampler started, sample)
    points: Vec<(f64, Sample)>,
    /// The process disappeared during the run.
    lost: bool,
}

/// Samples the given processes every `period` until stopped, keeping the whole series (a run lasts
/// minutes at most, so that is a few thousand points).
pub struct Sampler {
    pids: Vec<u32>,
    start: Instant,
    series: Arc<Mutex<Series>>,
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Sampler {
    /// `max_runtime` bounds the thread even if `stop` is never called.
    pub fn start(pids: Vec<u32>, period: Duration, max_runtime: Duration) -> Sampler {
        let series = Arc::new(Mutex::new(Series::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let handle = if pids.is_empty() {
            None
        } else {
            let (pids2, series2, stop2) = (pids.clone(), series.clone(), stop.clone());
            Some(thread::spawn(move || {
                while !stop2.load(Ordering::Relaxed) && start.elapsed() < max_runtime {
                    let t = start.elapsed().as_secs_f64();
                    let mut s = series2.lock().unwrap();
                    match sample_pids(&pids2) {
                        Some(x) => s.points.push((t, x)),
                        None => s.lost = true,
                    }
                    drop(s);
                    thread::sleep(period);
                }
            }))
        };
        Sampler {
            pids,
            start,
            series,
            stop,
            handle,
        }
    }

    pub fn enabled(&self) -> bool {
        !self.pids.is_empty()
    }

    /// Takes a reading now (also stored in the series) and returns it with its time mark.
    pub fn mark(&self) -> Option<(f64, Sample)> {
        if self.pids.is_empty() {
            return None;
        }
        let t = self.start.elapsed().as_secs_f64();
        let s = sample_pids(&self.pids)?;
        self.series.lock().unwrap().points.push((t, s));
        Some((t, s))
    }

    /// Peak RSS (kB) and peak thread count over [from, to] (seconds since start).
    pub fn peaks(&self, from: f64, to: f64) -> Option<(u64, u64)> {
        let s = self.series.lock().unwrap();
        let pts = s.points.iter().filter(|(t, _)| *t >= from && *t <= to);
        let mut any = false;
        let (mut rss, mut thr) = (0, 0);
        for (_, p) in pts {
            any = true;
            rss = rss.max(p.rss_kb);
            thr = thr.max(p.threads);
        }
        any.then_some((rss, thr))
    }

    pub fn process_lost(&self) -> bool {
        self.series.lock().unwrap().lost
    }

    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_self() {
        let s = sample_pid(std::process::id()).unwrap();
        assert!(s.rss_kb > 0);
        assert!(s.threads >= 1);
        assert!(self_cpu_s() >= 0.0);
    }
}
