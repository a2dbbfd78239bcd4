//! Header names (with RFC 3261 §7.3.3 compact forms) and the structured
//! header values the core reads: Via, name-addr (From, To, Contact, Route,
//! Record-Route), CSeq, and generic `;name=value` parameter lists.

use std::fmt;

use super::method::Method;
use super::msg::ParseError;
use super::uri::{Host, Uri};

/// A header field name. Known names are matched case-insensitively and in
/// their compact form (`v`, `f`, `t`, `i`, `m`, `l`, `c`, `k`, `s`, `e`, `o`,
/// `u`, `r`, `b`, `x`, `y`, `a`, `d`, `j`, `n` …, RFC 3261 §7.3.3 and the
/// IANA registry), so `header("v")` and `header("VIA")` find the same field.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HeaderName {
    Via,
    From,
    To,
    CallId,
    CSeq,
    MaxForwards,
    ContentLength,
    ContentType,
    Contact,
    Route,
    RecordRoute,
    Expires,
    Authorization,
    ProxyAuthorization,
    WwwAuthenticate,
    ProxyAuthenticate,
    Require,
    ProxyRequire,
    Supported,
    Unsupported,
    Allow,
    Event,
    ReferTo,
    Subject,
    ContentEncoding,
    UserAgent,
    Server,
    RetryAfter,
    Path,
    /// Any other name, as written.
    Other(String),
}

impl HeaderName {
    /// Maps a name as written (any case, long or compact form) to a
    /// `HeaderName`. Never fails: unknown names become `Other`.
    pub fn from_text(name: &str) -> HeaderName {
        todo!("{name}")
    }

    /// The canonical long form used when serialising a header the proxy
    /// adds (`Via`, `Call-ID`, `CSeq`, `Max-Forwards`, …).
    pub fn as_str(&self) -> &str {
        todo!()
    }

    /// True for headers whose value is a comma-separated list (RFC 3261
    /// §7.3.1): Via, Route, Record-Route, Contact, Allow, Supported, Require,
    /// Proxy-Require, Unsupported, Path, Content-Encoding and the like. Only
    /// these are split at top-level commas; WWW-Authenticate, Authorization,
    /// Date and unknown headers are never split.
    pub fn is_list(&self) -> bool {
        todo!()
    }
}

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An ordered list of `;name[=value]` parameters (URI, Via, name-addr,
/// Contact). Names compare case-insensitively; text is kept as written so a
/// list re-serialises unchanged. Values of quoted-string params keep their
/// quotes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params(pub Vec<(String, Option<String>)>);

impl Params {
    /// The value of `name`: `None` if absent, `Some(None)` if present
    /// without a value.
    pub fn get(&self, name: &str) -> Option<Option<&str>> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_deref())
    }

    /// True when `name` is present (with or without a value).
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Sets `name` (replacing an existing value, else appending).
    pub fn set(&mut self, name: &str, value: Option<&str>) {
        let v = value.map(str::to_string);
        match self.0.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            Some(slot) => slot.1 = v,
            None => self.0.push((name.to_string(), v)),
        }
    }

    /// Removes `name`; true when it was present.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.0.len();
        self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        before != self.0.len()
    }
}

impl fmt::Display for Params {
    /// Writes `;a=b;c` (each param preceded by `;`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, v) in &self.0 {
            match v {
                Some(v) => write!(f, ";{n}={v}")?,
                None => write!(f, ";{n}")?,
            }
        }
        Ok(())
    }
}

/// One Via value (RFC 3261 §20.42, §18.2.1; `rport` RFC 3581).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Via {
    /// Protocol name and version as written (`SIP/2.0`).
    pub protocol: String,
    /// Transport as written, e.g. `UDP`, `TCP`, `TLS`, `SCTP`, `WS`.
    pub transport: String,
    pub host: Host,
    pub port: Option<u16>,
    pub params: Params,
}

impl Via {
    /// Parses one Via value (`SIP/2.0/UDP host:port;params`), including
    /// LWS around the slashes and the colon as RFC 4475 §3.1.1.1 shows.
    pub fn parse(text: &str) -> Result<Via, ParseError> {
        todo!("{text}")
    }

    /// The `branch` parameter.
    pub fn branch(&self) -> Option<&str> {
        self.params.get("branch").flatten()
    }

    /// The `received` parameter parsed as an address.
    pub fn received(&self) -> Option<std::net::IpAddr> {
        self.params.get("received").flatten().and_then(|v| v.parse().ok())
    }

    /// The `rport` parameter: `None` absent, `Some(None)` present without
    /// value (the client asks for it), `Some(Some(p))` filled in.
    pub fn rport(&self) -> Option<Option<u16>> {
        self.params.get("rport").map(|v| v.and_then(|p| p.parse().ok()))
    }

    /// True when the transport is UDP (case-insensitive).
    pub fn is_udp(&self) -> bool {
        self.transport.eq_ignore_ascii_case("UDP")
    }
}

impl fmt::Display for Via {
    /// `SIP/2.0/UDP host[:port];params` — the canonical form; an untouched
    /// Via in a message is not re-serialised through this.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} {}", self.protocol, self.transport, self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        write!(f, "{}", self.params)
    }
}

/// A name-addr or addr-spec with header parameters (From, To, Contact,
/// Route, Record-Route; RFC 3261 §20.10, §20.20, §20.39, §25.1). For an
/// addr-spec written without angle brackets, the parameters after the URI
/// belong to the header, not the URI (RFC 3261 §20.10).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NameAddr {
    /// Display name as written (a quoted-string keeps its quotes).
    pub display: Option<String>,
    pub uri: Uri,
    /// True when the URI was written in `<…>`.
    pub angle: bool,
    pub params: Params,
}

impl NameAddr {
    /// Parses one name-addr / addr-spec value with its parameters.
    pub fn parse(text: &str) -> Result<NameAddr, ParseError> {
        todo!("{text}")
    }

    /// The `tag` parameter (From/To, RFC 3261 §19.3).
    pub fn tag(&self) -> Option<&str> {
        self.params.get("tag").flatten()
    }
}

impl fmt::Display for NameAddr {
    /// Canonical form; always uses angle brackets when there are header
    /// params or a display name, so the params cannot bind to the URI.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = &self.display {
            write!(f, "{d} ")?;
        }
        if self.angle || self.display.is_some() || !self.params.0.is_empty() {
            write!(f, "<{}>", self.uri)?;
        } else {
            write!(f, "{}", self.uri)?;
        }
        write!(f, "{}", self.params)
    }
}

/// The CSeq header (RFC 3261 §20.16): a 32-bit sequence number and method.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CSeq {
    pub seq: u32,
    pub method: Method,
}

impl CSeq {
    /// Parses `1234 INVITE`; the number must fit 32 bits (RFC 4475 §3.1.2.x).
    pub fn parse(text: &str) -> Result<CSeq, ParseError> {
        todo!("{text}")
    }
}

/// Splits a list-header value at top-level commas (outside quoted strings
/// and angle brackets), trimming LWS, returning byte ranges into `value`.
pub fn split_list(value: &[u8]) -> Vec<std::ops::Range<usize>> {
    todo!("{}", value.len())
}

/// Host and port of a Via sent-by or URI, for convenience in transport code.
pub fn host_port(host: &Host, port: Option<u16>) -> String {
    match port {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    }
}
