//! SIP, SIPS and other URIs (RFC 3261 §19.1, §25.1; IPv6 references per
//! RFC 5118 and RFC 3986 §3.2.2).

use std::borrow::Cow;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::header::Params;
use super::msg::ParseError;
use super::parse::{HEADER, HOSTNAME, PARAM, PASSWORD, URI_FORBIDDEN, USER, class};

/// The URI scheme (RFC 3261 §19.1.1, §25.1). `sip` and `sips` are parsed into their parts; any other
/// scheme (`tel`, `mailto`, `im`, …) keeps its text in [`Uri::opaque`]
/// (RFC 3261 §19.1.1 allows a proxy to route on a scheme it does not know).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// `sip:` (RFC 3261 §19.1).
    Sip,
    /// `sips:` (RFC 3261 §19.1; default port 5061).
    Sips,
    /// `tel:` (RFC 3966), kept opaque.
    Tel,
    /// Lower-cased scheme name.
    Other(String),
}

/// The host part of a URI or Via sent-by (RFC 3261 §25.1 `host`): a domain name, an IPv4 address or
/// a bracketed IPv6 reference. `text` is exactly as written (case kept,
/// brackets kept for IPv6), so an untouched URI re-serialises unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// The host as written (RFC 3261 §19.1.1).
    pub text: String,
    /// The address when the host is an IP literal (for IPv6, without
    /// brackets; RFC 5118 §4).
    pub ip: Option<IpAddr>,
}

/// A parsed URI (RFC 3261 §19.1). Parts are kept in their escaped on-the-wire form; the
/// `Display` output of an unmodified URI equals its input text (except
/// that the scheme is written in lower case).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uri {
    /// The scheme (RFC 3261 §19.1.1).
    pub scheme: Scheme,
    /// userinfo user part (escaped form, RFC 3261 §19.1.2), `None` when
    /// there is no `@`.
    pub user: Option<String>,
    /// userinfo password (escaped form; RFC 3261 §19.1.1 discourages it).
    pub password: Option<String>,
    /// The host (RFC 3261 §19.1.1; empty for schemes other than sip/sips).
    pub host: Host,
    /// The port, when written (RFC 3261 §19.1.1).
    pub port: Option<u16>,
    /// uri-parameters (`;name=value`, RFC 3261 §19.1.1), in order, names
    /// as written.
    pub params: Params,
    /// The `?headers` part without the `?` (RFC 3261 §19.1.1).
    pub headers: Option<String>,
    /// For schemes other than sip/sips: everything after `scheme:` (RFC
    /// 3261 §19.1.1 allows routing on it).
    pub opaque: Option<String>,
}

fn find(s: &str, c: u8) -> Option<usize> {
    memchr::memchr(c, s.as_bytes())
}

/// Checks that every byte of `s` has one of the `allowed` class bits or is
/// part of a `%HH` escape (RFC 3261 §25.1 `escaped`).
fn valid_escaped(s: &str, allowed: u8) -> bool {
    let b = s.as_bytes();
    let mut k = 0;
    while k < b.len() {
        if b[k] == b'%' {
            match (b.get(k + 1), b.get(k + 2)) {
                (Some(h), Some(l)) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => k += 3,
                _ => return false,
            }
        } else if class(b[k]) & allowed != 0 {
            k += 1;
        } else {
            return false;
        }
    }
    true
}

/// Decodes `%HH` escapes (RFC 3261 §19.1.2: a URI's escaped characters
/// are equivalent to the characters they encode). Never recursive
/// (`%2541` decodes to `%41`, RFC 4475 §3.1.1.3); an invalid `%` sequence
/// is kept literally. Borrows when there is nothing to decode.
pub fn unescape(s: &str) -> Cow<'_, [u8]> {
    let b = s.as_bytes();
    if !b.contains(&b'%') {
        return Cow::Borrowed(b);
    }
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut k = 0;
    while k < b.len() {
        if b[k] == b'%' {
            if let (Some(h), Some(l)) = (b.get(k + 1).copied().and_then(hex), b.get(k + 2).copied().and_then(hex)) {
                out.push(h << 4 | l);
                k += 3;
                continue;
            }
        }
        out.push(b[k]);
        k += 1;
    }
    Cow::Owned(out)
}

fn parse_ipv6(inner: &str) -> Option<Ipv6Addr> {
    if let Ok(a) = inner.parse() {
        return Some(a);
    }
    // RFC 5118 §4.10: RFC 3261's ABNF admits `2001:db8:::192.0.2.1`; an
    // implementation must tolerate it, reading it as the two-colon form.
    if inner.contains(":::") && !inner.contains("::::") {
        return inner.replacen(":::", "::", 1).parse().ok();
    }
    None
}

impl Host {
    /// Parses a host as it appears in a URI or Via (`example.com`,
    /// `192.0.2.1`, `[2001:db8::1]`; RFC 3261 §25.1 `host`, RFC 5118 §4).
    /// An IPv6 address without brackets is an error (RFC 5118 §4.2).
    pub fn parse(text: &str) -> Result<Host, ParseError> {
        let bad = || ParseError::bad(format!("malformed host {text:?}"));
        if let Some(inner) = text.strip_prefix('[') {
            let inner = inner.strip_suffix(']').ok_or_else(bad)?;
            let ip = parse_ipv6(inner).ok_or_else(bad)?;
            return Ok(Host {
                text: text.to_string(),
                ip: Some(IpAddr::V6(ip)),
            });
        }
        let b = text.as_bytes();
        if b.is_empty() || !b.iter().all(|c| class(*c) & HOSTNAME != 0) || b[0] == b'.' || b[0] == b'-' {
            return Err(bad());
        }
        if b.iter().all(|c| c.is_ascii_digit() || *c == b'.') {
            let ip: Ipv4Addr = text.parse().map_err(|_| bad())?;
            return Ok(Host {
                text: text.to_string(),
                ip: Some(IpAddr::V4(ip)),
            });
        }
        Ok(Host {
            text: text.to_string(),
            ip: None,
        })
    }

    /// Builds a host from an address, bracketing IPv6 (RFC 3261 §25.1
    /// `IPv6reference`), e.g. for a `received` Via parameter.
    pub fn from_ip(ip: IpAddr) -> Host {
        let text = match ip {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        };
        Host { text, ip: Some(ip) }
    }

    /// Case-insensitive comparison of domain names; IP literals compare by
    /// address (so `[::1]` equals `[0:0::1]`; RFC 3261 §19.1.4).
    pub fn same_as(&self, other: &Host) -> bool {
        match (self.ip, other.ip) {
            (Some(a), Some(b)) => a == b,
            (None, None) => self
                .text
                .trim_end_matches('.')
                .eq_ignore_ascii_case(other.text.trim_end_matches('.')),
            _ => false,
        }
    }
}

fn bad_uri(what: &str) -> ParseError {
    ParseError::bad(format!("malformed URI: {what}"))
}

impl Uri {
    /// Parses a URI (the Request-URI, or the URI inside a name-addr;
    /// RFC 3261 §19.1.1, §25.1). For sip/sips: `[user[:password]@]host
    /// [:port][;params][?headers]`, where the user part may hold `;`, `?`
    /// and `/` (RFC 4475 §3.1.1.2, §3.1.1.9) and `%HH` escapes. No
    /// whitespace is allowed anywhere (RFC 4475 §3.1.2.8).
    pub fn parse(text: &str) -> Result<Uri, ParseError> {
        if text.bytes().any(|c| class(c) & URI_FORBIDDEN != 0) {
            return Err(bad_uri("forbidden character"));
        }
        let colon = find(text, b':').ok_or_else(|| bad_uri("no scheme"))?;
        let scheme_text = &text[..colon];
        let sb = scheme_text.as_bytes();
        if sb.is_empty() || !sb[0].is_ascii_alphabetic() || !sb.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'-' | b'.'))
        {
            return Err(bad_uri("bad scheme"));
        }
        let rest = &text[colon + 1..];
        let scheme = if scheme_text.eq_ignore_ascii_case("sip") {
            Scheme::Sip
        } else if scheme_text.eq_ignore_ascii_case("sips") {
            Scheme::Sips
        } else if scheme_text.eq_ignore_ascii_case("tel") {
            Scheme::Tel
        } else {
            Scheme::Other(scheme_text.to_ascii_lowercase())
        };
        if !matches!(scheme, Scheme::Sip | Scheme::Sips) {
            if rest.is_empty() {
                return Err(bad_uri("empty"));
            }
            let mut u = Uri::empty(scheme);
            u.opaque = Some(rest.to_string());
            return Ok(u);
        }
        Self::parse_sip(scheme, rest)
    }

    fn parse_sip(scheme: Scheme, rest: &str) -> Result<Uri, ParseError> {
        let (userinfo, hostpart) = match find(rest, b'@') {
            Some(at) => (Some(&rest[..at]), &rest[at + 1..]),
            None => (None, rest),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(ui) => {
                let (u, p) = match find(ui, b':') {
                    Some(c) => (&ui[..c], Some(&ui[c + 1..])),
                    None => (ui, None),
                };
                if u.is_empty() || !valid_escaped(u, USER) {
                    return Err(bad_uri("user part"));
                }
                if let Some(p) = p {
                    if !valid_escaped(p, PASSWORD) {
                        return Err(bad_uri("password"));
                    }
                }
                (Some(u.to_string()), p.map(str::to_string))
            }
        };
        let (hp_params, headers) = match find(hostpart, b'?') {
            Some(q) => (&hostpart[..q], Some(&hostpart[q + 1..])),
            None => (hostpart, None),
        };
        let (hostport, params) = match find(hp_params, b';') {
            Some(s) => (&hp_params[..s], Some(&hp_params[s + 1..])),
            None => (hp_params, None),
        };
        let (host_text, port_text) = if hostport.starts_with('[') {
            let close = hostport
                .as_bytes()
                .iter()
                .position(|c| *c == b']')
                .ok_or_else(|| bad_uri("IPv6 reference"))?;
            let after = &hostport[close + 1..];
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(bad_uri("text after IPv6 reference")),
            };
            (&hostport[..=close], port)
        } else {
            match find(hostport, b':') {
                Some(c) => (&hostport[..c], Some(&hostport[c + 1..])),
                None => (hostport, None),
            }
        };
        let host = Host::parse(host_text).map_err(|_| bad_uri("host"))?;
        let port = match port_text {
            None => None,
            Some(p) if !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit()) => Some(p.parse::<u16>().map_err(|_| bad_uri("port"))?),
            Some(_) => return Err(bad_uri("port")),
        };
        let mut plist = Vec::new();
        if let Some(params) = params {
            for p in params.split(';') {
                let (n, v) = match find(p, b'=') {
                    Some(e) => (&p[..e], Some(&p[e + 1..])),
                    None => (p, None),
                };
                if n.is_empty() || !valid_escaped(n, PARAM) {
                    return Err(bad_uri("parameter"));
                }
                if let Some(v) = v {
                    if v.is_empty() || !valid_escaped(v, PARAM) {
                        return Err(bad_uri("parameter value"));
                    }
                }
                plist.push((n.to_string(), v.map(str::to_string)));
            }
        }
        if let Some(h) = headers {
            if h.is_empty() || !valid_escaped(h, HEADER) {
                return Err(bad_uri("headers"));
            }
        }
        Ok(Uri {
            scheme,
            user,
            password,
            host,
            port,
            params: Params(plist),
            headers: headers.map(str::to_string),
            opaque: None,
        })
    }

    /// A URI with only a scheme (placeholder for built messages and the
    /// base of opaque URIs).
    pub(crate) fn empty(scheme: Scheme) -> Uri {
        Uri {
            scheme,
            user: None,
            password: None,
            host: Host {
                text: String::new(),
                ip: None,
            },
            port: None,
            params: Params::default(),
            headers: None,
            opaque: None,
        }
    }

    /// True for `sip:` and `sips:` URIs (RFC 3261 §19.1).
    pub fn is_sip(&self) -> bool {
        matches!(self.scheme, Scheme::Sip | Scheme::Sips)
    }

    /// The user part with `%HH` escapes decoded (RFC 3261 §19.1.2,
    /// RFC 4475 §3.1.1.3–4): may contain any octet, NUL included.
    pub fn user_unescaped(&self) -> Option<Cow<'_, [u8]>> {
        self.user.as_deref().map(unescape)
    }

    /// Value of a uri-parameter (RFC 3261 §19.1.1), case-insensitive name. `Some(None)` for a
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

impl fmt::Display for Scheme {
    /// The scheme name in lower case, without the colon.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scheme::Sip => f.write_str("sip"),
            Scheme::Sips => f.write_str("sips"),
            Scheme::Tel => f.write_str("tel"),
            Scheme::Other(s) => f.write_str(s),
        }
    }
}

impl fmt::Display for Uri {
    /// The URI as text (RFC 3261 §19.1.1 order of parts).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.scheme)?;
        if !self.is_sip() {
            return f.write_str(self.opaque.as_deref().unwrap_or(""));
        }
        if let Some(u) = &self.user {
            f.write_str(u)?;
            if let Some(p) = &self.password {
                write!(f, ":{p}")?;
            }
            f.write_str("@")?;
        }
        f.write_str(&self.host.text)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        write!(f, "{}", self.params)?;
        if let Some(h) = &self.headers {
            write!(f, "?{h}")?;
        }
        Ok(())
    }
}
