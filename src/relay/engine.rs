//! The embedded relay engine: one session per call (Call-ID, From tag, To
//! tag) over the [`super::forward`] data plane, driven by SDP offers and
//! answers the way rtpengine's ng protocol drives rtpengine.
//!
//! An offer sets where the offerer receives (its SDP) and returns the SDP
//! rewritten to the ports facing the answerer; the answer does the same
//! the other way. A re-INVITE of a proxied call (either side) finds its
//! streams by position and keeps their ports, so media keeps flowing. A
//! session ends on `delete` (BYE, CANCEL, a failed call) or after
//! `media_timeout` without a packet in any direction.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;

use super::forward::{ForwardConfig, Forwarder, StreamHandle};
use super::{LegStats, MediaRelay, OfferAnswer, RelayError, SessionInfo, Side, StreamInfo};
use crate::sdp;

/// How the embedded relay is set up (`modparam("rtpproxy", …)` or
/// `serlua relay`'s options).
#[derive(Clone, Debug, PartialEq)]
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

/// One m= line of a session on the data plane.
struct Stream {
    media: String,
    codecs: Vec<String>,
    handle: StreamHandle,
    announced: [Option<SocketAddr>; 2],
}

struct Session {
    from_tag: String,
    to_tag: Option<String>,
    caller: String,
    callee: String,
    created: SystemTime,
    /// Last offer/answer: a fresh call has no packets yet, and its
    /// media timeout counts from here.
    touched: Instant,
    streams: Vec<Stream>,
}

impl Session {
    /// Which side sent a message whose From tag is `from_tag`: the caller
    /// for the dialog's own direction, the callee for a re-INVITE it sends.
    fn side_of(&self, from_tag: &str) -> Side {
        if self.to_tag.as_deref() == Some(from_tag) && self.from_tag != from_tag {
            Side::Callee
        } else {
            Side::Caller
        }
    }

    fn last_activity(&self) -> Instant {
        let mut t = self.touched;
        for s in &self.streams {
            for side in [Side::Caller, Side::Callee] {
                if let Some(p) = s.handle.counters(side).last_packet {
                    t = t.max(p);
                }
            }
        }
        t
    }
}

/// The embedded relay.
pub struct Engine {
    cfg: EngineConfig,
    advertise: IpAddr,
    fwd: Arc<Forwarder>,
    sessions: Mutex<HashMap<String, Session>>,
    timed_out: AtomicU64,
    stop: Arc<AtomicBool>,
}

impl Engine {
    /// Starts the data plane and the thread that ends idle sessions.
    pub fn start(cfg: EngineConfig) -> Result<Arc<Engine>, RelayError> {
        let fwd = Forwarder::start(ForwardConfig {
            bind: cfg.bind,
            ports: cfg.ports,
            threads: cfg.threads.max(1),
        })?;
        let advertise = cfg.advertise.unwrap_or(cfg.bind);
        let engine = Arc::new(Engine {
            advertise,
            fwd,
            sessions: Mutex::new(HashMap::new()),
            timed_out: AtomicU64::new(0),
            stop: Arc::new(AtomicBool::new(false)),
            cfg,
        });
        let weak = Arc::downgrade(&engine);
        let stop = engine.stop.clone();
        std::thread::Builder::new().name("relay-timeout".into()).spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(500));
                match weak.upgrade() {
                    Some(e) => e.expire(Instant::now()),
                    None => break,
                }
            }
        })?;
        Ok(engine)
    }

    /// Packets and bytes relayed since start.
    pub fn totals(&self) -> (u64, u64) {
        self.fwd.totals()
    }

    /// Sessions ended by the media timeout since start.
    pub fn timed_out(&self) -> u64 {
        self.timed_out.load(Ordering::Relaxed)
    }

    /// Live sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.lock().len()
    }

    /// Ends the sessions idle for longer than `media_timeout` at `now`.
    pub fn expire(&self, now: Instant) {
        let limit = self.cfg.media_timeout;
        let mut gone = Vec::new();
        self.sessions.lock().retain(|call_id, s| {
            let keep = now.saturating_duration_since(s.last_activity()) < limit;
            if !keep {
                gone.push(call_id.clone());
            }
            keep
        });
        for c in gone {
            self.timed_out.fetch_add(1, Ordering::Relaxed);
            tracing::info!(call_id = %c, "relay session ended: no media for {} s", limit.as_secs());
        }
    }

    /// Offer or answer: `offer` is true for an offer.
    fn negotiate(&self, req: &OfferAnswer<'_>, offer: bool) -> Result<Vec<u8>, RelayError> {
        if req.sdp.is_empty() {
            return Err(RelayError::NoSdp);
        }
        let parsed = sdp::parse(req.sdp).map_err(|e| RelayError::BadSdp(e.to_string()))?;
        let mut sessions = self.sessions.lock();
        let exists = sessions.contains_key(req.call_id);
        if !exists && (req.lookup_only || !offer) {
            return Err(RelayError::NotFound(req.call_id.to_string()));
        }
        if !exists {
            sessions.insert(
                req.call_id.to_string(),
                Session {
                    from_tag: req.from_tag.to_string(),
                    to_tag: None,
                    caller: req.from_uri.to_string(),
                    callee: req.to_uri.to_string(),
                    created: SystemTime::now(),
                    touched: Instant::now(),
                    streams: Vec::new(),
                },
            );
        }
        let Some(s) = sessions.get_mut(req.call_id) else {
            return Err(RelayError::NotFound(req.call_id.to_string()));
        };
        if !offer && s.to_tag.is_none() {
            if let Some(t) = req.to_tag.filter(|t| *t != s.from_tag) {
                s.to_tag = Some(t.to_string());
            }
        }
        // The SDP's sender: the offerer of an offer; the other side of an answer.
        let offerer = s.side_of(req.from_tag);
        let sender = if offer { offerer } else { offerer.other() };
        let receiver = sender.other();
        let opened_before = s.streams.len();
        let mut targets = Vec::with_capacity(parsed.media.len());
        for (i, m) in parsed.media.iter().enumerate() {
            if m.port == 0 {
                targets.push(None);
                continue;
            }
            if i >= s.streams.len() {
                if !offer {
                    // An answer cannot add streams the offer did not have.
                    targets.push(None);
                    continue;
                }
                match self.fwd.open_stream() {
                    Ok(handle) => s.streams.push(Stream {
                        media: m.media.clone(),
                        codecs: Vec::new(),
                        handle,
                        announced: [None, None],
                    }),
                    Err(e) => {
                        s.streams.truncate(opened_before);
                        if !exists {
                            sessions.remove(req.call_id);
                        }
                        return Err(e);
                    }
                }
            }
            let st = &mut s.streams[i];
            st.media = m.media.clone();
            if !m.codecs.is_empty() {
                st.codecs = m.codecs.clone();
            }
            let ip = m.conn.or(parsed.session_conn);
            let rtp = ip.map(|ip| SocketAddr::new(ip, m.port));
            // An SDP already rewritten (a second `use_media_proxy()` on one
            // message) names our own port: never make the relay send to itself.
            let own = rtp.is_some_and(|a| {
                a.ip() == self.advertise
                    && [Side::Caller, Side::Callee]
                        .iter()
                        .any(|side| st.handle.local_port(*side) == a.port())
            });
            if !own {
                // 0.0.0.0 (RFC 2543 hold) announces nowhere to send to.
                let rtp = rtp.filter(|a| !a.ip().is_unspecified());
                st.announced[side_index(sender)] = rtp;
                // A private address the SIP message did not come from is
                // behind NAT: aim at the NAT's public address until latching.
                let rtp = match (rtp, req.source) {
                    (Some(a), Some(src)) if super::is_private(a.ip()) && a.ip() != src => Some(SocketAddr::new(src, a.port())),
                    _ => rtp,
                };
                let rtcp = match (rtp, m.rtcp) {
                    (Some(a), Some((port, addr))) => {
                        Some(SocketAddr::new(addr.filter(|ip| !super::is_private(*ip)).unwrap_or(a.ip()), port))
                    }
                    _ => None,
                };
                st.handle.set_peer(sender, rtp, rtcp);
            }
            targets.push(Some(SocketAddr::new(self.advertise, st.handle.local_port(receiver))));
        }
        s.touched = Instant::now();
        sdp::rewrite(req.sdp, &targets).map_err(|e| RelayError::BadSdp(e.to_string()))
    }

    fn info(&self, call_id: &str, s: &Session) -> SessionInfo {
        let now = Instant::now();
        let leg = |st: &Stream, side: Side| {
            let c = st.handle.counters(side);
            LegStats {
                latched: c.latched,
                announced: st.announced[side_index(side)],
                relay: Some(SocketAddr::new(self.advertise, st.handle.local_port(side))),
                packets: c.packets,
                bytes: c.bytes,
                idle_s: c.last_packet.map(|t| now.saturating_duration_since(t).as_secs_f64()),
            }
        };
        SessionInfo {
            call_id: call_id.to_string(),
            from_tag: s.from_tag.clone(),
            to_tag: s.to_tag.clone(),
            caller: s.caller.clone(),
            callee: s.callee.clone(),
            created: s.created,
            relay: self.name(),
            streams: s
                .streams
                .iter()
                .map(|st| StreamInfo {
                    media: st.media.clone(),
                    codecs: st.codecs.clone(),
                    caller: leg(st, Side::Caller),
                    callee: leg(st, Side::Callee),
                })
                .collect(),
        }
    }
}

fn side_index(side: Side) -> usize {
    match side {
        Side::Caller => 0,
        Side::Callee => 1,
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl MediaRelay for Engine {
    fn offer(&self, req: &OfferAnswer<'_>) -> Result<Vec<u8>, RelayError> {
        self.negotiate(req, true)
    }

    fn answer(&self, req: &OfferAnswer<'_>) -> Result<Vec<u8>, RelayError> {
        self.negotiate(req, false)
    }

    fn delete(&self, call_id: &str, from_tag: Option<&str>, to_tag: Option<&str>) -> Result<(), RelayError> {
        let mut sessions = self.sessions.lock();
        let matches = |s: &Session| {
            // A BYE from either end carries the session's tags in either order.
            let tag_ok = |t: Option<&str>| t.is_none_or(|t| t == s.from_tag || s.to_tag.as_deref().is_none_or(|x| x == t));
            tag_ok(from_tag) && tag_ok(to_tag)
        };
        match sessions.get(call_id) {
            Some(s) if matches(s) => {
                sessions.remove(call_id);
                Ok(())
            }
            _ => Err(RelayError::NotFound(call_id.to_string())),
        }
    }

    fn query(&self, call_id: &str) -> Result<SessionInfo, RelayError> {
        let sessions = self.sessions.lock();
        let s = sessions.get(call_id).ok_or_else(|| RelayError::NotFound(call_id.to_string()))?;
        Ok(self.info(call_id, s))
    }

    fn list(&self) -> Result<Vec<SessionInfo>, RelayError> {
        let sessions = self.sessions.lock();
        let mut v: Vec<SessionInfo> = sessions.iter().map(|(c, s)| self.info(c, s)).collect();
        v.sort_by(|a, b| a.created.cmp(&b.created).then_with(|| a.call_id.cmp(&b.call_id)));
        Ok(v)
    }

    fn ping(&self) -> Result<(), RelayError> {
        Ok(())
    }

    fn name(&self) -> String {
        "embedded".into()
    }
}
