//! serlua: a SIP proxy whose routing logic is a Lua script mirroring SER's
//! `ser.cfg`. See DESIGN.md in the project's shared folder for the shape.

pub mod script;
pub mod sip;
