//! sl: stateless replies (SER's sl module; RFC 3261 §8.2.6 for how a
//! response is built from its request, §18.2.2 for where it goes).

use std::hash::{Hash, Hasher};
use std::rc::Rc;

use bytes::Bytes;
use mlua::Lua;

use crate::core::{Env, MsgCtx, Stats};
use crate::script::args::{IntArg, StrArg, reply_code};
use crate::script::export::{Export, LitArg, RouteMask, check_int_arg};
use crate::script::register as reg;
use crate::sip::{HeaderName, Method, PartialRequest, SipMessage};
use crate::transport::{Target, reply_destination};

/// sl's script functions.
pub const EXPORTS: &[Export] = &[
    Export::new("sl_send_reply", 2, 2, RouteMask::REQ_LIKE).with_fixup(fix_reply),
    Export::new("sl_reply_error", 0, 0, RouteMask::REQ_LIKE),
];

fn fix_reply(args: &[Option<LitArg>]) -> Result<(), String> {
    check_int_arg(args, "reply code", 100..=699)
}

/// A To-tag for replies this proxy generates: the same for every
/// retransmission of a request (so a retransmitted INVITE gets the same
/// 4xx, RFC 3261 §8.2.6.2), different per request and per process. Its
/// first half is the same for every reply of this process, so the ACK of
/// one is recognised whatever its branch ([`is_ack_of_local_reply`]).
pub fn local_tag(secret: u64, req: &SipMessage) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    secret.hash(&mut h);
    req.call_id().hash(&mut h);
    req.from().tag().hash(&mut h);
    req.cseq().seq.hash(&mut h);
    req.top_via().branch().hash(&mut h);
    tag_with(secret, h.finish() as u32)
}

fn tag_prefix(secret: u64) -> u32 {
    (secret >> 32) as u32 ^ 0x5e51_a0c4
}

fn tag_with(secret: u64, low: u32) -> String {
    format!("{:08x}{low:08x}", tag_prefix(secret))
}

/// SER's `sl_filter_ACK`: an ACK whose To-tag is one of ours acknowledges
/// a reply this proxy sent by itself (a 407 challenge, a 404, or the final
/// reply of a transaction already gone). No transaction absorbs it when
/// the reply was stateless or the ACK's branch differs (RFC 2543 phones,
/// scanners), and a script that routes every ACK onwards (the reference's
/// `if (method=="ACK") { route(1); … }`) would send it to the Request-URI:
/// a DNS lookup of the caller's target and a stray ACK. SER drops it
/// before the script; so does serlua.
pub fn is_ack_of_local_reply(secret: u64, msg: &SipMessage) -> bool {
    if msg.method() != Some(&Method::Ack) {
        return false;
    }
    let Some(tag) = msg.to().tag() else { return false };
    tag.len() == 16 && tag.get(..8).and_then(|p| u32::from_str_radix(p, 16).ok()) == Some(tag_prefix(secret))
}

/// Builds a response to `req` (RFC 3261 §8.2.6): every Via, From, To
/// (with `to_tag` added when the To has none and the status is above
/// 100), Call-ID and CSeq copied; `extra` headers after them.
pub fn build_reply(req: &SipMessage, status: u16, reason: &str, to_tag: Option<&str>, extra: &[(HeaderName, &[u8])]) -> SipMessage {
    let vias = req.headers(&HeaderName::Via);
    let mut hdrs: Vec<(HeaderName, &[u8])> = Vec::with_capacity(vias.len() + 5 + extra.len());
    for v in &vias {
        hdrs.push((HeaderName::Via, v));
    }
    let from = req.header(&HeaderName::From).unwrap_or_default();
    let to = req.header(&HeaderName::To).unwrap_or_default();
    let to_with_tag;
    let to_ref: &[u8] = match to_tag {
        Some(tag) if status > 100 && req.to().tag().is_none() => {
            let mut t = to.to_vec();
            t.extend_from_slice(b";tag=");
            t.extend_from_slice(tag.as_bytes());
            to_with_tag = t;
            &to_with_tag
        }
        _ => &to,
    };
    let call_id = req.header(&HeaderName::CallId).unwrap_or_default();
    let cseq = req.header(&HeaderName::CSeq).unwrap_or_default();
    hdrs.push((HeaderName::From, &from));
    hdrs.push((HeaderName::To, to_ref));
    hdrs.push((HeaderName::CallId, &call_id));
    hdrs.push((HeaderName::CSeq, &cseq));
    hdrs.extend_from_slice(extra);
    SipMessage::new_response(status, reason, &hdrs, b"")
}

/// Where a reply to the request in `ctx` goes (RFC 3261 §18.2.2, RFC 3581).
pub fn reply_target(ctx: &MsgCtx) -> Option<Target> {
    let dst = reply_destination(ctx.msg.top_via(), ctx.proto)?;
    Some(Target {
        local: ctx.local,
        proto: ctx.proto,
        dst,
        conn: ctx.conn,
    })
}

/// Sends a stateless reply to the request in `ctx`. False for ACK (which
/// is never answered, RFC 3261 §17.2.3) or when the reply has nowhere to go.
pub fn send_reply(env: &Env, ctx: &mut MsgCtx, status: u16, reason: &str, extra: &[(HeaderName, &[u8])]) -> bool {
    if ctx.msg.method() == Some(&Method::Ack) {
        tracing::warn!("not replying {status} to an ACK (ACKs are never answered)");
        return false;
    }
    let Some(target) = reply_target(ctx) else {
        tracing::warn!("no destination for a {status} reply: top Via has no usable address");
        return false;
    };
    let tag = local_tag(env.shared.secret, &ctx.msg);
    let reply = build_reply(&ctx.msg, status, reason, Some(&tag), extra);
    env.send_to(&target, reply.to_bytes());
    Stats::inc(&env.shared.stats.local_replies);
    ctx.replied = true;
    true
}

/// Answers a request that failed to parse (RFC 4475: 400 naming the
/// fault, 505 for a SIP version we do not speak), from what the parser
/// could read of it.
pub fn reply_to_broken(env: &Env, p: &PartialRequest, status: u16, reason: &str, inc: &crate::transport::Incoming) {
    let (local, proto, conn) = (inc.local, inc.proto, inc.conn);
    if p.method == Method::Ack {
        return;
    }
    // The Via was not stamped with `received` (the message never got that
    // far): reply to the source address as §18.2.1 would have recorded it.
    let port = match p.top_via.rport() {
        Some(None) if !proto.is_reliable() => inc.src.port(),
        _ => reply_destination(&p.top_via, proto).map(|d| d.port()).unwrap_or(5060),
    };
    let dst = std::net::SocketAddr::new(inc.src.ip(), port);
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(format!("SIP/2.0 {status} {reason}\r\n").as_bytes());
    for (name, value) in &p.copy {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        if (name.eq_ignore_ascii_case("to") || name.eq_ignore_ascii_case("t")) && !p.has_to_tag {
            out.extend_from_slice(format!(";tag={}", tag_with(env.shared.secret, 0x5e51)).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Content-Length: 0\r\n\r\n");
    env.send_to(&Target { local, proto, dst, conn }, Bytes::from(out));
    Stats::inc(&env.shared.stats.local_replies);
}

/// Registers sl's primitives.
pub fn register(lua: &Lua, env: &Rc<Env>) -> mlua::Result<()> {
    reg(
        lua,
        env,
        EXPORTS,
        "sl_send_reply",
        |_, env, ctx, (code, reason): (IntArg, StrArg)| {
            let code = reply_code(code)?;
            if ctx.kind == crate::script::export::RouteKind::Failure {
                // In a failure route the transaction answers (Kamailio's t_reply).
                ctx.failure_reply = Some((code, reason.0));
                ctx.replied = true;
                return Ok(true);
            }
            Ok(send_reply(env, ctx, code, &reason.0, &[]))
        },
    )?;
    reg(lua, env, EXPORTS, "sl_reply_error", |_, env, ctx, ()| {
        if ctx.replied {
            // save() and the like already answered with their own error.
            return Ok(true);
        }
        let (code, reason) = ctx.last_error.clone().unwrap_or((500, "Server Internal Error".into()));
        if ctx.kind == crate::script::export::RouteKind::Failure {
            ctx.failure_reply = Some((code, reason));
            ctx.replied = true;
            return Ok(true);
        }
        Ok(send_reply(env, ctx, code, &reason, &[]))
    })
}
