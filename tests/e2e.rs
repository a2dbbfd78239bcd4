//! End-to-end acceptance tests: the real `serlua run tests/scripts/relay.lua`
//! between real SIP peers on 127.0.0.1 (sipp scenarios from tests/sipp/ and
//! small Rust UDP peers where times or datagram counts are asserted).
//!
//! Each test picks its own ports, so they run in parallel. Logs of every run
//! are kept in target/tmp/e2e/<test>/; a failure prints the tails of
//! serlua's stderr and of sipp's error log and final screen.
//!
//! Tests that need sipp skip with a loud message when it is missing, unless
//! SERLUA_REQUIRE_SIPP is set (.ci/run sets it): then they fail.
//!
//!   cargo test --test e2e                      # all
//!   cargo test --test e2e cancel -- --nocapture

#[path = "e2e/mod.rs"]
mod harness;

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use harness::sip::{Call, Received, SipMsg, UdpPeer, padded_to, response, spawn_uas, unique};
use harness::sipp::{SippOpts, SippResult, SippRun};
use harness::{Ctx, Proxy, ProxyOpts, free_udp_port, run_serlua, sipp_or_skip, which};

fn local(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

/// Fails unless every sipp run succeeded with `calls` successful calls.
fn ensure_sipp(ctx: &Ctx, results: &[&SippResult], calls: u64) {
    let all = results.iter().map(|r| r.describe()).collect::<Vec<_>>().join("; ");
    for r in results {
        ctx.ensure(r.ok() && r.successful == Some(calls), || {
            format!("expected {calls} successful calls and 0 failed: {all}")
        });
    }
}

// ---------------------------------------------------------------------------
// 0. the scenarios themselves, back to back (UAC directly against UAS)

/// Every scenario pair of tests/sipp/ completes with 0 failed calls without
/// a proxy in between: a failure here is a broken scenario (or sipp), not
/// a proxy bug.
#[test]
fn sipp_scenarios_back_to_back() {
    let ctx = Ctx::new("sipp_scenarios_back_to_back");
    if !sipp_or_skip(&ctx.name) {
        return;
    }
    let pairs: &[(&str, &str, u32, &[&str])] = &[
        ("uas.xml", "uac.xml", 20, &["-set", "no_proxy", "1"]),
        ("cancel_uas.xml", "cancel_uac.xml", 10, &[]),
        ("retrans_uas.xml", "uac.xml", 5, &["-set", "no_proxy", "1", "-d", "1000"]),
    ];
    for (uas_sf, uac_sf, calls, extra) in pairs {
        let tag = format!("{}-{}", uas_sf.trim_end_matches(".xml"), uac_sf.trim_end_matches(".xml"));
        let uas_port = free_udp_port();
        let uac_port = free_udp_port();
        let uas = SippRun::spawn(
            &ctx,
            SippOpts::uas(uas_sf, uas_port, *calls)
                .label(&format!("{tag}.uas"))
                .timeout(Duration::from_secs(40)),
        );
        let uac = SippRun::spawn(
            &ctx,
            SippOpts::uac(uac_sf, uac_port, local(uas_port), *calls, 20)
                .label(&format!("{tag}.uac"))
                .args(extra)
                .timeout(Duration::from_secs(40)),
        );
        let uac_r = uac.wait(Duration::from_secs(10));
        let uas_r = uas.wait(Duration::from_secs(10));
        ensure_sipp(&ctx, &[&uac_r, &uas_r], u64::from(*calls));
    }
}

// ---------------------------------------------------------------------------
// a. basic call with Record-Route / loose_route, 1,000 calls

/// INVITE/100/180/200/ACK/BYE/200 through the proxy, 1,000 calls at 150
/// calls/s: 0 failed calls. The UAC checks the 200's Record-Route has ;lr
/// and routes ACK and BYE by it; the UAS checks ACK and BYE arrive with its
/// Contact as Request-URI and no Route header.
#[test]
fn a_call_flow_1000_calls() {
    let ctx = Ctx::new("a_call_flow_1000_calls");
    if !sipp_or_skip(&ctx.name) {
        return;
    }
    const CALLS: u32 = 1000;
    let uas_port = free_udp_port();
    let uac_port = free_udp_port();
    let uas = SippRun::spawn(&ctx, SippOpts::uas("uas.xml", uas_port, CALLS).timeout(Duration::from_secs(90)));
    let mut proxy = Proxy::start(&ctx, ProxyOpts::relay(local(uas_port)));
    let uac = SippRun::spawn(
        &ctx,
        SippOpts::uac("uac.xml", uac_port, proxy.addr, CALLS, 150).timeout(Duration::from_secs(90)),
    );
    let uac_r = uac.wait(Duration::from_secs(10));
    let uas_r = uas.wait(Duration::from_secs(10));
    proxy.ensure_alive(&ctx);
    ensure_sipp(&ctx, &[&uac_r, &uas_r], u64::from(CALLS));
}

// ---------------------------------------------------------------------------
// b. CANCEL

/// INVITE, 180, CANCEL: the UAS receives the CANCEL and answers 200 + 487;
/// the UAC gets 200 for the CANCEL and 487 for the INVITE, and ACKs.
#[test]
fn b_cancel_ringing_call() {
    let ctx = Ctx::new("b_cancel_ringing_call");
    if !sipp_or_skip(&ctx.name) {
        return;
    }
    const CALLS: u32 = 20;
    let uas_port = free_udp_port();
    let uac_port = free_udp_port();
    let uas = SippRun::spawn(
        &ctx,
        SippOpts::uas("cancel_uas.xml", uas_port, CALLS).timeout(Duration::from_secs(40)),
    );
    let mut proxy = Proxy::start(&ctx, ProxyOpts::relay(local(uas_port)));
    let uac = SippRun::spawn(
        &ctx,
        SippOpts::uac("cancel_uac.xml", uac_port, proxy.addr, CALLS, 10).timeout(Duration::from_secs(40)),
    );
    let uac_r = uac.wait(Duration::from_secs(10));
    let uas_r = uas.wait(Duration::from_secs(10));
    proxy.ensure_alive(&ctx);
    ensure_sipp(&ctx, &[&uac_r, &uas_r], u64::from(CALLS));
}

// ---------------------------------------------------------------------------
// c. retransmissions

/// The UAS ignores the first ACK and retransmits its 200: the proxy
/// forwards the retransmitted 200 and the UAC's second (identical) ACK, and
/// the call completes (retrans_uas.xml asserts it saw both ACKs).
#[test]
fn c1_uas_retransmits_200_until_second_ack() {
    let ctx = Ctx::new("c1_uas_retransmits_200_until_second_ack");
    if !sipp_or_skip(&ctx.name) {
        return;
    }
    const CALLS: u32 = 10;
    let uas_port = free_udp_port();
    let uac_port = free_udp_port();
    let uas = SippRun::spawn(
        &ctx,
        SippOpts::uas("retrans_uas.xml", uas_port, CALLS).timeout(Duration::from_secs(40)),
    );
    let mut proxy = Proxy::start(&ctx, ProxyOpts::relay(local(uas_port)));
    let uac = SippRun::spawn(
        &ctx,
        SippOpts::uac("uac.xml", uac_port, proxy.addr, CALLS, 10)
            .args(&["-d", "1000"])
            .timeout(Duration::from_secs(40)),
    );
    let uac_r = uac.wait(Duration::from_secs(10));
    let uas_r = uas.wait(Duration::from_secs(10));
    proxy.ensure_alive(&ctx);
    ensure_sipp(&ctx, &[&uac_r, &uas_r], u64::from(CALLS));
}

/// The UAC sends the same INVITE twice (identical bytes, same branch), the
/// second 200 ms after the first, before any reply from downstream: the
/// UAS receives exactly one INVITE. (The UAS sends 100 at once, so the
/// proxy's own retransmission timer stops; 180 at +400 ms; 486 at
/// +800 ms, which the UAC receives and ACKs.)
#[test]
fn c2_invite_retransmission_absorbed() {
    let ctx = Ctx::new("c2_invite_retransmission_absorbed");
    let uas_peer = UdpPeer::bind();
    let uas_addr = uas_peer.addr;
    let mut proxy = Proxy::start(&ctx, ProxyOpts::relay(uas_addr));
    let t0 = Instant::now();
    let to_tag = unique("uas");
    let uas = spawn_uas(uas_peer, t0 + Duration::from_secs(4), move |r: &Received| {
        if r.msg.method() != Some("INVITE") {
            return Vec::new();
        }
        vec![
            (Duration::ZERO, response(&r.msg, 100, "Trying", "", None)),
            (
                Duration::from_millis(400),
                response(&r.msg, 180, "Ringing", &to_tag, Some(uas_addr)),
            ),
            (
                Duration::from_millis(800),
                response(&r.msg, 486, "Busy Here", &to_tag, Some(uas_addr)),
            ),
        ]
    });
    let mut uac = UdpPeer::bind();
    let call = Call::new(uac.addr, proxy.addr);
    let invite = call.invite();
    let t0 = Instant::now();
    uac.send(&invite, proxy.addr);
    std::thread::sleep(Duration::from_millis(200).saturating_sub(t0.elapsed()));
    uac.send(&invite, proxy.addr);
    let fin = uac.recv_match(t0 + Duration::from_secs(5), |m| {
        m.status().is_some_and(|s| s >= 200) && m.cseq_method() == Some("INVITE")
    });
    if let Some(f) = &fin {
        uac.send(&call.ack_for(&f.msg), proxy.addr);
    }
    let uas = uas.join().expect("UAS thread");
    proxy.ensure_alive(&ctx);
    ctx.note(format!("UAS received:\n{}", uas.transcript(t0)));
    ctx.note(format!("UAC received:\n{}", uac.transcript(t0)));
    let invites = uas.log.iter().filter(|r| r.msg.method() == Some("INVITE")).count();
    ctx.ensure(invites == 1, || {
        format!("the UAS received {invites} INVITEs, expected exactly 1 (the retransmission must be absorbed by the proxy)")
    });
    let fin = fin.unwrap_or_else(|| ctx.fail("the UAC got no final response to its INVITE within 5 s"));
    ctx.ensure(fin.msg.status() == Some(486), || {
        format!("the UAC's final response is {}, expected the UAS's 486", fin.msg.first_line)
    });
}

// ---------------------------------------------------------------------------
// d. timeouts

/// The next hop never answers (a bound socket that is never answered from):
/// with fr_timer = 3 s the UAC gets 408 between 2.5 and 4.5 s after its
/// INVITE.
#[test]
fn d1_fr_timer_408_when_next_hop_is_silent() {
    let ctx = Ctx::new("d1_fr_timer_408_when_next_hop_is_silent");
    let mut hop = UdpPeer::bind();
    let mut proxy = Proxy::start(&ctx, ProxyOpts::relay(hop.addr).env(&[("SERLUA_FR_TIMER", "3")]));
    let mut uac = UdpPeer::bind();
    let call = Call::new(uac.addr, proxy.addr);
    let t0 = Instant::now();
    uac.send(&call.invite(), proxy.addr);
    let fin = uac.recv_match(t0 + Duration::from_secs(10), |m| m.status().is_some_and(|s| s >= 200));
    if let Some(f) = &fin {
        uac.send(&call.ack_for(&f.msg), proxy.addr);
    }
    // What reached the silent next hop (read, never answered).
    while hop.recv_until(Instant::now() + Duration::from_millis(100)).is_some() {}
    proxy.ensure_alive(&ctx);
    ctx.note(format!("UAC received:\n{}", uac.transcript(t0)));
    ctx.note(format!(
        "next hop received (never answered; times are when the test read them, after the 408):\n{}",
        hop.transcript(t0)
    ));
    let fin = fin.unwrap_or_else(|| ctx.fail("no final response within 10 s (expected 408 after fr_timer = 3 s)"));
    let after = fin.at - t0;
    ctx.ensure(fin.msg.status() == Some(408), || {
        format!("final response {}, expected 408", fin.msg.first_line)
    });
    ctx.ensure(after >= Duration::from_millis(2500) && after <= Duration::from_millis(4500), || {
        format!("408 arrived {} after the INVITE, expected 2.5-4.5 s (fr_timer = 3 s)", secs(after))
    });
    let forwarded = hop.log.iter().filter(|r| r.msg.method() == Some("INVITE")).count();
    ctx.ensure(forwarded >= 1, || "the INVITE never reached the next hop".to_string());
}

/// The UAS sends 180 and then nothing. With inv_timeout = 5 s (the
/// inv_timeout AVP; fr_inv_timer stays at its 120 s default) the UAC gets
/// 408 between 4.5 and 6.5 s after its INVITE.
#[test]
fn d2_inv_timeout_avp_408_after_180() {
    let ctx = Ctx::new("d2_inv_timeout_avp_408_after_180");
    let uas_peer = UdpPeer::bind();
    let uas_addr = uas_peer.addr;
    let mut proxy = Proxy::start(&ctx, ProxyOpts::relay(uas_addr).env(&[("SERLUA_INV_TIMEOUT", "5")]));
    let t0 = Instant::now();
    let to_tag = unique("uas");
    let uas = spawn_uas(uas_peer, t0 + Duration::from_secs(9), move |r: &Received| {
        if r.msg.method() == Some("INVITE") {
            vec![(Duration::ZERO, response(&r.msg, 180, "Ringing", &to_tag, Some(uas_addr)))]
        } else {
            Vec::new() // "and then nothing": not even a reply to a CANCEL
        }
    });
    let mut uac = UdpPeer::bind();
    let call = Call::new(uac.addr, proxy.addr);
    let t0 = Instant::now();
    uac.send(&call.invite(), proxy.addr);
    let fin = uac.recv_match(t0 + Duration::from_secs(9), |m| m.status().is_some_and(|s| s >= 200));
    if let Some(f) = &fin {
        uac.send(&call.ack_for(&f.msg), proxy.addr);
    }
    let uas = uas.join().expect("UAS thread");
    proxy.ensure_alive(&ctx);
    ctx.note(format!("UAC received:\n{}", uac.transcript(t0)));
    ctx.note(format!("UAS received:\n{}", uas.transcript(t0)));
    let ringing = uac.log.iter().any(|r| r.msg.status() == Some(180));
    let fin = fin.unwrap_or_else(|| ctx.fail("no final response within 9 s (expected 408 after inv_timeout = 5 s)"));
    let after = fin.at - t0;
    ctx.ensure(ringing, || "the UAC never got the UAS's 180".to_string());
    ctx.ensure(fin.msg.status() == Some(408), || {
        format!("final response {}, expected 408", fin.msg.first_line)
    });
    ctx.ensure(after >= Duration::from_millis(4500) && after <= Duration::from_millis(6500), || {
        format!(
            "408 arrived {} after the INVITE, expected 4.5-6.5 s (inv_timeout AVP = 5 s)",
            secs(after)
        )
    });
}

// ---------------------------------------------------------------------------
// e. Max-Forwards and message size

/// Max-Forwards: 0 gets 483 Too Many Hops, and nothing is forwarded.
/// (Also with sipsak, when it is installed.)
#[test]
fn e1_max_forwards_zero_gets_483() {
    let ctx = Ctx::new("e1_max_forwards_zero_gets_483");
    let mut hop = UdpPeer::bind();
    let mut proxy = Proxy::start(&ctx, ProxyOpts::relay(hop.addr));
    let mut uac = UdpPeer::bind();
    let call = Call::new(uac.addr, proxy.addr);
    let t0 = Instant::now();
    uac.send(&call.invite_with(0, ""), proxy.addr);
    let fin = uac.recv_match(t0 + Duration::from_secs(3), |m| m.status().is_some_and(|s| s >= 200));
    if let Some(f) = &fin {
        uac.send(&call.ack_for(&f.msg), proxy.addr);
    }
    while hop.recv_until(Instant::now() + Duration::from_millis(300)).is_some() {}
    ctx.note(format!("UAC received:\n{}", uac.transcript(t0)));
    ctx.note(format!("next hop received:\n{}", hop.transcript(t0)));
    let fin = fin.unwrap_or_else(|| ctx.fail("no final response to an INVITE with Max-Forwards: 0 within 3 s"));
    ctx.ensure(fin.msg.status() == Some(483), || {
        format!("got {}, expected 483 Too Many Hops", fin.msg.first_line)
    });
    ctx.ensure(hop.log.iter().all(|r| r.msg.method() != Some("INVITE")), || {
        "an INVITE with Max-Forwards: 0 was forwarded".to_string()
    });

    if let Some(sipsak) = which("sipsak") {
        let out = Command::new(&sipsak)
            .args(["-s", &format!("sip:e2e@{}", proxy.addr), "-m", "0", "-H", "127.0.0.1", "-vv"])
            .output()
            .unwrap_or_else(|e| ctx.fail(&format!("cannot run sipsak: {e}")));
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        ctx.note(format!("sipsak output:\n{text}"));
        ctx.ensure(text.contains("SIP/2.0 483"), || {
            "sipsak (OPTIONS, Max-Forwards: 0) did not get a 483".to_string()
        });
    } else {
        eprintln!("{}: sipsak not installed; checked with a raw UDP INVITE only", ctx.name);
    }
    proxy.ensure_alive(&ctx);
}

/// A 5,000-byte UDP request (max_len 4096) gets 513 Message Overflow and is
/// not forwarded; a 4,000-byte one is forwarded.
#[test]
fn e2_oversize_udp_request_gets_513() {
    let ctx = Ctx::new("e2_oversize_udp_request_gets_513");
    let mut hop = UdpPeer::bind();
    let mut proxy = Proxy::start(&ctx, ProxyOpts::relay(hop.addr));
    let mut uac = UdpPeer::bind();
    let call = Call::new(uac.addr, proxy.addr);
    let big = padded_to(5000, |extra| call.simple("OPTIONS", 70, extra));
    let t0 = Instant::now();
    uac.send(&big, proxy.addr);
    let fin = uac.recv_match(t0 + Duration::from_secs(3), |m| m.status().is_some_and(|s| s >= 200));
    while hop.recv_until(Instant::now() + Duration::from_millis(300)).is_some() {}
    ctx.note(format!("UAC received:\n{}", uac.transcript(t0)));
    ctx.note(format!("next hop received:\n{}", hop.transcript(t0)));
    let fin = fin.unwrap_or_else(|| ctx.fail("no response to a 5,000-byte OPTIONS within 3 s (expected 513)"));
    ctx.ensure(fin.msg.status() == Some(513), || {
        format!("got {}, expected 513 Message Overflow", fin.msg.first_line)
    });
    ctx.ensure(hop.log.is_empty(), || "the 5,000-byte request was forwarded".to_string());

    // Under the limit: forwarded, not refused.
    let call2 = Call::new(uac.addr, proxy.addr);
    let fits = padded_to(4000, |extra| call2.simple("OPTIONS", 70, extra));
    let t1 = Instant::now();
    uac.send(&fits, proxy.addr);
    let got = hop.recv_match(t1 + Duration::from_secs(3), |m| m.method() == Some("OPTIONS"));
    let refused = uac.recv_match(Instant::now() + Duration::from_millis(200), |m| m.status() == Some(513));
    ctx.note(format!("next hop received (second part):\n{}", hop.transcript(t0)));
    ctx.ensure(got.is_some(), || {
        "a 4,000-byte OPTIONS (under max_len 4096) was not forwarded".to_string()
    });
    ctx.ensure(refused.is_none(), || {
        "a 4,000-byte OPTIONS (under max_len 4096) got 513".to_string()
    });
    proxy.ensure_alive(&ctx);
}

// ---------------------------------------------------------------------------
// f. broken scripts: `serlua check` and `serlua run`

/// `serlua check` and `serlua run` both exit non-zero and name
/// `tests/scripts/<file>:<line>:`.
fn broken_script(test: &str, file: &str, line: u32) {
    let ctx = Ctx::new(test);
    let script = format!("tests/scripts/{file}");
    let want = format!("{script}:{line}:");
    let port = free_udp_port();
    let listen = format!("udp:127.0.0.1:{port}");
    let env = [("SERLUA_LISTEN", listen.as_str())];

    let check = run_serlua(&ctx, "check", &["check", &script], &env, Duration::from_secs(20));
    let check_out = format!("{}{}", check.stderr, check.stdout);
    ctx.note(format!(
        "serlua check: {}; output:\n{check_out}",
        harness::describe_status(check.status)
    ));
    ctx.ensure(!check.timed_out, || "serlua check did not finish within 20 s".to_string());
    ctx.ensure(check.status.is_some_and(|s| !s.success()), || {
        "serlua check exited 0 on a broken script".to_string()
    });
    ctx.ensure(check_out.contains(&want), || {
        format!("serlua check output does not contain `{want}`")
    });

    let run = run_serlua(&ctx, "run", &["run", &script], &env, Duration::from_secs(10));
    ctx.note(format!(
        "serlua run: {}; stderr:\n{}",
        harness::describe_status(run.status),
        run.stderr
    ));
    ctx.ensure(!run.timed_out, || {
        "serlua run kept running on a broken script (killed after 10 s)".to_string()
    });
    ctx.ensure(run.status.is_some_and(|s| !s.success()), || {
        "serlua run exited 0 on a broken script".to_string()
    });
    ctx.ensure(run.stderr.contains(&want), || {
        format!("serlua run stderr does not contain `{want}`")
    });
}

#[test]
fn f1_bad_syntax() {
    broken_script("f1_bad_syntax", "bad_syntax.lua", 7);
}

#[test]
fn f2_bad_unknown_function() {
    broken_script("f2_bad_unknown_function", "bad_unknown_fn.lua", 8);
}

#[test]
fn f3_bad_undefined_route() {
    broken_script("f3_bad_undefined_route", "bad_route.lua", 9);
}

/// The relay script itself passes `serlua check`.
#[test]
fn f4_check_accepts_relay_script() {
    let ctx = Ctx::new("f4_check_accepts_relay_script");
    let out = run_serlua(&ctx, "check", &["check", "tests/scripts/relay.lua"], &[], Duration::from_secs(20));
    let text = format!("{}{}", out.stdout, out.stderr);
    ctx.note(format!("serlua check: {}; output:\n{text}", harness::describe_status(out.status)));
    ctx.ensure(out.status.is_some_and(|s| s.success()), || {
        "serlua check tests/scripts/relay.lua failed".to_string()
    });
    ctx.ensure(out.stdout.contains("tests/scripts/relay.lua: OK"), || {
        "expected `tests/scripts/relay.lua: OK` on stdout".to_string()
    });
}

/// Keeps the SIP helper honest (it is test code too).
#[test]
fn harness_sip_helpers() {
    let uac: SocketAddr = local(5061);
    let call = Call::new(uac, local(5060));
    let inv = SipMsg::parse(call.invite().as_bytes()).expect("parse INVITE");
    assert_eq!(inv.method(), Some("INVITE"));
    assert_eq!(inv.header("Max-Forwards"), Some("70"));
    let p = padded_to(5000, |extra| call.simple("OPTIONS", 70, extra));
    assert_eq!(p.len(), 5000);
    assert!(SipMsg::parse(p.as_bytes()).is_some());
}
