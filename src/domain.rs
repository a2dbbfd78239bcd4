//! domain: is a domain one of ours? (SER's domain module over the
//! `domain` table: `is_uri_host_local`, `is_from_local`,
//! `is_domain_local`; reference chapter 9, notes 9 and 10).

use std::rc::Rc;

use mlua::Lua;

use crate::core::Env;
use crate::script::args::StrArg;
use crate::script::export::{Export, RouteMask};
use crate::script::register as reg;
use crate::sip::Uri;

/// domain's script functions.
pub const EXPORTS: &[Export] = &[
    Export::new("is_uri_host_local", 0, 0, RouteMask::REQ_LIKE),
    Export::new("is_from_local", 0, 0, RouteMask::ANY),
    Export::new("is_domain_local", 1, 1, RouteMask::ANY),
];

/// Registers domain's primitives.
pub fn register(lua: &Lua, env: &Rc<Env>) -> mlua::Result<()> {
    reg(lua, env, EXPORTS, "is_uri_host_local", |_, env, ctx, ()| {
        Ok(ctx.msg.ruri().is_some_and(|u| env.shared.store.is_local_domain(&u.host.text)))
    })?;
    reg(lua, env, EXPORTS, "is_from_local", |_, env, ctx, ()| {
        Ok(env.shared.store.is_local_domain(&ctx.msg.from().uri.host.text))
    })?;
    reg(lua, env, EXPORTS, "is_domain_local", |_, env, _, StrArg(s): StrArg| {
        // A URI or a bare domain, as Kamailio's is_domain_local takes.
        let host = match Uri::parse(s.trim()) {
            Ok(u) if u.is_sip() => u.host.text,
            _ => s.trim().to_string(),
        };
        Ok(env.shared.store.is_local_domain(&host))
    })
}
