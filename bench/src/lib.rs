//! Benchmark tooling for comet-quotes: the pieces behind the `latency` binary (long-poll latency,
//! fan-out and held-connection benches against comet-quotes or Nchan) and the `hello` reference
//! server.

pub mod client;
pub mod hist;
pub mod http;
pub mod plan;
pub mod procstat;
pub mod publish;
pub mod report;
pub mod sse;
pub mod tokens;
