//! The HTTP listener (src/http.rs) over a real socket: `/metrics` parsed
//! with a Prometheus text-format parser and compared with the messages
//! fed through a worker, `/api/status` fields, the status page's escaping
//! of what comes from the network, 404/405/HEAD, the loopback Host check.
//!
//! The worker is the sans-IO core (as in tests/core_tm.rs), driven on this
//! thread; the listener runs on its own thread over the same `Shared`.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use serlua::app::{Overrides, instance};
use serlua::control::Control;
use serlua::sip::{HeaderName, SipMessage};
use serlua::transport::{Incoming, Proto};
use serlua::worker::Worker;

const UAC: &str = "127.0.0.1:5090";
const UAS: &str = "127.0.0.1:5070";
const PHONE: &str = "127.0.0.1:5099";

const SCRIPT: &str = r#"
listen = "udp:127.0.0.1:5060"
function route.main()
  if msg.method == "REGISTER" then
    if not save("location") then sl_reply_error() end
    return
  end
  if msg.method == "MESSAGE" then error("deliberate <b>failure</b> & more") end
  if not mf_process_maxfwd_header(10) then sl_send_reply(483, "Too Many Hops"); return end
  record_route()
  if loose_route() then route[1](); return end
  rewritehostport("127.0.0.1:5070")
  route[1]()
end
route[1] = function()
  if not t_relay() then sl_reply_error() end
end
"#;

/// An HTML injection attempt, as a User-Agent.
const EVIL: &str = r#"<script>alert("pwned")</script><img src=x onerror='alert(1)'>"#;
/// One as a Call-ID (`<`, `>`, `"`, `'`, `(`, `)` and `/` are all legal in
/// a Call-ID word, RFC 3261 §25.1; spaces and `=` are not).
const EVIL_CALL_ID: &str = r#"<script>alert('pwned')</script><b>"#;

struct Net {
    w: Worker,
    now: Instant,
    /// First lines of everything the proxy sent.
    sent: Vec<String>,
}

impl Net {
    fn new() -> Net {
        let now = Instant::now();
        let w = instance(Path::new("http_test.lua"), Some(SCRIPT.to_string()), &Overrides::default(), now).expect("script loads");
        Net { w, now, sent: Vec::new() }
    }

    fn control(&self) -> Arc<Control> {
        Arc::new(Control::new(self.w.env.shared.clone(), PathBuf::from("http_test.lua")))
    }

    /// Feeds one datagram; returns what the proxy sent in answer.
    fn recv(&mut self, from: &str, text: &str) -> Vec<SipMessage> {
        self.w.handle(
            self.now,
            Incoming {
                local: 0,
                proto: Proto::Udp,
                src: from.parse().unwrap(),
                conn: None,
                data: Bytes::from(text.replace('\n', "\r\n")),
            },
        );
        let out: Vec<SipMessage> = self
            .w
            .take_transmits()
            .into_iter()
            .map(|t| SipMessage::parse(t.data).expect("parsable"))
            .collect();
        for m in &out {
            let b = m.to_bytes();
            self.sent.push(String::from_utf8_lossy(&b).lines().next().unwrap_or("").to_string());
        }
        out
    }

    /// The forwarded request among `out` (the one that is a request).
    fn forwarded(out: Vec<SipMessage>) -> SipMessage {
        out.into_iter().find(|m| m.is_request()).expect("a forwarded request")
    }

    /// One call: INVITE, 180, 200, ACK, BYE, 200 (UAC -> proxy -> UAS).
    fn call(&mut self, id: &str) {
        let inv = Net::forwarded(self.recv(UAC, &invite(id, "bob")));
        self.recv(UAS, &reply_to(&inv, 180, "Ringing", Some("b1")));
        self.recv(UAS, &reply_to(&inv, 200, "OK", Some("b1")));
        let route = "Route: <sip:127.0.0.1:5060;lr>\n";
        self.recv(UAC, &in_dialog("ACK", id, 1, route));
        let bye = Net::forwarded(self.recv(UAC, &in_dialog("BYE", id, 2, route)));
        self.recv(UAS, &reply_to(&bye, 200, "OK", None));
    }
}

fn invite(call_id: &str, user: &str) -> String {
    format!(
        "INVITE sip:{user}@example.com SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bK-{}
Max-Forwards: 70
From: <sip:alice@example.com>;tag=a1
To: <sip:{user}@example.com>
Call-ID: {call_id}
CSeq: 1 INVITE
Contact: <sip:alice@127.0.0.1:5090>
Content-Length: 0

",
        token(call_id)
    )
}

fn in_dialog(method: &str, call_id: &str, cseq: u32, route: &str) -> String {
    format!(
        "{method} sip:bob@127.0.0.1:5070 SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bK-{method}-{}
Max-Forwards: 70
{route}From: <sip:alice@example.com>;tag=a1
To: <sip:bob@example.com>;tag=b1
Call-ID: {call_id}
CSeq: {cseq} {method}
Content-Length: 0

",
        token(call_id)
    )
}

/// A branch-safe token for a Call-ID.
fn token(call_id: &str) -> String {
    call_id.bytes().map(|b| format!("{b:02x}")).collect()
}

fn reply_to(req: &SipMessage, status: u16, reason: &str, to_tag: Option<&str>) -> String {
    let mut s = format!("SIP/2.0 {status} {reason}\n");
    for v in req.headers(&HeaderName::Via) {
        s += &format!("Via: {}\n", String::from_utf8_lossy(&v));
    }
    for v in req.headers(&HeaderName::RecordRoute) {
        s += &format!("Record-Route: {}\n", String::from_utf8_lossy(&v));
    }
    s += &format!("From: {}\n", String::from_utf8_lossy(&req.header(&HeaderName::From).unwrap()));
    let to = String::from_utf8_lossy(&req.header(&HeaderName::To).unwrap()).to_string();
    match to_tag {
        Some(t) if req.to().tag().is_none() => s += &format!("To: {to};tag={t}\n"),
        _ => s += &format!("To: {to}\n"),
    }
    s += &format!(
        "Call-ID: {}\nCSeq: {}\n",
        req.call_id(),
        String::from_utf8_lossy(&req.header(&HeaderName::CSeq).unwrap())
    );
    s += "Contact: <sip:bob@127.0.0.1:5070>\nContent-Length: 0\n\n";
    s
}

fn register(user: &str, user_agent: &str) -> String {
    format!(
        "REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/UDP {PHONE};branch=z9hG4bK-reg-{user}
Max-Forwards: 70
From: <sip:{user}@example.com>;tag=r1
To: <sip:{user}@example.com>
Call-ID: reg-{user}
CSeq: 1 REGISTER
User-Agent: {user_agent}
Contact: <sip:{user}@{PHONE}>
Expires: 3600
Content-Length: 0

"
    )
}

fn message() -> String {
    "MESSAGE sip:bob@example.com SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bK-msg1
Max-Forwards: 70
From: <sip:alice@example.com>;tag=m1
To: <sip:bob@example.com>
Call-ID: msg-1
CSeq: 1 MESSAGE
Content-Length: 0

"
    .to_string()
}

// ---------------------------------------------------------------------------
// a minimal HTTP/1.1 client

struct Resp {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> &str {
        self.headers.get(&name.to_ascii_lowercase()).map(String::as_str).unwrap_or("")
    }
}

fn request(addr: SocketAddr, method: &str, path: &str, extra: &[(&str, &str)]) -> Resp {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    if !extra.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        req += &format!("Host: {addr}\r\n");
    }
    for (k, v) in extra {
        req += &format!("{k}: {v}\r\n");
    }
    req += "\r\n";
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read response");
    let text = String::from_utf8(raw).expect("utf-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("header end");
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    assert!(
        !headers.get("transfer-encoding").is_some_and(|t| t.contains("chunked")),
        "the test client reads no chunked bodies"
    );
    Resp {
        status,
        headers,
        body: body.to_string(),
    }
}

fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path, &[])
}

fn serve(net: &Net) -> SocketAddr {
    let (addr, _thread) = serlua::http::start(net.control(), "127.0.0.1:0".parse().unwrap()).expect("http listener starts");
    addr
}

// ---------------------------------------------------------------------------
// /metrics

/// `name{labels}` -> value for every sample line; also checks that each
/// sample belongs to a family announced by `# TYPE` (classic format: the
/// counter family is named with its `_total`).
fn samples(text: &str) -> BTreeMap<String, f64> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').expect("TYPE name type");
            types.insert(name.to_string(), ty.to_string());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (key, value) = line.rsplit_once(' ').expect("sample value");
        let name = key.split('{').next().unwrap();
        let family = [
            name,
            name.trim_end_matches("_bucket"),
            name.trim_end_matches("_sum"),
            name.trim_end_matches("_count"),
        ]
        .into_iter()
        .find(|f| types.contains_key(*f))
        .unwrap_or_else(|| panic!("sample {name} has no # TYPE line"));
        if types[family] == "counter" {
            assert!(name.ends_with("_total"), "counter {name} must end in _total");
        }
        out.insert(
            key.to_string(),
            value.parse::<f64>().unwrap_or_else(|_| panic!("value of {key}: {value}")),
        );
    }
    out
}

fn count(first_lines: &[String], what: &str) -> f64 {
    first_lines
        .iter()
        .filter(|l| {
            if let Some(class) = what.strip_suffix("xx") {
                l.strip_prefix("SIP/2.0 ").is_some_and(|r| r.starts_with(class))
            } else {
                l.starts_with(&format!("{what} "))
            }
        })
        .count() as f64
}

#[test]
fn metrics_parse_and_match_the_messages_fed() {
    let mut net = Net::new();
    let addr = serve(&net);
    for i in 0..3 {
        net.call(&format!("call-{i}@uac"));
    }
    let reg = net.recv(PHONE, &register("alice", "phone/1.0"));
    assert_eq!(reg[0].status(), Some(200), "REGISTER saved");
    let err = net.recv(UAC, &message());
    assert_eq!(err[0].status(), Some(500), "a script error answers 500");

    let r = get(addr, "/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), "text/plain; version=0.0.4; charset=utf-8");

    // A real Prometheus text-format parser.
    let scrape = prometheus_parse::Scrape::parse(r.body.lines().map(|l| Ok(l.to_string()))).expect("parses");
    let counter = |metric: &str, labels: &[(&str, &str)]| -> f64 {
        let s = scrape
            .samples
            .iter()
            .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)) && s.labels.len() == labels.len())
            .unwrap_or_else(|| panic!("no sample {metric} {labels:?} in\n{}", r.body));
        match s.value {
            prometheus_parse::Value::Counter(v) => v,
            ref other => panic!("{metric} is not a counter: {other:?}"),
        }
    };
    let gauge = |metric: &str| -> f64 {
        match scrape
            .samples
            .iter()
            .find(|s| s.metric == metric)
            .unwrap_or_else(|| panic!("no {metric}"))
            .value
        {
            prometheus_parse::Value::Gauge(v) => v,
            ref other => panic!("{metric} is not a gauge: {other:?}"),
        }
    };
    let rcv = "serlua_sip_messages_received_total";
    let req = |m: &'static str| [("kind", "request"), ("method", m)];
    let rpl = |c: &'static str| [("kind", "reply"), ("class", c)];
    // Received: exactly what was fed.
    assert_eq!(counter(rcv, &req("INVITE")), 3.0);
    assert_eq!(counter(rcv, &req("ACK")), 3.0);
    assert_eq!(counter(rcv, &req("BYE")), 3.0);
    assert_eq!(counter(rcv, &req("REGISTER")), 1.0);
    assert_eq!(counter(rcv, &req("MESSAGE")), 1.0);
    assert_eq!(counter(rcv, &req("OPTIONS")), 0.0);
    assert_eq!(counter(rcv, &req("OTHER")), 0.0);
    assert_eq!(counter(rcv, &rpl("1xx")), 3.0);
    assert_eq!(counter(rcv, &rpl("2xx")), 6.0);
    assert_eq!(counter(rcv, &rpl("4xx")), 0.0);
    // Sent: exactly what the worker emitted.
    let sent = "serlua_sip_messages_sent_total";
    for m in ["INVITE", "ACK", "BYE", "CANCEL", "REGISTER", "MESSAGE", "OPTIONS"] {
        assert_eq!(
            counter(sent, &req(m)),
            count(&net.sent, m),
            "sent {m}; the proxy sent {:?}",
            net.sent
        );
    }
    for c in ["1xx", "2xx", "3xx", "4xx", "5xx", "6xx"] {
        assert_eq!(
            counter(sent, &rpl(c)),
            count(&net.sent, c),
            "sent {c}; the proxy sent {:?}",
            net.sent
        );
    }
    assert_eq!(counter(sent, &req("INVITE")), 3.0);
    assert_eq!(counter(sent, &rpl("5xx")), 1.0, "the 500 for the script error");

    assert_eq!(counter("serlua_script_errors_total", &[]), 1.0);
    assert_eq!(counter("serlua_parse_errors_total", &[]), 0.0);
    assert_eq!(counter("serlua_overload_rejections_total", &[]), 0.0);
    assert_eq!(counter("serlua_database_errors_total", &[]), 0.0);
    assert_eq!(counter("serlua_nat_pings_total", &[]), 0.0);
    assert_eq!(counter("serlua_relay_packets_total", &[]), 0.0);
    assert_eq!(counter("serlua_relay_bytes_total", &[]), 0.0);
    assert_eq!(gauge("serlua_registrations"), 1.0);
    assert_eq!(gauge("serlua_relay_sessions"), 0.0);
    assert_eq!(gauge("serlua_transactions_active"), net.w.env.shared.tm.len() as f64);
    let store = &net.w.env.shared.store;
    assert_eq!(
        gauge("serlua_database_queue_length"),
        (store.location.pending_len() + store.aliases.pending_len()) as f64
    );
    assert!(gauge("serlua_uptime_seconds") >= 0.0);
    let workers: Vec<_> = scrape.samples.iter().filter(|s| s.metric == "serlua_worker_queue_bytes").collect();
    assert_eq!(workers.len(), net.w.env.shared.queue_bytes.len());
    assert_eq!(workers[0].labels.get("worker"), Some("0"));

    // The route time histogram: cumulative buckets, +Inf = count = route runs.
    let all = samples(&r.body);
    let runs = net.w.env.shared.stats.route_time.count.load(std::sync::atomic::Ordering::Relaxed) as f64;
    assert_eq!(
        runs, 11.0,
        "one route run per request (3 calls x INVITE, ACK, BYE; REGISTER; MESSAGE)"
    );
    assert_eq!(all["serlua_route_duration_seconds_count"], runs);
    assert_eq!(all[r#"serlua_route_duration_seconds_bucket{le="+Inf"}"#], runs);
    let buckets: Vec<f64> = all
        .iter()
        .filter(|(k, _)| k.starts_with("serlua_route_duration_seconds_bucket"))
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(buckets.len(), serlua::core::ROUTE_TIME_BUCKETS.len() + 1);
    let mut sorted = buckets.clone();
    sorted.sort_by(f64::total_cmp);
    assert_eq!(*sorted.last().unwrap(), runs, "cumulative: the largest bucket is +Inf");
    assert!(all["serlua_route_duration_seconds_sum"] > 0.0);

    // Every family the issue names is there.
    for family in [
        "serlua_sip_messages_received_total",
        "serlua_sip_messages_sent_total",
        "serlua_transactions_active",
        "serlua_script_errors_total",
        "serlua_route_duration_seconds",
        "serlua_worker_queue_bytes",
        "serlua_overload_rejections_total",
        "serlua_registrations",
        "serlua_subscribers",
        "serlua_nat_pings_total",
        "serlua_relay_sessions",
        "serlua_relay_packets_total",
        "serlua_relay_bytes_total",
        "serlua_database_errors_total",
        "serlua_database_queue_length",
        "serlua_parse_errors_total",
        "serlua_uptime_seconds",
    ] {
        assert!(
            r.body.contains(&format!("# TYPE {family} ")),
            "family {family} missing in\n{}",
            r.body
        );
    }

    // More traffic shows at the next scrape: values are read at scrape time.
    net.call("call-late@uac");
    let again = samples(&get(addr, "/metrics").body);
    assert_eq!(again[r#"serlua_sip_messages_received_total{kind="request",method="INVITE"}"#], 4.0);
}

#[test]
fn openmetrics_when_asked_for() {
    let net = Net::new();
    let addr = serve(&net);
    let r = request(
        addr,
        "GET",
        "/metrics",
        &[(
            "Accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )],
    );
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type").starts_with("application/openmetrics-text; version=1.0.0"),
        "{}",
        r.header("content-type")
    );
    assert!(r.body.ends_with("# EOF\n"));
    assert!(
        r.body.contains("# TYPE serlua_sip_messages_received counter\n"),
        "OpenMetrics names the counter family without _total"
    );
    assert!(r.body.contains("# UNIT serlua_route_duration_seconds seconds\n"));
    assert!(
        r.body
            .contains(r#"serlua_sip_messages_received_total{kind="request",method="INVITE"} 0"#)
    );
}

// ---------------------------------------------------------------------------
// /api/status and the page

#[test]
fn status_json_has_every_section() {
    let mut net = Net::new();
    let addr = serve(&net);
    net.call("done@uac");
    // A call left ringing: its INVITE transaction is live.
    let inv = Net::forwarded(net.recv(UAC, &invite("ringing@uac", "carol")));
    net.recv(UAS, &reply_to(&inv, 180, "Ringing", Some("c1")));
    net.recv(PHONE, &register("alice", "phone/1.0"));
    net.recv(UAC, &message());

    let r = get(addr, "/api/status");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), "application/json");
    assert_eq!(r.header("cache-control"), "no-store");
    let st: Value = serde_json::from_str(&r.body).expect("JSON");
    assert_eq!(st["version"]["name"], "serlua");
    assert!(st["version"]["uptime_seconds"].is_u64());
    assert!(st["time"].is_u64());
    assert_eq!(st["time_ms"].as_u64().unwrap() / 1000, st["time"].as_u64().unwrap());
    assert_eq!(st["stats"]["received"]["requests_by_method"]["INVITE"], 2);
    assert_eq!(st["stats"]["errors"]["script"], 1);
    // Registrations: the total and the bindings shown.
    assert_eq!(st["registrations"]["total"], 1);
    assert_eq!(st["registrations"]["limit"], serlua::http::REGISTRATIONS_SHOWN);
    let reg = &st["registrations"]["shown"][0];
    assert_eq!(reg["aor"], "alice@example.com");
    assert_eq!(reg["contact"], format!("sip:alice@{PHONE}"));
    assert_eq!(reg["user_agent"], "phone/1.0");
    // Live calls: INVITE transactions only; the ringing one is there.
    let txs = st["calls"]["transactions"].as_array().unwrap();
    assert!(txs.iter().all(|t| t["method"] == "INVITE"));
    let ringing = txs.iter().find(|t| t["call_id"] == "ringing@uac").expect("the ringing call");
    assert_eq!(ringing["status"], 180);
    assert_eq!(ringing["branches"][0]["dst"], UAS);
    assert_eq!(st["calls"]["transactions_total"], txs.len());
    let ages: Vec<u64> = txs.iter().map(|t| t["age_ms"].as_u64().unwrap()).collect();
    assert!(ages.windows(2).all(|w| w[0] <= w[1]), "newest first: {ages:?}");
    assert_eq!(st["calls"]["sessions"], serde_json::json!([]));
    assert_eq!(st["calls"]["sessions_total"], 0);
    // Health.
    let h = &st["health"];
    assert_eq!(h["workers"][0]["worker"], 0);
    assert!(h["workers"][0]["queue_bytes"].is_u64());
    assert_eq!(h["transactions_active"], net.w.env.shared.tm.len());
    assert_eq!(
        h["database_queue"],
        net.w.env.shared.store.location.pending_len() + net.w.env.shared.store.aliases.pending_len()
    );
    assert_eq!(h["draining"], false);
    assert_eq!(h["overload_503"], 0);
    // Recent script errors.
    let errs = st["errors"].as_array().unwrap();
    assert_eq!(errs.len(), 1);
    assert!(
        errs[0]["error"].as_str().unwrap().contains("deliberate <b>failure</b>"),
        "{}",
        errs[0]
    );
    assert!(errs[0]["time"].is_i64());
}

#[test]
fn page_escapes_what_comes_from_the_network() {
    let mut net = Net::new();
    let addr = serve(&net);
    net.recv(PHONE, &register("mallory", EVIL));
    let inv = Net::forwarded(net.recv(UAC, &invite(EVIL_CALL_ID, "bob")));
    assert_eq!(inv.call_id(), EVIL_CALL_ID, "the Call-ID is taken as is");
    net.recv(UAC, &message());

    // The data endpoint carries the raw text (JSON-escaped, not HTML).
    let st: Value = serde_json::from_str(&get(addr, "/api/status").body).unwrap();
    assert_eq!(st["registrations"]["shown"][0]["user_agent"], EVIL);
    assert!(
        st["calls"]["transactions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["call_id"] == EVIL_CALL_ID)
    );

    let r = get(addr, "/");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), "text/html; charset=utf-8");
    let page = &r.body;
    let escaped = serlua::http::escape_html(EVIL);
    assert_eq!(
        escaped,
        "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;&lt;img src=x onerror=&#39;alert(1)&#39;&gt;"
    );
    assert!(
        page.contains(&format!("<td>{escaped}</td>")),
        "the User-Agent, escaped, in the registrations table"
    );
    assert!(
        page.contains("<td class=\"mono\">&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;&lt;b&gt;</td>"),
        "the Call-ID, escaped, in the live calls table"
    );
    assert!(
        page.contains("deliberate &lt;b&gt;failure&lt;/b&gt; &amp; more"),
        "the script error, escaped"
    );
    assert!(!page.contains("<img"), "no markup from the network");
    assert!(!page.contains("alert(\"pwned\")") && !page.contains("alert('pwned')"));
    assert!(!page.contains("<b>"));
    assert_eq!(page.matches("<script>").count(), 1, "the page's own script only");
    // The script that updates the page writes text, never markup.
    let script = page.split("<script>").nth(1).unwrap().split("</script>").next().unwrap();
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
    ] {
        assert!(!script.contains(sink), "the page script uses {sink}");
    }
    assert!(script.contains("textContent"));
    assert!(script.contains("fetch(\"/api/status\""), "it polls the data endpoint");
    // And only that script may run: CSP by hash.
    let csp = r.header("content-security-policy");
    assert!(csp.starts_with("default-src 'none'; script-src 'sha256-"), "{csp}");
    use base64::Engine as _;
    use sha2::Digest as _;
    let hash = base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(script.as_bytes()));
    assert!(csp.contains(&format!("'sha256-{hash}'")), "the CSP hash matches the inline script");
    assert_eq!(r.header("x-frame-options"), "DENY");
}

#[test]
fn page_renders_tables_on_the_server() {
    let mut net = Net::new();
    let addr = serve(&net);
    net.recv(PHONE, &register("alice", "phone/1.0"));
    let inv = Net::forwarded(net.recv(UAC, &invite("live-1@uac", "bob")));
    net.recv(UAS, &reply_to(&inv, 180, "Ringing", Some("b9")));
    let page = get(addr, "/").body;
    for id in ["cards", "calls", "sessions", "workers", "health", "messages", "regs", "errors"] {
        assert!(page.contains(&format!("id=\"{id}\"")), "section {id}");
    }
    assert!(page.contains("<td class=\"mono\">live-1@uac</td>"));
    assert!(page.contains("<td>alice@example.com</td>"));
    assert!(page.contains("<td class=\"mono\">sip:alice@127.0.0.1:5099</td>"));
    assert!(page.contains("no media relay session"));
    assert!(page.contains("no script error"));
    assert!(
        page.contains("<td>INVITE</td><td class=\"num\">1</td><td class=\"num\">1</td>"),
        "messages by method"
    );
}

#[test]
fn status_page_shows_relay_sessions_in_the_agreed_shape() {
    // What the page shows once control.sessions() returns sessions.
    let st = serde_json::json!({
        "version": { "name": "serlua", "version": "0.1.0", "script": "x.lua", "uptime_seconds": 5 },
        "time": 1000,
        "stats": {},
        "registrations": { "total": 0, "shown": [] },
        "calls": { "transactions": [], "transactions_total": 0, "sessions_total": 1, "sessions": [{
            "call_id": "c1@h", "caller": "sip:alice@example.com", "callee": "sip:<b>bob</b>@example.com", "started": 900,
            "streams": [
                { "media": "audio", "caller_addr": "192.0.2.1:4000", "callee_addr": "192.0.2.2:5000", "relay": "127.0.0.1:30000",
                  "caller_packets": 50, "caller_bytes": 8600, "callee_packets": 49, "callee_bytes": 8428 },
                { "media": "video", "caller_addr": "192.0.2.1:4002", "callee_addr": "192.0.2.2:5002" }
            ]
        }] },
        "health": { "workers": [] },
        "errors": []
    });
    let page = serlua::http::status_page(&st);
    assert!(page.contains("<td class=\"mono\">c1@h</td><td>sip:alice@example.com</td><td>sip:&lt;b&gt;bob&lt;/b&gt;@example.com</td>"));
    assert!(page.contains("audio 192.0.2.1:4000 \u{21c4} 127.0.0.1:30000 \u{21c4} 192.0.2.2:5000"));
    assert!(page.contains("<td class=\"num\">50 / 8.4 KiB</td><td class=\"num\">49 / 8.2 KiB</td><td class=\"num\">1m 40s</td>"));
    assert!(page.contains("video 192.0.2.1:4002 \u{21c4} \u{2014} \u{21c4} 192.0.2.2:5002"));
}

// ---------------------------------------------------------------------------
// HTTP behaviour

#[test]
fn not_found_method_not_allowed_and_head() {
    let net = Net::new();
    let addr = serve(&net);
    assert_eq!(get(addr, "/nope").status, 404);
    assert_eq!(get(addr, "/metrics/x").status, 404);
    for (method, path) in [
        ("POST", "/"),
        ("PUT", "/metrics"),
        ("DELETE", "/api/status"),
        ("POST", "/nope"),
        ("OPTIONS", "/"),
    ] {
        let r = request(addr, method, path, &[("Content-Length", "0")]);
        assert_eq!(r.status, 405, "{method} {path}");
        assert!(r.header("allow").contains("GET"), "{method} {path}: Allow: {}", r.header("allow"));
    }
    for path in ["/", "/metrics", "/api/status"] {
        let r = request(addr, "HEAD", path, &[]);
        assert_eq!(r.status, 200, "HEAD {path}");
        assert!(r.body.is_empty(), "HEAD {path} has no body");
    }
    assert_eq!(request(addr, "HEAD", "/nope", &[]).status, 404);
}

#[test]
fn loopback_listener_refuses_foreign_host_names() {
    let net = Net::new();
    let addr = serve(&net);
    let port = addr.port().to_string();
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        "localhost".into(),
        format!("[::1]:{port}"),
        "127.0.0.2".into(),
    ] {
        assert_eq!(request(addr, "GET", "/api/status", &[("Host", &host)]).status, 200, "Host: {host}");
    }
    for host in ["evil.example", "evil.example:9090", "192.0.2.1:9090", "127.0.0.1.evil.example"] {
        let r = request(addr, "GET", "/api/status", &[("Host", host)]);
        assert_eq!(r.status, 403, "Host: {host} (DNS rebinding)");
    }
}

#[test]
fn host_is_loopback_cases() {
    use serlua::http::host_is_loopback;
    for h in [
        "127.0.0.1",
        "127.0.0.1:9090",
        "localhost",
        "LOCALHOST:1",
        "a.localhost",
        "[::1]",
        "[::1]:9090",
    ] {
        assert!(host_is_loopback(h), "{h}");
    }
    for h in ["", "example.com", "10.0.0.1:80", "[2001:db8::1]:80", "[::1", "localhost.example"] {
        assert!(!host_is_loopback(h), "{h}");
    }
}

#[test]
fn spawn_reports_an_address_it_cannot_bind() {
    let net = Net::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let err = serlua::http::spawn(net.control(), taken.local_addr().unwrap()).expect_err("the port is taken");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
}

#[test]
fn status_of_small_tables_is_never_stale() {
    // A status is reused for 4x the time it took to build (bounding the
    // listener's CPU on huge tables); a small one is rebuilt each time.
    let mut net = Net::new();
    let addr = serve(&net);
    for i in 0..3 {
        net.recv(PHONE, &register(&format!("user{i}"), "phone/1.0"));
        std::thread::sleep(Duration::from_millis(20));
        let st: Value = serde_json::from_str(&get(addr, "/api/status").body).unwrap();
        assert_eq!(st["registrations"]["total"], i + 1);
    }
}
