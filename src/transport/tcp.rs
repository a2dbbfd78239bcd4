//! TCP connections (RFC 3261 §18.3, §18.2.2): framed by Content-Length,
//! reused for replies and for requests to the same peer, closed when idle,
//! bounded in message size.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use dashmap::DashMap;
use tokio::sync::mpsc;

use super::{ConnId, SocketId, Transmit};

/// Messages waiting to be written on one connection (bounded: a peer that
/// does not read cannot make us buffer without limit).
pub const WRITE_QUEUE: usize = 1024;

/// A live connection as the senders see it.
#[derive(Clone, Debug)]
pub struct ConnHandle {
    /// Queue of the connection's writer.
    pub tx: mpsc::Sender<Bytes>,
    /// Remote address.
    pub peer: SocketAddr,
    /// The listen socket it belongs to.
    pub local: SocketId,
}

/// Every TCP connection of the process, by id and by peer address.
pub struct TcpManager {
    conns: DashMap<ConnId, ConnHandle>,
    by_peer: DashMap<SocketAddr, ConnId>,
    next_id: AtomicU64,
    /// Largest message accepted on a connection.
    pub max_msg: usize,
    /// Idle connections are closed after this.
    pub idle: Duration,
}

/// What `send` needs the caller to do.
pub enum SendOutcome {
    /// Queued on an existing connection.
    Queued,
    /// No connection: open one to `Transmit::dst` (id and queue given),
    /// the message is already queued on it.
    Connect(ConnId, mpsc::Receiver<Bytes>),
    /// The connection's queue is full or closed: the message is dropped.
    Dropped,
}

impl TcpManager {
    /// An empty manager.
    pub fn new(max_msg: usize, idle: Duration) -> Arc<TcpManager> {
        Arc::new(TcpManager {
            conns: DashMap::new(),
            by_peer: DashMap::new(),
            next_id: AtomicU64::new(1),
            max_msg,
            idle,
        })
    }

    /// Registers a connection (accepted or being opened) and returns its id
    /// and the receiving end of its write queue.
    pub fn register(&self, peer: SocketAddr, local: SocketId) -> (ConnId, mpsc::Receiver<Bytes>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        self.conns.insert(id, ConnHandle { tx, peer, local });
        self.by_peer.insert(peer, id);
        (id, rx)
    }

    /// Forgets a closed connection.
    pub fn unregister(&self, id: ConnId) {
        if let Some((_, h)) = self.conns.remove(&id) {
            self.by_peer.remove_if(&h.peer, |_, v| *v == id);
        }
    }

    /// Number of open connections.
    pub fn len(&self) -> usize {
        self.conns.len()
    }

    /// True when no connection is open.
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Queues `t` on its connection (`t.conn`), on any connection to
    /// `t.dst`, or on a new connection the caller must open.
    pub fn send(&self, t: Transmit) -> SendOutcome {
        let handle = t
            .conn
            .and_then(|id| self.conns.get(&id).map(|h| h.clone()))
            .or_else(|| self.by_peer.get(&t.dst).and_then(|id| self.conns.get(&*id).map(|h| h.clone())));
        match handle {
            Some(h) => match h.tx.try_send(t.data) {
                Ok(()) => SendOutcome::Queued,
                Err(_) => SendOutcome::Dropped,
            },
            None => {
                let (id, rx) = self.register(t.dst, t.local);
                match self.conns.get(&id).map(|h| h.tx.try_send(t.data)) {
                    Some(Ok(())) => SendOutcome::Connect(id, rx),
                    _ => SendOutcome::Dropped,
                }
            }
        }
    }
}
