//! pike: per-source request rate limiting and a digest brute-force guard
//! (SER/Kamailio's pike module, `pike_check_req()`).
//!
//! Every request the script passes through `pike_check_req()` is counted
//! against its source address. An address that sends more than
//! `reqs_density_per_unit` requests in `sampling_time_unit` seconds
//! (defaults as SER: 30 per 2 s) is blocked: `pike_check_req()` returns
//! false for it until `remove_latency` seconds (default 120, as
//! Kamailio) have passed since it last went over the rate. A script
//! drops or refuses it:
//!
//! ```lua
//! if not pike_check_req() then drop() end
//! ```
//!
//! Beyond SER: failed digest authorizations (`www_authorize` /
//! `proxy_authorize` refusing credentials with a wrong response or an
//! unknown user) are counted per source too. After `auth_failures` (10)
//! of them, each less than `remove_latency` after the previous one, the
//! source is blocked the same way: a password-guessing client is cut off
//! after a handful of tries however slowly it guesses, where the request
//! rate alone would only slow it down.
//!
//! The rate is a sliding window over two sampling units (the previous
//! unit's count weighted by how much of it still overlaps the last
//! `sampling_time_unit` seconds, plus the current unit's), so a burst
//! straddling a unit boundary is caught as SER's two-slot counting does.
//! IPv4 sources are counted per address; IPv6 sources per /64, the
//! smallest block a subscriber usually gets (one host can use every
//! address in it).
//!
//! The table is shared by every worker and sharded (one small lock per
//! shard, never held across I/O). It holds at most `max_entries` sources
//! (default 65,536; about 100 bytes each, so ≈ 7 MiB at the cap): when a
//! shard is full, sources idle for two sampling units go first, then the
//! least recently seen unblocked one, then the block closest to its end —
//! a flood of spoofed sources cannot grow memory, it can only push out
//! the quietest entries.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv6Addr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use mlua::Lua;
use parking_lot::Mutex;

use crate::config::{ConfigError, ModParams};
use crate::core::{Env, Stats};
use crate::script::export::{Export, RouteMask};
use crate::script::register as reg;

/// pike's script functions.
pub const EXPORTS: &[Export] = &[Export::new("pike_check_req", 0, 0, RouteMask::REQUEST)];

/// Number of shards of the table (a power of two).
const SHARDS: usize = 64;

/// pike's parameters (`modparam("pike", …)`).
#[derive(Clone, Debug)]
pub struct PikeConfig {
    /// `sampling_time_unit`: the period the rate is measured over (2 s).
    pub unit: Duration,
    /// `reqs_density_per_unit`: requests allowed per unit (30).
    pub density: u32,
    /// `remove_latency`: how long a source stays blocked after it last
    /// exceeded the rate (120 s), and how long failed authorizations are
    /// remembered between two of them.
    pub latency: Duration,
    /// `auth_failures`: failed digest authorizations after which a source
    /// is blocked (10; 0 turns the guard off).
    pub auth_failures: u32,
    /// `max_entries`: sources tracked at most (65,536).
    pub max_entries: usize,
}

impl Default for PikeConfig {
    fn default() -> PikeConfig {
        PikeConfig {
            unit: Duration::from_secs(2),
            density: 30,
            latency: Duration::from_secs(120),
            auth_failures: 10,
            max_entries: 65536,
        }
    }
}

impl PikeConfig {
    /// Reads the `pike` module parameters; SER's defaults for those not set.
    pub fn from_params(p: &ModParams) -> Result<PikeConfig, ConfigError> {
        let d = PikeConfig::default();
        let int = |name: &str, default: i64, min: i64| -> Result<i64, ConfigError> {
            let v = p.int("pike", name, default);
            if v < min {
                return Err(ConfigError::Param(format!("modparam pike.{name} must be at least {min}, got {v}")));
            }
            Ok(v)
        };
        Ok(PikeConfig {
            unit: Duration::from_secs(int("sampling_time_unit", d.unit.as_secs() as i64, 1)? as u64),
            density: int("reqs_density_per_unit", d.density as i64, 1)?.min(u32::MAX as i64) as u32,
            latency: Duration::from_secs(int("remove_latency", d.latency.as_secs() as i64, 1)? as u64),
            auth_failures: int("auth_failures", d.auth_failures as i64, 0)?.min(u32::MAX as i64) as u32,
            max_entries: int("max_entries", d.max_entries as i64, SHARDS as i64)? as usize,
        })
    }
}

/// Why a source is blocked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockReason {
    /// More than `reqs_density_per_unit` requests in a sampling unit.
    Rate,
    /// `auth_failures` failed digest authorizations.
    Auth,
}

impl BlockReason {
    /// The name `serlua ctl pike` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            BlockReason::Rate => "rate",
            BlockReason::Auth => "auth",
        }
    }
}

/// What `serlua ctl pike` shows of a blocked source.
#[derive(Clone, Debug)]
pub struct Blocked {
    /// The address (an IPv6 source as its /64).
    pub source: String,
    /// Why it is blocked.
    pub reason: BlockReason,
    /// Requests refused since the block began.
    pub refused: u64,
    /// Requests counted from it while it has been tracked.
    pub hits: u64,
    /// Failed authorizations counted.
    pub auth_failures: u32,
    /// Time left until it is unblocked (if it stays under the rate).
    pub left: Duration,
}

/// One tracked source.
#[derive(Clone, Debug)]
struct Entry {
    window_start: Instant,
    cur: u32,
    prev: u32,
    hits: u64,
    last_seen: Instant,
    blocked_until: Option<Instant>,
    reason: BlockReason,
    refused: u64,
    auth_failures: u32,
    last_auth_failure: Instant,
}

impl Entry {
    fn new(now: Instant) -> Entry {
        Entry {
            window_start: now,
            cur: 0,
            prev: 0,
            hits: 0,
            last_seen: now,
            blocked_until: None,
            reason: BlockReason::Rate,
            refused: 0,
            auth_failures: 0,
            last_auth_failure: now,
        }
    }

    fn blocked_at(&self, now: Instant) -> bool {
        self.blocked_until.is_some_and(|t| now < t)
    }

    /// Counts one request and returns the rate over the last unit.
    fn count(&mut self, unit: Duration, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.window_start);
        if elapsed >= unit * 2 {
            self.prev = 0;
            self.cur = 0;
            self.window_start = now;
        } else if elapsed >= unit {
            self.prev = self.cur;
            self.cur = 0;
            self.window_start += unit;
        }
        self.cur = self.cur.saturating_add(1);
        self.hits += 1;
        self.last_seen = now;
        let into = now.saturating_duration_since(self.window_start).min(unit);
        // The share of the previous unit still inside the last `unit` seconds.
        let weight = (unit - into).as_nanos() as u64;
        let prev = (self.prev as u64 * weight) / unit.as_nanos().max(1) as u64;
        prev + self.cur as u64
    }

    /// Nothing about this source is worth keeping: not blocked, and no
    /// request or failed authorization recent enough to count.
    fn idle(&self, cfg: &PikeConfig, now: Instant) -> bool {
        !self.blocked_at(now)
            && now.saturating_duration_since(self.last_seen) >= cfg.unit * 2
            && (self.auth_failures == 0 || now.saturating_duration_since(self.last_auth_failure) >= cfg.latency)
    }
}

/// The pike table, shared by every worker.
pub struct Pike {
    cfg: PikeConfig,
    shards: Box<[Mutex<HashMap<IpAddr, Entry>>]>,
    hasher: std::collections::hash_map::RandomState,
    per_shard: usize,
}

/// The key a source is counted under: the address, or an IPv6 address's /64.
pub fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

fn key_text(k: IpAddr) -> String {
    match k {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("{v6}/64"),
    }
}

impl Pike {
    /// An empty table.
    pub fn new(cfg: PikeConfig) -> Pike {
        let per_shard = cfg.max_entries.div_ceil(SHARDS).max(1);
        Pike {
            cfg,
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: Default::default(),
            per_shard,
        }
    }

    /// The parameters in force.
    pub fn config(&self) -> &PikeConfig {
        &self.cfg
    }

    fn shard(&self, key: IpAddr) -> &Mutex<HashMap<IpAddr, Entry>> {
        &self.shards[self.hasher.hash_one(key) as usize % SHARDS]
    }

    /// Runs `f` on the entry of `key`, making room for it first when the
    /// shard is full.
    fn with_entry<R>(&self, key: IpAddr, now: Instant, f: impl FnOnce(&mut Entry) -> R) -> R {
        let mut map = self.shard(key).lock();
        if !map.contains_key(&key) && map.len() >= self.per_shard {
            self.make_room(&mut map, now);
        }
        f(map.entry(key).or_insert_with(|| Entry::new(now)))
    }

    fn make_room(&self, map: &mut HashMap<IpAddr, Entry>, now: Instant) {
        map.retain(|_, e| !e.idle(&self.cfg, now));
        if map.len() < self.per_shard {
            return;
        }
        let victim = map
            .iter()
            .filter(|(_, e)| !e.blocked_at(now))
            .min_by_key(|(_, e)| e.last_seen)
            .or_else(|| map.iter().min_by_key(|(_, e)| e.blocked_until))
            .map(|(k, _)| *k);
        if let Some(k) = victim {
            map.remove(&k);
        }
    }

    /// Counts a request from `ip` and says whether it may go on (SER's
    /// `pike_check_req`): false while the source is blocked. A source
    /// that exceeds the rate is blocked for `remove_latency`; one that
    /// keeps exceeding it while blocked stays blocked. Returns whether the
    /// request passes and whether this request started a block.
    pub fn check(&self, ip: IpAddr, now: Instant) -> (bool, bool) {
        let key = source_key(ip);
        let cfg = &self.cfg;
        self.with_entry(key, now, |e| {
            let rate = e.count(cfg.unit, now);
            let was_blocked = e.blocked_at(now);
            if rate > cfg.density as u64 {
                if !was_blocked {
                    e.refused = 0;
                    e.reason = BlockReason::Rate;
                }
                e.blocked_until = Some(now + cfg.latency);
            }
            if e.blocked_at(now) {
                e.refused += 1;
                (false, !was_blocked)
            } else {
                (true, false)
            }
        })
    }

    /// Counts a failed digest authorization from `ip`; returns true when
    /// this failure blocked the source.
    pub fn auth_failed(&self, ip: IpAddr, now: Instant) -> bool {
        if self.cfg.auth_failures == 0 {
            return false;
        }
        let key = source_key(ip);
        let cfg = &self.cfg;
        self.with_entry(key, now, |e| {
            if e.auth_failures > 0 && now.saturating_duration_since(e.last_auth_failure) >= cfg.latency {
                e.auth_failures = 0;
            }
            e.auth_failures = e.auth_failures.saturating_add(1);
            e.last_auth_failure = now;
            e.last_seen = now;
            if e.auth_failures >= cfg.auth_failures && !e.blocked_at(now) {
                e.blocked_until = Some(now + cfg.latency);
                e.reason = BlockReason::Auth;
                e.refused = 0;
                return true;
            }
            false
        })
    }

    /// True while `ip` is blocked (nothing is counted).
    pub fn is_blocked(&self, ip: IpAddr, now: Instant) -> bool {
        let key = source_key(ip);
        self.shard(key).lock().get(&key).is_some_and(|e| e.blocked_at(now))
    }

    /// The blocked sources, sorted by address.
    pub fn blocked(&self, now: Instant) -> Vec<Blocked> {
        let mut out = Vec::new();
        for shard in self.shards.iter() {
            for (k, e) in shard.lock().iter() {
                if let Some(until) = e.blocked_until.filter(|t| now < *t) {
                    out.push((
                        *k,
                        Blocked {
                            source: key_text(*k),
                            reason: e.reason,
                            refused: e.refused,
                            hits: e.hits,
                            auth_failures: e.auth_failures,
                            left: until - now,
                        },
                    ));
                }
            }
        }
        out.sort_by_key(|(k, _)| *k);
        out.into_iter().map(|(_, b)| b).collect()
    }

    /// Unblocks `ip` (`serlua ctl pike rm IP`) and forgets what was counted
    /// against it; false when it was not blocked.
    pub fn unblock(&self, ip: IpAddr, now: Instant) -> bool {
        let key = source_key(ip);
        self.shard(key).lock().remove(&key).is_some_and(|e| e.blocked_at(now))
    }

    /// Sources tracked now.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    /// True when no source is tracked.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Registers pike's primitive.
pub fn register(lua: &Lua, env: &Rc<Env>) -> mlua::Result<()> {
    reg(lua, env, EXPORTS, "pike_check_req", |_, env, ctx, ()| {
        let ip = ctx.src.ip();
        let (pass, started) = env.shared.pike.check(ip, env.now());
        if started {
            let c = env.shared.pike.config();
            tracing::warn!(
                "pike: {} blocked for {} s: more than {} requests in {} s",
                key_text(source_key(ip)),
                c.latency.as_secs(),
                c.density,
                c.unit.as_secs()
            );
        }
        if !pass {
            Stats::inc(&env.shared.stats.pike_refused);
        }
        Ok(pass)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn cfg() -> PikeConfig {
        PikeConfig::default()
    }

    #[test]
    fn blocks_above_the_density_and_for_remove_latency() {
        let p = Pike::new(cfg());
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for i in 0..30 {
            assert!(p.check(a, t0).0, "request {i} is within 30 per 2 s");
        }
        assert_eq!(p.check(a, t0), (false, true), "the 31st starts the block");
        assert_eq!(p.check(a, t0), (false, false));
        assert!(p.check(ip("192.0.2.2"), t0).0, "another source is not affected");
        // Quiet, but still inside remove_latency.
        assert!(!p.check(a, t0 + Duration::from_secs(119)).0);
        assert!(p.check(a, t0 + Duration::from_secs(121)).0, "unblocked 120 s after the last excess");
        let b = p.blocked(t0 + Duration::from_secs(121));
        assert!(b.is_empty(), "{b:?}");
    }

    #[test]
    fn a_source_that_keeps_flooding_stays_blocked() {
        let p = Pike::new(cfg());
        let mut t = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..31 {
            p.check(a, t);
        }
        // 100 requests per second for three minutes: never let through.
        for _ in 0..180 {
            t += Duration::from_secs(1);
            for _ in 0..100 {
                assert!(!p.check(a, t).0);
            }
        }
        let b = p.blocked(t);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].reason, BlockReason::Rate);
        assert!(b[0].refused >= 18000);
        assert!(b[0].left > Duration::from_secs(119));
    }

    #[test]
    fn steady_rate_under_the_density_passes() {
        let p = Pike::new(cfg());
        let mut t = Instant::now();
        let a = ip("192.0.2.1");
        // 14 per second is 28 per 2 s: never blocked, across unit boundaries.
        for _ in 0..600 {
            t += Duration::from_millis(1000 / 14);
            assert!(p.check(a, t).0);
        }
    }

    #[test]
    fn a_burst_across_a_unit_boundary_is_caught() {
        let p = Pike::new(cfg());
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        p.check(a, t0);
        // 25 at the end of the first unit, 25 right after it: 50 within 0.2 s.
        let late = t0 + Duration::from_millis(1900);
        for _ in 0..25 {
            assert!(p.check(a, late).0);
        }
        let early = t0 + Duration::from_millis(2100);
        let passed = (0..25).filter(|_| p.check(a, early).0).count();
        assert!(passed < 25, "the second half of the burst must be refused in part");
    }

    #[test]
    fn failed_authorizations_block() {
        let p = Pike::new(cfg());
        let mut t = Instant::now();
        let a = ip("192.0.2.7");
        for i in 1..10 {
            t += Duration::from_secs(30);
            assert!(!p.auth_failed(a, t), "failure {i} does not block yet");
            assert!(p.check(a, t).0);
        }
        t += Duration::from_secs(30);
        assert!(p.auth_failed(a, t), "the 10th failure blocks");
        assert!(!p.check(a, t).0);
        let b = p.blocked(t);
        assert_eq!(b[0].reason, BlockReason::Auth);
        assert_eq!(b[0].auth_failures, 10);
        // ctl pike rm
        assert!(p.unblock(a, t));
        assert!(p.check(a, t).0);
        assert!(!p.unblock(a, t));
    }

    #[test]
    fn failures_far_apart_are_forgotten() {
        let p = Pike::new(cfg());
        let mut t = Instant::now();
        let a = ip("192.0.2.7");
        for _ in 0..50 {
            t += Duration::from_secs(121);
            assert!(!p.auth_failed(a, t));
        }
    }

    #[test]
    fn ipv6_counts_per_64() {
        let p = Pike::new(cfg());
        let t = Instant::now();
        for i in 0..31u16 {
            let a = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 1, i, 2, 3, 4));
            p.check(a, t);
        }
        assert!(!p.check(ip("2001:db8:0:1::99"), t).0);
        assert!(p.check(ip("2001:db8:0:2::1"), t).0);
        assert_eq!(p.blocked(t)[0].source, "2001:db8:0:1::/64");
        assert!(p.unblock(ip("2001:db8:0:1:ffff::1"), t));
    }

    #[test]
    fn memory_is_capped() {
        let p = Pike::new(PikeConfig {
            max_entries: 1024,
            ..cfg()
        });
        let t = Instant::now();
        let blocked = ip("198.51.100.1");
        for _ in 0..31 {
            p.check(blocked, t);
        }
        // A flood of spoofed sources, all within one unit.
        for i in 0..100_000u32 {
            let a = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            p.check(a, t + Duration::from_micros(i as u64));
        }
        assert!(p.len() <= 1024, "{} entries", p.len());
        assert!(
            p.is_blocked(blocked, t + Duration::from_secs(1)),
            "a block outlives unblocked entries"
        );
    }

    #[test]
    fn parameters() {
        let mut m = ModParams::default();
        m.set("pike", "reqs_density_per_unit", crate::config::ParamValue::Int(5)).unwrap();
        m.set("pike", "sampling_time_unit", crate::config::ParamValue::Int(1)).unwrap();
        let c = PikeConfig::from_params(&m).unwrap();
        assert_eq!(
            (c.density, c.unit, c.latency),
            (5, Duration::from_secs(1), Duration::from_secs(120))
        );
        m.set("pike", "remove_latency", crate::config::ParamValue::Int(0)).unwrap();
        assert!(PikeConfig::from_params(&m).is_err());
    }
}
