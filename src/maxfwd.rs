//! maxfwd: Max-Forwards processing (RFC 3261 §16.3 step 2, §16.6 step 3;
//! SER's `mf_process_maxfwd_header`).

use std::rc::Rc;

use mlua::Lua;

use crate::core::{Env, MsgCtx};
use crate::script::args::IntArg;
use crate::script::export::{Export, LitArg, RouteMask, check_int_arg};
use crate::script::register as reg;
use crate::sip::HeaderName;

/// maxfwd's script functions.
pub const EXPORTS: &[Export] = &[Export::new("mf_process_maxfwd_header", 1, 1, RouteMask::REQUEST).with_fixup(fix_max)];

fn fix_max(args: &[Option<LitArg>]) -> Result<(), String> {
    check_int_arg(args, "max value", 1..=255)
}

/// SER semantics: no Max-Forwards → add one with `max`; otherwise
/// decrement it. Returns false when the value already is 0 (the script
/// then answers 483) or is not a number; `limit` (modparam max_limit)
/// caps values above it, as Kamailio does.
pub fn process(ctx: &mut MsgCtx, max: u32, limit: u32) -> bool {
    match ctx.msg.header(&HeaderName::MaxForwards) {
        None => {
            ctx.msg.set_header(HeaderName::MaxForwards, max.to_string().as_bytes());
            true
        }
        Some(v) => {
            let Some(n) = std::str::from_utf8(&v).ok().and_then(|s| s.trim().parse::<u32>().ok()) else {
                ctx.fail(400, "Bad Request - malformed Max-Forwards");
                return false;
            };
            if n == 0 {
                return false;
            }
            let next = (n - 1).min(limit);
            ctx.msg.set_header(HeaderName::MaxForwards, next.to_string().as_bytes());
            true
        }
    }
}

/// Registers maxfwd's primitives.
pub fn register(lua: &Lua, env: &Rc<Env>) -> mlua::Result<()> {
    reg(lua, env, EXPORTS, "mf_process_maxfwd_header", |_, env, ctx, IntArg(max): IntArg| {
        if !(1..=255).contains(&max) {
            return Err(crate::core::lua_err(format!("mf_process_maxfwd_header: {max} is outside 1..255")));
        }
        Ok(process(ctx, max as u32, env.shared.cfg.maxfwd_limit))
    })
}
