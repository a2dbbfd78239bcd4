//! Recorded SIP traces for `serlua test` (`trace.load(path)` in a test
//! file): the SIP messages of a capture, each with its timestamp, source,
//! destination and transport, in the order the capture saw them.
//!
//! Reads
//! - pcap (the tcpdump/libpcap format, both byte orders, micro- and
//!   nanosecond timestamps) and pcapng (the IETF draft
//!   draft-ietf-opsawg-pcapng: Section Header, Interface Description,
//!   Enhanced and Simple Packet blocks; several sections and interfaces),
//!   with link types Ethernet (1), Linux cooked SLL (113) and SLL2 (276),
//!   BSD loopback NULL (0) and LOOP (108), and raw IP (101, 228, 229);
//!   IPv4 (fragments reassembled) and IPv6; UDP, and TCP reassembled per
//!   flow in sequence order (retransmitted and out-of-order segments
//!   handled) and framed by Content-Length (RFC 3261 §18.3, the framing
//!   of `sip::framing`).
//! - SIP as text: sngrep's text export (`YYYY/MM/DD HH:MM:SS.uuuuuu
//!   SRC:PORT -> DST:PORT` before each message) and plain messages separated
//!   by blank lines, framed by Content-Length.
//!
//! Packets that carry no SIP (ARP, RTP, other TCP streams, keep-alive
//! CRLFs) are skipped. A file whose structure is broken is an error naming
//! the file and the byte offset where reading failed.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use etherparse::{EtherType, NetSlice, SlicedPacket, TcpSlice, TransportSlice, UdpSlice};
use pcap_parser::traits::PcapNGPacketBlock;
use pcap_parser::{Block, PcapError};

use crate::sip::framing::{FrameError, next_message};
use crate::transport::Proto;

/// One SIP message of a trace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceMsg {
    /// When the capture saw it (the segment that completed it, on TCP),
    /// since the Unix epoch. Zero for plain SIP text without timestamps.
    pub time: Duration,
    /// Sender. `0.0.0.0:0` when a text trace does not say and the
    /// message's top Via does not tell either.
    pub src: SocketAddr,
    /// Receiver; `0.0.0.0:0` when unknown (plain text).
    pub dst: SocketAddr,
    /// Transport it travelled over.
    pub proto: Proto,
    /// The message bytes, exactly as sent.
    pub data: Bytes,
}

/// Why a trace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The file could not be read at all.
    #[error("{file}: {source}")]
    Io {
        /// The file.
        file: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file's structure is broken at `offset`.
    #[error("{file}: damaged at byte offset {offset}: {why}")]
    Damaged {
        /// The file.
        file: String,
        /// Byte offset of the header, block or record that failed.
        offset: u64,
        /// What was wrong there.
        why: String,
    },
}

/// Reads the trace at `path` (pcap, pcapng or SIP text, told apart by the
/// first bytes).
pub fn load(path: impl AsRef<Path>) -> Result<Vec<TraceMsg>, TraceError> {
    let path = path.as_ref();
    let name = path.display().to_string();
    let data = std::fs::read(path).map_err(|source| TraceError::Io {
        file: name.clone(),
        source,
    })?;
    decode(&name, &data)
}

/// Decodes a trace from its bytes; `name` names it in errors. Never
/// panics, whatever the input (the entry point for fuzzing).
pub fn decode(name: &str, data: &[u8]) -> Result<Vec<TraceMsg>, TraceError> {
    let magic = data.get(..4).map(|m| u32::from_le_bytes([m[0], m[1], m[2], m[3]]));
    match magic {
        Some(0xa1b2_c3d4 | 0xa1b2_3c4d | 0xa1b2_cd34 | 0xd4c3_b2a1 | 0x4d3c_b2a1 | 0x34cd_b2a1) => decode_pcap(name, data),
        Some(0x0a0d_0d0a) => decode_pcapng(name, data),
        _ => decode_text(name, data),
    }
}

fn damaged(file: &str, offset: usize, why: impl Into<String>) -> TraceError {
    TraceError::Damaged {
        file: file.to_string(),
        offset: offset as u64,
        why: why.into(),
    }
}

fn nom_why(e: &nom::Err<PcapError<&[u8]>>, what: &str) -> String {
    match e {
        nom::Err::Incomplete(_) => format!("{what} is cut short (the file ends inside it)"),
        nom::Err::Error(e) | nom::Err::Failure(e) => format!("{what} is malformed ({})", pcap_error_text(e)),
    }
}

fn pcap_error_text(e: &PcapError<&[u8]>) -> String {
    match e {
        PcapError::Eof => "end of file".into(),
        PcapError::ReadError => "read error".into(),
        PcapError::Incomplete(n) => format!("{n} more bytes needed"),
        PcapError::HeaderNotRecognized => "header not recognized".into(),
        PcapError::NomError(_, kind) => format!("{kind:?}"),
        PcapError::OwnedNomError(_, kind) => format!("{kind:?}"),
        other => format!("{other:?}"),
    }
}

// ---- link layers ------------------------------------------------------------

/// Link types (tcpdump.org's LINKTYPE_ values) that carry IP.
mod linktype {
    pub const NULL: i32 = 0;
    pub const ETHERNET: i32 = 1;
    pub const RAW: i32 = 101;
    pub const LOOP: i32 = 108;
    pub const LINUX_SLL: i32 = 113;
    pub const IPV4: i32 = 228;
    pub const IPV6: i32 = 229;
    pub const LINUX_SLL2: i32 = 276;
}

fn supported_linktype(lt: i32) -> bool {
    use linktype::*;
    matches!(lt, NULL | ETHERNET | RAW | LOOP | LINUX_SLL | IPV4 | IPV6 | LINUX_SLL2)
}

fn linktype_error(file: &str, offset: usize, lt: i32) -> TraceError {
    damaged(
        file,
        offset,
        format!("link type {lt} is not supported (Ethernet 1, Linux SLL 113, SLL2 276, NULL 0, LOOP 108 and raw IP 101/228/229 are)"),
    )
}

/// Slices one captured frame down to its transport layer. None for frames
/// that carry no IP (or that are too damaged to slice: a truncated
/// frame in a sound file is skipped, not an error).
fn slice_frame(lt: i32, frame: &[u8]) -> Option<SlicedPacket<'_>> {
    use linktype::*;
    match lt {
        ETHERNET => SlicedPacket::from_ethernet(frame).ok(),
        // SLL (LINKTYPE_LINUX_SLL): packet type, ARPHRD type, address length,
        // address (8), protocol type: 16 bytes. Read here rather than by
        // etherparse, which refuses ARPHRD types it does not know, such as
        // the loopback's (772) that `tcpdump -i any` writes for `lo`.
        LINUX_SLL => {
            let proto = u16::from_be_bytes([*frame.get(14)?, *frame.get(15)?]);
            SlicedPacket::from_ether_type(EtherType(proto), frame.get(16..)?).ok()
        }
        // SLL2 (tcpdump.org LINKTYPE_LINUX_SLL2): protocol type (2), reserved
        // (2), interface index (4), ARPHRD type (2), packet type (1), address
        // length (1), address (8): 20 bytes before the payload.
        LINUX_SLL2 => {
            let proto = u16::from_be_bytes([*frame.first()?, *frame.get(1)?]);
            SlicedPacket::from_ether_type(EtherType(proto), frame.get(20..)?).ok()
        }
        // NULL carries the address family in the byte order of the host that
        // wrote it; LOOP in network byte order. Either way the IP header's
        // version nibble says what follows, so the family is not needed.
        NULL | LOOP => SlicedPacket::from_ip(frame.get(4..)?).ok(),
        RAW | IPV4 | IPV6 => SlicedPacket::from_ip(frame).ok(),
        _ => None,
    }
}

// ---- the packet decoder --------------------------------------------------------

/// Upper bound of one SIP message on a TCP stream; a stream that has
/// buffered this much without framing a message is not SIP.
const MAX_TCP_MESSAGE: usize = 256 * 1024;

type FlowKey = (SocketAddr, SocketAddr);

/// One direction of a TCP connection being reassembled.
#[derive(Default)]
struct TcpFlow {
    /// Sequence number of the first payload byte (ISN + 1), once known.
    base: Option<u32>,
    /// Offset from `base` of the next byte expected.
    next: u32,
    /// Segments that arrived ahead of `next`: (offset, bytes).
    ahead: Vec<(u32, Vec<u8>)>,
    /// In-order bytes not yet framed into a message.
    buf: Vec<u8>,
    /// The stream turned out not to be SIP: ignored from then on.
    dead: bool,
}

impl TcpFlow {
    /// Takes the payload of a segment starting at sequence number `seq`.
    fn segment(&mut self, seq: u32, syn: bool, payload: &[u8]) {
        if syn {
            // The SYN takes one sequence number; data (TCP Fast Open) follows it.
            self.base = Some(seq.wrapping_add(1));
            self.next = 0;
            self.ahead.clear();
            self.buf.clear();
            self.dead = false;
        }
        if payload.is_empty() || self.dead {
            return;
        }
        // A capture that starts mid-connection begins where it begins.
        let base = *self.base.get_or_insert(seq.wrapping_add(u32::from(syn)));
        let start = seq.wrapping_add(u32::from(syn)).wrapping_sub(base);
        self.place(start, payload);
        // Segments that were ahead may now be in order.
        while let Some(i) = self.ahead.iter().position(|(off, _)| off.wrapping_sub(self.next) as i32 <= 0) {
            let (off, d) = self.ahead.swap_remove(i);
            self.place(off, &d);
        }
    }

    /// Appends the part of `data` (at stream offset `off`) not seen yet,
    /// or keeps it for later when it starts beyond the next expected byte.
    fn place(&mut self, off: u32, data: &[u8]) {
        let rel = off.wrapping_sub(self.next) as i32;
        if rel > 0 {
            if self.ahead.len() < 1024 {
                self.ahead.push((off, data.to_vec()));
            }
            return;
        }
        // A retransmission overlapping what we have: keep only the new tail.
        let already = rel.unsigned_abs() as usize;
        if already >= data.len() {
            return;
        }
        let fresh = &data[already..];
        self.buf.extend_from_slice(fresh);
        self.next = self.next.wrapping_add(fresh.len() as u32);
    }

    /// Frames the complete messages buffered so far.
    fn messages(&mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        while !self.dead {
            let start = self.buf.iter().position(|b| *b != b'\r' && *b != b'\n').unwrap_or(self.buf.len());
            if self.buf.len() - start >= 16 && !starts_like_sip(&self.buf[start..]) {
                self.dead = true;
                self.buf.clear();
                break;
            }
            match next_message(&self.buf, MAX_TCP_MESSAGE) {
                Ok(Some((skip, len))) => {
                    let msg: Vec<u8> = self.buf.drain(..skip + len).skip(skip).collect();
                    if is_sip(&msg) {
                        out.push(Bytes::from(msg));
                    } else {
                        self.dead = true;
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    self.dead = true;
                    self.buf.clear();
                }
            }
        }
        out
    }
}

/// Turns captured frames into SIP messages.
#[derive(Default)]
struct Decoder {
    flows: HashMap<FlowKey, TcpFlow>,
    defrag: etherparse::defrag::IpDefragPool,
    out: Vec<TraceMsg>,
}

impl Decoder {
    fn frame(&mut self, lt: i32, time: Duration, frame: &[u8]) {
        let Some(sliced) = slice_frame(lt, frame) else {
            return;
        };
        let (src_ip, dst_ip, fragmented) = match &sliced.net {
            Some(NetSlice::Ipv4(ip)) => (
                IpAddr::V4(ip.header().source_addr()),
                IpAddr::V4(ip.header().destination_addr()),
                ip.is_payload_fragmented(),
            ),
            Some(NetSlice::Ipv6(ip)) => (
                IpAddr::V6(ip.header().source_addr()),
                IpAddr::V6(ip.header().destination_addr()),
                ip.is_payload_fragmented(),
            ),
            _ => return,
        };
        if fragmented {
            // A UDP datagram larger than the MTU arrives in IP fragments
            // (RFC 791 §2.3); the last one completes it.
            let Ok(Some(whole)) = self.defrag.process_sliced_packet(&sliced, (), ()) else {
                return;
            };
            match whole.ip_number {
                etherparse::IpNumber::UDP => {
                    if let Ok(udp) = UdpSlice::from_slice(&whole.payload) {
                        self.udp(time, src_ip, dst_ip, &udp);
                    }
                }
                etherparse::IpNumber::TCP => {
                    if let Ok(tcp) = TcpSlice::from_slice(&whole.payload) {
                        self.tcp(time, src_ip, dst_ip, &tcp);
                    }
                }
                _ => {}
            }
            return;
        }
        match &sliced.transport {
            Some(TransportSlice::Udp(udp)) => self.udp(time, src_ip, dst_ip, udp),
            Some(TransportSlice::Tcp(tcp)) => self.tcp(time, src_ip, dst_ip, tcp),
            _ => {}
        }
    }

    fn udp(&mut self, time: Duration, src: IpAddr, dst: IpAddr, udp: &UdpSlice<'_>) {
        let payload = udp.payload();
        if !is_sip(payload) {
            return;
        }
        self.out.push(TraceMsg {
            time,
            src: SocketAddr::new(src, udp.source_port()),
            dst: SocketAddr::new(dst, udp.destination_port()),
            proto: Proto::Udp,
            data: Bytes::copy_from_slice(payload),
        });
    }

    fn tcp(&mut self, time: Duration, src: IpAddr, dst: IpAddr, tcp: &TcpSlice<'_>) {
        let src = SocketAddr::new(src, tcp.source_port());
        let dst = SocketAddr::new(dst, tcp.destination_port());
        let flow = self.flows.entry((src, dst)).or_default();
        if tcp.rst() {
            // A reset connection's unframed bytes never become a message.
            *flow = TcpFlow::default();
            return;
        }
        flow.segment(tcp.sequence_number(), tcp.syn(), tcp.payload());
        for data in flow.messages() {
            self.out.push(TraceMsg {
                time,
                src,
                dst,
                proto: Proto::Tcp,
                data,
            });
        }
    }
}

/// True when `data` starts with a SIP start line (RFC 3261 §7.1, §7.2):
/// `SIP/2.0 NNN …` or `METHOD URI SIP/2.0`.
fn is_sip(data: &[u8]) -> bool {
    let line_end = memchr::memchr(b'\n', data).unwrap_or(data.len());
    let line = data[..line_end].strip_suffix(b"\r").unwrap_or(&data[..line_end]);
    if let Some(rest) = line.strip_prefix(b"SIP/2.0 ") {
        return rest.len() >= 3 && rest[..3].iter().all(u8::is_ascii_digit);
    }
    let mut parts = line.split(|b| *b == b' ');
    let method = parts.next().unwrap_or_default();
    let uri = parts.next().unwrap_or_default();
    let version = parts.next().unwrap_or_default();
    !method.is_empty()
        && method
            .iter()
            .all(|b| b.is_ascii_alphabetic() || *b == b'-' || *b == b'_' || *b == b'.' || *b == b'!')
        && !uri.is_empty()
        && version.eq_ignore_ascii_case(b"SIP/2.0")
        && parts.next().is_none()
}

/// A cheap test on the first bytes of a stream, before a whole start
/// line has arrived: a SIP stream starts with `SIP/` or a method token
/// and a space.
fn starts_like_sip(data: &[u8]) -> bool {
    if data.starts_with(b"SIP/") {
        return true;
    }
    match data.iter().position(|b| *b == b' ') {
        Some(sp) => {
            sp > 0
                && data[..sp]
                    .iter()
                    .all(|b| b.is_ascii_alphabetic() || *b == b'-' || *b == b'_' || *b == b'.')
        }
        None => data.iter().all(|b| b.is_ascii_alphabetic()),
    }
}

// ---- pcap ----------------------------------------------------------------------

fn decode_pcap(name: &str, data: &[u8]) -> Result<Vec<TraceMsg>, TraceError> {
    let (mut rest, header) = pcap_parser::parse_pcap_header(data).map_err(|e| damaged(name, 0, nom_why(&e, "the pcap file header")))?;
    let lt = header.network.0;
    if !supported_linktype(lt) {
        return Err(linktype_error(name, 20, lt));
    }
    let nanos = header.is_nanosecond_precision();
    let mut dec = Decoder::default();
    while !rest.is_empty() {
        let offset = data.len() - rest.len();
        let parsed = if header.is_modified_format() {
            pcap_parser::parse_pcap_frame_modified(rest)
        } else if header.is_bigendian() {
            pcap_parser::parse_pcap_frame_be(rest)
        } else {
            pcap_parser::parse_pcap_frame(rest)
        };
        let (next, frame) = parsed.map_err(|e| damaged(name, offset, nom_why(&e, "the packet record")))?;
        let sub = if nanos {
            Duration::from_nanos(u64::from(frame.ts_usec))
        } else {
            Duration::from_micros(u64::from(frame.ts_usec))
        };
        if sub >= Duration::from_secs(1) {
            return Err(damaged(name, offset, "the packet record's timestamp fraction is a second or more"));
        }
        dec.frame(lt, Duration::from_secs(u64::from(frame.ts_sec)) + sub, frame.data);
        rest = next;
    }
    Ok(dec.out)
}

// ---- pcapng --------------------------------------------------------------------

/// What an Interface Description Block says about its packets.
struct Interface {
    linktype: i32,
    /// Timestamp units per second (`if_tsresol`).
    resolution: u64,
    /// Seconds added to every timestamp (`if_tsoffset`).
    offset: i64,
}

fn decode_pcapng(name: &str, data: &[u8]) -> Result<Vec<TraceMsg>, TraceError> {
    let mut rest = data;
    let mut big_endian = false;
    let mut interfaces: Vec<Interface> = Vec::new();
    let mut dec = Decoder::default();
    let mut last_time = Duration::ZERO;
    while !rest.is_empty() {
        let offset = data.len() - rest.len();
        let parsed = if rest.starts_with(&[0x0a, 0x0d, 0x0d, 0x0a]) {
            pcap_parser::parse_sectionheaderblock(rest).map(|(r, shb)| (r, Block::SectionHeader(shb)))
        } else if big_endian {
            pcap_parser::parse_block_be(rest)
        } else {
            pcap_parser::parse_block_le(rest)
        };
        let (next, block) = parsed.map_err(|e| damaged(name, offset, nom_why(&e, "the pcapng block")))?;
        match block {
            Block::SectionHeader(shb) => {
                // Interface ids are per section.
                big_endian = shb.big_endian();
                interfaces.clear();
            }
            Block::InterfaceDescription(idb) => {
                let linktype = idb.linktype.0;
                if !supported_linktype(linktype) {
                    return Err(linktype_error(name, offset, linktype));
                }
                let resolution = idb
                    .ts_resolution()
                    .filter(|r| *r > 0)
                    .ok_or_else(|| damaged(name, offset, "the interface's timestamp resolution (if_tsresol) is invalid"))?;
                interfaces.push(Interface {
                    linktype,
                    resolution,
                    offset: idb.ts_offset(),
                });
            }
            Block::EnhancedPacket(epb) => {
                let iface = interfaces
                    .get(epb.if_id as usize)
                    .ok_or_else(|| damaged(name, offset, format!("packet names interface {} that was not described", epb.if_id)))?;
                let ticks = (u64::from(epb.ts_high) << 32) | u64::from(epb.ts_low);
                let secs = (ticks / iface.resolution) as i64 + iface.offset;
                let frac = ticks % iface.resolution;
                let nanos = (u128::from(frac) * 1_000_000_000 / u128::from(iface.resolution)) as u64;
                let time = Duration::from_secs(secs.max(0) as u64) + Duration::from_nanos(nanos);
                last_time = time;
                dec.frame(iface.linktype, time, epb.packet_data());
            }
            Block::SimplePacket(spb) => {
                // A Simple Packet Block belongs to interface 0 and has no
                // timestamp: it is taken to follow the previous packet.
                let iface = interfaces
                    .first()
                    .ok_or_else(|| damaged(name, offset, "simple packet before any interface description"))?;
                dec.frame(iface.linktype, last_time, spb.packet_data());
            }
            _ => {}
        }
        rest = next;
    }
    Ok(dec.out)
}

// ---- SIP text ------------------------------------------------------------------

/// sngrep's header line before each message of its text export.
fn sngrep_header(line: &str) -> Option<(Duration, SocketAddr, SocketAddr)> {
    let mut it = line.split_ascii_whitespace();
    let (date, time, src, arrow, dst) = (it.next()?, it.next()?, it.next()?, it.next()?, it.next()?);
    if arrow != "->" || it.next().is_some() {
        return None;
    }
    let when = chrono::NaiveDateTime::parse_from_str(&format!("{date} {time}"), "%Y/%m/%d %H:%M:%S%.f").ok()?;
    let since = when.and_utc().signed_duration_since(chrono::DateTime::UNIX_EPOCH).to_std().ok()?;
    Some((since, parse_addr(src)?, parse_addr(dst)?))
}

/// `IP:PORT`; sngrep writes IPv6 addresses without brackets, so the port
/// is after the last colon.
fn parse_addr(s: &str) -> Option<SocketAddr> {
    if let Ok(a) = s.parse() {
        return Some(a);
    }
    let (ip, port) = s.rsplit_once(':')?;
    let ip: IpAddr = ip.trim_start_matches('[').trim_end_matches(']').parse().ok()?;
    Some(SocketAddr::new(ip, port.parse().ok()?))
}

const UNKNOWN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);

fn decode_text(name: &str, raw: &[u8]) -> Result<Vec<TraceMsg>, TraceError> {
    // A file written with bare LF line ends (by hand, or by an editor) is
    // taken as CRLF text, so Content-Length counts the bytes SIP would
    // have sent. Offsets in errors are then those of the converted text
    // when the file had no CR at all.
    let converted;
    let data: &[u8] = if memchr::memmem::find(raw, b"\r\n").is_none() {
        converted = String::from_utf8_lossy(raw).replace('\n', "\r\n").into_bytes();
        &converted
    } else {
        raw
    };
    let mut out = Vec::new();
    let mut p = 0;
    let mut pending: Option<(Duration, SocketAddr, SocketAddr)> = None;
    while p < data.len() {
        let line_end = memchr::memchr(b'\n', &data[p..]).map_or(data.len(), |i| p + i + 1);
        let line = String::from_utf8_lossy(&data[p..line_end]);
        let line = line.trim_end_matches(['\r', '\n']);
        if line.trim().is_empty() {
            p = line_end;
            continue;
        }
        if let Some(h) = sngrep_header(line) {
            pending = Some(h);
            p = line_end;
            continue;
        }
        if !is_sip(&data[p..]) {
            return Err(damaged(
                name,
                p,
                format!("expected a SIP start line or an sngrep header line, found {:?}", truncate(line, 60)),
            ));
        }
        let len = match next_message(&data[p..], MAX_TCP_MESSAGE) {
            Ok(Some((_, len))) => len,
            Ok(None) => {
                return Err(damaged(
                    name,
                    p,
                    "the message is cut short (the file ends before its Content-Length is reached)",
                ));
            }
            Err(FrameError::MissingContentLength) => unframed_len(&data[p..]),
            Err(e) => return Err(damaged(name, p, e.to_string())),
        };
        let bytes = Bytes::copy_from_slice(&data[p..p + len]);
        let (time, src, dst) = pending.take().unwrap_or_else(|| {
            let (src, dst) = addresses_from_via(&bytes);
            (Duration::ZERO, src, dst)
        });
        out.push(TraceMsg {
            time,
            src,
            dst,
            proto: proto_from_via(&bytes),
            data: bytes,
        });
        p += len;
    }
    Ok(out)
}

fn truncate(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// The length of a message without Content-Length (allowed on UDP,
/// RFC 3261 §18.3 / §20.14): its headers, and a body running to the next
/// blank line followed by a message or a header line, or to the end.
fn unframed_len(data: &[u8]) -> usize {
    let Some(head_end) = memchr::memmem::find(data, b"\r\n\r\n").map(|i| i + 4) else {
        return data.len();
    };
    let mut q = head_end;
    while let Some(i) = memchr::memmem::find(&data[q..], b"\r\n\r\n") {
        let next = q + i + 4;
        let rest = &data[next..];
        let line_end = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
        let line = String::from_utf8_lossy(&rest[..line_end]);
        if is_sip(rest) || sngrep_header(line.trim_end()).is_some() {
            return q + i + 2;
        }
        q = next;
    }
    let mut end = data.len();
    while end > head_end && matches!(data[end - 1], b'\r' | b'\n') {
        end -= 1;
    }
    end
}

/// For a text message without addresses: a request comes from its top
/// Via's sent-by, a reply goes to it (RFC 3261 §18.2.2); the other end is
/// unknown.
fn addresses_from_via(data: &Bytes) -> (SocketAddr, SocketAddr) {
    let Ok(msg) = crate::sip::SipMessage::parse(data.clone()) else {
        return (UNKNOWN, UNKNOWN);
    };
    let via = msg.top_via();
    let Some(ip) = via.received().or(via.host.ip) else {
        return (UNKNOWN, UNKNOWN);
    };
    let port = match via.rport() {
        Some(Some(p)) => p,
        _ => via.port.unwrap_or(5060),
    };
    let at = SocketAddr::new(ip, port);
    if msg.is_request() { (at, UNKNOWN) } else { (UNKNOWN, at) }
}

/// The transport named by the top Via: a request and its replies travel
/// the way the request's sender chose.
fn proto_from_via(data: &Bytes) -> Proto {
    crate::sip::SipMessage::parse(data.clone())
        .ok()
        .and_then(|m| crate::transport::via_proto(m.top_via()))
        .unwrap_or(Proto::Udp)
}

#[cfg(test)]
mod tests;
