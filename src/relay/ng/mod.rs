//! rtpengine's ng control protocol (rtpengine's docs/ng_control_protocol.md):
//! a message is `COOKIE SP DICTIONARY`, the dictionary bencoded, carried in
//! one UDP datagram; the reply repeats the request's cookie.
//!
//! - [`codec`]: typed requests and replies, and the decoder/encoder (the
//!   decoders never panic, whatever the input: a fuzz target uses them).
//! - [`server`]: `serlua relay`'s control socket, answering Kamailio's
//!   rtpengine module (or any ng client) from a [`super::MediaRelay`].
//! - [`client`]: [`NgClient`], a [`super::MediaRelay`] that drives one or
//!   several remote relays (rtpengine, or another `serlua relay`) the way
//!   Kamailio's rtpengine module does.

pub mod client;
pub mod codec;
pub mod server;

pub use client::NgClient;
pub use codec::{
    CallReport, Command, DeleteParams, ListParams, MediaReport, NgError, OfferParams, OkReply, PacketStats, QueryParams, Reply, Request,
    Response, StreamReport, TagReport, Totals, decode_request, decode_response, encode_request, encode_response,
};
pub use server::{NgServer, NgServerConfig, serve, serve_with};
