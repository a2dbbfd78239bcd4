//! What the `serlua` commands do, as library functions the binary wires
//! to its command line (ripgrep's shape: a thin CLI over library crates).

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use crate::config::{CoreConfig, ListenSpec, parse_alias};
use crate::core::{Env, Shared};
use crate::script::{Header, Script};

/// Command-line overrides of the script's header.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// `--listen` values; they replace the script's `listen`.
    pub listen: Vec<String>,
    /// `--children`: worker threads.
    pub children: Option<usize>,
    /// `--debug`: SER debug level.
    pub debug: Option<i64>,
    /// `--db`: the database URL, over the script's `db_url`.
    pub db: Option<String>,
    /// `--ctl`: the control socket path, over the script's `ctl_socket`.
    pub ctl: Option<PathBuf>,
}

/// Loads a script once to read its header, and statically checks it.
/// Errors are `file:line: message` lines.
pub fn load_and_check(path: &Path) -> Result<Header, Vec<String>> {
    if let Ok(src) = std::fs::read_to_string(path) {
        if let Err(d) = crate::script::check::syntax_check(&path.display().to_string(), &src) {
            return Err(vec![d.to_string()]);
        }
    }
    let shared = Arc::new(Shared::new(
        CoreConfig::with_params(Default::default()).map_err(|e| vec![e.to_string()])?,
    ));
    let env = Rc::new(Env::new(shared, 0, Instant::now()));
    let (script, header) = Script::load(path, env).map_err(|e| vec![e.0])?;
    let diags = script.static_check();
    if !diags.is_empty() {
        return Err(diags.iter().map(|d| d.to_string()).collect());
    }
    Ok(header)
}

/// The core configuration from a script header and command-line overrides.
pub fn build_config(path: &Path, header: Header, ov: &Overrides) -> Result<CoreConfig, String> {
    let name = path.display();
    let mut cfg = CoreConfig::with_params(header.params).map_err(|e| format!("{name}: {e}"))?;
    let port = header.port.unwrap_or(5060);
    let listen = if ov.listen.is_empty() { header.listen } else { ov.listen.clone() };
    let listen = if listen.is_empty() {
        vec!["udp:127.0.0.1".to_string(), "tcp:127.0.0.1".to_string()]
    } else {
        listen
    };
    for l in &listen {
        cfg.listen.push(ListenSpec::parse(l, port).map_err(|e| format!("{name}: {e}"))?);
    }
    if let Some(c) = ov.children.or(header.children) {
        cfg.children = c.clamp(1, 256);
    }
    cfg.debug = ov.debug.or(header.debug);
    if let Some(m) = header.max_len {
        cfg.max_len = m;
    }
    for a in &header.aliases {
        cfg.aliases.push(parse_alias(a).map_err(|e| format!("{name}: {e}"))?);
    }
    // One database for every table: the modules' db_url parameters (as a
    // ported ser.cfg sets them) must agree with each other and db_url.
    let mut urls: Vec<String> = header.db_url.into_iter().collect();
    for module in ["usrloc", "auth_db", "domain", "permissions"] {
        let u = cfg.params.str(module, "db_url", "");
        if !u.is_empty() {
            urls.push(u);
        }
    }
    urls.dedup();
    if let Some(first) = urls.first() {
        if urls.iter().any(|u| u != first) {
            return Err(format!(
                "{name}: serlua keeps every table in one database, but db_url values differ: {}",
                urls.join(", ")
            ));
        }
        cfg.db_url = first.clone();
    }
    if let Some(db) = &ov.db {
        cfg.db_url = db.clone();
    }
    if let Some(t) = header.table_refresh {
        cfg.table_refresh = std::time::Duration::from_secs(t);
    }
    if let Some(c) = ov.ctl.clone().or(header.ctl_socket.map(PathBuf::from)) {
        cfg.ctl_socket = c;
    }
    if let Some(h) = header.http_listen {
        cfg.http_listen = Some(h.parse().map_err(|_| format!("{name}: http_listen '{h}' must be IP:PORT"))?);
    }
    if let Some(t) = header.shutdown_timeout {
        cfg.shutdown_timeout = std::time::Duration::from_secs(t);
    }
    cfg.fork = header.fork.unwrap_or(false);
    cfg.log_stderror = header.log_stderror.unwrap_or(true);
    if let Some(p) = header.pid_file {
        cfg.pid_file = p.into();
    }
    Ok(cfg)
}

/// The shipped quick-start script, for `serlua run` without a script:
/// `examples/quickstart.lua` under the working directory, else beside the
/// source tree the binary was built from.
pub fn default_script() -> PathBuf {
    let local = PathBuf::from("examples/quickstart.lua");
    if local.exists() {
        return local;
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart.lua")
}

/// Maps SER's `debug` level to a tracing filter: 4+ debug, 2–3 info,
/// 0–1 warnings, negative errors only (SER: L_DBG 4, L_INFO 3, L_NOTICE 2,
/// L_WARN 1, L_ERR -1).
pub fn debug_filter(debug: Option<i64>) -> &'static str {
    match debug.unwrap_or(2) {
        i64::MIN..=-1 => "error",
        0..=1 => "warn",
        2..=3 => "info",
        4 => "debug",
        _ => "trace",
    }
}

/// The configuration of a script (its header, checked, plus overrides)
/// and its text: the first half of starting a proxy instance.
pub fn script_config(path: &Path, source: Option<String>, ov: &Overrides, now: Instant) -> Result<(CoreConfig, String), String> {
    let probe_shared = Arc::new(Shared::new(CoreConfig::with_params(Default::default()).map_err(|e| e.to_string())?));
    let probe_env = Rc::new(Env::new(probe_shared, 0, now));
    let src = match source {
        Some(s) => s,
        None => std::fs::read_to_string(path).map_err(|e| format!("{}: cannot read script: {e}", path.display()))?,
    };
    let (probe, header) = Script::load_source(path, src.clone(), probe_env).map_err(|e| e.0)?;
    let diags = probe.static_check();
    if !diags.is_empty() {
        return Err(diags.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"));
    }
    Ok((build_config(path, header, ov)?, src))
}

/// One proxy instance over a script, driven by the caller (the sans-IO
/// core without sockets and without a database thread): the test harness
/// and the REPL's dry run use this; `serlua run` puts sockets and the
/// database around the same pieces. `source` replaces the file's text
/// when given (inline scripts).
pub fn instance(path: &Path, source: Option<String>, ov: &Overrides, now: Instant) -> Result<crate::worker::Worker, String> {
    let (cfg, src) = script_config(path, source, ov, now)?;
    let shared = Arc::new(Shared::new(cfg));
    crate::worker::Worker::from_source(shared, 0, path, src, now).map_err(|e| e.0)
}
