//! SIP, SIPS and other URIs (RFC 3261 §19.1, §25.1; IPv6 references per
//! RFC 5118 and RFC 3986 §3.2.2).

use std::fmt;
use std::net::IpAddr;

use super::header::Params;
use super::msg::ParseError;

/// The URI scheme. `sip` and `sips` are parsed into their parts; any other
/// scheme (`tel`, `mailto`, `im`, …) keeps its text in [`Uri::opaque`]
/// (RFC 3261 §19.1.1 allows a proxy to route on a scheme it does not know).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scheme {
    Sip,
    Sips,
    Tel,
    /// Lower-cased scheme name.
    Other(String),
}

/// The host part of a URI or Via sent-by: a domain name, an IPv4 address or
/// a bracketed IPv6 reference. `text` is exactly as written (case kept,
/// brackets kept for IPv6), so an untouched URI re-serialises unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    pub text: String,
    /// The address when the host is an IP literal (for IPv6, without brackets).
    pub ip: Option<IpAddr>,
}

/// A parsed URI. Parts are kept in their escaped on-the-wire form; the
/// `Display` output of an unmodified URI equals its input text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uri {
    pub scheme: Scheme,
    /// userinfo user part (escaped form), `None` when there is no `@`.
    pub user: Option<String>,
    pub password: Option<String>,
    pub host: Host,
    pub port: Option<u16>,
    /// uri-parameters (`;name=value`), in order, names as written.
    pub params: Params,
    /// The `?headers` part without the `?`.
    pub headers: Option<String>,
    /// For schemes other than sip/sips: everything after `scheme:`.
    pub opaque: Option<String>,
}

impl Host {
    /// Parses a host as it appears in a URI or Via (`example.com`,
    /// `192.0.2.1`, `[2001:db8::1]`).
    pub fn parse(text: &str) -> Result<Host, ParseError> {
        todo!("{text}")
    }

    /// Builds a host from an address, bracketing IPv6.
    pub fn from_ip(ip: IpAddr) -> Host {
        todo!("{ip}")
    }

    /// Case-insensitive comparison of domain names; IP literals compare by
    /// address (so `[::1]` equals `[0:0::1]`).
    pub fn same_as(&self, other: &Host) -> bool {
        todo!("{other:?}")
    }
}

impl Uri {
    /// Parses a URI (the Request-URI, or the URI inside a name-addr).
    pub fn parse(text: &str) -> Result<Uri, ParseError> {
        todo!("{text}")
    }

    /// True for `sip:` and `sips:` URIs.
    pub fn is_sip(&self) -> bool {
        matches!(self.scheme, Scheme::Sip | Scheme::Sips)
    }

    /// Value of a uri-parameter, case-insensitive name. `Some(None)` for a
    /// parameter without value (such as `lr`).
    pub fn param(&self, name: &str) -> Option<Option<&str>> {
        self.params.get(name)
    }

    /// The port to use when none is written: 5061 for sips, 5060 otherwise
    /// (RFC 3261 §19.1.2).
    pub fn default_port(&self) -> u16 {
        if self.scheme == Scheme::Sips { 5061 } else { 5060 }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Display for Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        todo!("{f:p}")
    }
}
