//! UDP sockets: one per worker and listen address, all bound to the same
//! address with SO_REUSEPORT, so the kernel spreads senders over workers
//! and one sender's datagrams always reach the same worker, in order
//! (DESIGN.md: no cross-thread hand-off on the hot path).

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

/// Opens a non-blocking UDP socket on `addr` with SO_REUSEPORT.
pub fn bind_reuseport(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    // A larger receive queue absorbs bursts. SO_RCVBUF is capped at
    // net.core.rmem_max; SO_RCVBUFFORCE passes the cap where permitted.
    force_recv_buffer(&s, 4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// Bytes queued in the socket's receive buffer and the buffer's size
/// (SO_MEMINFO). Used to detect that a worker falls behind.
pub fn queued_bytes(fd: std::os::fd::RawFd) -> Option<(u32, u32)> {
    // SK_MEMINFO_RMEM_ALLOC = 0, SK_MEMINFO_RCVBUF = 1; the kernel fills 9 u32s.
    let mut info = [0u32; 9];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info`, which is that large.
    let rc = unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_MEMINFO, info.as_mut_ptr().cast(), &mut len) };
    (rc == 0).then_some((info[0], info[1]))
}

fn force_recv_buffer(s: &Socket, bytes: usize) {
    use std::os::fd::AsRawFd;
    let v = bytes as libc::c_int;
    // SAFETY: setsockopt reads an int from a valid pointer of that size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let _ = s.set_recv_buffer_size(bytes);
    }
}
