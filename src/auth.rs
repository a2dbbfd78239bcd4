//! auth and auth_db: digest authentication of requests (RFC 2617,
//! RFC 7616, RFC 8760) against the `subscriber` table.

use std::rc::Rc;

use mlua::Lua;

use crate::core::Env;
use crate::script::export::Export;

/// What a request proved with its credentials (filled by
/// `www_authorize`/`proxy_authorize`, read by `consume_credentials`,
/// `check_to`, `check_from` and the challenge functions).
#[derive(Clone, Debug, Default)]
pub struct AuthState {}

/// auth's script functions.
pub const EXPORTS: &[Export] = &[];

/// Registers auth's primitives.
pub fn register(_lua: &Lua, _env: &Rc<Env>) -> mlua::Result<()> {
    Ok(())
}
