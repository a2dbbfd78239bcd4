//! uri: checks on the request's URIs and dialog state (SER's uri module;
//! `has_totag` per RFC 3261 §12.2: a To tag means an in-dialog request).

use std::rc::Rc;

use mlua::Lua;

use crate::core::Env;
use crate::script::export::{Export, RouteMask};
use crate::script::register as reg;

/// uri's script functions.
pub const EXPORTS: &[Export] = &[Export::new("has_totag", 0, 0, RouteMask::ANY)];

/// Registers uri's primitives.
pub fn register(lua: &Lua, env: &Rc<Env>) -> mlua::Result<()> {
    reg(lua, env, EXPORTS, "has_totag", |_, _, ctx, ()| {
        Ok(ctx.msg.to().tag().is_some_and(|t| !t.is_empty()))
    })
}
