//! Parses arbitrary bytes as a SIP datagram (RFC 3261 §7, §18.3). When the
//! parse succeeds, the message is serialised, re-parsed, edited the way a
//! proxy edits (RFC 3261 §16.6), serialised again and every accessor is
//! read. Nothing may panic, and both outputs must parse.
//!
//! Run: `cargo +nightly fuzz run parse_message fuzz/corpus/parse_message
//! tests/torture/rfc4475 -- -dict=fuzz/sip.dict`.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use serlua::sip::framing::next_message;
use serlua::sip::{HeaderName, SipMessage, semantic_check};

fuzz_target!(|data: &[u8]| {
    let _ = next_message(data, 65535);
    let Ok(m) = SipMessage::parse(Bytes::copy_from_slice(data)) else {
        return;
    };
    let out = m.to_bytes();
    let again = SipMessage::parse(out.clone()).expect("pristine output re-parses");
    assert_eq!(again.to_bytes(), out);
    assert_eq!(again.vias(), m.vias());
    let _ = (m.call_id(), m.cseq(), m.from(), m.to(), m.top_via());
    let _ = (m.max_forwards(), m.content_length(), m.body(), m.ruri(), m.reason());
    let _ = (m.routes(), m.record_routes(), m.contacts(), m.header_fields());
    let _ = semantic_check(&m);
    for name in ["Via", "Contact", "Route", "x-unknown", "l", "Supported"] {
        let n = HeaderName::from_text(name);
        let _ = (m.header(&n), m.headers(&n), m.has_header(&n));
    }
    let mut e = m.clone();
    e.insert_first(HeaderName::Via, b"SIP/2.0/UDP p.example.net;branch=z9hG4bKf");
    e.set_header(HeaderName::MaxForwards, b"69");
    e.remove_first_value(&HeaderName::Route);
    e.set_first_value(&HeaderName::Contact, b"<sip:x@example.net>");
    e.append_header(HeaderName::Other("X-Fuzz".into()), b"1");
    // The edits add fields, which may push a message already at a cap
    // (MAX_VIAS, MAX_HEADERS) over it; anything else must re-parse.
    match SipMessage::parse(e.to_bytes()) {
        Ok(again) => {
            assert_eq!(again.vias().len(), m.vias().len() + 1);
            assert_eq!(again.body(), m.body());
        }
        Err(err) if err.reason.contains("too many") => {}
        Err(err) => panic!("edited output must re-parse: {err}"),
    }
});
