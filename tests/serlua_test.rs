//! `serlua test`, the Lua test runner, run as a user runs it: the example
//! suites in tests/lua replay recorded traces (tests/traces) through the
//! scripts that were recorded; a deliberately failing test shows a
//! readable diff and exits 1; `--junit` writes well-formed XML with the
//! right counts; a 45 s INVITE timeout takes well under a second.

use std::path::Path;
use std::process::{Command, Output};

use quick_xml::events::Event;

fn serlua_test(args: &[&str]) -> (i32, String) {
    let out: Output = Command::new(env!("CARGO_BIN_EXE_serlua"))
        .arg("test")
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("serlua runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// The `N passed, M failed` line.
fn counts(text: &str) -> (usize, usize) {
    let line = text
        .lines()
        .find(|l| l.contains(" passed, ") && l.contains(" failed"))
        .unwrap_or_else(|| panic!("no summary line in:\n{text}"));
    let n = |word: &str| -> usize {
        let before = line.split(word).next().unwrap_or("");
        before.split_whitespace().last().and_then(|w| w.parse().ok()).unwrap_or(usize::MAX)
    };
    (n(" passed"), n(" failed"))
}

#[test]
fn example_suites_pass() {
    let (code, text) = serlua_test(&["tests/lua"]);
    assert_eq!(code, 0, "{text}");
    let (passed, failed) = counts(&text);
    assert_eq!(failed, 0, "{text}");
    assert!(passed >= 6, "{text}");
    for name in [
        "replays a recorded REGISTER/401/REGISTER/200 with its recorded digest",
        "reassembles a REGISTER split over two TCP segments",
        "replays a recorded call (pcap and pcapng) as the recorded proxy relayed it",
        "gives the gateway 45 s to answer, then cancels it and answers 408",
    ] {
        assert!(
            text.lines().any(|l| l.starts_with("ok ") && l.contains(name)),
            "{name} did not pass:\n{text}"
        );
    }
    // Pending tests are reported, not run; the deliberately failing file is
    // not a *_test.lua, so a folder run does not pick it.
    assert!(text.contains("skip  tests/lua/timers_test.lua"), "{text}");
    assert!(!text.contains("wrong_status_fails"), "{text}");
}

#[test]
fn a_wrong_status_fails_with_a_readable_diff() {
    let (code, text) = serlua_test(&["tests/lua/wrong_status_fails.lua"]);
    assert_eq!(code, 1, "{text}");
    assert_eq!(counts(&text), (0, 1), "{text}");
    for want in [
        "FAIL  tests/lua/wrong_status_fails.lua :: registrar.lua challenges a REGISTER with 407",
        "tests/lua/wrong_status_fails.lua:12: assert.equals failed",
        "expected: 407",
        "actual:   401",
        "the actual value is the status of the message sent by the proxy, 127.0.0.1:5060 -> 127.0.0.1:5061 (udp)",
        "- SIP/2.0 407 Proxy Authentication Required",
        "+ SIP/2.0 401 Unauthorized",
        "  WWW-Authenticate: Digest realm=\"example.com\"",
        "  CSeq: 1 REGISTER",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    println!("{text}");
}

#[test]
fn junit_report_is_well_formed_with_the_right_counts() {
    let dir = std::env::temp_dir().join(format!("serlua-junit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let xml_path = dir.join("report.xml");
    let xml_arg = xml_path.display().to_string();
    let (code, text) = serlua_test(&["--junit", &xml_arg, "tests/lua", "tests/lua/wrong_status_fails.lua"]);
    assert_eq!(code, 1, "{text}");
    let (passed, failed) = counts(&text);
    let xml = std::fs::read_to_string(&xml_path).expect("report written");
    let mut reader = quick_xml::Reader::from_str(&xml);
    let (mut suites, mut cases, mut failures, mut skipped) = (0, 0, 0, 0);
    let mut root_counts = None;
    loop {
        match reader.read_event() {
            Ok(Event::Eof) => break,
            Ok(Event::Start(e) | Event::Empty(e)) => {
                let attr = |name: &str| -> Option<String> {
                    e.try_get_attribute(name)
                        .ok()
                        .flatten()
                        .map(|a| String::from_utf8_lossy(&a.value).into_owned())
                };
                match e.name().as_ref() {
                    b"testsuites" => root_counts = Some((attr("tests"), attr("failures"), attr("skipped"))),
                    b"testsuite" => suites += 1,
                    b"testcase" => cases += 1,
                    b"failure" => failures += 1,
                    b"skipped" => skipped += 1,
                    _ => {}
                }
            }
            Ok(_) => {}
            Err(e) => panic!("not well-formed XML at {}: {e}\n{xml}", reader.buffer_position()),
        }
    }
    // One suite per test file that ran.
    let mut files: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once(" :: ").map(|(head, _)| head.split_whitespace().last().unwrap_or("")))
        .collect();
    files.sort();
    files.dedup();
    assert!(files.contains(&"tests/lua/wrong_status_fails.lua"), "{text}");
    assert_eq!(suites, files.len(), "{xml}");
    assert_eq!(failures, 1, "{xml}");
    assert_eq!(failed, 1);
    assert_eq!(cases, passed + failed + skipped, "{xml}");
    assert_eq!(
        root_counts,
        Some((Some(cases.to_string()), Some("1".to_string()), Some(skipped.to_string()))),
        "{xml}"
    );
    assert!(
        xml.contains("- SIP/2.0 407 Proxy Authentication Required"),
        "the failure text is in the report"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_45_second_timeout_takes_under_a_second() {
    let t0 = std::time::Instant::now();
    let (code, text) = serlua_test(&["--filter", "45 s", "tests/lua/timers_test.lua"]);
    let wall = t0.elapsed();
    assert_eq!(code, 0, "{text}");
    assert_eq!(counts(&text), (1, 0), "{text}");
    // The runner's own timing of the test ("(N ms)"), and the whole process.
    let line = text.lines().find(|l| l.contains("45 s to answer")).expect("the test line");
    let ms: f64 = line
        .rsplit('(')
        .next()
        .and_then(|s| s.trim_end_matches(" ms)").parse().ok())
        .unwrap_or(f64::MAX);
    assert!(ms < 1000.0, "{line}");
    assert!(wall.as_secs_f64() < 5.0, "the whole run took {wall:?}");
}

#[test]
fn verbose_draws_the_ladder_with_the_routes() {
    let (code, text) = serlua_test(&["--verbose", "--filter", "recorded call", "tests/lua/replay_test.lua"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("message flow of tests/scripts/relay.lua:"), "{text}");
    let invite = text
        .lines()
        .find(|l| l.contains("|-INVITE sip:service@") && l.contains("[route.main]"))
        .unwrap_or_else(|| panic!("no INVITE arrow handled by route.main:\n{text}"));
    assert!(invite.trim_start().starts_with("0.000"), "{invite}");
    assert!(text.lines().any(|l| l.contains("<") && l.contains("180 Ringing")), "{text}");
}

#[test]
fn empty_folders_pass_and_missing_paths_are_errors() {
    let dir = std::env::temp_dir().join(format!("serlua-empty-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (code, text) = serlua_test(&[&dir.display().to_string()]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(counts(&text), (0, 0), "{text}");
    let (code, text) = serlua_test(&["no/such/dir"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("no/such/dir: no such file or folder"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/lua").is_dir());
}

#[test]
fn script_and_test_errors_are_reported_with_their_place() {
    let dir = std::env::temp_dir().join(format!("serlua-errs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("errors_test.lua");
    std::fs::write(
        &file,
        r#"
describe("errors", function()
  it("a script that does not load", function()
    proxy("function route.main() no_such_primitive() end\n")
  end)
  it("a route error is visible, the test goes on", function()
    local px = proxy("function route.main() error('boom') end\n")
    px:receive("OPTIONS sip:a@127.0.0.1 SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1\nFrom: <sip:b@x>;tag=1\nTo: <sip:a@x>\nCall-ID: e1\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n")
    assert.equals(500, px:sent()[1].status)
    assert.matches("boom", px:errors()[1])
    assert.equals("route.main", px:last_route().route)
  end)
  it("has_error, same and matches", function()
    assert.has_error(function() error("expected failure") end, "expected failure")
    assert.same({ a = { 1, 2 } }, { a = { 1, 2 } })
    assert.are.equal(1, 1)
    assert.is_not.equal(1, 2)
  end)
  it("a table diff", function()
    assert.same({ status = 200, to_tag = "x" }, { status = 486, to_tag = "x" })
  end)
end)
"#,
    )
    .unwrap();
    let (code, text) = serlua_test(&[&file.display().to_string()]);
    assert_eq!(code, 1, "{text}");
    assert_eq!(counts(&text), (2, 2), "{text}");
    assert!(
        text.contains("errors_test.lua:4: proxy(): inline.lua:1:23: unknown function 'no_such_primitive'"),
        "{text}"
    );
    assert!(
        text.contains("-   status = 200,") && text.contains("+   status = 486,") && text.contains("    to_tag = \"x\","),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
