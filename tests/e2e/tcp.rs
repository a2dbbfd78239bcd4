//! A minimal SIP-over-TCP client for the end-to-end tests: connect, write
//! bytes (a message whole, split, or garbage), and read messages framed by
//! Content-Length (RFC 3261 §18.3) with deadlines. Like `sip.rs`, it does not
//! use the serlua crate, so a framing bug in the proxy cannot hide in the
//! test's framer.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::sip::{Received, SipMsg};

/// How a read on the connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadEnd {
    /// A whole message arrived.
    Message,
    /// The deadline passed.
    Timeout,
    /// The peer closed the connection (EOF or reset).
    Closed(String),
}

/// One TCP connection to the proxy.
pub struct TcpPeer {
    pub stream: TcpStream,
    /// Our end of the connection.
    pub local: SocketAddr,
    /// The proxy's end.
    pub peer: SocketAddr,
    buf: Vec<u8>,
    /// Every message received on this connection, in order.
    pub log: Vec<Received>,
    /// Set once the peer closed the connection.
    pub closed: Option<String>,
}

/// Looks for one whole message at the start of `buf` (leading CRLFs are
/// keep-alives and skipped): `Some((skip, len))`, or None when more bytes
/// are needed. A message without Content-Length counts as having no body.
fn frame(buf: &[u8]) -> Option<(usize, usize)> {
    let mut skip = 0;
    while buf[skip..].starts_with(b"\r\n") {
        skip += 2;
    }
    let rest = &buf[skip..];
    let end = rest.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&rest[..end]);
    let mut cl = 0usize;
    for line in head.split("\r\n").skip(1) {
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim();
            if name.eq_ignore_ascii_case("content-length") || name.eq_ignore_ascii_case("l") {
                cl = value.trim().parse().unwrap_or(0);
            }
        }
    }
    (rest.len() >= end + cl).then_some((skip, end + cl))
}

impl TcpPeer {
    /// Connects to `to` (5 s deadline).
    pub fn connect(to: SocketAddr) -> TcpPeer {
        let stream = TcpStream::connect_timeout(&to, Duration::from_secs(5)).unwrap_or_else(|e| panic!("TCP connect to {to}: {e}"));
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().expect("local_addr");
        TcpPeer {
            stream,
            local,
            peer: to,
            buf: Vec::new(),
            log: Vec::new(),
            closed: None,
        }
    }

    /// Wraps an accepted connection (`peer` is the remote end).
    pub fn from_stream(stream: TcpStream, peer: SocketAddr) -> TcpPeer {
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().expect("local_addr");
        TcpPeer {
            stream,
            local,
            peer,
            buf: Vec::new(),
            log: Vec::new(),
            closed: None,
        }
    }

    /// Writes `data` (all of it) in one write call.
    pub fn send(&mut self, data: &[u8]) {
        self.stream
            .write_all(data)
            .unwrap_or_else(|e| panic!("TCP write of {} bytes to {}: {e}", data.len(), self.peer));
    }

    /// Writes `data`, returning the error instead of panicking (a peer that
    /// closed the connection under us).
    pub fn try_send(&mut self, data: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(data)
    }

    /// Reads more bytes until `deadline`: the number read, 0 at the deadline,
    /// or None once the peer closed the connection.
    fn fill(&mut self, deadline: Instant) -> Option<usize> {
        if self.closed.is_some() {
            return None;
        }
        let now = Instant::now();
        if now >= deadline {
            return Some(0);
        }
        let wait = (deadline - now).max(Duration::from_millis(1));
        self.stream.set_read_timeout(Some(wait)).ok()?;
        let mut chunk = [0u8; 16384];
        match self.stream.read(&mut chunk) {
            Ok(0) => {
                self.closed = Some("EOF".into());
                None
            }
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Some(n)
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => Some(0),
            Err(e) => {
                self.closed = Some(e.to_string());
                None
            }
        }
    }

    /// The next whole message before `deadline`.
    pub fn recv_until(&mut self, deadline: Instant) -> (ReadEnd, Option<Received>) {
        loop {
            if let Some((skip, len)) = frame(&self.buf) {
                let bytes: Vec<u8> = self.buf.drain(..skip + len).skip(skip).collect();
                let at = Instant::now();
                let msg = SipMsg::parse(&bytes).unwrap_or_else(|| SipMsg {
                    first_line: format!("(not SIP: {:?})", String::from_utf8_lossy(&bytes[..bytes.len().min(60)])),
                    headers: Vec::new(),
                    body: String::new(),
                    raw: String::from_utf8_lossy(&bytes).into_owned(),
                });
                let r = Received { msg, from: self.peer, at };
                self.log.push(r.clone());
                return (ReadEnd::Message, Some(r));
            }
            match self.fill(deadline) {
                None => return (ReadEnd::Closed(self.closed.clone().unwrap_or_default()), None),
                Some(0) if Instant::now() >= deadline => return (ReadEnd::Timeout, None),
                Some(_) => {}
            }
        }
    }

    /// Waits for the first message that `pred` accepts; others are logged
    /// and skipped.
    pub fn recv_match(&mut self, deadline: Instant, mut pred: impl FnMut(&SipMsg) -> bool) -> Option<Received> {
        loop {
            match self.recv_until(deadline) {
                (ReadEnd::Message, Some(r)) if pred(&r.msg) => return Some(r),
                (ReadEnd::Message, _) => continue,
                _ => return None,
            }
        }
    }

    /// Reads and discards until the peer closes the connection or
    /// `deadline` passes: how it was closed, or None if it stayed open.
    pub fn wait_closed(&mut self, deadline: Instant) -> Option<String> {
        loop {
            self.buf.clear();
            match self.fill(deadline) {
                None => return self.closed.clone(),
                Some(0) if Instant::now() >= deadline => return None,
                Some(_) => {}
            }
        }
    }

    /// A readable list of everything received so far.
    pub fn transcript(&self, since: Instant) -> String {
        let mut s = String::new();
        for r in &self.log {
            let ms = r.at.saturating_duration_since(since).as_millis();
            s.push_str(&format!("  +{ms:>6} ms on {} <- {}: {}\n", self.local, r.from, r.msg.summary()));
        }
        if let Some(c) = &self.closed {
            s.push_str(&format!("  (connection closed by the proxy: {c})\n"));
        }
        if s.is_empty() {
            s.push_str("  (nothing received)\n");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::frame;

    #[test]
    fn frames_by_content_length() {
        let m = b"OPTIONS sip:a SIP/2.0\r\nl: 3\r\n\r\nabcSIP/2.0 200 OK\r\n";
        assert_eq!(frame(m), Some((0, 34)));
        assert_eq!(frame(&m[..30]), None);
        assert_eq!(frame(b"\r\n\r\nSIP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"), Some((4, 37)));
    }
}
