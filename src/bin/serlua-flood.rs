//! serlua-flood: sends malformed SIP at a proxy as fast as the loopback
//! takes it, for the bad-input tests (issue 8: "random bytes, truncated
//! messages, huge headers, 10,000 Via headers at line rate"). The
//! proxy must neither crash nor grow.
//!
//! ```text
//! serlua-flood --target 127.0.0.1:5060 --duration 30 [--tcp] [--kinds random,truncated,huge,vias,mutated]
//! ```
//!
//! Kinds, sent in turn:
//! - `random`: 1–1,400 random bytes;
//! - `truncated`: a well-formed INVITE with SDP cut at a random point;
//! - `huge`: an INVITE with one 60,000-byte header (the most one UDP
//!   datagram carries with the rest of the message);
//! - `vias`: an OPTIONS with as many Via header lines as fit in one
//!   datagram (1,400), and one with 4,000 Vias comma-separated in a few
//!   lines; over TCP (`--tcp`) the full 10,000 Via lines in one message
//!   (150 KB, more than a proxy accepts on a stream);
//! - `mutated`: the INVITE with a few random bytes changed (reaches deeper
//!   into the parser than noise does; some still parse).
//!
//! Only loopback targets are accepted: this is a test tool.

use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;

/// Malformed-SIP flood against a proxy on the loopback.
#[derive(Parser)]
#[command(name = "serlua-flood")]
struct Args {
    /// The proxy's UDP (and, with --tcp, TCP) address; loopback only.
    #[arg(long, default_value = "127.0.0.1:5060")]
    target: SocketAddr,
    /// Seconds to flood.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Also send the 10,000-Via message over TCP connections.
    #[arg(long)]
    tcp: bool,
    /// Which kinds to send (comma-separated): random, truncated, huge, vias, mutated.
    #[arg(long, default_value = "random,truncated,huge,vias,mutated")]
    kinds: String,
    /// Datagrams per second at most (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Seed of the pseudo-random generator (the same seed sends the same bytes).
    #[arg(long, default_value_t = 0x5e71_0a)]
    seed: u64,
}

/// xorshift64*: reproducible, and fast enough not to be the bottleneck.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const KINDS: [&str; 5] = ["random", "truncated", "huge", "vias", "mutated"];

fn invite(target: SocketAddr, n: u64) -> Vec<u8> {
    let body =
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0 8\r\na=rtpmap:0 PCMU/8000\r\n";
    format!(
        "INVITE sip:flood@{target} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bK-flood-{n};rport\r\nMax-Forwards: 70\r\n\
         From: <sip:flood@127.0.0.1>;tag=f{n}\r\nTo: <sip:flood@{target}>\r\nCall-ID: flood-{n}@127.0.0.1\r\nCSeq: 1 INVITE\r\n\
         Contact: <sip:flood@127.0.0.1:9>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn options_head(target: SocketAddr, n: u64) -> String {
    format!(
        "OPTIONS sip:flood@{target} SIP/2.0\r\nMax-Forwards: 70\r\nFrom: <sip:flood@127.0.0.1>;tag=v{n}\r\n\
         To: <sip:flood@{target}>\r\nCall-ID: vias-{n}@127.0.0.1\r\nCSeq: 1 OPTIONS\r\n"
    )
}

/// An OPTIONS with `lines` Via lines, each carrying `per_line` Vias.
fn many_vias(target: SocketAddr, n: u64, lines: usize, per_line: usize) -> Vec<u8> {
    let mut s = options_head(target, n);
    let one = "SIP/2.0/UDP 10.0.0.1;branch=z9hG4bKv";
    for _ in 0..lines {
        s.push_str("Via: ");
        for k in 0..per_line {
            if k > 0 {
                s.push(',');
            }
            s.push_str(one);
        }
        s.push_str("\r\n");
    }
    s.push_str("Content-Length: 0\r\n\r\n");
    s.into_bytes()
}

fn huge_header(target: SocketAddr, n: u64) -> Vec<u8> {
    let mut m = invite(target, n);
    let at = m.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(0) + 2;
    let mut h = b"X-Huge: ".to_vec();
    h.extend(std::iter::repeat_n(b'A', 60_000));
    h.extend_from_slice(b"\r\n");
    m.splice(at..at, h);
    m.truncate(65_000);
    m
}

fn message(kind: &str, target: SocketAddr, n: u64, rng: &mut Rng) -> Vec<u8> {
    match kind {
        "random" => {
            let len = 1 + rng.below(1400);
            (0..len).map(|_| rng.next() as u8).collect()
        }
        "truncated" => {
            let mut m = invite(target, n);
            let cut = 1 + rng.below(m.len() - 1);
            m.truncate(cut);
            m
        }
        "huge" => huge_header(target, n),
        "vias" => {
            if n % 2 == 0 {
                many_vias(target, n, 1400, 1)
            } else {
                many_vias(target, n, 40, 100)
            }
        }
        _ => {
            let mut m = invite(target, n);
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(m.len());
                m[i] = rng.next() as u8;
            }
            m
        }
    }
}

fn tcp_flood(target: SocketAddr, until: Instant) -> (u64, u64) {
    let mut msg = options_head(target, 0);
    for _ in 0..10_000 {
        msg.push_str("Via: SIP/2.0/TCP 10.0.0.1;branch=z9hG4bKv\r\n");
    }
    msg.push_str("Content-Length: 0\r\n\r\n");
    let (mut conns, mut sent) = (0u64, 0u64);
    while Instant::now() < until {
        let Ok(mut s) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) else {
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        conns += 1;
        let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
        if s.write_all(msg.as_bytes()).is_ok() {
            sent += 1;
        }
    }
    (conns, sent)
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !args.target.ip().is_loopback() {
        eprintln!(
            "serlua-flood: {} is not a loopback address; this tool only floods 127.0.0.0/8 or ::1",
            args.target
        );
        return ExitCode::from(2);
    }
    let kinds: Vec<&str> = args.kinds.split(',').map(str::trim).filter(|k| !k.is_empty()).collect();
    if let Some(bad) = kinds.iter().find(|k| !KINDS.contains(k)) {
        eprintln!("serlua-flood: unknown kind '{bad}' (one of {})", KINDS.join(", "));
        return ExitCode::from(2);
    }
    if kinds.is_empty() {
        eprintln!("serlua-flood: no kinds to send");
        return ExitCode::from(2);
    }
    let bind: SocketAddr = if args.target.is_ipv4() {
        "127.0.0.1:0".parse().unwrap_or_else(|_| unreachable!())
    } else {
        "[::1]:0".parse().unwrap_or_else(|_| unreachable!())
    };
    let sock = match UdpSocket::bind(bind) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("serlua-flood: bind: {e}");
            return ExitCode::FAILURE;
        }
    };
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(args.duration.max(0.0));
    let tcp = args.tcp.then(|| {
        let t = args.target;
        std::thread::spawn(move || tcp_flood(t, until))
    });
    let mut rng = Rng(args.seed | 1);
    let mut counts = vec![0u64; kinds.len()];
    let (mut n, mut bytes, mut errors) = (0u64, 0u64, 0u64);
    // Messages are built once per kind and varied per send only where the
    // kind is about variation, so the sender keeps up with the loopback.
    let fixed: Vec<Option<Vec<u8>>> = kinds.iter().map(|k| (*k == "huge").then(|| huge_header(args.target, 0))).collect();
    let vias = [many_vias(args.target, 0, 1400, 1), many_vias(args.target, 1, 40, 100)];
    while Instant::now() < until {
        let k = (n % kinds.len() as u64) as usize;
        let data = match (kinds[k], &fixed[k]) {
            (_, Some(f)) => f.clone(),
            ("vias", _) => vias[(n / kinds.len() as u64 % 2) as usize].clone(),
            (kind, None) => message(kind, args.target, n, &mut rng),
        };
        match sock.send_to(&data, args.target) {
            Ok(len) => {
                counts[k] += 1;
                bytes += len as u64;
            }
            // ICMP port unreachable from an earlier send, or a full buffer.
            Err(_) => errors += 1,
        }
        n += 1;
        if args.rate > 0 {
            let due = start + Duration::from_secs_f64(n as f64 / args.rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let sent: u64 = counts.iter().sum();
    println!(
        "sent {sent} datagrams ({:.1} MB) in {secs:.1} s: {:.0}/s, {errors} send errors",
        bytes as f64 / 1e6,
        sent as f64 / secs.max(1e-9)
    );
    for (k, c) in kinds.iter().zip(&counts) {
        println!("  {k:<10} {c}");
    }
    if let Some(h) = tcp {
        if let Ok((conns, msgs)) = h.join() {
            println!("  tcp 10,000-Via messages: {msgs} written over {conns} connections");
        }
    }
    ExitCode::SUCCESS
}
