//! The proxy's control plane: what `serlua ctl` (over the control
//! socket), `/metrics` and the status page ask of a running proxy — stats,
//! script and table reloads, the location table, live transactions and
//! relay sessions, the log level. One facade, so the socket and the HTTP
//! listener answer alike (Kamailio's RPC commands, `kamctl`/`kamcmd`).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use serde_json::{Value, json};

use crate::core::{METHOD_NAMES, Shared};
use crate::relay::RelayHandle;

/// Reloads the route script in every worker (SIGHUP, `ctl reload`):
/// Ok with a summary, Err with the script's file:line error.
pub type ReloadFn = Box<dyn Fn() -> Result<String, String> + Send + Sync>;
/// Asks the database thread to reload subscribers, domains, trusted.
pub type ReloadTablesFn = Box<dyn Fn() + Send + Sync>;
/// Sets the log filter (`info`, `debug`, `serlua=debug,warn`, …).
pub type LogLevelFn = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// The control plane of one running proxy.
pub struct Control {
    /// The proxy's shared state.
    pub shared: Arc<Shared>,
    /// The route script it runs.
    pub script: PathBuf,
    started: SystemTime,
    started_mono: Instant,
    reload: Option<ReloadFn>,
    reload_tables: Option<ReloadTablesFn>,
    log_level: Option<LogLevelFn>,
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

fn load(a: &std::sync::atomic::AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

impl Control {
    /// A control plane over `shared`; the reload and log-level hooks are
    /// set by whoever runs the workers and the logger.
    pub fn new(shared: Arc<Shared>, script: PathBuf) -> Control {
        Control {
            shared,
            script,
            started: SystemTime::now(),
            started_mono: Instant::now(),
            reload: None,
            reload_tables: None,
            log_level: None,
        }
    }

    /// Sets the script reload hook.
    pub fn with_reload(mut self, f: ReloadFn) -> Control {
        self.reload = Some(f);
        self
    }

    /// Sets the table reload hook.
    pub fn with_reload_tables(mut self, f: ReloadTablesFn) -> Control {
        self.reload_tables = Some(f);
        self
    }

    /// Sets the log-level hook.
    pub fn with_log_level(mut self, f: LogLevelFn) -> Control {
        self.log_level = Some(f);
        self
    }

    /// `version`: the program and the script.
    pub fn version(&self) -> Value {
        json!({ "name": "serlua", "version": env!("CARGO_PKG_VERSION"), "script": self.script.display().to_string(),
                "started": unix(self.started), "uptime_seconds": self.started_mono.elapsed().as_secs() })
    }

    /// `stats`: message, transaction, registration and error counters.
    pub fn stats(&self) -> Value {
        let s = &self.shared.stats;
        let by_method = |arr: &[std::sync::atomic::AtomicU64; 15]| -> Value {
            Value::Object(
                METHOD_NAMES
                    .iter()
                    .zip(arr.iter())
                    .filter(|(_, c)| load(c) > 0)
                    .map(|(m, c)| (m.to_string(), json!(load(c))))
                    .collect(),
            )
        };
        let by_class = |arr: &[std::sync::atomic::AtomicU64; 6]| -> Value {
            Value::Object(
                (1..=6)
                    .zip(arr.iter())
                    .filter(|(_, c)| load(c) > 0)
                    .map(|(k, c)| (format!("{k}xx"), json!(load(c))))
                    .collect(),
            )
        };
        let store = &self.shared.store;
        json!({
            "uptime_seconds": self.started_mono.elapsed().as_secs(),
            "received": { "requests": load(&s.rcv_requests), "replies": load(&s.rcv_replies),
                          "requests_by_method": by_method(&s.rcv_by_method), "replies_by_class": by_class(&s.rcv_by_class) },
            "sent": { "requests_by_method": by_method(&s.sent_by_method), "replies_by_class": by_class(&s.sent_by_class),
                      "forwarded_requests": load(&s.fwd_requests), "forwarded_replies": load(&s.fwd_replies), "local_replies": load(&s.local_replies) },
            "transactions": self.shared.tm.len(),
            "registrations": { "bindings": store.location.binding_count(), "aliases": store.aliases.binding_count(), "subscribers": store.subscriber_count() },
            "errors": { "parse": load(&s.parse_errors), "script": load(&s.script_errors), "overload_503": load(&s.overload_503),
                        "dropped": load(&s.dropped), "database": load(&s.db_errors), "pike_refused": load(&s.pike_refused) },
            "database_queue": store.location.pending_len() + store.aliases.pending_len(),
            "nat_pings": load(&s.nat_pings),
            "workers": self.shared.queue_bytes.iter().enumerate().map(|(i, q)| json!({ "worker": i, "queue_bytes": load(q) })).collect::<Vec<_>>(),
            "draining": self.shared.draining.load(Ordering::Relaxed),
        })
    }

    /// `reload`: the route script, in every worker at once, or not at all.
    pub fn reload(&self) -> Result<String, String> {
        match &self.reload {
            Some(f) => f(),
            None => Err("script reload is not available here".into()),
        }
    }

    /// `reload-tables`: subscribers, domains and trusted from the database.
    pub fn reload_tables(&self) -> Result<String, String> {
        match &self.reload_tables {
            Some(f) => {
                f();
                Ok("reload of subscribers, domains and trusted requested".into())
            }
            None => Err("no database thread".into()),
        }
    }

    /// `ul show [AOR]`: the bindings in memory (what lookups use).
    pub fn ul_show(&self, aor: Option<&str>) -> Value {
        Value::Array(self.bindings_json(aor, self.shared.store.location.snapshot()))
    }

    /// At most `limit` bindings (for the status page) and the total held,
    /// without copying the whole table.
    pub fn ul_show_limited(&self, limit: usize) -> (Vec<Value>, usize) {
        let mut v = self.bindings_json(None, self.shared.store.location.first_records(limit));
        v.truncate(limit);
        (v, self.shared.store.location.binding_count())
    }

    fn bindings_json(&self, aor: Option<&str>, records: Vec<crate::usrloc::Record>) -> Vec<Value> {
        let now = unix(SystemTime::now());
        let filter = aor.map(|a| a.trim().trim_start_matches("sip:").to_ascii_lowercase());
        let mut out = Vec::new();
        for rec in records {
            let aor_text = match &rec.domain {
                Some(d) => format!("{}@{}", rec.username, d),
                None => rec.username.to_string(),
            };
            if filter
                .as_ref()
                .is_some_and(|f| *f != aor_text.to_ascii_lowercase() && *f != rec.username.to_ascii_lowercase())
            {
                continue;
            }
            for b in rec.bindings.iter().filter(|b| b.expires > now) {
                out.push(json!({
                    "aor": aor_text, "contact": b.contact(), "received": b.received(),
                    "expires_in": if b.expires == crate::usrloc::PERMANENT { Value::Null } else { json!(b.expires - now) },
                    "q": b.q, "callid": b.callid(), "cseq": b.cseq, "flags": b.flags, "cflags": b.cflags,
                    "nat": b.cflags != 0 && b.received().is_some(), "user_agent": b.user_agent(), "socket": b.socket(), "ruid": b.ruid(),
                }));
            }
        }
        out
    }

    /// `ul rm AOR`: removes every binding of the AOR (and from the
    /// database, through the write-behind queue). Returns how many.
    pub fn ul_rm(&self, aor: &str) -> Result<usize, String> {
        let aor = aor.trim().trim_start_matches("sip:");
        let (user, domain) = match aor.split_once('@') {
            Some((u, d)) if !u.is_empty() && !d.is_empty() => (u, Some(d)),
            _ if !aor.is_empty() => (aor, None),
            _ => return Err("usage: ul rm user@domain".into()),
        };
        let ul = &self.shared.store.location;
        let key = ul.aor_key(user, domain);
        let n = ul.update(&key, |slot| slot.take().map(|r| r.bindings.len()).unwrap_or(0));
        if n == 0 { Err(format!("{aor}: no bindings")) } else { Ok(n) }
    }

    /// `tm list`: the live transactions.
    pub fn tm_list(&self) -> Value {
        let now = Instant::now();
        Value::Array(
            self.shared
                .tm
                .list(now)
                .into_iter()
                .map(|t| {
                    json!({ "id": t.id, "method": t.method, "call_id": t.call_id, "state": t.uas, "status": t.status,
                        "from": t.from, "to": t.to, "src": t.src,
                        "age_ms": t.age.as_millis() as u64,
                        "branches": t.branches.iter().map(|(d, s, c)| json!({ "dst": d, "state": s, "status": c })).collect::<Vec<_>>() })
                })
                .collect(),
        )
    }

    /// `sessions`: the live media relay sessions, as mediaproxy's
    /// sessions listing showed them: caller, callee, duration, and per
    /// stream the codecs, the addresses each side announced and the relay
    /// learned (latching), and packets/bytes each way. Empty until the
    /// script first relays media.
    pub fn sessions(&self) -> Value {
        let Some(Ok(h)) = self.shared.relay.get() else {
            return Value::Array(Vec::new());
        };
        let list = match h.relay.list() {
            Ok(l) => l,
            Err(e) => return json!({ "error": e.to_string() }),
        };
        let now = std::time::SystemTime::now();
        let addr = |l: &crate::relay::LegStats| l.latched.or(l.announced).map(|a| a.to_string());
        Value::Array(
            list.into_iter()
                .map(|s| {
                    json!({
                        "call_id": s.call_id, "from_tag": s.from_tag, "to_tag": s.to_tag,
                        "caller": s.caller, "callee": s.callee, "relay_name": s.relay,
                        "started": s.created.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                        "duration_s": now.duration_since(s.created).map(|d| d.as_secs()).unwrap_or(0),
                        "streams": s.streams.iter().map(|st| json!({
                            "media": st.media, "codecs": st.codecs,
                            "caller_addr": addr(&st.caller), "callee_addr": addr(&st.callee),
                            "caller_announced": st.caller.announced.map(|a| a.to_string()),
                            "callee_announced": st.callee.announced.map(|a| a.to_string()),
                            "caller_latched": st.caller.latched.map(|a| a.to_string()),
                            "callee_latched": st.callee.latched.map(|a| a.to_string()),
                            "relay": format!("{} / {}",
                                st.caller.relay.map(|a| a.to_string()).unwrap_or_default(),
                                st.callee.relay.map(|a| a.to_string()).unwrap_or_default()),
                            "caller_packets": st.caller.packets, "caller_bytes": st.caller.bytes,
                            "callee_packets": st.callee.packets, "callee_bytes": st.callee.bytes,
                            "caller_idle_s": st.caller.idle_s, "callee_idle_s": st.callee.idle_s,
                        })).collect::<Vec<_>>(),
                    })
                })
                .collect(),
        )
    }

    /// Packets and bytes the embedded relay forwarded since start (zero
    /// for a remote relay, which counts its own).
    pub fn relay_totals(&self) -> (u64, u64) {
        match self.shared.relay.get() {
            Some(Ok(RelayHandle { engine: Some(e), .. })) => e.totals(),
            _ => (0, 0),
        }
    }

    /// `pike`: the sources pike blocks now (the ban table of SER's
    /// `pike.top` RPC, reduced to the red ones): address, why, requests
    /// refused, requests counted, failed authorizations, seconds left.
    pub fn pike_list(&self) -> Value {
        let now = Instant::now();
        Value::Array(
            self.shared
                .pike
                .blocked(now)
                .into_iter()
                .map(|b| {
                    json!({ "ip": b.source, "reason": b.reason.as_str(), "refused": b.refused, "hits": b.hits,
                        "auth_failures": b.auth_failures, "expires_in": b.left.as_secs_f64().ceil() as u64 })
                })
                .collect(),
        )
    }

    /// `pike rm IP`: unblocks a source at once.
    pub fn pike_rm(&self, ip: &str) -> Result<Value, String> {
        let addr: std::net::IpAddr = ip
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse()
            .map_err(|_| format!("'{ip}' is not an IP address"))?;
        if self.shared.pike.unblock(addr, Instant::now()) {
            tracing::info!("pike: {ip} unblocked by the control socket");
            Ok(json!({ "unblocked": ip }))
        } else {
            Err(format!("{ip} is not blocked"))
        }
    }

    /// `log-level LEVEL`: changes what is logged, at once.
    pub fn set_log_level(&self, level: &str) -> Result<String, String> {
        let level = match level.trim() {
            // SER's numeric debug levels work too.
            n if n.parse::<i64>().is_ok() => crate::app::debug_filter(n.parse().ok()).to_string(),
            other => other.to_string(),
        };
        match &self.log_level {
            Some(f) => f(&level).map(|()| format!("log level set to {level}")),
            None => Err("the log level cannot be changed here".into()),
        }
    }

    /// The recent script errors, newest last.
    pub fn recent_errors(&self) -> Value {
        Value::Array(
            self.shared
                .recent_errors
                .lock()
                .iter()
                .map(|(t, e)| json!({ "time": unix(*t), "error": e }))
                .collect(),
        )
    }

    /// Runs one control command by name (the control socket's dispatcher).
    /// `args` are the command's positional arguments.
    pub fn dispatch(&self, cmd: &str, args: &[String]) -> Result<Value, String> {
        let arg = |i: usize| args.get(i).map(String::as_str);
        match cmd {
            "version" => Ok(self.version()),
            "stats" => Ok(self.stats()),
            "reload" => self.reload().map(Value::String),
            "reload-tables" => self.reload_tables().map(Value::String),
            "ul.show" | "ul show" => Ok(self.ul_show(arg(0))),
            "ul.rm" | "ul rm" => self
                .ul_rm(arg(0).ok_or("usage: ul rm user@domain")?)
                .map(|n| json!({ "removed": n })),
            "tm.list" | "tm list" => Ok(self.tm_list()),
            "sessions" => Ok(self.sessions()),
            "log-level" => self.set_log_level(arg(0).ok_or("usage: log-level LEVEL")?).map(Value::String),
            "errors" => Ok(self.recent_errors()),
            "pike" | "pike list" | "pike.list" => Ok(self.pike_list()),
            "pike rm" | "pike.rm" => self.pike_rm(arg(0).ok_or("usage: pike rm IP")?),
            other => Err(format!(
                "unknown command '{other}' (stats, reload, reload-tables, ul show [AOR], ul rm AOR, sessions, tm list, pike, pike rm IP, log-level LEVEL, version, errors)"
            )),
        }
    }
}
