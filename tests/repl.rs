//! The offline REPL (`serlua repl SCRIPT --msg FILE`), driven without a
//! terminal: through `--eval` and standard input (the binary), and
//! through the library's `Session` (what each line reports).
//!
//!   cargo test --test repl

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serlua::repl::session::{Message, Session, message_from_text};
use serlua::transport::Proto;

const SERLUA: &str = env!("CARGO_BIN_EXE_serlua");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn repl(args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(SERLUA);
    cmd.current_dir(ROOT)
        .arg("repl")
        .args(args)
        .envs(env.iter().copied())
        .env("NO_COLOR", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start serlua repl");
    let mut input = child.stdin.take().expect("stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write stdin");
    }
    drop(input);
    child.wait_with_output().expect("serlua repl output")
}

fn text(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn session(script: &str, msg: &str) -> Session {
    let data = message_from_text(&std::fs::read_to_string(Path::new(ROOT).join(msg)).expect("message file"));
    let src = serlua::repl::session::default_source(&data);
    Session::offline(
        &Path::new(ROOT).join(script),
        Message {
            data,
            src,
            proto: Proto::Udp,
            local: None,
            conn: None,
        },
    )
    .expect("session")
}

#[test]
fn register_without_credentials_is_challenged() {
    let o = repl(
        &[
            "tests/scripts/registrar.lua",
            "--msg",
            "tests/repl/register.txt",
            "--eval",
            "msg.method",
            "--eval",
            "route.main()",
        ],
        None,
        &[],
    );
    let out = text(&o);
    assert!(
        o.status.success(),
        "exit {:?}: {out}{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(out.contains("serlua> msg.method\nREGISTER\n"), "{out}");
    // The Via says 127.0.0.1:5061: that is where the message came from, and where the 401 goes.
    assert!(out.contains("=> reply 401 Unauthorized -> udp:127.0.0.1:5061\n"), "{out}");
    assert!(!out.contains("binding saved"), "{out}");
}

#[test]
fn invite_is_relayed_to_the_next_hop() {
    let o = repl(
        &[
            "tests/scripts/relay.lua",
            "--msg",
            "tests/repl/invite.txt",
            "--eval",
            "route.main()",
        ],
        None,
        &[("SERLUA_NEXT_HOP", "127.0.0.1:5070")],
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("=> reply 100 Trying -> udp:192.168.1.20:5062\n"), "{out}");
    assert!(
        out.contains("=> relay INVITE sip:bob@127.0.0.1:5070 -> udp:127.0.0.1:5070\n"),
        "{out}"
    );
    assert!(
        out.contains("=> Request-URI: sip:bob@127.0.0.1:5060 -> sip:bob@127.0.0.1:5070\n"),
        "{out}"
    );
}

#[test]
fn diff_after_rewritehost() {
    let o = repl(
        &[
            "tests/scripts/relay.lua",
            "--msg",
            "tests/repl/invite.txt",
            "--src",
            "192.168.1.20:5062",
            "--eval",
            r#"rewritehost("192.0.2.245")"#,
            "--eval",
            ":diff",
        ],
        None,
        &[],
    );
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    assert!(out.contains("--- original\n+++ now\n"), "{out}");
    assert!(out.contains("\n-INVITE sip:bob@127.0.0.1:5060 SIP/2.0\n"), "{out}");
    assert!(out.contains("\n+INVITE sip:bob@192.0.2.245:5060 SIP/2.0\n"), "{out}");
    // The worker's own change on arrival (RFC 3581: rport filled in) shows too.
    assert!(
        out.contains("\n+Via: SIP/2.0/UDP 192.168.1.20:5062;branch=z9hG4bK-inv-1;rport=5062;"),
        "{out}"
    );
    assert!(
        out.contains("=> Request-URI: sip:bob@127.0.0.1:5060 -> sip:bob@192.0.2.245:5060"),
        "{out}"
    );
}

#[test]
fn a_lua_error_prints_a_traceback_and_the_session_goes_on() {
    // Lines on a standard input that is not a terminal, one chunk over two lines.
    let o = repl(
        &["tests/scripts/relay.lua", "--msg", "tests/repl/invite.txt"],
        Some("nat_uac_test('x')\nlocal ok = 1 +\n  1; print(ok)\nmsg.call_id\n:quit\nmsg.method\n"),
        &[],
    );
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "a failed line makes the exit status 1: {out}");
    assert!(
        out.contains("stack traceback:\n\t[C]: in function 'nat_uac_test'\n\trepl:1: in main chunk"),
        "{out}"
    );
    assert!(out.contains(">>   1; print(ok)\n2\n"), "a continued chunk: {out}");
    assert!(out.contains("serlua> msg.call_id\ninv-1@192.168.1.20\n"), "{out}");
    assert!(!out.contains("serlua> msg.method"), ":quit ends the input: {out}");
}

#[test]
fn an_unknown_message_file_or_trace_is_a_clear_error_and_a_trace_message_loads() {
    let o = repl(&["tests/scripts/relay.lua", "--msg", "tests/repl/nope.txt"], None, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("tests/repl/nope.txt"));
    let o = repl(&["tests/scripts/relay.lua", "--trace", "x.pcap", "--index", "1"], None, &[]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("x.pcap"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // The first message of the recorded call is its INVITE, with its source.
    let o = repl(
        &[
            "tests/scripts/relay.lua",
            "--trace",
            "tests/traces/call.pcap",
            "--index",
            "1",
            "--eval",
            "msg.method .. ' ' .. msg.src_ip",
        ],
        None,
        &[],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && out.contains("INVITE 127.0.0.1"),
        "{out}{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = repl(
        &["tests/scripts/relay.lua", "--trace", "tests/traces/call.pcap", "--index", "999"],
        None,
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("outside the trace"));
}

#[test]
fn report_lines_for_flags_avps_and_the_media_relay() {
    let mut s = session("tests/scripts/relay.lua", "tests/repl/invite.txt");
    let r = s.eval(r#"setflag(6); avp_write("i:45", "inv_timeout")"#);
    assert!(r.ok, "{}", r.text);
    assert_eq!(r.text, "=> flags set: 6\n=> AVP set: inv_timeout = 45");
    assert_eq!(s.eval(":flags").text, "flags set: 6");
    assert_eq!(s.eval(":avps").text, "inv_timeout = 45");
    let r = s.eval("force_rtp_proxy()");
    assert!(r.ok && r.text.starts_with("true\n"), "{}", r.text);
    assert!(r.text.contains("no ports opened"), "{}", r.text);
    assert!(
        r.text.contains("=> SDP rewritten: c=IN IP4 127.0.0.1 | m=audio 30002 RTP/AVP 0 8"),
        "the relay's address and a placeholder port: {}",
        r.text
    );
    let r = s.eval("unforce_rtp_proxy()");
    assert!(r.text.contains("ended"), "{}", r.text);
    let r = s.eval("resetflag(6)");
    assert!(r.text.contains("=> flags reset: 6"), "{}", r.text);
    let r = s.eval("exit()");
    assert_eq!(r.text, "=> routing ended (exit())");
    assert!(s.eval(":reset").ok);
    assert_eq!(s.eval(":flags").text, "no flags set");
    // Only the worker's change on arrival is left: rport filled in (RFC 3581).
    let added: Vec<String> = s
        .eval(":diff")
        .text
        .lines()
        .filter(|l| l.starts_with('+') && !l.starts_with("+++"))
        .map(str::to_string)
        .collect();
    assert_eq!(
        added,
        vec!["+Via: SIP/2.0/UDP 192.168.1.20:5062;branch=z9hG4bK-inv-1;rport=5062;received=192.168.1.20"]
    );
}

#[test]
fn save_writes_only_the_sandbox() {
    // A registrar without authentication, inline in a temporary script.
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("repl-save");
    std::fs::create_dir_all(&dir).expect("tmp dir");
    let script = dir.join("save.lua");
    std::fs::write(
        &script,
        "alias = { \"example.com\" }\nfunction route.main() if not save(\"location\") then sl_reply_error() end end\n",
    )
    .expect("write script");
    let mut s = session(script.to_str().expect("utf-8 path"), "tests/repl/register.txt");
    let r = s.eval("route.main()");
    assert!(r.ok, "{}", r.text);
    assert!(r.text.contains("=> reply 200 OK -> udp:127.0.0.1:5061"), "{}", r.text);
    assert!(
        r.text
            .contains("=> binding saved in location: alice@example.com <sip:alice@127.0.0.1:5061>, expires in 3600 s"),
        "{}",
        r.text
    );
    // The sandbox keeps what it saved: the same REGISTER again is out of
    // order for the binding now there (RFC 3261 §10.3 step 7).
    let r = s.eval("route.main()");
    assert!(
        r.text.contains("=> reply 400 Bad Request - CSeq not higher than the binding's"),
        "{}",
        r.text
    );
    let sent = s.eval(":sent").text;
    assert_eq!(sent.matches("\nSIP/2.0 ").count(), 2, "{sent}");
    // :reset starts again from the (empty) tables.
    assert!(s.eval(":reset").ok);
    assert!(s.eval("route.main()").text.contains("binding saved"));
}

#[test]
fn commands_and_routes() {
    let mut s = session("tests/scripts/registrar.lua", "tests/repl/register.txt");
    assert_eq!(s.route_names(), vec!["route.main", "route[1]", "route[2]", "route[3]"]);
    assert_eq!(s.eval(":routes").text, "route.main\nroute[1]\nroute[2]\nroute[3]");
    assert!(
        s.eval(":show")
            .text
            .starts_with("REGISTER sip:example.com SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-reg-1;rport=5061")
    );
    assert_eq!(s.eval(":sent").text, "nothing sent");
    let r = s.eval(":bogus");
    assert!(!r.ok && r.text.starts_with("unknown command :bogus"));
    assert!(s.eval("function f(").incomplete);
    let r = s.eval("msg.nope");
    assert!(!r.ok && r.text.contains("msg has no field 'nope'"), "{}", r.text);
    assert_eq!(s.eval("1 + 1, 'x', nil").text, "2\tx\tnil");
}
