//! nathelper, mediaproxy's client_nat_test and the NAT keepalives driven
//! through the core without sockets, on a virtual clock: the NAT tests of
//! Kamailio's nat_uac_test and SER's client_nat_test, the Contact and Via
//! fix-ups (reference notes 22–37), fix_nated_register with save/lookup,
//! and natping's spread over its interval.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serlua::app::{Overrides, instance};
use serlua::sip::{HeaderName, SipMessage};
use serlua::transport::{Proto, Transmit};

mod common;

use common::net::{Net, forwarded, header, only_reply, parse};

/// The core running `script` as nathelper's tests name it.
fn net(script: &str) -> Net {
    Net::new("nat.lua", script)
}

/// NAT keepalives sent so far.
fn nat_pings(n: &Net) -> u64 {
    n.w.env.shared.stats.nat_pings.load(Ordering::Relaxed)
}

// ---------------------------------------------------------------- the NAT tests

/// Answers OPTIONS with the results of nat_uac_test for each bit and of
/// client_nat_test for each of its bits, in the reason phrase.
const TESTS: &str = r#"
listen = "udp:127.0.0.1:5060"
function route.main()
  local r = {}
  for _, bit in ipairs({1, 2, 4, 8, 16, 32}) do
    r[#r + 1] = nat_uac_test(bit) and "T" or "F"
  end
  r[#r + 1] = "/"
  for _, bit in ipairs({1, 2, 4}) do
    r[#r + 1] = client_nat_test(bit) and "T" or "F"
  end
  r[#r + 1] = nat_uac_test(19) and "+" or "-"
  sl_send_reply(200, table.concat(r))
end
"#;

fn options(via: &str, contact: &str, sdp_c: Option<&str>) -> String {
    let body = sdp_c
        .map(|c| format!("v=0\no=- 1 1 IN IP4 {c}\ns=-\nc=IN IP4 {c}\nt=0 0\nm=audio 4000 RTP/AVP 0\n"))
        .unwrap_or_default();
    let ct = if body.is_empty() { "" } else { "Content-Type: application/sdp\n" };
    format!(
        "OPTIONS sip:x@example.com SIP/2.0
Via: SIP/2.0/UDP {via};branch=z9hG4bK-{}
Max-Forwards: 70
From: <sip:a@example.com>;tag=1
To: <sip:x@example.com>
Call-ID: nat-{}
CSeq: 1 OPTIONS
Contact: {contact}
{ct}Content-Length: {}

{body}",
        via.len() + contact.len(),
        via.len() * 7 + contact.len(),
        body.replace('\n', "\r\n").len()
    )
}

fn results(n: &mut Net, from: &str, via: &str, contact: &str, sdp_c: Option<&str>) -> String {
    let (_, r) = only_reply(&n.recv(from, &options(via, contact, sdp_c)));
    r.reason().unwrap_or("").to_string()
}

#[test]
fn nat_uac_test_and_client_nat_test_bits() {
    let mut n = net(TESTS);
    // Behind a NAT: private Contact, Via and SDP, and the packet comes
    // from another address and port.        1 2 4 8 16 32 / 1 2 4
    assert_eq!(
        results(
            &mut n,
            "203.0.113.7:40000",
            "192.168.1.20:5060",
            "<sip:a@192.168.1.20:5060>",
            Some("10.0.0.5")
        ),
        "TTTTTF/TTT+"
    );
    // A public client that says where it is: nothing matches.
    assert_eq!(
        results(
            &mut n,
            "203.0.113.7:5060",
            "203.0.113.7",
            "<sip:a@203.0.113.7>",
            Some("203.0.113.7")
        ),
        "FFFFFF/FFF-",
        "a Via without port counts as 5060"
    );
    // Carrier-grade NAT space (RFC 6598) is bit 32 of nat_uac_test, not
    // 1/4/8 (mediaproxy's client_nat_test counts it as private).
    assert_eq!(
        results(&mut n, "100.64.1.2:5060", "100.64.1.2:5060", "<sip:a@100.64.1.2:5060>", None),
        "FFFFFT/TFT-"
    );
    assert_eq!(
        results(
            &mut n,
            "203.0.113.7:5060",
            "203.0.113.7:5060",
            "<sip:a@203.0.113.7>",
            Some("100.72.0.9")
        ),
        "FFFFFT/FFF-",
        "an RFC 6598 SDP address is bit 32"
    );
    // Only the port was changed by the NAT: 16 matches, 2 does not.
    assert_eq!(
        results(&mut n, "198.51.100.4:6000", "198.51.100.4:5060", "sip:a@198.51.100.4", None),
        "FFFFTF/FFF+"
    );
    // A name in the Via is not the source address.
    assert_eq!(
        results(
            &mut n,
            "198.51.100.4:5060",
            "phone.example.com:5060",
            "\"A\" <sip:a@phone.example.com>;expires=60",
            None
        ),
        "FTFFFF/FTF+"
    );
    // 172.16/12 ends at 172.31; the first Contact is the one tested.
    assert_eq!(
        results(
            &mut n,
            "172.32.0.1:5060",
            "172.32.0.1:5060",
            "<sip:a@172.32.0.1>, <sip:a@10.0.0.1>",
            None
        ),
        "FFFFFF/FFF-"
    );
}

#[test]
fn fixups_reject_bad_literal_flags_at_load_time() {
    let load = |body: &str| {
        let script = format!("listen = \"udp:127.0.0.1:5060\"\nfunction route.main()\n  {body}\nend\nonreply_route[1] = function() end\n");
        instance(Path::new("bad.lua"), Some(script), &Overrides::default(), Instant::now()).err()
    };
    let e = load("if nat_uac_test(64) then end").expect("refused");
    assert!(e.contains("bad.lua:3") && e.contains("outside 0..63"), "{e}");
    let e = load("if nat_uac_test(\"-1\") then end").expect("refused");
    assert!(e.contains("outside 0..63"), "{e}");
    let e = load("if client_nat_test(8) then end").expect("refused");
    assert!(e.contains("outside 0..7"), "{e}");
    assert!(load("if nat_uac_test(63) and client_nat_test(\"7\") then end").is_none());
    let e = instance(
        Path::new("bad.lua"),
        Some(
            "listen = \"udp:127.0.0.1:5060\"\nfunction route.main() t_on_reply(1) end\nonreply_route[1] = function() fix_nated_register() end\n"
                .into(),
        ),
        &Overrides::default(),
        Instant::now(),
    )
    .err()
    .expect("fix_nated_register is for request routes");
    assert!(e.contains("fix_nated_register"), "{e}");
}

#[test]
fn out_of_range_flags_at_run_time_are_script_errors() {
    let mut n = net(
        "listen = \"udp:127.0.0.1:5060\"\nfunction route.main()\n  local f = 64\n  if nat_uac_test(f) then end\n  sl_send_reply(200, \"OK\")\nend\n",
    );
    let (_, r) = only_reply(&n.recv("203.0.113.7:40000", &options("192.168.1.20:5060", "<sip:a@192.168.1.20>", None)));
    assert_eq!(r.status(), Some(500));
    assert_eq!(n.w.env.shared.stats.script_errors.load(Ordering::Relaxed), 1);
}

// ---------------------------------------------------------------- fix-ups

const RELAY: &str = r#"
listen = "udp:127.0.0.1:5060"
function route.main()
  if msg.method == "INVITE" or msg.method == "REGISTER" then
    if msg:header("X-Force-Rport") then force_rport() end
    if msg:header("X-Fix-Contact") and nat_uac_test(19) then fix_nated_contact() end
    if msg:header("X-Rcv") then add_rcv_param(tonumber(msg:header("X-Rcv"))) end
    t_on_reply("1")
    if not t_relay("127.0.0.1", 5099) then sl_reply_error() end
    return
  end
  if msg.method == "OPTIONS" then
    if msg:header("X-Force-Rport") then force_rport() end
    sl_send_reply(200, "OK")
    return
  end
  t_relay()
end
onreply_route[1] = function()
  if nat_uac_test(1) then fix_nated_contact() end
end
"#;

fn invite(via: &str, contact: &str, extra: &str, branch: &str) -> String {
    format!(
        "INVITE sip:bob@example.com SIP/2.0
Via: SIP/2.0/UDP {via};branch={branch}
Max-Forwards: 70
From: <sip:alice@example.com>;tag=a1
To: <sip:bob@example.com>
Call-ID: call-{branch}
CSeq: 1 INVITE
Contact: {contact}
{extra}Content-Length: 0

"
    )
}

fn reply_to(req: &SipMessage, status: u16, reason: &str, contact: &str) -> String {
    let mut s = format!("SIP/2.0 {status} {reason}\n");
    for v in req.headers(&HeaderName::Via) {
        s += &format!("Via: {}\n", String::from_utf8_lossy(&v));
    }
    for h in ["From", "Call-ID", "CSeq"] {
        s += &format!("{h}: {}\n", header(req, h));
    }
    s += &format!("To: {};tag=callee\nContact: {contact}\nContent-Length: 0\n\n", header(req, "To"));
    s
}

#[test]
fn fix_nated_contact_in_requests_and_replies() {
    let mut n = net(RELAY);
    let out = n.recv(
        "203.0.113.7:40000",
        &invite(
            "192.168.1.20:5062",
            "\"Alice\" <sip:alice@192.168.1.20:5062;transport=udp>;+sip.instance=\"<urn:x>\"",
            "X-Fix-Contact: 1\n",
            "z9hG4bK-f1",
        ),
    );
    let (dst, fwd) = forwarded(&out);
    assert_eq!(dst, "127.0.0.1:5099".parse::<SocketAddr>().unwrap());
    assert_eq!(
        header(&fwd, "Contact"),
        "\"Alice\" <sip:alice@203.0.113.7:40000;transport=udp>;+sip.instance=\"<urn:x>\""
    );
    let out = n.recv(
        "[2001:db8::9]:40000",
        &invite(
            "[2001:db8::9]:40000",
            "<sip:carol@[fd00::1]:5060>",
            "X-Fix-Contact: 1\n",
            "z9hG4bK-f2",
        ),
    );
    let (_, fwd6) = forwarded(&out);
    assert_eq!(
        header(&fwd6, "Contact"),
        "<sip:carol@[fd00::1]:5060>",
        "an IPv6 ULA is not private for nat_uac_test, and 2001:db8::9 is the Via's address"
    );
    let out = n.recv(
        "[2001:db8::9]:40001",
        &invite("[2001:db8::9]:40000", "<sip:carol@192.168.0.3>", "X-Fix-Contact: 1\n", "z9hG4bK-f3"),
    );
    let (_, fwd6) = forwarded(&out);
    assert_eq!(header(&fwd6, "Contact"), "<sip:carol@[2001:db8::9]:40001>", "IPv6 in brackets");
}

#[test]
fn fix_nated_contact_in_the_onreply_route() {
    let mut n = net(RELAY);
    let out = n.recv(
        "127.0.0.1:5090",
        &invite("127.0.0.1:5090", "<sip:alice@127.0.0.1:5090>", "", "z9hG4bK-r1"),
    );
    let (_, fwd) = forwarded(&out);
    let out = n.recv(
        "198.51.100.3:6000",
        &reply_to(&fwd, 200, "OK", "Bob <sip:bob@10.1.1.1:5060;ob>;expires=30"),
    );
    let (dst, up) = only_reply(&out);
    assert_eq!(dst, "127.0.0.1:5090".parse::<SocketAddr>().unwrap());
    assert_eq!(up.status(), Some(200));
    assert_eq!(header(&up, "Contact"), "Bob <sip:bob@198.51.100.3:6000;ob>;expires=30");
}

#[test]
fn force_rport_sends_replies_to_the_source_port() {
    let mut n = net(RELAY);
    // Without force_rport: received is added (other address), the port is the Via's.
    let out = n.recv("203.0.113.7:40000", &options("192.168.1.20:5060", "<sip:a@192.168.1.20>", None));
    assert_eq!(only_reply(&out).0, "203.0.113.7:5060".parse::<SocketAddr>().unwrap());
    let mut forced = options("192.168.1.20:5060", "<sip:a@192.168.1.20>", None);
    forced = forced.replacen("Max-Forwards", "X-Force-Rport: 1\nMax-Forwards", 1);
    let out = n.recv("203.0.113.7:40000", &forced);
    let (dst, r) = only_reply(&out);
    assert_eq!(dst, "203.0.113.7:40000".parse::<SocketAddr>().unwrap());
    let via = header(&r, "Via");
    assert!(via.contains(";received=203.0.113.7") && via.contains(";rport=40000"), "{via}");
    // Stateful: the 100, the relayed replies and a retransmission's answer
    // all go to the source port.
    let out = n.recv(
        "203.0.113.7:40000",
        &invite("192.168.1.20:5060", "<sip:a@192.168.1.20>", "X-Force-Rport: 1\n", "z9hG4bK-p1"),
    );
    let src: SocketAddr = "203.0.113.7:40000".parse().unwrap();
    let (_, fwd) = forwarded(&out);
    let trying = out.iter().find(|t| parse(t).status() == Some(100)).expect("100 Trying");
    assert_eq!(trying.dst, src);
    let vias = fwd.headers(&HeaderName::Via);
    assert!(
        String::from_utf8_lossy(&vias[1]).contains("rport=40000"),
        "the client's Via carries rport downstream"
    );
    let out = n.recv("127.0.0.1:5099", &reply_to(&fwd, 180, "Ringing", "<sip:bob@127.0.0.1:5099>"));
    assert_eq!(only_reply(&out).0, src);
    let out = n.recv(
        "203.0.113.7:40000",
        &invite("192.168.1.20:5060", "<sip:a@192.168.1.20>", "X-Force-Rport: 1\n", "z9hG4bK-p1"),
    );
    let (dst, r) = only_reply(&out);
    assert_eq!(
        (dst, r.status()),
        (src, Some(180)),
        "the retransmitted INVITE gets the 180 again, at the source port"
    );
}

#[test]
fn add_rcv_param_to_header_or_uri() {
    let mut n = net(RELAY);
    let out = n.recv(
        "203.0.113.7:40000",
        &invite(
            "192.168.1.20:5060",
            "<sip:a@192.168.1.20>;expires=60, \"B\" <sip:b@192.168.1.20:5070>",
            "X-Rcv: 0\n",
            "z9hG4bK-c1",
        ),
    );
    let (_, fwd) = forwarded(&out);
    let contacts: Vec<String> = fwd
        .headers(&HeaderName::Contact)
        .iter()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect();
    assert_eq!(
        contacts,
        [
            "<sip:a@192.168.1.20>;expires=60;received=\"sip:203.0.113.7:40000\"",
            "\"B\" <sip:b@192.168.1.20:5070>;received=\"sip:203.0.113.7:40000\""
        ]
    );
    let out = n.recv(
        "203.0.113.7:40000",
        &invite("192.168.1.20:5060", "sip:a@192.168.1.20", "X-Rcv: 1\n", "z9hG4bK-c2"),
    );
    let (_, fwd) = forwarded(&out);
    assert_eq!(header(&fwd, "Contact"), "<sip:a@192.168.1.20;received=sip:203.0.113.7:40000>");
}

// ---------------------------------------------------------------- fix_nated_register

fn registrar(params: &str) -> String {
    format!(
        r#"
listen = {{"udp:127.0.0.1:5060", "udp:127.0.0.1:5062", "tcp:127.0.0.1:5060"}}
{params}
function route.main()
  if msg.method == "REGISTER" then
    if nat_uac_test(19) then setflag(6); fix_nated_register() end
    if not save("location") then sl_reply_error() end
    return
  end
  if not lookup("location") then sl_send_reply(404, "Not Found"); return end
  t_relay()
end
"#
    )
}

fn register(user: &str, src_port: u16, contact: &str, transport: &str, expires: u32) -> String {
    format!(
        "REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/{transport} 127.0.0.1:{src_port};branch=z9hG4bK-reg-{user}-{src_port}
Max-Forwards: 70
From: <sip:{user}@example.com>;tag=r1
To: <sip:{user}@example.com>
Call-ID: reg-{user}-{src_port}
CSeq: 1 REGISTER
Contact: <{contact}>
Expires: {expires}
Content-Length: 0

"
    )
}

#[test]
fn fix_nated_register_keeps_the_source_and_lookup_uses_it() {
    for params in ["modparam(\"registrar\", \"nat_flag\", 6)", ""] {
        let mut n = net(&registrar(params));
        let out = n.recv("127.0.0.1:40000", &register("bob", 5060, "sip:bob@192.168.1.20:5060", "UDP", 600));
        let (_, r) = only_reply(&out);
        assert_eq!(r.status(), Some(200));
        assert_eq!(
            header(&r, "Contact"),
            "<sip:bob@192.168.1.20:5060>;expires=600;received=\"sip:127.0.0.1:40000\"",
            "the Contact as registered, with where it was seen ({params})"
        );
        let rec = n.w.env.shared.store.location.lookup("bob", n.w.env.unix_now()).expect("bound");
        let b = &rec.bindings[0];
        assert_eq!(b.contact(), "sip:bob@192.168.1.20:5060");
        assert_eq!(b.received(), Some("sip:127.0.0.1:40000"));
        assert_eq!(b.cflags, if params.is_empty() { 0 } else { 1 << 6 });
        let out = n.recv(
            "127.0.0.1:5091",
            &invite("127.0.0.1:5091", "<sip:alice@127.0.0.1:5091>", "", "z9hG4bK-l1"),
        );
        let (dst, fwd) = forwarded(&out);
        assert_eq!(
            dst,
            "127.0.0.1:40000".parse::<SocketAddr>().unwrap(),
            "sent to the received address"
        );
        assert_eq!(fwd.ruri().map(|u| u.to_string()).as_deref(), Some("sip:bob@192.168.1.20:5060"));
    }
    // Over TCP the received URI says so.
    let mut n = net(&registrar(""));
    let out = n.recv_on(
        2,
        Proto::Tcp,
        "127.0.0.1:41000",
        &register("carol", 5060, "sip:carol@10.0.0.7", "TCP", 600),
    );
    assert_eq!(only_reply(&out).1.status(), Some(200));
    let rec = n.w.env.shared.store.location.lookup("carol", n.w.env.unix_now()).expect("bound");
    assert_eq!(rec.bindings[0].received(), Some("sip:127.0.0.1:41000;transport=tcp"));
    // A client that is not behind a NAT keeps no received.
    let out = n.recv("127.0.0.1:42000", &register("dave", 42000, "sip:dave@127.0.0.1:42000", "UDP", 600));
    assert_eq!(header(&only_reply(&out).1, "Contact"), "<sip:dave@127.0.0.1:42000>;expires=600");
}

// ---------------------------------------------------------------- natping

fn nated(i: u16) -> (String, u16) {
    (format!("n{i:03}"), 20000 + i)
}

fn public(i: u16) -> (String, u16) {
    (format!("p{i:03}"), 30000 + i)
}

/// Registers `count` NATed users (private Contact, from 127.0.0.1:2xxxx)
/// and `count_public` public ones (Contact = source, 127.0.0.1:3xxxx).
fn populate(n: &mut Net, count: u16, count_public: u16) {
    for i in 0..count {
        let (u, port) = nated(i);
        let out = n.recv(
            &format!("127.0.0.1:{port}"),
            &register(&u, 5060, &format!("sip:{u}@192.168.1.20:5060"), "UDP", 3600),
        );
        assert_eq!(only_reply(&out).1.status(), Some(200));
    }
    for i in 0..count_public {
        let (u, port) = public(i);
        let out = n.recv(
            &format!("127.0.0.1:{port}"),
            &register(&u, port, &format!("sip:{u}@127.0.0.1:{port}"), "UDP", 3600),
        );
        assert_eq!(only_reply(&out).1.status(), Some(200));
    }
}

/// Pings per destination, and per second.
fn tally(sent: &[(u64, Transmit)]) -> (HashMap<SocketAddr, Vec<u64>>, HashMap<u64, usize>) {
    let mut by_dst: HashMap<SocketAddr, Vec<u64>> = HashMap::new();
    let mut by_sec: HashMap<u64, usize> = HashMap::new();
    for (sec, t) in sent {
        by_dst.entry(t.dst).or_default().push(*sec);
        *by_sec.entry(*sec).or_default() += 1;
    }
    (by_dst, by_sec)
}

#[test]
fn natping_pings_each_nated_binding_once_per_interval_spread_out() {
    let mut n = net(&registrar(
        "modparam(\"registrar\", \"nat_flag\", 6)\nmodparam(\"nathelper\", \"natping_interval\", 10)",
    ));
    populate(&mut n, 60, 10);
    let sent = n.run(30);
    assert!(
        sent.iter().all(|(_, t)| t.data.as_ref() == [0u8, 0, 0, 0]),
        "4-byte zero keepalives"
    );
    assert!(sent.iter().all(|(_, t)| t.proto == Proto::Udp && t.local == 0));
    let (by_dst, by_sec) = tally(&sent);
    for i in 0..60 {
        let dst: SocketAddr = format!("127.0.0.1:{}", nated(i).1).parse().unwrap();
        let secs = by_dst.get(&dst).unwrap_or_else(|| panic!("{dst} was never pinged"));
        assert_eq!(secs.len(), 3, "{dst}: one ping per 10 s over 30 s, got {secs:?}");
        assert!(secs.windows(2).all(|w| w[1] - w[0] == 10), "{dst}: every 10 s: {secs:?}");
    }
    for i in 0..10 {
        let dst: SocketAddr = format!("127.0.0.1:{}", public(i).1).parse().unwrap();
        assert!(!by_dst.contains_key(&dst), "ping_nated_only: {dst} is not NATed");
    }
    assert_eq!(sent.len(), 180);
    assert_eq!(nat_pings(&n), 180);
    let busiest = by_sec.values().copied().max().unwrap_or(0);
    assert!(by_sec.len() >= 20, "pings spread over the seconds of the interval: {by_sec:?}");
    assert!(
        busiest <= 20,
        "no burst: at most a third of the bindings in one second, got {busiest}: {by_sec:?}"
    );
}

#[test]
fn natping_long_interval_every_binding_once() {
    let mut n = net(&registrar(
        "modparam(\"nathelper\", \"natping_interval\", 100)\nmodparam(\"nathelper\", \"ping_nated_only\", 0)",
    ));
    populate(&mut n, 20, 20);
    let sent = n.run(100);
    let (by_dst, by_sec) = tally(&sent);
    assert_eq!(by_dst.len(), 40, "ping_nated_only 0: every UDP binding");
    assert!(by_dst.values().all(|s| s.len() == 1), "{by_dst:?}");
    assert!(by_sec.values().all(|c| *c <= 4), "{by_sec:?}");
}

#[test]
fn natping_skips_expired_and_tcp_bindings_and_uses_the_registration_socket() {
    let mut n = net(&registrar(
        "modparam(\"nathelper\", \"natping_interval\", 2)\nmodparam(\"registrar\", \"min_expires\", 1)",
    ));
    let out = n.recv_on(
        1,
        Proto::Udp,
        "127.0.0.1:21000",
        &register("s1", 5060, "sip:s1@10.0.0.1", "UDP", 3600),
    );
    assert_eq!(only_reply(&out).1.status(), Some(200));
    let out = n.recv_on(
        2,
        Proto::Tcp,
        "127.0.0.1:21001",
        &register("t1", 5060, "sip:t1@10.0.0.2", "TCP", 3600),
    );
    assert_eq!(only_reply(&out).1.status(), Some(200));
    let out = n.recv("127.0.0.1:21002", &register("e1", 5060, "sip:e1@10.0.0.3", "UDP", 3));
    assert_eq!(only_reply(&out).1.status(), Some(200));
    let sent = n.run(2);
    let dsts: Vec<(SocketAddr, u16)> = sent.iter().map(|(_, t)| (t.dst, t.local)).collect();
    assert!(
        dsts.contains(&("127.0.0.1:21000".parse().unwrap(), 1)),
        "from the socket it registered on: {dsts:?}"
    );
    assert!(dsts.contains(&("127.0.0.1:21002".parse().unwrap(), 0)), "{dsts:?}");
    assert!(!dsts.iter().any(|(d, _)| d.port() == 21001), "no UDP keepalive for a TCP binding");
    let sent = n.run(4);
    assert!(!sent.iter().any(|(_, t)| t.dst.port() == 21002), "expired bindings are not pinged");
    assert!(sent.iter().any(|(_, t)| t.dst.port() == 21000));
}

#[test]
fn natping_disabled_by_default() {
    let mut n = net(&registrar("modparam(\"registrar\", \"nat_flag\", 6)"));
    populate(&mut n, 5, 0);
    assert!(n.run(120).is_empty());
    assert_eq!(nat_pings(&n), 0);
}

#[test]
fn sipping_options_and_their_replies_are_absorbed() {
    let mut n = net(&registrar(
        "modparam(\"nathelper\", \"natping_interval\", 1)\nmodparam(\"nathelper\", \"sipping_method\", \"OPTIONS\")",
    ));
    populate(&mut n, 1, 0);
    let sent = n.run(1);
    assert_eq!(sent.len(), 1);
    let t = &sent[0].1;
    assert_eq!(t.dst, "127.0.0.1:20000".parse::<SocketAddr>().unwrap());
    let ping = parse(t);
    assert_eq!(ping.method().map(|m| m.to_string()).as_deref(), Some("OPTIONS"));
    assert_eq!(ping.ruri().map(|u| u.to_string()).as_deref(), Some("sip:n000@192.168.1.20:5060"));
    assert!(header(&ping, "From").starts_with("<sip:pinger@127.0.0.1:5060>;tag="));
    assert_eq!(header(&ping, "To"), "<sip:n000@192.168.1.20:5060>");
    assert_eq!(ping.cseq().method.to_string(), "OPTIONS");
    let shared = n.w.env.shared.clone();
    let stats = &shared.stats;
    let dropped = stats.dropped.load(Ordering::Relaxed);
    let ok = format!(
        "SIP/2.0 200 OK\nVia: {}\nFrom: {}\nTo: {};tag=ua\nCall-ID: {}\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n",
        header(&ping, "Via"),
        header(&ping, "From"),
        header(&ping, "To"),
        header(&ping, "Call-ID")
    );
    let out = n.recv("127.0.0.1:20000", &ok);
    assert!(out.is_empty(), "a keepalive's reply goes nowhere");
    assert_eq!(
        stats.dropped.load(Ordering::Relaxed),
        dropped,
        "and is not counted as a stray reply"
    );
    assert_eq!(stats.fwd_replies.load(Ordering::Relaxed), 0);
    // sipping_from replaces the pinger's address.
    let mut n = net(&registrar(
        "modparam(\"nathelper\", \"natping_interval\", 1)\nmodparam(\"nathelper\", \"sipping_method\", \"INFO\")\nmodparam(\"nathelper\", \"sipping_from\", \"sip:keepalive@example.com\")",
    ));
    populate(&mut n, 1, 0);
    let sent = n.run(1);
    let ping = parse(&sent[0].1);
    assert_eq!(ping.method().map(|m| m.to_string()).as_deref(), Some("INFO"));
    assert!(header(&ping, "From").starts_with("<sip:keepalive@example.com>;tag="));
}
