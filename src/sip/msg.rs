//! The SIP message: original bytes plus an editable header list.
//!
//! A message is parsed once on arrival. Untouched header lines are kept as
//! ranges into the original buffer and written out byte-identical; a header
//! the script or the core edits is replaced by new text. Reads always see
//! the current state (DESIGN.md: edits are visible to later reads, unlike
//! SER's lumps).

use std::borrow::Cow;
use std::ops::Range;

use bytes::Bytes;

use super::header::{CSeq, EMPTY_VIA, HeaderName, NameAddr, Via, canonical_other, hid, index_of_name, is_list_index, split_list};
use super::method::Method;
use super::parse::{as_text, is_token_byte, parse_call_id, parse_content_length, parse_max_forwards, parse_message, unfold, value_text};
use super::uri::{Scheme, Uri};

/// Why a message could not be parsed, and what to answer (RFC 4475 §3.1.2,
/// §3.3). `status` is 400 (malformed) or 505 (unsupported SIP version);
/// `reason` names the fault and is used as the reply's reason phrase, e.g.
/// `Bad Request - malformed CSeq`. [`semantic_check`] also uses this type
/// for the 416/420/501 answers a proxy gives before routing.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{status} {reason}")]
pub struct ParseError {
    /// The status code to answer with (when `partial` allows an answer;
    /// RFC 3261 §21.4.1 400, §21.5.6 505).
    pub status: u16,
    /// The reason phrase, naming the fault (RFC 3261 §21.4.1: "the
    /// reason phrase SHOULD identify the syntax problem in more detail").
    pub reason: String,
    /// Present when the broken message is a request whose start line and top
    /// Via could be read: enough to send the error reply back. `None` means
    /// the message must be dropped silently (a broken response, or a request
    /// with no usable Via).
    pub partial: Option<Box<PartialRequest>>,
}

impl ParseError {
    /// A 400 error without reply information (RFC 3261 §21.4.1; used
    /// inside value parsers; the message parser attaches `partial` where it
    /// can).
    pub fn bad(reason: impl Into<String>) -> ParseError {
        ParseError {
            status: 400,
            reason: reason.into(),
            partial: None,
        }
    }
}

/// What is known of a malformed request: enough to build the `400`/`505`
/// reply of RFC 3261 §8.2.6 (Via, From, To, Call-ID and CSeq are copied as
/// written, even when one of them is the broken one).
#[derive(Clone, Debug)]
pub struct PartialRequest {
    /// The request method (from the first token of the Request-Line;
    /// the reply's CSeq carries it, RFC 3261 §8.2.6.2).
    pub method: Method,
    /// The top Via, parsed (the reply is routed by it, RFC 3261 §18.2.2).
    pub top_via: Via,
    /// Header lines to copy into the reply (RFC 3261 §8.2.6.2), in order:
    /// every Via, From, To,
    /// Call-ID, CSeq — each as `(name as written, value as written)`.
    pub copy: Vec<(String, Vec<u8>)>,
    /// The To header carries a tag already (else the reply adds one, RFC
    /// 3261 §8.2.6.2).
    pub has_to_tag: bool,
}

/// The first line of a message (RFC 3261 §7.1, §7.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartLine {
    /// `Method SP Request-URI SP SIP/2.0` (RFC 3261 §7.1).
    Request {
        /// The method (case-sensitive).
        method: Method,
        /// The Request-URI.
        uri: Uri,
    },
    /// `SIP/2.0 SP Status-Code SP Reason-Phrase` (RFC 3261 §7.2).
    Response {
        /// The status code, 100–699.
        status: u16,
        /// The reason phrase (may be empty, RFC 4475 §3.1.1.13).
        reason: String,
    },
}

/// A parsed SIP message (RFC 3261 §7): start line, header fields, body.
/// Cheap to clone (the original bytes are shared).
#[derive(Clone, Debug)]
pub struct SipMessage {
    // The parser implementation owns the private fields; see the module doc.
    pub(crate) inner: Inner,
}

/// A byte range into the message buffer (u32: messages are capped far
/// below 4 GiB).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct R {
    pub(crate) s: u32,
    pub(crate) e: u32,
}

impl R {
    pub(crate) fn range(self) -> Range<usize> {
        self.s as usize..self.e as usize
    }
}

/// One header field: its name index and either ranges into the original
/// buffer (untouched, written byte-identical) or new text.
#[derive(Clone, Debug)]
pub(crate) struct Field {
    pub(crate) id: u8,
    pub(crate) data: FieldData,
}

#[derive(Clone, Debug)]
pub(crate) enum FieldData {
    /// `line` is the whole field with folding and its CRLF; `name` as
    /// written; `value` without the surrounding LWS.
    Orig { line: R, name: R, value: R },
    /// A field added or edited after parsing.
    New(Box<NewField>),
}

#[derive(Clone, Debug)]
pub(crate) struct NewField {
    pub(crate) name: String,
    pub(crate) value: Vec<u8>,
}

#[derive(Clone, Debug)]
pub(crate) enum Body {
    Orig(R),
    New(Bytes),
}

/// The eagerly parsed headers, kept in step with edits.
#[derive(Clone, Debug)]
pub(crate) struct Eager {
    pub(crate) vias: Vec<Via>,
    pub(crate) from: NameAddr,
    pub(crate) to: NameAddr,
    pub(crate) call_id: String,
    pub(crate) cseq: CSeq,
    pub(crate) max_forwards: Option<u32>,
    pub(crate) content_length: Option<usize>,
}

impl Eager {
    pub(crate) fn placeholder(method: Method) -> Eager {
        Eager {
            vias: Vec::new(),
            from: NameAddr::empty(),
            to: NameAddr::empty(),
            call_id: String::new(),
            cseq: CSeq { seq: 0, method },
            max_forwards: None,
            content_length: None,
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Inner {
    /// The buffer as received (the whole datagram).
    pub(crate) buf: Bytes,
    /// The message inside `buf`: after leading CRLFs, up to the end of the
    /// body as delimited by Content-Length.
    pub(crate) msg: R,
    pub(crate) start: StartLine,
    pub(crate) start_line: R,
    pub(crate) start_dirty: bool,
    pub(crate) fields: Vec<Field>,
    pub(crate) body: Body,
    pub(crate) dirty: bool,
    pub(crate) eager: Eager,
    pub(crate) orig_len: usize,
}

/// How a header name is matched against fields.
enum Target<'a> {
    Known(u8),
    Other(&'a [u8]),
}

fn target(name: &HeaderName) -> Target<'_> {
    match name.index() {
        hid::OTHER => Target::Other(canonical_other(name.as_str().trim().as_bytes())),
        i => Target::Known(i),
    }
}

/// New header text may not break the message's line structure: CR and LF
/// become SP.
fn sanitize(value: &[u8]) -> Vec<u8> {
    value.iter().map(|&c| if c == b'\r' || c == b'\n' { b' ' } else { c }).collect()
}

fn new_field(name: &HeaderName, value: Vec<u8>) -> Field {
    Field {
        id: name.index(),
        data: FieldData::New(Box::new(NewField {
            name: name.as_str().trim().to_string(),
            value,
        })),
    }
}

impl Inner {
    fn name_of<'a>(&'a self, f: &'a Field) -> &'a [u8] {
        match &f.data {
            FieldData::Orig { name, .. } => &self.buf[name.range()],
            FieldData::New(n) => n.name.as_bytes(),
        }
    }

    fn value_of<'a>(&'a self, f: &'a Field) -> &'a [u8] {
        match &f.data {
            FieldData::Orig { value, .. } => &self.buf[value.range()],
            FieldData::New(n) => &n.value,
        }
    }

    fn matches(&self, f: &Field, t: &Target<'_>) -> bool {
        match t {
            Target::Known(i) => f.id == *i,
            Target::Other(n) => f.id == hid::OTHER && canonical_other(self.name_of(f)).eq_ignore_ascii_case(n),
        }
    }

    fn is_list(&self, f: &Field) -> bool {
        is_list_index(f.id, self.name_of(f))
    }

    fn first_value_text(&self, id: u8) -> Option<Cow<'_, str>> {
        self.fields.iter().find(|f| f.id == id).map(|f| value_text(self.value_of(f)))
    }

    /// Re-derives the cached eager value for `id` from the current fields.
    /// A value that no longer parses keeps the previous one (From, To,
    /// CSeq, Call-ID); Via keeps the values that parse.
    pub(crate) fn refresh(&mut self, id: u8) {
        match id {
            hid::VIA => {
                let mut vias = Vec::new();
                for f in self.fields.iter().filter(|f| f.id == hid::VIA) {
                    let text = value_text(self.value_of(f));
                    for e in split_list(text.as_bytes()) {
                        if let Ok(v) = Via::parse(&text[e]) {
                            vias.push(v);
                        }
                    }
                }
                self.eager.vias = vias;
            }
            hid::FROM => {
                if let Some(Ok(v)) = self.first_value_text(id).map(|t| NameAddr::parse(&t)) {
                    self.eager.from = v;
                }
            }
            hid::TO => {
                if let Some(Ok(v)) = self.first_value_text(id).map(|t| NameAddr::parse(&t)) {
                    self.eager.to = v;
                }
            }
            hid::CALL_ID => {
                if let Some(Ok(v)) = self.first_value_text(id).map(|t| parse_call_id(&t)) {
                    self.eager.call_id = v;
                }
            }
            hid::CSEQ => {
                if let Some(Ok(v)) = self.first_value_text(id).map(|t| CSeq::parse(&t)) {
                    self.eager.cseq = v;
                }
            }
            hid::MAX_FORWARDS => {
                self.eager.max_forwards = self.first_value_text(id).and_then(|t| parse_max_forwards(&t).ok());
            }
            _ => {}
        }
    }

    pub(crate) fn refresh_all(&mut self) {
        for id in [hid::VIA, hid::FROM, hid::TO, hid::CALL_ID, hid::CSEQ, hid::MAX_FORWARDS] {
            self.refresh(id);
        }
    }

    fn touch(&mut self, id: u8) {
        self.dirty = true;
        self.refresh(id);
    }

    fn body(&self) -> &[u8] {
        match &self.body {
            Body::Orig(r) => &self.buf[r.range()],
            Body::New(b) => b,
        }
    }
}

impl SipMessage {
    /// Parses one complete message (one UDP datagram, or one message framed
    /// by [`super::framing`] on a stream). Leading CRLFs are skipped
    /// (RFC 3261 §7.5). On a datagram the body is cut at Content-Length
    /// (RFC 3261 §18.3: extra bytes are discarded; a Content-Length larger
    /// than the datagram is a 400); a missing Content-Length means the body
    /// runs to the end of the datagram.
    ///
    /// The start line and every Via, From, To, Call-ID, CSeq, Max-Forwards
    /// and Content-Length are parsed here; a fault in one of them (or a
    /// missing one) is a [`ParseError`] whose reason names it (RFC 4475
    /// §3.1.2). Every other header is parsed on demand.
    pub fn parse(buf: Bytes) -> Result<SipMessage, ParseError> {
        parse_message(buf).map(|inner| SipMessage { inner })
    }

    fn build(start_text: String, start: StartLine, headers: &[(HeaderName, &[u8])], body: &[u8]) -> SipMessage {
        let mut v = Vec::with_capacity(start_text.len() + body.len() + 64 * (headers.len() + 1));
        v.extend_from_slice(start_text.as_bytes());
        v.extend_from_slice(b"\r\n");
        for (name, value) in headers {
            if name.index() == hid::CONTENT_LENGTH {
                continue;
            }
            v.extend_from_slice(name.as_str().trim().as_bytes());
            v.extend_from_slice(b": ");
            v.extend_from_slice(&sanitize(value));
            v.extend_from_slice(b"\r\n");
        }
        v.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        v.extend_from_slice(body);
        SipMessage {
            inner: super::parse::parse_built(Bytes::from(v), start),
        }
    }

    /// A new request built by the core (CANCEL, RFC 3261 §9.1; ACK for a
    /// non-2xx, §17.1.1.3; keepalive OPTIONS, §11).
    /// `headers` are `(name, value)` pairs in order; Content-Length is
    /// added from `body`.
    pub fn new_request(method: Method, uri: Uri, headers: &[(HeaderName, &[u8])], body: &[u8]) -> SipMessage {
        let text = format!("{method} {uri} SIP/2.0");
        Self::build(text, StartLine::Request { method, uri }, headers, body)
    }

    /// A new response built by the core (sl_send_reply, 100 Trying, 408,
    /// 487, …; RFC 3261 §8.2.6, §16.7).
    pub fn new_response(status: u16, reason: &str, headers: &[(HeaderName, &[u8])], body: &[u8]) -> SipMessage {
        let reason = String::from_utf8_lossy(&sanitize(reason.as_bytes())).into_owned();
        let text = format!("SIP/2.0 {status} {reason}");
        Self::build(text, StartLine::Response { status, reason }, headers, body)
    }

    // ---- start line -------------------------------------------------------

    /// The start line as it is now (RFC 3261 §7.1, §7.2).
    pub fn start_line(&self) -> &StartLine {
        &self.inner.start
    }

    /// True for requests (RFC 3261 §7.1).
    pub fn is_request(&self) -> bool {
        matches!(self.start_line(), StartLine::Request { .. })
    }

    /// The request method (`None` for a response; RFC 3261 §7.1).
    pub fn method(&self) -> Option<&Method> {
        match self.start_line() {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The Request-URI (`None` for a response; RFC 3261 §7.1, §19.1).
    pub fn ruri(&self) -> Option<&Uri> {
        match self.start_line() {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    /// Replaces the Request-URI (strip, prefix, rewritehost, lookup, …;
    /// RFC 3261 §16.5, §16.6 step 2).
    /// No effect on a response.
    pub fn set_ruri(&mut self, uri: Uri) {
        if let StartLine::Request { uri: u, .. } = &mut self.inner.start {
            *u = uri;
            self.inner.start_dirty = true;
            self.inner.dirty = true;
        }
    }

    /// Status code of a response (RFC 3261 §7.2, §21).
    pub fn status(&self) -> Option<u16> {
        match self.start_line() {
            StartLine::Response { status, .. } => Some(*status),
            StartLine::Request { .. } => None,
        }
    }

    /// Reason phrase of a response (RFC 3261 §7.2).
    pub fn reason(&self) -> Option<&str> {
        match self.start_line() {
            StartLine::Response { reason, .. } => Some(reason),
            StartLine::Request { .. } => None,
        }
    }

    // ---- the eagerly parsed headers ---------------------------------------

    /// Call-ID value (RFC 3261 §20.8; mandatory, §8.1.1; checked on parse).
    pub fn call_id(&self) -> &str {
        &self.inner.eager.call_id
    }

    /// CSeq (RFC 3261 §20.16; mandatory, §8.1.1; checked on parse).
    pub fn cseq(&self) -> &CSeq {
        &self.inner.eager.cseq
    }

    /// From header (RFC 3261 §20.20; mandatory, §8.1.1; checked on parse).
    pub fn from(&self) -> &NameAddr {
        &self.inner.eager.from
    }

    /// To header (RFC 3261 §20.39; mandatory, §8.1.1; checked on parse).
    pub fn to(&self) -> &NameAddr {
        &self.inner.eager.to
    }

    /// Every Via value (RFC 3261 §20.42), top first, split across
    /// comma-separated fields (§7.3.1)
    /// (mandatory: at least one; checked on parse).
    pub fn vias(&self) -> &[Via] {
        &self.inner.eager.vias
    }

    /// The top-most Via (RFC 3261 §18.2.2). On a message whose Vias were all
    /// removed by an edit, an empty Via (empty host) is returned.
    pub fn top_via(&self) -> &Via {
        self.vias().first().unwrap_or(&EMPTY_VIA)
    }

    /// Max-Forwards value (RFC 3261 §20.22), if present (0..=255 is not
    /// enforced; any value
    /// that fits a u32 is accepted, larger is a 400 on parse).
    pub fn max_forwards(&self) -> Option<u32> {
        self.inner.eager.max_forwards
    }

    /// Content-Length as received (RFC 3261 §20.14; None when absent).
    pub fn content_length(&self) -> Option<usize> {
        self.inner.eager.content_length
    }

    // ---- generic header access --------------------------------------------

    /// The value of the first field named `name` (any case, long or compact
    /// form, RFC 3261 §7.3). For list headers (see [`HeaderName::is_list`]) this is the
    /// first list element; otherwise the whole field value. Folded lines
    /// are unfolded (CRLF + WSP → one SP). Leading/trailing LWS trimmed.
    pub fn header(&self, name: &HeaderName) -> Option<Cow<'_, [u8]>> {
        let t = target(name);
        let inner = &self.inner;
        for f in inner.fields.iter().filter(|f| inner.matches(f, &t)) {
            let raw = inner.value_of(f);
            if inner.is_list(f) {
                if let Some(r) = split_list(raw).into_iter().next() {
                    return Some(unfold(&raw[r]));
                }
            } else {
                return Some(unfold(raw));
            }
        }
        None
    }

    /// Every value of `name`, in order (RFC 3261 §7.3.1): list headers
    /// split into elements,
    /// other headers one entry per field.
    pub fn headers(&self, name: &HeaderName) -> Vec<Cow<'_, [u8]>> {
        let t = target(name);
        let inner = &self.inner;
        let mut out = Vec::new();
        for f in inner.fields.iter().filter(|f| inner.matches(f, &t)) {
            let raw = inner.value_of(f);
            if inner.is_list(f) {
                out.extend(split_list(raw).into_iter().map(|r| unfold(&raw[r])));
            } else {
                out.push(unfold(raw));
            }
        }
        out
    }

    /// True when at least one field named `name` exists (RFC 3261 §7.3).
    pub fn has_header(&self, name: &HeaderName) -> bool {
        let t = target(name);
        self.inner.fields.iter().any(|f| self.inner.matches(f, &t))
    }

    /// Every header field in order as `(name as written, value)` (RFC 3261
    /// §7.3; values unfolded).
    pub fn header_fields(&self) -> Vec<(Cow<'_, str>, Cow<'_, [u8]>)> {
        let inner = &self.inner;
        inner
            .fields
            .iter()
            .map(|f| (as_text(inner.name_of(f)), unfold(inner.value_of(f))))
            .collect()
    }

    fn name_addrs(&self, name: &HeaderName) -> Result<Vec<NameAddr>, ParseError> {
        self.headers(name).iter().map(|v| NameAddr::parse(&as_text(v))).collect()
    }

    /// Route header values parsed, top first (RFC 3261 §20.34).
    pub fn routes(&self) -> Result<Vec<NameAddr>, ParseError> {
        self.name_addrs(&HeaderName::Route)
    }

    /// Record-Route header values parsed, top first (RFC 3261 §20.30).
    pub fn record_routes(&self) -> Result<Vec<NameAddr>, ParseError> {
        self.name_addrs(&HeaderName::RecordRoute)
    }

    /// Contact header values parsed (`Contact: *` gives an error here;
    /// check [`SipMessage::header`] for `*` first). A Contact in addr-spec
    /// form keeps its parameters as header parameters (RFC 4475 §3.3.12).
    pub fn contacts(&self) -> Result<Vec<NameAddr>, ParseError> {
        self.name_addrs(&HeaderName::Contact)
    }

    // ---- edits --------------------------------------------------------------

    /// Inserts a field before the first field named `name`, or, when there
    /// is none, as the first header of the message (Via on forwarding,
    /// Record-Route: RFC 3261 §16.6 step 4 and §16.6 step 8). CR and LF in
    /// `value` are replaced by SP.
    pub fn insert_first(&mut self, name: HeaderName, value: &[u8]) {
        let t = target(&name);
        let inner = &mut self.inner;
        let pos = inner.fields.iter().position(|f| inner.matches(f, &t)).unwrap_or(0);
        let f = new_field(&name, sanitize(value));
        let id = f.id;
        inner.fields.insert(pos, f);
        inner.touch(id);
    }

    /// Appends a field after the last header (append_hf, RFC 3261 §7.3.1
    /// ordering is kept for fields of the same name). CR and LF in `value`
    /// are replaced by SP.
    pub fn append_header(&mut self, name: HeaderName, value: &[u8]) {
        let f = new_field(&name, sanitize(value));
        let id = f.id;
        self.inner.fields.push(f);
        self.inner.touch(id);
    }

    /// Appends a raw header line as the script wrote it (`"X-Foo: bar\r\n"`,
    /// CRLF optional). Fails when the line is not `name: value` (RFC 3261
    /// §7.3), or holds a CR or LF that is not a fold.
    pub fn append_header_line(&mut self, line: &[u8]) -> Result<(), ParseError> {
        let bad = || ParseError::bad("malformed header line");
        let line = line.strip_suffix(b"\r\n").unwrap_or(line);
        if super::parse::has_bare_cr_lf(line) {
            return Err(bad());
        }
        let colon = memchr::memchr(b':', line).ok_or_else(bad)?;
        let name = line[..colon].trim_ascii_end();
        if name.is_empty() || !name.iter().all(|c| is_token_byte(*c)) {
            return Err(bad());
        }
        let ws = |c: &u8| matches!(c, b' ' | b'\t' | b'\r' | b'\n');
        let mut value = &line[colon + 1..];
        while value.first().is_some_and(ws) {
            value = &value[1..];
        }
        while value.last().is_some_and(ws) {
            value = &value[..value.len() - 1];
        }
        let id = index_of_name(name);
        self.inner.fields.push(Field {
            id,
            data: FieldData::New(Box::new(NewField {
                name: String::from_utf8_lossy(name).into_owned(),
                value: value.to_vec(),
            })),
        });
        self.inner.touch(id);
        Ok(())
    }

    /// Removes every field named `name` (remove_hf; RFC 3261 §7.3.1);
    /// returns how many were removed.
    pub fn remove_header(&mut self, name: &HeaderName) -> usize {
        let t = target(name);
        let inner = &mut self.inner;
        let before = inner.fields.len();
        let keep: Vec<bool> = inner.fields.iter().map(|f| !inner.matches(f, &t)).collect();
        let mut it = keep.iter();
        inner.fields.retain(|_| *it.next().unwrap_or(&true));
        let removed = before - inner.fields.len();
        if removed > 0 {
            inner.touch(name.index());
        }
        removed
    }

    /// Removes the first list element of `name` (the top Via of a reply,
    /// RFC 3261 §16.7 step 3; the top Route, §16.4): when the first field
    /// holds several comma-separated values, only the first is removed and
    /// the rest of that field is kept. Returns the removed value.
    pub fn remove_first_value(&mut self, name: &HeaderName) -> Option<Vec<u8>> {
        let t = target(name);
        let inner = &mut self.inner;
        let idx = inner.fields.iter().position(|f| inner.matches(f, &t))?;
        let f = &inner.fields[idx];
        let raw = inner.value_of(f);
        let elems = if inner.is_list(f) { split_list(raw) } else { Vec::new() };
        let (removed, rest) = match elems.as_slice() {
            [first, second, ..] => (unfold(&raw[first.clone()]).into_owned(), Some(raw[second.start..].to_vec())),
            [first] => (unfold(&raw[first.clone()]).into_owned(), None),
            [] => (unfold(raw).into_owned(), None),
        };
        let id = f.id;
        match rest {
            Some(rest) => {
                let fname = String::from_utf8_lossy(inner.name_of(f)).into_owned();
                inner.fields[idx] = Field {
                    id,
                    data: FieldData::New(Box::new(NewField { name: fname, value: rest })),
                };
            }
            None => {
                inner.fields.remove(idx);
            }
        }
        inner.touch(id);
        Some(removed)
    }

    /// Replaces the first list element of `name` with `value` (used to add
    /// `received`/`rport` to the top Via, RFC 3261 §18.2.1, RFC 3581 §4).
    /// False when there is no such header.
    pub fn set_first_value(&mut self, name: &HeaderName, value: &[u8]) -> bool {
        let t = target(name);
        let inner = &mut self.inner;
        let Some(idx) = inner.fields.iter().position(|f| inner.matches(f, &t)) else {
            return false;
        };
        let f = &inner.fields[idx];
        let raw = inner.value_of(f);
        let value = sanitize(value);
        let elems = if inner.is_list(f) { split_list(raw) } else { Vec::new() };
        let new_value = match elems.first() {
            Some(e0) if elems.len() > 1 => {
                let mut v = raw[..e0.start].to_vec();
                v.extend_from_slice(&value);
                v.extend_from_slice(&raw[e0.end..]);
                v
            }
            _ => value,
        };
        let id = f.id;
        let fname = String::from_utf8_lossy(inner.name_of(f)).into_owned();
        inner.fields[idx] = Field {
            id,
            data: FieldData::New(Box::new(NewField {
                name: fname,
                value: new_value,
            })),
        };
        inner.touch(id);
        true
    }

    /// Replaces all fields named `name` by one field with `value` at the
    /// position of the first (or appends when absent). Max-Forwards
    /// (RFC 3261 §16.6 step 3), Content-Type, …
    pub fn set_header(&mut self, name: HeaderName, value: &[u8]) {
        let t = target(&name);
        let inner = &mut self.inner;
        let f = new_field(&name, sanitize(value));
        let id = f.id;
        match inner.fields.iter().position(|f| inner.matches(f, &t)) {
            Some(pos) => {
                let keep: Vec<bool> = inner
                    .fields
                    .iter()
                    .enumerate()
                    .map(|(i, f)| i == pos || !inner.matches(f, &t))
                    .collect();
                inner.fields[pos] = f;
                let mut it = keep.iter();
                inner.fields.retain(|_| *it.next().unwrap_or(&true));
            }
            None => inner.fields.push(f),
        }
        inner.touch(id);
    }

    /// The body as it is now (RFC 3261 §7.4).
    pub fn body(&self) -> &[u8] {
        self.inner.body()
    }

    /// Replaces the body (RFC 3261 §7.4); Content-Length is rewritten on
    /// output (§20.14).
    pub fn set_body(&mut self, body: Bytes) {
        self.inner.body = Body::New(body);
        self.inner.dirty = true;
    }

    /// Replaces the whole message with `text` (RFC 3261 §7; textops replace and
    /// search_append edit the raw text); fails, leaving the message
    /// unchanged, when the new text does not parse.
    pub fn replace_text(&mut self, text: Bytes) -> Result<(), ParseError> {
        let mut inner = parse_message(text)?;
        inner.orig_len = self.inner.orig_len;
        inner.dirty = true;
        self.inner = inner;
        Ok(())
    }

    // ---- output -------------------------------------------------------------

    /// Length of the message as received (SER's `msg:len`; the whole
    /// datagram, RFC 3261 §18.3).
    pub fn orig_len(&self) -> usize {
        self.inner.orig_len
    }

    /// True when nothing has been edited since parsing (a proxy then
    /// forwards the bytes as received, RFC 3261 §16.6).
    pub fn is_pristine(&self) -> bool {
        !self.inner.dirty
    }

    /// The message as it would go out now (RFC 3261 §7, §18.1): the
    /// original bytes when nothing
    /// changed (no copy), otherwise the start line, every header (untouched
    /// ones byte-identical), a Content-Length matching the body, the blank
    /// line and the body.
    pub fn to_bytes(&self) -> Bytes {
        if !self.inner.dirty {
            return self.inner.buf.slice(self.inner.msg.range());
        }
        let mut out = Vec::with_capacity(self.inner.msg.range().len() + 256);
        self.write_to(&mut out);
        Bytes::from(out)
    }

    /// Appends the message as it would go out now to `out` (see
    /// [`SipMessage::to_bytes`]; RFC 3261 §7).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let inner = &self.inner;
        if !inner.dirty {
            out.extend_from_slice(&inner.buf[inner.msg.range()]);
            return;
        }
        if inner.start_dirty {
            match &inner.start {
                StartLine::Request { method, uri } => {
                    out.extend_from_slice(format!("{method} {uri} SIP/2.0").as_bytes());
                }
                StartLine::Response { status, reason } => {
                    out.extend_from_slice(format!("SIP/2.0 {status} {reason}").as_bytes());
                }
            }
        } else {
            out.extend_from_slice(&inner.buf[inner.start_line.range()]);
        }
        out.extend_from_slice(b"\r\n");
        let body = inner.body();
        let mut cl_done = false;
        for f in &inner.fields {
            if f.id == hid::CONTENT_LENGTH {
                if cl_done {
                    continue;
                }
                cl_done = true;
                let current = parse_content_length(&value_text(inner.value_of(f))).ok();
                if current != Some(body.len()) || matches!(f.data, FieldData::New(_)) {
                    out.extend_from_slice(inner.name_of(f));
                    out.extend_from_slice(format!(": {}\r\n", body.len()).as_bytes());
                    continue;
                }
            }
            match &f.data {
                FieldData::Orig { line, .. } => {
                    let l = &inner.buf[line.range()];
                    out.extend_from_slice(l);
                    if !l.ends_with(b"\r\n") {
                        out.extend_from_slice(b"\r\n");
                    }
                }
                FieldData::New(n) => {
                    out.extend_from_slice(n.name.as_bytes());
                    out.extend_from_slice(b": ");
                    out.extend_from_slice(&n.value);
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
        if !cl_done {
            out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(body);
    }
}

/// Option tags a proxy understands in Proxy-Require (RFC 3261 §16.3 step
/// 5). serlua implements none of the proxy-level extensions that use it.
pub const PROXY_SUPPORTED: &[&str] = &[];

/// The Proxy-Require option tags of `msg` that this proxy does not
/// support (RFC 3261 §16.3 step 5): the core lists them in the
/// `Unsupported` header of the 420 that [`semantic_check`] asks for.
pub fn unsupported_proxy_require(msg: &SipMessage) -> Vec<String> {
    msg.headers(&HeaderName::ProxyRequire)
        .iter()
        .map(|v| as_text(v).trim().to_string())
        .filter(|t| !t.is_empty() && !PROXY_SUPPORTED.iter().any(|s| s.eq_ignore_ascii_case(t)))
        .collect()
}

fn reject(status: u16, reason: &str) -> ParseError {
    ParseError {
        status,
        reason: reason.to_string(),
        partial: None,
    }
}

/// The request validation a proxy does before routing (RFC 3261 §16.3),
/// beyond the syntax checks of [`SipMessage::parse`]. The core calls it on
/// every parsed request and answers statelessly with `status`/`reason`
/// when it fails (`partial` is always `None`: the message parsed, so the
/// reply is built from it). Responses always pass.
///
/// - CSeq method differs from the request method (RFC 4475 §3.1.2.17,
///   `mismatch01`): 400 "Bad Request - CSeq method mismatch"; when the
///   request method is one the proxy does not know (§3.1.2.18,
///   `mismatch02`): 501 "Not Implemented - CSeq method mismatch", which
///   that section prefers at proxies.
/// - Request-URI scheme other than sip, sips or tel (RFC 3261 §16.3 step
///   2; RFC 4475 §3.3.2 `unkscm`, §3.3.3 `novelsc`): 416.
/// - Max-Forwards is not checked here: the script's
///   `mf_process_maxfwd_header` answers 483 (RFC 4475 §3.3.11 `zeromf`), as
///   ser.cfg's sanity section does, and tm refuses to forward a request
///   whose Max-Forwards is 0 (RFC 3261 §16.3 step 2).
/// - Proxy-Require with an option tag not in [`PROXY_SUPPORTED`] (RFC 3261
///   §16.3 step 5; RFC 4475 §3.3.5 `bext01`): 420 "Bad Extension"; the
///   reply lists [`unsupported_proxy_require`] in `Unsupported`.
///
/// Not a proxy's concern, so not checked: Require (the UAS answers 420),
/// an unknown Content-Type or Content-Encoding (415 by the UAS, RFC 4475
/// §3.3.6), Accept (§3.3.15), Authorization schemes (§3.3.7), the schemes
/// of URIs in To/From/Contact (§3.3.4), Expires ranges.
pub fn semantic_check(msg: &SipMessage) -> Result<(), ParseError> {
    let StartLine::Request { method, uri } = msg.start_line() else {
        return Ok(());
    };
    if msg.cseq().method != *method {
        return Err(match method {
            Method::Other(_) => reject(501, "Not Implemented - CSeq method mismatch"),
            _ => reject(400, "Bad Request - CSeq method mismatch"),
        });
    }
    if !matches!(uri.scheme, Scheme::Sip | Scheme::Sips | Scheme::Tel) {
        return Err(reject(416, "Unsupported URI Scheme"));
    }
    if !unsupported_proxy_require(msg).is_empty() {
        return Err(reject(420, "Bad Extension"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVITE: &[u8] = b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP pc33.atlanta.example.com;branch=z9hG4bK776asdhds\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@pc33.atlanta.example.com>\r\n\
Route: <sip:p1.example.com;lr>, <sip:p2.example.com;lr>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\
\r\n\
v=0\n";

    fn msg() -> SipMessage {
        SipMessage::parse(Bytes::from_static(INVITE)).expect("parses")
    }

    #[test]
    fn pristine_is_zero_copy() {
        let m = msg();
        assert!(m.is_pristine());
        let out = m.to_bytes();
        assert_eq!(&out[..], INVITE);
        assert_eq!(out.as_ptr(), INVITE.as_ptr());
    }

    #[test]
    fn eager_values() {
        let m = msg();
        assert_eq!(m.method(), Some(&Method::Invite));
        assert_eq!(m.top_via().branch(), Some("z9hG4bK776asdhds"));
        assert_eq!(m.from().tag(), Some("1928301774"));
        assert_eq!(m.to().display.as_deref(), Some("Bob"));
        assert_eq!(m.cseq().seq, 314159);
        assert_eq!(m.max_forwards(), Some(70));
        assert_eq!(m.content_length(), Some(4));
        assert_eq!(m.body(), b"v=0\n");
        assert_eq!(m.routes().expect("routes").len(), 2);
    }

    #[test]
    fn edits_keep_untouched_lines() {
        let mut m = msg();
        m.insert_first(HeaderName::Via, b"SIP/2.0/UDP proxy.example.com;branch=z9hG4bKx");
        m.set_header(HeaderName::MaxForwards, b"69");
        assert_eq!(m.vias().len(), 2);
        assert_eq!(m.top_via().host.text, "proxy.example.com");
        assert_eq!(m.max_forwards(), Some(69));
        let out = m.to_bytes();
        let text = String::from_utf8_lossy(&out);
        assert!(text.starts_with(
            "INVITE sip:bob@biloxi.example.com SIP/2.0\r\nVia: SIP/2.0/UDP proxy.example.com;branch=z9hG4bKx\r\nVia: SIP/2.0/UDP pc33"
        ));
        assert!(text.contains("\r\nMax-Forwards: 69\r\nTo: Bob <sip:bob@biloxi.example.com>\r\n"));
        let again = SipMessage::parse(out).expect("reparses");
        assert_eq!(again.vias().len(), 2);
        assert_eq!(
            m.remove_first_value(&HeaderName::Route).as_deref(),
            Some(&b"<sip:p1.example.com;lr>"[..])
        );
        assert_eq!(m.routes().expect("routes").len(), 1);
        let out = m.to_bytes();
        assert!(String::from_utf8_lossy(&out).contains("\r\nRoute: <sip:p2.example.com;lr>\r\n"));
    }

    #[test]
    fn body_change_rewrites_content_length() {
        let mut m = msg();
        m.set_body(Bytes::from_static(b"v=0\r\no=x\r\n"));
        let out = m.to_bytes();
        let again = SipMessage::parse(out).expect("reparses");
        assert_eq!(again.content_length(), Some(10));
        assert_eq!(again.body(), b"v=0\r\no=x\r\n");
    }

    #[test]
    fn set_first_value_keeps_rest_of_field() {
        let mut m = SipMessage::parse(Bytes::from_static(
            b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a.example.com;branch=z9hG4bK1 , SIP/2.0/UDP b.example.com;branch=z9hG4bK2\r\nFrom: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.com>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        ))
        .expect("parses");
        assert!(m.set_first_value(&HeaderName::Via, b"SIP/2.0/UDP a.example.com;branch=z9hG4bK1;received=192.0.2.1"));
        assert_eq!(m.vias().len(), 2);
        assert_eq!(m.top_via().received(), Some("192.0.2.1".parse().expect("ip")));
        let removed = m.remove_first_value(&HeaderName::Via).expect("removed");
        assert!(removed.ends_with(b"received=192.0.2.1"));
        assert_eq!(m.vias().len(), 1);
        assert_eq!(m.top_via().host.text, "b.example.com");
        assert_eq!(m.remove_first_value(&HeaderName::Via).map(|v| !v.is_empty()), Some(true));
        assert!(m.vias().is_empty());
        assert_eq!(m.top_via().host.text, "");
    }

    #[test]
    fn built_messages() {
        let uri = Uri::parse("sip:alice@192.0.2.1:5070").expect("uri");
        let m = SipMessage::new_request(
            Method::Options,
            uri,
            &[
                (HeaderName::Via, b"SIP/2.0/UDP 192.0.2.9;branch=z9hG4bKk1"),
                (HeaderName::From, b"<sip:ping@192.0.2.9>;tag=1"),
                (HeaderName::To, b"<sip:alice@192.0.2.1:5070>"),
                (HeaderName::CallId, b"k1@192.0.2.9"),
                (HeaderName::CSeq, b"1 OPTIONS"),
            ],
            b"",
        );
        assert_eq!(m.call_id(), "k1@192.0.2.9");
        assert_eq!(m.cseq().method, Method::Options);
        let reparsed = SipMessage::parse(m.to_bytes()).expect("reparses");
        assert_eq!(reparsed.content_length(), Some(0));
        let r = SipMessage::new_response(100, "Trying", &[(HeaderName::Via, b"SIP/2.0/UDP x.example.com")], b"");
        assert_eq!(r.status(), Some(100));
        assert_eq!(r.vias().len(), 1);
        assert!(
            r.to_bytes()
                .starts_with(b"SIP/2.0 100 Trying\r\nVia: SIP/2.0/UDP x.example.com\r\nContent-Length: 0\r\n\r\n")
        );
    }

    #[test]
    fn header_lookup_by_any_form() {
        let m = msg();
        assert!(m.has_header(&HeaderName::from_text("v")));
        assert!(m.has_header(&HeaderName::Other("CONTENT-TYPE".into())));
        assert_eq!(m.header(&HeaderName::from_text("c")).as_deref(), Some(&b"application/sdp"[..]));
        let mut m = m;
        m.append_header_line(b"X-Foo: bar\r\n").expect("line");
        assert_eq!(m.header(&HeaderName::Other("x-foo".into())).as_deref(), Some(&b"bar"[..]));
        assert!(m.append_header_line(b"X-Foo: bar\r\nX-Evil: 1").is_err());
        assert_eq!(m.remove_header(&HeaderName::Other("X-FOO".into())), 1);
    }
}
