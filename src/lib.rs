//! comet-quotes: a COMET (server-push) stock-quote server on `may` stackful coroutines, by
//! long-poll or Server-Sent Events, alone or as one node of a cluster sharing Redis.
//!
//! Map of the modules:
//! - [`config`]: CLI flags and env vars, validated into one `Config`.
//! - [`app`]: the state every handler shares (`App`), and its one way to publish.
//! - [`auth`]: who may read and publish which symbols: the publish token, JWT grants, their
//!   cache.
//! - [`cors`]: which pages on other origins may read `/api/`, and the headers that say so.
//! - [`book`]: the quote book: prices and their sequence numbers; **where a request waits**.
//! - [`lanes`]: a symbol's waiters, one list per may worker, and how a change wakes them.
//! - [`answer`]: the `{"cursor":N,"quotes":[...]}` answer, built from pre-serialized quotes.
//! - [`replica`]: a cluster node's book: the rules for changes numbered by Redis.
//! - [`table`]: the lock-free name -> symbol table.
//! - [`names`]: what a symbol name is.
//! - [`waiter`]: one held request, how it parks (`Hold`), and the sweeper thread that ends the
//!   ones whose time is up.
//! - [`stream`]: the Server-Sent Events transport; [`sse`] its framing.
//! - [`feed`]: the built-in random quote feed.
//! - [`display`]: pages' reports of their display delay, checked and rate-limited.
//! - [`cluster`]: the Redis link: nodes that share quotes and seqs through Redis (`--redis`).
//! - [`routes`]: routing, plain functions from request to response; the long-poll transport is
//!   `QuoteBook::poll` behind `/api/poll`.
//! - [`request`]: the request value and its parsing (query, symbols, cursor, publish body).
//! - [`reply`]: the reply value, and where an error becomes one.
//! - [`http`]: the connection layers (native, may_minihttp), the HTTP/1.1 protocol
//!   (`http::protocol`) and the `Date` header.
//! - [`assets`]: the `public/` page, embedded in the binary.
//! - [`metrics`]: counters and their Prometheus rendering.
//! - [`error`]: the error enum of the HTTP boundary and its status codes.
//! - [`server`]: wiring, runtime settings, start-up and shutdown.
//! - [`throttle`]: at most one log line per interval for trouble that repeats.

pub mod answer;
pub mod app;
pub mod assets;
pub mod auth;
pub mod book;
pub mod cluster;
pub mod config;
pub mod cors;
pub mod display;
pub mod error;
pub mod feed;
pub mod http;
pub mod lanes;
pub mod metrics;
pub mod names;
pub mod replica;
pub mod reply;
pub mod request;
pub mod routes;
pub mod server;
pub mod sse;
pub mod stream;
pub mod table;
pub mod throttle;
pub mod waiter;

pub use config::Config;
pub use server::Server;
