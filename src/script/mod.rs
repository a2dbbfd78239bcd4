//! The Lua route engine: loading a script into a Lua VM, reading its
//! ser.cfg-style header (`listen`, `children`, `debug`, `max_len`, `alias`,
//! `modparam`), the `msg` object, and running routes on a message.
//!
//! Each worker has its own VM and one `msg` object that every message is
//! swapped into (DESIGN.md: a fresh Lua object per message costs more than
//! the whole route).

pub mod args;
pub mod check;
pub mod export;
pub mod msgobj;

use std::cell::{Cell, RefCell};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use mlua::{Function, Lua, Table, Value};

use crate::config::{ModParams, ParamValue};
use crate::core::{Env, MsgCtx, lua_err};
use export::{Export, RouteKey, RouteKind};

/// `exit()` and `drop()` end the script the way ser.cfg's `exit`/`drop` do:
/// they unwind every route, and the engine treats them as a normal end.
#[derive(Debug, thiserror::Error)]
#[error("exit")]
pub struct ScriptExit;

/// A script that could not be loaded: the message carries file:line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LoadError(pub String);

/// How a route run ended.
#[derive(Debug)]
pub enum RunOutcome {
    /// Returned normally, or by `exit()`/`drop()`.
    Done,
    /// A Lua error: the message with file:line and traceback.
    Error(String),
}

/// The script header: what `ser.cfg` sets before its routes.
#[derive(Debug, Default)]
pub struct Header {
    /// `listen`: one string or a list.
    pub listen: Vec<String>,
    /// `port`: default port for listen entries without one.
    pub port: Option<u16>,
    /// `children`: worker threads.
    pub children: Option<usize>,
    /// `debug`: SER log level.
    pub debug: Option<i64>,
    /// `max_len`: UDP size limit.
    pub max_len: Option<usize>,
    /// `alias`: names served besides the listen addresses.
    pub aliases: Vec<String>,
    /// The script's `modparam` calls.
    pub params: ModParams,
    /// `db_url`: the database (SER's modules each had one; serlua uses one).
    pub db_url: Option<String>,
    /// `table_refresh`: seconds between reloads of subscribers, domains, trusted.
    pub table_refresh: Option<u64>,
    /// `ctl_socket`: path of the control socket.
    pub ctl_socket: Option<String>,
    /// `http_listen`: address of the metrics and status page listener.
    pub http_listen: Option<String>,
    /// `shutdown_timeout`: seconds SIGTERM waits for transactions to finish.
    pub shutdown_timeout: Option<u64>,
    /// `fork`: run in the background (ser.cfg's `fork=yes`).
    pub fork: Option<bool>,
    /// `log_stderror`: log to stderr (true) or to syslog (false).
    pub log_stderror: Option<bool>,
    /// `pid_file`: where a forked proxy writes its process id.
    pub pid_file: Option<String>,
}

/// Every primitive of every module: the static checker and the runtime
/// use the same tables.
pub fn all_exports() -> Vec<Export> {
    let mut v = Vec::new();
    for table in [
        crate::core_fns::EXPORTS,
        crate::sl::EXPORTS,
        crate::tm::EXPORTS,
        crate::rr::EXPORTS,
        crate::maxfwd::EXPORTS,
        crate::textops::EXPORTS,
        crate::uri::EXPORTS,
        crate::avpops::EXPORTS,
        crate::auth::EXPORTS,
        crate::uri_db::EXPORTS,
        crate::registrar::EXPORTS,
        crate::domain::EXPORTS,
        crate::permissions::EXPORTS,
        crate::rtpproxy::EXPORTS,
        crate::nathelper::EXPORTS,
        crate::mediaproxy::EXPORTS,
    ] {
        v.extend_from_slice(table);
    }
    v
}

/// Registers one primitive as a Lua global. `f` runs with the message
/// being routed, after the route-kind check of its export entry.
pub(crate) fn register<A, R, F>(lua: &Lua, env: &Rc<Env>, exports: &'static [Export], name: &str, f: F) -> mlua::Result<()>
where
    A: mlua::FromLuaMulti,
    R: mlua::IntoLuaMulti,
    F: Fn(&Lua, &Env, &mut MsgCtx, A) -> mlua::Result<R> + 'static,
{
    let export = exports
        .iter()
        .find(|e| e.name == name)
        .ok_or_else(|| lua_err(format!("internal error: {name} has no export entry")))?;
    let env2 = env.clone();
    let func = lua.create_function(move |lua, args: A| env2.with_ctx(export, |ctx| f(lua, &env2, ctx, args)))?;
    lua.globals().set(name, func)
}

/// Prefixes `msg` with the script position of the Lua code that called
/// the current Rust function (level 1), as `file:line: `.
pub fn at_caller(lua: &Lua, msg: &str) -> String {
    lua.inspect_stack(1, |d| {
        let src = d.source();
        let file = src.short_src.as_deref().unwrap_or("?").to_string();
        match d.current_line() {
            Some(l) => format!("{file}:{l}: {msg}"),
            None => format!("{file}: {msg}"),
        }
    })
    .unwrap_or_else(|| msg.to_string())
}

/// A loaded script: its Lua VM and its routes.
pub struct Script {
    /// The worker's Lua VM.
    pub lua: Lua,
    /// The environment the primitives act on.
    pub env: Rc<Env>,
    /// The script file.
    pub path: PathBuf,
    /// The script text as loaded.
    pub source: String,
    main: Function,
    tables: [Table; 4],
    /// When the running route started (real time), for the runaway guard.
    started: Rc<Cell<Option<Instant>>>,
}

/// A route (or the script's top level at load) that runs longer than this
/// is stopped with an error: an endless loop must not take a worker away.
pub const ROUTE_TIME_LIMIT: Duration = Duration::from_secs(2);

const KINDS: [RouteKind; 4] = [RouteKind::Request, RouteKind::OnReply, RouteKind::Failure, RouteKind::Branch];

fn kind_index(kind: RouteKind) -> usize {
    match kind {
        RouteKind::Request => 0,
        RouteKind::OnReply => 1,
        RouteKind::Failure => 2,
        RouteKind::Branch => 3,
    }
}

impl Script {
    /// Loads the script at `path` into a fresh VM bound to `env`.
    pub fn load(path: &Path, env: Rc<Env>) -> Result<(Script, Header), LoadError> {
        let source = std::fs::read_to_string(path).map_err(|e| LoadError(format!("{}: cannot read script: {e}", path.display())))?;
        Script::load_source(path, source, env)
    }

    /// Loads script text (named `path` in messages) into a fresh VM.
    pub fn load_source(path: &Path, source: String, env: Rc<Env>) -> Result<(Script, Header), LoadError> {
        let lua = Lua::new();
        let name = path.display().to_string();
        let started = Rc::new(Cell::new(Some(Instant::now())));
        let guard = started.clone();
        // Checked every few million instructions: cheap, and a runaway route
        // is stopped within a fraction of a second past the limit.
        lua.set_hook(
            mlua::HookTriggers::new().every_nth_instruction(4_000_000),
            move |_, _| match guard.get() {
                Some(t) if t.elapsed() > ROUTE_TIME_LIMIT * 5 || (t.elapsed() > ROUTE_TIME_LIMIT && guard_in_route()) => Err(lua_err(
                    format!("stopped after running for more than {} s (an endless loop?)", t.elapsed().as_secs()),
                )),
                _ => Ok(mlua::VmState::Continue),
            },
        )
        .map_err(|e| LoadError(clean_lua_error(&e)))?;
        let le = |e: mlua::Error| LoadError(clean_lua_error(&e));
        let params = Rc::new(RefCell::new(ModParams::default()));
        let tables = install_globals(&lua, &env, params.clone()).map_err(le)?;
        lua.load(source.as_str()).set_name(format!("@{name}")).exec().map_err(le)?;
        let main = match tables[0].raw_get::<Value>("main").map_err(le)? {
            Value::Function(f) => f,
            Value::Nil => {
                return Err(LoadError(format!(
                    "{name}: route.main is not defined (the script needs `function route.main() … end`)"
                )));
            }
            other => {
                return Err(LoadError(format!(
                    "{name}: route.main must be a function, not a {}",
                    other.type_name()
                )));
            }
        };
        let header = read_header(&lua, &name, params.borrow().clone())?;
        started.set(None);
        Ok((
            Script {
                lua,
                env,
                path: path.to_path_buf(),
                source,
                main,
                tables,
                started,
            },
            header,
        ))
    }

    /// Runs the static check (unknown primitives, arity, route kinds,
    /// missing routes); the diagnostics carry file:line.
    pub fn static_check(&self) -> Vec<check::Diagnostic> {
        let exports = all_exports();
        let globals = self.lua.globals();
        let is_global = |name: &str| !matches!(globals.raw_get::<Value>(name), Ok(Value::Nil) | Err(_));
        let routes = |kind: RouteKind, key: &RouteKey| self.has_route(kind, key);
        let file = self.path.display().to_string();
        let input = check::CheckInput {
            file: &file,
            source: &self.source,
            exports: &exports,
            is_global: &is_global,
            routes: &routes,
        };
        check::check(&input)
    }

    /// True when the route exists in its table.
    pub fn has_route(&self, kind: RouteKind, key: &RouteKey) -> bool {
        self.route_fn(kind, key).is_some()
    }

    fn route_fn(&self, kind: RouteKind, key: &RouteKey) -> Option<Function> {
        let t = &self.tables[kind_index(kind)];
        let v = match key {
            RouteKey::Num(n) => t.raw_get::<Value>(*n),
            RouteKey::Name(s) => t.raw_get::<Value>(s.as_str()),
        };
        match v {
            Ok(Value::Function(f)) => Some(f),
            _ => None,
        }
    }

    /// Runs `route.main` on a request.
    pub fn run_main(&self, ctx: MsgCtx) -> (MsgCtx, RunOutcome) {
        let f = self.main.clone();
        self.run_fn(&f, ctx, || "route.main".to_string())
    }

    /// Runs the route `kind`/`key` (an onreply or failure route armed by
    /// t_on_reply/t_on_failure). A route that vanished is an error.
    pub fn run(&self, kind: RouteKind, key: &RouteKey, mut ctx: MsgCtx) -> (MsgCtx, RunOutcome) {
        ctx.kind = kind;
        match self.route_fn(kind, key) {
            Some(f) => self.run_fn(&f, ctx, || format!("{}{key}", kind.table())),
            None => (ctx, RunOutcome::Error(format!("{}{key} is not defined", kind.table()))),
        }
    }

    fn run_fn(&self, f: &Function, ctx: MsgCtx, name: impl FnOnce() -> String) -> (MsgCtx, RunOutcome) {
        self.env.set_ctx(ctx);
        let t0 = Instant::now();
        self.started.set(Some(t0));
        IN_ROUTE.with(|c| c.set(true));
        let r = f.call::<()>(());
        IN_ROUTE.with(|c| c.set(false));
        self.started.set(None);
        self.env.shared.stats.route_time.observe(t0.elapsed());
        let ctx = match self.env.take_ctx() {
            Some(c) => c,
            // with_ctx never removes the context; this is unreachable in practice.
            None => unreachable_ctx(),
        };
        let outcome = match r {
            Ok(()) => RunOutcome::Done,
            Err(e) if e.downcast_ref::<ScriptExit>().is_some() => RunOutcome::Done,
            Err(e) => RunOutcome::Error(clean_lua_error(&e)),
        };
        self.env.record_route(|| crate::core::RouteRun {
            route: name(),
            first_line: summary_line(&ctx.msg),
            call_id: ctx.msg.call_id().to_string(),
            flags: ctx.flags,
            avps: ctx.avps.clone(),
            ruri: ctx.msg.ruri().map(|u| u.to_string()),
            dst_uri: ctx.dst_uri.as_ref().map(|u| u.to_string()),
            replied: ctx.replied,
            relayed: ctx.relayed,
            error: match &outcome {
                RunOutcome::Error(e) => Some(e.clone()),
                RunOutcome::Done => None,
            },
        });
        (ctx, outcome)
    }
}

/// `METHOD Request-URI` or `STATUS Reason`: the message in one line, for
/// route-run records.
fn summary_line(m: &crate::sip::SipMessage) -> String {
    match (m.method(), m.ruri(), m.status()) {
        (Some(method), Some(uri), _) => format!("{} {uri}", method.as_str()),
        (_, _, Some(status)) => format!("{status} {}", m.reason().unwrap_or("")),
        _ => String::new(),
    }
}

thread_local! {
    static IN_ROUTE: Cell<bool> = const { Cell::new(false) };
}

/// Routes get [`ROUTE_TIME_LIMIT`]; a script's top level at load gets five times that.
fn guard_in_route() -> bool {
    IN_ROUTE.with(|c| c.get())
}

#[cold]
fn unreachable_ctx() -> MsgCtx {
    panic!("route context vanished during a route run")
}

/// Formats a Lua error for the admin: the `file:line: message` first, then
/// the traceback, without mlua's wrapper text.
pub fn clean_lua_error(e: &mlua::Error) -> String {
    match e {
        mlua::Error::SyntaxError { message, .. } => message.trim().to_string(),
        mlua::Error::RuntimeError(m) => m.trim().to_string(),
        other => {
            let s = other.to_string();
            s.trim().trim_start_matches("runtime error: ").to_string()
        }
    }
}

/// Creates the route tables, `modparam`, the `msg` object and every
/// primitive in a fresh VM.
fn install_globals(lua: &Lua, env: &Rc<Env>, params: Rc<RefCell<ModParams>>) -> mlua::Result<[Table; 4]> {
    let g = lua.globals();
    let mut tables = Vec::new();
    for kind in KINDS {
        let t = lua.create_table()?;
        g.set(kind.table(), t.clone())?;
        tables.push(t);
    }
    // route(1) / route("name") call a route like ser.cfg's route(1);
    // reading a route that does not exist is an error, not a silent nil.
    lua.load(
        r#"
        local route = route
        setmetatable(route, {
          __call = function(t, k)
            local f = rawget(t, k)
            if f == nil and type(k) == "string" then f = rawget(t, tonumber(k) or k) end
            if f == nil then error("route[" .. tostring(k) .. "] is not defined", 2) end
            return f()
          end,
          __index = function(t, k)
            error("route[" .. tostring(k) .. "] is not defined", 2)
          end,
        })
        "#,
    )
    .set_name("=serlua")
    .exec()?;

    let p = params.clone();
    let modparam = lua.create_function(move |lua, (module, name, value): (String, String, Value)| {
        let v = match value {
            Value::Integer(i) => ParamValue::Int(i),
            Value::Number(n) if n.fract() == 0.0 => ParamValue::Int(n as i64),
            Value::String(s) => ParamValue::Str(s.to_str()?.to_string()),
            Value::Boolean(b) => ParamValue::Int(b as i64),
            other => {
                return Err(lua_err(at_caller(
                    lua,
                    &format!("modparam value must be a number or a string, not {}", other.type_name()),
                )));
            }
        };
        p.borrow_mut()
            .set(&module, &name, v)
            .map_err(|e| lua_err(at_caller(lua, &e.to_string())))
    })?;
    g.set("modparam", modparam)?;

    let print = lua.create_function(|_, args: mlua::Variadic<Value>| {
        let parts: Vec<String> = args.iter().map(|v| v.to_string().unwrap_or_else(|_| format!("{v:?}"))).collect();
        tracing::info!(target: "script", "{}", parts.join("\t"));
        Ok(())
    })?;
    g.set("print", print)?;

    msgobj::install(lua, env)?;
    crate::core_fns::register(lua, env)?;
    crate::sl::register(lua, env)?;
    crate::tm::register(lua, env)?;
    crate::rr::register(lua, env)?;
    crate::maxfwd::register(lua, env)?;
    crate::textops::register(lua, env)?;
    crate::uri::register(lua, env)?;
    crate::avpops::register(lua, env)?;
    crate::auth::register(lua, env)?;
    crate::uri_db::register(lua, env)?;
    crate::registrar::register(lua, env)?;
    crate::domain::register(lua, env)?;
    crate::permissions::register(lua, env)?;
    crate::rtpproxy::register(lua, env)?;
    crate::nathelper::register(lua, env)?;
    crate::mediaproxy::register(lua, env)?;
    let max_len = env.shared.cfg.max_len;
    g.set("max_len", max_len)?;
    let arr: [Table; 4] = [tables[0].clone(), tables[1].clone(), tables[2].clone(), tables[3].clone()];
    Ok(arr)
}

fn read_header(lua: &Lua, name: &str, params: ModParams) -> Result<Header, LoadError> {
    let g = lua.globals();
    let bad = |what: &str, why: &str| LoadError(format!("{name}: global '{what}' {why}"));
    let strings = |key: &str| -> Result<Vec<String>, LoadError> {
        match g.raw_get::<Value>(key) {
            Ok(Value::Nil) => Ok(Vec::new()),
            Ok(Value::String(s)) => Ok(vec![s.to_string_lossy()]),
            Ok(Value::Table(t)) => {
                let mut v = Vec::new();
                for item in t.sequence_values::<Value>() {
                    match item {
                        Ok(Value::String(s)) => v.push(s.to_string_lossy()),
                        _ => return Err(bad(key, "must be a string or a list of strings")),
                    }
                }
                Ok(v)
            }
            _ => Err(bad(key, "must be a string or a list of strings")),
        }
    };
    let int = |key: &str| -> Result<Option<i64>, LoadError> {
        match g.raw_get::<Value>(key) {
            Ok(Value::Nil) => Ok(None),
            Ok(Value::Integer(i)) => Ok(Some(i)),
            Ok(Value::Number(n)) if n.fract() == 0.0 => Ok(Some(n as i64)),
            Ok(Value::String(s)) => s
                .to_string_lossy()
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| bad(key, "must be an integer")),
            _ => Err(bad(key, "must be an integer")),
        }
    };
    // ser.cfg writes `fork=yes`; Lua scripts write `fork = true` or "yes".
    let boolean = |key: &str| -> Result<Option<bool>, LoadError> {
        match g.raw_get::<Value>(key) {
            Ok(Value::Nil) => Ok(None),
            Ok(Value::Boolean(b)) => Ok(Some(b)),
            Ok(Value::Integer(i)) => Ok(Some(i != 0)),
            Ok(Value::String(s)) => match s.to_string_lossy().to_ascii_lowercase().as_str() {
                "yes" | "true" | "on" | "1" => Ok(Some(true)),
                "no" | "false" | "off" | "0" => Ok(Some(false)),
                _ => Err(bad(key, "must be true/false (or yes/no)")),
            },
            _ => Err(bad(key, "must be true/false (or yes/no)")),
        }
    };
    let port = match int("port")? {
        None => None,
        Some(p) if (1..=65535).contains(&p) => Some(p as u16),
        Some(_) => return Err(bad("port", "must be 1..65535")),
    };
    let children = match int("children")? {
        None => None,
        Some(c) if (1..=256).contains(&c) => Some(c as usize),
        Some(_) => return Err(bad("children", "must be 1..256")),
    };
    let max_len = match int("max_len")? {
        None => None,
        Some(m) if (512..=65535).contains(&m) => Some(m as usize),
        Some(_) => return Err(bad("max_len", "must be 512..65535")),
    };
    Ok(Header {
        listen: strings("listen")?,
        port,
        children,
        debug: int("debug")?,
        max_len,
        aliases: strings("alias")?,
        params,
        db_url: strings("db_url")?.into_iter().next(),
        table_refresh: match int("table_refresh")? {
            None => None,
            Some(t) if (0..=86400).contains(&t) => Some(t as u64),
            Some(_) => return Err(bad("table_refresh", "must be 0..86400 seconds")),
        },
        ctl_socket: strings("ctl_socket")?.into_iter().next(),
        http_listen: strings("http_listen")?.into_iter().next(),
        shutdown_timeout: match int("shutdown_timeout")? {
            None => None,
            Some(t) if (0..=3600).contains(&t) => Some(t as u64),
            Some(_) => return Err(bad("shutdown_timeout", "must be 0..3600 seconds")),
        },
        fork: boolean("fork")?,
        log_stderror: boolean("log_stderror")?,
        pid_file: strings("pid_file")?.into_iter().next(),
    })
}

/// The value of a Lua argument for log messages.
pub fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.to_string_lossy(),
        other => other.to_string().unwrap_or_else(|_| other.type_name().to_string()),
    }
}
