//! avpops: attribute-value pairs attached to a transaction (SER's avpops:
//! `avp_write`, `avp_check`, `avp_delete`; `avp_read` returns a value to
//! Lua). tm reads the `inv_timeout` AVP when the reference's PSTN route
//! gives the gateway 45 s (`avp_write("i:45", "inv_timeout")`).

use std::rc::Rc;

use mlua::{Lua, Value};

use crate::core::{AvpName, AvpValue, Env, MsgCtx, lua_err};
use crate::script::args::StrArg;
use crate::script::export::{Export, LitArg, RouteMask};
use crate::script::register as reg;

/// avpops' script functions.
pub const EXPORTS: &[Export] = &[
    Export::new("avp_write", 2, 2, RouteMask::ANY),
    Export::new("avp_read", 1, 1, RouteMask::ANY),
    Export::new("avp_check", 2, 2, RouteMask::ANY).with_fixup(fix_check),
    Export::new("avp_delete", 1, 1, RouteMask::ANY),
];

fn fix_check(args: &[Option<LitArg>]) -> Result<(), String> {
    if let Some(Some(LitArg::Str(op))) = args.get(1) {
        parse_check(op)?;
    }
    Ok(())
}

/// Parses an AVP name: `inv_timeout`, `s:inv_timeout`, `i:45`,
/// `$avp(inv_timeout)`, `$avp(i:45)`.
pub fn parse_name(s: &str) -> Result<AvpName, String> {
    let s = s.trim();
    let inner = s.strip_prefix("$avp(").and_then(|r| r.strip_suffix(')')).unwrap_or(s);
    if let Some(n) = inner.strip_prefix("i:") {
        return n.trim().parse().map(AvpName::Int).map_err(|_| format!("bad AVP id '{inner}'"));
    }
    let name = inner.strip_prefix("s:").unwrap_or(inner);
    if name.is_empty() {
        return Err("empty AVP name".into());
    }
    Ok(AvpName::Str(name.to_string()))
}

/// The value of `avp_write`'s first argument: `i:45`, `s:text`, a pseudo
/// variable (`$ruri`, `$from`, `$to`, `$src_ip`), or plain text.
fn parse_value(ctx: &MsgCtx, s: &str) -> Result<AvpValue, String> {
    if let Some(n) = s.strip_prefix("i:") {
        return n.trim().parse().map(AvpValue::Int).map_err(|_| format!("bad integer value '{s}'"));
    }
    if let Some(t) = s.strip_prefix("s:") {
        return Ok(AvpValue::Str(t.to_string()));
    }
    match s {
        "$ruri" => Ok(AvpValue::Str(ctx.msg.ruri().map(|u| u.to_string()).unwrap_or_default())),
        "$from" => Ok(AvpValue::Str(ctx.msg.from().uri.to_string())),
        "$to" => Ok(AvpValue::Str(ctx.msg.to().uri.to_string())),
        "$src_ip" => Ok(AvpValue::Str(ctx.src.ip().to_string())),
        other if other.starts_with('$') => Err(format!("unknown pseudo-variable '{other}'")),
        other => Ok(AvpValue::Str(other.to_string())),
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Re,
    And,
    Or,
    Xor,
}

fn parse_check(s: &str) -> Result<(Op, String, bool, bool), String> {
    let mut parts = s.splitn(3, '/');
    let op = match parts.next().unwrap_or("") {
        "eq" => Op::Eq,
        "ne" => Op::Ne,
        "lt" => Op::Lt,
        "le" => Op::Le,
        "gt" => Op::Gt,
        "ge" => Op::Ge,
        "re" => Op::Re,
        "and" => Op::And,
        "or" => Op::Or,
        "xor" => Op::Xor,
        other => return Err(format!("avp_check: unknown operator '{other}' (eq ne lt le gt ge re and or xor)")),
    };
    let value = parts.next().ok_or("avp_check: expected 'op/value[/flags]'")?.to_string();
    let flags = parts.next().unwrap_or("");
    Ok((op, value, flags.contains('g'), flags.contains('i')))
}

fn compare(env: &Env, op: Op, have: &AvpValue, want: &AvpValue, icase: bool) -> Result<bool, String> {
    use std::cmp::Ordering;
    let ord = match (have, want) {
        (AvpValue::Int(a), AvpValue::Int(b)) => {
            match op {
                Op::And => return Ok(a & b != 0),
                Op::Or => return Ok(a | b != 0),
                Op::Xor => return Ok(a ^ b != 0),
                _ => {}
            }
            a.cmp(b)
        }
        (a, b) => {
            let sa = avp_text(a);
            let sb = avp_text(b);
            if op == Op::Re {
                let r = env.regex(&format!("{}{}", if icase { "(?i)" } else { "" }, sb))?;
                return Ok(r.is_match(sa.as_bytes()));
            }
            if icase {
                sa.to_lowercase().cmp(&sb.to_lowercase())
            } else {
                sa.cmp(&sb)
            }
        }
    };
    Ok(match op {
        Op::Eq => ord == Ordering::Equal,
        Op::Ne => ord != Ordering::Equal,
        Op::Lt => ord == Ordering::Less,
        Op::Le => ord != Ordering::Greater,
        Op::Gt => ord == Ordering::Greater,
        Op::Ge => ord != Ordering::Less,
        Op::Re | Op::And | Op::Or | Op::Xor => false,
    })
}

fn avp_text(v: &AvpValue) -> String {
    match v {
        AvpValue::Int(i) => i.to_string(),
        AvpValue::Str(s) => s.clone(),
    }
}

/// Registers avpops' primitives.
pub fn register(lua: &Lua, env: &Rc<Env>) -> mlua::Result<()> {
    reg(
        lua,
        env,
        EXPORTS,
        "avp_write",
        |_, _, ctx, (value, StrArg(name)): (Value, StrArg)| {
            let name = parse_name(&name).map_err(lua_err)?;
            let v = match value {
                Value::Integer(i) => AvpValue::Int(i),
                Value::Number(n) if n.fract() == 0.0 => AvpValue::Int(n as i64),
                Value::String(s) => parse_value(ctx, &s.to_string_lossy()).map_err(lua_err)?,
                other => {
                    return Err(lua_err(format!(
                        "avp_write: value must be a string or a number, not {}",
                        other.type_name()
                    )));
                }
            };
            ctx.avps.write(name, v);
            Ok(true)
        },
    )?;
    reg(lua, env, EXPORTS, "avp_read", |lua, _, ctx, StrArg(name): StrArg| {
        let name = parse_name(&name).map_err(lua_err)?;
        Ok(match ctx.avps.read(&name) {
            None => Value::Nil,
            Some(AvpValue::Int(i)) => Value::Integer(*i),
            Some(AvpValue::Str(s)) => Value::String(lua.create_string(s)?),
        })
    })?;
    reg(lua, env, EXPORTS, "avp_delete", |_, _, ctx, StrArg(name): StrArg| {
        let name = parse_name(&name).map_err(lua_err)?;
        Ok(ctx.avps.delete(&name) > 0)
    })?;
    reg(
        lua,
        env,
        EXPORTS,
        "avp_check",
        |_, env, ctx, (StrArg(name), StrArg(check)): (StrArg, StrArg)| {
            let name = parse_name(&name).map_err(lua_err)?;
            let (op, value, all, icase) = parse_check(&check).map_err(lua_err)?;
            let want = if let Some(other) = value.strip_prefix('$') {
                match ctx.avps.read(&parse_name(other).map_err(lua_err)?) {
                    Some(v) => v.clone(),
                    None => return Ok(false),
                }
            } else {
                parse_value(ctx, &value).map_err(lua_err)?
            };
            let values: Vec<AvpValue> = if all {
                ctx.avps.read_all(&name).into_iter().cloned().collect()
            } else {
                ctx.avps.read(&name).cloned().into_iter().collect()
            };
            for v in &values {
                if compare(env, op, v, &want, icase).map_err(lua_err)? {
                    return Ok(true);
                }
            }
            Ok(false)
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(parse_name("inv_timeout").unwrap(), AvpName::Str("inv_timeout".into()));
        assert_eq!(parse_name("$avp(i:45)").unwrap(), AvpName::Int(45));
        assert_eq!(parse_name("s:x").unwrap(), AvpName::Str("x".into()));
        assert!(parse_name("i:x").is_err());
        assert!(parse_check("eq/i:45").is_ok());
        assert!(parse_check("zz/1").is_err());
    }
}
