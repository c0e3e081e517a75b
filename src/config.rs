//! The server's configuration: CLI flags and env vars, validated into one `Config`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use rand::Rng;

use crate::auth::{JwtKey, JwtRules, Scope};
use crate::cors::CorsOrigins;

/// The tickers the built-in feed starts with when `--symbols` is not given.
pub const DEFAULT_SYMBOLS: &str = "AAPL,ABT,ADBE,AMD,AMZN,BA,CAT,CSCO,CVX,DIS,GE,GOOG,HD,IBM,INTC,JNJ,JPM,KO,MCD,META,MSFT,NFLX,NKE,NVDA,ORCL,PEP,PFE,TSLA,WMT,XOM";

/// Which connection layer serves HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Engine {
    /// The project's own HTTP/1.1 layer on `may::net` (default): any number of headers,
    /// `Connection: close`, idle timeout, body cap before reading, client address known.
    Native,
    /// may_minihttp 0.1.11 behind the same routes: drops requests with more than 16 headers.
    Minihttp,
}

/// Command-line interface. Every flag also reads an env var; the defaults live here and only here.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "comet-quotes",
    version,
    about = "COMET (server-push) stock-quote server: Server-Sent Events and long-polls, alone or \
             as a cluster sharing Redis",
    long_about = "COMET (server-push) stock-quote server on may stackful coroutines.\n\n\
        Browsers follow the symbols they show over a Server-Sent Events stream (/api/stream) or \
        by long-polling (/api/poll); each request waits on its own coroutine until one of those \
        prices changes, and is answered the moment it does. Run several nodes with --redis to \
        share one quote book through Redis.\n\
        Open http://127.0.0.1:8080 for the live quotes page; import /comet.js on your own page. \
        Publishing needs a credential (--publish-token, or one printed at start). \
        Logs: RUST_LOG=info|debug."
)]
pub struct Cli {
    /// Address to listen on (use port 0 for a free port; the chosen address is printed).
    #[arg(long, env = "COMET_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Coroutine worker threads [default: CPU count, at most 8].
    #[arg(long, env = "COMET_WORKERS")]
    pub workers: Option<usize>,

    /// Pin coroutine worker i to CPU core i (only for cores the server has to itself).
    #[arg(long, env = "COMET_PIN_WORKERS")]
    pub pin_workers: bool,

    /// Coroutine stack size in KiB (each request runs on one coroutine).
    #[arg(long, env = "COMET_STACK_KIB", default_value_t = 64)]
    pub stack_kib: usize,

    /// Default long-poll timeout in seconds, when a poll names none.
    #[arg(long, env = "COMET_POLL_TIMEOUT", default_value_t = 30.0)]
    pub poll_timeout: f64,

    /// Longest long-poll timeout in seconds; longer requested timeouts are capped to it.
    #[arg(long, env = "COMET_MAX_POLL_TIMEOUT", default_value_t = 60.0)]
    pub max_poll_timeout: f64,

    /// Most symbols one request may name.
    #[arg(long, env = "COMET_MAX_SYMBOLS_PER_REQUEST", default_value_t = 100)]
    pub max_symbols_per_request: usize,

    /// Most symbols the server holds; publishing a new symbol past it is refused.
    #[arg(long, env = "COMET_MAX_SYMBOLS", default_value_t = 1000)]
    pub max_symbols: usize,

    /// Most client connections at once; more get a 503 with Retry-After and are closed [default:
    /// the open-file limit less 64, and at most what vm.max_map_count allows in coroutine stacks].
    #[arg(long, env = "COMET_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,

    /// Largest request body in bytes (publish); larger bodies get 413.
    #[arg(long, env = "COMET_MAX_BODY", default_value_t = 64 * 1024)]
    pub max_body: usize,

    /// Seconds an idle keep-alive connection may wait for its next request.
    #[arg(long, env = "COMET_IDLE_TIMEOUT", default_value_t = 120.0)]
    pub idle_timeout: f64,

    /// Seconds from the first byte of a request until all of it (head and body) must be in; a
    /// request that takes longer gets 408 and the connection closes.
    #[arg(long, env = "COMET_HEADER_TIMEOUT", default_value_t = 10.0)]
    pub header_timeout: f64,

    /// Seconds without an event after which a stream sends a heartbeat comment.
    #[arg(long, env = "COMET_HEARTBEAT", default_value_t = 15.0)]
    pub heartbeat: f64,

    /// Seconds a stream lives; each ends at a random moment in the last 10% of it, and the
    /// browser reconnects with Last-Event-ID.
    #[arg(long, env = "COMET_MAX_STREAM", default_value_t = 600.0)]
    pub max_stream: f64,

    /// Seconds a write to a client may make no progress before the stream is ended as too slow.
    #[arg(long, env = "COMET_WRITE_TIMEOUT", default_value_t = 10.0)]
    pub write_timeout: f64,

    /// Seconds to wait on shutdown for answered polls to be written before exiting.
    #[arg(long, env = "COMET_SHUTDOWN_GRACE", default_value_t = 2.0)]
    pub shutdown_grace: f64,

    /// Symbols to start with (comma separated); the feed moves these.
    #[arg(long, env = "COMET_SYMBOLS", default_value = DEFAULT_SYMBOLS)]
    pub symbols: String,

    /// Turn the built-in random feed off (prices then change only through POST /api/quotes).
    #[arg(long, env = "COMET_NO_FEED")]
    pub no_feed: bool,

    /// Mean seconds between two price changes of one symbol in the random feed.
    #[arg(long, env = "COMET_FEED_INTERVAL", default_value_t = 2.0)]
    pub feed_interval: f64,

    /// Seed for the random feed and the opening prices (reproducible runs) [default: random].
    #[arg(long, env = "COMET_SEED")]
    pub seed: Option<u64>,

    /// Bearer token that may publish (POST /api/quotes with Authorization: Bearer TOKEN). With
    /// neither this nor a JWT key, a random one is made at start and printed once.
    #[arg(long, env = "COMET_PUBLISH_TOKEN", hide_env_values = true)]
    pub publish_token: Option<String>,

    /// Refuse the display-delay reports pages send (POST /api/display-delay answers 404, and
    /// /api/time tells pages not to send them).
    #[arg(long, env = "COMET_NO_DISPLAY_REPORTS")]
    pub no_display_reports: bool,

    /// Accept JWTs signed with HS256 and this secret (at least 32 bytes). Reading then needs a
    /// token whose `symbols` claim grants the symbols; its `publish` claim grants publishing.
    #[arg(long, env = "COMET_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Accept JWTs signed with RS256 (an RSA key) or ES256 (an EC P-256 key) whose public key is
    /// in this PEM file; otherwise as --jwt-secret.
    #[arg(long, env = "COMET_JWT_PUBLIC_KEY", value_name = "FILE")]
    pub jwt_public_key: Option<PathBuf>,

    /// Accept only JWTs whose `iss` claim is this (with a key other services share).
    #[arg(long, env = "COMET_JWT_ISSUER", value_name = "ISS")]
    pub jwt_issuer: Option<String>,

    /// Accept only JWTs whose `aud` claim names this.
    #[arg(long, env = "COMET_JWT_AUDIENCE", value_name = "AUD")]
    pub jwt_audience: Option<String>,

    /// Symbols anyone may read without a token while a JWT key is set (comma separated; `*` =
    /// all).
    #[arg(long, env = "COMET_PUBLIC_SYMBOLS", value_name = "LIST")]
    pub public_symbols: Option<String>,

    /// Origins whose pages may call /api/ from the browser, with credentials (comma separated,
    /// e.g. https://app.example.com); `*` = any page, without credentials.
    #[arg(long, env = "COMET_CORS_ORIGINS", value_name = "LIST")]
    pub cors_origins: Option<String>,

    /// Join the cluster whose shared state lives in this Redis (redis://HOST:PORT[/DB]);
    /// without it the server runs alone.
    #[arg(long, env = "COMET_REDIS")]
    pub redis: Option<String>,

    /// Seconds within which a Redis that stopped answering is noticed (ping, command timeouts,
    /// TCP keepalive); the node then answers publishes 503 and reconnects.
    #[arg(long, env = "COMET_REDIS_TIMEOUT", default_value_t = 3.0)]
    pub redis_timeout: f64,

    /// Answer GET /debug/panic by panicking (tests of panic containment only).
    #[arg(long, hide = true)]
    pub test_panic_route: bool,

    /// HTTP connection layer.
    #[arg(long, env = "COMET_ENGINE", value_enum, default_value_t = Engine::Native)]
    pub engine: Engine,
}

/// The validated configuration every part of the server reads.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub workers: usize,
    pub pin_workers: bool,
    pub stack_bytes: usize,
    pub poll_timeout: Duration,
    pub max_poll_timeout: Duration,
    pub max_symbols_per_request: usize,
    pub max_symbols: usize,
    pub max_body: usize,
    /// `--max-connections`; `None`: from the host's limits at start (`server`).
    pub max_connections: Option<usize>,
    pub idle_timeout: Duration,
    pub header_timeout: Duration,
    pub heartbeat: Duration,
    pub max_stream: Duration,
    pub write_timeout: Duration,
    pub shutdown_grace: Duration,
    pub symbols: Vec<String>,
    pub feed: Option<FeedConfig>,
    pub seed: Option<u64>,
    /// The bearer token that may publish: configured, or made at start when neither it nor a
    /// JWT key was (`publish_token_generated`). `None` only with a JWT key.
    pub publish_token: Option<String>,
    pub publish_token_generated: bool,
    pub jwt: Option<JwtKey>,
    pub jwt_rules: JwtRules,
    pub public_symbols: Scope,
    pub cors_origins: CorsOrigins,
    /// Whether pages' display-delay reports are taken (`--no-display-reports` turns them off).
    pub display_reports: bool,
    pub redis: Option<String>,
    pub redis_timeout: Duration,
    pub test_panic_route: bool,
    pub engine: Engine,
}

/// Settings of the built-in random feed.
#[derive(Debug, Clone)]
pub struct FeedConfig {
    pub mean_interval: Duration,
}

fn seconds(name: &str, value: f64) -> Result<Duration, String> {
    if (0.0..=86_400.0).contains(&value) {
        Ok(Duration::from_secs_f64(value))
    } else {
        Err(format!(
            "--{name} must be a number of seconds between 0 and 86400, got {value}"
        ))
    }
}

impl Cli {
    /// Check every value and build the `Config`; the error text names the bad flag.
    pub fn into_config(self) -> Result<Config, String> {
        let workers = match self.workers {
            Some(0) => return Err("--workers must be at least 1".into()),
            // Bound the OS thread count: workers + main, timer, signal, sweeper, feed stay under 20.
            Some(n) if n > 12 => return Err("--workers must be at most 12".into()),
            Some(n) => n,
            None => std::thread::available_parallelism()
                .map(|n| n.get().min(8))
                .unwrap_or(2),
        };
        if !(16..=8192).contains(&self.stack_kib) {
            return Err("--stack-kib must be between 16 and 8192".into());
        }
        let poll_timeout = seconds("poll-timeout", self.poll_timeout)?;
        let max_poll_timeout = seconds("max-poll-timeout", self.max_poll_timeout)?;
        if poll_timeout > max_poll_timeout {
            return Err("--poll-timeout must not exceed --max-poll-timeout".into());
        }
        let idle_timeout = seconds("idle-timeout", self.idle_timeout)?;
        if idle_timeout < Duration::from_millis(1) {
            return Err("--idle-timeout must be at least 0.001".into());
        }
        let at_least_1ms = |name: &str, value: f64| {
            let d = seconds(name, value)?;
            if d < Duration::from_millis(1) {
                return Err(format!("--{name} must be at least 0.001"));
            }
            Ok(d)
        };
        let header_timeout = at_least_1ms("header-timeout", self.header_timeout)?;
        let heartbeat = at_least_1ms("heartbeat", self.heartbeat)?;
        let max_stream = at_least_1ms("max-stream", self.max_stream)?;
        let write_timeout = at_least_1ms("write-timeout", self.write_timeout)?;
        let shutdown_grace = seconds("shutdown-grace", self.shutdown_grace)?;
        let redis_timeout = seconds("redis-timeout", self.redis_timeout)?;
        if redis_timeout < Duration::from_millis(100) {
            return Err("--redis-timeout must be at least 0.1".into());
        }
        let feed_interval = seconds("feed-interval", self.feed_interval)?;
        if feed_interval < Duration::from_millis(1) {
            return Err("--feed-interval must be at least 0.001".into());
        }
        if self.max_symbols_per_request == 0 {
            return Err("--max-symbols-per-request must be at least 1".into());
        }
        if !(1..=MAX_BODY_LIMIT).contains(&self.max_body) {
            return Err(format!(
                "--max-body must be between 1 and {MAX_BODY_LIMIT} bytes"
            ));
        }
        if self.max_connections == Some(0) {
            return Err("--max-connections must be at least 1".into());
        }
        let mut symbols: Vec<String> = Vec::new();
        for raw in self
            .symbols
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let sym = crate::names::normalize_symbol(raw).map_err(|e| format!("--symbols: {e}"))?;
            if !symbols.contains(&sym) {
                symbols.push(sym);
            }
        }
        if symbols.len() > self.max_symbols {
            return Err(format!(
                "--symbols names {} symbols, more than --max-symbols {}",
                symbols.len(),
                self.max_symbols
            ));
        }
        if let Some(url) = &self.redis {
            redis::Client::open(url.as_str()).map_err(|e| {
                format!(
                    "--redis {}: {e} (expected redis://HOST:PORT[/DB])",
                    redacted_url(url)
                )
            })?;
        }
        if matches!(&self.publish_token, Some(t) if t.is_empty()) {
            return Err("--publish-token must not be empty".into());
        }
        let jwt = match (&self.jwt_secret, &self.jwt_public_key) {
            (Some(_), Some(_)) => {
                return Err("give --jwt-secret or --jwt-public-key, not both".into());
            }
            (Some(secret), None) => {
                Some(JwtKey::secret(secret).map_err(|e| format!("--jwt-secret {e}"))?)
            }
            (None, Some(path)) => {
                let pem = std::fs::read(path)
                    .map_err(|e| format!("--jwt-public-key {}: {e}", path.display()))?;
                Some(
                    JwtKey::from_pem(&pem)
                        .map_err(|e| format!("--jwt-public-key {}: {e}", path.display()))?,
                )
            }
            (None, None) => None,
        };
        if jwt.is_none() && (self.jwt_issuer.is_some() || self.jwt_audience.is_some()) {
            return Err("--jwt-issuer and --jwt-audience need a JWT key".into());
        }
        let jwt_rules = JwtRules {
            issuer: self.jwt_issuer,
            audience: self.jwt_audience,
        };
        let public_symbols = match &self.public_symbols {
            Some(_) if jwt.is_none() => {
                return Err(
                    "--public-symbols needs --jwt-secret or --jwt-public-key (without a JWT key \
                     every symbol is public)"
                        .into(),
                )
            }
            Some(list) => Scope::parse_list(list).map_err(|e| format!("--public-symbols: {e}"))?,
            None => Scope::Nothing,
        };
        let cors_origins = match &self.cors_origins {
            Some(list) => CorsOrigins::parse(list).map_err(|e| format!("--cors-origins: {e}"))?,
            None => CorsOrigins::None,
        };
        if cors_origins != CorsOrigins::None && self.engine == Engine::Minihttp {
            // It takes only static header lines: no origin named back, no preflight answers.
            return Err("--cors-origins needs the native engine (--engine native)".into());
        }
        // Publishing always needs a credential. With none configured, one is made for this run
        // and printed once (main), so that a person at the keyboard can still publish.
        let publish_token_generated = self.publish_token.is_none() && jwt.is_none();
        let publish_token = match self.publish_token {
            None if publish_token_generated => Some(random_token()),
            t => t,
        };
        Ok(Config {
            listen: self.listen,
            workers,
            pin_workers: self.pin_workers,
            stack_bytes: self.stack_kib * 1024,
            poll_timeout,
            max_poll_timeout,
            max_symbols_per_request: self.max_symbols_per_request,
            max_symbols: self.max_symbols,
            max_body: self.max_body,
            max_connections: self.max_connections,
            idle_timeout,
            header_timeout,
            heartbeat,
            max_stream,
            write_timeout,
            shutdown_grace,
            symbols,
            feed: (!self.no_feed).then_some(FeedConfig {
                mean_interval: feed_interval,
            }),
            seed: self.seed,
            publish_token,
            publish_token_generated,
            jwt,
            jwt_rules,
            public_symbols,
            cors_origins,
            display_reports: !self.no_display_reports,
            redis: self.redis,
            redis_timeout,
            test_panic_route: self.test_panic_route,
            engine: self.engine,
        })
    }
}

/// The largest `--max-body`: a publish of 1,000 updates is well under 100 KiB.
pub const MAX_BODY_LIMIT: usize = 64 << 20;

/// A URL as logs and errors may show it: a password in its user info, or in a `pass` or
/// `password` query parameter (as redis-rs reads them), replaced.
pub fn redacted_url(url: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let base = match base.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('/') {
            Some((authority, path)) => match authority.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://***@{host}/{path}"),
                None => base.to_string(),
            },
            None => match rest.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://***@{host}"),
                None => base.to_string(),
            },
        },
        None => base.to_string(),
    };
    let Some(query) = query else {
        return base;
    };
    let query: Vec<String> = query
        .split('&')
        .map(|kv| match kv.split_once('=') {
            Some((k, _))
                if k.eq_ignore_ascii_case("pass") || k.eq_ignore_ascii_case("password") =>
            {
                format!("{k}=***")
            }
            _ => kv.to_string(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

/// 128 random bits in hex: a publish token for this run.
fn random_token() -> String {
    let bits: u128 = rand::thread_rng().gen();
    format!("{bits:032x}")
}

impl Config {
    /// Parse from the given arguments (and the environment) without exiting the process.
    pub fn from_args<I, T>(args: I) -> Result<Config, String>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Cli::try_parse_from(args)
            .map_err(|e| e.to_string())?
            .into_config()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut all = vec!["comet-quotes"];
        all.extend_from_slice(args);
        Config::from_args(all)
    }

    #[test]
    fn defaults_listen_on_loopback_8080_with_feed_on() {
        let c = parse(&[]).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert!(c.feed.is_some());
        assert_eq!(c.poll_timeout, Duration::from_secs(30));
        assert_eq!(c.max_poll_timeout, Duration::from_secs(60));
        assert!(c.symbols.len() >= 20);
        assert_eq!(c.engine, Engine::Native);
        assert_eq!(c.heartbeat, Duration::from_secs(15));
        assert_eq!(c.max_stream, Duration::from_secs(600));
        assert_eq!(c.write_timeout, Duration::from_secs(10));
    }

    #[test]
    fn flags_override_defaults() {
        let c = parse(&[
            "--listen",
            "127.0.0.1:0",
            "--no-feed",
            "--poll-timeout",
            "0.5",
            "--publish-token",
            "s3cret",
            "--symbols",
            "ibm, msft,IBM",
        ])
        .unwrap();
        assert!(c.feed.is_none());
        assert_eq!(c.poll_timeout, Duration::from_millis(500));
        assert_eq!(c.publish_token.as_deref(), Some("s3cret"));
        assert_eq!(c.symbols, ["IBM", "MSFT"]);
    }

    #[test]
    fn urls_in_logs_never_show_a_password() {
        assert_eq!(
            redacted_url("redis://:s3cret@10.0.0.5:6379/2"),
            "redis://***@10.0.0.5:6379/2"
        );
        assert_eq!(redacted_url("redis://user:pw@host:1"), "redis://***@host:1");
        assert_eq!(
            redacted_url("redis+unix:///run/redis.sock?db=1&pass=s3cret"),
            "redis+unix:///run/redis.sock?db=1&pass=***"
        );
        assert_eq!(
            redacted_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        let e = parse(&["--redis", "redis://:s3cret@[bad"]).unwrap_err();
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn bad_values_are_rejected_with_the_flag_named() {
        assert!(parse(&["--poll-timeout=-1"])
            .unwrap_err()
            .contains("poll-timeout"));
        assert!(parse(&["--poll-timeout", "90"])
            .unwrap_err()
            .contains("poll-timeout"));
        assert!(parse(&["--workers", "0"]).unwrap_err().contains("workers"));
        assert!(parse(&["--symbols", "BAD SYMBOL"])
            .unwrap_err()
            .contains("symbols"));
        assert!(parse(&["--heartbeat", "0"])
            .unwrap_err()
            .contains("heartbeat"));
        assert!(parse(&["--stack-kib", "4"])
            .unwrap_err()
            .contains("stack-kib"));
    }
}
