//! The live proxy: binds the listen sockets, starts `children` worker
//! threads (each a single-threaded tokio runtime with its own Lua VM and
//! its own SO_REUSEPORT sockets), runs their timers, and stops on SIGINT
//! or SIGTERM.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{Notify, mpsc};

use crate::control::{Control, LogLevelFn, ReloadFn};
use crate::core::Shared;
use crate::sip::framing::{FrameError, next_message};
use crate::transport::tcp::{SendOutcome, TcpManager};
use crate::transport::{ConnId, Incoming, Proto, SocketId, Transmit, udp};
use crate::worker::Worker;

/// A connection handed to a worker.
enum TcpTask {
    Accepted(std::net::TcpStream, SocketId, SocketAddr),
}

/// What a worker's tasks share.
struct Io {
    udp: HashMap<SocketId, Rc<UdpSocket>>,
    tcp: Arc<TcpManager>,
    timer_wake: Notify,
    /// The deadline the timer task sleeps until.
    timer_at: Cell<Option<Instant>>,
}

type WorkerRc = Rc<RefCell<Worker>>;

/// A worker that has been reading without pause for this long while its
/// socket queue stays well filled is overloaded: new requests get 503.
const OVERLOAD_STREAK: Duration = Duration::from_millis(100);

/// TCP listeners and the channels that deal their connections to workers.
type Acceptor = (Vec<(SocketId, std::net::TcpListener)>, Vec<mpsc::UnboundedSender<TcpTask>>);

/// Runs the proxy until a signal stops it.
pub fn run(shared: Arc<Shared>, script: PathBuf, log_level: Option<LogLevelFn>) -> anyhow::Result<()> {
    let children = shared.cfg.children.max(1);
    // The control plane comes first: a second proxy started in the same
    // place fails here, before it touches the database or the SIP ports.
    let mut ctl_txs = Vec::new();
    let mut ctl_rxs = Vec::new();
    for _ in 0..children {
        let (tx, rx) = mpsc::unbounded_channel::<WorkerCtl>();
        ctl_txs.push(tx);
        ctl_rxs.push(Some(rx));
    }
    // A message held for a REPL session goes back to its worker to be routed.
    shared.attach.set_releasers(
        ctl_txs
            .iter()
            .map(|tx| {
                let tx = tx.clone();
                Box::new(move |inc| tx.send(WorkerCtl::Release(inc)).is_ok()) as crate::repl::attach::Releaser
            })
            .collect(),
    );
    let db_reload: Arc<std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>> = Arc::new(std::sync::OnceLock::new());
    let dbr = db_reload.clone();
    let mut control = Control::new(shared.clone(), script.clone())
        .with_reload(reloader(script.clone(), ctl_txs))
        .with_reload_tables(Box::new(move || {
            if let Some(f) = dbr.get() {
                f();
            }
        }));
    if let Some(f) = log_level {
        control = control.with_log_level(f);
    }
    let control = Arc::new(control);
    let ctl_path = shared.cfg.ctl_socket.clone();
    // Dropped on every way out of run(): the socket file goes with it.
    let _ctl = crate::ctl::start(control.clone(), &ctl_path)?;
    let mut udp_sockets: Vec<Vec<(SocketId, std::net::UdpSocket)>> = (0..children).map(|_| Vec::new()).collect();
    let mut tcp_listeners = Vec::new();
    for s in &shared.sockets {
        match s.proto {
            Proto::Udp => {
                for (w, list) in udp_sockets.iter_mut().enumerate() {
                    let sock = udp::bind_reuseport(s.addr).with_context(|| format!("cannot listen on udp:{} (worker {w})", s.addr))?;
                    list.push((s.id, sock));
                }
            }
            Proto::Tcp => {
                let l = std::net::TcpListener::bind(s.addr).with_context(|| format!("cannot listen on tcp:{}", s.addr))?;
                l.set_nonblocking(true)?;
                tcp_listeners.push((s.id, l));
            }
        }
    }
    if shared.sockets.is_empty() {
        bail!("nothing to listen on: set `listen` in the script or pass --listen");
    }
    // The tables (and every binding) are in memory before the first message.
    let db = crate::persist::start(shared.clone())?;
    let _ = db_reload.set(Box::new(db.reloader()));
    let tcp = TcpManager::new(shared.cfg.tcp_max_msg, shared.cfg.tcp_idle);
    let shutdown = Arc::new(tokio::sync::Notify::new());
    let mut tcp_txs = Vec::new();
    let mut tcp_rxs = Vec::new();
    for _ in 0..children {
        let (tx, rx) = mpsc::unbounded_channel::<TcpTask>();
        tcp_txs.push(tx);
        tcp_rxs.push(Some(rx));
    }
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let mut handles = Vec::new();
    let mut listeners = Some(tcp_listeners);
    for (w, socks) in udp_sockets.into_iter().enumerate() {
        let shared = shared.clone();
        let script = script.clone();
        let tcp = tcp.clone();
        let shutdown = shutdown.clone();
        let ready = ready_tx.clone();
        let tcp_rx = tcp_rxs[w].take();
        // Worker 0 also accepts TCP connections and deals them out.
        let accept = if w == 0 {
            listeners.take().map(|l| (l, tcp_txs.clone()))
        } else {
            None
        };
        let ctl_rx = ctl_rxs[w].take().ok_or_else(|| anyhow::anyhow!("worker {w} control channel"))?;
        let setup = WorkerSetup {
            w,
            shared,
            script,
            socks,
            tcp,
            tcp_rx,
            accept,
            ctl_rx,
            shutdown,
            ready,
        };
        let h = std::thread::Builder::new()
            .name(format!("serlua-w{w}"))
            .spawn(move || worker_thread(setup))?;
        handles.push(h);
    }
    drop(ready_tx);
    for _ in 0..children {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                shutdown.notify_waiters();
                bail!("{e}");
            }
            Err(_) => bail!("a worker thread died while starting"),
        }
    }
    for s in &shared.sockets {
        tracing::info!("listening on {}:{} (advertised as {})", s.proto, s.addr, s.adv_hostport());
    }
    tracing::info!("serlua started with {children} workers");

    if let Some(addr) = shared.cfg.http_listen {
        crate::http::spawn(control.clone(), addr).with_context(|| format!("http_listen {addr}"))?;
    }

    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])?;
    for sig in signals.forever() {
        if sig == signal_hook::consts::SIGHUP {
            tracing::info!("SIGHUP: reloading the route script and the tables");
            control.reload_tables().ok();
            let c = control.clone();
            // A reload waits for every worker; the signal loop must not.
            std::thread::spawn(move || {
                let _ = c.reload();
            });
            continue;
        }
        tracing::info!("signal received: refusing new requests, letting transactions finish (a second signal stops at once)");
        std::thread::spawn(move || {
            if signals.forever().any(|s| s != signal_hook::consts::SIGHUP) {
                eprintln!("serlua: second signal, stopping at once");
                std::process::exit(1);
            }
        });
        break;
    }
    // Graceful shutdown: new requests get 503 while the transactions in
    // flight finish (up to shutdown_timeout), then usrloc is flushed.
    shared.draining.store(true, std::sync::atomic::Ordering::SeqCst);
    // A message held for a REPL goes through now (as a new request it gets
    // the 503 of a draining proxy; its sender can try elsewhere).
    shared.attach.release_all();
    let until = Instant::now() + shared.cfg.shutdown_timeout;
    while shared.tm.pending() > 0 && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
    let left = shared.tm.pending();
    if left > 0 {
        tracing::warn!("{left} transactions still open at the shutdown deadline");
    }
    shutdown.notify_waiters();
    let deadline = Instant::now() + Duration::from_secs(2);
    for h in handles {
        while !h.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    db.stop(Duration::from_secs(5));
    crate::ctl::remove(&ctl_path);
    tracing::info!("stopped");
    Ok(())
}

/// A message from the reload coordinator to one worker (two-phase
/// reload: every worker loads the new script first; only if all succeed
/// do they switch, so a broken script leaves the old one running
/// everywhere).
enum WorkerCtl {
    /// Load the script into a fresh VM and answer with the outcome.
    Prepare(std::sync::mpsc::Sender<Result<(), String>>),
    /// Switch to the VM prepared, then say so: the reload is reported done
    /// only once every worker runs the new script.
    Commit(std::sync::mpsc::Sender<()>),
    /// Drop the VM prepared.
    Abort,
    /// Route a message a REPL session held (`serlua repl --attach --hold`).
    Release(crate::transport::Incoming),
}

/// The script reload hook: check the script, have every worker load it,
/// switch all or none.
fn reloader(script: PathBuf, txs: Vec<mpsc::UnboundedSender<WorkerCtl>>) -> ReloadFn {
    let one_at_a_time = parking_lot::Mutex::new(());
    Box::new(move || {
        let _g = one_at_a_time.lock();
        let fail = |e: String| {
            tracing::error!("reload of {} failed, the running script stays: {e}", script.display());
            Err(e)
        };
        if let Err(errs) = crate::app::load_and_check(&script) {
            return fail(errs.join("\n"));
        }
        let (tx, rx) = std::sync::mpsc::channel();
        for t in &txs {
            if t.send(WorkerCtl::Prepare(tx.clone())).is_err() {
                return fail("a worker is gone".into());
            }
        }
        let mut errors = Vec::new();
        for _ in 0..txs.len() {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(Ok(())) => {}
                Ok(Err(e)) => errors.push(e),
                Err(_) => errors.push("a worker did not answer within 10 s".into()),
            }
        }
        if let Some(e) = errors.into_iter().next() {
            for t in &txs {
                let _ = t.send(WorkerCtl::Abort);
            }
            return fail(e);
        }
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        for t in &txs {
            let _ = t.send(WorkerCtl::Commit(done_tx.clone()));
        }
        for _ in 0..txs.len() {
            // A worker busy with a long route still switches right after it;
            // the wait only bounds how long `ctl reload` blocks.
            if done_rx.recv_timeout(Duration::from_secs(10)).is_err() {
                tracing::warn!("a worker took more than 10 s to switch to the reloaded script");
                break;
            }
        }
        tracing::info!("route script {} reloaded in {} workers", script.display(), txs.len());
        Ok(format!("{} reloaded in {} workers", script.display(), txs.len()))
    })
}

/// Everything a worker thread starts with.
struct WorkerSetup {
    w: usize,
    shared: Arc<Shared>,
    script: PathBuf,
    socks: Vec<(SocketId, std::net::UdpSocket)>,
    tcp: Arc<TcpManager>,
    tcp_rx: Option<mpsc::UnboundedReceiver<TcpTask>>,
    accept: Option<Acceptor>,
    ctl_rx: mpsc::UnboundedReceiver<WorkerCtl>,
    shutdown: Arc<tokio::sync::Notify>,
    ready: std::sync::mpsc::Sender<Result<(), String>>,
}

fn worker_thread(setup: WorkerSetup) {
    let WorkerSetup {
        w,
        shared,
        script,
        socks,
        tcp,
        tcp_rx,
        accept,
        mut ctl_rx,
        shutdown,
        ready,
    } = setup;
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(format!("worker {w}: cannot start runtime: {e}")));
            return;
        }
    };
    let worker = match Worker::new(shared.clone(), w, &script, Instant::now()) {
        Ok(wk) => wk,
        Err(e) => {
            let _ = ready.send(Err(e.0));
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let worker: WorkerRc = Rc::new(RefCell::new(worker));
        let mut udp_map = HashMap::new();
        for (id, s) in socks {
            match UdpSocket::from_std(s) {
                Ok(u) => {
                    udp_map.insert(id, Rc::new(u));
                }
                Err(e) => {
                    let _ = ready.send(Err(format!("worker {w}: {e}")));
                    return;
                }
            }
        }
        let io = Rc::new(Io {
            udp: udp_map,
            tcp,
            timer_wake: Notify::new(),
            timer_at: Cell::new(None),
        });
        {
            // Sends leave at the moment the core makes them (see Env::set_sink).
            let (wk, io2) = (Rc::downgrade(&worker), io.clone());
            worker.borrow().env.set_sink(Box::new(move |t| {
                if let Some(wk) = wk.upgrade() {
                    send(&wk, &io2, t);
                }
            }));
        }
        for (id, sock) in io.udp.clone() {
            tokio::task::spawn_local(udp_loop(worker.clone(), io.clone(), id, sock));
        }
        tokio::task::spawn_local(timer_loop(worker.clone(), io.clone()));
        let (wk, path, io3) = (worker.clone(), script.clone(), io.clone());
        tokio::task::spawn_local(async move {
            let mut prepared: Option<crate::script::Script> = None;
            while let Some(m) = ctl_rx.recv().await {
                match m {
                    WorkerCtl::Prepare(reply) => {
                        let env = wk.borrow().env.clone();
                        match crate::script::Script::load(&path, env) {
                            Ok((s, _)) => {
                                prepared = Some(s);
                                let _ = reply.send(Ok(()));
                            }
                            Err(e) => {
                                prepared = None;
                                let _ = reply.send(Err(e.0));
                            }
                        }
                    }
                    WorkerCtl::Commit(done) => {
                        if let Some(s) = prepared.take() {
                            wk.borrow_mut().script = s;
                        }
                        let _ = done.send(());
                    }
                    WorkerCtl::Abort => prepared = None,
                    WorkerCtl::Release(inc) => {
                        let mut w = wk.borrow_mut();
                        let src = inc.src;
                        guarded(src, || w.handle(Instant::now(), inc));
                        flush(&wk, &mut w, &io3);
                    }
                }
            }
        });
        if let Some(mut rx) = tcp_rx {
            let (wk, io2) = (worker.clone(), io.clone());
            tokio::task::spawn_local(async move {
                while let Some(TcpTask::Accepted(stream, local, peer)) = rx.recv().await {
                    match TcpStream::from_std(stream) {
                        Ok(s) => {
                            let (id, qrx) = io2.tcp.register(peer, local);
                            tokio::task::spawn_local(tcp_conn(wk.clone(), io2.clone(), s, id, local, peer, qrx));
                        }
                        Err(e) => tracing::warn!("tcp connection from {peer}: {e}"),
                    }
                }
            });
        }
        if let Some((listeners, txs)) = accept {
            for (id, l) in listeners {
                match tokio::net::TcpListener::from_std(l) {
                    Ok(l) => {
                        tokio::task::spawn_local(accept_loop(l, id, txs.clone()));
                    }
                    Err(e) => {
                        let _ = ready.send(Err(format!("tcp listener: {e}")));
                        return;
                    }
                }
            }
        }
        let _ = ready.send(Ok(()));
        shutdown.notified().await;
    });
}

async fn accept_loop(l: tokio::net::TcpListener, id: SocketId, txs: Vec<mpsc::UnboundedSender<TcpTask>>) {
    let mut next = 0usize;
    loop {
        match l.accept().await {
            Ok((s, peer)) => {
                let _ = s.set_nodelay(true);
                match s.into_std() {
                    Ok(std) => {
                        let _ = txs[next % txs.len()].send(TcpTask::Accepted(std, id, peer));
                        next += 1;
                    }
                    Err(e) => tracing::warn!("tcp accept: {e}"),
                }
            }
            Err(e) => {
                tracing::warn!("tcp accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Runs one step of a worker so that a bug (a panic) costs the message it
/// was handling, not the worker: the worker goes on with the next message,
/// and the panic is logged loudly.
fn guarded(what: impl std::fmt::Display, f: impl FnOnce()) {
    if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        let why = p
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!("internal error while handling {what}: {why}; the message was dropped");
    }
}

/// Sends what the worker queued; wakes the timer task when an earlier
/// timer was armed.
fn flush(worker: &WorkerRc, w: &mut Worker, io: &Rc<Io>) {
    let out = w.take_transmits();
    for t in out {
        send(worker, io, t);
    }
    if let Some(next) = w.next_timeout() {
        if io.timer_at.get().is_none_or(|at| next < at) {
            io.timer_at.set(Some(next));
            io.timer_wake.notify_one();
        }
    }
}

fn send(worker: &WorkerRc, io: &Rc<Io>, t: Transmit) {
    match t.proto {
        Proto::Udp => {
            let Some(sock) = io.udp.get(&t.local) else {
                tracing::warn!("no UDP socket {} in this worker", t.local);
                return;
            };
            match sock.try_send_to(&t.data, t.dst) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let sock = sock.clone();
                    tokio::task::spawn_local(async move {
                        if let Err(e) = sock.send_to(&t.data, t.dst).await {
                            tracing::warn!("send to {}: {e}", t.dst);
                        }
                    });
                }
                Err(e) => tracing::debug!("send to {}: {e}", t.dst),
            }
        }
        Proto::Tcp => {
            let dst = t.dst;
            let local = t.local;
            match io.tcp.send(t) {
                SendOutcome::Queued => {}
                SendOutcome::Dropped => tracing::warn!("tcp queue to {dst} full or closed: message dropped"),
                SendOutcome::Connect(id, rx) => {
                    let (wk, io2) = (worker.clone(), io.clone());
                    tokio::task::spawn_local(async move {
                        match tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(dst)).await {
                            Ok(Ok(s)) => {
                                let _ = s.set_nodelay(true);
                                tcp_conn(wk, io2, s, id, local, dst, rx).await;
                            }
                            Ok(Err(e)) => {
                                tracing::warn!("tcp connect to {dst}: {e}");
                                io2.tcp.unregister(id);
                            }
                            Err(_) => {
                                tracing::warn!("tcp connect to {dst}: timed out");
                                io2.tcp.unregister(id);
                            }
                        }
                    });
                }
            }
        }
    }
}

async fn udp_loop(worker: WorkerRc, io: Rc<Io>, id: SocketId, sock: Rc<UdpSocket>) {
    let mut buf = vec![0u8; 65536];
    let fd = sock.as_raw_fd();
    loop {
        if let Err(e) = sock.readable().await {
            tracing::error!("udp socket {id}: {e}");
            return;
        }
        let mut n = 0u32;
        let busy_since = Instant::now();
        loop {
            match sock.try_recv_from(&mut buf) {
                Ok((len, src)) => {
                    let data = Bytes::copy_from_slice(&buf[..len]);
                    let mut w = worker.borrow_mut();
                    guarded(src, || {
                        let now = Instant::now();
                        let inc = Incoming {
                            local: id,
                            proto: Proto::Udp,
                            src,
                            conn: None,
                            data,
                        };
                        // A REPL session may hold it (src/repl/attach.rs).
                        if let Some(inc) = crate::repl::attach::intercept(&w, now, inc) {
                            w.handle(now, inc)
                        }
                    });
                    flush(&worker, &mut w, &io);
                    n += 1;
                    if n % 32 == 0 {
                        // Falling behind: the queue has not emptied for a
                        // while and still holds a good part of its capacity.
                        // A burst drains in milliseconds; only arrivals faster
                        // than we route keep the worker busy this long.
                        let over = busy_since.elapsed() > OVERLOAD_STREAK && udp::queued_bytes(fd).is_some_and(|(q, cap)| q > cap / 4);
                        if over != w.env.overloaded.get() {
                            w.env.overloaded.set(over);
                            if over {
                                tracing::warn!("worker {} overloaded: answering new requests with 503", w.env.worker);
                            }
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    // ICMP errors from earlier sends surface here on Linux.
                    tracing::debug!("udp recv: {e}");
                }
            }
        }
        let w = worker.borrow();
        if w.env.overloaded.get() {
            w.env.overloaded.set(false);
        }
    }
}

async fn timer_loop(worker: WorkerRc, io: Rc<Io>) {
    loop {
        let next = worker.borrow().next_timeout();
        io.timer_at.set(next);
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {}
                    _ = io.timer_wake.notified() => continue,
                }
            }
            None => {
                io.timer_wake.notified().await;
                continue;
            }
        }
        let mut w = worker.borrow_mut();
        guarded("timers", || w.handle_timeouts(Instant::now()));
        io.timer_at.set(None);
        flush(&worker, &mut w, &io);
    }
}

async fn tcp_conn(
    worker: WorkerRc,
    io: Rc<Io>,
    stream: TcpStream,
    id: ConnId,
    local: SocketId,
    peer: SocketAddr,
    mut rx: mpsc::Receiver<Bytes>,
) {
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::task::spawn_local(async move {
        while let Some(b) = rx.recv().await {
            if let Err(e) = wr.write_all(&b).await {
                tracing::debug!("tcp write to {peer}: {e}");
                break;
            }
        }
    });
    let mut buf = BytesMut::with_capacity(8192);
    let idle = io.tcp.idle;
    let max = io.tcp.max_msg;
    'conn: loop {
        match tokio::time::timeout(idle, rd.read_buf(&mut buf)).await {
            Err(_) => {
                tracing::debug!("tcp connection {peer} idle: closing");
                break;
            }
            Ok(Ok(0)) => break,
            Ok(Err(e)) => {
                tracing::debug!("tcp read from {peer}: {e}");
                break;
            }
            Ok(Ok(_)) => {}
        }
        loop {
            match next_message(&buf, max) {
                Ok(Some((skip, len))) => {
                    let frame = buf.split_to(skip + len).freeze();
                    if skip >= 4 && len == 0 {
                        // RFC 5626 §3.5.1 keep-alive: double CRLF gets a CRLF back.
                        let _ = io.tcp.send(Transmit {
                            local,
                            proto: Proto::Tcp,
                            dst: peer,
                            conn: Some(id),
                            data: Bytes::from_static(b"\r\n"),
                        });
                        continue;
                    }
                    if len == 0 {
                        continue;
                    }
                    let data = frame.slice(skip..);
                    let mut w = worker.borrow_mut();
                    guarded(peer, || {
                        let now = Instant::now();
                        let inc = Incoming {
                            local,
                            proto: Proto::Tcp,
                            src: peer,
                            conn: Some(id),
                            data,
                        };
                        if let Some(inc) = crate::repl::attach::intercept(&w, now, inc) {
                            w.handle(now, inc)
                        }
                    });
                    flush(&worker, &mut w, &io);
                }
                Ok(None) => break,
                Err(FrameError::TooLarge(n)) => {
                    tracing::warn!("tcp {peer}: message larger than {n} bytes: closing");
                    break 'conn;
                }
                Err(e) => {
                    tracing::warn!("tcp {peer}: {e}: closing");
                    break 'conn;
                }
            }
        }
    }
    io.tcp.unregister(id);
    writer.abort();
}
