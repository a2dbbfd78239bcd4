//! `proxy(...)` in a `serlua test` file: the real script on the real core
//! (a [`Worker`], DESIGN.md's sans-IO core) behind a virtual network and a
//! virtual clock, with a throwaway in-memory SQLite database the test
//! fills. Messages go in with `px:receive`/`px:replay`; what the proxy
//! sent comes out of `px:sent`; `px:advance` moves the clock and fires
//! due timers, so a 45 s timeout takes no real time.

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use mlua::{Function, Lua, MetaMethod, Table, UserData, UserDataMethods, Value};

use super::msg::{LuaMsg, Msg, Origin, as_msg};
use crate::auth::NoncePolicy;
use crate::core::Stats;
use crate::db::{Db, UlTable};
use crate::relay::RelayChoice;
use crate::sip::{HeaderName, SipMessage};
use crate::transport::{ConnId, Incoming, ListenSocket, Proto, SocketId};
use crate::worker::Worker;

/// One line of a test's message flow (the `--verbose` ladder).
#[derive(Clone, Debug)]
pub struct Event {
    /// Seconds on the proxy's clock.
    pub time: f64,
    /// Sender (`None` for a timer firing in the proxy).
    pub src: Option<SocketAddr>,
    /// Receiver.
    pub dst: Option<SocketAddr>,
    /// Transport.
    pub proto: Proto,
    /// The message's first line, or what happened.
    pub label: String,
    /// The routes that ran on it, and their errors.
    pub note: String,
}

struct TestDb {
    rt: tokio::runtime::Runtime,
    db: Db,
}

/// A proxy instance under test.
pub struct TestProxy {
    /// The script's name (path, or `inline.lua`).
    pub name: String,
    worker: Worker,
    start: Instant,
    now: Instant,
    history: Vec<Rc<Msg>>,
    cursor: usize,
    /// The message flow so far.
    pub events: Vec<Event>,
    db: Option<TestDb>,
    conns: HashMap<(SocketAddr, SocketId), ConnId>,
    routes_seen: usize,
}

/// Lua source that makes the script's `os.getenv` see `env` first: put
/// before the script's first line, on that line, so line numbers in
/// errors stay the script's own.
fn env_prelude(env: &[(String, String)]) -> String {
    if env.is_empty() {
        return String::new();
    }
    let q = |s: &str| -> String {
        let mut o = String::from("\"");
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || b" _-.:,/@;=+[]()*".contains(&b) {
                o.push(b as char);
            } else {
                o.push_str(&format!("\\{b:03}"));
            }
        }
        o.push('"');
        o
    };
    let pairs: Vec<String> = env.iter().map(|(k, v)| format!("[{}]={}", q(k), q(v))).collect();
    format!(
        "do local e, g = {{{}}}, os.getenv; os.getenv = function(k) local v = e[k]; if v ~= nil then return v end; return g(k) end end ",
        pairs.join(",")
    )
}

impl TestProxy {
    /// Loads `source` (the text of `path`, or inline text) as a proxy for
    /// tests: digest auth accepts recorded nonces, the embedded media relay
    /// binds 127.0.0.1, and every route run is recorded.
    pub fn new(name: &str, path: &Path, source: String, env: &[(String, String)]) -> Result<TestProxy, String> {
        let now = Instant::now();
        let source = format!("{}{source}", env_prelude(env));
        let (mut cfg, src) = crate::app::script_config(path, Some(source), &Default::default(), now)?;
        cfg.nonce_policy = NoncePolicy::AcceptRecorded;
        cfg.children = 1;
        // A test never sends media: the relay's sockets go on loopback
        // whatever address the script advertises.
        if let RelayChoice::Embedded { bind, .. } = &mut cfg.relay {
            bind.get_or_insert(IpAddr::V4(Ipv4Addr::LOCALHOST));
        }
        let shared = std::sync::Arc::new(crate::core::Shared::new(cfg));
        let worker = Worker::from_source(shared, 0, path, src, now).map_err(|e| e.0)?;
        *worker.env.route_log.borrow_mut() = Some(Vec::new());
        Ok(TestProxy {
            name: name.to_string(),
            worker,
            start: now,
            now,
            history: Vec::new(),
            cursor: 0,
            events: Vec::new(),
            db: None,
            conns: HashMap::new(),
            routes_seen: 0,
        })
    }

    /// Seconds since the proxy started, on its clock.
    pub fn secs(&self) -> f64 {
        self.now.duration_since(self.start).as_secs_f64()
    }

    fn sockets(&self) -> &[ListenSocket] {
        &self.worker.env.shared.sockets
    }

    /// The listen socket a message to `dst` over `proto` arrives on: the
    /// one bound or advertised at `dst`, else the first of that transport
    /// and address family, else the first of that transport.
    fn socket_for(&self, proto: Proto, dst: Option<SocketAddr>) -> Result<ListenSocket, String> {
        let socks = self.sockets();
        let of_proto = || socks.iter().filter(|s| s.proto == proto);
        let hit = dst.and_then(|d| {
            of_proto()
                .find(|s| {
                    s.addr == d || (s.adv_port == d.port() && s.adv_host.trim_matches(['[', ']']).parse::<IpAddr>().ok() == Some(d.ip()))
                })
                .or_else(|| of_proto().find(|s| s.addr.is_ipv4() == d.is_ipv4()))
        });
        hit.or_else(|| of_proto().next()).cloned().ok_or_else(|| {
            let all: Vec<String> = socks.iter().map(|s| format!("{}:{}", s.proto.lower(), s.addr)).collect();
            format!(
                "the script listens on no {} socket (it listens on: {})",
                proto.lower(),
                all.join(", ")
            )
        })
    }

    /// The addresses this proxy is at (bound and advertised).
    pub fn addresses(&self) -> Vec<SocketAddr> {
        let mut v = Vec::new();
        for s in self.sockets() {
            v.push(s.addr);
            if let Ok(ip) = s.adv_host.trim_matches(['[', ']']).parse::<IpAddr>() {
                v.push(SocketAddr::new(ip, s.adv_port));
            }
        }
        v
    }

    /// Route runs since the last call, as a ladder note.
    fn route_note(&mut self) -> String {
        let log = self.worker.env.route_log.borrow();
        let runs = log.as_deref().unwrap_or_default();
        let new = &runs[self.routes_seen.min(runs.len())..];
        let note = new
            .iter()
            .map(|r| match &r.error {
                Some(e) => format!("{} ERROR: {}", r.route, e.lines().next().unwrap_or("")),
                None => r.route.clone(),
            })
            .collect::<Vec<_>>()
            .join(", ");
        let n = runs.len();
        drop(log);
        self.routes_seen = n;
        note
    }

    /// Moves what the core queued into the history and the ladder.
    fn collect(&mut self) {
        let t = self.secs();
        for tx in self.worker.take_transmits() {
            let src = self
                .sockets()
                .get(tx.local as usize)
                .map_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0), |s| s.addr);
            let m = Rc::new(Msg::new(t, src, tx.dst, tx.proto, tx.data, Origin::Sent));
            self.events.push(Event {
                time: t,
                src: Some(m.src),
                dst: Some(m.dst),
                proto: m.proto,
                label: m.first_line(),
                note: String::new(),
            });
            self.history.push(m);
        }
    }

    /// A message arrives from `src`, addressed to `dst` (a listen address
    /// of the proxy; the first of `proto` when None).
    pub fn receive(&mut self, data: Bytes, src: SocketAddr, dst: Option<SocketAddr>, proto: Proto) -> Result<Rc<Msg>, String> {
        let sock = self.socket_for(proto, dst)?;
        let dst = dst.unwrap_or(sock.addr);
        let conn = (proto == Proto::Tcp).then(|| {
            let next = self.conns.len() as ConnId + 1;
            *self.conns.entry((src, sock.id)).or_insert(next)
        });
        let m = Rc::new(Msg::new(self.secs(), src, dst, proto, data.clone(), Origin::Received));
        let idx = self.events.len();
        self.events.push(Event {
            time: m.time,
            src: Some(src),
            dst: Some(dst),
            proto,
            label: m.first_line(),
            note: String::new(),
        });
        self.worker.handle(
            self.now,
            Incoming {
                local: sock.id,
                proto,
                src,
                conn,
                data,
            },
        );
        self.events[idx].note = self.route_note();
        self.collect();
        Ok(m)
    }

    /// Moves the clock to `until`, firing every timer at its own time.
    pub fn advance_to(&mut self, until: Instant) {
        while let Some(at) = self.worker.next_timeout() {
            if at > until {
                break;
            }
            self.now = at.max(self.now);
            let idx = self.events.len();
            let before = self.history.len();
            self.worker.handle_timeouts(self.now);
            let note = self.route_note();
            self.collect();
            if self.history.len() > before || !note.is_empty() {
                self.events.insert(
                    idx,
                    Event {
                        time: self.secs(),
                        src: None,
                        dst: None,
                        proto: Proto::Udp,
                        label: "timer".into(),
                        note,
                    },
                );
            }
        }
        self.now = self.now.max(until);
    }

    /// Moves the clock by `secs` seconds.
    pub fn advance(&mut self, secs: f64) -> Result<(), String> {
        if !secs.is_finite() || !(0.0..=86_400.0 * 366.0).contains(&secs) {
            return Err(format!("px:advance({secs}): seconds must be 0 to a year"));
        }
        let until = self.now + Duration::from_secs_f64(secs);
        self.advance_to(until);
        Ok(())
    }

    /// A reply from downstream in a trace answered the request the traced
    /// proxy forwarded; here it must answer the one this proxy forwarded:
    /// the request sent with the same Call-ID, CSeq number and method, whose
    /// top Via (and so its branch, RFC 3261 §17.1.3) the reply takes.
    fn rebranch(&self, data: &Bytes) -> Option<Bytes> {
        let mut reply = SipMessage::parse(data.clone()).ok()?;
        reply.status()?;
        let (seq, method) = (reply.cseq().seq, reply.cseq().method.clone());
        let call_id = reply.call_id().to_string();
        let fwd = self.history.iter().rev().find_map(|m| {
            let p = m.parsed.as_ref()?;
            let ok = m.origin == Origin::Sent
                && p.method() == Some(&method)
                && p.call_id() == call_id
                && p.cseq().seq == seq
                && p.cseq().method == method;
            ok.then_some(p)
        })?;
        let via = fwd.headers(&HeaderName::Via).first()?.to_vec();
        reply.set_first_value(&HeaderName::Via, &via);
        Some(reply.to_bytes())
    }

    /// Feeds the messages of a trace addressed to the proxy (`proxy`: its
    /// addresses in the trace; by default this proxy's own), in order and
    /// at their recorded relative times; replies from downstream take the
    /// branch of the request this proxy forwarded. Returns how many were fed.
    pub fn replay(&mut self, msgs: &[Rc<Msg>], proxy: Option<Vec<SocketAddr>>, count: Option<usize>) -> Result<usize, String> {
        let ours = proxy.unwrap_or_else(|| self.addresses());
        let start = self.now;
        let mut first: Option<f64> = None;
        let mut fed = 0;
        for m in msgs {
            if count.is_some_and(|c| fed >= c) {
                break;
            }
            if !ours.contains(&m.dst) {
                continue;
            }
            let t0 = *first.get_or_insert(m.time);
            let at = start + Duration::from_secs_f64((m.time - t0).max(0.0));
            self.advance_to(at);
            let data = if m.parsed.as_ref().is_some_and(|p| !p.is_request()) {
                self.rebranch(&m.data).unwrap_or_else(|| m.data.clone())
            } else {
                m.data.clone()
            };
            self.receive(data, m.src, Some(m.dst), m.proto)?;
            fed += 1;
        }
        Ok(fed)
    }

    /// What the proxy sent since the last call.
    pub fn take_window(&mut self) -> Vec<Rc<Msg>> {
        let w = self.history[self.cursor..].to_vec();
        self.cursor = self.history.len();
        w
    }

    /// Everything the proxy sent.
    pub fn history(&self) -> &[Rc<Msg>] {
        &self.history
    }

    fn db(&mut self) -> Result<&mut TestDb, String> {
        if self.db.is_none() {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("test database: {e}"))?;
            let db = rt
                .block_on(async {
                    let mut db = Db::connect("sqlite::memory:").await?;
                    db.migrate().await?;
                    Ok::<Db, crate::db::DbError>(db)
                })
                .map_err(|e| format!("test database: {e}"))?;
            self.db = Some(TestDb { rt, db });
        }
        self.db.as_mut().ok_or_else(|| "test database missing".to_string())
    }

    /// Reloads the in-memory tables from the test database, as the live
    /// proxy's database thread does after a change.
    fn reload(&mut self) -> Result<(), String> {
        let shared = self.worker.env.shared.clone();
        let t = self.db()?;
        let TestDb { rt, db } = t;
        rt.block_on(async {
            shared.store.set_subscribers(db.load_subscribers().await?);
            shared.store.set_domains(db.load_domains().await?);
            shared.store.set_trusted(db.load_trusted().await?);
            shared.store.aliases.merge_rows(&db.load_bindings(UlTable::Aliases).await?);
            Ok::<(), crate::db::DbError>(())
        })
        .map_err(|e| e.to_string())
    }

    fn db_op<F>(&mut self, op: F) -> Result<(), String>
    where
        F: AsyncFnOnce(&mut Db) -> Result<(), String>,
    {
        let t = self.db()?;
        let TestDb { rt, db } = t;
        rt.block_on(op(db))?;
        self.reload()
    }

    /// The live bindings of an AOR (`alice` or `alice@example.com`) in
    /// `location` or `aliases`.
    pub fn bindings(&self, aor: &str, table: UlTable) -> Vec<crate::usrloc::Binding> {
        let store = &self.worker.env.shared.store;
        let ul = match table {
            UlTable::Location => &store.location,
            UlTable::Aliases => &store.aliases,
        };
        let aor = aor.trim_start_matches("sip:");
        let (user, domain) = match aor.split_once('@') {
            Some((u, d)) => (u, Some(d)),
            None => (aor, None),
        };
        let key = ul.aor_key(user, domain);
        ul.lookup(&key, self.worker.env.unix_now())
            .map(|r| r.bindings.into_vec())
            .unwrap_or_default()
    }
}

/// A Lua string or a number as text.
fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.to_string_lossy()),
        Value::Integer(i) => Some(i.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn opt_str(t: &Table, key: &str) -> mlua::Result<Option<String>> {
    Ok(text_of(&t.get::<Value>(key)?))
}

fn req_str(t: &Table, key: &str, what: &str) -> mlua::Result<String> {
    opt_str(t, key)?.ok_or_else(|| mlua::Error::RuntimeError(format!("{what}: '{key}' is required")))
}

fn parse_addr(s: &str, what: &str) -> Result<SocketAddr, String> {
    s.parse()
        .map_err(|_| format!("{what}: '{s}' is not IP:PORT (e.g. 192.0.2.10:5060 or [2001:db8::1]:5060)"))
}

fn parse_proto(s: &str) -> Result<Proto, String> {
    Proto::parse(s).ok_or_else(|| format!("proto '{s}': udp or tcp"))
}

/// The Lua handle of a proxy under test; the runner drops the proxy when
/// the test ends (the handle then refuses every call).
#[derive(Clone)]
pub struct LuaProxy(pub Rc<RefCell<Option<TestProxy>>>);

impl LuaProxy {
    fn with<R>(&self, lua: &Lua, what: &str, f: impl FnOnce(&mut TestProxy) -> Result<R, String>) -> mlua::Result<R> {
        let mut slot = self
            .0
            .try_borrow_mut()
            .map_err(|_| mlua::Error::RuntimeError(format!("px:{what}: the proxy is busy")))?;
        let px = slot
            .as_mut()
            .ok_or_else(|| mlua::Error::RuntimeError(format!("px:{what}: this proxy belonged to a test that has ended")))?;
        f(px).map_err(|e| mlua::Error::RuntimeError(format!("{}: px:{what}: {e}", super::assert::position(lua))))
    }

    fn db_table(&self, lua: &Lua) -> mlua::Result<Table> {
        let t = lua.create_table()?;
        let px = self.clone();
        t.set(
            "subscriber",
            lua.create_function(move |lua, row: Table| {
                let user = req_str(&row, "username", "db.subscriber")?;
                let domain = req_str(&row, "domain", "db.subscriber")?;
                let mut sub = crate::db::Subscriber::new(&user, &domain, &opt_str(&row, "password")?.unwrap_or_default());
                if let Some(h) = opt_str(&row, "ha1")? {
                    sub.ha1 = h;
                }
                if let Some(h) = opt_str(&row, "ha1b")? {
                    sub.ha1b = h;
                }
                px.with(lua, "db.subscriber", |p| {
                    p.db_op(async move |db: &mut Db| db.add_subscriber(&sub).await.map_err(|e| e.to_string()))
                })
            })?,
        )?;
        let px = self.clone();
        t.set(
            "domain",
            lua.create_function(move |lua, row: Table| {
                let domain = req_str(&row, "domain", "db.domain")?;
                let did = opt_str(&row, "did")?;
                px.with(lua, "db.domain", |p| {
                    p.db_op(async move |db: &mut Db| {
                        crate::admin::domain_add(db, &domain, did.as_deref())
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    })
                })
            })?,
        )?;
        let px = self.clone();
        t.set(
            "trusted",
            lua.create_function(move |lua, row: Table| {
                let ip = req_str(&row, "src_ip", "db.trusted")?;
                let proto = opt_str(&row, "proto")?;
                let from = opt_str(&row, "from_pattern")?;
                let tag = opt_str(&row, "tag")?;
                let ruri = opt_str(&row, "ruri_pattern")?;
                let priority = row.get::<Option<i32>>("priority")?.unwrap_or(0);
                px.with(lua, "db.trusted", |p| {
                    let r = crate::admin::trusted_row(&ip, proto.as_deref(), from.as_deref(), tag.as_deref(), ruri.as_deref(), priority)
                        .map_err(|e| e.to_string())?;
                    p.db_op(async move |db: &mut Db| db.add_trusted(&r).await.map(|_| ()).map_err(|e| e.to_string()))
                })
            })?,
        )?;
        let px = self.clone();
        t.set(
            "alias",
            lua.create_function(move |lua, row: Table| {
                let alias = req_str(&row, "alias", "db.alias")?;
                let target = req_str(&row, "target", "db.alias")?;
                px.with(lua, "db.alias", |p| {
                    p.db_op(async move |db: &mut Db| {
                        crate::admin::alias_add(db, &alias, &target)
                            .await
                            .map(|_| ())
                            .map_err(|e| e.to_string())
                    })
                })
            })?,
        )?;
        Ok(t)
    }
}

fn msg_list(lua: &Lua, list: &[Rc<Msg>]) -> mlua::Result<Table> {
    super::assert::note_list(lua, list);
    let t = lua.create_table_with_capacity(list.len(), 0)?;
    for (i, m) in list.iter().enumerate() {
        t.raw_set(i + 1, LuaMsg(m.clone()))?;
    }
    Ok(t)
}

/// True when `m` passes `filter`: nil, a function, or a table of fields
/// (`{ status = 408 }`, `{ method = "INVITE", dst = "127.0.0.1:5070" }`,
/// `{ header = { ["X-Relay"] = "yes" } }`); `method` matches requests
/// only.
fn matches(lua: &Lua, m: &Rc<Msg>, filter: &Value) -> mlua::Result<bool> {
    match filter {
        Value::Nil => Ok(true),
        Value::Function(f) => Ok(!matches!(f.call::<Value>(LuaMsg(m.clone()))?, Value::Nil | Value::Boolean(false))),
        Value::Table(t) => {
            for pair in t.pairs::<String, Value>() {
                let (k, want) = pair?;
                if k == "header" {
                    let Value::Table(hs) = want else {
                        return Err(mlua::Error::RuntimeError("filter header = { Name = value }".into()));
                    };
                    for h in hs.pairs::<String, Value>() {
                        let (name, v) = h?;
                        let got = m.header(&name);
                        let ok = match (&v, &got) {
                            (Value::Boolean(true), g) => g.is_some(),
                            (Value::Boolean(false), g) => g.is_none(),
                            (v, Some(g)) => text_of(v).is_some_and(|v| &v == g),
                            _ => false,
                        };
                        if !ok {
                            return Ok(false);
                        }
                    }
                    continue;
                }
                // `method` picks requests: a reply's `method` (its CSeq
                // method, as SER's) is matched with `cseq_method`.
                if k == "method" && !m.parsed.as_ref().is_some_and(SipMessage::is_request) {
                    return Ok(false);
                }
                let got = m.field(lua, &k)?;
                let same = match (&got, &want) {
                    (Value::Integer(a), Value::Number(b)) | (Value::Number(b), Value::Integer(a)) => (*a as f64) == *b,
                    (a, b) => a == b,
                };
                if !same {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        other => Err(mlua::Error::RuntimeError(format!(
            "a filter is a table of fields or a function, not a {}",
            other.type_name()
        ))),
    }
}

fn binding_table(lua: &Lua, b: &crate::usrloc::Binding, now: i64) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set("contact", b.contact())?;
    t.set("received", b.received())?;
    t.set("path", b.path())?;
    t.set("callid", b.callid())?;
    t.set("user_agent", b.user_agent())?;
    t.set("socket", b.socket())?;
    t.set("instance", b.instance())?;
    t.set("expires", b.expires - now)?;
    t.set("q", f64::from(b.q))?;
    t.set("cseq", b.cseq)?;
    t.set("flags", b.flags)?;
    t.set("cflags", b.cflags)?;
    Ok(t)
}

fn route_table(lua: &Lua, r: &crate::core::RouteRun) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set("route", r.route.as_str())?;
    t.set("first_line", r.first_line.as_str())?;
    t.set("call_id", r.call_id.as_str())?;
    t.set("flags", r.flags)?;
    let list = lua.create_table()?;
    for bit in 0..32 {
        if r.flags & (1 << bit) != 0 {
            list.raw_push(bit)?;
        }
    }
    t.set("flag_list", list)?;
    let avps = lua.create_table()?;
    // Oldest first, so the newest value of a name wins (SER's AVP stacks).
    for (name, value) in &r.avps.0 {
        let v = match value {
            crate::core::AvpValue::Int(i) => Value::Integer(*i),
            crate::core::AvpValue::Str(s) => Value::String(lua.create_string(s)?),
        };
        match name {
            crate::core::AvpName::Int(i) => avps.set(*i, v)?,
            crate::core::AvpName::Str(s) => avps.set(s.as_str(), v)?,
        }
    }
    t.set("avps", avps)?;
    t.set("ruri", r.ruri.as_deref())?;
    t.set("dst_uri", r.dst_uri.as_deref())?;
    t.set("replied", r.replied)?;
    t.set("relayed", r.relayed)?;
    t.set("error", r.error.as_deref())?;
    Ok(t)
}

fn stats_table(lua: &Lua, s: &Stats) -> mlua::Result<Table> {
    use std::sync::atomic::Ordering::Relaxed;
    let t = lua.create_table()?;
    for (k, v) in [
        ("rcv_requests", &s.rcv_requests),
        ("rcv_replies", &s.rcv_replies),
        ("fwd_requests", &s.fwd_requests),
        ("fwd_replies", &s.fwd_replies),
        ("local_replies", &s.local_replies),
        ("parse_errors", &s.parse_errors),
        ("script_errors", &s.script_errors),
        ("overload_503", &s.overload_503),
        ("dropped", &s.dropped),
        ("nat_pings", &s.nat_pings),
    ] {
        t.set(k, v.load(Relaxed))?;
    }
    let by = |slots: &[std::sync::atomic::AtomicU64], names: &[&str]| -> mlua::Result<Table> {
        let m = lua.create_table()?;
        for (n, c) in names.iter().zip(slots) {
            m.set(*n, c.load(Relaxed))?;
        }
        Ok(m)
    };
    let classes = ["1xx", "2xx", "3xx", "4xx", "5xx", "6xx"];
    t.set("rcv_by_method", by(&s.rcv_by_method, &crate::core::METHOD_NAMES)?)?;
    t.set("sent_by_method", by(&s.sent_by_method, &crate::core::METHOD_NAMES)?)?;
    t.set("rcv_by_class", by(&s.rcv_by_class, &classes)?)?;
    t.set("sent_by_class", by(&s.sent_by_class, &classes)?)?;
    Ok(t)
}

fn session_table(lua: &Lua, s: &crate::relay::SessionInfo) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    t.set("call_id", s.call_id.as_str())?;
    t.set("from_tag", s.from_tag.as_str())?;
    t.set("to_tag", s.to_tag.as_deref())?;
    t.set("caller", s.caller.as_str())?;
    t.set("callee", s.callee.as_str())?;
    t.set("relay", s.relay.as_str())?;
    let streams = lua.create_table()?;
    for st in &s.streams {
        let x = lua.create_table()?;
        x.set("media", st.media.as_str())?;
        x.set("codecs", lua.create_sequence_from(st.codecs.iter().map(String::as_str))?)?;
        for (side, leg) in [("caller", &st.caller), ("callee", &st.callee)] {
            let l = lua.create_table()?;
            l.set("announced", leg.announced.map(|a| a.to_string()))?;
            l.set("relay", leg.relay.map(|a| a.to_string()))?;
            l.set("latched", leg.latched.map(|a| a.to_string()))?;
            l.set("packets", leg.packets)?;
            l.set("bytes", leg.bytes)?;
            x.set(side, l)?;
        }
        streams.raw_push(x)?;
    }
    t.set("streams", streams)?;
    Ok(t)
}

impl UserData for LuaProxy {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_meta_method(MetaMethod::Index, |lua, this, key: String| match key.as_str() {
            "db" => Ok(Value::Table(this.db_table(lua)?)),
            "name" => this.with(lua, "name", |p| Ok(Value::String(lua.create_string(&p.name).map_err(|e| e.to_string())?))),
            other => Err(mlua::Error::RuntimeError(format!(
                "px has no field '{other}' (px.db.subscriber/domain/trusted/alias{{…}}; methods: receive, replay, sent, history, advance, now, bindings, aliases, routes, last_route, isflagset, avp, sessions, stats, errors)"
            ))),
        });
        methods.add_method("receive", |lua, this, (m, opts): (Value, Option<Table>)| {
            let opt = |k: &str| -> mlua::Result<Option<String>> { opts.as_ref().map_or(Ok(None), |t| opt_str(t, k)) };
            let (src_o, dst_o, proto_o) = (opt("src")?, opt("dst")?, opt("proto")?);
            let items: Vec<(Bytes, SocketAddr, Option<SocketAddr>, Proto)> = if let Some(msg) = as_msg(&m) {
                vec![(msg.data.clone(), msg.src, Some(msg.dst), msg.proto)]
            } else if let Value::String(s) = &m {
                let raw = s.as_bytes().to_vec();
                let msgs = crate::trace::decode("message text", &raw).map_err(|e| mlua::Error::RuntimeError(e.to_string()))?;
                if msgs.is_empty() {
                    return Err(mlua::Error::RuntimeError("px:receive: the text holds no SIP message".into()));
                }
                msgs.into_iter()
                    .map(|t| {
                        let src = if t.src.port() == 0 {
                            "192.0.2.1:5060".parse().unwrap_or(t.src)
                        } else {
                            t.src
                        };
                        let dst = (t.dst.port() != 0).then_some(t.dst);
                        (t.data, src, dst, t.proto)
                    })
                    .collect()
            } else {
                return Err(mlua::Error::RuntimeError(format!(
                    "px:receive takes a message (from trace.load or px:sent) or SIP text, not a {}",
                    m.type_name()
                )));
            };
            this.with(lua, "receive", |p| {
                for (data, src, dst, proto) in items {
                    let src = match &src_o {
                        Some(s) => parse_addr(s, "src")?,
                        None => src,
                    };
                    let dst = match &dst_o {
                        Some(s) => Some(parse_addr(s, "dst")?),
                        None => dst,
                    };
                    let proto = match &proto_o {
                        Some(s) => parse_proto(s)?,
                        None => proto,
                    };
                    p.receive(data, src, dst, proto)?;
                }
                Ok(())
            })
        });
        methods.add_method("replay", |lua, this, (trace, opts): (Table, Option<Table>)| {
            let mut msgs = Vec::new();
            for v in trace.sequence_values::<Value>() {
                let v = v?;
                msgs.push(as_msg(&v).ok_or_else(|| mlua::Error::RuntimeError("px:replay takes a list of messages (trace.load)".into()))?);
            }
            let proxy = match opts.as_ref().map(|o| o.get::<Value>("proxy")).transpose()? {
                None | Some(Value::Nil) => None,
                Some(Value::String(s)) => Some(vec![s.to_string_lossy()]),
                Some(Value::Table(t)) => Some(t.sequence_values::<String>().collect::<mlua::Result<Vec<_>>>()?),
                Some(other) => {
                    return Err(mlua::Error::RuntimeError(format!(
                        "replay: proxy must be \"IP:PORT\" or a list, not {}",
                        other.type_name()
                    )));
                }
            };
            let count = opts.as_ref().map(|o| o.get::<Option<usize>>("count")).transpose()?.flatten();
            this.with(lua, "replay", |p| {
                let addrs = proxy
                    .map(|l| l.iter().map(|s| parse_addr(s, "proxy")).collect::<Result<Vec<_>, _>>())
                    .transpose()?;
                p.replay(&msgs, addrs, count)
            })
        });
        methods.add_method("sent", |lua, this, filter: Value| {
            let w = this.with(lua, "sent", |p| Ok(p.take_window()))?;
            let mut out = Vec::new();
            for m in w {
                if matches(lua, &m, &filter)? {
                    out.push(m);
                }
            }
            msg_list(lua, &out)
        });
        methods.add_method("history", |lua, this, filter: Value| {
            let all = this.with(lua, "history", |p| Ok(p.history().to_vec()))?;
            let mut out = Vec::new();
            for m in all {
                if matches(lua, &m, &filter)? {
                    out.push(m);
                }
            }
            msg_list(lua, &out)
        });
        methods.add_method("advance", |lua, this, secs: f64| this.with(lua, "advance", |p| p.advance(secs)));
        methods.add_method("now", |lua, this, ()| this.with(lua, "now", |p| Ok(p.secs())));
        methods.add_method("bindings", |lua, this, aor: String| {
            let (list, now) = this.with(lua, "bindings", |p| {
                Ok((p.bindings(&aor, UlTable::Location), p.worker.env.unix_now()))
            })?;
            let t = lua.create_table()?;
            for b in &list {
                t.raw_push(binding_table(lua, b, now)?)?;
            }
            Ok(t)
        });
        methods.add_method("aliases", |lua, this, aor: String| {
            let (list, now) = this.with(lua, "aliases", |p| {
                Ok((p.bindings(&aor, UlTable::Aliases), p.worker.env.unix_now()))
            })?;
            let t = lua.create_table()?;
            for b in &list {
                t.raw_push(binding_table(lua, b, now)?)?;
            }
            Ok(t)
        });
        methods.add_method("routes", |lua, this, ()| {
            let runs = this.with(lua, "routes", |p| Ok(p.worker.env.route_log.borrow().clone().unwrap_or_default()))?;
            let t = lua.create_table()?;
            for r in &runs {
                t.raw_push(route_table(lua, r)?)?;
            }
            Ok(t)
        });
        methods.add_method("last_route", |lua, this, ()| {
            let last = this.with(lua, "last_route", |p| {
                Ok(p.worker.env.route_log.borrow().as_ref().and_then(|l| l.last().cloned()))
            })?;
            last.map(|r| route_table(lua, &r)).transpose()
        });
        methods.add_method("isflagset", |lua, this, flag: u32| {
            if flag > 31 {
                return Err(mlua::Error::RuntimeError(format!("px:isflagset({flag}): flags are 0..31")));
            }
            this.with(lua, "isflagset", |p| {
                Ok(p.worker
                    .env
                    .route_log
                    .borrow()
                    .as_ref()
                    .and_then(|l| l.last().map(|r| r.flags & (1 << flag) != 0))
                    .unwrap_or(false))
            })
        });
        methods.add_method("avp", |lua, this, name: Value| {
            let key = match &name {
                Value::Integer(i) => crate::core::AvpName::Int(*i),
                Value::String(s) => {
                    let s = s.to_string_lossy();
                    match s.strip_prefix("i:").and_then(|n| n.parse().ok()) {
                        Some(i) => crate::core::AvpName::Int(i),
                        None => crate::core::AvpName::Str(s.strip_prefix("s:").unwrap_or(&s).to_string()),
                    }
                }
                other => {
                    return Err(mlua::Error::RuntimeError(format!(
                        "px:avp(name): a string or integer, not {}",
                        other.type_name()
                    )));
                }
            };
            let v = this.with(lua, "avp", |p| {
                Ok(p.worker
                    .env
                    .route_log
                    .borrow()
                    .as_ref()
                    .and_then(|l| l.last().and_then(|r| r.avps.read(&key).cloned())))
            })?;
            Ok(match v {
                Some(crate::core::AvpValue::Int(i)) => Value::Integer(i),
                Some(crate::core::AvpValue::Str(s)) => Value::String(lua.create_string(&s)?),
                None => Value::Nil,
            })
        });
        methods.add_method("sessions", |lua, this, ()| {
            let list = this.with(lua, "sessions", |p| match p.worker.env.shared.relay.get() {
                Some(Ok(h)) => h.relay.list().map_err(|e| e.to_string()),
                Some(Err(e)) => Err(format!("the media relay did not start: {e}")),
                None => Ok(Vec::new()),
            })?;
            let t = lua.create_table()?;
            for s in &list {
                t.raw_push(session_table(lua, s)?)?;
            }
            Ok(t)
        });
        methods.add_method("stats", |lua, this, ()| {
            let shared = this.with(lua, "stats", |p| Ok(p.worker.env.shared.clone()))?;
            stats_table(lua, &shared.stats)
        });
        methods.add_method("errors", |lua, this, ()| {
            let errs: Vec<String> = this.with(lua, "errors", |p| {
                Ok(p.worker
                    .env
                    .route_log
                    .borrow()
                    .as_ref()
                    .map(|l| l.iter().filter_map(|r| r.error.clone()).collect())
                    .unwrap_or_default())
            })?;
            lua.create_sequence_from(errs)
        });
    }
}

/// The proxies the current test created (the runner drops them when the
/// test ends, and draws their ladders).
#[derive(Default)]
pub struct Proxies(pub RefCell<Vec<LuaProxy>>);

/// Installs `proxy(script_or_source, opts)` and `trace.load`/`trace.parse`.
pub fn install(lua: &Lua) -> mlua::Result<()> {
    let proxy = lua.create_function(|lua, (what, opts): (String, Option<Table>)| {
        let mut env = Vec::new();
        if let Some(o) = &opts {
            if let Some(t) = o.get::<Option<Table>>("env")? {
                for pair in t.pairs::<String, Value>() {
                    let (k, v) = pair?;
                    let v = text_of(&v).ok_or_else(|| mlua::Error::RuntimeError(format!("proxy env {k}: a string or number")))?;
                    env.push((k, v));
                }
            }
        }
        env.sort();
        let fail = |e: String| mlua::Error::RuntimeError(format!("{}: proxy(): {e}", super::assert::position(lua)));
        // Text with a line break is a script; anything else names a file.
        let (name, path, source) = if what.contains('\n') {
            ("inline.lua".to_string(), std::path::PathBuf::from("inline.lua"), what)
        } else {
            let path = std::path::PathBuf::from(&what);
            let source = std::fs::read_to_string(&path).map_err(|e| fail(format!("cannot read {what}: {e}")))?;
            (what, path, source)
        };
        let px = TestProxy::new(&name, &path, source, &env).map_err(fail)?;
        let handle = LuaProxy(Rc::new(RefCell::new(Some(px))));
        if let Some(list) = lua.app_data_ref::<Proxies>() {
            list.0.borrow_mut().push(handle.clone());
        }
        Ok(handle)
    })?;
    lua.globals().set("proxy", proxy)?;

    let trace = lua.create_table()?;
    let to_list = |lua: &Lua, msgs: Vec<crate::trace::TraceMsg>| -> mlua::Result<Table> {
        let t0 = msgs.first().map(|m| m.time).unwrap_or_default();
        let t = lua.create_table_with_capacity(msgs.len(), 0)?;
        for (i, m) in msgs.into_iter().enumerate() {
            let rel = m.time.saturating_sub(t0).as_secs_f64();
            let mut msg = Msg::new(rel, m.src, m.dst, m.proto, m.data, Origin::Trace);
            msg.timestamp = Some(m.time);
            t.raw_set(i + 1, LuaMsg(Rc::new(msg)))?;
        }
        Ok(t)
    };
    let load: Function = lua.create_function(move |lua, path: String| {
        let msgs = crate::trace::load(&path)
            .map_err(|e| mlua::Error::RuntimeError(format!("{}: trace.load: {e}", super::assert::position(lua))))?;
        to_list(lua, msgs)
    })?;
    trace.set("load", load)?;
    let parse: Function = lua.create_function(move |lua, text: mlua::LuaString| {
        let msgs = crate::trace::decode("trace.parse text", &text.as_bytes())
            .map_err(|e| mlua::Error::RuntimeError(format!("{}: trace.parse: {e}", super::assert::position(lua))))?;
        to_list(lua, msgs)
    })?;
    trace.set("parse", parse)?;
    lua.globals().set("trace", trace)
}
