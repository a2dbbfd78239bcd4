//! End-to-end tests of operating a running proxy (issue 7): the real
//! `serlua run` with its control socket, driven by the real `serlua ctl`,
//! under sipp load on 127.0.0.1.
//!
//!   1. 2,000 calls at 100/s through a relay script while the script is
//!      reloaded 20 times with `serlua ctl reload`, every other time with a
//!      broken file (syntax error, unknown function, undefined route)
//!      swapped in and then restored: 0 failed calls, every broken reload
//!      exits 1 printing file:line, every good one exits 0, and the
//!      running script is the last good one — in every worker, seen in the
//!      header it adds to relayed requests and in its own answer to a
//!      version probe (`reload_20_times_under_call_load`);
//!   2. SIGTERM during a sipp REGISTER load: serlua exits 0 within its
//!      shutdown deadline, removes its socket, and restarted on the same
//!      database has every binding registered before — in memory (`ctl ul
//!      show`) and in the database (`serlua ul show`)
//!      (`sigterm_during_load_keeps_bindings`);
//!   3. `ctl ul show` / `ul rm` / `tm list` / `stats` / `version` /
//!      `errors` / `sessions` / `log-level` / `reload-tables` against a
//!      registrar with real registrations and a live INVITE; `ul rm` takes
//!      effect on routing at once (`ctl_against_live_proxy`);
//!   4. the socket file: mode 0600, at the script's `ctl_socket`; a second
//!      proxy on the same path refuses to start; a stale socket (a killed
//!      proxy) is replaced; removed on exit (`socket_file_lifecycle`).
//!
//! Each test picks its own ports and socket paths (in its log directory),
//! so they run in parallel. Logs stay in target/tmp/e2e/<test>/. Without
//! sipp the sipp tests skip loudly (fail with SERLUA_REQUIRE_SIPP=1).
//!
//!   cargo test --test e2e_ops
//!   cargo test --test e2e_ops reload -- --nocapture

#[path = "e2e/mod.rs"]
mod harness;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use harness::sip::{SipMsg, UdpPeer, response, unique};
use harness::sipp::{SippOpts, SippResult, SippRun};
use harness::{Ctx, Output, Proxy, ProxyOpts, describe_status, free_udp_port, run_serlua, sipp_or_skip};
use serde_json::Value;
use serlua::db::Subscriber;

const DOMAIN: &str = "example.com";
const RELOAD_SCRIPT: &str = "tests/scripts/reload.lua";
const REGISTRAR: &str = "tests/scripts/registrar.lua";

fn local(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

// ---------------------------------------------------------------------------
// helpers

fn ok(out: &Output) -> bool {
    !out.timed_out && out.status.is_some_and(|s| s.success())
}

fn code(out: &Output) -> Option<i32> {
    out.status.and_then(|s| s.code())
}

/// `serlua ctl --ctl SOCK ARGS…`; `label` names its logs.
fn ctl(ctx: &Ctx, sock: &Path, label: &str, args: &[&str]) -> Output {
    let sock = sock.display().to_string();
    let mut all = vec!["ctl", "--ctl", sock.as_str()];
    all.extend_from_slice(args);
    run_serlua(ctx, label, &all, &[], Duration::from_secs(60))
}

/// `serlua ctl --json …`, which must succeed; its result.
fn ctl_json(ctx: &Ctx, sock: &Path, label: &str, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = ctl(ctx, sock, label, &all);
    ctx.ensure(ok(&out), || {
        format!(
            "serlua ctl {args:?} failed ({}): {}{}",
            describe_status(out.status),
            out.stdout,
            out.stderr
        )
    });
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| ctx.fail(&format!("serlua ctl --json {args:?}: not JSON ({e}): {}", out.stdout)))
}

/// `serlua ctl …` (a table), which must succeed with nothing on stderr.
fn ctl_text(ctx: &Ctx, sock: &Path, label: &str, args: &[&str]) -> String {
    let out = ctl(ctx, sock, label, args);
    ctx.ensure(ok(&out) && out.stderr.is_empty(), || {
        format!(
            "serlua ctl {args:?} failed ({}): {}{}",
            describe_status(out.status),
            out.stdout,
            out.stderr
        )
    });
    out.stdout
}

/// Starts `serlua run SCRIPT --ctl SOCK` listening on a free UDP port.
fn start(ctx: &Ctx, script: &str, next_hop: SocketAddr, sock: &Path, label: &str, env: &[(&str, &str)]) -> Proxy {
    let port = free_udp_port();
    let listen = format!("udp:127.0.0.1:{port}");
    let sock = sock.display().to_string();
    let args = ["--ctl", sock.as_str()];
    let mut o = ProxyOpts::relay(next_hop).script(script).env(env).listen(&listen, local(port));
    o.label = label;
    o.args = &args;
    Proxy::start(ctx, o)
}

fn stop_cleanly(ctx: &Ctx, proxy: &mut Proxy) {
    let st = proxy.stop();
    ctx.ensure(st.is_some_and(|s| s.code() == Some(0)), || {
        format!("serlua should exit 0 on SIGTERM, it ended with {}", describe_status(st))
    });
}

fn ensure_sipp(ctx: &Ctx, results: &[&SippResult], calls: u64) {
    let all = results.iter().map(|r| r.describe()).collect::<Vec<_>>().join("; ");
    for r in results {
        ctx.ensure(r.ok() && r.successful == Some(calls), || {
            format!("expected {calls} successful calls and 0 failed: {all}")
        });
    }
}

/// An OPTIONS to `ruri` sent from `from`.
fn options(ruri: &str, from: SocketAddr, call_id: &str) -> String {
    format!(
        "OPTIONS {ruri} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {from};branch=z9hG4bK{};rport\r\n\
         From: <sip:tester@{from}>;tag={}\r\n\
         To: <{ruri}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 OPTIONS\r\n\
         Max-Forwards: 70\r\n\
         Content-Length: 0\r\n\r\n",
        unique("-o"),
        unique("t")
    )
}

/// Sends `req` (with Call-ID `call_id`) from `peer` to the proxy and
/// returns the first final answer.
fn final_answer(ctx: &Ctx, peer: &mut UdpPeer, proxy: SocketAddr, req: &str, call_id: &str) -> SipMsg {
    peer.send(req, proxy);
    let deadline = Instant::now() + Duration::from_secs(5);
    match peer.recv_match(deadline, |m| {
        m.header("Call-ID") == Some(call_id) && m.status().is_some_and(|s| s >= 200)
    }) {
        Some(r) => r.msg,
        None => ctx.fail(&format!("no final answer to {call_id} from {proxy} within 5 s")),
    }
}

fn socket_mode(path: &Path) -> Option<u32> {
    let m = std::fs::symlink_metadata(path).ok()?;
    m.file_type().is_socket().then(|| m.permissions().mode() & 0o777)
}

// ---------------------------------------------------------------------------
// 1. reload under load

/// The reload script with version `v`, or with `broken` at its BREAK line.
fn reload_variant(template: &str, v: u32, broken: Option<&str>) -> String {
    let s = template.replace("local VERSION = \"1\"", &format!("local VERSION = \"{v}\""));
    match broken {
        Some(b) => s.replace("  -- BREAK", &format!("  {b}")),
        None => s,
    }
}

/// Writes a script version in place the way an admin's editor or deploy
/// tool does: a new file renamed over the old one.
fn install(ctx: &Ctx, path: &Path, text: &str) {
    let tmp = path.with_extension("lua.new");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .unwrap_or_else(|e| ctx.fail(&format!("write {}: {e}", path.display())));
}

/// The version every worker runs: a version probe (answered by the script
/// itself) from `peers` (distinct source ports reach different workers);
/// fails unless they all agree.
fn running_version(ctx: &Ctx, proxy: SocketAddr, peers: &mut [UdpPeer]) -> String {
    let mut seen = BTreeSet::new();
    for p in peers.iter_mut() {
        let call_id = unique("ver-");
        let req = options(&format!("sip:version@{proxy}"), p.addr, &call_id);
        let ans = final_answer(ctx, p, proxy, &req, &call_id);
        let reason = ans.first_line.splitn(3, ' ').nth(2).unwrap_or("").to_string();
        ctx.ensure(ans.status() == Some(200) && reason.starts_with("Version "), || {
            format!("the version probe got '{}'", ans.first_line)
        });
        seen.insert(reason.trim_start_matches("Version ").to_string());
    }
    ctx.ensure(seen.len() == 1, || format!("workers run different versions: {seen:?}"));
    seen.into_iter().next().unwrap()
}

/// 2,000 calls (INVITE/180/200/ACK/BYE/200) at 100/s through
/// tests/scripts/reload.lua while `serlua ctl reload` runs 20 times, half
/// of them with a broken file in place (then restored): 0 failed calls on
/// both sipp sides; every broken reload exits 1 with `FILE:19:` on stderr
/// and leaves the version running; every good one exits 0 and every
/// worker answers with the new version at once; at the end the last good
/// version runs and stamps relayed requests with its X-Script-Version.
#[test]
fn reload_20_times_under_call_load() {
    let ctx = Ctx::new("reload_20_times_under_call_load");
    if !sipp_or_skip(&ctx.name) {
        return;
    }
    const CALLS: u32 = 2000;
    const RATE: u32 = 100;
    let template = std::fs::read_to_string(harness::root_path(RELOAD_SCRIPT)).expect("read the reload script");
    let break_line = template.lines().position(|l| l == "  -- BREAK").expect("a BREAK line") + 1;
    let script = ctx.path("reload.lua");
    install(&ctx, &script, &reload_variant(&template, 1, None));
    let shown = script.display().to_string();
    let sock = ctx.path("serlua.ctl");

    let uas_port = free_udp_port();
    let uac_port = free_udp_port();
    let uas = SippRun::spawn(&ctx, SippOpts::uas("uas.xml", uas_port, CALLS).timeout(Duration::from_secs(120)));
    let mut proxy = start(&ctx, &shown, local(uas_port), &sock, "serlua", &[]);
    let mut peers: Vec<UdpPeer> = (0..8).map(|_| UdpPeer::bind()).collect();
    ctx.ensure(running_version(&ctx, proxy.addr, &mut peers) == "1", || {
        "version 1 runs at start".into()
    });
    let mut uac = SippRun::spawn(
        &ctx,
        SippOpts::uac("uac.xml", uac_port, proxy.addr, CALLS, RATE).timeout(Duration::from_secs(120)),
    );
    std::thread::sleep(Duration::from_secs(1));

    let broken: [(&str, &str); 3] = [
        ("a syntax error", "local x = = 1"),
        ("an unknown function", "sl_send_replyy(483, \"Too Many Hops\")"),
        ("an undefined route", "route[7]()"),
    ];
    let mut good = 1u32;
    let started = Instant::now();
    for i in 0..20u32 {
        if i % 2 == 0 {
            good = i / 2 + 2;
            install(&ctx, &script, &reload_variant(&template, good, None));
            let out = ctl(&ctx, &sock, &format!("reload-{i:02}-good-v{good}"), &["reload"]);
            ctx.ensure(ok(&out), || {
                format!(
                    "reload {i} (good, version {good}) failed ({}): {}{}",
                    describe_status(out.status),
                    out.stdout,
                    out.stderr
                )
            });
            ctx.ensure(out.stdout.contains("reloaded"), || {
                format!("reload {i}: unexpected output {:?}", out.stdout)
            });
        } else {
            let (what, line) = broken[(i as usize / 2) % broken.len()];
            install(&ctx, &script, &reload_variant(&template, 99, Some(line)));
            let out = ctl(&ctx, &sock, &format!("reload-{i:02}-broken"), &["reload"]);
            let want = format!("{shown}:{break_line}:");
            ctx.ensure(code(&out) == Some(1), || {
                format!(
                    "reload {i} with {what} should exit 1, it {}: {}{}",
                    describe_status(out.status),
                    out.stdout,
                    out.stderr
                )
            });
            ctx.ensure(out.stderr.contains(&want), || {
                format!("reload {i} with {what}: stderr should name {want}, it is: {}", out.stderr)
            });
            // Restore the last good file, as an admin would.
            install(&ctx, &script, &reload_variant(&template, good, None));
        }
        let v = running_version(&ctx, proxy.addr, &mut peers);
        ctx.ensure(v == good.to_string(), || {
            format!("after reload {i}, version {v} runs; expected {good}")
        });
        std::thread::sleep(Duration::from_millis(450));
    }
    let reload_time = started.elapsed();
    let uac_running = uac.child.try_wait().is_none();
    ctx.note(format!(
        "20 reloads took {reload_time:?} (uac still running at the end: {uac_running})"
    ));

    let uac_r = uac.wait(Duration::from_secs(10));
    let uas_r = uas.wait(Duration::from_secs(10));
    proxy.ensure_alive(&ctx);
    ensure_sipp(&ctx, &[&uac_r, &uas_r], u64::from(CALLS));
    ctx.ensure(reload_time < Duration::from_secs(CALLS as u64 / RATE as u64), || {
        format!("the reloads ({reload_time:?}) did not all happen during the call load")
    });

    // The last good version runs: its own answer, and the header it adds
    // to a relayed request (the sipp UAS has gone; a peer takes its port).
    ctx.ensure(running_version(&ctx, proxy.addr, &mut peers) == "11", || {
        "version 11 runs at the end".into()
    });
    let mut hop = UdpPeer::bind_to(local(uas_port));
    let call_id = unique("relayed-");
    peers[0].send(
        &options(&format!("sip:someone@{}", proxy.addr), peers[0].addr, &call_id),
        proxy.addr,
    );
    let got = hop
        .recv_match(Instant::now() + Duration::from_secs(5), |m| {
            m.header("Call-ID") == Some(call_id.as_str())
        })
        .unwrap_or_else(|| ctx.fail("the final OPTIONS was not relayed to the next hop"));
    ctx.ensure(got.msg.header("X-Script-Version") == Some("11"), || {
        format!(
            "the relayed OPTIONS carries X-Script-Version {:?}, expected 11",
            got.msg.header("X-Script-Version")
        )
    });
    hop.send(&response(&got.msg, 200, "OK", "hop", None), got.from);

    // No message hit a script error during the reloads.
    let stats = ctl_json(&ctx, &sock, "stats", &["stats"]);
    ctx.ensure(stats["errors"]["script"] == 0, || {
        format!("script errors during the test: {}", stats["errors"])
    });
    let invites = stats["received"]["requests_by_method"]["INVITE"].as_u64().unwrap_or(0);
    ctx.ensure(invites >= u64::from(CALLS), || {
        format!("stats counted {invites} INVITEs for {CALLS} calls")
    });
    stop_cleanly(&ctx, &mut proxy);
}

// ---------------------------------------------------------------------------
// registrar helpers

/// `(user, password)` for `n` users `PREFIXnnnn`.
fn users(prefix: &str, n: usize) -> Vec<(String, String)> {
    (0..n).map(|i| (format!("{prefix}{i:04}"), format!("pw-{prefix}-{i}"))).collect()
}

/// Creates (and migrates) the SQLite database at `url` with these
/// subscribers, in one transaction.
fn add_subscribers(ctx: &Ctx, url: &str, list: &[(String, String)]) {
    let (url, list) = (url.to_string(), list.to_vec());
    let r = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let mut db = serlua::admin::open(&url).await.map_err(|e| e.to_string())?;
            db.execute_sql("BEGIN").await.map_err(|e| e.to_string())?;
            for (u, p) in &list {
                db.add_subscriber(&Subscriber::new(u, DOMAIN, p)).await.map_err(|e| e.to_string())?;
            }
            db.execute_sql("COMMIT").await.map_err(|e| e.to_string())
        })
    })
    .join()
    .expect("database thread");
    if let Err(e) = r {
        ctx.fail(&format!("adding subscribers: {e}"));
    }
}

/// A sipp injection file for reg_auth.xml.
fn users_csv(ctx: &Ctx, name: &str, list: &[(String, String)]) -> PathBuf {
    let mut s = String::from("SEQUENTIAL\n");
    for (u, p) in list {
        s.push_str(&format!("{u};[authentication username={u} password={p}]\n"));
    }
    let path = ctx.path(name);
    std::fs::write(&path, s).unwrap_or_else(|e| ctx.fail(&format!("write {}: {e}", path.display())));
    path
}

/// reg_auth.xml from 127.0.0.1:`port`, one registration per line of `csv`.
#[allow(clippy::too_many_arguments)]
fn register(ctx: &Ctx, label: &str, proxy: SocketAddr, port: u16, csv: &Path, calls: u32, rate: u32, timeout: Duration) -> SippRun {
    let o = SippOpts::uac("reg_auth.xml", port, proxy, calls, rate)
        .label(label)
        .timeout(timeout)
        .args(&["-inf", &csv.display().to_string()]);
    SippRun::spawn(ctx, o)
}

/// (AOR, contact) of every binding in a `ul show --json` result.
fn bindings(v: &Value) -> BTreeSet<(String, String)> {
    v.as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|b| {
            (
                b["aor"].as_str().unwrap_or("").to_string(),
                b["contact"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------
// 2. SIGTERM under load

/// 200 users register (reg_auth.xml), and a callee registers from the
/// port a sipp UAS then answers on; then 2,000 more users start
/// registering at 200/s while calls to the callee run at 20/s (each held
/// 500 ms), and serlua gets SIGTERM 2.5 s into that load, right after
/// `ctl ul show --json` took a snapshot of every binding: serlua exits 0
/// within its 10 s shutdown deadline and removes its socket; started again
/// on the same database, its `ctl ul show` and the database (`serlua ul
/// show`) hold every binding of the snapshot.
#[test]
fn sigterm_during_load_keeps_bindings() {
    let ctx = Ctx::new("sigterm_during_load_keeps_bindings");
    if !sipp_or_skip(&ctx.name) {
        return;
    }
    let url = format!("sqlite://{}", ctx.path("serlua.db").display());
    let before = users("a", 200);
    let during = users("b", 2000);
    let callee = vec![("callee".to_string(), "callee-pw".to_string())];
    add_subscribers(&ctx, &url, &[before.clone(), during.clone(), callee.clone()].concat());
    let sock = ctx.path("serlua.ctl");
    let env = [("SERLUA_DB_URL", url.as_str())];
    let mut proxy = start(&ctx, REGISTRAR, local(9), &sock, "serlua", &env);

    let csv = users_csv(&ctx, "before.csv", &before);
    let r = register(
        &ctx,
        "register-before",
        proxy.addr,
        free_udp_port(),
        &csv,
        200,
        200,
        Duration::from_secs(30),
    )
    .wait(Duration::from_secs(10));
    ensure_sipp(&ctx, &[&r], 200);
    let uas_port = free_udp_port();
    let csv = users_csv(&ctx, "callee.csv", &callee);
    let r = register(&ctx, "register-callee", proxy.addr, uas_port, &csv, 1, 1, Duration::from_secs(30)).wait(Duration::from_secs(10));
    ensure_sipp(&ctx, &[&r], 1);
    let first = bindings(&ctl_json(&ctx, &sock, "ul-show-before", &["ul", "show"]));
    ctx.ensure(first.len() == 201, || format!("{} bindings after 201 registrations", first.len()));

    let uas = SippRun::spawn(&ctx, SippOpts::uas("uas.xml", uas_port, 100_000).timeout(Duration::from_secs(60)));
    let calls = SippRun::spawn(
        &ctx,
        SippOpts::uac("uac.xml", free_udp_port(), proxy.addr, 100_000, 20)
            .label("calls")
            .args(&["-s", "callee", "-d", "500"])
            .timeout(Duration::from_secs(60)),
    );

    let csv = users_csv(&ctx, "during.csv", &during);
    let load = register(
        &ctx,
        "register-during",
        proxy.addr,
        free_udp_port(),
        &csv,
        2000,
        200,
        Duration::from_secs(60),
    );
    std::thread::sleep(Duration::from_millis(2500));
    let snapshot = bindings(&ctl_json(&ctx, &sock, "ul-show-snapshot", &["ul", "show"]));
    ctx.ensure(snapshot.len() > first.len() + 100, || {
        format!("only {} bindings 2.5 s into the load: is the load running?", snapshot.len())
    });
    ctx.ensure(snapshot.is_superset(&first), || "bindings of the first 200 users vanished".into());
    // Calls were flowing through the proxy.
    let stats = ctl_json(&ctx, &sock, "stats-before-sigterm", &["stats"]);
    let by_method = &stats["received"]["requests_by_method"];
    ctx.note(format!("before SIGTERM: {by_method}, {} transactions", stats["transactions"]));
    ctx.ensure(
        by_method["INVITE"].as_u64().unwrap_or(0) >= 20 && by_method["BYE"].as_u64().unwrap_or(0) >= 10,
        || format!("calls did not flow during the load: {by_method}"),
    );
    let term = Instant::now();
    proxy.child.signal(libc::SIGTERM);
    let st = proxy.child.wait_until(term + Duration::from_secs(20));
    let took = term.elapsed();
    ctx.note(format!(
        "serlua exited {took:?} after SIGTERM ({}), with {} bindings in the snapshot",
        describe_status(st),
        snapshot.len()
    ));
    ctx.ensure(st.is_some_and(|s| s.code() == Some(0)), || {
        format!("serlua should exit 0 on SIGTERM, it {} after {took:?}", describe_status(st))
    });
    ctx.ensure(took <= Duration::from_secs(10), || {
        format!("serlua took {took:?} to stop (deadline 10 s)")
    });
    ctx.ensure(!sock.exists(), || "the control socket is still there after the proxy exited".into());
    let _ = load.stop();
    let _ = calls.stop();
    let _ = uas.stop();

    let mut proxy = start(&ctx, REGISTRAR, local(9), &sock, "serlua-restarted", &env);
    let after = bindings(&ctl_json(&ctx, &sock, "ul-show-after", &["ul", "show"]));
    let missing: Vec<_> = snapshot.difference(&after).take(5).collect();
    ctx.ensure(missing.is_empty(), || {
        format!(
            "{} of {} bindings are gone after the restart, e.g. {missing:?}",
            snapshot.difference(&after).count(),
            snapshot.len()
        )
    });
    let db = run_serlua(
        &ctx,
        "db-ul-show",
        &["ul", "show", "--json", "--db", &url],
        &[],
        Duration::from_secs(60),
    );
    ctx.ensure(ok(&db), || format!("serlua ul show failed: {}", db.stderr));
    let in_db = bindings(&serde_json::from_str(&db.stdout).unwrap_or(Value::Null));
    ctx.ensure(in_db.is_superset(&snapshot), || {
        format!(
            "{} bindings of the snapshot are not in the database",
            snapshot.difference(&in_db).count()
        )
    });
    proxy.ensure_alive(&ctx);
    stop_cleanly(&ctx, &mut proxy);
}

// ---------------------------------------------------------------------------
// 3. the commands against a live proxy

/// A registrar with 20 users registered through sipp (REGISTER, 401,
/// REGISTER with credentials, 200): `ctl stats` counts the 40 REGISTERs,
/// 20 challenges and 20 200s and 20 bindings; `ctl ul show` lists the 20
/// bindings as `serlua ul show` does, one AOR with its contact and expiry;
/// `ctl tm list` shows an INVITE ringing at a user's contact, with its
/// Call-ID and branch; `ctl ul rm` removes a user's binding — an OPTIONS to
/// the user gets 404 at once, the database row goes — and a second `ul rm`
/// exits 1; version, errors, sessions, log-level and reload-tables answer.
#[test]
fn ctl_against_live_proxy() {
    let ctx = Ctx::new("ctl_against_live_proxy");
    if !sipp_or_skip(&ctx.name) {
        return;
    }
    let url = format!("sqlite://{}", ctx.path("serlua.db").display());
    let list = users("u", 20);
    add_subscribers(&ctx, &url, &list);
    let sock = ctx.path("serlua.ctl");
    let env = [("SERLUA_DB_URL", url.as_str())];
    let mut proxy = start(&ctx, REGISTRAR, local(9), &sock, "serlua", &env);
    ctx.ensure(socket_mode(&sock) == Some(0o600), || {
        format!("socket mode {:?}", socket_mode(&sock).map(|m| format!("{m:o}")))
    });

    let s0 = ctl_json(&ctx, &sock, "stats-0", &["stats"]);
    let csv = users_csv(&ctx, "users.csv", &list);
    let port = free_udp_port();
    let r = register(&ctx, "register", proxy.addr, port, &csv, 20, 20, Duration::from_secs(30)).wait(Duration::from_secs(10));
    ensure_sipp(&ctx, &[&r], 20);

    // stats: the counters moved by exactly the registrations.
    let s1 = ctl_json(&ctx, &sock, "stats-1", &["stats"]);
    let delta = |path: &[&str]| {
        let get = |v: &Value| path.iter().fold(v, |v, k| &v[*k]).as_u64().unwrap_or(0);
        get(&s1) as i64 - get(&s0) as i64
    };
    ctx.ensure(delta(&["received", "requests_by_method", "REGISTER"]) == 40, || {
        format!("REGISTERs counted: {s1}")
    });
    ctx.ensure(delta(&["sent", "replies_by_class", "4xx"]) == 20, || format!("401s counted: {s1}"));
    ctx.ensure(delta(&["sent", "replies_by_class", "2xx"]) == 20, || format!("200s counted: {s1}"));
    ctx.ensure(s1["registrations"]["bindings"] == 20, || {
        format!("bindings: {}", s1["registrations"])
    });
    let text = ctl_text(&ctx, &sock, "stats-text", &["stats"]);
    ctx.ensure(
        text.lines()
            .any(|l| l.trim_start().starts_with("requests_by_method.REGISTER") && l.trim_end().ends_with(" 40")),
        || format!("ctl stats (table) does not show 40 REGISTERs:\n{text}"),
    );

    // ul show: the table, all bindings.
    let table = ctl_text(&ctx, &sock, "ul-show", &["ul", "show"]);
    let mut lines = table.lines();
    let header = lines.next().unwrap_or("");
    ctx.ensure(
        header.starts_with("AOR") && header.contains("CONTACT") && header.contains("EXPIRES (UTC)"),
        || format!("ul show header: {header}"),
    );
    let rows: Vec<&str> = lines.collect();
    ctx.ensure(rows.len() == 20, || format!("ul show: {} rows:\n{table}", rows.len()));
    for (u, _) in &list {
        let want = format!("{u}@{DOMAIN} ");
        let contact = format!("sip:{u}@127.0.0.1:{port}");
        ctx.ensure(rows.iter().any(|r| r.starts_with(&want) && r.contains(&contact)), || {
            format!("ul show has no row for {u} with {contact}:\n{table}")
        });
    }
    // ul show AOR, JSON.
    let one = ctl_json(&ctx, &sock, "ul-show-u0003", &["ul", "show", "u0003@example.com"]);
    let one = one.as_array().cloned().unwrap_or_default();
    ctx.ensure(one.len() == 1, || format!("ul show u0003: {one:?}"));
    ctx.ensure(one[0]["contact"] == format!("sip:u0003@127.0.0.1:{port}"), || {
        format!("{:?}", one[0])
    });
    let left = one[0]["expires_in"].as_i64().unwrap_or(0);
    ctx.ensure((3500..=3600).contains(&left), || format!("expires_in {left}"));

    // tm list: an INVITE to u0004 rings at its contact (a peer on the
    // port it registered from) and is not answered yet.
    let mut contact = UdpPeer::bind_to(local(port));
    let mut caller = UdpPeer::bind();
    let call_id = unique("ctl-inv-");
    let invite = format!(
        "INVITE sip:u0004@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP {a};branch=z9hG4bK{b};rport\r\nFrom: <sip:caller@{a}>;tag={t}\r\n\
         To: <sip:u0004@{DOMAIN}>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:caller@{a}>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        a = caller.addr,
        b = unique("-i"),
        t = unique("t"),
    );
    caller.send(&invite, proxy.addr);
    let got = contact
        .recv_match(Instant::now() + Duration::from_secs(5), |m| {
            m.method() == Some("INVITE") && m.header("Call-ID") == Some(call_id.as_str())
        })
        .unwrap_or_else(|| ctx.fail("the INVITE to u0004 did not reach its contact"));
    let tm = ctl_json(&ctx, &sock, "tm-list-json", &["tm", "list"]);
    let t = tm
        .as_array()
        .and_then(|a| a.iter().find(|t| t["call_id"] == call_id.as_str()).cloned())
        .unwrap_or_else(|| ctx.fail(&format!("tm list does not show the INVITE {call_id}: {tm}")));
    ctx.ensure(t["method"] == "INVITE", || format!("{t}"));
    let branches = t["branches"].as_array().cloned().unwrap_or_default();
    ctx.ensure(branches.len() == 1 && branches[0]["dst"] == local(port).to_string(), || {
        format!("branches: {t}")
    });
    let table = ctl_text(&ctx, &sock, "tm-list", &["tm", "list"]);
    ctx.ensure(
        table.starts_with("ID") && table.lines().any(|l| l.contains(&call_id) && l.contains("INVITE")),
        || format!("tm list table:\n{table}"),
    );
    // The contact declines; the caller gets the 486 and ACKs it.
    contact.send(&response(&got.msg, 486, "Busy Here", "busy", None), got.from);
    let ans = caller
        .recv_match(Instant::now() + Duration::from_secs(5), |m| m.status() == Some(486))
        .unwrap_or_else(|| ctx.fail("the 486 did not come back"));
    let ack = invite
        .replacen("INVITE sip:", "ACK sip:", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 1 ACK")
        .replace(
            &format!("To: <sip:u0004@{DOMAIN}>"),
            ans.msg.header("To").map(|t| format!("To: {t}")).as_deref().unwrap_or(""),
        );
    caller.send(&ack, proxy.addr);

    // ul rm: takes effect on routing at once, and in the database.
    let out = ctl_text(&ctx, &sock, "ul-rm", &["ul", "rm", "u0003@example.com"]);
    ctx.ensure(out == "removed 1 binding of u0003@example.com\n", || {
        format!("ul rm printed {out:?}")
    });
    let call_id = unique("opt-");
    let req = options(&format!("sip:u0003@{DOMAIN}"), caller.addr, &call_id);
    let ans = final_answer(&ctx, &mut caller, proxy.addr, &req, &call_id);
    ctx.ensure(ans.status() == Some(404), || {
        format!("an OPTIONS to the removed u0003 got {}", ans.first_line)
    });
    ctx.ensure(
        ctl_text(&ctx, &sock, "ul-show-gone", &["ul", "show", "u0003@example.com"]) == "(none)\n",
        || "ul show still lists u0003".into(),
    );
    let out = ctl(&ctx, &sock, "ul-rm-again", &["ul", "rm", "u0003@example.com"]);
    ctx.ensure(
        code(&out) == Some(1) && out.stderr.contains("no bindings") && out.stderr.lines().count() == 1,
        || format!("a second ul rm: {} {}", describe_status(out.status), out.stderr),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let db = run_serlua(
            &ctx,
            "db-ul-show",
            &["ul", "show", "--json", "--db", &url],
            &[],
            Duration::from_secs(60),
        );
        let rows = bindings(&serde_json::from_str(&db.stdout).unwrap_or(Value::Null));
        if rows.len() == 19 && !rows.iter().any(|(a, _)| a.starts_with("u0003@")) {
            break;
        }
        ctx.ensure(Instant::now() < deadline, || {
            format!("the database still has {} rows (u0003 removed?)", rows.len())
        });
        std::thread::sleep(Duration::from_millis(200));
    }

    // The other commands.
    let v = ctl_json(&ctx, &sock, "version", &["version"]);
    ctx.ensure(v["script"] == REGISTRAR && v["version"] == env!("CARGO_PKG_VERSION"), || {
        format!("version: {v}")
    });
    let e = ctl_json(&ctx, &sock, "errors", &["errors"]);
    ctx.ensure(e.as_array().is_some_and(|a| a.is_empty()), || format!("errors: {e}"));
    ctx.ensure(ctl_text(&ctx, &sock, "sessions", &["sessions"]) == "(none)\n", || "sessions".into());
    let out = ctl_text(&ctx, &sock, "log-level", &["log-level", "debug"]);
    ctx.ensure(out.contains("debug"), || format!("log-level: {out}"));
    ctl_text(&ctx, &sock, "log-level-back", &["log-level", "3"]);
    ctl_text(&ctx, &sock, "reload-tables", &["reload-tables"]);
    let out = ctl(&ctx, &sock, "unknown-aor-arity", &["ul", "rm"]);
    ctx.ensure(code(&out) == Some(2), || "ul rm without an AOR is a usage error".into());

    proxy.ensure_alive(&ctx);
    stop_cleanly(&ctx, &mut proxy);
    ctx.ensure(!sock.exists(), || "the control socket is still there after the proxy exited".into());
}

// ---------------------------------------------------------------------------
// 4. the socket file

/// `serlua run tests/scripts/reload.lua` listening on UDP 127.0.0.1:`port`
/// without `--ctl` (the harness's Proxy::start always passes one), so the
/// script's `ctl_socket` decides where the socket goes; ready once the
/// port is bound and the socket at `sock` answers.
fn start_without_ctl_flag(ctx: &Ctx, label: &str, port: u16, env: &[(&str, &str)], sock: &Path) -> Proxy {
    let stderr = ctx.path(&format!("{label}.stderr.log"));
    let db = format!("sqlite://{}", ctx.path("serlua.db").display());
    let mut cmd = std::process::Command::new(harness::SERLUA);
    cmd.current_dir(harness::ROOT)
        .args(["run", RELOAD_SCRIPT, "--db", &db])
        .env("SERLUA_LISTEN", format!("udp:127.0.0.1:{port}"))
        .env("SERLUA_NEXT_HOP", "127.0.0.1:9")
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr).expect("create the stderr log"));
    ctx.note(format!("{label}: {env:?} serlua run {RELOAD_SCRIPT} --db {db} (no --ctl)"));
    ctx.add_log(&format!("{label} stderr"), stderr.clone());
    let child = harness::ChildGuard::spawn(label, &mut cmd).unwrap_or_else(|e| ctx.fail(&format!("cannot start serlua: {e}")));
    let mut proxy = Proxy {
        addr: local(port),
        stderr,
        child,
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(harness::udp_port_in_use(port) && std::os::unix::net::UnixStream::connect(sock).is_ok()) {
        proxy.ensure_alive(ctx);
        ctx.ensure(Instant::now() < deadline, || {
            format!("{label}: no socket at {} within 20 s", sock.display())
        });
        std::thread::sleep(Duration::from_millis(20));
    }
    proxy
}

/// The script's `ctl_socket` (SERLUA_CTL in reload.lua) places the socket,
/// mode 0600; `serlua ctl` finds it by default in its working directory; a
/// second proxy with the same path refuses to start and the first keeps
/// answering; after SIGKILL the stale file stays and a new proxy replaces
/// it; SIGTERM removes it.
#[test]
fn socket_file_lifecycle() {
    let ctx = Ctx::new("socket_file_lifecycle");
    let sock = ctx.path("serlua.ctl");
    let sock_s = sock.display().to_string();
    let env = [("SERLUA_CTL", sock_s.as_str())];
    let port = free_udp_port();
    let mut proxy = start_without_ctl_flag(&ctx, "serlua", port, &env, &sock);
    ctx.ensure(socket_mode(&sock) == Some(0o600), || {
        format!("socket mode {:?}", socket_mode(&sock).map(|m| format!("{m:o}")))
    });

    // The default path: serlua.ctl in the working directory.
    let out = std::process::Command::new(harness::SERLUA)
        .current_dir(&ctx.dir)
        .args(["ctl", "version"])
        .output()
        .expect("run serlua ctl");
    let text = String::from_utf8_lossy(&out.stdout);
    ctx.ensure(out.status.success() && text.contains(RELOAD_SCRIPT), || {
        format!(
            "serlua ctl version in {}: {text}{}",
            ctx.dir.display(),
            String::from_utf8_lossy(&out.stderr)
        )
    });

    // A second proxy on the same socket path refuses to start.
    let other = format!("udp:127.0.0.1:{}", free_udp_port());
    let db = format!("sqlite://{}", ctx.path("second.db").display());
    let out = run_serlua(
        &ctx,
        "second",
        &["run", RELOAD_SCRIPT, "--listen", &other, "--db", &db],
        &[("SERLUA_CTL", sock_s.as_str()), ("SERLUA_NEXT_HOP", "127.0.0.1:9")],
        Duration::from_secs(20),
    );
    ctx.ensure(!out.timed_out && code(&out).is_some_and(|c| c != 0), || {
        format!("a second proxy on {sock_s} should refuse to start: {}", describe_status(out.status))
    });
    ctx.ensure(out.stderr.contains("another serlua is answering"), || {
        format!("the second proxy said: {}", out.stderr)
    });
    ctx.ensure(socket_mode(&sock) == Some(0o600), || "the first proxy's socket is gone".into());
    ctl_json(&ctx, &sock, "still-answers", &["version"]);

    // SIGKILL leaves a stale socket; the next proxy replaces it.
    proxy.child.signal(libc::SIGKILL);
    let _ = proxy.child.wait_until(Instant::now() + Duration::from_secs(5));
    ctx.ensure(socket_mode(&sock).is_some(), || {
        "the killed proxy's socket file should still be there".into()
    });
    let out = ctl(&ctx, &sock, "dead", &["stats"]);
    ctx.ensure(code(&out) == Some(1) && out.stderr.contains("is serlua running?"), || {
        format!("ctl against a dead proxy: {} {}", describe_status(out.status), out.stderr)
    });
    let mut proxy = start_without_ctl_flag(&ctx, "serlua-after-kill", port, &env, &sock);
    ctx.ensure(socket_mode(&sock) == Some(0o600), || "no socket after the restart".into());
    ctl_json(&ctx, &sock, "answers-after-kill", &["stats"]);
    stop_cleanly(&ctx, &mut proxy);
    ctx.ensure(!sock.exists(), || "the socket file is still there after SIGTERM".into());
}
