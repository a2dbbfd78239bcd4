//! The parser's self-check, shared by `fuzz/fuzz_targets/parse_message.rs`
//! and the property test in tests/torture.rs.

use bytes::Bytes;

use super::framing::next_message;
use super::{HeaderName, SipMessage, semantic_check};

/// Parses `data` as a datagram and, when that succeeds, checks the model's
/// invariants the way a proxy uses it (RFC 3261 §7, §16.6, §18.3): the
/// pristine output re-parses to itself, a proxy's edits re-parse, every
/// accessor answers. Panics on a violation; never on the input itself.
/// The fuzz target and the seeded property test both run this.
pub fn exercise(data: &[u8]) {
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
    let _ = next_message(data, 65535);
}
