//! `serlua test`: unit tests of route scripts written in Lua, in busted's
//! shape (DESIGN.md "Lua test conventions"). A test file `*_test.lua`
//! declares `describe`/`it` blocks; each `it` runs after the
//! `before_each` functions of its blocks (outermost first) and before
//! their `after_each` (innermost first), normally creating a fresh
//! `proxy(...)` — the real script on the real core, on a virtual network
//! and clock ([`proxy`]) — and checking what it sent with busted's
//! assertions ([`assert`]).
//!
//! The runner prints one line per test and `N passed, M failed`; with
//! `verbose`, each test's message flow as a ladder ([`ladder`]); with
//! `junit`, a JUnit XML report ([`junit`]).

pub mod assert;
pub mod junit;
pub mod ladder;
pub mod msg;
pub mod proxy;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use mlua::{Function, Lua, Table, Value};

/// What `serlua test` was asked to do.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Test files, or folders searched (recursively) for `*_test.lua`.
    /// Empty: `lua/` and `tests/`, those that exist.
    pub paths: Vec<PathBuf>,
    /// Only tests whose full name (`describe … it`) matches.
    pub filter: Option<regex::Regex>,
    /// Draw each test's message flow.
    pub verbose: bool,
    /// Write a JUnit XML report here.
    pub junit: Option<PathBuf>,
}

/// Why the runner could not run at all (a failing test is not an error).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A path given does not exist.
    #[error("{0}: no such file or folder")]
    NoSuchPath(String),
    /// A folder could not be read.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
    /// The JUnit report could not be written.
    #[error("--junit {0}: {1}")]
    Junit(String, String),
}

/// How one test ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every assertion held.
    Passed,
    /// An assertion failed, or the test raised an error: the report.
    Failed(String),
    /// `pending(...)`: declared, not run.
    Skipped,
}

/// One test's result.
#[derive(Clone, Debug)]
pub struct TestResult {
    /// The test file.
    pub file: String,
    /// `describe … it` names joined by spaces.
    pub name: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Real time it took, seconds.
    pub seconds: f64,
    /// What the test printed, and (verbose) its message flow.
    pub output: String,
}

/// Every result of a run.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// In the order run.
    pub results: Vec<TestResult>,
}

impl Summary {
    /// Tests that passed.
    pub fn passed(&self) -> usize {
        self.results.iter().filter(|r| r.outcome == Outcome::Passed).count()
    }

    /// Tests that failed.
    pub fn failed(&self) -> usize {
        self.results.iter().filter(|r| matches!(r.outcome, Outcome::Failed(_))).count()
    }

    /// Tests declared pending.
    pub fn skipped(&self) -> usize {
        self.results.iter().filter(|r| r.outcome == Outcome::Skipped).count()
    }
}

/// The text of a Lua error without mlua's wrapping: the innermost cause.
pub fn error_text(e: &mlua::Error) -> String {
    match e {
        mlua::Error::CallbackError { cause, .. } => error_text(cause),
        mlua::Error::WithContext { cause, .. } => error_text(cause),
        mlua::Error::RuntimeError(m) => m.trim().to_string(),
        mlua::Error::SyntaxError { message, .. } => message.trim().to_string(),
        other => other.to_string().trim().trim_start_matches("runtime error: ").to_string(),
    }
}

/// An error as a test report: an assertion's own report as it is; any
/// other error with the test file's lines of its traceback.
fn failure_text(e: &mlua::Error, file: &str) -> String {
    let text = error_text(e);
    let (msg, tb) = match text.split_once("\nstack traceback:") {
        Some((m, t)) => (m.to_string(), t.to_string()),
        None => (text, String::new()),
    };
    let short = Path::new(file)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_default();
    let frames: Vec<&str> = tb
        .lines()
        .map(str::trim)
        .filter(|l| !short.is_empty() && l.contains(&short) && !msg.contains(l))
        .collect();
    if frames.is_empty() {
        msg
    } else {
        format!(
            "{msg}\n  traceback:\n{}",
            frames.iter().map(|l| format!("    {l}\n")).collect::<String>()
        )
    }
}

/// The `*_test.lua` files under the paths, sorted; a file named
/// explicitly is taken whatever its name.
pub fn discover(paths: &[PathBuf]) -> Result<Vec<PathBuf>, RunError> {
    let defaults = [PathBuf::from("lua"), PathBuf::from("tests")];
    let (roots, explicit): (Vec<PathBuf>, bool) = if paths.is_empty() {
        (defaults.into_iter().filter(|p| p.is_dir()).collect(), false)
    } else {
        (paths.to_vec(), true)
    };
    let mut out = Vec::new();
    for root in roots {
        if root.is_file() {
            out.push(root);
        } else if root.is_dir() {
            walk(&root, &mut out)?;
        } else if explicit {
            return Err(RunError::NoSuchPath(root.display().to_string()));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), RunError> {
    let rd = std::fs::read_dir(dir).map_err(|e| RunError::Io(dir.display().to_string(), e))?;
    for entry in rd {
        let entry = entry.map_err(|e| RunError::Io(dir.display().to_string(), e))?;
        let p = entry.path();
        // Build output and hidden folders hold no tests.
        let name = entry.file_name().to_string_lossy().into_owned();
        if p.is_dir() {
            if !name.starts_with('.') && name != "target" {
                walk(&p, out)?;
            }
        } else if name.ends_with("_test.lua") {
            out.push(p);
        }
    }
    Ok(())
}

/// busted's `describe`/`it`/`before_each`/`after_each`/`pending`: they
/// collect the tests into `__serlua_tests` while the file loads.
const PRELUDE: &str = r#"
local tests = {}
local stack = { { before = {}, after = {} } }
__serlua_tests = tests
function describe(name, fn)
  if type(name) ~= "string" or type(fn) ~= "function" then error("describe(name, function) expected", 2) end
  stack[#stack + 1] = { name = name, before = {}, after = {} }
  local ok, err = pcall(fn)
  stack[#stack] = nil
  if not ok then error(err, 0) end
end
context = describe
function before_each(fn) table.insert(stack[#stack].before, fn) end
function after_each(fn) table.insert(stack[#stack].after, fn) end
local function add(name, fn, pending)
  local names, blocks = {}, {}
  for i, b in ipairs(stack) do
    blocks[i] = b
    if b.name then names[#names + 1] = b.name end
  end
  names[#names + 1] = name
  tests[#tests + 1] = { name = table.concat(names, " "), fn = fn, blocks = blocks, pending = pending }
end
function it(name, fn)
  if type(name) ~= "string" or type(fn) ~= "function" then error("it(name, function) expected", 2) end
  add(name, fn, false)
end
function pending(name) add(name, nil, true) end

-- sip.reply(request, status, reason, { to_tag = "…", headers = { "Name: value" }, body = "…" }):
-- the text of a reply to a request the proxy sent (RFC 3261 §8.2.6.2: Via,
-- From, To, Call-ID and CSeq copied; Record-Route too, §12.1.1), to feed
-- back with px:receive.
sip = {}
function sip.reply(req, status, reason, opts)
  opts = opts or {}
  local lines = { string.format("SIP/2.0 %d %s", status, reason or "") }
  for _, v in ipairs(req:headers("Via")) do lines[#lines + 1] = "Via: " .. v end
  for _, v in ipairs(req:headers("Record-Route")) do lines[#lines + 1] = "Record-Route: " .. v end
  lines[#lines + 1] = "From: " .. (req:header("From") or "")
  local to = req:header("To") or ""
  if opts.to_tag and not to:find(";%s*tag=") then to = to .. ";tag=" .. opts.to_tag end
  lines[#lines + 1] = "To: " .. to
  lines[#lines + 1] = "Call-ID: " .. (req:header("Call-ID") or "")
  lines[#lines + 1] = "CSeq: " .. (req:header("CSeq") or "")
  for _, h in ipairs(opts.headers or {}) do lines[#lines + 1] = h end
  local body = opts.body or ""
  lines[#lines + 1] = "Content-Length: " .. #body
  return table.concat(lines, "\r\n") .. "\r\n\r\n" .. body
end
"#;

/// What the test printed.
#[derive(Default)]
struct Printed(std::cell::RefCell<String>);

/// A fresh test VM with the test API.
fn test_vm() -> mlua::Result<Lua> {
    let lua = Lua::new();
    lua.set_app_data(msg::Tracker::default());
    lua.set_app_data(proxy::Proxies::default());
    lua.set_app_data(Printed::default());
    assert::install(&lua)?;
    proxy::install(&lua)?;
    let print = lua.create_function(|lua, args: mlua::Variadic<Value>| {
        let parts: Vec<String> = args
            .iter()
            .map(|v| match v {
                Value::String(s) => s.to_string_lossy(),
                other => assert::render(other),
            })
            .collect();
        if let Some(p) = lua.app_data_ref::<Printed>() {
            let mut out = p.0.borrow_mut();
            out.push_str(&parts.join("\t"));
            out.push('\n');
        }
        Ok(())
    })?;
    lua.globals().set("print", print)?;
    lua.load(PRELUDE).set_name("=serlua-test").exec()?;
    Ok(lua)
}

/// Runs the `it` with its blocks' before/after functions.
fn run_one(test: &Table) -> Result<(), mlua::Error> {
    let blocks: Vec<Table> = test.get::<Table>("blocks")?.sequence_values().collect::<mlua::Result<_>>()?;
    let main = || -> Result<(), mlua::Error> {
        for b in &blocks {
            for f in b.get::<Table>("before")?.sequence_values::<Function>() {
                f?.call::<()>(())?;
            }
        }
        test.get::<Function>("fn")?.call::<()>(())
    };
    let mut result = main();
    for b in blocks.iter().rev() {
        for f in b.get::<Table>("after")?.sequence_values::<Function>() {
            if let Err(e) = f?.call::<()>(()) {
                if result.is_ok() {
                    result = Err(e);
                }
            }
        }
    }
    result
}

/// Runs one test file; every result goes to `on_result` as it ends.
pub fn run_file(path: &Path, opts: &Options, on_result: &mut dyn FnMut(TestResult)) {
    let file = path.display().to_string();
    let started = Instant::now();
    let load_error = |why: String, on_result: &mut dyn FnMut(TestResult)| {
        on_result(TestResult {
            file: file.clone(),
            name: "(loading the file)".into(),
            outcome: Outcome::Failed(why),
            seconds: started.elapsed().as_secs_f64(),
            output: String::new(),
        })
    };
    let lua = match test_vm() {
        Ok(l) => l,
        Err(e) => return load_error(format!("cannot set up the test VM: {}", error_text(&e)), on_result),
    };
    let source = match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) => return load_error(format!("cannot read {file}: {e}"), on_result),
    };
    if let Err(e) = lua.load(source.as_str()).set_name(format!("@{file}")).exec() {
        return load_error(failure_text(&e, &file), on_result);
    }
    let tests: Vec<Table> = match lua
        .globals()
        .get::<Table>("__serlua_tests")
        .and_then(|t| t.sequence_values().collect::<mlua::Result<_>>())
    {
        Ok(t) => t,
        Err(e) => return load_error(error_text(&e), on_result),
    };
    for test in tests {
        let name: String = test.get("name").unwrap_or_default();
        if opts.filter.as_ref().is_some_and(|f| !f.is_match(&name)) {
            continue;
        }
        let t0 = Instant::now();
        if test.get::<bool>("pending").unwrap_or(false) {
            on_result(TestResult {
                file: file.clone(),
                name,
                outcome: Outcome::Skipped,
                seconds: 0.0,
                output: String::new(),
            });
            continue;
        }
        assert::reset(&lua);
        let outcome = match run_one(&test) {
            Ok(()) => Outcome::Passed,
            Err(e) => Outcome::Failed(failure_text(&e, &file)),
        };
        let seconds = t0.elapsed().as_secs_f64();
        // The test's proxies end with it.
        let proxies: Vec<proxy::LuaProxy> = lua
            .app_data_ref::<proxy::Proxies>()
            .map(|p| std::mem::take(&mut *p.0.borrow_mut()))
            .unwrap_or_default();
        let mut output = lua
            .app_data_ref::<Printed>()
            .map(|p| std::mem::take(&mut *p.0.borrow_mut()))
            .unwrap_or_default();
        if opts.verbose {
            for px in &proxies {
                if let Ok(slot) = px.0.try_borrow() {
                    if let Some(p) = slot.as_ref() {
                        output.push_str(&ladder::draw(&p.name, &p.addresses(), &p.events));
                    }
                }
            }
        }
        for px in proxies {
            if let Ok(mut slot) = px.0.try_borrow_mut() {
                slot.take();
            }
        }
        on_result(TestResult {
            file: file.clone(),
            name,
            outcome,
            seconds,
            output,
        });
    }
}

fn indent(text: &str) -> String {
    text.trim_end().lines().map(|l| format!("    {l}\n")).collect()
}

/// Runs every test file found, printing as it goes to `out`; writes the
/// JUnit report when asked. The caller turns [`Summary::failed`] into the
/// exit status.
pub fn run(opts: &Options, out: &mut dyn Write) -> Result<Summary, RunError> {
    let files = discover(&opts.paths)?;
    let mut summary = Summary::default();
    if files.is_empty() {
        let _ = writeln!(out, "no *_test.lua files found");
    }
    for f in &files {
        run_file(f, opts, &mut |r| {
            let line = match &r.outcome {
                Outcome::Passed => format!("ok    {} :: {} ({:.0} ms)", r.file, r.name, r.seconds * 1000.0),
                Outcome::Failed(_) => format!("FAIL  {} :: {}", r.file, r.name),
                Outcome::Skipped => format!("skip  {} :: {} (pending)", r.file, r.name),
            };
            let _ = writeln!(out, "{line}");
            if let Outcome::Failed(why) = &r.outcome {
                let _ = write!(out, "{}", indent(why));
            }
            if !r.output.is_empty() && (opts.verbose || matches!(r.outcome, Outcome::Failed(_))) {
                let _ = write!(out, "{}", indent(&r.output));
            }
            summary.results.push(r);
        });
    }
    let mut last = format!("{} passed, {} failed", summary.passed(), summary.failed());
    if summary.skipped() > 0 {
        last.push_str(&format!(", {} skipped", summary.skipped()));
    }
    let _ = writeln!(out, "{last}");
    if let Some(path) = &opts.junit {
        let xml = junit::report(&summary).map_err(|e| RunError::Junit(path.display().to_string(), e))?;
        std::fs::write(path, xml).map_err(|e| RunError::Junit(path.display().to_string(), e.to_string()))?;
    }
    Ok(summary)
}
