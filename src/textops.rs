//! textops: regular-expression operations on the whole message text and
//! header add/remove (SER's textops module). Regexes are POSIX-ERE-like,
//! case-insensitive and line-oriented (SER compiles them with
//! REG_EXTENDED|REG_ICASE|REG_NEWLINE): `^` matches at the start of every
//! header line, as `search("^Content-Length:[ ]*0")` needs.

use std::rc::Rc;

use bytes::Bytes;
use mlua::Lua;

use crate::core::{Env, MsgCtx, lua_err};
use crate::script::args::StrArg;
use crate::script::export::{Export, LitArg, RouteMask};
use crate::script::register as reg;
use crate::sip::HeaderName;

/// textops' script functions.
pub const EXPORTS: &[Export] = &[
    Export::new("search", 1, 1, RouteMask::ANY).with_fixup(fix_regex),
    Export::new("search_append", 2, 2, RouteMask::ANY).with_fixup(fix_regex),
    Export::new("replace", 2, 2, RouteMask::ANY).with_fixup(fix_regex),
    Export::new("is_present_hf", 1, 1, RouteMask::ANY),
    Export::new("append_hf", 1, 1, RouteMask::ANY),
    Export::new("remove_hf", 1, 1, RouteMask::ANY),
];

/// The pattern as compiled: case-insensitive, multi-line, CRLF-aware.
pub fn line_regex(re: &str) -> String {
    format!("(?imR){re}")
}

/// Fixup: the regex in the first argument must compile.
pub fn fix_regex(args: &[Option<LitArg>]) -> Result<(), String> {
    if let Some(Some(LitArg::Str(re))) = args.first() {
        regex::bytes::Regex::new(&line_regex(re)).map_err(|e| format!("bad regular expression: {e}"))?;
    }
    Ok(())
}

/// Inserts `txt` at the first match of `re` in the whole message: after
/// it (`search_append`) or in its place (`replace`). The message is
/// re-parsed; an edit that would break it is refused.
fn splice(env: &Env, ctx: &mut MsgCtx, re: &str, txt: &str, replace: bool) -> mlua::Result<bool> {
    let r = env.regex(&line_regex(re)).map_err(lua_err)?;
    let text = ctx.msg.to_bytes();
    let Some(m) = r.find(&text) else { return Ok(false) };
    let cut = if replace { m.start() } else { m.end() };
    let mut new = Vec::with_capacity(text.len() + txt.len());
    new.extend_from_slice(&text[..cut]);
    new.extend_from_slice(txt.as_bytes());
    new.extend_from_slice(&text[m.end()..]);
    match ctx.msg.replace_text(Bytes::from(new)) {
        Ok(()) => Ok(true),
        Err(e) => {
            tracing::warn!("textops edit would make the message unparsable ({}); left unchanged", e.reason);
            Ok(false)
        }
    }
}

/// Registers textops' primitives.
pub fn register(lua: &Lua, env: &Rc<Env>) -> mlua::Result<()> {
    reg(lua, env, EXPORTS, "search", |_, env, ctx, StrArg(re): StrArg| {
        let r = env.regex(&line_regex(&re)).map_err(lua_err)?;
        Ok(r.is_match(&ctx.msg.to_bytes()))
    })?;
    reg(
        lua,
        env,
        EXPORTS,
        "search_append",
        |_, env, ctx, (StrArg(re), StrArg(txt)): (StrArg, StrArg)| splice(env, ctx, &re, &txt, false),
    )?;
    reg(
        lua,
        env,
        EXPORTS,
        "replace",
        |_, env, ctx, (StrArg(re), StrArg(txt)): (StrArg, StrArg)| splice(env, ctx, &re, &txt, true),
    )?;
    reg(lua, env, EXPORTS, "is_present_hf", |_, _, ctx, StrArg(name): StrArg| {
        Ok(ctx.msg.has_header(&HeaderName::from_text(name.trim())))
    })?;
    reg(lua, env, EXPORTS, "append_hf", |lua, _, ctx, StrArg(line): StrArg| {
        ctx.msg.append_header_line(line.as_bytes()).map_err(|e| {
            lua_err(crate::script::at_caller(
                lua,
                &format!("append_hf: '{}' is not a header line ({})", line.trim_end(), e.reason),
            ))
        })?;
        Ok(true)
    })?;
    reg(lua, env, EXPORTS, "remove_hf", |_, _, ctx, StrArg(name): StrArg| {
        Ok(ctx.msg.remove_header(&HeaderName::from_text(name.trim())) > 0)
    })
}
