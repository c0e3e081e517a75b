//! The state every handler shares (`App`): configuration, quote book and counters.
//!
//! Below the routes and the connection layers, which both take it; it imports neither.

use std::sync::Arc;

use crate::book::QuoteBook;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::metrics::Metrics;

/// What every handler shares. Read-only after start-up, apart from the book and the counters,
/// which synchronize themselves.
pub struct App {
    pub config: Config,
    pub book: Arc<QuoteBook>,
    pub metrics: Arc<Metrics>,
    /// The Redis link, when this node is one of a cluster (`--redis`).
    pub cluster: Option<Arc<Cluster>>,
}
