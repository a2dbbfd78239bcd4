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
        /// Control socket path (overrides `ctl_socket`; default serlua.ctl).
        #[arg(long, value_name = "PATH")]
        ctl: Option<PathBuf>,
    },
    /// Load a script and check it statically (unknown functions, arity, routes) without starting.
    Check {
        /// The Lua route script.
        script: PathBuf,
    },
    /// The admin commands (kamctl/kamdbctl): db, user, domain, trusted, alias, ul.
    #[command(flatten)]
    Admin(serlua::admin::Command),
    /// Ask a running proxy over its control socket: stats, reload, ul show/rm, tm list, log-level, version, errors.
    Ctl(serlua::ctl::CtlArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Admin(cmd) => serlua::admin::run(cmd),
        Cmd::Ctl(args) => serlua::ctl::run(args),
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
            ctl,
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
            let cfg = match app::build_config(
                &script,
                header,
                &Overrides {
                    listen,
                    children,
                    debug,
                    db,
                    ctl,
                },
            ) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::FAILURE;
                }
            };
            if cfg.fork {
                if let Err(e) = serlua::logging::daemonize(&cfg.pid_file) {
                    eprintln!("serlua: {e}");
                    return ExitCode::FAILURE;
                }
            }
            let log_level = serlua::logging::init(cfg.debug, cfg.log_stderror);
            let shared = Arc::new(serlua::core::Shared::new(cfg));
            match serlua::server::run(shared, script, Some(log_level)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("serlua: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
