//! SDP bodies (RFC 8866, which obsoletes RFC 4566): what the media relay
//! needs to read from an offer or answer, and the rewrite that sends each
//! stream to the relay.
//!
//! The parser reads only what a relay acts on — the connection data (`c=`,
//! §5.7), the media descriptions (`m=`, §5.14), the RTCP port attribute
//! (`a=rtcp`, RFC 3605), the direction attributes (RFC 8866 §6.7) and
//! `a=rtpmap` (§6.6) — and keeps every other line as bytes. The rewrite
//! replaces only the addresses and ports it must and copies everything else
//! byte for byte, with the line ending the body already uses (many phones
//! send LF only, RFC 8866 §5 asks for CRLF but tells parsers to accept LF).

use std::net::{IpAddr, SocketAddr};

use nom::character::complete::{char, digit1, space0, space1};
use nom::combinator::{eof, opt};
use nom::multi::many0;
use nom::sequence::preceded;
use nom::{IResult, Parser};

/// The media direction of a stream (RFC 8866 §6.7, RFC 3264 §5.1):
/// a media-level `a=sendrecv/sendonly/recvonly/inactive`, else the
/// session-level one, else `sendrecv`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Direction {
    /// `a=sendrecv` (the default, RFC 8866 §6.7.1).
    #[default]
    SendRecv,
    /// `a=sendonly` (RFC 8866 §6.7.2): the sender holds the other side.
    SendOnly,
    /// `a=recvonly` (RFC 8866 §6.7.3).
    RecvOnly,
    /// `a=inactive` (RFC 8866 §6.7.4): no media either way.
    Inactive,
}

impl Direction {
    /// The attribute name (`sendrecv`, …) as RFC 8866 §6.7 spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    fn from_attr(name: &[u8]) -> Option<Direction> {
        match name {
            b"sendrecv" => Some(Direction::SendRecv),
            b"sendonly" => Some(Direction::SendOnly),
            b"recvonly" => Some(Direction::RecvOnly),
            b"inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }
}

/// One media description (`m=` line and the lines after it, RFC 8866
/// §5.14) as a relay sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Media {
    /// Media type (`audio`, `video`, `image`, …).
    pub media: String,
    /// The transport port (0: a rejected or disabled stream, RFC 3264 §6).
    pub port: u16,
    /// Transport protocol (`RTP/AVP`, `RTP/SAVP`, `udptl`, …).
    pub proto: String,
    /// Media formats: RTP payload types for RTP profiles.
    pub fmts: Vec<String>,
    /// Where the stream goes: the media-level `c=` address, else the
    /// session-level one (RFC 8866 §5.7).
    pub conn: Option<IpAddr>,
    /// `a=rtcp:PORT [IN IP4 ADDR]` (RFC 3605): the RTCP port and address
    /// when they are not the RTP port + 1 and the `c=` address.
    pub rtcp: Option<(u16, Option<IpAddr>)>,
    /// The stream's direction (media-level attribute, else session-level).
    pub direction: Direction,
    /// Codec names (`PCMU/8000`) from `a=rtpmap` or, for RTP payload types
    /// without one, the static assignments of RFC 3551 §6; for other
    /// transports, the formats as written.
    pub codecs: Vec<String>,
}

impl Media {
    /// True when this stream is on hold: `c=0.0.0.0` (RFC 2543 hold, still
    /// sent by many phones; RFC 3264 §8.4 keeps accepting it) or the
    /// direction is `inactive` or `sendonly` (RFC 3264 §8.4).
    pub fn is_hold(&self) -> bool {
        self.conn.is_some_and(|ip| ip.is_unspecified()) || matches!(self.direction, Direction::Inactive | Direction::SendOnly)
    }
}

/// What a relay reads from an SDP body (RFC 8866 §5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sdp {
    /// The address in the origin line (`o=`, §5.2), when it is an IP.
    pub origin_addr: Option<IpAddr>,
    /// The session-level connection address (`c=` before the first
    /// `m=`, §5.7).
    pub session_conn: Option<IpAddr>,
    /// The media descriptions, in order (§5.14).
    pub media: Vec<Media>,
    /// The session-level direction attribute (RFC 8866 §6.7), `sendrecv`
    /// when absent.
    pub direction: Direction,
    /// True when the body's lines end in CRLF (RFC 8866 §5), false for LF.
    pub crlf: bool,
}

/// An SDP body that cannot be used: which line (1-based; 0 for the body
/// as a whole) and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", error_text(*.line, .reason))]
pub struct SdpError {
    /// The line number, 1-based; 0 when no single line is at fault.
    pub line: usize,
    /// What is wrong with it.
    pub reason: String,
}

fn error_text(line: usize, reason: &str) -> String {
    if line == 0 {
        format!("SDP: {reason}")
    } else {
        format!("SDP line {line}: {reason}")
    }
}

fn err(line: usize, reason: impl Into<String>) -> SdpError {
    SdpError {
        line,
        reason: reason.into(),
    }
}

// ---------------------------------------------------------------- lines

/// One line of the body: its text without the line ending, and the ending
/// as written (CRLF, LF, or nothing on a last line without one).
struct Line<'a> {
    text: &'a [u8],
    eol: &'a [u8],
}

impl Line<'_> {
    fn kind(&self) -> Option<u8> {
        (self.text.len() >= 2 && self.text[1] == b'=').then_some(self.text[0])
    }

    fn value(&self) -> &[u8] {
        self.text.get(2..).unwrap_or(b"")
    }
}

fn split_lines(body: &[u8]) -> Vec<Line<'_>> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < body.len() {
        match memchr::memchr(b'\n', &body[start..]) {
            Some(i) => {
                let nl = start + i;
                let (text, eol) = if nl > start && body[nl - 1] == b'\r' {
                    (&body[start..nl - 1], &body[nl - 1..=nl])
                } else {
                    (&body[start..nl], &body[nl..=nl])
                };
                out.push(Line { text, eol });
                start = nl + 1;
            }
            None => {
                out.push(Line {
                    text: &body[start..],
                    eol: b"",
                });
                start = body.len();
            }
        }
    }
    out
}

// ---------------------------------------------------------------- value parsers (nom)

type Res<'a, O> = IResult<&'a str, O>;

/// A run of non-blank characters (the `token`/`non-ws-string` fields of
/// RFC 8866 §9, which exclude CR and LF). A stray CR must not pass as a
/// field: a last line ending in a bare CR would take an LF added after it
/// (a rewrite inserting a `c=`) as its CRLF and lose that field.
fn word(i: &str) -> Res<'_, &str> {
    nom::bytes::complete::take_while1(|c: char| c != ' ' && c != '\t' && c != '\r' && c != '\n').parse(i)
}

/// Trailing blanks, then the end of the value.
fn at_end(i: &str) -> Res<'_, ()> {
    let (i, _) = (space0, eof).parse(i)?;
    Ok((i, ()))
}

/// The parts of an `m=` line (§5.14) and where its port is in the value.
struct MLine<'a> {
    media: &'a str,
    port: u16,
    port_at: std::ops::Range<usize>,
    proto: &'a str,
    fmts: Vec<&'a str>,
}

fn parse_m(v: &str) -> Result<MLine<'_>, String> {
    let (r, (media, _)) = (word, space1)
        .parse(v)
        .map_err(|_| "m= line needs <media> <port> <proto> <fmt>…".to_string())?;
    let start = v.len() - r.len();
    let (r, digits) = digit1::<&str, nom::error::Error<&str>>(r).map_err(|_| "m= line has no port".to_string())?;
    let end = v.len() - r.len();
    let port: u16 = digits.parse().map_err(|_| format!("m= port {digits} is not 0..65535"))?;
    let (r, _) = opt(preceded(char::<&str, nom::error::Error<&str>>('/'), digit1))
        .parse(r)
        .map_err(|_| "bad port count in m= line".to_string())?;
    let (r, (_, proto)) = (space1, word)
        .parse(r)
        .map_err(|_| "m= line has no transport protocol".to_string())?;
    let (r, fmts) = many0(preceded(space1, word)).parse(r).map_err(|_| "bad m= formats".to_string())?;
    at_end(r).map_err(|_| "unexpected text in m= line".to_string())?;
    Ok(MLine {
        media,
        port,
        port_at: start..end,
        proto,
        fmts,
    })
}

/// `nettype SP addrtype SP address` (the `c=` value of §5.7 and the
/// optional tail of `a=rtcp`, RFC 3605 §2.1): the address type must match
/// the address; a multicast `/ttl[/count]` suffix is dropped.
fn conn_address<'a>(nettype: &'a str, addrtype: &'a str, addr: &'a str) -> Result<IpAddr, String> {
    if !nettype.eq_ignore_ascii_case("IN") {
        return Err(format!("network type {nettype} is not IN"));
    }
    let host = addr.split('/').next().unwrap_or(addr);
    let ip: IpAddr = host.parse().map_err(|_| format!("bad connection address '{addr}'"))?;
    match (addrtype, ip) {
        ("IP4", IpAddr::V4(_)) | ("IP6", IpAddr::V6(_)) => Ok(ip),
        ("IP4" | "IP6", _) => Err(format!("address {host} is not of type {addrtype}")),
        _ => Err(format!("address type {addrtype} is not IP4 or IP6")),
    }
}

/// A parsed `c=` value: the network type as written and the address.
fn parse_c(v: &str) -> Result<(&str, IpAddr), String> {
    let (_, (nettype, _, addrtype, _, addr, _, _)) = (word, space1, word, space1, word, space0, eof)
        .parse(v)
        .map_err(|_| "c= needs <nettype> <addrtype> <address>".to_string())?;
    Ok((nettype, conn_address(nettype, addrtype, addr)?))
}

/// A connection address as written: the network type (`IN`) and the IP.
type NetAddr<'a> = (&'a str, IpAddr);

/// A parsed `a=rtcp:` value (RFC 3605 §2.1): port, and the network type
/// and address when given.
fn parse_rtcp(v: &str) -> Result<(u16, Option<NetAddr<'_>>), String> {
    let (r, digits) = digit1::<&str, nom::error::Error<&str>>(v).map_err(|_| "a=rtcp has no port".to_string())?;
    let port: u16 = digits.parse().map_err(|_| format!("a=rtcp port {digits} is not 0..65535"))?;
    let (r, addr) = opt((space1, word, space1, word, space1, word))
        .parse(r)
        .map_err(|_| "bad a=rtcp address".to_string())?;
    at_end(r).map_err(|_| "unexpected text in a=rtcp".to_string())?;
    let addr = match addr {
        Some((_, nettype, _, addrtype, _, a)) => Some((nettype, conn_address(nettype, addrtype, a)?)),
        None => None,
    };
    Ok((port, addr))
}

/// The address of an `o=` line (§5.2), when it is an IP literal (it may
/// legitimately be a name).
fn parse_origin(v: &str) -> Option<IpAddr> {
    let (_, (_, _, _, _, _, _, _, _, addrtype, _, addr)) = (word, space1, word, space1, word, space1, word, space1, word, space1, word)
        .parse(v)
        .ok()?;
    conn_address("IN", addrtype, addr).ok()
}

/// `a=rtpmap:<payload type> <encoding name>/<clock rate>[/<params>]`
/// (RFC 8866 §6.6): the payload type and the codec text.
fn parse_rtpmap(v: &str) -> Option<(&str, &str)> {
    let (_, (pt, _, codec)) = (digit1::<&str, nom::error::Error<&str>>, space1, word).parse(v).ok()?;
    Some((pt, codec))
}

/// Static RTP payload types (RFC 3551 §6, Tables 4 and 5).
fn static_payload(pt: &str) -> Option<&'static str> {
    Some(match pt {
        "0" => "PCMU/8000",
        "3" => "GSM/8000",
        "4" => "G723/8000",
        "5" => "DVI4/8000",
        "6" => "DVI4/16000",
        "7" => "LPC/8000",
        "8" => "PCMA/8000",
        "9" => "G722/8000",
        "10" => "L16/44100/2",
        "11" => "L16/44100",
        "12" => "QCELP/8000",
        "13" => "CN/8000",
        "14" => "MPA/90000",
        "15" => "G728/8000",
        "16" => "DVI4/11025",
        "17" => "DVI4/22050",
        "18" => "G729/8000",
        "25" => "CelB/90000",
        "26" => "JPEG/90000",
        "28" => "nv/90000",
        "31" => "H261/90000",
        "32" => "MPV/90000",
        "33" => "MP2T/90000",
        "34" => "H263/90000",
        _ => return None,
    })
}

// ---------------------------------------------------------------- the document

/// A `c=` line of a media description: its index, network type and address.
struct ConnLine {
    idx: usize,
    nettype: String,
    ip: IpAddr,
}

/// The `a=rtcp` line of a media description: its index, the port, and the
/// network type and address when it names one.
struct RtcpLine {
    idx: usize,
    port: u16,
    addr: Option<(String, IpAddr)>,
}

/// Where the lines a rewrite touches are, per media description.
#[derive(Default)]
struct Section {
    m: usize,
    m_port_at: std::ops::Range<usize>,
    /// Media-level `c=` lines.
    conns: Vec<ConnLine>,
    rtcp: Option<RtcpLine>,
    /// Where a new `c=` line goes: after `m=` and its `i=` (the order of
    /// RFC 8866 §5).
    insert_after: usize,
}

/// The parsed body with the line positions the rewrite needs.
struct Doc<'a> {
    lines: Vec<Line<'a>>,
    sdp: Sdp,
    session_conn: Option<(usize, IpAddr)>,
    sections: Vec<Section>,
}

fn utf8(no: usize, b: &[u8]) -> Result<&str, SdpError> {
    std::str::from_utf8(b).map_err(|_| err(no, "not valid UTF-8"))
}

fn parse_doc(body: &[u8]) -> Result<Doc<'_>, SdpError> {
    let lines = split_lines(body);
    let mut seen_v = false;
    let mut origin_addr = None;
    let mut session_conn: Option<(usize, IpAddr)> = None;
    let mut session_dir = None;
    let mut media: Vec<Media> = Vec::new();
    let mut sections: Vec<Section> = Vec::new();
    let mut media_dir: Vec<Option<Direction>> = Vec::new();
    let mut rtpmaps: Vec<Vec<(String, String)>> = Vec::new();
    for (idx, line) in lines.iter().enumerate() {
        let no = idx + 1;
        if line.text.iter().all(|c| c.is_ascii_whitespace()) {
            // Blank lines (a trailing one is common) carry nothing.
            continue;
        }
        let Some(kind) = line.kind() else {
            return Err(err(no, "expected <type>=<value>"));
        };
        if !seen_v {
            if kind != b'v' {
                return Err(err(no, "the body must start with v= (RFC 8866 §5.1)"));
            }
            seen_v = true;
            continue;
        }
        let value = line.value();
        match kind {
            b'o' if sections.is_empty() => origin_addr = parse_origin(utf8(no, value)?),
            b'c' => {
                let (nettype, ip) = parse_c(utf8(no, value)?).map_err(|e| err(no, e))?;
                match sections.last_mut() {
                    Some(s) => s.conns.push(ConnLine {
                        idx,
                        nettype: nettype.to_string(),
                        ip,
                    }),
                    None if session_conn.is_none() => session_conn = Some((idx, ip)),
                    None => return Err(err(no, "a second session-level c= line")),
                }
            }
            b'i' => {
                if let Some(s) = sections.last_mut() {
                    if s.insert_after + 1 == idx && s.conns.is_empty() {
                        s.insert_after = idx;
                    }
                }
            }
            b'm' => {
                let m = parse_m(utf8(no, value)?).map_err(|e| err(no, e))?;
                sections.push(Section {
                    m: idx,
                    m_port_at: m.port_at.clone(),
                    insert_after: idx,
                    ..Default::default()
                });
                media.push(Media {
                    media: m.media.to_string(),
                    port: m.port,
                    proto: m.proto.to_string(),
                    fmts: m.fmts.iter().map(|f| f.to_string()).collect(),
                    conn: None,
                    rtcp: None,
                    direction: Direction::SendRecv,
                    codecs: Vec::new(),
                });
                media_dir.push(None);
                rtpmaps.push(Vec::new());
            }
            b'a' => {
                let (name, rest) = match memchr::memchr(b':', value) {
                    Some(i) => (&value[..i], &value[i + 1..]),
                    None => (value, &b""[..]),
                };
                if let Some(d) = Direction::from_attr(name.trim_ascii_end()) {
                    match media_dir.last_mut() {
                        Some(slot) => *slot = Some(d),
                        None => session_dir = Some(d),
                    }
                } else if name == b"rtcp" {
                    // a=rtcp is a media-level attribute only (RFC 3605 §2.1).
                    if let Some(s) = sections.last_mut() {
                        let (port, addr) = parse_rtcp(utf8(no, rest)?.trim_end()).map_err(|e| err(no, e))?;
                        s.rtcp = Some(RtcpLine {
                            idx,
                            port,
                            addr: addr.map(|(n, ip)| (n.to_string(), ip)),
                        });
                    }
                } else if name == b"rtpmap" {
                    if let (Some(maps), Ok(text)) = (rtpmaps.last_mut(), std::str::from_utf8(rest)) {
                        if let Some((pt, codec)) = parse_rtpmap(text) {
                            maps.push((pt.to_string(), codec.to_string()));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    if !seen_v {
        return Err(err(0, "empty body: no v= line"));
    }
    let session_dir = session_dir.unwrap_or_default();
    for (i, m) in media.iter_mut().enumerate() {
        let s = &sections[i];
        m.conn = s.conns.first().map(|c| c.ip).or(session_conn.map(|c| c.1));
        m.rtcp = s.rtcp.as_ref().map(|r| (r.port, r.addr.as_ref().map(|x| x.1)));
        m.direction = media_dir[i].unwrap_or(session_dir);
        let rtp = m.proto.to_ascii_uppercase().contains("RTP");
        m.codecs = m
            .fmts
            .iter()
            .filter_map(|f| {
                if !rtp {
                    return Some(f.clone());
                }
                rtpmaps[i]
                    .iter()
                    .find(|(pt, _)| pt == f)
                    .map(|(_, c)| c.clone())
                    .or_else(|| static_payload(f).map(str::to_string))
            })
            .collect();
    }
    let crlf = lines.first().is_none_or(|l| l.eol != b"\n");
    Ok(Doc {
        sdp: Sdp {
            origin_addr,
            session_conn: session_conn.map(|c| c.1),
            media,
            direction: session_dir,
            crlf,
        },
        lines,
        session_conn,
        sections,
    })
}

/// Parses an SDP body (RFC 8866 §5) for the media relay: the origin and
/// session connection addresses and every media description with its
/// effective connection address, RTCP port (RFC 3605), direction and
/// codecs. LF-only line ends are accepted. Errors name the line: a body
/// that does not start with `v=`, a line that is not `<type>=<value>`, an
/// `m=` line without a port, a `c=` or `a=rtcp` whose address is not an IP
/// of its stated type.
pub fn parse(body: &[u8]) -> Result<Sdp, SdpError> {
    parse_doc(body).map(|d| d.sdp)
}

fn addrtype(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "IP4" } else { "IP6" }
}

fn c_line(nettype: &str, ip: IpAddr) -> Vec<u8> {
    format!("c={nettype} {} {ip}", addrtype(ip)).into_bytes()
}

/// Rewrites the body so that media description `i` is sent to
/// `targets[i]` (`None`, or a missing entry: that stream is left alone) —
/// what a media relay does to an offer or answer (the RTP proxies of the
/// reference's NAT chapters; rtpengine's `offer`/`answer`).
///
/// - the `m=` port becomes the target port, except port 0 (a rejected
///   stream, RFC 3264 §6), which is left as it is;
/// - a media-level `c=` gets the target address, with `IP4`/`IP6` to
///   match it; a `0.0.0.0` (or `::`) address — RFC 2543 hold — stays, while
///   the port is still rewritten;
/// - the session-level `c=` gets the target address when the rewritten
///   streams rely on it; when streams relying on it need different
///   addresses (other targets, or a stream left alone), media-level `c=`
///   lines are added so that every stream ends up where it must
///   (RFC 8866 §5.7: a media-level `c=` overrides the session one);
/// - `a=rtcp:PORT [IN IP4 ADDR]` (RFC 3605) gets the target port + 1 and,
///   when it names one, the target address;
/// - everything else — `a=sendonly/recvonly/inactive` included — is copied
///   byte for byte, with the body's own line endings.
pub fn rewrite(body: &[u8], targets: &[Option<SocketAddr>]) -> Result<Vec<u8>, SdpError> {
    let doc = parse_doc(body)?;
    if targets.len() > doc.sections.len() {
        return Err(err(
            0,
            format!("{} targets for {} media descriptions", targets.len(), doc.sections.len()),
        ));
    }
    let n = doc.lines.len();
    let mut replace: Vec<Option<Vec<u8>>> = vec![None; n];
    let mut insert: Vec<Vec<Vec<u8>>> = vec![Vec::new(); n];
    // Streams relying on the session c=: (section, Some(target) when rewritten).
    let mut on_session: Vec<(usize, Option<SocketAddr>)> = Vec::new();
    for (i, s) in doc.sections.iter().enumerate() {
        let m = &doc.sdp.media[i];
        let target = targets.get(i).copied().flatten().filter(|_| m.port != 0);
        if s.conns.is_empty() && m.port != 0 {
            on_session.push((i, target));
        }
        let Some(t) = target else { continue };
        let text = doc.lines[s.m].text;
        // The port sits after "m=" in the line text.
        let at = s.m_port_at.start + 2..s.m_port_at.end + 2;
        let mut line = text[..at.start].to_vec();
        line.extend_from_slice(t.port().to_string().as_bytes());
        line.extend_from_slice(&text[at.end..]);
        replace[s.m] = Some(line);
        for c in &s.conns {
            if !c.ip.is_unspecified() {
                replace[c.idx] = Some(c_line(&c.nettype, t.ip()));
            }
        }
        if s.conns.is_empty() && doc.session_conn.is_none() {
            insert[s.insert_after].push(c_line("IN", t.ip()));
        }
        if let Some(r) = &s.rtcp {
            let rtcp_port = t
                .port()
                .checked_add(1)
                .ok_or_else(|| err(r.idx + 1, "target port 65535 leaves no port for RTCP"))?;
            let mut line = format!("a=rtcp:{rtcp_port}");
            if let Some((nettype, ip)) = &r.addr {
                let ip = if ip.is_unspecified() { *ip } else { t.ip() };
                line.push_str(&format!(" {nettype} {} {ip}", addrtype(ip)));
            }
            replace[r.idx] = Some(line.into_bytes());
        }
    }
    if let Some((sc_idx, sc_ip)) = doc.session_conn {
        let chosen = on_session.iter().find_map(|(_, t)| *t).map(|t| t.ip());
        if let Some(chosen) = chosen.filter(|_| !sc_ip.is_unspecified()) {
            let nettype = std::str::from_utf8(doc.lines[sc_idx].value())
                .ok()
                .and_then(|v| v.split_ascii_whitespace().next())
                .unwrap_or("IN")
                .to_string();
            if chosen != sc_ip {
                replace[sc_idx] = Some(c_line(&nettype, chosen));
            }
            for (i, t) in &on_session {
                let want = t.map(|t| t.ip()).unwrap_or(sc_ip);
                if want != chosen {
                    let line = match t {
                        Some(_) => c_line(&nettype, want),
                        // A stream left alone keeps the session c= as written.
                        None => doc.lines[sc_idx].text.to_vec(),
                    };
                    insert[doc.sections[*i].insert_after].push(line);
                }
            }
        }
    }
    let default_eol: &[u8] = if doc.sdp.crlf { b"\r\n" } else { b"\n" };
    let mut out = Vec::with_capacity(body.len() + 64);
    for (idx, line) in doc.lines.iter().enumerate() {
        out.extend_from_slice(replace[idx].as_deref().unwrap_or(line.text));
        if insert[idx].is_empty() {
            out.extend_from_slice(line.eol);
            continue;
        }
        let eol = if line.eol.is_empty() { default_eol } else { line.eol };
        out.extend_from_slice(eol);
        let k = insert[idx].len();
        for (j, new) in insert[idx].iter().enumerate() {
            out.extend_from_slice(new);
            // A last line without an ending keeps having none.
            out.extend_from_slice(if j + 1 == k { line.eol } else { eol });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `sdp` fuzz target: an `m=` whose transport was a bare
    /// CR on a last line without LF parsed, and the rewrite, adding a `c=`
    /// after it, turned the CR into a CRLF and left an `m=` without a
    /// transport. Such a field is refused now; whatever parses must still
    /// parse once rewritten.
    #[test]
    fn bare_cr_is_not_a_field() {
        let body = b"\nv=0 0\x0f1\nm=ao 508 \r";
        assert!(parse(body).is_err());
        let ok = b"v=0\nm=audio 508 RTP/AVP 0 \r";
        assert!(parse(ok).is_err(), "a CR after the last field is not blank space either");
        let fine = b"v=0\nm=audio 508 RTP/AVP 0";
        let out = rewrite(fine, &["127.0.0.1:30000".parse().ok()]).unwrap();
        assert_eq!(parse(&out).unwrap().media[0].port, 30000);
    }

    fn crlf(s: &str) -> Vec<u8> {
        s.replace('\n', "\r\n").into_bytes()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    fn text(b: &[u8]) -> String {
        String::from_utf8(b.to_vec()).expect("utf-8")
    }

    const AV: &str = "v=0
o=alice 2890844526 2890844526 IN IP4 192.168.1.20
s=-
c=IN IP4 192.168.1.20
t=0 0
m=audio 49170 RTP/AVP 0 8 97
a=rtpmap:97 iLBC/8000
a=rtcp:49171
m=video 51372 RTP/AVP 31 99
a=rtpmap:99 h263-1998/90000
a=sendonly
";

    #[test]
    fn parses_audio_and_video() {
        let sdp = parse(&crlf(AV)).expect("parses");
        assert!(sdp.crlf);
        assert_eq!(sdp.origin_addr, Some("192.168.1.20".parse().unwrap()));
        assert_eq!(sdp.session_conn, Some("192.168.1.20".parse().unwrap()));
        assert_eq!(sdp.media.len(), 2);
        let a = &sdp.media[0];
        assert_eq!((a.media.as_str(), a.port, a.proto.as_str()), ("audio", 49170, "RTP/AVP"));
        assert_eq!(a.fmts, ["0", "8", "97"]);
        assert_eq!(a.codecs, ["PCMU/8000", "PCMA/8000", "iLBC/8000"]);
        assert_eq!(a.conn, sdp.session_conn);
        assert_eq!(a.rtcp, Some((49171, None)));
        assert_eq!(a.direction, Direction::SendRecv);
        assert!(!a.is_hold());
        let v = &sdp.media[1];
        assert_eq!(v.codecs, ["H261/90000", "h263-1998/90000"]);
        assert_eq!(v.direction, Direction::SendOnly);
        assert!(v.is_hold());
    }

    #[test]
    fn rewrites_two_streams_with_one_session_c() {
        let out = rewrite(&crlf(AV), &[Some(sa("203.0.113.5:30000")), Some(sa("203.0.113.5:30002"))]).expect("rewrites");
        assert_eq!(
            text(&out),
            text(&crlf(
                "v=0
o=alice 2890844526 2890844526 IN IP4 192.168.1.20
s=-
c=IN IP4 203.0.113.5
t=0 0
m=audio 30000 RTP/AVP 0 8 97
a=rtpmap:97 iLBC/8000
a=rtcp:30001
m=video 30002 RTP/AVP 31 99
a=rtpmap:99 h263-1998/90000
a=sendonly
"
            ))
        );
        let again = parse(&out).expect("reparses");
        assert_eq!(again.media[0].conn, Some("203.0.113.5".parse().unwrap()));
        assert_eq!(again.media[1].direction, Direction::SendOnly);
    }

    #[test]
    fn different_targets_on_the_session_c_get_media_c_lines() {
        let out = rewrite(&crlf(AV), &[Some(sa("203.0.113.5:30000")), Some(sa("[2001:db8::7]:40000"))]).expect("rewrites");
        let sdp = parse(&out).expect("reparses");
        assert_eq!(sdp.media[0].conn, Some("203.0.113.5".parse().unwrap()));
        assert_eq!(sdp.media[1].conn, Some("2001:db8::7".parse().unwrap()));
        assert!(text(&out).contains("m=video 40000 RTP/AVP 31 99\r\nc=IN IP6 2001:db8::7\r\n"));
        // One stream relayed, the other left alone: the untouched one keeps
        // the original address through a media-level copy of the session c=.
        let out = rewrite(&crlf(AV), &[None, Some(sa("203.0.113.5:30002"))]).expect("rewrites");
        let sdp = parse(&out).expect("reparses");
        assert_eq!(sdp.media[0].conn, Some("192.168.1.20".parse().unwrap()));
        assert_eq!(sdp.media[0].port, 49170);
        assert_eq!(sdp.media[0].rtcp, Some((49171, None)));
        assert_eq!(sdp.media[1].conn, Some("203.0.113.5".parse().unwrap()));
        assert!(text(&out).contains("m=audio 49170 RTP/AVP 0 8 97\r\nc=IN IP4 192.168.1.20\r\n"));
    }

    #[test]
    fn media_level_c_and_rtcp_with_address() {
        let body = crlf(
            "v=0
o=- 1 1 IN IP4 10.0.0.1
s=-
t=0 0
m=audio 5004 RTP/AVP 0
i=voice
c=IN IP4 10.0.0.1
a=rtcp:5010 IN IP4 10.0.0.2
m=audio 0 RTP/AVP 8
c=IN IP4 10.0.0.1
",
        );
        let sdp = parse(&body).expect("parses");
        assert_eq!(sdp.session_conn, None);
        assert_eq!(sdp.media[0].rtcp, Some((5010, Some("10.0.0.2".parse().unwrap()))));
        assert_eq!(sdp.media[1].port, 0);
        let out = rewrite(&body, &[Some(sa("[2001:db8::1]:30000")), Some(sa("203.0.113.5:30002"))]).expect("rewrites");
        assert_eq!(
            text(&out),
            text(&crlf(
                "v=0
o=- 1 1 IN IP4 10.0.0.1
s=-
t=0 0
m=audio 30000 RTP/AVP 0
i=voice
c=IN IP6 2001:db8::1
a=rtcp:30001 IN IP6 2001:db8::1
m=audio 0 RTP/AVP 8
c=IN IP4 10.0.0.1
"
            ))
        );
    }

    #[test]
    fn media_without_any_c_gets_one_after_its_i_line() {
        let body = crlf("v=0\no=- 1 1 IN IP4 10.0.0.1\ns=-\nt=0 0\nm=audio 5004 RTP/AVP 0\ni=voice\na=ptime:20\n");
        let out = rewrite(&body, &[Some(sa("203.0.113.5:30000"))]).expect("rewrites");
        assert!(text(&out).ends_with("m=audio 30000 RTP/AVP 0\r\ni=voice\r\nc=IN IP4 203.0.113.5\r\na=ptime:20\r\n"));
    }

    #[test]
    fn hold_both_styles() {
        let old_style =
            "v=0\no=- 1 2 IN IP4 192.0.2.1\ns=-\nc=IN IP4 0.0.0.0\nt=0 0\nm=audio 49170 RTP/AVP 0\na=rtcp:49171 IN IP4 0.0.0.0\n";
        let sdp = parse(old_style.as_bytes()).expect("parses");
        assert!(sdp.media[0].is_hold());
        let out = rewrite(old_style.as_bytes(), &[Some(sa("203.0.113.5:30000"))]).expect("rewrites");
        assert_eq!(
            text(&out),
            "v=0\no=- 1 2 IN IP4 192.0.2.1\ns=-\nc=IN IP4 0.0.0.0\nt=0 0\nm=audio 30000 RTP/AVP 0\na=rtcp:30001 IN IP4 0.0.0.0\n"
        );
        let media_hold = "v=0\no=- 1 2 IN IP4 192.0.2.1\ns=-\nt=0 0\nm=audio 49170 RTP/AVP 0\nc=IN IP4 0.0.0.0\n";
        let out = rewrite(media_hold.as_bytes(), &[Some(sa("203.0.113.5:30000"))]).expect("rewrites");
        assert!(text(&out).ends_with("m=audio 30000 RTP/AVP 0\nc=IN IP4 0.0.0.0\n"));
        let rfc3264 = crlf("v=0\no=- 1 2 IN IP4 192.0.2.1\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\nm=audio 49170 RTP/AVP 0\na=inactive\n");
        let sdp = parse(&rfc3264).expect("parses");
        assert!(sdp.media[0].is_hold());
        assert_eq!(sdp.media[0].direction, Direction::Inactive);
        let out = rewrite(&rfc3264, &[Some(sa("203.0.113.5:30000"))]).expect("rewrites");
        assert!(text(&out).contains("c=IN IP4 203.0.113.5\r\n"));
        assert!(text(&out).ends_with("a=inactive\r\n"), "direction kept");
        // A session-level direction applies to every stream without its own.
        let sess = "v=0\no=- 1 2 IN IP4 192.0.2.1\ns=-\nc=IN IP4 192.0.2.1\nt=0 0\na=recvonly\nm=audio 1 RTP/AVP 0\nm=audio 3 RTP/AVP 0\na=sendrecv\n";
        let sdp = parse(sess.as_bytes()).expect("parses");
        assert_eq!(sdp.direction, Direction::RecvOnly);
        assert_eq!(sdp.media[0].direction, Direction::RecvOnly);
        assert_eq!(sdp.media[1].direction, Direction::SendRecv);
    }

    #[test]
    fn lf_only_input_stays_lf_only() {
        let body = AV.as_bytes();
        let sdp = parse(body).expect("parses");
        assert!(!sdp.crlf);
        let out = rewrite(body, &[Some(sa("203.0.113.5:30000")), Some(sa("198.51.100.9:30002"))]).expect("rewrites");
        assert!(!out.contains(&b'\r'));
        assert!(text(&out).contains("m=video 30002 RTP/AVP 31 99\nc=IN IP4 198.51.100.9\n"));
        // A last line without any ending, followed by an inserted line.
        let body = b"v=0\nc=IN IP4 192.0.2.1\nm=audio 1000 RTP/AVP 0\nm=audio 2000 RTP/AVP 0";
        let out = rewrite(body, &[Some(sa("203.0.113.5:30000")), Some(sa("198.51.100.9:30002"))]).expect("rewrites");
        assert_eq!(
            text(&out),
            "v=0\nc=IN IP4 203.0.113.5\nm=audio 30000 RTP/AVP 0\nm=audio 30002 RTP/AVP 0\nc=IN IP4 198.51.100.9"
        );
    }

    #[test]
    fn untouched_lines_are_byte_identical() {
        let body = crlf(
            "v=0\no=x 1 1 IN IP4 host.example.com\ns=caf\u{e9}\nc=IN IP4 192.0.2.1/127\nt=0 0\nm=audio 1000/2 RTP/AVP 0\na=fmtp:0  odd  spacing \n",
        );
        let sdp = parse(&body).expect("parses");
        assert_eq!(sdp.origin_addr, None, "a name in o= is allowed");
        assert_eq!(sdp.session_conn, Some("192.0.2.1".parse().unwrap()), "multicast TTL dropped");
        assert_eq!(rewrite(&body, &[]).expect("no targets"), body);
        assert_eq!(rewrite(&body, &[None]).expect("none"), body);
        let out = rewrite(&body, &[Some(sa("203.0.113.5:30000"))]).expect("rewrites");
        assert!(text(&out).contains("m=audio 30000/2 RTP/AVP 0\r\na=fmtp:0  odd  spacing \r\n"));
        assert!(rewrite(&body, &[None, None]).is_err(), "more targets than streams");
    }

    #[test]
    fn non_rtp_codecs_are_the_formats() {
        let sdp =
            parse(b"v=0\nc=IN IP4 192.0.2.1\nm=image 5000 udptl t38\nm=audio 5002 RTP/AVP 96 101\na=rtpmap:101 telephone-event/8000\n")
                .expect("parses");
        assert_eq!(sdp.media[0].codecs, ["t38"]);
        assert_eq!(sdp.media[1].codecs, ["telephone-event/8000"], "96 has no rtpmap and is not static");
    }

    #[test]
    fn malformed_bodies_are_errors() {
        let cases: &[(&str, usize, &str)] = &[
            ("", 0, "no v="),
            ("\r\n\r\n", 0, "no v="),
            ("o=- 1 1 IN IP4 192.0.2.1\r\nv=0\r\n", 1, "v="),
            ("v=0\r\nm=audio RTP/AVP 0\r\n", 2, "no port"),
            ("v=0\r\nm=audio\r\n", 2, "m= line"),
            ("v=0\r\nm=audio 99999 RTP/AVP 0\r\n", 2, "not 0..65535"),
            ("v=0\r\nm=audio 1000\r\n", 2, "transport"),
            ("v=0\r\nc=IN IP4 300.1.1.1\r\n", 2, "bad connection address"),
            ("v=0\r\nc=IN IP4 2001:db8::1\r\n", 2, "not of type IP4"),
            ("v=0\r\nc=IN IP5 192.0.2.1\r\n", 2, "IP4 or IP6"),
            ("v=0\r\nc=IN IP4\r\n", 2, "c= needs"),
            ("v=0\r\nc=IN IP4 192.0.2.1\r\nc=IN IP4 192.0.2.2\r\n", 3, "second"),
            ("v=0\r\nm=audio 1 RTP/AVP 0\r\na=rtcp:x\r\n", 3, "no port"),
            (
                "v=0\r\nm=audio 1 RTP/AVP 0\r\na=rtcp:5 IN IP4 nope\r\n",
                3,
                "bad connection address",
            ),
            ("v=0\r\nthis is not sdp\r\n", 2, "<type>=<value>"),
        ];
        for (body, line, what) in cases {
            let e = parse(body.as_bytes()).expect_err(body);
            assert_eq!(e.line, *line, "{body:?}: {e}");
            assert!(e.to_string().contains(what), "{body:?}: {e}");
            assert!(rewrite(body.as_bytes(), &[Some(sa("192.0.2.9:2000"))]).is_err());
        }
        let e = parse(b"v=0\r\nc=IN IP4 1.2.3\r\n").expect_err("bad address");
        assert_eq!(e.to_string(), "SDP line 2: bad connection address '1.2.3'");
        assert!(parse(b"v=0\r\nc=\xff\xfe\r\n").is_err());
    }

    #[test]
    fn truncations_never_panic() {
        let full = crlf(AV);
        let targets = [Some(sa("203.0.113.5:30000")), Some(sa("[2001:db8::7]:65535"))];
        for cut in 0..=full.len() {
            let part = &full[..cut];
            let _ = parse(part);
            let _ = rewrite(part, &targets);
            let _ = rewrite(part, &targets[..1]);
            // The same with a byte flipped at the cut: garbage in the middle.
            if cut < full.len() {
                let mut bent = full.clone();
                bent[cut] ^= 0x5a;
                let _ = parse(&bent);
                let _ = rewrite(&bent, &targets[..1]);
            }
        }
    }
}
