//! Unit tests of the grammar pieces and the message model (RFC 3261 §7,
//! §19, §20, §25); the RFC 4475 / 5118 corpus is in `tests/torture.rs`.

use std::net::IpAddr;

use bytes::Bytes;

use super::framing::{FrameError, next_message};
use super::parse::{MAX_FIELD_LEN, MAX_HEADERS, MAX_VIAS};
use super::uri::unescape;
use super::*;

fn parse(s: &str) -> Result<SipMessage, ParseError> {
    SipMessage::parse(Bytes::from(s.as_bytes().to_vec()))
}

fn req(extra: &str) -> String {
    format!(
        "OPTIONS sip:u@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h.example.com;branch=z9hG4bK1\r\n\
From: <sip:a@example.com>;tag=1\r\nTo: <sip:u@example.com>\r\nCall-ID: c1\r\n\
CSeq: 1 OPTIONS\r\n{extra}Content-Length: 0\r\n\r\n"
    )
}

#[test]
fn uri_parts_and_display() {
    for text in [
        "sip:alice@atlanta.example.com",
        "sips:alice:secret@atlanta.example.com:5061;transport=tcp;lr?subject=project%20x&priority=urgent",
        "sip:+1-212-555-1212:1234@gateway.com;user=phone",
        "sip:alice;day=tuesday@atlanta.com",
        "sip:[2001:db8::1]:5070;maddr=[2001:db8::2]",
        "tel:+358-555-1234567;postd=pp22",
        "urn:service:sos",
    ] {
        let u = Uri::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(u.to_string(), text);
    }
    let u = Uri::parse("SIP:Alice@Example.COM:5062;Transport=TCP").expect("uri");
    assert_eq!(u.scheme, Scheme::Sip);
    assert_eq!(u.port, Some(5062));
    assert_eq!(u.param("transport"), Some(Some("TCP")));
    assert_eq!(u.default_port(), 5060);
    assert_eq!(Uri::parse("sips:a.example.com").expect("uri").default_port(), 5061);
}

#[test]
fn uri_errors() {
    for text in [
        "",
        "sip:",
        "sip:@host",
        "sip:user@",
        "sip:user@host:",
        "sip:user@host:99999",
        "sip:user@host;",
        "sip:user@host;a=",
        "sip:us er@host",
        "sip:user@ho st",
        "sip:%zz@host",
        "sip:2001:db8::10",
        "sip:[2001:db8::10",
        "sip:[2001:db8::10]x",
        "<sip:user@host>",
        "1sip:user@host",
        "sip:user@1192.168.0.1",
        "sip:user@host?",
    ] {
        assert!(Uri::parse(text).is_err(), "{text:?} must not parse");
    }
}

#[test]
fn hosts() {
    let h = Host::parse("[2001:db8::1]").expect("v6");
    assert_eq!(h.ip, Some("2001:db8::1".parse::<IpAddr>().expect("ip")));
    assert!(h.same_as(&Host::parse("[2001:DB8:0::1]").expect("v6")));
    assert!(
        Host::parse("Example.COM")
            .expect("name")
            .same_as(&Host::parse("example.com").expect("name"))
    );
    assert!(
        !Host::parse("example.com")
            .expect("name")
            .same_as(&Host::parse("192.0.2.1").expect("v4"))
    );
    assert_eq!(Host::from_ip("2001:db8::1".parse().expect("ip")).text, "[2001:db8::1]");
    assert_eq!(Host::from_ip("192.0.2.1".parse().expect("ip")).text, "192.0.2.1");
    // RFC 5118 §4.10: tolerated three-colon form.
    assert!(Host::parse("[2001:db8:::192.0.2.1]").is_ok());
    for bad in ["", "[]", "[::g]", "-a.com", "a b", "256.1.1.1", "1.2.3"] {
        assert!(Host::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn unescaping() {
    assert_eq!(unescape("a%20b").as_ref(), b"a b");
    assert_eq!(unescape("%2541").as_ref(), b"%41");
    assert_eq!(unescape("100%").as_ref(), b"100%");
    assert_eq!(unescape("%zz%4").as_ref(), b"%zz%4");
    assert!(matches!(unescape("plain"), std::borrow::Cow::Borrowed(_)));
}

#[test]
fn header_names() {
    assert_eq!(HeaderName::from_text("v"), HeaderName::Via);
    assert_eq!(HeaderName::from_text("CALL-id"), HeaderName::CallId);
    assert_eq!(HeaderName::from_text("k"), HeaderName::Supported);
    assert_eq!(HeaderName::from_text("x"), HeaderName::Other("Session-Expires".into()));
    assert_eq!(HeaderName::from_text("X-Foo"), HeaderName::Other("X-Foo".into()));
    assert_eq!(HeaderName::CallId.as_str(), "Call-ID");
    assert_eq!(HeaderName::WwwAuthenticate.as_str(), "WWW-Authenticate");
    assert!(HeaderName::Via.is_list());
    assert!(HeaderName::Path.is_list());
    assert!(HeaderName::from_text("Accept").is_list());
    assert!(!HeaderName::WwwAuthenticate.is_list());
    assert!(!HeaderName::Authorization.is_list());
    assert!(!HeaderName::Other("Date".into()).is_list());
    assert!(!HeaderName::Other("X-Unknown".into()).is_list());
}

#[test]
fn via_values() {
    let v = Via::parse("SIP / 2.0 / TCP  [2001:db8::9:1] : 5061 ; branch = z9hG4bK1 ;rport;received=[2001:db8::9:255]").expect("via");
    assert_eq!(v.protocol, "SIP/2.0");
    assert_eq!(v.transport, "TCP");
    assert_eq!(v.port, Some(5061));
    assert_eq!(v.branch(), Some("z9hG4bK1"));
    assert_eq!(v.rport(), Some(None));
    assert_eq!(v.received(), Some("2001:db8::9:255".parse().expect("ip")));
    assert!(!v.is_udp());
    assert_eq!(
        v.to_string(),
        "SIP/2.0/TCP [2001:db8::9:1]:5061;branch=z9hG4bK1;rport;received=[2001:db8::9:255]"
    );
    for bad in [
        "SIP/2.0/UDP",
        "SIP/2.0/UDP192.0.2.1",
        "SIP/2.0 UDP 192.0.2.1",
        "SIP/2.0/UDP 192.0.2.1;",
        "SIP/2.0/UDP 192.0.2.1;;branch=1",
        "SIP/2.0/UDP 192.0.2.1:port",
        "SIP/2.0/UDP 192.0.2.1 x",
    ] {
        assert!(Via::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn name_addrs() {
    let n = NameAddr::parse("\"A \\\"B\\\"\" <sip:a@example.com;transport=tcp>;tag=9;expires=60").expect("na");
    assert_eq!(n.display.as_deref(), Some("\"A \\\"B\\\"\""));
    assert_eq!(n.uri.param("transport"), Some(Some("tcp")));
    assert_eq!(n.tag(), Some("9"));
    assert_eq!(n.params.get("expires"), Some(Some("60")));
    let n = NameAddr::parse("sip:a@example.com;tag=9").expect("addr-spec");
    assert!(!n.angle);
    assert!(n.uri.params.0.is_empty());
    assert_eq!(n.to_string(), "<sip:a@example.com>;tag=9");
    let n = NameAddr::parse("Alice Smith <sip:a@example.com>").expect("tokens");
    assert_eq!(n.display.as_deref(), Some("Alice Smith"));
    for bad in [
        "*",
        "\"unterminated <sip:a@example.com>",
        "Bell, Alexander <sip:a@example.com>",
        "< sip:a@example.com >",
        "<sip:a@example.com",
        "sip:a@example.com?Route=x",
        "<sip:a@example.com>;;",
        "<sip:a@example.com> junk",
    ] {
        assert!(NameAddr::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn cseq_values() {
    assert_eq!(CSeq::parse("0009  INVITE").expect("cseq").seq, 9);
    assert_eq!(CSeq::parse("4294967295 ACK").expect("cseq").method, Method::Ack);
    for bad in ["4294967296 INVITE", "INVITE", "1", "1INVITE", "-1 INVITE", "1 INVITE x"] {
        assert!(CSeq::parse(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn split_lists() {
    let v = b" <sip:a,b@x>;q=1 , \"x,y\" <sip:c@x>,,sip:d@x ";
    let parts: Vec<&[u8]> = header::split_list(v).into_iter().map(|r| &v[r]).collect();
    assert_eq!(parts, [&b"<sip:a,b@x>;q=1"[..], b"\"x,y\" <sip:c@x>", b"sip:d@x"]);
}

#[test]
fn leading_crlf_and_compact_forms() {
    let text = "\r\n\r\nINVITE sip:b@example.com SIP/2.0\r\nv: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\
f: <sip:a@example.com>;tag=1\r\nt: <sip:b@example.com>\r\ni: abc\r\nCSeq: 1 INVITE\r\n\
m: <sip:a@h>\r\nc: application/sdp\r\nl: 3\r\n\r\nabcdef";
    let m = parse(text).expect("parses");
    assert_eq!(m.call_id(), "abc");
    assert_eq!(m.body(), b"abc");
    assert_eq!(m.orig_len(), text.len());
    let out = m.to_bytes();
    assert!(out.starts_with(b"INVITE "));
    assert!(out.ends_with(b"\r\n\r\nabc"));
    assert_eq!(m.contacts().expect("m").len(), 1);
    assert_eq!(m.header(&HeaderName::ContentType).as_deref(), Some(&b"application/sdp"[..]));
}

#[test]
fn folding_is_unfolded_on_read_and_kept_on_write() {
    let m = parse(&req("Subject: first\r\n  second\r\n\tthird\r\n")).expect("parses");
    assert_eq!(m.header(&HeaderName::Subject).as_deref(), Some(&b"first second third"[..]));
    let mut e = m.clone();
    e.append_header(HeaderName::Other("X-A".into()), b"1");
    let out = String::from_utf8(e.to_bytes().to_vec()).expect("text");
    assert!(out.contains("Subject: first\r\n  second\r\n\tthird\r\n"));
    assert!(out.ends_with("Content-Length: 0\r\nX-A: 1\r\n\r\n"));
}

#[test]
fn error_reasons_and_partial() {
    let cases: &[(&str, u16, &str)] = &[
        ("CSeq: 1\r\n", 400, "multiple CSeq"),
        ("Max-Forwards: 1x\r\n", 400, "malformed Max-Forwards"),
        ("Max-Forwards: 99999999999\r\n", 400, "malformed Max-Forwards"),
        ("Content-Length: five\r\n", 400, "malformed Content-Length"),
        ("Bad Header: x\r\n", 400, "malformed header name"),
        ("NoColon\r\n", 400, "no colon"),
    ];
    for (extra, status, what) in cases {
        let e = parse(&req(extra)).expect_err(extra);
        assert_eq!(e.status, *status, "{extra}");
        assert!(e.reason.starts_with("Bad Request - "), "{}", e.reason);
        assert!(e.reason.contains(what), "{extra}: {}", e.reason);
        let p = e.partial.expect("answerable");
        assert_eq!(p.method, Method::Options);
        assert_eq!(p.top_via.branch(), Some("z9hG4bK1"));
        assert_eq!(p.copy.len(), 5 + usize::from(extra.starts_with("CSeq")));
        assert!(!p.has_to_tag);
    }
    let e = parse(&req("").replace("Call-ID: c1\r\n", "")).expect_err("missing");
    assert_eq!(e.reason, "Bad Request - missing Call-ID");
    let e = parse(&req("").replace("Via: SIP/2.0/UDP h.example.com;branch=z9hG4bK1\r\n", "")).expect_err("no via");
    assert!(e.partial.is_none());
    let e = parse(&req("").replace("SIP/2.0\r\n", "SIP/3.0\r\n")).expect_err("505");
    assert_eq!((e.status, e.reason.as_str()), (505, "Version Not Supported - SIP/3.0"));
    assert!(e.partial.is_some());
}

#[test]
fn bare_line_feeds_are_dropped() {
    let e = parse(&req("").replace("Call-ID: c1\r\n", "Call-ID: c1\n")).expect_err("bare LF");
    assert!(e.partial.is_none());
    let e = parse(&req("X: a\rb\r\n")).expect_err("bare CR");
    assert!(e.partial.is_none());
    assert!(parse("OPTIONS sip:a SIP/2.0\n\n").is_err());
    assert!(parse("").is_err());
    assert!(parse("\r\n\r\n").is_err());
}

#[test]
fn caps() {
    let many = "X: y\r\n".repeat(MAX_HEADERS);
    let e = parse(&req(&many)).expect_err("too many headers");
    assert!(e.reason.contains("too many header fields"));
    let vias = "Via: SIP/2.0/UDP h;branch=z9hG4bK2\r\n".repeat(MAX_VIAS);
    let e = parse(&req(&vias)).expect_err("too many vias");
    assert!(e.reason.contains("too many Via values"));
    let long = format!("X: {}\r\n", "a".repeat(MAX_FIELD_LEN));
    let e = parse(&req(&long)).expect_err("long field");
    assert!(e.reason.contains("header field too long"));
    assert!(e.partial.is_some());
}

#[test]
fn body_without_content_length_runs_to_the_end() {
    let text = req("").replace("Content-Length: 0\r\n", "") + "xyz";
    let m = parse(&text).expect("parses");
    assert_eq!(m.body(), b"xyz");
    assert_eq!(m.content_length(), None);
    let mut e = m.clone();
    e.set_header(HeaderName::MaxForwards, b"10");
    let out = e.to_bytes();
    assert!(out.ends_with(b"Max-Forwards: 10\r\nContent-Length: 3\r\n\r\nxyz"));
}

#[test]
fn start_line_edits() {
    let mut m = parse(&req("")).expect("parses");
    m.set_ruri(Uri::parse("sip:v@192.0.2.7:5080;transport=udp").expect("uri"));
    assert_eq!(m.ruri().expect("ruri").port, Some(5080));
    assert!(!m.is_pristine());
    let out = m.to_bytes();
    assert!(out.starts_with(b"OPTIONS sip:v@192.0.2.7:5080;transport=udp SIP/2.0\r\nVia: "));
    let mut r = parse(
        "SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP h\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=2\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n",
    )
    .expect("response");
    r.set_ruri(Uri::parse("sip:x@y").expect("uri"));
    assert!(r.is_pristine());
    assert_eq!(r.reason(), Some("Ringing"));
}

#[test]
fn replace_text_keeps_the_message_on_failure() {
    let mut m = parse(&req("")).expect("parses");
    assert!(m.replace_text(Bytes::from_static(b"garbage")).is_err());
    assert_eq!(m.call_id(), "c1");
    let new = req("").replace("c1", "c2");
    m.replace_text(Bytes::from(new.clone())).expect("replaces");
    assert_eq!(m.call_id(), "c2");
    assert_eq!(&m.to_bytes()[..], new.as_bytes());
}

#[test]
fn edited_values_cannot_inject_lines() {
    let mut m = parse(&req("")).expect("parses");
    m.append_header(HeaderName::Other("X-A".into()), b"1\r\nX-Evil: 2");
    let again = SipMessage::parse(m.to_bytes()).expect("reparses");
    assert!(!again.has_header(&HeaderName::Other("X-Evil".into())));
}

#[test]
fn semantic_checks() {
    let ok = parse(&req("")).expect("parses");
    assert!(semantic_check(&ok).is_ok());
    // Max-Forwards 0 is the script's (mf_process_maxfwd_header) and tm's call.
    let m = parse(&req("Max-Forwards: 0\r\n")).expect("parses");
    assert!(semantic_check(&m).is_ok());
    let m = parse(&req("Max-Forwards: 300\r\n")).expect("parses");
    assert!(semantic_check(&m).is_ok());
    let m = parse(&req("Proxy-Require: foo, bar\r\n")).expect("parses");
    assert_eq!(semantic_check(&m).map_err(|e| e.status), Err(420));
    assert_eq!(unsupported_proxy_require(&m), ["foo", "bar"]);
    let m = parse(&req("").replace("OPTIONS sip:u@example.com", "OPTIONS tel:+123")).expect("tel");
    assert!(semantic_check(&m).is_ok());
}

#[test]
fn framing_stream_of_two() {
    let a = req("");
    let b = req("").replace("c1", "c2");
    let stream = format!("{a}\r\n{b}");
    let (skip, len) = next_message(stream.as_bytes(), 4096).expect("ok").expect("first");
    assert_eq!((skip, len), (0, a.len()));
    let rest = &stream.as_bytes()[len..];
    let (skip, len) = next_message(rest, 4096).expect("ok").expect("second");
    assert_eq!((skip, len), (2, b.len()));
    assert_eq!(next_message(b"INVITE", 3), Err(FrameError::TooLarge(3)));
}

#[test]
fn ambiguous_lines_are_never_answered() {
    // A start-line fault would be answered, but a bare LF elsewhere in the
    // header section makes the message's structure ambiguous.
    let text = req("X: a\nY: b\r\n").replace("sip:u@example.com SIP", "<sip:u@example.com> SIP");
    let e = parse(&text).expect_err("broken");
    assert!(e.reason.contains("Request-URI"));
    assert!(e.partial.is_none());
}

#[test]
fn every_known_name_maps_to_itself() {
    for i in 0..29u8 {
        let n = HeaderName::from_index(i);
        assert_eq!(header::index_of_name(n.as_str().as_bytes()), i, "{n}");
        assert_eq!(header::index_of_name(n.as_str().to_ascii_uppercase().as_bytes()), i, "{n}");
        assert_eq!(HeaderName::from_text(&n.as_str().to_ascii_lowercase()), n);
    }
    assert_eq!(header::index_of_name(b"X-Via"), header::hid::OTHER);
    assert_eq!(header::index_of_name(b""), header::hid::OTHER);
}

#[test]
fn a_message_at_the_via_cap_grows_past_it_when_forwarded() {
    // Found by the fuzzer: MAX_VIAS values parse; the proxy's own Via makes
    // the forwarded message one over the cap, which the next hop (if it is
    // serlua) answers with a 400 naming it.
    let vias = "Via: SIP/2.0/UDP h;branch=z9hG4bK2\r\n".repeat(MAX_VIAS - 1);
    let mut m = parse(&req(&vias)).expect("at the cap");
    assert_eq!(m.vias().len(), MAX_VIAS);
    m.insert_first(HeaderName::Via, b"SIP/2.0/UDP p;branch=z9hG4bK3");
    let e = SipMessage::parse(m.to_bytes()).expect_err("over the cap");
    assert_eq!(e.reason, "Bad Request - too many Via values");
}

#[test]
fn name_addr_accepts_one_dangling_semicolon() {
    let a = NameAddr::parse("<sip:alice@example.com>;tag=1;").expect("deployed phones send this");
    assert_eq!(a.tag(), Some("1"));
    assert!(
        NameAddr::parse("<sip:alice@example.com>;tag=1;;").is_err(),
        "two are an empty parameter"
    );
}
