//! busted's assertions for `serlua test` (`assert.equals`, `assert.same`,
//! `assert.truthy`, …). A failure is a Lua error whose text is the whole
//! report: where, expected vs actual, and — when the actual value was
//! read from a SIP message — that message, as a diff against the message
//! the assertion expected where one can be built (a wrong status shows
//! the expected status line against the actual one, then the message).

use std::rc::Rc;

use mlua::{Function, Lua, Table, Value, Variadic};

use super::msg::{Msg, Tracker, as_msg, same_message};

/// Renders a Lua value for a report: strings quoted with escapes, tables
/// as sorted `{ k = v }`, messages by their first line.
pub fn render(v: &Value) -> String {
    render_depth(v, 0)
}

fn render_depth(v: &Value, depth: usize) -> String {
    match v {
        Value::Nil => "nil".into(),
        Value::Boolean(b) => b.to_string(),
        Value::Integer(i) => i.to_string(),
        Value::Number(n) => {
            if n.fract() == 0.0 && n.abs() < 1e15 {
                format!("{n:.1}")
            } else {
                n.to_string()
            }
        }
        Value::String(s) => format!("{:?}", s.to_string_lossy()),
        Value::Table(t) => {
            if depth > 3 {
                return "{ … }".into();
            }
            let mut parts: Vec<(String, String)> = t
                .pairs::<Value, Value>()
                .filter_map(Result::ok)
                .map(|(k, v)| {
                    let key = match &k {
                        Value::String(s) => {
                            let s = s.to_string_lossy();
                            if s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !s.is_empty() {
                                s
                            } else {
                                format!("[{s:?}]")
                            }
                        }
                        other => format!("[{}]", render_depth(other, depth + 1)),
                    };
                    (key, render_depth(&v, depth + 1))
                })
                .collect();
            parts.sort();
            if parts.is_empty() {
                "{}".into()
            } else {
                format!(
                    "{{ {} }}",
                    parts.iter().map(|(k, v)| format!("{k} = {v}")).collect::<Vec<_>>().join(", ")
                )
            }
        }
        Value::UserData(_) => match as_msg(v) {
            Some(m) => format!("<message {:?}, {} -> {}>", m.first_line(), m.src, m.dst),
            None => "<userdata>".into(),
        },
        Value::Function(_) => "<function>".into(),
        other => format!("<{}>", other.type_name()),
    }
}

/// A table one key per line (nested tables inline), so a line diff of
/// two tables points at the keys that differ.
fn render_lines(v: &Value) -> String {
    let Value::Table(t) = v else {
        return render(v);
    };
    let mut parts: Vec<String> = t
        .pairs::<Value, Value>()
        .filter_map(Result::ok)
        .map(|(k, v)| {
            let key = match &k {
                Value::String(s) => s.to_string_lossy(),
                other => format!("[{}]", render(other)),
            };
            format!("  {key} = {},", render(&v))
        })
        .collect();
    parts.sort();
    format!("{{\n{}\n}}", parts.join("\n"))
}

/// `==` as Lua means it, with messages equal by content.
fn shallow_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Integer(x), Value::Number(y)) | (Value::Number(y), Value::Integer(x)) => (*x as f64) == *y,
        (Value::UserData(_), Value::UserData(_)) => match (as_msg(a), as_msg(b)) {
            (Some(x), Some(y)) => same_message(&x, &y),
            _ => a == b,
        },
        _ => a == b,
    }
}

/// busted's `same`: tables compared key by key, recursively.
fn deep_eq(a: &Value, b: &Value, depth: usize) -> bool {
    match (a, b) {
        (Value::Table(x), Value::Table(y)) => {
            if depth > 32 {
                return false;
            }
            let keys_of = |t: &Table| -> Vec<(Value, Value)> { t.pairs::<Value, Value>().filter_map(Result::ok).collect() };
            let (xs, ys) = (keys_of(x), keys_of(y));
            xs.len() == ys.len()
                && xs
                    .iter()
                    .all(|(k, v)| ys.iter().any(|(k2, v2)| shallow_eq(k, k2) && deep_eq(v, v2, depth + 1)))
        }
        _ => shallow_eq(a, b),
    }
}

fn truthy(v: &Value) -> bool {
    !matches!(v, Value::Nil | Value::Boolean(false))
}

/// `file:line` of the test code that called the assertion (past the
/// Lua wrappers that give busted's other spellings).
pub fn position(lua: &Lua) -> String {
    for level in 1..16 {
        let found = lua.inspect_stack(level, |d| {
            let src = d.source();
            let file = src.short_src.as_deref().unwrap_or("?").to_string();
            if src.what == "C" || file.starts_with("serlua-test") {
                return None;
            }
            Some(match d.current_line() {
                Some(l) => format!("{file}:{l}"),
                None => file,
            })
        });
        match found {
            Some(Some(p)) => return p,
            Some(None) => continue,
            None => break,
        }
    }
    "?".into()
}

/// Common SIP reason phrases (RFC 3261 §21), for the expected status line.
fn reason_phrase(code: i64) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        181 => "Call Is Being Forwarded",
        182 => "Queued",
        183 => "Session Progress",
        200 => "OK",
        202 => "Accepted",
        301 => "Moved Permanently",
        302 => "Moved Temporarily",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        420 => "Bad Extension",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        484 => "Address Incomplete",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Server Time-out",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        604 => "Does Not Exist Anywhere",
        606 => "Not Acceptable",
        _ => "…",
    }
}

fn lua_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.to_string_lossy()),
        Value::Integer(i) => Some(i.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The message the test expected: `actual` with the field the test read
/// set to the expected value. None when the field has no line of its own.
fn expected_message(msg: &Msg, field: &str, expected: &Value) -> Option<String> {
    let text = msg.text();
    let rest = text.split_once("\r\n").map_or("", |(_, r)| r);
    let m = msg.parsed.as_ref()?;
    let exp = lua_text(expected);
    let with_first = |line: String| Some(format!("{line}\r\n{rest}"));
    match field {
        "status" => {
            let code = match expected {
                Value::Integer(i) => *i,
                Value::Number(n) => *n as i64,
                _ => return None,
            };
            with_first(format!("SIP/2.0 {code} {}", reason_phrase(code)))
        }
        "reason" => with_first(format!("SIP/2.0 {} {}", m.status()?, exp?)),
        "method" if m.is_request() => with_first(format!("{} {} SIP/2.0", exp?, m.ruri()?)),
        "ruri" => with_first(format!("{} {} SIP/2.0", m.method()?.as_str(), exp?)),
        "body" => {
            let (head, _) = text.split_once("\r\n\r\n")?;
            Some(format!("{head}\r\n\r\n{}", exp?))
        }
        f if f.starts_with("header:") => {
            let name = &f["header:".len()..];
            let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
            let mut lines: Vec<String> = head.split("\r\n").map(str::to_string).collect();
            let pos = lines
                .iter()
                .skip(1)
                .position(|l| l.split_once(':').is_some_and(|(n, _)| n.trim().eq_ignore_ascii_case(name)));
            match (pos, exp) {
                (Some(i), Some(v)) => lines[i + 1] = format!("{name}: {v}"),
                (Some(i), None) => {
                    lines.remove(i + 1);
                }
                (None, Some(v)) => lines.push(format!("{name}: {v}")),
                (None, None) => return None,
            }
            Some(format!("{}\r\n\r\n{body}", lines.join("\r\n")))
        }
        _ => None,
    }
}

/// A line diff, `- ` expected, `+ ` actual, two spaces for lines both
/// share (the whole text is shown: SIP messages are short).
pub fn diff(expected: &str, actual: &str) -> String {
    let norm = |s: &str| s.replace("\r\n", "\n");
    let (e, a) = (norm(expected), norm(actual));
    let d = similar::TextDiff::from_lines(&e, &a);
    let mut out = String::new();
    for change in d.iter_all_changes() {
        let sign = match change.tag() {
            similar::ChangeTag::Delete => "- ",
            similar::ChangeTag::Insert => "+ ",
            similar::ChangeTag::Equal => "  ",
        };
        out.push_str("    ");
        out.push_str(sign);
        out.push_str(change.value().trim_end_matches('\n'));
        out.push('\n');
    }
    out
}

fn indent(text: &str) -> String {
    text.replace("\r\n", "\n")
        .trim_end()
        .lines()
        .map(|l| format!("    {l}\n"))
        .collect()
}

/// What the report adds below expected/actual: the message the value came
/// from (and a diff against the expected one), or the list the test counted.
fn context(lua: &Lua, expected: Option<&Value>, actual: &Value) -> String {
    let mut out = String::new();
    // Two messages: diff them.
    if let (Some(e), Some(a)) = (expected.and_then(as_msg), as_msg(actual)) {
        out.push_str(&format!(
            "  expected message ({}) vs actual ({}):\n",
            e.route_text(),
            a.route_text()
        ));
        out.push_str(&diff(&e.text(), &a.text()));
        return out;
    }
    if let Some(a) = as_msg(actual) {
        out.push_str(&format!("  the message ({}):\n", a.route_text()));
        out.push_str(&indent(&a.text()));
        return out;
    }
    // Two texts of several lines: diff them.
    if let (Some(Value::String(e)), Value::String(a)) = (expected, actual) {
        let (e, a) = (e.to_string_lossy(), a.to_string_lossy());
        if e.contains('\n') || a.contains('\n') {
            out.push_str("  diff (- expected, + actual):\n");
            out.push_str(&diff(&e, &a));
            return out;
        }
    }
    let Some(tracker) = lua.app_data_ref::<Tracker>() else {
        return out;
    };
    let rendered = render(actual);
    let touched = tracker.touched.borrow().clone();
    if let Some(t) = touched.filter(|t| t.value == rendered) {
        let what = match t.field.strip_prefix("header:") {
            Some(h) => format!("header {h}"),
            None => t.field.clone(),
        };
        out.push_str(&format!("  the actual value is the {what} of the message {}\n", t.msg.route_text()));
        match expected.and_then(|e| expected_message(&t.msg, &t.field, e)) {
            Some(exp) => {
                out.push_str("  diff against the message expected (- expected, + actual):\n");
                out.push_str(&diff(&exp, &t.msg.text()));
            }
            None => out.push_str(&indent(&t.msg.text())),
        }
        return out;
    }
    let list = tracker.last_list.borrow();
    let is_count = match actual {
        Value::Integer(n) => *n >= 0 && *n as usize == list.len(),
        _ => false,
    };
    if is_count {
        out.push_str(&format!("  the last px:sent() returned {} message(s):\n", list.len()));
        for m in list.iter() {
            out.push_str(&format!("    {}  ({})\n", m.first_line(), m.route_text()));
        }
    }
    out
}

fn fail(lua: &Lua, name: &str, custom: Option<&Value>, body: String) -> mlua::Error {
    let mut head = format!("{}: assert.{name} failed", position(lua));
    if let Some(m) = custom.and_then(lua_text) {
        head.push_str(": ");
        head.push_str(&m);
    }
    mlua::Error::RuntimeError(format!("{head}\n{body}"))
}

fn expected_actual(lua: &Lua, expected: &Value, actual: &Value) -> String {
    format!(
        "  expected: {}\n  actual:   {}\n{}",
        render(expected),
        render(actual),
        context(lua, Some(expected), actual)
    )
}

fn nth(args: &Variadic<Value>, i: usize) -> Value {
    args.get(i).cloned().unwrap_or(Value::Nil)
}

/// Replaces the global `assert` with busted's assertion table. `assert(v,
/// msg)` still works as Lua's own assert.
pub fn install(lua: &Lua) -> mlua::Result<()> {
    let a = lua.create_table()?;
    let set = |name: &str, f: Function| a.raw_set(name, f);

    set(
        "equals",
        lua.create_function(|lua, args: Variadic<Value>| {
            let (e, v) = (nth(&args, 0), nth(&args, 1));
            if shallow_eq(&e, &v) {
                return Ok(());
            }
            Err(fail(lua, "equals", args.get(2), expected_actual(lua, &e, &v)))
        })?,
    )?;
    set(
        "not_equals",
        lua.create_function(|lua, args: Variadic<Value>| {
            let (e, v) = (nth(&args, 0), nth(&args, 1));
            if !shallow_eq(&e, &v) {
                return Ok(());
            }
            Err(fail(
                lua,
                "not_equals",
                args.get(2),
                format!("  both are: {}\n{}", render(&v), context(lua, None, &v)),
            ))
        })?,
    )?;
    set(
        "same",
        lua.create_function(|lua, args: Variadic<Value>| {
            let (e, v) = (nth(&args, 0), nth(&args, 1));
            if deep_eq(&e, &v, 0) {
                return Ok(());
            }
            let mut body = expected_actual(lua, &e, &v);
            if let (Value::Table(_), Value::Table(_)) = (&e, &v) {
                body.push_str("  diff (- expected, + actual):\n");
                body.push_str(&diff(&render_lines(&e), &render_lines(&v)));
            }
            Err(fail(lua, "same", args.get(2), body))
        })?,
    )?;
    type Pred = fn(&Value) -> bool;
    let unary: [(&str, Pred, &str); 7] = [
        ("truthy", truthy, "a true value (neither nil nor false)"),
        ("falsy", |v| !truthy(v), "nil or false"),
        ("is_true", |v| matches!(v, Value::Boolean(true)), "true"),
        ("is_false", |v| matches!(v, Value::Boolean(false)), "false"),
        ("is_nil", |v| matches!(v, Value::Nil), "nil"),
        ("is_not_nil", |v| !matches!(v, Value::Nil), "anything but nil"),
        ("is_not_true", |v| !matches!(v, Value::Boolean(true)), "anything but true"),
    ];
    for (name, pred, want) in unary {
        set(
            name,
            lua.create_function(move |lua, args: Variadic<Value>| {
                let v = nth(&args, 0);
                if pred(&v) {
                    return Ok(());
                }
                Err(fail(
                    lua,
                    name,
                    args.get(1),
                    format!("  expected: {want}\n  actual:   {}\n{}", render(&v), context(lua, None, &v)),
                ))
            })?,
        )?;
    }
    set(
        "matches",
        lua.create_function(|lua, args: Variadic<Value>| {
            let (pattern, v) = (nth(&args, 0), nth(&args, 1));
            let find: Function = lua.globals().get::<Table>("string")?.get("find")?;
            let hit = match (&pattern, &v) {
                (Value::String(_), Value::String(_)) => truthy(&find.call::<Value>((v.clone(), pattern.clone()))?),
                _ => false,
            };
            if hit {
                return Ok(());
            }
            Err(fail(
                lua,
                "matches",
                args.get(2),
                format!(
                    "  pattern:  {}\n  actual:   {}\n{}",
                    render(&pattern),
                    render(&v),
                    context(lua, None, &v)
                ),
            ))
        })?,
    )?;
    set(
        "has_error",
        lua.create_function(|lua, args: Variadic<Value>| {
            let Value::Function(f) = nth(&args, 0) else {
                return Err(fail(lua, "has_error", None, "  the first argument must be a function".into()));
            };
            let want = lua_text(&nth(&args, 1));
            match f.call::<Value>(()) {
                Ok(_) => Err(fail(
                    lua,
                    "has_error",
                    args.get(2),
                    "  expected: an error\n  actual:   the function returned normally\n".into(),
                )),
                Err(e) => {
                    let got = super::error_text(&e);
                    match want {
                        Some(w) if !got.contains(&w) => Err(fail(
                            lua,
                            "has_error",
                            args.get(2),
                            format!("  expected an error containing: {w:?}\n  actual error: {got:?}\n"),
                        )),
                        _ => Ok(()),
                    }
                }
            }
        })?,
    )?;

    // busted's spellings: assert.equal, assert.are.same, assert.is.truthy, …
    lua.load(
        r#"
        local a = ...
        a.equal, a.not_equal, a.are_equal, a.are_same = a.equals, a.not_equals, a.equals, a.same
        a.is_truthy, a.is_falsy, a.error, a.errors, a.match = a.truthy, a.falsy, a.has_error, a.has_error, a.matches
        a.is_not_false = function(v, m) if v == false then a.is_not_true(true, m) end end
        a.are, a.is = a, a
        a.is_not, a.are_not = { equal = a.not_equals, equals = a.not_equals, is_nil = a.is_not_nil, ["nil"] = a.is_not_nil, truthy = a.falsy, falsy = a.truthy }, nil
        a.are_not = a.is_not
        a["nil"], a["true"], a["false"] = a.is_nil, a.is_true, a.is_false
        setmetatable(a, { __call = function(_, v, msg, ...)
          if not v then a.truthy(v, msg or "assertion failed!") end
          return v, msg, ...
        end })
        assert = a
        "#,
    )
    .set_name("=serlua-test-assert")
    .call::<()>(a)?;
    Ok(())
}

/// Forgets what the test read, between tests.
pub fn reset(lua: &Lua) {
    if let Some(t) = lua.app_data_ref::<Tracker>() {
        *t.touched.borrow_mut() = None;
        t.last_list.borrow_mut().clear();
    }
}

/// Keeps the list a proxy handed the test (for count failures).
pub fn note_list(lua: &Lua, list: &[Rc<Msg>]) {
    if let Some(t) = lua.app_data_ref::<Tracker>() {
        *t.last_list.borrow_mut() = list.to_vec();
    }
}
