//! The optional HTTP listener (`http_listen = "127.0.0.1:9090"`): Prometheus
//! metrics at `/metrics`, the live status page at `/` and its data endpoint
//! `/api/status`. Read-only, built on the control plane ([`Control`]), and
//! run on a thread of its own with its own tokio runtime, so a slow scrape
//! or an open status page never takes time from a SIP worker.
//!
//! | path | what |
//! |---|---|
//! | `GET /metrics` | Prometheus text format 0.0.4 (`text/plain; version=0.0.4`), or OpenMetrics 1.0 when the `Accept` header asks for `application/openmetrics-text` (as Prometheus does) |
//! | `GET /api/status` | JSON: version and uptime, `control.stats()`, registrations (the first [`REGISTRATIONS_SHOWN`] and the total), live calls (INVITE transactions, media relay sessions), worker and queue health, recent script errors |
//! | `GET /` | the status page: rendered on the server, then updated every second by a small inline script that polls `/api/status` |
//!
//! `HEAD` works wherever `GET` does; other methods get 405, other paths 404.
//! Nothing from the network reaches the page unescaped: the server escapes
//! what it renders, the script only ever sets `textContent`, and the page's
//! Content-Security-Policy allows no script but its own (by hash).
//! When the listener is bound to a loopback address, requests whose `Host`
//! is not a loopback name are refused with 403, so a web page in the
//! admin's browser cannot read the status through DNS rebinding.
//!
//! Building the status costs time in proportion to the registrations
//! (`ul show` renders every binding; about 0.3 s at 100,000): a status is
//! served again for four times as long as it took to build (at most 5 s),
//! so open pages never take more than a fifth of a core.
//!
//! The metrics are read from [`Stats`](crate::core::Stats)' atomics when
//! Prometheus scrapes (a prometheus-client [`Collector`]): counting costs a
//! message nothing beyond the counters the workers already keep.
//!
//! ## Relay sessions
//! The page and `/api/status` show `control.sessions()` as they come. The
//! page reads, per session: `call_id`, `caller` (or `from`), `callee` (or
//! `to`), `duration_s` (or `started`, unix seconds), and `streams`, each
//! with `media`, `caller_addr`, `callee_addr`, `relay`, `caller_packets` /
//! `caller_bytes` (received from the caller, relayed to the callee) and
//! `callee_packets` / `callee_bytes` (the other way) — the columns of
//! mediaproxy's web monitor. Missing fields show as a dash.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use serde_json::{Value, json};

use crate::control::Control;
use crate::core::{METHOD_NAMES, ROUTE_TIME_BUCKETS};

/// How many registrations `/api/status` and the page list (the total is
/// always given).
pub const REGISTRATIONS_SHOWN: usize = 200;

/// How many live INVITE transactions and relay sessions `/api/status` and
/// the page list (the totals are always given).
pub const CALLS_SHOWN: usize = 200;

/// `Content-Type` of the Prometheus text format 0.0.4.
pub const PROMETHEUS_CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// `Content-Type` of the OpenMetrics 1.0 text format.
pub const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Starts the listener: binds `addr` (an error if it cannot), then serves
/// on a thread of its own, with its own tokio runtime, until the process
/// ends. A non-loopback address is the admin's choice: it is served, with
/// a warning in the log.
pub fn spawn(control: Arc<Control>, addr: SocketAddr) -> std::io::Result<std::thread::JoinHandle<()>> {
    start(control, addr).map(|(_, handle)| handle)
}

/// [`spawn`], also returning the address actually bound (port 0 picks a
/// free port: tests).
pub fn start(control: Arc<Control>, addr: SocketAddr) -> std::io::Result<(SocketAddr, std::thread::JoinHandle<()>)> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let local = std_listener.local_addr()?;
    if !local.ip().is_loopback() {
        tracing::warn!(
            "http_listen {local} is not a loopback address: the metrics and the status page (registrations, calls, user agents) are readable by anyone who can reach it"
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_io().enable_time().build()?;
    let listener = {
        let _guard = rt.enter();
        tokio::net::TcpListener::from_std(std_listener)?
    };
    let app = router(control, local.ip().is_loopback());
    let handle = std::thread::Builder::new().name("serlua-http".into()).spawn(move || {
        rt.block_on(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!("http listener on {local} stopped: {e}");
            }
        })
    })?;
    tracing::info!("metrics on http://{local}/metrics, status page on http://{local}/");
    Ok((local, handle))
}

struct App {
    control: Arc<Control>,
    registry: Registry,
    loopback_only: bool,
    /// The last status and until when it may be served again.
    status: parking_lot::Mutex<Option<(std::time::Instant, Arc<Value>)>>,
}

/// A status that took `d` to build is served again for `STATUS_REUSE * d`
/// (at most [`STATUS_REUSE_MAX`]): open pages then cost the listener's
/// thread at most 1/(1 + STATUS_REUSE) of a core however many there are
/// and however large the tables; a small table is rebuilt every time.
const STATUS_REUSE: u32 = 4;
const STATUS_REUSE_MAX: std::time::Duration = std::time::Duration::from_secs(5);

impl App {
    fn status(&self) -> Arc<Value> {
        let mut cached = self.status.lock();
        let now = std::time::Instant::now();
        if let Some((_, st)) = cached.as_ref().filter(|(until, _)| now < *until) {
            return st.clone();
        }
        let st = Arc::new(status(&self.control));
        let took = now.elapsed();
        *cached = Some((now + (took * STATUS_REUSE).min(STATUS_REUSE_MAX), st.clone()));
        st
    }
}

fn router(control: Arc<Control>, loopback_only: bool) -> Router {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Metrics { control: control.clone() }));
    let app = Arc::new(App {
        control,
        registry,
        loopback_only,
        status: parking_lot::Mutex::new(None),
    });
    Router::new()
        .route("/", get(page))
        .route("/metrics", get(metrics))
        .route("/api/status", get(api_status))
        .fallback(fallback)
        .layer(middleware::from_fn_with_state(app.clone(), guard))
        .with_state(app)
}

/// Host check (DNS rebinding) and the headers every answer carries.
async fn guard(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if app.loopback_only {
        if let Some(host) = req.headers().get(header::HOST) {
            let host = host.to_str().unwrap_or("");
            if !host_is_loopback(host) {
                return text(
                    StatusCode::FORBIDDEN,
                    format!(
                        "this listener is bound to loopback and answers only loopback names, not Host '{}'\n",
                        host.escape_debug()
                    ),
                );
            }
        }
    }
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    resp
}

/// True for `localhost`, `*.localhost` and loopback IP literals, with or
/// without a port (a `Host` header's value).
pub fn host_is_loopback(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, _)) => ip,
            None => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => host,
        }
    };
    let lower = name.to_ascii_lowercase();
    lower == "localhost" || lower.ends_with(".localhost") || lower.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn text(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

async fn fallback(method: Method) -> Response {
    if method == Method::GET || method == Method::HEAD {
        text(
            StatusCode::NOT_FOUND,
            "not found: this listener serves /, /api/status and /metrics\n".into(),
        )
    } else {
        let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "read-only: GET or HEAD\n".into());
        r.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        r
    }
}

async fn metrics(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let format = if accept.contains("application/openmetrics-text") {
        MetricsFormat::OpenMetrics
    } else {
        MetricsFormat::Prometheus
    };
    match encode_registry(&app.registry, format) {
        Ok(body) => ([(header::CONTENT_TYPE, format.content_type())], body).into_response(),
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "metrics encoding failed\n".into()),
    }
}

async fn api_status(State(app): State<Arc<App>>) -> Response {
    let body = serde_json::to_vec(&*app.status()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], Body::from(body)).into_response()
}

async fn page(State(app): State<Arc<App>>) -> Response {
    let html = status_page(&app.status());
    let (script, style) = page_hashes();
    let csp = format!(
        "default-src 'none'; script-src '{script}'; style-src '{style}'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    );
    let mut r = ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response();
    if let Ok(v) = HeaderValue::from_str(&csp) {
        r.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
    }
    r.headers_mut().insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

// ---------------------------------------------------------------------------
// metrics

/// The text formats `/metrics` speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsFormat {
    /// Prometheus text format 0.0.4 (the default).
    Prometheus,
    /// OpenMetrics 1.0 text.
    OpenMetrics,
}

impl MetricsFormat {
    /// The `Content-Type` of the format.
    pub fn content_type(self) -> &'static str {
        match self {
            MetricsFormat::Prometheus => PROMETHEUS_CONTENT_TYPE,
            MetricsFormat::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }
}

/// The metrics of a proxy, as `/metrics` serves them.
pub fn metrics_text(control: Arc<Control>, format: MetricsFormat) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Metrics { control }));
    encode_registry(&registry, format).unwrap_or_default()
}

fn encode_registry(registry: &Registry, format: MetricsFormat) -> Result<String, std::fmt::Error> {
    let mut out = String::with_capacity(8192);
    match format {
        MetricsFormat::Prometheus => prometheus_client::encoding::prometheus_text::encode(&mut out, registry)?,
        MetricsFormat::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, registry)?,
    }
    Ok(out)
}

/// Reads the proxy's counters at scrape time.
struct Metrics {
    control: Arc<Control>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("serlua metrics")
    }
}

fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Relaxed)
}

const CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "6xx"];

fn counter(enc: &mut DescriptorEncoder, name: &str, help: &str, unit: Option<&Unit>, v: u64) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(v);
    let m = enc.encode_descriptor(name, help, unit, c.metric_type())?;
    c.encode(m)
}

fn gauge<N: prometheus_client::encoding::EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    v: N,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    let m = enc.encode_descriptor(name, help, unit, g.metric_type())?;
    g.encode(m)
}

/// One family of per-method and per-class message counters.
fn messages(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    by_method: &[AtomicU64; 15],
    by_class: &[AtomicU64; 6],
) -> Result<(), std::fmt::Error> {
    let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (method, c) in METHOD_NAMES.iter().zip(by_method) {
        ConstCounter::new(load(c)).encode(m.encode_family(&[("kind", "request"), ("method", *method)])?)?;
    }
    for (class, c) in CLASSES.iter().zip(by_class) {
        ConstCounter::new(load(c)).encode(m.encode_family(&[("kind", "reply"), ("class", *class)])?)?;
    }
    Ok(())
}

impl Collector for Metrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let control = &*self.control;
        let shared = &*control.shared;
        let s = &shared.stats;
        let store = &shared.store;

        messages(
            &mut enc,
            "serlua_sip_messages_received",
            "SIP messages received: requests by CSeq method (OTHER: any other method), replies by status class.",
            &s.rcv_by_method,
            &s.rcv_by_class,
        )?;
        messages(
            &mut enc,
            "serlua_sip_messages_sent",
            "SIP messages sent (forwarded, generated and retransmitted): requests by method, replies by status class.",
            &s.sent_by_method,
            &s.sent_by_class,
        )?;
        counter(
            &mut enc,
            "serlua_sip_requests_forwarded",
            "Requests forwarded (every branch; retransmissions not counted).",
            None,
            load(&s.fwd_requests),
        )?;
        counter(
            &mut enc,
            "serlua_sip_replies_forwarded",
            "Replies forwarded upstream.",
            None,
            load(&s.fwd_replies),
        )?;
        counter(
            &mut enc,
            "serlua_sip_local_replies",
            "Replies generated by the proxy (sl_send_reply, 100 Trying, 408, ...).",
            None,
            load(&s.local_replies),
        )?;
        counter(
            &mut enc,
            "serlua_sip_messages_dropped",
            "Messages dropped (replies not for us).",
            None,
            load(&s.dropped),
        )?;
        counter(
            &mut enc,
            "serlua_parse_errors",
            "Messages that failed to parse.",
            None,
            load(&s.parse_errors),
        )?;
        counter(
            &mut enc,
            "serlua_script_errors",
            "Route runs that ended in a Lua error.",
            None,
            load(&s.script_errors),
        )?;
        counter(
            &mut enc,
            "serlua_overload_rejections",
            "Requests answered 503 because of overload.",
            None,
            load(&s.overload_503),
        )?;
        counter(&mut enc, "serlua_nat_pings", "NAT keepalives sent.", None, load(&s.nat_pings))?;
        counter(
            &mut enc,
            "serlua_pike_refused",
            "Requests pike_check_req() refused: their source is blocked.",
            None,
            load(&s.pike_refused),
        )?;
        counter(
            &mut enc,
            "serlua_database_errors",
            "Database errors seen by the database thread.",
            None,
            load(&s.db_errors),
        )?;

        gauge(
            &mut enc,
            "serlua_transactions_active",
            "Transactions in the transaction table.",
            None,
            shared.tm.len() as i64,
        )?;
        {
            let mut m = enc.encode_descriptor(
                "serlua_worker_queue",
                "Bytes waiting in each worker's UDP receive queues.",
                Some(&Unit::Bytes),
                MetricType::Gauge,
            )?;
            for (i, q) in shared.queue_bytes.iter().enumerate() {
                let w = i.to_string();
                ConstGauge::new(load(q) as i64).encode(m.encode_family(&[("worker", w.as_str())])?)?;
            }
        }
        gauge(
            &mut enc,
            "serlua_registrations",
            "Registered contact bindings (location table, in memory).",
            None,
            store.location.binding_count() as i64,
        )?;
        gauge(
            &mut enc,
            "serlua_aliases",
            "Alias bindings (aliases table, in memory).",
            None,
            store.aliases.binding_count() as i64,
        )?;
        gauge(
            &mut enc,
            "serlua_subscribers",
            "Subscribers loaded from the database.",
            None,
            store.subscriber_count() as i64,
        )?;
        gauge(
            &mut enc,
            "serlua_database_queue_length",
            "Location and alias writes queued for the database.",
            None,
            (store.location.pending_len() + store.aliases.pending_len()) as i64,
        )?;
        gauge(
            &mut enc,
            "serlua_draining",
            "1 while the proxy drains for shutdown (new requests get 503).",
            None,
            shared.draining.load(Ordering::Relaxed) as i64,
        )?;

        let sessions = control.sessions().as_array().map_or(0, Vec::len);
        gauge(
            &mut enc,
            "serlua_relay_sessions",
            "Live media relay sessions.",
            None,
            sessions as i64,
        )?;
        // The relay's own atomics, not the live sessions: ended sessions
        // keep counting.
        let (relay_packets, relay_bytes) = control.relay_totals();
        counter(
            &mut enc,
            "serlua_relay_packets",
            "RTP/RTCP packets relayed, both directions.",
            None,
            relay_packets,
        )?;
        counter(
            &mut enc,
            "serlua_relay",
            "RTP/RTCP bytes relayed, both directions.",
            Some(&Unit::Bytes),
            relay_bytes,
        )?;

        {
            let rt = &s.route_time;
            let per_bucket: Vec<u64> = rt.buckets.iter().map(load).collect();
            // The count from the buckets read, so +Inf always equals it.
            let count: u64 = per_bucket.iter().sum();
            let mut buckets: Vec<(f64, u64)> = ROUTE_TIME_BUCKETS.iter().copied().zip(per_bucket.iter().copied()).collect();
            buckets.push((f64::INFINITY, per_bucket.last().copied().unwrap_or(0)));
            let sum = load(&rt.sum_ns) as f64 / 1e9;
            let mut m = enc.encode_descriptor(
                "serlua_route_duration",
                "Time spent running the route script per message.",
                Some(&Unit::Seconds),
                MetricType::Histogram,
            )?;
            m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(sum, count, &buckets, None)?;
        }

        let version = control.version();
        gauge(
            &mut enc,
            "serlua_uptime",
            "Seconds since the proxy started.",
            Some(&Unit::Seconds),
            version["uptime_seconds"].as_u64().unwrap_or(0) as i64,
        )?;
        {
            let mut m = enc.encode_descriptor(
                "serlua_build_info",
                "The serlua version running (value 1).",
                None,
                MetricType::Gauge,
            )?;
            ConstGauge::new(1i64).encode(m.encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// /api/status

fn unix_now() -> std::time::Duration {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
}

fn take_first(v: Value, n: usize) -> (Vec<Value>, usize) {
    match v {
        Value::Array(mut a) => {
            let total = a.len();
            a.truncate(n);
            (a, total)
        }
        _ => (Vec::new(), 0),
    }
}

/// The data of `/api/status` (and of the page): `version`, `time` (unix
/// seconds) and `time_ms` (unix milliseconds), `stats` (as `serlua ctl
/// stats`), `registrations` (`total`, `shown`: the first
/// [`REGISTRATIONS_SHOWN`] bindings of `ul show`, by AOR),
/// `calls` (`transactions`: live INVITE transactions of `tm list`, newest
/// first; `sessions`: media relay sessions; each with its `_total`),
/// `health` (`workers` with their queue bytes, `transactions_active`,
/// `database_queue`, `draining`, `overload_503`), `errors` (recent script
/// errors, newest last).
pub fn status(control: &Control) -> Value {
    let stats = control.stats();
    let (mut regs, regs_total) = control.ul_show_limited(REGISTRATIONS_SHOWN);
    regs.sort_by(|a, b| a["aor"].as_str().cmp(&b["aor"].as_str()));
    let now = unix_now();
    let mut invites: Vec<Value> = match control.tm_list() {
        Value::Array(a) => a.into_iter().filter(|t| t["method"] == "INVITE").collect(),
        _ => Vec::new(),
    };
    // Newest first: with more than CALLS_SHOWN, the ones just placed show.
    invites.sort_by_key(|t| t["age_ms"].as_u64().unwrap_or(0));
    let (invites, invites_total) = take_first(Value::Array(invites), CALLS_SHOWN);
    let (sessions, sessions_total) = take_first(control.sessions(), CALLS_SHOWN);
    json!({
        "version": control.version(),
        "time": now.as_secs(),
        "time_ms": now.as_millis() as u64,
        "registrations": { "total": regs_total, "shown": regs, "limit": REGISTRATIONS_SHOWN },
        "calls": { "transactions": invites, "transactions_total": invites_total, "sessions": sessions, "sessions_total": sessions_total, "limit": CALLS_SHOWN },
        "health": {
            "workers": stats["workers"].clone(),
            "transactions_active": stats["transactions"].clone(),
            "database_queue": stats["database_queue"].clone(),
            "draining": stats["draining"].clone(),
            "overload_503": stats["errors"]["overload_503"].clone(),
        },
        "errors": control.recent_errors(),
        "stats": stats,
    })
}

// ---------------------------------------------------------------------------
// the page

/// Escapes text for HTML element content and attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = r#"
:root { --fg: #1d2330; --muted: #6b7383; --line: #dde1e8; --bg: #f6f7f9; --card: #fff; --ok: #1a7f37; --bad: #c62828; --accent: #2456a6; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: var(--bg); }
header { display: flex; align-items: baseline; gap: 16px; padding: 12px 20px; background: #1d2330; color: #fff; }
header h1 { margin: 0; font-size: 20px; }
header .meta { color: #b9c0cc; }
header .live { margin-left: auto; }
.dot { display: inline-block; width: 10px; height: 10px; border-radius: 50%; background: #888; margin-right: 6px; }
.dot.ok { background: #3fb950; } .dot.stale { background: #f85149; }
main { padding: 16px 20px; display: grid; gap: 16px; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 6px; padding: 10px 14px; overflow-x: auto; }
h2 { margin: 0 0 8px; font-size: 15px; } h2 .n { color: var(--muted); font-weight: normal; }
h3 { margin: 12px 0 6px; font-size: 13px; color: var(--muted); }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(130px, 1fr)); gap: 8px; background: none; border: 0; padding: 0; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; }
.card .v { font-size: 20px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .k { color: var(--muted); font-size: 12px; }
.card.bad .v { color: var(--bad); }
.two { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; }
@media (max-width: 900px) { .two { grid-template-columns: 1fr; } }
.scroll { max-height: 380px; overflow-y: auto; }
table { border-collapse: collapse; width: 100%; }
thead th { position: sticky; top: 0; background: var(--card); }
th, td { text-align: left; padding: 3px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
th { font-size: 12px; color: var(--muted); font-weight: 600; }
td { font-variant-numeric: tabular-nums; }
td.num, th.num { text-align: right; }
td.mono { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; word-break: break-all; }
td.err { white-space: pre-wrap; font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; color: var(--bad); }
td.empty { color: var(--muted); font-style: italic; }
footer { padding: 0 20px 16px; color: var(--muted); font-size: 12px; }
"#;

const SCRIPT: &str = r#"
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const DASH = "\u2014";
  const show = (v) => (v === null || v === undefined || v === "" ? DASH : String(v));
  const num = (v) => (typeof v === "number" ? v : 0);
  function dur(s) {
    if (typeof s !== "number" || !isFinite(s)) return DASH;
    s = Math.max(0, Math.floor(s));
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60), x = s % 60;
    if (d) return d + "d " + h + "h";
    if (h) return h + "h " + String(m).padStart(2, "0") + "m";
    if (m) return m + "m " + String(x).padStart(2, "0") + "s";
    return x + "s";
  }
  function bytes(n) {
    if (typeof n !== "number") return DASH;
    const u = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return (i ? n.toFixed(1) : String(n)) + " " + u[i];
  }
  const age = (ms) => (typeof ms === "number" && ms < 60000 ? (ms / 1000).toFixed(1) + "s" : dur(ms / 1000));
  const when = (t) => (typeof t === "number" ? new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) : DASH);
  const pb = (p, b) => (p === undefined && b === undefined ? DASH : show(p) + " / " + bytes(b));
  const get = (o, ...keys) => { for (const k of keys) if (o && o[k] !== undefined && o[k] !== null) return o[k]; return undefined; };

  // A cell is a string or [string, className]; only textContent is set.
  function fill(id, rows, empty) {
    const table = $(id);
    const body = document.createElement("tbody");
    if (!rows.length) {
      const tr = body.insertRow(), td = tr.insertCell();
      td.colSpan = table.tHead.rows[0].cells.length;
      td.className = "empty";
      td.textContent = empty;
    }
    for (const r of rows) {
      const tr = body.insertRow();
      for (const c of r) {
        const td = tr.insertCell();
        if (Array.isArray(c)) { td.textContent = show(c[0]); if (c[1]) td.className = c[1]; } else td.textContent = show(c);
      }
    }
    table.replaceChild(body, table.tBodies[0]);
  }
  function setText(id, v) { $(id).textContent = v; }

  let last = null;
  function cards(st) {
    const s = st.stats, e = s.errors || {};
    const reqs = num(s.received && s.received.requests), now = st.time_ms / 1000;
    let rate = last ? last.rate : DASH;
    if (last && now - last.t >= 0.5) rate = Math.max(0, (reqs - last.reqs) / (now - last.t)).toFixed(1);
    if (!last || now - last.t >= 0.5) last = { t: now, reqs: reqs, rate: rate };
    const list = [
      ["Uptime", dur(st.version.uptime_seconds)],
      ["Requests in", reqs],
      ["Replies in", num(s.received && s.received.replies)],
      ["Requests/s", rate],
      ["Call setups", st.calls.transactions_total],
      ["Transactions", s.transactions],
      ["Registrations", st.registrations.total],
      ["Subscribers", s.registrations && s.registrations.subscribers],
      ["Relay sessions", st.calls.sessions_total],
      ["Script errors", num(e.script), e.script > 0],
      ["503 overload", num(e.overload_503), e.overload_503 > 0],
      ["Parse errors", num(e.parse)],
      ["DB errors", num(e.database), e.database > 0],
      ["DB queue", s.database_queue],
      ["NAT pings", num(s.nat_pings)],
    ];
    const box = document.createElement("section");
    box.className = "cards";
    box.id = "cards";
    for (const [k, v, bad] of list) {
      const c = document.createElement("div"), vv = document.createElement("div"), kk = document.createElement("div");
      c.className = bad ? "card bad" : "card";
      vv.className = "v"; vv.textContent = show(v);
      kk.className = "k"; kk.textContent = k;
      c.append(vv, kk);
      box.appendChild(c);
    }
    $("cards").replaceWith(box);
  }

  function render(st) {
    const v = st.version;
    setText("meta", "v" + v.version + " \u00b7 " + v.script + " \u00b7 up " + dur(v.uptime_seconds));
    cards(st);

    const calls = st.calls;
    setText("n-calls", "(" + calls.transactions_total + (calls.transactions_total > calls.transactions.length ? ", first " + calls.transactions.length + " shown" : "") + ")");
    fill("calls", calls.transactions.map((t) => [
      [t.call_id, "mono"], get(t, "from", "caller"), get(t, "to", "callee"), t.state, [t.status || DASH, "num"],
      (t.branches || []).map((b) => b.dst + " " + b.state + (b.status ? " " + b.status : "")).join(", "),
      [age(t.age_ms), "num"],
    ]), "no INVITE transaction in progress");

    setText("n-sessions", "(" + calls.sessions_total + ")");
    const srows = [];
    for (const s of calls.sessions) {
      const streams = Array.isArray(s.streams) && s.streams.length ? s.streams : [{}];
      let d = get(s, "duration_s", "duration");
      if (d === undefined && typeof s.started === "number") d = st.time - s.started;
      streams.forEach((m, i) => srows.push([
        [i ? "" : s.call_id, "mono"], i ? "" : get(s, "caller", "from"), i ? "" : get(s, "callee", "to"),
        [show(m.media) + " " + show(m.caller_addr) + " \u21c4 " + show(m.relay) + " \u21c4 " + show(m.callee_addr), "mono"],
        [pb(m.caller_packets, m.caller_bytes), "num"], [pb(m.callee_packets, m.callee_bytes), "num"],
        [i ? "" : dur(d), "num"],
      ]));
    }
    fill("sessions", srows, "no media relay session");

    const h = st.health;
    fill("workers", (h.workers || []).map((w) => [w.worker, [bytes(w.queue_bytes), "num"]]), "no worker");
    fill("health", [
      ["Transactions active", [h.transactions_active, "num"]],
      ["Database queue", [h.database_queue, "num"]],
      ["503 (overload)", [h.overload_503, "num"]],
      ["Draining", h.draining ? "yes" : "no"],
    ], "");

    const s = st.stats, rm = (s.received && s.received.requests_by_method) || {}, sm = (s.sent && s.sent.requests_by_method) || {};
    const rc = (s.received && s.received.replies_by_class) || {}, sc = (s.sent && s.sent.replies_by_class) || {};
    const methods = [...new Set([...Object.keys(rm), ...Object.keys(sm)])];
    const classes = [...new Set([...Object.keys(rc), ...Object.keys(sc)])].sort();
    fill("messages", methods.map((m) => [m, [num(rm[m]), "num"], [num(sm[m]), "num"]])
      .concat(classes.map((c) => [c, [num(rc[c]), "num"], [num(sc[c]), "num"]])), "no message yet");

    const regs = st.registrations;
    setText("n-regs", "(" + regs.total + (regs.total > regs.shown.length ? ", first " + regs.shown.length + " shown" : "") + ")");
    fill("regs", regs.shown.map((r) => [
      r.aor, [r.contact, "mono"], [r.received, "mono"], r.nat ? "yes" : "no",
      [r.expires_in === null ? "permanent" : dur(r.expires_in), "num"], r.user_agent,
    ]), "no registration");

    const errs = st.errors.slice().reverse();
    setText("n-errors", "(" + errs.length + ")");
    fill("errors", errs.map((e) => [when(e.time), [e.error, "err"]]), "no script error");
  }

  function state(ok, text) {
    $("dot").className = ok ? "dot ok" : "dot stale";
    setText("live", text);
  }
  async function poll() {
    try {
      const r = await fetch("/api/status", { cache: "no-store" });
      if (!r.ok) throw new Error("HTTP " + r.status);
      const st = await r.json();
      render(st);
      state(true, "live \u00b7 " + when(st.time) + " UTC");
    } catch (e) {
      state(false, "stale \u00b7 " + e.message);
    } finally {
      setTimeout(poll, 1000);
    }
  }
  poll();
})();
"#;

/// `'sha256-…'` CSP sources of the page's inline script and style.
fn page_hashes() -> &'static (String, String) {
    use base64::Engine as _;
    use sha2::Digest as _;
    static H: std::sync::OnceLock<(String, String)> = std::sync::OnceLock::new();
    H.get_or_init(|| {
        let h = |s: &str| {
            format!(
                "sha256-{}",
                base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(s.as_bytes()))
            )
        };
        (h(SCRIPT), h(STYLE))
    })
}

/// A table cell: text and an optional class.
struct Cell(String, &'static str);

const DASH: &str = "\u{2014}";

/// A JSON value as the page shows it (strings unquoted; null as a dash).
fn show(v: &Value) -> String {
    match v {
        Value::Null => DASH.into(),
        Value::String(s) if s.is_empty() => DASH.into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn first<'a>(o: &'a Value, keys: &[&str]) -> &'a Value {
    keys.iter().map(|k| &o[*k]).find(|v| !v.is_null()).unwrap_or(&Value::Null)
}

fn dur(s: Option<f64>) -> String {
    let Some(s) = s.filter(|s| s.is_finite()) else { return DASH.into() };
    let s = s.max(0.0) as u64;
    let (d, h, m, x) = (s / 86400, s % 86400 / 3600, s % 3600 / 60, s % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m:02}m")
    } else if m > 0 {
        format!("{m}m {x:02}s")
    } else {
        format!("{x}s")
    }
}

/// A transaction's age: tenths of seconds under a minute.
fn age(ms: &Value) -> String {
    match ms.as_f64() {
        Some(ms) if ms < 60000.0 => format!("{:.1}s", ms / 1000.0),
        other => dur(other.map(|ms| ms / 1000.0)),
    }
}

fn bytes(v: &Value) -> String {
    let Some(n) = v.as_f64() else { return DASH.into() };
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut n, mut i) = (n, 0);
    while n >= 1024.0 && i < units.len() - 1 {
        n /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} {}", units[0])
    } else {
        format!("{n:.1} {}", units[i])
    }
}

fn when(v: &Value) -> String {
    v.as_i64()
        .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
        .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| DASH.into())
}

fn pb(packets: &Value, b: &Value) -> String {
    if packets.is_null() && b.is_null() {
        DASH.into()
    } else {
        format!("{} / {}", show(packets), bytes(b))
    }
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn table(out: &mut String, id: &str, heads: &[(&str, bool)], rows: Vec<Vec<Cell>>, empty: &str) {
    let _ = write!(out, "<div class=\"scroll\"><table id=\"{id}\"><thead><tr>");
    for (h, numeric) in heads {
        let _ = write!(out, "<th{}>{}</th>", if *numeric { " class=\"num\"" } else { "" }, escape_html(h));
    }
    out.push_str("</tr></thead><tbody>");
    if rows.is_empty() {
        let _ = write!(
            out,
            "<tr><td colspan=\"{}\" class=\"empty\">{}</td></tr>",
            heads.len(),
            escape_html(empty)
        );
    }
    for r in rows {
        out.push_str("<tr>");
        for Cell(text, class) in r {
            if class.is_empty() {
                let _ = write!(out, "<td>{}</td>", escape_html(&text));
            } else {
                let _ = write!(out, "<td class=\"{class}\">{}</td>", escape_html(&text));
            }
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>");
}

fn c(s: impl Into<String>) -> Cell {
    Cell(s.into(), "")
}

fn cc(s: impl Into<String>, class: &'static str) -> Cell {
    Cell(s.into(), class)
}

/// The status page for a [`status`] value: every table rendered on the
/// server (escaped), plus the script that keeps them current.
pub fn status_page(st: &Value) -> String {
    let s = &st["stats"];
    let v = &st["version"];
    let e = &s["errors"];
    let calls = &st["calls"];
    let regs = &st["registrations"];
    let h = &st["health"];
    let mut o = String::with_capacity(16384);
    o.push_str("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>serlua status</title>");
    o.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    o.push_str("<noscript><meta http-equiv=\"refresh\" content=\"5\"></noscript>");
    let _ = write!(o, "<style>{STYLE}</style></head><body>");
    let _ = write!(
        o,
        "<header><h1>serlua</h1><span class=\"meta\" id=\"meta\">v{} \u{b7} {} \u{b7} up {}</span><span class=\"live\"><span class=\"dot\" id=\"dot\"></span><span id=\"live\">{} UTC</span></span></header><main>",
        escape_html(&show(&v["version"])),
        escape_html(&show(&v["script"])),
        escape_html(&dur(v["uptime_seconds"].as_f64())),
        escape_html(&when(&st["time"])),
    );

    // Key counters.
    let cards: Vec<(&str, String, bool)> = vec![
        ("Uptime", dur(v["uptime_seconds"].as_f64()), false),
        ("Requests in", num(&s["received"]["requests"]).to_string(), false),
        ("Replies in", num(&s["received"]["replies"]).to_string(), false),
        ("Requests/s", DASH.into(), false),
        ("Call setups", show(&calls["transactions_total"]), false),
        ("Transactions", show(&s["transactions"]), false),
        ("Registrations", show(&regs["total"]), false),
        ("Subscribers", show(&s["registrations"]["subscribers"]), false),
        ("Relay sessions", show(&calls["sessions_total"]), false),
        ("Script errors", num(&e["script"]).to_string(), num(&e["script"]) > 0),
        ("503 overload", num(&e["overload_503"]).to_string(), num(&e["overload_503"]) > 0),
        ("Parse errors", num(&e["parse"]).to_string(), false),
        ("DB errors", num(&e["database"]).to_string(), num(&e["database"]) > 0),
        ("DB queue", show(&s["database_queue"]), false),
        ("NAT pings", num(&s["nat_pings"]).to_string(), false),
    ];
    o.push_str("<section class=\"cards\" id=\"cards\">");
    for (k, val, bad) in cards {
        let _ = write!(
            o,
            "<div class=\"{}\"><div class=\"v\">{}</div><div class=\"k\">{}</div></div>",
            if bad { "card bad" } else { "card" },
            escape_html(&val),
            escape_html(k)
        );
    }
    o.push_str("</section>");

    // Live calls: INVITE transactions, then relay sessions.
    let empty = Vec::new();
    let txs = calls["transactions"].as_array().unwrap_or(&empty);
    let total = num(&calls["transactions_total"]);
    let more = if total > txs.len() as u64 {
        format!(", first {} shown", txs.len())
    } else {
        String::new()
    };
    let _ = write!(
        o,
        "<section><h2>Live calls</h2><h3>INVITE transactions: ringing, or answered moments ago <span class=\"n\" id=\"n-calls\">({total}{more})</span></h3>"
    );
    let rows = txs
        .iter()
        .map(|t| {
            let branches = t["branches"]
                .as_array()
                .unwrap_or(&empty)
                .iter()
                .map(|b| {
                    let status = if b["status"].as_u64().unwrap_or(0) > 0 {
                        format!(" {}", b["status"])
                    } else {
                        String::new()
                    };
                    format!("{} {}{status}", show(&b["dst"]), show(&b["state"]))
                })
                .collect::<Vec<_>>()
                .join(", ");
            let status = t["status"]
                .as_u64()
                .filter(|s| *s > 0)
                .map(|s| s.to_string())
                .unwrap_or_else(|| DASH.into());
            vec![
                cc(show(&t["call_id"]), "mono"),
                c(show(first(t, &["from", "caller"]))),
                c(show(first(t, &["to", "callee"]))),
                c(show(&t["state"])),
                cc(status, "num"),
                c(if branches.is_empty() { DASH.into() } else { branches }),
                cc(age(&t["age_ms"]), "num"),
            ]
        })
        .collect();
    table(
        &mut o,
        "calls",
        &[
            ("Call-ID", false),
            ("Caller", false),
            ("Callee", false),
            ("State", false),
            ("Status", true),
            ("Branches", false),
            ("Age", true),
        ],
        rows,
        "no INVITE transaction in progress",
    );
    let sessions = calls["sessions"].as_array().unwrap_or(&empty);
    let _ = write!(
        o,
        "<h3>Media relay sessions <span class=\"n\" id=\"n-sessions\">({})</span></h3>",
        num(&calls["sessions_total"])
    );
    let mut rows = Vec::new();
    for sess in sessions {
        let one = [Value::Object(Default::default())];
        let streams = match sess["streams"].as_array() {
            Some(a) if !a.is_empty() => a.as_slice(),
            _ => &one[..],
        };
        let d = first(sess, &["duration_s", "duration"]).as_f64().or_else(|| {
            let (now, started) = (st["time"].as_f64()?, sess["started"].as_f64()?);
            Some(now - started)
        });
        for (i, m) in streams.iter().enumerate() {
            let head = |s: String| if i == 0 { s } else { String::new() };
            rows.push(vec![
                cc(head(show(&sess["call_id"])), "mono"),
                c(head(show(first(sess, &["caller", "from"])))),
                c(head(show(first(sess, &["callee", "to"])))),
                cc(
                    format!(
                        "{} {} \u{21c4} {} \u{21c4} {}",
                        show(&m["media"]),
                        show(&m["caller_addr"]),
                        show(&m["relay"]),
                        show(&m["callee_addr"])
                    ),
                    "mono",
                ),
                cc(pb(&m["caller_packets"], &m["caller_bytes"]), "num"),
                cc(pb(&m["callee_packets"], &m["callee_bytes"]), "num"),
                cc(head(dur(d)), "num"),
            ]);
        }
    }
    table(
        &mut o,
        "sessions",
        &[
            ("Call-ID", false),
            ("Caller", false),
            ("Callee", false),
            ("Stream: caller \u{21c4} relay \u{21c4} callee", false),
            ("From caller: packets / bytes", true),
            ("From callee: packets / bytes", true),
            ("Duration", true),
        ],
        rows,
        "no media relay session",
    );
    o.push_str("</section>");

    // Workers and queues | messages.
    o.push_str("<div class=\"two\"><section><h2>Workers and queues</h2>");
    let rows = h["workers"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|w| vec![c(show(&w["worker"])), cc(bytes(&w["queue_bytes"]), "num")])
        .collect();
    table(&mut o, "workers", &[("Worker", false), ("Receive queue", true)], rows, "no worker");
    let rows = vec![
        vec![c("Transactions active"), cc(show(&h["transactions_active"]), "num")],
        vec![c("Database queue"), cc(show(&h["database_queue"]), "num")],
        vec![c("503 (overload)"), cc(show(&h["overload_503"]), "num")],
        vec![
            c("Draining"),
            c(if h["draining"].as_bool().unwrap_or(false) { "yes" } else { "no" }),
        ],
    ];
    table(&mut o, "health", &[("", false), ("", true)], rows, "");
    o.push_str("</section><section><h2>Messages</h2>");
    let no_map = serde_json::Map::new();
    let obj = |v: &Value| v.as_object().unwrap_or(&no_map).clone();
    let (rm, sm) = (obj(&s["received"]["requests_by_method"]), obj(&s["sent"]["requests_by_method"]));
    let (rc, sc) = (obj(&s["received"]["replies_by_class"]), obj(&s["sent"]["replies_by_class"]));
    let mut methods: Vec<&String> = rm.keys().collect();
    methods.extend(sm.keys().filter(|k| !rm.contains_key(*k)));
    let mut classes: Vec<&String> = rc.keys().chain(sc.keys().filter(|k| !rc.contains_key(*k))).collect();
    classes.sort();
    let row = |name: &str, r: &Value, s: &Value| vec![c(name), cc(num(r).to_string(), "num"), cc(num(s).to_string(), "num")];
    let mut rows: Vec<Vec<Cell>> = methods
        .iter()
        .map(|m| row(m, &rm[m.as_str()], sm.get(m.as_str()).unwrap_or(&Value::Null)))
        .collect();
    rows.extend(classes.iter().map(|k| {
        row(
            k,
            rc.get(k.as_str()).unwrap_or(&Value::Null),
            sc.get(k.as_str()).unwrap_or(&Value::Null),
        )
    }));
    table(
        &mut o,
        "messages",
        &[("Method / class", false), ("Received", true), ("Sent", true)],
        rows,
        "no message yet",
    );
    o.push_str("</section></div>");

    // Registrations.
    let shown = regs["shown"].as_array().unwrap_or(&empty);
    let total = num(&regs["total"]);
    let more = if total > shown.len() as u64 {
        format!(", first {} shown", shown.len())
    } else {
        String::new()
    };
    let _ = write!(
        o,
        "<section><h2>Registrations <span class=\"n\" id=\"n-regs\">({total}{more})</span></h2>"
    );
    let rows = shown
        .iter()
        .map(|r| {
            let expires = if r["expires_in"].is_null() {
                "permanent".to_string()
            } else {
                dur(r["expires_in"].as_f64())
            };
            vec![
                c(show(&r["aor"])),
                cc(show(&r["contact"]), "mono"),
                cc(show(&r["received"]), "mono"),
                c(if r["nat"].as_bool().unwrap_or(false) { "yes" } else { "no" }),
                cc(expires, "num"),
                c(show(&r["user_agent"])),
            ]
        })
        .collect();
    table(
        &mut o,
        "regs",
        &[
            ("AOR", false),
            ("Contact", false),
            ("Received", false),
            ("NAT", false),
            ("Expires in", true),
            ("User-Agent", false),
        ],
        rows,
        "no registration",
    );
    o.push_str("</section>");

    // Recent script errors, newest first.
    let errs = st["errors"].as_array().unwrap_or(&empty);
    let _ = write!(
        o,
        "<section><h2>Recent script errors <span class=\"n\" id=\"n-errors\">({})</span></h2>",
        errs.len()
    );
    let rows = errs
        .iter()
        .rev()
        .map(|e| vec![c(when(&e["time"])), cc(show(&e["error"]), "err")])
        .collect();
    table(
        &mut o,
        "errors",
        &[("Time (UTC)", false), ("Error", false)],
        rows,
        "no script error",
    );
    o.push_str("</section></main>");
    o.push_str(
        "<footer>Read-only. Updated every second from <a href=\"/api/status\">/api/status</a>; Prometheus metrics at <a href=\"/metrics\">/metrics</a>.</footer>",
    );
    let _ = writeln!(o, "<script>{SCRIPT}</script></body></html>");
    o
}
