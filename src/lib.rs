#![warn(missing_docs)]
//! serlua: a SIP proxy whose routing logic is a Lua script mirroring SER's
//! `ser.cfg`. See DESIGN.md in the project's shared folder for the shape.

pub mod admin;
pub mod app;
pub mod auth;
pub mod avpops;
pub mod config;
pub mod control;
pub mod core;
pub mod core_fns;
pub mod ctl;
pub mod db;
pub mod domain;
pub mod http;
pub mod logging;
pub mod maxfwd;
pub mod mediaproxy;
pub mod nathelper;
pub mod permissions;
pub mod persist;
pub mod registrar;
pub mod relay;
pub mod rr;
pub mod rtpproxy;
pub mod script;
pub mod sdp;
pub mod server;
pub mod sip;
pub mod sl;
pub mod store;
pub mod testing;
pub mod textops;
pub mod timer;
pub mod tm;
pub mod trace;
pub mod transport;
pub mod uri;
pub mod uri_db;
pub mod usrloc;
pub mod worker;
