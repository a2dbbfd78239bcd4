//! nathelper: NAT detection and the signalling fix-ups for clients behind
//! NAT (SER/Kamailio's nathelper module, the reference's RTPproxy chapter),
//! SER's core `force_rport()`, and the keepalives (`natping`) that hold
//! the NAT bindings of registered clients open.
//!
//! "Private" addresses are those of RFC 1918 (10/8, 172.16/12, 192.168/16
//! — the reference's list of them is misprinted); the RFC 6598 shared
//! space 100.64/10 of carrier grade NATs is `nat_uac_test`'s own bit 32
//! (mediaproxy's `client_nat_test` counts it as private).

use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use mlua::Lua;

use crate::core::{Env, MsgCtx, Stats, Timer, lua_err};
use crate::script::args::IntArg;
use crate::script::export::{Export, LitArg, RouteMask, check_int_arg};
use crate::script::register as reg;
use crate::sip::{HeaderName, Host, Method, NameAddr, SipMessage, Uri};
use crate::transport::{Proto, Target};
use crate::usrloc::Binding;

/// nathelper's script functions (and SER core's `force_rport`), with the
/// route types Kamailio allows them in.
pub const EXPORTS: &[Export] = &[
    Export::new("nat_uac_test", 1, 1, RouteMask::ANY).with_fixup(fix_uac_test),
    Export::new("fix_nated_contact", 0, 0, RouteMask::REQUEST.or(RouteMask::ONREPLY)),
    Export::new("fix_nated_register", 0, 0, RouteMask::REQUEST),
    Export::new("force_rport", 0, 0, RouteMask::REQUEST),
    Export::new("add_rcv_param", 0, 1, RouteMask::REQUEST),
];

/// `nat_uac_test` bit: the Contact has a private address.
pub const TEST_CONTACT: u32 = 1;
/// `nat_uac_test` bit: the source IP is not the top Via's sent-by (the
/// proxy adds `received`, RFC 3261 §18.2.1).
pub const TEST_RECEIVED: u32 = 2;
/// `nat_uac_test` bit: the top Via has a private address.
pub const TEST_VIA: u32 = 4;
/// `nat_uac_test` bit: an SDP `c=` has a private address.
pub const TEST_SDP: u32 = 8;
/// `nat_uac_test` bit: the source port is not the top Via's (5060 when
/// the Via has none).
pub const TEST_RPORT: u32 = 16;
/// `nat_uac_test` bit: an RFC 6598 (100.64/10, carrier grade NAT) address
/// in the Contact, the top Via, the SDP, or as the source.
pub const TEST_RFC6598: u32 = 32;

fn fix_uac_test(args: &[Option<LitArg>]) -> Result<(), String> {
    check_int_arg(args, "nat_uac_test flags", 0..=63)
}

/// True for RFC 1918 addresses (10/8, 172.16/12, 192.168/16).
pub fn is_rfc1918(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_private(),
        IpAddr::V6(_) => false,
    }
}

/// True for the RFC 6598 shared address space (100.64/10) that carrier
/// grade NATs hand to their customers.
pub fn is_rfc6598(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64,
        IpAddr::V6(_) => false,
    }
}

/// The address nathelper calls private: RFC 1918 or RFC 6598 (Kamailio's
/// nathelper counts both; an address a client can only have behind a NAT).
pub fn is_private(ip: IpAddr) -> bool {
    is_rfc1918(ip) || is_rfc6598(ip)
}

/// The first Contact of the message, parsed (None for none, `*` or a
/// malformed one).
fn first_contact(ctx: &MsgCtx) -> Option<NameAddr> {
    let v = ctx.msg.header(&HeaderName::Contact)?;
    let text = std::str::from_utf8(&v).ok()?.trim();
    if text == "*" {
        return None;
    }
    NameAddr::parse(text).ok()
}

/// The Contact URI's host is a private address (`nat_uac_test` 1,
/// `client_nat_test` 1).
pub fn contact_is_private(ctx: &MsgCtx) -> bool {
    first_contact(ctx).and_then(|c| c.uri.host.ip).is_some_and(is_private)
}

/// The source IP differs from the top Via's sent-by — a name counts as
/// different, as Kamailio's received test without DNS does (`nat_uac_test`
/// 2, `client_nat_test` 2).
pub fn via_address_differs(ctx: &MsgCtx) -> bool {
    ctx.msg.top_via().host.ip != Some(ctx.src.ip())
}

/// The top Via's sent-by is a private address (`nat_uac_test` 4,
/// `client_nat_test` 4).
pub fn via_is_private(ctx: &MsgCtx) -> bool {
    ctx.msg.top_via().host.ip.is_some_and(is_private)
}

/// The source port differs from the top Via's port, 5060 when it has none
/// (`nat_uac_test` 16).
fn via_port_differs(ctx: &MsgCtx) -> bool {
    ctx.msg.top_via().port.unwrap_or(5060) != ctx.src.port()
}

/// The `c=` addresses (session and media level) of an SDP body. A body of
/// another Content-Type, or one that does not parse, has none.
fn sdp_addresses(ctx: &MsgCtx) -> Vec<IpAddr> {
    let body = ctx.msg.body();
    if body.is_empty() {
        return Vec::new();
    }
    if let Some(ct) = ctx.msg.header(&HeaderName::ContentType) {
        let ct = String::from_utf8_lossy(&ct).to_ascii_lowercase();
        if ct.split(';').next().map(str::trim) != Some("application/sdp") {
            return Vec::new();
        }
    }
    match crate::sdp::parse(body) {
        Ok(sdp) => sdp
            .session_conn
            .into_iter()
            .chain(sdp.media.iter().filter_map(|m| m.conn))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Any address the client wrote about itself (Contact, top Via, SDP
/// `c=`) or the source address is in RFC 6598's 100.64/10
/// (`nat_uac_test` 32): a client behind a carrier grade NAT.
fn any_rfc6598(ctx: &MsgCtx) -> bool {
    is_rfc6598(ctx.src.ip())
        || first_contact(ctx).and_then(|c| c.uri.host.ip).is_some_and(is_rfc6598)
        || ctx.msg.top_via().host.ip.is_some_and(is_rfc6598)
        || sdp_addresses(ctx).into_iter().any(is_rfc6598)
}

/// Kamailio's `nat_uac_test(flags)`: guesses whether the sender is behind
/// a NAT. True when any requested test matches: 1 the Contact has an RFC
/// 1918 address, 2 the source IP differs from the top Via's sent-by, 4 the
/// top Via has an RFC 1918 address, 8 an SDP `c=` has one, 16 the source
/// port differs from the top Via's port (5060 without one), 32 an RFC 6598
/// (100.64/10, carrier grade NAT) address in any of those places or as the
/// source. The reference uses 19 (16 + 2 + 1).
///
/// Kamailio folds 100.64/10 into 1, 4 and 8 and uses 32 for "the source
/// is private"; serlua keeps RFC 6598 apart as its own bit, as the
/// project's spec asks, so `nat_uac_test(19)` means exactly what it
/// meant in SER 0.9.
pub fn nat_uac_test(ctx: &MsgCtx, flags: u32) -> bool {
    (flags & TEST_RPORT != 0 && via_port_differs(ctx))
        || (flags & TEST_RECEIVED != 0 && via_address_differs(ctx))
        || (flags & TEST_CONTACT != 0 && first_contact(ctx).and_then(|c| c.uri.host.ip).is_some_and(is_rfc1918))
        || (flags & TEST_SDP != 0 && sdp_addresses(ctx).into_iter().any(is_rfc1918))
        || (flags & TEST_VIA != 0 && ctx.msg.top_via().host.ip.is_some_and(is_rfc1918))
        || (flags & TEST_RFC6598 != 0 && any_rfc6598(ctx))
}

/// Kamailio's `fix_nated_contact()`: rewrites the host and port of the
/// first Contact URI to the address the message came from, so that
/// requests inside the dialog reach the client through its NAT (reference
/// notes 22, 37; in an onreply route the callee's Contact of a reply, note
/// 26). The display name, URI parameters and header parameters stay.
/// False when there is no usable Contact.
pub fn fix_nated_contact(ctx: &mut MsgCtx) -> bool {
    let Some(mut c) = first_contact(ctx) else { return false };
    if !c.uri.is_sip() {
        return false;
    }
    // IPv6 goes in brackets (RFC 3261 §25.1 IPv6reference).
    c.uri.host = Host::from_ip(ctx.src.ip());
    c.uri.port = Some(ctx.src.port());
    ctx.msg.set_first_value(&HeaderName::Contact, c.to_string().as_bytes())
}

/// Kamailio's `fix_nated_register()`: remembers the source address of a
/// REGISTER (`sip:IP:PORT`, plus `;transport=tcp` over TCP) so that
/// `save()` stores it as the binding's `received` and answers with it as
/// the Contact's `received` parameter; the Contact URI itself is left as
/// registered (RFC 3261 §10.3; reference note 32). `lookup()` then sends
/// requests for the binding to that address.
pub fn fix_nated_register(ctx: &mut MsgCtx) -> bool {
    ctx.received_uri = Some(crate::registrar::received_uri(ctx));
    true
}

/// SER's `force_rport()`: treats the request as if its top Via carried
/// `rport` (RFC 3581 §4): the Via gets `rport=<source port>` and
/// `received=<source IP>`, so every reply — stateless or through tm, and
/// retransmissions — goes back to the address and port the request came
/// from, not to the port the client wrote in its Via (reference notes 33,
/// 36).
pub fn force_rport(ctx: &mut MsgCtx) -> bool {
    let via = ctx.msg.top_via();
    if via.host.text.is_empty() {
        return false;
    }
    let mut v = via.clone();
    v.params.set("received", Some(&ctx.src.ip().to_string()));
    v.params.set("rport", Some(&ctx.src.port().to_string()));
    ctx.msg.set_first_value(&HeaderName::Via, v.to_string().as_bytes())
}

/// Kamailio's `add_rcv_param([flag])`: adds the source address as a
/// `received` parameter to every Contact, so another registrar (after
/// `t_replicate`, say) can store it: as a header parameter
/// `;received="sip:IP:PORT"` by default, or with a non-zero `flag` as a
/// URI parameter `;received=sip:IP:PORT` (UDP only, as in Kamailio: a
/// `;transport=` would need escaping inside a URI parameter). False when
/// there is no Contact or it is `*`.
pub fn add_rcv_param(ctx: &mut MsgCtx, in_uri: bool) -> bool {
    let rcv = crate::registrar::received_uri(ctx);
    if in_uri && ctx.proto != Proto::Udp {
        return false;
    }
    let values = ctx.msg.headers(&HeaderName::Contact);
    if values.is_empty() {
        return false;
    }
    let mut out = Vec::with_capacity(values.len());
    for v in &values {
        let Ok(text) = std::str::from_utf8(v) else { return false };
        let Ok(mut c) = NameAddr::parse(text.trim()) else { return false };
        if in_uri {
            c.uri.params.set("received", Some(&rcv));
            c.angle = true;
        } else {
            c.params.set("received", Some(&format!("\"{rcv}\"")));
        }
        out.push(c.to_string());
    }
    ctx.msg.set_header(HeaderName::Contact, out.join(", ").as_bytes());
    true
}

// ---------------------------------------------------------------- natping

/// The 4-byte keepalive Kamailio's nathelper sends when no SIP method is
/// configured: zero-filled (its docs, "NAT pinging types").
pub const KEEPALIVE: [u8; 4] = [0, 0, 0, 0];

/// The keepalive settings (`modparam("nathelper", …)`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PingConfig {
    /// Seconds between two pings of one binding (`natping_interval`, or
    /// mediaproxy's `natping_interval` for a ported mediaproxy config;
    /// 0 = off, the default).
    pub interval: u64,
    /// Ping only NATed bindings (`ping_nated_only`, default 1): those saved
    /// with the registrar's NAT flag or with a `received` address.
    pub nated_only: bool,
    /// SIP method of request pings (`sipping_method`); None: the 4-byte
    /// UDP keepalive.
    pub method: Option<Method>,
    /// From URI of request pings (`sipping_from`); None: `sip:pinger@`
    /// and the address of the socket it leaves from.
    pub from: Option<String>,
}

impl PingConfig {
    /// The settings of the running configuration.
    pub fn of(env: &Env) -> PingConfig {
        let p = &env.shared.cfg.params;
        let interval = match p.int("nathelper", "natping_interval", 0) {
            0 => p.int("mediaproxy", "natping_interval", 0),
            i => i,
        };
        let method = p.str("nathelper", "sipping_method", "");
        let from = p.str("nathelper", "sipping_from", "");
        PingConfig {
            interval: interval.clamp(0, 86_400) as u64,
            nated_only: p.int("nathelper", "ping_nated_only", 1) != 0,
            method: (!method.trim().is_empty()).then(|| Method::from_token(method.trim())),
            from: (!from.trim().is_empty()).then(|| from.trim().to_string()),
        }
    }
}

/// How often the keepalive timer ticks: each tick pings the slice of the
/// bindings that falls on it, so a full round takes `natping_interval`
/// ticks and the pings are spread over it instead of leaving in a burst.
pub const NATPING_TICK: Duration = Duration::from_secs(1);

/// Arms the keepalive timer when `natping_interval` is set (worker 0 only,
/// like usrloc's sweep).
pub fn start_natping(env: &Env) {
    if PingConfig::of(env).interval > 0 {
        env.arm_job(NATPING_TICK, Timer::NatPing(0));
    }
}

/// The ticks (`start..end` within a round of `interval` ticks) at which
/// shard `shard` of `shards` is pinged. With fewer ticks than shards each
/// shard gets one tick (several shards share it); with more, each shard
/// gets a run of ticks and its records are split over them by key hash.
fn shard_ticks(shard: usize, shards: usize, interval: u64) -> (u64, u64) {
    let (s, n) = (shard as u64, shards.max(1) as u64);
    let start = s * interval / n;
    let end = ((s + 1) * interval / n).max(start + 1);
    (start, end)
}

fn key_hash(key: &str) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

/// One keepalive to send.
struct Ping {
    dst: SocketAddr,
    local: Option<u16>,
    contact: String,
}

/// Where a binding's keepalive goes and from which socket: its `received`
/// address if it has one, else its Contact's host:port (an IP literal:
/// the timer never waits on DNS); from the UDP socket it registered on.
/// None for bindings reached over TCP, through a Path (the edge proxy
/// keeps that NAT open), or without a usable address.
fn ping_target(env: &Env, b: &Binding) -> Option<Ping> {
    if b.path().is_some() {
        return None;
    }
    let local = match b.socket() {
        Some(s) => {
            let (proto, _) = s.split_once(':')?;
            if Proto::parse(proto)? != Proto::Udp {
                return None;
            }
            env.shared
                .sockets
                .iter()
                .find(|l| l.proto == Proto::Udp && format!("udp:{}", l.addr) == s)
                .map(|l| l.id)
        }
        None => None,
    };
    let uri = Uri::parse(b.received().unwrap_or(b.contact())).ok()?;
    if !uri.is_sip() || uri.scheme == crate::sip::Scheme::Sips {
        return None;
    }
    if uri.param("transport").flatten().is_some_and(|t| !t.eq_ignore_ascii_case("udp")) {
        return None;
    }
    let dst = SocketAddr::new(uri.host.ip?, uri.port.unwrap_or(5060));
    Some(Ping {
        dst,
        local,
        contact: b.contact().to_string(),
    })
}

static PING_SEQ: AtomicU64 = AtomicU64::new(1);

/// The Via branch prefix of our request pings: replies carrying it are
/// absorbed ([`is_ping_reply`]).
fn ping_branch_prefix(env: &Env) -> String {
    format!("{}.n", env.shared.branch_prefix)
}

/// A request ping (Kamailio's SIP pinging): a stateless `OPTIONS` (or the
/// configured method) to the Contact, which the client answers — traffic
/// in both directions through its NAT.
fn sip_ping(env: &Env, cfg: &PingConfig, method: &Method, p: &Ping, local: u16) -> Option<Bytes> {
    let sock = env.socket(local)?;
    let n = PING_SEQ.fetch_add(1, Ordering::Relaxed);
    let tag = env.shared.secret.rotate_left(17) ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let uri = Uri::parse(&p.contact).ok()?;
    let branch = format!("{}{n:x}", ping_branch_prefix(env));
    let from = match &cfg.from {
        Some(f) => format!("<{f}>;tag={tag:x}"),
        None => format!("<sip:pinger@{}>;tag={tag:x}", sock.adv_hostport()),
    };
    let to = format!("<{}>", p.contact);
    let call_id = format!("{tag:016x}-{n:x}@{}", sock.adv_host);
    let cseq = format!("1 {method}");
    let via = sock.via(&branch);
    let msg = SipMessage::new_request(
        method.clone(),
        uri,
        &[
            (HeaderName::Via, via.as_bytes()),
            (HeaderName::MaxForwards, b"70"),
            (HeaderName::From, from.as_bytes()),
            (HeaderName::To, to.as_bytes()),
            (HeaderName::CallId, call_id.as_bytes()),
            (HeaderName::CSeq, cseq.as_bytes()),
        ],
        b"",
    );
    Some(msg.to_bytes())
}

/// One keepalive tick (Kamailio nathelper's `natping_interval` timer):
/// pings the bindings of the location table whose slice falls on this
/// tick — every live binding once per interval, only NATed ones with
/// `ping_nated_only` — then arms the next tick. Each ping leaves from the
/// listen socket the binding registered on and is counted in
/// `Stats::nat_pings`.
pub fn natping_tick(env: &Env, tick: u64) {
    let cfg = PingConfig::of(env);
    if cfg.interval == 0 {
        return;
    }
    let slot = tick % cfg.interval;
    let nat_flag = env.shared.cfg.params.int("registrar", "nat_flag", -1);
    let nat_bit = (0..=31).contains(&nat_flag).then(|| 1u32 << nat_flag);
    let now = env.unix_now();
    let ul = &env.shared.store.location;
    let shards = ul.shard_count();
    let mut pings = Vec::new();
    for s in 0..shards {
        let (start, end) = shard_ticks(s, shards, cfg.interval);
        if !(start..end).contains(&slot) {
            continue;
        }
        let split = end - start;
        ul.for_each_in_shard(s, |key, rec| {
            if split > 1 && key_hash(key) % split != slot - start {
                return;
            }
            for b in rec.bindings.iter().filter(|b| b.expires > now) {
                let nated = b.received().is_some() || nat_bit.is_some_and(|bit| b.cflags & bit != 0);
                if cfg.nated_only && !nated {
                    continue;
                }
                if let Some(p) = ping_target(env, b) {
                    pings.push(p);
                }
            }
        });
    }
    for p in pings {
        let Some(local) = p.local.or_else(|| env.pick_socket(Proto::Udp, p.dst, 0).map(|s| s.id)) else {
            continue;
        };
        let data = match &cfg.method {
            Some(m) => match sip_ping(env, &cfg, m, &p, local) {
                Some(d) => d,
                None => continue,
            },
            None => Bytes::from_static(&KEEPALIVE),
        };
        env.send_to(
            &Target {
                local,
                proto: Proto::Udp,
                dst: p.dst,
                conn: None,
            },
            data,
        );
        Stats::inc(&env.shared.stats.nat_pings);
    }
    env.arm_job(NATPING_TICK, Timer::NatPing(tick.wrapping_add(1)));
}

/// True for a reply to one of our request pings: the worker absorbs it
/// quietly (it is neither forwarded nor an error; its arrival alone has
/// refreshed the NAT binding).
pub fn is_ping_reply(env: &Env, msg: &SipMessage) -> bool {
    let via = msg.top_via();
    // Checked on every reply: cheap tests first, and no allocation.
    msg.vias().len() == 1
        && msg.status().is_some()
        && via
            .branch()
            .and_then(|b| b.strip_prefix(env.shared.branch_prefix.as_str()))
            .is_some_and(|rest| rest.starts_with(".n"))
        && env.shared.via_is_ours(via)
}

/// Registers nathelper's primitives.
pub fn register(lua: &Lua, env: &Rc<Env>) -> mlua::Result<()> {
    reg(lua, env, EXPORTS, "nat_uac_test", |_, _, ctx, IntArg(flags): IntArg| {
        if !(0..=63).contains(&flags) {
            return Err(lua_err(format!("nat_uac_test: flags {flags} are outside 0..63")));
        }
        Ok(nat_uac_test(ctx, flags as u32))
    })?;
    reg(lua, env, EXPORTS, "fix_nated_contact", |_, _, ctx, ()| Ok(fix_nated_contact(ctx)))?;
    reg(lua, env, EXPORTS, "fix_nated_register", |_, _, ctx, ()| Ok(fix_nated_register(ctx)))?;
    reg(lua, env, EXPORTS, "force_rport", |_, _, ctx, ()| Ok(force_rport(ctx)))?;
    reg(lua, env, EXPORTS, "add_rcv_param", |_, _, ctx, flag: Option<IntArg>| {
        Ok(add_rcv_param(ctx, flag.is_some_and(|f| f.0 != 0)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn private_ranges() {
        for p in [
            "10.0.0.1",
            "10.255.255.255",
            "172.16.0.1",
            "172.31.255.254",
            "192.168.1.20",
            "100.64.0.1",
            "100.127.255.254",
        ] {
            assert!(is_private(ip(p)), "{p}");
        }
        for p in [
            "9.255.255.255",
            "172.15.0.1",
            "172.32.0.1",
            "192.169.0.1",
            "100.63.255.255",
            "100.128.0.0",
            "127.0.0.1",
            "::1",
            "fd00::1",
        ] {
            assert!(!is_private(ip(p)), "{p}");
        }
        assert!(is_rfc6598(ip("100.100.1.1")) && !is_rfc1918(ip("100.100.1.1")));
    }

    #[test]
    fn shard_ticks_cover_a_round_once() {
        for interval in [1u64, 2, 7, 30, 64, 65, 100, 1000] {
            let shards = 64;
            let mut per_tick = vec![0u32; interval as usize];
            let mut covered = 0u64;
            for s in 0..shards {
                let (a, b) = shard_ticks(s, shards, interval);
                assert!(a < b && b <= interval.max(1), "interval {interval} shard {s}: {a}..{b}");
                covered += b - a;
                for t in a..b {
                    per_tick[t as usize] += 1;
                }
            }
            if interval >= shards as u64 {
                assert_eq!(covered, interval, "the runs of ticks partition the round");
                assert!(per_tick.iter().all(|n| *n == 1));
            } else {
                assert_eq!(covered, shards as u64, "one tick per shard");
                assert!(per_tick.iter().all(|n| *n >= 1), "interval {interval}: every tick pings something");
            }
        }
    }
}
