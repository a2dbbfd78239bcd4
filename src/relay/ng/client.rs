//! [`NgClient`]: a [`MediaRelay`] backed by one or several remote relays
//! spoken to over rtpengine's ng protocol on UDP — rtpengine itself, or
//! another `serlua relay`. It behaves like Kamailio's rtpengine module with
//! a set of relays: a call's messages all go to the relay its Call-ID
//! hashes to; a relay that does not answer is retried a few times, then
//! set aside for a while and the next one in the list takes its calls.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use md5::{Digest, Md5};
use parking_lot::Mutex;

use super::codec::{
    CallReport, Command, DeleteParams, ListParams, MediaReport, OfferParams, Reply, Request, StreamReport, decode_response, encode_request,
};
use super::server::DELETE_NOT_FOUND;
use crate::relay::{LegStats, MediaRelay, OfferAnswer, RelayError, SessionInfo, StreamInfo};

/// How many times a request is sent to one relay before it is marked
/// down (Kamailio's rtpengine module: `rtpengine_retr`).
pub const DEFAULT_TRIES: u32 = 3;
/// How long one try waits for the reply (Kamailio: `rtpengine_tout_ms`).
pub const DEFAULT_WAIT: Duration = Duration::from_millis(200);
/// How long a relay that did not answer is left out (Kamailio:
/// `rtpengine_disable_tout`).
pub const DEFAULT_DOWN_FOR: Duration = Duration::from_secs(30);
/// `list` asks each relay for at most this many Call-IDs: about as many
/// as fit in one UDP reply.
const LIST_LIMIT: u64 = 1000;
/// Idle sockets kept for reuse.
const POOL_MAX: usize = 64;

/// What was wrong with a relay given to [`NgClient::new`].
#[derive(Debug, thiserror::Error)]
pub enum NgClientError {
    /// No relay at all.
    #[error("no ng relay given")]
    NoRelays,
    /// Not `ng:udp:HOST:PORT`, or the host does not resolve.
    #[error("ng relay {spec:?}: {reason} (expected ng:udp:HOST:PORT)")]
    BadAddress {
        /// The string given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
}

struct Remote {
    /// `ng:udp:HOST:PORT` as given (normalised).
    name: String,
    addr: SocketAddr,
    down_until: Mutex<Option<Instant>>,
}

impl Remote {
    fn is_down(&self, now: Instant) -> bool {
        self.down_until.lock().is_some_and(|t| now < t)
    }
}

/// A [`MediaRelay`] over the ng protocol (UDP). Usable from any number of
/// synchronous threads at once: each request takes a socket of its own
/// from a small pool and blocks until its reply or its bounded wait.
pub struct NgClient {
    relays: Vec<Remote>,
    wait: Duration,
    tries: u32,
    down_for: Duration,
    pool_v4: Mutex<Vec<UdpSocket>>,
    pool_v6: Mutex<Vec<UdpSocket>>,
    cookie_prefix: String,
    counter: AtomicU64,
}

impl NgClient {
    /// A client for the relays given as `ng:udp:HOST:PORT` (the `ng:`
    /// prefix may be left out, as in Kamailio's `rtpengine_sock`), each
    /// try waiting `wait` for its reply ([`DEFAULT_WAIT`] is Kamailio's
    /// usual), [`DEFAULT_TRIES`] tries per relay, a silent relay left out
    /// for [`DEFAULT_DOWN_FOR`]. Host names are resolved once, here.
    pub fn new(relays: &[&str], wait: Duration) -> Result<NgClient, NgClientError> {
        if relays.is_empty() {
            return Err(NgClientError::NoRelays);
        }
        let relays = relays.iter().map(|s| parse_relay(s)).collect::<Result<Vec<_>, _>>()?;
        Ok(NgClient {
            relays,
            wait: wait.max(Duration::from_millis(1)),
            tries: DEFAULT_TRIES,
            down_for: DEFAULT_DOWN_FOR,
            pool_v4: Mutex::new(Vec::new()),
            pool_v6: Mutex::new(Vec::new()),
            cookie_prefix: format!("{:x}{:08x}", std::process::id(), rand::random::<u32>()),
            counter: AtomicU64::new(0),
        })
    }

    /// Sends each request up to `tries` times (at least once) before the
    /// relay counts as down.
    pub fn with_tries(mut self, tries: u32) -> NgClient {
        self.tries = tries.max(1);
        self
    }

    /// Leaves a relay that did not answer out for `down_for`.
    pub fn with_down_for(mut self, down_for: Duration) -> NgClient {
        self.down_for = down_for;
        self
    }

    /// The names (`ng:udp:HOST:PORT`) of the relays, in order.
    pub fn relays(&self) -> Vec<String> {
        self.relays.iter().map(|r| r.name.clone()).collect()
    }

    /// Which relay a Call-ID goes to while all are up: a stable hash (MD5:
    /// the same in every process and release, so that several proxies in
    /// front of the same relays agree) modulo their number.
    pub fn relay_for(&self, call_id: &str) -> usize {
        let digest = Md5::digest(call_id.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        (u64::from_be_bytes(first) % self.relays.len() as u64) as usize
    }

    fn next_cookie(&self) -> Vec<u8> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        format!("{}_{n}", self.cookie_prefix).into_bytes()
    }

    fn pool(&self, addr: SocketAddr) -> &Mutex<Vec<UdpSocket>> {
        if addr.is_ipv4() { &self.pool_v4 } else { &self.pool_v6 }
    }

    fn take_socket(&self, to: SocketAddr) -> io::Result<UdpSocket> {
        if let Some(s) = self.pool(to).lock().pop() {
            return Ok(s);
        }
        let any = if to.is_ipv4() {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        };
        UdpSocket::bind(SocketAddr::new(any, 0))
    }

    fn put_socket(&self, to: SocketAddr, s: UdpSocket) {
        let mut pool = self.pool(to).lock();
        if pool.len() < POOL_MAX {
            pool.push(s);
        }
    }

    /// One request to one relay: up to `tries` sends of the same datagram
    /// (same cookie, so the relay answers a retransmission from its cache),
    /// each waiting `wait`. `Ok(None)`: no answer.
    fn exchange(&self, relay: &Remote, msg: &[u8], cookie: &[u8]) -> io::Result<Option<Reply>> {
        let sock = self.take_socket(relay.addr)?;
        let mut buf = vec![0u8; 65536];
        for _ in 0..self.tries {
            if let Err(e) = sock.send_to(msg, relay.addr) {
                // Unreachable network and the like: as good as no answer.
                tracing::debug!("ng: send to {} failed: {e}", relay.name);
                std::thread::sleep(self.wait);
                continue;
            }
            let deadline = Instant::now().checked_add(self.wait).unwrap_or_else(Instant::now);
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
                match sock.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        if from != relay.addr {
                            continue;
                        }
                        match decode_response(&buf[..n]) {
                            Ok(resp) if resp.cookie == cookie => {
                                self.put_socket(relay.addr, sock);
                                return Ok(Some(resp.reply));
                            }
                            // A late reply to an earlier request on this
                            // socket.
                            Ok(_) => {}
                            Err(e) => tracing::debug!("ng: undecodable reply from {}: {e}", relay.name),
                        }
                    }
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        tracing::debug!("ng: receive from {} failed: {e}", relay.name);
                        break;
                    }
                }
            }
        }
        self.put_socket(relay.addr, sock);
        Ok(None)
    }

    fn mark_down(&self, relay: &Remote, why: &str) {
        let now = Instant::now();
        let mut d = relay.down_until.lock();
        let was_up = d.is_none_or(|t| now >= t);
        // `Duration::MAX` means "for good".
        *d = Some(
            now.checked_add(self.down_for)
                .unwrap_or(now + Duration::from_secs(100 * 365 * 86400)),
        );
        if was_up {
            tracing::warn!(
                "ng relay {} {why} ({} x {:?}): not used for {:?}",
                relay.name,
                self.tries,
                self.wait,
                self.down_for
            );
        }
    }

    /// Sends to relay `i`; marks it down when it stays silent.
    fn ask(&self, i: usize, cmd: &Command) -> Option<Reply> {
        let relay = &self.relays[i];
        let cookie = self.next_cookie();
        let msg = encode_request(&Request {
            cookie: cookie.clone(),
            command: cmd.clone(),
        });
        match self.exchange(relay, &msg, &cookie) {
            Ok(Some(reply)) => {
                *relay.down_until.lock() = None;
                Some(reply)
            }
            Ok(None) => {
                self.mark_down(relay, "did not answer");
                None
            }
            Err(e) => {
                self.mark_down(relay, &format!("unusable: {e}"));
                None
            }
        }
    }

    /// Sends a call's request to the relay its Call-ID hashes to, or the
    /// next one up in order. Returns which relay answered.
    fn ask_routed(&self, call_id: &str, cmd: &Command) -> Result<(usize, Reply), RelayError> {
        let n = self.relays.len();
        let start = self.relay_for(call_id);
        for k in 0..n {
            let i = (start + k) % n;
            if self.relays[i].is_down(Instant::now()) {
                continue;
            }
            if let Some(reply) = self.ask(i, cmd) {
                return Ok((i, reply));
            }
        }
        Err(self.unreachable())
    }

    fn unreachable(&self) -> RelayError {
        RelayError::Unreachable(self.name())
    }

    fn refusal(&self, i: usize, call_id: &str, reason: String) -> RelayError {
        if is_not_found(&reason) {
            RelayError::NotFound(call_id.to_string())
        } else {
            RelayError::Remote {
                relay: self.relays[i].name.clone(),
                reason,
            }
        }
    }

    fn offer_answer(&self, req: &OfferAnswer<'_>, answer: bool) -> Result<Vec<u8>, RelayError> {
        if req.sdp.is_empty() {
            return Err(RelayError::NoSdp);
        }
        if req.lookup_only {
            // The ng protocol has no "only if the call exists": ask first.
            self.query(req.call_id)?;
        }
        let behind_nat = match (req.source, crate::sdp::parse(req.sdp)) {
            (Some(src), Ok(sdp)) => sdp
                .media
                .iter()
                .filter_map(|m| m.conn.or(sdp.session_conn))
                .any(|ip| super::super::is_private(ip) && ip != src),
            _ => false,
        };
        let params = OfferParams {
            call_id: req.call_id.to_string(),
            from_tag: req.from_tag.to_string(),
            to_tag: req.to_tag.map(str::to_string),
            sdp: req.sdp.to_vec(),
            // What the reference's force_rtp_proxy / rtpengine_manage
            // setups ask for: rewrite o= and the session c= as well as the
            // media, drop ICE candidates that would bypass the relay, and
            // take the SDP's addresses as given (latching fixes NAT) —
            // unless they are private addresses the SIP message did not
            // come from: then the relay must aim at the NAT's public side
            // until the phone's first packet latches it.
            flags: vec![if behind_nat { "SIP-source-address" } else { "trust-address" }.into()],
            received_from: match (behind_nat, req.source) {
                (true, Some(ip)) => vec![if ip.is_ipv4() { "IP4" } else { "IP6" }.into(), ip.to_string()],
                _ => Vec::new(),
            },
            replace: vec!["origin".into(), "session-connection".into()],
            ice: vec!["remove".into()],
            ..OfferParams::default()
        };
        let cmd = if answer { Command::Answer(params) } else { Command::Offer(params) };
        match self.ask_routed(req.call_id, &cmd)? {
            (_, Reply::Ok(ok)) if ok.sdp.is_some() => Ok(ok.sdp.unwrap_or_default()),
            (i, Reply::Ok(_)) | (i, Reply::Pong) => Err(self.refusal(i, req.call_id, "reply without sdp".into())),
            (i, Reply::Error(reason)) => Err(self.refusal(i, req.call_id, reason)),
        }
    }

    fn query_on(&self, i: usize, call_id: &str) -> Result<Option<SessionInfo>, RelayError> {
        let cmd = Command::Query(super::codec::QueryParams {
            call_id: call_id.to_string(),
            ..Default::default()
        });
        match self.ask(i, &cmd) {
            None => Ok(None),
            Some(reply) => self.session_from(i, call_id, reply).map(Some),
        }
    }

    fn session_from(&self, i: usize, call_id: &str, reply: Reply) -> Result<SessionInfo, RelayError> {
        match reply {
            Reply::Ok(ok) => match ok.call {
                Some(report) => Ok(session_info(call_id, &self.relays[i].name, report, SystemTime::now())),
                None => Err(self.refusal(i, call_id, "query reply without call".into())),
            },
            Reply::Pong => Err(self.refusal(i, call_id, "pong to a query".into())),
            Reply::Error(reason) => Err(self.refusal(i, call_id, reason)),
        }
    }
}

impl MediaRelay for NgClient {
    fn offer(&self, req: &OfferAnswer<'_>) -> Result<Vec<u8>, RelayError> {
        self.offer_answer(req, false)
    }

    fn answer(&self, req: &OfferAnswer<'_>) -> Result<Vec<u8>, RelayError> {
        self.offer_answer(req, true)
    }

    fn delete(&self, call_id: &str, from_tag: Option<&str>, to_tag: Option<&str>) -> Result<(), RelayError> {
        let cmd = Command::Delete(DeleteParams {
            call_id: call_id.to_string(),
            from_tag: from_tag.map(str::to_string),
            to_tag: to_tag.map(str::to_string),
            via_branch: None,
            flags: Vec::new(),
        });
        match self.ask_routed(call_id, &cmd)? {
            // rtpengine answers a delete of an unknown call with a warning.
            (_, Reply::Ok(ok)) if ok.warning.as_deref().is_some_and(is_not_found) => Err(RelayError::NotFound(call_id.to_string())),
            (_, Reply::Ok(_)) => Ok(()),
            (i, Reply::Pong) => Err(self.refusal(i, call_id, "pong to a delete".into())),
            (i, Reply::Error(reason)) => Err(self.refusal(i, call_id, reason)),
        }
    }

    fn query(&self, call_id: &str) -> Result<SessionInfo, RelayError> {
        let cmd = Command::Query(super::codec::QueryParams {
            call_id: call_id.to_string(),
            ..Default::default()
        });
        let (i, reply) = self.ask_routed(call_id, &cmd)?;
        self.session_from(i, call_id, reply)
    }

    /// Every relay that is up is asked for its calls, then for each call.
    fn list(&self) -> Result<Vec<SessionInfo>, RelayError> {
        let mut out = Vec::new();
        let mut answered = false;
        for i in 0..self.relays.len() {
            if self.relays[i].is_down(Instant::now()) {
                continue;
            }
            let calls = match self.ask(i, &Command::List(ListParams { limit: Some(LIST_LIMIT) })) {
                None => continue,
                Some(Reply::Ok(ok)) => ok.calls.unwrap_or_default(),
                Some(Reply::Error(reason)) => return Err(self.refusal(i, "", reason)),
                Some(Reply::Pong) => return Err(self.refusal(i, "", "pong to a list".into())),
            };
            answered = true;
            for call_id in calls {
                match self.query_on(i, &call_id) {
                    Ok(Some(s)) => out.push(s),
                    // Ended meanwhile.
                    Ok(None) | Err(RelayError::NotFound(_)) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        if answered { Ok(out) } else { Err(self.unreachable()) }
    }

    /// Pings every relay, those set aside included (a ping is how one
    /// learns a relay is back); fine if at least one answers.
    fn ping(&self) -> Result<(), RelayError> {
        let mut up = false;
        for i in 0..self.relays.len() {
            match self.ask(i, &Command::Ping) {
                Some(Reply::Pong) => up = true,
                Some(other) => tracing::warn!("ng relay {}: ping answered with {other:?}", self.relays[i].name),
                None => {}
            }
        }
        if up { Ok(()) } else { Err(self.unreachable()) }
    }

    /// `ng:udp:HOST:PORT`; for several relays, their names joined by `,`.
    fn name(&self) -> String {
        self.relays().join(",")
    }
}

/// rtpengine's ways of saying "no such call".
fn is_not_found(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    r.contains("unknown call-id") || r.contains("call-id not found") || r == DELETE_NOT_FOUND.to_ascii_lowercase()
}

fn parse_relay(spec: &str) -> Result<Remote, NgClientError> {
    let bad = |reason: &str| NgClientError::BadAddress {
        spec: spec.to_string(),
        reason: reason.to_string(),
    };
    let rest = spec.strip_prefix("ng:").unwrap_or(spec);
    let Some(hostport) = rest.strip_prefix("udp:") else {
        return Err(bad("only udp: is supported"));
    };
    let (host, port) = hostport.rsplit_once(':').ok_or_else(|| bad("no port"))?;
    let port: u16 = port.parse().map_err(|_| bad("port is not a number from 1 to 65535"))?;
    if port == 0 {
        return Err(bad("port 0"));
    }
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.is_empty() {
        return Err(bad("no host"));
    }
    let addr = (host, port)
        .to_socket_addrs()
        .map_err(|e| bad(&format!("cannot resolve: {e}")))?
        .next()
        .ok_or_else(|| bad("resolves to no address"))?;
    let shown = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    Ok(Remote {
        name: format!("ng:udp:{shown}:{port}"),
        addr,
        down_until: Mutex::new(None),
    })
}

/// A `query` reply as a [`SessionInfo`]. The offerer's tag is the one named
/// by `from-tag` (serlua's servers) or else the first listed (rtpengine
/// lists tags in the order the call met them); the other side is the tag
/// it is in dialogue with, or else the other one listed.
pub fn session_info(call_id: &str, relay: &str, r: CallReport, now: SystemTime) -> SessionInfo {
    let now_unix = now.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
    let caller = match &r.from_tag {
        Some(ft) => r.tags.iter().find(|t| &t.tag == ft),
        None => r.tags.first(),
    };
    let callee = caller
        .and_then(|c| c.in_dialogue_with.as_ref())
        .and_then(|other| r.tags.iter().find(|t| &t.tag == other))
        .or_else(|| r.tags.iter().find(|t| caller.is_none_or(|c| !std::ptr::eq(*t, c))));
    let streams = caller
        .map(|c| {
            c.medias
                .iter()
                .map(|m| StreamInfo {
                    media: m.media_type.clone(),
                    codecs: m.codec.iter().cloned().collect(),
                    caller: leg_stats(Some(m), now_unix),
                    callee: leg_stats(callee.and_then(|t| t.medias.iter().find(|x| x.index == m.index)), now_unix),
                })
                .collect()
        })
        .unwrap_or_default();
    SessionInfo {
        call_id: call_id.to_string(),
        from_tag: caller.map(|t| t.tag.clone()).unwrap_or_default(),
        to_tag: callee.map(|t| t.tag.clone()).filter(|t| !t.is_empty()),
        caller: String::new(),
        callee: String::new(),
        created: r
            .created
            .and_then(|c| u64::try_from(c).ok())
            .and_then(|c| UNIX_EPOCH.checked_add(Duration::from_secs(c)))
            .unwrap_or(UNIX_EPOCH),
        relay: relay.to_string(),
        streams,
    }
}

/// One side of a media: its RTP stream's addresses, and the counters of
/// all its streams (RTP and RTCP, as [`LegStats`] counts them).
fn leg_stats(m: Option<&MediaReport>, now_unix: f64) -> LegStats {
    let Some(m) = m else {
        return LegStats::default();
    };
    let has = |s: &StreamReport, f: &str| s.flags.iter().any(|x| x == f);
    let rtp = m.streams.iter().find(|s| has(s, "RTP")).or(m.streams.first());
    let last = m.streams.iter().filter_map(|s| s.last_packet).filter(|&t| t > 0).max();
    LegStats {
        latched: rtp.filter(|s| has(s, "confirmed")).and_then(|s| s.endpoint),
        announced: rtp.and_then(|s| s.advertised_endpoint),
        relay: rtp.and_then(|s| Some(SocketAddr::new(s.local_address?, s.local_port?))),
        packets: m.streams.iter().map(|s| s.stats.packets).sum(),
        bytes: m.streams.iter().map(|s| s.stats.bytes).sum(),
        idle_s: last.map(|t| (now_unix - t as f64).max(0.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::ng::server::call_report;

    #[test]
    fn relay_names() {
        let c = NgClient::new(&["ng:udp:127.0.0.1:2223", "udp:localhost:2224", "ng:udp:[::1]:2225"], DEFAULT_WAIT).unwrap();
        assert_eq!(c.relays(), ["ng:udp:127.0.0.1:2223", "ng:udp:localhost:2224", "ng:udp:[::1]:2225"]);
        assert_eq!(c.name(), "ng:udp:127.0.0.1:2223,ng:udp:localhost:2224,ng:udp:[::1]:2225");
        for bad in [
            "ng:tcp:1.2.3.4:5",
            "ng:udp:1.2.3.4",
            "ng:udp:1.2.3.4:0",
            "ng:udp:1.2.3.4:x",
            "ng:udp::5",
            "1.2.3.4:5",
        ] {
            assert!(NgClient::new(&[bad], DEFAULT_WAIT).is_err(), "{bad}");
        }
        assert!(matches!(NgClient::new(&[], DEFAULT_WAIT), Err(NgClientError::NoRelays)));
    }

    #[test]
    fn hashing_is_stable() {
        let a = NgClient::new(&["udp:127.0.0.1:1", "udp:127.0.0.1:2", "udp:127.0.0.1:3"], DEFAULT_WAIT).unwrap();
        let b = NgClient::new(&["udp:127.0.0.1:1", "udp:127.0.0.1:2", "udp:127.0.0.1:3"], DEFAULT_WAIT).unwrap();
        let mut seen = [0usize; 3];
        for n in 0..300 {
            let id = format!("call-{n}@host");
            assert_eq!(a.relay_for(&id), b.relay_for(&id));
            seen[a.relay_for(&id)] += 1;
        }
        assert!(seen.iter().all(|&n| n > 50), "{seen:?}");
    }

    #[test]
    fn report_back_to_session() {
        let s = SessionInfo {
            call_id: "c".into(),
            from_tag: "ft".into(),
            to_tag: Some("tt".into()),
            caller: String::new(),
            callee: String::new(),
            created: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            relay: "ng:udp:127.0.0.1:1".into(),
            streams: vec![StreamInfo {
                media: "audio".into(),
                codecs: vec!["PCMU/8000".into()],
                caller: LegStats {
                    latched: Some(SocketAddr::from(([192, 0, 2, 1], 4000))),
                    announced: Some(SocketAddr::from(([10, 0, 0, 1], 4000))),
                    relay: Some(SocketAddr::from(([203, 0, 113, 5], 30000))),
                    packets: 10,
                    bytes: 1720,
                    idle_s: Some(2.0),
                },
                callee: LegStats {
                    latched: None,
                    announced: Some(SocketAddr::from(([10, 0, 0, 2], 5000))),
                    relay: Some(SocketAddr::from(([203, 0, 113, 5], 30002))),
                    packets: 0,
                    bytes: 0,
                    idle_s: None,
                },
            }],
        };
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_100);
        let back = session_info("c", "ng:udp:127.0.0.1:1", call_report(&s, now), now);
        assert_eq!(back, s);
    }
}
