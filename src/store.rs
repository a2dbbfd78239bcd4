//! The tables the proxy reads on every message, held in memory
//! (DESIGN.md: hot paths never wait on the database): subscribers for
//! auth, domains, trusted peers, and the usrloc tables. They are loaded
//! from the database at start and reloaded on request (SIGHUP, and every
//! `table_refresh` seconds); usrloc writes go back through a queue.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arc_swap::ArcSwap;
use regex::Regex;

use crate::config::CoreConfig;
use crate::db::{DomainRow, Subscriber, TrustedRow, UlTable};
use crate::usrloc::Usrloc;

/// Subscribers keyed by `username@domain`, lower-case.
pub type SubscriberMap = HashMap<Box<str>, Arc<Subscriber>>;

fn subscriber_key(username: &str, domain: &str) -> Box<str> {
    let mut k = String::with_capacity(username.len() + domain.len() + 1);
    k.push_str(username);
    k.push('@');
    k.push_str(domain);
    k.make_ascii_lowercase();
    k.into_boxed_str()
}

/// A `trusted` row ready for matching: its patterns compiled once.
#[derive(Clone, Debug)]
pub struct TrustedRule {
    /// The row as stored.
    pub row: TrustedRow,
    /// Its source address.
    pub ip: std::net::IpAddr,
    /// `from_pattern`, compiled (None: any From).
    pub from_re: Option<Regex>,
    /// `ruri_pattern`, compiled (None: any Request-URI).
    pub ruri_re: Option<Regex>,
}

/// The in-memory tables shared by all workers.
pub struct Store {
    subscribers: ArcSwap<SubscriberMap>,
    domains: ArcSwap<HashSet<String>>,
    trusted: ArcSwap<Vec<TrustedRule>>,
    /// Registered contacts (`save("location")`, `lookup("location")`).
    pub location: Usrloc,
    /// Alias URIs and their targets (`lookup("aliases")`).
    pub aliases: Usrloc,
}

impl Store {
    /// Empty tables for a configuration (usrloc `use_domain`).
    pub fn new(cfg: &CoreConfig, secret: u64) -> Store {
        let use_domain = cfg.params.int("usrloc", "use_domain", 0) != 0;
        let prefix = format!("uloc-{:x}-{:04x}", chrono::Utc::now().timestamp(), secret as u16);
        Store {
            subscribers: ArcSwap::default(),
            domains: ArcSwap::default(),
            trusted: ArcSwap::default(),
            location: Usrloc::new(UlTable::Location, use_domain, format!("{prefix}-l")),
            aliases: Usrloc::new(UlTable::Aliases, use_domain, format!("{prefix}-a")),
        }
    }

    /// A private copy for a dry run (`serlua repl`): subscribers, domains
    /// and trusted rules are shared read-only as they are now (a later
    /// reload of the live tables does not reach the copy), the usrloc
    /// tables are copied ([`Usrloc::dry_copy`]) so that `save()` in the
    /// copy never reaches the live table or the database.
    pub fn dry_copy(&self) -> Store {
        Store {
            subscribers: ArcSwap::new(self.subscribers.load_full()),
            domains: ArcSwap::new(self.domains.load_full()),
            trusted: ArcSwap::new(self.trusted.load_full()),
            location: self.location.dry_copy(),
            aliases: self.aliases.dry_copy(),
        }
    }

    /// The subscriber `username@domain` (auth_db's lookup in the
    /// `subscriber` table), case-insensitive on both parts.
    pub fn subscriber(&self, username: &str, domain: &str) -> Option<Arc<Subscriber>> {
        self.subscribers.load().get(&subscriber_key(username, domain)).cloned()
    }

    /// Replaces the subscriber table (after a load or reload). Rows that
    /// did not change keep their entry, and a reload that changed nothing
    /// (the usual `table_refresh` tick) keeps the whole table: rebuilding
    /// 100,000 unchanged entries every ten seconds left the old table's
    /// freed memory scattered between the new one's, and the process grew
    /// by a third on the first reload.
    pub fn set_subscribers(&self, rows: Vec<Subscriber>) {
        let old = self.subscribers.load_full();
        // Compare before building anything: an unchanged reload allocates
        // only one key at a time.
        let unchanged = rows.len() == old.len()
            && rows
                .iter()
                .all(|s| old.get(&subscriber_key(&s.username, &s.domain)).is_some_and(|o| **o == *s));
        // (Equal lengths and every row found equal means the same set: the
        // table's unique (username, domain) key rules out a repeated row.)
        if unchanged {
            return;
        }
        let mut map = SubscriberMap::with_capacity(rows.len());
        for s in rows {
            let key = subscriber_key(&s.username, &s.domain);
            let entry = match old.get(&key) {
                Some(o) if **o == s => o.clone(),
                _ => Arc::new(s),
            };
            map.insert(key, entry);
        }
        self.subscribers.store(Arc::new(map));
    }

    /// Number of subscribers held.
    pub fn subscriber_count(&self) -> usize {
        self.subscribers.load().len()
    }

    /// True when `host` is one of our domains (the `domain` table;
    /// case-insensitive).
    pub fn is_local_domain(&self, host: &str) -> bool {
        self.domains.load().contains(&host.to_ascii_lowercase())
    }

    /// Replaces the domain table.
    pub fn set_domains(&self, rows: Vec<DomainRow>) {
        self.domains
            .store(Arc::new(rows.into_iter().map(|d| d.domain.to_ascii_lowercase()).collect()));
    }

    /// The trusted rules, highest priority first.
    pub fn trusted(&self) -> Arc<Vec<TrustedRule>> {
        self.trusted.load_full()
    }

    /// Replaces the trusted table; rows whose address or patterns are
    /// invalid are skipped with an error in the log (they can never match).
    pub fn set_trusted(&self, rows: Vec<TrustedRow>) {
        let mut rules = Vec::with_capacity(rows.len());
        for row in rows {
            let Ok(ip) = row.src_ip.trim().parse() else {
                tracing::error!("trusted: '{}' is not an IP address; row ignored", row.src_ip);
                continue;
            };
            let compile = |p: &Option<String>, what: &str| -> Result<Option<Regex>, ()> {
                match p.as_deref().map(str::trim).filter(|p| !p.is_empty()) {
                    None => Ok(None),
                    Some(p) => Regex::new(&format!("(?i){p}")).map(Some).map_err(|e| {
                        tracing::error!("trusted {}: bad {what} '{p}': {e}; row ignored", row.src_ip);
                    }),
                }
            };
            let (Ok(from_re), Ok(ruri_re)) = (
                compile(&row.from_pattern, "from_pattern"),
                compile(&row.ruri_pattern, "ruri_pattern"),
            ) else {
                continue;
            };
            rules.push(TrustedRule { row, ip, from_re, ruri_re });
        }
        rules.sort_by_key(|r| std::cmp::Reverse(r.row.priority));
        self.trusted.store(Arc::new(rules));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ModParams;

    fn store() -> Store {
        Store::new(&CoreConfig::with_params(ModParams::default()).expect("default config"), 1)
    }

    #[test]
    fn a_reload_that_changed_nothing_keeps_the_table() {
        let st = store();
        let rows = || {
            vec![
                Subscriber::new("alice", "example.com", "a"),
                Subscriber::new("bob", "example.com", "b"),
            ]
        };
        st.set_subscribers(rows());
        let before = st.subscribers.load_full();
        st.set_subscribers(rows());
        assert!(
            Arc::ptr_eq(&before, &st.subscribers.load_full()),
            "an unchanged reload replaced the table"
        );

        // A changed password is seen; the unchanged row keeps its entry.
        st.set_subscribers(vec![
            Subscriber::new("alice", "example.com", "a"),
            Subscriber::new("bob", "example.com", "new"),
        ]);
        let after = st.subscribers.load_full();
        assert_eq!(st.subscriber("bob", "example.com").expect("bob").password, "new");
        assert!(Arc::ptr_eq(
            &before[&subscriber_key("alice", "example.com")],
            &after[&subscriber_key("alice", "example.com")]
        ));

        // A removed row is gone even when a duplicate keeps the row count.
        st.set_subscribers(vec![
            Subscriber::new("alice", "example.com", "a"),
            Subscriber::new("ALICE", "example.com", "a"),
        ]);
        assert!(st.subscriber("bob", "example.com").is_none());
        assert_eq!(st.subscriber_count(), 1);
    }
}
