//! The Lua route engine: loading a script, its static check, and the
//! primitives' export tables.

pub mod check;
pub mod export;
