//! The media primitives (`force_rtp_proxy`, `use_media_proxy`,
//! `unforce_rtp_proxy`, `end_media_session`) through the sans-IO core,
//! with the real relay behind them (the embedded engine on 127.0.0.1, or
//! ng relays): SDP rewritten to the relay with Content-Length fixed, a
//! second call on one message harmless, bad SDP and an exhausted port
//! range refused with the message untouched, a silent remote relay
//! skipped for the next one within a bounded wait, sessions ended.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use common::net::{Net, forwarded, header};
use serlua::relay::MediaRelay;
use serlua::sip::SipMessage;

const SDP: &str =
    "v=0\r\no=alice 1 1 IN IP4 192.168.1.10\r\ns=-\r\nc=IN IP4 192.168.1.10\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

/// A script relaying everything to 127.0.0.1:5070 after calling `call`
/// on INVITEs (its results go into X-Relay), `end` on BYEs.
/// A free range of `n` ports as `rtp_ports` takes it.
fn free_range(n: u16) -> String {
    let (lo, hi) = common::ports::free_udp_range(n);
    format!("{lo}-{hi}")
}

fn script(relay_params: &str, call: &str) -> String {
    format!(
        r#"
listen = "udp:127.0.0.1:5060"
{relay_params}
function route.main()
  if msg.method == "INVITE" then
    local r = {{}}
    {call}
    append_hf("X-Relay: " .. table.concat(r, " ") .. "\r\n")
  elseif msg.method == "BYE" then
    append_hf("X-Relay: " .. tostring(end_media_session()) .. "\r\n")
  end
  t_relay("127.0.0.1", 5070)
end
"#
    )
}

fn invite(call_id: &str, body: &str) -> String {
    format!(
        "INVITE sip:bob@127.0.0.1:5070 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 192.168.1.10:5060;branch=z9hG4bK{call_id}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@example.com>;tag=a{call_id}\r\n\
         To: <sip:bob@example.com>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:alice@192.168.1.10:5060>\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn bye(call_id: &str) -> String {
    format!(
        "BYE sip:bob@127.0.0.1:5070 SIP/2.0\r\n\
         Via: SIP/2.0/UDP 192.168.1.10:5060;branch=z9hG4bKbye{call_id}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@example.com>;tag=a{call_id}\r\n\
         To: <sip:bob@example.com>;tag=b{call_id}\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 2 BYE\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// Sends an INVITE in, returns the forwarded copy.
fn through(n: &mut Net, call_id: &str, body: &str) -> SipMessage {
    let out = n.recv_bytes(0, serlua::transport::Proto::Udp, "203.0.113.5:5060", invite(call_id, body).into());
    forwarded(&out).1
}

fn body(m: &SipMessage) -> String {
    String::from_utf8_lossy(m.body()).into_owned()
}

fn sessions(n: &Net) -> usize {
    match n.w.env.shared.relay.get() {
        Some(Ok(h)) => h.relay.list().expect("list").len(),
        _ => 0,
    }
}

#[test]
fn offer_rewritten_once_even_when_asked_twice() {
    let params = format!("modparam(\"rtpproxy\", \"rtp_ports\", \"{}\")", free_range(20));
    let mut n = Net::new(
        "media.lua",
        &script(&params, "r[1] = tostring(use_media_proxy()); r[2] = tostring(use_media_proxy())"),
    );
    let m = through(&mut n, "twice", SDP);
    assert_eq!(header(&m, "X-Relay"), "true true");
    let b = body(&m);
    assert!(b.contains("c=IN IP4 127.0.0.1\r\n") && !b.contains("192.168.1.10\r\nt="), "{b}");
    assert!(!b.contains("m=audio 4000 "), "{b}");
    assert_eq!(header(&m, "Content-Length"), m.body().len().to_string(), "Content-Length fixed");
    assert_eq!(sessions(&n), 1);
    // BYE ends the session.
    let out = n.recv("203.0.113.5:5060", &bye("twice").replace("\r\n", "\n"));
    assert_eq!(header(&forwarded(&out).1, "X-Relay"), "true");
    assert_eq!(sessions(&n), 0);
}

#[test]
fn bad_sdp_leaves_the_message_alone() {
    let params = format!("modparam(\"rtpproxy\", \"rtp_ports\", \"{}\")", free_range(8));
    let mut n = Net::new("media.lua", &script(&params, "r[1] = tostring(force_rtp_proxy())"));
    for (i, bad) in [
        "v=0\r\nm=audio nope RTP/AVP 0\r\n",
        "hello\r\n",
        "v=0\r\nc=IN IP4 300.1.1.1\r\nm=audio 4000 RTP/AVP 0\r\n",
    ]
    .iter()
    .enumerate()
    {
        let m = through(&mut n, &format!("bad{i}"), bad);
        assert_eq!(header(&m, "X-Relay"), "false", "{bad:?}");
        assert_eq!(body(&m), *bad, "the body goes on as it came");
        assert_eq!(header(&m, "Content-Length"), bad.len().to_string());
    }
    assert_eq!(sessions(&n), 0);
}

#[test]
fn exhausted_port_range_refuses_the_call() {
    // Four ports: one stream of one call. Another test may grab a port of
    // the range between the probe and the relay's bind: then try another.
    for _attempt in 0..5 {
        let params = format!("modparam(\"rtpproxy\", \"rtp_ports\", \"{}\")", free_range(4));
        let mut n = Net::new("media.lua", &script(&params, "r[1] = tostring(force_rtp_proxy())"));
        if header(&through(&mut n, "first", SDP), "X-Relay") != "true" {
            continue;
        }
        let m = through(&mut n, "second", SDP);
        assert_eq!(header(&m, "X-Relay"), "false");
        assert_eq!(body(&m), SDP, "the refused call's SDP is untouched");
        assert_eq!(sessions(&n), 1);
        return;
    }
    panic!("no four free ports for the first call in five tries");
}

#[test]
fn lookup_only_rewrites_only_known_calls() {
    let params = format!("modparam(\"rtpproxy\", \"rtp_ports\", \"{}\")", free_range(8));
    let mut n = Net::new("media.lua", &script(&params, "r[1] = tostring(force_rtp_proxy(\"l\"))"));
    let m = through(&mut n, "unknown", SDP);
    assert_eq!(header(&m, "X-Relay"), "false");
    assert_eq!(body(&m), SDP);
}

/// A UDP socket that never answers: a relay that is down.
fn silent() -> (UdpSocket, SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let a = s.local_addr().expect("addr");
    (s, a)
}

#[test]
fn a_silent_relay_is_skipped_for_the_next() {
    let engine = serlua::relay::engine::Engine::start(serlua::relay::engine::EngineConfig {
        ports: {
            let r = free_range(20);
            let (a, b) = r.split_once('-').expect("range");
            (a.parse().expect("port"), b.parse().expect("port"))
        },
        ..Default::default()
    })
    .expect("engine");
    let server = serlua::relay::ng::serve("127.0.0.1:0".parse().expect("addr"), engine.clone()).expect("ng server");
    let live = server.local_addr();
    let (_dead_sock, dead) = silent();
    // The dead relay first in the list, and Call-IDs that hash to it (the
    // client's own choice, asked of a client with the same list): each
    // call must fall over to the live relay.
    let params = format!("modparam(\"rtpproxy\", \"relay\", \"ng:udp:{dead} ng:udp:{live}\")");
    let names = [format!("ng:udp:{dead}"), format!("ng:udp:{live}")];
    let chooser = serlua::relay::ng::NgClient::new(&[names[0].as_str(), names[1].as_str()], Duration::from_millis(200)).expect("client");
    let to_dead: Vec<String> = (0..)
        .map(|i| format!("fail{i}"))
        .filter(|c| chooser.relay_for(c) == 0)
        .take(4)
        .collect();
    let mut n = Net::new("media.lua", &script(&params, "r[1] = tostring(force_rtp_proxy())"));
    for call_id in &to_dead {
        let t = Instant::now();
        let m = through(&mut n, call_id, SDP);
        assert_eq!(header(&m, "X-Relay"), "true", "call {call_id}");
        assert!(t.elapsed() < Duration::from_secs(3), "bounded wait: {:?}", t.elapsed());
    }
    assert_eq!(engine.list().expect("list").len(), 4, "every call reached the live relay");

    // Only a dead relay: false within the bounded wait, SDP untouched.
    let (_dead2_sock, dead2) = silent();
    let params = format!("modparam(\"rtpproxy\", \"relay\", \"ng:udp:{dead2}\")");
    let mut n = Net::new("media.lua", &script(&params, "r[1] = tostring(force_rtp_proxy())"));
    let t = Instant::now();
    let m = through(&mut n, "nobody", SDP);
    assert_eq!(header(&m, "X-Relay"), "false");
    assert_eq!(body(&m), SDP);
    assert!(t.elapsed() < Duration::from_secs(3), "bounded wait: {:?}", t.elapsed());
}
