//! Parses arbitrary bytes as a SIP datagram (RFC 3261 §7, §18.3). When the
//! parse succeeds, the message is serialised, re-parsed, edited the way a
//! proxy edits (RFC 3261 §16.6), serialised again and every accessor is
//! read. Nothing may panic, and both outputs must parse.
//!
//! Run: `cargo +nightly fuzz run parse_message fuzz/corpus/parse_message
//! tests/torture/rfc4475 -- -dict=fuzz/sip.dict`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| serlua::sip::selfcheck::exercise(data));
