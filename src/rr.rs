//! rr: Record-Route and Route processing (RFC 3261 §16.4, §16.6 steps 4
//! and 6, §16.12; SER's rr module: `record_route`, `record_route_preset`,
//! `loose_route`, and Kamailio's `check_route_param`).

use std::rc::Rc;

use mlua::Lua;

use crate::core::{Env, MsgCtx};
use crate::script::args::StrArg;
use crate::script::export::{Export, RouteMask};
use crate::script::register as reg;
use crate::sip::{HeaderName, Uri};
use crate::transport::{ListenSocket, Proto};

/// rr's script functions.
pub const EXPORTS: &[Export] = &[
    Export::new("record_route", 0, 0, RouteMask::REQ_LIKE),
    Export::new("record_route_preset", 1, 1, RouteMask::REQ_LIKE),
    Export::new("loose_route", 0, 0, RouteMask::REQUEST),
    Export::new("check_route_param", 1, 1, RouteMask::REQUEST),
];

/// The Record-Route value naming `sock` (`<sip:192.0.2.13:5060;lr>`, with
/// `;transport=tcp` on TCP so in-dialog requests come back over TCP).
pub fn rr_value(sock: &ListenSocket) -> String {
    match sock.proto {
        Proto::Udp => format!("<sip:{};lr>", sock.adv_hostport()),
        Proto::Tcp => format!("<sip:{};transport=tcp;lr>", sock.adv_hostport()),
    }
}

/// `record_route_preset("192.0.2.13:5060;nat=yes")`: the given URI
/// (`sip:` added when missing) with `;lr`.
pub fn preset_value(s: &str) -> String {
    let s = s.trim().trim_start_matches('<').trim_end_matches('>');
    let uri = if s.len() >= 4 && s[..4].eq_ignore_ascii_case("sip:") || s.len() >= 5 && s[..5].eq_ignore_ascii_case("sips:") {
        s.to_string()
    } else {
        format!("sip:{s}")
    };
    if uri
        .split(';')
        .skip(1)
        .any(|p| p.eq_ignore_ascii_case("lr") || p.to_ascii_lowercase().starts_with("lr="))
    {
        format!("<{uri}>")
    } else {
        format!("<{uri};lr>")
    }
}

fn is_ours(env: &Env, uri: &Uri) -> bool {
    uri.is_sip() && env.shared.is_myself(&uri.host, uri.port, uri.default_port())
}

/// SER's `loose_route()`: RFC 3261 §16.4 Route processing.
///
/// - A Request-URI that is one of our Record-Route URIs means the previous
///   hop was a strict router: the last Route value becomes the
///   Request-URI (§16.4).
/// - Our own top Route entries are removed (two with double
///   Record-Route); their parameters are kept for `check_route_param`.
/// - If a Route remains, it is the next hop: with `;lr` as the
///   destination (loose routing), without it as the new Request-URI with
///   the old one appended to the Route set (strict next hop, §16.6 step 6).
///
/// True when the request carried Route headers (it is routed by them).
pub fn loose_route(env: &Env, ctx: &mut MsgCtx) -> bool {
    let mut routes = match ctx.msg.routes() {
        Ok(r) => r,
        Err(e) => {
            ctx.fail(400, format!("Bad Request - malformed Route ({})", e.reason));
            return false;
        }
    };
    if routes.is_empty() {
        return false;
    }
    if let Some(ruri) = ctx.msg.ruri().cloned() {
        if ruri.user.is_none() && is_ours(env, &ruri) {
            // The previous hop was a strict router and put our Record-Route
            // URI in the Request-URI: the real target is the last Route.
            if let Some(last) = routes.pop() {
                remove_last_route(ctx);
                ctx.route_params = Some(ruri.params.clone());
                ctx.msg.set_ruri(last.uri);
            }
            if routes.is_empty() {
                return true;
            }
        }
    }
    let mut consumed = 0;
    while consumed < routes.len() && consumed < 2 && is_ours(env, &routes[consumed].uri) {
        let params = routes[consumed].uri.params.clone();
        match &mut ctx.route_params {
            Some(p) => p.0.extend(params.0),
            None => ctx.route_params = Some(params),
        }
        ctx.msg.remove_first_value(&HeaderName::Route);
        consumed += 1;
    }
    match routes.get(consumed) {
        None => {
            // Only our own entries: the Request-URI is the destination.
            ctx.dst_uri = None;
        }
        Some(next) if next.uri.param("lr").is_some() => {
            ctx.dst_uri = Some(next.uri.clone());
        }
        Some(next) => {
            if let Some(old) = ctx.msg.ruri().cloned() {
                ctx.msg.append_header(HeaderName::Route, format!("<{old}>").as_bytes());
            }
            ctx.msg.remove_first_value(&HeaderName::Route);
            ctx.msg.set_ruri(next.uri.clone());
            ctx.dst_uri = None;
        }
    }
    true
}

fn remove_last_route(ctx: &mut MsgCtx) {
    // Route values are rebuilt without the last one; a rare path (strict routers).
    let values: Vec<Vec<u8>> = ctx.msg.headers(&HeaderName::Route).iter().map(|v| v.to_vec()).collect();
    ctx.msg.remove_header(&HeaderName::Route);
    if let Some((_, keep)) = values.split_last() {
        for v in keep {
            ctx.msg.append_header(HeaderName::Route, v);
        }
    }
}

/// Registers rr's primitives.
pub fn register(lua: &Lua, env: &Rc<Env>) -> mlua::Result<()> {
    reg(lua, env, EXPORTS, "record_route", |_, env, ctx, ()| {
        let Some(sock) = env.socket(ctx.local) else { return Ok(false) };
        ctx.msg.insert_first(HeaderName::RecordRoute, rr_value(sock).as_bytes());
        ctx.rr_socket = Some(ctx.local);
        Ok(true)
    })?;
    reg(lua, env, EXPORTS, "record_route_preset", |_, _, ctx, StrArg(s): StrArg| {
        ctx.msg.insert_first(HeaderName::RecordRoute, preset_value(&s).as_bytes());
        Ok(true)
    })?;
    reg(lua, env, EXPORTS, "loose_route", |_, env, ctx, ()| Ok(loose_route(env, ctx)))?;
    reg(lua, env, EXPORTS, "check_route_param", |_, env, ctx, StrArg(re): StrArg| {
        let Some(p) = &ctx.route_params else { return Ok(false) };
        let text = p.to_string();
        let r = env.regex(&format!("(?i){re}")).map_err(crate::core::lua_err)?;
        Ok(r.is_match(text.as_bytes()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preset_adds_sip_and_lr() {
        assert_eq!(preset_value("192.0.2.13:5060;nat=yes"), "<sip:192.0.2.13:5060;nat=yes;lr>");
        assert_eq!(preset_value("sip:a.example;lr"), "<sip:a.example;lr>");
    }
}
