//! Parses arbitrary bytes as an SDP body (RFC 8866) the way the media
//! relay does (`serlua::sdp::parse`), then rewrites every stream to a
//! relay address taken from the input (`serlua::sdp::rewrite`, what
//! `force_rtp_proxy` does to an offer or answer). Nothing may panic; a
//! rewritten body must parse again, keep its streams, and carry each
//! rewritten stream's new port.
//!
//! Run: `cargo +nightly fuzz run sdp fuzz/seeds/sdp -- -dict=fuzz/sdp.dict`.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(sdp) = serlua::sdp::parse(data) else {
        return;
    };
    // Targets from the input's length: a mix of IPv4, IPv6 and streams
    // left alone, deterministic for a given input.
    let seed = data.len();
    let targets: Vec<Option<SocketAddr>> = (0..sdp.media.len())
        .map(|i| match (seed + i) % 3 {
            0 => Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 30000 + 2 * i as u16)),
            1 => Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), 31000 + 2 * i as u16)),
            _ => None,
        })
        .collect();
    let Ok(out) = serlua::sdp::rewrite(data, &targets) else {
        return;
    };
    let again = serlua::sdp::parse(&out).expect("a rewritten body parses");
    assert_eq!(again.media.len(), sdp.media.len(), "streams kept");
    for (i, (before, after)) in sdp.media.iter().zip(&again.media).enumerate() {
        match targets[i] {
            Some(t) if before.port != 0 => assert_eq!(after.port, t.port(), "stream {i} rewritten"),
            _ => assert_eq!(after.port, before.port, "stream {i} left alone"),
        }
    }
});
