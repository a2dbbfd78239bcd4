//! The `serlua` command: run the proxy, check a script.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use serlua::app::{self, Overrides};

/// SIP proxy, registrar and media relay whose routing is a Lua script
/// written like SER's ser.cfg.
#[derive(Parser)]
#[command(name = "serlua", version, about)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the proxy with a route script (default: the shipped quick-start script).
    Run {
        /// The Lua route script.
        script: Option<PathBuf>,
        /// Listen on PROTO:IP:PORT instead of the script's `listen` (repeatable), e.g. udp:127.0.0.1:5060.
        #[arg(long, value_name = "PROTO:IP:PORT")]
        listen: Vec<String>,
        /// Number of worker threads (overrides `children`).
        #[arg(long)]
        children: Option<usize>,
        /// SER debug level (overrides `debug`; 3 = info, 4 = debug). RUST_LOG overrides both.
        #[arg(long)]
        debug: Option<i64>,
        /// Database URL (overrides `db_url`): sqlite://FILE, postgres://…, mysql://…
        #[arg(long, value_name = "URL")]
        db: Option<String>,
    },
    /// Load a script and check it statically (unknown functions, arity, routes) without starting.
    Check {
        /// The Lua route script.
        script: PathBuf,
    },
    /// The admin commands (kamctl/kamdbctl): db, user, domain, trusted, alias, ul.
    #[command(flatten)]
    Admin(serlua::admin::Command),
}

fn init_logging(debug: Option<i64>) {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => tracing_subscriber::EnvFilter::new(v),
        _ => tracing_subscriber::EnvFilter::new(app::debug_filter(debug)),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Admin(cmd) => serlua::admin::run(cmd),
        Cmd::Check { script } => match app::load_and_check(&script) {
            Ok(_) => {
                println!("{}: OK", script.display());
                ExitCode::SUCCESS
            }
            Err(errs) => {
                for e in errs {
                    eprintln!("{e}");
                }
                ExitCode::FAILURE
            }
        },
        Cmd::Run {
            script,
            listen,
            children,
            debug,
            db,
        } => {
            let script = script.unwrap_or_else(app::default_script);
            let header = match app::load_and_check(&script) {
                Ok(h) => h,
                Err(errs) => {
                    for e in errs {
                        eprintln!("{e}");
                    }
                    eprintln!("serlua: not started: {} has errors", script.display());
                    return ExitCode::FAILURE;
                }
            };
            let cfg = match app::build_config(&script, header, &Overrides { listen, children, debug, db }) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            init_logging(cfg.debug);
            let shared = Arc::new(serlua::core::Shared::new(cfg));
            match serlua::server::run(shared, script) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("serlua: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
