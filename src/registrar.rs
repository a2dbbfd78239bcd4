//! registrar: REGISTER processing and location lookups (SER's registrar
//! module: `save`, `lookup`, `registered`; RFC 3261 §10.3).

use std::rc::Rc;

use mlua::Lua;

use crate::core::{BranchTarget, Env, MsgCtx, lua_err};
use crate::script::args::{IntArg, StrArg};
use crate::script::export::{Export, LitArg, RouteMask};
use crate::script::register as reg;
use crate::sip::{HeaderName, Method, NameAddr, Uri};
use crate::sl;
use crate::transport::Proto;
use crate::usrloc::{Binding, BindingText, Record, Usrloc};

/// registrar's script functions.
pub const EXPORTS: &[Export] = &[
    Export::new("save", 1, 2, RouteMask::REQUEST).with_fixup(fix_table),
    Export::new("lookup", 1, 1, RouteMask::REQ_LIKE).with_fixup(fix_table),
    Export::new("registered", 1, 1, RouteMask::ANY).with_fixup(fix_table),
];

fn fix_table(args: &[Option<LitArg>]) -> Result<(), String> {
    match args.first() {
        Some(Some(LitArg::Str(t))) if t == "location" || t == "aliases" => Ok(()),
        Some(Some(LitArg::Str(t))) => Err(format!("unknown usrloc table '{t}' (location or aliases)")),
        _ => Ok(()),
    }
}

/// `save()` flags (Kamailio's registrar): don't send the reply.
pub const SAVE_NOREPLY: i64 = 0x02;
/// `save()` flags: keep only the contacts of this REGISTER.
pub const SAVE_SINGLE: i64 = 0x04;

/// The registrar's parameters.
struct Params {
    nat_flag: Option<u32>,
    min_expires: i64,
    max_expires: i64,
    default_expires: i64,
    max_contacts: usize,
    append_branches: bool,
}

fn params(env: &Env) -> Params {
    let p = &env.shared.cfg.params;
    let nat = p.int("registrar", "nat_flag", -1);
    Params {
        nat_flag: (0..=31).contains(&nat).then_some(nat as u32),
        min_expires: p.int("registrar", "min_expires", 60).max(0),
        max_expires: p.int("registrar", "max_expires", 0).max(0),
        default_expires: p.int("registrar", "default_expires", 3600).max(0),
        max_contacts: p.int("registrar", "max_contacts", 0).max(0) as usize,
        append_branches: p.int("registrar", "append_branches", 1) != 0,
    }
}

fn table<'a>(env: &'a Env, name: &str) -> mlua::Result<&'a Usrloc> {
    match name {
        "location" => Ok(&env.shared.store.location),
        "aliases" => Ok(&env.shared.store.aliases),
        other => Err(lua_err(format!("unknown usrloc table '{other}' (location or aliases)"))),
    }
}

/// Compares two contact URIs the way RFC 3261 §19.1.4 does for the parts
/// that matter to a binding: scheme, user, host (case-insensitive), port
/// and transport.
fn same_contact(a: &str, b: &str) -> bool {
    match (Uri::parse(a), Uri::parse(b)) {
        (Ok(x), Ok(y)) => {
            x.scheme == y.scheme
                && x.user == y.user
                && x.host.same_as(&y.host)
                && x.port.unwrap_or(x.default_port()) == y.port.unwrap_or(y.default_port())
                && x.param("transport").flatten().map(str::to_ascii_lowercase)
                    == y.param("transport").flatten().map(str::to_ascii_lowercase)
        }
        _ => a == b,
    }
}

/// The `received` value of a NATed binding: where the REGISTER came from.
pub fn received_uri(ctx: &MsgCtx) -> String {
    let host = match ctx.src.ip() {
        std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        v4 => v4.to_string(),
    };
    match ctx.proto {
        Proto::Udp => format!("sip:{host}:{}", ctx.src.port()),
        Proto::Tcp => format!("sip:{host}:{};transport=tcp", ctx.src.port()),
    }
}

/// One Contact of a REGISTER, validated.
struct NewContact {
    uri: String,
    expires: i64,
    q: f32,
    instance: Option<String>,
    reg_id: u32,
}

/// What went wrong, as the reply to send (RFC 3261 §10.3, §21.4.17).
struct Refusal(u16, String, Option<String>);

fn parse_request(ctx: &MsgCtx, p: &Params) -> Result<(bool, Vec<NewContact>), Refusal> {
    let header_expires = match ctx.msg.header(&HeaderName::Expires) {
        None => None,
        Some(v) => Some(
            std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .ok_or_else(|| Refusal(400, "Bad Request - malformed Expires".into(), None))? as i64,
        ),
    };
    let values = ctx.msg.headers(&HeaderName::Contact);
    if values.iter().any(|v| v.trim_ascii() == b"*") {
        // §10.3 step 6: `*` only alone and with Expires: 0.
        if values.len() != 1 || header_expires != Some(0) {
            return Err(Refusal(
                400,
                "Bad Request - Contact: * needs Expires: 0 and no other Contact".into(),
                None,
            ));
        }
        return Ok((true, Vec::new()));
    }
    let contacts = ctx
        .msg
        .contacts()
        .map_err(|e| Refusal(400, format!("Bad Request - malformed Contact ({})", e.reason), None))?;
    let mut out = Vec::with_capacity(contacts.len());
    for c in contacts {
        let mut expires = match c.params.get("expires") {
            Some(Some(v)) => v
                .trim()
                .parse::<u32>()
                .map_err(|_| Refusal(400, "Bad Request - malformed expires parameter".into(), None))? as i64,
            _ => header_expires.unwrap_or(p.default_expires),
        };
        if expires > 0 && expires < p.min_expires {
            return Err(Refusal(423, "Interval Too Brief".into(), Some(p.min_expires.to_string())));
        }
        if p.max_expires > 0 && expires > p.max_expires {
            expires = p.max_expires;
        }
        let q = match c.params.get("q") {
            Some(Some(v)) => match v.trim().parse::<f32>() {
                Ok(q) if (0.0..=1.0).contains(&q) => q,
                _ => return Err(Refusal(400, "Bad Request - q must be 0..1".into(), None)),
            },
            _ => 1.0,
        };
        out.push(NewContact {
            uri: c.uri.to_string(),
            expires,
            q,
            instance: c.params.get("+sip.instance").flatten().map(str::to_string),
            reg_id: c.params.get("reg-id").flatten().and_then(|r| r.parse().ok()).unwrap_or(0),
        });
    }
    Ok((false, out))
}

/// SER's `save("location")`: applies a REGISTER to the location table
/// (RFC 3261 §10.3 steps 6–8) and answers it: 200 listing every current
/// binding with its expires, 423 with Min-Expires, 400 for a malformed
/// or out-of-order request. A request whose NAT flag
/// (`modparam("registrar", "nat_flag", 6)`) is set keeps its source
/// address as the binding's `received` and the flag with the binding
/// (reference notes 10, 17, 31); so does one marked by
/// `fix_nated_register()` (note 32; the flag only when it is set too). A
/// binding with a `received` address is listed in the 200 with a
/// `received` Contact parameter, as Kamailio's registrar does.
pub fn save(env: &Env, ctx: &mut MsgCtx, table_name: &str, flags: i64) -> mlua::Result<bool> {
    let ul = table(env, table_name)?;
    if ctx.msg.method() != Some(&Method::Register) {
        ctx.fail(500, "Server Internal Error - save() needs a REGISTER");
        return Ok(false);
    }
    let p = params(env);
    let to = ctx.msg.to().clone();
    let Some(user) = to.uri.user.clone().filter(|u| !u.is_empty()) else {
        return Ok(refuse(env, ctx, flags, Refusal(400, "Bad Request - no user in To".into(), None)));
    };
    let domain = to.uri.host.text.to_ascii_lowercase();
    let key = ul.aor_key(&user, Some(&domain));
    let (star, contacts) = match parse_request(ctx, &p) {
        Ok(x) => x,
        Err(r) => return Ok(refuse(env, ctx, flags, r)),
    };
    let now = env.unix_now();
    let callid = ctx.msg.call_id().to_string();
    let cseq = ctx.msg.cseq().seq;
    let nat = p.nat_flag.filter(|f| ctx.flags & (1 << f) != 0);
    // fix_nated_register() (Kamailio's received_avp) or the NAT flag (SER)
    // keep the source address.
    let received = ctx.received_uri.clone().or_else(|| nat.map(|_| received_uri(ctx)));
    let cflags = nat.map(|f| 1u32 << f).unwrap_or(0);
    let user_agent = ctx
        .msg
        .header(&HeaderName::UserAgent)
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .unwrap_or_default();
    let path = {
        let v = ctx.msg.headers(&HeaderName::Path);
        (!v.is_empty()).then(|| {
            v.iter()
                .map(|x| String::from_utf8_lossy(x).into_owned())
                .collect::<Vec<_>>()
                .join(",")
        })
    };
    let socket = env.socket(ctx.local).map(|s| format!("{}:{}", s.proto.lower(), s.addr));
    let result = ul.update(&key, |slot| -> Result<(), Refusal> {
        let rec = slot.get_or_insert_with(|| Record {
            username: user.as_str().into(),
            domain: Some(domain.as_str().into()),
            bindings: Default::default(),
        });
        rec.bindings.retain(|b| b.expires > now);
        if star {
            rec.bindings.clear();
            return Ok(());
        }
        // §10.3 step 7: a request older than a binding it touches fails as a whole.
        for c in &contacts {
            if let Some(b) = rec.bindings.iter().find(|b| same_contact(b.contact(), &c.uri)) {
                if b.callid() == callid && cseq <= b.cseq {
                    return Err(Refusal(400, "Bad Request - CSeq not higher than the binding's".into(), None));
                }
            }
        }
        if flags & SAVE_SINGLE != 0 {
            rec.bindings.retain(|b| contacts.iter().any(|c| same_contact(b.contact(), &c.uri)));
        }
        for c in &contacts {
            let pos = rec.bindings.iter().position(|b| same_contact(b.contact(), &c.uri));
            match (pos, c.expires) {
                (Some(i), 0) => {
                    rec.bindings.remove(i);
                }
                (None, 0) => {}
                (pos, e) => {
                    if pos.is_none() && p.max_contacts > 0 && rec.bindings.len() >= p.max_contacts {
                        return Err(Refusal(503, "Service Unavailable - too many registered contacts".into(), None));
                    }
                    let ruid = match pos {
                        Some(i) => rec.bindings[i].ruid().to_string(),
                        None => ul.new_ruid(),
                    };
                    let mut b = Binding::new(&BindingText {
                        ruid: &ruid,
                        contact: &c.uri,
                        received: received.as_deref(),
                        path: path.as_deref(),
                        callid: &callid,
                        user_agent: &user_agent,
                        socket: socket.as_deref(),
                        instance: c.instance.as_deref(),
                    });
                    b.expires = now + e;
                    b.q = c.q;
                    b.cseq = cseq;
                    b.last_modified = now;
                    b.cflags = cflags;
                    b.reg_id = c.reg_id;
                    match pos {
                        Some(i) => {
                            // Keep what the REGISTER does not set (flags, methods).
                            b.flags = rec.bindings[i].flags;
                            b.methods = rec.bindings[i].methods;
                            rec.bindings[i] = b;
                        }
                        None => rec.bindings.push(b),
                    }
                }
            }
        }
        Ok(())
    });
    if let Err(r) = result {
        return Ok(refuse(env, ctx, flags, r));
    }
    if flags & SAVE_NOREPLY == 0 {
        let current = ul.lookup(&key, now).map(|r| r.bindings).unwrap_or_default();
        let mut extra: Vec<(HeaderName, Vec<u8>)> = current
            .iter()
            .map(|b| {
                // Kamailio's registrar tells a NATed client the address it was
                // seen from (the `received` Contact parameter).
                let rcv = b.received().map(|r| format!(";received=\"{r}\"")).unwrap_or_default();
                (
                    HeaderName::Contact,
                    format!("<{}>;expires={}{rcv}", b.contact(), (b.expires - now).max(0)).into_bytes(),
                )
            })
            .collect();
        if let Some(path) = &path {
            extra.push((HeaderName::Path, path.clone().into_bytes()));
        }
        let refs: Vec<(HeaderName, &[u8])> = extra.iter().map(|(n, v)| (n.clone(), v.as_slice())).collect();
        sl::send_reply(env, ctx, 200, "OK", &refs);
    }
    Ok(true)
}

/// Answers a REGISTER the registrar refuses (unless asked not to reply)
/// and records the error for `sl_reply_error`.
fn refuse(env: &Env, ctx: &mut MsgCtx, flags: i64, Refusal(code, reason, min_expires): Refusal) -> bool {
    ctx.fail(code, reason.clone());
    if flags & SAVE_NOREPLY == 0 {
        match min_expires {
            Some(m) => sl::send_reply(env, ctx, code, &reason, &[(HeaderName::Other("Min-Expires".into()), m.as_bytes())]),
            None => sl::send_reply(env, ctx, code, &reason, &[]),
        };
    }
    false
}

/// The AOR key of the Request-URI.
fn ruri_key(ul: &Usrloc, ctx: &MsgCtx) -> Option<String> {
    let uri = ctx.msg.ruri()?;
    let user = uri.user.as_deref().filter(|u| !u.is_empty())?;
    Some(ul.aor_key(user, Some(&uri.host.text)))
}

/// SER's `lookup("location")`: rewrites the Request-URI to the best
/// current contact of the AOR in it, sends it to the binding's `received`
/// address for a NATed client (setting the NAT flag on the request,
/// reference notes 17 and 39), and adds the other contacts as branches
/// for parallel forking. `lookup("aliases")` rewrites the Request-URI to
/// the alias's target. False when nothing is registered.
pub fn lookup(env: &Env, ctx: &mut MsgCtx, table_name: &str) -> mlua::Result<bool> {
    let ul = table(env, table_name)?;
    let p = params(env);
    let Some(key) = ruri_key(ul, ctx) else {
        ctx.fail(404, "Not Found");
        return Ok(false);
    };
    let Some(rec) = ul.lookup(&key, env.unix_now()) else {
        ctx.fail(404, "Not Found");
        return Ok(false);
    };
    let mut first = true;
    for b in rec.bindings.iter() {
        let Ok(uri) = Uri::parse(b.contact()) else {
            tracing::warn!(
                "{}: binding {} has an unusable contact '{}'",
                ul.table.name(),
                b.ruid(),
                b.contact()
            );
            continue;
        };
        let path_hop = b
            .path()
            .and_then(|p| p.split(',').next())
            .and_then(|h| NameAddr::parse(h.trim()).ok())
            .map(|n| n.uri);
        let received = b.received().and_then(|r| Uri::parse(r).ok());
        let dst = path_hop.clone().or(received);
        if let Some(f) = p.nat_flag {
            if b.cflags & (1 << f) != 0 {
                ctx.flags |= 1 << f;
            }
        }
        if first {
            ctx.msg.set_ruri(uri);
            if let (Some(path), Some(_)) = (b.path(), &path_hop) {
                ctx.msg.insert_first(HeaderName::Route, path.as_bytes());
            }
            ctx.dst_uri = dst;
            first = false;
            if ul.table == crate::db::UlTable::Aliases || !p.append_branches {
                break;
            }
        } else if ctx.branches.len() < crate::tm::MAX_BRANCHES {
            ctx.branches.push(BranchTarget {
                uri,
                dst_uri: dst,
                q: Some(b.q),
            });
        }
    }
    if first {
        ctx.fail(404, "Not Found");
    }
    Ok(!first)
}

/// Registers registrar's primitives.
pub fn register(lua: &Lua, env: &Rc<Env>) -> mlua::Result<()> {
    reg(
        lua,
        env,
        EXPORTS,
        "save",
        |_, env, ctx, (StrArg(t), flags): (StrArg, Option<IntArg>)| save(env, ctx, &t, flags.map(|f| f.0).unwrap_or(0)),
    )?;
    reg(lua, env, EXPORTS, "lookup", |_, env, ctx, StrArg(t): StrArg| lookup(env, ctx, &t))?;
    reg(lua, env, EXPORTS, "registered", |_, env, ctx, StrArg(t): StrArg| {
        let ul = table(env, &t)?;
        Ok(ruri_key(ul, ctx).is_some_and(|k| ul.lookup(&k, env.unix_now()).is_some()))
    })
}
