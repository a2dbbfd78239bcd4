//! The tables the proxy reads on every message, held in memory
//! (DESIGN.md: hot paths never wait on the database): subscribers for
//! auth, domains, trusted peers, and the usrloc tables. They are loaded
//! from the database at start and reloaded on request; usrloc writes go
//! back to the database through a queue.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::db::Subscriber;

/// Subscribers keyed by (username, domain), both lower-case.
pub type SubscriberMap = HashMap<(String, String), Arc<Subscriber>>;

/// The in-memory tables shared by all workers.
#[derive(Default)]
pub struct Store {
    subscribers: ArcSwap<SubscriberMap>,
}

impl Store {
    /// The subscriber `username@domain` (auth_db's lookup in the
    /// `subscriber` table), case-insensitive on both parts.
    pub fn subscriber(&self, username: &str, domain: &str) -> Option<Arc<Subscriber>> {
        self.subscribers.load().get(&(username.to_ascii_lowercase(), domain.to_ascii_lowercase())).cloned()
    }

    /// Replaces the subscriber table (after a load or reload).
    pub fn set_subscribers(&self, rows: Vec<Subscriber>) {
        let map: SubscriberMap =
            rows.into_iter().map(|s| ((s.username.to_ascii_lowercase(), s.domain.to_ascii_lowercase()), Arc::new(s))).collect();
        self.subscribers.store(Arc::new(map));
    }
}
