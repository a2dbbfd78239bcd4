//! Running sipp (3.6) scenarios from tests/sipp/: a UAS bound to a chosen
//! port, a UAC placing `-m` calls at `-r` calls/s, their exit codes and
//! call counts, and their logs in the test's directory.

use std::fmt::Write as _;
use std::fs::File;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::sip::SipMsg;
use super::{ChildGuard, Ctx, ROOT, describe_status, root_path, sipp_path, wait_bound};

/// What a sipp instance plays.
#[derive(Clone, Debug)]
pub enum Role {
    /// Places calls to `remote`.
    Uac { remote: SocketAddr },
    /// Answers calls.
    Uas,
}

/// One sipp run.
#[derive(Clone, Debug)]
pub struct SippOpts {
    /// Label in logs and messages ("uac", "uas", ...).
    pub label: String,
    /// Scenario file in tests/sipp/.
    pub scenario: String,
    pub role: Role,
    /// Local port (on `ip`).
    pub port: u16,
    /// -i: local address, "127.0.0.1" (default) or "::1".
    pub ip: String,
    /// -t: "u1" (UDP, default) or "t1" (TCP, one connection).
    pub transport: String,
    /// -m: calls to process before exiting.
    pub calls: u32,
    /// -r: calls per second (UAC).
    pub rate: Option<u32>,
    /// -timeout: sipp gives up (and fails, -timeout_error) after this.
    pub timeout: Duration,
    /// -trace_msg: log every message (large for many calls).
    pub trace_msg: bool,
    /// Further arguments (-d 1000, -set no_proxy 1, ...).
    pub extra: Vec<String>,
}

impl SippOpts {
    pub fn uas(scenario: &str, port: u16, calls: u32) -> SippOpts {
        SippOpts {
            label: "uas".into(),
            scenario: scenario.into(),
            role: Role::Uas,
            port,
            ip: "127.0.0.1".into(),
            transport: "u1".into(),
            calls,
            rate: None,
            timeout: Duration::from_secs(60),
            trace_msg: calls <= 50,
            extra: Vec::new(),
        }
    }

    pub fn uac(scenario: &str, port: u16, remote: SocketAddr, calls: u32, rate: u32) -> SippOpts {
        SippOpts {
            label: "uac".into(),
            scenario: scenario.into(),
            role: Role::Uac { remote },
            port,
            ip: "127.0.0.1".into(),
            transport: "u1".into(),
            calls,
            rate: Some(rate),
            timeout: Duration::from_secs(60),
            trace_msg: calls <= 50,
            extra: Vec::new(),
        }
    }

    pub fn label(mut self, l: &str) -> Self {
        self.label = l.into();
        self
    }

    pub fn arg(mut self, a: &str) -> Self {
        self.extra.push(a.into());
        self
    }

    pub fn args(mut self, a: &[&str]) -> Self {
        self.extra.extend(a.iter().map(|s| s.to_string()));
        self
    }

    /// Local address (-i): "127.0.0.1" or "::1".
    pub fn ip(mut self, ip: &str) -> Self {
        self.ip = ip.into();
        self
    }

    /// Transport (-t): "u1" or "t1".
    pub fn transport(mut self, t: &str) -> Self {
        self.transport = t.into();
        self
    }

    /// Logs every message (-trace_msg), whatever the call count.
    pub fn trace_msg(mut self, on: bool) -> Self {
        self.trace_msg = on;
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
}

/// A running sipp.
pub struct SippRun {
    pub opts: SippOpts,
    pub child: ChildGuard,
    pub error_log: PathBuf,
    pub screen_log: PathBuf,
    pub stdout_log: PathBuf,
    pub message_log: PathBuf,
    pub command: String,
}

/// How a sipp run ended.
#[derive(Clone, Debug)]
pub struct SippResult {
    pub label: String,
    pub exit_code: Option<i32>,
    pub status: String,
    pub successful: Option<u64>,
    pub failed: Option<u64>,
    /// The harness had to kill it (past its own -timeout plus grace).
    pub killed: bool,
}

impl SippResult {
    /// Exit code 0: every call succeeded (sipp's own verdict).
    pub fn ok(&self) -> bool {
        self.exit_code == Some(0) && !self.killed && self.failed.unwrap_or(0) == 0
    }

    /// "uac: exit code 1 (at least one call failed), 998 successful, 2 failed calls".
    pub fn describe(&self) -> String {
        let meaning = match self.exit_code {
            Some(0) => "all calls succeeded",
            Some(1) => "at least one call failed",
            Some(97) => "exit on internal command",
            Some(99) => "normal exit without calls processed",
            Some(254) | Some(-2) => "fatal error binding a socket",
            Some(255) | Some(-1) => "fatal error (timeout or bad scenario/arguments)",
            _ => "",
        };
        let count = |v: Option<u64>| v.map(|n| n.to_string()).unwrap_or_else(|| "?".into());
        format!(
            "{}: {}{}{}, {} successful, {} failed calls",
            self.label,
            self.status,
            if meaning.is_empty() {
                String::new()
            } else {
                format!(" ({meaning})")
            },
            if self.killed { ", killed by the harness" } else { "" },
            count(self.successful),
            count(self.failed),
        )
    }
}

impl SippRun {
    /// Starts sipp. A UAS is waited for until it has bound its port.
    pub fn spawn(ctx: &Ctx, opts: SippOpts) -> SippRun {
        let sipp = sipp_path().unwrap_or_else(|| ctx.fail("sipp is not installed"));
        let l = &opts.label;
        let error_log = ctx.path(&format!("{l}.errors.log"));
        let screen_log = ctx.path(&format!("{l}.screen.log"));
        let stdout_log = ctx.path(&format!("{l}.stdout.log"));
        let message_log = ctx.path(&format!("{l}.messages.log"));
        let scenario = root_path(&format!("tests/sipp/{}", opts.scenario));
        let mut args: Vec<String> = vec!["-sf".into(), scenario.display().to_string()];
        if let Role::Uac { remote } = &opts.role {
            args.push(remote.to_string());
        }
        let port = opts.port.to_string();
        let calls = opts.calls.to_string();
        let timeout = format!("{}s", opts.timeout.as_secs().max(1));
        args.extend(
            [
                "-i",
                &opts.ip,
                "-p",
                &port,
                "-bind_local",
                "-t",
                &opts.transport,
                "-m",
                &calls,
                "-nostdin",
                "-timeout",
                &timeout,
                "-timeout_error",
                "-trace_err",
                "-error_file",
            ]
            .iter()
            .map(|s| s.to_string()),
        );
        args.push(error_log.display().to_string());
        args.extend([
            "-trace_screen".to_string(),
            "-screen_file".to_string(),
            screen_log.display().to_string(),
        ]);
        if opts.trace_msg {
            args.extend([
                "-trace_msg".to_string(),
                "-message_file".to_string(),
                message_log.display().to_string(),
            ]);
        }
        if let Some(r) = opts.rate {
            args.extend(["-r".to_string(), r.to_string()]);
        }
        args.extend(opts.extra.iter().cloned());

        let mut command = format!("(cd {}; {}", ctx.dir.display(), sipp.display());
        for a in &args {
            let _ = write!(command, " {a}");
        }
        command.push(')');
        ctx.note(format!("{l}: {command}"));
        ctx.add_log(&format!("sipp {l} error log"), error_log.clone());
        ctx.add_log(&format!("sipp {l} final screen"), screen_log.clone());

        let mut cmd = Command::new(&sipp);
        cmd.args(&args)
            .current_dir(&ctx.dir)
            .stdin(Stdio::null())
            .stdout(File::create(&stdout_log).expect("create sipp stdout log"))
            .stderr(File::create(ctx.path(&format!("{l}.stderr.log"))).expect("create sipp stderr log"));
        ctx.add_log(&format!("sipp {l} stderr"), ctx.path(&format!("{l}.stderr.log")));
        let mut child = ChildGuard::spawn(&format!("sipp {l}"), &mut cmd).unwrap_or_else(|e| ctx.fail(&format!("cannot start sipp: {e}")));
        if matches!(opts.role, Role::Uas) {
            let deadline = Instant::now() + Duration::from_secs(10);
            let proto = if opts.transport.starts_with('t') { "tcp" } else { "udp" };
            let ip: std::net::IpAddr = opts
                .ip
                .parse()
                .unwrap_or_else(|_| ctx.fail(&format!("sipp {l}: -i {} is not an IP", opts.ip)));
            let addr = SocketAddr::new(ip, opts.port);
            if !wait_bound(proto, addr, deadline) {
                let st = child.try_wait();
                ctx.fail(&format!("sipp {l} did not bind {proto}:{addr} ({})", describe_status(st)));
            }
        }
        let _ = ROOT;
        SippRun {
            opts,
            child,
            error_log,
            screen_log,
            stdout_log,
            message_log,
            command,
        }
    }

    /// Waits for sipp to exit on its own (it has its own -timeout; the
    /// harness allows that plus `grace`), then reads its final counts.
    pub fn wait(mut self, grace: Duration) -> SippResult {
        let deadline = Instant::now() + self.opts.timeout + grace;
        let mut status = self.child.wait_until(deadline);
        let killed = status.is_none();
        if killed {
            // SIGTERM first: sipp then still writes its final screen.
            status = self.child.terminate(Duration::from_secs(3));
        }
        let (successful, failed) = read_counts(&self.screen_log);
        SippResult {
            label: self.opts.label.clone(),
            exit_code: status.and_then(|s| s.code()),
            status: describe_status(status),
            successful,
            failed,
            killed,
        }
    }

    /// Stops a sipp that should have finished (a UAS waiting for calls
    /// that never came) and reads its counts.
    pub fn stop(mut self) -> SippResult {
        let status = self.child.terminate(Duration::from_secs(3));
        let (successful, failed) = read_counts(&self.screen_log);
        SippResult {
            label: self.opts.label.clone(),
            exit_code: status.and_then(|s| s.code()),
            status: describe_status(status),
            successful,
            failed,
            killed: true,
        }
    }
}

/// Cumulative "Successful call" and "Failed call" from sipp's final screen
/// (`-trace_screen`): lines like `  Successful call  |  0  |  1000`.
pub fn read_counts(screen: &std::path::Path) -> (Option<u64>, Option<u64>) {
    let text = std::fs::read_to_string(screen).unwrap_or_default();
    let mut ok = None;
    let mut failed = None;
    for line in text.lines() {
        let cols: Vec<&str> = line.split('|').map(str::trim).collect();
        if cols.len() < 3 {
            continue;
        }
        let last = cols[cols.len() - 1].parse::<u64>().ok();
        match cols[0] {
            "Successful call" => ok = last.or(ok),
            "Failed call" => failed = last.or(failed),
            _ => {}
        }
    }
    (ok, failed)
}

/// The readable part of sipp's final screens (`-trace_screen`): the last
/// scenario screen (messages, retransmissions, timeouts, unexpected
/// messages per step) and the call counters.
pub fn screen_summary(screen: &std::path::Path) -> String {
    let text = match std::fs::read_to_string(screen) {
        Ok(t) if !t.trim().is_empty() => t,
        Ok(_) => return "    (empty: sipp did not write its final screen)\n".into(),
        Err(e) => return format!("    (cannot read: {e})\n"),
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    // The scenario screen: from its header to the next screen separator.
    if let Some(start) = lines.iter().rposition(|l| l.contains("Messages") && l.contains("Retrans")) {
        for l in lines[start..].iter().take_while(|l| !l.starts_with("------")) {
            let _ = writeln!(out, "    {l}");
        }
    }
    for key in ["Successful call", "Failed call", "Elapsed Time", "Call Rate", "Last Error"] {
        if let Some(l) = lines.iter().rev().find(|l| l.trim_start().starts_with(key)) {
            if !out.contains(l.trim()) {
                let _ = writeln!(out, "    {}", l.trim_end());
            }
        }
    }
    if out.is_empty() {
        out = super::tail(screen, 30, 4000);
    }
    out
}

/// The last `n` entries of a sipp error log. sipp writes its entries
/// without line breaks between them; each starts with a date and a tab.
pub fn error_log_tail(path: &std::path::Path, n: usize, max_bytes: usize) -> String {
    let text = match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => t,
        Ok(_) => return "    (empty)\n".into(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return "    (none: sipp logged no error)\n".into(),
        Err(e) => return format!("    (cannot read: {e})\n"),
    };
    let b = text.as_bytes();
    let is_entry_start = |i: usize| {
        i + 11 <= b.len()
            && b[i..i + 4].iter().all(u8::is_ascii_digit)
            && b[i + 4] == b'-'
            && b[i + 5..i + 7].iter().all(u8::is_ascii_digit)
            && b[i + 7] == b'-'
            && b[i + 8..i + 10].iter().all(u8::is_ascii_digit)
            && b[i + 10] == b'\t'
    };
    let mut starts: Vec<usize> = (0..b.len()).filter(|&i| is_entry_start(i)).collect();
    if starts.is_empty() {
        return super::tail(path, 40, max_bytes);
    }
    let total = starts.len();
    starts.push(b.len());
    let mut out = String::new();
    let first = total.saturating_sub(n);
    if first > 0 {
        let _ = writeln!(out, "    ({first} earlier entries)");
    }
    for w in starts[first..].windows(2) {
        let entry = text[w[0]..w[1]].trim_end();
        let entry: String = entry.chars().take(max_bytes / n.max(1)).collect();
        for l in entry.lines() {
            let _ = writeln!(out, "    {l}");
        }
    }
    out
}

/// One message of a sipp message log (`-trace_msg`).
#[derive(Clone, Debug)]
pub struct LoggedMsg {
    /// True for a message sipp received, false for one it sent.
    pub received: bool,
    /// "UDP" or "TCP", as sipp logs it.
    pub proto: String,
    pub msg: SipMsg,
}

/// The messages of a sipp message log, in order. Entries are separated by
/// a line of dashes and a time stamp, then `UDP message received [N] bytes :`
/// or `TCP message sent (N bytes):`, an empty line and the message.
pub fn logged_messages(path: &std::path::Path) -> Vec<LoggedMsg> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = Vec::new();
    for entry in text.split("----------------------------------------------- ").skip(1) {
        let mut parts = entry.splitn(3, '\n');
        let _stamp = parts.next();
        let Some(what) = parts.next() else { continue };
        let Some(body) = parts.next() else { continue };
        let received = what.contains(" received ");
        if !received && !what.contains(" sent ") {
            continue;
        }
        let proto = what.split_whitespace().next().unwrap_or("").to_string();
        // sipp writes LF line ends in its log; SipMsg wants CRLF.
        let raw = body.trim_start_matches('\n').trim_end().replace("\r\n", "\n").replace('\n', "\r\n");
        let raw = if raw.contains("\r\n\r\n") { raw } else { format!("{raw}\r\n\r\n") };
        if let Some(msg) = SipMsg::parse(raw.as_bytes()) {
            out.push(LoggedMsg { received, proto, msg });
        }
    }
    out
}

/// Fails unless every sipp run succeeded with `calls` successful calls.
pub fn ensure_sipp(ctx: &super::Ctx, results: &[&SippResult], calls: u64) {
    let all = results.iter().map(|r| r.describe()).collect::<Vec<_>>().join("; ");
    for r in results {
        ctx.ensure(r.ok() && r.successful == Some(calls), || {
            format!("expected {calls} successful calls and 0 failed: {all}")
        });
    }
}
