//! Relay forwarding cost: CPU-seconds of the embedded forwarder per million
//! packets relayed, with serlua-rtpload playing both phones of N calls
//! (50 packets/s each way, 172-byte G.711 packets, streams spread over the
//! 20 ms interval).
//!
//! `cargo bench --bench forward [-- --streams N --duration S --threads T --tick-ms MS]`
//! (--tick-ms goes to serlua-rtpload: how bursty the load is)
//! (release). This process holds only the forwarder (its main thread waits
//! on the load generator), so its getrusage over the run is the relay's
//! cost. Under `cargo test` it runs 10 streams for 1 s as a smoke test.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

use serlua::relay::Side;
use serlua::relay::forward::{ForwardConfig, Forwarder};

/// CPU-seconds (user + system) and context switches of this process.
fn usage() -> (f64, u64) {
    // SAFETY: getrusage fills a live rusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (tv(ru.ru_utime) + tv(ru.ru_stime), (ru.ru_nvcsw + ru.ru_nivcsw) as u64)
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--bench");
    let streams = arg(&args, "--streams", if full { 200 } else { 10 });
    let duration = arg(&args, "--duration", if full { 10 } else { 1 });
    let threads = arg(&args, "--threads", 1);
    let base = arg(&args, "--port-base", 26000) as u16;
    let tick_ms = args
        .iter()
        .position(|a| a == "--tick-ms")
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| "2".into());
    let fwd = Forwarder::start(ForwardConfig {
        bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
        ports: (base, base.saturating_add((streams * 4 + 100).min(60000) as u16)),
        threads,
    })
    .expect("forwarder");
    let handles: Vec<_> = (0..streams).map(|_| fwd.open_stream().expect("stream")).collect();
    let dir = std::env::temp_dir().join(format!("serlua-bench-forward-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let pairs = dir.join("pairs");
    let mut f = std::fs::File::create(&pairs).expect("pairs file");
    for h in &handles {
        writeln!(f, "{} {}", h.local_port(Side::Caller), h.local_port(Side::Callee)).expect("write");
    }
    drop(f);

    let (p0, (c0, w0)) = (fwd.totals().0, usage());
    let out = Command::new(env!("CARGO_BIN_EXE_serlua-rtpload"))
        .args([
            "--pairs",
            pairs.to_str().expect("utf-8 path"),
            "--duration",
            &duration.to_string(),
            "--tick-ms",
            &tick_ms,
        ])
        .output()
        .expect("run serlua-rtpload");
    let (p1, (c1, w1)) = (fwd.totals().0, usage());
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "serlua-rtpload: {}", String::from_utf8_lossy(&out.stderr));
    let load: serde_json::Value = serde_json::from_slice(&out.stdout).expect("rtpload JSON");
    let packets = p1 - p0;
    let cpu = c1 - c0;
    println!(
        "forward: {streams} streams x 2 directions x 50 pps for {duration} s, {threads} thread(s): {packets} packets relayed, \
         relay {cpu:.3} CPU-s = {:.3} CPU-s per million packets (= us per packet), {:.3} context switches per packet; lost {} of {}; \
         latency p50 {} us, p99 {} us; rtpload itself {:.3} CPU-s",
        cpu * 1e6 / packets.max(1) as f64,
        (w1 - w0) as f64 / packets.max(1) as f64,
        load["lost"],
        load["sent"],
        load["latency_us"]["p50"],
        load["latency_us"]["p99"],
        load["cpu_s"]["user"].as_f64().unwrap_or(0.0) + load["cpu_s"]["system"].as_f64().unwrap_or(0.0),
    );
    assert_eq!(load["lost"], 0, "{load:#}");
}
