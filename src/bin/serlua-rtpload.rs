//! `serlua-rtpload`: an RTP load generator and sink for relay tests and
//! benchmarks.
//!
//! It plays both phones of N calls through a media relay: the A end sends
//! each stream's packets to that stream's A-facing relay port, the B end to
//! its B-facing port, and each end receives what the relay forwards from the
//! other. Every packet is an RTP packet (RFC 3550 §5.1: version 2, PCMU,
//! sequence number, timestamp +160 per packet, an SSRC per stream and
//! direction) whose payload carries the stream, the direction, a packet
//! number and the send time; the sink counts loss, duplicates, reordering,
//! misrouting (a packet that came from another stream's relay port) and the
//! one-way latency through the relay (the kernel's receive timestamp,
//! SO_TIMESTAMPNS, minus the send time).
//!
//! Cheap by construction, so that on a small machine the relay and not the
//! load dominates a benchmark: one socket per end (the relay latches each
//! stream to it all the same), sends batched with sendmmsg and receives with
//! recvmmsg, and one wakeup per tick (default 2 ms) whatever the number of
//! streams. The streams' send times are spread evenly over the 20 ms packet
//! interval, as independent phones' would be, so the relay sees a steady
//! flow and not one burst per interval.
//!
//! The relay ports come from a file of `A B` lines (`--pairs`, what a bench
//! script collects from a relay's offer/answer: bare ports, or HOST:PORT),
//! from `--pair A,B` options, or from `--streams N --relay-a HOST:BASE
//! --relay-b HOST:BASE --port-step S`. The result is one JSON object on
//! stdout.
//!
//! Before the measured run each end sends priming packets until every
//! stream has carried one each way (at most `--prime-s`), so a relay that
//! has no announced addresses and learns them by latching, as mediaproxy and
//! rtpengine do, loses nothing that counts; `--no-prime` skips it.

use std::io::{self, BufRead};
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, ToSocketAddrs, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::ptr;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::json;

/// RTP load generator and sink: N calls' worth of 20 ms audio through a
/// media relay, with loss, reordering and latency as JSON.
#[derive(Parser, Debug)]
#[command(name = "serlua-rtpload", version, about)]
struct Cli {
    /// A file of relay port pairs, one stream a line: `A B` (A: where the A
    /// end sends, B: where the B end sends), each a port (on --relay-host)
    /// or HOST:PORT; `#` starts a comment; `-` reads stdin.
    #[arg(long, value_name = "FILE")]
    pairs: Option<PathBuf>,
    /// One stream's relay ports, `A,B` (repeatable; after --pairs).
    #[arg(long = "pair", value_name = "A,B")]
    pair: Vec<String>,
    /// Streams to generate from --relay-a/--relay-b port bases.
    #[arg(long, requires_all = ["relay_a", "relay_b"])]
    streams: Option<usize>,
    /// First A-end relay address: HOST:PORT, stream i uses PORT + i * step.
    #[arg(long, value_name = "HOST:PORT")]
    relay_a: Option<String>,
    /// First B-end relay address: HOST:PORT, stream i uses PORT + i * step.
    #[arg(long, value_name = "HOST:PORT")]
    relay_b: Option<String>,
    /// Port distance between streams for --relay-a/--relay-b (serlua's
    /// forwarder hands out caller pair, callee pair: 4).
    #[arg(long, default_value_t = 4)]
    port_step: u16,
    /// Host of bare port numbers in --pairs/--pair.
    #[arg(long, default_value = "127.0.0.1")]
    relay_host: String,
    /// Seconds of load.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Packets per second per direction per stream (50: 20 ms ptime).
    #[arg(long, default_value_t = 50)]
    rate: u32,
    /// Packet size in bytes (UDP payload: 12 bytes of RTP header and the
    /// media; 172 is G.711 at 20 ms).
    #[arg(long, default_value_t = 172)]
    size: usize,
    /// Where the A end's socket binds (default: the wildcard of the relay's
    /// address family, any port). Give a fixed one to put it in an SDP.
    #[arg(long, value_name = "IP:PORT")]
    bind_a: Option<SocketAddr>,
    /// Where the B end's socket binds.
    #[arg(long, value_name = "IP:PORT")]
    bind_b: Option<SocketAddr>,
    /// Milliseconds between wakeups (sends due are batched per wakeup;
    /// fractions allowed). Smaller is closer to independent phones, whose
    /// packets reach the relay one by one, and costs the generator more.
    #[arg(long, default_value_t = 2.0)]
    tick_ms: f64,
    /// Milliseconds to wait for stragglers after the last send.
    #[arg(long, default_value_t = 500)]
    drain_ms: u64,
    /// Skip the priming exchange.
    #[arg(long)]
    no_prime: bool,
    /// Longest priming phase, seconds.
    #[arg(long, default_value_t = 3.0)]
    prime_s: f64,
    /// Add every stream's own counts to the JSON.
    #[arg(long)]
    per_stream: bool,
    /// Set the streams up on a relay over rtpengine's ng protocol
    /// (`udp:HOST:PORT`; rtpengine or `serlua relay`): --calls offers and
    /// answers whose SDPs name --bind-a and --bind-b, the relay's rewritten
    /// ports become the pairs.
    #[arg(long, value_name = "udp:HOST:PORT", requires_all = ["calls", "bind_a", "bind_b"])]
    ng: Option<String>,
    /// Calls to set up with --ng.
    #[arg(long)]
    calls: Option<usize>,
    /// With --ng: set the calls up, print their relay pairs (`A B` lines,
    /// the --pairs format) and exit, so a benchmark can measure the load
    /// alone in a second run.
    #[arg(long, requires = "ng")]
    setup_only: bool,
}

/// RTP header length (RFC 3550 §5.1, no CSRC, no extension).
const RTP_HEADER: usize = 12;
/// Our payload's fields after the header: send time (u64 ns, CLOCK_REALTIME),
/// stream (u32), packet number (u32), direction (u8), magic (3 bytes).
const STAMP_LEN: usize = 20;
const MAGIC: &[u8; 3] = b"RLD";
/// The packet number of priming packets (not counted).
const PRIME: u32 = u32::MAX;
/// Datagrams per sendmmsg/recvmmsg.
const BATCH: usize = 256;
/// Receive buffer per datagram.
const RECV_LEN: usize = 2048;
/// Latency histogram: 1 µs buckets up to this, then one overflow bucket.
const LAT_BUCKETS: usize = 50_000;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.setup_only {
        return match pairs(&cli) {
            Ok(ps) => {
                for p in ps {
                    println!("{} {}", p.a, p.b);
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("serlua-rtpload: {e}");
                ExitCode::from(2)
            }
        };
    }
    match run(&cli) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("serlua-rtpload: {e}");
            ExitCode::from(2)
        }
    }
}

/// One stream's two relay addresses.
#[derive(Clone, Copy, Debug)]
struct Pair {
    a: SocketAddr,
    b: SocketAddr,
}

fn resolve(s: &str, host: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(port) = s.parse::<u16>() {
        return resolve(&format!("{}:{port}", bracket(host)), host);
    }
    s.to_socket_addrs()
        .map_err(|e| format!("bad relay address {s:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("relay address {s:?} resolves to nothing"))
}

fn bracket(host: &str) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

fn pairs(cli: &Cli) -> Result<Vec<Pair>, String> {
    let mut out = Vec::new();
    if let Some(path) = &cli.pairs {
        let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
            Box::new(io::stdin().lock())
        } else {
            Box::new(io::BufReader::new(
                std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?,
            ))
        };
        for (n, line) in reader.lines().enumerate() {
            let line = line.map_err(|e| format!("{}: {e}", path.display()))?;
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let mut f = line.split_whitespace();
            let (Some(a), Some(b), None) = (f.next(), f.next(), f.next()) else {
                return Err(format!("{}:{}: expected `A B`, got {line:?}", path.display(), n + 1));
            };
            out.push(Pair {
                a: resolve(a, &cli.relay_host)?,
                b: resolve(b, &cli.relay_host)?,
            });
        }
    }
    for p in &cli.pair {
        let (a, b) = p.split_once(',').ok_or_else(|| format!("--pair {p:?}: expected A,B"))?;
        out.push(Pair {
            a: resolve(a, &cli.relay_host)?,
            b: resolve(b, &cli.relay_host)?,
        });
    }
    if let (Some(n), Some(a), Some(b)) = (cli.streams, &cli.relay_a, &cli.relay_b) {
        let (a, b) = (resolve(a, &cli.relay_host)?, resolve(b, &cli.relay_host)?);
        for i in 0..n {
            let off = u16::try_from(i)
                .ok()
                .and_then(|i| i.checked_mul(cli.port_step))
                .ok_or("--streams too many for the port range")?;
            let at = |base: SocketAddr| {
                base.port()
                    .checked_add(off)
                    .map(|p| SocketAddr::new(base.ip(), p))
                    .ok_or("--streams runs past port 65535")
            };
            out.push(Pair { a: at(a)?, b: at(b)? });
        }
    }
    if let (Some(ng), Some(n), Some(a), Some(b)) = (&cli.ng, cli.calls, cli.bind_a, cli.bind_b) {
        out.extend(ng_pairs(ng, n, a, b)?);
    }
    if out.is_empty() {
        return Err("no streams: give --pairs FILE, --pair A,B or --streams N --relay-a HOST:PORT --relay-b HOST:PORT".into());
    }
    Ok(out)
}

/// Offers and answers `n` calls on an ng relay (A calls B; each SDP names
/// the end's socket) and returns the relay addresses each end sends to:
/// A to the port of the rewritten answer, B to that of the rewritten offer.
fn ng_pairs(ng: &str, n: usize, a: SocketAddr, b: SocketAddr) -> Result<Vec<Pair>, String> {
    use serlua::relay::{MediaRelay, OfferAnswer};
    let name = if ng.starts_with("ng:") {
        ng.to_string()
    } else {
        format!("ng:{ng}")
    };
    let relay = serlua::relay::ng::NgClient::new(&[name.as_str()], Duration::from_millis(500)).map_err(|e| e.to_string())?;
    let sdp = |at: SocketAddr| {
        let ip = at.ip();
        let fam = if ip.is_ipv4() { "IP4" } else { "IP6" };
        format!(
            "v=0\r\no=- 1 1 IN {fam} {ip}\r\ns=-\r\nc=IN {fam} {ip}\r\nt=0 0\r\nm=audio {} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n",
            at.port()
        )
    };
    let media = |sdp: &[u8]| -> Result<SocketAddr, String> {
        let parsed = serlua::sdp::parse(sdp).map_err(|e| format!("relay's SDP: {e}"))?;
        let m = parsed.media.first().ok_or("relay's SDP has no m= line")?;
        let ip = m.conn.or(parsed.session_conn).ok_or("relay's SDP has no c= line")?;
        Ok(SocketAddr::new(ip, m.port))
    };
    let (sa, sb) = (sdp(a), sdp(b));
    let mut out = Vec::with_capacity(n);
    let run = format!("{:x}", std::process::id());
    for i in 0..n {
        let call_id = format!("rtpload-{run}-{i}");
        let (ft, tt) = (format!("a{i}"), format!("b{i}"));
        let mut req = OfferAnswer {
            call_id: &call_id,
            from_tag: &ft,
            sdp: sa.as_bytes(),
            ..OfferAnswer::default()
        };
        let offer = relay.offer(&req).map_err(|e| format!("offer {call_id}: {e}"))?;
        req.to_tag = Some(&tt);
        req.sdp = sb.as_bytes();
        let answer = relay.answer(&req).map_err(|e| format!("answer {call_id}: {e}"))?;
        out.push(Pair {
            a: media(&answer)?,
            b: media(&offer)?,
        });
    }
    Ok(out)
}

/// One direction of one stream, as the sink saw it.
#[derive(Default, Clone)]
struct Flow {
    sent: u64,
    received: u64,
    duplicates: u64,
    reordered: u64,
    misrouted: u64,
    max_n: Option<u32>,
    primed: bool,
    /// Packet numbers sent are below this.
    limit: u32,
    seen: Vec<u64>,
}

impl Flow {
    fn got(&mut self, n: u32, from_ok: bool) {
        if n == PRIME {
            self.primed = true;
            return;
        }
        let (w, bit) = ((n / 64) as usize, 1u64 << (n % 64));
        let Some(word) = self.seen.get_mut(w).filter(|_| n < self.limit) else {
            // A number we never sent: another run's packet, or corruption.
            self.misrouted += 1;
            return;
        };
        if *word & bit != 0 {
            self.duplicates += 1;
            return;
        }
        *word |= bit;
        self.received += 1;
        if !from_ok {
            self.misrouted += 1;
        }
        match self.max_n {
            Some(m) if n < m => self.reordered += 1,
            _ => self.max_n = Some(n),
        }
    }
}

struct Latency {
    buckets: Vec<u64>,
    over: u64,
    count: u64,
    sum_ns: u128,
    min_ns: u64,
    max_ns: u64,
}

impl Latency {
    fn new() -> Latency {
        Latency {
            buckets: vec![0; LAT_BUCKETS],
            over: 0,
            count: 0,
            sum_ns: 0,
            min_ns: u64::MAX,
            max_ns: 0,
        }
    }

    fn add(&mut self, ns: u64) {
        self.count += 1;
        self.sum_ns += u128::from(ns);
        self.min_ns = self.min_ns.min(ns);
        self.max_ns = self.max_ns.max(ns);
        match self.buckets.get_mut((ns / 1000) as usize) {
            Some(b) => *b += 1,
            None => self.over += 1,
        }
    }

    /// The q-quantile in µs (bucket upper bound).
    fn quantile(&self, q: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut acc = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            acc += b;
            if acc >= rank {
                return Some(i as u64 + 1);
            }
        }
        Some(self.max_ns / 1000)
    }

    fn json(&self) -> serde_json::Value {
        if self.count == 0 {
            return serde_json::Value::Null;
        }
        json!({
            "samples": self.count,
            "min": self.min_ns / 1000,
            "mean": (self.sum_ns / u128::from(self.count)) as u64 / 1000,
            "p50": self.quantile(0.5),
            "p99": self.quantile(0.99),
            "p999": self.quantile(0.999),
            "max": self.max_ns / 1000,
        })
    }
}

/// A socket address in the kernel's form.
#[derive(Clone, Copy)]
struct RawAddr {
    sa: libc::sockaddr_in6,
    len: libc::socklen_t,
}

impl RawAddr {
    fn new(addr: SocketAddr, v6_socket: bool) -> Result<RawAddr, String> {
        // SAFETY: all-zero is a valid sockaddr_in6 and sockaddr_in.
        let mut r = RawAddr {
            sa: unsafe { zeroed() },
            len: 0,
        };
        let v6 = |r: &mut RawAddr, ip: Ipv6Addr, port: u16, scope: u32| {
            r.sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            r.sa.sin6_port = port.to_be();
            r.sa.sin6_addr = libc::in6_addr { s6_addr: ip.octets() };
            r.sa.sin6_scope_id = scope;
            r.len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        };
        match (addr, v6_socket) {
            (SocketAddr::V4(a), false) => {
                // SAFETY: as above.
                let mut sin: libc::sockaddr_in = unsafe { zeroed() };
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = a.port().to_be();
                sin.sin_addr = libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                };
                // SAFETY: a sockaddr_in fits at the start of a sockaddr_in6
                // (smaller, same alignment).
                unsafe { ptr::write((&mut r.sa as *mut libc::sockaddr_in6).cast::<libc::sockaddr_in>(), sin) };
                r.len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            }
            (SocketAddr::V4(a), true) => v6(&mut r, a.ip().to_ipv6_mapped(), a.port(), 0),
            (SocketAddr::V6(a), true) => v6(&mut r, *a.ip(), a.port(), a.scope_id()),
            (SocketAddr::V6(a), false) => return Err(format!("relay address {a} is IPv6 but the socket is IPv4 (see --bind-a/--bind-b)")),
        }
        Ok(r)
    }
}

fn parse_addr(ss: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET if len as usize >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: family and length say it is a sockaddr_in.
            let sin = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: family and length say it is a sockaddr_in6.
            let sin6 = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            let port = u16::from_be(sin6.sin6_port);
            Some(match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
                None => SocketAddr::V6(SocketAddrV6::new(ip, port, 0, sin6.sin6_scope_id)),
            })
        }
        _ => None,
    }
}

fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

/// One end (phone A or phone B of every stream): its socket, preallocated
/// send and receive headers.
struct End {
    sock: UdpSocket,
    /// Per stream: where this end sends.
    dests: Vec<RawAddr>,
    /// Send buffers and headers (BATCH packets of `size`).
    sbuf: Box<[u8]>,
    siov: Box<[libc::iovec]>,
    shdr: Box<[libc::mmsghdr]>,
    /// Receive buffers, source names, control (timestamps) and headers.
    rbuf: Box<[u8]>,
    rname: Box<[libc::sockaddr_storage]>,
    rctl: Box<[[u64; 8]]>,
    riov: Box<[libc::iovec]>,
    rhdr: Box<[libc::mmsghdr]>,
    size: usize,
    send_errors: u64,
}

impl End {
    fn new(bind: SocketAddr, dests: &[SocketAddr], size: usize) -> Result<End, String> {
        let sock = UdpSocket::bind(bind).map_err(|e| format!("bind {bind}: {e}"))?;
        sock.set_nonblocking(true).map_err(|e| e.to_string())?;
        let sref = socket2::SockRef::from(&sock);
        // A tick's worth of every stream must fit, with room for a slow tick.
        let _ = sref.set_recv_buffer_size(4 << 20);
        let _ = sref.set_send_buffer_size(4 << 20);
        let on: libc::c_int = 1;
        // SAFETY: setsockopt with a live c_int of the size given.
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_TIMESTAMPNS,
                (&on as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(format!("SO_TIMESTAMPNS: {}", io::Error::last_os_error()));
        }
        let v6 = bind.is_ipv6();
        let dests = dests.iter().map(|d| RawAddr::new(*d, v6)).collect::<Result<Vec<_>, _>>()?;
        // SAFETY (the zeroed() calls): plain C structs for which all-zero is valid.
        let mut e = End {
            sock,
            dests,
            sbuf: vec![0u8; BATCH * size].into_boxed_slice(),
            siov: vec![unsafe { zeroed::<libc::iovec>() }; BATCH].into_boxed_slice(),
            shdr: vec![unsafe { zeroed::<libc::mmsghdr>() }; BATCH].into_boxed_slice(),
            rbuf: vec![0u8; BATCH * RECV_LEN].into_boxed_slice(),
            rname: vec![unsafe { zeroed::<libc::sockaddr_storage>() }; BATCH].into_boxed_slice(),
            rctl: vec![[0u64; 8]; BATCH].into_boxed_slice(),
            riov: vec![unsafe { zeroed::<libc::iovec>() }; BATCH].into_boxed_slice(),
            rhdr: vec![unsafe { zeroed::<libc::mmsghdr>() }; BATCH].into_boxed_slice(),
            size,
            send_errors: 0,
        };
        // Pointers into boxed slices owned by `e`: their storage never moves.
        for i in 0..BATCH {
            // SAFETY: i * size + size <= sbuf.len(), i * RECV_LEN + RECV_LEN <= rbuf.len().
            e.siov[i] = libc::iovec {
                iov_base: unsafe { e.sbuf.as_mut_ptr().add(i * size) }.cast(),
                iov_len: size,
            };
            e.shdr[i].msg_hdr.msg_iov = &mut e.siov[i];
            e.shdr[i].msg_hdr.msg_iovlen = 1;
            e.riov[i] = libc::iovec {
                iov_base: unsafe { e.rbuf.as_mut_ptr().add(i * RECV_LEN) }.cast(),
                iov_len: RECV_LEN,
            };
            let h = &mut e.rhdr[i].msg_hdr;
            h.msg_iov = &mut e.riov[i];
            h.msg_iovlen = 1;
            h.msg_name = (&mut e.rname[i] as *mut libc::sockaddr_storage).cast();
            h.msg_control = e.rctl[i].as_mut_ptr().cast();
        }
        Ok(e)
    }

    fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Sends packets `from..to` of the global schedule (packet g is stream
    /// g % streams, number g / streams); returns how many went out (a full
    /// send buffer leaves the rest for the next tick).
    fn send(&mut self, from: u64, to: u64, streams: usize, dir: u8, rate: u32) -> u64 {
        let wall = wall_ns();
        let mut g = from;
        while g < to {
            let k = ((to - g) as usize).min(BATCH);
            for j in 0..k {
                let gi = g + j as u64;
                let stream = (gi % streams as u64) as usize;
                let n = (gi / streams as u64) as u32;
                let pkt = &mut self.sbuf[j * self.size..(j + 1) * self.size];
                fill(pkt, stream, dir, n, wall, rate);
                let d = &mut self.dests[stream];
                let h = &mut self.shdr[j].msg_hdr;
                h.msg_name = (&mut d.sa as *mut libc::sockaddr_in6).cast();
                h.msg_namelen = d.len;
            }
            // SAFETY: shdr[..k] point at live buffers and addresses (above).
            let r = unsafe { libc::sendmmsg(self.fd(), self.shdr.as_mut_ptr(), k as _, 0) };
            if r > 0 {
                g += r as u64;
                continue;
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock => break,
                _ => {
                    // This packet is refused (no route, ICMP): count it sent and lost.
                    self.send_errors += 1;
                    g += 1;
                }
            }
        }
        g - from
    }

    /// Reads everything waiting; `f(source, payload, kernel receive time)`.
    fn recv_all(&mut self, mut f: impl FnMut(Option<SocketAddr>, &[u8], Option<u64>)) {
        loop {
            for i in 0..BATCH {
                let h = &mut self.rhdr[i].msg_hdr;
                h.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
                h.msg_controllen = size_of::<[u64; 8]>() as _;
                h.msg_flags = 0;
            }
            // SAFETY: rhdr's names, iovecs and control buffers are live and as large as declared.
            let n = unsafe {
                libc::recvmmsg(
                    self.fd(),
                    self.rhdr.as_mut_ptr(),
                    BATCH as _,
                    libc::MSG_DONTWAIT as _,
                    ptr::null_mut(),
                )
            };
            if n <= 0 {
                return;
            }
            let n = n as usize;
            for i in 0..n {
                let h = &self.rhdr[i];
                let len = (h.msg_len as usize).min(RECV_LEN);
                let data = &self.rbuf[i * RECV_LEN..i * RECV_LEN + len];
                let from = parse_addr(&self.rname[i], h.msg_hdr.msg_namelen);
                f(from, data, rx_stamp(&h.msg_hdr));
            }
            if n < BATCH {
                return;
            }
        }
    }
}

/// The SO_TIMESTAMPNS receive time (CLOCK_REALTIME ns) of a received message.
fn rx_stamp(h: &libc::msghdr) -> Option<u64> {
    // SAFETY: the CMSG_* macros walk the control buffer the kernel filled,
    // bounded by msg_controllen; the timespec is read unaligned.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                return Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    None
}

fn wall_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Writes an RTP packet: PCMU, marker on the first, sequence and timestamp
/// from the packet number (an arbitrary per-stream start, as RFC 3550 §5.1
/// asks), then our stamp, then PCMU silence.
fn fill(pkt: &mut [u8], stream: usize, dir: u8, n: u32, wall: u64, rate: u32) {
    let ssrc = 0x5e1a_0000u32 ^ ((stream as u32) << 1 | u32::from(dir));
    let n_rtp = if n == PRIME { 0 } else { n };
    let seq = (ssrc as u16).wrapping_mul(7).wrapping_add(n_rtp as u16);
    let ts = ssrc.wrapping_mul(13).wrapping_add(n_rtp.wrapping_mul(8000 / rate.max(1)));
    pkt[0] = 0x80;
    pkt[1] = if n == 0 { 0x80 } else { 0 };
    pkt[2..4].copy_from_slice(&seq.to_be_bytes());
    pkt[4..8].copy_from_slice(&ts.to_be_bytes());
    pkt[8..12].copy_from_slice(&ssrc.to_be_bytes());
    let p = &mut pkt[RTP_HEADER..];
    p[0..8].copy_from_slice(&wall.to_be_bytes());
    p[8..12].copy_from_slice(&(stream as u32).to_be_bytes());
    p[12..16].copy_from_slice(&n.to_be_bytes());
    p[16] = dir;
    p[17..20].copy_from_slice(MAGIC);
    p[STAMP_LEN..].fill(0xff);
}

/// Our fields of a received packet: (send time, stream, number, direction).
fn parse_pkt(data: &[u8]) -> Option<(u64, usize, u32, u8)> {
    let p = data.get(RTP_HEADER..RTP_HEADER + STAMP_LEN)?;
    if data[0] >> 6 != 2 || &p[17..20] != MAGIC {
        return None;
    }
    let wall = u64::from_be_bytes(p[0..8].try_into().ok()?);
    let stream = u32::from_be_bytes(p[8..12].try_into().ok()?) as usize;
    let n = u32::from_be_bytes(p[12..16].try_into().ok()?);
    Some((wall, stream, n, p[16]))
}

/// The sink: flows per stream and direction (0: A to B, 1: B to A).
struct Sink {
    flows: Vec<[Flow; 2]>,
    /// Where each direction's packets must come from: B's relay port for
    /// A-to-B (the relay sends from the socket facing B), A's for B-to-A.
    expect_from: Vec<[SocketAddr; 2]>,
    latency: Latency,
    wrong_end: u64,
    garbage: u64,
    measuring: bool,
}

impl Sink {
    /// A packet that arrived at end `at` (0: A, 1: B).
    fn got(&mut self, at: usize, from: Option<SocketAddr>, data: &[u8], rx: Option<u64>) {
        let Some((wall, stream, n, dir)) = parse_pkt(data) else {
            self.garbage += 1;
            return;
        };
        let dir = usize::from(dir);
        let Some(flows) = self.flows.get_mut(stream).filter(|_| dir < 2) else {
            self.garbage += 1;
            return;
        };
        if dir == at {
            // Our own direction came back to us: the relay looped it.
            self.wrong_end += 1;
            return;
        }
        if n == PRIME {
            flows[dir].primed = true;
            return;
        }
        if !self.measuring {
            return;
        }
        let from_ok = from.map(canonical) == Some(canonical(self.expect_from[stream][dir]));
        flows[dir].got(n, from_ok);
        if let Some(rx) = rx {
            self.latency.add(rx.saturating_sub(wall));
        }
    }
}

fn cpu_s() -> (f64, f64) {
    // SAFETY: getrusage fills a live rusage.
    let mut ru: libc::rusage = unsafe { zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

fn run(cli: &Cli) -> Result<String, String> {
    let pairs = pairs(cli)?;
    let streams = pairs.len();
    if cli.size < RTP_HEADER + STAMP_LEN || cli.size > RECV_LEN {
        return Err(format!("--size must be {}..{RECV_LEN}", RTP_HEADER + STAMP_LEN));
    }
    if cli.rate == 0 || cli.duration <= 0.0 || cli.tick_ms.is_nan() || cli.tick_ms <= 0.0 {
        return Err("--rate, --duration and --tick-ms must be positive".into());
    }
    let wildcard = |a: SocketAddr| {
        SocketAddr::new(
            if a.is_ipv6() {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            } else {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            },
            0,
        )
    };
    let bind_a = cli.bind_a.unwrap_or_else(|| wildcard(pairs[0].a));
    let bind_b = cli.bind_b.unwrap_or_else(|| wildcard(pairs[0].b));
    let mut ends = [
        End::new(bind_a, &pairs.iter().map(|p| p.a).collect::<Vec<_>>(), cli.size)?,
        End::new(bind_b, &pairs.iter().map(|p| p.b).collect::<Vec<_>>(), cli.size)?,
    ];
    let (la, lb) = (
        ends[0].sock.local_addr().map_err(|e| e.to_string())?,
        ends[1].sock.local_addr().map_err(|e| e.to_string())?,
    );
    eprintln!("serlua-rtpload: {streams} streams, A end {la}, B end {lb}");
    let per_flow = (cli.duration * f64::from(cli.rate)).round() as u64;
    if per_flow >= u64::from(PRIME) {
        return Err("--duration * --rate too large".into());
    }
    let words = (per_flow as usize).div_ceil(64);
    let mut sink = Sink {
        flows: vec![
            [
                Flow {
                    seen: vec![0; words],
                    limit: per_flow as u32,
                    ..Flow::default()
                },
                Flow {
                    seen: vec![0; words],
                    limit: per_flow as u32,
                    ..Flow::default()
                }
            ];
            streams
        ],
        expect_from: pairs.iter().map(|p| [p.b, p.a]).collect(),
        latency: Latency::new(),
        wrong_end: 0,
        garbage: 0,
        measuring: false,
    };
    let tick = Duration::from_secs_f64(cli.tick_ms / 1000.0);
    let recv_both = |ends: &mut [End; 2], sink: &mut Sink| {
        for (at, end) in ends.iter_mut().enumerate() {
            end.recv_all(|from, data, rx| sink.got(at, from, data, rx));
        }
    };

    // Priming: one packet per stream and direction every 20 ms until all arrived.
    let mut primed = true;
    if !cli.no_prime {
        let until = Instant::now() + Duration::from_secs_f64(cli.prime_s);
        loop {
            for (dir, end) in ends.iter_mut().enumerate() {
                let mut s = 0;
                while s < streams {
                    s += end.send_prime(s, streams, dir as u8).max(1);
                }
            }
            let wait = Instant::now() + Duration::from_millis(20);
            while Instant::now() < wait {
                std::thread::sleep(tick);
                recv_both(&mut ends, &mut sink);
            }
            if sink.flows.iter().all(|f| f[0].primed && f[1].primed) {
                break;
            }
            if Instant::now() >= until {
                primed = false;
                break;
            }
        }
        // Late primes still in flight are recognised and ignored.
    }
    let unprimed = sink.flows.iter().filter(|f| !(f[0].primed && f[1].primed)).count();

    // The measured run.
    sink.measuring = true;
    for e in &mut ends {
        e.send_errors = 0;
    }
    let total = per_flow * streams as u64;
    // Packet g is due at start + g * spacing: streams evenly spread over the interval.
    let spacing_ns = 1e9 / f64::from(cli.rate) / streams as f64;
    let (u0, s0) = cpu_s();
    let start = Instant::now();
    let mut cursor = [0u64; 2];
    let mut next = start;
    while cursor[0] < total || cursor[1] < total {
        let due = ((start.elapsed().as_nanos() as f64 / spacing_ns) as u64 + 1).min(total);
        for (dir, end) in ends.iter_mut().enumerate() {
            if cursor[dir] < due {
                cursor[dir] += end.send(cursor[dir], due, streams, dir as u8, cli.rate);
            }
        }
        recv_both(&mut ends, &mut sink);
        next += tick;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            // Behind schedule (a stalled machine): catch up without a backlog of sleeps.
            next = now;
        }
    }
    let send_end = Instant::now();
    for f in &mut sink.flows {
        f[0].sent = per_flow;
        f[1].sent = per_flow;
    }
    let drain_until = send_end + Duration::from_millis(cli.drain_ms);
    loop {
        recv_both(&mut ends, &mut sink);
        let done = sink.flows.iter().all(|f| f[0].received >= f[0].sent && f[1].received >= f[1].sent);
        if done || Instant::now() >= drain_until {
            break;
        }
        std::thread::sleep(tick);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (u1, s1) = cpu_s();

    let mut sent = 0;
    let mut received = 0;
    let (mut dups, mut reord, mut misrouted) = (0, 0, 0);
    let mut dir_tot = [(0u64, 0u64); 2];
    let (mut rmin, mut rmax, mut lmin, mut lmax, mut omax) = (u64::MAX, 0, u64::MAX, 0, 0);
    for f in sink.flows.iter().flatten() {
        sent += f.sent;
        received += f.received;
        dups += f.duplicates;
        reord += f.reordered;
        misrouted += f.misrouted;
        let lost = f.sent - f.received;
        rmin = rmin.min(f.received);
        rmax = rmax.max(f.received);
        lmin = lmin.min(lost);
        lmax = lmax.max(lost);
        omax = omax.max(f.reordered);
    }
    for (dir, t) in dir_tot.iter_mut().enumerate() {
        for f in &sink.flows {
            t.0 += f[dir].sent;
            t.1 += f[dir].received;
        }
    }
    let mut report = json!({
        "streams": streams,
        "duration_s": cli.duration,
        "rate_pps": cli.rate,
        "size": cli.size,
        "tick_ms": cli.tick_ms,
        "a_end": la.to_string(),
        "b_end": lb.to_string(),
        "primed": primed,
        "unprimed_streams": unprimed,
        "sent": sent,
        "received": received,
        "lost": sent - received,
        "duplicates": dups,
        "reordered": reord,
        "misrouted": misrouted,
        "wrong_end": sink.wrong_end,
        "garbage": sink.garbage,
        "send_errors": ends[0].send_errors + ends[1].send_errors,
        "a_to_b": { "sent": dir_tot[0].0, "received": dir_tot[0].1, "lost": dir_tot[0].0 - dir_tot[0].1 },
        "b_to_a": { "sent": dir_tot[1].0, "received": dir_tot[1].1, "lost": dir_tot[1].0 - dir_tot[1].1 },
        "per_stream": {
            "received_min": rmin, "received_max": rmax,
            "lost_min": lmin, "lost_max": lmax,
            "reordered_max": omax,
        },
        "latency_us": sink.latency.json(),
        "elapsed_s": (elapsed * 1000.0).round() / 1000.0,
        "cpu_s": { "user": ((u1 - u0) * 1000.0).round() / 1000.0, "system": ((s1 - s0) * 1000.0).round() / 1000.0 },
    });
    if cli.per_stream {
        let detail: Vec<_> = pairs
            .iter()
            .zip(&sink.flows)
            .map(|(p, f)| {
                json!({
                    "relay_a": p.a.to_string(), "relay_b": p.b.to_string(),
                    "a_to_b": { "received": f[0].received, "lost": f[0].sent - f[0].received, "reordered": f[0].reordered, "duplicates": f[0].duplicates },
                    "b_to_a": { "received": f[1].received, "lost": f[1].sent - f[1].received, "reordered": f[1].reordered, "duplicates": f[1].duplicates },
                })
            })
            .collect();
        report["streams_detail"] = json!(detail);
    }
    Ok(report.to_string())
}

impl End {
    /// Sends one priming packet per stream from `first` on; returns how many.
    fn send_prime(&mut self, first: usize, streams: usize, dir: u8) -> usize {
        let wall = wall_ns();
        let k = (streams - first).min(BATCH);
        for j in 0..k {
            let pkt = &mut self.sbuf[j * self.size..(j + 1) * self.size];
            fill(pkt, first + j, dir, PRIME, wall, 50);
            let d = &mut self.dests[first + j];
            let h = &mut self.shdr[j].msg_hdr;
            h.msg_name = (&mut d.sa as *mut libc::sockaddr_in6).cast();
            h.msg_namelen = d.len;
        }
        // SAFETY: shdr[..k] point at live buffers and addresses (above).
        let r = unsafe { libc::sendmmsg(self.fd(), self.shdr.as_mut_ptr(), k as _, 0) };
        if r < 0 { 0 } else { r as usize }
    }
}
