//! End-to-end acceptance tests of NAT traversal and the media relay
//! (issue 4), with real sipp phones on 127.0.0.1:
//!
//!   1. `nat_call_embedded`: serlua runs tests/scripts/nat_media.lua (the
//!      reference rtpproxy config's NAT shape) with the embedded relay. Bob
//!      registers from behind a pretend NAT (Contact, Via and later SDP say
//!      192.168.1.20; every packet really is on 127.0.0.1), alice registers
//!      plainly. The binding keeps bob's real source; alice's sipp calls
//!      bob; the INVITE reaches bob's sipp at its source address; the offer
//!      bob receives and the answer alice receives both name the relay;
//!      RTP from each side's test socket arrives at the other through the
//!      relay (counted on the sockets and in `serlua ctl sessions`); after
//!      the BYE the session is gone.
//!   2. `nat_call_rtpengine`: the same call with serlua driving a real
//!      rtpengine (Debian's rtpengine-daemon, userspace forwarding) over
//!      the ng protocol.
//!   3. `kamailio_drives_serlua_relay`: Kamailio (rtpengine module) proxies
//!      the call and drives `serlua relay` over ng; media crosses it.
//!
//! sipp, rtpengine or kamailio missing: skipped loudly, unless
//! SERLUA_REQUIRE_SIPP / SERLUA_REQUIRE_RTPENGINE / SERLUA_REQUIRE_KAMAILIO
//! is set. Logs stay in target/tmp/e2e/<test>/.
//!
//!   cargo test --test e2e_media -- --nocapture

#[path = "e2e/mod.rs"]
mod harness;

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use harness::sip::{UdpPeer, unique};
use harness::sipp::{SippOpts, SippRun};
use harness::{ChildGuard, Ctx, Output, Proxy, ProxyOpts, describe_status, free_udp_port, run_serlua, sipp_or_skip, which};
use serde_json::Value;

const SCRIPT: &str = "tests/scripts/nat_media.lua";
const NAT_IP: &str = "192.168.1.20";

fn local(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

fn ok(out: &Output) -> bool {
    !out.timed_out && out.status.is_some_and(|s| s.success())
}

/// `serlua ctl --ctl SOCK --json ARGS…`, parsed.
fn ctl_json(ctx: &Ctx, sock: &Path, args: &[&str]) -> Value {
    let sock = sock.display().to_string();
    let mut all = vec!["ctl", "--ctl", sock.as_str(), "--json"];
    all.extend_from_slice(args);
    let out = run_serlua(ctx, "ctl", &all, &[], Duration::from_secs(30));
    ctx.ensure(ok(&out), || {
        format!(
            "serlua ctl {args:?} failed ({}): {}{}",
            describe_status(out.status),
            out.stdout,
            out.stderr
        )
    });
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| ctx.fail(&format!("ctl {args:?}: not JSON ({e}): {}", out.stdout)))
}

/// Registers `user` from `sip_port` without auth (nat_media.lua has none);
/// `nat` makes the Via and Contact name the private address.
fn register(ctx: &Ctx, proxy: SocketAddr, user: &str, sip_port: u16, nat: bool) {
    let mut peer = UdpPeer::bind_to(local(sip_port));
    let host = if nat { NAT_IP } else { "127.0.0.1" };
    let call_id = unique("reg");
    let req = format!(
        "REGISTER sip:example.com SIP/2.0\r\n\
         Via: SIP/2.0/UDP {host}:{sip_port};branch=z9hG4bK{call_id}\r\n\
         From: <sip:{user}@example.com>;tag={call_id}\r\n\
         To: <sip:{user}@example.com>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 REGISTER\r\n\
         Contact: <sip:{user}@{host}:{sip_port}>;expires=300\r\n\
         Max-Forwards: 70\r\n\
         Content-Length: 0\r\n\r\n"
    );
    peer.send(&req, proxy);
    let r = peer.recv_match(Instant::now() + Duration::from_secs(5), |m| m.status().is_some_and(|s| s >= 200));
    let r = r.unwrap_or_else(|| ctx.fail(&format!("no final reply to {user}'s REGISTER:\n{}", peer.transcript(ctx.started))));
    ctx.ensure(r.msg.status() == Some(200), || {
        format!("{user}'s REGISTER got {}", r.msg.first_line)
    });
    // A NATed phone gets its reply at its real source (rport/received).
    ctx.ensure(r.from == proxy, || format!("reply from {} instead of {proxy}", r.from));
}

/// RTP-sized test packets: a 12-byte RTP header (RFC 3550 §5.1, PCMU)
/// with `seq`, then 160 bytes of payload tagged with `tag`.
fn rtp(seq: u16, tag: u8) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&[0xde, 0xad, 0xbe, tag]);
    p.extend(std::iter::repeat_n(tag, 160));
    p
}

/// Sends `n` packets from `from` to `to` and counts those `at` receives
/// with `tag` (and from where): proves one direction of the relay.
fn one_way(from: &UdpSocket, to: SocketAddr, at: &UdpSocket, n: u16, tag: u8) -> (u16, Option<SocketAddr>) {
    for seq in 0..n {
        let _ = from.send_to(&rtp(seq, tag), to);
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut got = 0;
    let mut src = None;
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(2);
    let _ = at.set_read_timeout(Some(Duration::from_millis(100)));
    while Instant::now() < deadline && got < n {
        if let Ok((len, s)) = at.recv_from(&mut buf) {
            if len == 172 && buf[15] == tag {
                got += 1;
                src = Some(s);
            }
        }
    }
    (got, src)
}

/// Reads "IP PORT" that a sipp scenario wrote (its `exec` action).
fn wait_relay_file(ctx: &Ctx, path: &Path, deadline: Instant) -> SocketAddr {
    loop {
        if let Ok(t) = std::fs::read_to_string(path) {
            let mut it = t.split_whitespace();
            if let (Some(ip), Some(port)) = (it.next(), it.next()) {
                if let (Ok(ip), Ok(port)) = (ip.parse(), port.parse()) {
                    return SocketAddr::new(ip, port);
                }
            }
        }
        if Instant::now() > deadline {
            ctx.fail(&format!("{} was not written by sipp", path.display()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What a NAT call through `proxy` showed.
struct CallResult {
    /// Where alice's media goes (the relay, from the answer alice got).
    caller_relay: SocketAddr,
    /// Where bob's media goes (the relay, from the offer bob got).
    callee_relay: SocketAddr,
    /// alice's and bob's media sockets.
    media_a: SocketAddr,
    media_b: SocketAddr,
}

/// Places alice → bob through `proxy`: bob's sipp listens on `bob_sip`
/// and announces `nat_ip` in Contact and SDP (registered first unless
/// `register_first` is false: a proxy that is no registrar); sends
/// RTP both ways through the relay, and returns what it saw; `during`
/// runs while the call is up (after the media test).
fn nat_call(
    ctx: &Ctx,
    proxy: SocketAddr,
    bob_sip: u16,
    nat_ip: &str,
    register_first: bool,
    during: impl FnOnce(&CallResult),
) -> CallResult {
    let alice_sip = free_udp_port();
    if register_first {
        register(ctx, proxy, "bob", bob_sip, nat_ip != "127.0.0.1");
        register(ctx, proxy, "alice", alice_sip, false);
    }
    let media_a = UdpSocket::bind(local(0)).expect("bind media a");
    let media_b = UdpSocket::bind(local(0)).expect("bind media b");
    let (ma, mb) = (media_a.local_addr().expect("addr"), media_b.local_addr().expect("addr"));
    let out_dir = ctx.dir.display().to_string();
    let uas = SippRun::spawn(
        ctx,
        SippOpts::uas("nat_uas.xml", bob_sip, 1)
            .label("bob")
            .args(&[
                "-key",
                "media_b",
                &mb.port().to_string(),
                "-key",
                "nat_ip",
                nat_ip,
                "-key",
                "out_dir",
                &out_dir,
            ])
            .trace_msg(true),
    );
    std::thread::sleep(Duration::from_millis(300));
    let uac = SippRun::spawn(
        ctx,
        SippOpts::uac("nat_uac.xml", alice_sip, proxy, 1, 1)
            .label("alice")
            .args(&[
                "-s",
                "bob",
                "-d",
                "6000",
                "-key",
                "media_a",
                &ma.port().to_string(),
                "-key",
                "sdp_ip",
                "127.0.0.1",
                "-key",
                "via_ip",
                "127.0.0.1",
                "-key",
                "out_dir",
                &out_dir,
            ])
            .trace_msg(true),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let callee_relay = wait_relay_file(ctx, &ctx.path("callee_relay.txt"), deadline);
    let caller_relay = wait_relay_file(ctx, &ctx.path("caller_relay.txt"), deadline);
    ctx.note(format!("offer to bob names {callee_relay}; answer to alice names {caller_relay}"));
    for (who, a, announced) in [("bob", callee_relay, ma), ("alice", caller_relay, mb)] {
        ctx.ensure(a.ip().is_loopback() && a != announced, || {
            format!("the SDP {who} received names {a}, not the relay (the other side announced {announced})")
        });
    }
    // alice → relay → bob, then bob → relay → alice (bob's SDP said
    // 192.168.1.20: the relay must reach him at his real address).
    let (got_b, from_b) = one_way(&media_a, caller_relay, &media_b, 50, 0xa1);
    let (got_a, from_a) = one_way(&media_b, callee_relay, &media_a, 50, 0xb0);
    ctx.note(format!(
        "RTP alice→bob: {got_b}/50 (from {from_b:?}); bob→alice: {got_a}/50 (from {from_a:?})"
    ));
    ctx.ensure(got_b >= 48 && got_a >= 48, || {
        format!("RTP lost: alice→bob {got_b}/50, bob→alice {got_a}/50")
    });
    // Symmetric RTP: each side hears the relay from the port it sends to.
    ctx.ensure(from_b == Some(callee_relay) && from_a == Some(caller_relay), || {
        format!("media came from {from_b:?} / {from_a:?}, not from the relay ports {callee_relay} / {caller_relay}")
    });
    let res = CallResult {
        caller_relay,
        callee_relay,
        media_a: ma,
        media_b: mb,
    };
    during(&res);
    let ua = uac.wait(Duration::from_secs(20));
    let ub = uas.wait(Duration::from_secs(20));
    ctx.ensure(ua.ok() && ub.ok(), || format!("sipp: {ua:?} / {ub:?}"));
    res
}

fn sessions_of(v: &Value) -> Vec<Value> {
    v.as_array().cloned().unwrap_or_default()
}

#[test]
fn nat_call_embedded() {
    if !sipp_or_skip("nat_call_embedded") {
        return;
    }
    let ctx = Ctx::new("nat_call_embedded");
    let (lo, hi) = common::ports::free_udp_range(40);
    let ports = format!("{lo}-{hi}");
    // The harness gives the proxy the control socket <label>.ctl.
    let ctl = ctx.path("serlua.ctl");
    let env = [("SERLUA_PORTS", ports.as_str())];
    let mut proxy = Proxy::start(&ctx, ProxyOpts::relay(local(9)).script(SCRIPT).env(&env));
    let addr = proxy.addr;
    nat_call(&ctx, addr, free_udp_port(), NAT_IP, true, |r| {
        // The binding keeps bob's real source; his Contact stays as written.
        let ul = ctl_json(&ctx, &ctl, &["ul", "show", "bob@example.com"]);
        let text = ul.to_string();
        ctx.ensure(
            text.contains(&format!("sip:bob@{NAT_IP}")) && text.contains("sip:127.0.0.1:"),
            || format!("bob's binding should keep the Contact and received=127.0.0.1: {text}"),
        );
        let s = sessions_of(&ctl_json(&ctx, &ctl, &["sessions"]));
        ctx.ensure(s.len() == 1, || format!("one relay session expected: {s:?}"));
        let st = &s[0]["streams"][0];
        ctx.note(format!("session: {}", s[0]));
        ctx.ensure(
            st["caller_packets"].as_u64() >= Some(48) && st["callee_packets"].as_u64() >= Some(48),
            || format!("relay counters: {st}"),
        );
        ctx.ensure(
            st["caller_latched"] == r.media_a.to_string() && st["callee_latched"] == r.media_b.to_string(),
            || format!("latched addresses: {st}"),
        );
        ctx.ensure(st["callee_announced"].as_str().is_some_and(|a| a.starts_with(NAT_IP)), || {
            format!("bob announced {NAT_IP}: {st}")
        });
        ctx.ensure(st["codecs"].to_string().contains("PCMU/8000"), || format!("codecs: {st}"));
        // The plain table, as an admin reads it.
        let sock = ctl.display().to_string();
        let out = run_serlua(
            &ctx,
            "ctl-sessions",
            &["ctl", "--ctl", &sock, "sessions"],
            &[],
            Duration::from_secs(30),
        );
        ctx.note(format!("serlua ctl sessions:\n{}", out.stdout));
        ctx.ensure(
            ok(&out)
                && out.stdout.starts_with("CALL-ID")
                && out.stdout.contains("sip:alice@example.com")
                && out.stdout.contains("PCMU/8000"),
            || format!("ctl sessions table: {}{}", out.stdout, out.stderr),
        );
        let _ = (r.caller_relay, r.callee_relay);
    });
    // The BYE ended the session.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = sessions_of(&ctl_json(&ctx, &ctl, &["sessions"]));
        if s.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            ctx.fail(&format!("relay session still there after the BYE: {s:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The plain table lists nothing now; the metrics saw the packets.
    let st = proxy.stop();
    ctx.ensure(st.is_some_and(|s| s.success()), || format!("serlua exit: {}", describe_status(st)));
}

// ---------------------------------------------------------------------------
// real peers

fn tool_or_skip(test: &str, bin: &str, env: &str) -> Option<PathBuf> {
    if let Some(p) = which(bin) {
        return Some(p);
    }
    if std::env::var_os(env).is_some_and(|v| v == "1") {
        panic!("{test}: {bin} is not installed and {env}=1");
    }
    eprintln!("\n!!! SKIPPED {test}: {bin} is not installed (set {env}=1 to fail instead)\n");
    None
}

/// Starts rtpengine (userspace forwarding only) with its ng socket on
/// `ng`, media ports in `ports`.
fn start_rtpengine(ctx: &Ctx, bin: &Path, ng: SocketAddr, ports: (u16, u16)) -> ChildGuard {
    let log = ctx.path("rtpengine.log");
    let mut cmd = Command::new(bin);
    cmd.args([
        "--foreground",
        "--interface=127.0.0.1",
        &format!("--listen-ng={ng}"),
        &format!("--port-min={}", ports.0),
        &format!("--port-max={}", ports.1),
        "--table=-1",
        "--log-stderr",
        "--log-level=6",
    ])
    .stdout(std::fs::File::create(ctx.path("rtpengine.stdout.log")).expect("log"))
    .stderr(std::fs::File::create(&log).expect("log"));
    ctx.add_log("rtpengine", log);
    ctx.note(format!("rtpengine: {cmd:?}"));
    let g = ChildGuard::spawn("rtpengine", &mut cmd).unwrap_or_else(|e| ctx.fail(&format!("start rtpengine: {e}")));
    wait_ng(ctx, ng);
    g
}

/// Waits until an ng server answers `ping`.
fn wait_ng(ctx: &Ctx, ng: SocketAddr) {
    let sock = UdpSocket::bind(local(0)).expect("bind");
    let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        let _ = sock.send_to(b"c1 d7:command4:pinge", ng);
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            if String::from_utf8_lossy(&buf[..n]).contains("pong") {
                return;
            }
        }
    }
    ctx.fail(&format!("no ng pong from {ng}"));
}

#[test]
fn nat_call_rtpengine() {
    if !sipp_or_skip("nat_call_rtpengine") {
        return;
    }
    let Some(bin) = tool_or_skip("nat_call_rtpengine", "rtpengine", "SERLUA_REQUIRE_RTPENGINE") else {
        return;
    };
    let ctx = Ctx::new("nat_call_rtpengine");
    let ng = local(free_udp_port());
    let _rtpengine = start_rtpengine(&ctx, &bin, ng, common::ports::free_udp_range(40));
    let relay = format!("ng:udp:{ng}");
    let env = [("SERLUA_RELAY", relay.as_str())];
    let mut proxy = Proxy::start(&ctx, ProxyOpts::relay(local(9)).script(SCRIPT).env(&env));
    let addr = proxy.addr;
    nat_call(&ctx, addr, free_udp_port(), NAT_IP, true, |_| {});
    let st = proxy.stop();
    ctx.ensure(st.is_some_and(|s| s.success()), || format!("serlua exit: {}", describe_status(st)));
}

#[test]
fn kamailio_drives_serlua_relay() {
    if !sipp_or_skip("kamailio_drives_serlua_relay") {
        return;
    }
    let Some(kamailio) = tool_or_skip("kamailio_drives_serlua_relay", "kamailio", "SERLUA_REQUIRE_KAMAILIO") else {
        return;
    };
    let ctx = Ctx::new("kamailio_drives_serlua_relay");
    // serlua relay on its own, speaking ng.
    let ng = local(free_udp_port());
    let (lo, hi) = common::ports::free_udp_range(40);
    let relay_log = ctx.path("relay.stderr.log");
    let mut cmd = Command::new(harness::SERLUA);
    cmd.args([
        "relay",
        "--ng",
        &format!("udp:{ng}"),
        "--ports",
        &format!("{lo}-{hi}"),
        "--advertise",
        "127.0.0.1",
    ])
    .stderr(std::fs::File::create(&relay_log).expect("log"))
    .stdout(std::process::Stdio::null());
    ctx.add_log("serlua relay", relay_log);
    let mut relay = ChildGuard::spawn("serlua relay", &mut cmd).unwrap_or_else(|e| ctx.fail(&format!("start serlua relay: {e}")));
    wait_ng(&ctx, ng);
    // Kamailio as the proxy, with its rtpengine module pointing at it.
    let kport = free_udp_port();
    let bob_sip = free_udp_port();
    let cfg = std::fs::read_to_string(harness::root_path("tests/kamailio/rtpengine.cfg")).expect("kamailio cfg");
    let cfg = cfg
        .replace("@LISTEN@", &format!("udp:127.0.0.1:{kport}"))
        .replace("@NG@", &format!("udp:{ng}"))
        .replace("@BOB@", &format!("sip:127.0.0.1:{bob_sip}"));
    let cfg_path = ctx.path("kamailio.cfg");
    std::fs::write(&cfg_path, cfg).expect("write cfg");
    let klog = ctx.path("kamailio.log");
    let mut kcmd = Command::new(&kamailio);
    kcmd.args([
        "-f",
        &cfg_path.display().to_string(),
        "-DD",
        "-E",
        "-n",
        "1",
        "-Y",
        &ctx.dir.display().to_string(),
    ])
    .stdout(std::process::Stdio::null())
    .stderr(std::fs::File::create(&klog).expect("log"));
    ctx.add_log("kamailio", klog);
    let _k = ChildGuard::spawn("kamailio", &mut kcmd).unwrap_or_else(|e| ctx.fail(&format!("start kamailio: {e}")));
    let deadline = Instant::now() + Duration::from_secs(15);
    while !harness::udp_port_in_use(kport) {
        if Instant::now() > deadline {
            ctx.fail("kamailio did not bind its port");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Kamailio's script sends new calls to bob's sipp (no registrar
    // there), and in-dialog requests to the Contact: bob must announce his
    // real address, or Kamailio would send the ACK into 192.168/16.
    nat_call(&ctx, local(kport), bob_sip, "127.0.0.1", false, |_| {});
    let st = relay.terminate(Duration::from_secs(5));
    ctx.ensure(st.is_some_and(|s| s.success()), || {
        format!("serlua relay exit: {}", describe_status(st))
    });
}
