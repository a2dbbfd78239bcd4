//! End-to-end acceptance of the HTTP listener (issue 7, parts 4 and 5):
//! the real `serlua run` of tests/scripts/relay.lua plus
//! `http_listen = "127.0.0.1:PORT"`, between a sipp UAC and a sipp UAS
//! (tests/sipp/uac.xml, uas.xml). During the call load `/api/status` shows
//! the live calls and `/` serves the page; afterwards every message counter
//! of `/metrics` equals what the two sipps counted on their side (sent by
//! one sipp = received by the proxy, received by a sipp = sent by the
//! proxy, retransmissions included).
//!
//! Logs stay in target/tmp/e2e/<test>/ (as for tests/e2e.rs).
//!
//!   cargo test --test e2e_ops_http -- --nocapture

#[path = "e2e/mod.rs"]
mod harness;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use harness::sipp::{SippOpts, SippRun};
use harness::{Ctx, Proxy, ProxyOpts, free_port, free_udp_port, sipp_or_skip};

const CALLS: u32 = 600;
const RATE: u32 = 120;

/// GET over a fresh connection: status and body (None when nothing answers).
fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// The message counters of a scrape: "received INVITE", "sent 2xx", ...
fn message_counters(ctx: &Ctx, body: &str) -> BTreeMap<String, f64> {
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .unwrap_or_else(|e| ctx.fail(&format!("/metrics does not parse: {e}")));
    let mut out = BTreeMap::new();
    for s in &scrape.samples {
        let dir = match s.metric.as_str() {
            "serlua_sip_messages_received_total" => "received",
            "serlua_sip_messages_sent_total" => "sent",
            _ => continue,
        };
        let prometheus_parse::Value::Counter(v) = s.value else {
            ctx.fail(&format!("{} is not typed as a counter", s.metric))
        };
        let what = s.labels.get("method").or(s.labels.get("class")).unwrap_or("?");
        out.insert(format!("{dir} {what}"), v);
    }
    out
}

/// What one sipp sent and received, from its final screen: "INVITE" or a
/// status class ("2xx") -> messages plus retransmissions. In a UAC screen
/// the name comes before the arrow (`INVITE ---------->` is sent); in a UAS
/// screen after it (`----------> INVITE` is received).
fn sipp_counts(screen: &Path) -> (BTreeMap<String, f64>, BTreeMap<String, f64>) {
    let text = std::fs::read_to_string(screen).unwrap_or_default();
    // The last scenario screen only (sipp writes one per -trace_screen dump).
    let start = text.rfind("Messages  Retrans").unwrap_or(0);
    let (mut sent, mut received) = (BTreeMap::new(), BTreeMap::new());
    for line in text[start..].lines() {
        let toks: Vec<&str> = line.split_whitespace().collect();
        let Some(arrow) = toks.iter().position(|t| *t == "---------->" || *t == "<----------") else {
            continue;
        };
        let right = toks[arrow] == "---------->";
        let (name, name_first) = if arrow > 0 {
            (toks[arrow - 1], true)
        } else {
            (toks.get(1).copied().unwrap_or(""), false)
        };
        let counts_from = if name_first { arrow + 1 } else { arrow + 2 };
        let numbers: Vec<f64> = toks
            .get(counts_from..)
            .unwrap_or(&[])
            .iter()
            .filter_map(|t| t.parse().ok())
            .collect();
        let total = numbers.first().copied().unwrap_or(0.0) + numbers.get(1).copied().unwrap_or(0.0);
        let key = match name.parse::<u16>() {
            Ok(code) => format!("{}xx", code / 100),
            Err(_) => name.to_string(),
        };
        let is_sent = right == name_first;
        *if is_sent { &mut sent } else { &mut received }.entry(key).or_insert(0.0) += total;
    }
    (sent, received)
}

#[test]
fn metrics_and_status_page_under_a_sipp_call_load() {
    let name = "ops_http_metrics_under_load";
    if !sipp_or_skip(name) {
        return;
    }
    let ctx = Ctx::new(name);
    let http: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let relay = std::fs::read_to_string(harness::root_path("tests/scripts/relay.lua")).expect("relay.lua");
    let script = ctx.path("relay_http.lua");
    std::fs::write(&script, format!("{relay}\nhttp_listen = \"{http}\"\n")).expect("write script");
    let script = script.display().to_string();

    let uas_port = free_udp_port();
    let uas = SippRun::spawn(&ctx, SippOpts::uas("uas.xml", uas_port, CALLS).trace_msg(false));
    let mut proxy = Proxy::start(&ctx, ProxyOpts::relay(([127, 0, 0, 1], uas_port).into()).script(&script));

    let deadline = Instant::now() + Duration::from_secs(10);
    let before = loop {
        match http_get(http, "/metrics") {
            Some((200, body)) => break message_counters(&ctx, &body),
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            other => ctx.fail(&format!(
                "nothing serves http_listen {http} (got {other:?}): is the listener wired into the server (src/server.rs)?"
            )),
        }
    };
    ctx.note(format!("metrics before the load: {before:?}"));

    let uac = SippRun::spawn(
        &ctx,
        SippOpts::uac("uac.xml", free_udp_port(), proxy.addr, CALLS, RATE).trace_msg(false),
    );
    // During the load: the data endpoint shows live calls, the page is served.
    let mut live_max = 0u64;
    let mut page_ok = false;
    let until = Instant::now() + Duration::from_secs(u64::from(CALLS / RATE) + 10);
    while Instant::now() < until && (live_max == 0 || !page_ok) {
        if let Some((200, body)) = http_get(http, "/api/status") {
            let st: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| ctx.fail(&format!("/api/status is not JSON: {e}")));
            let n = st["calls"]["transactions_total"].as_u64().unwrap_or(0);
            if n > 0 {
                let first = &st["calls"]["transactions"][0];
                ctx.ensure(first["method"] == "INVITE" && first["call_id"].is_string(), || {
                    format!("a live call: {first}")
                });
            }
            live_max = live_max.max(n);
        }
        if live_max > 0 && !page_ok {
            if let Some((200, page)) = http_get(http, "/") {
                page_ok = page.contains("<table id=\"calls\">") && page.contains("@127.0.0.1</td>");
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let uac = uac.wait(Duration::from_secs(20));
    let uas = uas.wait(Duration::from_secs(20));
    proxy.ensure_alive(&ctx);
    ctx.ensure(uac.ok() && uas.ok(), || format!("sipp: {}; {}", uac.describe(), uas.describe()));
    ctx.ensure(live_max > 0, || "/api/status never showed a live call during the load".into());
    ctx.ensure(page_ok, || "the status page never listed a live call during the load".into());

    let (status, body) = http_get(http, "/metrics").unwrap_or_else(|| ctx.fail("/metrics stopped answering"));
    ctx.ensure(status == 200, || format!("/metrics: HTTP {status}"));
    let after = message_counters(&ctx, &body);
    let delta = |k: &str| after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0);

    let (uac_sent, uac_received) = sipp_counts(&uac_screen(&ctx));
    let (uas_sent, uas_received) = sipp_counts(&uas_screen(&ctx));
    ctx.note(format!(
        "uac sent {uac_sent:?}, received {uac_received:?}; uas sent {uas_sent:?}, received {uas_received:?}"
    ));
    ctx.ensure(uac_sent.get("INVITE") >= Some(&f64::from(CALLS)), || {
        format!("the UAC screen was read: {uac_sent:?}")
    });
    let mut expected: BTreeMap<String, f64> = BTreeMap::new();
    for (m, n) in uac_sent.iter().chain(&uas_sent) {
        *expected.entry(format!("received {m}")).or_insert(0.0) += n;
    }
    for (m, n) in uac_received.iter().chain(&uas_received) {
        *expected.entry(format!("sent {m}")).or_insert(0.0) += n;
    }
    for k in after.keys() {
        let want = expected.get(k).copied().unwrap_or(0.0);
        ctx.ensure(delta(k) == want, || {
            format!("/metrics {k}: {} during the load, the sipps counted {want}", delta(k))
        });
    }
    ctx.ensure(delta("received INVITE") == f64::from(CALLS), || {
        format!("received INVITE {}", delta("received INVITE"))
    });
}

fn uac_screen(ctx: &Ctx) -> std::path::PathBuf {
    ctx.path("uac.screen.log")
}

fn uas_screen(ctx: &Ctx) -> std::path::PathBuf {
    ctx.path("uas.screen.log")
}
