//! The embedded relay engine through its `MediaRelay` interface, with real
//! UDP sockets on 127.0.0.1: offer/answer rewriting, media both ways,
//! latching a NATed phone, re-INVITEs from either side keeping their
//! ports, a second rewrite of one message, lookup-only, delete, the media
//! timeout, port exhaustion, and SDP it cannot parse.
//!
//!   cargo test --test relay_engine

mod common;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serlua::relay::engine::{Engine, EngineConfig};
use serlua::relay::{MediaRelay, OfferAnswer, RelayError};

fn local(port: u16) -> SocketAddr {
    ([127, 0, 0, 1], port).into()
}

fn engine(ports: u16, timeout: Duration) -> Arc<Engine> {
    Engine::start(EngineConfig {
        bind: IpAddr::from([127, 0, 0, 1]),
        advertise: None,
        ports: common::ports::free_udp_range(ports),
        media_timeout: timeout,
        threads: 1,
    })
    .expect("engine starts")
}

fn sdp(ip: &str, port: u16) -> String {
    format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n"
    )
}

fn req<'a>(call_id: &'a str, from_tag: &'a str, to_tag: Option<&'a str>, sdp: &'a str, source: &str) -> OfferAnswer<'a> {
    OfferAnswer {
        call_id,
        from_tag,
        to_tag,
        sdp: sdp.as_bytes(),
        lookup_only: false,
        from_uri: "sip:alice@example.com",
        to_uri: "sip:bob@example.com",
        source: source.parse().ok(),
    }
}

/// The (c= address, m= port) of the first stream of an SDP.
fn media_addr(sdp: &[u8]) -> SocketAddr {
    let text = String::from_utf8_lossy(sdp);
    let ip = text.lines().find_map(|l| l.strip_prefix("c=IN IP4 ")).expect("c= line").trim();
    let port = text
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|r| r.split(' ').next())
        .expect("m= line");
    SocketAddr::new(ip.parse().expect("ip"), port.parse().expect("port"))
}

fn recv_tagged(sock: &UdpSocket, tag: u8, n: usize) -> (usize, Option<SocketAddr>) {
    let _ = sock.set_read_timeout(Some(Duration::from_millis(100)));
    let deadline = Instant::now() + Duration::from_secs(2);
    let (mut got, mut from) = (0, None);
    let mut buf = [0u8; 1500];
    while got < n && Instant::now() < deadline {
        if let Ok((len, src)) = sock.recv_from(&mut buf) {
            if len > 0 && buf[len - 1] == tag {
                got += 1;
                from = Some(src);
            }
        }
    }
    (got, from)
}

fn send_n(sock: &UdpSocket, to: SocketAddr, tag: u8, n: usize) {
    for i in 0..n {
        let mut p = vec![0x80u8, 0, 0, i as u8, 0, 0, 0, 0, 1, 2, 3, 4];
        p.extend(std::iter::repeat_n(tag, 160));
        let _ = sock.send_to(&p, to);
    }
}

/// Offer and answer for a call between two test sockets; returns the
/// relay addresses (alice sends to the first, bob to the second).
fn call(e: &Engine, call_id: &str, a: &UdpSocket, a_ip: &str, b: &UdpSocket, b_ip: &str) -> (SocketAddr, SocketAddr) {
    let offer = sdp(a_ip, a.local_addr().expect("a").port());
    let out = e.offer(&req(call_id, "ta", None, &offer, "127.0.0.1")).expect("offer");
    let to_bob = media_addr(&out);
    let answer = sdp(b_ip, b.local_addr().expect("b").port());
    let out = e.answer(&req(call_id, "ta", Some("tb"), &answer, "127.0.0.1")).expect("answer");
    let to_alice = media_addr(&out);
    (to_alice, to_bob)
}

#[test]
fn offer_answer_and_media_both_ways() {
    let e = engine(40, Duration::from_secs(60));
    let a = UdpSocket::bind(local(0)).expect("bind");
    let b = UdpSocket::bind(local(0)).expect("bind");
    let (to_alice_side, to_bob_side) = call(&e, "c1", &a, "127.0.0.1", &b, "127.0.0.1");
    assert_ne!(to_alice_side, to_bob_side);
    assert!(to_alice_side.ip().is_loopback());
    send_n(&a, to_alice_side, 0xa1, 20);
    let (got, from) = recv_tagged(&b, 0xa1, 20);
    assert_eq!(got, 20, "alice → bob through the relay");
    assert_eq!(from, Some(to_bob_side), "bob hears the relay from the port he sends to");
    send_n(&b, to_bob_side, 0xb1, 20);
    let (got, from) = recv_tagged(&a, 0xb1, 20);
    assert_eq!(got, 20, "bob → alice through the relay");
    assert_eq!(from, Some(to_alice_side));
    // The forwarding thread counts a batch right after sending it: the
    // counters may trail the packets by a moment.
    let deadline = Instant::now() + Duration::from_secs(2);
    let s = loop {
        let s = e.query("c1").expect("query");
        if (s.streams[0].caller.packets, s.streams[0].callee.packets) == (20, 20) || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(s.streams.len(), 1);
    assert_eq!(s.streams[0].caller.packets, 20);
    assert_eq!(s.streams[0].callee.packets, 20);
    assert_eq!(s.streams[0].caller.latched, a.local_addr().ok());
    assert!(s.streams[0].codecs.iter().any(|c| c == "PCMU/8000"), "{:?}", s.streams[0].codecs);
    assert_eq!(s.to_tag.as_deref(), Some("tb"));
    e.delete("c1", Some("ta"), None).expect("delete");
    assert!(matches!(e.query("c1"), Err(RelayError::NotFound(_))));
    // After delete, media is no longer relayed.
    send_n(&a, to_alice_side, 0xa2, 5);
    assert_eq!(recv_tagged(&b, 0xa2, 5).0, 0);
}

#[test]
fn nated_phone_is_reached_at_its_source_and_latched() {
    let e = engine(40, Duration::from_secs(60));
    let a = UdpSocket::bind(local(0)).expect("bind");
    let b = UdpSocket::bind(local(0)).expect("bind");
    // bob announces a private address; his SIP came from 127.0.0.1.
    let (to_alice_side, to_bob_side) = call(&e, "c2", &a, "127.0.0.1", &b, "192.168.1.20");
    // Before bob sends anything, alice's media goes to bob's real host.
    send_n(&a, to_alice_side, 0xa1, 10);
    assert_eq!(recv_tagged(&b, 0xa1, 10).0, 10);
    send_n(&b, to_bob_side, 0xb1, 10);
    assert_eq!(recv_tagged(&a, 0xb1, 10).0, 10);
    let s = e.query("c2").expect("query");
    assert_eq!(s.streams[0].callee.latched, b.local_addr().ok());
    assert_eq!(
        s.streams[0].callee.announced.map(|x| x.ip().to_string()),
        Some("192.168.1.20".into())
    );
}

#[test]
fn reinvites_keep_ports_and_a_second_rewrite_is_harmless() {
    let e = engine(40, Duration::from_secs(60));
    let a = UdpSocket::bind(local(0)).expect("bind");
    let b = UdpSocket::bind(local(0)).expect("bind");
    let (to_alice_side, to_bob_side) = call(&e, "c3", &a, "127.0.0.1", &b, "127.0.0.1");
    // alice re-INVITEs (same From tag): same ports.
    let re = sdp("127.0.0.1", a.local_addr().expect("a").port());
    let out = e.offer(&req("c3", "ta", Some("tb"), &re, "127.0.0.1")).expect("re-offer");
    assert_eq!(media_addr(&out), to_bob_side);
    // The rewritten offer handed in again (use_media_proxy twice): no
    // change, and the relay does not start sending to itself.
    let again = e
        .offer(&req("c3", "ta", Some("tb"), std::str::from_utf8(&out).expect("utf8"), "127.0.0.1"))
        .expect("again");
    assert_eq!(media_addr(&again), to_bob_side);
    let ans = sdp("127.0.0.1", b.local_addr().expect("b").port());
    let out = e.answer(&req("c3", "ta", Some("tb"), &ans, "127.0.0.1")).expect("re-answer");
    assert_eq!(media_addr(&out), to_alice_side);
    // bob re-INVITEs (his tag in From): the offer goes to alice.
    let out = e.offer(&req("c3", "tb", Some("ta"), &ans, "127.0.0.1")).expect("bob's re-offer");
    assert_eq!(media_addr(&out), to_alice_side);
    let out = e.answer(&req("c3", "tb", Some("ta"), &re, "127.0.0.1")).expect("alice's re-answer");
    assert_eq!(media_addr(&out), to_bob_side);
    send_n(&a, to_alice_side, 0xa1, 10);
    assert_eq!(recv_tagged(&b, 0xa1, 10).0, 10, "media still flows after the re-INVITEs");
    send_n(&b, to_bob_side, 0xb1, 10);
    assert_eq!(recv_tagged(&a, 0xb1, 10).0, 10);
}

#[test]
fn lookup_only_and_answer_need_a_session() {
    let e = engine(8, Duration::from_secs(60));
    let s = sdp("127.0.0.1", 4000);
    let mut r = req("nope", "t", None, &s, "127.0.0.1");
    r.lookup_only = true;
    assert!(matches!(e.offer(&r), Err(RelayError::NotFound(_))));
    assert!(matches!(
        e.answer(&req("nope", "t", Some("u"), &s, "127.0.0.1")),
        Err(RelayError::NotFound(_))
    ));
    assert!(e.list().expect("list").is_empty());
}

#[test]
fn bad_sdp_is_refused_and_changes_nothing() {
    let e = engine(8, Duration::from_secs(60));
    for bad in [
        "",
        "hello",
        "v=0\r\nm=audio x RTP/AVP 0\r\n",
        "v=0\r\nc=IN IP4 999.1.1.1\r\nm=audio 4000 RTP/AVP 0\r\n",
    ] {
        let r = e.offer(&req("bad", "t", None, bad, "127.0.0.1"));
        assert!(
            matches!(r, Err(RelayError::BadSdp(_)) | Err(RelayError::NoSdp)),
            "{bad:?} gave {r:?}"
        );
    }
    assert!(e.list().expect("list").is_empty(), "a refused offer leaves no session");
}

#[test]
fn port_range_exhausted_is_a_clear_error() {
    // 4 ports: one stream (two RTP/RTCP pairs).
    let e = engine(4, Duration::from_secs(60));
    let s = sdp("127.0.0.1", 4000);
    e.offer(&req("one", "t", None, &s, "127.0.0.1")).expect("first call fits");
    match e.offer(&req("two", "t", None, &s, "127.0.0.1")) {
        Err(RelayError::PortsExhausted(range)) => assert!(range.contains('-'), "{range}"),
        other => panic!("expected PortsExhausted, got {other:?}"),
    }
    assert_eq!(e.list().expect("list").len(), 1, "the failed call left no half session");
    e.delete("one", None, None).expect("delete");
    // The forwarding thread closes the sockets and returns the ports.
    let deadline = Instant::now() + Duration::from_secs(2);
    while e.offer(&req("three", "t", None, &s, "127.0.0.1")).is_err() {
        assert!(Instant::now() < deadline, "ports not free again after the delete");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn idle_sessions_time_out() {
    let e = engine(8, Duration::from_secs(1));
    let s = sdp("127.0.0.1", 4000);
    e.offer(&req("idle", "t", None, &s, "127.0.0.1")).expect("offer");
    e.expire(Instant::now());
    assert_eq!(e.session_count(), 1, "not yet");
    e.expire(Instant::now() + Duration::from_secs(2));
    assert_eq!(e.session_count(), 0, "gone after media_timeout without packets");
    assert_eq!(e.timed_out(), 1);
}

#[test]
fn several_streams_and_hold() {
    let e = engine(40, Duration::from_secs(60));
    let offer = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                 m=audio 4000 RTP/AVP 0\r\na=rtcp:4001\r\nm=video 4002 RTP/AVP 96\r\na=rtpmap:96 H264/90000\r\n";
    let out = e.offer(&req("multi", "t", None, offer, "127.0.0.1")).expect("offer");
    let text = String::from_utf8(out).expect("utf8");
    let ports: Vec<u16> = text
        .lines()
        .filter_map(|l| l.strip_prefix("m="))
        .map(|l| l.split(' ').nth(1).expect("port").parse().expect("port"))
        .collect();
    assert_eq!(ports.len(), 2);
    assert_ne!(ports[0], ports[1]);
    assert!(!text.contains("4000") && !text.contains("4002"), "{text}");
    assert!(text.contains(&format!("a=rtcp:{}", ports[0] + 1)), "{text}");
    // Hold (RFC 2543 style): the address stays 0.0.0.0, the ports stay ours.
    let hold = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n\
                m=audio 4000 RTP/AVP 0\r\na=sendonly\r\nm=video 4002 RTP/AVP 96\r\n";
    let out = e.offer(&req("multi", "t", None, hold, "127.0.0.1")).expect("hold");
    let text = String::from_utf8(out).expect("utf8");
    assert!(text.contains("c=IN IP4 0.0.0.0") && text.contains("a=sendonly"), "{text}");
    assert!(text.contains(&format!("m=audio {} ", ports[0])), "{text}");
    assert_eq!(e.query("multi").expect("query").streams.len(), 2);
}
