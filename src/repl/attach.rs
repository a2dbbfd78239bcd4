//! `serlua repl --attach`: the proxy side.
//!
//! A REPL client asks over the control socket (mode 0600: only the
//! proxy's user) to attach with a filter, a Lua expression over `msg`.
//! While a filter waits, every worker evaluates it in its own VM on each
//! request it receives (replies too when asked), before routing; the first
//! message for which it is true goes to the client's session:
//! - as a copy, and the real message is routed at once; or
//! - with `hold`, the real message is not routed: it waits (its
//!   retransmissions are absorbed, other messages keep flowing) until the
//!   client's `release`, the deadline, or the client going away, and is
//!   then routed through the real script by the worker that caught it. One
//!   held message per proxy at a time, so no more than one call waits.
//!   Only requests are held (a matching reply, with `replies`, is copied).
//!   A CANCEL of the held INVITE (RFC 3261 §9.1: same branch and CSeq
//!   number) releases it: the INVITE, then the CANCEL, are routed in that
//!   order by the worker that caught the INVITE, so the CANCEL finds its
//!   transaction and the caller's hang-up is not lost.
//!
//! The session runs on a thread of its own in the proxy over a dry-run
//! copy of the live state ([`crate::repl::session::Session::live`]; the
//! guarantees are in [`crate::repl`]).
//!
//! A filter runs with a restricted environment: `msg`, Lua's `string`,
//! `math`, `table` and `utf8` libraries and basic functions, and the
//! primitives that only test the message ([`FILTER_PRIMITIVES`]). One that
//! would change state (`save`, `sl_send_reply`, `www_authorize`, which
//! records nonce counts) is not there, so a filter cannot act on live
//! traffic. It runs under the routes' runaway guard (stopped after
//! [`crate::script::ROUTE_TIME_LIMIT`]). A filter that does not compile, or
//! that fails on a message, is reported to the client and forgotten.
//!
//! # Protocol (JSON lines on the control socket)
//!
//! The client's first line: `{"cmd": "attach", "filter": "msg.method ==
//! \"INVITE\"", "hold": true, "deadline": 10, "replies": false}`
//! (`deadline` in seconds, 1 to [`MAX_DEADLINE`]; default 10). Then the
//! proxy sends events and replies, one object per line:
//! - `{"event": "waiting", "id": N}`, or `{"ok": false, "error": …}` (a
//!   filter that does not compile, another session holding a message);
//! - `{"event": "caught", "held": bool, "deadline_ms": N, "worker": N,
//!   "src": "udp:IP:PORT", "banner": …, "routes": […], "message": …}`;
//! - `{"event": "error", "error": …}`: the filter failed in a worker;
//! - `{"event": "released", "why": "deadline"}` (or `"why": "CANCEL"`);
//! - `{"reply": {"text": …, "ok": bool, "incomplete": bool}}` for each
//!   client line `{"line": "LUA OR :COMMAND"}` or `{"cmd": "release"}`.
//!
//! The client closing the connection (or `{"cmd": "detach"}`) forgets the
//! filter and releases a held message at once.

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use mlua::{Function, Value};
use parking_lot::Mutex;
use serde_json::{Map, json};
use tokio::io::{AsyncBufRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::control::Control;
use crate::core::{MsgCtx, Shared};
use crate::repl::session::{Message, Reply, Session};
use crate::script::clean_lua_error;
use crate::script::export::RouteKind;
use crate::sip::SipMessage;
use crate::transport::Incoming;
use crate::worker::Worker;

/// The longest a message may be held: below RFC 3261's Timer B and F
/// (64·T1 = 32 s), after which the sender gives the transaction up and the
/// call would be lost.
pub const MAX_DEADLINE: Duration = Duration::from_secs(30);

/// The hold deadline when the client names none.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(10);

/// The primitives a filter may call: they only test the message (or read
/// the tables) and change nothing.
pub const FILTER_PRIMITIVES: &[&str] = &[
    "is_myself",
    "regex_match",
    "isflagset",
    "nat_uac_test",
    "client_nat_test",
    "has_totag",
    "search",
    "is_present_hf",
    "is_uri_host_local",
    "is_from_local",
    "is_domain_local",
    "allow_trusted",
    "registered",
];

/// Lua's own functions and libraries a filter may use.
const FILTER_LUA: &[&str] = &[
    "string", "math", "table", "utf8", "tostring", "tonumber", "type", "pairs", "ipairs", "select", "next",
];

/// Hands a held message back to the worker that caught it, to be routed
/// for real (server.rs gives one per worker). False when the worker is
/// gone.
pub type Releaser = Box<dyn Fn(Incoming) -> bool + Send + Sync>;

/// What a session's connection hears from the workers.
#[derive(Debug)]
pub enum Event {
    /// Its filter matched this message.
    Caught {
        /// The worker that caught it.
        worker: usize,
        /// The message as received.
        inc: Incoming,
        /// True when the real message is held for the session.
        held: bool,
    },
    /// Its filter failed (does not compile, or raised an error on a message).
    Failed(String),
    /// The held message was routed without the session asking: `deadline`
    /// (the hub's safety net) or `CANCEL` (its sender cancelled it).
    Released(&'static str),
}

/// A filter waiting for its message.
struct Waiting {
    id: u64,
    filter: Arc<str>,
    hold: bool,
    replies: bool,
    deadline: Duration,
    events: mpsc::UnboundedSender<Event>,
}

/// The held message.
struct Held {
    id: u64,
    worker: usize,
    /// Its transaction key (RFC 3261 §17.2.3): retransmissions match it.
    key: String,
    inc: Incoming,
    deadline: Instant,
    events: mpsc::UnboundedSender<Event>,
}

#[derive(Default)]
struct State {
    waiting: Vec<Waiting>,
    held: Option<Held>,
}

/// The filters REPL sessions wait on and the message one of them holds
/// (one per proxy, in [`Shared::attach`]).
#[derive(Default)]
pub struct AttachHub {
    /// Something is waiting or held: the workers look at each message.
    active: AtomicBool,
    state: Mutex<State>,
    releasers: std::sync::OnceLock<Vec<Releaser>>,
    next_id: AtomicU64,
}

/// How a session attaches.
#[derive(Clone, Debug)]
pub struct AttachOpts {
    /// The Lua expression over `msg`.
    pub filter: String,
    /// Hold the real message until released.
    pub hold: bool,
    /// How long a held message waits at most.
    pub deadline: Duration,
    /// Evaluate the filter on replies too (requests only by default).
    pub replies: bool,
}

impl AttachHub {
    /// Sets how held messages get back to their workers (the live server
    /// calls this once at start).
    pub fn set_releasers(&self, r: Vec<Releaser>) {
        let _ = self.releasers.set(r);
    }

    fn refresh(&self, st: &State) {
        self.active.store(!st.waiting.is_empty() || st.held.is_some(), Ordering::Release);
    }

    /// Registers a filter; the events go to `events`. Err when another
    /// session holds (or waits to hold) a message and this one wants to
    /// hold too.
    pub fn attach(&self, opts: &AttachOpts, events: mpsc::UnboundedSender<Event>) -> Result<u64, String> {
        if self.releasers.get().is_none() {
            return Err("this proxy cannot hold or route messages for a REPL (no workers)".into());
        }
        let mut st = self.state.lock();
        if opts.hold && (st.held.is_some() || st.waiting.iter().any(|w| w.hold)) {
            return Err("another REPL session holds (or waits to hold) a message; only one message is held at a time".into());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        st.waiting.push(Waiting {
            id,
            filter: opts.filter.as_str().into(),
            hold: opts.hold,
            replies: opts.replies,
            deadline: opts.deadline,
            events,
        });
        self.refresh(&st);
        Ok(id)
    }

    /// Takes session `id`'s held message out of the shared state (and, when
    /// `forget` is set, its filter too), under one lock.
    fn take_held(&self, id: u64, forget: bool) -> Option<Held> {
        let mut st = self.state.lock();
        if forget {
            st.waiting.retain(|w| w.id != id);
        }
        let h = if st.held.as_ref().is_some_and(|h| h.id == id) {
            st.held.take()
        } else {
            None
        };
        self.refresh(&st);
        h
    }

    /// Forgets session `id`: its filter, and releases its held message.
    pub fn detach(&self, id: u64) {
        let held = self.take_held(id, true);
        if let Some(h) = held {
            self.route(h);
        }
    }

    /// Releases session `id`'s held message: the worker that caught it
    /// routes it through the real script. Returns the worker, or None
    /// when the session holds nothing (any more).
    pub fn release(&self, id: u64) -> Option<usize> {
        let held = self.take_held(id, false)?;
        let w = held.worker;
        self.route(held);
        Some(w)
    }

    /// Releases session `id`'s held message on the proxy's own initiative
    /// and tells the session why.
    fn release_because(&self, id: u64, why: &'static str) {
        let held = self.take_held(id, false);
        if let Some(h) = held {
            let _ = h.events.send(Event::Released(why));
            self.route(h);
        }
    }

    /// A CANCEL of the held INVITE (transaction `key`) arrived: the INVITE
    /// goes first, then the CANCEL, both by the INVITE's worker. Returns
    /// the CANCEL when nothing (any more) is held for it.
    fn release_with_cancel(&self, key: &str, cancel: Incoming) -> Option<Incoming> {
        let held = {
            let mut st = self.state.lock();
            let h = if st.held.as_ref().is_some_and(|h| h.key == key) {
                st.held.take()
            } else {
                None
            };
            self.refresh(&st);
            h
        };
        let Some(h) = held else {
            return Some(cancel);
        };
        tracing::info!(worker = h.worker, "repl: CANCEL of the held INVITE: both routed");
        let _ = h.events.send(Event::Released("CANCEL"));
        self.route_then(h, Some(cancel));
        None
    }

    /// Releases whatever is held (the proxy is stopping).
    pub fn release_all(&self) {
        let held = {
            let mut st = self.state.lock();
            let h = st.held.take();
            self.refresh(&st);
            h
        };
        if let Some(h) = held {
            self.route(h);
        }
    }

    /// True while session `id` holds a message.
    pub fn holds(&self, id: u64) -> bool {
        self.state.lock().held.as_ref().is_some_and(|h| h.id == id)
    }

    fn route(&self, h: Held) {
        self.route_then(h, None);
    }

    /// Routes the held message, then `next` (in that order: one worker's
    /// channel keeps it).
    fn route_then(&self, h: Held, next: Option<Incoming>) {
        let release = self.releasers.get().and_then(|r| r.get(h.worker));
        let ok = release.is_some_and(|release| release(h.inc) && next.is_none_or(release));
        if ok {
            tracing::info!(worker = h.worker, "repl: held message released to the script");
        } else {
            tracing::error!(worker = h.worker, "repl: the worker of a held message is gone; the message is lost");
        }
    }

    fn fail(&self, id: u64, why: String) {
        let mut st = self.state.lock();
        if let Some(i) = st.waiting.iter().position(|w| w.id == id) {
            let w = st.waiting.remove(i);
            let _ = w.events.send(Event::Failed(why));
        }
        self.refresh(&st);
    }
}

thread_local! {
    /// Filters compiled in this worker's VM, by session id.
    static COMPILED: RefCell<Vec<(u64, Function)>> = const { RefCell::new(Vec::new()) };
}

/// The worker's hook, called for every message before it is routed:
/// returns the message to route now, or None when it was held for a REPL
/// session or is a retransmission of the held one. Costs one atomic load
/// while no session is attached.
pub fn intercept(w: &Worker, now: Instant, inc: Incoming) -> Option<Incoming> {
    let hub = &w.env.shared.attach;
    if !hub.active.load(Ordering::Acquire) {
        return Some(inc);
    }
    let (filters, held_key, overdue) = {
        let st = hub.state.lock();
        let f: Vec<(u64, Arc<str>, bool)> = st.waiting.iter().map(|x| (x.id, x.filter.clone(), x.replies)).collect();
        let key = st.held.as_ref().map(|h| h.key.clone());
        let overdue = st.held.as_ref().filter(|h| now >= h.deadline).map(|h| h.id);
        (f, key, overdue)
    };
    // A safety net under the session's own deadline timer.
    if let Some(id) = overdue {
        hub.release_because(id, "deadline");
    }
    COMPILED.with(|c| c.borrow_mut().retain(|(id, _)| filters.iter().any(|f| f.0 == *id)));
    let Ok(mut msg) = SipMessage::parse(inc.data.clone()) else {
        return Some(inc);
    };
    let request = msg.is_request();
    if let (Some(key), Some(m)) = (&held_key, msg.method()) {
        if *key == crate::tm::server_key(&msg, m) {
            tracing::debug!("repl: retransmission of the held message absorbed");
            return None;
        }
        // RFC 3261 §9.1: a CANCEL carries its INVITE's branch and CSeq number.
        if *m == crate::sip::Method::Cancel && *key == crate::tm::server_key(&msg, &crate::sip::Method::Invite) {
            return hub.release_with_cancel(key, inc);
        }
    }
    if filters.is_empty() {
        return Some(inc);
    }
    w.env.set_now(now);
    let kind = if request {
        crate::worker::stamp_received(&mut msg, inc.src);
        RouteKind::Request
    } else {
        RouteKind::OnReply
    };
    let ctx = MsgCtx::new(msg, inc.src, inc.local, inc.proto, inc.conn, kind);
    for (id, filter, replies) in filters {
        if !request && !replies {
            continue;
        }
        let f = match compiled(w, id, &filter) {
            Ok(f) => f,
            Err(e) => {
                hub.fail(id, format!("the filter does not compile in worker {}: {e}", w.env.worker));
                continue;
            }
        };
        let (_, r) = w.script.call_with_ctx(&f, (), ctx.clone());
        let matched = match r {
            Ok(v) => !matches!(v.into_iter().next(), None | Some(Value::Nil) | Some(Value::Boolean(false))),
            Err(e) => {
                hub.fail(
                    id,
                    format!(
                        "the filter failed in worker {} on a {} from {}: {}{}",
                        w.env.worker,
                        describe_first_line(&inc.data),
                        inc.src,
                        first_part(&clean_lua_error(&e)),
                        filter_hint()
                    ),
                );
                continue;
            }
        };
        if !matched {
            continue;
        }
        let mut st = hub.state.lock();
        let Some(i) = st.waiting.iter().position(|x| x.id == id) else {
            // Another worker caught its message first, or it went away.
            continue;
        };
        let waiting = st.waiting.remove(i);
        let hold = waiting.hold && st.held.is_none() && request;
        let sent = waiting
            .events
            .send(Event::Caught {
                worker: w.env.worker,
                inc: inc.clone(),
                held: hold,
            })
            .is_ok();
        if sent && hold {
            let key = ctx.msg.method().map(|m| crate::tm::server_key(&ctx.msg, m)).unwrap_or_default();
            // The session's connection releases it at its deadline; this
            // one, a little later, is the safety net checked here.
            let deadline = now + waiting.deadline + Duration::from_secs(1);
            st.held = Some(Held {
                id,
                worker: w.env.worker,
                key,
                inc,
                deadline,
                events: waiting.events.clone(),
            });
            hub.refresh(&st);
            tracing::info!(worker = w.env.worker, "repl: message held for a REPL session");
            return None;
        }
        hub.refresh(&st);
    }
    Some(inc)
}

fn describe_first_line(data: &[u8]) -> String {
    let line = data.split(|&b| b == b'\r' || b == b'\n').next().unwrap_or(b"");
    let line = String::from_utf8_lossy(&line[..line.len().min(80)]).into_owned();
    format!("'{line}'")
}

/// An error without its stack traceback (a filter is one expression).
fn first_part(e: &str) -> &str {
    e.split("\nstack traceback:").next().unwrap_or(e).trim_end()
}

fn filter_hint() -> String {
    format!(
        "\n(a filter sees msg, Lua's {} and the test primitives {})",
        FILTER_LUA.join(", "),
        FILTER_PRIMITIVES.join(", ")
    )
}

/// The filter of session `id`, compiled once in this worker's VM with the
/// restricted environment.
fn compiled(w: &Worker, id: u64, filter: &str) -> Result<Function, String> {
    if let Some(f) = COMPILED.with(|c| c.borrow().iter().find(|(i, _)| *i == id).map(|(_, f)| f.clone())) {
        return Ok(f);
    }
    let lua = &w.script.lua;
    let g = lua.globals();
    let env = lua.create_table().map_err(|e| e.to_string())?;
    for name in FILTER_LUA.iter().chain(FILTER_PRIMITIVES).chain(["msg"].iter()) {
        let v: Value = g.raw_get(*name).map_err(|e| e.to_string())?;
        env.raw_set(*name, v).map_err(|e| e.to_string())?;
    }
    let f = lua
        .load(format!("return {filter}"))
        .set_name("=filter")
        .set_environment(env)
        .into_function()
        .map_err(|e| clean_lua_error(&e))?;
    COMPILED.with(|c| c.borrow_mut().push((id, f.clone())));
    Ok(f)
}

/// Checks that a filter compiles (as an expression), before it is sent to
/// the workers: a typo is reported at once, not at the first message.
pub fn check_filter(filter: &str) -> Result<(), String> {
    if filter.trim().is_empty() {
        return Err("the filter is empty (e.g. --match 'msg.method == \"INVITE\"')".into());
    }
    let lua = mlua::Lua::new();
    lua.load(format!("return {filter}"))
        .set_name("=filter")
        .into_function()
        .map(|_| ())
        .map_err(|e| clean_lua_error(&e))
}

// ------------------------------------------------------------------ the connection

fn line(v: serde_json::Value) -> String {
    v.to_string() + "\n"
}

fn opts_of(req: &Map<String, serde_json::Value>) -> Result<AttachOpts, String> {
    let filter = req
        .get("filter")
        .and_then(|v| v.as_str())
        .ok_or("attach: no \"filter\" (a Lua expression over msg)")?
        .to_string();
    let flag = |k: &str| req.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
    let deadline = match req.get("deadline") {
        None | Some(serde_json::Value::Null) => DEFAULT_DEADLINE,
        Some(v) => {
            let s = v.as_f64().ok_or("attach: \"deadline\" must be a number of seconds")?;
            if !(1.0..=MAX_DEADLINE.as_secs_f64()).contains(&s) {
                return Err(format!(
                    "attach: the hold deadline must be 1 to {} s (a sender gives a transaction up after 32 s, RFC 3261 Timer B/F)",
                    MAX_DEADLINE.as_secs()
                ));
            }
            Duration::from_secs_f64(s)
        }
    };
    Ok(AttachOpts {
        filter,
        hold: flag("hold"),
        deadline,
        replies: flag("replies"),
    })
}

/// One line from the client, None at the end of the stream.
async fn next_line<R: AsyncBufRead + Unpin>(rd: &mut R) -> Option<Result<serde_json::Value, String>> {
    let mut buf = Vec::new();
    match crate::ctl::read_line(rd, &mut buf, crate::ctl::MAX_LINE).await {
        Ok(crate::ctl::Read::Complete) => Some(serde_json::from_slice(&buf).map_err(|e| format!("not JSON: {e}"))),
        Ok(crate::ctl::Read::TooLong) => Some(Err(format!("line longer than {} bytes", crate::ctl::MAX_LINE))),
        Ok(crate::ctl::Read::Eof) | Err(_) => None,
    }
}

async fn send<W: AsyncWrite + Unpin>(wr: &mut W, v: serde_json::Value) -> bool {
    wr.write_all(line(v).as_bytes()).await.is_ok()
}

/// Serves an attach request on a control connection until the client
/// goes away (ctl.rs hands the connection over after its first line).
pub async fn serve<R, W>(control: Arc<Control>, req: Map<String, serde_json::Value>, mut rd: R, mut wr: W)
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let opts = match opts_of(&req).and_then(|o| check_filter(&o.filter).map_err(|e| format!("bad filter: {e}")).map(|()| o)) {
        Ok(o) => o,
        Err(e) => {
            send(&mut wr, json!({ "ok": false, "error": e })).await;
            return;
        }
    };
    let hub = &control.shared.attach;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let id = match hub.attach(&opts, tx) {
        Ok(id) => id,
        Err(e) => {
            send(&mut wr, json!({ "ok": false, "error": e })).await;
            return;
        }
    };
    tracing::info!(id, filter = %opts.filter, hold = opts.hold, "repl: a session attached");
    // Whatever ends this connection forgets the filter and releases a held message.
    let _detach = Detach { hub, id };
    if !send(
        &mut wr,
        json!({ "event": "waiting", "id": id, "filter": opts.filter, "hold": opts.hold }),
    )
    .await
    {
        return;
    }
    let caught = loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Some(Event::Caught { worker, inc, held }) => break (worker, inc, held),
                Some(Event::Failed(e)) => {
                    send(&mut wr, json!({ "event": "error", "error": e })).await;
                    return;
                }
                Some(Event::Released(_)) => {}
                None => return,
            },
            l = next_line(&mut rd) => match l {
                None => {
                    tracing::info!(id, "repl: the session went away before its filter matched");
                    return;
                }
                Some(Ok(v)) if v.get("cmd").and_then(|c| c.as_str()) == Some("detach") => return,
                Some(_) => {
                    if !send(&mut wr, json!({ "reply": Reply::err("no message caught yet".into()) })).await {
                        return;
                    }
                }
            },
        }
    };
    let (worker, inc, held) = caught;
    let deadline = tokio::time::Instant::now() + opts.deadline;
    let session = SessionThread::start(control.shared.clone(), control.script.clone(), &inc);
    let started = match session {
        Ok((t, ready)) => match ready.await {
            Ok(Ok((banner, routes))) => Some((t, banner, routes)),
            Ok(Err(e)) => {
                send(
                    &mut wr,
                    json!({ "event": "error", "error": format!("the REPL session could not start: {e}") }),
                )
                .await;
                None
            }
            Err(_) => None,
        },
        Err(e) => {
            send(&mut wr, json!({ "event": "error", "error": e })).await;
            None
        }
    };
    let Some((thread, banner, routes)) = started else {
        return;
    };
    let src = format!("{}:{}", inc.proto.lower(), inc.src);
    let caught = json!({
        "event": "caught", "held": held, "deadline_ms": if held { opts.deadline.as_millis() as u64 } else { 0 },
        "worker": worker, "src": src, "banner": banner, "routes": routes,
        "message": String::from_utf8_lossy(&inc.data),
    });
    if !send(&mut wr, caught).await {
        return;
    }
    // The hold deadline runs from the moment the client heard of the
    // message, also while the session evaluates a line.
    let timer = tokio::time::sleep_until(deadline);
    tokio::pin!(timer);
    let mut released = !held;
    let mut pending: Option<tokio::sync::oneshot::Receiver<Reply>> = None;
    loop {
        tokio::select! {
            ev = rx.recv(), if !released => match ev {
                Some(Event::Released(why)) => {
                    released = true;
                    if !send(&mut wr, json!({ "event": "released", "why": why })).await {
                        return;
                    }
                }
                Some(_) => {}
                // The hub dropped the held message (the proxy is stopping): nothing more comes.
                None => released = true,
            },
            _ = &mut timer, if !released => {
                released = true;
                if hub.release(id).is_some() {
                    tracing::info!(id, "repl: hold deadline reached, message released");
                    if !send(&mut wr, json!({ "event": "released", "why": "deadline" })).await {
                        return;
                    }
                }
            }
            r = async {
                match pending.as_mut() {
                    Some(rx) => rx.await,
                    None => std::future::pending().await,
                }
            }, if pending.is_some() => {
                pending = None;
                let reply = r.unwrap_or_else(|_| Reply::err("the session ended".into()));
                if !send(&mut wr, json!({ "reply": reply })).await {
                    return;
                }
            }
            l = next_line(&mut rd), if pending.is_none() => {
                let Some(l) = l else { return };
                let v = match l {
                    Ok(v) => v,
                    Err(e) => {
                        if !send(&mut wr, json!({ "reply": Reply::err(e) })).await {
                            return;
                        }
                        continue;
                    }
                };
                let reply = match (v.get("cmd").and_then(|c| c.as_str()), v.get("line").and_then(|c| c.as_str())) {
                    (Some("detach"), _) => return,
                    (Some("release"), _) => match hub.release(id) {
                        Some(w) => {
                            released = true;
                            Reply::ok(format!("released: the original message is routed through the real script (worker {w})"))
                        }
                        None if held => Reply::err("already released".into()),
                        None => Reply::err("nothing is held: this session has a copy (attach with --hold to hold the message)".into()),
                    },
                    (_, Some(text)) => match thread.eval(text.to_string()) {
                        Some(rx) => {
                            pending = Some(rx);
                            continue;
                        }
                        None => Reply::err("the session ended".into()),
                    },
                    _ => Reply::err("expected {\"line\": …} or {\"cmd\": \"release\"}".into()),
                };
                if !send(&mut wr, json!({ "reply": reply })).await {
                    return;
                }
            }
        }
    }
}

/// Forgets a session when its connection ends, however it ends.
struct Detach<'a> {
    hub: &'a AttachHub,
    id: u64,
}

impl Drop for Detach<'_> {
    fn drop(&mut self) {
        self.hub.detach(self.id);
        tracing::info!(id = self.id, "repl: session detached");
    }
}

type Job = (String, tokio::sync::oneshot::Sender<Reply>);
type Ready = tokio::sync::oneshot::Receiver<Result<(String, Vec<String>), String>>;

/// The thread a session's Lua VM lives on (a VM is not `Send`): it takes
/// lines and answers with replies, and ends when the connection drops it.
struct SessionThread {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl SessionThread {
    fn start(live: Arc<Shared>, script: PathBuf, inc: &Incoming) -> Result<(SessionThread, Ready), String> {
        let (jobs, rx) = std::sync::mpsc::channel::<Job>();
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        let msg = Message {
            data: inc.data.clone(),
            src: inc.src,
            proto: inc.proto,
            local: Some(inc.local),
            conn: inc.conn,
        };
        std::thread::Builder::new()
            .name("serlua-repl".into())
            .spawn(move || {
                let mut s = match Session::live(live, &script, msg) {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok((s.banner(), s.route_names())));
                while let Ok((line, reply)) = rx.recv() {
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.eval(&line)))
                        .unwrap_or_else(|_| Reply::err("internal error while evaluating (see the proxy's log)".into()));
                    let _ = reply.send(r);
                }
            })
            .map_err(|e| format!("cannot start the REPL session thread: {e}"))?;
        Ok((SessionThread { jobs }, ready))
    }

    fn eval(&self, line: String) -> Option<tokio::sync::oneshot::Receiver<Reply>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.jobs.send((line, tx)).ok()?;
        Some(rx)
    }
}
