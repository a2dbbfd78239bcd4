//! The end-to-end harness: free ports, per-test log directories, child
//! processes that die with the test (also on panic), a running serlua
//! proxy, sipp runs, and failure messages that carry the tails of every log
//! that matters (serlua's stderr, sipp's error log and final screen).
//!
//! Logs of a run stay in `target/tmp/e2e/<test>/` for inspection.

#![allow(dead_code)]

pub mod sip;
pub mod sipp;
pub mod tcp;

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sip::{Call, UdpPeer};

/// The crate root: scripts and scenarios are addressed relative to it, and
/// serlua runs with it as working directory (so diagnostics print
/// `tests/scripts/x.lua:LINE:`).
pub const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The serlua binary under test.
pub const SERLUA: &str = env!("CARGO_BIN_EXE_serlua");

/// `ROOT/rel`.
pub fn root_path(rel: &str) -> PathBuf {
    Path::new(ROOT).join(rel)
}

// ---------------------------------------------------------------------------
// ports

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A UDP port on 127.0.0.1 that was free a moment ago and that no other test
/// of this process got: bind port 0, note the port, release it.
pub fn free_udp_port() -> u16 {
    let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
    let set = guard.get_or_insert_with(HashSet::new);
    for _ in 0..1000 {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = sock.local_addr().expect("local_addr").port();
        drop(sock);
        // Keep clear of sipp's defaults (media 6000+, control 8888+).
        if port < 10000 || !set.insert(port) {
            continue;
        }
        return port;
    }
    panic!("no free UDP port found on 127.0.0.1");
}

/// True once something is bound to UDP 127.0.0.1:port (we cannot bind it).
pub fn udp_port_in_use(port: u16) -> bool {
    UdpSocket::bind(("127.0.0.1", port)).is_err()
}

/// Waits until a process has bound UDP 127.0.0.1:port.
pub fn wait_udp_bound(port: u16, deadline: Instant) -> bool {
    while Instant::now() < deadline {
        if udp_port_in_use(port) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    udp_port_in_use(port)
}

/// True when this host has IPv6 loopback (`::1` can be bound).
pub fn have_ipv6() -> bool {
    UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)).is_ok()
}

/// A port that was free a moment ago for UDP and TCP on 127.0.0.1 and
/// (when the host has it) on ::1, and that no other test of this process
/// got: for a proxy listening on UDP and TCP, IPv4 and IPv6, at once.
pub fn free_port() -> u16 {
    let v6 = have_ipv6();
    for _ in 0..1000 {
        let port = free_udp_port();
        let free = |ip: IpAddr| UdpSocket::bind((ip, port)).is_ok() && TcpListener::bind((ip, port)).is_ok();
        if free(Ipv4Addr::LOCALHOST.into()) && (!v6 || free(Ipv6Addr::LOCALHOST.into())) {
            return port;
        }
    }
    panic!("no port free for UDP and TCP on 127.0.0.1 and ::1");
}

/// True once something is bound to `addr` with `proto` ("udp"/"tcp"): we
/// cannot bind it ourselves. (A listening TCP socket refuses a second bind
/// on Linux even with SO_REUSEADDR.)
pub fn port_in_use(proto: &str, addr: SocketAddr) -> bool {
    if proto.eq_ignore_ascii_case("tcp") {
        TcpListener::bind(addr).is_err()
    } else {
        UdpSocket::bind(addr).is_err()
    }
}

/// Waits until a process has bound `addr` with `proto`.
pub fn wait_bound(proto: &str, addr: SocketAddr, deadline: Instant) -> bool {
    while Instant::now() < deadline {
        if port_in_use(proto, addr) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    port_in_use(proto, addr)
}

// ---------------------------------------------------------------------------
// tools

/// Finds an executable on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| {
        use std::os::unix::fs::PermissionsExt;
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

/// The sipp binary: $SERLUA_SIPP, else `sipp` on PATH.
pub fn sipp_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SERLUA_SIPP") {
        let p = PathBuf::from(p);
        return p.exists().then_some(p);
    }
    which("sipp")
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).map(|v| !v.is_empty() && v != "0").unwrap_or(false)
}

/// True when sipp is there. Without it the test is skipped loudly — unless
/// SERLUA_REQUIRE_SIPP is set (CI sets it), then the test fails.
pub fn sipp_or_skip(test: &str) -> bool {
    if sipp_path().is_some() {
        return true;
    }
    if env_flag("SERLUA_REQUIRE_SIPP") {
        panic!("{test}: sipp is not installed (apt-get install sip-tester) and SERLUA_REQUIRE_SIPP is set");
    }
    // Straight to fd 2: the test harness captures eprintln! of passing tests.
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "\n!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n\
         !!! SKIPPED {test}: sipp is not installed (apt-get install sip-tester, or\n\
         !!! run scripts/test, which installs it). Set SERLUA_REQUIRE_SIPP=1 to fail instead.\n\
         !!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!\n"
    );
    false
}

// ---------------------------------------------------------------------------
// test context: log directory and failure reports

/// One test's context: its log directory, and the logs whose tails go into
/// its failure messages.
pub struct Ctx {
    pub name: String,
    pub dir: PathBuf,
    pub started: Instant,
    logs: RefCell<Vec<(String, PathBuf)>>,
    notes: RefCell<Vec<String>>,
}

impl Ctx {
    /// A fresh, empty `target/tmp/e2e/<name>/`.
    pub fn new(name: &str) -> Ctx {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e").join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        Ctx {
            name: name.to_string(),
            dir,
            started: Instant::now(),
            logs: RefCell::new(Vec::new()),
            notes: RefCell::new(Vec::new()),
        }
    }

    /// A path in the log directory.
    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// Adds a log file to failure reports.
    pub fn add_log(&self, label: &str, path: PathBuf) {
        self.logs.borrow_mut().push((label.to_string(), path));
    }

    /// Adds a line of context to failure reports.
    pub fn note(&self, s: impl Into<String>) {
        self.notes.borrow_mut().push(s.into());
    }

    /// The failure report: the message, notes, and the tail of each log.
    pub fn report(&self, msg: &str) -> String {
        let mut s = format!("\n=== {} FAILED: {msg}\n", self.name);
        for n in self.notes.borrow().iter() {
            let _ = writeln!(s, "--- {n}");
        }
        for (label, path) in self.logs.borrow().iter() {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if name.ends_with(".screen.log") {
                let _ = writeln!(s, "--- {label} ({}), summary:", path.display());
                s.push_str(&sipp::screen_summary(path));
            } else if name.ends_with(".errors.log") {
                let _ = writeln!(s, "--- {label} ({}), last entries:", path.display());
                s.push_str(&sipp::error_log_tail(path, 12, 6000));
            } else {
                let _ = writeln!(s, "--- {label} ({}), last lines:", path.display());
                s.push_str(&tail(path, 40, 6000));
            }
        }
        let _ = writeln!(s, "=== logs: {}", self.dir.display());
        s
    }

    /// Fails the test with the full report.
    #[track_caller]
    pub fn fail(&self, msg: &str) -> ! {
        panic!("{}", self.report(msg))
    }

    /// Fails the test with the full report unless `cond`.
    #[track_caller]
    pub fn ensure(&self, cond: bool, msg: impl FnOnce() -> String) {
        if !cond {
            self.fail(&msg());
        }
    }
}

impl Drop for Ctx {
    /// With SERLUA_E2E_VERBOSE=1, a passing test prints its report too
    /// (run with --nocapture to see it).
    fn drop(&mut self) {
        if !std::thread::panicking() && env_flag("SERLUA_E2E_VERBOSE") {
            eprintln!("{}", self.report("(passed; SERLUA_E2E_VERBOSE report)").replacen("FAILED: ", "", 1));
        }
    }
}

/// The last `lines` lines (at most `max_bytes`) of a file, indented.
pub fn tail(path: &Path, lines: usize, max_bytes: usize) -> String {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return "    (not written)\n".to_string(),
        Err(e) => return format!("    (cannot read: {e})\n"),
    };
    if data.is_empty() {
        return "    (empty)\n".to_string();
    }
    let start = data.len().saturating_sub(max_bytes);
    let text = String::from_utf8_lossy(&data[start..]);
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    let mut s = String::new();
    for l in &all[from..] {
        let _ = writeln!(s, "    {l}");
    }
    s
}

// ---------------------------------------------------------------------------
// child processes

/// A child process that is terminated (SIGTERM, then SIGKILL) when dropped,
/// also while a failing test unwinds. Children also get SIGKILL if the
/// test thread dies without unwinding (PR_SET_PDEATHSIG).
pub struct ChildGuard {
    pub name: String,
    child: Option<Child>,
    status: Option<ExitStatus>,
}

impl ChildGuard {
    pub fn spawn(name: &str, cmd: &mut Command) -> std::io::Result<ChildGuard> {
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        Ok(ChildGuard {
            name: name.to_string(),
            child: Some(child),
            status: None,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// The exit status if the process has ended.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    self.status = Some(st);
                }
            }
        }
        self.status
    }

    /// Waits for the process to end until `deadline`.
    pub fn wait_until(&mut self, deadline: Instant) -> Option<ExitStatus> {
        loop {
            if let Some(st) = self.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends a signal (if still running).
    pub fn signal(&mut self, sig: libc::c_int) {
        if self.try_wait().is_none() {
            if let Some(pid) = self.pid() {
                unsafe {
                    libc::kill(pid as libc::pid_t, sig);
                }
            }
        }
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL. Returns the status.
    pub fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(st) = self.try_wait() {
            return Some(st);
        }
        self.signal(libc::SIGTERM);
        if let Some(st) = self.wait_until(Instant::now() + grace) {
            return Some(st);
        }
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            if let Ok(st) = c.wait() {
                self.status = Some(st);
            }
        }
        self.status
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(3));
    }
}

/// "exit code 1", "killed by signal 9", ...
pub fn describe_status(st: Option<ExitStatus>) -> String {
    use std::os::unix::process::ExitStatusExt;
    match st {
        None => "still running".to_string(),
        Some(st) => match (st.code(), st.signal()) {
            (Some(c), _) => format!("exit code {c}"),
            (None, Some(s)) => format!("killed by signal {s}"),
            _ => format!("{st:?}"),
        },
    }
}

// ---------------------------------------------------------------------------
// the proxy

/// A running `serlua run SCRIPT`, listening on UDP 127.0.0.1:port.
pub struct Proxy {
    pub addr: SocketAddr,
    pub stderr: PathBuf,
    pub child: ChildGuard,
}

/// How to start the proxy.
pub struct ProxyOpts<'a> {
    /// Script path relative to the crate root.
    pub script: &'a str,
    /// Where the script relays new requests (SERLUA_NEXT_HOP).
    pub next_hop: SocketAddr,
    /// Extra environment (SERLUA_FR_TIMER, SERLUA_INV_TIMEOUT, ...).
    pub env: &'a [(&'a str, &'a str)],
    /// Label for logs (several proxies in one test).
    pub label: &'a str,
    /// SERLUA_LISTEN instead of `udp:127.0.0.1:<free port>`; then `probe`
    /// says where the proxy answers.
    pub listen: Option<&'a str>,
    /// The UDP address the readiness probe (and `Proxy::addr`) uses with a
    /// custom `listen`.
    pub probe: Option<SocketAddr>,
    /// Extra arguments after `run SCRIPT` (`--listen ...`).
    pub args: &'a [&'a str],
}

impl<'a> ProxyOpts<'a> {
    pub fn relay(next_hop: SocketAddr) -> ProxyOpts<'a> {
        ProxyOpts {
            script: "tests/scripts/relay.lua",
            next_hop,
            env: &[],
            label: "serlua",
            listen: None,
            probe: None,
            args: &[],
        }
    }
    pub fn env(mut self, env: &'a [(&'a str, &'a str)]) -> Self {
        self.env = env;
        self
    }
    /// Another script (path relative to the crate root).
    pub fn script(mut self, script: &'a str) -> Self {
        self.script = script;
        self
    }
    /// Listens on `listen` (SERLUA_LISTEN) and probes readiness on the UDP
    /// address `probe`, which becomes `Proxy::addr`.
    pub fn listen(mut self, listen: &'a str, probe: SocketAddr) -> Self {
        self.listen = Some(listen);
        self.probe = Some(probe);
        self
    }
    /// Extra command-line arguments (`--listen udp:...`); `probe` is where
    /// the proxy is expected to answer.
    pub fn args(mut self, args: &'a [&'a str], probe: SocketAddr) -> Self {
        self.args = args;
        self.probe = Some(probe);
        self
    }
}

impl Proxy {
    /// Starts serlua and waits until it answers on its port (a probe
    /// OPTIONS with Max-Forwards: 0, which relay.lua answers with 483 by
    /// itself, is retried until any reply comes back; 20 s deadline).
    pub fn start(ctx: &Ctx, opts: ProxyOpts) -> Proxy {
        let (listen, addr) = match (opts.listen, opts.probe) {
            (Some(l), Some(p)) => (l.to_string(), p),
            (None, Some(p)) => (format!("udp:127.0.0.1:{}", free_udp_port()), p),
            _ => {
                let port = free_udp_port();
                (format!("udp:127.0.0.1:{port}"), SocketAddr::from(([127, 0, 0, 1], port)))
            }
        };
        let stderr = ctx.path(&format!("{}.stderr.log", opts.label));
        let stdout = ctx.path(&format!("{}.stdout.log", opts.label));
        let mut cmd = Command::new(SERLUA);
        cmd.current_dir(ROOT).arg("run").arg(opts.script).args(opts.args);
        // Each proxy gets its own database, not the checkout's serlua.db:
        // tests run in parallel.
        if !opts.args.contains(&"--db") && !opts.env.iter().any(|(k, _)| *k == "SERLUA_DB_URL") {
            cmd.arg("--db").arg(format!("sqlite://{}", ctx.path("serlua.db").display()));
        }
        // ... and its own control socket.
        if !opts.args.contains(&"--ctl") && !opts.env.iter().any(|(k, _)| *k == "SERLUA_CTL") {
            cmd.arg("--ctl").arg(ctx.path(&format!("{}.ctl", opts.label)));
        }
        cmd.env("SERLUA_LISTEN", &listen)
            .env("SERLUA_NEXT_HOP", opts.next_hop.to_string())
            .envs(opts.env.iter().copied())
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("create stdout log"))
            .stderr(File::create(&stderr).expect("create stderr log"));
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        // Plain text logs (tracing-subscriber honours NO_COLOR).
        cmd.env("NO_COLOR", "1");
        let mut env_desc = format!("SERLUA_LISTEN={listen} SERLUA_NEXT_HOP={}", opts.next_hop);
        for (k, v) in opts.env {
            let _ = write!(env_desc, " {k}={v}");
        }
        ctx.note(format!(
            "{}: {env_desc} {SERLUA} run {} {}",
            opts.label,
            opts.script,
            opts.args.join(" ")
        ));
        ctx.add_log(&format!("{} stderr", opts.label), stderr.clone());
        let child = ChildGuard::spawn(opts.label, &mut cmd).unwrap_or_else(|e| ctx.fail(&format!("cannot start {SERLUA}: {e}")));
        let mut proxy = Proxy { addr, stderr, child };
        proxy.wait_ready(ctx, Instant::now() + Duration::from_secs(20));
        proxy
    }

    fn wait_ready(&mut self, ctx: &Ctx, deadline: Instant) {
        let mut probe = UdpPeer::bind_on(match self.addr {
            SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
        });
        let call = Call::new(probe.addr, self.addr);
        let options = call.simple("OPTIONS", 0, "");
        loop {
            if let Some(st) = self.child.try_wait() {
                ctx.fail(&format!(
                    "serlua exited before answering on {} ({})",
                    self.addr,
                    describe_status(Some(st))
                ));
            }
            probe.send(&options, self.addr);
            let wait = (Instant::now() + Duration::from_millis(150)).min(deadline);
            if let Some(r) = probe.recv_until(wait) {
                if r.from.port() == self.addr.port() || r.msg.status().is_some() {
                    ctx.note(format!(
                        "serlua ready after {:?} (probe answered: {})",
                        ctx.started.elapsed(),
                        r.msg.first_line
                    ));
                    return;
                }
            }
            if Instant::now() >= deadline {
                ctx.fail(&format!(
                    "serlua did not answer an OPTIONS probe on {} within the deadline",
                    self.addr
                ));
            }
        }
    }

    /// Stops the proxy (SIGTERM) and returns how it ended.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        self.child.terminate(Duration::from_secs(5))
    }

    /// serlua's stderr so far.
    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Fails the test if the proxy died during it.
    pub fn ensure_alive(&mut self, ctx: &Ctx) {
        if let Some(st) = self.child.try_wait() {
            ctx.fail(&format!("serlua died during the test ({})", describe_status(Some(st))));
        }
    }
}

// ---------------------------------------------------------------------------
// one-shot commands

/// Output of a finished command.
pub struct Output {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

/// Runs serlua with `args` in the crate root, killing it after `timeout`.
pub fn run_serlua(ctx: &Ctx, label: &str, args: &[&str], env: &[(&str, &str)], timeout: Duration) -> Output {
    let out_path = ctx.path(&format!("{label}.stdout.log"));
    let err_path = ctx.path(&format!("{label}.stderr.log"));
    let mut cmd = Command::new(SERLUA);
    cmd.current_dir(ROOT)
        .args(args)
        .env("NO_COLOR", "1")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("create log"))
        .stderr(File::create(&err_path).expect("create log"));
    ctx.note(format!("{label}: (cd {ROOT} && {SERLUA} {})", args.join(" ")));
    let mut child = ChildGuard::spawn(label, &mut cmd).unwrap_or_else(|e| ctx.fail(&format!("cannot start {SERLUA}: {e}")));
    let status = child.wait_until(Instant::now() + timeout);
    let timed_out = status.is_none();
    let status = if timed_out {
        child.terminate(Duration::from_secs(2))
    } else {
        status
    };
    drop(child);
    Output {
        status,
        stdout: std::fs::read_to_string(&out_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&err_path).unwrap_or_default(),
        timed_out,
    }
}
