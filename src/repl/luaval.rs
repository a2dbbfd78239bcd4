//! Lua values and errors as the REPL prints them: results like the
//! standalone `lua` interpreter prints an expression (strings bare, several
//! results separated by tabs), tables shown one level deep, and errors
//! with a stack traceback built from the Lua debug interface.

use mlua::{Lua, Value};

use crate::script::{ScriptExit, clean_lua_error};

/// How many entries of a table are shown before `…`.
const TABLE_PREVIEW: usize = 16;

/// One value as the REPL prints it.
pub fn show(v: &Value) -> String {
    show_depth(v, 1)
}

fn show_depth(v: &Value, depth: usize) -> String {
    match v {
        Value::Nil => "nil".into(),
        Value::Boolean(b) => b.to_string(),
        Value::Integer(i) => i.to_string(),
        Value::Number(n) => {
            // Lua prints integral floats with a `.0`.
            if n.is_finite() && n.fract() == 0.0 && n.abs() < 1e15 {
                format!("{n:.1}")
            } else {
                n.to_string()
            }
        }
        Value::String(s) => s.to_string_lossy(),
        Value::Table(t) if depth > 0 => {
            let mut parts = Vec::new();
            let mut n = 0usize;
            let len = t.raw_len();
            for i in 1..=len {
                if n == TABLE_PREVIEW {
                    parts.push("…".to_string());
                    break;
                }
                let item: Value = t.raw_get(i).unwrap_or(Value::Nil);
                parts.push(quoted(&item, depth - 1));
                n += 1;
            }
            if n < TABLE_PREVIEW {
                for (k, item) in t.clone().pairs::<Value, Value>().flatten() {
                    if matches!(k, Value::Integer(i) if i >= 1 && (i as usize) <= len) {
                        continue;
                    }
                    if n == TABLE_PREVIEW {
                        parts.push("…".to_string());
                        break;
                    }
                    let key = match &k {
                        Value::String(s) => {
                            let s = s.to_string_lossy();
                            if is_name(&s) { s } else { format!("[{s:?}]") }
                        }
                        other => format!("[{}]", quoted(other, 0)),
                    };
                    parts.push(format!("{key} = {}", quoted(&item, depth - 1)));
                    n += 1;
                }
            }
            format!("{{{}}}", parts.join(", "))
        }
        other => other
            .to_string()
            .unwrap_or_else(|_| format!("{}: {:p}", other.type_name(), other.to_pointer())),
    }
}

/// A value inside a table: strings quoted.
fn quoted(v: &Value, depth: usize) -> String {
    match v {
        Value::String(s) => format!("{:?}", s.to_string_lossy()),
        other => show_depth(other, depth),
    }
}

fn is_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next().is_some_and(|f| f.is_ascii_alphabetic() || f == '_') && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

/// Several results, tab-separated (the `lua` interpreter's way).
pub fn show_all(vals: &[Value]) -> String {
    vals.iter().map(show).collect::<Vec<_>>().join("\t")
}

/// What went wrong in an evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvalError {
    /// `exit()` or `drop()`: the script ended the message's routing (not an error).
    Exit,
    /// A Lua error: the message and its stack traceback.
    Error(String),
}

/// The message of a raised error value (a string, or an error object a
/// primitive raised), without the wrappers mlua adds around callback
/// errors.
pub fn error_message(v: &Value) -> Result<String, EvalError> {
    match v {
        Value::Error(e) => {
            let mut e: &mlua::Error = e;
            loop {
                if e.downcast_ref::<ScriptExit>().is_some() {
                    return Err(EvalError::Exit);
                }
                match e {
                    mlua::Error::CallbackError { cause, .. } => e = cause,
                    mlua::Error::WithContext { cause, .. } => e = cause,
                    _ => break,
                }
            }
            Ok(clean_lua_error(e))
        }
        Value::String(s) => Ok(s.to_string_lossy()),
        Value::Nil => Ok("nil".into()),
        other => Ok(format!("(error object is a {} value)", other.type_name())),
    }
}

/// The stack traceback at the point of an error, from the frames above
/// level 1 up to (not including) the REPL's own calling chunk named
/// `stop_at`; the format of Lua's `debug.traceback`.
pub fn traceback(lua: &Lua, stop_at: &str) -> String {
    let mut lines = vec!["stack traceback:".to_string()];
    for level in 1..64 {
        let Some((src, line, name, what)) = lua.inspect_stack(level, |d| {
            let s = d.source();
            let names = d.names();
            (
                s.short_src.as_deref().unwrap_or("?").to_string(),
                d.current_line(),
                names.name.as_deref().map(str::to_string),
                s.what,
            )
        }) else {
            break;
        };
        // The REPL's own frames (its xpcall and calling chunk) end the trace.
        if src == stop_at || (what == "C" && name.as_deref() == Some("xpcall")) {
            break;
        }
        let place = match line {
            Some(l) if what != "C" => format!("{src}:{l}:"),
            _ if what == "C" => "[C]:".to_string(),
            _ => format!("{src}:"),
        };
        let func = match (name, what) {
            (_, "main") => "in main chunk".to_string(),
            (Some(n), _) => format!("in function '{n}'"),
            (None, "C") => "in ?".to_string(),
            (None, _) => "in function <anonymous>".to_string(),
        };
        lines.push(format!("\t{place} {func}"));
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_print_like_the_lua_interpreter() {
        let lua = Lua::new();
        let v: mlua::MultiValue = lua.load(r#"return 1, 2.0, "x", nil, true, {1, "a", k = 2}"#).eval().unwrap();
        let v: Vec<Value> = v.into_iter().collect();
        assert_eq!(show_all(&v), "1\t2.0\tx\tnil\ttrue\t{1, \"a\", k = 2}");
    }
}
