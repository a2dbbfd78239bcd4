//! Header names (with RFC 3261 §7.3.3 compact forms) and the structured
//! header values the core reads: Via, name-addr (From, To, Contact, Route,
//! Record-Route), CSeq, and generic `;name=value` parameter lists.

use std::fmt;

use nom::Parser;
use nom::character::complete::char;
use nom::combinator::opt;
use nom::multi::fold_many0;
use nom::sequence::preceded;

use super::method::Method;
use super::msg::ParseError;
use super::parse::{addr_spec_text, angle_uri, digits, display_tokens, generic_param, host_text, lws, port, quoted_string, sws, token};
use super::uri::{Host, Scheme, Uri};

/// A header field name (RFC 3261 §7.3, §20). Known names are matched
/// case-insensitively (§7.3.1) and in
/// their compact form (`v`, `f`, `t`, `i`, `m`, `l`, `c`, `k`, `s`, `e`, `o`,
/// `u`, `r`, `b`, `x`, `y`, `a`, `d`, `j`, `n` …, RFC 3261 §7.3.3 and the
/// IANA registry), so `header("v")` and `header("VIA")` find the same field.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum HeaderName {
    /// `Via` / `v` (RFC 3261 §20.42).
    Via,
    /// `From` / `f` (RFC 3261 §20.20).
    From,
    /// `To` / `t` (RFC 3261 §20.39).
    To,
    /// `Call-ID` / `i` (RFC 3261 §20.8).
    CallId,
    /// `CSeq` (RFC 3261 §20.16).
    CSeq,
    /// `Max-Forwards` (RFC 3261 §20.22).
    MaxForwards,
    /// `Content-Length` / `l` (RFC 3261 §20.14).
    ContentLength,
    /// `Content-Type` / `c` (RFC 3261 §20.15).
    ContentType,
    /// `Contact` / `m` (RFC 3261 §20.10).
    Contact,
    /// `Route` (RFC 3261 §20.34).
    Route,
    /// `Record-Route` (RFC 3261 §20.30).
    RecordRoute,
    /// `Expires` (RFC 3261 §20.19).
    Expires,
    /// `Authorization` (RFC 3261 §20.7).
    Authorization,
    /// `Proxy-Authorization` (RFC 3261 §20.28).
    ProxyAuthorization,
    /// `WWW-Authenticate` (RFC 3261 §20.44).
    WwwAuthenticate,
    /// `Proxy-Authenticate` (RFC 3261 §20.27).
    ProxyAuthenticate,
    /// `Require` (RFC 3261 §20.32).
    Require,
    /// `Proxy-Require` (RFC 3261 §20.29).
    ProxyRequire,
    /// `Supported` / `k` (RFC 3261 §20.37).
    Supported,
    /// `Unsupported` (RFC 3261 §20.40).
    Unsupported,
    /// `Allow` (RFC 3261 §20.5).
    Allow,
    /// `Event` / `o` (RFC 6665 §8.2.1).
    Event,
    /// `Refer-To` / `r` (RFC 3515 §2.1).
    ReferTo,
    /// `Subject` / `s` (RFC 3261 §20.36).
    Subject,
    /// `Content-Encoding` / `e` (RFC 3261 §20.12).
    ContentEncoding,
    /// `User-Agent` (RFC 3261 §20.41).
    UserAgent,
    /// `Server` (RFC 3261 §20.35).
    Server,
    /// `Retry-After` (RFC 3261 §20.33).
    RetryAfter,
    /// `Path` (RFC 3327 §4).
    Path,
    /// Any other name, as written (a compact form without a variant, such
    /// as `x`, is stored as its long form, `Session-Expires`).
    Other(String),
}

/// Index of a known header name, the compact internal form the message
/// keeps per field (no allocation per header on parse; RFC 3261 §20).
pub(crate) mod hid {
    pub const VIA: u8 = 0;
    pub const FROM: u8 = 1;
    pub const TO: u8 = 2;
    pub const CALL_ID: u8 = 3;
    pub const CSEQ: u8 = 4;
    pub const MAX_FORWARDS: u8 = 5;
    pub const CONTENT_LENGTH: u8 = 6;
    pub const CONTACT: u8 = 8;
    pub const ROUTE: u8 = 9;
    pub const RECORD_ROUTE: u8 = 10;
    pub const OTHER: u8 = 255;
}

/// Long forms, in index order.
const LONG: [&str; 29] = [
    "Via",
    "From",
    "To",
    "Call-ID",
    "CSeq",
    "Max-Forwards",
    "Content-Length",
    "Content-Type",
    "Contact",
    "Route",
    "Record-Route",
    "Expires",
    "Authorization",
    "Proxy-Authorization",
    "WWW-Authenticate",
    "Proxy-Authenticate",
    "Require",
    "Proxy-Require",
    "Supported",
    "Unsupported",
    "Allow",
    "Event",
    "Refer-To",
    "Subject",
    "Content-Encoding",
    "User-Agent",
    "Server",
    "Retry-After",
    "Path",
];

/// Compact forms of the known names (RFC 3261 §7.3.3, IANA registry).
const COMPACT_KNOWN: [(u8, u8); 12] = [
    (b'v', 0),
    (b'f', 1),
    (b't', 2),
    (b'i', 3),
    (b'l', 6),
    (b'c', 7),
    (b'm', 8),
    (b'e', 24),
    (b'k', 18),
    (b'o', 21),
    (b'r', 22),
    (b's', 23),
];

/// Compact forms of registered names without a variant.
const COMPACT_OTHER: [(u8, &str); 8] = [
    (b'a', "Accept-Contact"),
    (b'b', "Referred-By"),
    (b'd', "Request-Disposition"),
    (b'j', "Reject-Contact"),
    (b'n', "Identity-Info"),
    (b'u', "Allow-Events"),
    (b'x', "Session-Expires"),
    (b'y', "Identity"),
];

/// Other header names whose values are comma-separated lists (RFC 3261
/// §7.3.1 and §20; RFC 3325, 3329, 3608, 3841, 4244, 6665).
const OTHER_LISTS: [&str; 21] = [
    "Accept",
    "Accept-Encoding",
    "Accept-Language",
    "Alert-Info",
    "Allow-Events",
    "Call-Info",
    "Error-Info",
    "In-Reply-To",
    "Warning",
    "Content-Language",
    "Service-Route",
    "Accept-Contact",
    "Reject-Contact",
    "Request-Disposition",
    "Security-Client",
    "Security-Server",
    "Security-Verify",
    "P-Asserted-Identity",
    "P-Preferred-Identity",
    "History-Info",
    "Reason",
];

/// Index of a header name as written (long or compact, any case), or
/// [`hid::OTHER`].
pub(crate) fn index_of_name(name: &[u8]) -> u8 {
    if let [c] = name {
        let c = c.to_ascii_lowercase();
        return COMPACT_KNOWN.iter().find(|(l, _)| *l == c).map_or(hid::OTHER, |(_, i)| *i);
    }
    // Known names by length, so a field name is compared with at most five.
    let candidates: &[u8] = match name.len() {
        2 => &[2],
        3 => &[0],
        4 => &[1, 4, 28],
        5 => &[9, 20, 21],
        6 => &[26],
        7 => &[3, 8, 11, 16, 23],
        8 => &[22],
        9 => &[18],
        10 => &[25],
        11 => &[19, 27],
        12 => &[5, 7, 10],
        13 => &[12, 17],
        14 => &[6],
        16 => &[14, 24],
        18 => &[15],
        19 => &[13],
        _ => return hid::OTHER,
    };
    candidates
        .iter()
        .copied()
        .find(|i| LONG[*i as usize].as_bytes().eq_ignore_ascii_case(name))
        .unwrap_or(hid::OTHER)
}

/// The long form of an unknown name: registered compact letters map to
/// their long name, anything else is returned as is.
pub(crate) fn canonical_other(name: &[u8]) -> &[u8] {
    if let [c] = name {
        let c = c.to_ascii_lowercase();
        if let Some((_, long)) = COMPACT_OTHER.iter().find(|(l, _)| *l == c) {
            return long.as_bytes();
        }
    }
    name
}

/// True when the header name at `index` (or, for unknown names, the
/// canonical name) is a list header.
pub(crate) fn is_list_index(index: u8, other_name: &[u8]) -> bool {
    match index {
        hid::VIA | hid::CONTACT | hid::ROUTE | hid::RECORD_ROUTE => true,
        16..=20 | 24 | 28 => true,
        hid::OTHER => {
            let n = canonical_other(other_name);
            OTHER_LISTS.iter().any(|l| l.as_bytes().eq_ignore_ascii_case(n))
        }
        _ => false,
    }
}

impl HeaderName {
    /// Maps a name as written (any case, long or compact form, RFC 3261
    /// §7.3.1, §7.3.3) to a `HeaderName`. Never fails: unknown names become
    /// `Other`.
    pub fn from_text(name: &str) -> HeaderName {
        let name = name.trim();
        match index_of_name(name.as_bytes()) {
            hid::OTHER => {
                let canon = canonical_other(name.as_bytes());
                HeaderName::Other(String::from_utf8_lossy(canon).into_owned())
            }
            i => HeaderName::from_index(i),
        }
    }

    /// The known name at `index` (see [`hid`]).
    pub(crate) fn from_index(index: u8) -> HeaderName {
        use HeaderName::*;
        match index {
            0 => Via,
            1 => From,
            2 => To,
            3 => CallId,
            4 => CSeq,
            5 => MaxForwards,
            6 => ContentLength,
            7 => ContentType,
            8 => Contact,
            9 => Route,
            10 => RecordRoute,
            11 => Expires,
            12 => Authorization,
            13 => ProxyAuthorization,
            14 => WwwAuthenticate,
            15 => ProxyAuthenticate,
            16 => Require,
            17 => ProxyRequire,
            18 => Supported,
            19 => Unsupported,
            20 => Allow,
            21 => Event,
            22 => ReferTo,
            23 => Subject,
            24 => ContentEncoding,
            25 => UserAgent,
            26 => Server,
            27 => RetryAfter,
            28 => Path,
            _ => Other(String::new()),
        }
    }

    /// The internal index of this name; an `Other` spelling of a known
    /// name (`Other("via")`) maps to the known index.
    pub(crate) fn index(&self) -> u8 {
        use HeaderName::*;
        match self {
            Via => 0,
            From => 1,
            To => 2,
            CallId => 3,
            CSeq => 4,
            MaxForwards => 5,
            ContentLength => 6,
            ContentType => 7,
            Contact => 8,
            Route => 9,
            RecordRoute => 10,
            Expires => 11,
            Authorization => 12,
            ProxyAuthorization => 13,
            WwwAuthenticate => 14,
            ProxyAuthenticate => 15,
            Require => 16,
            ProxyRequire => 17,
            Supported => 18,
            Unsupported => 19,
            Allow => 20,
            Event => 21,
            ReferTo => 22,
            Subject => 23,
            ContentEncoding => 24,
            UserAgent => 25,
            Server => 26,
            RetryAfter => 27,
            Path => 28,
            Other(s) => index_of_name(s.trim().as_bytes()),
        }
    }

    /// The canonical long form used when serialising a header the proxy
    /// adds (`Via`, `Call-ID`, `CSeq`, `Max-Forwards`, …; RFC 3261 §20).
    pub fn as_str(&self) -> &str {
        match self {
            HeaderName::Other(s) => s,
            known => LONG.get(known.index() as usize).copied().unwrap_or(""),
        }
    }

    /// True for headers whose value is a comma-separated list (RFC 3261
    /// §7.3.1): Via, Route, Record-Route, Contact, Allow, Supported, Require,
    /// Proxy-Require, Unsupported, Path, Content-Encoding and the like. Only
    /// these are split at top-level commas; WWW-Authenticate, Authorization,
    /// Date and unknown headers are never split.
    pub fn is_list(&self) -> bool {
        let name = match self {
            HeaderName::Other(s) => s.as_bytes(),
            _ => b"",
        };
        is_list_index(self.index(), name)
    }
}

impl fmt::Display for HeaderName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An ordered list of `;name[=value]` parameters (URI, Via, name-addr,
/// Contact; RFC 3261 §25.1 `uri-parameters`, `generic-param`). Names compare case-insensitively; text is kept as written so a
/// list re-serialises unchanged. Values of quoted-string params keep their
/// quotes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Params(pub Vec<(String, Option<String>)>);

impl Params {
    /// The value of `name`: `None` if absent, `Some(None)` if present
    /// without a value (RFC 3261 §25.1 `generic-param`).
    pub fn get(&self, name: &str) -> Option<Option<&str>> {
        self.0.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_deref())
    }

    /// True when `name` is present (with or without a value; RFC 3261
    /// §25.1).
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Sets `name` (replacing an existing value, else appending), e.g.
    /// `received`/`rport` on a Via (RFC 3261 §18.2.1, RFC 3581 §4).
    pub fn set(&mut self, name: &str, value: Option<&str>) {
        let v = value.map(str::to_string);
        match self.0.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(name)) {
            Some(slot) => slot.1 = v,
            None => self.0.push((name.to_string(), v)),
        }
    }

    /// Removes `name` (e.g. `maddr` when routing, RFC 3261 §16.5); true
    /// when it was present.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.0.len();
        self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        before != self.0.len()
    }

    /// `*( SEMI generic-param )` (RFC 3261 §25.1) straight into a list.
    pub(crate) fn parse_many(i: &str) -> nom::IResult<&str, Params> {
        fold_many0(
            generic_param,
            Vec::new,
            |mut v: Vec<(String, Option<String>)>, (n, val): (&str, Option<&str>)| {
                v.push((n.to_string(), val.map(str::to_string)));
                v
            },
        )
        .map(Params)
        .parse(i)
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
    /// Protocol name and version as written (`SIP/2.0`), without the LWS
    /// RFC 3261 §25.1 allows around the slash.
    pub protocol: String,
    /// Transport as written, e.g. `UDP`, `TCP`, `TLS`, `SCTP`, `WS`
    /// (RFC 3261 §25.1 `transport`, RFC 4475 §3.1.1.10).
    pub transport: String,
    /// The sent-by host (RFC 3261 §18.2.2 routes responses to it).
    pub host: Host,
    /// The sent-by port, when written (RFC 3261 §18.2.2).
    pub port: Option<u16>,
    /// via-params (`branch`, `received`, `rport`, `maddr`, `ttl`, others;
    /// RFC 3261 §20.42, RFC 3581).
    pub params: Params,
}

/// A Via with nothing in it: what [`super::SipMessage::top_via`] returns
/// when a script has removed every Via.
pub(crate) static EMPTY_VIA: Via = Via {
    protocol: String::new(),
    transport: String::new(),
    host: Host {
        text: String::new(),
        ip: None,
    },
    port: None,
    params: Params(Vec::new()),
};

type ViaHead<'a> = (&'a str, &'a str, &'a str, &'a str, Option<u16>);

/// `sent-protocol LWS sent-by` (RFC 3261 §25.1), with the SWS around `/`
/// and `:` that the grammar allows.
fn via_head(i: &str) -> nom::IResult<&str, ViaHead<'_>> {
    let (i, (_, name, _, _, _, version, _, _, _, transport)) =
        (sws, token, sws, char('/'), sws, token, sws, char('/'), sws, token).parse(i)?;
    let (i, (_, host, port)) = (lws, host_text, opt(preceded((sws, char(':'), sws), port))).parse(i)?;
    Ok((i, (name, version, transport, host, port)))
}

fn protocol(name: &str, version: &str) -> String {
    let mut p = String::with_capacity(name.len() + version.len() + 1);
    p.push_str(name);
    p.push('/');
    p.push_str(version);
    p
}

impl Via {
    /// Parses one Via value (`SIP/2.0/UDP host:port;params`), including
    /// LWS around the slashes and the colon as RFC 4475 §3.1.1.1 shows.
    /// Empty parameters (`;;`, RFC 4475 §3.1.2.1) are an error.
    pub fn parse(text: &str) -> Result<Via, ParseError> {
        let bad = || ParseError::bad("malformed Via");
        let (i, (name, version, transport, host, port)) = via_head(text).map_err(|_| bad())?;
        let (i, params) = Params::parse_many(i).map_err(|_| bad())?;
        let (i, _) = sws(i).map_err(|_| bad())?;
        if !i.is_empty() {
            return Err(bad());
        }
        Ok(Via {
            protocol: protocol(name, version),
            transport: transport.to_string(),
            host: Host::parse(host).map_err(|_| bad())?,
            port,
            params,
        })
    }

    /// Best-effort parse of a broken Via for replying to it (RFC 3261
    /// §8.2.6 / RFC 4475 §3.1.2.1): the sent-protocol and sent-by must be
    /// readable; parameters are kept up to the first malformed one.
    pub(crate) fn parse_lenient(text: &str) -> Option<Via> {
        let (i, (name, version, transport, host, port)) = via_head(text).ok()?;
        let params = Params::parse_many(i).map(|(_, p)| p).unwrap_or_default();
        Some(Via {
            protocol: protocol(name, version),
            transport: transport.to_string(),
            host: Host::parse(host).ok()?,
            port,
            params,
        })
    }

    /// The `branch` parameter (the transaction id, RFC 3261 §8.1.1.7,
    /// §17.2.3).
    pub fn branch(&self) -> Option<&str> {
        self.params.get("branch").flatten()
    }

    /// The `received` parameter parsed as an address. Both the bare form
    /// of RFC 3261 §25.1 and the bracketed IPv6 form are accepted (RFC 5118
    /// §4.5).
    pub fn received(&self) -> Option<std::net::IpAddr> {
        let v = self.params.get("received").flatten()?;
        let v = v.strip_prefix('[').and_then(|v| v.strip_suffix(']')).unwrap_or(v);
        v.parse().ok()
    }

    /// The `rport` parameter (RFC 3581 §3, §4): `None` absent, `Some(None)` present without
    /// value (the client asks for it), `Some(Some(p))` filled in.
    pub fn rport(&self) -> Option<Option<u16>> {
        self.params.get("rport").map(|v| v.and_then(|p| p.parse().ok()))
    }

    /// True when the transport is UDP (case-insensitive; RFC 3261 §18.1.1).
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
    /// Display name as written (a quoted-string keeps its quotes; RFC 3261
    /// §25.1 `display-name`).
    pub display: Option<String>,
    /// The address (RFC 3261 §25.1 `addr-spec`).
    pub uri: Uri,
    /// True when the URI was written in `<…>` (RFC 3261 §20.10).
    pub angle: bool,
    /// Header parameters (`tag`, `expires`, `q`, …; RFC 3261 §20.10,
    /// §20.20, §20.39).
    pub params: Params,
}

impl NameAddr {
    /// Parses one name-addr / addr-spec value with its parameters.
    ///
    /// Follows RFC 3261 §25.1 with the one relaxation RFC 4475 §3.1.1.6
    /// asks for (no LWS needed between a token display name and `<`).
    /// Errors: an unterminated quoted display name (RFC 4475 §3.1.2.6), an
    /// unquoted display name with non-token characters (§3.1.2.15), spaces
    /// inside `<…>` (§3.1.2.14), an addr-spec carrying `?headers` without
    /// angle brackets (§3.1.2.13), empty parameters (§3.1.2.1), and the
    /// `*` of a Contact wildcard.
    pub fn parse(text: &str) -> Result<NameAddr, ParseError> {
        let bad = |what: &str| ParseError::bad(format!("malformed address: {what}"));
        let (i, _) = sws(text).map_err(|_| bad("syntax"))?;
        let (i, display, uri_text, angle) = if i.starts_with('"') {
            let (i, d) = quoted_string(i).map_err(|_| bad("unterminated quoted display name"))?;
            let (i, _) = sws(i).map_err(|_| bad("syntax"))?;
            let (i, u) = angle_uri(i).map_err(|_| bad("expected <URI> after display name"))?;
            (i, Some(d.to_string()), u, true)
        } else if i.starts_with('<') {
            let (i, u) = angle_uri(i).map_err(|_| bad("unterminated <URI>"))?;
            (i, None, u, true)
        } else if let Ok((i, d)) = display_tokens(i) {
            let (i, u) = angle_uri(i).map_err(|_| bad("unterminated <URI>"))?;
            (i, Some(d.to_string()), u, true)
        } else {
            let (i, u) = addr_spec_text(i).map_err(|_| bad("syntax"))?;
            if u.contains('?') {
                return Err(bad("URI with headers must be enclosed in <>"));
            }
            (i, None, u, false)
        };
        let uri = Uri::parse(uri_text).map_err(|e| bad(&e.reason))?;
        let (i, params) = Params::parse_many(i).map_err(|_| bad("parameters"))?;
        let (i, _) = sws(i).map_err(|_| bad("syntax"))?;
        // One dangling `;` after the last parameter is accepted: deployed
        // phones send `From: <sip:a@b>;tag=1;`, and nothing is ambiguous.
        let i = i.strip_prefix(';').map(str::trim).unwrap_or(i);
        if !i.is_empty() {
            return Err(bad("unexpected text after the address"));
        }
        Ok(NameAddr {
            display,
            uri,
            angle,
            params,
        })
    }

    /// The `tag` parameter (From/To, RFC 3261 §19.3).
    pub fn tag(&self) -> Option<&str> {
        self.params.get("tag").flatten()
    }

    /// A placeholder (empty `sip:` URI), for messages built without the
    /// header or after a script removed it.
    pub(crate) fn empty() -> NameAddr {
        NameAddr {
            display: None,
            uri: Uri::empty(Scheme::Sip),
            angle: true,
            params: Params::default(),
        }
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
    /// The sequence number (less than 2**32, RFC 3261 §8.1.1.5).
    pub seq: u32,
    /// The method, which must equal the request's (RFC 4475 §3.1.2.17).
    pub method: Method,
}

impl CSeq {
    /// Parses `1234 INVITE`; the number must fit 32 bits (RFC 4475 §3.1.2.x).
    /// Leading zeros are allowed (RFC 4475 §3.1.1.1).
    pub fn parse(text: &str) -> Result<CSeq, ParseError> {
        let bad = || ParseError::bad("malformed CSeq");
        let (i, (_, num, _, method, _)) = (sws, digits, lws, token, sws).parse(text).map_err(|_| bad())?;
        if !i.is_empty() {
            return Err(bad());
        }
        let seq = num
            .parse::<u32>()
            .map_err(|_| ParseError::bad("malformed CSeq: sequence number exceeds 2**32-1"))?;
        Ok(CSeq {
            seq,
            method: Method::from_token(method),
        })
    }
}

/// Splits at top-level commas, keeping empty elements (for the strict
/// Via check of RFC 4475 §3.1.2.1). Ranges are trimmed of LWS.
pub(crate) fn split_list_raw(value: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    if memchr::memchr2(b'"', b'<', value).is_none() {
        let mut start = 0;
        for comma in memchr::memchr_iter(b',', value) {
            out.push(trim_range(value, start, comma));
            start = comma + 1;
        }
        out.push(trim_range(value, start, value.len()));
        return out;
    }
    let mut start = 0;
    let mut in_quote = false;
    let mut in_angle = false;
    let mut k = 0;
    while k < value.len() {
        let c = value[k];
        if in_quote {
            match c {
                b'\\' => k += 1,
                b'"' => in_quote = false,
                _ => {}
            }
        } else {
            match c {
                b'"' => in_quote = true,
                b'<' => in_angle = true,
                b'>' => in_angle = false,
                b',' if !in_angle => {
                    out.push(trim_range(value, start, k));
                    start = k + 1;
                }
                _ => {}
            }
        }
        k += 1;
    }
    out.push(trim_range(value, start, value.len()));
    out
}

fn trim_range(v: &[u8], mut s: usize, mut e: usize) -> std::ops::Range<usize> {
    let ws = |c: u8| matches!(c, b' ' | b'\t' | b'\r' | b'\n');
    while s < e && ws(v[s]) {
        s += 1;
    }
    while e > s && ws(v[e - 1]) {
        e -= 1;
    }
    s..e
}

/// Splits a list-header value at top-level commas (outside quoted strings
/// and angle brackets), trimming LWS, returning byte ranges into `value`.
/// Empty elements are skipped (RFC 3261 §7.3.1).
pub fn split_list(value: &[u8]) -> Vec<std::ops::Range<usize>> {
    let mut v = split_list_raw(value);
    v.retain(|r| !r.is_empty());
    v
}

/// Host and port of a Via sent-by or URI as `host[:port]` (RFC 3261 §25.1
/// `hostport`), for convenience in transport code.
pub fn host_port(host: &Host, port: Option<u16>) -> String {
    match port {
        Some(p) => format!("{host}:{p}"),
        None => host.to_string(),
    }
}
