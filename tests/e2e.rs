//! End-to-end acceptance tests: the real `serlua run tests/scripts/relay.lua`
//! (or `transport.lua` for TCP, IPv6 and several listen sockets, g–l)
//! between real SIP peers on 127.0.0.1 and ::1 (sipp scenarios from
//! tests/sipp/ and small Rust UDP and TCP peers where times, datagram counts,
//! connections or framing are asserted).
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
use harness::sipp::{LoggedMsg, SippOpts, SippRun, ensure_sipp, logged_messages};
use harness::tcp::TcpPeer;
use harness::{Ctx, Proxy, ProxyOpts, free_port, free_udp_port, have_ipv6, run_serlua, sipp_or_skip, which};

fn local(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
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

// ---------------------------------------------------------------------------
// g. TCP (tests/scripts/transport.lua)

/// The transport test script.
const TRANSPORT_LUA: &str = "tests/scripts/transport.lua";

fn local6(port: u16) -> SocketAddr {
    (std::net::Ipv6Addr::LOCALHOST, port).into()
}

/// The values of every Record-Route header of `m`, comma-separated lists
/// split, in order.
fn record_routes(m: &SipMsg) -> Vec<String> {
    m.headers("Record-Route")
        .iter()
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect()
}

/// The messages of a sipp message log that `pred` selects; fails the test
/// when there are fewer than `at_least`.
fn logged<'a>(ctx: &Ctx, all: &'a [LoggedMsg], what: &str, at_least: usize, pred: impl Fn(&LoggedMsg) -> bool) -> Vec<&'a LoggedMsg> {
    let v: Vec<&LoggedMsg> = all.iter().filter(|m| pred(m)).collect();
    ctx.ensure(v.len() >= at_least, || {
        format!("expected at least {at_least} {what} in the sipp message log, found {}", v.len())
    });
    v
}

/// 200 calls INVITE/180/200/ACK/BYE/200 (tests/sipp/uac.xml, uas.xml),
/// both sipp peers on TCP (`-t t1`), the proxy listening on
/// tcp:127.0.0.1:P (and udp: on the same port): 0 failed calls, every
/// message of the UAC went over TCP, and the Record-Route in every 200 the
/// UAC received is `<sip:127.0.0.1:P;transport=tcp;lr>` (so the ACK and
/// BYE come back over TCP).
#[test]
fn g1_tcp_200_calls() {
    let ctx = Ctx::new("g1_tcp_200_calls");
    if !sipp_or_skip(&ctx.name) {
        return;
    }
    const CALLS: u32 = 200;
    let uas_port = free_port();
    let uac_port = free_port();
    let px = free_port();
    let listen = format!("udp:127.0.0.1:{px},tcp:127.0.0.1:{px}");
    let uas = SippRun::spawn(
        &ctx,
        SippOpts::uas("uas.xml", uas_port, CALLS)
            .transport("t1")
            .timeout(Duration::from_secs(30)),
    );
    let mut proxy = Proxy::start(
        &ctx,
        ProxyOpts::relay(local(uas_port)).script(TRANSPORT_LUA).listen(&listen, local(px)),
    );
    let uac = SippRun::spawn(
        &ctx,
        SippOpts::uac("uac.xml", uac_port, local(px), CALLS, 100)
            .transport("t1")
            .trace_msg(true)
            .timeout(Duration::from_secs(30)),
    );
    let uac_log = uac.message_log.clone();
    let uac_r = uac.wait(Duration::from_secs(10));
    let uas_r = uas.wait(Duration::from_secs(10));
    proxy.ensure_alive(&ctx);
    ensure_sipp(&ctx, &[&uac_r, &uas_r], u64::from(CALLS));

    let msgs = logged_messages(&uac_log);
    let not_tcp: Vec<_> = msgs.iter().filter(|m| m.proto != "TCP").collect();
    ctx.ensure(not_tcp.is_empty(), || {
        format!(
            "{} UAC messages did not go over TCP, first: {:?}",
            not_tcp.len(),
            not_tcp[0].msg.summary()
        )
    });
    let want = format!("<sip:127.0.0.1:{px};transport=tcp;lr>");
    let oks = logged(&ctx, &msgs, "200s to INVITE received by the UAC", CALLS as usize, |m| {
        m.received && m.msg.status() == Some(200) && m.msg.cseq_method() == Some("INVITE")
    });
    for m in oks {
        let rr = record_routes(&m.msg);
        ctx.ensure(rr == [want.clone()], || {
            format!(
                "a 200 at the UAC has Record-Route {rr:?}, expected exactly [{want}]:\n{}",
                m.msg.raw
            )
        });
    }
}

/// A Rust TCP client (tests/e2e/tcp.rs) on one connection to the proxy;
/// its Via names a TCP listener of its own that must never be connected
/// to. RFC 3261 §18.2.2: the response to a request received over a
/// connection goes back over that connection.
///  1. OPTIONS (answered 200 by the script itself): the 200 comes back on
///     the connection.
///  2. An INVITE written in two parts (head, then its SDP body 100 ms
///     later): the next hop (a UDP peer; SERLUA_NEXT_PROTO=udp) receives one
///     INVITE with the whole body; 100, 180 and the next hop's 486 come
///     back on the connection; the ACK goes on it too.
///  3. Two OPTIONS in one write (Content-Length framing of a stream that
///     holds two messages), an OPTIONS cut in the middle of its start line
///     and one cut inside the CRLF CRLF that ends its head (two writes,
///     100 ms apart each): four 200s, in order.
#[test]
fn g2_tcp_replies_on_same_connection_and_framing() {
    let ctx = Ctx::new("g2_tcp_replies_on_same_connection_and_framing");
    let px = free_port();
    let listen = format!("udp:127.0.0.1:{px},tcp:127.0.0.1:{px}");
    let uas_peer = UdpPeer::bind();
    let uas_addr = uas_peer.addr;
    let mut proxy = Proxy::start(
        &ctx,
        ProxyOpts::relay(uas_addr)
            .script(TRANSPORT_LUA)
            .listen(&listen, local(px))
            .env(&[("SERLUA_NEXT_PROTO", "udp")]),
    );
    let t0 = Instant::now();
    let to_tag = unique("uas");
    let uas = spawn_uas(uas_peer, t0 + Duration::from_secs(2), move |r: &Received| {
        if r.msg.method() != Some("INVITE") {
            return Vec::new();
        }
        vec![
            (Duration::ZERO, response(&r.msg, 180, "Ringing", &to_tag, Some(uas_addr))),
            (
                Duration::from_millis(300),
                response(&r.msg, 486, "Busy Here", &to_tag, Some(uas_addr)),
            ),
        ]
    });
    // Where our Via points: the proxy must not connect here to reply.
    let sent_by = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a TCP listener");
    sent_by.set_nonblocking(true).expect("nonblocking");
    let sent_by_addr = sent_by.local_addr().expect("local_addr");
    let mut c = TcpPeer::connect(local(px));
    ctx.note(format!(
        "client connection {} -> {}; Via sent-by {sent_by_addr} (a listener that must stay unused)",
        c.local, c.peer
    ));
    let deadline = |s: u64| Instant::now() + Duration::from_secs(s);

    // 1. A reply the proxy makes itself.
    let opt = Call::new(sent_by_addr, local(px)).over("TCP");
    c.send(opt.simple("OPTIONS", 70, "").as_bytes());
    let r = c.recv_match(deadline(3), |m| m.status().is_some());
    ctx.note(format!("client received:\n{}", c.transcript(t0)));
    let r = r.unwrap_or_else(|| ctx.fail("no reply to an OPTIONS over TCP on the same connection within 3 s"));
    ctx.ensure(
        r.msg.status() == Some(200) && r.msg.header("Call-ID") == Some(opt.call_id.as_str()),
        || format!("expected 200 for our OPTIONS, got {}", r.msg.summary()),
    );

    // 2. A stateful reply from the next hop, to a request written in two parts.
    let call = Call::new(sent_by_addr, local(px)).over("TCP");
    let invite = call.invite();
    let split = invite.find("\r\n\r\n").expect("head end") + 4;
    let sdp = &invite[split..];
    c.send(&invite.as_bytes()[..split]);
    std::thread::sleep(Duration::from_millis(100));
    c.send(&invite.as_bytes()[split..]);
    let fin = c.recv_match(deadline(5), |m| {
        m.status().is_some_and(|s| s >= 200) && m.cseq_method() == Some("INVITE")
    });
    if let Some(f) = &fin {
        c.send(call.ack_for(&f.msg).as_bytes());
    }
    let uas = uas.join().expect("UAS thread");
    ctx.note(format!("next hop received:\n{}", uas.transcript(t0)));
    ctx.note(format!("client received:\n{}", c.transcript(t0)));
    let invites: Vec<&Received> = uas.log.iter().filter(|r| r.msg.method() == Some("INVITE")).collect();
    ctx.ensure(invites.len() == 1, || {
        format!(
            "the next hop received {} INVITEs, expected 1 (the INVITE was written in two parts)",
            invites.len()
        )
    });
    ctx.ensure(invites[0].msg.body == sdp, || {
        format!(
            "the forwarded INVITE's body differs from the one sent in the second write:\nsent {sdp:?}\ngot  {:?}",
            invites[0].msg.body
        )
    });
    let fin = fin.unwrap_or_else(|| ctx.fail("no final response to the INVITE on the client's connection within 5 s"));
    ctx.ensure(fin.msg.status() == Some(486), || {
        format!("final response {}, expected the next hop's 486", fin.msg.summary())
    });
    let got_180 = c.log.iter().any(|r| r.msg.status() == Some(180));
    ctx.ensure(got_180, || "the next hop's 180 did not come back on the connection".to_string());

    // 3. Two messages in one write, and one cut inside its start line.
    let o1 = Call::new(sent_by_addr, local(px)).over("TCP");
    let o2 = Call::new(sent_by_addr, local(px)).over("TCP");
    let o3 = Call::new(sent_by_addr, local(px)).over("TCP");
    c.send(format!("{}{}", o1.simple("OPTIONS", 70, ""), o2.simple("OPTIONS", 70, "")).as_bytes());
    let third = o3.simple("OPTIONS", 70, "");
    c.send(&third.as_bytes()[..10]);
    std::thread::sleep(Duration::from_millis(100));
    c.send(&third.as_bytes()[10..]);
    // Cut inside the empty line that ends the head (CRLF CR | LF).
    let o4 = Call::new(sent_by_addr, local(px)).over("TCP");
    let fourth = o4.simple("OPTIONS", 70, "");
    let cut = fourth.find("\r\n\r\n").expect("head end") + 3;
    c.send(&fourth.as_bytes()[..cut]);
    std::thread::sleep(Duration::from_millis(100));
    c.send(&fourth.as_bytes()[cut..]);
    let mut ids = Vec::new();
    while ids.len() < 4 {
        match c.recv_match(deadline(3), |m| m.status().is_some() && m.cseq_method() == Some("OPTIONS")) {
            Some(r) => ids.push((r.msg.status(), r.msg.header("Call-ID").unwrap_or("").to_string())),
            None => break,
        }
    }
    ctx.note(format!("client received:\n{}", c.transcript(t0)));
    let want: Vec<(Option<u16>, String)> = [&o1, &o2, &o3, &o4].iter().map(|o| (Some(200), o.call_id.clone())).collect();
    ctx.ensure(ids == want, || {
        format!("expected 200 for each of four OPTIONS, in order ({want:?}); got {ids:?}")
    });

    // Nothing ever connected to the Via's sent-by.
    match sent_by.accept() {
        Ok((_, from)) => ctx.fail(&format!(
            "the proxy opened a new connection ({from} -> {sent_by_addr}, the Via's sent-by) instead of replying on the request's connection"
        )),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        Err(e) => ctx.fail(&format!("accept on the sent-by listener: {e}")),
    }
    ctx.ensure(c.closed.is_none(), || format!("the proxy closed the connection: {:?}", c.closed));
    proxy.ensure_alive(&ctx);
}

/// RFC 3261 §18.2.2: when the connection a request came on is closed
/// before the response is ready, "the server SHOULD open a connection to
/// the IP address in the received parameter, if present, using the port in
/// the sent-by value". A TCP client sends an INVITE (Via sent-by: its own
/// TCP listener, no rport) and closes the connection at once; the next hop
/// (UDP) answers 486 after 500 ms: the 486 must arrive on a new connection
/// to the sent-by listener.
#[test]
fn g3_tcp_reply_after_close_goes_to_sent_by() {
    let ctx = Ctx::new("g3_tcp_reply_after_close_goes_to_sent_by");
    let px = free_port();
    let listen = format!("udp:127.0.0.1:{px},tcp:127.0.0.1:{px}");
    let uas_peer = UdpPeer::bind();
    let uas_addr = uas_peer.addr;
    let mut proxy = Proxy::start(
        &ctx,
        ProxyOpts::relay(uas_addr)
            .script(TRANSPORT_LUA)
            .listen(&listen, local(px))
            .env(&[("SERLUA_NEXT_PROTO", "udp")]),
    );
    let t0 = Instant::now();
    let to_tag = unique("uas");
    let uas = spawn_uas(uas_peer, t0 + Duration::from_secs(2), move |r: &Received| {
        if r.msg.method() != Some("INVITE") {
            return Vec::new();
        }
        vec![(
            Duration::from_millis(500),
            response(&r.msg, 486, "Busy Here", &to_tag, Some(uas_addr)),
        )]
    });
    let sent_by = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a TCP listener");
    let sent_by_addr = sent_by.local_addr().expect("local_addr");
    let call = Call::new(sent_by_addr, local(px)).over("TCP");
    let invite = call.invite().replacen(";rport", "", 1);
    {
        let mut c = TcpPeer::connect(local(px));
        ctx.note(format!(
            "INVITE on {} -> {}, then closed; Via sent-by {sent_by_addr}",
            c.local, c.peer
        ));
        c.send(invite.as_bytes());
        // The 100 Trying: the proxy has the request.
        let _ = c.recv_match(Instant::now() + Duration::from_secs(2), |m| m.status() == Some(100));
    }
    sent_by.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut fin = None;
    while fin.is_none() && Instant::now() < deadline {
        match sent_by.accept() {
            Ok((stream, from)) => {
                stream.set_nonblocking(false).expect("blocking");
                let mut c = TcpPeer::from_stream(stream, from);
                fin = c.recv_match(deadline, |m| m.status().is_some_and(|s| s >= 200));
                ctx.note(format!("connection from {from} to the sent-by listener:\n{}", c.transcript(t0)));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => ctx.fail(&format!("accept on the sent-by listener: {e}")),
        }
    }
    let uas = uas.join().expect("UAS thread");
    ctx.note(format!("next hop received:\n{}", uas.transcript(t0)));
    proxy.ensure_alive(&ctx);
    let fin = fin.unwrap_or_else(|| {
        ctx.fail("the 486 never reached the Via's sent-by after the request's connection was closed (RFC 3261 §18.2.2)")
    });
    ctx.ensure(fin.msg.status() == Some(486), || format!("got {}, expected 486", fin.msg.summary()));
}

// ---------------------------------------------------------------------------
// h. IPv6

/// True when the host has IPv6 loopback; otherwise the test is skipped loudly.
fn ipv6_or_skip(test: &str) -> bool {
    if have_ipv6() {
        return true;
    }
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "\n!!! SKIPPED {test}: ::1 cannot be bound on this host (no IPv6 loopback)\n"
    );
    false
}

/// The proxy on udp:[::1]:P only, sipp UAC and UAS on ::1: 200 calls, 0
/// failed. The INVITEs the UAS receives carry the proxy's Via
/// `SIP/2.0/UDP [::1]:P` on top and the Record-Route `<sip:[::1]:P;lr>`,
/// and the 200s the UAC receives carry that Record-Route.
#[test]
fn h_ipv6_200_calls() {
    let ctx = Ctx::new("h_ipv6_200_calls");
    if !sipp_or_skip(&ctx.name) || !ipv6_or_skip(&ctx.name) {
        return;
    }
    const CALLS: u32 = 200;
    let uas_port = free_port();
    let uac_port = free_port();
    let px = free_port();
    let listen = format!("udp:[::1]:{px}");
    let uas = SippRun::spawn(
        &ctx,
        SippOpts::uas("uas.xml", uas_port, CALLS)
            .ip("::1")
            .trace_msg(true)
            .timeout(Duration::from_secs(30)),
    );
    let mut proxy = Proxy::start(
        &ctx,
        ProxyOpts::relay(local6(uas_port)).script(TRANSPORT_LUA).listen(&listen, local6(px)),
    );
    let uac = SippRun::spawn(
        &ctx,
        SippOpts::uac("uac.xml", uac_port, local6(px), CALLS, 100)
            .ip("::1")
            .trace_msg(true)
            .timeout(Duration::from_secs(30)),
    );
    let (uac_log, uas_log) = (uac.message_log.clone(), uas.message_log.clone());
    let uac_r = uac.wait(Duration::from_secs(10));
    let uas_r = uas.wait(Duration::from_secs(10));
    proxy.ensure_alive(&ctx);
    ensure_sipp(&ctx, &[&uac_r, &uas_r], u64::from(CALLS));

    let want_rr = format!("<sip:[::1]:{px};lr>");
    let want_via = format!("SIP/2.0/UDP [::1]:{px};branch=");
    let uas_msgs = logged_messages(&uas_log);
    for m in logged(&ctx, &uas_msgs, "INVITEs received by the UAS", CALLS as usize, |m| {
        m.received && m.msg.method() == Some("INVITE")
    }) {
        let via = m.msg.header("Via").unwrap_or("");
        ctx.ensure(via.starts_with(&want_via), || {
            format!("an INVITE at the UAS has top Via `{via}`, expected `{want_via}...`:\n{}", m.msg.raw)
        });
        let rr = record_routes(&m.msg);
        ctx.ensure(rr == [want_rr.clone()], || {
            format!("an INVITE at the UAS has Record-Route {rr:?}, expected [{want_rr}]:\n{}", m.msg.raw)
        });
    }
    let uac_msgs = logged_messages(&uac_log);
    for m in logged(&ctx, &uac_msgs, "200s to INVITE received by the UAC", CALLS as usize, |m| {
        m.received && m.msg.status() == Some(200) && m.msg.cseq_method() == Some("INVITE")
    }) {
        let rr = record_routes(&m.msg);
        ctx.ensure(rr == [want_rr.clone()], || {
            format!("a 200 at the UAC has Record-Route {rr:?}, expected [{want_rr}]:\n{}", m.msg.raw)
        });
    }
}

// ---------------------------------------------------------------------------
// i. mixed transports: double Record-Route

/// One side of a mixed-transport run.
struct Side {
    ip: &'static str,
    /// sipp -t: "u1" or "t1".
    transport: &'static str,
}

impl Side {
    fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip.parse().expect("IP"), port)
    }
    fn proto(&self) -> &'static str {
        if self.transport == "t1" { "TCP" } else { "UDP" }
    }
}

/// 100 calls from a UAC on `uac` through the proxy (listening on the
/// SERLUA_LISTEN built by `listen(P)`) to a UAS on `uas`: 0 failed calls;
/// every INVITE the UAS receives has the proxy's Via for the UAS side on
/// top and exactly two Record-Route entries of the proxy, the one facing
/// the callee first (`rr(P)`); the UAC's 200s carry the same two; each
/// sipp only ever saw its own transport. ACK and BYE are routed back
/// through both entries (uas.xml: they arrive with the UAS's Contact as
/// Request-URI and no Route left).
fn mixed_transports(test: &str, uac: Side, uas: Side, listen: impl Fn(u16) -> String, rr: impl Fn(u16) -> [String; 2], next_proto: &str) {
    let ctx = Ctx::new(test);
    if !sipp_or_skip(&ctx.name) || ([uac.ip, uas.ip].contains(&"::1") && !ipv6_or_skip(&ctx.name)) {
        return;
    }
    const CALLS: u32 = 100;
    let uas_port = free_port();
    let uac_port = free_port();
    let px = free_port();
    let listen = listen(px);
    let want_rr = rr(px);
    let uas_sipp = SippRun::spawn(
        &ctx,
        SippOpts::uas("uas.xml", uas_port, CALLS)
            .ip(uas.ip)
            .transport(uas.transport)
            .trace_msg(true)
            .timeout(Duration::from_secs(30)),
    );
    let mut proxy = Proxy::start(
        &ctx,
        ProxyOpts::relay(uas.addr(uas_port))
            .script(TRANSPORT_LUA)
            .listen(&listen, uac.addr(px))
            .env(&[("SERLUA_NEXT_PROTO", next_proto)]),
    );
    let uac_sipp = SippRun::spawn(
        &ctx,
        SippOpts::uac("uac.xml", uac_port, uac.addr(px), CALLS, 100)
            .ip(uac.ip)
            .transport(uac.transport)
            .trace_msg(true)
            .timeout(Duration::from_secs(30)),
    );
    let (uac_log, uas_log) = (uac_sipp.message_log.clone(), uas_sipp.message_log.clone());
    let uac_r = uac_sipp.wait(Duration::from_secs(10));
    let uas_r = uas_sipp.wait(Duration::from_secs(10));
    proxy.ensure_alive(&ctx);
    ensure_sipp(&ctx, &[&uac_r, &uas_r], u64::from(CALLS));

    let uas_host = want_rr[0].trim_start_matches("<sip:").split(';').next().unwrap_or("").to_string();
    let want_via = format!("SIP/2.0/{} {uas_host};branch=", uas.proto());
    let uas_msgs = logged_messages(&uas_log);
    for m in logged(&ctx, &uas_msgs, "INVITEs received by the UAS", CALLS as usize, |m| {
        m.received && m.msg.method() == Some("INVITE")
    }) {
        let via = m.msg.header("Via").unwrap_or("");
        ctx.ensure(via.starts_with(&want_via), || {
            format!("an INVITE at the UAS has top Via `{via}`, expected `{want_via}...`:\n{}", m.msg.raw)
        });
        let got = record_routes(&m.msg);
        ctx.ensure(got == want_rr, || {
            format!(
                "an INVITE at the UAS has Record-Route {got:?}, expected the proxy twice, the callee side first: {want_rr:?}:\n{}",
                m.msg.raw
            )
        });
    }
    let uac_msgs = logged_messages(&uac_log);
    for m in logged(&ctx, &uac_msgs, "200s to INVITE received by the UAC", CALLS as usize, |m| {
        m.received && m.msg.status() == Some(200) && m.msg.cseq_method() == Some("INVITE")
    }) {
        let got = record_routes(&m.msg);
        ctx.ensure(got == want_rr, || {
            format!("a 200 at the UAC has Record-Route {got:?}, expected {want_rr:?}:\n{}", m.msg.raw)
        });
    }
    for (who, msgs, side) in [("UAC", &uac_msgs, &uac), ("UAS", &uas_msgs, &uas)] {
        let other: Vec<_> = msgs.iter().filter(|m| m.proto != side.proto()).collect();
        ctx.ensure(other.is_empty(), || {
            format!(
                "{} messages of the {who} went over {}, not {}",
                other.len(),
                other[0].proto,
                side.proto()
            )
        });
    }
    let byes = uas_msgs.iter().filter(|m| m.received && m.msg.method() == Some("BYE")).count();
    ctx.ensure(byes >= CALLS as usize, || format!("the UAS received {byes} BYEs, expected {CALLS}"));
}

/// UAC over UDP, UAS over TCP (udp: and tcp: 127.0.0.1:P): Record-Route
/// `<sip:127.0.0.1:P;transport=tcp;lr>, <sip:127.0.0.1:P;lr>`.
#[test]
fn i1_mixed_udp_to_tcp_double_record_route() {
    mixed_transports(
        "i1_mixed_udp_to_tcp_double_record_route",
        Side {
            ip: "127.0.0.1",
            transport: "u1",
        },
        Side {
            ip: "127.0.0.1",
            transport: "t1",
        },
        |p| format!("udp:127.0.0.1:{p},tcp:127.0.0.1:{p}"),
        |p| [format!("<sip:127.0.0.1:{p};transport=tcp;lr>"), format!("<sip:127.0.0.1:{p};lr>")],
        "tcp",
    );
}

/// UAC over TCP, UAS over UDP (udp: and tcp: 127.0.0.1:P): Record-Route
/// `<sip:127.0.0.1:P;lr>, <sip:127.0.0.1:P;transport=tcp;lr>`; the UAS's
/// replies reach the UAC on its TCP connection.
#[test]
fn i3_mixed_tcp_to_udp_double_record_route() {
    mixed_transports(
        "i3_mixed_tcp_to_udp_double_record_route",
        Side {
            ip: "127.0.0.1",
            transport: "t1",
        },
        Side {
            ip: "127.0.0.1",
            transport: "u1",
        },
        |p| format!("udp:127.0.0.1:{p},tcp:127.0.0.1:{p}"),
        |p| [format!("<sip:127.0.0.1:{p};lr>"), format!("<sip:127.0.0.1:{p};transport=tcp;lr>")],
        "udp",
    );
}

/// UAC over UDP on 127.0.0.1, UAS over UDP on ::1 (udp:127.0.0.1:P and
/// udp:[::1]:P): Record-Route `<sip:[::1]:P;lr>, <sip:127.0.0.1:P;lr>`.
#[test]
fn i2_mixed_ipv4_to_ipv6_double_record_route() {
    mixed_transports(
        "i2_mixed_ipv4_to_ipv6_double_record_route",
        Side {
            ip: "127.0.0.1",
            transport: "u1",
        },
        Side {
            ip: "::1",
            transport: "u1",
        },
        |p| format!("udp:127.0.0.1:{p},udp:[::1]:{p}"),
        |p| [format!("<sip:[::1]:{p};lr>"), format!("<sip:127.0.0.1:{p};lr>")],
        "udp",
    );
}

// ---------------------------------------------------------------------------
// j. several listen sockets, --listen overrides the script's `listen`

/// The script's `listen` is udp:127.0.0.1:C, but serlua runs with
/// `--listen udp:127.0.0.1:A --listen udp:127.0.0.1:B --listen
/// tcp:127.0.0.1:B`: an OPTIONS (answered 200 by the script) gets its 200
/// on A and on B over UDP, each from the address it was sent to, and on B
/// over TCP; nothing answers on C, and nothing is bound there.
#[test]
fn j_listen_override_several_sockets() {
    let ctx = Ctx::new("j_listen_override_several_sockets");
    let (a, b, c) = (free_port(), free_port(), free_port());
    let script_listen = format!("udp:127.0.0.1:{c}");
    let (la, lb, lt) = (
        format!("udp:127.0.0.1:{a}"),
        format!("udp:127.0.0.1:{b}"),
        format!("tcp:127.0.0.1:{b}"),
    );
    let args = ["--listen", la.as_str(), "--listen", lb.as_str(), "--listen", lt.as_str()];
    let mut proxy = Proxy::start(
        &ctx,
        ProxyOpts::relay(local(free_udp_port()))
            .script(TRANSPORT_LUA)
            .listen(&script_listen, local(a))
            .args(&args, local(a)),
    );
    let mut uac = UdpPeer::bind();
    let t0 = Instant::now();
    for port in [a, b] {
        let call = Call::new(uac.addr, local(port));
        uac.send(&call.simple("OPTIONS", 70, ""), local(port));
        let r = uac.recv_match(Instant::now() + Duration::from_secs(3), |m| {
            m.header("Call-ID") == Some(call.call_id.as_str())
        });
        ctx.note(format!("UAC received:\n{}", uac.transcript(t0)));
        let r = r.unwrap_or_else(|| ctx.fail(&format!("no reply to an OPTIONS sent to --listen udp:127.0.0.1:{port} within 3 s")));
        ctx.ensure(r.msg.status() == Some(200), || {
            format!("OPTIONS to udp:127.0.0.1:{port}: got {}, expected 200", r.msg.summary())
        });
        ctx.ensure(r.from == local(port), || {
            format!(
                "the 200 for an OPTIONS sent to 127.0.0.1:{port} came from {}, not from that socket",
                r.from
            )
        });
    }
    let mut tcp = TcpPeer::connect(local(b));
    let call = Call::new(tcp.local, local(b)).over("TCP");
    tcp.send(call.simple("OPTIONS", 70, "").as_bytes());
    let r = tcp.recv_match(Instant::now() + Duration::from_secs(3), |m| m.status().is_some());
    ctx.note(format!("TCP client received:\n{}", tcp.transcript(t0)));
    ctx.ensure(r.is_some_and(|r| r.msg.status() == Some(200)), || {
        format!("no 200 for an OPTIONS over --listen tcp:127.0.0.1:{b} within 3 s")
    });

    let call = Call::new(uac.addr, local(c));
    uac.send(&call.simple("OPTIONS", 70, ""), local(c));
    let r = uac.recv_match(Instant::now() + Duration::from_secs(1), |m| {
        m.header("Call-ID") == Some(call.call_id.as_str())
    });
    ctx.note(format!("UAC received:\n{}", uac.transcript(t0)));
    ctx.ensure(r.is_none(), || {
        format!("the script's own listen udp:127.0.0.1:{c} answered although --listen overrides it")
    });
    let log = proxy.stderr_text();
    ctx.ensure(!log.contains(&format!(":{c} ")), || {
        format!("serlua's log mentions the script's port {c}")
    });
    proxy.ensure_alive(&ctx);
}

// ---------------------------------------------------------------------------
// l. bad input over the network

/// xorshift64*: reproducible garbage (the seed is in the failure report).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Hand-made malformed messages: framing, numbers out of range, broken
/// URIs and Vias, too many headers, bytes that are not text. `me` is the
/// sender (Via), `px` the proxy. Every address in them is a loopback one.
fn nasty_messages(me: SocketAddr, px: SocketAddr) -> Vec<String> {
    let req = |first: &str, extra: &str, body: &str| {
        format!(
            "{first}\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{}\r\nFrom: <sip:a@{me}>;tag=1\r\nTo: <sip:b@{px}>\r\nCall-ID: {}\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n{extra}\r\n{body}",
            unique("n"),
            unique("nasty")
        )
    };
    let inv = format!("INVITE sip:b@{px} SIP/2.0");
    let many_vias: String = (0..300)
        .map(|i| format!("Via: SIP/2.0/UDP 127.0.0.1:{};branch=z9hG4bKv{i}\r\n", 10000 + i))
        .collect();
    let many_headers: String = (0..3000).map(|i| format!("X-H{i}: {i}\r\n")).collect();
    vec![
        String::new(),
        "\r\n".into(),
        "\r\n\r\n".into(),
        "INVITE".into(),
        "INVITE sip:b SIP/2.0\r\n\r\n".into(),
        "SIP/2.0 200 OK\r\n\r\n".into(),
        "SIP/2.0 99999999999 Huge\r\nContent-Length: 0\r\n\r\n".into(),
        format!(
            "SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP {px};branch=z9hG4bKsrffff.99.0\r\nCSeq: 1 INVITE\r\nCall-ID: x\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nContent-Length: 0\r\n\r\n"
        ),
        req(&inv, "Content-Length: -1\r\n", ""),
        req(&inv, "Content-Length: 99999999999999999999999\r\n", ""),
        req(&inv, "Content-Length: 2\r\nContent-Length: 3\r\n", "abc"),
        req(&inv, "Content-Length: 1000\r\n", "short body"),
        req(&inv, "Content-Length: abc\r\n", ""),
        req(&inv, "CSeq: 99999999999999999999 INVITE\r\n", ""),
        req(&inv, "CSeq: INVITE\r\n", ""),
        req(&inv, "Max-Forwards: -1\r\n", ""),
        req(&inv, "Max-Forwards: 99999999999999\r\n", ""),
        req(&inv, "Max-Forwards: abc\r\n", ""),
        req(&inv, &many_vias, ""),
        req(&inv, &many_headers, ""),
        req(&inv, &format!("X-Long: {}\r\n", "a".repeat(60000)), ""),
        req(&inv, "Contact: *\r\nExpires: 0\r\n", ""),
        req(&inv, "Contact: <sip:[::1\r\n", ""),
        req(&inv, "Route: <sip:[::1;lr>\r\n", ""),
        req(&inv, &format!("Route: <sip:{px};lr>, <sip:127.0.0.1:1;lr\r\n"), ""),
        req(&inv, "Via: SIP/2.0/UDP [::1:5060;branch=z9hG4bKb6\r\n", ""),
        req(&inv, "Via: SIP/2.0/UDP 127.0.0.1:99999;branch=z9hG4bKb7\r\n", ""),
        req(&inv, "Via: SIP/2.0/XYZ 127.0.0.1;rport=abc;branch=z9hG4bKb8\r\n", ""),
        req(&inv, "Via: SIP/2.0/UDP 127.0.0.1:0;received=999.1.1.1;rport=0\r\n", ""),
        req(&inv, " folded-continuation-at-start\r\n", ""),
        req(&inv, "Na\0me: value\r\nCall-ID: \u{fffd}\u{0}\r\n", ""),
        req(&inv, ": no name\r\nno colon at all\r\n", ""),
        req(
            &inv,
            "Content-Type: multipart/mixed;boundary=\"x\r\nContent-Length: 7\r\n",
            "--x--\r\n",
        ),
        req(&format!("INVITE sip:%zz@{px} SIP/2.0"), "", ""),
        req("INVITE sip:@ SIP/2.0", "", ""),
        req("INVITE sip:a@b:c:d SIP/2.0", "", ""),
        req("INVITE sips:x SIP/2.0", "", ""),
        req("INVITE tel:+123 SIP/2.0", "", ""),
        req(&format!("INVITE  sip:b@{px}  SIP/2.0"), "", ""),
        req(&format!("INVITE sip:b@{px} SIP/3.0"), "", ""),
        req(&format!("INV\u{7f}TE sip:b@{px} SIP/2.0"), "", ""),
        req(&format!("INVITE sip:b@{px} SIP/2.0"), "", "").replace("\r\n", "\n"),
        req(&format!("BYE sip:b@{px} SIP/2.0"), "", ""),
        req(&format!("CANCEL sip:b@{px} SIP/2.0"), "", ""),
        req(&format!("ACK sip:b@{px} SIP/2.0"), "", ""),
    ]
}

/// Valid messages to cut and mutate (no Route header: a mutation must not
/// make the proxy route anywhere but to its next hop, on 127.0.0.1).
fn base_messages(me: SocketAddr, px: SocketAddr) -> Vec<String> {
    let c = Call::new(me, px);
    let ringing = SipMsg::parse(
        response(
            &SipMsg::parse(c.invite().as_bytes()).expect("INVITE"),
            180,
            "Ringing",
            "tt",
            Some(me),
        )
        .as_bytes(),
    )
    .expect("180");
    vec![
        c.invite(),
        c.simple("REGISTER", 70, "Expires: 60\r\n"),
        c.simple("OPTIONS", 70, ""),
        c.simple("BYE", 70, ""),
        c.cancel(),
        c.ack_for(&ringing),
        response(&SipMsg::parse(c.invite().as_bytes()).expect("INVITE"), 200, "OK", "tt", Some(me)),
    ]
}

/// Bytes that mean something to a SIP parser.
const SPECIAL: &[u8] = b"\r\n:;,<>@[]\"\\ \t=\0%";

/// One garbage datagram: random bytes, a valid message cut short, a valid
/// message with random bytes overwritten, a hand-made malformed one, or
/// (rarely) a big random one.
fn garbage(rng: &mut Rng, me: SocketAddr, px: SocketAddr, nasty: &[String]) -> Vec<u8> {
    let bases = base_messages(me, px);
    match rng.below(10) {
        0..=1 => {
            let n = rng.below(1500);
            rng.bytes(n)
        }
        2..=4 => {
            let b = bases[rng.below(bases.len())].as_bytes();
            b[..rng.below(b.len())].to_vec()
        }
        5..=7 => {
            let mut b = bases[rng.below(bases.len())].as_bytes().to_vec();
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(b.len());
                b[i] = match rng.below(4) {
                    0 => SPECIAL[rng.below(SPECIAL.len())],
                    _ => rng.next() as u8,
                };
            }
            b
        }
        8 => nasty[rng.below(nasty.len())].as_bytes().to_vec(),
        _ if rng.below(20) == 0 => {
            let n = 8000 + rng.below(57000);
            rng.bytes(n)
        }
        _ => {
            // A valid head, then random bytes as the rest of the headers.
            let mut b = bases[rng.below(bases.len())].as_bytes().to_vec();
            let cut = b.iter().position(|&x| x == b'\n').map_or(0, |i| i + 1);
            b.truncate(cut);
            let n = rng.below(600);
            b.extend(rng.bytes(n));
            b
        }
    }
}

/// 2,000 garbage datagrams (random, truncated, mutated, hand-made
/// malformed) from 4 UDP sockets, then TCP connections with garbage: random
/// bytes, framing errors (no Content-Length, a huge or a negative one), a
/// connection reset mid-message, 50 connections opened and closed at once,
/// and one that writes an endless header (no CRLFCRLF) far past
/// `tcp_max_msg` (65,535 bytes), which the proxy must close. Afterwards
/// serlua still runs, logged no panic, answers OPTIONS from 16 UDP sources
/// (both workers) and over a new TCP connection, and 10 sipp calls
/// (uac.xml/uas.xml) complete with 0 failed.
#[test]
fn l_bad_input_never_kills_the_proxy() {
    let ctx = Ctx::new("l_bad_input_never_kills_the_proxy");
    if !sipp_or_skip(&ctx.name) {
        return;
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    ctx.note(format!("garbage seed: {seed:#x}"));
    let mut rng = Rng(seed);
    let px = free_port();
    let uas_port = free_port();
    // Holds the next hop's port while garbage is relayed there (mutated
    // requests are often still valid); sipp's UAS takes it over afterwards.
    let mut sink = UdpPeer::bind_to(local(uas_port));
    let listen = format!("udp:127.0.0.1:{px},tcp:127.0.0.1:{px}");
    let mut proxy = Proxy::start(
        &ctx,
        ProxyOpts::relay(local(uas_port))
            .script(TRANSPORT_LUA)
            .listen(&listen, local(px))
            .env(&[("SERLUA_FR_TIMER", "2")]),
    );

    // UDP.
    let senders: Vec<UdpPeer> = (0..4).map(|_| UdpPeer::bind()).collect();
    let nasty = nasty_messages(senders[0].addr, local(px));
    for i in 0..2000 {
        let s = &senders[i % senders.len()];
        let d = garbage(&mut rng, s.addr, local(px), &nasty);
        if let Err(e) = s.sock.send_to(&d, local(px)) {
            ctx.fail(&format!("sending garbage datagram {i} ({} bytes): {e}", d.len()));
        }
        if i % 25 == 24 {
            std::thread::sleep(Duration::from_millis(3));
        }
    }
    // Every hand-made one at least once, in order.
    for d in &nasty {
        let _ = senders[0].sock.send_to(d.as_bytes(), local(px));
    }
    proxy.ensure_alive(&ctx);

    // TCP.
    let t_tcp = Instant::now();
    let tcp_garbage: Vec<(&str, Vec<u8>)> = vec![
        ("20 KB random bytes", rng.bytes(20000)),
        (
            "no Content-Length",
            format!("OPTIONS sip:a@127.0.0.1:{px} SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKt1\r\nCall-ID: t1\r\nCSeq: 1 OPTIONS\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\n\r\n").into_bytes(),
        ),
        (
            "Content-Length: 99999999",
            format!("INVITE sip:a@127.0.0.1:{px} SIP/2.0\r\nContent-Length: 99999999\r\n\r\nabc").into_bytes(),
        ),
        ("Content-Length: -5", b"INVITE sip:a SIP/2.0\r\nContent-Length: -5\r\n\r\n".to_vec()),
        ("framed binary garbage", [rng.bytes(300), b"\r\nContent-Length: 0\r\n\r\n".to_vec()].concat()),
        ("keep-alives, then half a message", [b"\r\n\r\n\r\n\r\n".to_vec(), base_messages(local(9), local(px))[0].as_bytes()[..200].to_vec()].concat()),
    ];
    for (what, data) in &tcp_garbage {
        let mut c = TcpPeer::connect(local(px));
        let _ = c.try_send(data);
        let end = c.wait_closed(Instant::now() + Duration::from_millis(300));
        ctx.note(format!(
            "TCP {what}: {}",
            end.map_or("still open after 300 ms; closed by us".to_string(), |e| format!(
                "closed by the proxy ({e})"
            ))
        ));
    }
    // Reset mid-message (SO_LINGER 0: close sends RST).
    {
        let mut c = TcpPeer::connect(local(px));
        let _ = c.try_send(&base_messages(local(9), local(px))[0].as_bytes()[..300]);
        let linger = libc::linger { l_onoff: 1, l_linger: 0 };
        use std::os::fd::AsRawFd;
        // SAFETY: a valid socket and a properly sized linger struct.
        unsafe {
            libc::setsockopt(
                c.stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &linger as *const libc::linger as *const libc::c_void,
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
        }
    }
    let churn: Vec<TcpPeer> = (0..50).map(|_| TcpPeer::connect(local(px))).collect();
    drop(churn);
    // The endless header.
    let mut endless = TcpPeer::connect(local(px));
    let _ = endless.stream.set_write_timeout(Some(Duration::from_secs(2)));
    let mut written = 0usize;
    let mut write_err = None;
    let head = format!("OPTIONS sip:a@127.0.0.1:{px} SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:9;branch=z9hG4bKe\r\nX-Endless: ");
    let chunk = vec![b'a'; 8192];
    for i in 0..128 {
        let data = if i == 0 { head.as_bytes() } else { &chunk[..] };
        match endless.try_send(data) {
            Ok(()) => written += data.len(),
            Err(e) => {
                write_err = Some(e.to_string());
                break;
            }
        }
        if written > 200_000 && i % 8 == 0 {
            // Give the proxy time to read and give up.
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let closed = match &write_err {
        Some(e) => Some(format!("a write failed after {written} bytes: {e}")),
        None => endless
            .wait_closed(Instant::now() + Duration::from_secs(3))
            .map(|e| format!("read {e} after {written} bytes written")),
    };
    ctx.note(format!(
        "TCP endless header: {}",
        closed.as_deref().unwrap_or("never closed by the proxy")
    ));
    ctx.ensure(closed.is_some(), || {
        format!(
            "the proxy kept a connection open after {written} bytes of one header line without CRLFCRLF (tcp_max_msg is 65,535): it must close it"
        )
    });
    ctx.note(format!("TCP garbage took {:?}", t_tcp.elapsed()));

    // Still alive, all workers.
    std::thread::sleep(Duration::from_millis(200));
    proxy.ensure_alive(&ctx);
    let log = proxy.stderr_text();
    ctx.ensure(!log.contains("panicked"), || "serlua logged a panic (see its stderr)".to_string());
    let t0 = Instant::now();
    let mut probes: Vec<(UdpPeer, Call)> = (0..16)
        .map(|_| {
            let p = UdpPeer::bind();
            let c = Call::new(p.addr, local(px));
            (p, c)
        })
        .collect();
    for (p, c) in &probes {
        p.send(&c.simple("OPTIONS", 70, ""), local(px));
    }
    for (p, c) in probes.iter_mut() {
        let got = p.recv_match(t0 + Duration::from_secs(3), |m| {
            m.status() == Some(200) && m.header("Call-ID") == Some(c.call_id.as_str())
        });
        ctx.ensure(got.is_some(), || {
            format!(
                "after the garbage, an OPTIONS from {} got no 200 within 3 s (a dead worker?)",
                p.addr
            )
        });
    }
    let mut tcp = TcpPeer::connect(local(px));
    let c = Call::new(tcp.local, local(px)).over("TCP");
    tcp.send(c.simple("OPTIONS", 70, "").as_bytes());
    let got = tcp.recv_match(Instant::now() + Duration::from_secs(3), |m| m.status() == Some(200));
    ctx.ensure(got.is_some(), || {
        "after the garbage, an OPTIONS over a new TCP connection got no 200 within 3 s".to_string()
    });

    // Whatever garbage was relayed to the next hop has timed out (fr_timer
    // 2 s) before sipp takes the port over.
    let mut quiet_since = Instant::now();
    let mut relayed = 0usize;
    let drain_end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < drain_end {
        if sink.recv_until(Instant::now() + Duration::from_millis(200)).is_some() {
            relayed += 1;
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() > Duration::from_millis(2500) {
            break;
        }
    }
    ctx.note(format!(
        "the next hop's port received {relayed} relayed garbage messages (not answered)"
    ));
    drop(sink);
    const CALLS: u32 = 10;
    let uas = SippRun::spawn(&ctx, SippOpts::uas("uas.xml", uas_port, CALLS).timeout(Duration::from_secs(20)));
    let uac = SippRun::spawn(
        &ctx,
        SippOpts::uac("uac.xml", free_udp_port(), local(px), CALLS, 20).timeout(Duration::from_secs(20)),
    );
    let uac_r = uac.wait(Duration::from_secs(5));
    let uas_r = uas.wait(Duration::from_secs(5));
    proxy.ensure_alive(&ctx);
    ensure_sipp(&ctx, &[&uac_r, &uas_r], u64::from(CALLS));
    let log = proxy.stderr_text();
    ctx.ensure(!log.contains("panicked"), || "serlua logged a panic (see its stderr)".to_string());
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
