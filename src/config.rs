//! Core and module parameters, read from the script's globals and
//! `modparam()` calls the way `ser.cfg`'s header sets them (`listen`, `port`,
//! `children`, `debug`, `max_len`, `alias`, `modparam("tm", "fr_timer", 30)`).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::transport::{ListenSocket, Proto, SocketId};

/// A configuration error, reported with the script's file:line when known.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("bad listen address '{0}': {1}")]
    /// A `listen` entry that cannot be used (the entry, why).
    Listen(String, String),
    #[error("{0}")]
    /// A bad core or module parameter.
    Param(String),
}

/// One `listen` entry before sockets exist: `udp:192.0.2.13:5060`,
/// `tcp:[2001:db8::1]:5060`, `192.0.2.13` (UDP, port from `port`), or
/// `udp:0.0.0.0:5060 advertise 192.0.2.13:5060` (the address put in Via and
/// Record-Route when the bind address is not reachable as such).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenSpec {
    /// Transport of the socket.
    pub proto: Proto,
    /// Address to bind.
    pub addr: SocketAddr,
    /// Host and port put in Via/Record-Route instead of the bind address.
    pub advertise: Option<(String, u16)>,
}

impl ListenSpec {
    /// Parses a listen string. `default_port` is the script's `port`
    /// (5060 unless set).
    pub fn parse(s: &str, default_port: u16) -> Result<ListenSpec, ConfigError> {
        let bad = |why: &str| ConfigError::Listen(s.to_string(), why.to_string());
        let s_trim = s.trim();
        let (main, adv) = match s_trim.split_once(" advertise ") {
            Some((m, a)) => (m.trim(), Some(a.trim())),
            None => (s_trim, None),
        };
        let (proto, rest) = match main.split_once(':') {
            Some((p, rest)) if Proto::parse(p).is_some() => (Proto::parse(p).unwrap_or(Proto::Udp), rest),
            Some((p, _)) if p.chars().all(|c| c.is_ascii_alphabetic()) && !p.is_empty() && !main.starts_with('[') => {
                return Err(bad(&format!("transport '{p}' is not served (udp and tcp are)")));
            }
            _ => (Proto::Udp, main),
        };
        let (ip, port) = parse_host_port(rest).ok_or_else(|| bad("expected IP[:PORT] or [IPv6][:PORT]"))?;
        let ip: IpAddr = ip.parse().map_err(|_| bad("the host must be an IP address"))?;
        let addr = SocketAddr::new(ip, port.unwrap_or(default_port));
        let advertise = match adv {
            None => None,
            Some(a) => {
                let (h, p) = parse_host_port(a).ok_or_else(|| bad("bad advertise address"))?;
                let host = match h.parse::<IpAddr>() {
                    Ok(IpAddr::V6(v6)) => format!("[{v6}]"),
                    _ => h.to_string(),
                };
                Some((host, p.unwrap_or(addr.port())))
            }
        };
        if ip.is_unspecified() && advertise.is_none() {
            return Err(bad(
                "a wildcard address needs 'advertise HOST[:PORT]' so Via and Record-Route name a reachable address",
            ));
        }
        Ok(ListenSpec { proto, addr, advertise })
    }

    /// The socket description the core uses once bound.
    pub fn to_socket(&self, id: SocketId) -> ListenSocket {
        let (adv_host, adv_port) = match &self.advertise {
            Some((h, p)) => (h.clone(), *p),
            None => (
                match self.addr.ip() {
                    IpAddr::V6(v6) => format!("[{v6}]"),
                    IpAddr::V4(v4) => v4.to_string(),
                },
                self.addr.port(),
            ),
        };
        ListenSocket {
            id,
            proto: self.proto,
            addr: self.addr,
            adv_host,
            adv_port,
        }
    }
}

/// Splits `host[:port]` / `[v6][:port]`; the host comes back without brackets.
fn parse_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']')?;
        return match after {
            "" => Some((h, None)),
            p => Some((h, Some(p.strip_prefix(':')?.parse().ok()?))),
        };
    }
    match s.rsplit_once(':') {
        // A bare IPv6 address without brackets has several colons: no port.
        Some((h, _)) if h.contains(':') => Some((s, None)),
        Some((h, p)) => Some((h, Some(p.parse().ok()?))),
        None if s.is_empty() => None,
        None => Some((s, None)),
    }
}

/// A `modparam` value: ser.cfg accepts integers and strings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParamValue {
    /// An integer value.
    Int(i64),
    /// A string value.
    Str(String),
}

/// Kind of value a module parameter takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// Takes an integer.
    Int,
    /// Takes a string.
    Str,
}

/// A module parameter and its documented default.
#[derive(Clone, Copy, Debug)]
pub struct ParamDef {
    /// SER module name (`tm`, `rr`, …).
    pub module: &'static str,
    /// Parameter name as SER spells it.
    pub name: &'static str,
    /// Kind of value.
    pub kind: ParamKind,
}

/// Every module parameter serlua knows (the SER/Kamailio names). Seconds
/// for tm timers, as SER 0.9 takes them.
pub const PARAMS: &[ParamDef] = &[
    param("tm", "fr_timer", ParamKind::Int),
    param("tm", "fr_inv_timer", ParamKind::Int),
    param("tm", "fr_timer_avp", ParamKind::Str),
    param("tm", "fr_inv_timer_avp", ParamKind::Str),
    param("tm", "wait_timer", ParamKind::Int),
    param("tm", "retr_timer1", ParamKind::Int),
    param("tm", "retr_timer2", ParamKind::Int),
    param("tm", "max_transactions", ParamKind::Int),
    param("rr", "enable_double_rr", ParamKind::Int),
    param("maxfwd", "max_limit", ParamKind::Int),
    param("auth", "nonce_expire", ParamKind::Int),
    param("auth", "algorithms", ParamKind::Str),
    param("registrar", "nat_flag", ParamKind::Int),
    param("registrar", "min_expires", ParamKind::Int),
    param("registrar", "max_expires", ParamKind::Int),
    param("registrar", "default_expires", ParamKind::Int),
    param("registrar", "max_contacts", ParamKind::Int),
    param("registrar", "append_branches", ParamKind::Int),
    param("usrloc", "db_url", ParamKind::Str),
    param("usrloc", "use_domain", ParamKind::Int),
    param("usrloc", "timer_interval", ParamKind::Int),
    param("usrloc", "sync_interval", ParamKind::Int),
    param("auth_db", "db_url", ParamKind::Str),
    param("domain", "db_url", ParamKind::Str),
    param("permissions", "db_url", ParamKind::Str),
    param("permissions", "trusted_table", ParamKind::Str),
    param("rtpproxy", "relay", ParamKind::Str),
    param("rtpproxy", "rtp_ports", ParamKind::Str),
    param("rtpproxy", "rtp_bind", ParamKind::Str),
    param("rtpproxy", "advertise", ParamKind::Str),
    param("rtpproxy", "media_timeout", ParamKind::Int),
    param("rtpproxy", "relay_threads", ParamKind::Int),
    param("rtpproxy", "ng_timeout", ParamKind::Int),
    param("mediaproxy", "relay", ParamKind::Str),
    param("mediaproxy", "rtp_ports", ParamKind::Str),
    param("mediaproxy", "rtp_bind", ParamKind::Str),
    param("mediaproxy", "advertise", ParamKind::Str),
    param("mediaproxy", "media_timeout", ParamKind::Int),
    param("mediaproxy", "relay_threads", ParamKind::Int),
    param("mediaproxy", "ng_timeout", ParamKind::Int),
    param("nathelper", "natping_interval", ParamKind::Int),
    param("nathelper", "ping_nated_only", ParamKind::Int),
    param("nathelper", "sipping_method", ParamKind::Str),
    param("nathelper", "sipping_from", ParamKind::Str),
    param("mediaproxy", "natping_interval", ParamKind::Int),
];

const fn param(module: &'static str, name: &'static str, kind: ParamKind) -> ParamDef {
    ParamDef { module, name, kind }
}

/// The `modparam()` calls of a script, validated against [`PARAMS`].
#[derive(Clone, Debug, Default)]
pub struct ModParams {
    values: BTreeMap<(String, String), ParamValue>,
}

impl ModParams {
    /// Records `modparam(module, name, value)`; rejects unknown modules or
    /// parameters and values of the wrong kind (integers given as numeric
    /// strings are accepted, as ser.cfg's parser does).
    pub fn set(&mut self, module: &str, name: &str, value: ParamValue) -> Result<(), ConfigError> {
        let def = PARAMS.iter().find(|d| d.module == module && d.name == name).ok_or_else(|| {
            if PARAMS.iter().any(|d| d.module == module) {
                ConfigError::Param(format!("module '{module}' has no parameter '{name}'"))
            } else {
                ConfigError::Param(format!("unknown module '{module}' in modparam"))
            }
        })?;
        let value = match (def.kind, value) {
            (ParamKind::Int, ParamValue::Int(i)) => ParamValue::Int(i),
            (ParamKind::Int, ParamValue::Str(s)) => ParamValue::Int(
                s.trim()
                    .parse()
                    .map_err(|_| ConfigError::Param(format!("modparam {module}.{name} expects an integer, got '{s}'")))?,
            ),
            (ParamKind::Str, ParamValue::Str(s)) => ParamValue::Str(s),
            (ParamKind::Str, ParamValue::Int(i)) => ParamValue::Str(i.to_string()),
        };
        self.values.insert((module.to_string(), name.to_string()), value);
        Ok(())
    }

    /// An integer parameter, or `default`.
    pub fn int(&self, module: &str, name: &str, default: i64) -> i64 {
        match self.values.get(&(module.to_string(), name.to_string())) {
            Some(ParamValue::Int(i)) => *i,
            _ => default,
        }
    }

    /// A string parameter, or `default`.
    pub fn str(&self, module: &str, name: &str, default: &str) -> String {
        match self.values.get(&(module.to_string(), name.to_string())) {
            Some(ParamValue::Str(s)) => s.clone(),
            _ => default.to_string(),
        }
    }
}

/// tm's timers (RFC 3261 §17 and SER tm's parameters).
#[derive(Clone, Debug)]
pub struct TmConfig {
    /// SER `fr_timer`: how long a branch waits for any reply (default 30 s).
    pub fr_timer: Duration,
    /// SER `fr_inv_timer`: how long an INVITE branch waits for a final reply
    /// after a provisional one (default 120 s).
    pub fr_inv_timer: Duration,
    /// Name of the AVP overriding `fr_timer` per transaction (empty: none).
    pub fr_timer_avp: String,
    /// Name of the AVP overriding `fr_inv_timer` per transaction; the
    /// reference's PSTN route writes `inv_timeout` (the default here).
    pub fr_inv_timer_avp: String,
    /// SER `wait_timer`: how long a finished transaction stays to absorb
    /// retransmissions (default 5 s).
    pub wait_timer: Duration,
    /// RFC 3261 T1 (SER `retr_timer1`, default 500 ms).
    pub t1: Duration,
    /// RFC 3261 T2 (SER `retr_timer2`, default 4 s).
    pub t2: Duration,
    /// Upper bound of live transactions; beyond it new requests get 503
    /// (memory stays bounded under overload).
    pub max_transactions: usize,
}

impl TmConfig {
    fn from_params(p: &ModParams) -> Result<TmConfig, ConfigError> {
        let positive = |name: &str, default: i64, unit: &str, to: fn(u64) -> Duration| -> Result<Duration, ConfigError> {
            let v = p.int("tm", name, default);
            if v <= 0 {
                return Err(ConfigError::Param(format!(
                    "modparam tm.{name} must be a positive number of {unit}, got {v}"
                )));
            }
            Ok(to(v as u64))
        };
        let secs = |name: &str, default: i64| positive(name, default, "seconds", Duration::from_secs);
        let millis = |name: &str, default: i64| positive(name, default, "milliseconds", Duration::from_millis);
        Ok(TmConfig {
            fr_timer: secs("fr_timer", 30)?,
            fr_inv_timer: secs("fr_inv_timer", 120)?,
            fr_timer_avp: p.str("tm", "fr_timer_avp", ""),
            fr_inv_timer_avp: p.str("tm", "fr_inv_timer_avp", "inv_timeout"),
            wait_timer: secs("wait_timer", 5)?,
            t1: millis("retr_timer1", 500)?,
            t2: millis("retr_timer2", 4000)?,
            max_transactions: p.int("tm", "max_transactions", 65536).max(16) as usize,
        })
    }
}

impl Default for TmConfig {
    fn default() -> TmConfig {
        // The defaults cannot fail.
        TmConfig::from_params(&ModParams::default()).unwrap_or_else(|_| unreachable!())
    }
}

/// Everything the core needs from a script's header.
#[derive(Clone, Debug)]
pub struct CoreConfig {
    /// Listen sockets, in the order given.
    pub listen: Vec<ListenSpec>,
    /// Worker threads (`children`); default: the number of cores.
    pub children: usize,
    /// SER `debug` level (3 = info, 4 = debug), `None` when unset.
    pub debug: Option<i64>,
    /// SER `max_len`: UDP requests longer than this get 513 (default 4096).
    pub max_len: usize,
    /// Largest message accepted on a TCP connection (default 65535).
    pub tcp_max_msg: usize,
    /// Idle TCP connections are closed after this (default 120 s, as
    /// Kamailio's tcp_connection_lifetime).
    pub tcp_idle: Duration,
    /// Names and `host[:port]`s served besides the listen addresses
    /// (`alias`), for `is_myself`.
    pub aliases: Vec<(String, Option<u16>)>,
    /// tm's timers and limits.
    pub tm: TmConfig,
    /// rr `enable_double_rr`: two Record-Routes when a request changes socket.
    pub rr_double: bool,
    /// maxfwd `max_limit`: Max-Forwards values above it are lowered.
    pub maxfwd_limit: u32,
    /// The database behind the in-memory tables (`db_url`, or the
    /// modules' `db_url` parameter, or `--db`); default `sqlite://serlua.db`.
    pub db_url: String,
    /// Subscribers, domains and trusted peers are reloaded from the
    /// database this often (`table_refresh`, default 10 s; 0 = only on
    /// SIGHUP).
    pub table_refresh: Duration,
    /// The control socket (`ctl_socket`, `--ctl`; default `serlua.ctl` in
    /// the working directory).
    pub ctl_socket: std::path::PathBuf,
    /// Metrics and status page listener (`http_listen`), off by default.
    pub http_listen: Option<SocketAddr>,
    /// How long SIGTERM lets transactions finish (`shutdown_timeout`, 10 s).
    pub shutdown_timeout: Duration,
    /// Run in the background (`fork`).
    pub fork: bool,
    /// Log to stderr (`log_stderror`, default true) or to syslog.
    pub log_stderror: bool,
    /// Process id file of a forked proxy (`pid_file`, default `serlua.pid`).
    pub pid_file: std::path::PathBuf,
    /// The media relay the script's `force_rtp_proxy`/`use_media_proxy`
    /// drive (`modparam("rtpproxy", "relay", …)`).
    pub relay: crate::relay::RelayChoice,
    /// Every `modparam` of the script.
    pub params: ModParams,
    /// Which digest nonces `www_authorize`/`proxy_authorize` accept; only
    /// `serlua test` changes it.
    pub nonce_policy: crate::auth::NoncePolicy,
}

impl CoreConfig {
    /// Defaults for a script that sets nothing, with its module parameters.
    pub fn with_params(params: ModParams) -> Result<CoreConfig, ConfigError> {
        let tm = TmConfig::from_params(&params)?;
        let rr_double = params.int("rr", "enable_double_rr", 1) != 0;
        let maxfwd_limit = params.int("maxfwd", "max_limit", 256).clamp(0, 255) as u32;
        let relay = crate::relay::RelayChoice::from_params(&params)?;
        Ok(CoreConfig {
            listen: Vec::new(),
            children: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            debug: None,
            max_len: 4096,
            tcp_max_msg: 65535,
            tcp_idle: Duration::from_secs(120),
            aliases: Vec::new(),
            tm,
            rr_double,
            maxfwd_limit,
            db_url: crate::db::DEFAULT_URL.to_string(),
            table_refresh: Duration::from_secs(10),
            ctl_socket: "serlua.ctl".into(),
            http_listen: None,
            shutdown_timeout: Duration::from_secs(10),
            fork: false,
            log_stderror: true,
            pid_file: "serlua.pid".into(),
            relay,
            params,
            nonce_policy: crate::auth::NoncePolicy::Issued,
        })
    }

    /// The listen sockets with their ids, in order.
    pub fn sockets(&self) -> Vec<ListenSocket> {
        self.listen.iter().enumerate().map(|(i, l)| l.to_socket(i as SocketId)).collect()
    }
}

/// Parses an `alias` entry: `example.com` or `example.com:5060`.
pub fn parse_alias(s: &str) -> Result<(String, Option<u16>), ConfigError> {
    let (h, p) = parse_host_port(s.trim()).ok_or_else(|| ConfigError::Param(format!("bad alias '{s}'")))?;
    Ok((h.to_ascii_lowercase(), p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_forms() {
        let l = ListenSpec::parse("udp:127.0.0.1:5070", 5060).unwrap();
        assert_eq!(l.proto, Proto::Udp);
        assert_eq!(l.addr, "127.0.0.1:5070".parse().unwrap());
        let l = ListenSpec::parse("tcp:[::1]:5080", 5060).unwrap();
        assert_eq!(l.proto, Proto::Tcp);
        assert_eq!(l.addr, "[::1]:5080".parse().unwrap());
        assert_eq!(l.to_socket(0).adv_host, "[::1]");
        let l = ListenSpec::parse("192.0.2.13", 5062).unwrap();
        assert_eq!(l.addr, "192.0.2.13:5062".parse().unwrap());
        let l = ListenSpec::parse("udp:0.0.0.0:5060 advertise 192.0.2.13", 5060).unwrap();
        assert_eq!(l.to_socket(3).adv_hostport(), "192.0.2.13:5060");
        assert!(ListenSpec::parse("udp:0.0.0.0:5060", 5060).is_err());
        assert!(ListenSpec::parse("tls:127.0.0.1:5061", 5060).is_err());
        assert!(ListenSpec::parse("udp:example.com:5060", 5060).is_err());
        assert!(ListenSpec::parse("udp:127.0.0.1:99999", 5060).is_err());
    }

    #[test]
    fn modparams_validate() {
        let mut p = ModParams::default();
        p.set("tm", "fr_timer", ParamValue::Str("10".into())).unwrap();
        assert_eq!(p.int("tm", "fr_timer", 30), 10);
        assert!(p.set("tm", "fr_timerr", ParamValue::Int(1)).is_err());
        assert!(p.set("nosuch", "x", ParamValue::Int(1)).is_err());
        assert!(p.set("tm", "fr_timer", ParamValue::Str("ten".into())).is_err());
        let c = CoreConfig::with_params(p).unwrap();
        assert_eq!(c.tm.fr_timer, Duration::from_secs(10));
        assert_eq!(c.tm.fr_inv_timer_avp, "inv_timeout");
    }
}
