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

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
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
    /// Where the SIP message came from. A phone behind NAT announces its
    /// private address in SDP; until its first packet latches the real
    /// one, the relay sends to this address with the announced port
    /// instead of into a private network it cannot reach (rtpengine's
    /// `SIP-source-address` for private SDP addresses).
    pub source: Option<IpAddr>,
}

/// True for addresses a phone behind NAT announces and the relay cannot
/// reach: RFC 1918 private, RFC 6598 shared (100.64/10), link-local, and
/// IPv6 unique-local (RFC 4193) and link-local.
pub fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private() || v4.is_link_local() || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(v6) => {
            let s = v6.segments()[0];
            (s & 0xfe00) == 0xfc00 || (s & 0xffc0) == 0xfe80
        }
    }
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

/// The relay the media primitives drive, and the embedded engine when it
/// is the one (its counters feed the metrics).
#[derive(Clone)]
pub struct RelayHandle {
    /// The relay.
    pub relay: Arc<dyn MediaRelay>,
    /// The embedded engine, if that is the relay.
    pub engine: Option<Arc<engine::Engine>>,
}

/// Where the proxy's media primitives send their offers and answers:
/// `modparam("rtpproxy", "relay", "embedded")` (the default: this process)
/// or `"ng:udp:HOST:PORT …"` (rtpengine or `serlua relay`; several are
/// chosen by a hash of the Call-ID). The same parameters are accepted
/// under the `mediaproxy` module name, so a ported mediaproxy config and
/// a ported rtpproxy config both drive one engine.
#[derive(Clone, Debug, PartialEq)]
pub enum RelayChoice {
    /// The embedded engine; a missing bind or advertise address comes from
    /// the first listen socket when the relay is first used.
    Embedded {
        /// `rtp_ports`: RTP port range (default 30000-40000).
        ports: (u16, u16),
        /// `rtp_bind`: address the media sockets bind to.
        bind: Option<IpAddr>,
        /// `advertise`: address written into rewritten SDP.
        advertise: Option<IpAddr>,
        /// `media_timeout` (default 60 s).
        media_timeout: std::time::Duration,
        /// `relay_threads` (default 1).
        threads: usize,
    },
    /// Remote relays over rtpengine's ng protocol.
    Ng {
        /// `ng:udp:HOST:PORT` entries.
        relays: Vec<String>,
        /// `ng_timeout` per try (default 200 ms, three tries per relay).
        timeout: std::time::Duration,
    },
}

/// Parses `30000-40000` (even start so RTP/RTCP pairs line up, RFC 3550 §11).
pub fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .trim()
        .split_once('-')
        .ok_or_else(|| format!("port range '{s}' must look like 30000-40000"))?;
    let a: u16 = a.trim().parse().map_err(|_| format!("port range '{s}': '{a}' is not a port"))?;
    let b: u16 = b.trim().parse().map_err(|_| format!("port range '{s}': '{b}' is not a port"))?;
    if a < 1024 || b < a.saturating_add(3) {
        return Err(format!("port range '{s}' must be above 1023 and hold at least two RTP/RTCP pairs"));
    }
    Ok((a, b))
}

impl RelayChoice {
    /// Reads the relay's module parameters (`rtpproxy` first, then
    /// `mediaproxy`).
    pub fn from_params(p: &crate::config::ModParams) -> Result<RelayChoice, crate::config::ConfigError> {
        let bad = |m: String| crate::config::ConfigError::Param(m);
        let get = |name: &str| {
            let v = p.str("rtpproxy", name, "");
            if v.is_empty() { p.str("mediaproxy", name, "") } else { v }
        };
        let int = |name: &str, default: i64| {
            let v = p.int("rtpproxy", name, i64::MIN);
            if v == i64::MIN { p.int("mediaproxy", name, default) } else { v }
        };
        let relay = get("relay");
        let relay = relay.trim();
        if !relay.is_empty() && relay != "embedded" {
            let relays: Vec<String> = relay.split([' ', ',']).filter(|s| !s.is_empty()).map(str::to_string).collect();
            for r in &relays {
                let addr = r
                    .strip_prefix("ng:udp:")
                    .ok_or_else(|| bad(format!("relay '{r}': expected \"embedded\" or ng:udp:HOST:PORT")))?;
                if addr.rsplit_once(':').and_then(|(_, p)| p.parse::<u16>().ok()).is_none() {
                    return Err(bad(format!("relay '{r}': expected ng:udp:HOST:PORT")));
                }
            }
            let ms = int("ng_timeout", 200);
            if !(1..=10_000).contains(&ms) {
                return Err(bad(format!("ng_timeout {ms} must be 1..10000 ms")));
            }
            return Ok(RelayChoice::Ng {
                relays,
                timeout: std::time::Duration::from_millis(ms as u64),
            });
        }
        let ports = match get("rtp_ports") {
            s if s.is_empty() => (30000, 40000),
            s => parse_port_range(&s).map_err(bad)?,
        };
        let ip = |name: &str| -> Result<Option<IpAddr>, crate::config::ConfigError> {
            match get(name) {
                s if s.is_empty() => Ok(None),
                s => s
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| bad(format!("{name} '{s}' must be an IP address"))),
            }
        };
        let timeout = int("media_timeout", 60);
        if !(1..=86_400).contains(&timeout) {
            return Err(bad(format!("media_timeout {timeout} must be 1..86400 seconds")));
        }
        let threads = int("relay_threads", 1);
        if !(1..=64).contains(&threads) {
            return Err(bad(format!("relay_threads {threads} must be 1..64")));
        }
        Ok(RelayChoice::Embedded {
            ports,
            bind: ip("rtp_bind")?,
            advertise: ip("advertise")?,
            media_timeout: std::time::Duration::from_secs(timeout as u64),
            threads: threads as usize,
        })
    }
}

/// Where the embedded relay binds its media sockets and the address it
/// writes into rewritten SDP: `rtp_bind`/`advertise` when set, else the
/// first listen socket's (bound, advertised) address. The REPL's dry run
/// writes the same address without starting the relay.
pub fn embedded_addresses(
    bind: Option<IpAddr>,
    advertise: Option<IpAddr>,
    sockets: &[crate::transport::ListenSocket],
) -> Result<(IpAddr, IpAddr), String> {
    let first = sockets.first();
    let bind = bind.or(first.map(|s| s.addr.ip())).unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let advertise = advertise
        .or(first.and_then(|s| s.adv_host.trim_matches(['[', ']']).parse().ok()))
        .or((!bind.is_unspecified()).then_some(bind))
        .ok_or_else(|| {
            "the media relay binds a wildcard address: set modparam(\"rtpproxy\", \"advertise\", \"IP\") to the address phones reach"
                .to_string()
        })?;
    Ok((bind, advertise))
}

impl RelayChoice {
    /// Starts the relay this choice names. `sockets` are the proxy's
    /// listen sockets: the embedded relay binds and advertises the first
    /// one's address unless `rtp_bind`/`advertise` say otherwise.
    pub fn start(&self, sockets: &[crate::transport::ListenSocket]) -> Result<RelayHandle, String> {
        match self {
            RelayChoice::Ng { relays, timeout } => {
                let names: Vec<&str> = relays.iter().map(String::as_str).collect();
                let c = ng::NgClient::new(&names, *timeout).map_err(|e| e.to_string())?;
                Ok(RelayHandle {
                    relay: Arc::new(c),
                    engine: None,
                })
            }
            RelayChoice::Embedded {
                ports,
                bind,
                advertise,
                media_timeout,
                threads,
            } => {
                let (bind, advertise) = embedded_addresses(*bind, *advertise, sockets)?;
                let e = engine::Engine::start(engine::EngineConfig {
                    bind,
                    advertise: Some(advertise),
                    ports: *ports,
                    media_timeout: *media_timeout,
                    threads: *threads,
                })
                .map_err(|e| e.to_string())?;
                Ok(RelayHandle {
                    relay: e.clone(),
                    engine: Some(e),
                })
            }
        }
    }
}
