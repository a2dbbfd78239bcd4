//! usrloc memory and lookup cost: 100,000 bindings in memory, the bytes
//! each costs (RSS growth / bindings), and the time of a lookup of a
//! registered AOR and of a miss.
//!
//! `cargo bench --bench usrloc` (release; medians of 5 runs). Under
//! `cargo test` it runs with 1,000 bindings as a smoke test.

use std::hint::black_box;
use std::time::{Duration, Instant};

use serlua::db::UlTable;
use serlua::usrloc::{Binding, BindingText, Record, Usrloc};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn binding(ul: &Usrloc, i: usize, now: i64) -> Binding {
    let ruid = ul.new_ruid();
    let contact = format!("sip:user{i}@192.0.2.{}:5060;transport=udp", i % 250);
    let received = format!("sip:198.51.100.{}:{}", i % 250, 10000 + i % 50000);
    let callid = format!("{i:08x}-4f2a-11ef-9c3e-0242ac120002@192.0.2.{}", i % 250);
    let mut b = Binding::new(&BindingText {
        ruid: &ruid,
        contact: &contact,
        received: Some(&received),
        path: None,
        callid: &callid,
        user_agent: "Linphone/5.2.0 (belle-sip/5.2.0)",
        socket: Some("udp:192.0.2.13:5060"),
        instance: None,
    });
    b.expires = now + 3600;
    b.last_modified = now;
    b.cseq = 1;
    b.cflags = 64;
    b
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n: usize = if full { 100_000 } else { 1_000 };
    let now = 1_800_000_000;
    let ul = Usrloc::new(UlTable::Location, true, "bench".into());
    let before = rss_kib();
    for i in 0..n {
        let key = ul.aor_key(&format!("user{i}"), Some("example.com"));
        let b = binding(&ul, i, now);
        ul.update(&key, |slot| {
            slot.get_or_insert_with(|| Record {
                username: format!("user{i}").into(),
                domain: Some("example.com".into()),
                bindings: Default::default(),
            })
            .bindings
            .push(b)
        });
    }
    let after = rss_kib();
    assert_eq!(ul.binding_count(), n);
    let keys: Vec<String> = (0..n).map(|i| ul.aor_key(&format!("user{i}"), Some("example.com"))).collect();
    let mut hit = Vec::new();
    let mut miss = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        for k in &keys {
            black_box(ul.lookup(black_box(k), now));
        }
        hit.push(t.elapsed() / n as u32);
        let t = Instant::now();
        for i in 0..n {
            black_box(ul.lookup(black_box(&format!("nobody{i}@example.com")), now));
        }
        miss.push(t.elapsed() / n as u32);
    }
    println!(
        "{n} bindings: {:.0} bytes of RSS per binding; lookup {:?} (hit, includes the copy of the record), {:?} (miss, includes formatting the key)",
        (after.saturating_sub(before) * 1024) as f64 / n as f64,
        median(hit),
        median(miss)
    );
}
