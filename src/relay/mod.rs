//! The media relay: RTP/RTCP forwarding for calls whose ends are behind NAT
//! (what SER's mediaproxy and rtpproxy did for the reference's NAT
//! chapters).
//!
//! One interface, [`MediaRelay`], shaped like rtpengine's ng control
//! protocol (offer/answer carry the whole SDP and return it rewritten), has
//! two implementations: the embedded engine ([`engine::Engine`], running in
//! this process on the [`forward`] data plane) and a remote relay reached
//! over the ng protocol (`ng::NgClient`: a real rtpengine, or another
//! `serlua relay`). The script primitives (`force_rtp_proxy`,
//! `use_media_proxy`, …) and `serlua relay`'s ng server both talk to a
//! `dyn MediaRelay`.

use std::net::SocketAddr;
use std::time::SystemTime;

pub mod engine;
pub mod forward;
pub mod ng;

/// Which end of a call a relay leg faces. The caller is the party whose
/// tag is in the From header of the initial INVITE (rtpengine's
/// "from-tag"), the callee the one whose tag is in its To.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// The party that sent the initial offer (From tag).
    Caller,
    /// The party that answered it (To tag).
    Callee,
}

impl Side {
    /// The other end.
    pub fn other(self) -> Side {
        match self {
            Side::Caller => Side::Callee,
            Side::Callee => Side::Caller,
        }
    }
}

/// Why a relay operation failed. The script primitives log it and return
/// false; the message itself is left as it was.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The message has no SDP body to rewrite.
    #[error("no SDP body")]
    NoSdp,
    /// The SDP could not be parsed (RFC 4566); the text says where.
    #[error("SDP not understood: {0}")]
    BadSdp(String),
    /// Every port of the configured range is in use.
    #[error("no free RTP port pair left in {0}")]
    PortsExhausted(String),
    /// No session for this Call-ID (and tags).
    #[error("no relay session for call-id {0}")]
    NotFound(String),
    /// A remote relay did not answer within the wait.
    #[error("relay {0} did not answer")]
    Unreachable(String),
    /// A remote relay answered with an error.
    #[error("relay {relay} refused: {reason}")]
    Remote {
        /// Which relay.
        relay: String,
        /// Its `error-reason`.
        reason: String,
    },
    /// A socket error.
    #[error("relay I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// An offer or an answer handed to the relay, as rtpengine's ng `offer` and
/// `answer` commands carry it.
#[derive(Clone, Debug, Default)]
pub struct OfferAnswer<'a> {
    /// Call-ID of the dialog.
    pub call_id: &'a str,
    /// Tag of the From header of the message carrying the SDP (for an
    /// answer: still the From tag, i.e. the offerer's).
    pub from_tag: &'a str,
    /// Tag of the To header (answers; re-offers inside a dialog).
    pub to_tag: Option<&'a str>,
    /// The SDP body as received.
    pub sdp: &'a [u8],
    /// Rewrite only when a session already exists (`force_rtp_proxy("l")`,
    /// the reference's note 11); otherwise fail with `NotFound`.
    pub lookup_only: bool,
    /// From URI, for the sessions view.
    pub from_uri: &'a str,
    /// To URI, for the sessions view.
    pub to_uri: &'a str,
}

/// Counters of one direction of one stream.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct LegStats {
    /// The address packets from this side really come from (latched from
    /// the first packet), if any arrived.
    pub latched: Option<SocketAddr>,
    /// The address this side announced in its SDP.
    pub announced: Option<SocketAddr>,
    /// The relay's address this side sends to.
    pub relay: Option<SocketAddr>,
    /// RTP+RTCP packets received from this side (and relayed to the other).
    pub packets: u64,
    /// Bytes of those packets.
    pub bytes: u64,
    /// Seconds since the last packet from this side (None: none yet).
    pub idle_s: Option<f64>,
}

/// One media stream (an m= line) of a relay session.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct StreamInfo {
    /// The m= line's media type (`audio`, `video`).
    pub media: String,
    /// Codec names from the SDP (`PCMU/8000`, …).
    pub codecs: Vec<String>,
    /// The caller's direction.
    pub caller: LegStats,
    /// The callee's direction.
    pub callee: LegStats,
}

/// A relay session: one call (Call-ID) and its streams.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SessionInfo {
    /// Call-ID.
    pub call_id: String,
    /// From tag of the initial offer.
    pub from_tag: String,
    /// To tag, once answered.
    pub to_tag: Option<String>,
    /// From URI of the initial offer.
    pub caller: String,
    /// To URI of the initial offer.
    pub callee: String,
    /// When the session was created.
    pub created: SystemTime,
    /// Which relay holds it (`embedded` or `ng:udp:HOST:PORT`).
    pub relay: String,
    /// Its streams.
    pub streams: Vec<StreamInfo>,
}

/// A media relay the proxy (or the ng server) can drive. Offer and answer
/// take the SDP as received and return it rewritten so that both ends send
/// their media to the relay (c= at session and media level, m= ports,
/// a=rtcp), with the Content-Length left to the caller to fix.
pub trait MediaRelay: Send + Sync {
    /// An SDP offer (INVITE, or a re-INVITE: an existing stream keeps its
    /// ports).
    fn offer(&self, req: &OfferAnswer<'_>) -> Result<Vec<u8>, RelayError>;
    /// An SDP answer (180/183/2xx, or an ACK of a late offer).
    fn answer(&self, req: &OfferAnswer<'_>) -> Result<Vec<u8>, RelayError>;
    /// Ends a session (BYE, CANCEL, a failed call). With a tag, only a
    /// session of that dialog; `NotFound` when there is none.
    fn delete(&self, call_id: &str, from_tag: Option<&str>, to_tag: Option<&str>) -> Result<(), RelayError>;
    /// One session.
    fn query(&self, call_id: &str) -> Result<SessionInfo, RelayError>;
    /// Every live session.
    fn list(&self) -> Result<Vec<SessionInfo>, RelayError>;
    /// Liveness check (ng `ping`).
    fn ping(&self) -> Result<(), RelayError>;
    /// A name for logs (`embedded`, `ng:udp:127.0.0.1:2223`).
    fn name(&self) -> String;
}
