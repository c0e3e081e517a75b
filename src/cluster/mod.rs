//! The Redis link (`--redis`): nodes that share one quote book through Redis.
//!
//! # What lives in Redis
//! - `cq:seq`: the last seq handed out, cluster-wide.
//! - `cq:quotes`: a hash, symbol -> `"<seq> <ts> <price> <open>"`: every symbol's latest quote.
//! - channel `cq:changes`: `"<symbol> <seq> <ts> <price> <open>"` for every change, in seq order.
//! - `cq:feed`: the random feed's lease, the id of the node that may run it.
//!
//! # Seqs
//! One Lua script (`PUBLISH`) gives every change `seq = max(previous + 1, Redis TIME in µs,
//! floor + 1)`, stores the quote and announces it, atomically; `floor` is the highest seq the
//! publishing node has seen. A restarted or restored Redis therefore never hands out a seq below
//! one a node has already seen: TIME has moved on, and the floor covers seqs that ran ahead of
//! it. (A plain `INCR` counter starts again at 1 after Redis loses its data, and every change
//! with a seq below a client's cursor is lost to that client: `tests/cluster.rs` shows it.)
//!
//! # Threads, and why not may sockets
//! redis-rs's blocking client runs on two dedicated OS threads, never on a may worker:
//! - the **subscriber** holds the `SUBSCRIBE` connection and applies every announced change to
//!   the local book, in seq order, waking that node's waiters. After every (re)connect it
//!   subscribes first, then loads `cq:quotes`, then writes back what the node knows that Redis
//!   lacks (a Redis that came back empty, or from an older dump), so it never serves across a gap;
//! - the **commander** runs publishes (many at once in one pipeline) and the feed lease.
//!
//! Handler coroutines hand a publish to the commander through a channel and park on a may
//! channel for the answer. Driving redis-rs over may's own sockets would need its connection
//! trait reimplemented on may's I/O; two threads are simpler and keep every blocking read off
//! the workers.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use redis::{Commands, Connection, RedisResult};

use crate::book::{QuoteBook, RemoteQuote};
use crate::error::ApiError;
use crate::metrics::Metrics;

const SEQ_KEY: &str = "cq:seq";
const QUOTES_KEY: &str = "cq:quotes";
const CHANNEL: &str = "cq:changes";
const FEED_KEY: &str = "cq:feed";

/// How long a feed lease lasts, and how often it is renewed or tried: a dead leader's feed is
/// taken over within `FEED_LEASE + FEED_TICK`.
const FEED_LEASE: Duration = Duration::from_secs(3);
const FEED_TICK: Duration = Duration::from_secs(1);
/// Publishes sent to Redis in one pipeline at most.
const PIPELINE_MAX: usize = 256;
/// How long a connect or a command may take before Redis counts as down.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnect backoff: from this, doubling, to the cap, each wait drawn from its upper half.
const BACKOFF_START: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(2);

/// Apply a batch of changes, all or none. KEYS: seq, quotes. ARGV: floor, max symbols, then
/// symbol/price pairs. Returns one `"<symbol> <seq> <ts> <price> <open>"` per change.
const PUBLISH: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local floor = tonumber(ARGV[1])
local max = tonumber(ARGV[2])
local new, nnew = {}, 0
for i = 3, #ARGV, 2 do
  local s = ARGV[i]
  if not new[s] and redis.call('HEXISTS', KEYS[2], s) == 0 then
    new[s] = true
    nnew = nnew + 1
  end
end
if nnew > 0 and redis.call('HLEN', KEYS[2]) + nnew > max then
  return redis.error_reply('LIMIT ' .. max)
end
local seq = tonumber(redis.call('GET', KEYS[1]) or '0')
local out = {}
for i = 3, #ARGV, 2 do
  local s, price = ARGV[i], ARGV[i + 1]
  seq = math.max(seq + 1, now, floor + 1)
  local open = price
  local old = redis.call('HGET', KEYS[2], s)
  if old then
    open = string.match(old, '^%S+ %S+ %S+ (%S+)$') or price
  end
  local v = string.format('%.0f %.0f %s %s', seq, now, price, open)
  redis.call('HSET', KEYS[2], s, v)
  redis.call('PUBLISH', 'cq:changes', s .. ' ' .. v)
  out[#out + 1] = s .. ' ' .. v
end
redis.call('SET', KEYS[1], string.format('%.0f', seq))
return out
"#;

/// Write back quotes Redis lacks or has older, each as a new change with a fresh seq (so that
/// every node, and every client whose cursor went past the old seq, takes it). KEYS: seq,
/// quotes. ARGV: floor, then symbol/seq/price/open quadruples. Returns how many were written.
const RESTORE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local floor = tonumber(ARGV[1])
local seq = math.max(tonumber(redis.call('GET', KEYS[1]) or '0'), floor)
local n = 0
for i = 2, #ARGV, 4 do
  local s, their, price, open = ARGV[i], tonumber(ARGV[i + 1]), ARGV[i + 2], ARGV[i + 3]
  local old = redis.call('HGET', KEYS[2], s)
  local have = old and tonumber(string.match(old, '^(%S+)')) or -1
  if have < their then
    seq = math.max(seq + 1, now)
    local v = string.format('%.0f %.0f %s %s', seq, now, price, open)
    redis.call('HSET', KEYS[2], s, v)
    redis.call('PUBLISH', 'cq:changes', s .. ' ' .. v)
    n = n + 1
  end
end
redis.call('SET', KEYS[1], string.format('%.0f', seq))
return n
"#;

/// Renew the feed lease if this node holds it. KEYS: feed. ARGV: node id, lease ms.
const RENEW: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

/// Give the feed lease up if this node holds it. KEYS: feed. ARGV: node id.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

/// `"<symbol> <seq> <ts> <price> <open>"`, as the scripts announce and answer.
pub fn parse_change(text: &str) -> Option<(String, RemoteQuote)> {
    let mut parts = text.split(' ');
    let symbol = parts.next()?.to_string();
    let q = parse_stored(parts.next()?, parts.next()?, parts.next()?, parts.next()?)?;
    parts.next().is_none().then_some((symbol, q))
}

/// `"<seq> <ts> <price> <open>"`, a `cq:quotes` value.
pub fn parse_value(text: &str) -> Option<RemoteQuote> {
    let mut parts = text.split(' ');
    let q = parse_stored(parts.next()?, parts.next()?, parts.next()?, parts.next()?)?;
    parts.next().is_none().then_some(q)
}

fn parse_stored(seq: &str, ts: &str, price: &str, open: &str) -> Option<RemoteQuote> {
    let (price, open): (f64, f64) = (price.parse().ok()?, open.parse().ok()?);
    (price.is_finite() && open.is_finite()).then_some(RemoteQuote {
        seq: seq.parse().ok()?,
        ts: ts.parse().ok()?,
        price,
        open,
    })
}

/// A publish handed to the commander, and where its answer goes.
struct Publish {
    updates: Vec<(String, f64)>,
    reply: may::sync::mpsc::Sender<Result<u64, ApiError>>,
}

/// This node's end of the cluster.
pub struct Cluster {
    client: redis::Client,
    node_id: String,
    book: Arc<QuoteBook>,
    metrics: Arc<Metrics>,
    max_symbols: usize,
    /// Symbols (and opening prices) this node brings: created in Redis when absent.
    seed: Vec<(String, f64)>,
    /// Whether this node wants the feed (it runs it only while it holds the lease).
    wants_feed: bool,
    /// To the commander thread. `Sender` is `Sync`: handlers send without a lock.
    commands: std_mpsc::Sender<Publish>,
    /// Changes Redis acknowledged (the publisher got its 200) that the subscriber has not seen
    /// announced yet. If Redis loses them (killed right after answering), the next sync writes
    /// them back: an acknowledged publish is never lost.
    acked: Mutex<HashMap<String, RemoteQuote>>,
    up: AtomicBool,
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

fn connect(client: &redis::Client) -> RedisResult<Connection> {
    let mut con = client.get_connection_with_timeout(IO_TIMEOUT)?;
    con.set_read_timeout(Some(IO_TIMEOUT))?;
    con.set_write_timeout(Some(IO_TIMEOUT))?;
    // Publishes run the script by its hash (EVALSHA): Redis need not hash ~1 KB per publish.
    // A Redis that restarted has lost it, but this connection is new then too.
    let _: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(PUBLISH)
        .query(&mut con)?;
    Ok(con)
}

/// The SHA-1 Redis knows the publish script by.
fn publish_sha() -> &'static str {
    static SHA: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| redis::Script::new(PUBLISH).get_hash().to_string());
    &SHA
}

/// A price as Redis stores it: Rust's shortest text that reads back to the same f64.
fn price_text(p: f64) -> String {
    format!("{p}")
}

impl Cluster {
    /// Join the cluster in Redis at `url`: start the subscriber and commander threads and wait
    /// until the first sync is done (retrying while Redis is unreachable), so the node never
    /// serves what it has not loaded.
    pub fn start(
        url: &str,
        book: Arc<QuoteBook>,
        metrics: Arc<Metrics>,
        max_symbols: usize,
        seed: Vec<(String, f64)>,
        wants_feed: bool,
    ) -> std::io::Result<Arc<Cluster>> {
        let client = redis::Client::open(url)
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
            node_id,
            book,
            metrics,
            max_symbols,
            seed,
            wants_feed,
            commands: tx,
            acked: Mutex::new(HashMap::new()),
            up: AtomicBool::new(false),
            leader: AtomicBool::new(false),
            stopping: AtomicBool::new(false),
        });
        let (synced_tx, synced_rx) = std_mpsc::channel();
        let me = Arc::clone(&cluster);
        std::thread::Builder::new()
            .name("redis-sub".into())
            .spawn(move || me.subscriber(synced_tx))?;
        let me = Arc::clone(&cluster);
        std::thread::Builder::new()
            .name("redis-cmd".into())
            .spawn(move || me.commander(rx))?;
        let started = Instant::now();
        loop {
            match synced_rx.recv_timeout(Duration::from_secs(5)) {
                Ok(()) => break,
                Err(std_mpsc::RecvTimeoutError::Timeout) => log::warn!(
                    "still waiting for Redis at {url} after {:.0} s; not serving until it answers",
                    started.elapsed().as_secs_f64()
                ),
                Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(std::io::Error::other("the Redis subscriber thread died"))
                }
            }
        }
        log::info!(
            "joined the cluster in Redis at {url} as {}: {} symbols, cursor {}",
            cluster.node_id,
            cluster.book.len(),
            cluster.book.current_seq()
        );
        Ok(cluster)
    }

    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Whether this node holds the feed lease (and so runs the random feed).
    pub fn is_feed_leader(&self) -> bool {
        self.leader.load(Ordering::Acquire)
    }

    /// Publish a batch through Redis, all or none; the change reaches this node's book (and
    /// every other node's) through the subscription. Blocks the calling coroutine (or thread),
    /// never a may worker.
    pub fn publish(&self, updates: &[(String, f64)]) -> Result<u64, ApiError> {
        if !self.is_up() {
            return Err(ApiError::Unavailable);
        }
        let (reply, answer) = may::sync::mpsc::channel();
        let sent = self.commands.send(Publish {
            updates: updates.to_vec(),
            reply,
        });
        if sent.is_err() {
            return Err(ApiError::Unavailable);
        }
        let seq = answer.recv().unwrap_or(Err(ApiError::Unavailable))?;
        self.metrics
            .published
            .fetch_add(updates.len() as u64, Ordering::Relaxed);
        Ok(seq)
    }

    /// Stop renewing the feed lease and give it up, so another node takes the feed at once.
    pub fn shutdown(&self) {
        self.stopping.store(true, Ordering::Release);
        if self.leader.swap(false, Ordering::AcqRel) {
            if let Ok(mut con) = connect(&self.client) {
                let _: RedisResult<i64> = redis::Script::new(RELEASE)
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

    // ------------------------------------------------------------------ subscriber thread

    fn subscriber(self: Arc<Self>, synced: std_mpsc::Sender<()>) {
        let mut failures = 0;
        loop {
            match self.follow(&synced) {
                Ok(()) => return, // stopping
                Err(e) => {
                    if self.is_up() {
                        log::warn!("lost Redis: {e}; keeping the last quotes, reconnecting");
                    } else {
                        log::debug!("Redis not reachable: {e}");
                    }
                    self.set_up(false);
                    self.metrics
                        .redis_reconnects
                        .fetch_add(1, Ordering::Relaxed);
                    failures += 1;
                    std::thread::sleep(backoff(failures));
                }
            }
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
        }
    }

    /// One connection's life: subscribe, sync, then apply announcements until it breaks.
    fn follow(&self, synced: &std_mpsc::Sender<()>) -> RedisResult<()> {
        let mut sub = connect(&self.client)?;
        let mut pubsub = sub.as_pubsub();
        // Subscribe first: whatever changes while we load is announced to us, and applied if it
        // is newer than what the load brought.
        pubsub.subscribe(CHANNEL)?;
        let mut con = connect(&self.client)?;
        self.sync(&mut con)?;
        self.set_up(true);
        let _ = synced.send(());
        pubsub.set_read_timeout(Some(Duration::from_millis(250)))?;
        loop {
            if self.stopping.load(Ordering::Acquire) {
                return Ok(());
            }
            let msg = match pubsub.get_message() {
                Ok(m) => m,
                Err(e) if e.is_timeout() => continue,
                Err(e) => return Err(e),
            };
            let text = String::from_utf8_lossy(msg.get_payload_bytes());
            match parse_change(&text) {
                Some((symbol, q)) => self.apply(&[(symbol, q)]),
                None => log::warn!("ignoring a malformed change announcement {text:?}"),
            }
        }
    }

    /// Apply changes to the book, then advance the cursor, then wake: a woken poll always sees
    /// what woke it (`QuoteBook::apply_remote`).
    fn apply(&self, changes: &[(String, RemoteQuote)]) {
        let mut applied = Vec::new();
        let mut top = 0;
        for (symbol, q) in changes {
            top = top.max(q.seq);
            if let Some(sym) = self.book.apply_remote(symbol, *q) {
                applied.push(sym);
            }
            let mut acked = self.acked.lock().unwrap_or_else(|e| e.into_inner());
            if acked.get(symbol).is_some_and(|a| a.seq <= q.seq) {
                acked.remove(symbol);
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
    /// empty, or from an older dump), create this node's symbols if nobody has them yet, then
    /// load every quote Redis has and apply the newer ones.
    fn sync(&self, con: &mut Connection) -> RedisResult<()> {
        let stored: HashMap<String, String> = con.hgetall(QUOTES_KEY)?;
        let stored_seq = |s: &str| stored.get(s).and_then(|v| parse_value(v)).map(|q| q.seq);
        // Ours that Redis lacks or has older, and changes Redis acknowledged but never announced.
        let mut newer: HashMap<String, RemoteQuote> = self
            .book
            .remote_quotes()
            .into_iter()
            .filter(|(s, q)| stored_seq(s).is_none_or(|have| have < q.seq))
            .collect();
        for (s, q) in self.acked.lock().unwrap_or_else(|e| e.into_inner()).drain() {
            if stored_seq(&s).is_none_or(|have| have < q.seq)
                && newer.get(&s).is_none_or(|n| n.seq < q.seq)
            {
                newer.insert(s, q);
            }
        }
        // Also with nothing to write back: raises Redis's counter to what this node has seen
        // (a Redis restored from an older dump).
        let script = redis::Script::new(RESTORE);
        let mut restore = script.prepare_invoke();
        restore
            .key(SEQ_KEY)
            .key(QUOTES_KEY)
            .arg(self.book.current_seq());
        for (s, q) in &newer {
            restore
                .arg(s)
                .arg(q.seq)
                .arg(price_text(q.price))
                .arg(price_text(q.open));
        }
        let n: i64 = restore.invoke(con)?;
        if n > 0 {
            log::info!("wrote back {n} quotes that Redis lacked or had older");
        }
        // This node's symbols that nobody knows yet open at this node's prices.
        let absent: Vec<(String, f64)> = self
            .seed
            .iter()
            .filter(|(s, _)| !stored.contains_key(s) && self.book.get(s).is_none())
            .cloned()
            .collect();
        if !absent.is_empty() {
            let created: RedisResult<redis::Value> = self.publish_cmd(&absent).query(con);
            if let Err(e) = created {
                log::warn!("could not create this node's symbols in Redis: {e}");
            }
        }
        let stored: HashMap<String, String> = con.hgetall(QUOTES_KEY)?;
        let theirs: Vec<(String, RemoteQuote)> = stored
            .iter()
            .filter_map(|(s, v)| parse_value(v).map(|q| (s.clone(), q)))
            .collect();
        self.apply(&theirs);
        Ok(())
    }

    // ------------------------------------------------------------------ commander thread

    fn commander(self: Arc<Self>, rx: std_mpsc::Receiver<Publish>) {
        let mut con: Option<Connection> = None;
        let mut failures = 0u32;
        let mut retry_at = Instant::now();
        let mut next_tick = Instant::now();
        loop {
            if self.stopping.load(Ordering::Acquire) {
                return;
            }
            if con.is_none() && Instant::now() >= retry_at {
                match connect(&self.client) {
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
                // A connection that broke while idle (Redis restarted) is found by the first
                // publish after; try once more on a fresh one before answering 503.
                for attempt in 0..2 {
                    if con.is_none() && (self.is_up() || attempt == 0 && Instant::now() >= retry_at)
                    {
                        con = connect(&self.client).ok();
                    }
                    let Some(c) = con.as_mut() else { break };
                    match self.run_pipeline(c, batch) {
                        Ok(()) => {
                            batch = Vec::new();
                            failures = 0;
                            break;
                        }
                        Err(unsent) => {
                            batch = unsent;
                            con = None;
                            failures += 1;
                            retry_at = Instant::now() + backoff(failures);
                        }
                    }
                }
                for p in batch {
                    let _ = p.reply.send(Err(ApiError::Unavailable));
                }
            }
            if Instant::now() >= next_tick {
                next_tick = Instant::now() + FEED_TICK;
                if self.wants_feed {
                    let held = con.as_mut().is_some_and(|c| self.hold_lease(c));
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

    /// Renew the lease, or take it if free. False if another node holds it or Redis fails.
    fn hold_lease(&self, con: &mut Connection) -> bool {
        let ms = FEED_LEASE.as_millis() as u64;
        if self.leader.load(Ordering::Acquire) {
            let renewed: RedisResult<i64> = redis::Script::new(RENEW)
                .key(FEED_KEY)
                .arg(&self.node_id)
                .arg(ms)
                .invoke(con);
            if renewed == Ok(1) {
                return true;
            }
        }
        let taken: RedisResult<Option<String>> = redis::cmd("SET")
            .arg(FEED_KEY)
            .arg(&self.node_id)
            .arg("NX")
            .arg("PX")
            .arg(ms)
            .query(con);
        matches!(taken, Ok(Some(_)))
    }

    /// Send many publishes as one pipeline and answer each. Gives the batch back, unanswered,
    /// if the connection broke.
    fn run_pipeline(&self, con: &mut Connection, batch: Vec<Publish>) -> Result<(), Vec<Publish>> {
        let mut pipe = redis::pipe();
        // Each command's own reply: a script error (the symbol limit) fails only its publish.
        pipe.ignore_errors();
        for p in &batch {
            pipe.add_command(self.publish_cmd(&p.updates));
        }
        match pipe.query::<Vec<redis::Value>>(con) {
            Ok(values) => {
                let noscript = values
                    .iter()
                    .any(|v| matches!(v, redis::Value::ServerError(e) if e.code() == "NOSCRIPT"));
                for (p, v) in batch.into_iter().zip(values) {
                    let _ = p.reply.send(self.publish_answer(v));
                }
                // Redis forgot the script (SCRIPT FLUSH): a new connection loads it again.
                if noscript {
                    return Err(Vec::new());
                }
                Ok(())
            }
            Err(e) if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() => {
                log::debug!("publish to Redis failed: {e}");
                Err(batch)
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

    fn publish_cmd(&self, updates: &[(String, f64)]) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(publish_sha())
            .arg(2)
            .arg(SEQ_KEY)
            .arg(QUOTES_KEY)
            .arg(self.book.current_seq())
            .arg(self.max_symbols);
        for (symbol, price) in updates {
            cmd.arg(symbol).arg(price_text(*price));
        }
        cmd
    }

    /// The script's answer: the changes it made (remembered until announced), or the limit.
    fn publish_answer(&self, v: redis::Value) -> Result<u64, ApiError> {
        match v {
            redis::Value::Array(items) => {
                let mut last = 0;
                let mut acked = self.acked.lock().unwrap_or_else(|e| e.into_inner());
                for item in items {
                    let text: String = redis::from_redis_value(item).unwrap_or_default();
                    if let Some((symbol, q)) = parse_change(&text) {
                        last = last.max(q.seq);
                        acked.insert(symbol, q);
                    }
                }
                Ok(last)
            }
            redis::Value::ServerError(e) if e.code() == "LIMIT" => Err(ApiError::SymbolLimit {
                max: self.max_symbols,
            }),
            // NOSCRIPT (the script cache was flushed) or anything else: 503, the client retries.
            other => {
                log::warn!("unexpected answer from the publish script: {other:?}");
                Err(ApiError::Unavailable)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announcements_parse_and_garbage_does_not() {
        let (s, q) = parse_change("IBM 1796053951945585 1796053951946750 123.45 120").unwrap();
        assert_eq!(s, "IBM");
        assert_eq!(q.seq, 1_796_053_951_945_585);
        assert_eq!(q.ts, 1_796_053_951_946_750);
        assert_eq!((q.price, q.open), (123.45, 120.0));
        for bad in [
            "",
            "IBM",
            "IBM 1 2 3",
            "IBM x 2 3 4",
            "IBM 1 2 3 4 5",
            "IBM 1 2 NaN 4",
        ] {
            assert!(parse_change(bad).is_none(), "{bad:?}");
        }
        assert_eq!(parse_value("5 6 7.5 7").map(|q| q.price), Some(7.5));
    }

    #[test]
    fn prices_go_to_redis_as_text_that_reads_back_exactly() {
        for p in [0.01, 123.45, 1e11, 0.1 + 0.2] {
            assert_eq!(price_text(p).parse::<f64>().unwrap(), p);
        }
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        assert!(backoff(1) <= BACKOFF_START * 2);
        assert!(backoff(1) >= BACKOFF_START);
        assert!(backoff(20) <= BACKOFF_CAP);
        assert!(backoff(20) >= BACKOFF_CAP / 2);
    }
}
