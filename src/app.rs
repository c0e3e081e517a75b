//! The state every handler shares (`App`): configuration, quote book and counters.
//!
//! Below the routes and the connection layers, which both take it; it imports neither.

use std::sync::Arc;

use crate::auth::Auth;
use crate::book::QuoteBook;
use crate::cluster::Cluster;
use crate::config::Config;
use crate::display::Limits;
use crate::error::ApiError;
use crate::metrics::Metrics;

/// What every handler shares. Read-only after start-up, apart from the book and the counters,
/// which synchronize themselves.
pub struct App {
    pub config: Config,
    pub book: Arc<QuoteBook>,
    pub metrics: Arc<Metrics>,
    /// The Redis link, when this node is one of a cluster (`--redis`).
    pub cluster: Option<Arc<Cluster>>,
    /// Who may read and publish what.
    pub auth: Auth,
    /// Most client connections at once (`--max-connections`, or from the host's limits).
    pub max_connections: usize,
    /// How many display-delay reports the server takes, in all (`display`).
    pub display_limits: Limits,
}

impl App {
    /// Whether this node can serve current data (`/readyz`): alone, always; in a cluster, once
    /// synced with Redis and while the link is up. `Err` says why not.
    pub fn readiness(&self) -> Result<(), &'static str> {
        match &self.cluster {
            None => Ok(()),
            Some(c) if !c.is_synced() => Err("not synced with Redis yet"),
            Some(c) if !c.is_up() => Err("the link to Redis is down"),
            Some(_) => Ok(()),
        }
    }

    /// Whether this node holds a quote book to serve: alone, always; in a cluster, once it has
    /// synced with Redis (afterwards it serves the last quotes it knows while Redis is away).
    pub fn has_book(&self) -> bool {
        self.cluster.as_ref().is_none_or(|c| c.is_synced())
    }

    /// Publish a batch of (symbol, price) changes, all or none; the one way in for the routes
    /// and the feed. Returns the last seq. Alone, into the book; in a cluster, through Redis,
    /// from where the change comes back to this node's book like every other node's.
    pub fn publish(&self, updates: &[(String, f64)]) -> Result<u64, ApiError> {
        match &self.cluster {
            Some(cluster) => cluster.publish(updates),
            None => self.book.publish_batch(updates),
        }
    }
}
