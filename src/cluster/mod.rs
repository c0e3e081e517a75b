//! The Redis link (`--redis`): nodes that share one quote book through Redis.
//!
//! What lives in Redis, the scripts and their answers are in [`wire`]; the rules by which a
//! node's book follows Redis are in `replica`. This module is the link's two threads and its
//! health.
//!
//! # Threads, and why not may sockets
//! redis-rs's blocking client runs on two dedicated OS threads, never on a may worker:
//! - the **subscriber** holds the `SUBSCRIBE` connection and applies every announced change to
//!   the local book, in seq order, waking that node's waiters. After every (re)connect it
//!   subscribes first, then writes back what the node knows that Redis lacks (a Redis that came
//!   back empty, or from an older dump), then loads `cq:quotes`, so it never serves across a gap;
//! - the **commander** runs publishes (many at once in one pipeline) and the feed lease.
//!
//! Handler coroutines hand a publish to the commander through a channel and park on a may
//! channel for the answer. Driving redis-rs over may's own sockets would need its connection
//! trait reimplemented on may's I/O; two threads are simpler and keep every blocking read off
//! the workers.
//!
//! # A link that dies quietly
//! Redis can stop answering without closing anything (its host dies, a failover, a partition; a
//! stopped process shows it): the kernel keeps the connection open and a subscriber that only
//! reads would wait forever, serving stale quotes. So within `--redis-timeout`:
//! - the subscriber sends `PING` on its subscription after a quarter of it in silence, and takes
//!   the link for dead when no answer comes within half of it;
//! - every command has that timeout, and every socket TCP keepalive and `TCP_USER_TIMEOUT`.
//!
//! A dead link sets `comet_redis_up` to 0 and `/readyz` to 503; publishes answer 503 at once;
//! held polls and streams stay held on the last quotes; the node reconnects (jittered backoff) and
//! resyncs. A node started while Redis is down listens at once and answers `/api/` with 503 until
//! its first sync.

pub mod wire;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use redis::{Commands, Connection, RedisResult};

use crate::book::QuoteBook;
use crate::config::redacted_url;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::replica::RemoteQuote;
use crate::throttle::Throttle;
use wire::{CHANNEL, FEED_KEY, QUOTES_KEY};

/// How long a feed lease lasts, and how often it is renewed or tried: a dead leader's feed is
/// taken over within `FEED_LEASE + FEED_TICK`.
const FEED_LEASE: Duration = Duration::from_secs(3);
const FEED_TICK: Duration = Duration::from_secs(1);
/// Publishes sent to Redis in one pipeline at most.
const PIPELINE_MAX: usize = 256;
/// Reconnect backoff: from this, doubling, to the cap, each wait drawn from its upper half.
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(2);
/// While Redis stays away, one log line per this at most.
const WAITING_LOG_EVERY: Duration = Duration::from_secs(5);

/// A publish handed to the commander, and where its answer goes.
struct Publish {
    updates: Vec<(String, f64)>,
    reply: may::sync::mpsc::Sender<Result<u64, ApiError>>,
    /// Sent to Redis by then, or not at all: its caller waits only so long (`Cluster::publish`),
    /// and a change it was told had failed must not happen after all.
    send_by: Instant,
}

/// This node's end of the cluster.
pub struct Cluster {
    client: redis::Client,
    /// The Redis URL as logs show it (without a password).
    shown: String,
    node_id: String,
    book: Arc<QuoteBook>,
    metrics: Arc<Metrics>,
    max_symbols: usize,
    /// `--redis-timeout`: how soon a silent Redis counts as gone.
    timeout: Duration,
    /// Symbols (and opening prices) this node brings: created in Redis when absent.
    seed: Vec<(String, f64)>,
    /// Whether this node wants the feed (it runs it only while it holds the lease).
    wants_feed: bool,
    /// To the commander thread. `Sender` is `Sync`: handlers send without a lock.
    commands: std_mpsc::Sender<Publish>,
    /// Changes Redis acknowledged (the publisher got its 200) that the subscriber has not seen
    /// announced yet. If Redis loses them (killed right after answering), the next sync writes
    /// them back; an entry leaves only once Redis has it: announced, or written back.
    acked: Mutex<HashMap<String, RemoteQuote>>,
    /// Connected and synced now.
    up: AtomicBool,
    /// Synced at least once: the node has the quote book and may serve it.
    synced: AtomicBool,
    leader: AtomicBool,
    stopping: AtomicBool,
}

/// Jittered exponential backoff for reconnects: many nodes that lost Redis together do not all
/// knock on its door at the same instant when it comes back.
fn backoff(failures: u32) -> Duration {
    let ceiling = BACKOFF_START
        .saturating_mul(1 << failures.min(8))
        .min(BACKOFF_CAP);
    ceiling.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
}

/// A client whose every connection has TCP keepalive and `TCP_USER_TIMEOUT`: a Redis host that
/// vanishes without a reset is found even while nothing is being read.
fn client(url: &str, timeout: Duration) -> RedisResult<redis::Client> {
    use redis::IntoConnectionInfo;
    let secs = timeout.as_secs().max(1);
    // redis-rs's own socket2 (a version other than the one this crate uses).
    let keepalive = redis::io::tcp::socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(secs))
        .with_interval(Duration::from_secs(secs.div_ceil(3)))
        .with_retries(3);
    let tcp = redis::io::tcp::TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive)
        .set_user_timeout(timeout);
    redis::Client::open(url.into_connection_info()?.set_tcp_settings(tcp))
}

impl Cluster {
    /// Join the cluster in Redis at `url`: start the subscriber and commander threads and return
    /// at once. The node is not ready (`/api/` answers 503) until the subscriber's first sync;
    /// while Redis is away the subscriber keeps trying, and says so at most every 5 s.
    pub fn start(
        url: &str,
        book: Arc<QuoteBook>,
        metrics: Arc<Metrics>,
        max_symbols: usize,
        seed: Vec<(String, f64)>,
        wants_feed: bool,
        timeout: Duration,
    ) -> std::io::Result<Arc<Cluster>> {
        let client = client(url, timeout)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let (tx, rx) = std_mpsc::channel();
        let node_id = format!(
            "{}-{}-{:08x}",
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|h| h.trim().to_string())
                .unwrap_or_default(),
            std::process::id(),
            rand::thread_rng().gen::<u32>()
        );
        let cluster = Arc::new(Cluster {
            client,
            shown: redacted_url(url),
            node_id,
            book,
            metrics,
            max_symbols,
            timeout,
            seed,
            wants_feed,
            commands: tx,
            acked: Mutex::new(HashMap::new()),
            up: AtomicBool::new(false),
            synced: AtomicBool::new(false),
            leader: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
        });
        let me = Arc::clone(&cluster);
        std::thread::Builder::new()
            .name("redis-sub".into())
            .spawn(move || me.subscriber())?;
        let me = Arc::clone(&cluster);
        std::thread::Builder::new()
            .name("redis-cmd".into())
            .spawn(move || me.commander(rx))?;
        Ok(cluster)
    }

    /// Connected to Redis and synced now.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Synced with Redis at least once: the node holds the quote book and may serve it (the last
    /// quotes it knows, while Redis is away).
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Whether this node holds the feed lease (and so runs the random feed).
    pub fn is_feed_leader(&self) -> bool {
        self.leader.load(Ordering::Acquire)
    }

    /// Publish a batch through Redis, all or none; the change reaches this node's book (and
    /// every other node's) through the subscription. Blocks the calling coroutine (or thread),
    /// never a may worker, and never for much longer than `--redis-timeout`: a link known to be
    /// down answers 503 at once.
    pub fn publish(&self, updates: &[(String, f64)]) -> Result<u64, ApiError> {
        if !self.is_up() {
            return Err(ApiError::Unavailable);
        }
        let (reply, answer) = may::sync::mpsc::channel();
        let sent = self.commands.send(Publish {
            updates: updates.to_vec(),
            reply,
            send_by: Instant::now() + self.timeout,
        });
        if sent.is_err() {
            return Err(ApiError::Unavailable);
        }
        // Sent within the timeout or dropped, then answered within the timeout: the commander
        // has answered by twice the timeout; a little more guards against one that never does.
        let seq = answer
            .recv_timeout(self.timeout * 2 + Duration::from_millis(500))
            .unwrap_or(Err(ApiError::Unavailable))?;
        self.metrics
            .published
            .fetch_add(updates.len() as u64, Ordering::Relaxed);
        Ok(seq)
    }

    /// Stop renewing the feed lease and give it up, so another node takes the feed at once. With
    /// Redis away, there is nothing to give up, and no wait: shutdown stays within its grace.
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        if self.leader.swap(false, Ordering::AcqRel) && self.is_up() {
            let quick = self.timeout.min(Duration::from_millis(500));
            if let Ok(mut con) = self.client.get_connection_with_timeout(quick) {
                let _ = con.set_read_timeout(Some(quick));
                let _: RedisResult<i64> = redis::Script::new(wire::RELEASE)
                    .key(FEED_KEY)
                    .arg(&self.node_id)
                    .invoke(&mut con);
            }
        }
    }

    fn set_up(&self, up: bool) {
        self.up.store(up, Ordering::Release);
        self.metrics
            .redis_up
            .store(u64::from(up), Ordering::Relaxed);
    }

    /// A command connection: every command answered within the timeout, or an error.
    fn connect(&self) -> RedisResult<Connection> {
        let con = self.client.get_connection_with_timeout(self.timeout)?;
        con.set_read_timeout(Some(self.timeout))?;
        con.set_write_timeout(Some(self.timeout))?;
        Ok(con)
    }

    // ------------------------------------------------------------------ subscriber thread

    fn subscriber(self: Arc<Self>) {
        let mut failures = 0u32;
        let mut waiting = Throttle::new(WAITING_LOG_EVERY);
        loop {
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
            let mut was_up = false;
            match self.follow(&mut was_up) {
                Ok(()) => return, // stopping
                Err(e) => {
                    self.set_up(false);
                    if was_up {
                        log::warn!(
                            "lost Redis at {}: {e}; keeping the last quotes, reconnecting",
                            self.shown
                        );
                        // It was good: the backoff starts again from the bottom.
                        failures = 0;
                        waiting.reset();
                    } else if let Some(more) = waiting.ready(Instant::now()) {
                        let first = failures == 0 && !self.is_synced();
                        log::warn!(
                            "{} Redis at {}: {e}{}",
                            if first {
                                "waiting for"
                            } else {
                                "still waiting for"
                            },
                            self.shown,
                            if more > 0 {
                                format!(" ({} attempts since the last line)", more + 1)
                            } else {
                                String::new()
                            }
                        );
                    }
                    self.metrics
                        .redis_reconnects
                        .fetch_add(1, Ordering::Relaxed);
                    failures += 1;
                    std::thread::sleep(backoff(failures));
                }
            }
        }
    }

    /// One connection's life: subscribe, sync, then apply announcements until it breaks (or goes
    /// silent). `was_up` tells the caller whether it got as far as serving.
    fn follow(&self, was_up: &mut bool) -> RedisResult<()> {
        let mut sub = self.connect()?;
        let mut pubsub = sub.as_pubsub();
        // Subscribe first: whatever changes while we load is announced to us, and applied if it
        // is newer than what the load brought.
        pubsub.subscribe(CHANNEL)?;
        let mut con = self.connect()?;
        self.sync(&mut con)?;
        drop(con);
        self.set_up(true);
        if !self.synced.swap(true, Ordering::AcqRel) {
            log::info!(
                "joined the cluster in Redis at {} as {}: {} symbols, cursor {}",
                self.shown,
                self.node_id,
                self.book.len(),
                self.book.current_seq()
            );
        } else {
            log::info!("Redis at {} is back; synced", self.shown);
        }
        *was_up = true;
        // Read in short slices so that stopping is noticed; ping after a quarter of the timeout
        // in silence, and give the answer half of it: a Redis gone silent is noticed within the
        // timeout, the slice and the thread's wake-up included.
        let tick = (self.timeout / 8).clamp(Duration::from_millis(10), Duration::from_millis(250));
        let quiet = self.timeout / 4;
        let answer_within = self.timeout / 2;
        pubsub.set_read_timeout(Some(tick))?;
        let mut heard = Instant::now();
        loop {
            if self.stopping.load(Ordering::Acquire) {
                return Ok(());
            }
            match pubsub.get_message() {
                Ok(msg) => {
                    heard = Instant::now();
                    let text = String::from_utf8_lossy(msg.get_payload_bytes());
                    match wire::parse_change(&text) {
                        Some((symbol, q)) => self.apply(&[(symbol, q)]),
                        None => log::warn!("ignoring a malformed change announcement {text:?}"),
                    }
                }
                Err(e) if e.is_timeout() && heard.elapsed() >= quiet => {
                    // Messages that arrive meanwhile are kept for the next get_message.
                    pubsub.set_read_timeout(Some(answer_within))?;
                    let _: redis::Value = pubsub.ping()?;
                    pubsub.set_read_timeout(Some(tick))?;
                    heard = Instant::now();
                }
                Err(e) if e.is_timeout() => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Apply changes to the book, then advance the cursor, then wake: a woken poll always sees
    /// what woke it (`replica`).
    fn apply(&self, changes: &[(String, RemoteQuote)]) {
        let mut applied = Vec::new();
        let mut top = 0;
        {
            let mut acked = self.acked.lock().unwrap_or_else(|e| e.into_inner());
            for (symbol, q) in changes {
                top = top.max(q.seq);
                if let Some(sym) = self.book.apply_remote(symbol, *q) {
                    applied.push(sym);
                }
                // Redis has it (it announced it, or holds it): no longer ours to write back.
                if acked.get(symbol).is_some_and(|a| a.seq <= q.seq) {
                    acked.remove(symbol);
                }
            }
        }
        self.book.advance(top);
        self.metrics
            .redis_changes
            .fetch_add(applied.len() as u64, Ordering::Relaxed);
        for sym in applied {
            sym.wake_all();
        }
    }

    /// After a (re)connect: write back what this node has newer than Redis (Redis restarted
    /// empty, or from an older dump), each quote with its own seq; create this node's symbols if
    /// nobody has them yet; then load every quote Redis has and apply the newer ones.
    fn sync(&self, con: &mut Connection) -> RedisResult<()> {
        let stored: HashMap<String, String> = con.hgetall(QUOTES_KEY)?;
        // A copy: entries leave the list only once the write-back has succeeded.
        let acked = self.acked.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let newer = wire::write_backs(&self.book.remote_quotes(), &acked, &stored);
        // Also with nothing to write back: raises Redis's counter to what this node has seen
        // (a Redis restored from an older dump).
        let n: i64 = wire::restore_cmd(self.book.current_seq(), &newer).query(con)?;
        if n > 0 {
            log::info!("wrote back {n} quotes that Redis lacked or had older");
        }
        {
            let mut list = self.acked.lock().unwrap_or_else(|e| e.into_inner());
            for (s, q) in &acked {
                if list.get(s) == Some(q) {
                    list.remove(s);
                }
            }
        }
        // This node's symbols that nobody knows yet open at this node's prices.
        let absent: Vec<(String, f64)> = self
            .seed
            .iter()
            .filter(|(s, _)| !stored.contains_key(s) && self.book.get(s).is_none())
            .cloned()
            .collect();
        if !absent.is_empty() {
            let cmd = wire::publish_cmd(self.book.current_seq(), self.max_symbols, &absent);
            // EVALSHA needs the script loaded on this connection's Redis.
            let loaded = load_publish_script(con);
            if let Err(e) = loaded.and_then(|()| cmd.query::<redis::Value>(con)) {
                log::warn!("could not create this node's symbols in Redis: {e}");
            }
        }
        let stored: HashMap<String, String> = con.hgetall(QUOTES_KEY)?;
        let theirs: Vec<(String, RemoteQuote)> = stored
            .iter()
            .filter_map(|(s, v)| wire::parse_value(v).map(|q| (s.clone(), q)))
            .collect();
        self.apply(&theirs);
        Ok(())
    }

    // ------------------------------------------------------------------ commander thread

    /// A command connection with the publish script loaded (publishes run it by its hash; a
    /// Redis that restarted has lost it, but this connection is new then too).
    fn command_connection(&self) -> RedisResult<Connection> {
        let mut con = self.connect()?;
        load_publish_script(&mut con)?;
        Ok(con)
    }

    fn commander(self: Arc<Self>, rx: std_mpsc::Receiver<Publish>) {
        let mut con: Option<Connection> = None;
        let mut failures = 0u32;
        let mut retry_at = Instant::now();
        let mut next_tick = Instant::now();
        loop {
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
            // Connect only while the subscriber says Redis is there: a dead Redis would hold this
            // thread in connect for the whole timeout, and the publishes queued behind it.
            if con.is_none() && self.is_up() && Instant::now() >= retry_at {
                match self.command_connection() {
                    Ok(c) => {
                        con = Some(c);
                        failures = 0;
                    }
                    Err(_) => {
                        failures += 1;
                        retry_at = Instant::now() + backoff(failures);
                    }
                }
            }
            let wait = next_tick.saturating_duration_since(Instant::now());
            let first = match rx.recv_timeout(wait.max(Duration::from_millis(1))) {
                Ok(p) => Some(p),
                Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
            };
            if let Some(first) = first {
                let mut batch = vec![first];
                while batch.len() < PIPELINE_MAX {
                    match rx.try_recv() {
                        Ok(p) => batch.push(p),
                        Err(_) => break,
                    }
                }
                batch = self.run_batch(&mut con, batch, &mut failures, &mut retry_at);
                for p in batch {
                    let _ = p.reply.send(Err(ApiError::Unavailable));
                }
            }
            if Instant::now() >= next_tick {
                next_tick = Instant::now() + FEED_TICK;
                if self.wants_feed {
                    let held = match con.as_mut() {
                        Some(c) if self.is_up() => self.hold_lease(c).unwrap_or_else(|_| {
                            con = None; // broken or silent: a fresh one next time
                            false
                        }),
                        _ => false,
                    };
                    if self.leader.swap(held, Ordering::AcqRel) != held {
                        log::info!("{} the feed lease", if held { "took" } else { "lost" });
                    }
                    self.metrics
                        .feed_leader
                        .store(u64::from(held), Ordering::Relaxed);
                }
            }
        }
    }

    /// Run a batch of publishes; what comes back is left unanswered (the caller answers 503).
    /// A connection that broke while idle (Redis restarted) is found by the first publish after;
    /// that batch is tried once more on a fresh connection. A link known to be down, or a Redis
    /// that did not answer within the timeout, is not tried again: 503 at once.
    fn run_batch(
        &self,
        con: &mut Option<Connection>,
        mut batch: Vec<Publish>,
        failures: &mut u32,
        retry_at: &mut Instant,
    ) -> Vec<Publish> {
        for _ in 0..2 {
            // Those whose caller no longer waits are not sent (they are answered 503).
            let now = Instant::now();
            let (late, timely): (Vec<Publish>, Vec<Publish>) =
                batch.into_iter().partition(|p| now >= p.send_by);
            for p in late {
                let _ = p.reply.send(Err(ApiError::Unavailable));
            }
            batch = timely;
            if batch.is_empty() || !self.is_up() {
                return batch;
            }
            if con.is_none() && Instant::now() >= *retry_at {
                *con = self.command_connection().ok();
            }
            let Some(c) = con.as_mut() else {
                return batch;
            };
            match self.run_pipeline(c, batch) {
                Ok(()) => {
                    *failures = 0;
                    return Vec::new();
                }
                Err((unsent, timed_out)) => {
                    batch = unsent;
                    *con = None;
                    *failures += 1;
                    *retry_at = Instant::now() + backoff(*failures);
                    if timed_out {
                        return batch;
                    }
                }
            }
        }
        batch
    }

    /// Renew the lease, or take it if free: whether this node holds it now. An error (the
    /// connection broke, or Redis did not answer in time) ends the attempt at once, without a
    /// second command to wait for while publishes queue.
    fn hold_lease(&self, con: &mut Connection) -> RedisResult<bool> {
        let ms = FEED_LEASE.as_millis() as u64;
        if self.leader.load(Ordering::Acquire) {
            let renewed: i64 = redis::Script::new(wire::RENEW)
                .key(FEED_KEY)
                .arg(&self.node_id)
                .arg(ms)
                .invoke(con)?;
            if renewed == 1 {
                return Ok(true);
            }
        }
        let taken: Option<String> = redis::cmd("SET")
            .arg(FEED_KEY)
            .arg(&self.node_id)
            .arg("NX")
            .arg("PX")
            .arg(ms)
            .query(con)?;
        Ok(taken.is_some())
    }

    /// Send many publishes as one pipeline and answer each. Gives the batch back, unanswered, if
    /// the connection broke (and whether it was a timeout).
    fn run_pipeline(
        &self,
        con: &mut Connection,
        batch: Vec<Publish>,
    ) -> Result<(), (Vec<Publish>, bool)> {
        let mut pipe = redis::pipe();
        // Each command's own reply: a script error (the symbol limit) fails only its publish.
        pipe.ignore_errors();
        let floor = self.book.current_seq();
        for p in &batch {
            pipe.add_command(wire::publish_cmd(floor, self.max_symbols, &p.updates));
        }
        match pipe.query::<Vec<redis::Value>>(con) {
            Ok(values) => {
                let noscript = values
                    .iter()
                    .any(|v| matches!(v, redis::Value::ServerError(e) if e.code() == "NOSCRIPT"));
                for (p, v) in batch.into_iter().zip(values) {
                    let _ = p.reply.send(self.acknowledge(v));
                }
                // Redis forgot the script (SCRIPT FLUSH): a new connection loads it again.
                if noscript {
                    return Err((Vec::new(), false));
                }
                Ok(())
            }
            Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                log::debug!("publish to Redis failed: {e}");
                Err((batch, e.is_timeout()))
            }
            Err(e) => {
                log::warn!("publish to Redis failed: {e}");
                for p in batch {
                    let _ = p.reply.send(Err(ApiError::Unavailable));
                }
                Ok(())
            }
        }
    }

    /// A publish's answer: its last seq, its changes remembered until Redis announces them
    /// (unless the announcement came first: the book has them already).
    fn acknowledge(&self, v: redis::Value) -> Result<u64, ApiError> {
        let changes = wire::publish_outcome(v, self.max_symbols)?;
        let mut acked = self.acked.lock().unwrap_or_else(|e| e.into_inner());
        let mut last = 0;
        for (symbol, q) in changes {
            last = last.max(q.seq);
            let announced = self
                .book
                .get(&symbol)
                .is_some_and(|s| s.quote().seq >= q.seq);
            if !announced {
                acked.insert(symbol, q);
            }
        }
        Ok(last)
    }
}

/// Load the publish script into `con`'s Redis, which publishes then run by its hash.
fn load_publish_script(con: &mut Connection) -> RedisResult<()> {
    let _: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(wire::PUBLISH)
        .query(con)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        assert!(backoff(1) <= BACKOFF_START * 2);
        assert!(backoff(1) >= BACKOFF_START);
        assert!(backoff(20) <= BACKOFF_CAP);
        assert!(backoff(20) >= BACKOFF_CAP / 2);
    }
}
