//! Parser cost: the time to parse a typical 600-byte INVITE, and to clone
//! it, add a Via, rewrite Max-Forwards and serialise it (what a proxy does
//! to every request it forwards).
//!
//! `cargo bench --bench parse` (release; prints the median of 5 runs).
//! Under `cargo test` it runs a few iterations only, as a smoke test.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serlua::sip::{HeaderName, SipMessage};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n: u32 = if full { 200_000 } else { 100 };
    let invite: &[u8] = b"INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP pc33.atlanta.example.com:5060;branch=z9hG4bK776asdhds;rport\r\n\
Max-Forwards: 70\r\n\
To: Bob <sip:bob@biloxi.example.com>\r\n\
From: Alice <sip:alice@atlanta.example.com>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.example.com\r\n\
CSeq: 314159 INVITE\r\n\
Contact: <sip:alice@pc33.atlanta.example.com:5060>\r\n\
Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, MESSAGE\r\n\
Supported: replaces, timer\r\n\
User-Agent: serlua-bench/1.0\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 142\r\n\
\r\n\
v=0\r\n\
o=alice 2890844526 2890844526 IN IP4 pc33.atlanta.example.com\r\n\
s=-\r\n\
c=IN IP4 192.0.2.101\r\n\
t=0 0\r\n\
m=audio 49172 RTP/AVP 0\r\n\
a=rtpmap:0 PCMU/8000\r\n";
    let buf = Bytes::from_static(invite);
    let m = SipMessage::parse(buf.clone()).expect("parses");
    let mut parse = Vec::new();
    let mut edit = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..n {
            black_box(SipMessage::parse(black_box(buf.clone())).expect("parses"));
        }
        parse.push(t.elapsed() / n);
        let t = Instant::now();
        for _ in 0..n {
            let mut e = m.clone();
            e.insert_first(HeaderName::Via, b"SIP/2.0/UDP 192.0.2.1;branch=z9hG4bKx");
            e.set_header(HeaderName::MaxForwards, b"69");
            black_box(e.to_bytes());
        }
        edit.push(t.elapsed() / n);
    }
    println!(
        "{}-byte INVITE: parse {:?}/message; clone + 2 edits + serialise {:?} (median of 5 runs of {n})",
        invite.len(),
        median(parse),
        median(edit)
    );
}
