//! One REPL session: a message, the script loaded over a sandbox copy of
//! the core, and what each evaluation did. The offline REPL runs it in
//! the `serlua repl` process; `serlua repl --attach` runs it inside the
//! proxy ([`crate::repl::attach`]). Both hand it input lines and print the
//! [`Reply`] it gives back.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use mlua::{Function, Lua, Value};
use serde::{Deserialize, Serialize};

use crate::core::{AvpName, AvpValue, Env, MsgCtx, Shared};
use crate::db::BindingRow;
use crate::relay::RelayHandle;
use crate::repl::dryrelay::DryRelay;
use crate::repl::luaval::{self, EvalError};
use crate::script::export::RouteKind;
use crate::script::{Script, clean_lua_error};
use crate::sip::SipMessage;
use crate::transport::{ConnId, Proto, SocketId, Transmit};
use crate::usrloc::PendingOp;

/// The message a session starts from, as it arrived.
#[derive(Clone, Debug)]
pub struct Message {
    /// The bytes as received.
    pub data: Bytes,
    /// Where it came from.
    pub src: SocketAddr,
    /// Its transport.
    pub proto: Proto,
    /// The listen socket it arrived on (offline: the first one of its
    /// transport and address family).
    pub local: Option<SocketId>,
    /// Its TCP connection, for a message caught live.
    pub conn: Option<ConnId>,
}

/// What a session answers to one input line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// The text to print (values, printed output, the report, a command's
    /// output, an error with its traceback).
    pub text: String,
    /// False when the line raised an error or was not understood.
    pub ok: bool,
    /// The Lua chunk is not finished (an open `function`, `do`, `if` …):
    /// the caller should read another line and send both.
    pub incomplete: bool,
}

impl Reply {
    /// A reply to a line that went well.
    pub fn ok(text: String) -> Reply {
        Reply {
            text,
            ok: true,
            incomplete: false,
        }
    }

    /// A reply to a line that failed.
    pub fn err(text: String) -> Reply {
        Reply {
            text,
            ok: false,
            incomplete: false,
        }
    }
}

/// The REPL commands a session runs itself (the front end adds `:quit`
/// and, when attached, `:release`).
pub const COMMANDS: &[(&str, &str)] = &[
    (":help", "this text"),
    (":routes", "the routes the script defines"),
    (":show", "the message as it would go out now"),
    (":diff", "what changed in the message (unified diff against the original)"),
    (":flags", "the message flags that are set"),
    (":avps", "the AVPs of the message"),
    (":sent", "every message the dry run would have sent so far, in full"),
    (
        ":reset",
        "back to the original message and a fresh sandbox (the script is reloaded from its file)",
    ),
];

/// Where a session's sandbox comes from.
enum Origin {
    /// `serlua repl SCRIPT`: an instance of the script's own.
    Offline,
    /// `serlua repl --attach`: a copy of a running proxy's state.
    Live(Arc<Shared>),
}

/// The sandbox: the script in a VM of its own over a dry-run copy of the
/// core, and the message being evaluated against.
struct Sandbox {
    env: Rc<Env>,
    script: Script,
    relay: Arc<DryRelay>,
    /// The message context between evaluations (it lives in the Env
    /// while one runs).
    ctx: Option<MsgCtx>,
    /// `xpcall(f, handler)`, compiled once: the traceback is taken before
    /// the stack unwinds.
    call: Function,
    handler: Function,
    /// What `print` wrote during the current evaluation.
    printed: Rc<RefCell<String>>,
    /// Everything sent so far (for `:sent`).
    sent: Vec<Transmit>,
    /// Bindings saved in this session, by ruid (to name them when removed).
    saved: std::collections::HashMap<String, String>,
}

/// A REPL session.
pub struct Session {
    origin: Origin,
    path: PathBuf,
    msg: Message,
    sb: Sandbox,
}

/// The chunk name of the REPL's own caller (tracebacks stop there).
const CALLER_CHUNK: &str = "serlua-repl";

impl Session {
    /// An offline session: `path` loaded in an instance of its own (empty
    /// in-memory tables, no sockets, nothing sent), with `msg` as the
    /// message just received.
    pub fn offline(path: &Path, msg: Message) -> Result<Session, String> {
        let sb = Sandbox::offline(path, &msg)?;
        Ok(Session {
            origin: Origin::Offline,
            path: path.to_path_buf(),
            msg,
            sb,
        })
    }

    /// A session over a running proxy's state (`live`), with the script at
    /// `path` loaded afresh and `msg` the message a worker caught.
    pub fn live(live: Arc<Shared>, path: &Path, msg: Message) -> Result<Session, String> {
        let sb = Sandbox::over(&live, path, &msg)?;
        Ok(Session {
            origin: Origin::Live(live),
            path: path.to_path_buf(),
            msg,
            sb,
        })
    }

    /// The lines printed when the session starts: the script, the message
    /// and its source, the routes.
    pub fn banner(&self) -> String {
        let mut s = String::new();
        let how = match self.origin {
            Origin::Offline => "offline",
            Origin::Live(_) => "attached to the running proxy",
        };
        let _ = writeln!(
            s,
            "serlua repl: {} ({how}; dry run: nothing is sent, nothing is written)",
            self.path.display()
        );
        if let Some(ctx) = &self.sb.ctx {
            let first = String::from_utf8_lossy(&self.msg.data)
                .lines()
                .next()
                .unwrap_or("")
                .trim_end()
                .to_string();
            let _ = writeln!(
                s,
                "message: {first}  (from {}:{}, {} bytes, Call-ID {})",
                self.msg.proto.lower(),
                self.msg.src,
                self.msg.data.len(),
                ctx.msg.call_id()
            );
        }
        let _ = writeln!(s, "routes: {}", self.route_names().join(" "));
        let _ = write!(
            s,
            "Lua in the script's environment (route.main(), msg.ruri, nat_uac_test(19)); :help for commands"
        );
        s
    }

    /// Every route the script defines, as the script writes it
    /// (`route.main`, `route[1]`, `onreply_route[1]` …).
    pub fn route_names(&self) -> Vec<String> {
        let mut out = Vec::new();
        for kind in [RouteKind::Request, RouteKind::OnReply, RouteKind::Failure, RouteKind::Branch] {
            for key in self.sb.script.route_keys(kind) {
                out.push(format!("{}{key}", kind.table()));
            }
        }
        out
    }

    /// Evaluates one input: a `:command`, or Lua (an expression prints its
    /// values, a statement runs), then reports what the sandbox did.
    pub fn eval(&mut self, input: &str) -> Reply {
        let line = input.trim();
        if line.is_empty() {
            return Reply::ok(String::new());
        }
        if line.starts_with(':') {
            return self.command(line);
        }
        self.sb.eval_lua(input)
    }

    fn command(&mut self, line: &str) -> Reply {
        let cmd = line.split_whitespace().next().unwrap_or("");
        match cmd {
            ":help" => Reply::ok(help_text(&[])),
            ":routes" => Reply::ok(self.route_names().join("\n")),
            ":show" => match &self.sb.ctx {
                Some(ctx) => Reply::ok(text_of(&ctx.msg.to_bytes())),
                None => Reply::err("no message".into()),
            },
            ":diff" => match &self.sb.ctx {
                Some(ctx) => {
                    let old = text_of(&self.msg.data);
                    let new = text_of(&ctx.msg.to_bytes());
                    if old == new {
                        Reply::ok("(no changes)".into())
                    } else {
                        let diff = similar::TextDiff::from_lines(&old, &new);
                        Reply::ok(
                            diff.unified_diff()
                                .context_radius(3)
                                .header("original", "now")
                                .to_string()
                                .trim_end()
                                .to_string(),
                        )
                    }
                }
                None => Reply::err("no message".into()),
            },
            ":flags" => match &self.sb.ctx {
                Some(ctx) if ctx.flags == 0 => Reply::ok("no flags set".into()),
                Some(ctx) => Reply::ok(format!("flags set: {}", flag_list(ctx.flags))),
                None => Reply::err("no message".into()),
            },
            ":avps" => match &self.sb.ctx {
                Some(ctx) if ctx.avps.0.is_empty() => Reply::ok("no AVPs".into()),
                Some(ctx) => Reply::ok(
                    ctx.avps
                        .0
                        .iter()
                        .map(|(n, v)| format!("{} = {}", avp_name(n), avp_value(v)))
                        .collect::<Vec<_>>()
                        .join("\n"),
                ),
                None => Reply::err("no message".into()),
            },
            ":sent" => {
                if self.sb.sent.is_empty() {
                    return Reply::ok("nothing sent".into());
                }
                let mut s = String::new();
                for t in &self.sb.sent {
                    let _ = writeln!(s, "-- {}", describe_transmit(t, None));
                    s.push_str(&text_of(&t.data));
                    if !s.ends_with('\n') {
                        s.push('\n');
                    }
                }
                Reply::ok(s.trim_end().to_string())
            }
            ":reset" => {
                let built = match &self.origin {
                    Origin::Offline => Sandbox::offline(&self.path, &self.msg),
                    Origin::Live(live) => Sandbox::over(live, &self.path, &self.msg),
                };
                match built {
                    Ok(sb) => {
                        self.sb = sb;
                        Reply::ok("reset: the original message, a fresh sandbox, the script reloaded".into())
                    }
                    Err(e) => Reply::err(format!("reset failed, the session stays as it was: {e}")),
                }
            }
            other => Reply::err(format!(
                "unknown command {other} (commands: {}, :quit)",
                COMMANDS.iter().map(|c| c.0).collect::<Vec<_>>().join(", ")
            )),
        }
    }
}

/// The `:help` text; `extra` are the front end's own commands.
pub fn help_text(extra: &[(&str, &str)]) -> String {
    let mut s = String::from(
        "Type Lua: it runs in the script's environment against the message, like a line of a route.\n\
         An expression prints its value (msg.ruri, msg:header(\"Contact\"), nat_uac_test(19));\n\
         routes are callable (route.main(), route[2]()). Every primitive runs for real in a sandbox:\n\
         nothing is sent and nothing is written; lines starting with => report what would have happened.\n\n",
    );
    for (c, what) in COMMANDS.iter().chain(extra.iter()) {
        let _ = writeln!(s, "  {c:<10} {what}");
    }
    s.trim_end().to_string()
}

impl Sandbox {
    fn offline(path: &Path, msg: &Message) -> Result<Sandbox, String> {
        let (cfg, _) = crate::app::script_config(path, None, &crate::app::Overrides::default(), Instant::now())?;
        let base = Shared::new(cfg);
        Sandbox::over(&base, path, msg)
    }

    /// A sandbox over a copy of `base`, with the script at `path`.
    fn over(base: &Shared, path: &Path, msg: &Message) -> Result<Sandbox, String> {
        let live_relay = base.relay.get().and_then(|r| r.as_ref().ok()).map(|h| h.relay.clone());
        let relay = Arc::new(DryRelay::new(&base.cfg.relay, &base.sockets, live_relay));
        let shared = Arc::new(base.dry_copy(RelayHandle {
            relay: relay.clone(),
            engine: None,
        }));
        let now = Instant::now();
        let env = Rc::new(Env::new(shared, 0, now));
        let (script, _) = Script::load(path, env.clone()).map_err(|e| e.0)?;
        let printed = Rc::new(RefCell::new(String::new()));
        let lua = &script.lua;
        let out = printed.clone();
        let print = lua
            .create_function(move |_, args: mlua::Variadic<Value>| {
                let parts: Vec<String> = args.iter().map(luaval::show).collect();
                let mut o = out.borrow_mut();
                o.push_str(&parts.join("\t"));
                o.push('\n');
                Ok(())
            })
            .map_err(|e| e.to_string())?;
        lua.globals().set("print", print).map_err(|e| e.to_string())?;
        let handler = lua
            .create_function(|lua, e: Value| {
                Ok(match luaval::error_message(&e) {
                    Err(EvalError::Exit) => Value::Boolean(false),
                    Err(EvalError::Error(m)) | Ok(m) => {
                        let tb = luaval::traceback(lua, CALLER_CHUNK);
                        Value::String(lua.create_string(format!("{m}\n{tb}"))?)
                    }
                })
            })
            .map_err(|e| e.to_string())?;
        let call = lua
            .load("local f, h = ...; return xpcall(f, h)")
            .set_name(format!("={CALLER_CHUNK}"))
            .into_function()
            .map_err(|e| e.to_string())?;
        let ctx = received_ctx(msg, &env.shared)?;
        Ok(Sandbox {
            env,
            script,
            relay,
            ctx: Some(ctx),
            call,
            handler,
            printed,
            sent: Vec::new(),
            saved: Default::default(),
        })
    }

    fn lua(&self) -> &Lua {
        &self.script.lua
    }

    fn eval_lua(&mut self, code: &str) -> Reply {
        // An expression first (its values are printed), then a statement,
        // as the standalone `lua` interpreter does.
        let f = match self.lua().load(format!("return {code}")).set_name("=repl").into_function() {
            Ok(f) => f,
            Err(_) => match self.lua().load(code).set_name("=repl").into_function() {
                Ok(f) => f,
                Err(mlua::Error::SyntaxError {
                    incomplete_input: true, ..
                }) => {
                    return Reply {
                        text: String::new(),
                        ok: true,
                        incomplete: true,
                    };
                }
                Err(e) => return Reply::err(clean_lua_error(&e)),
            },
        };
        let Some(ctx) = self.ctx.take() else {
            return Reply::err("no message".into());
        };
        // The sandbox's clock is the real one (binding expiry, nonces).
        self.env.set_now(Instant::now());
        let before = Snapshot::of(&ctx, &self.env);
        let (ctx, result) = self.script.call_with_ctx(&self.call, (f, self.handler.clone()), ctx);
        let mut text = std::mem::take(&mut *self.printed.borrow_mut());
        let mut ok = true;
        let mut exited = false;
        match result {
            Ok(vals) => {
                let vals: Vec<Value> = vals.into_iter().collect();
                match vals.first() {
                    Some(Value::Boolean(true)) => {
                        if vals.len() > 1 {
                            text.push_str(&luaval::show_all(&vals[1..]));
                            text.push('\n');
                        }
                    }
                    Some(Value::Boolean(false)) if matches!(vals.get(1), Some(Value::Boolean(false))) => exited = true,
                    _ => {
                        ok = false;
                        let msg = vals.get(1).map(luaval::show).unwrap_or_else(|| "error".into());
                        text.push_str(&msg);
                        text.push('\n');
                    }
                }
            }
            Err(e) => {
                ok = false;
                text.push_str(&clean_lua_error(&e));
                text.push('\n');
            }
        }
        for line in self.report(&before, &ctx, exited) {
            let _ = writeln!(text, "=> {line}");
        }
        self.ctx = Some(ctx);
        Reply {
            text: text.trim_end().to_string(),
            ok,
            incomplete: false,
        }
    }

    /// What the evaluation did, one line each.
    fn report(&mut self, before: &Snapshot, ctx: &MsgCtx, exited: bool) -> Vec<String> {
        let mut out = Vec::new();
        for t in self.env.take_transmits() {
            out.push(describe_transmit(&t, Some(ctx)));
            self.sent.push(t);
        }
        let store = &self.env.shared.store;
        for (table, ul) in [("location", &store.location), ("aliases", &store.aliases)] {
            for (ruid, op) in ul.take_pending() {
                match op {
                    PendingOp::Upsert(row) => {
                        let text = binding_text(&row);
                        out.push(format!(
                            "binding saved in {table}: {text}, expires in {} s{} (dry run: the live table and the database are not written)",
                            (crate::usrloc::from_datetime(row.expires) - self.env.unix_now()).max(0),
                            row.received.as_deref().map(|r| format!(", received {r}")).unwrap_or_default()
                        ));
                        self.saved.insert(ruid.to_string(), text);
                    }
                    PendingOp::Delete => {
                        let text = self.saved.get(&*ruid).cloned().unwrap_or_else(|| format!("ruid {ruid}"));
                        out.push(format!(
                            "binding removed from {table}: {text} (dry run: only in the sandbox's copy)"
                        ));
                    }
                }
            }
        }
        out.extend(self.relay.take_events());
        if ctx.msg.body() != before.body.as_ref() && looks_like_sdp(ctx.msg.body()) {
            let lines: Vec<String> = String::from_utf8_lossy(ctx.msg.body())
                .lines()
                .filter(|l| l.starts_with("c=") || l.starts_with("m="))
                .map(|l| l.trim_end().to_string())
                .collect();
            out.push(format!("SDP rewritten: {}", lines.join(" | ")));
        }
        let changed = changed_headers(&before.wire, &ctx.msg.to_bytes());
        if !changed.is_empty() {
            out.push(format!("headers changed: {} (:diff shows how)", changed.join(", ")));
        }
        let ruri = ctx.msg.ruri().map(|u| u.to_string());
        if ruri != before.ruri {
            out.push(format!(
                "Request-URI: {} -> {}",
                before.ruri.as_deref().unwrap_or("(none)"),
                ruri.as_deref().unwrap_or("(none)")
            ));
        }
        let dst = ctx.dst_uri.as_ref().map(|u| u.to_string());
        if dst != before.dst_uri {
            out.push(format!("destination URI: {}", dst.as_deref().unwrap_or("(none)")));
        }
        let set = ctx.flags & !before.flags;
        let reset = before.flags & !ctx.flags;
        if set != 0 {
            out.push(format!("flags set: {}", flag_list(set)));
        }
        if reset != 0 {
            out.push(format!("flags reset: {}", flag_list(reset)));
        }
        let mut old = before.avps.clone();
        for (n, v) in &ctx.avps.0 {
            match old.iter().position(|x| x.0 == *n && x.1 == *v) {
                Some(i) => {
                    old.remove(i);
                }
                None => out.push(format!("AVP set: {} = {}", avp_name(n), avp_value(v))),
            }
        }
        for (n, v) in old {
            out.push(format!("AVP removed: {} = {}", avp_name(&n), avp_value(&v)));
        }
        let txns = self.env.shared.tm.len();
        if txns > before.txns {
            out.push("transaction created in the sandbox (its retransmission and timeout timers do not run in a dry run)".into());
        }
        if ctx.dropped && !before.dropped {
            out.push("message dropped (drop())".into());
        } else if exited {
            out.push("routing ended (exit())".into());
        }
        out
    }
}

/// The context as the worker builds it for a message that arrived: the
/// top Via of a request gets `received`/`rport` (RFC 3261 §18.2.1, RFC
/// 3581 §4) before any route runs.
fn received_ctx(msg: &Message, shared: &Shared) -> Result<MsgCtx, String> {
    let mut m = SipMessage::parse(msg.data.clone()).map_err(|e| format!("the message does not parse: {} {}", e.status, e.reason))?;
    let kind = if m.is_request() {
        crate::worker::stamp_received(&mut m, msg.src);
        RouteKind::Request
    } else {
        RouteKind::OnReply
    };
    let local = msg.local.unwrap_or_else(|| {
        shared
            .sockets
            .iter()
            .find(|s| s.proto == msg.proto && s.addr.is_ipv4() == msg.src.is_ipv4())
            .map(|s| s.id)
            .unwrap_or(0)
    });
    Ok(MsgCtx::new(m, msg.src, local, msg.proto, msg.conn, kind))
}

/// What an evaluation is compared against.
struct Snapshot {
    flags: u32,
    avps: Vec<(AvpName, AvpValue)>,
    ruri: Option<String>,
    dst_uri: Option<String>,
    body: Bytes,
    /// The whole message as it would go out.
    wire: Bytes,
    dropped: bool,
    txns: usize,
}

impl Snapshot {
    fn of(ctx: &MsgCtx, env: &Env) -> Snapshot {
        Snapshot {
            flags: ctx.flags,
            avps: ctx.avps.0.clone(),
            ruri: ctx.msg.ruri().map(|u| u.to_string()),
            dst_uri: ctx.dst_uri.as_ref().map(|u| u.to_string()),
            body: Bytes::copy_from_slice(ctx.msg.body()),
            wire: ctx.msg.to_bytes(),
            dropped: ctx.dropped,
            txns: env.shared.tm.len(),
        }
    }
}

/// One captured send: `reply 401 Unauthorized -> udp:127.0.0.1:5061`,
/// `relay INVITE sip:bob@10.0.0.5 -> udp:10.0.0.5:5060`.
pub fn describe_transmit(t: &Transmit, ctx: Option<&MsgCtx>) -> String {
    let to = format!("{}:{}", t.proto.lower(), t.dst);
    match SipMessage::parse(t.data.clone()) {
        Ok(m) => match m.status() {
            Some(code) => format!("reply {code} {} -> {to}", m.reason().unwrap_or("")),
            None => {
                let method = m.method().map(|x| x.as_str().to_string()).unwrap_or_default();
                let ruri = m.ruri().map(|u| u.to_string()).unwrap_or_default();
                let relayed = ctx.is_some_and(|c| c.msg.call_id() == m.call_id() && c.msg.method() == m.method());
                let verb = if relayed { "relay" } else { "send" };
                format!("{verb} {method} {ruri} -> {to}")
            }
        },
        Err(_) => format!("{} bytes -> {to}", t.data.len()),
    }
}

/// The names of the header fields that differ between two versions of a
/// message (added, removed or rewritten), in the order they appear; the
/// start line and the body are reported on their own.
fn changed_headers(old: &[u8], new: &[u8]) -> Vec<String> {
    fn fields(m: &[u8]) -> Vec<String> {
        let text = String::from_utf8_lossy(m);
        let head = text.split("\r\n\r\n").next().unwrap_or("");
        head.split("\r\n").skip(1).map(str::to_string).collect()
    }
    let (a, b) = (fields(old), fields(new));
    let mut names: Vec<String> = Vec::new();
    for line in b.iter().filter(|l| !a.contains(l)).chain(a.iter().filter(|l| !b.contains(l))) {
        let name = line.split(':').next().unwrap_or("").trim().to_string();
        if !name.is_empty() && !names.iter().any(|n| n.eq_ignore_ascii_case(&name)) {
            names.push(name);
        }
    }
    names
}

fn binding_text(row: &BindingRow) -> String {
    let aor = match &row.domain {
        Some(d) => format!("{}@{d}", row.username),
        None => row.username.clone(),
    };
    format!("{aor} <{}>", row.contact)
}

fn looks_like_sdp(body: &[u8]) -> bool {
    body.starts_with(b"v=")
}

fn flag_list(flags: u32) -> String {
    (0..32)
        .filter(|i| flags & (1 << i) != 0)
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

fn avp_name(n: &AvpName) -> String {
    match n {
        AvpName::Int(i) => format!("i:{i}"),
        AvpName::Str(s) => s.clone(),
    }
}

fn avp_value(v: &AvpValue) -> String {
    match v {
        AvpValue::Int(i) => i.to_string(),
        AvpValue::Str(s) => format!("{s:?}"),
    }
}

/// A SIP message as text for the terminal: CRLF shown as line ends.
fn text_of(data: &[u8]) -> String {
    String::from_utf8_lossy(data).replace("\r\n", "\n")
}

/// A message from a text file (`--msg FILE`): LF line ends become CRLF
/// (RFC 3261 §7: SIP lines end in CRLF), a missing blank line after the
/// headers is added, and the Content-Length is fixed to the body as
/// written (editors add or drop a final newline).
pub fn message_from_text(text: &str) -> Bytes {
    let norm = text.replace("\r\n", "\n");
    let (head, body) = match norm.split_once("\n\n") {
        Some((h, b)) => (h.to_string(), b.to_string()),
        None => (norm.trim_end_matches('\n').to_string(), String::new()),
    };
    let body = body.replace('\n', "\r\n");
    let mut out = String::new();
    let mut had_len = false;
    for line in head.lines() {
        let name = line.split(':').next().unwrap_or("").trim();
        if name.eq_ignore_ascii_case("Content-Length") || name == "l" {
            if !had_len {
                let _ = write!(out, "{name}: {}\r\n", body.len());
            }
            had_len = true;
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    if !had_len && !body.is_empty() {
        let _ = write!(out, "Content-Length: {}\r\n", body.len());
    }
    out.push_str("\r\n");
    out.push_str(&body);
    Bytes::from(out)
}

/// The source to give a message read from a file when `--src` is not
/// given: its top Via's sent-by when that is an IP address (the message
/// then looks as if it came from where it says), else 127.0.0.1:5060.
pub fn default_source(data: &[u8]) -> SocketAddr {
    SipMessage::parse(Bytes::copy_from_slice(data))
        .ok()
        .and_then(|m| {
            let v = m.vias().first()?;
            Some(SocketAddr::new(v.host.ip?, v.port.unwrap_or(5060)))
        })
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 5060)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_messages_get_crlf_and_a_true_content_length() {
        let m = message_from_text("OPTIONS sip:a@b SIP/2.0\nContent-Length: 99\n\nv=0\n");
        assert_eq!(&m[..], b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 5\r\n\r\nv=0\r\n");
        let m = message_from_text("OPTIONS sip:a@b SIP/2.0\nVia: x\n");
        assert_eq!(&m[..], b"OPTIONS sip:a@b SIP/2.0\r\nVia: x\r\n\r\n");
    }
}
