//! The relay's data plane: UDP sockets in pairs (RTP on an even port, RTCP
//! on the next, RFC 3550 §11), symmetric latching, and forwarding between
//! the two sides of a stream.
//!
//! Shape, and why (DESIGN.md, "Wakeups, not parsing, are the cost"):
//! - each stream belongs to one forwarding thread (round-robin at open), and
//!   each thread has one epoll set holding its streams' sockets, so a packet
//!   is read, checked and sent by the thread that was woken for it, with no
//!   hand-off and no lock;
//! - a ready socket is read with `recvmmsg` into buffers allocated once per
//!   thread, and what it held goes out of the paired socket with one
//!   `sendmmsg` pointing at the same buffers (no copy, no allocation);
//! - control operations (open, set_peer, close) are messages on a channel
//!   plus an eventfd write that wakes the owning thread; the thread applies
//!   them between batches, so the per-packet path reads only its own state;
//! - counters are published with plain atomic stores after each batch and
//!   read by anyone without stopping the forwarding.
//!
//! Measured with `benches/forward-rtpengine.sh` (2-core VM, serlua-rtpload
//! on the same machine, one forwarding thread): 200 calls (20,000
//! packets/s) cost 4.0 CPU-s per million packets relayed, rtpengine's
//! userspace forwarding 7.9 under the same load. Sleeping up to 0.5-1 ms
//! between wakeups to gather more packets per wakeup was tried and gave
//! nothing measurable at 50-500 calls (arrivals already come several per
//! wakeup) while adding that much latency, so the thread blocks in
//! epoll_wait and forwards at once.
//!
//! Latching follows mediaproxy and rtpengine: a side's real address is the
//! source of its first packet (whatever its SDP said, which behind NAT is a
//! private address), and a source change is accepted only after the latched
//! one has been silent for [`RELATCH_AFTER`] (a NAT rebinding, a phone that
//! changed network), so a stray or spoofed packet cannot steal a call.

use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::{RelayError, Side};

/// How long a latched source must have been silent before packets from
/// another source re-latch the side (a NAT that rebound the phone's
/// mapping). Shorter and a stray packet could hijack a live call; much
/// longer and media stays one-way after a rebinding.
pub const RELATCH_AFTER: Duration = Duration::from_secs(2);

/// Receive buffer asked of every media socket. At 50 packets/s a stream
/// needs little, but a forwarding thread that is descheduled for a few
/// milliseconds under load must not lose what arrived meanwhile; the kernel
/// caps it at `net.core.rmem_max` and memory is charged only for what is
/// queued.
const RCVBUF: usize = 1 << 20;

/// Index of the RTP socket of a pair.
const RTP: usize = 0;
/// Index of the RTCP socket of a pair.
const RTCP: usize = 1;

/// epoll token of a thread's waker (socket tokens are `slot << 2 | side << 1 | kind`).
const WAKER: u64 = u64::MAX;

/// How the data plane is set up.
#[derive(Clone, Debug)]
pub struct ForwardConfig {
    /// Address the media sockets bind to; its family (IPv4 or IPv6) is the
    /// family of every media socket. An IPv6 wildcard (`::`) also serves
    /// IPv4 peers through v4-mapped addresses.
    pub bind: IpAddr,
    /// Port range (inclusive) for RTP/RTCP pairs: each pair is an even port
    /// and the next odd one, both inside the range.
    pub ports: (u16, u16),
    /// Forwarding threads (0 counts as 1).
    pub threads: usize,
}

/// Counters of packets received from one side of a stream.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LegCounters {
    /// Packets received (RTP and RTCP) from this side and relayed.
    pub packets: u64,
    /// Bytes of those packets (UDP payload).
    pub bytes: u64,
    /// When the last packet from this side's latched source arrived, relayed
    /// or not (a held call whose far end still sends is alive: what a media
    /// timeout should look at).
    pub last_packet: Option<Instant>,
    /// The source latched from the first RTP packet.
    pub latched: Option<SocketAddr>,
    /// The source latched from the first RTCP packet (RTCP latches on its
    /// own: a NAT maps the RTCP port separately).
    pub latched_rtcp: Option<SocketAddr>,
    /// Packets from this side dropped because the other side had no address
    /// yet (nothing latched, nothing announced: a call on hold).
    pub dropped_no_peer: u64,
    /// Packets dropped because they came from a source other than the
    /// latched one while that one was still active.
    pub dropped_foreign: u64,
    /// Packets dropped for other reasons: larger than the receive buffer,
    /// or refused by the kernel when sent on.
    pub dropped_error: u64,
}

/// The forwarding threads and the port pool.
pub struct Forwarder {
    bind: IpAddr,
    range: (u16, u16),
    pool: Arc<Mutex<PortPool>>,
    workers: Vec<WorkerHandle>,
    next_worker: AtomicUsize,
    epoch: Instant,
}

/// The control end of one forwarding thread.
struct WorkerHandle {
    tx: mpsc::Sender<Ctl>,
    waker: Arc<sys::EventFd>,
    stats: Arc<WorkerStats>,
    thread: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    /// Queues a control message and wakes the thread; false when the thread
    /// is gone.
    fn send(&self, msg: Ctl) -> Result<(), Ctl> {
        self.tx.send(msg).map_err(|e| e.0)?;
        self.waker.wake();
        Ok(())
    }
}

impl Forwarder {
    /// Starts the forwarding threads. Fails when the range holds no even/odd
    /// port pair or a thread's epoll set cannot be made. Raises the process's
    /// open-file limit towards what the whole range needs (one descriptor
    /// per port), as far as the hard limit allows.
    pub fn start(cfg: ForwardConfig) -> Result<Arc<Forwarder>, RelayError> {
        let (lo, hi) = cfg.ports;
        let pool = PortPool::new(lo, hi);
        if pool.free.is_empty() {
            return Err(RelayError::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("RTP port range {lo}-{hi} holds no even/odd port pair"),
            )));
        }
        sys::raise_nofile(pool.free.len() * 2 + 256);
        let epoch = Instant::now();
        let pool = Arc::new(Mutex::new(pool));
        let mut workers = Vec::new();
        for n in 0..cfg.threads.max(1) {
            let epoll = sys::Epoll::new()?;
            let waker = Arc::new(sys::EventFd::new()?);
            epoll.add(waker.as_raw_fd(), WAKER)?;
            let (tx, rx) = mpsc::channel();
            let stats = Arc::new(WorkerStats::default());
            let worker = Worker {
                epoll,
                waker: waker.clone(),
                rx,
                streams: Vec::new(),
                free_slots: Vec::new(),
                pool: pool.clone(),
                stats: stats.clone(),
                epoch,
                packets: 0,
                bytes: 0,
                dropped: 0,
            };
            let thread = std::thread::Builder::new()
                .name(format!("relay-fwd-{n}"))
                .spawn(move || worker.run())?;
            workers.push(WorkerHandle {
                tx,
                waker,
                stats,
                thread: Some(thread),
            });
        }
        Ok(Arc::new(Forwarder {
            bind: cfg.bind,
            range: (lo, hi),
            pool,
            workers,
            next_worker: AtomicUsize::new(0),
            epoch,
        }))
    }

    /// Opens a stream: an RTP/RTCP port pair facing each side, taken from
    /// the range in the order ports were freed (a port closed by one call is
    /// handed out again only after every other free one, so a late packet of
    /// that call cannot reach the next). A port some other process holds is
    /// skipped. `PortsExhausted` when no two pairs can be bound.
    pub fn open_stream(self: &Arc<Self>) -> Result<StreamHandle, RelayError> {
        let exhausted = || RelayError::PortsExhausted(format!("{}-{}", self.range.0, self.range.1));
        let (caller, callee) = {
            let mut pool = self.pool.lock();
            let caller = pool.take_pair(self.bind)?.ok_or_else(exhausted)?;
            let callee = match pool.take_pair(self.bind) {
                Ok(Some(pair)) => pair,
                other => {
                    let port = caller.0;
                    drop(caller);
                    pool.give_back(port);
                    return Err(match other {
                        Err(e) => e.into(),
                        _ => exhausted(),
                    });
                }
            };
            (caller, callee)
        };
        let ports = [caller.0, callee.0];
        let shared = Arc::new(StreamShared::default());
        let stream = Box::new(Stream {
            socks: [caller.1, callee.1],
            ports,
            v6: self.bind.is_ipv6(),
            legs: Default::default(),
            shared: shared.clone(),
        });
        let worker = self.next_worker.fetch_add(1, Ordering::Relaxed) % self.workers.len();
        if let Err(Ctl::Open(stream)) = self.workers[worker].send(Ctl::Open(stream)) {
            drop(stream);
            let mut pool = self.pool.lock();
            pool.give_back(ports[0]);
            pool.give_back(ports[1]);
            return Err(RelayError::Io(io::Error::other("relay forwarding thread has stopped")));
        }
        Ok(StreamHandle {
            fwd: self.clone(),
            worker,
            ports,
            shared,
        })
    }

    /// Packets and bytes relayed since start (every stream, both ways).
    pub fn totals(&self) -> (u64, u64) {
        self.workers.iter().fold((0, 0), |(p, b), w| {
            (
                p + w.stats.packets.load(Ordering::Relaxed),
                b + w.stats.bytes.load(Ordering::Relaxed),
            )
        })
    }

    /// Packets received and not relayed since start (no peer, foreign
    /// source, errors), every stream.
    pub fn dropped(&self) -> u64 {
        self.workers.iter().map(|w| w.stats.dropped.load(Ordering::Relaxed)).sum()
    }

    /// Ports of the range free for new streams (a stream takes four: an
    /// RTP/RTCP pair per side). Ports another process holds count as free
    /// until a stream tries them.
    pub fn ports_free(&self) -> usize {
        self.pool.lock().free.len() * 2
    }

    /// Ports held by open streams (their sockets are bound), including
    /// streams whose handle was dropped but whose thread has not yet closed
    /// them.
    pub fn ports_in_use(&self) -> usize {
        self.pool.lock().in_use * 2
    }

    /// The configured range, as `PortsExhausted` and the sessions view show it.
    pub fn port_range(&self) -> (u16, u16) {
        self.range
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        // Every StreamHandle holds an Arc, so no stream is open any more;
        // closes still queued are applied before Stop (the channel is FIFO).
        for w in &self.workers {
            let _ = w.send(Ctl::Stop);
        }
        for w in &mut self.workers {
            if let Some(t) = w.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// One stream on the data plane; dropping it closes its sockets and frees
/// its ports.
pub struct StreamHandle {
    fwd: Arc<Forwarder>,
    worker: usize,
    ports: [u16; 2],
    shared: Arc<StreamShared>,
}

impl StreamHandle {
    /// The RTP port facing `side` (that side sends here); RTCP is one above.
    pub fn local_port(&self, side: Side) -> u16 {
        self.ports[idx(side)]
    }

    /// Where packets for `side` go until that side's own packets latch its
    /// real address (the address its SDP announced); None holds the media.
    /// RTCP goes to `rtcp`, or when None to the RTP address's port + 1
    /// (RFC 3550 §11; RFC 3605's `a=rtcp` is what gives an explicit one).
    /// An unspecified address (`c=0.0.0.0`, RFC 3264 hold) or port 0 counts
    /// as none.
    pub fn set_peer(&self, side: Side, rtp: Option<SocketAddr>, rtcp: Option<SocketAddr>) {
        let msg = Ctl::SetPeer {
            stream: self.shared.clone(),
            side: idx(side),
            rtp,
            rtcp,
        };
        // A stopped thread has closed the sockets too: nothing left to steer.
        let _ = self.fwd.workers[self.worker].send(msg);
    }

    /// Counters of what `side` sent.
    pub fn counters(&self, side: Side) -> LegCounters {
        let leg = &self.shared.legs[idx(side)];
        let latched = *leg.latched.lock();
        let last = leg.last_ns.load(Ordering::Relaxed);
        LegCounters {
            packets: leg.packets.load(Ordering::Relaxed),
            bytes: leg.bytes.load(Ordering::Relaxed),
            last_packet: (last > 0).then(|| self.fwd.epoch + Duration::from_nanos(last - 1)),
            latched: latched[RTP],
            latched_rtcp: latched[RTCP],
            dropped_no_peer: leg.no_peer.load(Ordering::Relaxed),
            dropped_foreign: leg.foreign.load(Ordering::Relaxed),
            dropped_error: leg.errors.load(Ordering::Relaxed),
        }
    }
}

impl Drop for StreamHandle {
    fn drop(&mut self) {
        let _ = self.fwd.workers[self.worker].send(Ctl::Close(self.shared.clone()));
    }
}

impl std::fmt::Debug for StreamHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamHandle")
            .field("caller_port", &self.ports[0])
            .field("callee_port", &self.ports[1])
            .finish()
    }
}

fn idx(side: Side) -> usize {
    match side {
        Side::Caller => 0,
        Side::Callee => 1,
    }
}

/// What a forwarding thread is told.
enum Ctl {
    /// Take over a stream's sockets.
    Open(Box<Stream>),
    /// A side's announced addresses changed.
    SetPeer {
        stream: Arc<StreamShared>,
        side: usize,
        rtp: Option<SocketAddr>,
        rtcp: Option<SocketAddr>,
    },
    /// Close a stream and free its ports.
    Close(Arc<StreamShared>),
    /// End the thread.
    Stop,
}

/// Counters of one side, written by the owning thread, read by anyone.
/// A cache line each, so two threads' streams never share one.
#[repr(align(64))]
#[derive(Default)]
struct LegShared {
    packets: AtomicU64,
    bytes: AtomicU64,
    /// Nanoseconds since the forwarder's epoch, plus one (0: never).
    last_ns: AtomicU64,
    no_peer: AtomicU64,
    foreign: AtomicU64,
    errors: AtomicU64,
    /// Written only when a side latches (once per call, or a rebinding).
    latched: Mutex<[Option<SocketAddr>; 2]>,
}

#[derive(Default)]
struct StreamShared {
    legs: [LegShared; 2],
    /// The stream's slot in its thread, set by that thread when it opens it
    /// (control messages after Open find it there: the channel is FIFO).
    slot: AtomicUsize,
}

#[repr(align(64))]
#[derive(Default)]
struct WorkerStats {
    packets: AtomicU64,
    bytes: AtomicU64,
    dropped: AtomicU64,
}

/// The free RTP ports (even; RTCP is the next): freed ones go to the back.
struct PortPool {
    free: VecDeque<u16>,
    in_use: usize,
}

impl PortPool {
    fn new(lo: u16, hi: u16) -> PortPool {
        let first = u32::from(lo) + u32::from(lo) % 2;
        let free = (first..u32::from(hi)).step_by(2).filter_map(|p| u16::try_from(p).ok()).collect();
        PortPool { free, in_use: 0 }
    }

    /// Binds the next free pair: Ok(None) when every free pair is taken by
    /// someone else (those stay in the pool: they may be released later).
    fn take_pair(&mut self, bind: IpAddr) -> io::Result<Option<(u16, [UdpSocket; 2])>> {
        for _ in 0..self.free.len() {
            let Some(port) = self.free.pop_front() else { break };
            match bind_pair(bind, port) {
                Ok(socks) => {
                    self.in_use += 1;
                    return Ok(Some((port, socks)));
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::AddrInUse | io::ErrorKind::PermissionDenied) => {
                    tracing::debug!(port, "relay: RTP port held by another process, skipped");
                    self.free.push_back(port);
                }
                Err(e) => {
                    self.free.push_front(port);
                    return Err(e);
                }
            }
        }
        Ok(None)
    }

    fn give_back(&mut self, port: u16) {
        self.in_use = self.in_use.saturating_sub(1);
        self.free.push_back(port);
    }
}

fn bind_pair(ip: IpAddr, port: u16) -> io::Result<[UdpSocket; 2]> {
    let rtp = bind_udp(SocketAddr::new(ip, port))?;
    let rtcp = bind_udp(SocketAddr::new(ip, port + 1))?;
    Ok([rtp, rtcp])
}

fn bind_udp(addr: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_nonblocking(true)?;
    // Best effort: a smaller buffer still works, it only drops sooner.
    let _ = s.set_recv_buffer_size(RCVBUF);
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// A stream as its thread sees it.
struct Stream {
    /// `[side][RTP | RTCP]`.
    socks: [[UdpSocket; 2]; 2],
    ports: [u16; 2],
    /// The sockets are IPv6: IPv4 peers are sent to as v4-mapped.
    v6: bool,
    legs: [Leg; 2],
    shared: Arc<StreamShared>,
}

/// What a thread knows of one side: where it is, and its counters (the
/// thread's own copies; published to `LegShared` after each batch).
#[derive(Default)]
struct Leg {
    /// From set_peer: `[RTP, RTCP]`.
    announced: [Option<SocketAddr>; 2],
    /// Latched sources: `[RTP, RTCP]`.
    latched: [Option<SocketAddr>; 2],
    /// When the latched source was last heard (ns since the epoch).
    heard: [u64; 2],
    /// Where packets for this side go, ready for sendmmsg: `[RTP, RTCP]`.
    dest: [Option<sys::Dest>; 2],
    packets: u64,
    bytes: u64,
    last: u64,
    no_peer: u64,
    foreign: u64,
    errors: u64,
}

/// What latching made of a packet's source.
enum Admit {
    /// The latched source (or a first one): relay it.
    Known,
    /// A new source was latched: relay it, and the side's address changed.
    Latched,
    /// Another source while the latched one is live: drop it.
    Foreign,
}

impl Leg {
    fn admit(&mut self, kind: usize, src: SocketAddr, now: u64) -> Admit {
        match self.latched[kind] {
            Some(a) if a == src => {
                self.heard[kind] = now;
                Admit::Known
            }
            Some(_) if now.saturating_sub(self.heard[kind]) <= RELATCH_AFTER.as_nanos() as u64 => Admit::Foreign,
            _ => {
                self.latched[kind] = Some(src);
                self.heard[kind] = now;
                Admit::Latched
            }
        }
    }

    /// Where packets of `kind` for this side go: its latched source, else
    /// what it announced (RTCP: the announced RTCP address, else the
    /// announced RTP port + 1).
    fn target(&self, kind: usize) -> Option<SocketAddr> {
        if let Some(a) = self.latched[kind] {
            return Some(a);
        }
        let usable = |a: &SocketAddr| !a.ip().is_unspecified() && a.port() != 0;
        match kind {
            RTP => self.announced[RTP].filter(usable),
            _ => self.announced[RTCP].filter(usable).or_else(|| {
                let rtp = self.announced[RTP].filter(usable)?;
                Some(SocketAddr::new(rtp.ip(), rtp.port().checked_add(1)?))
            }),
        }
    }

    fn refresh(&mut self, kind: usize, v6: bool) {
        self.dest[kind] = self.target(kind).and_then(|a| sys::Dest::new(a, v6));
    }
}

/// A forwarding thread.
struct Worker {
    epoll: sys::Epoll,
    waker: Arc<sys::EventFd>,
    rx: mpsc::Receiver<Ctl>,
    streams: Vec<Option<Box<Stream>>>,
    free_slots: Vec<usize>,
    pool: Arc<Mutex<PortPool>>,
    stats: Arc<WorkerStats>,
    epoch: Instant,
    packets: u64,
    bytes: u64,
    dropped: u64,
}

impl Worker {
    fn run(mut self) {
        // Made here: its raw pointers into its own buffers keep it on this thread.
        let mut batch = sys::Batch::new();
        loop {
            let n = match self.epoll.wait(-1) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    tracing::error!("relay: epoll_wait failed, forwarding thread stops: {e}");
                    return;
                }
            };
            let now = self.epoch.elapsed().as_nanos() as u64;
            // Control first, so a set_peer made just before a packet was sent
            // applies to it. A socket event of a stream closed here finds an
            // empty slot, or the slot's new stream, whose socket then just
            // reads nothing: harmless either way.
            if (0..n).any(|i| self.epoll.token(i) == WAKER) {
                self.waker.drain();
                if !self.control() {
                    return;
                }
            }
            for i in 0..n {
                let token = self.epoll.token(i);
                if token == WAKER {
                    continue;
                }
                let slot = (token >> 2) as usize;
                let Some(stream) = self.streams.get_mut(slot).and_then(|s| s.as_deref_mut()) else {
                    continue;
                };
                let (p, b, d) = pump(stream, ((token >> 1) & 1) as usize, (token & 1) as usize, &mut batch, now);
                self.packets += p;
                self.bytes += b;
                self.dropped += d;
            }
            self.stats.packets.store(self.packets, Ordering::Relaxed);
            self.stats.bytes.store(self.bytes, Ordering::Relaxed);
            self.stats.dropped.store(self.dropped, Ordering::Relaxed);
        }
    }

    /// Applies queued control messages; false on Stop.
    fn control(&mut self) -> bool {
        while let Ok(msg) = self.rx.try_recv() {
            match msg {
                Ctl::Open(stream) => self.open(stream),
                Ctl::SetPeer { stream, side, rtp, rtcp } => {
                    let slot = stream.slot.load(Ordering::Relaxed);
                    let found = self.streams.get_mut(slot).and_then(|s| s.as_deref_mut());
                    if let Some(st) = found.filter(|st| Arc::ptr_eq(&st.shared, &stream)) {
                        let v6 = st.v6;
                        let leg = &mut st.legs[side];
                        leg.announced = [rtp, rtcp];
                        leg.refresh(RTP, v6);
                        leg.refresh(RTCP, v6);
                    }
                }
                Ctl::Close(stream) => self.close(&stream),
                Ctl::Stop => return false,
            }
        }
        true
    }

    fn open(&mut self, stream: Box<Stream>) {
        let slot = self.free_slots.pop().unwrap_or(self.streams.len());
        let mut registered = Ok(());
        for (side, socks) in stream.socks.iter().enumerate() {
            for (kind, sock) in socks.iter().enumerate() {
                if registered.is_ok() {
                    registered = self
                        .epoll
                        .add(sock.as_raw_fd(), (slot as u64) << 2 | (side as u64) << 1 | kind as u64);
                }
            }
        }
        if let Err(e) = registered {
            tracing::error!("relay: cannot watch the sockets of a new stream (ports {:?}): {e}", stream.ports);
            self.free_slots.push(slot);
            self.release(stream);
            return;
        }
        stream.shared.slot.store(slot, Ordering::Relaxed);
        if slot == self.streams.len() {
            self.streams.push(Some(stream));
        } else {
            self.streams[slot] = Some(stream);
        }
    }

    fn close(&mut self, shared: &Arc<StreamShared>) {
        let slot = shared.slot.load(Ordering::Relaxed);
        let Some(entry) = self.streams.get_mut(slot) else { return };
        if !entry.as_ref().is_some_and(|st| Arc::ptr_eq(&st.shared, shared)) {
            return;
        }
        if let Some(stream) = entry.take() {
            self.free_slots.push(slot);
            self.release(stream);
        }
    }

    /// Closes a stream's sockets, then returns its ports to the pool (in
    /// that order: a port handed out again must be bindable).
    fn release(&mut self, stream: Box<Stream>) {
        for sock in stream.socks.iter().flatten() {
            // Closing removes it from the set anyway; this keeps the set exact
            // even if a descriptor were ever shared.
            let _ = self.epoll.remove(sock.as_raw_fd());
        }
        let ports = stream.ports;
        drop(stream);
        let mut pool = self.pool.lock();
        pool.give_back(ports[0]);
        pool.give_back(ports[1]);
    }
}

/// Reads what waits on the `kind` socket facing side `x` and relays it out
/// of the same kind of socket facing the other side. Returns packets and
/// bytes relayed, and packets dropped.
fn pump(st: &mut Stream, x: usize, kind: usize, batch: &mut sys::Batch, now: u64) -> (u64, u64, u64) {
    let y = 1 - x;
    let in_fd: RawFd = st.socks[x][kind].as_raw_fd();
    let out_fd: RawFd = st.socks[y][kind].as_raw_fd();
    let (mut relayed, mut bytes, mut dropped) = (0u64, 0u64, 0u64);
    loop {
        let n = match batch.recv(in_fd) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // WouldBlock: drained. Anything else (an ICMP error queued on the
            // socket) is consumed by this read; the next event retries.
            Err(_) => break,
        };
        // Only side x's latch can change below, so y's address holds for the batch.
        let dest = st.legs[y].dest[kind];
        let leg = &mut st.legs[x];
        if let Some(d) = &dest {
            batch.set_dest(d);
        }
        let mut batch_bytes = 0u64;
        for i in 0..n {
            let Some(src) = batch.source(i).filter(|_| !batch.truncated(i)) else {
                leg.errors += 1;
                continue;
            };
            match leg.admit(kind, src, now) {
                Admit::Known => {}
                Admit::Latched => {
                    tracing::debug!(port = st.ports[x], ?src, rtcp = kind == RTCP, "relay: latched");
                    leg.refresh(kind, st.v6);
                    st.shared.legs[x].latched.lock()[kind] = Some(src);
                }
                Admit::Foreign => {
                    leg.foreign += 1;
                    continue;
                }
            }
            leg.last = now;
            if dest.is_none() {
                leg.no_peer += 1;
                continue;
            }
            batch_bytes += batch.len(i) as u64;
            batch.queue(i);
        }
        let (sent, failed) = batch.flush(out_fd);
        if failed > 0 {
            // Rare (a full send buffer, a firewall): bytes are not worth a
            // per-packet sum here, the packet count says it.
            leg.errors += failed as u64;
            batch_bytes = batch_bytes * sent as u64 / (sent + failed) as u64;
        }
        leg.packets += sent as u64;
        leg.bytes += batch_bytes;
        relayed += sent as u64;
        bytes += batch_bytes;
        dropped += (n - sent) as u64;
        if n < sys::BATCH {
            // A short read ended on EAGAIN: the socket is empty.
            break;
        }
    }
    let leg = &st.legs[x];
    let sh = &st.shared.legs[x];
    sh.packets.store(leg.packets, Ordering::Relaxed);
    sh.bytes.store(leg.bytes, Ordering::Relaxed);
    if leg.latched.iter().any(Option::is_some) {
        sh.last_ns.store(leg.last + 1, Ordering::Relaxed);
    }
    sh.no_peer.store(leg.no_peer, Ordering::Relaxed);
    sh.foreign.store(leg.foreign, Ordering::Relaxed);
    sh.errors.store(leg.errors, Ordering::Relaxed);
    (relayed, bytes, dropped)
}

/// The system calls of the data plane, each wrapped once with its safety
/// argument: epoll, eventfd, recvmmsg/sendmmsg over preallocated headers.
mod sys {
    use std::io;
    use std::mem::{size_of, zeroed};
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::ptr;

    /// Datagrams read (and sent) per system call.
    pub const BATCH: usize = 32;
    /// Receive buffer per datagram: an Ethernet-MTU RTP packet with room to
    /// spare; a larger datagram is truncated by the kernel and dropped.
    pub const BUF_LEN: usize = 4096;
    /// Events taken per epoll_wait.
    const EVENTS: usize = 256;

    /// An epoll set (level-triggered: a socket left non-empty is reported
    /// again, so a full batch never strands packets).
    pub struct Epoll {
        fd: OwnedFd,
        events: Box<[libc::epoll_event]>,
    }

    impl Epoll {
        pub fn new() -> io::Result<Epoll> {
            // SAFETY: plain system call; the result is checked before use.
            let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: fd is a fresh descriptor nobody else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            Ok(Epoll {
                fd,
                events: vec![libc::epoll_event { events: 0, u64: 0 }; EVENTS].into_boxed_slice(),
            })
        }

        pub fn add(&self, fd: RawFd, token: u64) -> io::Result<()> {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: token,
            };
            // SAFETY: ev is a valid epoll_event for the duration of the call.
            let r = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
            if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
        }

        pub fn remove(&self, fd: RawFd) -> io::Result<()> {
            let mut ev = libc::epoll_event { events: 0, u64: 0 };
            // SAFETY: as in add (a non-null event for old kernels).
            let r = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, &mut ev) };
            if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
        }

        /// Waits for events; their tokens are then read with `token(i)`.
        pub fn wait(&mut self, timeout_ms: i32) -> io::Result<usize> {
            // SAFETY: events has room for EVENTS entries, which is what the kernel is told.
            let n = unsafe { libc::epoll_wait(self.fd.as_raw_fd(), self.events.as_mut_ptr(), EVENTS as i32, timeout_ms) };
            if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
        }

        pub fn token(&self, i: usize) -> u64 {
            // Copied out: the struct is packed on x86_64.
            let ev = self.events[i];
            ev.u64
        }
    }

    /// A non-blocking eventfd: how a control message wakes a thread.
    pub struct EventFd(OwnedFd);

    impl EventFd {
        pub fn new() -> io::Result<EventFd> {
            // SAFETY: plain system call; the result is checked before use.
            let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: fd is a fresh descriptor nobody else owns.
            Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
        }

        pub fn wake(&self) {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from a live u64. A full counter (EAGAIN)
            // already means "awake": nothing to do then.
            unsafe { libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), 8) };
        }

        pub fn drain(&self) {
            let mut v: u64 = 0;
            // SAFETY: reads 8 bytes into a live u64; EAGAIN (nothing to read) is fine.
            unsafe { libc::read(self.0.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        }
    }

    impl AsRawFd for EventFd {
        fn as_raw_fd(&self) -> RawFd {
            self.0.as_raw_fd()
        }
    }

    /// A destination in the kernel's form, made once per address change
    /// rather than once per packet.
    #[derive(Clone, Copy)]
    pub struct Dest {
        /// Room for either family (a sockaddr_in is a prefix-sized view of it).
        sa: libc::sockaddr_in6,
        len: libc::socklen_t,
    }

    impl Dest {
        /// None when the address cannot be reached from a socket of this
        /// family (an IPv6 peer of an IPv4 socket).
        pub fn new(addr: SocketAddr, v6_socket: bool) -> Option<Dest> {
            // SAFETY: all-zero is a valid sockaddr_in6 (and sockaddr_in).
            let mut d = Dest {
                sa: unsafe { zeroed() },
                len: 0,
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
                    // SAFETY: sockaddr_in is smaller than sockaddr_in6 with no
                    // stricter alignment, so it fits at the start of `sa`.
                    unsafe { ptr::write((&mut d.sa as *mut libc::sockaddr_in6).cast::<libc::sockaddr_in>(), sin) };
                    d.len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
                }
                (SocketAddr::V6(a), true) => d.set6(*a.ip(), a.port(), a.scope_id()),
                (SocketAddr::V4(a), true) => d.set6(a.ip().to_ipv6_mapped(), a.port(), 0),
                (SocketAddr::V6(a), false) => {
                    let v4 = a.ip().to_ipv4_mapped()?;
                    return Dest::new(SocketAddr::new(IpAddr::V4(v4), a.port()), false);
                }
            }
            Some(d)
        }

        fn set6(&mut self, ip: Ipv6Addr, port: u16, scope: u32) {
            self.sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            self.sa.sin6_port = port.to_be();
            self.sa.sin6_addr = libc::in6_addr { s6_addr: ip.octets() };
            self.sa.sin6_scope_id = scope;
            self.len = size_of::<libc::sockaddr_in6>() as libc::socklen_t;
        }
    }

    /// A packet source as the kernel wrote it; v4-mapped IPv6 is folded to
    /// IPv4 so a dual-stack socket latches the same address a v4 one would.
    fn parse(ss: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
        let len = len as usize;
        match i32::from(ss.ss_family) {
            libc::AF_INET if len >= size_of::<libc::sockaddr_in>() => {
                // SAFETY: the family and length say the storage holds a sockaddr_in.
                let sin = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
                let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sin.sin_port))))
            }
            libc::AF_INET6 if len >= size_of::<libc::sockaddr_in6>() => {
                // SAFETY: the family and length say the storage holds a sockaddr_in6.
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

    /// Preallocated recvmmsg/sendmmsg headers over one set of buffers: a
    /// batch read into them is sent on from them.
    pub struct Batch {
        bufs: Box<[u8]>,
        names: Box<[libc::sockaddr_storage]>,
        iov: Box<[libc::iovec]>,
        hdrs: Box<[libc::mmsghdr]>,
        out_iov: Box<[libc::iovec]>,
        out: Box<[libc::mmsghdr]>,
        dest: Box<Dest>,
        /// Headers the last recv used (their name lengths need resetting).
        used: usize,
        queued: usize,
    }

    impl Batch {
        pub fn new() -> Batch {
            // SAFETY (all the zeroed() below): these C structs are plain data
            // for which all-zero (null pointers, zero lengths) is valid.
            let mut b = Batch {
                bufs: vec![0u8; BATCH * BUF_LEN].into_boxed_slice(),
                names: vec![unsafe { zeroed::<libc::sockaddr_storage>() }; BATCH].into_boxed_slice(),
                iov: vec![unsafe { zeroed::<libc::iovec>() }; BATCH].into_boxed_slice(),
                hdrs: vec![unsafe { zeroed::<libc::mmsghdr>() }; BATCH].into_boxed_slice(),
                out_iov: vec![unsafe { zeroed::<libc::iovec>() }; BATCH].into_boxed_slice(),
                out: vec![unsafe { zeroed::<libc::mmsghdr>() }; BATCH].into_boxed_slice(),
                dest: Box::new(Dest {
                    sa: unsafe { zeroed() },
                    len: 0,
                }),
                used: BATCH,
                queued: 0,
            };
            // The pointers below point into boxed slices owned by `b`, whose
            // heap storage never moves or shrinks while `b` lives.
            let base = b.bufs.as_mut_ptr();
            let dest = (&mut b.dest.sa as *mut libc::sockaddr_in6).cast::<libc::c_void>();
            for i in 0..BATCH {
                // SAFETY: i * BUF_LEN + BUF_LEN <= bufs.len().
                b.iov[i].iov_base = unsafe { base.add(i * BUF_LEN) }.cast();
                b.iov[i].iov_len = BUF_LEN;
                let h = &mut b.hdrs[i].msg_hdr;
                h.msg_name = (&mut b.names[i] as *mut libc::sockaddr_storage).cast();
                h.msg_iov = &mut b.iov[i];
                h.msg_iovlen = 1;
                let o = &mut b.out[i].msg_hdr;
                o.msg_name = dest;
                o.msg_iov = &mut b.out_iov[i];
                o.msg_iovlen = 1;
            }
            b
        }

        /// Reads up to BATCH datagrams without blocking; Ok(0) never happens
        /// (an empty socket is WouldBlock).
        pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
            for h in &mut self.hdrs[..self.used] {
                h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            }
            self.used = 0;
            self.queued = 0;
            // SAFETY: hdrs holds BATCH headers whose names and iovecs point
            // at live buffers of the sizes they declare (see new()).
            let n = unsafe { libc::recvmmsg(fd, self.hdrs.as_mut_ptr(), BATCH as _, libc::MSG_DONTWAIT as _, ptr::null_mut()) };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            self.used = n as usize;
            Ok(self.used)
        }

        pub fn len(&self, i: usize) -> usize {
            self.hdrs[i].msg_len as usize
        }

        pub fn truncated(&self, i: usize) -> bool {
            self.hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0
        }

        pub fn source(&self, i: usize) -> Option<SocketAddr> {
            parse(&self.names[i], self.hdrs[i].msg_hdr.msg_namelen)
        }

        /// Where queued datagrams go (one destination per batch: they all
        /// came in on one socket and leave by its pair).
        pub fn set_dest(&mut self, d: &Dest) {
            *self.dest = *d;
        }

        /// Queues received datagram `i` for sending, from its own buffer.
        pub fn queue(&mut self, i: usize) {
            let q = self.queued;
            self.out_iov[q].iov_base = self.iov[i].iov_base;
            self.out_iov[q].iov_len = self.len(i);
            self.out[q].msg_hdr.msg_namelen = self.dest.len;
            self.queued += 1;
        }

        /// Sends what is queued; returns (sent, failed).
        pub fn flush(&mut self, fd: RawFd) -> (usize, usize) {
            let total = self.queued;
            let (mut at, mut failed) = (0usize, 0usize);
            while at < total {
                // SAFETY: out[at..total] are headers set up by new() and
                // queue(), pointing at the received buffers and at `dest`.
                let r = unsafe { libc::sendmmsg(fd, self.out.as_mut_ptr().add(at), (total - at) as _, libc::MSG_DONTWAIT as _) };
                if r > 0 {
                    at += r as usize;
                    continue;
                }
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => continue,
                    io::ErrorKind::WouldBlock => {
                        failed += total - at;
                        break;
                    }
                    // The first unsent one failed on its own (unreachable
                    // address, firewall): skip it, send the rest.
                    _ => {
                        failed += 1;
                        at += 1;
                    }
                }
            }
            self.queued = 0;
            (total - failed, failed)
        }
    }

    /// Raises the soft open-file limit to at least `want` (as far as the hard
    /// limit allows): a relay holds one descriptor per port.
    pub fn raise_nofile(want: usize) {
        // SAFETY: getrlimit/setrlimit with a live rlimit struct.
        unsafe {
            let mut lim: libc::rlimit = zeroed();
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                return;
            }
            let want = want as libc::rlim_t;
            if lim.rlim_cur >= want {
                return;
            }
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// Each test has its own part of the range, below the ephemeral ports
    /// the test phones bind.
    fn start(base: u16, len: u16, threads: usize) -> Arc<Forwarder> {
        Forwarder::start(ForwardConfig {
            bind: LOCAL,
            ports: (base, base + len - 1),
            threads,
        })
        .expect("forwarder starts")
    }

    fn phone() -> UdpSocket {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind a phone");
        s.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
        s
    }

    /// A phone's RTP and RTCP sockets on consecutive ports (RTP even).
    fn phone_pair() -> (UdpSocket, UdpSocket) {
        for _ in 0..200 {
            let rtp = phone();
            let port = rtp.local_addr().expect("addr").port();
            if port % 2 != 0 {
                continue;
            }
            if let Ok(rtcp) = UdpSocket::bind(("127.0.0.1", port + 1)) {
                rtcp.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
                return (rtp, rtcp);
            }
        }
        panic!("no consecutive port pair for a test phone");
    }

    fn addr(s: &UdpSocket) -> SocketAddr {
        s.local_addr().expect("local addr")
    }

    fn relay(h: &StreamHandle, side: Side, kind: usize) -> SocketAddr {
        SocketAddr::new(LOCAL, h.local_port(side) + kind as u16)
    }

    fn recv(s: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
        let mut buf = [0u8; 2048];
        let (n, from) = s.recv_from(&mut buf).ok()?;
        Some((buf[..n].to_vec(), from))
    }

    /// Nothing arrives within a short wait.
    fn quiet(s: &UdpSocket) -> bool {
        s.set_read_timeout(Some(Duration::from_millis(150))).expect("timeout");
        let got = recv(s);
        s.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
        got.is_none()
    }

    fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let end = Instant::now() + Duration::from_secs(3);
        while !f() {
            assert!(Instant::now() < end, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Control messages reach the thread asynchronously; a round trip
    /// through the stream proves they were applied.
    fn send(from: &UdpSocket, to: SocketAddr, data: &[u8]) {
        from.send_to(data, to).expect("send");
    }

    #[test]
    fn forwards_both_ways_and_counts() {
        let fwd = start(21000, 100, 1);
        let h = fwd.open_stream().expect("stream");
        assert_eq!(h.local_port(Side::Caller) % 2, 0);
        assert_eq!(h.local_port(Side::Callee) % 2, 0);
        assert_ne!(h.local_port(Side::Caller), h.local_port(Side::Callee));
        let (a, b) = (phone(), phone());
        h.set_peer(Side::Caller, Some(addr(&a)), None);
        h.set_peer(Side::Callee, Some(addr(&b)), None);
        for i in 0..10u8 {
            send(&a, relay(&h, Side::Caller, RTP), &[i; 172]);
            let (data, from) = recv(&b).expect("caller's packet reaches the callee");
            assert_eq!(data, vec![i; 172]);
            assert_eq!(from, relay(&h, Side::Callee, RTP), "sent from the relay's callee-facing socket");
        }
        for i in 0..5u8 {
            send(&b, relay(&h, Side::Callee, RTP), &[i; 100]);
            let (data, from) = recv(&a).expect("callee's packet reaches the caller");
            assert_eq!(data, vec![i; 100]);
            assert_eq!(from, relay(&h, Side::Caller, RTP));
        }
        // Counters are published after the batch is sent: a moment later than the packet.
        wait_for("the counters", || h.counters(Side::Callee).packets == 5);
        let caller = h.counters(Side::Caller);
        let callee = h.counters(Side::Callee);
        assert_eq!((caller.packets, caller.bytes), (10, 1720));
        assert_eq!((callee.packets, callee.bytes), (5, 500));
        assert_eq!(caller.latched, Some(addr(&a)));
        assert_eq!(callee.latched, Some(addr(&b)));
        assert!(caller.last_packet.is_some_and(|t| t.elapsed() < Duration::from_secs(2)));
        assert_eq!(caller.dropped_no_peer + caller.dropped_foreign + caller.dropped_error, 0);
        wait_for("the totals", || fwd.totals() == (15, 2220));
        assert_eq!(fwd.ports_in_use(), 4);
    }

    #[test]
    fn latches_a_nated_phone_whatever_it_announced() {
        let fwd = start(21100, 100, 1);
        let h = fwd.open_stream().expect("stream");
        // The caller announced a private address (here: a socket that stands
        // for it) and really sends from its NAT's mapping.
        let (announced, nat, b) = (phone(), phone(), phone());
        h.set_peer(Side::Caller, Some(addr(&announced)), None);
        h.set_peer(Side::Callee, Some(addr(&b)), None);
        // Before the caller has sent anything, the announced address is all there is.
        send(&b, relay(&h, Side::Callee, RTP), b"early");
        assert_eq!(recv(&announced).expect("to the announced address").0, b"early");
        send(&nat, relay(&h, Side::Caller, RTP), b"hello");
        assert_eq!(recv(&b).expect("forwarded").0, b"hello");
        assert_eq!(h.counters(Side::Caller).latched, Some(addr(&nat)));
        send(&b, relay(&h, Side::Callee, RTP), b"back");
        assert_eq!(recv(&nat).expect("to the latched source").0, b"back");
        assert!(quiet(&announced), "nothing goes to the announced address once latched");
        // Someone else sending to the caller's port is not the caller.
        let intruder = phone();
        send(&intruder, relay(&h, Side::Caller, RTP), b"spoof");
        assert!(quiet(&b));
        wait_for("the foreign packet counted", || h.counters(Side::Caller).dropped_foreign == 1);
        assert_eq!(h.counters(Side::Caller).latched, Some(addr(&nat)));
        send(&b, relay(&h, Side::Callee, RTP), b"still");
        assert_eq!(recv(&nat).expect("still to the latched source").0, b"still");
        assert!(quiet(&intruder));
    }

    #[test]
    fn hold_without_a_peer_drops() {
        let fwd = start(21200, 100, 1);
        let h = fwd.open_stream().expect("stream");
        let (a, b) = (phone(), phone());
        h.set_peer(Side::Caller, Some(addr(&a)), None);
        send(&a, relay(&h, Side::Caller, RTP), b"into the void");
        wait_for("the drop counted", || h.counters(Side::Caller).dropped_no_peer == 1);
        assert_eq!(h.counters(Side::Caller).packets, 0);
        assert!(
            h.counters(Side::Caller).last_packet.is_some(),
            "a held side still shows it is alive"
        );
        // c=0.0.0.0 (RFC 2543 hold) is no peer either.
        h.set_peer(
            Side::Callee,
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), addr(&b).port())),
            None,
        );
        send(&a, relay(&h, Side::Caller, RTP), b"held");
        wait_for("the second drop counted", || h.counters(Side::Caller).dropped_no_peer == 2);
        assert!(quiet(&b));
        // Off hold.
        h.set_peer(Side::Callee, Some(addr(&b)), None);
        send(&a, relay(&h, Side::Caller, RTP), b"resumed");
        assert_eq!(recv(&b).expect("forwarded after the peer is known").0, b"resumed");
        assert_eq!(fwd.dropped(), 2);
    }

    #[test]
    fn rtcp_goes_to_rtp_plus_one_or_the_announced_port_and_latches_separately() {
        let fwd = start(21300, 100, 1);
        let h = fwd.open_stream().expect("stream");
        let (a_rtp, a_rtcp) = phone_pair();
        let (b_rtp, b_rtcp) = phone_pair();
        let b_other_rtcp = phone();
        h.set_peer(Side::Caller, Some(addr(&a_rtp)), None);
        h.set_peer(Side::Callee, Some(addr(&b_rtp)), None);
        // Announced RTP port + 1 (RFC 3550 §11).
        send(&a_rtcp, relay(&h, Side::Caller, RTCP), b"SR-a");
        let (data, from) = recv(&b_rtcp).expect("RTCP to the callee's RTP port + 1");
        assert_eq!((data.as_slice(), from), (&b"SR-a"[..], relay(&h, Side::Callee, RTCP)));
        assert!(quiet(&b_rtp), "RTCP never leaves by the RTP socket");
        // An explicit a=rtcp port (RFC 3605).
        h.set_peer(Side::Callee, Some(addr(&b_rtp)), Some(addr(&b_other_rtcp)));
        send(&a_rtcp, relay(&h, Side::Caller, RTCP), b"SR-a2");
        assert_eq!(recv(&b_other_rtcp).expect("RTCP to the announced a=rtcp").0, b"SR-a2");
        // The caller's RTCP latched on its own; its RTP has not latched yet.
        wait_for("the counters", || h.counters(Side::Caller).packets == 2);
        let c = h.counters(Side::Caller);
        assert_eq!((c.latched, c.latched_rtcp), (None, Some(addr(&a_rtcp))));
        // The callee's RTCP comes from yet another port: the reply follows it.
        let b_nat_rtcp = phone();
        send(&b_nat_rtcp, relay(&h, Side::Callee, RTCP), b"RR-b");
        assert_eq!(recv(&a_rtcp).expect("RTCP back to the caller's latched RTCP").0, b"RR-b");
        send(&a_rtcp, relay(&h, Side::Caller, RTCP), b"SR-a3");
        assert_eq!(recv(&b_nat_rtcp).expect("RTCP to the callee's latched RTCP source").0, b"SR-a3");
        // RTP is untouched by all this.
        send(&a_rtp, relay(&h, Side::Caller, RTP), b"rtp");
        assert_eq!(recv(&b_rtp).expect("RTP to the announced RTP").0, b"rtp");
        assert!(quiet(&b_nat_rtcp));
    }

    #[test]
    fn relatches_after_two_seconds_of_silence() {
        let fwd = start(21400, 100, 2);
        let h = fwd.open_stream().expect("stream");
        let (old, new, b) = (phone(), phone(), phone());
        h.set_peer(Side::Callee, Some(addr(&b)), None);
        send(&old, relay(&h, Side::Caller, RTP), b"1");
        assert_eq!(recv(&b).expect("first").0, b"1");
        std::thread::sleep(Duration::from_millis(1000));
        send(&new, relay(&h, Side::Caller, RTP), b"too early");
        assert!(quiet(&b), "the latched source spoke 1 s ago: not a rebinding");
        std::thread::sleep(Duration::from_millis(1200));
        // 2.2 s of silence from the latched source; the new one's own earlier
        // packet does not count as the old one speaking.
        send(&new, relay(&h, Side::Caller, RTP), b"rebound");
        assert_eq!(recv(&b).expect("accepted after the silence").0, b"rebound");
        wait_for("the new latch", || h.counters(Side::Caller).latched == Some(addr(&new)));
        send(&b, relay(&h, Side::Callee, RTP), b"reply");
        assert_eq!(recv(&new).expect("replies follow the new mapping").0, b"reply");
        assert!(quiet(&old));
        assert_eq!(h.counters(Side::Caller).dropped_foreign, 1);
    }

    #[test]
    fn odd_datagrams_do_not_disturb_the_stream() {
        let fwd = start(21900, 100, 1);
        let h = fwd.open_stream().expect("stream");
        let (a, b) = (phone(), phone());
        h.set_peer(Side::Callee, Some(addr(&b)), None);
        // Larger than a receive buffer: truncated by the kernel, so dropped, not cut.
        send(&a, relay(&h, Side::Caller, RTP), &[7u8; 6000]);
        wait_for("the oversized one counted", || h.counters(Side::Caller).dropped_error == 1);
        // Empty, then ordinary: both relayed as they are.
        send(&a, relay(&h, Side::Caller, RTP), b"");
        assert_eq!(recv(&b).expect("the empty datagram").0, b"");
        send(&a, relay(&h, Side::Caller, RTP), b"after");
        assert_eq!(recv(&b).expect("the stream goes on").0, b"after");
    }

    #[test]
    fn a_tiny_range_runs_out() {
        let fwd = start(21500, 4, 1);
        assert_eq!((fwd.ports_free(), fwd.ports_in_use()), (4, 0));
        let h = fwd.open_stream().expect("one stream fits");
        assert_eq!((fwd.ports_free(), fwd.ports_in_use()), (0, 4));
        match fwd.open_stream() {
            Err(RelayError::PortsExhausted(r)) => assert_eq!(r, "21500-21503"),
            other => panic!("expected PortsExhausted, got {other:?}"),
        }
        drop(h);
        wait_for("the ports freed", || fwd.ports_in_use() == 0);
        fwd.open_stream().expect("freed ports are used again");
        // A range with no even/odd pair is refused at start.
        assert!(
            Forwarder::start(ForwardConfig {
                bind: LOCAL,
                ports: (21511, 21511),
                threads: 1
            })
            .is_err()
        );
    }

    #[test]
    fn close_frees_ports_and_stops_forwarding() {
        let fwd = start(21600, 8, 1);
        let (a, b) = (phone(), phone());
        let h = fwd.open_stream().expect("stream");
        let old = [h.local_port(Side::Caller), h.local_port(Side::Callee)];
        h.set_peer(Side::Callee, Some(addr(&b)), None);
        send(&a, relay(&h, Side::Caller, RTP), b"live");
        assert_eq!(recv(&b).expect("forwarded while open").0, b"live");
        let caller_port = relay(&h, Side::Caller, RTP);
        drop(h);
        wait_for("the ports freed", || fwd.ports_in_use() == 0);
        assert_eq!(fwd.ports_free(), 8);
        send(&a, caller_port, b"late");
        assert!(quiet(&b), "a packet to a closed stream goes nowhere");
        assert_eq!(fwd.totals().0, 1);
        // The next stream gets the ports nobody used last.
        let h2 = fwd.open_stream().expect("second stream");
        let new = [h2.local_port(Side::Caller), h2.local_port(Side::Callee)];
        assert!(new.iter().all(|p| !old.contains(p)), "freed ports {old:?} reused at once: {new:?}");
        h2.set_peer(Side::Callee, Some(addr(&b)), None);
        send(&a, caller_port, b"late again");
        assert!(quiet(&b));
    }

    #[test]
    fn a_port_held_by_another_process_is_skipped() {
        let squatter = UdpSocket::bind(("127.0.0.1", 21701)).expect("take a port of the range");
        let fwd = start(21700, 8, 1);
        let h = fwd.open_stream().expect("stream despite the held port");
        let ports = [h.local_port(Side::Caller), h.local_port(Side::Callee)];
        assert_eq!(ports, [21702, 21704]);
        drop(squatter);
    }

    #[test]
    fn ipv6() {
        let Ok(fwd) = Forwarder::start(ForwardConfig {
            bind: IpAddr::V6(Ipv6Addr::LOCALHOST),
            ports: (21800, 21899),
            threads: 1,
        }) else {
            return;
        };
        let Ok(h) = fwd.open_stream() else {
            eprintln!("ipv6: no ::1 here, skipped");
            return;
        };
        let a = UdpSocket::bind("[::1]:0").expect("v6 phone");
        let b = UdpSocket::bind("[::1]:0").expect("v6 phone");
        b.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
        h.set_peer(Side::Callee, Some(addr(&b)), None);
        let to = SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), h.local_port(Side::Caller));
        send(&a, to, b"v6");
        let (data, from) = recv(&b).expect("forwarded over IPv6");
        assert_eq!(data, b"v6");
        assert_eq!(from.port(), h.local_port(Side::Callee));
        assert_eq!(h.counters(Side::Caller).latched, Some(addr(&a)));
    }

    #[test]
    fn many_streams_keep_their_packets_apart() {
        const STREAMS: usize = 200;
        const ROUNDS: usize = 20;
        let fwd = start(22000, 1000, 2);
        let calls: Vec<(StreamHandle, UdpSocket, UdpSocket)> = (0..STREAMS)
            .map(|_| {
                let h = fwd.open_stream().expect("stream");
                let (a, b) = (phone(), phone());
                h.set_peer(Side::Caller, Some(addr(&a)), None);
                h.set_peer(Side::Callee, Some(addr(&b)), None);
                (h, a, b)
            })
            .collect();
        // Four senders at once, each for a quarter of the calls, both ends.
        std::thread::scope(|s| {
            for chunk in calls.chunks(STREAMS / 4) {
                s.spawn(move || {
                    for round in 0..ROUNDS {
                        for (h, a, b) in chunk {
                            let id = h.local_port(Side::Caller);
                            send(a, relay(h, Side::Caller, RTP), format!("{id} a {round}").as_bytes());
                            send(b, relay(h, Side::Callee, RTP), format!("{id} b {round}").as_bytes());
                        }
                    }
                });
            }
        });
        for (h, a, b) in &calls {
            let id = h.local_port(Side::Caller);
            for (sock, from_side, facing) in [(b, "a", Side::Callee), (a, "b", Side::Caller)] {
                let mut rounds = Vec::new();
                for _ in 0..ROUNDS {
                    let (data, from) = recv(sock).expect("every packet arrives");
                    assert_eq!(from, relay(h, facing, RTP));
                    let text = String::from_utf8(data).expect("text");
                    let mut f = text.split(' ');
                    assert_eq!(f.next(), Some(id.to_string().as_str()), "a packet of another stream: {text}");
                    assert_eq!(f.next(), Some(from_side));
                    rounds.push(f.next().and_then(|r| r.parse::<usize>().ok()).expect("round"));
                }
                assert_eq!(rounds, (0..ROUNDS).collect::<Vec<_>>(), "in order");
            }
            wait_for("the counters", || h.counters(Side::Caller).packets == ROUNDS as u64);
            wait_for("the counters", || h.counters(Side::Callee).packets == ROUNDS as u64);
        }
        wait_for("the totals", || fwd.totals().0 == (STREAMS * ROUNDS * 2) as u64);
        assert_eq!(fwd.dropped(), 0);
        drop(calls);
        wait_for("every port freed", || fwd.ports_in_use() == 0);
    }
}
