//! SIP message model and parser (RFC 3261 §7, §20, §25).
//!
//! The parser keeps the bytes it was given: a header the route script did not
//! touch goes out byte-identical when the message is forwarded. The headers
//! the core needs on every message (Via, From, To, Call-ID, CSeq,
//! Max-Forwards, Content-Length) are parsed eagerly, so a malformed one is
//! answered `400` before any route runs (RFC 4475 §3.1.2); every other
//! header is parsed only when something asks for it. After parsing a
//! request the core calls [`semantic_check`] for the proxy's own request
//! validation (RFC 3261 §16.3).

pub mod framing;
pub mod header;
pub mod method;
pub mod msg;
pub mod parse;
pub mod selfcheck;
pub mod uri;

pub use header::{CSeq, HeaderName, NameAddr, Params, Via};
pub use method::Method;
pub use msg::{PROXY_SUPPORTED, ParseError, PartialRequest, SipMessage, StartLine, semantic_check, unsupported_proxy_require};
pub use uri::{Host, Scheme, Uri};

#[cfg(test)]
mod tests;
