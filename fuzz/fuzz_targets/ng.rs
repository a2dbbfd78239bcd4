//! Decodes arbitrary bytes as an rtpengine ng control datagram (`COOKIE SP
//! bencoded-dict`), as a request (`serlua relay` receiving from Kamailio
//! or serlua) and as a reply (serlua's ng client). Nothing may panic, and
//! whatever decodes must survive an encode/decode round trip unchanged.
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
        let again = decode_response(&encode_response(&resp)).expect("an encoded reply decodes");
        assert_eq!(again, resp);
    }
});
