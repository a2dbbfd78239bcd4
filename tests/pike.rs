//! pike and the scanner guard through the real core, on a virtual clock
//! (issue 8, Security): tests/scripts/security.lua as an admin would
//! write it — `if not pike_check_req() then drop() end` and a User-Agent
//! regex that drops SIP scanners.
//!
//!   * digest brute force: REGISTERs with wrong passwords from one source
//!     get 401 until the 10th failure (pike `auth_failures`), then nothing;
//!     another source still registers; the source is answered again
//!     `remove_latency` (120 s) later;
//!   * request flood: the 31st request within 2 s (SER's default 30 per
//!     unit) gets nothing, other sources are unaffected;
//!   * scanners: svmap's OPTIONS and svwar's REGISTER/INVITE with
//!     sipvicious-style User-Agents get nothing, an ordinary phone's do.

mod common;

use std::time::Duration;

use common::net::{Net, parse};
use md5::{Digest, Md5};
use serlua::db::Subscriber;

const SCRIPT: &str = include_str!("scripts/security.lua");

fn net() -> Net {
    let n = Net::new("tests/scripts/security.lua", SCRIPT);
    n.w.env.shared.store.set_subscribers(vec![Subscriber {
        username: "alice".into(),
        domain: "example.com".into(),
        password: "secret".into(),
        ha1: String::new(),
        ha1b: String::new(),
    }]);
    n
}

fn register(n: u32, from: &str, auth: &str, ua: &str) -> String {
    format!(
        "REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/UDP {from};branch=z9hG4bK-pike-{n}
Max-Forwards: 70
From: <sip:alice@example.com>;tag=t{n}
To: <sip:alice@example.com>
Call-ID: pike-{n}-{from}
CSeq: {n} REGISTER
Contact: <sip:alice@{from}>
User-Agent: {ua}
{auth}Content-Length: 0

"
    )
}

fn options(n: u32, from: &str, ua: &str) -> String {
    format!(
        "OPTIONS sip:100@example.com SIP/2.0
Via: SIP/2.0/UDP {from};branch=z9hG4bK-opt-{n}
Max-Forwards: 70
From: <sip:scan@example.com>;tag=o{n}
To: <sip:100@example.com>
Call-ID: opt-{n}-{from}
CSeq: 1 OPTIONS
User-Agent: {ua}
Accept: application/sdp
Content-Length: 0

"
    )
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn md5(s: &str) -> String {
    hex(&Md5::digest(s.as_bytes()))
}

/// The nonce of a 401's challenge.
fn nonce_of(reply: &serlua::sip::SipMessage) -> String {
    let h = common::net::header(reply, "WWW-Authenticate");
    let start = h.find("nonce=\"").expect("a nonce in the challenge") + 7;
    let end = h[start..].find('"').expect("a quoted nonce") + start;
    h[start..end].to_string()
}

fn authorization(nonce: &str, password: &str) -> String {
    let ha1 = md5(&format!("alice:example.com:{password}"));
    let ha2 = md5("REGISTER:sip:example.com");
    let resp = md5(&format!("{ha1}:{nonce}:{ha2}"));
    format!(
        "Authorization: Digest username=\"alice\", realm=\"example.com\", nonce=\"{nonce}\", uri=\"sip:example.com\", response=\"{resp}\", algorithm=MD5\n"
    )
}

/// The status of the one reply the proxy sent, or None when it sent nothing.
fn status(out: &[serlua::transport::Transmit]) -> Option<u16> {
    assert!(out.len() <= 1, "at most one reply expected, got {}", out.len());
    out.first().and_then(|t| parse(t).status())
}

const ATTACKER: &str = "198.51.100.9:5060";
const PHONE: &str = "192.0.2.20:5060";

#[test]
fn digest_brute_force_is_cut_off_after_10_failures() {
    let mut n = net();
    let out = n.recv(ATTACKER, &register(1, ATTACKER, "", "Zoiper"));
    assert_eq!(status(&out), Some(401));
    let nonce = nonce_of(&parse(&out[0]));
    for i in 0..10 {
        let guess = format!("guess{i}");
        let out = n.recv(ATTACKER, &register(2 + i, ATTACKER, &authorization(&nonce, &guess), "Zoiper"));
        assert_eq!(status(&out), Some(401), "wrong password {i} is challenged again");
        // A second apart: far below the request rate limit.
        n.now += Duration::from_secs(1);
    }
    // Blocked: not even the right password gets an answer now.
    for i in 0..5 {
        let out = n.recv(ATTACKER, &register(20 + i, ATTACKER, &authorization(&nonce, "secret"), "Zoiper"));
        assert_eq!(status(&out), None, "a blocked source gets nothing");
    }
    let blocked = n.w.env.shared.pike.blocked(n.now);
    assert_eq!(blocked.len(), 1);
    assert_eq!(blocked[0].source, "198.51.100.9");
    assert_eq!(blocked[0].reason.as_str(), "auth");
    assert_eq!(blocked[0].refused, 5);
    assert!(n.w.env.shared.stats.pike_refused.load(std::sync::atomic::Ordering::Relaxed) >= 5);

    // The phone elsewhere registers as usual.
    let out = n.recv(PHONE, &register(40, PHONE, "", "Zoiper"));
    assert_eq!(status(&out), Some(401));
    let nonce2 = nonce_of(&parse(&out[0]));
    let out = n.recv(PHONE, &register(41, PHONE, &authorization(&nonce2, "secret"), "Zoiper"));
    assert_eq!(status(&out), Some(200));

    // remove_latency later the attacker is heard again.
    n.now += Duration::from_secs(121);
    let out = n.recv(ATTACKER, &register(50, ATTACKER, "", "Zoiper"));
    assert_eq!(status(&out), Some(401));
}

#[test]
fn a_request_flood_is_dropped_after_30_in_2_seconds() {
    let mut n = net();
    for i in 0..30 {
        let out = n.recv(ATTACKER, &options(i, ATTACKER, "Linphone"));
        assert_eq!(status(&out), Some(404), "request {i} is within the rate");
    }
    let out = n.recv(ATTACKER, &options(30, ATTACKER, "Linphone"));
    assert_eq!(status(&out), None, "the 31st within the unit is dropped");
    let out = n.recv(PHONE, &options(31, PHONE, "Linphone"));
    assert_eq!(status(&out), Some(404), "another source is unaffected");
    // A flood that goes on stays blocked long after it started.
    for s in 0..60 {
        n.now += Duration::from_secs(1);
        for i in 0..20 {
            let out = n.recv(ATTACKER, &options(100 + s * 20 + i, ATTACKER, "Linphone"));
            assert_eq!(status(&out), None);
        }
    }
}

#[test]
fn sip_scanners_get_no_answer() {
    let mut n = net();
    // svmap: OPTIONS sweep; svwar: REGISTER/INVITE extension guessing;
    // sipcli and others; the User-Agents as those tools send them.
    let agents = [
        "friendly-scanner",
        "sipvicious",
        "SIPVicious 0.3.4",
        "sipcli/v1.8",
        "Friendly-Scanner 1.0",
    ];
    for (i, ua) in agents.iter().enumerate() {
        let from = format!("203.0.113.{}:5060", 10 + i);
        let out = n.recv(&from, &options(i as u32, &from, ua));
        assert_eq!(status(&out), None, "svmap-style OPTIONS from {ua} gets nothing");
        let out = n.recv(&from, &register(100 + i as u32, &from, "", ua));
        assert_eq!(status(&out), None, "svwar-style REGISTER from {ua} gets nothing");
    }
    // A phone is answered.
    let out = n.recv(PHONE, &options(99, PHONE, "Grandstream GXP2160 1.0.11.23"));
    assert_eq!(status(&out), Some(404));
    let out = n.recv(PHONE, &register(200, PHONE, "", "Yealink SIP-T46S"));
    assert_eq!(status(&out), Some(401));
}

#[test]
fn requests_for_foreign_domains_are_never_relayed() {
    let mut n = net();
    let text = options(1, PHONE, "Linphone").replace("sip:100@example.com SIP/2.0", "sip:0044123456@gw.elsewhere.net SIP/2.0");
    let out = n.recv(PHONE, &text);
    assert_eq!(status(&out), Some(403));
}
