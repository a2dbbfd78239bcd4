//! The `serlua` command: run the proxy, check a script, run a media relay.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use serlua::app::{self, Overrides};

// jemalloc, with its background threads returning freed pages to the
// kernel soon after they are freed: glibc's per-thread arenas kept every transient
// peak (a registration surge, a table reload) resident long after it ended,
// and the registrar's footprint followed its worst moment, not its bindings.
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's start-up options: freed pages go back after about a second
/// rather than ten, so the process's size follows its tables within
/// moments of a surge or a bulk load (the purging runs on jemalloc's own
/// background thread, off the SIP workers).
#[allow(non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

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
    /// Run a standalone media relay driven over rtpengine's ng protocol (Kamailio's rtpengine module, or serlua's ng client).
    Relay(RelayArgs),
    /// Evaluate Lua against one SIP message in a dry-run sandbox: offline (SCRIPT --msg FILE) or caught live (--attach --match EXPR [--hold]).
    Repl(serlua::repl::cli::ReplArgs),
    /// Run Lua unit tests of route scripts (*_test.lua, busted style) against recorded SIP traces.
    Test(TestArgs),
}

/// `serlua test`: the Lua test runner (DESIGN.md "Lua test conventions").
#[derive(clap::Args)]
struct TestArgs {
    /// Test files, or folders searched for *_test.lua (default: lua/ and tests/).
    paths: Vec<PathBuf>,
    /// Run only the tests whose full name ("describe … it") matches this regular expression.
    #[arg(long, value_name = "REGEX")]
    filter: Option<String>,
    /// Show each test's message flow as a ladder diagram, with the routes that handled each message.
    #[arg(long, short)]
    verbose: bool,
    /// Also write the results as JUnit XML to FILE.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
}

/// Runs the Lua tests; exit status 1 when one failed, 2 when they could
/// not be run.
fn run_tests(args: TestArgs) -> ExitCode {
    let filter = match args.filter.as_deref().map(regex::Regex::new).transpose() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("serlua test: --filter: {e}");
            return ExitCode::from(2);
        }
    };
    // The report carries the scripts' errors (px:errors(), the ladder);
    // their log lines would only interleave with it, unless asked for.
    if std::env::var_os("RUST_LOG").is_some() {
        let _log = serlua::logging::init(None, true);
    }
    let opts = serlua::testing::Options {
        paths: args.paths,
        filter,
        verbose: args.verbose,
        junit: args.junit,
    };
    let mut out = std::io::stdout().lock();
    match serlua::testing::run(&opts, &mut out) {
        Ok(summary) if summary.failed() == 0 => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("serlua test: {e}");
            ExitCode::from(2)
        }
    }
}

/// `serlua relay`: the embedded engine behind an ng control socket, as
/// rtpengine is run behind Kamailio.
#[derive(clap::Args)]
struct RelayArgs {
    /// The ng control socket (rtpengine's --listen-ng), udp:IP:PORT.
    #[arg(long, value_name = "udp:IP:PORT", default_value = "udp:127.0.0.1:2223", value_parser = parse_ng_listen)]
    ng: SocketAddr,
    /// RTP ports to allocate from, inclusive (rtpengine's --port-min/--port-max).
    #[arg(long, value_name = "MIN-MAX", default_value = "30000-40000", value_parser = parse_port_range)]
    ports: (u16, u16),
    /// The address written into the rewritten SDP (the relay's public address).
    #[arg(long, value_name = "IP", value_parser = parse_ip)]
    advertise: IpAddr,
    /// The address the media sockets bind to (default: the --advertise address).
    #[arg(long, value_name = "IP", value_parser = parse_ip)]
    bind: Option<IpAddr>,
    /// A session without media for this many seconds ends.
    #[arg(long, value_name = "SECS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    media_timeout: u64,
    /// Media forwarding threads.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    threads: u64,
}

/// `udp:IP:PORT` (rtpengine's --listen-ng takes IP:PORT; `udp:` as in
/// Kamailio's rtpengine_sock).
fn parse_ng_listen(s: &str) -> Result<SocketAddr, String> {
    let Some(rest) = s.strip_prefix("udp:") else {
        return Err(format!("{s:?}: expected udp:IP:PORT (only udp: is supported)"));
    };
    rest.parse()
        .map_err(|_| format!("{s:?}: expected udp:IP:PORT, with IP:PORT like 127.0.0.1:2223 or [::1]:2223"))
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("{s:?}: expected MIN-MAX, e.g. 30000-40000"))?;
    let port = |p: &str| {
        p.trim()
            .parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| format!("{p:?}: ports are 1 to 65535"))
    };
    let (a, b) = (port(a)?, port(b)?);
    if a > b {
        return Err(format!("{s:?}: --ports MIN is above MAX"));
    }
    if b - a < 3 {
        return Err(format!("{s:?}: the range must hold at least two RTP/RTCP port pairs"));
    }
    Ok((a, b))
}

fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.parse().map_err(|_| format!("{s:?} is not an IP address"))
}

/// Runs the relay until SIGINT or SIGTERM.
fn run_relay(args: RelayArgs) -> ExitCode {
    use serlua::relay::engine::{Engine, EngineConfig};
    let _log_level = serlua::logging::init(None, true);
    let cfg = EngineConfig {
        bind: args.bind.unwrap_or(args.advertise),
        advertise: Some(args.advertise),
        ports: args.ports,
        media_timeout: std::time::Duration::from_secs(args.media_timeout),
        threads: usize::try_from(args.threads).unwrap_or(1),
    };
    let engine = match Engine::start(cfg) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("serlua relay: the media engine did not start: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Registered before the control socket opens, so that a signal from
    // then on is never the default (a kill without the exit status).
    let mut signals = match signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM]) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("serlua relay: signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let server = match serlua::relay::ng::serve(args.ng, engine) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("serlua relay: ng control socket udp:{}: {e}", args.ng);
            return ExitCode::FAILURE;
        }
    };
    tracing::info!(
        "relay running: ng udp:{}, media on {} ports {}-{}, advertised as {}",
        server.local_addr(),
        args.bind.unwrap_or(args.advertise),
        args.ports.0,
        args.ports.1,
        args.advertise
    );
    if let Some(sig) = signals.forever().next() {
        tracing::info!("signal {sig}: stopping the relay");
    }
    drop(server);
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Admin(cmd) => serlua::admin::run(cmd),
        Cmd::Ctl(args) => serlua::ctl::run(args),
        Cmd::Relay(args) => run_relay(args),
        Cmd::Test(args) => run_tests(args),
        Cmd::Repl(args) => serlua::repl::cli::run(args),
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
