//! The trace reader on captures built here frame by frame (every link
//! type, IPv6, TCP split/retransmitted/reordered, damaged files) and on
//! the recorded captures in tests/traces.

use super::*;
use etherparse::{LinuxSllPacketType, PacketBuilder};

const REGISTER: &str = "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-1;rport\r\nFrom: <sip:alice@example.com>;tag=1\r\nTo: <sip:alice@example.com>\r\nCall-ID: c1\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n";
const OPTIONS_BODY: &str = "OPTIONS sip:example.com SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5061;branch=z9hG4bK-2\r\nFrom: <sip:alice@example.com>;tag=1\r\nTo: <sip:alice@example.com>\r\nCall-ID: c2\r\nCSeq: 2 OPTIONS\r\nContent-Length: 5\r\n\r\nhello";

/// A little-endian, microsecond pcap file of `frames` (time in µs, bytes).
fn pcap(linktype: u32, frames: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    f.extend_from_slice(&2u16.to_le_bytes());
    f.extend_from_slice(&4u16.to_le_bytes());
    f.extend_from_slice(&0i32.to_le_bytes());
    f.extend_from_slice(&0u32.to_le_bytes());
    f.extend_from_slice(&65535u32.to_le_bytes());
    f.extend_from_slice(&linktype.to_le_bytes());
    for (t, d) in frames {
        f.extend_from_slice(&((t / 1_000_000) as u32).to_le_bytes());
        f.extend_from_slice(&((t % 1_000_000) as u32).to_le_bytes());
        f.extend_from_slice(&(d.len() as u32).to_le_bytes());
        f.extend_from_slice(&(d.len() as u32).to_le_bytes());
        f.extend_from_slice(d);
    }
    f
}

fn udp4(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([1; 6], [2; 6]).ipv4(src, dst, 64).udp(sport, dport);
    let mut v = Vec::new();
    b.write(&mut v, payload).expect("packet builds");
    v
}

/// An IP packet without link header.
fn ip_udp4(payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ipv4([127, 0, 0, 1], [127, 0, 0, 2], 64).udp(5061, 5060);
    let mut v = Vec::new();
    b.write(&mut v, payload).expect("packet builds");
    v
}

fn tcp4(sport: u16, dport: u16, seq: u32, syn: bool, payload: &[u8]) -> Vec<u8> {
    let b = PacketBuilder::ethernet2([1; 6], [2; 6])
        .ipv4([127, 0, 0, 1], [127, 0, 0, 1], 64)
        .tcp(sport, dport, seq, 65535);
    let b = if syn { b.syn() } else { b.ack(1).psh() };
    let mut v = Vec::new();
    b.write(&mut v, payload).expect("packet builds");
    v
}

fn one(msgs: &[TraceMsg]) -> &TraceMsg {
    assert_eq!(msgs.len(), 1, "one message expected: {msgs:?}");
    &msgs[0]
}

#[test]
fn ethernet_ipv4_udp() {
    let file = pcap(
        1,
        &[(1_500_000, udp4([10, 0, 0, 1], 5061, [10, 0, 0, 2], 5060, REGISTER.as_bytes()))],
    );
    let msgs = decode("t.pcap", &file).expect("decodes");
    let m = one(&msgs);
    assert_eq!(m.src, "10.0.0.1:5061".parse().unwrap());
    assert_eq!(m.dst, "10.0.0.2:5060".parse().unwrap());
    assert_eq!(m.proto, Proto::Udp);
    assert_eq!(m.time, Duration::from_millis(1500));
    assert_eq!(&m.data[..], REGISTER.as_bytes());
}

#[test]
fn ipv6_udp() {
    let b = PacketBuilder::ethernet2([1; 6], [2; 6])
        .ipv6(
            [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5],
            64,
        )
        .udp(5061, 5060);
    let mut frame = Vec::new();
    b.write(&mut frame, REGISTER.as_bytes()).unwrap();
    let msgs = decode("v6.pcap", &pcap(1, &[(0, frame)])).unwrap();
    let m = one(&msgs);
    assert_eq!(m.src, "[::1]:5061".parse().unwrap());
    assert_eq!(m.dst, "[2001:db8::5]:5060".parse().unwrap());
}

#[test]
fn linux_sll_sll2_null_loop_and_raw() {
    let ip = ip_udp4(REGISTER.as_bytes());
    let mut sll = Vec::new();
    PacketBuilder::linux_sll(LinuxSllPacketType::HOST, 6, [1, 2, 3, 4, 5, 6, 0, 0])
        .ipv4([127, 0, 0, 1], [127, 0, 0, 2], 64)
        .udp(5061, 5060)
        .write(&mut sll, REGISTER.as_bytes())
        .unwrap();
    // SLL2: protocol, reserved, ifindex, hatype, pkttype, halen, address.
    let mut sll2 = vec![0x08, 0x00, 0, 0, 0, 0, 0, 1, 0, 1, 0, 6];
    sll2.extend_from_slice(&[1, 2, 3, 4, 5, 6, 0, 0]);
    sll2.extend_from_slice(&ip);
    // NULL: AF_INET (2) in the writer's byte order; LOOP: network order.
    let mut null = 2u32.to_le_bytes().to_vec();
    null.extend_from_slice(&ip);
    let mut lo = 2u32.to_be_bytes().to_vec();
    lo.extend_from_slice(&ip);
    for (lt, frame) in [(113, sll), (276, sll2), (0, null), (108, lo), (101, ip.clone()), (228, ip.clone())] {
        let msgs = decode("lt.pcap", &pcap(lt, &[(0, frame)])).unwrap_or_else(|e| panic!("link type {lt}: {e}"));
        let m = one(&msgs);
        assert_eq!(m.src, "127.0.0.1:5061".parse().unwrap(), "link type {lt}");
        assert_eq!(m.dst, "127.0.0.2:5060".parse().unwrap(), "link type {lt}");
    }
}

#[test]
fn unsupported_link_type_is_an_error_at_the_header() {
    let e = decode("usb.pcap", &pcap(189, &[])).unwrap_err().to_string();
    assert!(
        e.contains("usb.pcap") && e.contains("offset 20") && e.contains("link type 189"),
        "{e}"
    );
}

#[test]
fn non_sip_udp_and_keepalives_are_skipped() {
    let rtp = [0x80u8, 0, 0, 1, 0, 0, 0, 160, 1, 2, 3, 4, 0xff, 0xff];
    let file = pcap(
        1,
        &[
            (0, udp4([1, 1, 1, 1], 4000, [2, 2, 2, 2], 4002, &rtp)),
            (1, udp4([1, 1, 1, 1], 5060, [2, 2, 2, 2], 5060, b"\r\n\r\n")),
            (2, udp4([1, 1, 1, 1], 5060, [2, 2, 2, 2], 5060, REGISTER.as_bytes())),
        ],
    );
    assert_eq!(decode("mixed.pcap", &file).unwrap().len(), 1);
}

#[test]
fn tcp_message_split_over_segments_with_retransmission_and_reordering() {
    let msg = OPTIONS_BODY.as_bytes();
    let (a, rest) = msg.split_at(40);
    let (b, c) = rest.split_at(60);
    let isn = 4_294_967_000u32; // the sequence space wraps inside the message
    let seq = |off: usize| isn.wrapping_add(1).wrapping_add(off as u32);
    let file = pcap(
        1,
        &[
            (0, tcp4(5061, 5060, isn, true, b"")),
            (10, tcp4(5061, 5060, seq(0), false, a)),
            // The first segment again (a retransmission), then the third
            // before the second.
            (20, tcp4(5061, 5060, seq(0), false, a)),
            (30, tcp4(5061, 5060, seq(100), false, c)),
            (40, tcp4(5061, 5060, seq(40), false, b)),
            // A second message with the retransmitted tail of the first.
            (50, tcp4(5061, 5060, seq(90), false, &[&msg[90..], REGISTER.as_bytes()].concat())),
        ],
    );
    let msgs = decode("split.pcap", &file).unwrap();
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert_eq!(&msgs[0].data[..], msg);
    assert_eq!(msgs[0].proto, Proto::Tcp);
    assert_eq!(msgs[0].time, Duration::from_micros(40), "the segment that completed it");
    assert_eq!(&msgs[1].data[..], REGISTER.as_bytes());
}

#[test]
fn non_sip_tcp_streams_are_ignored() {
    let tls = [0x16u8, 3, 1, 0, 200, 1, 0, 0, 196, 3, 3, 9, 9, 9, 9, 9, 9, 9, 9, 9];
    let file = pcap(
        1,
        &[
            (0, tcp4(40000, 443, 1, false, &tls)),
            (1, tcp4(5061, 5060, 7, false, REGISTER.as_bytes())),
        ],
    );
    let msgs = decode("tls.pcap", &file).unwrap();
    assert_eq!(one(&msgs).dst.port(), 5060);
}

#[test]
fn damaged_pcap_names_the_file_and_offset() {
    let mut file = pcap(1, &[(0, udp4([1, 1, 1, 1], 5060, [2, 2, 2, 2], 5060, REGISTER.as_bytes()))]);
    let second_record = file.len();
    // A record header claiming more bytes than the file holds.
    file.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0xff, 0xff, 0, 0, 1, 2, 3]);
    let e = decode("cut.pcap", &file).unwrap_err();
    match &e {
        TraceError::Damaged { file, offset, .. } => {
            assert_eq!(file, "cut.pcap");
            assert_eq!(*offset, second_record as u64);
        }
        other => panic!("{other:?}"),
    }
    assert!(
        e.to_string().contains(&format!("cut.pcap: damaged at byte offset {second_record}")),
        "{e}"
    );
    // A header cut short.
    let e = decode("short.pcap", &file[..10]).unwrap_err().to_string();
    assert!(e.contains("short.pcap: damaged at byte offset 0"), "{e}");
}

#[test]
fn big_endian_nanosecond_pcap() {
    let frame = udp4([1, 1, 1, 1], 5061, [2, 2, 2, 2], 5060, REGISTER.as_bytes());
    let mut f = Vec::new();
    f.extend_from_slice(&0xa1b2_3c4du32.to_be_bytes());
    f.extend_from_slice(&2u16.to_be_bytes());
    f.extend_from_slice(&4u16.to_be_bytes());
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(&65535u32.to_be_bytes());
    f.extend_from_slice(&1u32.to_be_bytes());
    f.extend_from_slice(&7u32.to_be_bytes());
    f.extend_from_slice(&123_456_789u32.to_be_bytes());
    f.extend_from_slice(&(frame.len() as u32).to_be_bytes());
    f.extend_from_slice(&(frame.len() as u32).to_be_bytes());
    f.extend_from_slice(&frame);
    let msgs = decode("be.pcap", &f).unwrap();
    assert_eq!(one(&msgs).time, Duration::new(7, 123_456_789));
}

/// A pcapng block: type, total length, body (padded), total length.
fn block(kind: u32, body: &[u8]) -> Vec<u8> {
    let mut body = body.to_vec();
    while body.len() % 4 != 0 {
        body.push(0);
    }
    let len = (body.len() + 12) as u32;
    let mut b = kind.to_le_bytes().to_vec();
    b.extend_from_slice(&len.to_le_bytes());
    b.extend_from_slice(&body);
    b.extend_from_slice(&len.to_le_bytes());
    b
}

fn pcapng(linktype: u16, tsresol: u8, packets: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let mut shb = 0x1a2b_3c4du32.to_le_bytes().to_vec();
    shb.extend_from_slice(&1u16.to_le_bytes());
    shb.extend_from_slice(&0u16.to_le_bytes());
    shb.extend_from_slice(&(-1i64).to_le_bytes());
    let mut f = block(0x0a0d_0d0a, &shb);
    let mut idb = linktype.to_le_bytes().to_vec();
    idb.extend_from_slice(&0u16.to_le_bytes());
    idb.extend_from_slice(&65535u32.to_le_bytes());
    // if_tsresol (9), length 1, value, padding; then opt_endofopt.
    idb.extend_from_slice(&[9, 0, 1, 0, tsresol, 0, 0, 0, 0, 0, 0, 0]);
    f.extend_from_slice(&block(1, &idb));
    for (ticks, data) in packets {
        let mut epb = 0u32.to_le_bytes().to_vec();
        epb.extend_from_slice(&((ticks >> 32) as u32).to_le_bytes());
        epb.extend_from_slice(&(*ticks as u32).to_le_bytes());
        epb.extend_from_slice(&(data.len() as u32).to_le_bytes());
        epb.extend_from_slice(&(data.len() as u32).to_le_bytes());
        epb.extend_from_slice(data);
        f.extend_from_slice(&block(6, &epb));
    }
    f
}

#[test]
fn pcapng_with_nanosecond_interface() {
    let frame = udp4([1, 1, 1, 1], 5061, [2, 2, 2, 2], 5060, REGISTER.as_bytes());
    let file = pcapng(1, 9, &[(2_000_000_001, frame)]);
    let msgs = decode("n.pcapng", &file).unwrap();
    assert_eq!(one(&msgs).time, Duration::new(2, 1));
    // Cut inside the packet block: the offset is that block's.
    let epb_at = 28 + 32;
    let e = decode("n.pcapng", &file[..file.len() - 3]).unwrap_err();
    match e {
        TraceError::Damaged { offset, .. } => assert_eq!(offset, epb_at as u64),
        other => panic!("{other:?}"),
    }
}

#[test]
fn sngrep_text_export() {
    let text = format!(
        "2024/05/01 10:00:00.250000 192.0.2.10:5060 -> 192.0.2.13:5060\n{REGISTER}\n\n2024/05/01 10:00:01.000000 2001:db8::1:5060 -> 2001:db8::2:5060\n{OPTIONS_BODY}\n\n"
    );
    let msgs = decode("export.txt", text.as_bytes()).unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0].src, "192.0.2.10:5060".parse().unwrap());
    assert_eq!(msgs[1].dst, "[2001:db8::2]:5060".parse().unwrap());
    assert_eq!(msgs[1].time - msgs[0].time, Duration::from_millis(750));
    assert_eq!(&msgs[0].data[..], REGISTER.as_bytes());
    assert_eq!(&msgs[1].data[..], OPTIONS_BODY.as_bytes());
    assert_eq!(msgs[1].proto, Proto::Tcp, "from the Via");
}

#[test]
fn plain_text_with_lf_line_ends() {
    let text = "INVITE sip:bob@example.com SIP/2.0\nVia: SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bK1\nFrom: <sip:a@example.com>;tag=1\nTo: <sip:bob@example.com>\nCall-ID: x\nCSeq: 1 INVITE\nContent-Length: 5\n\nv=0\n\nSIP/2.0 100 Trying\nVia: SIP/2.0/UDP 192.0.2.1:5070;branch=z9hG4bK1\nFrom: <sip:a@example.com>;tag=1\nTo: <sip:bob@example.com>\nCall-ID: x\nCSeq: 1 INVITE\n\n";
    let msgs = decode("plain.sip", text.as_bytes()).unwrap();
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert!(msgs[0].data.ends_with(b"\r\n\r\nv=0\r\n"));
    assert_eq!(msgs[0].src, "192.0.2.1:5070".parse().unwrap());
    assert_eq!(msgs[1].dst, "192.0.2.1:5070".parse().unwrap());
    assert!(msgs[1].data.ends_with(b"CSeq: 1 INVITE\r\n\r\n"), "no Content-Length: no body");
}

#[test]
fn damaged_text_names_the_offset() {
    let text = format!("{REGISTER}garbage here\r\n");
    let e = decode("bad.txt", text.as_bytes()).unwrap_err().to_string();
    assert!(e.contains(&format!("bad.txt: damaged at byte offset {}", REGISTER.len())), "{e}");
    let cut = &OPTIONS_BODY.as_bytes()[..OPTIONS_BODY.len() - 2];
    let e = decode("cut.txt", cut).unwrap_err().to_string();
    assert!(e.contains("offset 0") && e.contains("cut short"), "{e}");
}

#[test]
fn arbitrary_bytes_never_panic() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let base = pcap(1, &[(0, udp4([1, 1, 1, 1], 5060, [2, 2, 2, 2], 5060, REGISTER.as_bytes()))]);
    let ng = pcapng(276, 6, &[(5, ip_udp4(REGISTER.as_bytes()))]);
    for round in 0..2000 {
        let mut f = if round % 2 == 0 { base.clone() } else { ng.clone() };
        for _ in 0..4 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let i = (seed as usize) % f.len();
            f[i] = (seed >> 32) as u8;
        }
        let cut = (seed >> 40) as usize % (f.len() + 1);
        let _ = decode("fuzz", &f[..cut]);
    }
}

fn recorded(name: &str) -> Vec<TraceMsg> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/traces").join(name);
    load(&p).unwrap_or_else(|e| panic!("{e}"))
}

fn first_lines(msgs: &[TraceMsg]) -> Vec<String> {
    msgs.iter()
        .map(|m| String::from_utf8_lossy(&m.data).lines().next().unwrap_or("").to_string())
        .collect()
}

#[test]
fn recorded_register_on_every_link_type() {
    for name in ["register_auth.pcap", "register_auth_sll.pcap", "register_auth_sll2.pcap"] {
        let msgs = recorded(name);
        let lines = first_lines(&msgs);
        assert_eq!(
            lines,
            [
                "REGISTER sip:example.com SIP/2.0",
                "SIP/2.0 401 Unauthorized",
                "REGISTER sip:example.com SIP/2.0",
                "SIP/2.0 200 OK"
            ],
            "{name}"
        );
        assert_eq!(msgs[0].dst, "127.0.0.1:5060".parse().unwrap(), "{name}");
    }
}

#[test]
fn recorded_call_pcap_and_pcapng_agree() {
    let a = recorded("call.pcap");
    let b = recorded("call.pcapng");
    assert_eq!(a.len(), 13);
    assert_eq!(first_lines(&a), first_lines(&b));
    assert_eq!(
        a.iter().map(|m| (m.src, m.dst)).collect::<Vec<_>>(),
        b.iter().map(|m| (m.src, m.dst)).collect::<Vec<_>>()
    );
}

#[test]
fn recorded_tcp_split() {
    let msgs = recorded("tcp_split.pcap");
    assert_eq!(first_lines(&msgs), ["REGISTER sip:example.com SIP/2.0", "SIP/2.0 401 Unauthorized"]);
    assert!(msgs.iter().all(|m| m.proto == Proto::Tcp));
    assert!(msgs[0].data.ends_with(b"Content-Length: 0\r\n\r\n"));
}

/// An Ethernet frame holding one IPv4 fragment of a UDP datagram.
fn fragment(id: u16, offset: usize, more: bool, part: &[u8]) -> Vec<u8> {
    let mut ip = etherparse::Ipv4Header::new(part.len() as u16, 64, etherparse::IpNumber::UDP, [10, 0, 0, 1], [10, 0, 0, 2])
        .expect("small fragment");
    ip.identification = id;
    ip.more_fragments = more;
    ip.fragment_offset = etherparse::IpFragOffset::try_new((offset / 8) as u16).expect("offset fits");
    ip.header_checksum = ip.calc_header_checksum();
    let eth = etherparse::Ethernet2Header {
        source: [1; 6],
        destination: [2; 6],
        ether_type: EtherType::IPV4,
    };
    let mut v = eth.to_bytes().to_vec();
    v.extend_from_slice(&ip.to_bytes());
    v.extend_from_slice(part);
    v
}

#[test]
fn ipv4_fragments_are_reassembled() {
    // A UDP datagram larger than one fragment (RFC 791 §2.3): header and
    // payload cut at a multiple of 8 bytes.
    let payload = [REGISTER.as_bytes(), OPTIONS_BODY.as_bytes()].concat();
    let mut dgram = etherparse::UdpHeader {
        source_port: 5061,
        destination_port: 5060,
        length: (8 + payload.len()) as u16,
        checksum: 0,
    }
    .to_bytes()
    .to_vec();
    dgram.extend_from_slice(&payload);
    let cut = 160;
    let file = pcap(
        1,
        &[
            (0, fragment(7, 0, true, &dgram[..cut])),
            (5, fragment(7, cut, false, &dgram[cut..])),
        ],
    );
    let msgs = decode("frag.pcap", &file).unwrap();
    let m = one(&msgs);
    assert_eq!(&m.data[..], &payload[..]);
    assert_eq!(m.time, Duration::from_micros(5));
    assert_eq!(m.src, "10.0.0.1:5061".parse().unwrap());
}
