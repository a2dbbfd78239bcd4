//! Logging (tracing): to stderr, or to syslog when the script says
//! `log_stderror = false` (ser.cfg's `log_stderror=no`); the level comes
//! from the script's `debug`, `RUST_LOG` overrides it, and `serlua ctl
//! log-level` changes it while the proxy runs.

use std::io::IsTerminal;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, reload};

use crate::control::LogLevelFn;

/// Installs the global logger; returns the hook that changes its filter.
pub fn init(debug: Option<i64>, to_stderr: bool) -> LogLevelFn {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::new(v),
        _ => EnvFilter::new(crate::app::debug_filter(debug)),
    };
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    let syslog = if to_stderr {
        None
    } else {
        syslog_tracing::Syslog::new(c"serlua", syslog_tracing::Options::LOG_PID, syslog_tracing::Facility::Daemon)
    };
    match syslog {
        Some(writer) => {
            // syslog stamps the time and the program itself.
            registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_writer(writer)
                        .with_ansi(false)
                        .without_time()
                        .with_target(false),
                )
                .init();
        }
        None => {
            if !to_stderr {
                eprintln!("serlua: cannot open syslog; logging to stderr");
            }
            let ansi = std::io::stderr().is_terminal();
            registry
                .with(
                    tracing_subscriber::fmt::layer()
                        .with_writer(std::io::stderr)
                        .with_ansi(ansi)
                        .with_target(false),
                )
                .init();
        }
    }
    Box::new(move |level: &str| {
        let f = EnvFilter::try_new(level).map_err(|e| format!("bad log level '{level}': {e}"))?;
        handle.reload(f).map_err(|e| e.to_string())
    })
}

/// Detaches from the terminal (ser.cfg's `fork=yes`) and writes the pid
/// file. Must run before any thread starts.
pub fn daemonize(pid_file: &std::path::Path) -> Result<(), String> {
    nix::unistd::daemon(true, false).map_err(|e| format!("cannot fork into the background: {e}"))?;
    std::fs::write(pid_file, format!("{}\n", std::process::id())).map_err(|e| format!("cannot write {}: {e}", pid_file.display()))
}
