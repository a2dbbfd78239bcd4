//! The media relay of a REPL sandbox: `force_rtp_proxy()` and
//! `use_media_proxy()` rewrite the SDP as the real relay would, but no
//! port is opened and no command that changes the relay's state is sent
//! (see the dry-run guarantees in [`crate::repl`]).
//!
//! A call the live relay already has keeps the relay addresses it holds
//! (read with the relay's `query`, as a re-INVITE keeps its ports); a new
//! call gets the embedded relay's advertised address and placeholder
//! ports counted from the start of `rtp_ports`, and the sandbox remembers
//! it so that the answer and a later `unforce_rtp_proxy()` in the same
//! session find it. Which side's port goes into an SDP follows the engine:
//! the SDP is rewritten with the relay port facing the party that
//! receives it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;

use crate::relay::{LegStats, MediaRelay, OfferAnswer, RelayChoice, RelayError, SessionInfo, Side, StreamInfo};
use crate::sdp;

/// A session opened in the sandbox only.
#[derive(Clone, Debug)]
struct DrySession {
    from_tag: String,
    to_tag: Option<String>,
    caller: String,
    callee: String,
    created: SystemTime,
    /// Per stream: the media type and the placeholder port per side
    /// (caller, callee); None with a remote relay (its ports are its own).
    streams: Vec<(String, Option<[u16; 2]>)>,
}

impl DrySession {
    fn side_of(&self, from_tag: &str) -> Side {
        side_of(&self.from_tag, self.to_tag.as_deref(), from_tag)
    }
}

/// The engine's rule: the callee is the party whose tag is the session's
/// To tag; everyone else is the caller.
fn side_of(session_from: &str, session_to: Option<&str>, from_tag: &str) -> Side {
    if session_to == Some(from_tag) && session_from != from_tag {
        Side::Callee
    } else {
        Side::Caller
    }
}

fn side_index(s: Side) -> usize {
    match s {
        Side::Caller => 0,
        Side::Callee => 1,
    }
}

/// The sandbox's relay: answers offers and answers without touching the
/// real one, and keeps the report lines of what it would have done.
pub struct DryRelay {
    live: Option<Arc<dyn MediaRelay>>,
    /// The embedded relay's advertised address (None: a remote relay).
    advertise: Option<IpAddr>,
    /// First port of `rtp_ports`: placeholders count from it.
    port_base: u16,
    /// `ng:udp:…` relays, for the report.
    remote: Vec<String>,
    sessions: Mutex<HashMap<String, DrySession>>,
    events: Mutex<Vec<String>>,
}

impl DryRelay {
    /// A dry relay for a proxy configured with `choice` and listening on
    /// `sockets`; `live` is the running proxy's relay, when it has started
    /// one (read-only `query` and `list` only).
    pub fn new(choice: &RelayChoice, sockets: &[crate::transport::ListenSocket], live: Option<Arc<dyn MediaRelay>>) -> DryRelay {
        let (advertise, port_base, remote) = match choice {
            RelayChoice::Embedded {
                ports, bind, advertise, ..
            } => (
                crate::relay::embedded_addresses(*bind, *advertise, sockets).ok().map(|(_, a)| a),
                ports.0,
                Vec::new(),
            ),
            RelayChoice::Ng { relays, .. } => (None, 0, relays.clone()),
        };
        DryRelay {
            live,
            advertise,
            port_base,
            remote,
            sessions: Mutex::new(HashMap::new()),
            events: Mutex::new(Vec::new()),
        }
    }

    /// The report lines since the last call (what the relay would have done).
    pub fn take_events(&self) -> Vec<String> {
        std::mem::take(&mut *self.events.lock())
    }

    fn note(&self, line: String) {
        self.events.lock().push(line);
    }

    fn live_session(&self, call_id: &str) -> Option<SessionInfo> {
        self.live.as_ref().and_then(|r| r.query(call_id).ok())
    }

    fn relay_name(&self) -> String {
        if self.remote.is_empty() {
            "the embedded relay".to_string()
        } else {
            self.remote.join(", ")
        }
    }

    fn negotiate(&self, req: &OfferAnswer<'_>, offer: bool) -> Result<Vec<u8>, RelayError> {
        if req.sdp.is_empty() {
            return Err(RelayError::NoSdp);
        }
        let parsed = sdp::parse(req.sdp).map_err(|e| RelayError::BadSdp(e.to_string()))?;
        let what = if offer { "offer" } else { "answer" };
        // A session opened earlier in this sandbox.
        let mut sessions = self.sessions.lock();
        if let Some(s) = sessions.get_mut(req.call_id) {
            if !offer && s.to_tag.is_none() {
                s.to_tag = req.to_tag.filter(|t| *t != s.from_tag).map(str::to_string);
            }
            let offerer = s.side_of(req.from_tag);
            let receiver = if offer { offerer.other() } else { offerer };
            let targets: Vec<Option<SocketAddr>> = (0..parsed.media.len())
                .map(|i| {
                    let ports = s.streams.get(i).and_then(|(_, p)| *p);
                    match (self.advertise, ports) {
                        (Some(ip), Some(p)) => Some(SocketAddr::new(ip, p[side_index(receiver)])),
                        _ => None,
                    }
                })
                .collect();
            drop(sessions);
            return self.rewrite(req, &targets, what, "the relay session this dry run opened");
        }
        drop(sessions);
        // A call the live relay already relays: its ports stay.
        if let Some(info) = self.live_session(req.call_id) {
            let offerer = side_of(&info.from_tag, info.to_tag.as_deref(), req.from_tag);
            let receiver = if offer { offerer.other() } else { offerer };
            let targets: Vec<Option<SocketAddr>> = (0..parsed.media.len())
                .map(|i| {
                    info.streams.get(i).and_then(|st| match receiver {
                        Side::Caller => st.caller.relay,
                        Side::Callee => st.callee.relay,
                    })
                })
                .collect();
            return self.rewrite(req, &targets, what, "the live relay session (left unchanged)");
        }
        if req.lookup_only || !offer {
            return Err(RelayError::NotFound(req.call_id.to_string()));
        }
        let streams: Vec<(String, Option<[u16; 2]>)> = parsed
            .media
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let base = self.port_base.saturating_add((4 * i) as u16);
                let ports = self.advertise.map(|_| [base, base.saturating_add(2)]);
                (m.media.clone(), ports)
            })
            .collect();
        let targets: Vec<Option<SocketAddr>> = streams
            .iter()
            .zip(&parsed.media)
            .map(|((_, p), m)| match (self.advertise, p) {
                (Some(ip), Some(p)) if m.port != 0 => Some(SocketAddr::new(ip, p[side_index(Side::Callee)])),
                _ => None,
            })
            .collect();
        self.sessions.lock().insert(
            req.call_id.to_string(),
            DrySession {
                from_tag: req.from_tag.to_string(),
                to_tag: None,
                caller: req.from_uri.to_string(),
                callee: req.to_uri.to_string(),
                created: SystemTime::now(),
                streams,
            },
        );
        if self.advertise.is_none() {
            self.note(format!(
                "relay session for call-id {} would be opened by {} (ng offer); its address and ports are the relay's own, so the SDP is left as it is in a dry run",
                req.call_id,
                self.relay_name()
            ));
            return Ok(req.sdp.to_vec());
        }
        self.note(format!(
            "relay session for call-id {} would be opened by {} (dry run: no ports opened; the ports shown are placeholders from the start of rtp_ports)",
            req.call_id,
            self.relay_name()
        ));
        self.rewrite(req, &targets, what, "a new relay session")
    }

    fn rewrite(&self, req: &OfferAnswer<'_>, targets: &[Option<SocketAddr>], what: &str, whose: &str) -> Result<Vec<u8>, RelayError> {
        let out = sdp::rewrite(req.sdp, targets).map_err(|e| RelayError::BadSdp(e.to_string()))?;
        self.note(format!("relay {what} for call-id {}: SDP rewritten to {whose}", req.call_id));
        Ok(out)
    }
}

impl MediaRelay for DryRelay {
    fn offer(&self, req: &OfferAnswer<'_>) -> Result<Vec<u8>, RelayError> {
        self.negotiate(req, true)
    }

    fn answer(&self, req: &OfferAnswer<'_>) -> Result<Vec<u8>, RelayError> {
        self.negotiate(req, false)
    }

    fn delete(&self, call_id: &str, _from_tag: Option<&str>, _to_tag: Option<&str>) -> Result<(), RelayError> {
        if self.sessions.lock().remove(call_id).is_some() {
            self.note(format!("relay session for call-id {call_id} (opened by this dry run) ended"));
            return Ok(());
        }
        if self.live_session(call_id).is_some() {
            self.note(format!(
                "relay session for call-id {call_id} would be ended in {} (dry run: it keeps running)",
                self.relay_name()
            ));
            return Ok(());
        }
        Err(RelayError::NotFound(call_id.to_string()))
    }

    fn query(&self, call_id: &str) -> Result<SessionInfo, RelayError> {
        if let Some(s) = self.sessions.lock().get(call_id) {
            return Ok(self.info(call_id, s));
        }
        self.live_session(call_id).ok_or_else(|| RelayError::NotFound(call_id.to_string()))
    }

    fn list(&self) -> Result<Vec<SessionInfo>, RelayError> {
        let mut out = match &self.live {
            Some(r) => r.list()?,
            None => Vec::new(),
        };
        for (id, s) in self.sessions.lock().iter() {
            out.push(self.info(id, s));
        }
        Ok(out)
    }

    fn ping(&self) -> Result<(), RelayError> {
        Ok(())
    }

    fn name(&self) -> String {
        format!("dry run of {}", self.relay_name())
    }
}

impl DryRelay {
    fn info(&self, call_id: &str, s: &DrySession) -> SessionInfo {
        let leg = |p: Option<[u16; 2]>, side: Side| LegStats {
            relay: match (self.advertise, p) {
                (Some(ip), Some(p)) => Some(SocketAddr::new(ip, p[side_index(side)])),
                _ => None,
            },
            ..LegStats::default()
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
                .map(|(media, p)| StreamInfo {
                    media: media.clone(),
                    codecs: Vec::new(),
                    caller: leg(*p, Side::Caller),
                    callee: leg(*p, Side::Callee),
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SDP: &[u8] = b"v=0\r\no=- 1 1 IN IP4 10.0.0.2\r\ns=-\r\nc=IN IP4 10.0.0.2\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";

    fn dry() -> DryRelay {
        let choice = RelayChoice::Embedded {
            ports: (30000, 30100),
            bind: None,
            advertise: Some("192.0.2.13".parse().unwrap()),
            media_timeout: std::time::Duration::from_secs(60),
            threads: 1,
        };
        DryRelay::new(&choice, &[], None)
    }

    fn req<'a>(from_tag: &'a str, to_tag: Option<&'a str>, lookup_only: bool) -> OfferAnswer<'a> {
        OfferAnswer {
            call_id: "c1",
            from_tag,
            to_tag,
            sdp: SDP,
            lookup_only,
            ..Default::default()
        }
    }

    #[test]
    fn a_new_call_gets_placeholder_ports_per_side() {
        let r = dry();
        assert!(
            matches!(r.offer(&req("a", None, true)), Err(RelayError::NotFound(_))),
            "lookup only"
        );
        let offer = String::from_utf8(r.offer(&req("a", None, false)).unwrap()).unwrap();
        assert!(offer.contains("c=IN IP4 192.0.2.13\r\n"), "{offer}");
        assert!(
            offer.contains("m=audio 30002 RTP/AVP 0"),
            "the callee's port goes to the callee: {offer}"
        );
        let answer = String::from_utf8(r.answer(&req("a", Some("b"), false)).unwrap()).unwrap();
        assert!(
            answer.contains("m=audio 30000 RTP/AVP 0"),
            "the caller's port goes to the caller: {answer}"
        );
        let ev = r.take_events();
        assert!(ev[0].contains("placeholders"), "{ev:?}");
        assert!(r.delete("c1", None, None).is_ok());
        assert!(matches!(r.delete("c1", None, None), Err(RelayError::NotFound(_))));
    }

    #[test]
    fn a_remote_relay_leaves_a_new_sdp_alone() {
        let choice = RelayChoice::Ng {
            relays: vec!["ng:udp:127.0.0.1:2223".into()],
            timeout: std::time::Duration::from_millis(200),
        };
        let r = DryRelay::new(&choice, &[], None);
        assert_eq!(r.offer(&req("a", None, false)).unwrap(), SDP);
        assert!(r.take_events()[0].contains("ng:udp:127.0.0.1:2223"));
    }
}
