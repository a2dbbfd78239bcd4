//! The rtpproxy-style media primitives of the reference's second NAT
//! chapter: `force_rtp_proxy()`, `force_rtp_proxy("l")` and
//! `unforce_rtp_proxy()` (SER 0.9 exported them from nathelper; Kamailio
//! moved them to its rtpproxy module, whose name the `modparam`s use).
//! mediaproxy's `use_media_proxy()`/`end_media_session()` are the same
//! operations ([`relay_media`], [`end_media`]) under other names.
//!
//! Both drive the relay `modparam("rtpproxy", "relay", …)` names: the
//! embedded engine by default, or rtpengine/`serlua relay` over ng. The
//! SDP of a request is an offer, the SDP of a reply or of an ACK is the
//! answer (RFC 3264 §4 in RFC 3261's offer/answer model, §13.2.1).

use std::rc::Rc;

use mlua::Lua;

use crate::core::{Env, MsgCtx};
use crate::relay::{OfferAnswer, RelayError};
use crate::script::args::StrArg;
use crate::script::export::{Export, LitArg, RouteMask};
use crate::script::register as reg;
use crate::sip::{HeaderName, Method};

/// rtpproxy's script functions.
pub const EXPORTS: &[Export] = &[
    Export::new("force_rtp_proxy", 0, 1, RouteMask::ANY).with_fixup(fix_flags),
    Export::new("unforce_rtp_proxy", 0, 0, RouteMask::ANY),
];

/// The flag letters force_rtp_proxy takes (nathelper/rtpproxy module): `l`
/// (lookup only) changes what serlua does; the others describe the
/// rtpproxy daemon's own socket choices and are accepted for portability.
const FLAG_LETTERS: &str = "aAcCeEfFiIlLoOrRsSwWxX";

fn fix_flags(args: &[Option<LitArg>]) -> Result<(), String> {
    match args.first() {
        Some(Some(LitArg::Str(s))) => match s.chars().find(|c| !FLAG_LETTERS.contains(*c)) {
            Some(c) => Err(format!("force_rtp_proxy: unknown flag '{c}' (l = lookup only)")),
            None => Ok(()),
        },
        Some(Some(other)) => Err(format!("force_rtp_proxy: flags must be a string, got {other:?}")),
        _ => Ok(()),
    }
}

/// True when the body of the message is an SDP session description
/// (Content-Type application/sdp, or no Content-Type and an SDP-looking
/// body as old phones send).
fn has_sdp(ctx: &MsgCtx) -> Result<(), RelayError> {
    let body = ctx.msg.body();
    if body.is_empty() {
        return Err(RelayError::NoSdp);
    }
    match ctx.msg.header(&HeaderName::ContentType) {
        Some(ct) => {
            let ct = String::from_utf8_lossy(&ct).to_ascii_lowercase();
            if ct.trim_start().starts_with("application/sdp") {
                Ok(())
            } else {
                Err(RelayError::BadSdp(format!(
                    "Content-Type is {} (only application/sdp is relayed)",
                    ct.trim()
                )))
            }
        }
        None if body.starts_with(b"v=") => Ok(()),
        None => Err(RelayError::NoSdp),
    }
}

/// Rewrites the SDP of the message being routed so that its media go
/// through the relay: an offer for a request other than ACK, an answer
/// for a reply or an ACK. With `lookup_only`, only a call the relay
/// already has is rewritten (the reference's note 11: a re-INVITE keeps
/// its relay whichever side sends it). False, with a log line saying why,
/// when there is nothing to rewrite or the relay refused; the message is
/// then left exactly as it was. A second call on the same message does
/// nothing and returns true (the reference guards with flag 8; serlua is
/// safe without it).
pub fn relay_media(env: &Env, ctx: &mut MsgCtx, lookup_only: bool, who: &str) -> bool {
    if ctx.media_done {
        return true;
    }
    let call_id = ctx.msg.call_id().to_string();
    if let Err(e) = has_sdp(ctx) {
        match e {
            RelayError::NoSdp => tracing::debug!(call_id = %call_id, "{who}: no SDP body, nothing to relay"),
            e => tracing::warn!(call_id = %call_id, "{who}: {e}"),
        }
        return false;
    }
    let relay = match env.shared.relay() {
        Ok(h) => h.relay.clone(),
        Err(e) => {
            tracing::warn!(call_id = %call_id, "{who}: no media relay: {e}");
            return false;
        }
    };
    let offer = match ctx.msg.method() {
        Some(m) => *m != Method::Ack,
        None => false,
    };
    let from_tag = ctx.msg.from().tag().unwrap_or("").to_string();
    let to_tag = ctx.msg.to().tag().map(str::to_string);
    let from_uri = ctx.msg.from().uri.to_string();
    let to_uri = ctx.msg.to().uri.to_string();
    let req = OfferAnswer {
        call_id: &call_id,
        from_tag: &from_tag,
        to_tag: to_tag.as_deref(),
        sdp: ctx.msg.body(),
        lookup_only,
        from_uri: &from_uri,
        to_uri: &to_uri,
        source: Some(ctx.src.ip()),
    };
    let result = if offer { relay.offer(&req) } else { relay.answer(&req) };
    match result {
        Ok(sdp) => {
            ctx.msg.set_body(bytes::Bytes::from(sdp));
            ctx.media_done = true;
            true
        }
        Err(RelayError::NotFound(_)) if lookup_only => {
            tracing::debug!(call_id = %call_id, "{who}: no relay session for this call, left alone (lookup only)");
            false
        }
        Err(e) => {
            tracing::warn!(call_id = %call_id, relay = %relay.name(), "{who}: {e}; the SDP is left unchanged");
            false
        }
    }
}

/// Ends the relay session of the message's call (BYE, CANCEL, a failed
/// call). False when the relay has no such session.
pub fn end_media(env: &Env, ctx: &MsgCtx, who: &str) -> bool {
    let call_id = ctx.msg.call_id();
    // A proxy that never relayed media has nothing to end: don't start one.
    let Some(Ok(h)) = env.shared.relay.get() else { return false };
    match h.relay.delete(call_id, ctx.msg.from().tag(), None) {
        Ok(()) => true,
        Err(RelayError::NotFound(_)) => {
            tracing::debug!(call_id = %call_id, "{who}: no relay session");
            false
        }
        Err(e) => {
            tracing::warn!(call_id = %call_id, "{who}: {e}");
            false
        }
    }
}

/// Registers rtpproxy's primitives.
pub fn register(lua: &Lua, env: &Rc<Env>) -> mlua::Result<()> {
    reg(lua, env, EXPORTS, "force_rtp_proxy", |_, env, ctx, flags: Option<StrArg>| {
        let lookup = flags.is_some_and(|StrArg(f)| f.contains(['l', 'L']));
        Ok(relay_media(env, ctx, lookup, "force_rtp_proxy"))
    })?;
    reg(lua, env, EXPORTS, "unforce_rtp_proxy", |_, env, ctx, ()| {
        Ok(end_media(env, ctx, "unforce_rtp_proxy"))
    })
}
