//! The `msg` object: the message being routed as Lua sees it
//! (`msg.method`, `msg.ruri`, `msg.status`, `msg.len`, `msg.src_ip`,
//! `msg.src_port`, `msg.proto`, `msg.body`, `msg.call_id`, `msg.from_uri`,
//! `msg.to_uri`, `msg.from_tag`, `msg.to_tag`, `msg.dst_uri`,
//! `msg:header(name)`, `msg:headers(name)`). One object per VM; each
//! message is swapped in behind it.

use std::rc::Rc;

use mlua::{Lua, Value};

use crate::core::{Env, lua_err};
use crate::sip::{HeaderName, Uri};

/// The fields `msg.NAME` reads (the REPL completes them).
pub const FIELDS: &[&str] = &[
    "method", "ruri", "status", "reason", "len", "src_ip", "src_port", "proto", "body", "call_id", "from_uri", "to_uri", "from_tag",
    "to_tag", "dst_uri", "flags",
];

/// The methods `msg:NAME(…)` offers.
pub const METHODS: &[&str] = &["header", "headers"];

/// Creates the global `msg`.
pub fn install(lua: &Lua, env: &Rc<Env>) -> mlua::Result<()> {
    let obj = lua.create_table()?;
    let e = env.clone();
    obj.raw_set(
        "header",
        lua.create_function(move |lua, (_this, name): (Value, String)| {
            e.with_msg(|ctx| match ctx.msg.header(&HeaderName::from_text(&name)) {
                Some(v) => Ok(Value::String(lua.create_string(&*v)?)),
                None => Ok(Value::Nil),
            })
        })?,
    )?;
    let e = env.clone();
    obj.raw_set(
        "headers",
        lua.create_function(move |lua, (_this, name): (Value, String)| {
            e.with_msg(|ctx| {
                let t = lua.create_table()?;
                for (i, v) in ctx.msg.headers(&HeaderName::from_text(&name)).iter().enumerate() {
                    t.raw_set(i + 1, lua.create_string(&**v)?)?;
                }
                Ok(t)
            })
        })?,
    )?;
    let meta = lua.create_table()?;
    let e = env.clone();
    meta.raw_set(
        "__index",
        lua.create_function(move |lua, (_this, key): (Value, String)| e.with_msg(|ctx| field(lua, ctx, &key)))?,
    )?;
    let e = env.clone();
    meta.raw_set(
        "__newindex",
        lua.create_function(move |_, (_this, key, value): (Value, String, Value)| {
            e.with_msg(|ctx| match key.as_str() {
                "ruri" => {
                    let s = str_value(&value, "msg.ruri")?;
                    if !ctx.msg.is_request() {
                        return Err(lua_err("msg.ruri can only be set on a request"));
                    }
                    let uri = Uri::parse(&s).map_err(|e| lua_err(format!("msg.ruri: '{s}' is not a valid URI ({})", e.reason)))?;
                    ctx.msg.set_ruri(uri);
                    Ok(())
                }
                "dst_uri" => {
                    if let Value::Nil = value {
                        ctx.dst_uri = None;
                        return Ok(());
                    }
                    let s = str_value(&value, "msg.dst_uri")?;
                    let uri = Uri::parse(&s).map_err(|e| lua_err(format!("msg.dst_uri: '{s}' is not a valid URI ({})", e.reason)))?;
                    ctx.dst_uri = Some(uri);
                    Ok(())
                }
                other => Err(lua_err(format!(
                    "msg.{other} cannot be assigned (only msg.ruri and msg.dst_uri can)"
                ))),
            })
        })?,
    )?;
    obj.set_metatable(Some(meta))?;
    lua.globals().set("msg", obj)
}

fn str_value(v: &Value, what: &str) -> mlua::Result<String> {
    match v {
        Value::String(s) => Ok(s.to_string_lossy()),
        other => Err(lua_err(format!("{what} must be a string, not {}", other.type_name()))),
    }
}

fn field(lua: &Lua, ctx: &mut crate::core::MsgCtx, key: &str) -> mlua::Result<Value> {
    let s = |t: &str| -> mlua::Result<Value> { Ok(Value::String(lua.create_string(t)?)) };
    match key {
        "method" => match ctx.msg.method() {
            Some(m) => s(m.as_str()),
            // SER's `method` on a reply is the CSeq method.
            None => s(ctx.msg.cseq().method.as_str()),
        },
        "ruri" => match ctx.msg.ruri() {
            Some(u) => s(&u.to_string()),
            None => Ok(Value::Nil),
        },
        "status" => Ok(ctx.msg.status().map(|c| Value::Integer(c as i64)).unwrap_or(Value::Nil)),
        "reason" => match ctx.msg.reason() {
            Some(r) => s(r),
            None => Ok(Value::Nil),
        },
        "len" => Ok(Value::Integer(ctx.msg.orig_len() as i64)),
        "src_ip" => s(&ctx.src.ip().to_string()),
        "src_port" => Ok(Value::Integer(ctx.src.port() as i64)),
        "proto" => s(ctx.proto.lower()),
        "body" => Ok(Value::String(lua.create_string(ctx.msg.body())?)),
        "call_id" => s(ctx.msg.call_id()),
        "from_uri" => s(&ctx.msg.from().uri.to_string()),
        "to_uri" => s(&ctx.msg.to().uri.to_string()),
        "from_tag" => match ctx.msg.from().tag() {
            Some(t) => s(t),
            None => Ok(Value::Nil),
        },
        "to_tag" => match ctx.msg.to().tag() {
            Some(t) => s(t),
            None => Ok(Value::Nil),
        },
        "dst_uri" => match &ctx.dst_uri {
            Some(u) => s(&u.to_string()),
            None => Ok(Value::Nil),
        },
        "flags" => Ok(Value::Integer(ctx.flags as i64)),
        other => Err(lua_err(format!(
            "msg has no field '{other}' (fields: {}; methods: msg:header(name), msg:headers(name))",
            FIELDS.join(", ")
        ))),
    }
}
