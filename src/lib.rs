//! comet-quotes: a COMET (long-poll) stock-quote server on `may` stackful coroutines.
//!
//! Map of the modules:
//! - [`config`]: CLI flags and env vars, validated into one `Config`.
//! - [`book`]: the quote book: prices, sequence numbers, waiters; **where a long-poll waits**.
//! - [`table`]: the lock-free name -> symbol table.
//! - [`waiter`]: one parked poll, and the sweeper thread that ends polls whose time is up.
//! - [`feed`]: the built-in random quote feed.
//! - [`cluster`]: the Redis link: nodes that share quotes and seqs through Redis (`--redis`).
//! - [`routes`]: routing and request parsing, plain functions from request to reply.
//! - [`http`]: the request/reply values and the connection layers (native, may_minihttp).
//! - [`assets`]: the `public/` page, embedded in the binary.
//! - [`metrics`]: counters and their Prometheus rendering.
//! - [`error`]: the error enum of the HTTP boundary and its status codes.
//! - [`server`]: wiring, runtime settings, start-up and shutdown.

pub mod app;
pub mod assets;
pub mod book;
pub mod cluster;
pub mod config;
pub mod error;
pub mod feed;
pub mod http;
pub mod metrics;
pub mod names;
pub mod routes;
pub mod server;
pub mod sse;
pub mod stream;
pub mod table;
pub mod waiter;

pub use config::Config;
pub use server::Server;
