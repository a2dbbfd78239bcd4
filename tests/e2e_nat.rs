//! End-to-end test of NAT traversal for signalling: the real `serlua run
//! tests/scripts/nat.lua` (nat_uac_test(19) → setflag(6),
//! fix_nated_register(), save("location"); natping_interval 2 s) with real
//! sipp on 127.0.0.1:
//!
//!   1. a sipp client registers from 127.0.0.1:P with the private Contact
//!      sip:natted@192.168.1.20:5060 (text only): the 200 lists it with
//!      `;received="sip:127.0.0.1:P"` (checked by tests/sipp/reg_nat.xml),
//!      and `serlua ctl --json ul show` shows the binding with received =
//!      sip:127.0.0.1:P and the Contact untouched;
//!   2. a call to natted (sipp uac.xml → proxy) is delivered to the sipp
//!      UAS listening at 127.0.0.1:P — the address it registered from, not
//!      its Contact — and completes;
//!   3. two plain UDP sockets register with hand-built REGISTERs, one with
//!      a private Contact (NATed), one with its own address as Contact:
//!      over 5 s the NATed one receives a 4-byte zero keepalive every 2 s,
//!      the other none, and `serlua ctl --json stats` counts them.
//!
//! Only loopback traffic: the script refuses (500 Not Loopback) to relay
//! to any address but 127.0.0.1, and keepalives only go to `received`
//! addresses (ping_nated_only 1, no registrar nat_flag).
//!
//!   cargo test --test e2e_nat

#[path = "e2e/mod.rs"]
mod harness;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use harness::sip::unique;
use harness::sipp::{SippOpts, SippResult, SippRun};
use harness::{Ctx, Proxy, ProxyOpts, describe_status, free_udp_port, run_serlua, sipp_or_skip};
use serde_json::Value;

const SCRIPT: &str = "tests/scripts/nat.lua";

fn local(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

fn ensure_sipp(ctx: &Ctx, results: &[&SippResult], calls: u64) {
    let all = results.iter().map(|r| r.describe()).collect::<Vec<_>>().join("; ");
    for r in results {
        ctx.ensure(r.ok() && r.successful == Some(calls), || {
            format!("expected {calls} successful calls and 0 failed: {all}")
        });
    }
}

/// `serlua ctl --ctl PATH --json ARGS…`, parsed.
fn ctl_json(ctx: &Ctx, label: &str, args: &[&str]) -> Value {
    let ctl = ctx.path("serlua.ctl").display().to_string();
    let mut full = vec!["ctl", "--ctl", ctl.as_str(), "--json"];
    full.extend_from_slice(args);
    let out = run_serlua(ctx, label, &full, &[], Duration::from_secs(20));
    ctx.ensure(!out.timed_out && out.status.is_some_and(|s| s.success()), || {
        format!("serlua {} failed ({}): {}", full.join(" "), describe_status(out.status), out.stderr)
    });
    serde_json::from_str(out.stdout.trim())
        .unwrap_or_else(|e| ctx.fail(&format!("serlua {} printed no JSON ({e}): {}", full.join(" "), out.stdout)))
}

/// A hand-built REGISTER for `user` from `sock`, with `contact`.
fn register(sock: &UdpSocket, proxy: SocketAddr, user: &str, contact: &str) {
    let me = sock.local_addr().expect("local address");
    let msg = format!(
        "REGISTER sip:example.com SIP/2.0\r\n\
         Via: SIP/2.0/UDP {me};branch=z9hG4bK{}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:{user}@example.com>;tag={}\r\n\
         To: <sip:{user}@example.com>\r\n\
         Call-ID: {}\r\n\
         CSeq: 1 REGISTER\r\n\
         Contact: <{contact}>\r\n\
         Expires: 600\r\n\
         Content-Length: 0\r\n\r\n",
        unique("-r"),
        unique("t"),
        unique("nat-")
    );
    sock.send_to(msg.as_bytes(), proxy).expect("send REGISTER");
}

/// Waits for the 200 to a REGISTER on `sock` (skipping anything else).
fn await_200(ctx: &Ctx, sock: &UdpSocket, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            if buf[..n].starts_with(b"SIP/2.0 200 ") {
                return;
            }
            if buf[..n].starts_with(b"SIP/2.0 ") {
                ctx.fail(&format!(
                    "{what}: {}",
                    String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or("")
                ));
            }
        }
    }
    ctx.fail(&format!("{what}: no 200 within 5 s"));
}

#[test]
fn nated_client_registers_is_reached_and_kept_alive() {
    let ctx = Ctx::new("nat_register_call_keepalive");
    if !sipp_or_skip(&ctx.name) {
        return;
    }
    let mut proxy = Proxy::start(
        &ctx,
        ProxyOpts::relay(local(9)).script(SCRIPT).env(&[("SERLUA_NATPING_INTERVAL", "2")]),
    );

    // 1. REGISTER from 127.0.0.1:P with a private Contact.
    let p = free_udp_port();
    let reg = SippRun::spawn(
        &ctx,
        SippOpts::uac("reg_nat.xml", p, proxy.addr, 1, 1)
            .label("register")
            .args(&["-s", "natted"])
            .timeout(Duration::from_secs(20)),
    )
    .wait(Duration::from_secs(10));
    ensure_sipp(&ctx, &[&reg], 1);
    let bindings = ctl_json(&ctx, "ul-show", &["ul", "show"]);
    let want_received = format!("sip:127.0.0.1:{p}");
    let found = bindings
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b["contact"] == "sip:natted@192.168.1.20:5060")
        .cloned();
    ctx.ensure(found.as_ref().is_some_and(|b| b["received"] == want_received.as_str()), || {
        format!("ul show should list natted's Contact as registered with received {want_received}; it shows {bindings}")
    });

    // 2. A call to natted reaches the UAS at the address it registered from.
    let uas = SippRun::spawn(&ctx, SippOpts::uas("uas.xml", p, 1).timeout(Duration::from_secs(30)));
    let uac = SippRun::spawn(
        &ctx,
        SippOpts::uac("uac.xml", free_udp_port(), proxy.addr, 1, 1)
            .args(&["-s", "natted"])
            .timeout(Duration::from_secs(30)),
    );
    let uac_r = uac.wait(Duration::from_secs(10));
    let uas_r = uas.wait(Duration::from_secs(10));
    ensure_sipp(&ctx, &[&uac_r, &uas_r], 1);

    // 3. Keepalives: every 2 s to the NATed binding, never to the other.
    let nated = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let public = UdpSocket::bind("127.0.0.1:0").expect("bind");
    register(&nated, proxy.addr, "kaN", "sip:kaN@10.11.12.13:5060");
    await_200(&ctx, &nated, "the NATed REGISTER");
    let public_contact = format!("sip:kaP@{}", public.local_addr().expect("addr"));
    register(&public, proxy.addr, "kaP", &public_contact);
    await_200(&ctx, &public, "the public REGISTER");
    let pings_before = ctl_json(&ctx, "stats-before", &["stats"])["nat_pings"].as_u64().unwrap_or(0);
    let (mut got_nated, mut got_public, mut other) = (Vec::new(), 0, Vec::new());
    let start = Instant::now();
    let mut buf = [0u8; 2048];
    while start.elapsed() < Duration::from_secs(5) {
        for (sock, is_nated) in [(&nated, true), (&public, false)] {
            sock.set_read_timeout(Some(Duration::from_millis(25))).expect("timeout");
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                if from != proxy.addr || buf[..n] != [0u8, 0, 0, 0] {
                    other.push(format!("{from}: {:?}", String::from_utf8_lossy(&buf[..n])));
                } else if is_nated {
                    got_nated.push(start.elapsed());
                } else {
                    got_public += 1;
                }
            }
        }
    }
    ctx.ensure(other.is_empty(), || format!("unexpected datagrams: {other:?}"));
    ctx.ensure((2..=3).contains(&got_nated.len()), || {
        format!("the NATed binding should get a keepalive every 2 s (2 or 3 in 5 s), got them at {got_nated:?}")
    });
    ctx.ensure(got_public == 0, || format!("the public binding got {got_public} keepalives"));
    let pings_after = ctl_json(&ctx, "stats-after", &["stats"])["nat_pings"].as_u64().unwrap_or(0);
    ctx.ensure(pings_after >= pings_before + got_nated.len() as u64, || {
        format!(
            "stats nat_pings went from {pings_before} to {pings_after}, but {} keepalives arrived",
            got_nated.len()
        )
    });

    proxy.ensure_alive(&ctx);
    let st = proxy.stop();
    ctx.ensure(st.is_some_and(|s| s.code() == Some(0)), || {
        format!("serlua should exit 0 on SIGTERM, it ended with {}", describe_status(st))
    });
    let log = proxy.stderr_text();
    ctx.ensure(!log.contains("ERROR"), || "serlua logged errors (see its stderr above)".into());
}
