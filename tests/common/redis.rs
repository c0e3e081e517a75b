//! A real `redis-server` on a free loopback port for the cluster tests, and the nodes that use it.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl RedisServer {
    /// A fresh Redis with no persistence of its own (`SAVE` writes a dump on demand) in a new
    /// directory.
    pub fn start() -> RedisServer {
        let dir = std::env::temp_dir().join(format!(
            "comet-redis-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut r = RedisServer {
            child: None,
            port: free_port(),
            dir,
        };
        r.restart();
        r
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

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
