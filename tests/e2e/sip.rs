//! A minimal SIP-over-UDP peer for the end-to-end tests that measure times
//! or count datagrams (where sipp's statistics are too coarse): build
//! requests and responses as text, parse what comes back, wait with
//! deadlines. Deliberately independent of the serlua crate, so a bug in the
//! proxy's parser cannot hide in the test's.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A parsed SIP message (request or response).
#[derive(Clone, Debug)]
pub struct SipMsg {
    pub first_line: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// The datagram as received.
    pub raw: String,
}

/// Full names of the compact header forms (RFC 3261 7.3.3).
fn expand(name: &str) -> String {
    let lower = name.trim().to_ascii_lowercase();
    let full = match lower.as_str() {
        "v" => "via",
        "f" => "from",
        "t" => "to",
        "i" => "call-id",
        "m" => "contact",
        "l" => "content-length",
        "c" => "content-type",
        "k" => "supported",
        "s" => "subject",
        "e" => "content-encoding",
        _ => return lower,
    };
    full.to_string()
}

impl SipMsg {
    /// Parses a datagram; None when it is not a SIP message.
    pub fn parse(data: &[u8]) -> Option<SipMsg> {
        let raw = String::from_utf8_lossy(data).into_owned();
        let (head, body) = match raw.find("\r\n\r\n") {
            Some(i) => (&raw[..i], raw[i + 4..].to_string()),
            None => (raw.trim_end(), String::new()),
        };
        let mut lines = head.split("\r\n");
        let first_line = lines.next()?.to_string();
        if !(first_line.starts_with("SIP/2.0 ") || first_line.ends_with(" SIP/2.0")) {
            return None;
        }
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in lines {
            if line.starts_with(' ') || line.starts_with('\t') {
                if let Some(last) = headers.last_mut() {
                    last.1.push(' ');
                    last.1.push_str(line.trim());
                }
                continue;
            }
            let (name, value) = line.split_once(':')?;
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
        Some(SipMsg {
            first_line,
            headers,
            body,
            raw,
        })
    }

    /// The status code of a response.
    pub fn status(&self) -> Option<u16> {
        let rest = self.first_line.strip_prefix("SIP/2.0 ")?;
        rest.get(..3)?.parse().ok()
    }

    /// The method of a request.
    pub fn method(&self) -> Option<&str> {
        if self.first_line.starts_with("SIP/2.0 ") {
            return None;
        }
        self.first_line.split(' ').next()
    }

    /// The Request-URI of a request.
    pub fn ruri(&self) -> Option<&str> {
        if self.first_line.starts_with("SIP/2.0 ") {
            return None;
        }
        self.first_line.split(' ').nth(1)
    }

    /// Every value of a header (compact forms included), in order; values
    /// of one header line separated by commas stay together.
    pub fn headers(&self, name: &str) -> Vec<&str> {
        let want = expand(name);
        self.headers
            .iter()
            .filter(|(n, _)| expand(n) == want)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers(name).into_iter().next()
    }

    /// The header lines `name: value` of every occurrence, CRLF-terminated,
    /// to copy into a response (Via, Record-Route).
    pub fn header_lines(&self, name: &str) -> String {
        let want = expand(name);
        let mut s = String::new();
        for (n, v) in &self.headers {
            if expand(n) == want {
                let _ = write!(s, "{n}: {v}\r\n");
            }
        }
        s
    }

    /// The method in the CSeq header.
    pub fn cseq_method(&self) -> Option<&str> {
        self.header("CSeq")?.split_whitespace().nth(1)
    }

    /// The branch parameter of the top Via.
    pub fn top_branch(&self) -> Option<&str> {
        let via = self.header("Via")?;
        let via = via.split(',').next()?;
        via.split(';').find_map(|p| p.trim().strip_prefix("branch="))
    }

    /// The tag parameter of the To header.
    pub fn to_tag(&self) -> Option<&str> {
        self.header("To")?.split(';').find_map(|p| p.trim().strip_prefix("tag="))
    }

    /// A one-line summary for failure messages.
    pub fn summary(&self) -> String {
        format!("{} (CSeq: {})", self.first_line, self.header("CSeq").unwrap_or("?"))
    }
}

static UNIQUE: AtomicU64 = AtomicU64::new(1);

/// A process-unique token for Call-IDs, tags and branches.
pub fn unique(prefix: &str) -> String {
    let n = UNIQUE.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}{}x{n}x{nanos:x}", std::process::id())
}

/// One received datagram.
#[derive(Clone, Debug)]
pub struct Received {
    pub msg: SipMsg,
    pub from: SocketAddr,
    pub at: Instant,
}

/// A UDP socket on 127.0.0.1 speaking SIP text.
pub struct UdpPeer {
    pub sock: UdpSocket,
    pub addr: SocketAddr,
    /// Everything received so far, in order (including what recv_* skipped).
    pub log: Vec<Received>,
}

impl UdpPeer {
    /// Binds 127.0.0.1 on a free port.
    pub fn bind() -> UdpPeer {
        UdpPeer::bind_on(Ipv4Addr::LOCALHOST.into())
    }

    /// Binds `ip` (127.0.0.1 or ::1) on a free port.
    pub fn bind_on(ip: IpAddr) -> UdpPeer {
        UdpPeer::bind_to(SocketAddr::new(ip, 0))
    }

    /// Binds `addr` (port 0: a free port).
    pub fn bind_to(addr: SocketAddr) -> UdpPeer {
        let sock = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind a UDP socket on {addr}: {e}"));
        let addr = sock.local_addr().expect("local_addr");
        UdpPeer {
            sock,
            addr,
            log: Vec::new(),
        }
    }

    pub fn send(&self, data: &str, to: SocketAddr) {
        self.sock
            .send_to(data.as_bytes(), to)
            .unwrap_or_else(|e| panic!("send {} bytes to {to}: {e}", data.len()));
    }

    /// The next SIP datagram before `deadline`, or None.
    pub fn recv_until(&mut self, deadline: Instant) -> Option<Received> {
        let mut buf = vec![0u8; 65536];
        loop {
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            let wait = (deadline - now).max(Duration::from_millis(1));
            self.sock.set_read_timeout(Some(wait)).ok()?;
            match self.sock.recv_from(&mut buf) {
                Ok((n, from)) => {
                    let at = Instant::now();
                    if let Some(msg) = SipMsg::parse(&buf[..n]) {
                        let r = Received { msg, from, at };
                        self.log.push(r.clone());
                        return Some(r);
                    }
                }
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => return None,
                // ICMP port unreachable from an earlier send surfaces here on Linux.
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Err(e) => panic!("recv on {}: {e}", self.addr),
            }
        }
    }

    /// Waits for the first message that `pred` accepts; others are logged and skipped.
    pub fn recv_match(&mut self, deadline: Instant, mut pred: impl FnMut(&SipMsg) -> bool) -> Option<Received> {
        while let Some(r) = self.recv_until(deadline) {
            if pred(&r.msg) {
                return Some(r);
            }
        }
        None
    }

    /// A readable list of everything received so far.
    pub fn transcript(&self, since: Instant) -> String {
        let mut s = String::new();
        for r in &self.log {
            let ms = r.at.saturating_duration_since(since).as_millis();
            let _ = writeln!(s, "  +{ms:>6} ms from {}: {}", r.from, r.msg.summary());
        }
        if s.is_empty() {
            s.push_str("  (nothing received)\n");
        }
        s
    }
}

/// The identity of a call placed by a test UAC.
#[derive(Clone, Debug)]
pub struct Call {
    pub call_id: String,
    pub from_tag: String,
    pub branch: String,
    pub cseq: u32,
    /// host:port the Request-URI names (the proxy: it rewrites it).
    pub target: SocketAddr,
    pub uac: SocketAddr,
    /// Via transport token: "UDP" (default) or "TCP".
    pub transport: &'static str,
}

impl Call {
    pub fn new(uac: SocketAddr, target: SocketAddr) -> Call {
        Call {
            call_id: unique("e2e-call-"),
            from_tag: unique("ft"),
            branch: format!("z9hG4bK{}", unique("-b")),
            cseq: 1,
            target,
            uac,
            transport: "UDP",
        }
    }

    /// The same call sent over another transport ("TCP"): the Via names it.
    pub fn over(mut self, transport: &'static str) -> Call {
        self.transport = transport;
        self
    }

    fn ruri(&self) -> String {
        format!("sip:service@{}", self.target)
    }

    /// An INVITE with a small SDP body.
    pub fn invite(&self) -> String {
        self.invite_with(70, "")
    }

    /// An INVITE with the given Max-Forwards and extra header lines
    /// (each ending in CRLF).
    pub fn invite_with(&self, max_forwards: u32, extra: &str) -> String {
        let body = format!(
            "v=0\r\no=e2e 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n",
            self.uac.port() + 1000
        );
        self.request("INVITE", &self.branch, self.cseq, max_forwards, "", extra, "application/sdp", &body)
    }

    /// A non-INVITE request outside a dialog (OPTIONS, ...).
    pub fn simple(&self, method: &str, max_forwards: u32, extra: &str) -> String {
        self.request(method, &self.branch, self.cseq, max_forwards, "", extra, "", "")
    }

    /// The ACK for a non-2xx final response to our INVITE (same branch,
    /// the response's To tag).
    pub fn ack_for(&self, resp: &SipMsg) -> String {
        let to_tag = resp.to_tag().map(|t| format!(";tag={t}")).unwrap_or_default();
        self.request("ACK", &self.branch, self.cseq, 70, &to_tag, "", "", "")
    }

    /// CANCEL for our INVITE.
    pub fn cancel(&self) -> String {
        self.request("CANCEL", &self.branch, self.cseq, 70, "", "", "", "")
    }

    #[allow(clippy::too_many_arguments)]
    fn request(
        &self,
        method: &str,
        branch: &str,
        cseq: u32,
        max_forwards: u32,
        to_tag: &str,
        extra: &str,
        ctype: &str,
        body: &str,
    ) -> String {
        let mut s = String::new();
        let _ = write!(s, "{method} {} SIP/2.0\r\n", self.ruri());
        let _ = write!(s, "Via: SIP/2.0/{} {};branch={branch};rport\r\n", self.transport, self.uac);
        let _ = write!(s, "From: e2e <sip:e2e@{}>;tag={}\r\n", self.uac, self.from_tag);
        let _ = write!(s, "To: service <{}>{to_tag}\r\n", self.ruri());
        let _ = write!(s, "Call-ID: {}\r\n", self.call_id);
        let _ = write!(s, "CSeq: {cseq} {method}\r\n");
        if method != "ACK" && method != "CANCEL" {
            let _ = write!(s, "Contact: <sip:e2e@{}>\r\n", self.uac);
        }
        let _ = write!(s, "Max-Forwards: {max_forwards}\r\n");
        s.push_str(extra);
        if !ctype.is_empty() {
            let _ = write!(s, "Content-Type: {ctype}\r\n");
        }
        let _ = write!(s, "Content-Length: {}\r\n\r\n{body}", body.len());
        s
    }
}

/// A response to `req` (as a UAS): copies Via (all), Record-Route (all),
/// From, To (adding `to_tag` when the request has none), Call-ID and CSeq.
pub fn response(req: &SipMsg, code: u16, reason: &str, to_tag: &str, contact: Option<SocketAddr>) -> String {
    let mut s = format!("SIP/2.0 {code} {reason}\r\n");
    s.push_str(&req.header_lines("Via"));
    if (101..300).contains(&code) {
        s.push_str(&req.header_lines("Record-Route"));
    }
    let _ = write!(s, "From: {}\r\n", req.header("From").unwrap_or(""));
    let to = req.header("To").unwrap_or("");
    if req.to_tag().is_some() || code == 100 || to_tag.is_empty() {
        let _ = write!(s, "To: {to}\r\n");
    } else {
        let _ = write!(s, "To: {to};tag={to_tag}\r\n");
    }
    let _ = write!(s, "Call-ID: {}\r\n", req.header("Call-ID").unwrap_or(""));
    let _ = write!(s, "CSeq: {}\r\n", req.header("CSeq").unwrap_or(""));
    if let Some(c) = contact {
        let _ = write!(s, "Contact: <sip:uas@{c}>\r\n");
    }
    s.push_str("Content-Length: 0\r\n\r\n");
    s
}

/// Pads a request with an `X-Padding` header so that the whole datagram is
/// exactly `total` bytes. `build(extra_header_lines)` renders the request.
pub fn padded_to(total: usize, build: impl Fn(&str) -> String) -> String {
    let base = build("X-Padding: \r\n").len();
    assert!(total >= base, "cannot pad a {base}-byte request down to {total} bytes");
    let pad = "a".repeat(total - base);
    let out = build(&format!("X-Padding: {pad}\r\n"));
    assert_eq!(out.len(), total);
    out
}

/// Where a response to `req` goes (RFC 3261 18.2.2 / RFC 3581): the top
/// Via's received/rport if present, else its sent-by, else the source.
pub fn reply_target(r: &Received) -> SocketAddr {
    let Some(via) = r.msg.header("Via") else { return r.from };
    let via = via.split(',').next().unwrap_or("");
    let mut parts = via.split(';');
    let sent_by = parts.next().unwrap_or("").split_whitespace().nth(1).unwrap_or("");
    let (mut host, mut port) = match sent_by.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse::<u16>().unwrap_or(5060)),
        None => (sent_by.to_string(), 5060),
    };
    for p in parts {
        let p = p.trim();
        if let Some(v) = p.strip_prefix("received=") {
            host = v.to_string();
        } else if let Some(v) = p.strip_prefix("rport=") {
            if let Ok(n) = v.parse() {
                port = n;
            }
        }
    }
    format!("{host}:{port}").parse().unwrap_or(r.from)
}

/// A scripted UAS on its own thread: `on_msg` gets every datagram and
/// returns the responses to send, each after a delay (0 = at once), to
/// [`reply_target`]. Runs until `until`; returns the peer with its log.
pub fn spawn_uas<F>(mut peer: UdpPeer, until: Instant, mut on_msg: F) -> std::thread::JoinHandle<UdpPeer>
where
    F: FnMut(&Received) -> Vec<(Duration, String)> + Send + 'static,
{
    std::thread::spawn(move || {
        let mut pending: Vec<(Instant, String, SocketAddr)> = Vec::new();
        loop {
            let now = Instant::now();
            pending.sort_by_key(|p| p.0);
            while let Some(p) = pending.first() {
                if p.0 > now {
                    break;
                }
                let (_, data, to) = pending.remove(0);
                peer.send(&data, to);
            }
            if now >= until {
                return peer;
            }
            let next = pending.first().map(|p| p.0).unwrap_or(until).min(until);
            if let Some(r) = peer.recv_until(next) {
                let to = reply_target(&r);
                for (delay, data) in on_msg(&r) {
                    pending.push((r.at + delay, data, to));
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_respond() {
        let uac: SocketAddr = "127.0.0.1:5061".parse().unwrap();
        let proxy: SocketAddr = "127.0.0.1:5060".parse().unwrap();
        let call = Call::new(uac, proxy);
        let inv = SipMsg::parse(call.invite().as_bytes()).unwrap();
        assert_eq!(inv.method(), Some("INVITE"));
        assert_eq!(inv.top_branch(), Some(call.branch.as_str()));
        assert_eq!(inv.header("content-length").unwrap().parse::<usize>().unwrap(), inv.body.len());
        let r = SipMsg::parse(response(&inv, 180, "Ringing", "tt", None).as_bytes()).unwrap();
        assert_eq!(r.status(), Some(180));
        assert_eq!(r.to_tag(), Some("tt"));
        assert_eq!(r.cseq_method(), Some("INVITE"));
        let ack = SipMsg::parse(call.ack_for(&r).as_bytes()).unwrap();
        assert_eq!(ack.to_tag(), Some("tt"));
        assert_eq!(ack.header("CSeq"), Some("1 ACK"));
        let p = padded_to(5000, |extra| call.simple("OPTIONS", 70, extra));
        assert_eq!(p.len(), 5000);
    }
}
