//! Fuzzes the trace reader behind `trace.load` in `serlua test`: any bytes
//! — a damaged pcap or pcapng, odd link layers, TCP streams cut anywhere,
//! SIP text — must decode or fail with an error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serlua::trace::decode("fuzz", data);
});
