//! uri_db: `check_to()` and `check_from()` — the identity in To/From must
//! be the one that authenticated (SER's uri_db module without the `uri`
//! table, i.e. `use_uri_table = 0`: the digest username is compared with
//! the URI's user).

use std::rc::Rc;

use mlua::Lua;

use crate::core::{Env, MsgCtx};
use crate::script::export::{Export, RouteMask};
use crate::script::register as reg;
use crate::sip::{Host, NameAddr};

/// uri_db's script functions (request routes, as Kamailio's uri_db
/// exports them).
pub const EXPORTS: &[Export] = &[
    Export::new("check_to", 0, 0, RouteMask::REQUEST),
    Export::new("check_from", 0, 0, RouteMask::REQUEST),
];

/// Which URI `check` compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// The To URI (`check_to`, for REGISTER: the AOR being registered).
    To,
    /// The From URI (`check_from`: who the request claims to come from).
    From,
}

/// True when `host` names `realm`: domain names case-insensitively (a
/// trailing dot ignored), IP literals by address (RFC 3261 §19.1.4).
fn host_is_realm(host: &Host, realm: &str) -> bool {
    match Host::parse(realm) {
        Ok(r) => host.same_as(&r),
        Err(_) => host.text.eq_ignore_ascii_case(realm),
    }
}

/// SER uri_db's `check_to`/`check_from`: true when this request was
/// authorized (`www_authorize`/`proxy_authorize` returned true) and the
/// To/From URI's user part (with `%HH` escapes decoded, RFC 3261 §19.1.4)
/// equals the digest username's user part — case-sensitively, as SER
/// compares it — and its host equals the realm the request authenticated
/// for. False when the request is not authenticated.
pub fn check(ctx: &MsgCtx, which: Which) -> bool {
    let Some(a) = &ctx.auth.authorized else {
        tracing::debug!(
            "check_{}: the request is not authorized (call www/proxy_authorize first)",
            name(which)
        );
        return false;
    };
    let na: &NameAddr = match which {
        Which::To => ctx.msg.to(),
        Which::From => ctx.msg.from(),
    };
    let user_ok = na.uri.user_unescaped().is_some_and(|u| *u == *a.user.as_bytes());
    let host_ok = host_is_realm(&na.uri.host, &a.realm);
    if !(user_ok && host_ok) {
        tracing::debug!(
            user = %a.user, realm = %a.realm, uri = %na.uri,
            "check_{}: the URI is not the authenticated identity", name(which)
        );
    }
    user_ok && host_ok
}

fn name(which: Which) -> &'static str {
    match which {
        Which::To => "to",
        Which::From => "from",
    }
}

/// Registers uri_db's primitives.
pub fn register(lua: &Lua, env: &Rc<Env>) -> mlua::Result<()> {
    reg(lua, env, EXPORTS, "check_to", |_, _, ctx, ()| Ok(check(ctx, Which::To)))?;
    reg(lua, env, EXPORTS, "check_from", |_, _, ctx, ()| Ok(check(ctx, Which::From)))
}
