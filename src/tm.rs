//! tm: stateful forwarding (RFC 3261 §16 proxy behaviour over the §17
//! transaction state machines; SER's tm module).
//!
//! One [`Txn`] is a proxy's response context (§16.7): the server
//! transaction facing upstream plus one client transaction per branch.
//! Transactions are shared by every worker (a reply may be read by another
//! worker than the request), each behind its own lock; timers live on the
//! worker that armed them and are invalidated by generation numbers.
//!
//! Timer semantics follow SER: `fr_timer` bounds the wait for any reply on
//! a branch (it stands in for RFC 3261 timers B and F); after a provisional
//! reply an INVITE branch waits `fr_inv_timer` for the final one (timer C),
//! overridden per transaction by the AVP named in `fr_inv_timer_avp`
//! (`inv_timeout`). Before any reply, an INVITE branch waits
//! min(fr_timer, that INVITE timeout): an `inv_timeout` of 5 s gives a
//! silent next hop 5 s, not the default.

use std::hash::{Hash, Hasher};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dashmap::DashMap;
use mlua::Lua;
use parking_lot::Mutex;

use crate::core::{Avps, Env, MsgCtx, Stats, lua_err};
use crate::rr::rr_value;
use crate::script::args::{IntArg, StrArg};
use crate::script::export::{Export, LitArg, RouteKey, RouteKind, RouteMask};
use crate::script::register as reg;
use crate::script::{RunOutcome, Script};
use crate::sip::{HeaderName, Host, Method, SipMessage, Uri};
use crate::sl;
use crate::transport::{SocketId, Target, reply_destination, uri_proto, via_proto};

/// At most this many branches per transaction (parallel + serial forks).
pub const MAX_BRANCHES: usize = 32;

/// RFC 3261 T4: how long a message may stay in the network (5 s).
const T4: Duration = Duration::from_secs(5);

/// Longest a transaction may live, whatever its branches do.
const MAX_LIFETIME: Duration = Duration::from_secs(600);

/// tm's script functions.
pub const EXPORTS: &[Export] = &[
    Export::new("t_relay", 0, 2, RouteMask::REQ_LIKE),
    Export::new("t_on_reply", 1, 1, RouteMask::REQ_LIKE),
    Export::new("t_on_failure", 1, 1, RouteMask::REQ_LIKE),
    Export::new("t_check_status", 1, 1, RouteMask::ONREPLY.or(RouteMask::FAILURE)).with_fixup(crate::textops::fix_regex),
];

/// The transaction table shared by all workers.
pub struct Table {
    server: DashMap<String, Arc<TxnCell>>,
    by_id: DashMap<u64, Arc<TxnCell>>,
    next_id: AtomicU64,
    live: AtomicUsize,
    max: usize,
}

/// A transaction behind its lock.
pub type TxnCell = Mutex<Txn>;

/// State of the server (upstream) side (RFC 3261 §17.2.1, RFC 6026).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UasState {
    /// No final reply sent yet.
    Proceeding,
    /// A non-2xx final reply to an INVITE sent; waiting for the ACK (timer G/H).
    Completed,
    /// The ACK for it arrived (timer I).
    Confirmed,
    /// A 2xx to an INVITE sent (RFC 6026 Accepted).
    Accepted,
    /// A final reply to a non-INVITE sent.
    Done,
}

/// State of one client (downstream) branch (RFC 3261 §17.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BranchState {
    /// Sent, no reply yet (Calling / Trying).
    Calling,
    /// A provisional reply arrived.
    Proceeding,
    /// A final non-2xx reply arrived (or a timeout stood in for one).
    Completed,
    /// A 2xx arrived.
    Accepted,
}

impl BranchState {
    fn pending(self) -> bool {
        matches!(self, BranchState::Calling | BranchState::Proceeding)
    }
}

/// CANCEL progress of a branch (RFC 3261 §9.1, §16.10).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CancelState {
    /// No CANCEL wanted.
    None,
    /// Wanted, but no provisional reply yet: sent when one arrives.
    Pending,
    /// Sent; retransmitted over UDP until answered.
    /// Sent; retransmitted over UDP until answered.
    Sent {
        /// The CANCEL as sent.
        bytes: Bytes,
        /// Current retransmission interval.
        every: Duration,
        /// Timer generation.
        generation: u32,
    },
    /// Answered (or given up).
    Done,
}

/// One client transaction of a proxy transaction.
#[derive(Debug)]
pub struct Branch {
    /// Our Via branch parameter.
    pub id: String,
    /// Where the branch goes.
    pub target: Target,
    /// Its Request-URI.
    pub uri: Uri,
    /// The request as sent (resent on retransmission).
    pub request: Bytes,
    /// Client transaction state.
    pub state: BranchState,
    /// Last status received (408 stands in for a timeout).
    pub status: u16,
    /// The final negative reply, our Via already removed.
    pub reply: Option<Box<SipMessage>>,
    retrans_gen: u32,
    retrans_every: Duration,
    timeout_gen: u32,
    /// Whether and how it is being cancelled.
    pub cancel: CancelState,
    /// The ACK we sent for a non-2xx final (resent if it is retransmitted).
    ack: Option<Bytes>,
}

/// What `tm list` shows of a transaction.
#[derive(Clone, Debug)]
pub struct TxnInfo {
    /// Transaction id.
    pub id: u64,
    /// Request method.
    pub method: String,
    /// Call-ID.
    pub call_id: String,
    /// Server-side state.
    pub uas: String,
    /// Last status sent upstream (0: none).
    pub status: u16,
    /// Time since it was created.
    pub age: Duration,
    /// Each branch: destination, state, last status.
    pub branches: Vec<(String, String, u16)>,
    /// From URI (the caller).
    pub from: String,
    /// To URI (the callee).
    pub to: String,
    /// Where the request came from.
    pub src: String,
}

/// A proxy transaction: the request's server transaction and its branches.
#[derive(Debug)]
pub struct Txn {
    /// Process-unique id (part of our branch parameters).
    pub id: u64,
    key: String,
    /// Method of the request.
    pub method: Method,
    /// Call-ID of the request (kept after compaction, for `tm list`).
    pub call_id: Box<str>,
    /// From and To URIs of the request (caller and callee, for `tm list`).
    pub parties: Box<(String, String)>,
    /// The request as the script left it (upstream Vias only); dropped once
    /// the transaction is answered ([`compact`]).
    request: Option<Box<SipMessage>>,
    /// Where replies go upstream (RFC 3261 §18.2.2).
    pub origin: Target,
    /// Message flags, seen and set by reply and failure routes.
    pub flags: u32,
    /// AVPs, seen by reply and failure routes.
    pub avps: Avps,
    /// onreply route to run for each reply.
    pub on_reply: Option<RouteKey>,
    /// failure route to run when the best reply is >= 300.
    pub on_failure: Option<RouteKey>,
    rr_socket: Option<SocketId>,
    to_tag: String,
    /// State of the upstream side.
    pub uas: UasState,
    /// Last status sent upstream (0: none yet).
    pub uas_status: u16,
    uas_reply: Option<Bytes>,
    g_every: Duration,
    g_gen: u32,
    /// Client transactions, one per branch.
    pub branches: Vec<Branch>,
    /// A CANCEL arrived for it.
    pub canceled: bool,
    fr: Duration,
    fr_inv: Duration,
    deleted: bool,
    delete_armed: bool,
    created: Instant,
}

/// What a timer does when it fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerKind {
    /// Timer A/E: retransmit a branch's request over UDP.
    Retransmit,
    /// fr_timer / fr_inv_timer (timers B, F, C): the branch gives up.
    Timeout,
    /// Timer G: retransmit our non-2xx final reply upstream.
    ReplyRetransmit,
    /// Timer H: no ACK came for our non-2xx final reply.
    AckTimeout,
    /// Retransmit a CANCEL over UDP.
    CancelRetransmit,
    /// The transaction is over: forget it.
    Delete,
}

/// A tm timer, armed on one worker's queue. It holds the transaction
/// weakly: a transaction that ended is freed at once, not when its last
/// superseded timer (up to fr_inv_timer later) comes due.
#[derive(Debug)]
pub struct TimerEvent {
    /// The transaction.
    pub txn: Weak<TxnCell>,
    /// What to do.
    pub kind: TimerKind,
    /// Branch index (for branch timers).
    pub branch: u16,
    /// Generation the timer was armed for; a newer one supersedes it.
    pub generation: u32,
}

impl Table {
    /// An empty table holding at most `max` live transactions.
    pub fn new(max: usize) -> Table {
        Table {
            server: DashMap::new(),
            by_id: DashMap::new(),
            next_id: AtomicU64::new(1),
            live: AtomicUsize::new(0),
            max,
        }
    }

    /// Live transactions.
    pub fn len(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// True when no transaction is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The transaction a request belongs to (RFC 3261 §17.2.3).
    pub fn lookup_server(&self, key: &str) -> Option<Arc<TxnCell>> {
        self.server.get(key).map(|e| e.value().clone())
    }

    /// A summary of every live transaction (`serlua ctl tm list`).
    pub fn list(&self, now: Instant) -> Vec<TxnInfo> {
        let cells: Vec<Arc<TxnCell>> = self.by_id.iter().map(|e| e.value().clone()).collect();
        cells
            .iter()
            .map(|c| {
                let t = c.lock();
                TxnInfo {
                    id: t.id,
                    method: t.method.to_string(),
                    call_id: t.call_id.to_string(),
                    uas: format!("{:?}", t.uas),
                    status: t.uas_status,
                    age: now.saturating_duration_since(t.created),
                    branches: t
                        .branches
                        .iter()
                        .map(|b| (b.target.dst.to_string(), format!("{:?}", b.state), b.status))
                        .collect(),
                    from: t.parties.0.clone(),
                    to: t.parties.1.clone(),
                    src: t.origin.dst.to_string(),
                }
            })
            .collect()
    }

    /// Transactions still waiting for their final reply (graceful
    /// shutdown waits for these, not for the ones lingering in wait_timer).
    pub fn pending(&self) -> usize {
        let cells: Vec<Arc<TxnCell>> = self.by_id.iter().map(|e| e.value().clone()).collect();
        cells.iter().filter(|c| c.lock().uas_status < 200).count()
    }

    fn lookup_id(&self, id: u64) -> Option<Arc<TxnCell>> {
        self.by_id.get(&id).map(|e| e.value().clone())
    }

    fn remove(&self, t: &mut Txn) {
        if t.deleted {
            return;
        }
        t.deleted = true;
        self.server.remove(&t.key);
        self.by_id.remove(&t.id);
        self.live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The server-transaction key of a request (RFC 3261 §17.2.3): the top
/// Via's branch (with the magic cookie), sent-by and method — ACK matching
/// INVITE. Without the cookie (RFC 2543 clients), Call-ID, From tag, CSeq
/// number, the top Via and the method.
pub fn server_key(msg: &SipMessage, method: &Method) -> String {
    let via = msg.top_via();
    match via.branch() {
        Some(b) if b.starts_with("z9hG4bK") => {
            format!(
                "{b}\x01{}:{}\x01{method}",
                via.host.text.to_ascii_lowercase(),
                via.port.unwrap_or(5060)
            )
        }
        _ => format!(
            "{}\x01{}\x01{}\x01{}\x01{method}",
            msg.call_id(),
            msg.from().tag().unwrap_or(""),
            msg.cseq().seq,
            via
        ),
    }
}

fn parse_branch(prefix: &str, b: &str) -> Option<(u64, u16)> {
    let rest = b.strip_prefix(prefix)?.strip_prefix('.')?;
    let (id, idx) = rest.split_once('.')?;
    Some((u64::from_str_radix(id, 16).ok()?, idx.parse().ok()?))
}

/// True when `branch` has the form of one of our stateful branches.
pub fn is_stateful_branch(env: &Env, branch: &str) -> bool {
    parse_branch(&env.shared.branch_prefix, branch).is_some()
}

/// Resolves where a request for `uri` goes (RFC 3263 without SRV: the
/// URI's `maddr` or host, its port or the scheme default, its
/// `transport` or UDP) and which socket sends it. Errors carry the status
/// for `sl_reply_error`.
pub fn resolve_target(env: &Env, uri: &Uri, prefer: SocketId) -> Result<Target, (u16, String)> {
    if !uri.is_sip() {
        return Err((416, "Unsupported URI Scheme".into()));
    }
    let proto = uri_proto(uri).map_err(|e| (503, format!("Service Unavailable - {e}")))?;
    let host = match uri.param("maddr").flatten().map(Host::parse) {
        Some(Ok(h)) => h,
        _ => uri.host.clone(),
    };
    let port = uri.port.unwrap_or(uri.default_port());
    let dst = env
        .resolve(&host, port)
        .ok_or_else(|| (478, "Unresolvable destination".to_string()))?;
    if env.shared.sockets.iter().any(|s| s.proto == proto && s.addr == dst) {
        return Err((482, "Loop Detected".into()));
    }
    let sock = env
        .pick_socket(proto, dst, prefer)
        .ok_or_else(|| (503, format!("Service Unavailable - no {proto} socket for {dst}")))?;
    Ok(Target {
        local: sock.id,
        proto,
        dst,
        conn: None,
    })
}

/// The request copy for one branch: its Request-URI, a second
/// Record-Route when it leaves by another socket than it came in on
/// (double record-routing), and our Via on top (RFC 3261 §16.6 steps 2–8).
fn branch_request(env: &Env, base: &SipMessage, uri: &Uri, target: &Target, branch: &str, rr_socket: Option<SocketId>) -> Option<Bytes> {
    let mut m = base.clone();
    if m.ruri() != Some(uri) {
        m.set_ruri(uri.clone());
    }
    if let Some(rs) = rr_socket {
        if env.shared.cfg.rr_double && rs != target.local {
            if let (Some(a), Some(b)) = (env.socket(rs), env.socket(target.local)) {
                if a.proto != b.proto || a.adv_hostport() != b.adv_hostport() {
                    m.insert_first(HeaderName::RecordRoute, rr_value(b).as_bytes());
                }
            }
        }
    }
    let sock = env.socket(target.local)?;
    m.insert_first(HeaderName::Via, sock.via(branch).as_bytes());
    Some(m.to_bytes())
}

/// SER's `forward()` and t_relay of an ACK: stateless forwarding (RFC 3261
/// §16.11). The branch is a hash of the incoming one, so a retransmission
/// is forwarded with the same branch.
pub fn forward_stateless(env: &Env, ctx: &mut MsgCtx, hop: Option<(Host, Option<u16>)>) -> bool {
    if ctx.msg.max_forwards() == Some(0) {
        ctx.fail(483, "Too Many Hops");
        return false;
    }
    let uri = match hop {
        Some((h, p)) => match Uri::parse(&match p {
            Some(p) => format!("sip:{h}:{p}"),
            None => format!("sip:{h}"),
        }) {
            Ok(u) => u,
            Err(_) => {
                ctx.fail(400, "Bad Request - bad next hop");
                return false;
            }
        },
        None => match ctx.dst_uri.clone().or_else(|| ctx.msg.ruri().cloned()) {
            Some(u) => u,
            None => return false,
        },
    };
    let target = match resolve_target(env, &uri, ctx.local) {
        Ok(t) => t,
        Err((code, reason)) => {
            ctx.fail(code, reason);
            return false;
        }
    };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    env.shared.secret.hash(&mut h);
    match ctx.msg.top_via().branch() {
        Some(b) if b.starts_with("z9hG4bK") => b.hash(&mut h),
        _ => {
            ctx.msg.call_id().hash(&mut h);
            ctx.msg.cseq().seq.hash(&mut h);
            ctx.msg.from().tag().hash(&mut h);
        }
    }
    ctx.msg.ruri().map(|u| u.to_string()).hash(&mut h);
    let branch = format!("{}.s{:x}", env.shared.branch_prefix, h.finish());
    let Some(uri_now) = ctx.msg.ruri().cloned() else { return false };
    let Some(bytes) = branch_request(env, &ctx.msg, &uri_now, &target, &branch, ctx.rr_socket) else {
        return false;
    };
    env.send_to(&target, bytes);
    Stats::inc(&env.shared.stats.fwd_requests);
    ctx.relayed = true;
    true
}

/// Called before the script for every request: a retransmission of a
/// request we already handle gets our last reply again, and the ACK of a
/// non-2xx final reply ends its server transaction (RFC 3261 §17.2.1);
/// neither reaches the script. Returns true when absorbed.
pub fn absorb(env: &Env, msg: &SipMessage) -> bool {
    let Some(method) = msg.method() else { return false };
    match method {
        Method::Cancel => false,
        Method::Ack => {
            let Some(cell) = env.shared.tm.lookup_server(&server_key(msg, &Method::Invite)) else {
                return false;
            };
            let mut t = cell.lock();
            match t.uas {
                UasState::Completed => {
                    t.uas = UasState::Confirmed;
                    t.g_gen += 1;
                    let wait = if t.origin.proto.is_reliable() { Duration::ZERO } else { T4 };
                    env.arm(wait, timer(&cell, TimerKind::Delete, 0, 0));
                    true
                }
                UasState::Confirmed => true,
                // An ACK for a 2xx is a new transaction, routed end to end.
                _ => false,
            }
        }
        m => {
            let Some(cell) = env.shared.tm.lookup_server(&server_key(msg, m)) else {
                return false;
            };
            let t = cell.lock();
            if let Some(r) = &t.uas_reply {
                if t.uas != UasState::Accepted {
                    env.send_to(&t.origin, r.clone());
                }
            }
            true
        }
    }
}

/// SER's `t_relay()` in a request route: creates the transaction, sends
/// `100 Trying` for an INVITE, and forwards the request to the
/// Request-URI (or `dst_uri`) and every appended branch. ACK is forwarded
/// statelessly; a CANCEL is matched to its INVITE (§16.10).
pub fn t_relay(env: &Env, ctx: &mut MsgCtx, hop: Option<(Host, Option<u16>)>) -> bool {
    let Some(method) = ctx.msg.method().cloned() else { return false };
    if ctx.msg.max_forwards() == Some(0) {
        // RFC 3261 §16.3 step 2: never forward with Max-Forwards 0, even when
        // the script skipped mf_process_maxfwd_header.
        ctx.fail(483, "Too Many Hops");
        return false;
    }
    if ctx.kind == RouteKind::Failure {
        // The transaction is locked by the code running this failure route;
        // it adds the new branches when the route returns.
        if let Some((h, p)) = hop {
            match Uri::parse(&match p {
                Some(p) => format!("sip:{h}:{p}"),
                None => format!("sip:{h}"),
            }) {
                Ok(u) => ctx.dst_uri = Some(u),
                Err(_) => return false,
            }
        }
        ctx.failure_relay = true;
        return true;
    }
    match method {
        Method::Ack => return forward_stateless(env, ctx, hop),
        Method::Cancel => return relay_cancel(env, ctx, hop),
        _ => {}
    }
    let table = &env.shared.tm;
    let key = server_key(&ctx.msg, &method);
    if table.lookup_server(&key).is_some() {
        // Relayed twice by the script, or a retransmission raced us.
        ctx.relayed = true;
        return true;
    }
    if table.len() >= table.max {
        ctx.fail(503, "Service Unavailable");
        return false;
    }
    let Some(origin) = sl::reply_target(ctx) else {
        ctx.fail(400, "Bad Request - no usable Via");
        return false;
    };
    let mut targets: Vec<(Uri, Option<Uri>)> = Vec::with_capacity(1 + ctx.branches.len());
    let Some(ruri) = ctx.msg.ruri().cloned() else { return false };
    let first_dst = match hop {
        Some((h, p)) => match Uri::parse(&match p {
            Some(p) => format!("sip:{h}:{p}"),
            None => format!("sip:{h}"),
        }) {
            Ok(u) => Some(u),
            Err(_) => {
                ctx.fail(400, "Bad Request - bad next hop");
                return false;
            }
        },
        None => ctx.dst_uri.clone(),
    };
    targets.push((ruri, first_dst));
    targets.extend(ctx.branches.drain(..).map(|b| (b.uri, b.dst_uri)));

    let cfg = &env.shared.cfg.tm;
    let fr = ctx.avps.seconds(&cfg.fr_timer_avp).unwrap_or(cfg.fr_timer);
    let fr_inv = ctx.avps.seconds(&cfg.fr_inv_timer_avp).unwrap_or(cfg.fr_inv_timer);
    let id = table.next_id.fetch_add(1, Ordering::Relaxed);
    let txn = Txn {
        id,
        key: key.clone(),
        call_id: ctx.msg.call_id().into(),
        parties: Box::new((ctx.msg.from().uri.to_string(), ctx.msg.to().uri.to_string())),
        method: method.clone(),
        request: Some(Box::new(ctx.msg.clone())),
        origin,
        flags: ctx.flags,
        avps: ctx.avps.clone(),
        on_reply: ctx.on_reply.clone(),
        on_failure: ctx.on_failure.clone(),
        rr_socket: ctx.rr_socket,
        to_tag: sl::local_tag(env.shared.secret, &ctx.msg),
        uas: UasState::Proceeding,
        uas_status: 0,
        uas_reply: None,
        g_every: cfg.t1,
        g_gen: 0,
        branches: Vec::with_capacity(targets.len()),
        canceled: false,
        fr,
        fr_inv,
        deleted: false,
        delete_armed: false,
        created: env.now(),
    };
    let cell = Arc::new(Mutex::new(txn));
    let mut t = cell.lock();
    match table.server.entry(key) {
        dashmap::Entry::Occupied(_) => {
            ctx.relayed = true;
            return true;
        }
        dashmap::Entry::Vacant(v) => {
            v.insert(cell.clone());
        }
    }
    table.by_id.insert(id, cell.clone());
    table.live.fetch_add(1, Ordering::Relaxed);
    if method == Method::Invite {
        let trying = sl::build_reply(&ctx.msg, 100, "Trying", None, &[]);
        let bytes = trying.to_bytes();
        env.send_to(&t.origin, bytes.clone());
        Stats::inc(&env.shared.stats.local_replies);
        t.uas_reply = Some(bytes);
        t.uas_status = 100;
    }
    match add_branches(env, &cell, &mut t, targets) {
        Ok(()) => {
            ctx.relayed = true;
            true
        }
        Err((code, reason)) => {
            // Nothing was sent: the script answers (sl_reply_error), as in SER.
            table.remove(&mut t);
            ctx.fail(code, reason);
            false
        }
    }
}

/// Starts one client transaction per target; Ok when at least one was sent.
fn add_branches(env: &Env, cell: &Arc<TxnCell>, t: &mut Txn, targets: Vec<(Uri, Option<Uri>)>) -> Result<(), (u16, String)> {
    let mut last_err = None;
    let mut sent = 0;
    let cfg = &env.shared.cfg.tm;
    for (uri, dst) in targets {
        if t.branches.len() >= MAX_BRANCHES {
            last_err = Some((500, "Server Internal Error - too many branches".to_string()));
            break;
        }
        let hop_uri = dst.as_ref().unwrap_or(&uri);
        let target = match resolve_target(env, hop_uri, t.origin.local) {
            Ok(tg) => tg,
            Err(e) => {
                tracing::warn!("cannot relay to {hop_uri}: {} {}", e.0, e.1);
                last_err = Some(e);
                continue;
            }
        };
        let idx = t.branches.len() as u16;
        let id = format!("{}.{:x}.{idx}", env.shared.branch_prefix, t.id);
        let Some(base) = t.request.as_deref() else {
            last_err = Some((500, "Server Internal Error".into()));
            break;
        };
        let Some(bytes) = branch_request(env, base, &uri, &target, &id, t.rr_socket) else {
            last_err = Some((500, "Server Internal Error".into()));
            continue;
        };
        env.send_to(&target, bytes.clone());
        Stats::inc(&env.shared.stats.fwd_requests);
        t.branches.push(Branch {
            id,
            target,
            uri,
            request: bytes,
            state: BranchState::Calling,
            status: 0,
            reply: None,
            retrans_gen: 0,
            retrans_every: cfg.t1,
            timeout_gen: 0,
            cancel: CancelState::None,
            ack: None,
        });
        if !target.proto.is_reliable() {
            env.arm(cfg.t1, timer(cell, TimerKind::Retransmit, idx, 0));
        }
        let first_wait = if t.method == Method::Invite { t.fr.min(t.fr_inv) } else { t.fr };
        env.arm(first_wait, timer(cell, TimerKind::Timeout, idx, 0));
        sent += 1;
    }
    if sent > 0 {
        Ok(())
    } else {
        Err(last_err.unwrap_or((500, "Server Internal Error - no destination".into())))
    }
}

/// t_relay of a CANCEL (RFC 3261 §16.10): with a matching INVITE
/// transaction, answer 200 and cancel every pending branch; without one,
/// forward it statelessly.
fn relay_cancel(env: &Env, ctx: &mut MsgCtx, hop: Option<(Host, Option<u16>)>) -> bool {
    let Some(cell) = env.shared.tm.lookup_server(&server_key(&ctx.msg, &Method::Invite)) else {
        return forward_stateless(env, ctx, hop);
    };
    let mut t = cell.lock();
    let reply = sl::build_reply(&ctx.msg, 200, "OK", Some(&t.to_tag), &[]);
    if let Some(target) = sl::reply_target(ctx) {
        env.send_to(&target, reply.to_bytes());
        Stats::inc(&env.shared.stats.local_replies);
    }
    ctx.replied = true;
    ctx.relayed = true;
    if t.uas_status >= 200 || t.canceled {
        return true;
    }
    t.canceled = true;
    for i in 0..t.branches.len() {
        cancel_branch(env, &cell, &mut t, i);
    }
    true
}

/// Cancels one branch: now if it has had a provisional reply, else as
/// soon as one arrives (RFC 3261 §9.1).
fn cancel_branch(env: &Env, cell: &Arc<TxnCell>, t: &mut Txn, i: usize) {
    let t1 = env.shared.cfg.tm.t1;
    let b = &mut t.branches[i];
    match (b.state, &b.cancel) {
        (BranchState::Calling, CancelState::None) => b.cancel = CancelState::Pending,
        (BranchState::Proceeding, CancelState::None | CancelState::Pending) => {
            let Some(bytes) = build_cancel(&b.request) else {
                b.cancel = CancelState::Done;
                return;
            };
            env.send_to(&b.target, bytes.clone());
            Stats::inc(&env.shared.stats.fwd_requests);
            let generation = 0;
            if !b.target.proto.is_reliable() {
                env.arm(t1, timer(cell, TimerKind::CancelRetransmit, i as u16, generation));
            }
            b.cancel = CancelState::Sent {
                bytes,
                every: t1,
                generation,
            };
        }
        _ => {}
    }
}

/// Builds the CANCEL for a branch's request (RFC 3261 §9.1: same
/// Request-URI, Call-ID, From, To, CSeq number and top Via; Route copied).
fn build_cancel(request: &Bytes) -> Option<Bytes> {
    let req = SipMessage::parse(request.clone()).ok()?;
    let to = req.header(&HeaderName::To)?.into_owned();
    Some(hop_request(&req, Method::Cancel, &to))
}

/// Builds the ACK for a non-2xx final reply (RFC 3261 §17.1.1.3): the To
/// of the reply, our Via, the branch's Route set.
fn build_ack(request: &Bytes, reply: &SipMessage) -> Option<Bytes> {
    let req = SipMessage::parse(request.clone()).ok()?;
    let to = reply.header(&HeaderName::To)?.into_owned();
    Some(hop_request(&req, Method::Ack, &to))
}

fn hop_request(req: &SipMessage, method: Method, to: &[u8]) -> Bytes {
    let via = req.header(&HeaderName::Via).map(|v| v.into_owned()).unwrap_or_default();
    let routes: Vec<Vec<u8>> = req.headers(&HeaderName::Route).iter().map(|r| r.to_vec()).collect();
    let from = req.header(&HeaderName::From).map(|v| v.into_owned()).unwrap_or_default();
    let call_id = req.call_id().as_bytes().to_vec();
    let cseq = format!("{} {method}", req.cseq().seq).into_bytes();
    let mut h: Vec<(HeaderName, &[u8])> = vec![(HeaderName::Via, &via)];
    for r in &routes {
        h.push((HeaderName::Route, r));
    }
    h.push((HeaderName::MaxForwards, b"70"));
    h.push((HeaderName::From, &from));
    h.push((HeaderName::To, to));
    h.push((HeaderName::CallId, &call_id));
    h.push((HeaderName::CSeq, &cseq));
    let uri = req.ruri().cloned().unwrap_or_else(|| req.to().uri.clone());
    SipMessage::new_request(method, uri, &h, b"").to_bytes()
}

/// Once the final reply went upstream and no branch is pending, only what
/// absorbs retransmissions stays (the last reply, our ACKs, the states):
/// the request copies go, so the `wait_timer` linger costs little memory.
fn compact(t: &mut Txn) {
    if t.request.is_none() || t.uas_status < 200 || t.branches.iter().any(|b| b.state.pending()) {
        return;
    }
    t.request = None;
    for b in &mut t.branches {
        // An INVITE branch that timed out keeps its request: a late final
        // reply from it still gets an ACK built from it.
        if !(t.method == Method::Invite && b.state == BranchState::Completed && b.ack.is_none()) {
            b.request = Bytes::new();
        }
        b.reply = None;
    }
}

fn timer(cell: &Arc<TxnCell>, kind: TimerKind, branch: u16, generation: u32) -> TimerEvent {
    TimerEvent {
        txn: Arc::downgrade(cell),
        kind,
        branch,
        generation,
    }
}

fn arm_delete(env: &Env, cell: &Arc<TxnCell>, t: &mut Txn) {
    if !t.delete_armed {
        t.delete_armed = true;
        env.arm(env.shared.cfg.tm.wait_timer, timer(cell, TimerKind::Delete, 0, 0));
    }
}

/// Sends a reply upstream and moves the server side on (RFC 3261 §17.2.1).
fn send_upstream(env: &Env, cell: &Arc<TxnCell>, t: &mut Txn, status: u16, bytes: Bytes) {
    env.send_to(&t.origin, bytes.clone());
    Stats::inc(&env.shared.stats.fwd_replies);
    t.uas_reply = Some(bytes);
    t.uas_status = status;
    if status < 200 || t.uas != UasState::Proceeding {
        return;
    }
    let cfg = &env.shared.cfg.tm;
    if t.method == Method::Invite && status >= 300 {
        t.uas = UasState::Completed;
        if !t.origin.proto.is_reliable() {
            t.g_every = cfg.t1;
            env.arm(cfg.t1, timer(cell, TimerKind::ReplyRetransmit, 0, t.g_gen));
        }
        env.arm(cfg.t1 * 64, timer(cell, TimerKind::AckTimeout, 0, 0));
    } else {
        t.uas = if t.method == Method::Invite {
            UasState::Accepted
        } else {
            UasState::Done
        };
        arm_delete(env, cell, t);
    }
}

/// A reply this proxy generates for the transaction (408, 487, 500 …).
fn reply_local(env: &Env, cell: &Arc<TxnCell>, t: &mut Txn, status: u16, reason: &str) {
    let Some(req) = t.request.as_deref() else { return };
    let m = sl::build_reply(req, status, reason, Some(&t.to_tag), &[]);
    Stats::inc(&env.shared.stats.local_replies);
    send_upstream(env, cell, t, status, m.to_bytes());
}

fn run_reply_route(
    env: &Env,
    script: &Script,
    t: &mut Txn,
    msg: SipMessage,
    src: std::net::SocketAddr,
    local: SocketId,
) -> (SipMessage, bool) {
    let Some(key) = t.on_reply.clone() else { return (msg, false) };
    let proto = t.branches.first().map(|b| b.target.proto).unwrap_or(t.origin.proto);
    let mut ctx = MsgCtx::new(msg, src, local, proto, None, RouteKind::OnReply);
    ctx.flags = t.flags;
    ctx.avps = std::mem::take(&mut t.avps);
    let (ctx, outcome) = script.run(RouteKind::OnReply, &key, ctx);
    t.flags = ctx.flags;
    t.avps = ctx.avps;
    if let RunOutcome::Error(e) = outcome {
        env.shared.script_error(&e);
        tracing::error!(call_id = %ctx.msg.call_id(), status = ctx.msg.status().unwrap_or(0), "onreply_route{key} failed: {e}");
    }
    (ctx.msg, ctx.dropped)
}

/// Handles a reply that carries one of our stateful branches. Returns
/// false when it is not ours to handle (the caller then forwards it
/// statelessly if its Via says so).
pub fn on_reply(env: &Env, script: &Script, msg: SipMessage, src: std::net::SocketAddr, local: SocketId) -> bool {
    let Some(branch) = msg.top_via().branch() else { return false };
    let Some((id, idx)) = parse_branch(&env.shared.branch_prefix, branch) else {
        return false;
    };
    let Some(cell) = env.shared.tm.lookup_id(id) else {
        // The transaction is gone: only a 2xx to an INVITE still has to reach
        // the caller (RFC 6026); the caller forwards those statelessly.
        return !(msg.status().is_some_and(|s| (200..300).contains(&s)) && msg.cseq().method == Method::Invite);
    };
    let mut guard = cell.lock();
    let t = &mut *guard;
    reply_locked(env, script, &cell, t, idx, msg, src, local);
    compact(t);
    true
}

#[allow(clippy::too_many_arguments)]
fn reply_locked(
    env: &Env,
    script: &Script,
    cell: &Arc<TxnCell>,
    t: &mut Txn,
    idx: u16,
    msg: SipMessage,
    src: std::net::SocketAddr,
    local: SocketId,
) -> bool {
    let cell = cell.clone();
    let i = idx as usize;
    if t.deleted || i >= t.branches.len() {
        return true;
    }
    let status = msg.status().unwrap_or(0);
    let cseq_method = msg.cseq().method.clone();
    if cseq_method == Method::Cancel && t.method != Method::Cancel {
        if status >= 200 {
            t.branches[i].cancel = CancelState::Done;
        }
        return true;
    }
    if cseq_method != t.method {
        return true;
    }
    let cfg = &env.shared.cfg.tm;
    if status < 200 {
        let b = &mut t.branches[i];
        if !b.state.pending() {
            return true;
        }
        if b.state == BranchState::Calling {
            b.state = BranchState::Proceeding;
            b.retrans_gen += 1;
            if t.method != Method::Invite && !b.target.proto.is_reliable() {
                // Timer E continues at T2 in Proceeding (RFC 3261 §17.1.2.2).
                b.retrans_every = cfg.t2;
                env.arm(cfg.t2, timer(&cell, TimerKind::Retransmit, idx, b.retrans_gen));
            }
        }
        b.status = status;
        if t.method == Method::Invite {
            b.timeout_gen += 1;
            env.arm(t.fr_inv, timer(&cell, TimerKind::Timeout, idx, b.timeout_gen));
        }
        if b.cancel == CancelState::Pending {
            b.cancel = CancelState::None;
            cancel_branch(env, &cell, t, i);
        }
        if status == 100 || t.uas_status >= 200 {
            return true;
        }
        let (mut msg, dropped) = run_reply_route(env, script, t, msg, src, local);
        if dropped {
            return true;
        }
        msg.remove_first_value(&HeaderName::Via);
        send_upstream(env, &cell, t, status, msg.to_bytes());
        return true;
    }
    if status < 300 {
        let was_accepted = t.branches[i].state == BranchState::Accepted;
        {
            let b = &mut t.branches[i];
            b.state = BranchState::Accepted;
            b.status = status;
            b.retrans_gen += 1;
            b.timeout_gen += 1;
        }
        let mut msg = if was_accepted {
            msg
        } else {
            run_reply_route(env, script, t, msg, src, local).0
        };
        msg.remove_first_value(&HeaderName::Via);
        send_upstream(env, &cell, t, status, msg.to_bytes());
        if t.method == Method::Invite && !was_accepted {
            for j in 0..t.branches.len() {
                if j != i && t.branches[j].state.pending() {
                    cancel_branch(env, &cell, t, j);
                }
            }
        }
        arm_delete(env, &cell, t);
        return true;
    }
    // A final negative reply.
    match t.branches[i].state {
        BranchState::Completed => {
            let b = &mut t.branches[i];
            // A branch we gave up on (timeout) answers late: it still needs
            // its ACK, or the callee retransmits the final reply for 32 s.
            if t.method == Method::Invite && b.ack.is_none() {
                b.ack = build_ack(&b.request, &msg);
            }
            // Otherwise a retransmitted final reply: our ACK got lost (timer D).
            if let Some(ack) = &b.ack {
                env.send_to(&b.target, ack.clone());
            }
            return true;
        }
        BranchState::Accepted => return true,
        _ => {}
    }
    if t.method == Method::Invite {
        let b = &mut t.branches[i];
        if let Some(ack) = build_ack(&b.request, &msg) {
            env.send_to(&b.target, ack.clone());
            b.ack = Some(ack);
        }
    }
    {
        let b = &mut t.branches[i];
        b.state = BranchState::Completed;
        b.status = status;
        b.retrans_gen += 1;
        b.timeout_gen += 1;
    }
    let (mut msg, _) = run_reply_route(env, script, t, msg, src, local);
    msg.remove_first_value(&HeaderName::Via);
    t.branches[i].reply = Some(Box::new(msg));
    if t.method == Method::Invite && status >= 600 {
        for j in 0..t.branches.len() {
            if j != i && t.branches[j].state.pending() {
                cancel_branch(env, &cell, t, j);
            }
        }
    }
    check_complete(env, script, &cell, t);
    true
}

/// The best final reply among completed branches (RFC 3261 §16.7 step 6):
/// a 6xx if any, else the lowest class; the first such branch wins.
fn pick_best(branches: &[Branch]) -> Option<usize> {
    if let Some(i) = branches.iter().position(|b| b.status >= 600) {
        return Some(i);
    }
    let mut best: Option<usize> = None;
    for (i, b) in branches.iter().enumerate() {
        if b.status < 300 {
            continue;
        }
        match best {
            Some(j) if branches[j].status / 100 <= b.status / 100 => {}
            _ => best = Some(i),
        }
    }
    best
}

/// When no branch is pending and nothing final went upstream yet: run the
/// failure route (which may fork again) or send the best reply
/// (RFC 3261 §16.7 steps 6–8).
fn check_complete(env: &Env, script: &Script, cell: &Arc<TxnCell>, t: &mut Txn) {
    if t.uas_status >= 200 {
        arm_delete(env, cell, t);
        return;
    }
    if t.branches.iter().any(|b| b.state.pending()) {
        return;
    }
    let Some(best) = pick_best(&t.branches) else {
        reply_local(env, cell, t, 500, "Server Internal Error");
        return;
    };
    let best_status = t.branches[best].status;
    if let Some(route) = t.on_failure.take() {
        if let (false, Some(req)) = (t.canceled, t.request.as_deref().cloned()) {
            let mut ctx = MsgCtx::new(req, t.origin.dst, t.origin.local, t.origin.proto, t.origin.conn, RouteKind::Failure);
            ctx.flags = t.flags;
            ctx.avps = std::mem::take(&mut t.avps);
            ctx.on_reply = t.on_reply.clone();
            ctx.reply_status = Some(best_status);
            let (mut ctx, outcome) = script.run(RouteKind::Failure, &route, ctx);
            t.flags = ctx.flags;
            t.avps = std::mem::take(&mut ctx.avps);
            t.on_reply = ctx.on_reply.clone();
            t.on_failure = ctx.on_failure.clone();
            if let RunOutcome::Error(e) = outcome {
                env.shared.script_error(&e);
                tracing::error!(call_id = %ctx.msg.call_id(), "failure_route{route} failed: {e}");
            }
            if let Some((code, reason)) = ctx.failure_reply.take() {
                reply_local(env, cell, t, code, &reason);
                return;
            }
            if ctx.failure_relay {
                let Some(ruri) = ctx.msg.ruri().cloned() else { return };
                let mut targets = vec![(ruri, ctx.dst_uri.clone())];
                targets.extend(ctx.branches.drain(..).map(|b| (b.uri, b.dst_uri)));
                t.request = Some(Box::new(ctx.msg));
                match add_branches(env, cell, t, targets) {
                    Ok(()) => return,
                    Err((code, reason)) => tracing::warn!("failure route relay failed: {code} {reason}"),
                }
            }
        }
    }
    send_best(env, cell, t, best);
}

fn send_best(env: &Env, cell: &Arc<TxnCell>, t: &mut Txn, best: usize) {
    let status = t.branches[best].status;
    let Some(reply) = t.branches[best].reply.as_deref().cloned() else {
        let reason = match status {
            487 => "Request Terminated",
            408 => "Request Timeout",
            _ => "Server Internal Error",
        };
        reply_local(env, cell, t, status, reason);
        return;
    };
    if status == 503 {
        // RFC 3261 §16.7 step 6: a 503 is not passed upstream as such.
        reply_local(env, cell, t, 500, "Server Internal Error");
        return;
    }
    let mut reply = reply;
    if status == 401 || status == 407 {
        // §16.7 step 7: gather every challenge into the reply sent upstream.
        for (j, b) in t.branches.iter().enumerate() {
            if j == best {
                continue;
            }
            if let Some(r) = &b.reply {
                for name in [HeaderName::WwwAuthenticate, HeaderName::ProxyAuthenticate] {
                    for v in r.headers(&name) {
                        reply.append_header(name.clone(), &v);
                    }
                }
            }
        }
    }
    send_upstream(env, cell, t, status, reply.to_bytes());
}

/// Runs a due tm timer.
pub fn on_timer(env: &Env, script: &Script, ev: TimerEvent) {
    let Some(cell) = ev.txn.upgrade() else { return };
    let mut guard = cell.lock();
    let t = &mut *guard;
    if t.deleted {
        return;
    }
    timer_locked(env, script, &cell, t, ev);
    compact(t);
}

fn timer_locked(env: &Env, script: &Script, cell: &Arc<TxnCell>, t: &mut Txn, ev: TimerEvent) {
    let cell = cell.clone();
    let cfg = &env.shared.cfg.tm;
    let i = ev.branch as usize;
    match ev.kind {
        TimerKind::Retransmit => {
            let is_invite = t.method == Method::Invite;
            let Some(b) = t.branches.get_mut(i) else { return };
            let active = b.state == BranchState::Calling || (!is_invite && b.state == BranchState::Proceeding);
            if b.retrans_gen != ev.generation || !active {
                return;
            }
            env.send_to(&b.target, b.request.clone());
            b.retrans_every = if is_invite {
                b.retrans_every * 2
            } else {
                (b.retrans_every * 2).min(cfg.t2)
            };
            env.arm(b.retrans_every, timer(&cell, TimerKind::Retransmit, ev.branch, ev.generation));
        }
        TimerKind::Timeout => {
            let canceled = t.canceled;
            let is_invite = t.method == Method::Invite;
            let Some(b) = t.branches.get_mut(i) else { return };
            if b.timeout_gen != ev.generation || !b.state.pending() {
                return;
            }
            let had_provisional = b.state == BranchState::Proceeding;
            b.retrans_gen += 1;
            if is_invite && had_provisional {
                // The callee is ringing but we give up: cancel it (timer C).
                cancel_branch(env, &cell, t, i);
            }
            let b = &mut t.branches[i];
            b.state = BranchState::Completed;
            b.status = if canceled { 487 } else { 408 };
            tracing::debug!(branch = %b.id, "branch timed out: {}", b.status);
            check_complete(env, script, &cell, t);
        }
        TimerKind::ReplyRetransmit => {
            if t.uas != UasState::Completed || t.g_gen != ev.generation {
                return;
            }
            if let Some(r) = &t.uas_reply {
                env.send_to(&t.origin, r.clone());
            }
            t.g_every = (t.g_every * 2).min(cfg.t2);
            env.arm(t.g_every, timer(&cell, TimerKind::ReplyRetransmit, 0, ev.generation));
        }
        TimerKind::AckTimeout => {
            if t.uas == UasState::Completed {
                env.shared.tm.remove(t);
            }
        }
        TimerKind::CancelRetransmit => {
            let Some(b) = t.branches.get_mut(i) else { return };
            if let CancelState::Sent { bytes, every, generation } = &mut b.cancel {
                if *generation != ev.generation || *every >= cfg.t1 * 64 {
                    return;
                }
                env.send_to(&b.target, bytes.clone());
                *every = (*every * 2).min(cfg.t2);
                env.arm(*every, timer(&cell, TimerKind::CancelRetransmit, ev.branch, ev.generation));
            }
        }
        TimerKind::Delete => {
            let pending = t.branches.iter().any(|b| b.state.pending());
            let old = env.now().saturating_duration_since(t.created) > MAX_LIFETIME;
            if (pending || t.uas == UasState::Completed) && !old {
                env.arm(cfg.wait_timer, timer(&cell, TimerKind::Delete, 0, 0));
                return;
            }
            env.shared.tm.remove(t);
        }
    }
}

/// Forwards a reply that matches no transaction (RFC 3261 §16.11, §18.2.2):
/// only when its top Via is ours; our Via is removed and the reply goes to
/// the next Via.
pub fn forward_reply_stateless(env: &Env, mut msg: SipMessage, local: SocketId) -> bool {
    if !env.shared.via_is_ours(msg.top_via()) || msg.vias().len() < 2 {
        return false;
    }
    msg.remove_first_value(&HeaderName::Via);
    let via = msg.top_via().clone();
    let Some(proto) = via_proto(&via) else { return false };
    let Some(dst) = reply_destination(&via, proto) else {
        return false;
    };
    let Some(sock) = env.pick_socket(proto, dst, local) else {
        return false;
    };
    env.send_to(
        &Target {
            local: sock.id,
            proto,
            dst,
            conn: None,
        },
        msg.to_bytes(),
    );
    Stats::inc(&env.shared.stats.fwd_replies);
    true
}

fn parse_hop(h: Option<StrArg>, p: Option<IntArg>) -> mlua::Result<Option<(Host, Option<u16>)>> {
    let Some(StrArg(h)) = h else { return Ok(None) };
    let (host, port) = crate::core_fns::parse_hostport(&h).ok_or_else(|| lua_err(format!("t_relay: bad host '{h}'")))?;
    let port = match p {
        Some(IntArg(p)) if (1..=65535).contains(&p) => Some(p as u16),
        Some(IntArg(p)) => return Err(lua_err(format!("t_relay: bad port {p}"))),
        None => port,
    };
    Ok(Some((host, port)))
}

fn route_key(lua: &Lua, env: &Env, v: mlua::Value, kind: RouteKind, what: &str) -> mlua::Result<RouteKey> {
    let key = match v {
        mlua::Value::Integer(i) => RouteKey::Num(i),
        mlua::Value::Number(n) if n.fract() == 0.0 => RouteKey::Num(n as i64),
        mlua::Value::String(s) => RouteKey::from_text(&s.to_string_lossy()),
        other => {
            return Err(lua_err(format!(
                "{what}: route name must be a number or string, not {}",
                other.type_name()
            )));
        }
    };
    let _ = env;
    let table: mlua::Table = lua.globals().get(kind.table())?;
    let exists = match &key {
        RouteKey::Num(n) => !matches!(table.raw_get::<mlua::Value>(*n)?, mlua::Value::Nil),
        RouteKey::Name(s) => !matches!(table.raw_get::<mlua::Value>(s.as_str())?, mlua::Value::Nil),
    };
    if !exists {
        return Err(lua_err(crate::script::at_caller(
            lua,
            &format!("{what}: {}{key} is not defined", kind.table()),
        )));
    }
    Ok(key)
}

/// Registers tm's primitives.
pub fn register(lua: &Lua, env: &Rc<Env>) -> mlua::Result<()> {
    reg(
        lua,
        env,
        EXPORTS,
        "t_relay",
        |_, env, ctx, (h, p): (Option<StrArg>, Option<IntArg>)| {
            let hop = parse_hop(h, p)?;
            Ok(t_relay(env, ctx, hop))
        },
    )?;
    reg(lua, env, EXPORTS, "t_on_reply", |lua, env, ctx, v: mlua::Value| {
        ctx.on_reply = Some(route_key(lua, env, v, RouteKind::OnReply, "t_on_reply")?);
        Ok(true)
    })?;
    reg(lua, env, EXPORTS, "t_on_failure", |lua, env, ctx, v: mlua::Value| {
        ctx.on_failure = Some(route_key(lua, env, v, RouteKind::Failure, "t_on_failure")?);
        Ok(true)
    })?;
    reg(lua, env, EXPORTS, "t_check_status", |_, env, ctx, StrArg(re): StrArg| {
        let status = ctx.reply_status.or(ctx.msg.status());
        let Some(status) = status else { return Ok(false) };
        let r = env.regex(&format!("^(?:{re})$")).map_err(lua_err)?;
        Ok(r.is_match(status.to_string().as_bytes()))
    })
}

#[allow(dead_code)]
fn _assert_send_sync() {
    fn is<T: Send + Sync>() {}
    is::<Table>();
    let _ = LitArg::Nil;
}
