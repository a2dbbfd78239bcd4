//! End-to-end: pike's ban table through the real `serlua ctl` (issue 8,
//! Security). `serlua run tests/scripts/security.lua` with
//! reqs_density_per_unit 20: a flood from 127.0.0.1 is cut off after about
//! 20 requests, `serlua ctl pike` (table and `--json`) shows the source
//! with its hits and time left, `serlua ctl pike rm 127.0.0.1` lets it in
//! again at once, and a sipvicious User-Agent gets nothing at all
//! (`pike_ban_table_in_ctl`); the real sipvicious tools, svmap sweeping
//! for SIP servers and svwar guessing extensions, get no answer and find
//! nothing (`sipvicious_finds_nothing`; skipped without sipvicious unless
//! SERLUA_REQUIRE_SIPVICIOUS=1).
//!
//!   cargo test --test e2e_security

#[path = "e2e/mod.rs"]
mod harness;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use harness::sip::{Call, UdpPeer};
use harness::{ChildGuard, Ctx, Output, Proxy, ProxyOpts, describe_status, free_udp_port, run_serlua, which};
use serde_json::Value;

fn ctl(ctx: &Ctx, sock: &str, label: &str, args: &[&str]) -> Output {
    let mut all = vec!["ctl", "--ctl", sock];
    all.extend_from_slice(args);
    run_serlua(ctx, label, &all, &[], Duration::from_secs(30))
}

/// Sends `n` OPTIONS back to back and counts the answers.
fn burst(uac: &mut UdpPeer, proxy: SocketAddr, n: usize, ua: &str) -> usize {
    for _ in 0..n {
        let call = Call::new(uac.addr, proxy);
        uac.send(&call.simple("OPTIONS", 70, &format!("User-Agent: {ua}\r\n")), proxy);
    }
    let mut answered = 0;
    let deadline = Instant::now() + Duration::from_millis(800);
    while uac.recv_until(deadline).is_some() {
        answered += 1;
    }
    answered
}

#[test]
fn pike_ban_table_in_ctl() {
    let ctx = Ctx::new("pike_ctl");
    let port = free_udp_port();
    let listen = format!("udp:127.0.0.1:{port}");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let sock = ctx.path("serlua.ctl").display().to_string();
    let env = [("SERLUA_PIKE_DENSITY", "20")];
    let mut proxy = Proxy::start(
        &ctx,
        ProxyOpts::relay(addr)
            .script("tests/scripts/security.lua")
            .env(&env)
            .listen(&listen, addr),
    );
    // Let the readiness probes (from 127.0.0.1 too) leave the window.
    std::thread::sleep(Duration::from_secs(4));
    let mut uac = UdpPeer::bind();
    let answered = burst(&mut uac, proxy.addr, 40, "Linphone/5.2");
    ctx.ensure((15..=21).contains(&answered), || {
        format!("{answered} of 40 back-to-back requests answered; pike allows 20 per 2 s")
    });
    ctx.ensure(burst(&mut uac, proxy.addr, 5, "Linphone/5.2") == 0, || {
        "a blocked source is answered".into()
    });

    let out = ctl(&ctx, &sock, "ctl-pike", &["pike"]);
    ctx.ensure(out.status.is_some_and(|s| s.success()), || {
        format!("ctl pike: {} {}", describe_status(out.status), out.stderr)
    });
    ctx.ensure(out.stdout.contains("127.0.0.1") && out.stdout.contains("rate"), || {
        format!("ctl pike does not list 127.0.0.1 blocked for its rate:\n{}", out.stdout)
    });
    let out = ctl(&ctx, &sock, "ctl-pike-json", &["--json", "pike"]);
    let v: Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| ctx.fail(&format!("ctl --json pike: {e}: {}", out.stdout)));
    let row = v
        .as_array()
        .and_then(|a| a.iter().find(|r| r["ip"] == "127.0.0.1"))
        .unwrap_or_else(|| ctx.fail(&format!("no 127.0.0.1 in {v}")));
    ctx.ensure(
        row["hits"].as_u64().unwrap_or(0) >= 45 && row["refused"].as_u64().unwrap_or(0) >= 20,
        || format!("hits/refused of 127.0.0.1: {row}"),
    );
    let left = row["expires_in"].as_u64().unwrap_or(0);
    ctx.ensure((100..=120).contains(&left), || format!("blocked for {left} s more, want about 120"));

    let out = ctl(&ctx, &sock, "ctl-pike-rm", &["pike", "rm", "127.0.0.1"]);
    ctx.ensure(
        out.status.is_some_and(|s| s.success()) && out.stdout.contains("unblocked 127.0.0.1"),
        || format!("ctl pike rm: {} {}{}", describe_status(out.status), out.stdout, out.stderr),
    );
    ctx.ensure(burst(&mut uac, proxy.addr, 3, "Linphone/5.2") == 3, || {
        "unblocked, but still not answered".into()
    });
    let out = ctl(&ctx, &sock, "ctl-pike-rm-again", &["pike", "rm", "127.0.0.1"]);
    ctx.ensure(
        out.status.is_some_and(|s| !s.success()) && out.stderr.contains("not blocked"),
        || format!("a second pike rm should fail: {} {}", describe_status(out.status), out.stderr),
    );

    // svmap's sweep: nothing comes back.
    let mut scanner = UdpPeer::bind();
    ctx.ensure(burst(&mut scanner, proxy.addr, 3, "friendly-scanner") == 0, || {
        "a friendly-scanner OPTIONS was answered".into()
    });
    proxy.ensure_alive(&ctx);
    proxy.stop();
}

/// Runs a sipvicious tool with `args` (60 s at most) and returns what it
/// printed (its results on stdout, its log lines on stderr).
fn sipvicious(ctx: &Ctx, tool: &std::path::Path, label: &str, args: &[&str]) -> String {
    let out = ctx.path(&format!("{label}.stdout.log"));
    let err = ctx.path(&format!("{label}.stderr.log"));
    let mut cmd = Command::new(tool);
    cmd.args(args)
        .current_dir(&ctx.dir)
        .env("HOME", &ctx.dir)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("log"))
        .stderr(std::fs::File::create(&err).expect("log"));
    ctx.note(format!("{label}: {cmd:?}"));
    ctx.add_log(label, err.clone());
    let mut child = ChildGuard::spawn(label, &mut cmd).unwrap_or_else(|e| ctx.fail(&format!("start {label}: {e}")));
    let st = child.wait_until(Instant::now() + Duration::from_secs(60));
    ctx.ensure(st.is_some(), || format!("{label} still running after 60 s"));
    std::fs::read_to_string(&out).unwrap_or_default() + &std::fs::read_to_string(&err).unwrap_or_default()
}

#[test]
fn sipvicious_finds_nothing() {
    let ctx = Ctx::new("sipvicious");
    let (Some(svmap), Some(svwar)) = (which("svmap"), which("svwar")) else {
        if std::env::var("SERLUA_REQUIRE_SIPVICIOUS").is_ok_and(|v| !v.is_empty() && v != "0") {
            panic!("sipvicious_finds_nothing: svmap/svwar are not installed (apt-get install sipvicious)");
        }
        eprintln!("skipped sipvicious_finds_nothing: sipvicious is not installed (apt-get install sipvicious)");
        return;
    };
    let port = free_udp_port();
    let listen = format!("udp:127.0.0.1:{port}");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut proxy = Proxy::start(
        &ctx,
        ProxyOpts::relay(addr).script("tests/scripts/security.lua").listen(&listen, addr),
    );
    let requests = |ctx: &Ctx| {
        let s = serlua::ctl::call(&ctx.path("serlua.ctl"), "stats", &[]).unwrap_or_else(|e| ctx.fail(&format!("ctl stats: {e}")));
        s["received"]["requests"].as_u64().unwrap_or(0)
    };
    let before = requests(&ctx);
    let port_s = port.to_string();
    let map = sipvicious(&ctx, &svmap, "svmap", &["-p", &port_s, "--debug", "127.0.0.1"]);
    ctx.ensure(map.contains("found nothing") && !map.contains("SIP/2.0 "), || {
        format!("svmap found the proxy:\n{map}")
    });
    let war = sipvicious(
        &ctx,
        &svwar,
        "svwar",
        &[
            "-m",
            "REGISTER",
            "-e",
            "100-120",
            "--force",
            "--debug",
            "--domain",
            "example.com",
            "-p",
            &port_s,
            "--maximumtime",
            "5",
            "127.0.0.1",
        ],
    );
    ctx.ensure(war.contains("found nothing") && !war.contains("b'SIP/2.0 "), || {
        format!("svwar got answers:\n{war}")
    });
    let after = requests(&ctx);
    ctx.ensure(after > before, || "the scans never reached serlua".into());
    proxy.ensure_alive(&ctx);
    proxy.stop();
}
