//! registrar and usrloc through the core, on a virtual clock: REGISTER
//! semantics of RFC 3261 §10.3 and lookups (SER's save/lookup).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serlua::app::{Overrides, instance};
use serlua::sip::{HeaderName, SipMessage};
use serlua::transport::{Incoming, Proto};
use serlua::worker::Worker;

const PHONE: &str = "127.0.0.1:5090";

const SCRIPT: &str = r#"
listen = "udp:127.0.0.1:5060"
modparam("registrar", "nat_flag", 6)
modparam("registrar", "min_expires", 60)
modparam("registrar", "max_expires", 7200)
modparam("usrloc", "timer_interval", 1)
function route.main()
  if msg.method == "REGISTER" then
    if msg:header("X-Nat") then setflag(6) end
    if not save("location") then sl_reply_error() end
    return
  end
  if msg.method == "INVITE" then
    lookup("aliases")
    if not lookup("location") then sl_send_reply(404, "User Not Found"); return end
    if isflagset(6) then append_hf("X-Callee-Nat: yes\r\n") end
    t_relay()
  end
end
"#;

struct Net {
    w: Worker,
    now: Instant,
}

impl Net {
    fn new() -> Net {
        let now = Instant::now();
        Net {
            w: instance(Path::new("reg.lua"), Some(SCRIPT.to_string()), &Overrides::default(), now).expect("loads"),
            now,
        }
    }
    fn recv(&mut self, from: &str, text: &str) -> Vec<(SocketAddr, SipMessage)> {
        let data = Bytes::from(text.replace('\n', "\r\n"));
        self.w.handle(
            self.now,
            Incoming {
                local: 0,
                proto: Proto::Udp,
                src: from.parse().unwrap(),
                conn: None,
                data,
            },
        );
        self.w
            .take_transmits()
            .into_iter()
            .map(|t| (t.dst, SipMessage::parse(t.data).expect("parsable")))
            .collect()
    }
    fn advance(&mut self, secs: u64) {
        let end = self.now + Duration::from_secs(secs);
        while let Some(at) = self.w.next_timeout().filter(|at| *at <= end) {
            self.now = at.max(self.now);
            self.w.handle_timeouts(self.now);
        }
        self.now = end;
        self.w.handle_timeouts(end);
        self.w.take_transmits();
    }
}

fn register(user: &str, contacts: &[&str], expires: Option<u32>, callid: &str, cseq: u32, extra: &str) -> String {
    let mut s = format!(
        "REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bK-{callid}-{cseq}
Max-Forwards: 70
From: <sip:{user}@example.com>;tag=r1
To: <sip:{user}@example.com>
Call-ID: {callid}
CSeq: {cseq} REGISTER
User-Agent: test-phone/1.0
"
    );
    for c in contacts {
        s += &format!("Contact: {c}\n");
    }
    if let Some(e) = expires {
        s += &format!("Expires: {e}\n");
    }
    s += extra;
    s += "Content-Length: 0\n\n";
    s
}

fn invite(user: &str, branch: &str) -> String {
    format!(
        "INVITE sip:{user}@example.com SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5091;branch={branch}
Max-Forwards: 70
From: <sip:caller@example.com>;tag=c1
To: <sip:{user}@example.com>
Call-ID: inv-{branch}
CSeq: 1 INVITE
Content-Length: 0

"
    )
}

fn reply(out: &[(SocketAddr, SipMessage)]) -> &SipMessage {
    let r: Vec<&SipMessage> = out.iter().map(|(_, m)| m).filter(|m| m.status().is_some()).collect();
    assert_eq!(r.len(), 1, "one reply expected");
    r[0]
}

fn contacts(m: &SipMessage) -> Vec<String> {
    m.headers(&HeaderName::Contact)
        .iter()
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

#[test]
fn register_then_call_reaches_the_contact() {
    let mut n = Net::new();
    let out = n.recv(PHONE, &register("alice", &["<sip:alice@127.0.0.1:5090>"], Some(3600), "c1", 1, ""));
    let r = reply(&out);
    assert_eq!(r.status(), Some(200));
    assert_eq!(contacts(r), vec!["<sip:alice@127.0.0.1:5090>;expires=3600"]);
    let out = n.recv("127.0.0.1:5091", &invite("alice", "z9hG4bK-i1"));
    let fwd = out.iter().find(|(_, m)| m.method().is_some()).expect("forwarded");
    assert_eq!(fwd.0, "127.0.0.1:5090".parse().unwrap());
    assert_eq!(fwd.1.ruri().unwrap().to_string(), "sip:alice@127.0.0.1:5090");
    let out = n.recv("127.0.0.1:5091", &invite("nobody", "z9hG4bK-i2"));
    assert_eq!(reply(&out).status(), Some(404));
}

#[test]
fn nat_flag_keeps_the_source_address_and_lookup_uses_it() {
    let mut n = Net::new();
    let out = n.recv(
        "127.0.0.1:40000",
        &register("bob", &["<sip:bob@192.168.1.20:5060>"], Some(600), "c2", 1, "X-Nat: 1\n"),
    );
    assert_eq!(reply(&out).status(), Some(200));
    let out = n.recv("127.0.0.1:5091", &invite("bob", "z9hG4bK-i3"));
    let fwd = out.iter().find(|(_, m)| m.method().is_some()).expect("forwarded");
    assert_eq!(
        fwd.0,
        "127.0.0.1:40000".parse().unwrap(),
        "sent to the received address, not the private contact"
    );
    assert_eq!(
        fwd.1.ruri().unwrap().to_string(),
        "sip:bob@192.168.1.20:5060",
        "the Request-URI is the contact"
    );
    assert!(
        fwd.1.has_header(&HeaderName::from_text("X-Callee-Nat")),
        "lookup set the NAT flag on the request"
    );
}

#[test]
fn expires_rules_423_max_and_default() {
    let mut n = Net::new();
    let out = n.recv(PHONE, &register("carol", &["<sip:carol@127.0.0.1:5090>"], Some(30), "c3", 1, ""));
    let r = reply(&out);
    assert_eq!(r.status(), Some(423));
    assert_eq!(r.header(&HeaderName::from_text("Min-Expires")).as_deref(), Some(&b"60"[..]));
    let out = n.recv(
        PHONE,
        &register("carol", &["<sip:carol@127.0.0.1:5090>;expires=99999"], None, "c3", 2, ""),
    );
    assert_eq!(
        contacts(reply(&out)),
        vec!["<sip:carol@127.0.0.1:5090>;expires=7200"],
        "capped at max_expires"
    );
    let out = n.recv(PHONE, &register("dave", &["<sip:dave@127.0.0.1:5090>"], None, "c4", 1, ""));
    assert_eq!(
        contacts(reply(&out)),
        vec!["<sip:dave@127.0.0.1:5090>;expires=3600"],
        "default_expires"
    );
}

#[test]
fn several_contacts_q_values_fork_in_order() {
    let mut n = Net::new();
    let out = n.recv(
        PHONE,
        &register(
            "erin",
            &["<sip:erin@127.0.0.1:5092>;q=0.5", "<sip:erin@127.0.0.1:5093>;q=0.9"],
            Some(600),
            "c5",
            1,
            "",
        ),
    );
    let r = reply(&out);
    assert_eq!(contacts(r).len(), 2);
    let out = n.recv("127.0.0.1:5091", &invite("erin", "z9hG4bK-i4"));
    let dsts: Vec<SocketAddr> = out.iter().filter(|(_, m)| m.method().is_some()).map(|(d, _)| *d).collect();
    assert_eq!(
        dsts,
        vec!["127.0.0.1:5093".parse().unwrap(), "127.0.0.1:5092".parse().unwrap()],
        "best q first, both branches"
    );
}

#[test]
fn older_cseq_for_the_same_call_id_is_refused() {
    let mut n = Net::new();
    assert_eq!(
        reply(&n.recv(PHONE, &register("fred", &["<sip:fred@127.0.0.1:5090>"], Some(600), "c6", 5, ""))).status(),
        Some(200)
    );
    let out = n.recv(PHONE, &register("fred", &["<sip:fred@127.0.0.1:5090>"], Some(0), "c6", 4, ""));
    assert_eq!(reply(&out).status(), Some(400));
    let out = n.recv("127.0.0.1:5091", &invite("fred", "z9hG4bK-i5"));
    assert!(
        out.iter().any(|(_, m)| m.method().is_some()),
        "the binding survived the stale request"
    );
}

#[test]
fn star_removes_every_binding_and_needs_expires_zero() {
    let mut n = Net::new();
    n.recv(
        PHONE,
        &register(
            "gina",
            &["<sip:gina@127.0.0.1:5092>", "<sip:gina@127.0.0.1:5093>"],
            Some(600),
            "c7",
            1,
            "",
        ),
    );
    let out = n.recv(PHONE, &register("gina", &["*"], Some(600), "c7", 2, ""));
    assert_eq!(reply(&out).status(), Some(400), "* with Expires other than 0");
    let out = n.recv(PHONE, &register("gina", &["*", "<sip:gina@127.0.0.1:5094>"], Some(0), "c7", 3, ""));
    assert_eq!(reply(&out).status(), Some(400), "* with another Contact");
    let out = n.recv(PHONE, &register("gina", &["*"], Some(0), "c7", 4, ""));
    let r = reply(&out);
    assert_eq!(r.status(), Some(200));
    assert!(contacts(r).is_empty());
    let out = n.recv("127.0.0.1:5091", &invite("gina", "z9hG4bK-i6"));
    assert_eq!(reply(&out).status(), Some(404));
}

#[test]
fn a_query_lists_bindings_and_expiry_removes_them() {
    let mut n = Net::new();
    n.recv(PHONE, &register("hank", &["<sip:hank@127.0.0.1:5090>"], Some(60), "c8", 1, ""));
    n.advance(20);
    let out = n.recv(PHONE, &register("hank", &[], None, "c8", 2, ""));
    assert_eq!(
        contacts(reply(&out)),
        vec!["<sip:hank@127.0.0.1:5090>;expires=40"],
        "a REGISTER without Contact is a query"
    );
    n.advance(41);
    let out = n.recv("127.0.0.1:5091", &invite("hank", "z9hG4bK-i7"));
    assert_eq!(reply(&out).status(), Some(404), "expired");
    assert_eq!(n.w.env.shared.store.location.binding_count(), 0, "the sweep removed it");
}

#[test]
fn unregister_one_contact_with_expires_zero() {
    let mut n = Net::new();
    n.recv(
        PHONE,
        &register(
            "ivan",
            &["<sip:ivan@127.0.0.1:5092>", "<sip:ivan@127.0.0.1:5093>"],
            Some(600),
            "c9",
            1,
            "",
        ),
    );
    let out = n.recv(
        PHONE,
        &register("ivan", &["<sip:ivan@127.0.0.1:5092>;expires=0"], None, "c9", 2, ""),
    );
    assert_eq!(contacts(reply(&out)), vec!["<sip:ivan@127.0.0.1:5093>;expires=600"]);
}
