//! A worker: one Lua VM and the protocol core it drives. The live server
//! and the test harness feed it messages and the time, and carry out what
//! it queues (sans-IO, like quinn-proto's `Endpoint`).

use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::core::{Env, MsgCtx, Shared, Stats, Timer};
use crate::script::export::RouteKind;
use crate::script::{LoadError, RunOutcome, Script};
use crate::sip::msg::{semantic_check, unsupported_proxy_require};
use crate::sip::{HeaderName, Method, SipMessage};
use crate::sl;
use crate::tm;
use crate::transport::{Incoming, Proto, Transmit};

/// One worker's core.
pub struct Worker {
    /// The environment primitives act on.
    pub env: Rc<Env>,
    /// The worker's loaded script.
    pub script: Script,
}

impl Worker {
    /// Loads `path` into a new VM for worker number `id`.
    pub fn new(shared: Arc<Shared>, id: usize, path: &Path, now: Instant) -> Result<Worker, LoadError> {
        let env = Rc::new(Env::new(shared, id, now));
        let (script, _) = Script::load(path, env.clone())?;
        Ok(Worker::start(env, script))
    }

    /// A worker over script text (tests, inline scripts).
    pub fn from_source(shared: Arc<Shared>, id: usize, name: &Path, source: String, now: Instant) -> Result<Worker, LoadError> {
        let env = Rc::new(Env::new(shared, id, now));
        let (script, _) = Script::load_source(name, source, env.clone())?;
        Ok(Worker::start(env, script))
    }

    fn start(env: Rc<Env>, script: Script) -> Worker {
        if env.worker == 0 {
            // One worker sweeps expired bindings and sends the NAT keepalives for all.
            env.arm_job(crate::usrloc::sweep_interval(&env), Timer::UsrlocSweep);
            crate::nathelper::start_natping(&env);
        }
        Worker { env, script }
    }

    /// Handles one message that arrived.
    pub fn handle(&mut self, now: Instant, inc: Incoming) {
        self.env.set_now(now);
        let msg = match SipMessage::parse(inc.data.clone()) {
            Ok(m) => m,
            Err(e) => {
                Stats::inc(&self.env.shared.stats.parse_errors);
                match &e.partial {
                    Some(p) => {
                        tracing::info!(src = %inc.src, "malformed request: {} {}", e.status, e.reason);
                        sl::reply_to_broken(&self.env, p, e.status, &e.reason, &inc);
                    }
                    None => tracing::debug!(src = %inc.src, "dropped unparsable message: {}", e.reason),
                }
                return;
            }
        };
        if msg.is_request() {
            self.on_request(msg, inc);
        } else {
            self.on_response(msg, inc);
        }
    }

    fn on_request(&mut self, mut msg: SipMessage, inc: Incoming) {
        let env = &*self.env;
        Stats::inc(&env.shared.stats.rcv_requests);
        Stats::inc(&env.shared.stats.rcv_by_method[crate::core::method_slot(msg.cseq().method.as_str().as_bytes())]);
        let span = tracing::info_span!("req", call_id = %msg.call_id(), method = %msg.cseq().method, src = %inc.src);
        let _enter = span.enter();
        stamp_received(&mut msg, inc.src);
        let mut ctx = MsgCtx::new(msg, inc.src, inc.local, inc.proto, inc.conn, RouteKind::Request);
        if let Err(e) = semantic_check(&ctx.msg) {
            // RFC 3261 §16.3 step 5: a 420 lists what we do not support.
            let unsupported = if e.status == 420 {
                unsupported_proxy_require(&ctx.msg).join(", ")
            } else {
                String::new()
            };
            let extra: &[(HeaderName, &[u8])] = if unsupported.is_empty() {
                &[]
            } else {
                &[(HeaderName::Unsupported, unsupported.as_bytes())]
            };
            sl::send_reply(env, &mut ctx, e.status, &e.reason, extra);
            return;
        }
        if inc.proto == Proto::Udp && ctx.msg.orig_len() > env.shared.cfg.max_len {
            sl::send_reply(env, &mut ctx, 513, "Message Overflow", &[]);
            return;
        }
        if tm::absorb(env, &ctx.msg) {
            return;
        }
        if sl::is_ack_of_local_reply(env.shared.secret, &ctx.msg) {
            tracing::debug!("ACK of our own reply absorbed");
            return;
        }
        let initial = ctx.msg.to().tag().is_none() && !matches!(ctx.msg.method(), Some(Method::Ack | Method::Cancel));
        let draining = env.shared.draining.load(std::sync::atomic::Ordering::Relaxed);
        if initial && (draining || env.overloaded.get() || env.shared.tm.len() >= env.shared.cfg.tm.max_transactions) {
            Stats::inc(&env.shared.stats.overload_503);
            sl::send_reply(env, &mut ctx, 503, "Service Unavailable", &[(HeaderName::RetryAfter, b"5")]);
            return;
        }
        let is_ack = ctx.msg.method() == Some(&Method::Ack);
        let (mut ctx, outcome) = self.script.run_main(ctx);
        if let RunOutcome::Error(e) = outcome {
            env.shared.script_error(&e);
            tracing::error!("route.main failed: {e}");
            if !ctx.replied && !ctx.relayed && !is_ack {
                sl::send_reply(env, &mut ctx, 500, "Server Internal Error", &[]);
            }
        } else if !ctx.replied && !ctx.relayed {
            tracing::debug!("the script neither replied to nor relayed the request");
        }
    }

    fn on_response(&mut self, msg: SipMessage, inc: Incoming) {
        let env = &*self.env;
        Stats::inc(&env.shared.stats.rcv_replies);
        if let Some(class) = msg.status().map(|s| (s / 100) as usize).filter(|c| (1..=6).contains(c)) {
            Stats::inc(&env.shared.stats.rcv_by_class[class - 1]);
        }
        let span = tracing::info_span!("rpl", call_id = %msg.call_id(), status = msg.status().unwrap_or(0), src = %inc.src);
        let _enter = span.enter();
        if crate::nathelper::is_ping_reply(env, &msg) {
            tracing::trace!("reply to a NAT keepalive absorbed");
            return;
        }
        if tm::on_reply(env, &self.script, msg.clone(), inc.src, inc.local) {
            return;
        }
        if !tm::forward_reply_stateless(env, msg, inc.local) {
            Stats::inc(&env.shared.stats.dropped);
            tracing::debug!("reply dropped: not for us");
        }
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeouts(&mut self, now: Instant) {
        self.env.set_now(now);
        while let Some(t) = self.env.pop_due_timer() {
            match t {
                Timer::Tm(ev) => tm::on_timer(&self.env, &self.script, ev),
                Timer::UsrlocSweep => crate::usrloc::sweep(&self.env),
                Timer::NatPing(tick) => crate::nathelper::natping_tick(&self.env, tick),
            }
        }
    }

    /// When the next timer is due.
    pub fn next_timeout(&self) -> Option<Instant> {
        self.env.next_timeout()
    }

    /// Takes what the core wants sent.
    pub fn take_transmits(&mut self) -> Vec<Transmit> {
        self.env.take_transmits()
    }
}

/// RFC 3261 §18.2.1 and RFC 3581 §4: a request whose top Via names
/// another address than the one it came from gets `received`; a client
/// that asked for `rport` gets the source port in it.
pub fn stamp_received(msg: &mut SipMessage, src: std::net::SocketAddr) {
    let via = msg.top_via();
    let host_differs = via.host.ip != Some(src.ip());
    let rport_asked = matches!(via.rport(), Some(None));
    if !host_differs && !rport_asked {
        return;
    }
    let mut v = via.clone();
    v.params.set("received", Some(&src.ip().to_string()));
    if rport_asked {
        v.params.set("rport", Some(&src.port().to_string()));
    }
    msg.set_first_value(&HeaderName::Via, v.to_string().as_bytes());
}
