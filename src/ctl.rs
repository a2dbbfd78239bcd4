//! The control socket and its client, `serlua ctl` (SER's FIFO and
//! `serctl`, Kamailio's `kamcmd`/`kamctl` over its RPC socket).
//!
//! A running proxy listens on a Unix socket (`ctl_socket` in the script or
//! `serlua run --ctl PATH`; by default `serlua.ctl` in the working
//! directory), mode 0600: only the proxy's user may talk to it. The server
//! ([`spawn`], [`start`]) answers every request through the control plane
//! facade ([`crate::control::Control`]), on its own thread with its own
//! single-threaded tokio runtime, many connections at once; each command
//! runs on the blocking pool, so a `reload` that waits for every worker
//! does not stop the socket from answering `stats`.
//!
//! # Protocol
//!
//! One JSON object per line, in each direction; a connection may carry any
//! number of requests, answered in order. Two request shapes:
//!
//! * plain: `{"cmd": "ul show", "args": ["alice@example.com"]}` →
//!   `{"ok": true, "result": [...]}` or `{"ok": false, "error": "..."}`.
//!   `args` may be left out; the arguments may also follow the command in
//!   `cmd` (`{"cmd": "ul show alice@example.com"}`); an `id`, when given,
//!   is echoed.
//! * JSON-RPC 2.0: `{"jsonrpc": "2.0", "method": "ul.show", "params":
//!   ["alice@example.com"], "id": 1}` → `{"jsonrpc": "2.0", "result": [...],
//!   "id": 1}` or `{"jsonrpc": "2.0", "error": {"code": -32000, "message":
//!   "..."}, "id": 1}`. Codes: -32700 parse error, -32600 invalid request,
//!   -32601 method not found, -32602 invalid params (wrong argument count),
//!   -32603 internal error, -32000 the command failed (a broken script on
//!   `reload`, an unknown AOR on `ul.rm`, …). A request without `id` is a
//!   notification (run, not answered); an array is a batch.
//!
//! Command names ([`COMMANDS`]): `stats`, `reload`, `reload-tables`,
//! `ul show [AOR]`, `ul rm AOR`, `sessions`, `tm list`, `pike`, `pike rm
//! IP`, `log-level LEVEL`, `version`, `errors`.
//!
//! `{"cmd": "attach", "filter": …}` (plain form only) turns the connection
//! into a REPL session's (`serlua repl --attach`): see
//! [`crate::repl::attach`] for that conversation. Words may be joined by a space, `.`, `-` or `_`
//! (`ul.show`, `reload_tables` and `log.level` all work).
//!
//! A line that is not JSON gets a parse error — in JSON-RPC form when the
//! line mentions `"jsonrpc"`, in the plain form otherwise — and the
//! connection stays usable. A line longer than [`MAX_LINE`] gets an error
//! and the connection is closed. At most [`MAX_CONNECTIONS`] connections
//! are served at once (one more gets an error line and is closed); an idle
//! connection is closed after [`IDLE_TIMEOUT`].

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use crate::control::Control;

/// Where the proxy listens and `serlua ctl` connects when no path is
/// given: `serlua.ctl` in the working directory.
pub const DEFAULT_PATH: &str = "serlua.ctl";

/// The longest request line the server reads (64 KiB).
pub const MAX_LINE: usize = 64 * 1024;

/// How many connections the server serves at once.
pub const MAX_CONNECTIONS: usize = 32;

/// A connection that sends nothing for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// A client that does not read its answer for this long is dropped.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The commands: name, minimum and maximum argument count, usage.
pub const COMMANDS: &[(&str, usize, usize, &str)] = &[
    ("stats", 0, 0, "stats"),
    ("reload", 0, 0, "reload"),
    ("reload-tables", 0, 0, "reload-tables"),
    ("ul show", 0, 1, "ul show [AOR]"),
    ("ul rm", 1, 1, "ul rm AOR"),
    ("sessions", 0, 0, "sessions"),
    ("tm list", 0, 0, "tm list"),
    ("log-level", 1, 1, "log-level LEVEL"),
    ("version", 0, 0, "version"),
    ("errors", 0, 0, "errors"),
    ("pike", 0, 0, "pike"),
    ("pike list", 0, 0, "pike list"),
    ("pike rm", 1, 1, "pike rm IP"),
];

/// JSON-RPC 2.0 error codes.
mod code {
    pub const PARSE: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL: i64 = -32603;
    pub const COMMAND_FAILED: i64 = -32000;
}

// ------------------------------------------------------------------ commands

/// Why a request names no runnable command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reject {
    /// No such command.
    Unknown(String),
    /// The command exists; the argument count is wrong.
    Arity(String),
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reject::Unknown(s) | Reject::Arity(s) => f.write_str(s),
        }
    }
}

/// A command name with its words joined by single spaces, lower case
/// (`ul.show`, `UL_SHOW`, `ul  show` → `ul show`; `reload-tables` →
/// `reload tables`).
fn norm(s: &str) -> String {
    s.split(|c: char| c.is_whitespace() || c == '.' || c == '_' || c == '-')
        .filter(|w| !w.is_empty())
        .map(|w| w.to_ascii_lowercase())
        .collect::<Vec<_>>()
        .join(" ")
}

fn command_list() -> String {
    COMMANDS.iter().map(|c| c.3).collect::<Vec<_>>().join(", ")
}

/// Resolves a requested command name (and any arguments written after it
/// in the name) to one of [`COMMANDS`], checking the argument count.
pub fn resolve(cmd: &str, args: Vec<String>) -> Result<(&'static str, Vec<String>), Reject> {
    let words: Vec<&str> = cmd.split_whitespace().collect();
    // The longest command name that starts the request wins; the words
    // after it are arguments (`ul show alice@example.com`).
    for take in (1..=words.len().min(2)).rev() {
        let name = norm(&words[..take].join(" "));
        if let Some(&(canon, min, max, usage)) = COMMANDS.iter().find(|c| norm(c.0) == name) {
            let mut all: Vec<String> = words[take..].iter().map(|w| w.to_string()).collect();
            all.extend(args);
            if all.len() < min || all.len() > max {
                return Err(Reject::Arity(format!("usage: {usage}")));
            }
            return Ok((canon, all));
        }
    }
    let shown = if cmd.trim().is_empty() { "(empty)" } else { cmd.trim() };
    Err(Reject::Unknown(format!("unknown command '{shown}' ({})", command_list())))
}

// ------------------------------------------------------------------ server

/// What every connection of one server shares.
struct State {
    control: Arc<Control>,
    /// Reloads run one at a time.
    reload_lock: parking_lot::Mutex<()>,
}

/// The identity of the socket file a server created, so that it removes
/// its own file and never a successor's.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct FileId {
    dev: u64,
    ino: u64,
}

fn file_id(path: &Path) -> Option<FileId> {
    std::fs::symlink_metadata(path).ok().map(|m| FileId {
        dev: m.dev(),
        ino: m.ino(),
    })
}

fn io_err(kind: std::io::ErrorKind, msg: String) -> std::io::Error {
    std::io::Error::new(kind, msg)
}

/// Makes `path` free for a new socket: nothing there, or a stale socket
/// (nobody answers: a proxy that died without cleaning up), which is
/// removed. Refuses a live socket and anything that is not a socket.
fn claim(path: &Path) -> std::io::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(e.kind(), format!("control socket {}: {e}", path.display()))),
    };
    if !meta.file_type().is_socket() {
        return Err(io_err(
            std::io::ErrorKind::AlreadyExists,
            format!(
                "control socket {}: the path exists and is not a socket; not replacing it",
                path.display()
            ),
        ));
    }
    match StdUnixStream::connect(path) {
        Ok(_) => Err(io_err(
            std::io::ErrorKind::AddrInUse,
            format!(
                "control socket {}: another serlua is answering there (stop it, or choose another path with --ctl or ctl_socket)",
                path.display()
            ),
        )),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            tracing::info!("control socket {}: removing a stale socket (nobody answers on it)", path.display());
            match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_err(
                    e.kind(),
                    format!("control socket {}: cannot remove the stale socket: {e}", path.display()),
                )),
            }
        }
        Err(e) => Err(io_err(
            e.kind(),
            format!("control socket {}: {e}; not replacing it", path.display()),
        )),
    }
}

static TMP_SEQ: AtomicUsize = AtomicUsize::new(0);

/// Binds the socket at `path` with mode 0600 from its first moment: bound
/// under a temporary name beside it, restricted, then renamed into place.
/// (Falls back to binding in place and restricting at once when the
/// temporary name does not fit a socket address.)
fn bind(path: &Path) -> std::io::Result<(std::os::unix::net::UnixListener, FileId)> {
    claim(path)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "serlua.ctl".into());
    let tmp = path.with_file_name(format!(
        ".{name}.{}.{}",
        std::process::id(),
        TMP_SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let ctx = |e: std::io::Error| io_err(e.kind(), format!("control socket {}: {e}", path.display()));
    let _ = std::fs::remove_file(&tmp);
    let listener = match std::os::unix::net::UnixListener::bind(&tmp) {
        Ok(l) => {
            let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).and_then(|()| std::fs::rename(&tmp, path));
            if let Err(e) = placed {
                let _ = std::fs::remove_file(&tmp);
                return Err(ctx(e));
            }
            l
        }
        Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => {
            let l = std::os::unix::net::UnixListener::bind(path).map_err(ctx)?;
            if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
                let _ = std::fs::remove_file(path);
                return Err(ctx(e));
            }
            l
        }
        Err(e) => return Err(ctx(e)),
    };
    listener.set_nonblocking(true).map_err(ctx)?;
    let id = file_id(path).ok_or_else(|| {
        io_err(
            std::io::ErrorKind::NotFound,
            format!("control socket {}: vanished after bind", path.display()),
        )
    })?;
    Ok((listener, id))
}

/// Removes the control socket file at `path` (what the proxy calls on
/// shutdown): only a socket, never another kind of file; a missing file is
/// fine.
pub fn remove(path: &Path) {
    if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
        let _ = std::fs::remove_file(path);
    }
}

fn remove_if_ours(path: &Path, id: FileId) {
    if file_id(path) == Some(id) {
        remove(path);
    }
}

/// A running control socket server; dropping it (or [`CtlServer::stop`])
/// stops serving and removes its socket file.
pub struct CtlServer {
    path: PathBuf,
    id: FileId,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CtlServer {
    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops serving, waits for the server thread and removes the socket
    /// file.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        remove_if_ours(&self.path, self.id);
    }
}

impl Drop for CtlServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Binds the control socket at `path` (replacing a stale socket, refusing
/// a live one) with mode 0600 and serves `control` on its own thread until
/// the returned guard is dropped; the guard then removes the socket file.
pub fn start(control: Arc<Control>, path: &Path) -> std::io::Result<CtlServer> {
    let (listener, id) = bind(path)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let thread = serve_thread(control, listener, path, Some(rx)).inspect_err(|_| remove_if_ours(path, id))?;
    Ok(CtlServer {
        path: path.to_path_buf(),
        id,
        stop: Some(tx),
        thread: Some(thread),
    })
}

/// Binds the control socket at `path` (replacing a stale socket, refusing
/// a live one — "another serlua is answering there") with mode 0600 and
/// serves `control` on its own thread for the life of the process. Call
/// [`remove`] with the same path on shutdown.
pub fn spawn(control: Arc<Control>, path: &Path) -> std::io::Result<std::thread::JoinHandle<()>> {
    let (listener, id) = bind(path)?;
    serve_thread(control, listener, path, None).inspect_err(|_| remove_if_ours(path, id))
}

fn serve_thread(
    control: Arc<Control>,
    listener: std::os::unix::net::UnixListener,
    path: &Path,
    stop: Option<tokio::sync::oneshot::Receiver<()>>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let shown = path.display().to_string();
    std::thread::Builder::new().name("serlua-ctl".into()).spawn(move || {
        let state = Arc::new(State {
            control,
            reload_lock: parking_lot::Mutex::new(()),
        });
        rt.block_on(async move {
            let listener = match tokio::net::UnixListener::from_std(listener) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!("control socket {shown}: {e}");
                    return;
                }
            };
            tracing::info!("control socket on {shown}");
            let accept = accept_loop(state, listener);
            match stop {
                Some(rx) => {
                    tokio::select! {
                        _ = accept => {}
                        _ = rx => {}
                    }
                }
                None => accept.await,
            }
        });
        // Commands still running on the blocking pool are not waited for
        // long: the proxy is going away.
        rt.shutdown_timeout(Duration::from_secs(1));
    })
}

async fn accept_loop(state: Arc<State>, listener: tokio::net::UnixListener) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        match listener.accept().await {
            Ok((stream, _)) => match slots.clone().try_acquire_owned() {
                Ok(permit) => {
                    let state = state.clone();
                    tokio::spawn(async move {
                        connection(state, stream).await;
                        drop(permit);
                    });
                }
                Err(_) => {
                    tokio::spawn(async move {
                        let mut stream = stream;
                        let line = plain_error(
                            &format!("too many control connections (at most {MAX_CONNECTIONS}); try again"),
                            None,
                        );
                        let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(line.as_bytes())).await;
                    });
                }
            },
            Err(e) => {
                // EMFILE and friends: wait a little rather than spin.
                tracing::warn!("control socket accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

pub(crate) enum Read {
    /// A complete line (or the last bytes before end of stream).
    Complete,
    /// Longer than the limit.
    TooLong,
    /// End of stream, nothing pending.
    Eof,
}

/// Reads one line into `out` (without its `\n`), never holding more than
/// `max` bytes of it.
pub(crate) async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(rd: &mut R, out: &mut Vec<u8>, max: usize) -> std::io::Result<Read> {
    loop {
        let buf = rd.fill_buf().await?;
        if buf.is_empty() {
            return Ok(if out.is_empty() { Read::Eof } else { Read::Complete });
        }
        let (chunk, used, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], i + 1, true),
            None => (buf, buf.len(), false),
        };
        if out.len() + chunk.len() > max {
            let room = max - out.len();
            out.extend_from_slice(&chunk[..room]);
            rd.consume(used);
            return Ok(Read::TooLong);
        }
        out.extend_from_slice(chunk);
        rd.consume(used);
        if done {
            return Ok(Read::Complete);
        }
    }
}

async fn connection(state: Arc<State>, stream: UnixStream) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = tokio::io::BufReader::with_capacity(16 * 1024, rd);
    let mut line = Vec::new();
    loop {
        line.clear();
        let (reply, last) = match tokio::time::timeout(IDLE_TIMEOUT, read_line(&mut rd, &mut line, MAX_LINE)).await {
            Err(_) | Ok(Err(_)) | Ok(Ok(Read::Eof)) => return,
            Ok(Ok(Read::TooLong)) => {
                let msg = format!("request line longer than {MAX_LINE} bytes; closing the connection");
                let reply = if looks_jsonrpc(&line) {
                    rpc_error(code::INVALID_REQUEST, &msg, Value::Null)
                } else {
                    plain_error(&msg, None)
                };
                (Some(reply), true)
            }
            Ok(Ok(Read::Complete)) => {
                if let Some(req) = attach_request(&line) {
                    // The connection becomes a REPL session's (src/repl/attach.rs).
                    crate::repl::attach::serve(state.control.clone(), req, rd, wr).await;
                    return;
                }
                (handle_line(&state, &line).await, false)
            }
        };
        if let Some(reply) = reply {
            match tokio::time::timeout(WRITE_TIMEOUT, wr.write_all(reply.as_bytes())).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
        if last {
            let _ = wr.shutdown().await;
            return;
        }
    }
}

/// The request when it is `{"cmd": "attach", …}` (`serlua repl --attach`):
/// a conversation, not one request and one answer.
fn attach_request(line: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice::<Value>(line) {
        Ok(Value::Object(o)) if o.get("cmd").and_then(Value::as_str).is_some_and(|c| norm(c) == "attach") => Some(o),
        _ => None,
    }
}

/// True when the (possibly broken) request mentions `"jsonrpc"` near its
/// start: its errors are then answered in JSON-RPC form.
fn looks_jsonrpc(line: &[u8]) -> bool {
    let head = &line[..line.len().min(512)];
    head.windows(9).any(|w| w == b"\"jsonrpc\"")
}

fn plain_error(msg: &str, id: Option<Value>) -> String {
    let mut o = json!({ "ok": false, "error": msg });
    if let Some(id) = id {
        o["id"] = id;
    }
    o.to_string() + "\n"
}

fn rpc_error_value(code: i64, msg: &str, id: Value) -> Value {
    json!({ "jsonrpc": "2.0", "error": { "code": code, "message": msg }, "id": id })
}

fn rpc_error(code: i64, msg: &str, id: Value) -> String {
    rpc_error_value(code, msg, id).to_string() + "\n"
}

/// Answers one request line; `None` for a blank line or JSON-RPC
/// notifications only.
async fn handle_line(state: &Arc<State>, line: &[u8]) -> Option<String> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if line.iter().all(|b| b.is_ascii_whitespace()) {
        return None;
    }
    let req: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => {
            let msg = format!("parse error: not a JSON object ({e})");
            return Some(if looks_jsonrpc(line) {
                rpc_error(code::PARSE, &msg, Value::Null)
            } else {
                plain_error(&msg, None)
            });
        }
    };
    match req {
        Value::Array(batch) => {
            if batch.is_empty() {
                return Some(rpc_error(code::INVALID_REQUEST, "invalid request: empty batch", Value::Null));
            }
            let mut out = Vec::new();
            for r in batch {
                if let Some(v) = rpc_request(state, r).await {
                    out.push(v);
                }
            }
            (!out.is_empty()).then(|| Value::Array(out).to_string() + "\n")
        }
        Value::Object(ref o) if o.contains_key("jsonrpc") => rpc_request(state, req).await.map(|v| v.to_string() + "\n"),
        Value::Object(o) => Some(plain_request(state, o).await),
        _ => Some(plain_error(
            "invalid request: expected {\"cmd\": \"…\", \"args\": […]} or a JSON-RPC 2.0 request",
            None,
        )),
    }
}

/// Positional arguments: strings as they are, numbers and booleans as
/// their text.
fn args_of(v: Option<&Value>) -> Result<Vec<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| match x {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                Value::Bool(b) => Ok(b.to_string()),
                _ => Err("arguments must be strings".to_string()),
            })
            .collect(),
        Some(_) => Err("arguments must be an array of strings".to_string()),
    }
}

async fn plain_request(state: &Arc<State>, o: Map<String, Value>) -> String {
    let id = o.get("id").cloned();
    let Some(cmd) = o.get("cmd").and_then(Value::as_str) else {
        return plain_error("invalid request: no \"cmd\" (a string)", id);
    };
    let args = match args_of(o.get("args")) {
        Ok(a) => a,
        Err(e) => return plain_error(&format!("invalid request: {e}"), id),
    };
    let (cmd, args) = match resolve(cmd, args) {
        Ok(r) => r,
        Err(e) => return plain_error(&e.to_string(), id),
    };
    let mut reply = match execute(state, cmd, args).await {
        Ok(Ok(v)) => json!({ "ok": true, "result": v }),
        Ok(Err(e)) | Err(e) => json!({ "ok": false, "error": e }),
    };
    if let Some(id) = id {
        reply["id"] = id;
    }
    reply.to_string() + "\n"
}

/// One JSON-RPC request; `None` for a notification.
async fn rpc_request(state: &Arc<State>, req: Value) -> Option<Value> {
    let Value::Object(o) = req else {
        return Some(rpc_error_value(
            code::INVALID_REQUEST,
            "invalid request: not an object",
            Value::Null,
        ));
    };
    let id = match o.get("id") {
        None => None,
        Some(v @ (Value::Null | Value::String(_) | Value::Number(_))) => Some(v.clone()),
        Some(_) => {
            return Some(rpc_error_value(
                code::INVALID_REQUEST,
                "invalid request: id must be a string, number or null",
                Value::Null,
            ));
        }
    };
    let reply_id = id.clone().unwrap_or(Value::Null);
    if o.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Some(rpc_error_value(
            code::INVALID_REQUEST,
            "invalid request: jsonrpc must be \"2.0\"",
            reply_id,
        ));
    }
    let Some(method) = o.get("method").and_then(Value::as_str) else {
        return Some(rpc_error_value(
            code::INVALID_REQUEST,
            "invalid request: no method (a string)",
            reply_id,
        ));
    };
    let args = match o.get("params") {
        Some(Value::Object(_)) => Err("params must be an array (positional)".to_string()),
        p => args_of(p),
    };
    let outcome = match args {
        Err(e) => Err(rpc_error_value(
            code::INVALID_PARAMS,
            &format!("invalid params: {e}"),
            reply_id.clone(),
        )),
        Ok(args) => match resolve(method, args) {
            Err(Reject::Unknown(m)) => Err(rpc_error_value(
                code::METHOD_NOT_FOUND,
                &format!("method not found: {m}"),
                reply_id.clone(),
            )),
            Err(Reject::Arity(m)) => Err(rpc_error_value(
                code::INVALID_PARAMS,
                &format!("invalid params: {m}"),
                reply_id.clone(),
            )),
            Ok((cmd, args)) => match execute(state, cmd, args).await {
                Ok(Ok(v)) => Ok(json!({ "jsonrpc": "2.0", "result": v, "id": reply_id.clone() })),
                Ok(Err(e)) => Err(rpc_error_value(code::COMMAND_FAILED, &e, reply_id.clone())),
                Err(e) => Err(rpc_error_value(code::INTERNAL, &e, reply_id.clone())),
            },
        },
    };
    id.map(|_| outcome.unwrap_or_else(|e| e))
}

/// Runs a command on the blocking pool. The outer error is an internal
/// failure (a panic in the command), the inner one the command's own.
async fn execute(state: &Arc<State>, cmd: &'static str, args: Vec<String>) -> Result<Result<Value, String>, String> {
    let st = state.clone();
    let r = tokio::task::spawn_blocking(move || {
        let _one_at_a_time = (cmd == "reload").then(|| st.reload_lock.lock());
        st.control.dispatch(cmd, &args)
    })
    .await;
    r.map_err(|e| {
        let why = if e.is_panic() {
            let p = e.into_panic();
            p.downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_default()
        } else {
            e.to_string()
        };
        tracing::error!("control command '{cmd}' failed internally: {why}");
        format!("internal error in '{cmd}': {why}")
    })
}

// ------------------------------------------------------------------ client

/// `serlua ctl`: ask a running proxy over its control socket.
#[derive(clap::Args, Debug, Clone)]
pub struct CtlArgs {
    /// The proxy's control socket (its `ctl_socket`, or `serlua run --ctl PATH`).
    #[arg(long = "ctl", global = true, value_name = "PATH", default_value = DEFAULT_PATH)]
    pub socket: PathBuf,
    /// Print the result as JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    /// What to ask.
    #[command(subcommand)]
    pub cmd: CtlCmd,
}

/// The `serlua ctl` commands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum CtlCmd {
    /// Message, transaction, registration and error counters.
    Stats,
    /// Reload the route script in every worker (as SIGHUP); a broken script keeps the old one running.
    Reload,
    /// Reload subscribers, domains and trusted peers from the database.
    ReloadTables,
    /// The location table in the proxy's memory.
    Ul {
        /// What to do.
        #[command(subcommand)]
        cmd: CtlUlCmd,
    },
    /// Live media relay sessions.
    Sessions,
    /// Live transactions.
    Tm {
        /// What to do.
        #[command(subcommand)]
        cmd: CtlTmCmd,
    },
    /// Change what is logged, at once: error, warn, info, debug, trace, a filter (serlua=debug,warn) or a SER debug level.
    LogLevel {
        /// The level or filter.
        #[arg(allow_negative_numbers = true)]
        level: String,
    },
    /// The program's version, the script it runs, uptime.
    Version,
    /// The recent script errors, newest last.
    Errors,
    /// Sources blocked by pike_check_req() (request rate or failed digest authorizations).
    Pike {
        /// What to do (default: list).
        #[command(subcommand)]
        cmd: Option<CtlPikeCmd>,
    },
}

/// `serlua ctl pike …`
#[derive(clap::Subcommand, Debug, Clone)]
pub enum CtlPikeCmd {
    /// List the blocked sources with their hits and time left.
    List,
    /// Unblock a source at once.
    Rm {
        /// The address (an IPv6 address unblocks its /64).
        ip: String,
    },
}

/// `serlua ctl ul …`
#[derive(clap::Subcommand, Debug, Clone)]
pub enum CtlUlCmd {
    /// Show the registered bindings, all or one AOR's (what lookups use now).
    Show {
        /// user@domain; omit for every binding.
        aor: Option<String>,
    },
    /// Remove every binding of an AOR (and from the database).
    Rm {
        /// user@domain.
        aor: String,
    },
}

/// `serlua ctl tm …`
#[derive(clap::Subcommand, Debug, Clone)]
pub enum CtlTmCmd {
    /// List the live transactions.
    List,
}

impl CtlCmd {
    /// The protocol command name and its arguments.
    pub fn request(&self) -> (&'static str, Vec<String>) {
        match self {
            CtlCmd::Stats => ("stats", vec![]),
            CtlCmd::Reload => ("reload", vec![]),
            CtlCmd::ReloadTables => ("reload-tables", vec![]),
            CtlCmd::Ul {
                cmd: CtlUlCmd::Show { aor },
            } => ("ul show", aor.iter().cloned().collect()),
            CtlCmd::Ul { cmd: CtlUlCmd::Rm { aor } } => ("ul rm", vec![aor.clone()]),
            CtlCmd::Sessions => ("sessions", vec![]),
            CtlCmd::Tm { cmd: CtlTmCmd::List } => ("tm list", vec![]),
            CtlCmd::LogLevel { level } => ("log-level", vec![level.clone()]),
            CtlCmd::Version => ("version", vec![]),
            CtlCmd::Errors => ("errors", vec![]),
            CtlCmd::Pike {
                cmd: None | Some(CtlPikeCmd::List),
            } => ("pike", vec![]),
            CtlCmd::Pike {
                cmd: Some(CtlPikeCmd::Rm { ip }),
            } => ("pike rm", vec![ip.clone()]),
        }
    }
}

/// A control request that did not produce a result.
#[derive(Debug)]
pub enum CallError {
    /// Nobody answers at the path (no proxy running, wrong path).
    NotRunning(PathBuf),
    /// The socket exists but we may not use it, or another I/O failure.
    Io(String),
    /// The proxy answered with an error (the command failed).
    Command(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::NotRunning(p) => write!(
                f,
                "cannot connect to {}: is serlua running? (start it, or pass --ctl PATH)",
                p.display()
            ),
            CallError::Io(s) | CallError::Command(s) => f.write_str(s),
        }
    }
}

/// How long the client waits for an answer: a reload loads the script in
/// every worker first.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

/// Sends one plain request to the control socket at `path` and returns
/// its result.
pub fn call(path: &Path, cmd: &str, args: &[String]) -> Result<Value, CallError> {
    let io = |e: std::io::Error| CallError::Io(format!("control socket {}: {e}", path.display()));
    let mut stream = StdUnixStream::connect(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => CallError::NotRunning(path.to_path_buf()),
        std::io::ErrorKind::PermissionDenied => CallError::Io(format!(
            "cannot connect to {}: permission denied (the socket belongs to the proxy's user)",
            path.display()
        )),
        _ => CallError::Io(format!("cannot connect to {}: {e}", path.display())),
    })?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT)).map_err(io)?;
    stream.set_write_timeout(Some(Duration::from_secs(10))).map_err(io)?;
    let req = json!({ "cmd": cmd, "args": args }).to_string() + "\n";
    stream.write_all(req.as_bytes()).map_err(io)?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line).map_err(|e| {
        if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) {
            CallError::Io(format!(
                "control socket {}: no answer within {} s",
                path.display(),
                CLIENT_TIMEOUT.as_secs()
            ))
        } else {
            io(e)
        }
    })?;
    if line.trim().is_empty() {
        return Err(CallError::Io(format!(
            "control socket {}: the proxy closed the connection without answering",
            path.display()
        )));
    }
    let reply: Value =
        serde_json::from_str(&line).map_err(|e| CallError::Io(format!("control socket {}: bad answer: {e}", path.display())))?;
    match reply.get("ok").and_then(Value::as_bool) {
        Some(true) => Ok(reply.get("result").cloned().unwrap_or(Value::Null)),
        _ => Err(CallError::Command(
            reply
                .get("error")
                .and_then(Value::as_str)
                .unwrap_or("the proxy answered with an error")
                .to_string(),
        )),
    }
}

/// Runs `serlua ctl …` as the command line does: the result on stdout, or
/// the error on stderr and exit code 1.
pub fn run(args: CtlArgs) -> ExitCode {
    let (cmd, cargs) = args.cmd.request();
    match call(&args.socket, cmd, &cargs) {
        Ok(v) => {
            let out = if args.json { v.to_string() + "\n" } else { format(cmd, &cargs, &v) };
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(out.as_bytes()).and_then(|()| stdout.flush());
            ExitCode::SUCCESS
        }
        Err(CallError::Command(e)) if cmd == "reload" => {
            // The script's own diagnostics (file:line: …), as `serlua check`
            // prints them.
            eprintln!("{e}");
            eprintln!("serlua: reload failed; the running script is unchanged");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("serlua: {e}");
            ExitCode::FAILURE
        }
    }
}

// ------------------------------------------------------------------ output

/// The readable form of a command's result.
pub fn format(cmd: &str, args: &[String], v: &Value) -> String {
    match cmd {
        "ul show" => format_bindings(v),
        "ul rm" => {
            let n = v.get("removed").and_then(Value::as_u64).unwrap_or(0);
            let aor = args.first().map(String::as_str).unwrap_or("");
            format!("removed {n} binding{} of {aor}\n", if n == 1 { "" } else { "s" })
        }
        "tm list" => format_transactions(v),
        "pike" | "pike list" => format_pike(v),
        "pike rm" => format!("unblocked {}\n", args.first().map(String::as_str).unwrap_or("")),
        "sessions" => format_sessions(v),
        "stats" => format_sections(v, STATS_ORDER),
        "errors" => format_errors(v),
        _ => match v {
            Value::String(s) => format!("{s}\n"),
            Value::Array(_) => format_rows(v),
            Value::Object(_) => format_sections(v, &[]),
            other => format!("{}\n", scalar(other)),
        },
    }
}

/// `pike` as a table: one row per blocked source.
fn format_pike(v: &Value) -> String {
    let rows = v.as_array().map(Vec::as_slice).unwrap_or(&[]);
    if rows.is_empty() {
        return "(no blocked sources)\n".to_string();
    }
    let mut out = format!(
        "{:<28} {:<6} {:>10} {:>10} {:>9} {:>8}\n",
        "IP", "REASON", "REFUSED", "HITS", "AUTHFAIL", "LEFT"
    );
    for r in rows {
        let n = |k: &str| r.get(k).and_then(Value::as_u64).unwrap_or(0);
        let _ = writeln!(
            out,
            "{:<28} {:<6} {:>10} {:>10} {:>9} {:>7}s",
            str_of(r, "ip"),
            str_of(r, "reason"),
            n("refused"),
            n("hits"),
            n("auth_failures"),
            n("expires_in")
        );
    }
    out
}

/// `sessions` as a table, one row per media stream (mediaproxy's sessions
/// listing): who calls whom, for how long, the codecs, each side's
/// address (latched from its packets, else as its SDP announced), the
/// relay's two ports, and packets/bytes each way.
fn format_sessions(v: &Value) -> String {
    let Some(items) = v.as_array() else {
        return format!("{}\n", scalar(v));
    };
    if items.is_empty() {
        return "(none)\n".into();
    }
    let s = |x: &Value| scalar(x);
    let mut rows: Vec<Vec<String>> = vec![
        [
            "CALL-ID",
            "CALLER",
            "CALLEE",
            "DURATION",
            "MEDIA",
            "CODECS",
            "CALLER ADDR",
            "RELAY (CALLER / CALLEE)",
            "CALLEE ADDR",
            "CALLER→",
            "←CALLEE",
        ]
        .iter()
        .map(|h| h.to_string())
        .collect(),
    ];
    for it in items {
        let streams = it["streams"].as_array().cloned().unwrap_or_default();
        let first = |i: usize| i == 0;
        for (i, st) in streams
            .iter()
            .enumerate()
            .chain(if streams.is_empty() { Some((0, &Value::Null)) } else { None })
        {
            let head = first(i);
            rows.push(vec![
                if head { s(&it["call_id"]) } else { String::new() },
                if head { s(&it["caller"]) } else { String::new() },
                if head { s(&it["callee"]) } else { String::new() },
                if head {
                    format!("{}s", s(&it["duration_s"]))
                } else {
                    String::new()
                },
                s(&st["media"]),
                s(&st["codecs"]),
                s(&st["caller_addr"]),
                s(&st["relay"]),
                s(&st["callee_addr"]),
                format!("{} pkt / {} B", s(&st["caller_packets"]), s(&st["caller_bytes"])),
                format!("{} pkt / {} B", s(&st["callee_packets"]), s(&st["callee_bytes"])),
            ]);
        }
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

/// The order of `stats` sections (keys not listed follow in name order).
const STATS_ORDER: &[&str] = &[
    "uptime_seconds",
    "transactions",
    "database_queue",
    "nat_pings",
    "draining",
    "received",
    "sent",
    "registrations",
    "errors",
    "workers",
];

fn scalar(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Array(a) if a.iter().all(|x| !x.is_object() && !x.is_array()) => a.iter().map(scalar).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

fn is_scalar(v: &Value) -> bool {
    match v {
        Value::Object(_) => false,
        Value::Array(a) => a.iter().all(|x| !x.is_object() && !x.is_array()),
        _ => true,
    }
}

/// `name value` lines, names padded to one width, indented by `indent`.
fn name_values(out: &mut String, rows: &[(String, String)], indent: &str) {
    let w = rows.iter().map(|(n, _)| n.chars().count()).max().unwrap_or(0);
    for (n, v) in rows {
        let _ = writeln!(out, "{indent}{n:<w$}  {v}");
    }
}

/// Flattens nested objects into dotted names (`requests_by_method.INVITE`).
fn flatten(prefix: &str, v: &Value, rows: &mut Vec<(String, String)>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                let name = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                flatten(&name, x, rows);
            }
        }
        other => rows.push((prefix.to_string(), scalar(other))),
    }
}

/// Sections of aligned name/value lines: the top-level scalars first, then
/// one section per object (nested objects flattened) and one table per
/// array of objects.
fn format_sections(v: &Value, order: &[&str]) -> String {
    let Value::Object(o) = v else {
        return format!("{}\n", scalar(v));
    };
    let mut keys: Vec<&String> = o.keys().collect();
    keys.sort_by_key(|k| (order.iter().position(|x| x == k).unwrap_or(usize::MAX), (*k).clone()));
    let mut out = String::new();
    let top: Vec<(String, String)> = keys
        .iter()
        .filter(|k| is_scalar(&o[k.as_str()]))
        .map(|k| (k.to_string(), scalar(&o[k.as_str()])))
        .collect();
    name_values(&mut out, &top, "");
    for k in keys.iter().filter(|k| !is_scalar(&o[k.as_str()])) {
        let x = &o[k.as_str()];
        if !out.is_empty() {
            out.push('\n');
        }
        let _ = writeln!(out, "{k}");
        match x {
            Value::Object(_) => {
                let mut rows = Vec::new();
                flatten("", x, &mut rows);
                if rows.is_empty() {
                    out.push_str("  (none)\n");
                }
                name_values(&mut out, &rows, "  ");
            }
            _ => {
                for l in format_rows(x).lines() {
                    let _ = writeln!(out, "  {l}");
                }
            }
        }
    }
    out
}

/// An array of objects as a table: one column per key (identifying keys
/// such as `id` or `worker` first, then in first-seen order), headers
/// upper-case.
fn format_rows(v: &Value) -> String {
    let items = v.as_array().cloned().unwrap_or_default();
    let mut cols: Vec<String> = Vec::new();
    for it in &items {
        if let Value::Object(o) = it {
            for k in o.keys() {
                if !cols.contains(k) {
                    cols.push(k.clone());
                }
            }
        }
    }
    // JSON objects come in name order; identifying columns go first.
    for key in ["time", "name", "aor", "worker", "id"] {
        if let Some(i) = cols.iter().position(|c| c == key) {
            let c = cols.remove(i);
            cols.insert(0, c);
        }
    }
    if cols.is_empty() {
        return crate::admin::table(&["VALUE"], &items.iter().map(|x| vec![scalar(x)]).collect::<Vec<_>>());
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|it| cols.iter().map(|c| it.get(c).map(scalar).unwrap_or_default()).collect())
        .collect();
    let headers: Vec<String> = cols.iter().map(|c| c.to_ascii_uppercase().replace('_', "-")).collect();
    crate::admin::table(&headers.iter().map(String::as_str).collect::<Vec<_>>(), &rows)
}

fn str_of<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

/// A q-value with at most three decimals, as `serlua ul show` prints it.
fn format_q(q: f64) -> String {
    let s = format!("{q:.3}");
    let s = s.trim_end_matches('0');
    s.strip_suffix('.').map(|i| format!("{i}.0")).unwrap_or_else(|| s.to_string())
}

/// `ul show`: the columns of `serlua ul show`, sorted by AOR and contact.
fn format_bindings(v: &Value) -> String {
    let now = chrono::Utc::now();
    let mut rows: Vec<Vec<String>> = v
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|b| {
            let left = b.get("expires_in").and_then(Value::as_i64);
            let (expires, left) = match left {
                None => ("permanent".to_string(), "permanent".to_string()),
                Some(s) => (
                    (now + chrono::Duration::seconds(s)).format("%Y-%m-%d %H:%M:%S").to_string(),
                    if s <= 0 { "expired".to_string() } else { format!("{s} s") },
                ),
            };
            let flags = b.get("flags").and_then(Value::as_i64).unwrap_or(0);
            let cflags = b.get("cflags").and_then(Value::as_i64).unwrap_or(0);
            let nat =
                b.get("nat").and_then(Value::as_bool).unwrap_or(false) || (flags | cflags) & i64::from(crate::admin::NAT_FLAG_BIT) != 0;
            vec![
                str_of(b, "aor").to_string(),
                str_of(b, "contact").to_string(),
                str_of(b, "received").to_string(),
                expires,
                left,
                b.get("q").and_then(Value::as_f64).map(format_q).unwrap_or_default(),
                flags.to_string(),
                cflags.to_string(),
                if nat { "nat" } else { "" }.to_string(),
                str_of(b, "user_agent").to_string(),
            ]
        })
        .collect();
    rows.sort();
    crate::admin::table(
        &[
            "AOR",
            "CONTACT",
            "RECEIVED",
            "EXPIRES (UTC)",
            "LEFT",
            "Q",
            "FLAGS",
            "CFLAGS",
            "NAT",
            "USER-AGENT",
        ],
        &rows,
    )
}

/// `tm list`: id, method, Call-ID, state (with the last status sent
/// upstream), age, and each branch's destination, state and status;
/// oldest first.
fn format_transactions(v: &Value) -> String {
    let status = |x: &Value| x.get("status").and_then(Value::as_u64).filter(|s| *s != 0);
    let mut list: Vec<&Value> = v.as_array().map(|a| a.iter().collect()).unwrap_or_default();
    list.sort_by_key(|t| t.get("id").and_then(Value::as_u64).unwrap_or(0));
    let rows: Vec<Vec<String>> = list
        .into_iter()
        .map(|t| {
            let state = match status(t) {
                Some(s) => format!("{} {s}", str_of(t, "state")),
                None => str_of(t, "state").to_string(),
            };
            let age = t
                .get("age_ms")
                .and_then(Value::as_u64)
                .map(|ms| format!("{:.1} s", ms as f64 / 1000.0))
                .unwrap_or_default();
            let branches = t
                .get("branches")
                .and_then(Value::as_array)
                .map(|bs| {
                    bs.iter()
                        .map(|b| match status(b) {
                            Some(s) => format!("{} {} {s}", str_of(b, "dst"), str_of(b, "state")),
                            None => format!("{} {}", str_of(b, "dst"), str_of(b, "state")),
                        })
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default();
            vec![
                t.get("id").map(scalar).unwrap_or_default(),
                str_of(t, "method").to_string(),
                str_of(t, "call_id").to_string(),
                state,
                age,
                branches,
            ]
        })
        .collect();
    crate::admin::table(&["ID", "METHOD", "CALL-ID", "STATE", "AGE", "BRANCHES"], &rows)
}

/// `errors`: time (UTC) and the error text.
fn format_errors(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|e| {
            let t = e
                .get("time")
                .and_then(Value::as_i64)
                .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
                .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
                .unwrap_or_default();
            vec![t, str_of(e, "error").replace('\n', " | ")]
        })
        .collect();
    crate::admin::table(&["TIME (UTC)", "ERROR"], &rows)
}
