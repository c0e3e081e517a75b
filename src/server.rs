//! Wiring: the may runtime settings, start-up (book, threads, feed, listener) and bounded shutdown.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::app::App;
use crate::auth::Auth;
use crate::book::QuoteBook;
use crate::cluster::Cluster;
use crate::config::{Config, Engine};
use crate::feed::{opening_price, Feed};
use crate::http::{minihttp, native};
use crate::metrics::Metrics;

/// Apply the runtime settings. Must run before the first coroutine starts (may reads them once).
pub fn configure_runtime(config: &Config) {
    // One coroutine per request, so this is the memory a held long-poll reserves. 64 KiB by
    // default: a 32 KiB stack overflowed parsing a 64-deep JSON body (we now refuse bodies deeper
    // than 8 levels before parsing, see routes), and only the pages a coroutine touches count
    // towards RSS, so the headroom is nearly free. may takes the size in machine words.
    may::config()
        .set_workers(config.workers)
        .set_stack_size(config.stack_bytes / std::mem::size_of::<usize>());
    // may pins worker i to core i unless told otherwise. A pinned worker cannot move off a core
    // that another process (a proxy, a client, a second server) wakes up on, and waits behind it:
    // on the 2-core machine, with the load generator sharing the cores, pinning doubled the
    // time to fan one change out to 10,000 polls (bench/README.md). So pinning is opt-in.
    may::config().set_worker_pin(config.pin_workers);
    raise_open_file_limit();
}

/// Open files kept back from client connections: the listener, each worker's epoll and event
/// descriptors, stdio, the Redis connections, log files.
const FD_RESERVE: usize = 64;
/// Memory mappings kept back from coroutine stacks: the binary, its libraries, the heap's arenas.
const MAP_RESERVE: usize = 1024;

/// Raise the soft open-file limit to the hard one: every held client is a socket, and a soft
/// limit of 1,024 (a common default) would cap the server far below what the host allows.
fn raise_open_file_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid resource and a pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                log::debug!("could not raise the open-file limit to {}", lim.rlim_max);
            }
        }
    }
}

/// The default `--max-connections`: one socket each within the open-file limit, and one coroutine
/// stack (two memory mappings) each within `vm.max_map_count`, less what the process needs for
/// itself. A node at this cap refuses new clients with a 503 instead of failing to accept them or
/// to start their coroutines.
pub fn default_max_connections() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit with a valid resource and a pointer to a local struct.
    let files = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
    } else {
        1024
    };
    let stacks = std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .map_or(usize::MAX, |maps| maps.saturating_sub(MAP_RESERVE) / 2);
    files.saturating_sub(FD_RESERVE).min(stacks).max(1)
}

/// A running server.
pub struct Server {
    app: Arc<App>,
    addr: SocketAddr,
    feed_stop: Arc<AtomicBool>,
}

/// Bind without SO_REUSEPORT, so a second instance on the same port fails loudly instead of
/// silently sharing its connections (may's own `bind` sets SO_REUSEPORT).
fn bind(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    // A deep backlog: thousands of long-poll clients reconnect at once after a restart.
    socket.listen(4096)?;
    Ok(socket.into())
}

impl Server {
    /// Build the book, start the threads, feed and listener. Call `configure_runtime` first.
    pub fn start(config: Config) -> io::Result<Server> {
        let metrics = Arc::new(Metrics::default());
        let seed = config.seed.unwrap_or_else(|| rand::thread_rng().gen());
        let mut rng = StdRng::seed_from_u64(seed);
        let opening: Vec<(String, f64)> = config
            .symbols
            .iter()
            .map(|s| (s.clone(), opening_price(&mut rng)))
            .collect();
        let (book, cluster) = match &config.redis {
            None => {
                let book = QuoteBook::new(config.max_symbols, config.workers, Arc::clone(&metrics));
                for (symbol, price) in &opening {
                    book.add_symbol(symbol, *price)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
                }
                (book, None)
            }
            Some(url) => {
                // Quotes and seqs come from Redis; this node's symbols are created there if new.
                let book = QuoteBook::for_cluster(
                    config.max_symbols,
                    config.workers,
                    Arc::clone(&metrics),
                );
                let cluster = Cluster::start(
                    url,
                    Arc::clone(&book),
                    Arc::clone(&metrics),
                    config.max_symbols,
                    opening,
                    config.feed.is_some(),
                    config.redis_timeout,
                )?;
                (book, Some(cluster))
            }
        };
        book.start_threads()?;

        let listener = bind(config.listen)?;
        let addr = listener.local_addr()?;
        let engine = config.engine;
        let auth = Auth::new(
            config.publish_token.clone(),
            config.jwt.as_ref(),
            &config.jwt_rules,
            config.public_symbols.clone(),
        )
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let max_connections = config
            .max_connections
            .unwrap_or_else(default_max_connections);
        let app = Arc::new(App {
            config,
            book,
            metrics,
            cluster,
            auth,
            max_connections,
            display_limits: Default::default(),
        });
        let feed_stop = Arc::new(AtomicBool::new(false));
        if let Some(feed) = &app.config.feed {
            if app.cluster.is_none() {
                app.metrics.feed_leader.store(1, Ordering::Relaxed);
            }
            Feed::new(
                Arc::clone(&app),
                app.config.symbols.clone(),
                feed.mean_interval,
                rng.gen(),
                Arc::clone(&feed_stop),
            )
            .spawn()?;
        }
        match engine {
            Engine::Native => {
                // SAFETY: the fd comes from a listener we own and give up here.
                let listener =
                    unsafe { may::net::TcpListener::from_raw_fd(listener.into_raw_fd()) };
                native::serve(listener, Arc::clone(&app))?;
            }
            Engine::Minihttp => {
                // may_minihttp binds by itself (with SO_REUSEPORT); our bind above has resolved
                // port 0 and checked that nobody else listens there.
                drop(listener);
                use may_minihttp::HttpServiceFactory;
                minihttp::Factory(Arc::clone(&app)).start(addr)?;
            }
        }
        log::info!(
            "serving {} symbols on {addr} with {:?} engine, {} workers, at most {} connections, \
             seed {seed}",
            app.book.len(),
            engine,
            app.config.workers,
            app.max_connections
        );
        Ok(Server {
            app,
            addr,
            feed_stop,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answer every waiting poll at once (empty, same cursor), then wait, at most the shutdown
    /// grace, until the answers in flight are written. Returns true if they all were.
    pub fn shutdown(&self) -> bool {
        self.feed_stop.store(true, Ordering::Release);
        if let Some(cluster) = &self.app.cluster {
            cluster.shutdown();
        }
        self.app.book.shutdown();
        let deadline = Instant::now() + self.app.config.shutdown_grace;
        loop {
            if self.app.metrics.in_flight.load(Ordering::Acquire) == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}
