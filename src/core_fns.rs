//! SER core functions: message flags, `is_myself` (ser.cfg's
//! `uri==myself`), regex matching (ser.cfg's `=~`), `drop`/`exit`,
//! stateless `forward`, Request-URI rewriting (`strip`, `prefix`,
//! `rewritehost`, `rewritehostport`, `rewriteuser`, `rewriteuri`),
//! `append_branch`, and `log`.

use std::rc::Rc;

use mlua::{Lua, Value};

use crate::core::{BranchTarget, Env, MsgCtx, lua_err};
use crate::script::args::{IntArg, StrArg};
use crate::script::export::{Export, LitArg, RouteMask, check_int_arg};
use crate::script::register as reg;
use crate::script::{ScriptExit, at_caller};
use crate::sip::{Host, Uri};

/// Core script functions.
pub const EXPORTS: &[Export] = &[
    Export::new("setflag", 1, 1, RouteMask::ANY).with_fixup(fix_flag),
    Export::new("resetflag", 1, 1, RouteMask::ANY).with_fixup(fix_flag),
    Export::new("isflagset", 1, 1, RouteMask::ANY).with_fixup(fix_flag),
    Export::new("is_myself", 1, 1, RouteMask::ANY),
    Export::new("regex_match", 2, 2, RouteMask::ANY).with_fixup(fix_match),
    Export::new("drop", 0, 0, RouteMask::ANY),
    Export::new("exit", 0, 0, RouteMask::ANY),
    Export::new("forward", 0, 2, RouteMask::REQUEST),
    Export::new("strip", 1, 1, RouteMask::REQ_LIKE),
    Export::new("strip_tail", 1, 1, RouteMask::REQ_LIKE),
    Export::new("prefix", 1, 1, RouteMask::REQ_LIKE),
    Export::new("rewritehost", 1, 1, RouteMask::REQ_LIKE),
    Export::new("rewritehostport", 1, 1, RouteMask::REQ_LIKE),
    Export::new("rewriteport", 1, 1, RouteMask::REQ_LIKE),
    Export::new("rewriteuser", 1, 1, RouteMask::REQ_LIKE),
    Export::new("rewriteuri", 1, 1, RouteMask::REQ_LIKE),
    Export::new("append_branch", 0, 2, RouteMask::REQ_LIKE),
    Export::new("log", 1, 2, RouteMask::ANY),
];

fn fix_flag(args: &[Option<LitArg>]) -> Result<(), String> {
    check_int_arg(args, "flag", 0..=31)
}

fn fix_match(args: &[Option<LitArg>]) -> Result<(), String> {
    if let Some(Some(LitArg::Str(re))) = args.get(1) {
        regex::bytes::Regex::new(&match_regex(re)).map_err(|e| format!("bad regular expression: {e}"))?;
    }
    Ok(())
}

/// ser.cfg's `=~` compiles with REG_EXTENDED|REG_ICASE: case-insensitive.
pub fn match_regex(re: &str) -> String {
    format!("(?i){re}")
}

fn flag_bit(IntArg(f): IntArg) -> mlua::Result<u32> {
    if (0..=31).contains(&f) {
        Ok(1u32 << f)
    } else {
        Err(lua_err(format!("flag {f} is outside 0..31")))
    }
}

/// Splits `host[:port]` (IPv6 in brackets) for rewritehostport.
pub fn parse_hostport(s: &str) -> Option<(Host, Option<u16>)> {
    let s = s.trim();
    let (h, p) = if s.starts_with('[') {
        let end = s.find(']')?;
        let rest = &s[end + 1..];
        (&s[..=end], if rest.is_empty() { None } else { Some(rest.strip_prefix(':')?) })
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => (h, Some(p)),
            _ => (s, None),
        }
    };
    let host = Host::parse(h).ok()?;
    let port = match p {
        Some(p) => Some(p.parse().ok()?),
        None => None,
    };
    Some((host, port))
}

fn edit_ruri(ctx: &mut MsgCtx, f: impl FnOnce(&mut Uri) -> Result<(), String>) -> mlua::Result<bool> {
    let Some(mut uri) = ctx.msg.ruri().cloned() else {
        return Err(lua_err("the message has no Request-URI"));
    };
    f(&mut uri).map_err(lua_err)?;
    ctx.msg.set_ruri(uri);
    Ok(true)
}

/// Registers the core primitives.
pub fn register(lua: &Lua, env: &Rc<Env>) -> mlua::Result<()> {
    reg(lua, env, EXPORTS, "setflag", |_, _, ctx, f: IntArg| {
        ctx.flags |= flag_bit(f)?;
        Ok(true)
    })?;
    reg(lua, env, EXPORTS, "resetflag", |_, _, ctx, f: IntArg| {
        ctx.flags &= !flag_bit(f)?;
        Ok(true)
    })?;
    reg(lua, env, EXPORTS, "isflagset", |_, _, ctx, f: IntArg| {
        Ok(ctx.flags & flag_bit(f)? != 0)
    })?;
    reg(lua, env, EXPORTS, "is_myself", |_, env, _, StrArg(s): StrArg| {
        if let Ok(uri) = Uri::parse(s.trim()) {
            return Ok(uri.is_sip() && env.shared.is_myself(&uri.host, uri.port, uri.default_port()));
        }
        Ok(match parse_hostport(&s) {
            Some((h, p)) => env.shared.is_myself(&h, p, 5060),
            None => false,
        })
    })?;
    reg(
        lua,
        env,
        EXPORTS,
        "regex_match",
        |_, env, _, (subject, StrArg(re)): (Value, StrArg)| {
            let subject = match subject {
                Value::Nil => return Ok(false),
                Value::String(s) => s.as_bytes().to_vec(),
                Value::Integer(i) => i.to_string().into_bytes(),
                Value::Number(n) => n.to_string().into_bytes(),
                other => return Err(lua_err(format!("regex_match: subject must be a string, not {}", other.type_name()))),
            };
            let r = env.regex(&match_regex(&re)).map_err(lua_err)?;
            Ok(r.is_match(&subject))
        },
    )?;
    reg(lua, env, EXPORTS, "drop", |_, _, ctx, ()| -> mlua::Result<()> {
        ctx.dropped = true;
        Err(mlua::Error::external(ScriptExit))
    })?;
    reg(lua, env, EXPORTS, "exit", |_, _, _, ()| -> mlua::Result<()> {
        Err(mlua::Error::external(ScriptExit))
    })?;
    reg(
        lua,
        env,
        EXPORTS,
        "forward",
        |lua, env, ctx, (host, port): (Option<StrArg>, Option<IntArg>)| {
            let hop = match host {
                None => None,
                Some(StrArg(h)) => {
                    let (host, p) = parse_hostport(&h).ok_or_else(|| lua_err(at_caller(lua, &format!("forward: bad host '{h}'"))))?;
                    let port = match port {
                        Some(IntArg(p)) if (1..=65535).contains(&p) => Some(p as u16),
                        Some(IntArg(p)) => return Err(lua_err(format!("forward: bad port {p}"))),
                        None => p,
                    };
                    Some((host, port))
                }
            };
            Ok(crate::tm::forward_stateless(env, ctx, hop))
        },
    )?;
    reg(lua, env, EXPORTS, "strip", |_, _, ctx, IntArg(n): IntArg| {
        let Some(user) = ctx.msg.ruri().and_then(|u| u.user.clone()) else {
            return Ok(false);
        };
        if n < 0 || n as usize > user.len() || !user.is_char_boundary(n as usize) {
            return Ok(false);
        }
        edit_ruri(ctx, |u| {
            u.user = Some(user[n as usize..].to_string());
            Ok(())
        })
    })?;
    reg(lua, env, EXPORTS, "strip_tail", |_, _, ctx, IntArg(n): IntArg| {
        let Some(user) = ctx.msg.ruri().and_then(|u| u.user.clone()) else {
            return Ok(false);
        };
        if n < 0 || n as usize > user.len() || !user.is_char_boundary(user.len() - n as usize) {
            return Ok(false);
        }
        edit_ruri(ctx, |u| {
            u.user = Some(user[..user.len() - n as usize].to_string());
            Ok(())
        })
    })?;
    reg(lua, env, EXPORTS, "prefix", |_, _, ctx, StrArg(p): StrArg| {
        edit_ruri(ctx, |u| {
            u.user = Some(format!("{p}{}", u.user.as_deref().unwrap_or("")));
            Ok(())
        })
    })?;
    reg(lua, env, EXPORTS, "rewriteuser", |_, _, ctx, StrArg(user): StrArg| {
        edit_ruri(ctx, |u| {
            u.user = if user.is_empty() { None } else { Some(user) };
            Ok(())
        })
    })?;
    reg(lua, env, EXPORTS, "rewritehost", |_, _, ctx, StrArg(h): StrArg| {
        let host = Host::parse(h.trim()).map_err(|e| lua_err(format!("rewritehost: bad host '{h}' ({})", e.reason)))?;
        edit_ruri(ctx, |u| {
            u.host = host;
            Ok(())
        })
    })?;
    reg(lua, env, EXPORTS, "rewritehostport", |_, _, ctx, StrArg(hp): StrArg| {
        let (host, port) = parse_hostport(&hp).ok_or_else(|| lua_err(format!("rewritehostport: bad host:port '{hp}'")))?;
        edit_ruri(ctx, |u| {
            u.host = host;
            u.port = port;
            Ok(())
        })
    })?;
    reg(lua, env, EXPORTS, "rewriteport", |_, _, ctx, IntArg(p): IntArg| {
        if !(0..=65535).contains(&p) {
            return Err(lua_err(format!("rewriteport: bad port {p}")));
        }
        edit_ruri(ctx, |u| {
            u.port = if p == 0 { None } else { Some(p as u16) };
            Ok(())
        })
    })?;
    reg(lua, env, EXPORTS, "rewriteuri", |_, _, ctx, StrArg(s): StrArg| {
        let uri = Uri::parse(s.trim()).map_err(|e| lua_err(format!("rewriteuri: bad URI '{s}' ({})", e.reason)))?;
        if !ctx.msg.is_request() {
            return Ok(false);
        }
        ctx.msg.set_ruri(uri);
        Ok(true)
    })?;
    reg(
        lua,
        env,
        EXPORTS,
        "append_branch",
        |_, _, ctx, (uri, q): (Option<StrArg>, Option<Value>)| {
            let (uri, dst_uri) = match uri {
                Some(StrArg(s)) => (
                    Uri::parse(s.trim()).map_err(|e| lua_err(format!("append_branch: bad URI '{s}' ({})", e.reason)))?,
                    None,
                ),
                None => match ctx.msg.ruri() {
                    Some(u) => (u.clone(), ctx.dst_uri.clone()),
                    None => return Ok(false),
                },
            };
            let q = match q {
                Some(Value::Number(n)) => Some(n as f32),
                Some(Value::Integer(i)) => Some(i as f32),
                Some(Value::String(s)) => s.to_string_lossy().trim().parse().ok(),
                _ => None,
            };
            if ctx.branches.len() >= crate::tm::MAX_BRANCHES {
                return Ok(false);
            }
            ctx.branches.push(BranchTarget { uri, dst_uri, q });
            Ok(true)
        },
    )?;
    reg(lua, env, EXPORTS, "log", |_, _, _, (a, b): (Value, Option<Value>)| {
        // log("text") or log(level, "text") as in ser.cfg (level: SER's 1..4 or a name).
        let (level, text) = match b {
            Some(t) => (crate::script::value_text(&a), crate::script::value_text(&t)),
            None => ("info".to_string(), crate::script::value_text(&a)),
        };
        let text = text.trim_end();
        match level.to_ascii_lowercase().trim_start_matches("l_") {
            "err" | "error" | "crit" | "alert" | "-1" | "-2" | "-3" => tracing::error!(target: "script", "{text}"),
            "warn" | "1" => tracing::warn!(target: "script", "{text}"),
            "dbg" | "debug" | "4" => tracing::debug!(target: "script", "{text}"),
            _ => tracing::info!(target: "script", "{text}"),
        }
        Ok(true)
    })
}
