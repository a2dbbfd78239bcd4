//! Transports: listen sockets, the addresses of peers, and where replies go
//! (RFC 3261 §18; RFC 3581 for `rport`). The protocol core never touches a
//! socket: it emits [`Transmit`]s that the live adapters ([`udp`], [`tcp`])
//! or the test harness carry out.

pub mod tcp;
pub mod udp;

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;

use crate::sip::{Uri, Via};

/// A transport protocol (RFC 3261 §18). TLS, SCTP and WebSocket are not
/// served yet; a Via or URI naming them is answered with an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    /// UDP (RFC 3261 §18.1.1).
    Udp,
    /// TCP (RFC 3261 §18.3 framing).
    Tcp,
}

impl Proto {
    /// The token used in Via and in `transport=` URI parameters.
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Udp => "UDP",
            Proto::Tcp => "TCP",
        }
    }

    /// Lower-case name as admins write it in `listen` and `msg.proto`.
    pub fn lower(self) -> &'static str {
        match self {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
        }
    }

    /// Parses `udp`/`tcp` in any case.
    pub fn parse(s: &str) -> Option<Proto> {
        if s.eq_ignore_ascii_case("udp") {
            Some(Proto::Udp)
        } else if s.eq_ignore_ascii_case("tcp") {
            Some(Proto::Tcp)
        } else {
            None
        }
    }

    /// True for connection-oriented (reliable) transports: no
    /// retransmissions by the transaction layer (RFC 3261 §17.1.1.2).
    pub fn is_reliable(self) -> bool {
        self == Proto::Tcp
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.lower())
    }
}

/// Index of a listen socket in [`crate::config::CoreConfig::listen`].
pub type SocketId = u16;

/// Identifies one TCP connection for the life of the process.
pub type ConnId = u64;

/// One listen socket as the core knows it: where it is bound and the
/// address it puts in Via and Record-Route (the `advertise` part of
/// `listen = "udp:0.0.0.0:5060 advertise 192.0.2.13"`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenSocket {
    /// Index of the socket.
    pub id: SocketId,
    /// Transport.
    pub proto: Proto,
    /// Bound address.
    pub addr: SocketAddr,
    /// Host put in Via/Record-Route (an IPv6 address is bracketed).
    pub adv_host: String,
    /// Port put in Via/Record-Route.
    pub adv_port: u16,
}

impl ListenSocket {
    /// `host:port` as advertised.
    pub fn adv_hostport(&self) -> String {
        format!("{}:{}", self.adv_host, self.adv_port)
    }

    /// Our Via for a request sent from this socket (RFC 3261 §16.6 step 8).
    pub fn via(&self, branch: &str) -> String {
        format!("SIP/2.0/{} {};branch={}", self.proto.as_str(), self.adv_hostport(), branch)
    }
}

/// A message that arrived, with where it came from (RFC 3261 §18.2.1).
#[derive(Clone, Debug)]
pub struct Incoming {
    /// Socket it arrived on.
    pub local: SocketId,
    /// Transport it arrived over.
    pub proto: Proto,
    /// Sender's address.
    pub src: SocketAddr,
    /// The connection it arrived on (stream transports).
    pub conn: Option<ConnId>,
    /// The message bytes.
    pub data: Bytes,
}

/// Bytes the core wants sent, and from where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Socket to send from.
    pub local: SocketId,
    /// Transport.
    pub proto: Proto,
    /// Destination.
    pub dst: SocketAddr,
    /// Send over this connection if it is still open (replies on streams,
    /// RFC 3261 §18.2.2); otherwise a connection to `dst` is used or opened.
    pub conn: Option<ConnId>,
    /// The message bytes.
    pub data: Bytes,
}

/// Where and how to send one message: the resolved next hop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    /// Socket to send from.
    pub local: SocketId,
    /// Transport.
    pub proto: Proto,
    /// Destination.
    pub dst: SocketAddr,
    /// Connection to use, when one is known.
    pub conn: Option<ConnId>,
}

/// The destination of a response, from the top Via of the request
/// (RFC 3261 §18.2.2, RFC 3581 §4): the `received` address, or the
/// sent-by host when it is an IP literal; the `rport` value on unreliable
/// transports, else the sent-by port, else 5060. On a stream the reply
/// first goes over the connection the request came on (carried beside
/// this address in [`Target::conn`]); this address is where a new
/// connection is opened when that one has closed. `None` when the sent-by
/// is a name without `received` (requests the core received always get
/// `received` in that case).
pub fn reply_destination(via: &Via, proto: Proto) -> Option<SocketAddr> {
    let ip: IpAddr = via.received().or(via.host.ip)?;
    let port = match via.rport() {
        Some(Some(p)) if !proto.is_reliable() => p,
        _ => via.port.unwrap_or(5060),
    };
    Some(SocketAddr::new(ip, port))
}

/// The transport a URI asks for (`;transport=tcp`), UDP by default
/// (RFC 3263 §4.1 without NAPTR: the default for `sip:` is UDP).
pub fn uri_proto(uri: &Uri) -> Result<Proto, String> {
    match uri.param("transport").flatten() {
        None => {
            if uri.scheme == crate::sip::Scheme::Sips {
                Err("sips: needs TLS, which is not served".into())
            } else {
                Ok(Proto::Udp)
            }
        }
        Some(t) => Proto::parse(t).ok_or_else(|| format!("transport={t} is not served")),
    }
}

/// The transport a Via names.
pub fn via_proto(via: &Via) -> Option<Proto> {
    Proto::parse(&via.transport)
}
