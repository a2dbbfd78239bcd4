//! serlua-rtpload through the embedded forwarder: 20 calls of 50 packets/s
//! each way, nothing lost, nothing misrouted, and the relay's own counters
//! agree with the sink's.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;

use serlua::relay::Side;
use serlua::relay::forward::{ForwardConfig, Forwarder};

#[test]
fn rtpload_measures_zero_loss_through_the_forwarder() {
    let fwd = Forwarder::start(ForwardConfig {
        bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
        ports: (24000, 24999),
        threads: 2,
    })
    .expect("forwarder");
    // No announced peers: the load generator's priming packets latch both
    // ends, as a NATed phone's first packets would.
    let streams: Vec<_> = (0..20).map(|_| fwd.open_stream().expect("stream")).collect();
    let dir = std::env::temp_dir().join(format!("serlua-rtpload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("pairs");
    let mut f = std::fs::File::create(&file).expect("pairs file");
    writeln!(f, "# a_port b_port").expect("write");
    for s in &streams {
        writeln!(f, "{} {}", s.local_port(Side::Caller), s.local_port(Side::Callee)).expect("write");
    }
    drop(f);
    let out = Command::new(env!("CARGO_BIN_EXE_serlua-rtpload"))
        .args([
            "--pairs",
            file.to_str().expect("utf-8 path"),
            "--duration",
            "2",
            "--bind-a",
            "127.0.0.1:0",
            "--bind-b",
            "127.0.0.1:0",
        ])
        .output()
        .expect("run serlua-rtpload");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "serlua-rtpload failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    eprintln!("{r:#}");
    assert_eq!(r["streams"], 20);
    assert_eq!(r["primed"], true);
    assert_eq!(r["sent"], 20 * 2 * 100, "2 s at 50 packets/s, both ways");
    assert_eq!(r["received"], r["sent"]);
    assert_eq!(r["lost"], 0);
    assert_eq!(r["misrouted"], 0);
    assert_eq!(r["duplicates"], 0);
    assert_eq!(r["per_stream"]["lost_max"], 0);
    assert_eq!(r["per_stream"]["received_min"], 100);
    assert!(
        r["latency_us"]["p50"].as_u64().is_some_and(|us| us < 100_000),
        "latency measured: {}",
        r["latency_us"]
    );
    // The relay saw at least what was measured (plus the priming packets).
    for s in &streams {
        assert!(s.counters(Side::Caller).packets >= 100);
        assert!(s.counters(Side::Callee).packets >= 100);
    }
    assert!(fwd.totals().0 >= 4000);
}
