//! A real `redis-server` on a free loopback port for the cluster tests, and the nodes that use it.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Whether `redis-server` is here. Without it a cluster test prints SKIPPED and passes, unless
/// `COMET_REQUIRE_REDIS=1` (CI), where it fails.
pub fn redis_available(test: &str) -> bool {
    let found = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var("COMET_REQUIRE_REDIS").is_ok_and(|v| v == "1") {
            panic!("{test}: redis-server is required (COMET_REQUIRE_REDIS=1) but not installed");
        }
        eprintln!("SKIPPED cluster test {test}: redis-server not installed (apt-get install redis-server)");
    }
    found
}

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    pub dir: PathBuf,
}

impl RedisServer {
    /// A fresh Redis with no persistence of its own (`SAVE` writes a dump on demand) in a new
    /// directory.
    pub fn start() -> RedisServer {
        let mut r = Self::unstarted();
        r.restart();
        r
    }

    /// A port and a directory for a Redis that is not running yet (`restart` starts it).
    pub fn unstarted() -> RedisServer {
        let port = crate::common::free_port();
        let dir = std::env::temp_dir().join(format!("comet-redis-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("redis dir");
        RedisServer {
            child: None,
            port,
            dir,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Start (again) on the same port and directory: loads `dump.rdb` there if there is one.
    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dbfilename",
                "dump.rdb",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut c) = self.connection() {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn connection(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(self.url())?.get_connection_with_timeout(Duration::from_secs(2))
    }

    /// Redis's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis-server running").id()
    }

    /// `kill -STOP`: Redis stops answering, and closes nothing (as when its host hangs or the
    /// network partitions); `cont` lets it go on.
    pub fn stop(&self) {
        signal(self.pid(), "-STOP");
    }

    pub fn cont(&self) {
        signal(self.pid(), "-CONT");
    }

    /// `kill -9`: Redis dies with whatever it had in memory.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Wait until the port is free again, so a restart can bind it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], self.port))).is_ok() {
            assert!(Instant::now() < deadline, "redis port stays open");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Write the dump a later restart loads.
    pub fn save(&self) {
        let mut c = self.connection().expect("connect");
        let _: String = redis::cmd("SAVE").query(&mut c).expect("SAVE");
    }

    /// Forget the dump: the next restart comes back empty.
    pub fn forget_dump(&self) {
        let _ = std::fs::remove_file(self.dir.join("dump.rdb"));
    }
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {sig} {pid}");
}

/// A TCP proxy in front of Redis for one node, that a test can cut: a network partition between
/// that node and Redis, while other nodes still reach it.
pub struct Partition {
    pub port: u16,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Partition {
    /// A proxy on a free port to `upstream_port`.
    pub fn to(upstream_port: u16) -> Partition {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (cut2, conns2) = (Arc::clone(&cut), Arc::clone(&conns));
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                if cut2.load(Ordering::SeqCst) {
                    // Accepted but never answered: what a node sees through a partition.
                    conns2.lock().unwrap().push(client);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else {
                    continue;
                };
                let mut all = conns2.lock().unwrap();
                all.push(client.try_clone().unwrap());
                all.push(server.try_clone().unwrap());
                drop(all);
                relay(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    Arc::clone(&cut2),
                );
                relay(server, client, Arc::clone(&cut2));
            }
        });
        Partition { port, cut, conns }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// From now on nothing passes, either way, on old or new connections; nothing is closed.
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    /// Heal it: every connection open across the cut is closed (what was sent meanwhile is lost
    /// with it), and new ones pass again.
    pub fn heal(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        self.cut.store(false, Ordering::SeqCst);
    }
}

/// Copy `from` to `to` until either closes; while cut, read nothing (bytes stay where they are).
fn relay(mut from: TcpStream, mut to: TcpStream, cut: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        let _ = from.set_read_timeout(Some(Duration::from_millis(20)));
        loop {
            if cut.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            match from.read(&mut buf) {
                Ok(0) => break,
                // Read just as the cut came: lost in the partition (heal closes this anyway).
                Ok(_) if cut.load(Ordering::SeqCst) => {}
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => break,
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
