//! The relay's data plane: UDP sockets in pairs (RTP on an even port, RTCP
//! on the next), symmetric latching, and forwarding between the two sides
//! of a stream. STUB: the API below is agreed; the bodies are being written.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use super::{RelayError, Side};

/// How the data plane is set up.
#[derive(Clone, Debug)]
pub struct ForwardConfig {
    /// Address the media sockets bind to.
    pub bind: IpAddr,
    /// Port range (inclusive) for RTP/RTCP pairs.
    pub ports: (u16, u16),
    /// Forwarding threads.
    pub threads: usize,
}

/// Counters of packets received from one side of a stream.
#[derive(Clone, Debug, Default)]
pub struct LegCounters {
    /// Packets received (RTP and RTCP) from this side and relayed.
    pub packets: u64,
    /// Bytes of those packets.
    pub bytes: u64,
    /// When the last one arrived.
    pub last_packet: Option<Instant>,
    /// The source latched from the first RTP packet.
    pub latched: Option<SocketAddr>,
}

/// The forwarding threads and the port pool.
pub struct Forwarder {}

impl Forwarder {
    /// Starts the forwarding threads.
    pub fn start(_cfg: ForwardConfig) -> Result<Arc<Forwarder>, RelayError> {
        Err(RelayError::Io(std::io::Error::other("forwarder not written yet")))
    }

    /// Opens a stream: an RTP/RTCP port pair facing each side.
    pub fn open_stream(self: &Arc<Self>) -> Result<StreamHandle, RelayError> {
        Err(RelayError::Io(std::io::Error::other("forwarder not written yet")))
    }

    /// Packets and bytes relayed since start (every stream, both ways).
    pub fn totals(&self) -> (u64, u64) {
        (0, 0)
    }
}

/// One stream on the data plane; dropping it closes its sockets and frees
/// its ports.
pub struct StreamHandle {}

impl StreamHandle {
    /// The RTP port facing `side` (that side sends here); RTCP is one above.
    pub fn local_port(&self, _side: Side) -> u16 {
        0
    }

    /// Where packets for `side` go until that side's own packets latch its
    /// real address (the address its SDP announced); None holds the media.
    pub fn set_peer(&self, _side: Side, _rtp: Option<SocketAddr>, _rtcp: Option<SocketAddr>) {}

    /// Counters of what `side` sent.
    pub fn counters(&self, _side: Side) -> LegCounters {
        LegCounters::default()
    }
}
