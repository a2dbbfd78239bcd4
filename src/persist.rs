//! The database thread: loads the in-memory tables at start, writes
//! usrloc changes behind the messages that made them (coalesced batches,
//! one transaction each, retried until the database takes them), reloads
//! subscribers/domains/trusted periodically and on SIGHUP, and pulls in
//! bindings other proxies wrote to a shared database (`sync_interval`).
//!
//! A database outage never stops the proxy: lookups are served from
//! memory, writes wait in the queue (bounded by the number of bindings:
//! a binding's newer change replaces its older queued one) and are
//! written when the database is back.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::core::Shared;
use crate::db::{Backend, Db, DbError, UlOp};
use crate::usrloc::PendingOp;

/// How often queued usrloc writes are flushed.
const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// Handle on the running database thread.
pub struct DbThread {
    reload: Arc<Notify>,
    stop: Arc<AtomicBool>,
    wake: Arc<Notify>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DbThread {
    /// Asks for a reload of subscribers, domains and trusted (SIGHUP,
    /// `serlua ctl reload-tables`).
    pub fn reload(&self) {
        self.reload.notify_one();
    }

    /// A hook that asks for a reload (for the control plane).
    pub fn reloader(&self) -> impl Fn() + Send + Sync + 'static {
        let r = self.reload.clone();
        move || r.notify_one()
    }

    /// Writes what is queued and stops, waiting at most `deadline`.
    pub fn stop(mut self, deadline: Duration) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        let until = Instant::now() + deadline;
        if let Some(t) = self.thread.take() {
            while !t.is_finished() && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

async fn load_tables(db: &mut Db, shared: &Shared) -> Result<(), DbError> {
    let store = &shared.store;
    store.set_subscribers(db.load_subscribers().await?);
    store.set_domains(db.load_domains().await?);
    store.set_trusted(db.load_trusted().await?);
    release_freed_memory();
    Ok(())
}

/// Gives memory freed after a bulk load (the rows read, the old table)
/// back to the system, so the process's size reflects the tables it
/// holds rather than the peak of the load.
fn release_freed_memory() {
    // SAFETY: malloc_trim only walks glibc's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Connects, migrates SQLite (PostgreSQL and MySQL are migrated with
/// `serlua db migrate`), loads every table into memory, and starts the
/// thread that keeps them in step with the database. Fails — and the
/// proxy does not start — when the database cannot be read: starting
/// without the bindings would lose them.
pub fn start(shared: Arc<Shared>) -> anyhow::Result<DbThread> {
    let url = shared.cfg.db_url.clone();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let db = rt.block_on(async {
        let mut db = Db::connect(&url).await?;
        if db.backend() == Backend::Sqlite {
            db.migrate().await?;
        }
        load_tables(&mut db, &shared).await?;
        for ul in [&shared.store.location, &shared.store.aliases] {
            ul.merge_rows(&db.load_bindings(ul.table).await?);
            ul.persistent.store(true, Ordering::SeqCst);
        }
        release_freed_memory();
        Ok::<Db, DbError>(db)
    })?;
    tracing::info!(
        "database {}: {} subscribers, {} bindings, {} aliases loaded",
        crate::db::redact_url(&url),
        shared.store.subscriber_count(),
        shared.store.location.binding_count(),
        shared.store.aliases.binding_count()
    );
    let reload = Arc::new(Notify::new());
    let wake = Arc::new(Notify::new());
    let stop = Arc::new(AtomicBool::new(false));
    let (r2, w2, s2) = (reload.clone(), wake.clone(), stop.clone());
    let thread = std::thread::Builder::new().name("serlua-db".into()).spawn(move || {
        rt.block_on(async move {
            let mut state = Loop {
                shared,
                url,
                db: Some(db),
                last_sync: chrono::Utc::now().naive_utc(),
                syncs: 0,
                seen: [None; 2],
            };
            state.run(r2, w2, s2).await;
        });
    })?;
    Ok(DbThread {
        reload,
        stop,
        wake,
        thread: Some(thread),
    })
}

struct Loop {
    shared: Arc<Shared>,
    url: String,
    db: Option<Db>,
    last_sync: chrono::NaiveDateTime,
    syncs: u64,
    /// The SQLite `data_version` each periodic read last saw.
    seen: [Option<i64>; 2],
}

/// The periodic reads gated on another writer's commit.
#[derive(Clone, Copy)]
enum Marker {
    /// `table_refresh`: subscribers, domains, trusted.
    Tables = 0,
    /// `sync_interval`: other proxies' bindings.
    Sync = 1,
}

impl Loop {
    async fn run(&mut self, reload: Arc<Notify>, wake: Arc<Notify>, stop: Arc<AtomicBool>) {
        let refresh = self.shared.cfg.table_refresh;
        let sync = Duration::from_secs(self.shared.cfg.params.int("usrloc", "sync_interval", 5).max(0) as u64);
        let mut next_refresh = Instant::now() + refresh.max(Duration::from_secs(1));
        let mut next_sync = Instant::now() + sync.max(Duration::from_secs(1));
        let mut backoff = Duration::from_millis(500);
        let mut retry_at = Instant::now();
        loop {
            let stopping = stop.load(Ordering::SeqCst);
            let mut want_reload = false;
            tokio::select! {
                _ = tokio::time::sleep(FLUSH_EVERY) => {}
                _ = wake.notified() => {}
                _ = reload.notified() => want_reload = true,
            }
            let now = Instant::now();
            if self.db.is_none() && now >= retry_at {
                match Db::connect(&self.url).await {
                    Ok(db) => {
                        tracing::info!("database {} is back", crate::db::redact_url(&self.url));
                        self.db = Some(db);
                        // A new connection's data_version starts afresh.
                        self.seen = [None; 2];
                        backoff = Duration::from_millis(500);
                    }
                    Err(e) => {
                        tracing::error!("database still unavailable ({e}); {} usrloc changes queued", self.queued());
                        retry_at = now + backoff;
                        // Short ceiling: the queue catches up within seconds of the database's return.
                        backoff = (backoff * 2).min(Duration::from_secs(4));
                    }
                }
            }
            if self.db.is_some() {
                if let Err(e) = self.flush().await {
                    self.lost(e);
                }
            }
            if self.db.is_some() && (want_reload || (!refresh.is_zero() && now >= next_refresh)) {
                next_refresh = now + refresh;
                if !want_reload && !self.changed_elsewhere(Marker::Tables).await {
                    // Nothing else wrote the SQLite file: the reload would
                    // read every subscriber only to find them unchanged.
                } else if let Some(db) = self.db.as_mut() {
                    match load_tables(db, &self.shared).await {
                        Ok(()) if want_reload => tracing::info!("tables reloaded: {} subscribers", self.shared.store.subscriber_count()),
                        Ok(()) => {}
                        Err(e) => self.lost(e),
                    }
                }
            }
            if self.db.is_some() && !sync.is_zero() && now >= next_sync {
                next_sync = now + sync;
                // On SQLite only another writer's commit can bring bindings
                // this proxy does not hold.
                let asked = chrono::Utc::now().naive_utc();
                if !self.changed_elsewhere(Marker::Sync).await {
                    // Every row written since the last poll is this proxy's own.
                    self.last_sync = asked;
                } else if let Err(e) = self.sync().await {
                    self.lost(e);
                }
            }
            if stopping {
                if self.queued() > 0 {
                    tracing::warn!("stopping with {} usrloc changes not written (database unavailable)", self.queued());
                }
                return;
            }
        }
    }

    /// True unless the database is SQLite and nothing but this proxy has
    /// committed to it since `marker`'s last read (an error also says
    /// true: the read itself will then report it).
    async fn changed_elsewhere(&mut self, marker: Marker) -> bool {
        let Some(db) = self.db.as_mut() else {
            return true;
        };
        match db.data_version().await {
            Ok(Some(v)) => self.seen[marker as usize].replace(v) != Some(v),
            Ok(None) | Err(_) => true,
        }
    }

    fn queued(&self) -> usize {
        self.shared.store.location.pending_len() + self.shared.store.aliases.pending_len()
    }

    fn lost(&mut self, e: DbError) {
        crate::core::Stats::inc(&self.shared.stats.db_errors);
        tracing::error!("{e}; reconnecting, writes stay queued");
        self.db = None;
    }

    async fn flush(&mut self) -> Result<(), DbError> {
        for ul in [&self.shared.store.location, &self.shared.store.aliases] {
            let batch = ul.take_pending();
            if batch.is_empty() {
                continue;
            }
            let ops: Vec<UlOp> = batch
                .iter()
                .map(|(ruid, op)| match op {
                    PendingOp::Upsert(row) => UlOp::Upsert((**row).clone()),
                    PendingOp::Delete => UlOp::Delete(ruid.to_string()),
                })
                .collect();
            let Some(db) = self.db.as_mut() else {
                ul.requeue(batch);
                return Ok(());
            };
            if let Err(e) = db.apply(ul.table, &ops).await {
                ul.requeue(batch);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Pulls bindings other proxies changed; every twelfth time also drops
    /// the ones they removed.
    async fn sync(&mut self) -> Result<(), DbError> {
        let Some(db) = self.db.as_mut() else { return Ok(()) };
        let started = chrono::Utc::now().naive_utc();
        self.syncs += 1;
        let full = self.syncs % 12 == 0;
        for ul in [&self.shared.store.location, &self.shared.store.aliases] {
            if full {
                let rows = db.load_bindings(ul.table).await?;
                let ids: HashSet<String> = rows.iter().map(|r| r.ruid.clone()).collect();
                ul.merge_rows(&rows);
                ul.retain_ruids(&ids, crate::usrloc::from_datetime(started) - 10);
            } else {
                // One second of overlap: rows written in the same second as
                // the last sync are read again (merge ignores older ones).
                let since = self.last_sync - chrono::Duration::seconds(1);
                ul.merge_rows(&db.load_bindings_changed_since(ul.table, since).await?);
            }
        }
        self.last_sync = started;
        Ok(())
    }
}
