//! The embedded relay engine: sessions (one per Call-ID) over the
//! [`super::forward`] data plane. STUB: the API below is agreed; the bodies
//! are being written.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use super::{MediaRelay, OfferAnswer, RelayError, SessionInfo};

/// How the embedded relay is set up (`modparam("rtpproxy", …)` or
/// `serlua relay`'s options).
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Address the media sockets bind to.
    pub bind: IpAddr,
    /// Address written into rewritten SDP (default: `bind`).
    pub advertise: Option<IpAddr>,
    /// RTP port range (inclusive).
    pub ports: (u16, u16),
    /// A session without packets for this long ends (default 60 s).
    pub media_timeout: Duration,
    /// Forwarding threads.
    pub threads: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            bind: IpAddr::from([127, 0, 0, 1]),
            advertise: None,
            ports: (30000, 40000),
            media_timeout: Duration::from_secs(60),
            threads: 1,
        }
    }
}

/// The embedded relay.
pub struct Engine {}

impl Engine {
    /// Starts the data plane and the session timer.
    pub fn start(_cfg: EngineConfig) -> Result<Arc<Engine>, RelayError> {
        Err(RelayError::Io(std::io::Error::other("engine not written yet")))
    }

    /// Packets and bytes relayed since start.
    pub fn totals(&self) -> (u64, u64) {
        (0, 0)
    }
}

impl MediaRelay for Engine {
    fn offer(&self, _req: &OfferAnswer<'_>) -> Result<Vec<u8>, RelayError> {
        Err(RelayError::NoSdp)
    }
    fn answer(&self, _req: &OfferAnswer<'_>) -> Result<Vec<u8>, RelayError> {
        Err(RelayError::NoSdp)
    }
    fn delete(&self, call_id: &str, _from_tag: Option<&str>, _to_tag: Option<&str>) -> Result<(), RelayError> {
        Err(RelayError::NotFound(call_id.into()))
    }
    fn query(&self, call_id: &str) -> Result<SessionInfo, RelayError> {
        Err(RelayError::NotFound(call_id.into()))
    }
    fn list(&self) -> Result<Vec<SessionInfo>, RelayError> {
        Ok(Vec::new())
    }
    fn ping(&self) -> Result<(), RelayError> {
        Ok(())
    }
    fn name(&self) -> String {
        "embedded".into()
    }
}
