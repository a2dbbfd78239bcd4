//! The RFC 3261 §25 grammar, with nom: start lines, header splitting
//! (folding, compact forms), and the eager checks of the headers the core
//! relies on.
//!
//! Line endings are CRLF only (RFC 3261 §7): a bare CR or LF in the start
//! line or header section makes the message unparseable and, since its
//! line structure is then ambiguous, it is dropped rather than answered.

use std::borrow::Cow;
use std::sync::LazyLock;

use bytes::Bytes;
use memchr::{memchr, memmem, memrchr};
use nom::branch::alt;
use nom::bytes::complete::{take_while, take_while1};
use nom::character::complete::{char, digit1};
use nom::combinator::{map_res, opt, peek, recognize};
use nom::multi::many0;
use nom::sequence::{delimited, preceded};
use nom::{IResult, Parser};

use super::header::{CSeq, NameAddr, Via, hid, index_of_name, split_list_raw};
use super::method::Method;
use super::msg::{Body, Eager, Field, FieldData, Inner, ParseError, PartialRequest, R, StartLine};
use super::uri::Uri;

/// Most header fields a message may carry (RFC 4475 §3.1.1.7 has 47);
/// more is a 400.
pub const MAX_HEADERS: usize = 256;
/// Most Via values a message may carry (each proxy adds one, RFC 3261
/// §16.6 step 8; a request travels at most the 70 hops of the default
/// Max-Forwards, §8.1.1.6); more is a 400.
pub const MAX_VIAS: usize = 80;
/// Longest header field, folded lines included (RFC 3261 §7.3.1); longer
/// is a 400.
pub const MAX_FIELD_LEN: usize = 8192;
/// Largest message [`super::SipMessage::parse`] accepts (a UDP datagram is
/// at most 65535 bytes, RFC 3261 §18.1.1; streams are bounded by
/// [`super::framing::next_message`]'s `max`).
pub const MAX_MESSAGE_LEN: usize = 16 << 20;

type Res<'a, O> = IResult<&'a str, O>;

/// RFC 3261 §25.1 `token` characters.
pub(crate) fn is_token_byte(c: u8) -> bool {
    class(c) & TOKEN != 0
}

/// Character classes of RFC 3261 §25.1, as bits of [`CLASSES`].
pub(crate) const TOKEN: u8 = 1;
/// `unreserved` (alphanum / mark).
pub(crate) const UNRESERVED: u8 = 2;
/// `user-unreserved` plus unreserved.
pub(crate) const USER: u8 = 4;
/// Password characters plus unreserved.
pub(crate) const PASSWORD: u8 = 8;
/// `paramchar` without `escaped`.
pub(crate) const PARAM: u8 = 16;
/// `hnv-unreserved` plus unreserved, `=`, `&` (and `@`, leniently).
pub(crate) const HEADER: u8 = 32;
/// Host name characters (alphanum, `-`, `.`, `_`).
pub(crate) const HOSTNAME: u8 = 64;
/// Characters allowed nowhere in a URI (controls, SP, `<`, `>`, `"`,
/// non-ASCII).
pub(crate) const URI_FORBIDDEN: u8 = 128;

const fn build_classes() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut c = 0usize;
    while c < 256 {
        let b = c as u8;
        let alnum = b.is_ascii_alphanumeric();
        let mut v = 0u8;
        if alnum || has(b"-.!%*_+`'~", b) {
            v |= TOKEN;
        }
        let unreserved = alnum || has(b"-_.!~*'()", b);
        if unreserved {
            v |= UNRESERVED;
        }
        if unreserved || has(b"&=+$,;?/", b) {
            v |= USER;
        }
        if unreserved || has(b"&=+$,", b) {
            v |= PASSWORD;
        }
        if unreserved || has(b"[]/:&+$", b) {
            v |= PARAM;
        }
        if unreserved || has(b"[]/?:+$=&@", b) {
            v |= HEADER;
        }
        if alnum || has(b"-._", b) {
            v |= HOSTNAME;
        }
        if b <= b' ' || b >= 0x7f || has(b"<>\"", b) {
            v |= URI_FORBIDDEN;
        }
        t[c] = v;
        c += 1;
    }
    t
}

const fn has(set: &[u8], b: u8) -> bool {
    let mut i = 0;
    while i < set.len() {
        if set[i] == b {
            return true;
        }
        i += 1;
    }
    false
}

/// Class bits of every byte.
pub(crate) static CLASSES: [u8; 256] = build_classes();

/// The class bits of `c`.
#[inline]
pub(crate) fn class(c: u8) -> u8 {
    CLASSES[c as usize]
}

fn is_token_char(c: char) -> bool {
    c.is_ascii() && is_token_byte(c as u8)
}

fn is_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

/// `SWS`: optional white space (folding already undone or still present).
pub(crate) fn sws(i: &str) -> Res<'_, &str> {
    take_while(is_ws).parse(i)
}

/// `LWS`: at least one white space character.
pub(crate) fn lws(i: &str) -> Res<'_, &str> {
    take_while1(is_ws).parse(i)
}

/// `token` (RFC 3261 §25.1).
pub(crate) fn token(i: &str) -> Res<'_, &str> {
    take_while1(is_token_char).parse(i)
}

/// `1*DIGIT`.
pub(crate) fn digits(i: &str) -> Res<'_, &str> {
    digit1(i)
}

/// `port` as a 16-bit number.
pub(crate) fn port(i: &str) -> Res<'_, u16> {
    map_res(digit1, |s: &str| s.parse::<u16>()).parse(i)
}

/// The text of a `host`: an IPv6 reference in brackets, or a host name /
/// IPv4 address (validated by [`super::Host::parse`]).
pub(crate) fn host_text(i: &str) -> Res<'_, &str> {
    alt((
        recognize((
            char('['),
            take_while1(|c: char| c.is_ascii_hexdigit() || c == ':' || c == '.'),
            char(']'),
        )),
        take_while1(|c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')),
    ))
    .parse(i)
}

/// `quoted-string` with its quotes, honouring `quoted-pair` escapes
/// (RFC 3261 §25.1). Fails on an unterminated string (RFC 4475 §3.1.2.6).
pub(crate) fn quoted_string(i: &str) -> Res<'_, &str> {
    let fail = || nom::Err::Error(nom::error::Error::new(i, nom::error::ErrorKind::Char));
    let b = i.as_bytes();
    if b.first() != Some(&b'"') {
        return Err(fail());
    }
    let mut k = 1;
    while k < b.len() {
        match b[k] {
            b'"' => return Ok((&i[k + 1..], &i[..=k])),
            b'\\' => match b.get(k + 1) {
                Some(c) if c.is_ascii() && *c != b'\r' && *c != b'\n' => k += 2,
                _ => return Err(fail()),
            },
            b'\r' | b'\n' => return Err(fail()),
            _ => k += 1,
        }
    }
    Err(fail())
}

fn param_value(i: &str) -> Res<'_, &str> {
    alt((
        quoted_string,
        take_while1(|c: char| is_token_char(c) || matches!(c, '[' | ']' | ':')),
    ))
    .parse(i)
}

/// `SEMI generic-param` (RFC 3261 §25.1): `;name[=value]` with the SWS the
/// grammar allows around `;` and `=` (RFC 4475 §3.1.1.1). The value is a
/// token, a host (IPv6 references included) or a quoted string.
pub(crate) fn generic_param(i: &str) -> Res<'_, (&str, Option<&str>)> {
    let (i, (_, _, _, name)) = (sws, char(';'), sws, token).parse(i)?;
    let (i, value) = opt(preceded((sws, char('='), sws), param_value)).parse(i)?;
    Ok((i, (name, value)))
}

/// `LAQUOT addr-spec RAQUOT`: the text between `<` and `>`.
pub(crate) fn angle_uri(i: &str) -> Res<'_, &str> {
    delimited(char('<'), take_while1(|c| c != '>'), char('>')).parse(i)
}

/// A display name of tokens (`*(token LWS)`), followed by `<`; LWS before
/// `<` is optional (RFC 4475 §3.1.1.6).
pub(crate) fn display_tokens(i: &str) -> Res<'_, &str> {
    let (i, d) = recognize((token, many0((lws, token)))).parse(i)?;
    let (i, _) = sws(i)?;
    let (i, _) = peek(char('<')).parse(i)?;
    Ok((i, d))
}

/// The URI of an addr-spec written without `<>`: it ends at LWS, `;` or
/// `,` (RFC 3261 §20.10).
pub(crate) fn addr_spec_text(i: &str) -> Res<'_, &str> {
    take_while1(|c: char| !is_ws(c) && c != ';' && c != ',').parse(i)
}

/// Undoes header folding: each CRLF (with the white space around it)
/// becomes one SP (RFC 3261 §7.3.1). Borrows when there is no folding.
pub(crate) fn unfold(v: &[u8]) -> Cow<'_, [u8]> {
    if memchr::memchr2(b'\r', b'\n', v).is_none() {
        return Cow::Borrowed(v);
    }
    let mut out = Vec::with_capacity(v.len());
    let mut k = 0;
    while k < v.len() {
        match v[k] {
            b'\r' | b'\n' => {
                while out.last().is_some_and(|c| *c == b' ' || *c == b'\t') {
                    out.pop();
                }
                while k < v.len() && matches!(v[k], b'\r' | b'\n' | b' ' | b'\t') {
                    k += 1;
                }
                out.push(b' ');
            }
            c => {
                out.push(c);
                k += 1;
            }
        }
    }
    Cow::Owned(out)
}

/// Header bytes as text: borrowed when UTF-8, else lossily converted.
pub(crate) fn as_text(v: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(v) {
        Ok(s) => Cow::Borrowed(s),
        Err(_) => String::from_utf8_lossy(v),
    }
}

static CRLF: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(b"\r\n"));
static CRLFCRLF: LazyLock<memmem::Finder<'static>> = LazyLock::new(|| memmem::Finder::new(b"\r\n\r\n"));

/// Position of the first CRLF in `h`.
pub(crate) fn find_crlf(h: &[u8]) -> Option<usize> {
    CRLF.find(h)
}

/// Position of the first empty line (CRLF CRLF) in `h`.
pub(crate) fn find_crlfcrlf(h: &[u8]) -> Option<usize> {
    CRLFCRLF.find(h)
}

/// Folding undone, then as text.
pub(crate) fn value_text(v: &[u8]) -> Cow<'_, str> {
    match unfold(v) {
        Cow::Borrowed(b) => as_text(b),
        Cow::Owned(o) => Cow::Owned(String::from_utf8_lossy(&o).into_owned()),
    }
}

/// Validates a Call-ID (RFC 3261 §20.8, §25.1 `callid = word ["@" word]`).
/// Every `word` character is accepted, as are the other visible ASCII
/// characters deployed user agents put there (`=` of base64, a second
/// `@`); empty values, white space, control and non-ASCII bytes are not.
pub(crate) fn parse_call_id(v: &str) -> Result<String, ParseError> {
    if v.is_empty() || !v.bytes().all(|c| c.is_ascii_graphic()) {
        return Err(ParseError::bad("malformed Call-ID"));
    }
    Ok(v.to_string())
}

fn parse_u_digits<T: std::str::FromStr>(v: &str) -> Option<T> {
    if v.is_empty() || !v.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// Max-Forwards (RFC 3261 §20.22): digits that fit a u32.
pub(crate) fn parse_max_forwards(v: &str) -> Result<u32, ParseError> {
    parse_u_digits(v).ok_or_else(|| ParseError::bad("malformed Max-Forwards"))
}

/// Content-Length (RFC 3261 §20.14): non-negative digits (RFC 4475
/// §3.1.2.3 "ncl").
pub(crate) fn parse_content_length(v: &str) -> Result<usize, ParseError> {
    parse_u_digits(v).ok_or_else(|| ParseError::bad("malformed Content-Length"))
}

/// The first failure met while parsing a message.
pub(crate) struct Fail {
    status: u16,
    reason: String,
    /// False when the message's structure is too broken to answer.
    replyable: bool,
}

impl Fail {
    fn bad(what: &str) -> Fail {
        Fail {
            status: 400,
            reason: format!("Bad Request - {what}"),
            replyable: true,
        }
    }

    fn drop(what: &str) -> Fail {
        Fail {
            replyable: false,
            ..Fail::bad(what)
        }
    }

    fn into_error(self) -> ParseError {
        ParseError {
            status: self.status,
            reason: self.reason,
            partial: None,
        }
    }
}

fn set(fail: &mut Option<Fail>, f: Fail) {
    if fail.is_none() {
        *fail = Some(f);
    }
}

/// True for `SIP/` 1*DIGIT `.` 1*DIGIT (RFC 3261 §25.1 `SIP-Version`).
fn is_sip_version(v: &[u8]) -> bool {
    if v.len() < 7 || !v[..4].eq_ignore_ascii_case(b"SIP/") {
        return false;
    }
    let rest = &v[4..];
    match memchr(b'.', rest) {
        Some(d) => d > 0 && d + 1 < rest.len() && rest[..d].iter().all(u8::is_ascii_digit) && rest[d + 1..].iter().all(u8::is_ascii_digit),
        None => false,
    }
}

/// `Method SP Request-URI SP SIP-Version` (RFC 3261 §7.1, §25.1). Exactly
/// one SP between elements and none at the end (RFC 4475 §3.1.2.9,
/// §3.1.2.10); a version other than SIP/2.0 is a 505 (§3.1.2.16).
/// Returns the method whenever the first token is one, for error replies.
fn parse_request_line(line: &[u8]) -> (Option<Method>, Result<StartLine, Fail>) {
    let Some(sp1) = memchr(b' ', line) else {
        return (None, Err(Fail::drop("malformed Request-Line")));
    };
    let tok = &line[..sp1];
    if tok.is_empty() || !tok.iter().all(|c| is_token_byte(*c)) {
        return (None, Err(Fail::drop("malformed Request-Line")));
    }
    // token bytes are ASCII
    let method = Method::from_token(&String::from_utf8_lossy(tok));
    let m = Some(method.clone());
    let sp2 = match memrchr(b' ', line) {
        Some(s) if s > sp1 => s,
        _ => return (m, Err(Fail::bad("malformed Request-Line"))),
    };
    let version = &line[sp2 + 1..];
    if !is_sip_version(version) {
        return (m, Err(Fail::bad("malformed Request-Line")));
    }
    if !version.eq_ignore_ascii_case(b"SIP/2.0") {
        let f = Fail {
            status: 505,
            reason: format!("Version Not Supported - {}", String::from_utf8_lossy(version)),
            replyable: true,
        };
        return (m, Err(f));
    }
    let uri_b = &line[sp1 + 1..sp2];
    if uri_b.is_empty() || uri_b[0] == b' ' || uri_b[uri_b.len() - 1] == b' ' {
        return (m, Err(Fail::bad("malformed Request-Line (extra SP)")));
    }
    let uri = match std::str::from_utf8(uri_b).ok().map(Uri::parse) {
        Some(Ok(u)) => u,
        _ => return (m, Err(Fail::bad("malformed Request-URI"))),
    };
    if uri.is_sip() && uri.headers.is_some() {
        // RFC 3261 §19.1.1 table: headers are not allowed in a
        // Request-URI (RFC 4475 §3.1.2.11).
        return (m, Err(Fail::bad("headers in Request-URI")));
    }
    (m, Ok(StartLine::Request { method, uri }))
}

/// `SIP-Version SP Status-Code SP Reason-Phrase` (RFC 3261 §7.2). The
/// code has three digits, 100–699 (RFC 4475 §3.1.2.19); the reason may be
/// empty (§3.1.1.13) and UTF-8 (§3.1.1.12).
fn parse_status_line(line: &[u8]) -> Result<StartLine, Fail> {
    let bad = || Fail::drop("malformed Status-Line");
    let sp = memchr(b' ', line).ok_or_else(bad)?;
    if !line[..sp].eq_ignore_ascii_case(b"SIP/2.0") {
        return Err(Fail::drop("unsupported SIP version in Status-Line"));
    }
    let rest = &line[sp + 1..];
    let (code, reason) = match rest.get(3) {
        None => (rest, &b""[..]),
        Some(b' ') => (&rest[..3], &rest[4..]),
        Some(_) => return Err(bad()),
    };
    if code.len() != 3 || !code.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let status = code.iter().fold(0u16, |a, c| a * 10 + u16::from(c - b'0'));
    if !(100..=699).contains(&status) {
        return Err(bad());
    }
    Ok(StartLine::Response {
        status,
        reason: String::from_utf8_lossy(reason).into_owned(),
    })
}

/// True when `line` holds a CR or LF that is not part of a fold
/// (CRLF followed by SP/HTAB).
pub(crate) fn has_bare_cr_lf(line: &[u8]) -> bool {
    let mut k = 0;
    while let Some(i) = memchr::memchr2(b'\r', b'\n', &line[k..]) {
        let p = k + i;
        if line[p] == b'\r' && line.get(p + 1) == Some(&b'\n') && matches!(line.get(p + 2), Some(b' ' | b'\t')) {
            k = p + 2;
        } else {
            return true;
        }
    }
    false
}

/// True when `region` holds a CR not followed by LF or an LF not
/// preceded by CR: its line structure is ambiguous, so a broken message
/// with one is dropped rather than answered.
fn has_lone_cr_lf(region: &[u8]) -> bool {
    memchr::memchr2_iter(b'\r', b'\n', region).any(|p| match region[p] {
        b'\r' => region.get(p + 1) != Some(&b'\n'),
        _ => p == 0 || region[p - 1] != b'\r',
    })
}

fn r(s: usize, e: usize) -> R {
    // Messages are capped at MAX_MESSAGE_LEN, far below u32::MAX.
    R { s: s as u32, e: e as u32 }
}

/// Splits the header section `b[from..end]` into fields (RFC 3261 §7.3:
/// `name HCOLON value CRLF`, continuation lines start with SP/HTAB).
/// Unknown names cost no allocation. Malformed lines are skipped and the
/// first fault is reported in `fail`.
pub(crate) fn scan_fields(b: &[u8], from: usize, end: usize, fail: &mut Option<Fail>) -> Vec<Field> {
    let mut fields = Vec::with_capacity(24);
    let mut p = from;
    while p < end {
        let line_start = p;
        let mut q = p;
        let (field_end, next) = loop {
            match find_crlf(&b[q..end]) {
                Some(i) => {
                    let c = q + i;
                    if c + 2 < end && matches!(b[c + 2], b' ' | b'\t') {
                        q = c + 2;
                        continue;
                    }
                    break (c, c + 2);
                }
                None => break (end, end),
            }
        };
        p = next;
        if fields.len() >= MAX_HEADERS {
            set(fail, Fail::bad("too many header fields"));
            break;
        }
        if field_end - line_start > MAX_FIELD_LEN {
            set(fail, Fail::bad("header field too long"));
            continue;
        }
        let line = &b[line_start..field_end];
        if has_bare_cr_lf(line) {
            set(fail, Fail::drop("bare CR or LF in header section"));
            continue;
        }
        let Some(colon) = memchr(b':', line) else {
            set(fail, Fail::bad("malformed header line (no colon)"));
            continue;
        };
        let mut name_end = colon;
        while name_end > 0 && matches!(line[name_end - 1], b' ' | b'\t') {
            name_end -= 1;
        }
        let name = &line[..name_end];
        if name.is_empty() || !name.iter().all(|c| is_token_byte(*c)) {
            set(fail, Fail::bad("malformed header name"));
            continue;
        }
        let ws = |c: u8| matches!(c, b' ' | b'\t' | b'\r' | b'\n');
        let mut vs = colon + 1;
        while vs < line.len() && ws(line[vs]) {
            vs += 1;
        }
        let mut ve = line.len();
        while ve > vs && ws(line[ve - 1]) {
            ve -= 1;
        }
        fields.push(Field {
            id: index_of_name(name),
            data: FieldData::Orig {
                line: r(line_start, next),
                name: r(line_start, line_start + name_end),
                value: r(line_start + vs, line_start + ve),
            },
        });
    }
    fields
}

/// The eager headers as found, before the "missing" checks.
#[derive(Default)]
struct Found {
    vias: Vec<Via>,
    from: Option<NameAddr>,
    to: Option<NameAddr>,
    call_id: Option<String>,
    cseq: Option<CSeq>,
    max_forwards: Option<u32>,
    content_length: Option<usize>,
    seen_mf: bool,
}

fn once<T>(slot: &mut Option<T>, name: &str, v: Result<T, ParseError>) -> Result<(), Fail> {
    if slot.is_some() {
        return Err(Fail::bad(&format!("multiple {name} header fields")));
    }
    match v {
        Ok(v) => {
            *slot = Some(v);
            Ok(())
        }
        Err(_) => Err(Fail::bad(&format!("malformed {name}"))),
    }
}

/// Parses the eager headers (Via, From, To, Call-ID, CSeq, Max-Forwards,
/// Content-Length) in field order; the first fault is returned.
fn eager_fields(b: &[u8], fields: &[Field]) -> Result<Found, Fail> {
    let mut f = Found::default();
    for field in fields {
        let FieldData::Orig { value, .. } = &field.data else {
            continue;
        };
        let raw = &b[value.range()];
        match field.id {
            hid::VIA => {
                let text = value_text(raw);
                for e in split_list_raw(text.as_bytes()) {
                    if e.is_empty() {
                        return Err(Fail::bad("malformed Via (empty value)"));
                    }
                    let via = Via::parse(&text[e]).map_err(|_| Fail::bad("malformed Via"))?;
                    if f.vias.len() >= MAX_VIAS {
                        return Err(Fail::bad("too many Via values"));
                    }
                    f.vias.push(via);
                }
            }
            hid::FROM => once(&mut f.from, "From", NameAddr::parse(&value_text(raw)))?,
            hid::TO => once(&mut f.to, "To", NameAddr::parse(&value_text(raw)))?,
            hid::CALL_ID => once(&mut f.call_id, "Call-ID", parse_call_id(&value_text(raw)))?,
            hid::CSEQ => once(&mut f.cseq, "CSeq", CSeq::parse(&value_text(raw)))?,
            hid::MAX_FORWARDS => {
                if f.seen_mf {
                    return Err(Fail::bad("multiple Max-Forwards header fields"));
                }
                f.seen_mf = true;
                let v = parse_max_forwards(&value_text(raw)).map_err(|_| Fail::bad("malformed Max-Forwards"))?;
                f.max_forwards = Some(v);
            }
            hid::CONTENT_LENGTH => {
                if f.content_length.is_some() {
                    // RFC 4475 §3.3.9: the body cannot be delimited.
                    return Err(Fail::bad("multiple Content-Length values"));
                }
                let v = parse_content_length(&value_text(raw)).map_err(|_| Fail::bad("malformed Content-Length"))?;
                f.content_length = Some(v);
            }
            _ => {}
        }
    }
    Ok(f)
}

/// What is needed to answer a broken request (RFC 3261 §8.2.6): the
/// method, the top Via (leniently parsed, RFC 4475 §3.1.2.1), and the
/// Via/From/To/Call-ID/CSeq lines as written.
fn build_partial(b: &[u8], method: Method, fields: &[Field]) -> Option<Box<PartialRequest>> {
    let orig = |f: &Field| match &f.data {
        FieldData::Orig { name, value, .. } => Some((&b[name.range()], &b[value.range()])),
        FieldData::New(_) => None,
    };
    let (_, via_raw) = fields.iter().find(|f| f.id == hid::VIA).and_then(orig)?;
    let text = value_text(via_raw);
    let first = split_list_raw(text.as_bytes()).into_iter().next()?;
    let elem = &text[first];
    let top_via = Via::parse(elem).ok().or_else(|| Via::parse_lenient(elem))?;
    let copy = fields
        .iter()
        .filter(|f| matches!(f.id, hid::VIA | hid::FROM | hid::TO | hid::CALL_ID | hid::CSEQ))
        .filter_map(orig)
        .map(|(n, v)| (as_text(n).into_owned(), v.to_vec()))
        .collect();
    let has_to_tag = fields.iter().find(|f| f.id == hid::TO).and_then(orig).is_some_and(|(_, v)| {
        let v = value_text(v);
        match NameAddr::parse(&v) {
            Ok(na) => na.tag().is_some(),
            Err(_) => v.to_ascii_lowercase().contains(";tag="),
        }
    });
    Some(Box::new(PartialRequest {
        method,
        top_via,
        copy,
        has_to_tag,
    }))
}

/// Parses one whole message (see [`super::SipMessage::parse`]).
pub(crate) fn parse_message(buf: Bytes) -> Result<Inner, ParseError> {
    let b: &[u8] = &buf;
    if b.len() > MAX_MESSAGE_LEN {
        return Err(Fail::drop("message too large").into_error());
    }
    let mut pos = 0;
    while b[pos..].starts_with(b"\r\n") {
        pos += 2;
    }
    if pos >= b.len() {
        return Err(Fail::drop("empty message").into_error());
    }
    let Some(sl_len) = find_crlf(&b[pos..]) else {
        return Err(Fail::drop("no CRLF after the start line").into_error());
    };
    let sl_end = pos + sl_len;
    let start_bytes = &b[pos..sl_end];
    if memchr::memchr2(b'\r', b'\n', start_bytes).is_some() {
        return Err(Fail::drop("bare CR or LF in the start line").into_error());
    }
    let hdr_from = sl_end + 2;
    let (hdr_end, body_start, terminated) = if b[sl_end..].starts_with(b"\r\n\r\n") {
        (hdr_from, sl_end + 4, true)
    } else {
        match find_crlfcrlf(&b[hdr_from..]) {
            Some(i) => (hdr_from + i + 2, hdr_from + i + 4, true),
            None => (b.len(), b.len(), false),
        }
    };

    let mut fail: Option<Fail> = None;
    let is_response = start_bytes.len() >= 4 && start_bytes[..4].eq_ignore_ascii_case(b"SIP/");
    let (method, start) = if is_response {
        (None, parse_status_line(start_bytes))
    } else {
        parse_request_line(start_bytes)
    };
    let start = match start {
        Ok(s) => Some(s),
        Err(f) => {
            set(&mut fail, f);
            None
        }
    };
    let fields = scan_fields(b, hdr_from, hdr_end, &mut fail);

    let mut found = Found::default();
    if fail.is_none() {
        match eager_fields(b, &fields) {
            Ok(f) => found = f,
            Err(f) => set(&mut fail, f),
        }
    }
    if fail.is_none() {
        let missing: Vec<&str> = [
            ("Via", found.vias.is_empty()),
            ("From", found.from.is_none()),
            ("To", found.to.is_none()),
            ("Call-ID", found.call_id.is_none()),
            ("CSeq", found.cseq.is_none()),
        ]
        .into_iter()
        .filter_map(|(n, m)| m.then_some(n))
        .collect();
        if !missing.is_empty() {
            set(&mut fail, Fail::bad(&format!("missing {}", missing.join(", "))));
        }
    }
    if fail.is_none() && !terminated {
        set(&mut fail, Fail::bad("missing empty line after header fields"));
    }
    let body = match found.content_length {
        Some(cl) if body_start.checked_add(cl).is_none_or(|e| e > b.len()) => {
            // RFC 3261 §18.3 / RFC 4475 §3.1.2.2.
            set(&mut fail, Fail::bad("Content-Length larger than message"));
            r(body_start, b.len())
        }
        Some(cl) => r(body_start, body_start + cl),
        None => r(body_start, b.len()),
    };

    if let Some(f) = fail {
        let partial = match method {
            Some(m) if f.replyable && !is_response && !has_lone_cr_lf(&b[hdr_from..hdr_end]) => build_partial(b, m, &fields),
            _ => None,
        };
        let mut e = f.into_error();
        e.partial = partial;
        return Err(e);
    }
    let (Some(start), Some(from), Some(to), Some(call_id), Some(cseq)) = (start, found.from, found.to, found.call_id, found.cseq) else {
        return Err(Fail::drop("internal parser state").into_error());
    };
    let eager = Eager {
        vias: found.vias,
        from,
        to,
        call_id,
        cseq,
        max_forwards: found.max_forwards,
        content_length: found.content_length,
    };
    let orig_len = b.len();
    Ok(Inner {
        msg: r(pos, body.e as usize),
        start,
        start_line: r(pos, sl_end),
        start_dirty: false,
        fields,
        body: Body::Orig(body),
        dirty: false,
        eager,
        orig_len,
        buf,
    })
}

/// Splits a message the core built itself (always well framed) into
/// fields without the strict checks; eager values are filled leniently.
pub(crate) fn parse_built(buf: Bytes, start: StartLine) -> Inner {
    let b: &[u8] = &buf;
    let len = b.len();
    let sl_end = find_crlf(b).unwrap_or(len);
    let hdr_from = (sl_end + 2).min(b.len());
    let (hdr_end, body_start) = if b[sl_end..].starts_with(b"\r\n\r\n") {
        (hdr_from, sl_end + 4)
    } else {
        match find_crlfcrlf(&b[hdr_from..]) {
            Some(i) => (hdr_from + i + 2, hdr_from + i + 4),
            None => (b.len(), b.len()),
        }
    };
    let mut ignored = None;
    let fields = scan_fields(b, hdr_from, hdr_end, &mut ignored);
    let method = match &start {
        StartLine::Request { method, .. } => method.clone(),
        StartLine::Response { .. } => Method::Options,
    };
    let mut inner = Inner {
        msg: r(0, len),
        start,
        start_line: r(0, sl_end),
        start_dirty: false,
        fields,
        body: Body::Orig(r(body_start, len)),
        dirty: false,
        eager: Eager::placeholder(method),
        orig_len: len,
        buf,
    };
    inner.refresh_all();
    inner.eager.content_length = Some(len - body_start);
    inner
}
