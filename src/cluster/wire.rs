//! What the Redis link says to Redis and reads back, apart from any connection: the Lua scripts,
//! the text of a stored quote and of an announced change, the commands that run the scripts, and
//! how their answers are read. Plain functions, unit-tested without a Redis; the threads that
//! send them are in `cluster`.
//!
//! # What lives in Redis
//! - `cq:seq`: the last seq handed out, cluster-wide.
//! - `cq:quotes`: a hash, symbol -> `"<seq> <ts> <price> <open>"`: every symbol's latest quote.
//! - channel `cq:changes`: `"<symbol> <seq> <ts> <price> <open>"` for every change, in seq order.
//! - `cq:feed`: the random feed's lease, the id of the node that may run it.

use std::collections::HashMap;

use crate::error::ApiError;
use crate::replica::RemoteQuote;

pub const SEQ_KEY: &str = "cq:seq";
pub const QUOTES_KEY: &str = "cq:quotes";
pub const CHANNEL: &str = "cq:changes";
pub const FEED_KEY: &str = "cq:feed";

/// Apply a batch of changes, all or none. KEYS: seq, quotes. ARGV: floor, max symbols, then
/// symbol/price pairs. Every change gets `seq = max(previous + 1, Redis TIME in µs, floor + 1)`,
/// `floor` being the highest seq the publishing node has seen: a Redis that restarted empty or
/// from an older dump never hands out a seq below one a node has already seen. Returns one
/// `"<symbol> <seq> <ts> <price> <open>"` per change.
pub const PUBLISH: &str = r#"
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

/// Write back quotes Redis lacks or holds older (it came back empty, or from an older dump), only
/// where Redis's is older, so an older price never replaces a newer one whichever node writes
/// back first. Each keeps the seq and time of its own change (`replica`), announced so that a
/// node that missed it takes it while every node that has it wakes nobody, unless Redis has
/// handed out a later seq since it came back: a node may then count past the old seq already,
/// and its clients would never see the quote. Such a quote is announced again under a new seq
/// (its time and price unchanged; nodes that show it already take the new seq without waking
/// anyone). Raises the counter to the floor and to every seq written. KEYS: seq, quotes. ARGV:
/// floor, then symbol/seq/ts/price/open quintuples. Returns how many were written.
pub const RESTORE: &str = r#"
local issued = tonumber(redis.call('GET', KEYS[1]) or '0')
local top = math.max(issued, tonumber(ARGV[1]))
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local n = 0
for i = 2, #ARGV, 5 do
  local s, seq = ARGV[i], tonumber(ARGV[i + 1])
  local old = redis.call('HGET', KEYS[2], s)
  local have = old and tonumber(string.match(old, '^(%S+)')) or -1
  if have < seq then
    if seq <= issued then
      seq = math.max(top + 1, now)
    end
    local v = string.format('%.0f %s %s %s', seq, ARGV[i + 2], ARGV[i + 3], ARGV[i + 4])
    redis.call('HSET', KEYS[2], s, v)
    redis.call('PUBLISH', 'cq:changes', s .. ' ' .. v)
    n = n + 1
  end
  top = math.max(top, seq)
end
redis.call('SET', KEYS[1], string.format('%.0f', top))
return n
"#;

/// Renew the feed lease if this node holds it. KEYS: feed. ARGV: node id, lease ms.
pub const RENEW: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"#;

/// Give the feed lease up if this node holds it. KEYS: feed. ARGV: node id.
pub const RELEASE: &str = r#"
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

/// A price as Redis stores it: Rust's shortest text that reads back to the same f64.
pub fn price_text(p: f64) -> String {
    format!("{p}")
}

/// The SHA-1 Redis knows the publish script by (publishes run it by EVALSHA, so Redis need not
/// hash ~1 KB per publish).
pub fn publish_sha() -> &'static str {
    static SHA: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| redis::Script::new(PUBLISH).get_hash().to_string());
    &SHA
}

/// `EVALSHA` of the publish script for a batch; `floor` is the highest seq this node has seen.
pub fn publish_cmd(floor: u64, max_symbols: usize, updates: &[(String, f64)]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVALSHA");
    cmd.arg(publish_sha())
        .arg(2)
        .arg(SEQ_KEY)
        .arg(QUOTES_KEY)
        .arg(floor)
        .arg(max_symbols);
    for (symbol, price) in updates {
        cmd.arg(symbol).arg(price_text(*price));
    }
    cmd
}

/// `EVAL` of the restore script: write back `quotes` where Redis holds older, and raise the
/// counter to `floor` (also with nothing to write: a Redis back from an older dump).
pub fn restore_cmd(floor: u64, quotes: &[(String, RemoteQuote)]) -> redis::Cmd {
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(RESTORE)
        .arg(2)
        .arg(SEQ_KEY)
        .arg(QUOTES_KEY)
        .arg(floor);
    for (s, q) in quotes {
        cmd.arg(s)
            .arg(q.seq)
            .arg(q.ts)
            .arg(price_text(q.price))
            .arg(price_text(q.open));
    }
    cmd
}

/// What to write back after a (re)connect: for each symbol, the newest of what this node holds
/// (`ours`) and what Redis acknowledged to it (`acked`), where that is newer than what Redis now
/// holds (`stored`, a `cq:quotes` hash as read).
pub fn write_backs(
    ours: &[(String, RemoteQuote)],
    acked: &HashMap<String, RemoteQuote>,
    stored: &HashMap<String, String>,
) -> Vec<(String, RemoteQuote)> {
    let stored_seq = |s: &str| stored.get(s).and_then(|v| parse_value(v)).map(|q| q.seq);
    let mut newest: HashMap<&str, RemoteQuote> = HashMap::new();
    let ours = ours.iter().map(|(s, q)| (s, q));
    for (s, q) in ours.chain(acked.iter()) {
        if newest.get(s.as_str()).is_none_or(|n| n.seq < q.seq) {
            newest.insert(s, *q);
        }
    }
    let mut out: Vec<(String, RemoteQuote)> = newest
        .into_iter()
        .filter(|(s, q)| stored_seq(s).is_none_or(|have| have < q.seq))
        .map(|(s, q)| (s.to_string(), q))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The publish script's answer: the changes it made, or the symbol limit.
pub fn publish_outcome(
    v: redis::Value,
    max_symbols: usize,
) -> Result<Vec<(String, RemoteQuote)>, ApiError> {
    match v {
        redis::Value::Array(items) => Ok(items
            .into_iter()
            .filter_map(|item| redis::from_redis_value::<String>(item).ok())
            .filter_map(|text| parse_change(&text))
            .collect()),
        redis::Value::ServerError(e) if e.code() == "LIMIT" => {
            Err(ApiError::SymbolLimit { max: max_symbols })
        }
        // NOSCRIPT (the script cache was flushed) or anything else: 503, the client retries.
        other => {
            log::warn!("unexpected answer from the publish script: {other:?}");
            Err(ApiError::Unavailable)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(seq: u64, price: f64) -> RemoteQuote {
        RemoteQuote {
            seq,
            ts: seq,
            price,
            open: 1.0,
        }
    }

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
            "IBM 1 2 inf 4",
            "IBM 99999999999999999999999 2 3 4",
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
    fn write_backs_are_the_newest_of_ours_and_acked_where_redis_is_older() {
        let ours = vec![
            ("A".to_string(), q(10, 1.0)),
            ("B".to_string(), q(20, 2.0)),
            ("C".to_string(), q(30, 3.0)),
        ];
        // Redis acknowledged B@25 to us but never announced it; A is newer in Redis; C equal.
        let acked = HashMap::from([("B".to_string(), q(25, 2.5))]);
        let stored = HashMap::from([
            ("A".to_string(), "11 11 1.1 1".to_string()),
            ("C".to_string(), "30 30 3 1".to_string()),
        ]);
        assert_eq!(
            write_backs(&ours, &acked, &stored),
            [("B".to_string(), q(25, 2.5))]
        );
        // Redis came back empty: everything, each with its own seq.
        let all = write_backs(&ours, &acked, &HashMap::new());
        assert_eq!(
            all.iter()
                .map(|(s, q)| (s.as_str(), q.seq))
                .collect::<Vec<_>>(),
            [("A", 10), ("B", 25), ("C", 30)]
        );
    }

    #[test]
    fn the_restore_command_keeps_each_quotes_seq_and_time() {
        let cmd = restore_cmd(40, &[("X".to_string(), q(101, 101.5))]);
        let args: Vec<String> = cmd
            .args_iter()
            .filter_map(|a| match a {
                redis::Arg::Simple(b) => Some(String::from_utf8_lossy(b).into_owned()),
                _ => None,
            })
            .collect();
        assert_eq!(args[0], "EVAL");
        assert_eq!(
            &args[2..],
            ["2", SEQ_KEY, QUOTES_KEY, "40", "X", "101", "101", "101.5", "1"]
        );
    }

    #[test]
    fn the_publish_answer_is_its_changes() {
        let answer = redis::Value::Array(vec![redis::Value::BulkString(b"IBM 7 8 1.5 1".to_vec())]);
        let changes = publish_outcome(answer, 5).unwrap();
        let (s, r) = &changes[0];
        assert_eq!((s.as_str(), r.seq, r.ts, r.price), ("IBM", 7, 8, 1.5));
        assert_eq!(
            publish_outcome(redis::Value::Nil, 5),
            Err(ApiError::Unavailable)
        );
    }
}
