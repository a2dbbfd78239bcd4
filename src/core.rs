//! The state a route runs against: the message being routed with its
//! per-transaction flags and AVPs ([`MsgCtx`]), the worker's I/O queues and
//! timers ([`Env`]), and the state shared by all workers ([`Shared`]).
//!
//! This is the sans-IO core of DESIGN.md: primitives push [`Transmit`]s
//! and arm timers here; the live server or a test harness carries them out.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use regex::bytes::Regex;

use crate::config::CoreConfig;
use crate::script::export::{Export, RouteKey, RouteKind};
use crate::sip::{Host, Params, SipMessage, Uri};
use crate::timer::TimerHeap;
use crate::tm;
use crate::transport::{ConnId, ListenSocket, Proto, SocketId, Target, Transmit};

/// Method names counted separately in [`Stats`]; every other method is
/// counted as `OTHER` (the last slot).
pub const METHOD_NAMES: [&str; 15] = [
    "INVITE",
    "ACK",
    "BYE",
    "CANCEL",
    "REGISTER",
    "OPTIONS",
    "INFO",
    "PRACK",
    "UPDATE",
    "SUBSCRIBE",
    "NOTIFY",
    "REFER",
    "MESSAGE",
    "PUBLISH",
    "OTHER",
];

/// The [`METHOD_NAMES`] slot of a method token.
pub fn method_slot(token: &[u8]) -> usize {
    METHOD_NAMES[..14].iter().position(|m| m.as_bytes() == token).unwrap_or(14)
}

/// Upper bounds (seconds) of the route execution time histogram buckets.
pub const ROUTE_TIME_BUCKETS: [f64; 11] = [0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25];

/// A lock-free histogram of route execution times.
#[derive(Debug, Default)]
pub struct RouteTimes {
    /// Observations per bucket (not cumulative); the last slot is +Inf.
    pub buckets: [AtomicU64; 12],
    /// Sum of all observations, nanoseconds.
    pub sum_ns: AtomicU64,
    /// Number of observations.
    pub count: AtomicU64,
}

impl RouteTimes {
    /// Records one route run.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = ROUTE_TIME_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(ROUTE_TIME_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counters every worker updates (read by `serlua ctl stats`, `/metrics`
/// and the status page).
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests received.
    pub rcv_requests: AtomicU64,
    /// Replies received.
    pub rcv_replies: AtomicU64,
    /// Requests forwarded (every branch, retransmissions not counted).
    pub fwd_requests: AtomicU64,
    /// Replies forwarded upstream.
    pub fwd_replies: AtomicU64,
    /// Replies generated here (sl, 100 Trying, 408, …).
    pub local_replies: AtomicU64,
    /// Messages that failed to parse.
    pub parse_errors: AtomicU64,
    /// Route runs that ended in a Lua error.
    pub script_errors: AtomicU64,
    /// Requests answered 503 because of overload.
    pub overload_503: AtomicU64,
    /// Messages dropped (replies not for us).
    pub dropped: AtomicU64,
    /// Requests received, by method ([`METHOD_NAMES`]).
    pub rcv_by_method: [AtomicU64; 15],
    /// Replies received, by status class (1xx at 0 … 6xx at 5).
    pub rcv_by_class: [AtomicU64; 6],
    /// Requests sent (forwarded, retransmitted, or generated: CANCEL, ACK,
    /// keepalive OPTIONS), by method.
    pub sent_by_method: [AtomicU64; 15],
    /// Replies sent, by status class.
    pub sent_by_class: [AtomicU64; 6],
    /// Route execution times.
    pub route_time: RouteTimes,
    /// Database errors seen by the database thread.
    pub db_errors: AtomicU64,
    /// NAT keepalives sent.
    pub nat_pings: AtomicU64,
}

impl Stats {
    /// Adds one to a counter.
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a message going out, by its first line (a request's method
    /// or a reply's status class): every send passes here.
    pub fn count_sent(&self, data: &[u8]) {
        if let Some(rest) = data.strip_prefix(b"SIP/2.0 ") {
            if let Some(&d) = rest.first() {
                if (b'1'..=b'6').contains(&d) {
                    Stats::inc(&self.sent_by_class[(d - b'1') as usize]);
                }
            }
        } else if let Some(sp) = memchr::memchr(b' ', &data[..data.len().min(32)]) {
            Stats::inc(&self.sent_by_method[method_slot(&data[..sp])]);
        }
    }
}

/// State shared by every worker thread.
pub struct Shared {
    /// The configuration the proxy runs with.
    pub cfg: CoreConfig,
    /// Listen sockets (index = `SocketId`).
    pub sockets: Vec<ListenSocket>,
    /// The transaction table.
    pub tm: tm::Table,
    /// Random per process: keeps our branches and tags unguessable and lets
    /// us recognise our own Via branches (RFC 3261 §16.6 step 8).
    pub secret: u64,
    /// `z9hG4bK` plus a per-process marker; every branch we create starts
    /// with it.
    pub branch_prefix: String,
    /// Counters.
    pub stats: Stats,
    /// In-memory tables (subscribers, domains, trusted, usrloc).
    pub store: crate::store::Store,
    /// A moment on both clocks, to turn the core's (possibly virtual)
    /// `Instant` into wall-clock time for bindings and nonces.
    pub epoch: (Instant, std::time::SystemTime),
    /// Addresses of this host, for `is_myself` on wildcard listens.
    pub local_ips: Vec<IpAddr>,
    /// The last script errors (newest last), for the status page.
    pub recent_errors: parking_lot::Mutex<std::collections::VecDeque<(std::time::SystemTime, String)>>,
    /// Bytes waiting in each worker's UDP receive queues (the worker
    /// queue depth gauge), updated by the I/O loop.
    pub queue_bytes: Box<[AtomicU64]>,
    /// Set on SIGTERM: new requests are refused with 503 while the
    /// transactions in flight finish.
    pub draining: std::sync::atomic::AtomicBool,
    /// The media relay, started on first use (`force_rtp_proxy`,
    /// `use_media_proxy`); the error when it could not start.
    pub relay: std::sync::OnceLock<Result<crate::relay::RelayHandle, String>>,
}

/// How many script errors the status page keeps.
const RECENT_ERRORS: usize = 20;

impl Shared {
    /// The media relay, started the first time it is needed (a proxy that
    /// relays no media opens no ports and starts no threads).
    pub fn relay(&self) -> Result<&crate::relay::RelayHandle, &str> {
        self.relay
            .get_or_init(|| {
                let r = self.cfg.relay.start(&self.sockets);
                match &r {
                    Ok(h) => tracing::info!("media relay: {}", h.relay.name()),
                    Err(e) => tracing::error!("media relay cannot start: {e}"),
                }
                r
            })
            .as_ref()
            .map_err(String::as_str)
    }

    /// Counts a script error and remembers it for the status page.
    pub fn script_error(&self, text: &str) {
        Stats::inc(&self.stats.script_errors);
        self.note_script_error(text);
    }

    /// Remembers a script error for the status page.
    pub fn note_script_error(&self, text: &str) {
        let mut q = self.recent_errors.lock();
        if q.len() >= RECENT_ERRORS {
            q.pop_front();
        }
        q.push_back((std::time::SystemTime::now(), text.to_string()));
    }
}

impl Shared {
    /// Builds the shared state for a configuration.
    pub fn new(cfg: CoreConfig) -> Shared {
        let secret: u64 = rand::random();
        let sockets = cfg.sockets();
        let mut local_ips: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap_or(IpAddr::from([127, 0, 0, 1]))];
        local_ips.push(IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1]));
        if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
            for a in addrs {
                if let Some(sa) = a.address {
                    if let Some(v4) = sa.as_sockaddr_in() {
                        local_ips.push(IpAddr::V4(v4.ip()));
                    } else if let Some(v6) = sa.as_sockaddr_in6() {
                        local_ips.push(IpAddr::V6(v6.ip()));
                    }
                }
            }
        }
        let max = cfg.tm.max_transactions;
        let children = cfg.children.max(1);
        let store = crate::store::Store::new(&cfg, secret);
        Shared {
            cfg,
            sockets,
            tm: tm::Table::new(max),
            secret,
            branch_prefix: format!("z9hG4bKsr{:04x}", (secret >> 48) as u16),
            stats: Stats::default(),
            store,
            epoch: (Instant::now(), std::time::SystemTime::now()),
            local_ips,
            recent_errors: Default::default(),
            queue_bytes: (0..children).map(|_| AtomicU64::new(0)).collect(),
            draining: Default::default(),
            relay: Default::default(),
        }
    }

    /// True when `host[:port]` names this proxy: one of the listen
    /// addresses (advertised or bound; a wildcard bind covers every local
    /// address) or an `alias`. Without a port, the scheme's default port
    /// must be one we listen on, as SER's `check_self` does; an alias
    /// written without a port matches any port.
    pub fn is_myself(&self, host: &Host, port: Option<u16>, default_port: u16) -> bool {
        let port = port.unwrap_or(default_port);
        for s in &self.sockets {
            let port_ok = s.adv_port == port || s.addr.port() == port;
            if !port_ok {
                continue;
            }
            match host.ip {
                Some(ip) => {
                    if ip == s.addr.ip() || host_text_eq(&s.adv_host, &host.text) {
                        return true;
                    }
                    if s.addr.ip().is_unspecified() && self.local_ips.contains(&ip) {
                        return true;
                    }
                }
                None => {
                    if host_text_eq(&s.adv_host, &host.text) {
                        return true;
                    }
                }
            }
        }
        self.cfg
            .aliases
            .iter()
            .any(|(h, p)| host_text_eq(h, &host.text) && p.is_none_or(|p| p == port))
    }

    /// True when the Via's sent-by names one of our sockets (a reply whose
    /// top Via is ours is forwarded statelessly, RFC 3261 §16.7 step 3 and
    /// §18.1.2).
    pub fn via_is_ours(&self, via: &crate::sip::Via) -> bool {
        via.branch().is_some_and(|b| b.starts_with(&self.branch_prefix)) && self.is_myself(&via.host, via.port, 5060)
    }
}

fn host_text_eq(a: &str, b: &str) -> bool {
    let strip = |s: &str| s.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    a.eq_ignore_ascii_case(b) || strip(a) == strip(b)
}

/// One AVP (SER avpops): named by a string or an integer, holding an
/// integer or a string. AVPs belong to the transaction: written in the
/// request route, they are seen again in its reply and failure routes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AvpName {
    /// An integer name (`i:45`).
    Int(i64),
    /// A string name (`inv_timeout`, `s:name`).
    Str(String),
}

/// An AVP value (`i:45` is `Int(45)`, `s:text` is `Str`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AvpValue {
    /// An integer value.
    Int(i64),
    /// A string value.
    Str(String),
}

/// The AVP list of one message/transaction. Writing a name again adds a
/// value on top; reading returns the newest (SER's AVP stacks).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Avps(pub Vec<(AvpName, AvpValue)>);

impl Avps {
    /// Adds a value on top.
    pub fn write(&mut self, name: AvpName, value: AvpValue) {
        self.0.push((name, value));
    }

    /// The newest value of `name`.
    pub fn read(&self, name: &AvpName) -> Option<&AvpValue> {
        self.0.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// Every value of `name`, newest first.
    pub fn read_all(&self, name: &AvpName) -> Vec<&AvpValue> {
        self.0.iter().rev().filter(|(n, _)| n == name).map(|(_, v)| v).collect()
    }

    /// Removes every value of `name`; returns how many.
    pub fn delete(&mut self, name: &AvpName) -> usize {
        let before = self.0.len();
        self.0.retain(|(n, _)| n != name);
        before - self.0.len()
    }

    /// A duration in seconds from an integer (or numeric string) AVP, used
    /// for tm's `fr_timer_avp` / `fr_inv_timer_avp`.
    pub fn seconds(&self, name: &str) -> Option<Duration> {
        if name.is_empty() {
            return None;
        }
        let v = self.read(&AvpName::Str(name.to_string()))?;
        let secs = match v {
            AvpValue::Int(i) => *i,
            AvpValue::Str(s) => s.trim().parse().ok()?,
        };
        (secs > 0).then(|| Duration::from_secs(secs as u64))
    }
}

/// An additional destination of a request (`append_branch`, `lookup`):
/// parallel forking targets beside the Request-URI (RFC 3261 §16.6).
#[derive(Clone, Debug, PartialEq)]
pub struct BranchTarget {
    /// Request-URI of the branch.
    pub uri: Uri,
    /// Next hop overriding the Request-URI.
    pub dst_uri: Option<Uri>,
    /// q-value (RFC 3261 §16.6), when given.
    pub q: Option<f32>,
}

/// The message a route is running on, and everything a primitive may
/// change about what happens to it.
#[derive(Clone, Debug)]
pub struct MsgCtx {
    /// The message (request, or reply in an onreply route).
    pub msg: SipMessage,
    /// Where it came from.
    pub src: SocketAddr,
    /// The socket it arrived on.
    pub local: SocketId,
    /// The transport it arrived over.
    pub proto: Proto,
    /// The connection it arrived on (TCP).
    pub conn: Option<ConnId>,
    /// Kind of route running on it.
    pub kind: RouteKind,
    /// SER message flags 0..=31; kept with the transaction (notes 24, 44).
    pub flags: u32,
    /// AVPs (avpops); kept with the transaction.
    pub avps: Avps,
    /// Next hop overriding the Request-URI (set by loose_route, lookup).
    pub dst_uri: Option<Uri>,
    /// Extra branches (`append_branch`) for `t_relay`.
    pub branches: Vec<BranchTarget>,
    /// Reply route armed by `t_on_reply`.
    pub on_reply: Option<RouteKey>,
    /// Failure route armed by `t_on_failure`.
    pub on_failure: Option<RouteKey>,
    /// A reply was sent for this request (stateless or stateful).
    pub replied: bool,
    /// The request was handed to tm or forwarded.
    pub relayed: bool,
    /// `drop()` was called.
    pub dropped: bool,
    /// The last internal error, for `sl_reply_error()`.
    pub last_error: Option<(u16, String)>,
    /// `record_route()` added our address for this socket (double
    /// Record-Route when the request leaves by another socket).
    pub rr_socket: Option<SocketId>,
    /// Parameters of our own Route entry that `loose_route` consumed
    /// (`check_route_param`, the `;nat=yes` of the reference).
    pub route_params: Option<Params>,
    /// In a failure route: the status of the winning reply.
    pub reply_status: Option<u16>,
    /// In a failure route: `t_relay()` asked for new branches.
    pub failure_relay: bool,
    /// In a failure route: a reply the script chose instead.
    pub failure_reply: Option<(u16, String)>,
    /// Digest authentication state of this request (auth module).
    pub auth: crate::auth::AuthState,
    /// The SDP was already rewritten to the media relay (a second
    /// `use_media_proxy()` on the message does nothing).
    pub media_done: bool,
    /// Set by `fix_nated_register()`: the source address (`sip:IP:PORT`,
    /// `;transport=tcp` over TCP) that `save()` keeps as the binding's
    /// `received` (Kamailio's `received_avp` between nathelper and
    /// registrar).
    pub received_uri: Option<String>,
}

impl MsgCtx {
    /// A context for a message that arrived.
    pub fn new(msg: SipMessage, src: SocketAddr, local: SocketId, proto: Proto, conn: Option<ConnId>, kind: RouteKind) -> MsgCtx {
        MsgCtx {
            msg,
            src,
            local,
            proto,
            conn,
            kind,
            flags: 0,
            avps: Avps::default(),
            dst_uri: None,
            branches: Vec::new(),
            on_reply: None,
            on_failure: None,
            replied: false,
            relayed: false,
            dropped: false,
            last_error: None,
            rr_socket: None,
            route_params: None,
            reply_status: None,
            failure_relay: false,
            failure_reply: None,
            auth: Default::default(),
            media_done: false,
            received_uri: None,
        }
    }

    /// Records an internal error for `sl_reply_error()`.
    pub fn fail(&mut self, code: u16, reason: impl Into<String>) {
        self.last_error = Some((code, reason.into()));
    }
}

/// A runtime error raised by a primitive, shown to the admin with the
/// script position Lua adds to it.
pub fn lua_err(msg: impl Into<String>) -> mlua::Error {
    mlua::Error::RuntimeError(msg.into())
}

/// Something a worker's timer queue runs when it is due.
#[derive(Debug)]
pub enum Timer {
    /// A transaction timer (RFC 3261 §17).
    Tm(tm::TimerEvent),
    /// usrloc's periodic sweep of expired bindings (worker 0 only).
    UsrlocSweep,
    /// nathelper's keepalive tick (worker 0 only): the tick number, which
    /// picks the slice of bindings pinged now (`natping_interval`).
    NatPing(u64),
}

/// One run of a route, as `serlua test` reports it: which route ran on
/// which message, and the flags and AVPs the message had when it ended
/// (SER keeps both with the transaction, so a test can assert on them).
#[derive(Clone, Debug)]
pub struct RouteRun {
    /// `route.main`, `onreply_route[1]`, `failure_route[1]`, ….
    pub route: String,
    /// The message's first line as it was when the route ended.
    pub first_line: String,
    /// Call-ID of the message.
    pub call_id: String,
    /// Message flags 0..=31.
    pub flags: u32,
    /// AVPs.
    pub avps: Avps,
    /// Request-URI when the route ended (requests).
    pub ruri: Option<String>,
    /// Next hop set by the route (`dst_uri`).
    pub dst_uri: Option<String>,
    /// The route sent a reply.
    pub replied: bool,
    /// The route relayed the request.
    pub relayed: bool,
    /// The Lua error that ended the route, if one did.
    pub error: Option<String>,
}

/// Where the live server sends a [`Transmit`] at once.
pub type Sink = Box<dyn Fn(Transmit)>;

/// A per-worker environment: the clock, outgoing messages, timers and the
/// message being routed. One per worker thread (not shared).
pub struct Env {
    /// State shared with the other workers.
    pub shared: Arc<Shared>,
    /// This worker's number.
    pub worker: usize,
    now: Cell<Instant>,
    out: RefCell<Vec<Transmit>>,
    sink: RefCell<Option<Sink>>,
    pub(crate) timers: RefCell<TimerHeap<Timer>>,
    ctx: RefCell<Option<MsgCtx>>,
    regexes: RefCell<HashMap<String, Regex>>,
    dns: RefCell<HashMap<(String, u16), (Instant, SocketAddr)>>,
    /// Set by the I/O adapter while the worker is behind: new requests get
    /// 503 instead of being routed.
    pub overloaded: Cell<bool>,
    /// Route runs kept for `serlua test` when `Some` (the live proxy
    /// keeps none).
    pub route_log: RefCell<Option<Vec<RouteRun>>>,
}

impl Env {
    /// A fresh environment for worker number `worker`.
    pub fn new(shared: Arc<Shared>, worker: usize, now: Instant) -> Env {
        Env {
            shared,
            worker,
            now: Cell::new(now),
            out: RefCell::new(Vec::new()),
            sink: RefCell::new(None),
            timers: RefCell::new(TimerHeap::default()),
            ctx: RefCell::new(None),
            regexes: RefCell::new(HashMap::new()),
            dns: RefCell::new(HashMap::new()),
            overloaded: Cell::new(false),
            route_log: RefCell::new(None),
        }
    }

    /// Keeps a route run when runs are being recorded (`serlua test`);
    /// `run` is only called then.
    pub fn record_route(&self, run: impl FnOnce() -> RouteRun) {
        if let Some(log) = self.route_log.borrow_mut().as_mut() {
            log.push(run());
        }
    }

    /// The current time (real or virtual).
    pub fn now(&self) -> Instant {
        self.now.get()
    }

    /// Moves the clock (the adapter calls this before each event).
    pub fn set_now(&self, now: Instant) {
        self.now.set(now);
    }

    /// The current time as Unix seconds, on the core's clock (virtual in
    /// tests): binding expiry and nonce lifetimes follow it.
    pub fn unix_now(&self) -> i64 {
        let (base, wall) = self.shared.epoch;
        let t = match self.now().checked_duration_since(base) {
            Some(d) => wall + d,
            None => wall.checked_sub(base.saturating_duration_since(self.now())).unwrap_or(wall),
        };
        t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
    }

    /// Queues bytes for sending.
    pub fn send(&self, t: Transmit) {
        self.shared.stats.count_sent(&t.data);
        match &*self.sink.borrow() {
            Some(sink) => sink(t),
            None => self.out.borrow_mut().push(t),
        }
    }

    /// Makes every send go out at once through `sink` (the live server)
    /// instead of being queued for [`Env::take_transmits`] (tests). Sending
    /// at the point of the call keeps the wire order equal to the order in
    /// which workers act on a transaction under its lock: a retransmitted
    /// provisional reply can never overtake the final reply another worker
    /// forwards right after it.
    pub fn set_sink(&self, sink: Sink) {
        *self.sink.borrow_mut() = Some(sink);
    }

    /// Sends `data` to a resolved target.
    pub fn send_to(&self, target: &Target, data: bytes::Bytes) {
        self.send(Transmit {
            local: target.local,
            proto: target.proto,
            dst: target.dst,
            conn: target.conn,
            data,
        });
    }

    /// Takes everything queued for sending.
    pub fn take_transmits(&self) -> Vec<Transmit> {
        std::mem::take(&mut *self.out.borrow_mut())
    }

    /// Moves queued transmits into `into` (keeps both allocations).
    pub fn drain_transmits(&self, into: &mut Vec<Transmit>) {
        into.append(&mut self.out.borrow_mut());
    }

    /// Arms a tm timer `after` from now.
    pub fn arm(&self, after: Duration, ev: tm::TimerEvent) {
        self.timers.borrow_mut().arm(self.now() + after, Timer::Tm(ev));
    }

    /// Arms a periodic job of the core `after` from now.
    pub fn arm_job(&self, after: Duration, job: Timer) {
        self.timers.borrow_mut().arm(self.now() + after, job);
    }

    /// The earliest armed timer.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.timers.borrow().next_deadline()
    }

    /// Removes one timer due now.
    pub fn pop_due_timer(&self) -> Option<Timer> {
        let now = self.now();
        self.timers.borrow_mut().pop_due(now)
    }

    /// Puts a context in place for a route run.
    pub fn set_ctx(&self, ctx: MsgCtx) {
        *self.ctx.borrow_mut() = Some(ctx);
    }

    /// Takes the context back after a route run.
    pub fn take_ctx(&self) -> Option<MsgCtx> {
        self.ctx.borrow_mut().take()
    }

    /// Runs `f` on the message being routed, after checking that `export`
    /// may be called in this kind of route (Kamailio's per-function route
    /// flags).
    pub fn with_ctx<R>(&self, export: &Export, f: impl FnOnce(&mut MsgCtx) -> mlua::Result<R>) -> mlua::Result<R> {
        let mut slot = self
            .ctx
            .try_borrow_mut()
            .map_err(|_| lua_err(format!("{}() called re-entrantly", export.name)))?;
        let ctx = slot
            .as_mut()
            .ok_or_else(|| lua_err(format!("{}() can only be called while a route runs, not at load time", export.name)))?;
        if !export.routes.allows(ctx.kind) {
            return Err(lua_err(format!("{}() is not allowed in {}", export.name, ctx.kind.table())));
        }
        f(ctx)
    }

    /// Runs `f` on the message being routed without a route-kind check
    /// (the `msg` object).
    pub fn with_msg<R>(&self, f: impl FnOnce(&mut MsgCtx) -> mlua::Result<R>) -> mlua::Result<R> {
        let mut slot = self.ctx.try_borrow_mut().map_err(|_| lua_err("msg used re-entrantly"))?;
        let ctx = slot.as_mut().ok_or_else(|| lua_err("msg is only available while a route runs"))?;
        f(ctx)
    }

    /// A compiled regex, cached per worker (ser.cfg compiles each regex
    /// once at load). `pattern` is used as given, so callers add flags.
    pub fn regex(&self, pattern: &str) -> Result<Regex, String> {
        if let Some(r) = self.regexes.borrow().get(pattern) {
            return Ok(r.clone());
        }
        let r = Regex::new(pattern).map_err(|e| format!("bad regular expression: {e}"))?;
        let mut cache = self.regexes.borrow_mut();
        // A script building patterns at run time must not grow the cache forever.
        if cache.len() > 4096 {
            cache.clear();
        }
        cache.insert(pattern.to_string(), r.clone());
        Ok(r)
    }

    /// Resolves a host to an address (IP literals directly; names through
    /// the system resolver, cached for 60 s). RFC 3263 SRV/NAPTR lookups
    /// are not done yet.
    pub fn resolve(&self, host: &Host, port: u16) -> Option<SocketAddr> {
        if let Some(ip) = host.ip {
            return Some(SocketAddr::new(ip, port));
        }
        let key = (host.text.to_ascii_lowercase(), port);
        let now = self.now();
        if let Some((at, addr)) = self.dns.borrow().get(&key) {
            if now.saturating_duration_since(*at) < Duration::from_secs(60) {
                return Some(*addr);
            }
        }
        let addr = (key.0.as_str(), port).to_socket_addrs().ok()?.next()?;
        self.dns.borrow_mut().insert(key, (now, addr));
        Some(addr)
    }

    /// The listen socket with this id.
    pub fn socket(&self, id: SocketId) -> Option<&ListenSocket> {
        self.shared.sockets.get(id as usize)
    }

    /// The socket to send to `dst` over `proto`: the preferred one if it
    /// fits (same transport and address family), else the first that does.
    pub fn pick_socket(&self, proto: Proto, dst: SocketAddr, prefer: SocketId) -> Option<&ListenSocket> {
        let fits = |s: &&ListenSocket| s.proto == proto && s.addr.is_ipv4() == dst.is_ipv4();
        self.socket(prefer).filter(fits).or_else(|| self.shared.sockets.iter().find(fits))
    }
}
