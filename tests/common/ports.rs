//! Free UDP port ranges on 127.0.0.1 for media relays under test.

use std::net::UdpSocket;

/// A range of `n` consecutive free UDP ports on 127.0.0.1 (inclusive
/// bounds), starting even so RTP/RTCP pairs line up. The start is spread by
/// time and process so parallel tests rarely probe the same ports; another
/// process may still take one before the relay binds it, and a relay skips
/// such a port.
pub fn free_udp_range(n: u16) -> (u16, u16) {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id().wrapping_mul(2_654_435_761);
    for i in 0..4000u32 {
        let base = 20000 + ((seed.wrapping_add(i.wrapping_mul(7_919)) % 2000) as u16) * 20;
        if (base..base + n).all(|p| UdpSocket::bind(("127.0.0.1", p)).is_ok()) {
            return (base, base + n - 1);
        }
    }
    panic!("no {n} free UDP ports in a row on 127.0.0.1");
}
