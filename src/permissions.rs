//! permissions: trusted peers (SER's permissions module over the
//! `trusted` table: `allow_trusted`). The reference lets its PSTN gateway
//! in without a challenge this way (chapter 9, note 7).

use std::rc::Rc;

use mlua::Lua;

use crate::core::{Env, MsgCtx};
use crate::script::args::StrArg;
use crate::script::export::{Export, RouteMask};
use crate::script::register as reg;

/// permissions' script functions.
pub const EXPORTS: &[Export] = &[Export::new("allow_trusted", 0, 2, RouteMask::ANY)];

/// True when a `trusted` row matches the message: its source address,
/// its protocol (or `any`), and, when set, the From URI against
/// `from_pattern` and the Request-URI against `ruri_pattern`.
pub fn allow_trusted(env: &Env, ctx: &MsgCtx, src: Option<std::net::IpAddr>, proto: Option<&str>) -> bool {
    let ip = src.unwrap_or(ctx.src.ip());
    let proto = proto.map(str::to_ascii_lowercase).unwrap_or_else(|| ctx.proto.lower().to_string());
    let from = ctx.msg.from().uri.to_string();
    let ruri = ctx.msg.ruri().map(|u| u.to_string());
    env.shared.store.trusted().iter().any(|r| {
        r.ip == ip
            && (r.row.proto.eq_ignore_ascii_case("any") || r.row.proto.eq_ignore_ascii_case(&proto))
            && r.from_re.as_ref().is_none_or(|re| re.is_match(&from))
            && r.ruri_re.as_ref().is_none_or(|re| ruri.as_deref().is_some_and(|u| re.is_match(u)))
    })
}

/// Registers permissions' primitives.
pub fn register(lua: &Lua, env: &Rc<Env>) -> mlua::Result<()> {
    reg(
        lua,
        env,
        EXPORTS,
        "allow_trusted",
        |_, env, ctx, (ip, proto): (Option<StrArg>, Option<StrArg>)| {
            let ip = match ip {
                None => None,
                Some(StrArg(s)) => Some(
                    s.trim()
                        .parse()
                        .map_err(|_| crate::core::lua_err(format!("allow_trusted: '{s}' is not an IP address")))?,
                ),
            };
            Ok(allow_trusted(env, ctx, ip, proto.as_ref().map(|p| p.0.as_str())))
        },
    )
}
