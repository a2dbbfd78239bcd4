//! The ng control socket of `serlua relay`: answers rtpengine's ng
//! commands (rtpengine's docs/ng_control_protocol.md) from a
//! [`MediaRelay`], so that Kamailio's rtpengine module — or another
//! serlua's [`super::NgClient`] — can drive the embedded engine as it
//! would drive rtpengine.
//!
//! Replies are kept by cookie for a while (rtpengine's cookie cache): a
//! client retransmits with the same cookie when a reply is late or lost,
//! and must get the same answer without the offer being done twice.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;

use super::codec::{
    CallReport, Command, MediaReport, OkReply, PacketStats, Reply, Request, Response, StreamReport, TagReport, Totals, decode_request,
    encode_response, flag_is, split_cookie,
};
use crate::relay::{LegStats, MediaRelay, OfferAnswer, RelayError, SessionInfo, StreamInfo};

/// rtpengine's `list` answers at most this many Call-IDs unless `limit`
/// says otherwise.
const DEFAULT_LIST_LIMIT: u64 = 32;

/// The commands rtpengine knows that this server does not carry out: they
/// get "Unsupported command" rather than rtpengine's "Unrecognized
/// command", so that an operator sees the difference.
const RTPENGINE_COMMANDS: &[&str] = &[
    "start recording",
    "stop recording",
    "pause recording",
    "block DTMF",
    "unblock DTMF",
    "block media",
    "unblock media",
    "silence media",
    "unsilence media",
    "start forwarding",
    "stop forwarding",
    "play media",
    "stop media",
    "play DTMF",
    "statistics",
    "publish",
    "subscribe request",
    "subscribe answer",
    "unsubscribe",
    "inject start",
    "inject stop",
    "connect",
    "create",
    "create answer",
    "mesh",
];

/// The largest UDP payload (IPv4: 65,535 less the IP and UDP headers).
const MAX_DATAGRAM: usize = 65_507;

/// rtpengine's error text for an unknown call: Kamailio's logs read the
/// same, and clients (ours included) recognise it.
pub const UNKNOWN_CALL: &str = "Unknown call-id";

/// rtpengine's text for a `delete` that matched nothing (a warning unless
/// the `fatal` flag is given).
pub const DELETE_NOT_FOUND: &str = "Call-ID not found or tags didn't match";

/// How the ng server runs.
#[derive(Clone, Debug)]
pub struct NgServerConfig {
    /// Threads reading the socket (each handles one request at a time).
    pub threads: usize,
    /// How long a reply is kept for retransmissions of its request
    /// (rtpengine: 30 s).
    pub cache_ttl: Duration,
}

impl Default for NgServerConfig {
    fn default() -> Self {
        NgServerConfig {
            threads: 1,
            cache_ttl: Duration::from_secs(30),
        }
    }
}

/// A running ng server; dropping it stops its threads (within ~100 ms).
pub struct NgServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl NgServer {
    /// The address the control socket is bound to (with the real port when
    /// port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for NgServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Binds the ng control socket at `bind` and answers requests from
/// `relay` on a thread of its own, with the default [`NgServerConfig`].
pub fn serve(bind: SocketAddr, relay: Arc<dyn MediaRelay>) -> io::Result<NgServer> {
    serve_with(bind, relay, NgServerConfig::default())
}

/// Like [`serve`], with the threads and the retransmission window given.
pub fn serve_with(bind: SocketAddr, relay: Arc<dyn MediaRelay>, cfg: NgServerConfig) -> io::Result<NgServer> {
    let socket = UdpSocket::bind(bind)?;
    // The threads look at the stop flag this often.
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let addr = socket.local_addr()?;
    let stop = Arc::new(AtomicBool::new(false));
    let shared = Arc::new(Shared {
        relay,
        cache: Mutex::new(Cache::default()),
        ttl: cfg.cache_ttl,
    });
    let mut threads = Vec::new();
    for i in 0..cfg.threads.max(1) {
        let socket = socket.try_clone()?;
        let shared = shared.clone();
        let stop = stop.clone();
        let t = std::thread::Builder::new()
            .name(format!("ng-{i}"))
            .spawn(move || run(&socket, &shared, &stop))?;
        threads.push(t);
    }
    tracing::info!("ng control socket listening on udp:{addr}");
    Ok(NgServer { addr, stop, threads })
}

struct Shared {
    relay: Arc<dyn MediaRelay>,
    cache: Mutex<Cache>,
    ttl: Duration,
}

/// Replies by (client address, cookie). The address is part of the key
/// because two proxies may well pick the same cookie (Kamailio's are its
/// pid and a counter); a retransmission comes from the same socket.
#[derive(Default)]
struct Cache {
    entries: HashMap<(SocketAddr, Vec<u8>), Entry>,
    swept: Option<Instant>,
}

enum Entry {
    /// Being worked on by another thread.
    InProgress(Instant),
    Done(Instant, Arc<Vec<u8>>),
}

impl Entry {
    fn at(&self) -> Instant {
        match self {
            Entry::InProgress(t) | Entry::Done(t, _) => *t,
        }
    }
}

enum Lookup {
    New,
    InProgress,
    Done(Arc<Vec<u8>>),
}

impl Cache {
    fn lookup_or_claim(&mut self, key: &(SocketAddr, Vec<u8>), ttl: Duration) -> Lookup {
        let now = Instant::now();
        if self.swept.is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1)) {
            self.entries.retain(|_, e| now.duration_since(e.at()) < ttl);
            self.swept = Some(now);
        }
        match self.entries.get(key) {
            Some(e) if now.duration_since(e.at()) < ttl => match e {
                Entry::InProgress(_) => Lookup::InProgress,
                Entry::Done(_, r) => Lookup::Done(r.clone()),
            },
            _ => {
                self.entries.insert(key.clone(), Entry::InProgress(now));
                Lookup::New
            }
        }
    }
}

fn run(socket: &UdpSocket, shared: &Shared, stop: &AtomicBool) {
    let mut buf = vec![0u8; 65536];
    while !stop.load(Ordering::Relaxed) {
        let (n, peer) = match socket.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => {
                tracing::warn!("ng: receive failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        if let Some(reply) = handle_datagram(shared, &buf[..n], peer)
            && let Err(e) = socket.send_to(&reply, peer)
        {
            tracing::warn!("ng: reply to {peer} failed: {e}");
        }
    }
}

/// One datagram in, the reply out (None: nothing to send).
fn handle_datagram(shared: &Shared, msg: &[u8], peer: SocketAddr) -> Option<Arc<Vec<u8>>> {
    let Ok((cookie, _)) = split_cookie(msg) else {
        // No cookie, no way to address a reply (rtpengine drops these too).
        tracing::debug!("ng: datagram without a cookie from {peer} dropped");
        return None;
    };
    let key = (peer, cookie.to_vec());
    match shared.cache.lock().lookup_or_claim(&key, shared.ttl) {
        Lookup::Done(reply) => {
            tracing::debug!("ng: retransmission from {peer}, cached reply sent");
            return Some(reply);
        }
        // The reply to the first copy carries the same cookie and answers
        // this one as well.
        Lookup::InProgress => return None,
        Lookup::New => {}
    }
    let reply = match decode_request(msg) {
        Ok(req) => {
            tracing::debug!("ng: {} from {peer}", req.command.name());
            execute(shared.relay.as_ref(), req)
        }
        Err(e) => {
            tracing::debug!("ng: bad request from {peer}: {e}");
            Reply::Error(e.to_string())
        }
    };
    let mut bytes = encode_response(&Response {
        cookie: key.1.clone(),
        reply,
    });
    if bytes.len() > MAX_DATAGRAM {
        // Silence would make the client think the relay is down.
        bytes = encode_response(&Response {
            cookie: key.1.clone(),
            reply: Reply::Error(format!("reply of {} bytes does not fit in one UDP datagram", bytes.len())),
        });
    }
    let bytes = Arc::new(bytes);
    shared.cache.lock().entries.insert(key, Entry::Done(Instant::now(), bytes.clone()));
    Some(bytes)
}

/// Carries out one request against the relay.
fn execute(relay: &dyn MediaRelay, req: Request) -> Reply {
    match req.command {
        Command::Ping => match relay.ping() {
            Ok(()) => Reply::Pong,
            Err(e) => error(e),
        },
        Command::Offer(p) => sdp_reply(relay.offer(&offer_answer(&p))),
        Command::Answer(p) => sdp_reply(relay.answer(&offer_answer(&p))),
        Command::Delete(p) => {
            let fatal = p.flags.iter().any(|f| flag_is(f, "fatal"));
            let fast = p.flags.iter().any(|f| flag_is(f, "fast"));
            // rtpengine's delete reply carries the call's last statistics.
            let stats = if fast { None } else { relay.query(&p.call_id).ok() };
            match relay.delete(&p.call_id, p.from_tag.as_deref(), p.to_tag.as_deref()) {
                Ok(()) => Reply::Ok(OkReply {
                    call: stats.map(|s| call_report(&s, SystemTime::now())),
                    ..OkReply::default()
                }),
                Err(RelayError::NotFound(_)) if !fatal => Reply::Ok(OkReply {
                    warning: Some(DELETE_NOT_FOUND.into()),
                    ..OkReply::default()
                }),
                Err(RelayError::NotFound(_)) => Reply::Error(DELETE_NOT_FOUND.into()),
                Err(e) => error(e),
            }
        }
        Command::Query(p) => match relay.query(&p.call_id) {
            Ok(s) => Reply::Ok(OkReply {
                call: Some(call_report(&s, SystemTime::now())),
                ..OkReply::default()
            }),
            Err(e) => error(e),
        },
        Command::List(p) => match relay.list() {
            Ok(sessions) => {
                let limit = usize::try_from(p.limit.unwrap_or(DEFAULT_LIST_LIMIT)).unwrap_or(usize::MAX);
                Reply::Ok(OkReply {
                    calls: Some(sessions.into_iter().take(limit).map(|s| s.call_id).collect()),
                    ..OkReply::default()
                })
            }
            Err(e) => error(e),
        },
        Command::Other(name) if RTPENGINE_COMMANDS.iter().any(|c| c.eq_ignore_ascii_case(&name)) => {
            Reply::Error(format!("Unsupported command: {name}"))
        }
        Command::Other(name) => Reply::Error(format!("Unrecognized command: {name}")),
    }
}

/// The flags (`replace`, `ICE`, `direction`, `trust-address`, …) are not
/// passed on: the embedded engine always rewrites origin, connection and
/// ports, strips nothing it cannot relay, and latches symmetrically. The
/// `received-from` address is where a private SDP address is reached
/// until latching (what `SIP-source-address` asks of rtpengine).
fn offer_answer(p: &super::codec::OfferParams) -> OfferAnswer<'_> {
    OfferAnswer {
        call_id: &p.call_id,
        from_tag: &p.from_tag,
        to_tag: p.to_tag.as_deref(),
        sdp: &p.sdp,
        lookup_only: false,
        from_uri: "",
        to_uri: "",
        // rtpengine's `received-from`: [family, address] of the SIP source.
        source: p.received_from.get(1).and_then(|a| a.parse().ok()),
    }
}

fn sdp_reply(r: Result<Vec<u8>, RelayError>) -> Reply {
    match r {
        Ok(sdp) => Reply::Ok(OkReply {
            sdp: Some(sdp),
            ..OkReply::default()
        }),
        Err(e) => error(e),
    }
}

fn error(e: RelayError) -> Reply {
    match e {
        RelayError::NotFound(_) => Reply::Error(UNKNOWN_CALL.into()),
        e => Reply::Error(e.to_string()),
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A session in the shape of rtpengine's `query` reply: one tag per side
/// (the callee's tag empty until it answered), one media per stream, and
/// per media the one packet stream the engine counts (RTP and RTCP
/// together: the engine does not count them apart, so `totals` puts all in
/// `RTP` and leaves `RTCP` at zero).
pub fn call_report(s: &SessionInfo, now: SystemTime) -> CallReport {
    let created = unix(s.created);
    let callee_tag = s.to_tag.clone().unwrap_or_default();
    let tag = |tag: &str, other: &str, leg: fn(&StreamInfo) -> &LegStats| TagReport {
        tag: tag.to_string(),
        label: None,
        created: Some(created),
        in_dialogue_with: Some(other.to_string()),
        medias: s
            .streams
            .iter()
            .enumerate()
            .map(|(i, st)| MediaReport {
                index: i as u64 + 1,
                media_type: st.media.clone(),
                protocol: Some("RTP/AVP".into()),
                codec: st.codecs.first().cloned(),
                flags: vec!["initialized".into()],
                streams: vec![stream_report(leg(st), now)],
            })
            .collect(),
    };
    let mut totals = Totals::default();
    for st in &s.streams {
        for leg in [&st.caller, &st.callee] {
            totals.rtp.packets += leg.packets;
            totals.rtp.bytes += leg.bytes;
        }
    }
    CallReport {
        from_tag: Some(s.from_tag.clone()),
        created: Some(created),
        last_signal: None,
        tags: vec![
            tag(&s.from_tag, &callee_tag, |st| &st.caller),
            tag(&callee_tag, &s.from_tag, |st| &st.callee),
        ],
        totals,
    }
}

fn stream_report(leg: &LegStats, now: SystemTime) -> StreamReport {
    let mut flags = vec!["RTP".to_string()];
    if leg.latched.is_some() || leg.announced.is_some() {
        flags.push("filled".into());
    }
    if leg.latched.is_some() {
        flags.push("confirmed".into());
    }
    let last_packet = leg
        .idle_s
        .filter(|s| s.is_finite() && *s >= 0.0)
        .map(|s| unix(now.checked_sub(Duration::from_secs_f64(s.min(1e9))).unwrap_or(UNIX_EPOCH)))
        .unwrap_or(0);
    StreamReport {
        local_port: leg.relay.map(|a| a.port()),
        local_address: leg.relay.map(|a| a.ip()),
        endpoint: leg.latched.or(leg.announced),
        advertised_endpoint: leg.announced,
        last_packet: Some(last_packet),
        flags,
        stats: PacketStats {
            packets: leg.packets,
            bytes: leg.bytes,
            errors: 0,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::ng::codec::unsorted::{B, message};
    use crate::relay::ng::codec::{DeleteParams, ListParams, OfferParams, QueryParams, decode_response, encode_request};
    use std::sync::atomic::AtomicUsize;

    /// A relay that rewrites the SDP's first line and keeps sessions in a map.
    #[derive(Default)]
    struct Fake {
        sessions: Mutex<Vec<SessionInfo>>,
        offers: AtomicUsize,
    }

    impl MediaRelay for Fake {
        fn offer(&self, req: &OfferAnswer<'_>) -> Result<Vec<u8>, RelayError> {
            self.offers.fetch_add(1, Ordering::SeqCst);
            if req.sdp == b"bad" {
                return Err(RelayError::BadSdp("line 1".into()));
            }
            let mut s = self.sessions.lock();
            s.retain(|x| x.call_id != req.call_id);
            s.push(SessionInfo {
                call_id: req.call_id.into(),
                from_tag: req.from_tag.into(),
                to_tag: None,
                caller: String::new(),
                callee: String::new(),
                created: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
                relay: "fake".into(),
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
                    callee: LegStats::default(),
                }],
            });
            Ok([b"relayed:".as_slice(), req.sdp].concat())
        }
        fn answer(&self, req: &OfferAnswer<'_>) -> Result<Vec<u8>, RelayError> {
            let mut s = self.sessions.lock();
            let x = s
                .iter_mut()
                .find(|x| x.call_id == req.call_id)
                .ok_or(RelayError::NotFound(req.call_id.into()))?;
            x.to_tag = req.to_tag.map(String::from);
            Ok([b"answered:".as_slice(), req.sdp].concat())
        }
        fn delete(&self, call_id: &str, _: Option<&str>, _: Option<&str>) -> Result<(), RelayError> {
            let mut s = self.sessions.lock();
            let before = s.len();
            s.retain(|x| x.call_id != call_id);
            if s.len() == before {
                Err(RelayError::NotFound(call_id.into()))
            } else {
                Ok(())
            }
        }
        fn query(&self, call_id: &str) -> Result<SessionInfo, RelayError> {
            self.sessions
                .lock()
                .iter()
                .find(|x| x.call_id == call_id)
                .cloned()
                .ok_or(RelayError::NotFound(call_id.into()))
        }
        fn list(&self) -> Result<Vec<SessionInfo>, RelayError> {
            Ok(self.sessions.lock().clone())
        }
        fn ping(&self) -> Result<(), RelayError> {
            Ok(())
        }
        fn name(&self) -> String {
            "fake".into()
        }
    }

    struct Harness {
        fake: Arc<Fake>,
        server: NgServer,
        sock: UdpSocket,
        n: usize,
    }

    impl Harness {
        fn new() -> Harness {
            let fake = Arc::new(Fake::default());
            let server = serve_with(
                "127.0.0.1:0".parse().unwrap(),
                fake.clone(),
                NgServerConfig {
                    threads: 2,
                    ..NgServerConfig::default()
                },
            )
            .unwrap();
            let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            Harness { fake, server, sock, n: 0 }
        }

        fn raw(&self, msg: &[u8]) -> Option<Vec<u8>> {
            self.sock.send_to(msg, self.server.local_addr()).unwrap();
            let mut buf = vec![0; 65536];
            match self.sock.recv(&mut buf) {
                Ok(n) => Some(buf[..n].to_vec()),
                Err(_) => None,
            }
        }

        fn ask(&mut self, command: Command) -> Reply {
            self.n += 1;
            let cookie = format!("t_{}", self.n).into_bytes();
            let wire = self
                .raw(&encode_request(&Request {
                    cookie: cookie.clone(),
                    command,
                }))
                .expect("a reply");
            let resp = decode_response(&wire).unwrap();
            assert_eq!(resp.cookie, cookie);
            resp.reply
        }
    }

    fn offer(call_id: &str, sdp: &[u8]) -> Command {
        Command::Offer(OfferParams {
            call_id: call_id.into(),
            from_tag: "ft".into(),
            sdp: sdp.to_vec(),
            flags: vec!["trust-address".into(), "symmetric".into(), "some-future-flag".into()],
            replace: vec!["origin".into(), "session-connection".into()],
            ice: vec!["remove".into()],
            transport_protocol: Some("RTP/AVP".into()),
            direction: vec!["internal".into(), "external".into()],
            ..OfferParams::default()
        })
    }

    fn ok(r: Reply) -> OkReply {
        match r {
            Reply::Ok(o) => o,
            other => panic!("not ok: {other:?}"),
        }
    }

    #[test]
    fn ping_offer_answer_query_list_delete() {
        let mut h = Harness::new();
        assert_eq!(h.ask(Command::Ping), Reply::Pong);
        assert_eq!(
            ok(h.ask(offer("c1", b"v=0\r\n"))).sdp.as_deref(),
            Some(b"relayed:v=0\r\n".as_slice())
        );
        let Command::Offer(mut p) = offer("c1", b"v=1\r\n") else {
            unreachable!()
        };
        p.to_tag = Some("tt".into());
        assert_eq!(ok(h.ask(Command::Answer(p))).sdp.as_deref(), Some(b"answered:v=1\r\n".as_slice()));

        let q = ok(h.ask(Command::Query(QueryParams {
            call_id: "c1".into(),
            ..QueryParams::default()
        })));
        let call = q.call.expect("call report");
        assert_eq!(call.created, Some(1_700_000_000));
        assert_eq!(call.tags.len(), 2);
        assert_eq!(call.tags[0].tag, "ft");
        assert_eq!(call.tags[0].in_dialogue_with.as_deref(), Some("tt"));
        assert_eq!(call.tags[1].tag, "tt");
        let m = &call.tags[0].medias[0];
        assert_eq!(
            (m.index, m.media_type.as_str(), m.codec.as_deref()),
            (1, "audio", Some("PCMU/8000"))
        );
        let st = &m.streams[0];
        assert_eq!(st.local_port, Some(30000));
        assert_eq!(st.endpoint, Some(SocketAddr::from(([192, 0, 2, 1], 4000))));
        assert_eq!(st.advertised_endpoint, Some(SocketAddr::from(([10, 0, 0, 1], 4000))));
        assert_eq!(st.stats.packets, 10);
        assert!(st.flags.contains(&"confirmed".to_string()));
        assert!(st.last_packet.unwrap() > 1_700_000_000);
        assert_eq!(call.totals.rtp.packets, 10);
        assert_eq!(call.totals.rtp.bytes, 1720);

        ok(h.ask(offer("c2", b"v=0\r\n")));
        let calls = ok(h.ask(Command::List(ListParams::default()))).calls.unwrap();
        assert_eq!(calls, ["c1", "c2"]);
        let calls = ok(h.ask(Command::List(ListParams { limit: Some(1) }))).calls.unwrap();
        assert_eq!(calls, ["c1"]);

        let del = |flags: &[&str]| {
            Command::Delete(DeleteParams {
                call_id: "c1".into(),
                from_tag: Some("ft".into()),
                flags: flags.iter().map(|s| s.to_string()).collect(),
                ..DeleteParams::default()
            })
        };
        let d = ok(h.ask(del(&[])));
        assert_eq!(d.warning, None);
        assert_eq!(d.call.map(|c| c.totals.rtp.packets), Some(10), "delete reports the last statistics");
        // Again: a warning by default, an error with `fatal`.
        assert_eq!(ok(h.ask(del(&[]))).warning.as_deref(), Some(DELETE_NOT_FOUND));
        assert_eq!(h.ask(del(&["fatal"])), Reply::Error(DELETE_NOT_FOUND.into()));
        assert_eq!(
            h.ask(Command::Query(QueryParams {
                call_id: "c1".into(),
                ..QueryParams::default()
            })),
            Reply::Error(UNKNOWN_CALL.into())
        );
        assert_eq!(ok(h.ask(Command::List(ListParams::default()))).calls.unwrap(), ["c2"]);
    }

    #[test]
    fn errors_come_back_as_error_reason() {
        let mut h = Harness::new();
        let Reply::Error(e) = h.ask(offer("c", b"bad")) else { panic!() };
        assert!(e.contains("SDP not understood: line 1"), "{e}");
        let Command::Offer(p) = offer("nope", b"v=0") else { unreachable!() };
        assert_eq!(h.ask(Command::Answer(p)), Reply::Error(UNKNOWN_CALL.into()));
        let Reply::Error(e) = h.ask(Command::Other("frobnicate".into())) else {
            panic!()
        };
        assert!(e.starts_with("Unrecognized command"), "{e}");
        let Reply::Error(e) = h.ask(Command::Other("start recording".into())) else {
            panic!()
        };
        assert!(e.starts_with("Unsupported command"), "{e}");
        // Undecodable, with a cookie: an error reply; without: silence.
        let wire = h.raw(b"k1 d7:command5:offere").unwrap();
        let resp = decode_response(&wire).unwrap();
        assert_eq!(resp.cookie, b"k1");
        assert_eq!(resp.reply, Reply::Error("no `call-id` in message".into()));
        let wire = h.raw(b"k2 \xff\xfe").unwrap();
        assert!(matches!(decode_response(&wire).unwrap().reply, Reply::Error(_)));
        h.sock.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        assert_eq!(h.raw(b"no-cookie-at-all"), None);
    }

    #[test]
    fn kamailio_style_unsorted_offer() {
        let h = Harness::new();
        let msg = message(
            "4711_1",
            &B::D(vec![
                ("sdp", B::S("v=0")),
                (
                    "flags",
                    B::L(vec![B::S("trust-address"), B::S("symmetric"), B::S("a-flag-from-the-future")]),
                ),
                ("replace", B::L(vec![B::S("origin"), B::S("session-connection")])),
                ("ICE", B::S("remove")),
                ("transport-protocol", B::S("RTP/AVP")),
                ("direction", B::L(vec![B::S("internal"), B::S("external")])),
                ("received-from", B::L(vec![B::S("IP4"), B::S("127.0.0.1")])),
                ("call-id", B::S("abc")),
                ("from-tag", B::S("ft")),
                ("via-branch", B::S("z9hG4bK1")),
                ("record-call", B::S("no")),
                ("command", B::S("offer")),
            ]),
        );
        let resp = decode_response(&h.raw(&msg).unwrap()).unwrap();
        assert_eq!(resp.cookie, b"4711_1");
        assert_eq!(ok(resp.reply).sdp.as_deref(), Some(b"relayed:v=0".as_slice()));
    }

    #[test]
    fn retransmission_gets_the_cached_reply_without_redoing_the_work() {
        let h = Harness::new();
        let req = encode_request(&Request {
            cookie: b"rtx_1".to_vec(),
            command: offer("c", b"v=0\r\n"),
        });
        let first = h.raw(&req).unwrap();
        let again = h.raw(&req).unwrap();
        assert_eq!(first, again);
        assert_eq!(h.fake.offers.load(Ordering::SeqCst), 1);
        // Another cookie is another request.
        let other = encode_request(&Request {
            cookie: b"rtx_2".to_vec(),
            command: offer("c", b"v=0\r\n"),
        });
        h.raw(&other).unwrap();
        assert_eq!(h.fake.offers.load(Ordering::SeqCst), 2);
        // The same cookie from another socket is another client's request.
        let sock2 = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock2.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        sock2.send_to(&req, h.server.local_addr()).unwrap();
        let mut buf = [0u8; 4096];
        sock2.recv(&mut buf).unwrap();
        assert_eq!(h.fake.offers.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn cached_replies_expire() {
        let fake = Arc::new(Fake::default());
        let server = serve_with(
            "127.0.0.1:0".parse().unwrap(),
            fake.clone(),
            NgServerConfig {
                threads: 1,
                cache_ttl: Duration::from_millis(200),
            },
        )
        .unwrap();
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let req = encode_request(&Request {
            cookie: b"exp".to_vec(),
            command: offer("c", b"v=0\r\n"),
        });
        let mut buf = [0u8; 4096];
        for _ in 0..2 {
            sock.send_to(&req, server.local_addr()).unwrap();
            sock.recv(&mut buf).unwrap();
        }
        assert_eq!(fake.offers.load(Ordering::SeqCst), 1);
        std::thread::sleep(Duration::from_millis(300));
        sock.send_to(&req, server.local_addr()).unwrap();
        sock.recv(&mut buf).unwrap();
        assert_eq!(fake.offers.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_reply_too_large_for_udp_is_an_error_not_silence() {
        let mut h = Harness::new();
        for n in 0..2000 {
            ok(h.ask(offer(&format!("{n:040}@a-rather-long-host-name.example.org"), b"v=0\r\n")));
        }
        let Reply::Error(e) = h.ask(Command::List(ListParams { limit: Some(2000) })) else {
            panic!()
        };
        assert!(e.contains("does not fit"), "{e}");
        assert_eq!(
            ok(h.ask(Command::List(ListParams { limit: Some(100) }))).calls.map(|c| c.len()),
            Some(100)
        );
    }

    #[test]
    fn dropping_the_handle_stops_the_server() {
        let h = Harness::new();
        let addr = h.server.local_addr();
        let t = Instant::now();
        drop(h.server);
        assert!(t.elapsed() < Duration::from_secs(1));
        // The port is free again: nothing holds the socket any more.
        UdpSocket::bind(addr).expect("port released");
    }
}
