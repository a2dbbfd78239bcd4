//! Argument conversions for primitives. ser.cfg passes every argument as a
//! string (`sl_send_reply("483", "Too Many Hops")`, `setflag(6)`); Lua
//! admins write numbers. Both are accepted.

use mlua::{FromLua, Lua, Value};

use crate::core::lua_err;

/// An integer argument: a Lua integer, an integral float, or a numeric
/// string.
#[derive(Clone, Copy, Debug)]
pub struct IntArg(pub i64);

impl FromLua for IntArg {
    fn from_lua(v: Value, _: &Lua) -> mlua::Result<IntArg> {
        match v {
            Value::Integer(i) => Ok(IntArg(i)),
            Value::Number(n) if n.fract() == 0.0 && n.abs() < 9.0e15 => Ok(IntArg(n as i64)),
            Value::String(s) => {
                let t = s.to_string_lossy();
                t.trim()
                    .parse()
                    .map(IntArg)
                    .map_err(|_| lua_err(format!("expected an integer, got \"{t}\"")))
            }
            other => Err(lua_err(format!("expected an integer, got {}", other.type_name()))),
        }
    }
}

/// A string argument: a Lua string or a number (written in decimal).
#[derive(Clone, Debug)]
pub struct StrArg(pub String);

impl FromLua for StrArg {
    fn from_lua(v: Value, _: &Lua) -> mlua::Result<StrArg> {
        match v {
            Value::String(s) => Ok(StrArg(s.to_string_lossy())),
            Value::Integer(i) => Ok(StrArg(i.to_string())),
            Value::Number(n) => Ok(StrArg(n.to_string())),
            other => Err(lua_err(format!("expected a string, got {}", other.type_name()))),
        }
    }
}

/// A reply code 100..=699 (RFC 3261 §21).
pub fn reply_code(IntArg(c): IntArg) -> mlua::Result<u16> {
    if (100..=699).contains(&c) {
        Ok(c as u16)
    } else {
        Err(lua_err(format!("reply code {c} is outside 100..699")))
    }
}
