//! usrloc: the location and aliases tables in memory (SER's usrloc).
//!
//! Bindings are served from memory (DESIGN.md: hot paths never wait on the
//! database); every change is queued for the database thread, which
//! writes it behind the message (write-behind, coalesced per binding), so
//! a restart loses nothing that reached the queue's flush and a database
//! outage only delays the writes. Expired bindings are ignored by lookups
//! at once and removed by a periodic sweep (`timer_interval`).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use crate::core::{Env, Timer};
use crate::db::{BindingRow, UlTable};

const SHARDS: usize = 64;

/// `expires` of a binding that never expires (a permanent alias).
pub const PERMANENT: i64 = i64::MAX;

/// The text of a binding, to build one ([`Binding::new`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct BindingText<'a> {
    /// Unique record id (Kamailio's `ruid`).
    pub ruid: &'a str,
    /// The Contact URI as registered (RFC 3261 §10.3 step 7).
    pub contact: &'a str,
    /// Source address of the REGISTER for a NATed client.
    pub received: Option<&'a str>,
    /// Path (RFC 3327) the REGISTER came through.
    pub path: Option<&'a str>,
    /// Call-ID of the REGISTER that created or refreshed it.
    pub callid: &'a str,
    /// User-Agent of the registering client.
    pub user_agent: &'a str,
    /// Our socket it registered on (`udp:192.0.2.13:5060`).
    pub socket: Option<&'a str>,
    /// `+sip.instance` (RFC 5626).
    pub instance: Option<&'a str>,
}

/// One contact bound to an AOR (a `location`/`aliases` row), kept
/// compact: its text fields share one allocation (the goal is well under
/// 1 KiB per binding in memory). An empty optional field reads as `None`.
#[derive(Clone, Debug, PartialEq)]
pub struct Binding {
    text: Box<str>,
    ends: [u32; 8],
    /// Expiry, Unix seconds.
    pub expires: i64,
    /// Last change, Unix seconds.
    pub last_modified: i64,
    /// q-value (RFC 3261 §10.2.1.2).
    pub q: f32,
    /// CSeq number of the REGISTER (§10.3 step 7 ordering).
    pub cseq: u32,
    /// usrloc flags.
    pub flags: u32,
    /// Branch flags; the registrar's NAT flag is kept here (Kamailio's
    /// `nat_bflag` convention).
    pub cflags: u32,
    /// Allowed methods bitmask, when given.
    pub methods: Option<u32>,
    /// `reg-id` (RFC 5626).
    pub reg_id: u32,
}

impl Binding {
    /// A binding with these texts and zero numbers (set them after).
    pub fn new(t: &BindingText<'_>) -> Binding {
        let parts = [
            t.ruid,
            t.contact,
            t.received.unwrap_or(""),
            t.path.unwrap_or(""),
            t.callid,
            t.user_agent,
            t.socket.unwrap_or(""),
            t.instance.unwrap_or(""),
        ];
        let mut text = String::with_capacity(parts.iter().map(|p| p.len()).sum());
        let mut ends = [0u32; 8];
        for (i, p) in parts.iter().enumerate() {
            text.push_str(p);
            ends[i] = text.len() as u32;
        }
        Binding {
            text: text.into_boxed_str(),
            ends,
            expires: 0,
            last_modified: 0,
            q: 1.0,
            cseq: 0,
            flags: 0,
            cflags: 0,
            methods: None,
            reg_id: 0,
        }
    }

    fn field(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        self.text.get(start..self.ends[i] as usize).unwrap_or("")
    }

    fn opt(&self, i: usize) -> Option<&str> {
        Some(self.field(i)).filter(|s| !s.is_empty())
    }

    /// Unique record id.
    pub fn ruid(&self) -> &str {
        self.field(0)
    }
    /// The Contact URI as registered.
    pub fn contact(&self) -> &str {
        self.field(1)
    }
    /// Where a NATed client's REGISTER came from (`sip:192.0.2.1:5060`).
    pub fn received(&self) -> Option<&str> {
        self.opt(2)
    }
    /// Path (RFC 3327).
    pub fn path(&self) -> Option<&str> {
        self.opt(3)
    }
    /// Call-ID of the REGISTER.
    pub fn callid(&self) -> &str {
        self.field(4)
    }
    /// User-Agent of the client.
    pub fn user_agent(&self) -> &str {
        self.field(5)
    }
    /// Our socket it registered on.
    pub fn socket(&self) -> Option<&str> {
        self.opt(6)
    }
    /// `+sip.instance`.
    pub fn instance(&self) -> Option<&str> {
        self.opt(7)
    }

    /// The texts of this binding (to change some and rebuild it).
    pub fn text(&self) -> BindingText<'_> {
        BindingText {
            ruid: self.ruid(),
            contact: self.contact(),
            received: self.received(),
            path: self.path(),
            callid: self.callid(),
            user_agent: self.user_agent(),
            socket: self.socket(),
            instance: self.instance(),
        }
    }

    /// The same numbers with other texts.
    pub fn with_text(&self, t: &BindingText<'_>) -> Binding {
        Binding {
            text: Binding::new(t).text,
            ends: Binding::new(t).ends,
            ..self.clone()
        }
    }
}

/// Every binding of one AOR.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Record {
    /// User part of the AOR.
    pub username: Box<str>,
    /// Domain of the AOR (stored even when lookups ignore it).
    pub domain: Option<Box<str>>,
    /// Its bindings (most AORs have one: kept inline).
    pub bindings: smallvec::SmallVec<[Binding; 1]>,
}

/// A change waiting to be written to the database.
#[derive(Clone, Debug, PartialEq)]
pub enum PendingOp {
    /// Insert or update this row.
    Upsert(Box<BindingRow>),
    /// Delete the row with this ruid.
    Delete,
}

/// One usrloc table (location or aliases).
pub struct Usrloc {
    /// Which table this is.
    pub table: UlTable,
    use_domain: bool,
    // Boxed records: a hash table slot then costs 24 bytes rather than a
    // whole Record, and a table is at most half-full just after it grows
    // (memory per binding is a goal: under 1 KiB).
    shards: Vec<RwLock<HashMap<Box<str>, Box<Record>>>>,
    pending: Mutex<HashMap<Box<str>, PendingOp>>,
    /// True when a database thread drains the queue (false in tests
    /// without a database: nothing is queued then).
    pub persistent: AtomicBool,
    next_ruid: AtomicU64,
    ruid_prefix: String,
}

/// Unix seconds to a database datetime (UTC).
pub fn to_datetime(unix: i64) -> chrono::NaiveDateTime {
    chrono::DateTime::from_timestamp(unix, 0).map(|d| d.naive_utc()).unwrap_or_default()
}

/// A database datetime (UTC) to Unix seconds.
pub fn from_datetime(t: chrono::NaiveDateTime) -> i64 {
    t.and_utc().timestamp()
}

impl Binding {
    /// The database row for this binding of `rec`.
    pub fn to_row(&self, rec: &Record) -> BindingRow {
        BindingRow {
            ruid: self.ruid().to_string(),
            username: rec.username.to_string(),
            domain: rec.domain.as_deref().map(str::to_string),
            contact: self.contact().to_string(),
            received: self.received().map(str::to_string),
            path: self.path().map(str::to_string),
            expires: if self.expires == PERMANENT {
                crate::db::permanent_expires()
            } else {
                to_datetime(self.expires)
            },
            q: self.q,
            callid: self.callid().to_string(),
            cseq: self.cseq as i32,
            last_modified: to_datetime(self.last_modified),
            flags: self.flags as i32,
            cflags: self.cflags as i32,
            user_agent: self.user_agent().to_string(),
            socket: self.socket().map(str::to_string),
            methods: self.methods.map(|m| m as i32),
            instance: self.instance().map(str::to_string),
            reg_id: self.reg_id as i32,
        }
    }

    /// The binding stored in a database row.
    pub fn from_row(r: &BindingRow) -> Binding {
        let mut b = Binding::new(&BindingText {
            ruid: &r.ruid,
            contact: &r.contact,
            received: r.received.as_deref(),
            path: r.path.as_deref(),
            callid: &r.callid,
            user_agent: &r.user_agent,
            socket: r.socket.as_deref(),
            instance: r.instance.as_deref(),
        });
        // Permanent aliases and contacts (Kamailio's epoch "expires=0", or
        // the far date serlua writes) never expire.
        b.expires = if crate::db::is_permanent(r.expires) {
            PERMANENT
        } else {
            from_datetime(r.expires)
        };
        b.q = r.q;
        b.cseq = r.cseq.max(0) as u32;
        b.last_modified = from_datetime(r.last_modified);
        b.flags = r.flags as u32;
        b.cflags = r.cflags as u32;
        b.methods = r.methods.filter(|m| *m >= 0).map(|m| m as u32);
        b.reg_id = r.reg_id.max(0) as u32;
        b
    }
}

impl Usrloc {
    /// An empty table. `use_domain`: AORs are `user@domain` (else `user`),
    /// as usrloc's `use_domain` parameter.
    pub fn new(table: UlTable, use_domain: bool, ruid_prefix: String) -> Usrloc {
        Usrloc {
            table,
            use_domain,
            shards: (0..SHARDS).map(|_| RwLock::new(HashMap::new())).collect(),
            pending: Mutex::new(HashMap::new()),
            persistent: AtomicBool::new(false),
            next_ruid: AtomicU64::new(1),
            ruid_prefix,
        }
    }

    /// The key of an AOR: `user@domain` or `user`, lower-case domain.
    pub fn aor_key(&self, username: &str, domain: Option<&str>) -> String {
        match domain {
            Some(d) if self.use_domain => format!("{username}@{}", d.to_ascii_lowercase()),
            _ => username.to_string(),
        }
    }

    fn shard(&self, key: &str) -> &RwLock<HashMap<Box<str>, Box<Record>>> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        &self.shards[(h.finish() as usize) % SHARDS]
    }

    /// A new unique record id.
    pub fn new_ruid(&self) -> String {
        format!("{}-{}", self.ruid_prefix, self.next_ruid.fetch_add(1, Ordering::Relaxed))
    }

    /// The live bindings of an AOR at `now` (Unix seconds), best first
    /// (highest q, then most recently refreshed).
    pub fn lookup(&self, key: &str, now: i64) -> Option<Record> {
        let guard = self.shard(key).read();
        let rec = guard.get(key)?;
        let mut live: smallvec::SmallVec<[Binding; 1]> = rec.bindings.iter().filter(|b| b.expires > now).cloned().collect();
        if live.is_empty() {
            return None;
        }
        live.sort_by(|a, b| {
            b.q.partial_cmp(&a.q)
                .unwrap_or(std::cmp::Ordering::Equal)
                .then(b.last_modified.cmp(&a.last_modified))
        });
        Some(Record {
            username: rec.username.clone(),
            domain: rec.domain.clone(),
            bindings: live,
        })
    }

    /// Runs `f` on the record of `key` under its lock (the registrar's
    /// read-modify-write of RFC 3261 §10.3), then queues the changes it
    /// made for the database. `f` gets `None` when the AOR has no record
    /// and may create one; an empty record is removed.
    pub fn update<R>(&self, key: &str, f: impl FnOnce(&mut Option<Record>) -> R) -> R {
        let mut guard = self.shard(key).write();
        let mut slot = guard.remove(key).map(|b| *b);
        let persistent = self.persistent.load(Ordering::Relaxed);
        let before: Vec<Binding> = if persistent {
            slot.as_ref().map(|r| r.bindings.to_vec()).unwrap_or_default()
        } else {
            Vec::new()
        };
        let out = f(&mut slot);
        if persistent {
            let mut pending = self.pending.lock();
            if let Some(rec) = &slot {
                for b in &rec.bindings {
                    if before.iter().find(|o| o.ruid() == b.ruid()).is_none_or(|old| old != b) {
                        pending.insert(b.ruid().into(), PendingOp::Upsert(Box::new(b.to_row(rec))));
                    }
                }
            }
            for old in &before {
                let still = slot.as_ref().is_some_and(|r| r.bindings.iter().any(|b| b.ruid() == old.ruid()));
                if !still {
                    pending.insert(old.ruid().into(), PendingOp::Delete);
                }
            }
        }
        if let Some(rec) = slot {
            if !rec.bindings.is_empty() {
                guard.insert(key.into(), Box::new(rec));
            }
        }
        out
    }

    /// Removes expired bindings (`now` Unix seconds); returns how many.
    pub fn sweep(&self, now: i64) -> usize {
        let mut removed = 0;
        for shard in &self.shards {
            let keys: Vec<Box<str>> = shard
                .read()
                .iter()
                .filter(|(_, r)| r.bindings.iter().any(|b| b.expires <= now))
                .map(|(k, _)| k.clone())
                .collect();
            for k in keys {
                removed += self.update(&k, |slot| {
                    let Some(rec) = slot else { return 0 };
                    let n = rec.bindings.len();
                    rec.bindings.retain(|b| b.expires > now);
                    n - rec.bindings.len()
                });
            }
        }
        removed
    }

    /// Loads rows read from the database (at start, or a sync from a
    /// shared database): a row replaces the binding with the same ruid
    /// unless the one in memory is newer. Nothing is queued back.
    pub fn merge_rows(&self, rows: &[BindingRow]) {
        for r in rows {
            let key = self.aor_key(&r.username, r.domain.as_deref());
            // A sync reads back this proxy's own recent writes: a binding
            // already held at that age stays as it is (replacing it with an
            // equal copy only churned memory, thousands of rows a poll).
            let held = self.shard(&key).read().get(key.as_str()).is_some_and(|rec| {
                rec.bindings
                    .iter()
                    .any(|x| x.ruid() == r.ruid && x.last_modified >= from_datetime(r.last_modified))
            });
            if held {
                continue;
            }
            let b = Binding::from_row(r);
            let mut guard = self.shard(&key).write();
            let rec = guard.entry(key.as_str().into()).or_insert_with(|| {
                Box::new(Record {
                    username: r.username.as_str().into(),
                    domain: r.domain.as_deref().map(Into::into),
                    bindings: Default::default(),
                })
            });
            match rec.bindings.iter_mut().find(|x| x.ruid() == b.ruid()) {
                Some(x) if x.last_modified > b.last_modified => {}
                Some(x) => *x = b,
                None => rec.bindings.push(b),
            }
        }
    }

    /// Drops bindings that are no longer in the database (removed by
    /// another proxy), except those changed here since `keep_after` or
    /// still waiting to be written.
    pub fn retain_ruids(&self, in_db: &std::collections::HashSet<String>, keep_after: i64) {
        let pending: std::collections::HashSet<Box<str>> = self.pending.lock().keys().cloned().collect();
        for shard in &self.shards {
            let mut g = shard.write();
            g.retain(|_, rec| {
                rec.bindings
                    .retain(|b| b.last_modified >= keep_after || pending.contains(b.ruid()) || in_db.contains(b.ruid()));
                !rec.bindings.is_empty()
            });
        }
    }

    /// Takes every queued change (the database thread's batch).
    pub fn take_pending(&self) -> Vec<(Box<str>, PendingOp)> {
        std::mem::take(&mut *self.pending.lock()).into_iter().collect()
    }

    /// Puts back changes that could not be written; newer queued changes
    /// of the same binding win.
    pub fn requeue(&self, ops: Vec<(Box<str>, PendingOp)>) {
        let mut p = self.pending.lock();
        for (ruid, op) in ops {
            p.entry(ruid).or_insert(op);
        }
    }

    /// A private copy of the table for a dry run (`serlua repl`): the same
    /// bindings, its own locks, ruids that cannot collide with the live
    /// table's, and no database thread behind it. Its change queue is kept
    /// (`persistent`) so that the REPL can read what `save()` and friends
    /// changed from [`Usrloc::take_pending`]; nothing ever drains it to a
    /// database.
    pub fn dry_copy(&self) -> Usrloc {
        Usrloc {
            table: self.table,
            use_domain: self.use_domain,
            shards: self.shards.iter().map(|s| RwLock::new(s.read().clone())).collect(),
            pending: Mutex::new(HashMap::new()),
            persistent: AtomicBool::new(true),
            next_ruid: AtomicU64::new(1),
            ruid_prefix: format!("{}-dry", self.ruid_prefix),
        }
    }

    /// Changes waiting for the database.
    pub fn pending_len(&self) -> usize {
        self.pending.lock().len()
    }

    /// Number of lock shards the table is split into (keys are spread over
    /// them by hash): nathelper's keepalives walk one slice at a time.
    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Runs `f` on every record of shard `i` (see [`Usrloc::shard_count`])
    /// under its read lock, without copying the records.
    pub fn for_each_in_shard(&self, i: usize, mut f: impl FnMut(&str, &Record)) {
        if let Some(shard) = self.shards.get(i) {
            for (k, rec) in shard.read().iter() {
                f(k, rec);
            }
        }
    }

    /// Every record (for `ul show` and metrics), as a snapshot.
    pub fn snapshot(&self) -> Vec<Record> {
        self.shards
            .iter()
            .flat_map(|s| s.read().values().map(|r| Record::clone(r)).collect::<Vec<_>>())
            .collect()
    }

    /// Up to `limit` records, in no particular order, without copying the
    /// whole table (the status page shows the first few).
    pub fn first_records(&self, limit: usize) -> Vec<Record> {
        let mut out = Vec::new();
        for shard in &self.shards {
            for rec in shard.read().values() {
                if out.len() >= limit {
                    return out;
                }
                out.push(Record::clone(rec));
            }
        }
        out
    }

    /// Number of bindings held.
    pub fn binding_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.read().values().map(|r| r.bindings.len()).sum::<usize>())
            .sum()
    }
}

/// The periodic sweep of expired bindings (usrloc `timer_interval`),
/// run by worker 0 and re-armed each time.
pub fn sweep(env: &Env) {
    let now = env.unix_now();
    let store = &env.shared.store;
    let n = store.location.sweep(now) + store.aliases.sweep(now);
    if n > 0 {
        tracing::debug!("usrloc: {n} expired bindings removed");
    }
    env.arm_job(sweep_interval(env), Timer::UsrlocSweep);
}

/// How often the sweep runs (modparam usrloc timer_interval, default 10 s).
pub fn sweep_interval(env: &Env) -> Duration {
    Duration::from_secs(env.shared.cfg.params.int("usrloc", "timer_interval", 10).clamp(1, 3600) as u64)
}
