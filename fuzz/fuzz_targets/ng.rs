//! Decodes arbitrary bytes as an rtpengine ng control datagram (`COOKIE SP
//! bencoded-dict`), as a request (`serlua relay` receiving from Kamailio
//! or serlua) and as a reply (serlua's ng client). Nothing may panic, and
//! whatever decodes must survive encoding: it decodes again, and a second
//! round trip changes nothing (the first may reorder a reply's `tags`,
//! kept in wire order when decoded but written sorted by tag).
//!
//! Run: `cargo +nightly fuzz run ng fuzz/seeds/ng -- -dict=fuzz/ng.dict`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serlua::relay::ng::codec::{decode_request, decode_response, encode_request, encode_response};

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = decode_request(data) {
        let again = decode_request(&encode_request(&req)).expect("an encoded request decodes");
        assert_eq!(again, req);
    }
    if let Ok(resp) = decode_response(data) {
        let once = decode_response(&encode_response(&resp)).expect("an encoded reply decodes");
        let twice = decode_response(&encode_response(&once)).expect("an encoded reply decodes");
        assert_eq!(twice, once);
    }
});
