//! Per-source ordering under load (DESIGN.md: serlua must not reorder the
//! messages of one call), in a test binary of its own: it measures the
//! proxy under 500 calls/s, and cargo runs test binaries one after the
//! other, so no other end-to-end test shares the CPU with it.
//!
//!   cargo test --test e2e_order

#[path = "e2e/mod.rs"]
mod harness;

use std::net::SocketAddr;
use std::time::Duration;

use harness::sipp::{SippOpts, SippRun, ensure_sipp};
use harness::{Ctx, Proxy, ProxyOpts, free_udp_port, sipp_or_skip};

fn local(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

/// DESIGN.md: serlua must not reorder the messages of one call. With two
/// workers (`children = 2`), 2,000 calls at 500 calls/s through the strict
/// tests/sipp/uac.xml, which fails a call whose 180 arrives after its 200
/// (and uas.xml, which fails one whose BYE overtakes its ACK): 0 failed.
#[test]
fn k_per_source_order_2000_calls_two_workers() {
    let ctx = Ctx::new("k_per_source_order_2000_calls_two_workers");
    if !sipp_or_skip(&ctx.name) {
        return;
    }
    const CALLS: u32 = 2000;
    let uas_port = free_udp_port();
    let uac_port = free_udp_port();
    let uas = SippRun::spawn(&ctx, SippOpts::uas("uas.xml", uas_port, CALLS).timeout(Duration::from_secs(30)));
    let mut proxy = Proxy::start(&ctx, ProxyOpts::relay(local(uas_port)).env(&[("SERLUA_CHILDREN", "2")]));
    let uac = SippRun::spawn(
        &ctx,
        SippOpts::uac("uac.xml", uac_port, proxy.addr, CALLS, 500).timeout(Duration::from_secs(30)),
    );
    let uac_r = uac.wait(Duration::from_secs(10));
    let uas_r = uas.wait(Duration::from_secs(10));
    proxy.ensure_alive(&ctx);
    let log = proxy.stderr_text();
    ctx.ensure(log.contains("started with 2 workers"), || {
        "serlua did not start 2 workers".to_string()
    });
    ensure_sipp(&ctx, &[&uac_r, &uas_r], u64::from(CALLS));
}
