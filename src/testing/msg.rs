//! A SIP message as a `serlua test` file sees it: one sent or received by
//! a test proxy, or read from a trace. Fields follow the route script's
//! `msg` object (DESIGN.md: "the same fields and methods as `msg`") plus
//! where it travelled (`src`, `dst`, `proto`, `time`).
//!
//! Reading a field records it as the last thing the test looked at, so a
//! failing assertion on that value can show the message it came from.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use mlua::{Lua, MetaMethod, UserData, UserDataMethods, Value};

use crate::sip::{HeaderName, SipMessage};
use crate::transport::Proto;

/// Who produced a message, for failure reports and ladders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Read from a trace file.
    Trace,
    /// Fed to the proxy by the test.
    Received,
    /// Sent by the proxy.
    Sent,
}

/// One message on the test's virtual network.
#[derive(Debug)]
pub struct Msg {
    /// Seconds: on the proxy's virtual clock since it started (sent and
    /// received messages), or since the trace's first message.
    pub time: f64,
    /// Capture time since the Unix epoch (trace messages).
    pub timestamp: Option<Duration>,
    /// Sender.
    pub src: SocketAddr,
    /// Receiver.
    pub dst: SocketAddr,
    /// Transport.
    pub proto: Proto,
    /// The bytes.
    pub data: Bytes,
    /// Parsed, when the bytes are a SIP message serlua can parse.
    pub parsed: Option<SipMessage>,
    /// Where it came from.
    pub origin: Origin,
}

impl Msg {
    /// A message from its bytes (parsed once here).
    pub fn new(time: f64, src: SocketAddr, dst: SocketAddr, proto: Proto, data: Bytes, origin: Origin) -> Msg {
        let parsed = SipMessage::parse(data.clone()).ok();
        Msg {
            time,
            timestamp: None,
            src,
            dst,
            proto,
            data,
            parsed,
            origin,
        }
    }

    /// The start line (`INVITE sip:… SIP/2.0`, `SIP/2.0 200 OK`).
    pub fn first_line(&self) -> String {
        let end = memchr::memchr(b'\n', &self.data).unwrap_or(self.data.len());
        String::from_utf8_lossy(&self.data[..end]).trim_end().to_string()
    }

    /// The bytes as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }

    /// `src -> dst (proto) at t s`, for reports.
    pub fn route_text(&self) -> String {
        let who = match self.origin {
            Origin::Trace => "from the trace",
            Origin::Received => "received by the proxy",
            Origin::Sent => "sent by the proxy",
        };
        format!("{who}, {} -> {} ({}) at {:.3} s", self.src, self.dst, self.proto.lower(), self.time)
    }

    /// A field by name as a Lua value (nil when the message lacks it).
    pub fn field(&self, lua: &Lua, key: &str) -> mlua::Result<Value> {
        let s = |t: &str| -> mlua::Result<Value> { Ok(Value::String(lua.create_string(t)?)) };
        let m = self.parsed.as_ref();
        match key {
            "src" => s(&self.src.to_string()),
            "dst" => s(&self.dst.to_string()),
            "src_ip" => s(&self.src.ip().to_string()),
            "src_port" => Ok(Value::Integer(i64::from(self.src.port()))),
            "dst_ip" => s(&self.dst.ip().to_string()),
            "dst_port" => Ok(Value::Integer(i64::from(self.dst.port()))),
            "proto" => s(self.proto.lower()),
            "time" => Ok(Value::Number(self.time)),
            "timestamp" => Ok(self.timestamp.map_or(Value::Nil, |t| Value::Number(t.as_secs_f64()))),
            "raw" => Ok(Value::String(lua.create_string(&self.data)?)),
            "len" => Ok(Value::Integer(self.data.len() as i64)),
            "first_line" => s(&self.first_line()),
            "parsed" => Ok(Value::Boolean(m.is_some())),
            _ => {
                let Some(m) = m else {
                    return Ok(Value::Nil);
                };
                match key {
                    // SER's `method` on a reply is the CSeq method.
                    "method" => s(m.method().unwrap_or(&m.cseq().method).as_str()),
                    "is_request" => Ok(Value::Boolean(m.is_request())),
                    "is_reply" => Ok(Value::Boolean(!m.is_request())),
                    "status" => Ok(m.status().map_or(Value::Nil, |c| Value::Integer(i64::from(c)))),
                    "reason" => m.reason().map_or(Ok(Value::Nil), s),
                    "ruri" => m.ruri().map_or(Ok(Value::Nil), |u| s(&u.to_string())),
                    "call_id" => s(m.call_id()),
                    "cseq" => Ok(Value::Integer(i64::from(m.cseq().seq))),
                    "cseq_method" => s(m.cseq().method.as_str()),
                    "from_uri" => s(&m.from().uri.to_string()),
                    "to_uri" => s(&m.to().uri.to_string()),
                    "from_tag" => m.from().tag().map_or(Ok(Value::Nil), s),
                    "to_tag" => m.to().tag().map_or(Ok(Value::Nil), s),
                    "branch" => m.top_via().branch().map_or(Ok(Value::Nil), s),
                    "body" => Ok(Value::String(lua.create_string(m.body())?)),
                    _ => Err(mlua::Error::RuntimeError(format!(
                        "a message has no field '{key}' (fields: src, dst, src_ip, src_port, dst_ip, dst_port, proto, time, timestamp, method, status, reason, ruri, call_id, cseq, cseq_method, from_uri, to_uri, from_tag, to_tag, branch, body, raw, len, first_line, is_request, is_reply; methods: m:header(name), m:headers(name))"
                    ))),
                }
            }
        }
    }

    /// The first value of a header field, as `msg:header(name)`.
    pub fn header(&self, name: &str) -> Option<String> {
        let m = self.parsed.as_ref()?;
        m.header(&HeaderName::from_text(name))
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    /// Every value of a header field, in order.
    pub fn headers(&self, name: &str) -> Vec<String> {
        self.parsed
            .as_ref()
            .map(|m| {
                m.headers(&HeaderName::from_text(name))
                    .iter()
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// What the test read last: a message, which field, and the value it got.
#[derive(Clone, Debug)]
pub struct Touched {
    /// The message.
    pub msg: Rc<Msg>,
    /// The field (`status`, `header:To`, …).
    pub field: String,
    /// The value read, rendered as the assertions render values.
    pub value: String,
}

/// Per test VM: the last field read, and the last list `px:sent` returned.
#[derive(Default)]
pub struct Tracker {
    /// The last message field the test read.
    pub touched: RefCell<Option<Touched>>,
    /// The last list of messages a proxy handed the test.
    pub last_list: RefCell<Vec<Rc<Msg>>>,
}

fn touch(lua: &Lua, msg: &Rc<Msg>, field: &str, value: &Value) {
    if let Some(t) = lua.app_data_ref::<Tracker>() {
        *t.touched.borrow_mut() = Some(Touched {
            msg: msg.clone(),
            field: field.to_string(),
            value: super::assert::render(value),
        });
    }
}

/// The Lua handle of a [`Msg`].
#[derive(Clone, Debug)]
pub struct LuaMsg(pub Rc<Msg>);

impl UserData for LuaMsg {
    fn add_methods<M: UserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("header", |lua, this, name: String| {
            let v = match this.0.header(&name) {
                Some(h) => Value::String(lua.create_string(&h)?),
                None => Value::Nil,
            };
            touch(lua, &this.0, &format!("header:{name}"), &v);
            Ok(v)
        });
        methods.add_method("headers", |lua, this, name: String| {
            let t = lua.create_sequence_from(this.0.headers(&name))?;
            Ok(t)
        });
        methods.add_meta_method(MetaMethod::Index, |lua, this, key: String| {
            let v = this.0.field(lua, &key)?;
            touch(lua, &this.0, &key, &v);
            Ok(v)
        });
        methods.add_meta_method(MetaMethod::ToString, |_, this, ()| Ok(this.0.text()));
        methods.add_meta_method(MetaMethod::Eq, |_, this, other: mlua::AnyUserData| {
            Ok(match other.borrow::<LuaMsg>() {
                Ok(o) => same_message(&this.0, &o.0),
                Err(_) => false,
            })
        });
    }
}

/// Two messages are equal when they carry the same bytes between the same
/// addresses over the same transport.
pub fn same_message(a: &Msg, b: &Msg) -> bool {
    a.data == b.data && a.src == b.src && a.dst == b.dst && a.proto == b.proto
}

/// The [`Msg`] behind a Lua value, if it is one.
pub fn as_msg(v: &Value) -> Option<Rc<Msg>> {
    match v {
        Value::UserData(ud) => ud.borrow::<LuaMsg>().ok().map(|m| m.0.clone()),
        _ => None,
    }
}
