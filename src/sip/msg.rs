//! The SIP message: original bytes plus an editable header list.
//!
//! A message is parsed once on arrival. Untouched header lines are kept as
//! ranges into the original buffer and written out byte-identical; a header
//! the script or the core edits is replaced by new text. Reads always see
//! the current state (DESIGN.md: edits are visible to later reads, unlike
//! SER's lumps).

use std::borrow::Cow;

use bytes::Bytes;

use super::header::{CSeq, HeaderName, NameAddr, Via};
use super::method::Method;
use super::uri::Uri;

/// Why a message could not be parsed, and what to answer (RFC 4475 §3.1.2,
/// §3.3). `status` is 400 (malformed) or 505 (unsupported SIP version);
/// `reason` names the fault and is used as the reply's reason phrase, e.g.
/// `Bad Request - malformed CSeq`.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{status} {reason}")]
pub struct ParseError {
    pub status: u16,
    pub reason: String,
    /// Present when the broken message is a request whose start line and top
    /// Via could be read: enough to send the error reply back. `None` means
    /// the message must be dropped silently (a broken response, or a request
    /// with no usable Via).
    pub partial: Option<Box<PartialRequest>>,
}

impl ParseError {
    /// A 400 error without reply information (used inside value parsers;
    /// the message parser attaches `partial` where it can).
    pub fn bad(reason: impl Into<String>) -> ParseError {
        ParseError { status: 400, reason: reason.into(), partial: None }
    }
}

/// What is known of a malformed request: enough to build the `400`/`505`
/// reply of RFC 3261 §8.2.6 (Via, From, To, Call-ID and CSeq are copied as
/// written, even when one of them is the broken one).
#[derive(Clone, Debug)]
pub struct PartialRequest {
    pub method: Method,
    /// The top Via, parsed (the reply is routed by it, RFC 3261 §18.2.2).
    pub top_via: Via,
    /// Header lines to copy into the reply, in order: every Via, From, To,
    /// Call-ID, CSeq — each as `(name as written, value as written)`.
    pub copy: Vec<(String, Vec<u8>)>,
    /// The To header carries a tag already.
    pub has_to_tag: bool,
}

/// The first line of a message (RFC 3261 §7.1, §7.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartLine {
    Request { method: Method, uri: Uri },
    Response { status: u16, reason: String },
}

/// A parsed SIP message. Cheap to clone (the original bytes are shared).
#[derive(Clone, Debug)]
pub struct SipMessage {
    // The parser implementation owns the private fields; see the module doc.
    pub(crate) inner: Inner,
}

#[derive(Clone, Debug)]
pub(crate) struct Inner {
    // Filled in by the implementation.
}

impl SipMessage {
    /// Parses one complete message (one UDP datagram, or one message framed
    /// by [`super::framing`] on a stream). Leading CRLFs are skipped
    /// (RFC 3261 §7.5). On a datagram the body is cut at Content-Length
    /// (RFC 3261 §18.3: extra bytes are discarded; a Content-Length larger
    /// than the datagram is a 400); a missing Content-Length means the body
    /// runs to the end of the datagram.
    pub fn parse(buf: Bytes) -> Result<SipMessage, ParseError> {
        todo!("{}", buf.len())
    }

    /// A new request built by the core (CANCEL, ACK, keepalive OPTIONS).
    /// `headers` are `(name, value)` pairs in order; Content-Length is
    /// added from `body`.
    pub fn new_request(method: Method, uri: Uri, headers: &[(HeaderName, &[u8])], body: &[u8]) -> SipMessage {
        todo!("{method}{uri}{}{}", headers.len(), body.len())
    }

    /// A new response built by the core (sl_send_reply, 100 Trying, 408,
    /// 487, …).
    pub fn new_response(status: u16, reason: &str, headers: &[(HeaderName, &[u8])], body: &[u8]) -> SipMessage {
        todo!("{status}{reason}{}{}", headers.len(), body.len())
    }

    // ---- start line -------------------------------------------------------

    /// The start line as it is now.
    pub fn start_line(&self) -> &StartLine {
        todo!()
    }

    /// True for requests.
    pub fn is_request(&self) -> bool {
        matches!(self.start_line(), StartLine::Request { .. })
    }

    /// The request method (`None` for a response).
    pub fn method(&self) -> Option<&Method> {
        match self.start_line() {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    /// The Request-URI (`None` for a response).
    pub fn ruri(&self) -> Option<&Uri> {
        match self.start_line() {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    /// Replaces the Request-URI (strip, prefix, rewritehost, lookup, …).
    /// No effect on a response.
    pub fn set_ruri(&mut self, uri: Uri) {
        todo!("{uri}")
    }

    /// Status code of a response.
    pub fn status(&self) -> Option<u16> {
        match self.start_line() {
            StartLine::Response { status, .. } => Some(*status),
            StartLine::Request { .. } => None,
        }
    }

    /// Reason phrase of a response.
    pub fn reason(&self) -> Option<&str> {
        match self.start_line() {
            StartLine::Response { reason, .. } => Some(reason),
            StartLine::Request { .. } => None,
        }
    }

    // ---- the eagerly parsed headers ---------------------------------------

    /// Call-ID value (mandatory; checked on parse).
    pub fn call_id(&self) -> &str {
        todo!()
    }

    /// CSeq (mandatory; checked on parse).
    pub fn cseq(&self) -> &CSeq {
        todo!()
    }

    /// From header (mandatory; checked on parse).
    pub fn from(&self) -> &NameAddr {
        todo!()
    }

    /// To header (mandatory; checked on parse).
    pub fn to(&self) -> &NameAddr {
        todo!()
    }

    /// Every Via value, top first, split across comma-separated fields
    /// (mandatory: at least one; checked on parse).
    pub fn vias(&self) -> &[Via] {
        todo!()
    }

    /// The top-most Via.
    pub fn top_via(&self) -> &Via {
        &self.vias()[0]
    }

    /// Max-Forwards value, if present (0..=255 is not enforced; any value
    /// that fits a u32 is accepted, larger is a 400 on parse).
    pub fn max_forwards(&self) -> Option<u32> {
        todo!()
    }

    /// Content-Length as received (None when absent).
    pub fn content_length(&self) -> Option<usize> {
        todo!()
    }

    // ---- generic header access --------------------------------------------

    /// The value of the first field named `name` (any case, long or compact
    /// form). For list headers (see [`HeaderName::is_list`]) this is the
    /// first list element; otherwise the whole field value. Folded lines
    /// are unfolded (CRLF + WSP → one SP). Leading/trailing LWS trimmed.
    pub fn header(&self, name: &HeaderName) -> Option<Cow<'_, [u8]>> {
        todo!("{name}")
    }

    /// Every value of `name`, in order: list headers split into elements,
    /// other headers one entry per field.
    pub fn headers(&self, name: &HeaderName) -> Vec<Cow<'_, [u8]>> {
        todo!("{name}")
    }

    /// True when at least one field named `name` exists.
    pub fn has_header(&self, name: &HeaderName) -> bool {
        todo!("{name}")
    }

    /// Every header field in order as `(name as written, value)`.
    pub fn header_fields(&self) -> Vec<(Cow<'_, str>, Cow<'_, [u8]>)> {
        todo!()
    }

    /// Route header values parsed, top first.
    pub fn routes(&self) -> Result<Vec<NameAddr>, ParseError> {
        todo!()
    }

    /// Record-Route header values parsed, top first.
    pub fn record_routes(&self) -> Result<Vec<NameAddr>, ParseError> {
        todo!()
    }

    /// Contact header values parsed (`Contact: *` gives an error here;
    /// check [`SipMessage::header`] for `*` first).
    pub fn contacts(&self) -> Result<Vec<NameAddr>, ParseError> {
        todo!()
    }

    // ---- edits --------------------------------------------------------------

    /// Inserts a field before the first field named `name`, or, when there
    /// is none, as the first header of the message (Via on forwarding,
    /// Record-Route: RFC 3261 §16.6 step 4 and §16.6 step 8).
    pub fn insert_first(&mut self, name: HeaderName, value: &[u8]) {
        todo!("{name}{}", value.len())
    }

    /// Appends a field after the last header (append_hf, RFC 3261 §7.3.1
    /// ordering is kept for fields of the same name).
    pub fn append_header(&mut self, name: HeaderName, value: &[u8]) {
        todo!("{name}{}", value.len())
    }

    /// Appends a raw header line as the script wrote it (`"X-Foo: bar\r\n"`,
    /// CRLF optional). Fails when the line is not `name: value`.
    pub fn append_header_line(&mut self, line: &[u8]) -> Result<(), ParseError> {
        todo!("{}", line.len())
    }

    /// Removes every field named `name`; returns how many were removed.
    pub fn remove_header(&mut self, name: &HeaderName) -> usize {
        todo!("{name}")
    }

    /// Removes the first list element of `name` (the top Via of a reply,
    /// RFC 3261 §16.7 step 3; the top Route, §16.4): when the first field
    /// holds several comma-separated values, only the first is removed and
    /// the rest of that field is kept. Returns the removed value.
    pub fn remove_first_value(&mut self, name: &HeaderName) -> Option<Vec<u8>> {
        todo!("{name}")
    }

    /// Replaces the first list element of `name` with `value` (used to add
    /// `received`/`rport` to the top Via, RFC 3261 §18.2.1, RFC 3581 §4).
    /// False when there is no such header.
    pub fn set_first_value(&mut self, name: &HeaderName, value: &[u8]) -> bool {
        todo!("{name}{}", value.len())
    }

    /// Replaces all fields named `name` by one field with `value` at the
    /// position of the first (or appends when absent). Max-Forwards,
    /// Content-Type, …
    pub fn set_header(&mut self, name: HeaderName, value: &[u8]) {
        todo!("{name}{}", value.len())
    }

    /// The body as it is now.
    pub fn body(&self) -> &[u8] {
        todo!()
    }

    /// Replaces the body; Content-Length is rewritten on output.
    pub fn set_body(&mut self, body: Bytes) {
        todo!("{}", body.len())
    }

    /// Replaces the whole message with `text` (textops replace and
    /// search_append edit the raw text); fails, leaving the message
    /// unchanged, when the new text does not parse.
    pub fn replace_text(&mut self, text: Bytes) -> Result<(), ParseError> {
        todo!("{}", text.len())
    }

    // ---- output -------------------------------------------------------------

    /// Length of the message as received (SER's `msg:len`).
    pub fn orig_len(&self) -> usize {
        todo!()
    }

    /// True when nothing has been edited since parsing.
    pub fn is_pristine(&self) -> bool {
        todo!()
    }

    /// The message as it would go out now: the original bytes when nothing
    /// changed (no copy), otherwise the start line, every header (untouched
    /// ones byte-identical), a Content-Length matching the body, the blank
    /// line and the body.
    pub fn to_bytes(&self) -> Bytes {
        todo!()
    }

    /// Appends the message as it would go out now to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        todo!("{}", out.len())
    }
}
