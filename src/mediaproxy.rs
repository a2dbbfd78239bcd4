//! mediaproxy: SER's mediaproxy module, the NAT traversal of the
//! reference's mediaproxy and PSTN chapters: NAT detection
//! (`client_nat_test`) and the media relay (`use_media_proxy`,
//! `end_media_session`), which drives the same relay as rtpproxy's
//! `force_rtp_proxy` ([`crate::rtpproxy::relay_media`]).

use std::rc::Rc;

use mlua::Lua;

use crate::core::{Env, MsgCtx, lua_err};
use crate::nathelper::{contact_is_private, via_address_differs, via_is_private};
use crate::script::args::IntArg;
use crate::script::export::{Export, LitArg, RouteMask, check_int_arg};
use crate::script::register as reg;

/// mediaproxy's script functions, with the route types SER's module
/// allows them in.
pub const EXPORTS: &[Export] = &[
    Export::new(
        "client_nat_test",
        1,
        1,
        RouteMask::REQUEST.or(RouteMask::ONREPLY).or(RouteMask::FAILURE),
    )
    .with_fixup(fix_type),
    Export::new("use_media_proxy", 0, 0, RouteMask::ANY),
    Export::new("end_media_session", 0, 0, RouteMask::ANY),
];

fn fix_type(args: &[Option<LitArg>]) -> Result<(), String> {
    check_int_arg(args, "client_nat_test type", 0..=7)
}

/// SER mediaproxy's `client_nat_test(type)`: whether the sender of the
/// message is behind a NAT. `type` adds up the tests to run; true when any
/// matches: 1 the Contact has a private address, 2 the source address
/// differs from the top Via's sent-by (the proxy adds `received`, RFC 3261
/// §18.2.1), 4 the top Via has a private address. The reference uses 3
/// for INVITEs (note 34) and 7 for REGISTERs. Private addresses are
/// nathelper's (RFC 1918 and the RFC 6598 carrier-grade space, as
/// Kamailio's nat_traversal, mediaproxy's successor, counts them).
pub fn client_nat_test(ctx: &MsgCtx, tests: u32) -> bool {
    (tests & 1 != 0 && contact_is_private(ctx)) || (tests & 2 != 0 && via_address_differs(ctx)) || (tests & 4 != 0 && via_is_private(ctx))
}

/// Registers mediaproxy's primitives.
pub fn register(lua: &Lua, env: &Rc<Env>) -> mlua::Result<()> {
    reg(lua, env, EXPORTS, "client_nat_test", |_, _, ctx, IntArg(t): IntArg| {
        if !(0..=7).contains(&t) {
            return Err(lua_err(format!("client_nat_test: type {t} is outside 0..7")));
        }
        Ok(client_nat_test(ctx, t as u32))
    })?;
    // An offer for a request, the answer for a reply (SER mediaproxy picks
    // by message type the same way); calling it twice on one message is
    // harmless (the reference's note 42 guards with flag 8).
    reg(lua, env, EXPORTS, "use_media_proxy", |_, env, ctx, ()| {
        Ok(crate::rtpproxy::relay_media(env, ctx, false, "use_media_proxy"))
    })?;
    reg(lua, env, EXPORTS, "end_media_session", |_, env, ctx, ()| {
        Ok(crate::rtpproxy::end_media(env, ctx, "end_media_session"))
    })
}
