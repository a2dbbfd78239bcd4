//! The protocol core driven without sockets, on a virtual clock: tm, sl,
//! rr and maxfwd behaviour checked message by message (RFC 3261 §16, §17).

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serlua::app::{Overrides, instance};
use serlua::sip::{HeaderName, SipMessage};
use serlua::transport::{Incoming, Proto};
use serlua::worker::Worker;

const UAC: &str = "127.0.0.1:5090";
const UAS: &str = "127.0.0.1:5070";

struct Net {
    w: Worker,
    now: Instant,
}

struct Out {
    dst: SocketAddr,
    msg: SipMessage,
}

const RELAY: &str = r#"
listen = "udp:127.0.0.1:5060"
modparam("tm", "fr_timer", 3)
function route.main()
  if not mf_process_maxfwd_header(10) then sl_send_reply(483, "Too Many Hops"); return end
  if msg.method ~= "REGISTER" then record_route() end
  if loose_route() then route[1](); return end
  if msg.method == "INVITE" and regex_match(msg.ruri, "^sip:slow@") then avp_write("i:5", "inv_timeout") end
  if regex_match(msg.ruri, "^sip:fork@") then append_branch("sip:b@127.0.0.1:5072") end
  if regex_match(msg.ruri, "^sip:busy@") then t_on_failure("1") end
  if regex_match(msg.ruri, "^sip:boom@") then error("deliberate") end
  rewritehostport("127.0.0.1:5070")
  route[1]()
end
route[1] = function()
  if not t_relay() then sl_reply_error() end
end
failure_route[1] = function()
  if t_check_status("486") then
    rewritehostport("127.0.0.1:5071")
    t_relay()
  end
end
"#;

impl Net {
    fn new(script: &str) -> Net {
        let now = Instant::now();
        let w = instance(Path::new("test.lua"), Some(script.to_string()), &Overrides::default(), now).expect("script loads");
        Net { w, now }
    }

    fn recv(&mut self, from: &str, text: &str) {
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
    }

    fn recv_raw(&mut self, from: &str, data: Vec<u8>) {
        self.w.handle(
            self.now,
            Incoming {
                local: 0,
                proto: Proto::Udp,
                src: from.parse().unwrap(),
                conn: None,
                data: Bytes::from(data),
            },
        );
    }

    fn advance(&mut self, secs: f64) {
        // Step in small increments so timers fire at their own times.
        let end = self.now + Duration::from_secs_f64(secs);
        while let Some(at) = self.w.next_timeout() {
            if at > end {
                break;
            }
            self.now = at.max(self.now);
            self.w.handle_timeouts(self.now);
        }
        self.now = end;
        self.w.handle_timeouts(self.now);
    }

    fn sent(&mut self) -> Vec<Out> {
        self.w
            .take_transmits()
            .into_iter()
            .map(|t| Out {
                dst: t.dst,
                msg: SipMessage::parse(t.data).expect("the proxy sends parsable messages"),
            })
            .collect()
    }
}

fn invite(user: &str, branch: &str) -> String {
    format!(
        "INVITE sip:{user}@example.com SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5090;branch={branch}
Max-Forwards: 70
From: <sip:alice@example.com>;tag=a1
To: <sip:{user}@example.com>
Call-ID: call-{branch}
CSeq: 1 INVITE
Contact: <sip:alice@127.0.0.1:5090>
Content-Length: 0

"
    )
}

/// A reply from the UAS to the request the proxy forwarded.
fn reply_to(req: &SipMessage, status: u16, reason: &str, to_tag: Option<&str>) -> String {
    let mut s = format!("SIP/2.0 {status} {reason}\n");
    for v in req.headers(&HeaderName::Via) {
        s += &format!("Via: {}\n", String::from_utf8_lossy(&v));
    }
    for v in req.headers(&HeaderName::RecordRoute) {
        s += &format!("Record-Route: {}\n", String::from_utf8_lossy(&v));
    }
    s += &format!("From: {}\n", String::from_utf8_lossy(&req.header(&HeaderName::From).unwrap()));
    let to = String::from_utf8_lossy(&req.header(&HeaderName::To).unwrap()).to_string();
    match to_tag {
        Some(t) if req.to().tag().is_none() => s += &format!("To: {to};tag={t}\n"),
        _ => s += &format!("To: {to}\n"),
    }
    s += &format!(
        "Call-ID: {}\nCSeq: {}\n",
        req.call_id(),
        String::from_utf8_lossy(&req.header(&HeaderName::CSeq).unwrap())
    );
    s += "Contact: <sip:bob@127.0.0.1:5070>\nContent-Length: 0\n\n";
    s
}

fn only(out: Vec<Out>) -> Out {
    assert_eq!(
        out.len(),
        1,
        "expected exactly one message, got {}: {:?}",
        out.len(),
        out.iter().map(|o| first_line(&o.msg)).collect::<Vec<_>>()
    );
    out.into_iter().next().unwrap()
}

fn first_line(m: &SipMessage) -> String {
    let b = m.to_bytes();
    String::from_utf8_lossy(&b).lines().next().unwrap_or("").to_string()
}

#[test]
fn invite_is_relayed_statefully_with_100_record_route_and_via() {
    let mut n = Net::new(RELAY);
    n.recv(UAC, &invite("bob", "z9hG4bK-1"));
    let out = n.sent();
    assert_eq!(out.len(), 2);
    let trying = &out[0];
    assert_eq!(trying.dst, UAC.parse().unwrap());
    assert_eq!(trying.msg.status(), Some(100));
    let fwd = &out[1].msg;
    assert_eq!(out[1].dst, UAS.parse().unwrap());
    assert_eq!(fwd.ruri().unwrap().to_string(), "sip:bob@127.0.0.1:5070");
    assert_eq!(fwd.vias().len(), 2);
    assert!(fwd.top_via().branch().unwrap().starts_with("z9hG4bK"));
    assert_eq!(fwd.top_via().host.text, "127.0.0.1");
    assert_eq!(fwd.top_via().port, Some(5060));
    assert_eq!(fwd.max_forwards(), Some(69));
    assert_eq!(&*fwd.header(&HeaderName::RecordRoute).unwrap(), b"<sip:127.0.0.1:5060;lr>");
    // Untouched headers go out byte-identical.
    assert_eq!(&*fwd.header(&HeaderName::Contact).unwrap(), b"<sip:alice@127.0.0.1:5090>");
}

#[test]
fn replies_go_upstream_without_our_via() {
    let mut n = Net::new(RELAY);
    n.recv(UAC, &invite("bob", "z9hG4bK-2"));
    let fwd = n.sent().remove(1).msg;
    n.recv(UAS, &reply_to(&fwd, 180, "Ringing", Some("b1")));
    let r = only(n.sent());
    assert_eq!(r.dst, UAC.parse().unwrap());
    assert_eq!(r.msg.status(), Some(180));
    assert_eq!(r.msg.vias().len(), 1);
    assert_eq!(r.msg.top_via().branch(), Some("z9hG4bK-2"));
    n.recv(UAS, &reply_to(&fwd, 200, "OK", Some("b1")));
    let r = only(n.sent());
    assert_eq!(r.msg.status(), Some(200));
    assert_eq!(r.dst, UAC.parse().unwrap());
}

#[test]
fn retransmitted_invite_is_absorbed_and_answered_with_the_last_reply() {
    let mut n = Net::new(RELAY);
    n.recv(UAC, &invite("bob", "z9hG4bK-3"));
    assert_eq!(n.sent().len(), 2);
    n.recv(UAC, &invite("bob", "z9hG4bK-3"));
    let r = only(n.sent());
    assert_eq!(
        r.msg.status(),
        Some(100),
        "a retransmission gets the 100 again, nothing goes downstream"
    );
    assert_eq!(r.dst, UAC.parse().unwrap());
}

#[test]
fn unanswered_branch_is_retransmitted_then_times_out_with_408() {
    let mut n = Net::new(RELAY);
    n.recv(UAC, &invite("bob", "z9hG4bK-4"));
    let first = n.sent().remove(1).msg;
    // Timer A: 0.5 s, then 1 s, then 2 s (RFC 3261 §17.1.1.2), all identical.
    n.advance(0.6);
    let r = only(n.sent());
    assert_eq!(r.dst, UAS.parse().unwrap());
    assert_eq!(r.msg.top_via().branch(), first.top_via().branch());
    n.advance(1.0);
    assert_eq!(only(n.sent()).msg.method().unwrap().as_str(), "INVITE");
    n.advance(1.0);
    assert!(n.sent().is_empty(), "next retransmission is 2 s after the previous one");
    // fr_timer is 3 s in the script.
    n.advance(0.5);
    let out = n.sent();
    let timeout = out.iter().find(|o| o.msg.status().is_some()).expect("a reply upstream");
    assert_eq!(timeout.msg.status(), Some(408));
    assert_eq!(timeout.dst, UAC.parse().unwrap());
    assert!(timeout.msg.to().tag().is_some(), "a locally generated final reply has a To tag");
}

#[test]
fn inv_timeout_avp_shortens_the_wait_after_ringing() {
    let script = RELAY.replace(r#"modparam("tm", "fr_timer", 3)"#, r#"modparam("tm", "fr_timer", 30)"#);
    let mut n = Net::new(&script);
    n.recv(UAC, &invite("slow", "z9hG4bK-5"));
    let fwd = n.sent().remove(1).msg;
    n.recv(UAS, &reply_to(&fwd, 180, "Ringing", Some("s1")));
    assert_eq!(n.sent().len(), 1);
    n.advance(4.9);
    assert!(n.sent().iter().all(|o| o.msg.status() != Some(408)), "no timeout before 5 s");
    n.advance(0.2);
    let out = n.sent();
    assert!(
        out.iter().any(|o| o.msg.status() == Some(408) && o.dst == UAC.parse().unwrap()),
        "408 upstream at 5 s"
    );
    // The ringing branch is cancelled downstream.
    assert!(
        out.iter()
            .any(|o| o.msg.method().map(|m| m.as_str()) == Some("CANCEL") && o.dst == UAS.parse().unwrap())
    );
}

#[test]
fn inv_timeout_avp_bounds_a_silent_next_hop() {
    let script = RELAY.replace(r#"modparam("tm", "fr_timer", 3)"#, r#"modparam("tm", "fr_timer", 30)"#);
    let mut n = Net::new(&script);
    n.recv(UAC, &invite("slow", "z9hG4bK-5b"));
    n.sent();
    n.advance(4.9);
    assert!(n.sent().iter().all(|o| o.msg.status() != Some(408)));
    n.advance(0.2);
    assert!(
        n.sent().iter().any(|o| o.msg.status() == Some(408)),
        "a silent hop times out at inv_timeout, not fr_timer"
    );
}

#[test]
fn cancel_is_answered_forwarded_and_487_passed_back() {
    let mut n = Net::new(RELAY);
    let inv = invite("bob", "z9hG4bK-6");
    n.recv(UAC, &inv);
    let fwd = n.sent().remove(1).msg;
    n.recv(UAS, &reply_to(&fwd, 180, "Ringing", Some("c1")));
    n.sent();
    let cancel = inv
        .replace("INVITE sip:", "CANCEL sip:")
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    n.recv(UAC, &cancel);
    let out = n.sent();
    let ok = out.iter().find(|o| o.msg.status().is_some()).expect("200 for the CANCEL");
    assert_eq!(ok.msg.status(), Some(200));
    assert_eq!(ok.msg.cseq().method.as_str(), "CANCEL");
    let down = out
        .iter()
        .find(|o| o.msg.method().map(|m| m.as_str()) == Some("CANCEL"))
        .expect("CANCEL downstream");
    assert_eq!(down.dst, UAS.parse().unwrap());
    assert_eq!(
        down.msg.top_via().branch(),
        fwd.top_via().branch(),
        "CANCEL has the INVITE's branch"
    );
    assert_eq!(down.msg.ruri(), fwd.ruri());
    // The UAS answers the CANCEL and 487s the INVITE.
    n.recv(UAS, &reply_to(&down.msg, 200, "OK", Some("c1")));
    assert!(n.sent().is_empty(), "the 200 for our CANCEL is absorbed");
    n.recv(UAS, &reply_to(&fwd, 487, "Request Terminated", Some("c1")));
    let out = n.sent();
    let ack = out
        .iter()
        .find(|o| o.msg.method().map(|m| m.as_str()) == Some("ACK"))
        .expect("hop-by-hop ACK for the 487");
    assert_eq!(ack.dst, UAS.parse().unwrap());
    assert_eq!(ack.msg.top_via().branch(), fwd.top_via().branch());
    let up = out.iter().find(|o| o.msg.status() == Some(487)).expect("487 upstream");
    assert_eq!(up.dst, UAC.parse().unwrap());
    // The UAC's ACK for the 487 ends the server transaction here.
    let ack_up = inv
        .replace("INVITE sip:", "ACK sip:")
        .replace("CSeq: 1 INVITE", "CSeq: 1 ACK")
        .replace("To: <sip:bob@example.com>", "To: <sip:bob@example.com>;tag=c1");
    n.recv(UAC, &ack_up);
    assert!(n.sent().is_empty(), "ACK for a non-2xx is absorbed hop by hop");
    n.advance(10.0);
    assert!(n.sent().is_empty(), "no 487 retransmission after the ACK");
}

#[test]
fn negative_final_is_retransmitted_until_acked() {
    let mut n = Net::new(RELAY);
    n.recv(UAC, &invite("bob", "z9hG4bK-7"));
    let fwd = n.sent().remove(1).msg;
    n.recv(UAS, &reply_to(&fwd, 404, "Not Found", Some("n1")));
    let out = n.sent();
    assert!(out.iter().any(|o| o.msg.status() == Some(404)));
    n.advance(0.6);
    let r = only(n.sent());
    assert_eq!(r.msg.status(), Some(404), "timer G retransmits the final reply");
    // A retransmitted 404 from downstream is answered with our ACK again.
    n.recv(UAS, &reply_to(&fwd, 404, "Not Found", Some("n1")));
    let r = only(n.sent());
    assert_eq!(r.msg.method().unwrap().as_str(), "ACK");
}

#[test]
fn failure_route_serially_forks_on_486() {
    let mut n = Net::new(RELAY);
    n.recv(UAC, &invite("busy", "z9hG4bK-8"));
    let fwd = n.sent().remove(1).msg;
    n.recv(UAS, &reply_to(&fwd, 486, "Busy Here", Some("x1")));
    let out = n.sent();
    assert!(
        out.iter().all(|o| o.msg.status() != Some(486)),
        "486 not sent upstream: the failure route relayed again"
    );
    let second = out
        .iter()
        .find(|o| o.msg.method().map(|m| m.as_str()) == Some("INVITE"))
        .expect("new branch");
    assert_eq!(second.dst, "127.0.0.1:5071".parse().unwrap());
    n.recv("127.0.0.1:5071", &reply_to(&second.msg, 200, "OK", Some("y1")));
    let out = n.sent();
    assert!(out.iter().any(|o| o.msg.status() == Some(200) && o.dst == UAC.parse().unwrap()));
}

#[test]
fn parallel_fork_takes_the_2xx_and_cancels_the_other_branch() {
    let mut n = Net::new(RELAY);
    n.recv(UAC, &invite("fork", "z9hG4bK-9"));
    let out = n.sent();
    let invites: Vec<&Out> = out.iter().filter(|o| o.msg.method().is_some()).collect();
    assert_eq!(invites.len(), 2);
    let a = invites.iter().find(|o| o.dst == UAS.parse().unwrap()).unwrap().msg.clone();
    let b = invites
        .iter()
        .find(|o| o.dst == "127.0.0.1:5072".parse().unwrap())
        .unwrap()
        .msg
        .clone();
    assert_ne!(a.top_via().branch(), b.top_via().branch());
    n.recv("127.0.0.1:5072", &reply_to(&b, 180, "Ringing", Some("f2")));
    n.sent();
    n.recv(UAS, &reply_to(&a, 200, "OK", Some("f1")));
    let out = n.sent();
    assert!(out.iter().any(|o| o.msg.status() == Some(200) && o.dst == UAC.parse().unwrap()));
    let c = out
        .iter()
        .find(|o| o.msg.method().map(|m| m.as_str()) == Some("CANCEL"))
        .expect("the ringing branch is cancelled");
    assert_eq!(c.dst, "127.0.0.1:5072".parse().unwrap());
}

#[test]
fn best_reply_prefers_6xx_then_lowest_class() {
    let mut n = Net::new(RELAY);
    n.recv(UAC, &invite("fork", "z9hG4bK-10"));
    let out = n.sent();
    let a = out.iter().find(|o| o.dst == UAS.parse().unwrap()).unwrap().msg.clone();
    let b = out.iter().find(|o| o.dst == "127.0.0.1:5072".parse().unwrap()).unwrap().msg.clone();
    n.recv(UAS, &reply_to(&a, 503, "Service Unavailable", Some("e1")));
    assert!(n.sent().iter().all(|o| o.msg.status().is_none()), "waits for every branch");
    n.recv("127.0.0.1:5072", &reply_to(&b, 404, "Not Found", Some("e2")));
    let out = n.sent();
    assert!(
        out.iter().any(|o| o.msg.status() == Some(404) && o.dst == UAC.parse().unwrap()),
        "4xx beats 5xx"
    );
}

#[test]
fn in_dialog_request_follows_route_and_record_route_is_consumed() {
    let mut n = Net::new(RELAY);
    let bye = "BYE sip:bob@127.0.0.1:5070 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bK-11
Route: <sip:127.0.0.1:5060;lr>
Max-Forwards: 70
From: <sip:alice@example.com>;tag=a1
To: <sip:bob@example.com>;tag=b1
Call-ID: dlg-11
CSeq: 2 BYE
Content-Length: 0

";
    n.recv(UAC, bye);
    let out = n.sent();
    let fwd = only(out);
    assert_eq!(fwd.dst, UAS.parse().unwrap());
    assert!(!fwd.msg.has_header(&HeaderName::Route), "our own Route entry is removed");
    assert_eq!(fwd.msg.ruri().unwrap().to_string(), "sip:bob@127.0.0.1:5070");
}

#[test]
fn loose_route_to_a_next_loose_router() {
    let mut n = Net::new(RELAY);
    let req = "BYE sip:bob@192.0.2.99 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bK-12
Route: <sip:127.0.0.1:5060;lr>, <sip:127.0.0.1:5073;lr>
Max-Forwards: 70
From: <sip:alice@example.com>;tag=a1
To: <sip:bob@example.com>;tag=b1
Call-ID: dlg-12
CSeq: 2 BYE
Content-Length: 0

";
    n.recv(UAC, req);
    let fwd = only(n.sent());
    assert_eq!(fwd.dst, "127.0.0.1:5073".parse().unwrap(), "sent to the next Route");
    assert_eq!(fwd.msg.ruri().unwrap().to_string(), "sip:bob@192.0.2.99", "Request-URI untouched");
    assert_eq!(&*fwd.msg.header(&HeaderName::Route).unwrap(), b"<sip:127.0.0.1:5073;lr>");
}

#[test]
fn strict_router_previous_hop_is_repaired() {
    let mut n = Net::new(RELAY);
    // A strict router put our Record-Route URI in the Request-URI and the
    // real target at the end of the Route set (RFC 3261 §16.4).
    let req = "BYE sip:127.0.0.1:5060;lr SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bK-13
Route: <sip:bob@127.0.0.1:5070>
Max-Forwards: 70
From: <sip:alice@example.com>;tag=a1
To: <sip:bob@example.com>;tag=b1
Call-ID: dlg-13
CSeq: 2 BYE
Content-Length: 0

";
    n.recv(UAC, req);
    let fwd = only(n.sent());
    assert_eq!(fwd.msg.ruri().unwrap().to_string(), "sip:bob@127.0.0.1:5070");
    assert!(!fwd.msg.has_header(&HeaderName::Route));
    assert_eq!(fwd.dst, UAS.parse().unwrap());
}

#[test]
fn max_forwards_zero_gets_483() {
    let mut n = Net::new(RELAY);
    n.recv(UAC, &invite("bob", "z9hG4bK-14").replace("Max-Forwards: 70", "Max-Forwards: 0"));
    let r = only(n.sent());
    assert_eq!(r.msg.status(), Some(483));
    assert_eq!(r.msg.reason(), Some("Too Many Hops"));
}

#[test]
fn overlong_udp_request_gets_513() {
    let mut n = Net::new(RELAY);
    let big = format!("X-Pad: {}\nContent-Length: 0", "x".repeat(5000));
    n.recv(UAC, &invite("bob", "z9hG4bK-15").replace("Content-Length: 0", &big));
    let r = only(n.sent());
    assert_eq!(r.msg.status(), Some(513));
}

#[test]
fn script_error_gives_500_and_names_the_line() {
    let mut n = Net::new(RELAY);
    n.recv(UAC, &invite("boom", "z9hG4bK-16"));
    let r = only(n.sent());
    assert_eq!(r.msg.status(), Some(500));
}

#[test]
fn malformed_request_gets_400_naming_the_fault() {
    let mut n = Net::new(RELAY);
    n.recv(UAC, &invite("bob", "z9hG4bK-17").replace("CSeq: 1 INVITE", "CSeq: x INVITE"));
    // The reply copies the broken CSeq as it was (RFC 3261 §8.2.6), so it
    // is checked as text rather than parsed.
    let out = n.w.take_transmits();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].dst, UAC.parse().unwrap());
    let text = String::from_utf8_lossy(&out[0].data).to_string();
    let status_line = text.lines().next().unwrap();
    assert!(status_line.starts_with("SIP/2.0 400 "), "{status_line}");
    assert!(
        status_line.to_ascii_lowercase().contains("cseq"),
        "reason names the fault: {status_line}"
    );
    assert!(text.contains("Call-ID: call-z9hG4bK-17"));
}

#[test]
fn bad_version_gets_505() {
    let mut n = Net::new(RELAY);
    n.recv(UAC, &invite("bob", "z9hG4bK-18").replacen("SIP/2.0\n", "SIP/7.0\n", 1));
    let r = only(n.sent());
    assert_eq!(r.msg.status(), Some(505));
}

#[test]
fn received_and_rport_are_stamped_on_the_via() {
    let mut n = Net::new(RELAY);
    n.recv(
        "127.0.0.2:40000",
        &invite("bob", "z9hG4bK-19").replace("127.0.0.1:5090;branch", "10.0.0.5:5090;rport;branch"),
    );
    let out = n.sent();
    // The 100 goes back to the source address and port (RFC 3581).
    assert_eq!(out[0].dst, "127.0.0.2:40000".parse().unwrap());
    let fwd = &out[1].msg;
    let v = &fwd.vias()[1];
    assert_eq!(v.received().unwrap().to_string(), "127.0.0.2");
    assert_eq!(v.rport(), Some(Some(40000)));
}

#[test]
fn garbage_is_dropped_silently() {
    let mut n = Net::new(RELAY);
    n.recv_raw(UAC, b"\x00\x01\x02 not sip at all".to_vec());
    n.recv_raw(UAC, vec![]);
    assert!(n.sent().is_empty());
}

#[test]
fn flags_and_avps_survive_into_the_reply_route() {
    let script = r#"
listen = "udp:127.0.0.1:5060"
function route.main()
  setflag(6)
  avp_write("s:hello", "greeting")
  t_on_reply("1")
  rewritehostport("127.0.0.1:5070")
  t_relay()
end
onreply_route[1] = function()
  if isflagset(6) and avp_check("greeting", "eq/s:hello") and msg.status == 180 then
    append_hf("X-Seen: yes\r\n")
  end
end
"#;
    let mut n = Net::new(script);
    n.recv(UAC, &invite("bob", "z9hG4bK-20"));
    let fwd = n.sent().remove(1).msg;
    n.recv(UAS, &reply_to(&fwd, 180, "Ringing", Some("r1")));
    let r = only(n.sent());
    assert_eq!(r.msg.header(&HeaderName::from_text("X-Seen")).as_deref(), Some(&b"yes"[..]));
}

#[test]
fn search_sees_header_lines_and_edits_are_visible() {
    let script = r#"
listen = "udp:127.0.0.1:5060"
function route.main()
  if not search("^Content-Length:[ ]*0") then sl_send_reply(500, "search failed"); return end
  append_hf("X-Added: 1\r\n")
  if not is_present_hf("x-added") then sl_send_reply(500, "edit not visible"); return end
  remove_hf("X-Added")
  if is_present_hf("X-Added") then sl_send_reply(500, "remove not visible"); return end
  strip(1); prefix("99")
  if msg.ruri ~= "sip:99ob@example.com" then sl_send_reply(500, msg.ruri); return end
  sl_send_reply(200, "fine")
end
"#;
    let mut n = Net::new(script);
    n.recv(UAC, &invite("bob", "z9hG4bK-21"));
    let r = only(n.sent());
    assert_eq!(r.msg.status(), Some(200), "reason: {:?}", r.msg.reason());
}

#[test]
fn an_endless_loop_in_a_route_is_stopped_with_500() {
    let script = r#"
listen = "udp:127.0.0.1:5060"
function route.main()
  if msg.method == "INVITE" then while true do end end
  sl_send_reply(200, "OK")
end
"#;
    let mut n = Net::new(script);
    let t0 = std::time::Instant::now();
    n.recv(UAC, &invite("bob", "z9hG4bK-loop"));
    assert!(t0.elapsed() < Duration::from_secs(10));
    let r = only(n.sent());
    assert_eq!(r.msg.status(), Some(500));
    // The worker still routes the next message.
    n.recv(
        UAC,
        &invite("bob", "z9hG4bK-loop2")
            .replace("INVITE sip:", "OPTIONS sip:")
            .replace("CSeq: 1 INVITE", "CSeq: 1 OPTIONS"),
    );
    assert_eq!(only(n.sent()).msg.status(), Some(200));
}

#[test]
fn replace_and_search_append_edit_the_text() {
    let script = r#"
listen = "udp:127.0.0.1:5060"
function route.main()
  if not replace("^Contact: <sip:alice@[^>]*>", "Contact: <sip:alice@192.0.2.7:5090>") then sl_send_reply(500, "no match"); return end
  search_append("^Call-ID: [^\r]*", "-x")
  if replace("^From: (", "broken") then sl_send_reply(500, "bad regex accepted"); return end
  rewritehostport("127.0.0.1:5070")
  t_relay()
end
"#;
    let result = std::panic::catch_unwind(|| Net::new(script));
    assert!(result.is_err(), "a regex that does not compile is refused at load time");
    let script = script.replace(
        r#"  if replace("^From: (", "broken") then sl_send_reply(500, "bad regex accepted"); return end
"#,
        "",
    );
    let mut n = Net::new(&script);
    n.recv(UAC, &invite("bob", "z9hG4bK-22"));
    let out = n.sent();
    assert_eq!(out.len(), 2, "100 and the forwarded INVITE");
    let fwd = &out[1].msg;
    assert_eq!(&*fwd.header(&HeaderName::Contact).unwrap(), b"<sip:alice@192.0.2.7:5090>");
    assert_eq!(fwd.call_id(), "call-z9hG4bK-22-x");
}

#[test]
fn a_late_final_reply_from_a_timed_out_branch_is_acked() {
    let mut n = Net::new(RELAY);
    n.recv(UAC, &invite("slow", "z9hG4bK-23"));
    let fwd = n.sent().remove(1).msg;
    n.recv(UAS, &reply_to(&fwd, 180, "Ringing", Some("l1")));
    n.sent();
    n.advance(5.1);
    let out = n.sent();
    assert!(out.iter().any(|o| o.msg.status() == Some(408)), "timed out upstream");
    assert!(
        out.iter().any(|o| o.msg.method().map(|m| m.as_str()) == Some("CANCEL")),
        "and cancelled downstream"
    );
    // The callee answers the CANCEL with 487 after all: it must get its ACK.
    n.recv(UAS, &reply_to(&fwd, 487, "Request Terminated", Some("l1")));
    let ack = only(n.sent());
    assert_eq!(ack.msg.method().unwrap().as_str(), "ACK");
    assert_eq!(ack.dst, UAS.parse().unwrap());
    assert_eq!(ack.msg.top_via().branch(), fwd.top_via().branch());
    assert!(ack.msg.to().tag().is_some());
}

const RELOAD_V1: &str = r#"
listen = "udp:127.0.0.1:5060"
function route.main()
  t_on_reply("1")
  rewritehostport("127.0.0.1:5070")
  t_relay()
end
onreply_route[1] = function() append_hf("X-Script: one\r\n") end
"#;

/// The documented reload rule: a reply route armed before a reload runs
/// the route of the same name in the new script.
#[test]
fn after_a_reload_armed_reply_routes_run_in_the_new_script() {
    let mut n = Net::new(RELOAD_V1);
    n.recv(UAC, &invite("bob", "z9hG4bK-r1"));
    let fwd = n.sent().remove(1).msg;
    let v2 = RELOAD_V1.replace("X-Script: one", "X-Script: two");
    let (s, _) = serlua::script::Script::load_source(Path::new("v2.lua"), v2, n.w.env.clone()).expect("loads");
    n.w.script = s;
    n.recv(UAS, &reply_to(&fwd, 180, "Ringing", Some("t1")));
    let r = only(n.sent());
    assert_eq!(r.msg.header(&HeaderName::from_text("X-Script")).as_deref(), Some(&b"two"[..]));
}

/// ... and when the new script no longer has that route, the reply is
/// relayed without it and the error is counted.
#[test]
fn after_a_reload_a_vanished_reply_route_is_an_error_not_a_lost_reply() {
    let mut n = Net::new(RELOAD_V1);
    n.recv(UAC, &invite("bob", "z9hG4bK-r2"));
    let fwd = n.sent().remove(1).msg;
    let v2 = RELOAD_V1
        .replace("onreply_route[1] = function() append_hf(\"X-Script: one\\r\\n\") end", "")
        .replace("t_on_reply(\"1\")", "");
    let (s, _) = serlua::script::Script::load_source(Path::new("v2.lua"), v2, n.w.env.clone()).expect("loads");
    n.w.script = s;
    n.recv(UAS, &reply_to(&fwd, 180, "Ringing", Some("t2")));
    let r = only(n.sent());
    assert_eq!(r.msg.status(), Some(180), "relayed anyway");
    assert!(!r.msg.has_header(&HeaderName::from_text("X-Script")));
    assert_eq!(n.w.env.shared.stats.script_errors.load(std::sync::atomic::Ordering::Relaxed), 1);
}

/// An ACK for `user` with `branch` and To-tag `to_tag` (the CSeq and
/// Call-ID of [`invite`]`(user, call_branch)`).
fn ack(user: &str, call_branch: &str, branch: &str, to_tag: &str) -> String {
    format!(
        "ACK sip:{user}@example.com SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5090;branch={branch}
Max-Forwards: 70
From: <sip:alice@example.com>;tag=a1
To: <sip:{user}@example.com>;tag={to_tag}
Call-ID: call-{call_branch}
CSeq: 1 ACK
Content-Length: 0

"
    )
}

/// SER's sl_filter_ACK: the ACK of a reply the proxy sent by itself goes
/// no further, even from a script that routes every ACK onwards (as the
/// reference's configs do) and even on another branch than the INVITE's
/// (a scanner's); an ACK of somebody else's reply is still routed.
#[test]
fn ack_of_our_own_stateless_reply_is_absorbed_before_the_script() {
    const SCRIPT: &str = r#"
listen = "udp:127.0.0.1:5060"
function route.main()
  if msg.method == "ACK" then
    rewritehostport("127.0.0.1:5070")
    t_relay()
    return
  end
  sl_send_reply(404, "User Not Found")
end
"#;
    let mut n = Net::new(SCRIPT);
    n.recv(UAC, &invite("nobody", "z9hG4bK-sl1"));
    let r = only(n.sent());
    assert_eq!(r.msg.status(), Some(404));
    let tag = r.msg.to().tag().expect("our 404 has a To-tag").to_string();
    for branch in ["z9hG4bK-sl1", "z9hG4bK-fresh"] {
        n.recv(UAC, &ack("nobody", "z9hG4bK-sl1", branch, &tag));
        let out = n.sent();
        assert!(
            out.is_empty(),
            "the ACK of our 404 (branch {branch}) was routed: {:?}",
            out.iter().map(|o| first_line(&o.msg)).collect::<Vec<_>>()
        );
    }
    n.recv(UAC, &ack("nobody", "z9hG4bK-sl1", "z9hG4bK-sl2", "theirs"));
    let f = only(n.sent());
    assert_eq!(f.dst, UAS.parse().unwrap());
    assert_eq!(first_line(&f.msg), "ACK sip:nobody@127.0.0.1:5070 SIP/2.0");
}
