//! `serlua repl --attach` against a real `serlua run` with sipp on
//! 127.0.0.1 (issue 6, the live REPL):
//!
//!   1. attach with `--match 'msg.method == "INVITE"' --hold`, sipp places
//!      a call, the REPL gets the INVITE, evaluates `msg.ruri`,
//!      `nat_uac_test(19)` and `route.main()` (a dry run: the relay it
//!      reports never reaches the UAS), `:release`, and the call completes
//!      (`hold_inspect_release_call_completes`);
//!   2. nobody releases: the hold deadline routes the INVITE by itself
//!      and the call completes (`hold_deadline_releases_by_itself`);
//!   3. the REPL going away releases the held INVITE at once
//!      (`disconnect_releases_at_once`);
//!   4. a filter that does not compile is refused at once; one that fails
//!      on a message (it calls a primitive filters may not use) is
//!      reported when the first message comes (`bad_filters_are_reported`);
//!   5. a CANCEL of the held INVITE releases it: the INVITE, then the
//!      CANCEL, reach the UAS, which answers 200 and 487
//!      (`cancel_of_a_held_invite_routes_both_in_order`);
//!   6. a REGISTER held and run through the registrar in the dry run
//!      reports the 200 and the binding it would save, the live location
//!      table stays empty until `:release` (`dry_run_save_is_not_committed`).
//!
//! The REPL reads its lines from a pipe (not a terminal), so the tests
//! drive it line by line and read what it prints. Logs stay in
//! target/tmp/e2e/<test>/; without sipp the tests skip loudly (fail with
//! SERLUA_REQUIRE_SIPP=1).
//!
//!   cargo test --test e2e_repl

#[path = "e2e/mod.rs"]
mod harness;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use harness::sip::{Call, UdpPeer};
use harness::sipp::{SippOpts, SippRun, ensure_sipp};
use harness::{Ctx, Proxy, ProxyOpts, ROOT, SERLUA, free_udp_port, run_serlua, sipp_or_skip};

fn local(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

/// A `serlua repl --attach …` child, its stdin a pipe we write lines to
/// and its stdout read line by line.
struct Repl {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: PathBuf,
}

impl Repl {
    fn start(ctx: &Ctx, label: &str, args: &[&str]) -> Repl {
        let stderr = ctx.path(&format!("{label}.stderr.log"));
        let mut cmd = Command::new(SERLUA);
        cmd.current_dir(ROOT)
            .arg("repl")
            .args(args)
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("create stderr log"));
        ctx.note(format!("{label}: (cd {ROOT} && {SERLUA} repl {})", args.join(" ")));
        ctx.add_log(&format!("{label} stderr"), stderr.clone());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| ctx.fail(&format!("cannot start {SERLUA} repl: {e}")));
        let out = child.stdout.take().expect("stdout piped");
        let (tx, lines) = mpsc::channel();
        let log = ctx.path(&format!("{label}.stdout.log"));
        std::thread::spawn(move || {
            let mut f = std::fs::File::create(log).ok();
            for l in BufReader::new(out).lines() {
                let Ok(l) = l else { break };
                if let Some(f) = f.as_mut() {
                    let _ = writeln!(f, "{l}");
                }
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Repl {
            stdin: child.stdin.take(),
            child,
            lines,
            seen: Vec::new(),
            stderr,
        }
    }

    fn send(&mut self, line: &str) {
        if let Some(s) = self.stdin.as_mut() {
            let _ = writeln!(s, "{line}");
            let _ = s.flush();
        }
    }

    /// Reads output until a line satisfies `pred`; fails the test after `wait`.
    fn expect(&mut self, ctx: &Ctx, what: &str, wait: Duration, pred: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + wait;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if pred(&l) {
                        return l;
                    }
                }
                Err(_) => ctx.fail(&format!(
                    "the REPL did not print {what} within {wait:?}; it printed:\n{}\nstderr:\n{}",
                    self.seen.join("\n"),
                    std::fs::read_to_string(&self.stderr).unwrap_or_default()
                )),
            }
        }
    }

    /// Closes stdin (the end of input: the REPL quits) and waits for the exit code.
    fn finish(&mut self, wait: Duration) -> Option<i32> {
        self.stdin = None;
        let until = Instant::now() + wait;
        while Instant::now() < until {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Repl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ctl_path(ctx: &Ctx) -> String {
    ctx.path("serlua.ctl").display().to_string()
}

/// A proxy running relay.lua towards a sipp UAS answering one call.
fn relay_with_uas(ctx: &Ctx) -> (Proxy, SippRun) {
    let uas_port = free_udp_port();
    let uas = SippRun::spawn(ctx, SippOpts::uas("uas.xml", uas_port, 1).timeout(Duration::from_secs(60)));
    let proxy = Proxy::start(ctx, ProxyOpts::relay(local(uas_port)));
    (proxy, uas)
}

fn place_call(ctx: &Ctx, proxy: &Proxy) -> SippRun {
    SippRun::spawn(
        ctx,
        SippOpts::uac("uac.xml", free_udp_port(), proxy.addr, 1, 1).timeout(Duration::from_secs(60)),
    )
}

const WAIT: Duration = Duration::from_secs(20);

/// `serlua repl --attach SOCK --match 'msg.method == "INVITE"' --hold
/// [--timeout SECS]`, once it says it waits.
fn attach_hold_invite(ctx: &Ctx, sock: &str, timeout: Option<&str>) -> Repl {
    let mut args = vec!["--attach", sock, "--match", r#"msg.method == "INVITE""#, "--hold"];
    if let Some(t) = timeout {
        args.extend(["--timeout", t]);
    }
    let mut repl = Repl::start(ctx, "repl", &args);
    repl.expect(ctx, "that it waits", WAIT, |l| l.starts_with("waiting for a message matching"));
    repl
}

#[test]
fn hold_inspect_release_call_completes() {
    let ctx = Ctx::new("repl_hold_inspect_release_call_completes");
    if !sipp_or_skip(&ctx.name) {
        return;
    }
    let (mut proxy, uas) = relay_with_uas(&ctx);
    let sock = ctl_path(&ctx);
    let mut repl = attach_hold_invite(&ctx, &sock, None);
    let uac = place_call(&ctx, &proxy);
    repl.expect(&ctx, "the held INVITE", WAIT, |l| l.starts_with("held: the real message waits"));
    repl.send("msg.ruri");
    let ruri = format!("sip:service@127.0.0.1:{}", proxy.addr.port());
    repl.expect(&ctx, "the Request-URI", WAIT, |l| l == ruri);
    repl.send("nat_uac_test(19)");
    // sipp on 127.0.0.1 is not behind NAT.
    repl.expect(&ctx, "nat_uac_test's answer", WAIT, |l| l == "false");
    repl.send("route.main()");
    repl.expect(&ctx, "the dry-run relay", WAIT, |l| {
        l.starts_with("=> relay INVITE sip:service@127.0.0.1:") && l.ends_with(&format!("-> udp:127.0.0.1:{}", uas.opts.port))
    });
    repl.send(":release");
    repl.expect(&ctx, "the release", WAIT, |l| {
        l.starts_with("released: the original message is routed")
    });
    let uac_r = uac.wait(Duration::from_secs(10));
    let uas_r = uas.wait(Duration::from_secs(10));
    ensure_sipp(&ctx, &[&uac_r, &uas_r], 1);
    let code = repl.finish(Duration::from_secs(10));
    ctx.ensure(code == Some(0), || {
        format!("the REPL should exit 0 at the end of its input, got {code:?}")
    });
    proxy.ensure_alive(&ctx);
    // The dry run's t_relay was never sent: the UAS saw one INVITE (its
    // scenario fails on a second one with another branch), and the
    // proxy's counters show one relayed INVITE.
    let stats = run_serlua(
        &ctx,
        "stats",
        &["ctl", "--ctl", &sock, "--json", "stats"],
        &[],
        Duration::from_secs(20),
    );
    let v: serde_json::Value = serde_json::from_str(&stats.stdout).unwrap_or_default();
    let invites = v["sent"]["requests_by_method"]["INVITE"].as_u64();
    ctx.ensure(invites == Some(1), || {
        format!("one INVITE relayed for real, stats say {invites:?}: {}", stats.stdout)
    });
}

#[test]
fn hold_deadline_releases_by_itself() {
    let ctx = Ctx::new("repl_hold_deadline_releases_by_itself");
    if !sipp_or_skip(&ctx.name) {
        return;
    }
    let (mut proxy, uas) = relay_with_uas(&ctx);
    let sock = ctl_path(&ctx);
    let mut repl = attach_hold_invite(&ctx, &sock, Some("2"));
    let uac = place_call(&ctx, &proxy);
    repl.expect(&ctx, "the held INVITE", WAIT, |l| l.starts_with("held: the real message waits"));
    let held = Instant::now();
    repl.send("msg.method");
    repl.expect(&ctx, "the method", WAIT, |l| l == "INVITE");
    repl.expect(&ctx, "the deadline release", WAIT, |l| l.contains("the hold deadline passed"));
    let after = held.elapsed();
    ctx.ensure(after >= Duration::from_millis(1500), || {
        format!("released after {after:?}, before the 2 s deadline")
    });
    let uac_r = uac.wait(Duration::from_secs(10));
    let uas_r = uas.wait(Duration::from_secs(10));
    ensure_sipp(&ctx, &[&uac_r, &uas_r], 1);
    repl.send(":release");
    repl.expect(&ctx, "that nothing is held any more", WAIT, |l| l == "already released");
    let code = repl.finish(Duration::from_secs(10));
    ctx.ensure(code == Some(1), || {
        format!("a failed line (:release twice) makes the exit status 1, got {code:?}")
    });
    proxy.ensure_alive(&ctx);
}

#[test]
fn disconnect_releases_at_once() {
    let ctx = Ctx::new("repl_disconnect_releases_at_once");
    if !sipp_or_skip(&ctx.name) {
        return;
    }
    let (mut proxy, uas) = relay_with_uas(&ctx);
    let sock = ctl_path(&ctx);
    let mut repl = attach_hold_invite(&ctx, &sock, Some("30"));
    let uac = place_call(&ctx, &proxy);
    repl.expect(&ctx, "the held INVITE", WAIT, |l| l.starts_with("held: the real message waits"));
    let gone = Instant::now();
    let _ = repl.child.kill();
    let uac_r = uac.wait(Duration::from_secs(10));
    let uas_r = uas.wait(Duration::from_secs(10));
    ensure_sipp(&ctx, &[&uac_r, &uas_r], 1);
    ctx.ensure(gone.elapsed() < Duration::from_secs(10), || {
        format!(
            "the call took {:?} after the REPL went away (the deadline was 30 s)",
            gone.elapsed()
        )
    });
    proxy.ensure_alive(&ctx);
}

#[test]
fn cancel_of_a_held_invite_routes_both_in_order() {
    let ctx = Ctx::new("repl_cancel_of_a_held_invite_routes_both_in_order");
    if !sipp_or_skip(&ctx.name) {
        return;
    }
    let uas_port = free_udp_port();
    // cancel_uas.xml: INVITE → 180; CANCEL → 200, 487; ACK.
    let uas = SippRun::spawn(&ctx, SippOpts::uas("cancel_uas.xml", uas_port, 1).timeout(Duration::from_secs(60)));
    let mut proxy = Proxy::start(&ctx, ProxyOpts::relay(local(uas_port)));
    let sock = ctl_path(&ctx);
    let mut repl = attach_hold_invite(&ctx, &sock, Some("30"));
    let mut peer = UdpPeer::bind();
    let call = Call::new(peer.addr, proxy.addr);
    peer.send(&call.invite(), proxy.addr);
    repl.expect(&ctx, "the held INVITE", WAIT, |l| l.starts_with("held: the real message waits"));
    let cancelled = Instant::now();
    peer.send(&call.cancel(), proxy.addr);
    repl.expect(&ctx, "that the CANCEL released it", WAIT, |l| {
        l.contains("cancelled the held INVITE")
    });
    let got = peer.recv_match(Instant::now() + WAIT, |m| m.status() == Some(487));
    let Some(r487) = got else {
        ctx.fail(&format!(
            "no 487 for the cancelled INVITE; the UAC saw:\n{}",
            peer.transcript(cancelled)
        ));
    };
    peer.send(&call.ack_for(&r487.msg), proxy.addr);
    ctx.ensure(cancelled.elapsed() < Duration::from_secs(10), || {
        format!("the 487 took {:?} (the hold deadline was 30 s)", cancelled.elapsed())
    });
    let uas_r = uas.wait(Duration::from_secs(15));
    ctx.ensure(uas_r.ok() && uas_r.successful == Some(1), || {
        format!("the UAS saw INVITE then CANCEL and finished: {}", uas_r.describe())
    });
    repl.finish(Duration::from_secs(10));
    proxy.ensure_alive(&ctx);
}

#[test]
fn bad_filters_are_reported() {
    let ctx = Ctx::new("repl_bad_filters_are_reported");
    let mut proxy = Proxy::start(&ctx, ProxyOpts::relay(local(free_udp_port())));
    let sock = ctl_path(&ctx);
    // Does not compile: refused before any message.
    let out = run_serlua(
        &ctx,
        "syntax",
        &["repl", "--attach", &sock, "--match", "msg.method =="],
        &[],
        Duration::from_secs(20),
    );
    ctx.ensure(
        out.status.and_then(|s| s.code()) == Some(1) && out.stderr.contains("bad filter: filter:1:"),
        || {
            format!(
                "a filter with a syntax error: exit 1 and 'bad filter'; got {:?}: {}",
                out.status, out.stderr
            )
        },
    );
    // Compiles, but calls save(): not available to filters, reported on the first message.
    let mut repl = Repl::start(&ctx, "runtime", &["--attach", &sock, "--match", r#"save("location")"#]);
    repl.expect(&ctx, "that it waits", WAIT, |l| l.starts_with("waiting for a message matching"));
    let mut peer = UdpPeer::bind();
    let call = Call::new(peer.addr, proxy.addr);
    peer.send(&call.simple("OPTIONS", 70, ""), proxy.addr);
    // The OPTIONS itself is routed as usual (relay.lua sends it on; no answer needed here).
    let _ = peer.recv_until(Instant::now() + Duration::from_millis(200));
    let code = repl.finish(WAIT);
    let err = repl.stderr_text();
    ctx.ensure(
        code == Some(1) && err.contains("attempt to call a nil value (global 'save')"),
        || format!("a filter failing on a message: exit 1 and the Lua error; got {code:?}: {err}"),
    );
    ctx.ensure(err.contains("a filter sees msg"), || {
        format!("the error says what a filter may use: {err}")
    });
    // The proxy forgot the filter: a new session may hold.
    let mut again = Repl::start(&ctx, "again", &["--attach", &sock, "--match", "true", "--hold", "--wait", "1"]);
    again.expect(&ctx, "that it waits", WAIT, |l| l.starts_with("waiting for a message matching"));
    let code = again.finish(WAIT);
    ctx.ensure(
        code == Some(1) && again.stderr_text().contains("no message matched within 1 s"),
        || format!("--wait 1 without traffic: exit 1; got {code:?}: {}", again.stderr_text()),
    );
    proxy.ensure_alive(&ctx);
}

#[test]
fn dry_run_save_is_not_committed() {
    let ctx = Ctx::new("repl_dry_run_save_is_not_committed");
    if !sipp_or_skip(&ctx.name) {
        return;
    }
    let db = format!("sqlite://{}", ctx.path("serlua.db").display());
    let add = run_serlua(
        &ctx,
        "user-add",
        &["user", "add", "alice@example.com", "secret", "--db", &db],
        &[],
        Duration::from_secs(30),
    );
    ctx.ensure(add.status.is_some_and(|s| s.success()), || format!("user add: {}", add.stderr));
    let port = free_udp_port();
    let listen = format!("udp:127.0.0.1:{port}");
    let mut opts = ProxyOpts::relay(local(port))
        .script("tests/scripts/registrar.lua")
        .listen(&listen, local(port));
    opts.label = "serlua";
    let mut proxy = Proxy::start(&ctx, opts);
    let sock = ctl_path(&ctx);
    let mut repl = Repl::start(
        &ctx,
        "repl",
        &[
            "--attach",
            &sock,
            "--match",
            r#"msg.method == "REGISTER" and msg:header("Authorization") ~= nil"#,
            "--hold",
            "--timeout",
            "20",
        ],
    );
    repl.expect(&ctx, "that it waits", WAIT, |l| l.starts_with("waiting for a message matching"));
    let csv = ctx.path("users.csv");
    std::fs::write(&csv, "SEQUENTIAL\nalice;[authentication username=alice password=secret]\n").expect("write csv");
    let uac = SippRun::spawn(
        &ctx,
        SippOpts::uac("reg_auth.xml", free_udp_port(), proxy.addr, 1, 1)
            .args(&["-inf", &csv.display().to_string()])
            .timeout(Duration::from_secs(60)),
    );
    repl.expect(&ctx, "the held REGISTER", WAIT, |l| l.starts_with("held: the real message waits"));
    repl.send("route.main()");
    repl.expect(&ctx, "the 200 it would send", WAIT, |l| {
        l.starts_with("=> reply 200 OK -> udp:127.0.0.1:")
    });
    repl.expect(&ctx, "the binding it would save", WAIT, |l| {
        l.starts_with("=> binding saved in location: alice@example.com <sip:alice@127.0.0.1:") && l.contains("dry run")
    });
    let before = ul_show(&ctx, Path::new(&sock), "ul-before");
    ctx.ensure(!before.contains("alice"), || format!("the dry run wrote the live table: {before}"));
    repl.send(":release");
    repl.expect(&ctx, "the release", WAIT, |l| l.starts_with("released:"));
    let uac_r = uac.wait(Duration::from_secs(10));
    ctx.ensure(uac_r.ok() && uac_r.successful == Some(1), || {
        format!("the REGISTER completes: {}", uac_r.describe())
    });
    let after = ul_show(&ctx, Path::new(&sock), "ul-after");
    ctx.ensure(after.contains("sip:alice@127.0.0.1:"), || {
        format!("the real REGISTER saved the binding: {after}")
    });
    repl.finish(Duration::from_secs(10));
    proxy.ensure_alive(&ctx);
}

fn ul_show(ctx: &Ctx, sock: &Path, label: &str) -> String {
    let sock = sock.display().to_string();
    let out = run_serlua(
        ctx,
        label,
        &["ctl", "--ctl", &sock, "--json", "ul", "show"],
        &[],
        Duration::from_secs(20),
    );
    out.stdout
}
