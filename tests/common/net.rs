//! A proxy instance driven through its sans-IO core (no sockets, virtual
//! clock), for tests of primitives: feed it datagrams, read what it sends.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serlua::app::{Overrides, instance};
use serlua::sip::{HeaderName, SipMessage};
use serlua::transport::{Incoming, Proto, Transmit};
use serlua::worker::Worker;

/// One worker running `script`, and its clock.
pub struct Net {
    pub w: Worker,
    pub now: Instant,
}

impl Net {
    /// A worker for a script given as text (`name` is its file name in
    /// error messages).
    pub fn new(name: &str, script: &str) -> Net {
        let now = Instant::now();
        let w = instance(Path::new(name), Some(script.to_string()), &Overrides::default(), now).expect("script loads");
        Net { w, now }
    }

    /// `text` (LF line ends become CRLF) arrives on socket `local` from
    /// `from`; returns what the proxy sent.
    pub fn recv_on(&mut self, local: u16, proto: Proto, from: &str, text: &str) -> Vec<Transmit> {
        self.recv_bytes(local, proto, from, Bytes::from(text.replace('\n', "\r\n")))
    }

    /// Raw bytes arrive (no line-end conversion).
    pub fn recv_bytes(&mut self, local: u16, proto: Proto, from: &str, data: Bytes) -> Vec<Transmit> {
        self.w.handle(
            self.now,
            Incoming {
                local,
                proto,
                src: from.parse().expect("source address"),
                conn: None,
                data,
            },
        );
        self.w.take_transmits()
    }

    /// `text` arrives over UDP on the first socket.
    pub fn recv(&mut self, from: &str, text: &str) -> Vec<Transmit> {
        self.recv_on(0, Proto::Udp, from, text)
    }

    /// Moves the clock second by second for `secs` seconds, firing timers
    /// at their own times; returns what was sent with the second it left in.
    pub fn run(&mut self, secs: u64) -> Vec<(u64, Transmit)> {
        let start = self.now;
        let mut out = Vec::new();
        for _ in 0..secs {
            let end = self.now + Duration::from_secs(1);
            while let Some(at) = self.w.next_timeout().filter(|at| *at <= end) {
                self.now = at.max(self.now);
                self.w.handle_timeouts(self.now);
                let sec = self.now.duration_since(start).as_secs();
                out.extend(self.w.take_transmits().into_iter().map(|t| (sec, t)));
            }
            self.now = end;
        }
        out
    }
}

/// A sent message, parsed.
pub fn parse(t: &Transmit) -> SipMessage {
    SipMessage::parse(t.data.clone()).expect("the proxy sends parsable messages")
}

/// The one reply among `out`.
pub fn only_reply(out: &[Transmit]) -> (SocketAddr, SipMessage) {
    let r: Vec<(SocketAddr, SipMessage)> = out
        .iter()
        .map(|t| (t.dst, parse(t)))
        .filter(|(_, m)| m.status().is_some())
        .collect();
    assert_eq!(r.len(), 1, "one reply expected, got {}", r.len());
    r.into_iter().next().expect("one reply")
}

/// The first request among `out`.
pub fn forwarded(out: &[Transmit]) -> (SocketAddr, SipMessage) {
    out.iter()
        .map(|t| (t.dst, parse(t)))
        .find(|(_, m)| m.method().is_some())
        .expect("a request was forwarded")
}

/// A header's value as text ("" when absent).
pub fn header(m: &SipMessage, name: &str) -> String {
    m.header(&HeaderName::from_text(name))
        .map(|v| String::from_utf8_lossy(&v).into_owned())
        .unwrap_or_default()
}
