//! The ng message codec: `COOKIE SP bencoded-dictionary` (rtpengine's
//! docs/ng_control_protocol.md, "The NG Control Protocol"), decoded into
//! typed requests ([`Request`]) and replies ([`Response`]).
//!
//! Decoding is lenient where rtpengine is: dictionary keys may come in any
//! order (Kamailio's module writes them in insertion order), unknown keys
//! and flags are skipped, and a few keys are accepted with a space or a
//! hyphen (`transport protocol` / `transport-protocol`). It is strict about
//! the framing and the types of the keys it uses, and reports what is wrong
//! as an [`NgError`] — never a panic, whatever the datagram holds.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use bt_bencode::ByteString;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

/// The deepest nesting of lists and dictionaries a message may have. The
/// deepest ng message known (a query reply: reply → tags → tag → medias →
/// media → streams → stream → endpoint) has 8; the limit is checked before
/// decoding because the bencode decoder recurses once per level, and a
/// datagram of 60,000 `l`s would otherwise overflow the thread's stack.
pub const MAX_DEPTH: usize = 32;

/// Why an ng message was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NgError {
    /// No space separating a cookie from the dictionary, or an empty cookie.
    #[error("no cookie: an ng message is `COOKIE SP DICTIONARY`")]
    NoCookie,
    /// The dictionary is JSON (which rtpengine also accepts); only bencode is
    /// spoken here.
    #[error("JSON dictionaries are not supported: send bencode")]
    Json,
    /// Lists and dictionaries nested deeper than [`MAX_DEPTH`].
    #[error("lists and dictionaries nested deeper than {0} levels")]
    TooDeep(usize),
    /// Not a well-formed bencoded dictionary, or a key of the wrong type.
    #[error("not a valid ng dictionary: {0}")]
    Bencode(String),
    /// A key the command needs is absent (rtpengine: "No call-id in message").
    #[error("no `{0}` in message")]
    Missing(&'static str),
    /// A key has a value this implementation cannot use.
    #[error("`{key}`: {problem}")]
    BadValue {
        /// The key.
        key: &'static str,
        /// What is wrong with its value.
        problem: String,
    },
}

impl From<bt_bencode::Error> for NgError {
    fn from(e: bt_bencode::Error) -> Self {
        NgError::Bencode(e.to_string())
    }
}

/// A decoded ng request: its cookie (echoed in the reply, and the key of
/// the retransmission cache) and what it asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The cookie, as sent (any bytes but a space).
    pub cookie: Vec<u8>,
    /// The command and its parameters.
    pub command: Command,
}

/// The ng commands this implementation understands (rtpengine's
/// "Messages description"); the others are kept by name so that a server
/// can refuse them properly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `ping`: answered with `result: pong`.
    Ping,
    /// `offer`: an SDP offer to rewrite.
    Offer(OfferParams),
    /// `answer`: an SDP answer to rewrite.
    Answer(OfferParams),
    /// `delete`: end a call, or one dialogue of it.
    Delete(DeleteParams),
    /// `query`: one call's state and counters.
    Query(QueryParams),
    /// `list`: the Call-IDs of live calls.
    List(ListParams),
    /// Any other command, by name (`start recording`, `statistics`, … or
    /// something unknown).
    Other(String),
}

impl Command {
    /// The command's name on the wire.
    pub fn name(&self) -> &str {
        match self {
            Command::Ping => "ping",
            Command::Offer(_) => "offer",
            Command::Answer(_) => "answer",
            Command::Delete(_) => "delete",
            Command::Query(_) => "query",
            Command::List(_) => "list",
            Command::Other(name) => name,
        }
    }
}

/// The keys of an `offer` or `answer` this implementation reads or relays.
/// Flags given in Kamailio's newer `rtpp_flags` string form are merged into
/// the same fields, so a consumer sees one shape whichever form was sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OfferParams {
    /// `call-id`: the SIP Call-ID.
    pub call_id: String,
    /// `from-tag`: the From tag of the message carrying the SDP.
    pub from_tag: String,
    /// `to-tag`: the To tag (answers, re-offers).
    pub to_tag: Option<String>,
    /// `via-branch`: the top Via's branch (forking).
    pub via_branch: Option<String>,
    /// `sdp`: the body.
    pub sdp: Vec<u8>,
    /// `flags`: `trust-address`, `symmetric`, `SIP-source-address`, …
    pub flags: Vec<String>,
    /// `replace`: which SDP parts to rewrite (`origin`, `session-connection`).
    pub replace: Vec<String>,
    /// `direction`: the two logical interfaces (rtpproxy's `e`/`i` flags).
    pub direction: Vec<String>,
    /// `ICE`: `remove`, `force`, … (a string or a list on the wire).
    pub ice: Vec<String>,
    /// `transport-protocol`: `RTP/AVP`, `RTP/SAVPF`, …
    pub transport_protocol: Option<String>,
    /// `received-from`: `[family, address]` of the SIP message's source.
    pub received_from: Vec<String>,
}

/// The keys of a `delete`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteParams {
    /// `call-id`.
    pub call_id: String,
    /// `from-tag` (rtpengine requires it; accepted absent here).
    pub from_tag: Option<String>,
    /// `to-tag`: limit the delete to this dialogue.
    pub to_tag: Option<String>,
    /// `via-branch`.
    pub via_branch: Option<String>,
    /// `flags`: `fatal` (an unknown call is an error, not a warning), `fast`
    /// (no statistics in the reply), …
    pub flags: Vec<String>,
}

/// The keys of a `query`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryParams {
    /// `call-id`.
    pub call_id: String,
    /// `from-tag`, optional.
    pub from_tag: Option<String>,
    /// `to-tag`, optional.
    pub to_tag: Option<String>,
}

/// The keys of a `list`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListParams {
    /// `limit`: at most this many Call-IDs (rtpengine's default: 32).
    pub limit: Option<u64>,
}

/// A decoded ng reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The cookie of the request it answers.
    pub cookie: Vec<u8>,
    /// What it says.
    pub reply: Reply,
}

/// The `result` of a reply and what comes with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// `result: pong` (to a `ping`).
    Pong,
    /// `result: ok`, with the keys of the command's reply.
    Ok(OkReply),
    /// `result: error` and its `error-reason`.
    Error(String),
}

/// The keys of a `result: ok` reply used by the commands implemented here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OkReply {
    /// `warning`: a non-fatal problem (e.g. a `delete` of an unknown call).
    pub warning: Option<String>,
    /// `sdp`: the rewritten body (`offer`, `answer`).
    pub sdp: Option<Vec<u8>>,
    /// `calls`: Call-IDs (`list`).
    pub calls: Option<Vec<String>>,
    /// The call's state (`query`, and `delete` unless `fast`).
    pub call: Option<CallReport>,
}

/// A call as rtpengine's `query` reply describes it: `created`,
/// `last signal`, `tags` and `totals`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CallReport {
    /// `from-tag`: the offerer's tag. A serlua extension: the reply is
    /// bencoded with sorted keys, which loses the order rtpengine's `tags`
    /// rely on; rtpengine's own replies lack it and list that tag first.
    pub from_tag: Option<String>,
    /// `created`: UNIX time (seconds) the call was set up.
    pub created: Option<i64>,
    /// `last signal`: UNIX time of the last offer/answer/….
    pub last_signal: Option<i64>,
    /// `tags`, in the order sent (rtpengine lists the offerer's first).
    pub tags: Vec<TagReport>,
    /// `totals`.
    pub totals: Totals,
}

/// One SIP tag (one side) of a call in a `query` reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TagReport {
    /// `tag` (empty: the side that has not answered yet).
    pub tag: String,
    /// `label`.
    pub label: Option<String>,
    /// `created`: UNIX time the tag was first seen.
    pub created: Option<i64>,
    /// `in dialogue with`: the other side's tag.
    pub in_dialogue_with: Option<String>,
    /// `medias`: one per m= line.
    pub medias: Vec<MediaReport>,
}

/// One SDP media section of a tag in a `query` reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MediaReport {
    /// `index`, from 1.
    pub index: u64,
    /// `type`: `audio`, `video`, ….
    pub media_type: String,
    /// `protocol`: `RTP/AVP`, ….
    pub protocol: Option<String>,
    /// `codec`: the codec in use, e.g. `PCMU/8000`.
    pub codec: Option<String>,
    /// `flags`: `initialized`, `rtcp-mux`, `ICE`, ….
    pub flags: Vec<String>,
    /// `streams`: RTP and RTCP packet streams.
    pub streams: Vec<StreamReport>,
}

/// One packet stream (RTP or RTCP) of a media in a `query` reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamReport {
    /// `local port`: the relay's port this side sends to.
    pub local_port: Option<u16>,
    /// `local address`: the relay's address for it.
    pub local_address: Option<IpAddr>,
    /// `endpoint`: where the relay sends this side's media (latched).
    pub endpoint: Option<SocketAddr>,
    /// `advertised endpoint`: what this side's SDP announced.
    pub advertised_endpoint: Option<SocketAddr>,
    /// `last packet`: UNIX time of the last packet received (0: none).
    pub last_packet: Option<i64>,
    /// `flags`: `RTP`, `RTCP`, `filled`, `confirmed`, ….
    pub flags: Vec<String>,
    /// `stats`: packets received on this stream.
    pub stats: PacketStats,
}

/// rtpengine's `stats` dictionary: `packets`, `bytes`, `errors`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PacketStats {
    /// `packets`.
    pub packets: u64,
    /// `bytes`.
    pub bytes: u64,
    /// `errors`.
    pub errors: u64,
}

/// A `query` reply's `totals`: `RTP` and `RTCP` [`PacketStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Totals {
    /// `RTP`.
    #[serde(rename = "RTP")]
    pub rtp: PacketStats,
    /// `RTCP`.
    #[serde(rename = "RTCP")]
    pub rtcp: PacketStats,
}

/// Splits a datagram into its cookie and its dictionary, checking the
/// framing only (rtpengine replies to nothing without a cookie).
pub fn split_cookie(msg: &[u8]) -> Result<(&[u8], &[u8]), NgError> {
    match memchr::memchr(b' ', msg) {
        Some(0) | None => Err(NgError::NoCookie),
        Some(i) => Ok((&msg[..i], &msg[i + 1..])),
    }
}

/// Decodes an ng request datagram (`COOKIE SP bencoded-dict`). Never
/// panics; a fuzz target calls it with arbitrary bytes.
pub fn decode_request(msg: &[u8]) -> Result<Request, NgError> {
    let (cookie, dict) = split_cookie(msg)?;
    let raw: WireRequest = decode_dict(dict)?;
    let command = raw.into_command()?;
    Ok(Request {
        cookie: cookie.to_vec(),
        command,
    })
}

/// Decodes an ng reply datagram. Never panics.
pub fn decode_response(msg: &[u8]) -> Result<Response, NgError> {
    let (cookie, dict) = split_cookie(msg)?;
    let raw: WireResponse = decode_dict(dict)?;
    Ok(Response {
        cookie: cookie.to_vec(),
        reply: raw.into_reply()?,
    })
}

/// Encodes a request as a datagram. The cookie must not contain a space
/// (the receiver would split it there).
pub fn encode_request(req: &Request) -> Vec<u8> {
    frame(&req.cookie, &WireRequest::from_command(&req.command))
}

/// Encodes a reply as a datagram.
pub fn encode_response(resp: &Response) -> Vec<u8> {
    frame(&resp.cookie, &WireResponse::from_reply(&resp.reply))
}

fn frame<T: Serialize>(cookie: &[u8], body: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(cookie.len() + 256);
    out.extend_from_slice(cookie);
    out.push(b' ');
    // Only strings, integers, lists and maps with string keys are written:
    // bencode can carry all of them, so this cannot fail; should it ever,
    // an empty dictionary is still a well-formed message.
    match bt_bencode::to_vec(body) {
        Ok(b) => out.extend_from_slice(&b),
        Err(_) => out.extend_from_slice(b"de"),
    }
    out
}

fn decode_dict<'a, T: Deserialize<'a>>(dict: &'a [u8]) -> Result<T, NgError> {
    match dict.first() {
        Some(b'd') => {}
        Some(b'{') => return Err(NgError::Json),
        _ => return Err(NgError::Bencode("the message body is not a dictionary".into())),
    }
    check_depth(dict, MAX_DEPTH)?;
    Ok(bt_bencode::from_slice(dict)?)
}

/// Rejects input whose lists/dictionaries nest deeper than `max`, or whose
/// strings claim more bytes than the message has, walking the bencode
/// structure without recursion. It only measures: wherever the
/// input stops being bencode it stops too and leaves the verdict to the
/// decoder, which parses the same grammar and so fails at that same point
/// without having gone deeper than what was measured.
fn check_depth(buf: &[u8], max: usize) -> Result<(), NgError> {
    let mut depth = 0usize;
    let mut i = 0usize;
    while let Some(&b) = buf.get(i) {
        match b {
            b'l' | b'd' => {
                depth += 1;
                if depth > max {
                    return Err(NgError::TooDeep(max));
                }
                i += 1;
            }
            b'e' => {
                depth = depth.saturating_sub(1);
                i += 1;
            }
            b'i' => match memchr::memchr(b'e', &buf[i..]) {
                Some(p) => i += p + 1,
                None => return Ok(()),
            },
            b'0'..=b'9' => {
                let Some(colon) = memchr::memchr(b':', &buf[i..]) else {
                    return Ok(());
                };
                let len = std::str::from_utf8(&buf[i..i + colon]).ok().and_then(|s| s.parse::<usize>().ok());
                let start = i + colon + 1;
                match len {
                    // A length past the end of the message is refused here:
                    // bt_bencode adds it to its position unchecked (found by
                    // the ng fuzz target: a length near u64::MAX overflowed).
                    Some(len) if len > buf.len() - start => {
                        return Err(NgError::Bencode(format!(
                            "a string at byte {i} says it is {len} bytes long, past the end"
                        )));
                    }
                    Some(len) => i = start + len,
                    None => return Ok(()),
                }
            }
            _ => return Ok(()),
        }
    }
    Ok(())
}

/// rtpengine writes flags with spaces or hyphens interchangeably
/// ("Spaces in each string may be replaced by hyphens") and in any case:
/// compare them in one form.
pub fn flag_is(flag: &str, name: &str) -> bool {
    let norm = |s: &str| {
        s.chars()
            .map(|c| if c == '-' || c == '_' { ' ' } else { c.to_ascii_lowercase() })
            .collect::<String>()
    };
    norm(flag) == norm(name)
}

// ---------------------------------------------------------------------------
// Wire forms: the dictionaries as bencoded, with rtpengine's key names.

#[derive(Default, Deserialize, Serialize)]
#[serde(default)]
struct WireRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<String>,
    #[serde(rename = "call-id", skip_serializing_if = "Option::is_none")]
    call_id: Option<String>,
    #[serde(rename = "from-tag", skip_serializing_if = "Option::is_none")]
    from_tag: Option<String>,
    #[serde(rename = "to-tag", skip_serializing_if = "Option::is_none")]
    to_tag: Option<String>,
    #[serde(rename = "via-branch", skip_serializing_if = "Option::is_none")]
    via_branch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sdp: Option<ByteString>,
    #[serde(deserialize_with = "strings", skip_serializing_if = "Vec::is_empty")]
    flags: Vec<String>,
    #[serde(deserialize_with = "strings", skip_serializing_if = "Vec::is_empty")]
    replace: Vec<String>,
    #[serde(deserialize_with = "strings", skip_serializing_if = "Vec::is_empty")]
    direction: Vec<String>,
    // Kamailio's module and older rtpengines know `ICE` as one string.
    #[serde(
        rename = "ICE",
        deserialize_with = "strings",
        serialize_with = "one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    ice: Vec<String>,
    #[serde(
        rename = "transport-protocol",
        alias = "transport protocol",
        skip_serializing_if = "Option::is_none"
    )]
    transport_protocol: Option<String>,
    #[serde(
        rename = "received-from",
        alias = "received from",
        deserialize_with = "strings",
        skip_serializing_if = "Vec::is_empty"
    )]
    received_from: Vec<String>,
    #[serde(rename = "rtpp_flags", alias = "rtpp-flags", skip_serializing)]
    rtpp_flags: Option<String>,
    #[serde(deserialize_with = "int_or_text", skip_serializing_if = "Option::is_none")]
    limit: Option<u64>,
}

impl WireRequest {
    fn into_command(mut self) -> Result<Command, NgError> {
        let Some(command) = self.command.take() else {
            return Err(NgError::Missing("command"));
        };
        if let Some(s) = self.rtpp_flags.take() {
            self.merge_rtpp_flags(&s);
        }
        let call_id = |c: Option<String>| match c {
            Some(c) if !c.is_empty() => Ok(c),
            _ => Err(NgError::Missing("call-id")),
        };
        Ok(match command.as_str() {
            "ping" => Command::Ping,
            "offer" | "answer" => {
                let params = OfferParams {
                    call_id: call_id(self.call_id)?,
                    from_tag: self.from_tag.ok_or(NgError::Missing("from-tag"))?,
                    to_tag: self.to_tag,
                    via_branch: self.via_branch,
                    sdp: self.sdp.ok_or(NgError::Missing("sdp"))?.into_vec(),
                    flags: self.flags,
                    replace: self.replace,
                    direction: self.direction,
                    ice: self.ice,
                    transport_protocol: self.transport_protocol,
                    received_from: self.received_from,
                };
                if command == "offer" {
                    Command::Offer(params)
                } else {
                    Command::Answer(params)
                }
            }
            "delete" => Command::Delete(DeleteParams {
                call_id: call_id(self.call_id)?,
                from_tag: self.from_tag,
                to_tag: self.to_tag,
                via_branch: self.via_branch,
                flags: self.flags,
            }),
            "query" => Command::Query(QueryParams {
                call_id: call_id(self.call_id)?,
                from_tag: self.from_tag,
                to_tag: self.to_tag,
            }),
            "list" => Command::List(ListParams { limit: self.limit }),
            _ => Command::Other(command),
        })
    }

    /// Kamailio's module can pass its flags unparsed as one string
    /// (`rtpp_flags`, "parsing on the daemon side" in rtpengine's docs):
    /// fold the ones this implementation reads into the typed keys; the
    /// rest become plain flags, which are ignored like any unknown flag.
    fn merge_rtpp_flags(&mut self, s: &str) {
        for token in split_rtpp_flags(s) {
            let (key, value) = match token.split_once('=') {
                Some((k, v)) => (k, Some(v.trim_matches(|c| c == '[' || c == ']'))),
                None => (token, None),
            };
            match (key, value) {
                (k, None) if k.starts_with("replace-") => self.replace.push(k["replace-".len()..].to_string()),
                (k, Some(v)) if flag_is(k, "ICE") => self.ice.extend(v.split_whitespace().map(str::to_string)),
                (k, Some(v)) if flag_is(k, "direction") => self.direction.push(v.to_string()),
                (k, Some(v)) if flag_is(k, "transport protocol") => self.transport_protocol = Some(v.to_string()),
                (k, None) if k.starts_with("RTP/") || k.starts_with("UDP/TLS/") => self.transport_protocol = Some(k.to_string()),
                (k, None) => self.flags.push(k.to_string()),
                // Valued options this implementation has no use for.
                (_, Some(_)) => {}
            }
        }
    }

    fn from_command(cmd: &Command) -> WireRequest {
        let mut w = WireRequest {
            command: Some(cmd.name().to_string()),
            ..WireRequest::default()
        };
        match cmd {
            Command::Ping | Command::Other(_) => {}
            Command::Offer(p) | Command::Answer(p) => {
                w.call_id = Some(p.call_id.clone());
                w.from_tag = Some(p.from_tag.clone());
                w.to_tag = p.to_tag.clone();
                w.via_branch = p.via_branch.clone();
                w.sdp = Some(ByteString::from(p.sdp.clone()));
                w.flags = p.flags.clone();
                w.replace = p.replace.clone();
                w.direction = p.direction.clone();
                w.ice = p.ice.clone();
                w.transport_protocol = p.transport_protocol.clone();
                w.received_from = p.received_from.clone();
            }
            Command::Delete(p) => {
                w.call_id = Some(p.call_id.clone());
                w.from_tag = p.from_tag.clone();
                w.to_tag = p.to_tag.clone();
                w.via_branch = p.via_branch.clone();
                w.flags = p.flags.clone();
            }
            Command::Query(p) => {
                w.call_id = Some(p.call_id.clone());
                w.from_tag = p.from_tag.clone();
                w.to_tag = p.to_tag.clone();
            }
            Command::List(p) => w.limit = p.limit,
        }
        w
    }
}

/// Splits an `rtpp_flags` string at spaces outside brackets
/// (`codec=[transcode=[PCMA PCMU]]` is one token).
fn split_rtpp_flags(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = None;
    for (i, c) in s.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.saturating_sub(1),
            c if c.is_whitespace() && depth == 0 => {
                if let Some(st) = start.take() {
                    out.push(&s[st..i]);
                }
                continue;
            }
            _ => {}
        }
        if start.is_none() {
            start = Some(i);
        }
    }
    if let Some(st) = start {
        out.push(&s[st..]);
    }
    out
}

#[derive(Default, Deserialize, Serialize)]
#[serde(default)]
struct WireResponse {
    #[serde(skip_serializing_if = "Option::is_none")]
    result: Option<String>,
    #[serde(rename = "error-reason", skip_serializing_if = "Option::is_none")]
    error_reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    warning: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sdp: Option<ByteString>,
    #[serde(skip_serializing_if = "Option::is_none")]
    calls: Option<Vec<String>>,
    #[serde(rename = "from-tag", skip_serializing_if = "Option::is_none")]
    from_tag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<i64>,
    #[serde(rename = "last signal", skip_serializing_if = "Option::is_none")]
    last_signal: Option<i64>,
    #[serde(
        deserialize_with = "ordered_tags",
        serialize_with = "tags_as_map",
        skip_serializing_if = "Option::is_none"
    )]
    tags: Option<Vec<(String, WireTag)>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    totals: Option<Totals>,
}

#[derive(Default, Deserialize, Serialize)]
#[serde(default)]
struct WireTag {
    #[serde(skip_serializing_if = "Option::is_none")]
    tag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<i64>,
    #[serde(rename = "in dialogue with", skip_serializing_if = "Option::is_none")]
    in_dialogue_with: Option<String>,
    medias: Vec<WireMedia>,
}

#[derive(Default, Deserialize, Serialize)]
#[serde(default)]
struct WireMedia {
    index: u64,
    #[serde(rename = "type")]
    media_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    protocol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    codec: Option<String>,
    #[serde(deserialize_with = "strings")]
    flags: Vec<String>,
    streams: Vec<WireStream>,
}

#[derive(Default, Deserialize, Serialize)]
#[serde(default)]
struct WireStream {
    #[serde(rename = "local port", skip_serializing_if = "Option::is_none")]
    local_port: Option<u64>,
    #[serde(rename = "local address", skip_serializing_if = "Option::is_none")]
    local_address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    family: Option<String>,
    // rtpengine writes an empty dictionary for an endpoint not known yet.
    endpoint: WireEndpoint,
    #[serde(rename = "advertised endpoint")]
    advertised_endpoint: WireEndpoint,
    #[serde(rename = "last packet", skip_serializing_if = "Option::is_none")]
    last_packet: Option<i64>,
    #[serde(deserialize_with = "strings")]
    flags: Vec<String>,
    stats: PacketStats,
}

#[derive(Default, Deserialize, Serialize)]
#[serde(default)]
struct WireEndpoint {
    #[serde(skip_serializing_if = "Option::is_none")]
    family: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    port: Option<u64>,
}

impl WireEndpoint {
    fn from_addr(a: Option<SocketAddr>) -> WireEndpoint {
        match a {
            None => WireEndpoint::default(),
            Some(a) => WireEndpoint {
                family: Some(family(a.ip()).to_string()),
                address: Some(a.ip().to_string()),
                port: Some(u64::from(a.port())),
            },
        }
    }

    /// An endpoint that does not parse is reported as unknown rather than
    /// failing the whole reply: it is informational.
    fn to_addr(&self) -> Option<SocketAddr> {
        let ip: IpAddr = self.address.as_deref()?.parse().ok()?;
        let port = u16::try_from(self.port?).ok()?;
        Some(SocketAddr::new(ip, port))
    }
}

/// rtpengine's names for the address families.
fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}

impl WireResponse {
    fn into_reply(self) -> Result<Reply, NgError> {
        let result = self.result.ok_or(NgError::Missing("result"))?;
        match result.as_str() {
            "pong" => Ok(Reply::Pong),
            "error" => Ok(Reply::Error(self.error_reason.unwrap_or_default())),
            "ok" => {
                let has_call = self.created.is_some() || self.tags.is_some() || self.totals.is_some();
                let call = has_call.then(|| CallReport {
                    from_tag: self.from_tag,
                    created: self.created,
                    last_signal: self.last_signal,
                    tags: self.tags.unwrap_or_default().into_iter().map(|(k, t)| t.into_report(k)).collect(),
                    totals: self.totals.unwrap_or_default(),
                });
                Ok(Reply::Ok(OkReply {
                    warning: self.warning,
                    sdp: self.sdp.map(ByteString::into_vec),
                    calls: self.calls,
                    call,
                }))
            }
            other => Err(NgError::BadValue {
                key: "result",
                problem: format!("{other:?} is none of ok, error, pong"),
            }),
        }
    }

    fn from_reply(reply: &Reply) -> WireResponse {
        match reply {
            Reply::Pong => WireResponse {
                result: Some("pong".into()),
                ..WireResponse::default()
            },
            Reply::Error(reason) => WireResponse {
                result: Some("error".into()),
                error_reason: Some(reason.clone()),
                ..WireResponse::default()
            },
            Reply::Ok(ok) => {
                let mut w = WireResponse {
                    result: Some("ok".into()),
                    warning: ok.warning.clone(),
                    sdp: ok.sdp.clone().map(ByteString::from),
                    calls: ok.calls.clone(),
                    ..WireResponse::default()
                };
                if let Some(c) = &ok.call {
                    w.from_tag = c.from_tag.clone();
                    w.created = c.created;
                    w.last_signal = c.last_signal;
                    w.tags = Some(c.tags.iter().map(|t| (t.tag.clone(), WireTag::from_report(t))).collect());
                    w.totals = Some(c.totals);
                }
                w
            }
        }
    }
}

impl WireTag {
    fn into_report(self, key: String) -> TagReport {
        TagReport {
            // rtpengine names an untagged side `<untagged N>` in the key but
            // gives its real (empty) tag in `tag`.
            tag: self.tag.unwrap_or(key),
            label: self.label,
            created: self.created,
            in_dialogue_with: self.in_dialogue_with,
            medias: self
                .medias
                .into_iter()
                .map(|m| MediaReport {
                    index: m.index,
                    media_type: m.media_type,
                    protocol: m.protocol,
                    codec: m.codec,
                    flags: m.flags,
                    streams: m.streams.into_iter().map(WireStream::into_report).collect(),
                })
                .collect(),
        }
    }

    fn from_report(t: &TagReport) -> WireTag {
        WireTag {
            tag: Some(t.tag.clone()),
            label: t.label.clone(),
            created: t.created,
            in_dialogue_with: t.in_dialogue_with.clone(),
            medias: t
                .medias
                .iter()
                .map(|m| WireMedia {
                    index: m.index,
                    media_type: m.media_type.clone(),
                    protocol: m.protocol.clone(),
                    codec: m.codec.clone(),
                    flags: m.flags.clone(),
                    streams: m.streams.iter().map(WireStream::from_report).collect(),
                })
                .collect(),
        }
    }
}

impl WireStream {
    fn into_report(self) -> StreamReport {
        StreamReport {
            local_port: self.local_port.and_then(|p| u16::try_from(p).ok()),
            local_address: self.local_address.and_then(|a| a.parse().ok()),
            endpoint: self.endpoint.to_addr(),
            advertised_endpoint: self.advertised_endpoint.to_addr(),
            last_packet: self.last_packet,
            flags: self.flags,
            stats: self.stats,
        }
    }

    fn from_report(s: &StreamReport) -> WireStream {
        WireStream {
            local_port: s.local_port.map(u64::from),
            local_address: s.local_address.map(|a| a.to_string()),
            family: s.local_address.map(|a| family(a).to_string()),
            endpoint: WireEndpoint::from_addr(s.endpoint),
            advertised_endpoint: WireEndpoint::from_addr(s.advertised_endpoint),
            last_packet: s.last_packet,
            flags: s.flags.clone(),
            stats: s.stats,
        }
    }
}

// ---------------------------------------------------------------------------
// Shapes serde's derive does not cover.

/// A list of strings, or one string standing for a list of one (rtpengine
/// accepts both for `ICE`, and older clients send lists as one string).
fn strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string or a list of strings")
        }
        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
            self.visit_str(std::str::from_utf8(v).map_err(E::custom)?)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(vec![v.to_string()])
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some(s) = seq.next_element::<String>()? {
                out.push(s);
            }
            Ok(out)
        }
    }
    d.deserialize_any(V)
}

/// One value as a string, several as a list (see [`strings`]).
fn one_or_many<S: Serializer>(v: &[String], s: S) -> Result<S::Ok, S::Error> {
    match v {
        [one] => s.serialize_str(one),
        many => many.serialize(s),
    }
}

/// An integer, or a string holding one (rtpengine reads `limit` either way).
fn int_or_text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<u64>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a non-negative integer")
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v))
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            u64::try_from(v).map(Some).map_err(E::custom)
        }
        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
            let s = std::str::from_utf8(v).map_err(E::custom)?;
            s.trim().parse().map(Some).map_err(E::custom)
        }
    }
    d.deserialize_any(V)
}

/// `tags` keeps the order of the wire: rtpengine lists the offerer's tag
/// first, and that is how a client tells caller from callee.
fn ordered_tags<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<(String, WireTag)>>, D::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Option<Vec<(String, WireTag)>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a dictionary of tags")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::new();
            while let Some((k, v)) = map.next_entry::<String, WireTag>()? {
                out.push((k, v));
            }
            Ok(Some(out))
        }
    }
    d.deserialize_any(V)
}

fn tags_as_map<S: Serializer>(tags: &Option<Vec<(String, WireTag)>>, s: S) -> Result<S::Ok, S::Error> {
    let tags = tags.as_deref().unwrap_or_default();
    let mut m = s.serialize_map(Some(tags.len()))?;
    for (k, v) in tags {
        m.serialize_entry(k, v)?;
    }
    m.end()
}

/// A bencoder that keeps keys in the order given, as Kamailio's module and
/// rtpengine write them (the crate always sorts): test fixtures only.
#[cfg(test)]
pub(crate) mod unsorted {
    /// A bencode value.
    pub enum B {
        S(&'static str),
        I(i64),
        L(Vec<B>),
        D(Vec<(&'static str, B)>),
    }

    /// `cookie SP value`.
    pub fn message(cookie: &str, v: &B) -> Vec<u8> {
        let mut out = format!("{cookie} ").into_bytes();
        encode(v, &mut out);
        out
    }

    fn encode(v: &B, out: &mut Vec<u8>) {
        match v {
            B::S(s) => out.extend(format!("{}:{s}", s.len()).bytes()),
            B::I(i) => out.extend(format!("i{i}e").bytes()),
            B::L(l) => {
                out.push(b'l');
                l.iter().for_each(|x| encode(x, out));
                out.push(b'e');
            }
            B::D(d) => {
                out.push(b'd');
                for (k, x) in d {
                    encode(&B::S(k), out);
                    encode(x, out);
                }
                out.push(b'e');
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::unsorted::{B, message};
    use super::*;

    fn offer() -> Request {
        Request {
            cookie: b"5323_1".to_vec(),
            command: Command::Offer(OfferParams {
                call_id: "cfBXzDSZqhYNcXM".into(),
                from_tag: "mS9rSAn0Cr".into(),
                sdp: b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n".to_vec(),
                flags: vec!["trust-address".into(), "symmetric".into()],
                replace: vec!["origin".into(), "session-connection".into()],
                direction: vec!["priv".into(), "pub".into()],
                ice: vec!["remove".into()],
                transport_protocol: Some("RTP/AVP".into()),
                received_from: vec!["IP4".into(), "10.65.31.43".into()],
                via_branch: Some("z9hG4bK5KiTRPZHH1nL6".into()),
                to_tag: None,
            }),
        }
    }

    fn requests() -> Vec<Request> {
        let mut answer = offer();
        if let Command::Offer(p) = &answer.command {
            let mut p = p.clone();
            p.to_tag = Some("0f0d2e18".into());
            p.ice = vec!["force".into(), "trickle".into()];
            answer.command = Command::Answer(p);
        }
        vec![
            Request {
                cookie: b"1".to_vec(),
                command: Command::Ping,
            },
            offer(),
            answer,
            Request {
                cookie: b"d".to_vec(),
                command: Command::Delete(DeleteParams {
                    call_id: "c".into(),
                    from_tag: Some("f".into()),
                    to_tag: Some("t".into()),
                    via_branch: None,
                    flags: vec!["fatal".into()],
                }),
            },
            Request {
                cookie: b"q".to_vec(),
                command: Command::Query(QueryParams {
                    call_id: "c".into(),
                    from_tag: None,
                    to_tag: None,
                }),
            },
            Request {
                cookie: b"l".to_vec(),
                command: Command::List(ListParams { limit: Some(5) }),
            },
            Request {
                cookie: b"x".to_vec(),
                command: Command::Other("start recording".into()),
            },
        ]
    }

    fn report() -> CallReport {
        let stream = |port: u16, peer: u16, flags: &[&str], packets: u64| StreamReport {
            local_port: Some(port),
            local_address: Some("203.0.113.5".parse().unwrap()),
            endpoint: Some(SocketAddr::from(([192, 0, 2, 1], peer))),
            advertised_endpoint: Some(SocketAddr::from(([10, 0, 0, 1], peer))),
            last_packet: Some(1_402_064_124),
            flags: flags.iter().map(|s| s.to_string()).collect(),
            stats: PacketStats {
                packets,
                bytes: packets * 172,
                errors: 0,
            },
        };
        CallReport {
            from_tag: Some("zz-offerer".into()),
            created: Some(1_402_064_111),
            last_signal: Some(1_402_064_116),
            tags: vec![
                TagReport {
                    tag: "zz-offerer".into(),
                    label: None,
                    created: Some(1_402_064_111),
                    in_dialogue_with: Some("aa-answerer".into()),
                    medias: vec![MediaReport {
                        index: 1,
                        media_type: "audio".into(),
                        protocol: Some("RTP/AVP".into()),
                        codec: Some("PCMU/8000".into()),
                        flags: vec!["initialized".into()],
                        streams: vec![
                            stream(30018, 57370, &["RTP", "filled", "confirmed"], 343),
                            stream(30019, 57371, &["RTCP"], 2),
                        ],
                    }],
                },
                TagReport {
                    tag: "aa-answerer".into(),
                    label: Some("callee".into()),
                    created: Some(1_402_064_112),
                    in_dialogue_with: Some("zz-offerer".into()),
                    medias: vec![MediaReport {
                        index: 1,
                        media_type: "audio".into(),
                        streams: vec![StreamReport::default()],
                        ..MediaReport::default()
                    }],
                },
            ],
            totals: Totals {
                rtp: PacketStats {
                    packets: 705,
                    bytes: 100_287,
                    errors: 0,
                },
                rtcp: PacketStats {
                    packets: 22,
                    bytes: 2244,
                    errors: 1,
                },
            },
        }
    }

    fn responses() -> Vec<Response> {
        let r = |reply| Response {
            cookie: b"5323_1".to_vec(),
            reply,
        };
        vec![
            r(Reply::Pong),
            r(Reply::Error("Unknown call-id".into())),
            r(Reply::Ok(OkReply {
                sdp: Some(b"v=0\r\n".to_vec()),
                ..OkReply::default()
            })),
            r(Reply::Ok(OkReply {
                warning: Some("Call-ID not found or tags didn't match".into()),
                ..OkReply::default()
            })),
            r(Reply::Ok(OkReply {
                calls: Some(vec!["a".into(), "b".into()]),
                ..OkReply::default()
            })),
            r(Reply::Ok(OkReply {
                call: Some(report()),
                ..OkReply::default()
            })),
        ]
    }

    #[test]
    fn requests_round_trip() {
        for req in requests() {
            let wire = encode_request(&req);
            assert_eq!(decode_request(&wire), Ok(req.clone()), "{}", String::from_utf8_lossy(&wire));
        }
    }

    #[test]
    fn responses_round_trip() {
        for mut resp in responses() {
            let wire = encode_response(&resp);
            // The encoder writes canonical bencode: tags in sorted order.
            if let Reply::Ok(OkReply { call: Some(c), .. }) = &mut resp.reply {
                c.tags.sort_by(|a, b| a.tag.cmp(&b.tag));
            }
            assert_eq!(decode_response(&wire), Ok(resp.clone()), "{}", String::from_utf8_lossy(&wire));
        }
    }

    #[test]
    fn the_docs_ping_example() {
        let req = decode_request(b"5323_1 d7:command4:pinge").unwrap();
        assert_eq!(req.cookie, b"5323_1");
        assert_eq!(req.command, Command::Ping);
        let pong = Response {
            cookie: req.cookie,
            reply: Reply::Pong,
        };
        assert_eq!(encode_response(&pong), b"5323_1 d6:result4:ponge");
    }

    #[test]
    fn unsorted_keys_as_kamailio_sends_them() {
        // Kamailio's module writes keys in the order it adds them.
        let msg = message(
            "123_4",
            &B::D(vec![
                ("sdp", B::S("v=0\r\n")),
                ("flags", B::L(vec![B::S("trust-address")])),
                ("replace", B::L(vec![B::S("origin"), B::S("session-connection")])),
                ("ICE", B::S("remove")),
                ("transport-protocol", B::S("RTP/AVP")),
                ("call-id", B::S("ab")),
                ("from-tag", B::S("ft")),
                ("command", B::S("offer")),
                ("x-unknown", B::D(vec![("a", B::I(1)), ("b", B::L(vec![B::L(vec![])]))])),
            ]),
        );
        let req = decode_request(&msg).unwrap();
        assert_eq!(req.cookie, b"123_4");
        let Command::Offer(p) = req.command else {
            panic!("{:?}", req.command)
        };
        assert_eq!(p.call_id, "ab");
        assert_eq!(p.from_tag, "ft");
        assert_eq!(p.sdp, b"v=0\r\n");
        assert_eq!(p.flags, ["trust-address"]);
        assert_eq!(p.replace, ["origin", "session-connection"]);
        assert_eq!(p.ice, ["remove"]);
        assert_eq!(p.transport_protocol.as_deref(), Some("RTP/AVP"));
    }

    #[test]
    fn query_tags_keep_the_wire_order() {
        let tag = |t: &'static str| B::D(vec![("tag", B::S(t)), ("medias", B::L(vec![]))]);
        let msg = message(
            "q",
            &B::D(vec![
                ("result", B::S("ok")),
                ("created", B::I(1)),
                ("tags", B::D(vec![("zz-offerer", tag("zz-offerer")), ("<untagged 2>", tag(""))])),
            ]),
        );
        let Reply::Ok(ok) = decode_response(&msg).unwrap().reply else {
            panic!()
        };
        let tags: Vec<_> = ok.call.unwrap().tags.into_iter().map(|t| t.tag).collect();
        assert_eq!(tags, ["zz-offerer", ""]);
    }

    /// Found by the `ng` fuzz target: a `tags` dictionary whose keys differ
    /// from the tags inside keeps its wire order when decoded, but is
    /// written keyed (and so sorted) by the tags: the first round trip may
    /// reorder it, every later one must change nothing.
    #[test]
    fn query_tags_round_trip_after_one_normalisation() {
        let tag = |t: &'static str| B::D(vec![("tag", B::S(t))]);
        let msg = message(
            "q",
            &B::D(vec![
                ("result", B::S("ok")),
                (
                    "tags",
                    B::D(vec![("b", tag("x")), ("totals", B::D(vec![])), ("tags", B::D(vec![]))]),
                ),
            ]),
        );
        let first = decode_response(&msg).unwrap();
        let once = decode_response(&encode_response(&first)).unwrap();
        let twice = decode_response(&encode_response(&once)).unwrap();
        assert_eq!(once, twice);
        let names = |r: &Response| match &r.reply {
            Reply::Ok(ok) => ok.call.as_ref().map(|c| c.tags.iter().map(|t| t.tag.clone()).collect::<Vec<_>>()),
            _ => None,
        };
        assert_eq!(names(&first), Some(vec!["x".to_string(), "totals".into(), "tags".into()]));
        assert_eq!(names(&once), Some(vec!["tags".to_string(), "totals".into(), "x".into()]));
    }

    #[test]
    fn rtpp_flags_string_is_folded_in() {
        let flags = "replace-origin replace-session-connection trust-address ICE=remove RTP/AVP direction=pub codec=[transcode=[PCMA PCMU]] symmetric";
        let msg = format!(
            "c d7:command5:offer7:call-id1:x8:from-tag1:f3:sdp3:v=010:rtpp_flags{}:{flags}e",
            flags.len()
        );
        let Command::Offer(p) = decode_request(msg.as_bytes()).unwrap().command else {
            panic!()
        };
        assert_eq!(p.replace, ["origin", "session-connection"]);
        assert_eq!(p.flags, ["trust-address", "symmetric"]);
        assert_eq!(p.ice, ["remove"]);
        assert_eq!(p.direction, ["pub"]);
        assert_eq!(p.transport_protocol.as_deref(), Some("RTP/AVP"));
    }

    #[test]
    fn flags_compare_with_spaces_or_hyphens() {
        assert!(flag_is("trust-address", "trust address"));
        assert!(flag_is("Trust_Address", "trust-address"));
        assert!(!flag_is("trust", "trust address"));
    }

    #[test]
    fn garbage_is_refused_with_a_reason() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "cookie"),
            (b"nocookie", "cookie"),
            (b" d7:command4:pinge", "cookie"),
            (b"c ", "not a dictionary"),
            (b"c {\"command\":\"ping\"}", "JSON"),
            (b"c l4:pinge", "not a dictionary"),
            (b"c d7:command4:ping", "valid ng dictionary"),
            (b"c d7:command4:pingeXX", "valid ng dictionary"),
            (b"c d4:callee", "valid ng dictionary"),
            (b"c de", "no `command`"),
            (b"c d7:commandi1ee", "valid ng dictionary"),
            (b"c d7:command5:offere", "no `call-id`"),
            (b"c d7:command5:offer7:call-id1:xe", "no `from-tag`"),
            (b"c d7:command5:offer7:call-id1:x8:from-tag1:fe", "no `sdp`"),
            (b"c d7:command5:query7:call-id0:e", "no `call-id`"),
            (b"c d7:command4:list5:limiti-1ee", "valid ng dictionary"),
            (b"c d7:command5:offer5:flagsli1eee", "valid ng dictionary"),
            (b"c d7:command4:ping7:command4:pinge", "valid ng dictionary"),
            (b"c d99999999999999999999999:", "valid ng dictionary"),
        ];
        for (msg, want) in cases {
            let err = decode_request(msg).expect_err(&String::from_utf8_lossy(msg)).to_string();
            assert!(err.contains(want), "{:?}: {err}", String::from_utf8_lossy(msg));
        }
        let err = decode_response(b"c d6:result5:maybee").unwrap_err().to_string();
        assert!(err.contains("none of ok"), "{err}");
        assert_eq!(decode_response(b"c de"), Err(NgError::Missing("result")));
    }

    #[test]
    fn deep_nesting_is_refused_without_recursing() {
        let mut msg = b"c d7:command4:ping1:x".to_vec();
        msg.extend(std::iter::repeat_n(b'l', 60_000));
        msg.extend(std::iter::repeat_n(b'e', 60_000));
        msg.push(b'e');
        // A small stack: the decoder must not recurse 60,000 times.
        let h = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || (decode_request(&msg), decode_response(&msg)))
            .unwrap();
        let (req, resp) = h.join().expect("no stack overflow");
        assert_eq!(req, Err(NgError::TooDeep(MAX_DEPTH)));
        assert_eq!(resp, Err(NgError::TooDeep(MAX_DEPTH)));
        // Nesting inside a string is only text.
        let mut ok = b"c d7:command4:ping1:x60000:".to_vec();
        ok.extend(std::iter::repeat_n(b'l', 60_000));
        ok.push(b'e');
        assert_eq!(decode_request(&ok).map(|r| r.command), Ok(Command::Ping));
    }

    /// Every truncation and every single-bit flip of valid messages decodes
    /// or fails cleanly, on a small stack.
    #[test]
    fn truncations_and_bit_flips_never_panic() {
        let h = std::thread::Builder::new()
            .stack_size(512 * 1024)
            .spawn(|| {
                let mut msgs: Vec<Vec<u8>> = requests().iter().map(encode_request).collect();
                msgs.extend(responses().iter().map(encode_response));
                let mut decoded = 0usize;
                for msg in &msgs {
                    for n in 0..=msg.len() {
                        decoded += usize::from(decode_request(&msg[..n]).is_ok());
                        decoded += usize::from(decode_response(&msg[..n]).is_ok());
                    }
                    let mut m = msg.clone();
                    for i in 0..m.len() {
                        for bit in 0..8 {
                            m[i] ^= 1 << bit;
                            decoded += usize::from(decode_request(&m).is_ok());
                            decoded += usize::from(decode_response(&m).is_ok());
                            m[i] ^= 1 << bit;
                        }
                    }
                }
                decoded
            })
            .unwrap();
        let decoded = h.join().expect("no panic");
        assert!(decoded > 0);
    }

    #[test]
    fn a_string_length_past_the_end_is_refused_not_overflowed() {
        // The ng fuzz target's crash input: a length near u64::MAX.
        let msg = b"2 d3:wdp0000001844674407370955160505:";
        assert!(matches!(decode_request(msg), Err(NgError::Bencode(_))));
        assert!(matches!(decode_response(msg), Err(NgError::Bencode(_))));
        assert!(decode_request(b"c d7:command4:pi").is_err());
    }
}
