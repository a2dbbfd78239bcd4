//! The `serlua repl` front end: the command line, line editing with
//! history and completion (rustyline), non-interactive input (`--eval`,
//! or lines on a standard input that is not a terminal), and the client
//! side of `--attach`.

use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rustyline::completion::Completer;
use rustyline::error::ReadlineError;
use rustyline::highlight::Highlighter;
use rustyline::hint::Hinter;
use rustyline::validate::Validator;
use rustyline::{Editor, ExternalPrinter, Helper};
use serde_json::{Value, json};

use crate::repl::session::{self, Message, Reply, Session};
use crate::transport::Proto;

/// `serlua repl`: evaluate Lua against one SIP message in a dry-run sandbox.
#[derive(clap::Args, Debug, Clone)]
#[command(after_help = "Offline:  serlua repl tests/scripts/registrar.lua --msg register.txt\n\
Live:     serlua repl --attach serlua.ctl --match 'msg.method == \"INVITE\"' --hold\n\
Scripted: serlua repl SCRIPT --msg FILE --eval 'route.main()' --eval ':diff'")]
pub struct ReplArgs {
    /// The route script (offline; attached, the proxy's own script is used).
    #[arg(value_name = "SCRIPT", conflicts_with = "attach")]
    pub script: Option<PathBuf>,
    /// A SIP message in a text file (LF line ends become CRLF; the Content-Length is fixed to the body).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["trace", "attach"])]
    pub msg: Option<PathBuf>,
    /// Where the --msg message came from (default: its top Via's address when that is an IP, else 127.0.0.1:5060).
    #[arg(long, value_name = "IP:PORT", requires = "msg")]
    pub src: Option<SocketAddr>,
    /// The transport the --msg message came over.
    #[arg(long, value_name = "udp|tcp", default_value = "udp", value_parser = parse_proto, requires = "msg")]
    pub proto: Proto,
    /// A recorded trace (pcap, pcapng or SIP text) to take the message from, with --index.
    #[arg(long, value_name = "FILE", requires = "index", conflicts_with = "attach")]
    pub trace: Option<PathBuf>,
    /// Which message of the --trace, counted from 1.
    #[arg(long, value_name = "N", requires = "trace", value_parser = clap::value_parser!(u64).range(1..))]
    pub index: Option<u64>,
    /// Attach to a running proxy through its control socket (default serlua.ctl) and wait for a message.
    #[arg(long, value_name = "CTL_SOCKET", num_args = 0..=1, default_missing_value = crate::ctl::DEFAULT_PATH, requires = "filter")]
    pub attach: Option<PathBuf>,
    /// The filter: a Lua expression over msg; the first message for which it is true is caught.
    #[arg(long = "match", value_name = "LUA_EXPR", requires = "attach")]
    pub filter: Option<String>,
    /// Hold the real message until :release (or the deadline) instead of taking a copy.
    #[arg(long, requires = "attach")]
    pub hold: bool,
    /// The hold deadline: the held message is routed after this many seconds anyway (1-30).
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=30))]
    pub timeout: u64,
    /// Give up waiting for a matching message after this many seconds (default: wait until Ctrl-C).
    #[arg(long, value_name = "SECS", requires = "attach")]
    pub wait: Option<u64>,
    /// Evaluate the filter on replies too (requests only by default).
    #[arg(long, requires = "attach")]
    pub replies: bool,
    /// Evaluate LINE (repeatable, in order) and exit; exit status 1 if one failed.
    #[arg(long, value_name = "LINE")]
    pub eval: Vec<String>,
}

fn parse_proto(s: &str) -> Result<Proto, String> {
    Proto::parse(s).ok_or_else(|| format!("{s:?}: expected udp or tcp"))
}

/// Runs `serlua repl`.
pub fn run(args: ReplArgs) -> ExitCode {
    match &args.attach {
        Some(sock) => run_attached(sock.clone(), &args),
        None => run_offline(&args),
    }
}

/// What evaluates the lines: a session in this process, or one in the
/// proxy we are attached to.
trait Backend {
    fn eval(&mut self, line: &str) -> Reply;
    fn release(&mut self) -> Reply;
    fn extra_help(&self) -> Vec<(&'static str, &'static str)>;
}

impl Backend for Session {
    fn eval(&mut self, line: &str) -> Reply {
        Session::eval(self, line)
    }

    fn release(&mut self) -> Reply {
        Reply {
            text: "nothing is held offline (:release is for --attach --hold)".into(),
            ok: false,
            incomplete: false,
        }
    }

    fn extra_help(&self) -> Vec<(&'static str, &'static str)> {
        vec![(":quit", "leave (also Ctrl-D)")]
    }
}

fn run_offline(args: &ReplArgs) -> ExitCode {
    let Some(script) = &args.script else {
        eprintln!("serlua repl: give a SCRIPT and --msg FILE (or --trace FILE --index N), or --attach a running proxy");
        return ExitCode::FAILURE;
    };
    let msg = match offline_message(args) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("serlua repl: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Warnings of the primitives (a bad SDP, an unknown relay) are worth seeing.
    let _ = crate::logging::init(Some(1), true);
    let mut s = match Session::offline(script, msg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("serlua repl: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", s.banner());
    let names = completion_words(&s.route_names());
    drive(&mut s, args, names, None)
}

fn offline_message(args: &ReplArgs) -> Result<Message, String> {
    if let Some(path) = &args.msg {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let data = session::message_from_text(&text);
        let src = args.src.unwrap_or_else(|| session::default_source(&data));
        return Ok(Message {
            data,
            src,
            proto: args.proto,
            local: None,
            conn: None,
        });
    }
    if let (Some(path), Some(index)) = (&args.trace, args.index) {
        let p = crate::repl::trace::pick(path, usize::try_from(index).unwrap_or(usize::MAX)).map_err(|e| e.to_string())?;
        return Ok(Message {
            data: p.data.into(),
            src: p.src,
            proto: p.proto,
            local: None,
            conn: None,
        });
    }
    Err("the message: --msg FILE, or --trace FILE --index N".into())
}

/// Reads lines (from `--eval`, a pipe, or the terminal) and hands them to
/// the backend until `:quit` or the end of input. Returns the exit status.
fn drive(backend: &mut dyn Backend, args: &ReplArgs, words: Words, printer_slot: Option<&PrinterSlot>) -> ExitCode {
    let mut failed = false;
    if !args.eval.is_empty() {
        for line in &args.eval {
            println!("serlua> {line}");
            match step(backend, line) {
                Step::Quit => break,
                Step::Done(ok) => failed |= !ok,
                Step::More => {
                    println!("incomplete Lua: finish the chunk in the same --eval");
                    failed = true;
                }
            }
        }
        return if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS };
    }
    if !std::io::stdin().is_terminal() {
        let mut chunk = String::new();
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            println!("{} {line}", if chunk.is_empty() { "serlua>" } else { ">>" });
            if !chunk.is_empty() {
                chunk.push('\n');
            }
            chunk.push_str(&line);
            match step(backend, &chunk) {
                Step::Quit => return exit_status(failed),
                Step::Done(ok) => {
                    failed |= !ok;
                    chunk.clear();
                }
                Step::More => {}
            }
        }
        return exit_status(failed);
    }
    interactive(backend, words, printer_slot);
    ExitCode::SUCCESS
}

fn exit_status(failed: bool) -> ExitCode {
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

enum Step {
    Quit,
    Done(bool),
    More,
}

fn step(backend: &mut dyn Backend, input: &str) -> Step {
    let first = input.trim();
    let reply = match first {
        ":quit" | ":q" | ":exit" => return Step::Quit,
        ":help" => Reply {
            text: session::help_text(&backend.extra_help()),
            ok: true,
            incomplete: false,
        },
        ":release" => backend.release(),
        _ => backend.eval(input),
    };
    if reply.incomplete {
        return Step::More;
    }
    if !reply.text.is_empty() {
        println!("{}", reply.text);
    }
    let _ = std::io::stdout().flush();
    Step::Done(reply.ok)
}

/// Where the attached client prints what the proxy tells it between
/// prompts (a deadline release): above the prompt while rustyline reads.
type PrinterSlot = Arc<parking_lot::Mutex<Option<Box<dyn ExternalPrinter + Send>>>>;

fn history_path() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".serlua_history"))
}

fn interactive(backend: &mut dyn Backend, words: Words, printer_slot: Option<&PrinterSlot>) {
    let mut rl = match Editor::<ReplHelper, rustyline::history::DefaultHistory>::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("serlua repl: the terminal cannot be used for line editing: {e}");
            return;
        }
    };
    rl.set_helper(Some(ReplHelper { words }));
    let hist = history_path();
    if let Some(h) = &hist {
        let _ = rl.load_history(h);
    }
    if let Some(slot) = printer_slot {
        if let Ok(p) = rl.create_external_printer() {
            *slot.lock() = Some(Box::new(p));
        }
    }
    let mut chunk = String::new();
    loop {
        let prompt = if chunk.is_empty() { "serlua> " } else { ">> " };
        match rl.readline(prompt) {
            Ok(line) => {
                if !line.trim().is_empty() {
                    let _ = rl.add_history_entry(line.as_str());
                }
                if !chunk.is_empty() {
                    chunk.push('\n');
                }
                chunk.push_str(&line);
                match step(backend, &chunk) {
                    Step::Quit => break,
                    Step::Done(_) => chunk.clear(),
                    Step::More => {}
                }
            }
            // Ctrl-C drops the line being typed (and an unfinished chunk).
            Err(ReadlineError::Interrupted) => chunk.clear(),
            Err(ReadlineError::Eof) => break,
            Err(e) => {
                eprintln!("serlua repl: {e}");
                break;
            }
        }
    }
    if let Some(slot) = printer_slot {
        *slot.lock() = None;
    }
    if let Some(h) = &hist {
        let _ = rl.save_history(h);
    }
}

// ------------------------------------------------------------------ completion

/// What tab completes: the primitives and globals, the routes, `msg.`
/// fields and methods, and the `:` commands.
#[derive(Clone, Debug, Default)]
pub struct Words {
    /// Global names: primitives (`all_exports()`), route tables, `msg`.
    pub globals: Vec<String>,
    /// Routes as callable expressions (`route.main()`, `route[1]()`).
    pub routes: Vec<String>,
}

/// The completion words for a script with these routes.
pub fn completion_words(routes: &[String]) -> Words {
    let mut globals: Vec<String> = crate::script::all_exports().iter().map(|e| e.name.to_string()).collect();
    globals.extend(
        [
            "msg",
            "route",
            "onreply_route",
            "failure_route",
            "branch_route",
            "max_len",
            "print",
            "modparam",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    globals.sort();
    globals.dedup();
    Words {
        globals,
        routes: routes.iter().map(|r| format!("{r}()")).collect(),
    }
}

/// Candidates for the text before the cursor: where the completed word
/// starts, and the words.
pub fn complete(words: &Words, before: &str) -> (usize, Vec<String>) {
    let trimmed = before.trim_start();
    if trimmed.starts_with(':') && !trimmed.contains(char::is_whitespace) {
        let start = before.len() - trimmed.len();
        let mut cmds: Vec<String> = session::COMMANDS.iter().map(|c| c.0.to_string()).collect();
        cmds.extend([":release".to_string(), ":quit".to_string()]);
        return (start, cmds.into_iter().filter(|c| c.starts_with(trimmed)).collect());
    }
    let part = |c: char| c.is_alphanumeric() || matches!(c, '_' | '.' | ':' | '[' | ']');
    let start = before
        .char_indices()
        .rev()
        .find(|(_, c)| !part(*c))
        .map(|(i, c)| i + c.len_utf8())
        .unwrap_or(0);
    let word = &before[start..];
    let pool: Vec<String> = if let Some(_rest) = word.strip_prefix("msg.") {
        crate::script::msgobj::FIELDS.iter().map(|f| format!("msg.{f}")).collect()
    } else if word.starts_with("msg:") {
        crate::script::msgobj::METHODS.iter().map(|m| format!("msg:{m}(")).collect()
    } else if ["route", "onreply_route", "failure_route", "branch_route"]
        .iter()
        .any(|t| word.starts_with(&format!("{t}.")) || word.starts_with(&format!("{t}[")))
    {
        words.routes.clone()
    } else {
        words.globals.clone()
    };
    (start, pool.into_iter().filter(|w| w.starts_with(word)).collect())
}

struct ReplHelper {
    words: Words,
}

impl Completer for ReplHelper {
    type Candidate = String;

    fn complete(&self, line: &str, pos: usize, _ctx: &rustyline::Context<'_>) -> rustyline::Result<(usize, Vec<String>)> {
        let before = line.get(..pos).unwrap_or(line);
        Ok(complete(&self.words, before))
    }
}

impl Hinter for ReplHelper {
    type Hint = String;
}

impl Highlighter for ReplHelper {}

impl Validator for ReplHelper {}

impl Helper for ReplHelper {}

// ------------------------------------------------------------------ attached

/// What the reader thread passes on from the proxy.
enum FromProxy {
    Msg(Value),
    Closed,
}

/// The session in the proxy, seen from the client.
struct Attached {
    stream: UnixStream,
    rx: mpsc::Receiver<FromProxy>,
    closed: bool,
}

impl Attached {
    fn send(&mut self, v: Value) -> bool {
        let mut line = v.to_string();
        line.push('\n');
        self.stream.write_all(line.as_bytes()).is_ok()
    }

    fn request(&mut self, v: Value) -> Reply {
        let gone = Reply {
            text: "the proxy closed the session".into(),
            ok: false,
            incomplete: false,
        };
        if self.closed || !self.send(v) {
            self.closed = true;
            return gone;
        }
        loop {
            match self.rx.recv() {
                Ok(FromProxy::Msg(m)) => {
                    if let Some(r) = m.get("reply") {
                        return serde_json::from_value(r.clone()).unwrap_or_else(|e| Reply {
                            text: format!("unreadable reply from the proxy: {e}"),
                            ok: false,
                            incomplete: false,
                        });
                    }
                    // Other events were printed by the reader.
                }
                Ok(FromProxy::Closed) | Err(_) => {
                    self.closed = true;
                    return gone;
                }
            }
        }
    }
}

impl Backend for Attached {
    fn eval(&mut self, line: &str) -> Reply {
        self.request(json!({ "line": line }))
    }

    fn release(&mut self) -> Reply {
        self.request(json!({ "cmd": "release" }))
    }

    fn extra_help(&self) -> Vec<(&'static str, &'static str)> {
        vec![
            (":release", "route the held message through the real script now"),
            (":quit", "leave (also Ctrl-D); a held message is released at once"),
        ]
    }
}

/// Prints an event the proxy sent on its own (not an answer).
fn print_event(slot: &PrinterSlot, text: String) {
    if let Some(p) = slot.lock().as_mut() {
        if p.print(format!("{text}\n")).is_ok() {
            return;
        }
    }
    println!("{text}");
    let _ = std::io::stdout().flush();
}

fn run_attached(sock: PathBuf, args: &ReplArgs) -> ExitCode {
    let Some(filter) = &args.filter else {
        eprintln!("serlua repl: --attach needs --match 'LUA_EXPR'");
        return ExitCode::FAILURE;
    };
    let stream = match UnixStream::connect(&sock) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "serlua repl: cannot connect to the control socket {}: {e} (is serlua running with this --ctl or ctl_socket?)",
                sock.display()
            );
            return ExitCode::FAILURE;
        }
    };
    let reader = match stream.try_clone() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("serlua repl: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Ctrl-C while waiting cancels; once a message is caught it ends the
    // client (exit 130), which releases a held message at once.
    let cancel = Arc::new(AtomicBool::new(false));
    let armed = Arc::new(AtomicBool::new(false));
    let _ = signal_hook::flag::register_conditional_shutdown(signal_hook::consts::SIGINT, 130, armed.clone());
    let _ = signal_hook::flag::register(signal_hook::consts::SIGINT, cancel.clone());
    let slot: PrinterSlot = Arc::new(parking_lot::Mutex::new(None));
    let (tx, rx) = mpsc::channel();
    let events = slot.clone();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(reader);
        let mut buf = String::new();
        loop {
            buf.clear();
            match lines.read_line(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.send(FromProxy::Closed);
                    return;
                }
                Ok(_) => {}
            }
            let Ok(v) = serde_json::from_str::<Value>(buf.trim_end()) else {
                continue;
            };
            if v.get("event").and_then(Value::as_str) == Some("released") {
                let text = match v.get("why").and_then(Value::as_str) {
                    Some("CANCEL") => {
                        "[its sender cancelled the held INVITE: the INVITE, then the CANCEL, were routed through the real script]"
                    }
                    _ => "[the hold deadline passed: the message was released and routed through the real script]",
                };
                print_event(&events, text.to_string());
                continue;
            }
            if tx.send(FromProxy::Msg(v)).is_err() {
                return;
            }
        }
    });
    let mut at = Attached { stream, rx, closed: false };
    let req = json!({ "cmd": "attach", "filter": filter, "hold": args.hold, "deadline": args.timeout, "replies": args.replies });
    if !at.send(req) {
        eprintln!("serlua repl: the proxy closed the control connection");
        return ExitCode::FAILURE;
    }
    let give_up = args.wait.map(|s| Instant::now() + Duration::from_secs(s));
    let mut caught: Option<Value> = None;
    while caught.is_none() {
        if cancel.load(Ordering::Relaxed) {
            println!("cancelled: the proxy forgot the filter");
            return ExitCode::from(130);
        }
        if give_up.is_some_and(|t| Instant::now() >= t) {
            eprintln!("serlua repl: no message matched within {} s", args.wait.unwrap_or(0));
            return ExitCode::FAILURE;
        }
        match at.rx.recv_timeout(Duration::from_millis(100)) {
            Ok(FromProxy::Msg(v)) => match v.get("event").and_then(Value::as_str) {
                Some("waiting") => {
                    let how = if args.hold { "held" } else { "copied" };
                    println!("waiting for a message matching: {filter}  (it will be {how}; Ctrl-C cancels)");
                    let _ = std::io::stdout().flush();
                }
                Some("caught") => caught = Some(v),
                Some("error") => {
                    eprintln!("serlua repl: {}", v.get("error").and_then(Value::as_str).unwrap_or("error"));
                    return ExitCode::FAILURE;
                }
                _ => {
                    if v.get("ok") == Some(&Value::Bool(false)) {
                        eprintln!("serlua repl: {}", v.get("error").and_then(Value::as_str).unwrap_or("refused"));
                        return ExitCode::FAILURE;
                    }
                }
            },
            Ok(FromProxy::Closed) | Err(mpsc::RecvTimeoutError::Disconnected) => {
                eprintln!("serlua repl: the proxy closed the control connection");
                return ExitCode::FAILURE;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
    armed.store(true, Ordering::Relaxed);
    let v = caught.unwrap_or(Value::Null);
    let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    println!("{}", text("banner"));
    if v.get("held").and_then(Value::as_bool) == Some(true) {
        let ms = v.get("deadline_ms").and_then(Value::as_u64).unwrap_or(0);
        println!(
            "held: the real message waits for :release (or is routed anyway in {} s); caught by worker {} from {}",
            ms / 1000,
            v.get("worker").and_then(Value::as_u64).unwrap_or(0),
            text("src")
        );
    } else {
        println!(
            "a copy: the real message was routed as usual; caught by worker {} from {}",
            v.get("worker").and_then(Value::as_u64).unwrap_or(0),
            text("src")
        );
    }
    let _ = std::io::stdout().flush();
    let routes: Vec<String> = v
        .get("routes")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|r| r.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    let code = drive(&mut at, args, completion_words(&routes), Some(&slot));
    let _ = at.stream.shutdown(std::net::Shutdown::Both);
    code
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completes_primitives_routes_fields_and_commands() {
        let w = completion_words(&["route.main".into(), "route[1]".into()]);
        let (s, c) = complete(&w, "if nat_uac");
        assert_eq!(s, 3);
        assert_eq!(c, vec!["nat_uac_test"]);
        let (s, c) = complete(&w, "x = msg.ru");
        assert_eq!((s, c), (4, vec!["msg.ruri".to_string()]));
        let (_, c) = complete(&w, "msg:he");
        assert_eq!(c, vec!["msg:header(", "msg:headers("]);
        let (_, c) = complete(&w, "route[");
        assert_eq!(c, vec!["route[1]()"]);
        let (s, c) = complete(&w, ":di");
        assert_eq!((s, c), (0, vec![":diff".to_string()]));
        let (_, c) = complete(&w, ":re");
        assert_eq!(c, vec![":reset", ":release"]);
    }
}
