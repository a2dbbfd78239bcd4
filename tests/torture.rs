//! RFC 4475 ("SIP Torture Test Messages") and RFC 5118 ("SIP Torture Test
//! Messages for IPv6") run against the parser, one test per message.
//!
//! The messages live in `tests/torture/rfc4475/<name>.dat` and
//! `tests/torture/rfc5118/<name>.dat`, bit-exact as the RFCs' Appendix A
//! archives hold them (see `tests/torture/README.md` for provenance and the
//! two documented quirks of those archives). Each test asserts what the RFC
//! section says the element must do. Where the RFC leaves the answer to a
//! layer above the parser, the message parses here and a comment names the
//! component that answers it: [`semantic_check`] (the proxy's request
//! validation, RFC 3261 §16.3, called by the core after parsing), the
//! transaction layer (`tm`), the registrar, or a UAS.
//!
//! At the end, a seeded property test feeds mutated torture messages and
//! random bytes through parse → to_bytes → re-parse → accessors (the same
//! body as `fuzz/fuzz_targets/parse_message.rs`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

mod common;

use bytes::Bytes;
use common::corpus::{bytes_of, read, wire5118};
use serlua::sip::framing::{FrameError, next_message};
use serlua::sip::uri::unescape;
use serlua::sip::{HeaderName, Method, ParseError, Scheme, SipMessage, StartLine, semantic_check, unsupported_proxy_require};

/// The message parses; its pristine output is the input (minus what lies
/// beyond Content-Length); an edited copy re-parses to the same values.
fn ok(dir: &str, name: &str) -> SipMessage {
    let b = bytes_of(dir, name);
    let m = SipMessage::parse(Bytes::from(b.clone())).unwrap_or_else(|e| panic!("{name} must parse, got {e}"));
    assert!(m.is_pristine());
    let out = m.to_bytes();
    assert!(b.starts_with(&out), "{name}: pristine output is a prefix");
    assert_eq!(m.orig_len(), b.len());
    // An edit: the proxy's Via on top, Max-Forwards decremented.
    let mut e = m.clone();
    e.insert_first(HeaderName::Via, b"SIP/2.0/UDP proxy.example.net;branch=z9hG4bKtorture");
    if let Some(mf) = m.max_forwards() {
        e.set_header(HeaderName::MaxForwards, mf.saturating_sub(1).to_string().as_bytes());
    }
    let again = SipMessage::parse(e.to_bytes()).unwrap_or_else(|err| panic!("{name}: edited output must parse: {err}"));
    assert_eq!(again.vias().len(), m.vias().len() + 1, "{name}");
    assert_eq!(&again.vias()[1..], m.vias(), "{name}");
    assert_eq!(again.from(), m.from(), "{name}");
    assert_eq!(again.to(), m.to(), "{name}");
    assert_eq!(again.call_id(), m.call_id(), "{name}");
    assert_eq!(again.cseq(), m.cseq(), "{name}");
    assert_eq!(again.body(), m.body(), "{name}");
    assert_eq!(again.start_line(), m.start_line(), "{name}");
    m
}

fn err(dir: &str, name: &str) -> ParseError {
    match SipMessage::parse(Bytes::from(bytes_of(dir, name))) {
        Ok(_) => panic!("{name} must not parse"),
        Err(e) => e,
    }
}

/// A 400 that can be answered: the reason names `what`, and the partial
/// request carries the top Via and the lines to copy.
fn answered(e: &ParseError, status: u16, what: &str) {
    assert_eq!(e.status, status, "{e}");
    assert!(e.reason.contains(what), "reason {:?} should name {what:?}", e.reason);
    let p = e.partial.as_ref().expect("a reply is possible");
    assert!(!p.top_via.host.text.is_empty());
    assert!(p.copy.iter().any(|(n, _)| n.eq_ignore_ascii_case("Via") || n == "v"));
}

fn dropped(e: &ParseError) {
    assert!(e.partial.is_none(), "must be dropped: {e}");
}

fn h<'a>(m: &'a SipMessage, name: &str) -> Option<std::borrow::Cow<'a, [u8]>> {
    m.header(&HeaderName::from_text(name))
}

fn sem(m: &SipMessage) -> Option<(u16, String)> {
    semantic_check(m).err().map(|e| (e.status, e.reason))
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

macro_rules! torture {
    ($($test:ident: $dir:literal / $name:literal => $body:expr;)*) => {
        $(
            #[test]
            fn $test() {
                let check: fn(&str, &str) = $body;
                check($dir, $name);
            }
        )*

        /// Every message of both archives has a test, and only those.
        #[test]
        fn corpus_is_complete() {
            let listed: Vec<String> = vec![$(format!("{}/{}", $dir, $name)),*];
            let mut on_disk = Vec::new();
            for dir in ["rfc4475", "rfc5118"] {
                let path = format!("{}/tests/torture/{dir}", env!("CARGO_MANIFEST_DIR"));
                for e in std::fs::read_dir(path).expect("corpus dir") {
                    let n = e.expect("entry").file_name().to_string_lossy().into_owned();
                    if let Some(stem) = n.strip_suffix(".dat") {
                        on_disk.push(format!("{dir}/{stem}"));
                    }
                }
            }
            let mut listed_sorted = listed.clone();
            listed_sorted.sort();
            on_disk.sort();
            assert_eq!(listed_sorted, on_disk);
            assert_eq!(on_disk.iter().filter(|n| n.starts_with("rfc4475/")).count(), 50);
            assert_eq!(on_disk.iter().filter(|n| n.starts_with("rfc5118/")).count(), 12);
        }
    };
}

torture! {
    // ---- RFC 4475 §3.1.1 Valid messages ------------------------------------

    // §3.1.1.1 A Short Tortuous INVITE: folding, LWS around colons and
    // semicolons, compact and odd-case names, unknown headers and params,
    // leading zeros. "All elements should treat this as a well-formed
    // request."
    wsinv: "rfc4475" / "wsinv" => |d, n| {
        let m = ok(d, n);
        let ruri = m.ruri().expect("request");
        assert_eq!(ruri.user.as_deref(), Some("vivekg"));
        assert_eq!(ruri.host.text, "chair-dnrc.example.com");
        assert_eq!(ruri.param("unknownparam"), Some(None));
        // To: addr-spec on a folded line; the params are header params.
        assert!(!m.to().angle);
        assert_eq!(m.to().tag(), Some("1918181833n"));
        assert!(m.to().uri.params.0.is_empty());
        // From: escaped characters within quotes, params on folded lines.
        assert_eq!(m.from().display.as_deref(), Some(r#""J Rosenberg \\\"""#));
        assert_eq!(m.from().tag(), Some("98asjd8"));
        assert_eq!(m.max_forwards(), Some(68));
        assert_eq!(m.call_id(), "wsinv.ndaksdj@192.0.2.1");
        assert_eq!(m.content_length(), Some(150));
        assert_eq!(m.body().len(), 150);
        assert_eq!(m.cseq().seq, 9);
        assert_eq!(m.cseq().method, Method::Invite);
        // Three Via values: one folded field, then a compact `v:` field
        // holding two comma-separated values with LWS around `/` and `=`.
        let vias = m.vias();
        assert_eq!(vias.len(), 3);
        assert_eq!(vias[0].protocol, "SIP/2.0");
        assert_eq!(vias[0].transport, "UDP");
        assert_eq!(vias[0].host.ip, Some(ip("192.0.2.2")));
        assert_eq!(vias[0].branch(), Some("390skdjuw"));
        assert_eq!(vias[1].transport, "TCP");
        assert_eq!(vias[1].host.text, "spindle.example.com");
        assert_eq!(vias[1].branch(), Some("z9hG4bK9ikj8"));
        assert_eq!(vias[2].host.text, "192.168.255.111");
        assert_eq!(vias[2].branch(), Some("z9hG4bK30239"));
        // An empty Subject (compact `s`).
        assert_eq!(h(&m, "Subject").as_deref(), Some(&b""[..]));
        // Folded unknown header, unfolded on read.
        assert_eq!(
            h(&m, "newfangledheader").as_deref(),
            Some(&b"newfangled value continued newfangled value"[..])
        );
        // An unknown header is never split or parsed as params: forwarded
        // unchanged.
        assert_eq!(
            m.headers(&HeaderName::from_text("UnknownHeaderWithUnusualValue")),
            vec![std::borrow::Cow::Borrowed(&b";;,,;;,;"[..])]
        );
        let routes = m.routes().expect("Route");
        assert_eq!(routes.len(), 1);
        assert_eq!(routes[0].uri.param("lr"), Some(None));
        assert_eq!(routes[0].uri.param("unknownwith"), Some(Some("value")));
        assert_eq!(routes[0].uri.param("unknown-no-value"), Some(None));
        let contacts = m.contacts().expect("Contact");
        assert_eq!(contacts[0].display.as_deref(), Some(r#""Quoted string \"\"""#));
        assert_eq!(contacts[0].params.get("newparam"), Some(Some("newvalue")));
        assert_eq!(contacts[0].params.get("secondparam"), Some(None));
        assert_eq!(contacts[0].params.get("q"), Some(Some("0.33")));
        assert_eq!(semantic_check(&m).ok(), Some(()));
        // Untouched folded lines are forwarded byte-identical after edits.
        let mut e = m.clone();
        e.insert_first(HeaderName::Via, b"SIP/2.0/UDP p.example.net;branch=z9hG4bKx");
        let out = e.to_bytes();
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("from   : \"J Rosenberg \\\\\\\"\"       <sip:jdrosen@example.com>\r\n  ;\r\n  tag = 98asjd8\r\n"));
        assert!(text.contains("cseq: 0009\r\n  INVITE\r\n"));
    };

    // §3.1.1.2 Wide Range of Valid Characters. Proxies forward it; a UAS
    // may answer 501 (semantic_check passes: the methods agree).
    intmeth: "rfc4475" / "intmeth" => |d, n| {
        let m = ok(d, n);
        let method = Method::Other("!interesting-Method0123456789_*+`.%indeed'~".into());
        assert_eq!(m.method(), Some(&method));
        assert_eq!(m.cseq().method, method);
        assert_eq!(m.cseq().seq, 139122385);
        let ruri = m.ruri().expect("request");
        assert_eq!(ruri.user.as_deref(), Some("1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"));
        assert_eq!(ruri.password.as_deref(), Some("&it+has=1,weird!*pas$wo~d_too.(doesn't-it)"));
        assert_eq!(ruri.host.text, "example.com");
        assert_eq!(m.top_via().branch(), Some("z9hG4bK-.!%66*_+`'~"));
        // quoted-pairs in the To display name, a NUL among them.
        let to_display = m.to().display.clone().expect("display");
        assert!(to_display.contains("NUL:\\\u{0}"));
        assert_eq!(m.to().uri.user.as_deref(), Some("1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*"));
        // A display name of several tokens with every token character.
        assert_eq!(m.from().display.as_deref(), Some("token1~` token2'+_ token3*%!.-"));
        assert_eq!(m.from().params.get("fromParam''~+*_!.-%"), Some(Some("\"работающий\"")));
        assert_eq!(m.from().tag(), Some("_token~1'+`*%!-."));
        // % is not an escape and " is not a quote in a Call-ID word.
        assert_eq!(m.call_id(), "intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{");
        assert_eq!(m.max_forwards(), Some(255));
        assert_eq!(
            h(&m, "extensionHeader-!.%*+_`'~").as_deref(),
            Some("\u{feff}大停電".as_bytes())
        );
        assert_eq!(semantic_check(&m).ok(), Some(()));
    };

    // §3.1.1.3 Valid Use of the % Escaping Mechanism: escapes are kept as
    // written, and mean the characters they encode; unescaping is never
    // recursive.
    esc01: "rfc4475" / "esc01" => |d, n| {
        let m = ok(d, n);
        let ruri = m.ruri().expect("request");
        assert_eq!(ruri.user.as_deref(), Some("sips%3Auser%40example.com"));
        assert_eq!(ruri.user_unescaped().as_deref(), Some(&b"sips:user@example.com"[..]));
        assert_eq!(ruri.host.text, "example.net");
        assert_eq!(m.to().uri.user_unescaped().as_deref(), Some(&b"user"[..]));
        assert_eq!(m.from().uri.user_unescaped().as_deref(), Some(&b"I have spaces"[..]));
        assert_eq!(m.call_id(), "esc01.239409asdfakjkn23onasd0-3234");
        assert_eq!(h(&m, "Content-Type").as_deref(), Some(&b"application/sdp"[..]));
        let c = &m.contacts().expect("Contact")[0];
        assert_eq!(c.uri.user_unescaped().as_deref(), Some(&b"caller"[..]));
        assert_eq!(unescape(&c.uri.params.0[0].0).as_ref(), b"lr");
        let (name, value) = &c.uri.params.0[1];
        assert_eq!(unescape(name).as_ref(), b"name");
        // "value%41", NOT "valueA".
        assert_eq!(unescape(value.as_deref().expect("value")).as_ref(), b"value%41");
    };

    // §3.1.1.4 Escaped Nulls in URIs: the AOR is not shortened at the NUL;
    // two distinct contacts are registered.
    escnull: "rfc4475" / "escnull" => |d, n| {
        let m = ok(d, n);
        assert_eq!(m.method(), Some(&Method::Register));
        assert_eq!(m.to().uri.user_unescaped().as_deref(), Some(&b"null-\0-null"[..]));
        assert_eq!(m.from().uri.user_unescaped().as_deref(), Some(&b"null-\0-null"[..]));
        let c = m.contacts().expect("Contact");
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].uri.user_unescaped().as_deref(), Some(&b"\0"[..]));
        assert_eq!(c[1].uri.user_unescaped().as_deref(), Some(&b"\0\0"[..]));
        assert_ne!(c[0].uri, c[1].uri);
    };

    // §3.1.1.5 Use of % When It Is Not an Escape: the method is
    // RE%47IST%45R (an unknown method, not REGISTER) and C%6Fntact is an
    // extension header, so there are two Contacts. The registrar never
    // sees it as a REGISTER; a UAS may answer 501.
    esc02: "rfc4475" / "esc02" => |d, n| {
        let m = ok(d, n);
        assert_eq!(m.method(), Some(&Method::Other("RE%47IST%45R".into())));
        assert_eq!(m.cseq().method, Method::Other("RE%47IST%45R".into()));
        assert_eq!(m.to().display.as_deref(), Some("\"%Z%45\""));
        assert_eq!(m.contacts().expect("Contact").len(), 2);
        assert_eq!(h(&m, "C%6Fntact").as_deref(), Some(&b"<sip:alias2@host2.example.com>"[..]));
        assert_eq!(semantic_check(&m).ok(), Some(()));
    };

    // §3.1.1.6 No LWS between Display Name and <: accepted.
    lwsdisp: "rfc4475" / "lwsdisp" => |d, n| {
        let m = ok(d, n);
        assert_eq!(m.from().display.as_deref(), Some("caller"));
        assert_eq!(m.from().uri.user.as_deref(), Some("caller"));
        assert_eq!(m.from().tag(), Some("323"));
    };

    // §3.1.1.7 Long Values in Header Fields: long display name, params,
    // tag, Call-ID, branch, and 34 Via values under every case and
    // compact form of the name.
    longreq: "rfc4475" / "longreq" => |d, n| {
        let m = ok(d, n);
        let to = m.to();
        assert!(to.display.as_deref().expect("display").contains(&"extreme".repeat(10)));
        assert_eq!(to.uri.port, Some(6000));
        assert_eq!(to.uri.params.0.len(), 3);
        assert!(to.uri.params.0[0].1.as_deref().is_some_and(|v| v.len() > 80));
        assert!(to.uri.params.0[1].0.len() > 80);
        assert!(to.uri.params.0[2].0.len() > 80 && to.uri.params.0[2].1.is_none());
        assert!(m.from().tag().expect("tag").len() > 100);
        assert!(m.from().params.0.iter().any(|(k, _)| k.len() > 50));
        assert!(m.call_id().len() > 100);
        assert_eq!(m.vias().len(), 34);
        assert_eq!(m.vias()[0].host.text, "sip33.example.com");
        let last = &m.vias()[33];
        assert_eq!(last.received(), Some(ip("192.0.2.5")));
        assert!(last.branch().expect("branch").len() > 100);
        let long = m
            .header_fields()
            .into_iter()
            .find(|(k, _)| k.starts_with("Unknown-LongLong"))
            .expect("the long unknown header");
        assert!(long.0.len() > 80 && long.1.len() > 80);
        assert_eq!(m.body().len(), 150);
    };

    // §3.1.1.8 Extra Trailing Octets in a UDP Datagram: the REGISTER is
    // handled normally, the bytes after its (empty) body are ignored.
    dblreq: "rfc4475" / "dblreq" => |d, n| {
        let m = ok(d, n);
        assert_eq!(m.method(), Some(&Method::Register));
        assert_eq!(m.content_length(), Some(0));
        assert!(m.body().is_empty());
        let out = m.to_bytes();
        assert!(out.len() < m.orig_len());
        assert!(!String::from_utf8_lossy(&out).contains("INVITE"));
        assert!(out.ends_with(b"Content-Length: 0\r\n\r\n"));
    };

    // §3.1.1.9 Semicolon-Separated Parameters in URI User Part.
    semiuri: "rfc4475" / "semiuri" => |d, n| {
        let m = ok(d, n);
        let ruri = m.ruri().expect("request");
        assert_eq!(ruri.user.as_deref(), Some("user;par=u%40example.net"));
        assert_eq!(ruri.user_unescaped().as_deref(), Some(&b"user;par=u@example.net"[..]));
        assert_eq!(ruri.host.text, "example.com");
        assert!(ruri.params.0.is_empty());
    };

    // §3.1.1.10 Varied and Unknown Transport Types.
    transports: "rfc4475" / "transports" => |d, n| {
        let m = ok(d, n);
        let t: Vec<&str> = m.vias().iter().map(|v| v.transport.as_str()).collect();
        assert_eq!(t, ["UDP", "SCTP", "TLS", "UNKNOWN", "TCP"]);
    };

    // §3.1.1.11 Multipart MIME Message with a binary part holding NULs:
    // framed by Content-Length, body intact.
    mpart01: "rfc4475" / "mpart01" => |d, n| {
        let m = ok(d, n);
        assert_eq!(m.method(), Some(&Method::Message));
        assert_eq!(m.content_length(), Some(553));
        assert_eq!(m.body().len(), 553);
        assert!(m.body().contains(&0));
        assert!(m.body().starts_with(b"--7a9cbec02ceef655\r\n"));
        assert!(m.body().ends_with(b"--7a9cbec02ceef655--\r\n"));
        assert!(h(&m, "Content-Type").expect("type").starts_with(b"multipart/mixed"));
    };

    // §3.1.1.12 Unusual Reason Phrase (UTF-8): a 200 like any other.
    unreason: "rfc4475" / "unreason" => |d, n| {
        let m = ok(d, n);
        assert_eq!(m.status(), Some(200));
        let reason = m.reason().expect("reason");
        assert!(reason.starts_with("= 2**3 * 5**2 "));
        assert!(reason.ends_with("простое"));
    };

    // §3.1.1.13 Empty Reason Phrase.
    noreason: "rfc4475" / "noreason" => |d, n| {
        let m = ok(d, n);
        assert_eq!(m.status(), Some(100));
        assert_eq!(m.reason(), Some(""));
    };

    // ---- RFC 4475 §3.1.2 Invalid messages ----------------------------------

    // §3.1.2.1 Extraneous Header Field Separators in Via (and Contact):
    // 400. The sent-by is still readable, so the 400 goes back to it.
    badinv01: "rfc4475" / "badinv01" => |d, n| {
        let e = err(d, n);
        answered(&e, 400, "Via");
        let p = e.partial.expect("partial");
        assert_eq!(p.method, Method::Invite);
        assert_eq!(p.top_via.host.ip, Some(ip("192.0.2.15")));
        let names: Vec<&str> = p.copy.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["To", "From", "Call-ID", "CSeq", "Via"]);
        assert!(!p.has_to_tag);
    };

    // §3.1.2.2 Content Length Larger Than Message: 400 on UDP; on a
    // stream the framer waits for more bytes.
    clerr: "rfc4475" / "clerr" => |d, n| {
        let e = err(d, n);
        answered(&e, 400, "Content-Length larger than message");
        assert_eq!(next_message(&read(d, n), 65535), Ok(None));
    };

    // §3.1.2.3 Negative Content-Length: an error; on a stream, fatal.
    ncl: "rfc4475" / "ncl" => |d, n| {
        let e = err(d, n);
        answered(&e, 400, "Content-Length");
        assert_eq!(next_message(&read(d, n), 65535), Err(FrameError::BadContentLength));
    };

    // §3.1.2.4 Request Scalar Fields with Overlarge Values: 400 for the
    // CSeq (Max-Forwards 300 and the Expires values alone would not be).
    scalar02: "rfc4475" / "scalar02" => |d, n| {
        let e = err(d, n);
        answered(&e, 400, "CSeq");
        assert_eq!(e.partial.expect("partial").top_via.transport, "TCP");
    };

    // §3.1.2.5 Response Scalar Fields with Overlarge Values: discarded.
    scalarlg: "rfc4475" / "scalarlg" => |d, n| {
        let e = err(d, n);
        assert!(e.reason.contains("CSeq"));
        dropped(&e);
    };

    // §3.1.2.6 Unterminated Quoted String in Display Name: 400.
    quotbal: "rfc4475" / "quotbal" => |d, n| answered(&err(d, n), 400, "To");

    // §3.1.2.7 <> Enclosing Request-URI: 400.
    ltgtruri: "rfc4475" / "ltgtruri" => |d, n| answered(&err(d, n), 400, "Request-URI");

    // §3.1.2.8 Malformed SIP Request-URI (embedded LWS): 400.
    lwsruri: "rfc4475" / "lwsruri" => |d, n| answered(&err(d, n), 400, "Request-URI");

    // §3.1.2.9 Multiple SP Separating Request-Line Elements: rejected as
    // malformed (the RFC allows either; we are strict).
    lwsstart: "rfc4475" / "lwsstart" => |d, n| answered(&err(d, n), 400, "Request-Line");

    // §3.1.2.10 SP Characters at End of Request-Line: rejected.
    trws: "rfc4475" / "trws" => |d, n| answered(&err(d, n), 400, "Request-Line");

    // §3.1.2.11 Escaped Headers in SIP Request-URI: rejected (RFC 3261
    // §19.1.1 forbids headers in a Request-URI).
    escruri: "rfc4475" / "escruri" => |d, n| answered(&err(d, n), 400, "headers in Request-URI");

    // §3.1.2.12 Invalid Time Zone in Date Header Field: a proxy does not
    // interpret Date and forwards it unchanged, so it parses here.
    baddate: "rfc4475" / "baddate" => |d, n| {
        let m = ok(d, n);
        assert_eq!(h(&m, "Date").as_deref(), Some(&b"Fri, 01 Jan 2010 16:00:00 EST"[..]));
        assert_eq!(semantic_check(&m).ok(), Some(()));
    };

    // §3.1.2.13 Failure to Enclose name-addr URI in <>: Contact is parsed
    // on demand, so a proxy forwards it; the registrar reads contacts()
    // and answers 400.
    regbadct: "rfc4475" / "regbadct" => |d, n| {
        let m = ok(d, n);
        let e = m.contacts().expect_err("addr-spec with ?headers");
        assert_eq!(e.status, 400);
        assert!(e.reason.contains("<>"), "{}", e.reason);
    };

    // §3.1.2.14 Spaces within addr-spec: 400.
    badaspec: "rfc4475" / "badaspec" => |d, n| answered(&err(d, n), 400, "To");

    // §3.1.2.15 Non-token Characters in Display Name: 400. (The archived
    // file also lacks the final empty line; the From fault is found first.)
    baddn: "rfc4475" / "baddn" => |d, n| answered(&err(d, n), 400, "From");

    // §3.1.2.16 Unknown Protocol Version: 505, the reason names it.
    badvers: "rfc4475" / "badvers" => |d, n| {
        let e = err(d, n);
        answered(&e, 505, "SIP/7.0");
        assert_eq!(e.partial.expect("partial").method, Method::Options);
    };

    // §3.1.2.17 Start Line and CSeq Method Mismatch: parses; the proxy's
    // request validation (semantic_check) answers 400.
    mismatch01: "rfc4475" / "mismatch01" => |d, n| {
        let m = ok(d, n);
        assert_eq!(sem(&m), Some((400, "Bad Request - CSeq method mismatch".into())));
    };

    // §3.1.2.18 Unknown Method with CSeq Method Mismatch: the RFC prefers
    // 501 "particularly at proxies" (400 also acceptable).
    mismatch02: "rfc4475" / "mismatch02" => |d, n| {
        let m = ok(d, n);
        assert_eq!(m.method(), Some(&Method::Other("NEWMETHOD".into())));
        assert_eq!(sem(&m).map(|s| s.0), Some(501));
    };

    // §3.1.2.19 Overlarge Response Code: dropped.
    bigcode: "rfc4475" / "bigcode" => |d, n| dropped(&err(d, n));

    // ---- RFC 4475 §3.2 Transaction layer -----------------------------------

    // §3.2.1 Missing Transaction Identifier (branch=z9hG4bK and nothing
    // more): the parser must not break; tm decides between a 400 and
    // RFC 2543 matching.
    badbranch: "rfc4475" / "badbranch" => |d, n| {
        let m = ok(d, n);
        assert_eq!(m.top_via().branch(), Some("z9hG4bK"));
        assert_eq!(semantic_check(&m).ok(), Some(()));
    };

    // ---- RFC 4475 §3.3 Application-layer semantics -------------------------

    // §3.3.1 Missing Required Header Fields: 400 naming them.
    insuf: "rfc4475" / "insuf" => |d, n| answered(&err(d, n), 400, "missing From, To, Call-ID");

    // §3.3.2 Request-URI with Unknown Scheme: parses; 416 from
    // semantic_check (the To URI does not matter for routing).
    unkscm: "rfc4475" / "unkscm" => |d, n| {
        let m = ok(d, n);
        let ruri = m.ruri().expect("request");
        assert_eq!(ruri.scheme, Scheme::Other("nobodyknowsthisscheme".into()));
        assert_eq!(ruri.opaque.as_deref(), Some("totallyopaquecontent"));
        assert!(m.to().uri.is_sip());
        assert_eq!(sem(&m).map(|s| s.0), Some(416));
    };

    // §3.3.3 Request-URI with Known but Atypical Scheme: parses; 416.
    novelsc: "rfc4475" / "novelsc" => |d, n| {
        let m = ok(d, n);
        assert_eq!(m.ruri().expect("request").scheme, Scheme::Other("soap.beep".into()));
        assert_eq!(sem(&m).map(|s| s.0), Some(416));
    };

    // §3.3.4 Unknown URI Schemes in Header Fields: parses; a proxy
    // forwards it, the registrar (not the parser) rejects a non-SIP AOR.
    unksm2: "rfc4475" / "unksm2" => |d, n| {
        let m = ok(d, n);
        assert_eq!(m.to().uri.scheme, Scheme::Other("isbn".into()));
        assert_eq!(m.from().uri.scheme, Scheme::Other("http".into()));
        assert_eq!(m.from().tag(), Some("3234233"));
        assert_eq!(m.contacts().expect("Contact")[0].uri.scheme, Scheme::Other("name".into()));
        assert_eq!(semantic_check(&m).ok(), Some(()));
    };

    // §3.3.5 Proxy-Require and Require: a proxy answers 420 listing the
    // Proxy-Require tags in Unsupported; Require is the UAS's business.
    bext01: "rfc4475" / "bext01" => |d, n| {
        let m = ok(d, n);
        assert_eq!(sem(&m), Some((420, "Bad Extension".into())));
        assert_eq!(
            unsupported_proxy_require(&m),
            ["noProxiesSupportThis", "norDoAnyProxiesSupportThis"]
        );
    };

    // §3.3.6 Unknown Content-Type: a proxy processes it like any INVITE;
    // the UAS answers 415.
    invut: "rfc4475" / "invut" => |d, n| {
        let m = ok(d, n);
        assert_eq!(h(&m, "Content-Type").as_deref(), Some(&b"application/unknownformat"[..]));
        assert_eq!(semantic_check(&m).ok(), Some(()));
    };

    // §3.3.7 Unknown Authorization Scheme: forwarded with the field
    // unmodified; the registrar/auth module decides (401 or ignore).
    regaut01: "rfc4475" / "regaut01" => |d, n| {
        let m = ok(d, n);
        assert_eq!(
            h(&m, "Authorization").as_deref(),
            Some(&b"NoOneKnowsThisScheme opaque-data=here"[..])
        );
        assert_eq!(semantic_check(&m).ok(), Some(()));
    };

    // §3.3.8 Multiple Values in Single Value Required Fields: 400.
    multi01: "rfc4475" / "multi01" => |d, n| answered(&err(d, n), 400, "multiple");

    // §3.3.9 Multiple Content-Length Values: an error; on a stream the
    // framing error is not recoverable.
    mcl01: "rfc4475" / "mcl01" => |d, n| {
        answered(&err(d, n), 400, "multiple Content-Length");
        assert_eq!(next_message(&read(d, n), 65535), Err(FrameError::BadContentLength));
    };

    // §3.3.10 200 OK with a broadcast address in the second Via: well
    // formed; after removing the top Via the proxy's transport layer must
    // not send to 255.255.255.255 (not a parser decision).
    bcast: "rfc4475" / "bcast" => |d, n| {
        let mut m = ok(d, n);
        assert_eq!(m.status(), Some(200));
        assert_eq!(m.vias()[1].host.ip, Some(IpAddr::V4(Ipv4Addr::BROADCAST)));
        m.remove_first_value(&HeaderName::Via);
        assert!(m.top_via().host.ip.is_some_and(|a| a == IpAddr::V4(Ipv4Addr::BROADCAST)));
    };

    // §3.3.11 Max-Forwards of Zero: the script's mf_process_maxfwd_header
    // answers 483 (tests/torture_wire.rs); the parser only reads the 0.
    zeromf: "rfc4475" / "zeromf" => |d, n| {
        let m = ok(d, n);
        assert_eq!(m.max_forwards(), Some(0));
        assert_eq!(sem(&m), None);
    };

    // §3.3.12 REGISTER with a Contact Header Parameter: `unknownparam` is
    // a contact-param, not a uri-param.
    cparam01: "rfc4475" / "cparam01" => |d, n| {
        let m = ok(d, n);
        let c = &m.contacts().expect("Contact")[0];
        assert!(!c.angle);
        assert_eq!(c.params.get("unknownparam"), Some(None));
        assert!(c.uri.params.0.is_empty());
        assert_eq!(c.uri.user.as_deref(), Some("+19725552222"));
    };

    // §3.3.13 REGISTER with a url-parameter: inside <>, it is the URI's.
    cparam02: "rfc4475" / "cparam02" => |d, n| {
        let m = ok(d, n);
        let c = &m.contacts().expect("Contact")[0];
        assert!(c.angle);
        assert_eq!(c.uri.param("unknownparam"), Some(None));
        assert!(c.params.0.is_empty());
    };

    // §3.3.14 REGISTER with a URL Escaped Header: legal in a Contact; the
    // registrar stores it as given.
    regescrt: "rfc4475" / "regescrt" => |d, n| {
        let m = ok(d, n);
        let c = &m.contacts().expect("Contact")[0];
        assert_eq!(c.uri.headers.as_deref(), Some("Route=%3Csip:sip.example.com%3E"));
        assert_eq!(semantic_check(&m).ok(), Some(()));
    };

    // §3.3.15 Unacceptable Accept Offering: the UAS's concern (406).
    sdp01: "rfc4475" / "sdp01" => |d, n| {
        let m = ok(d, n);
        assert_eq!(h(&m, "Accept").as_deref(), Some(&b"text/nobodyKnowsThis"[..]));
        assert_eq!(semantic_check(&m).ok(), Some(()));
    };

    // ---- RFC 4475 §3.4 Backward compatibility ------------------------------

    // §3.4.1 INVITE with RFC 2543 Syntax: no branch, no From tag, no
    // Content-Length (the body is the rest of the datagram), no
    // Max-Forwards.
    inv2543: "rfc4475" / "inv2543" => |d, n| {
        let m = ok(d, n);
        assert_eq!(m.top_via().branch(), None);
        assert_eq!(m.from().tag(), None);
        assert_eq!(m.content_length(), None);
        assert_eq!(m.max_forwards(), None);
        assert!(m.body().starts_with(b"v=0\r\n"));
        assert_eq!(m.to_bytes().len(), m.orig_len());
        assert_eq!(m.record_routes().expect("Record-Route")[0].uri.param("maddr"), Some(Some("ss1.example.com")));
        assert_eq!(semantic_check(&m).ok(), Some(()));
    };

    // test.dat is in the Appendix A archive but referenced by no section:
    // a Request-Line without SIP-Version and no Via, so it is dropped.
    test_dat: "rfc4475" / "test" => |d, n| dropped(&err(d, n));

    // ---- RFC 5118 ----------------------------------------------------------

    // §4.1 Valid SIP Message with an IPv6 Reference.
    ipv6_good: "rfc5118" / "ipv6-good" => |d, n| {
        let m = ok(d, n);
        let ruri = m.ruri().expect("request");
        assert_eq!(ruri.host.ip, Some(ip("2001:db8::10")));
        assert_eq!(ruri.host.text, "[2001:db8::10]");
        assert_eq!(ruri.port, None);
        assert_eq!(m.top_via().host.ip, Some(ip("2001:db8::9:1")));
        assert_eq!(m.contacts().expect("Contact")[0].uri.host.ip, Some(ip("2001:db8::1")));
    };

    // §4.2 Invalid SIP Message with an IPv6 Reference (no brackets): 400.
    ipv6_bad: "rfc5118" / "ipv6-bad" => |d, n| answered(&err(d, n), 400, "Request-URI");

    // §4.3 Port Ambiguous in a SIP URI: well formed; the "port" is part of
    // the address.
    port_ambiguous: "rfc5118" / "port-ambiguous" => |d, n| {
        let m = ok(d, n);
        let ruri = m.ruri().expect("request");
        assert_eq!(ruri.host.ip, Some(ip("2001:db8::10:5070")));
        assert_eq!(ruri.port, None);
    };

    // §4.4 Port Unambiguous in a SIP URI.
    port_unambiguous: "rfc5118" / "port-unambiguous" => |d, n| {
        let m = ok(d, n);
        let ruri = m.ruri().expect("request");
        assert_eq!(ruri.host.ip, Some(ip("2001:db8::10")));
        assert_eq!(ruri.port, Some(5070));
    };

    // §4.5 IPv6 Reference Delimiters in Via Header: `received` with and
    // without brackets must both be accepted.
    via_received_param_with_delim: "rfc5118" / "via-received-param-with-delim" => |d, n| {
        let m = ok(d, n);
        assert_eq!(m.top_via().received(), Some(ip("2001:db8::9:255")));
        assert_eq!(m.top_via().host.ip, Some(ip("2001:db8::9:1")));
        assert_eq!(m.top_via().branch(), Some("z9hG4bKas3-111"));
    };
    via_received_param_no_delim: "rfc5118" / "via-received-param-no-delim" => |d, n| {
        let m = ok(d, n);
        assert_eq!(m.top_via().received(), Some(ip("2001:db8::9:255")));
        assert_eq!(m.top_via().branch(), Some("z9hG4bKas3"));
    };

    // §4.6 SIP Request with IPv6 Addresses in SDP Body. (As archived, the
    // declared Content-Length exceeds the body: on UDP that alone is a
    // 400, which the last assertion shows.)
    ipv6_in_sdp: "rfc5118" / "ipv6-in-sdp" => |d, n| {
        let m = ok(d, n);
        assert_eq!(m.ruri().expect("request").host.ip, Some(ip("2001:db8::10")));
        assert!(String::from_utf8_lossy(m.body()).contains("c=IN IP6 2001:db8::20\r\n"));
        let crlf_only: Vec<u8> = read(d, n).iter().flat_map(|&b| if b == b'\n' { vec![b'\r', b'\n'] } else { vec![b] }).collect();
        let e = SipMessage::parse(Bytes::from(crlf_only)).expect_err("declared length too large");
        assert!(e.reason.contains("Content-Length larger than message"));
    };

    // §4.7 Multiple IP Addresses in SIP Headers.
    mult_ip_in_header: "rfc5118" / "mult-ip-in-header" => |d, n| {
        let m = ok(d, n);
        let v = m.vias();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].host.ip, Some(ip("2001:db8::9:1")));
        assert_eq!(v[0].port, Some(6050));
        assert_eq!(v[1].host.ip, Some(ip("192.0.2.1")));
        assert_eq!(v[1].port, None);
        assert_eq!(v[2].transport, "TCP");
        assert_eq!(v[2].host.ip, Some(ip("2001:db8::9:255")));
        assert_eq!(v[2].received(), Some(ip("192.0.2.200")));
    };

    // §4.8 Multiple IP Addresses in SDP.
    mult_ip_in_sdp: "rfc5118" / "mult-ip-in-sdp" => |d, n| {
        let m = ok(d, n);
        let body = String::from_utf8_lossy(m.body()).into_owned();
        assert!(body.contains("c=IN IP4 192.0.2.1\r\n"));
        assert!(body.contains("c=IN IP6 2001:db8::1\r\n"));
    };

    // §4.9 IPv4-Mapped IPv6 Addresses.
    ipv4_mapped_ipv6: "rfc5118" / "ipv4-mapped-ipv6" => |d, n| {
        let m = ok(d, n);
        let v = m.vias();
        assert_eq!(v[0].host.ip, Some(ip("::ffff:192.0.2.10")));
        assert_eq!(v[0].port, Some(19823));
        assert_eq!(v[1].host.ip, Some(ip("::ffff:192.0.2.2")));
        let c = &m.contacts().expect("Contact")[0];
        assert_eq!(c.uri.host.ip, Some(ip("::ffff:192.0.2.2")));
        assert_eq!(c.display.as_deref(), Some("\"T. desk phone\""));
    };

    // §4.10 IPv6 Reference Bug in RFC 3261 ABNF: the three-colon form is
    // tolerated (read as the two-colon address) and kept as written.
    ipv6_bug_abnf_3_colons: "rfc5118" / "ipv6-bug-abnf-3-colons" => |d, n| {
        let m = ok(d, n);
        let want = IpAddr::V6("2001:db8::192.0.2.1".parse::<Ipv6Addr>().expect("v6"));
        let ruri = m.ruri().expect("request");
        assert_eq!(ruri.host.ip, Some(want));
        assert_eq!(ruri.host.text, "[2001:db8:::192.0.2.1]");
        assert_eq!(m.to().uri.host.ip, Some(want));
    };
    ipv6_correct_abnf_2_colons: "rfc5118" / "ipv6-correct-abnf-2-colons" => |d, n| {
        let m = ok(d, n);
        assert_eq!(m.ruri().expect("request").host.ip, Some(ip("2001:db8::192.0.2.1")));
        assert_eq!(m.to().uri.host.ip, Some(ip("2001:db8::192.0.2.1")));
    };
}

/// The archives' own bytes: RFC 4475's use CRLF; RFC 5118's use bare LF,
/// which the parser drops (RFC 3261 §7 requires CRLF).
#[test]
fn archive_line_endings() {
    assert!(read("rfc4475", "wsinv").windows(2).any(|w| w == b"\r\n"));
    let raw = read("rfc5118", "ipv6-good");
    assert!(!raw.contains(&b'\r'));
    let e = SipMessage::parse(Bytes::from(raw)).expect_err("bare LF");
    dropped(&e);
}

/// Every valid message also frames on a stream when it carries a
/// Content-Length.
#[test]
fn valid_messages_frame_on_streams() {
    for name in ["wsinv", "esc01", "longreq", "mpart01", "transports", "dblreq"] {
        let b = read("rfc4475", name);
        let m = SipMessage::parse(Bytes::from(b.clone())).expect("parses");
        let (skip, len) = next_message(&b, 65535).expect("frames").expect("complete");
        assert_eq!(skip, 0);
        assert_eq!(len, m.to_bytes().len(), "{name}");
    }
    assert_eq!(
        next_message(&read("rfc4475", "inv2543"), 65535),
        Err(FrameError::MissingContentLength)
    );
}

/// Responses are never answered, whatever is wrong with them.
#[test]
fn broken_responses_are_dropped() {
    for text in [
        &b"SIP/2.0 200 OK\r\nCSeq: 1 INVITE\r\n\r\n"[..],
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP a.example.com\r\nCSeq: x\r\n\r\n",
        b"SIP/3.0 200 OK\r\nVia: SIP/2.0/UDP a.example.com\r\n\r\n",
    ] {
        let e = SipMessage::parse(Bytes::from_static(text)).expect_err("broken");
        dropped(&e);
    }
}

/// The StartLine of a response is exposed as parsed.
#[test]
fn start_line_shape() {
    let m = SipMessage::parse(Bytes::from(read("rfc4475", "bcast"))).expect("parses");
    assert_eq!(
        m.start_line(),
        &StartLine::Response {
            status: 200,
            reason: "OK".into()
        }
    );
}

// ---- property test: the fuzz target's body over seeded random inputs ------

/// The fuzz target's body (`serlua::sip::selfcheck::exercise`): parse,
/// and when that succeeds serialise, re-parse, edit and read every
/// accessor. Never panics.
fn exercise(data: &[u8]) {
    serlua::sip::selfcheck::exercise(data);
}

#[test]
fn property_no_panic_on_mutated_and_random_input() {
    use rand::rngs::StdRng;
    use rand::{RngExt, SeedableRng};

    let iterations: usize = std::env::var("TORTURE_PROPTEST_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let mut seeds: Vec<Vec<u8>> = Vec::new();
    for dir in ["rfc4475", "rfc5118"] {
        let path = format!("{}/tests/torture/{dir}", env!("CARGO_MANIFEST_DIR"));
        for e in std::fs::read_dir(path).expect("dir") {
            let b = std::fs::read(e.expect("entry").path()).expect("read");
            seeds.push(if dir == "rfc5118" { wire5118(&b) } else { b });
        }
    }
    let tokens: [&[u8]; 16] = [
        b"\r\n",
        b"\r\n ",
        b":",
        b";",
        b",",
        b"<",
        b">",
        b"\"",
        b"\\",
        b"[",
        b"]",
        b"%",
        b"@",
        b"Via: ",
        b"Content-Length: ",
        b"SIP/2.0",
    ];
    let mut rng = StdRng::seed_from_u64(0x005e_710a);
    let mut parsed = 0usize;
    for _ in 0..iterations {
        let mut data = seeds[rng.random_range(0..seeds.len())].clone();
        let mutations = rng.random_range(0..8);
        for _ in 0..mutations {
            if data.is_empty() {
                break;
            }
            let at = rng.random_range(0..data.len());
            match rng.random_range(0..6) {
                0 => data[at] = rng.random(),
                1 => {
                    data.remove(at);
                }
                2 => {
                    let t = tokens[rng.random_range(0..tokens.len())];
                    data.splice(at..at, t.iter().copied());
                }
                3 => {
                    let end = (at + rng.random_range(1..64)).min(data.len());
                    data.drain(at..end);
                }
                4 => {
                    let end = (at + rng.random_range(1..32)).min(data.len());
                    let chunk = data[at..end].to_vec();
                    let to = rng.random_range(0..data.len());
                    data.splice(to..to, chunk);
                }
                _ => data.truncate(at),
            }
        }
        if SipMessage::parse(Bytes::from(data.clone())).is_ok() {
            parsed += 1;
        }
        exercise(&data);
        // Pure noise, now and then.
        if rng.random_range(0..16) == 0 {
            let len = rng.random_range(0..512);
            let noise: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            exercise(&noise);
        }
    }
    // The mutator must keep a good share of inputs parseable, or the
    // accessors are not exercised.
    assert!(parsed > iterations / 10, "only {parsed} of {iterations} parsed");
}
