//! The admin commands — what Kamailio's `kamctl` and `kamdbctl` do, for
//! serlua's (Kamailio's) tables: `serlua db migrate`, `serlua user
//! add|passwd|rm|list`, `serlua domain add|rm|list`, `serlua trusted
//! add|rm|list`, `serlua alias add|rm|list`, `serlua ul show`. They talk
//! only to the database (`--db URL`, by default the proxy's own SQLite
//! file), never to a running proxy: a running proxy sees subscriber,
//! domain and trusted changes at its next table reload (SIGHUP), and `ul
//! show` shows what the proxy has written so far (usrloc writes are queued
//! behind the messages that made them).
//!
//! Each command is a library function here (`user_add`, `ul_show`, …) plus
//! a table/JSON formatter; [`run`] is what `main` calls. Bad input and
//! database errors are one line ([`AdminError`]); no command leaves half a
//! change behind (each writes with one statement or one transaction).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::process::ExitCode;

use chrono::{NaiveDateTime, Utc};
use md5::{Digest, Md5};

use crate::db::{self, Backend, BindingRow, Db, DbError, DomainRow, Subscriber, TrustedRow, UlTable};

/// The registrar's NAT flag as serlua's registrar stores it in a binding's
/// `flags`: flag 6 (`modparam("registrar", "nat_flag", 6)` in the reference
/// configs), bit 0x40. Kamailio keeps it in `cflags` instead (its
/// `nat_bflag`, a branch flag, conventionally 6 too), so `ul show` reports
/// "nat" when bit 0x40 is set in either column.
pub const NAT_FLAG_BIT: i32 = 1 << 6;

/// Kamailio's column widths (VARCHAR(n)) for what the admin types in:
/// longer values are refused here rather than cut or refused by the server.
const MAX_USER: usize = 64;
const MAX_DOMAIN: usize = 64;
const MAX_PASSWORD: usize = 64;
const MAX_PATTERN: usize = 64;
const MAX_TAG: usize = 64;
const MAX_ALIAS_TARGET: usize = 255;

/// The `proto` values Kamailio's permissions module accepts in `trusted`.
pub const TRUSTED_PROTOS: [&str; 8] = ["any", "udp", "tcp", "tls", "sctp", "ws", "wss", "none"];

/// An admin command failed: bad input or a database error, one line.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The arguments are wrong (an AOR without a domain, a bad IP, a regex
    /// that does not compile, …); nothing was written.
    #[error("{0}")]
    Input(String),
    /// The database refused (connection, duplicate, missing tables, …).
    #[error("{0}")]
    Db(#[from] DbError),
}

fn input<T>(msg: String) -> Result<T, AdminError> {
    Err(AdminError::Input(msg))
}

// ------------------------------------------------------------------ CLI

/// Where the admin commands work and how they print: `--db URL` and
/// `--json`, accepted after any admin subcommand.
#[derive(clap::Args, Debug, Clone)]
pub struct Opts {
    /// Database URL: sqlite://PATH (the proxy's file; created and migrated on use),
    /// postgres://USER:PASS@HOST/DB or mysql://USER:PASS@HOST/DB (migrate those with `serlua db migrate`).
    #[arg(long, global = true, value_name = "URL", default_value = db::DEFAULT_URL)]
    pub db: String,
    /// Print list and show output as JSON instead of an aligned table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// The admin subcommands of `serlua` (flattened into its command line).
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Database schema (kamdbctl create): `serlua db migrate --db URL`.
    Db {
        /// What to do.
        #[command(subcommand)]
        cmd: DbCmd,
        /// Database and output.
        #[command(flatten)]
        opts: Opts,
    },
    /// Subscribers for digest authentication, the `subscriber` table (kamctl add/passwd/rm).
    User {
        /// What to do.
        #[command(subcommand)]
        cmd: UserCmd,
        /// Database and output.
        #[command(flatten)]
        opts: Opts,
    },
    /// Local domains, the `domain` table (kamctl domain add/rm/show).
    Domain {
        /// What to do.
        #[command(subcommand)]
        cmd: DomainCmd,
        /// Database and output.
        #[command(flatten)]
        opts: Opts,
    },
    /// Trusted peers for allow_trusted(), the `trusted` table (kamctl trusted add/rm/show).
    Trusted {
        /// What to do.
        #[command(subcommand)]
        cmd: TrustedCmd,
        /// Database and output.
        #[command(flatten)]
        opts: Opts,
    },
    /// Permanent aliases for lookup("aliases"), the `aliases` table (kamctl alias add/rm/show).
    Alias {
        /// What to do.
        #[command(subcommand)]
        cmd: AliasCmd,
        /// Database and output.
        #[command(flatten)]
        opts: Opts,
    },
    /// Registered contacts, the `location` table (kamctl ul show).
    Ul {
        /// What to do.
        #[command(subcommand)]
        cmd: UlCmd,
        /// Database and output.
        #[command(flatten)]
        opts: Opts,
    },
}

/// `serlua db …`
#[derive(clap::Subcommand, Debug)]
pub enum DbCmd {
    /// Create the missing Kamailio 5.x tables and check the existing ones (idempotent).
    Migrate,
}

/// `serlua user …`
#[derive(clap::Subcommand, Debug)]
pub enum UserCmd {
    /// Add a subscriber: clear-text password plus Kamailio's ha1/ha1b (kamctl add).
    Add {
        /// user@domain (the domain is the digest realm).
        aor: String,
        /// The password.
        password: String,
    },
    /// Change a subscriber's password and digests (kamctl passwd).
    Passwd {
        /// user@domain.
        aor: String,
        /// The new password.
        password: String,
    },
    /// Remove a subscriber (kamctl rm).
    Rm {
        /// user@domain.
        aor: String,
    },
    /// List the subscribers (no clear-text passwords).
    List,
}

/// `serlua domain …`
#[derive(clap::Subcommand, Debug)]
pub enum DomainCmd {
    /// Add a domain this proxy is responsible for (kamctl domain add).
    Add {
        /// The domain name (stored lower-case).
        domain: String,
        /// Kamailio's domain id (`did`), when you use domain attributes.
        #[arg(long)]
        did: Option<String>,
    },
    /// Remove a domain (kamctl domain rm).
    Rm {
        /// The domain name.
        domain: String,
    },
    /// List the domains (kamctl domain show).
    List,
}

/// `serlua trusted …`
#[derive(clap::Subcommand, Debug)]
pub enum TrustedCmd {
    /// Trust a peer (kamctl trusted add IP PROTO FROM_PATTERN TAG).
    Add {
        /// The peer's source IP address.
        ip: String,
        /// any (default), udp, tcp, tls, sctp, ws, wss or none.
        proto: Option<String>,
        /// Regular expression the From URI must match (case-insensitive, as Kamailio's); omit for any.
        from_pattern: Option<String>,
        /// Free text allow_trusted() hands to the script (Kamailio's peer_tag_avp).
        tag: Option<String>,
        /// Regular expression the Request-URI must match.
        #[arg(long)]
        ruri_pattern: Option<String>,
        /// Rows with a higher priority are tried first.
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        priority: i32,
    },
    /// Remove every entry of a source IP (kamctl trusted rm).
    Rm {
        /// The peer's source IP address.
        ip: String,
    },
    /// List the trusted peers (kamctl trusted show).
    List,
}

/// `serlua alias …`
#[derive(clap::Subcommand, Debug)]
pub enum AliasCmd {
    /// Add a permanent alias: requests to ALIAS_URI go to TARGET_URI (kamctl alias add).
    Add {
        /// The alias, user@domain or sip:user@domain.
        alias: String,
        /// Where it points, e.g. sip:alice@example.com.
        target: String,
    },
    /// Remove an alias (kamctl alias rm).
    Rm {
        /// The alias, user@domain or sip:user@domain.
        alias: String,
    },
    /// List the aliases (kamctl alias show).
    List,
}

/// `serlua ul …`
#[derive(clap::Subcommand, Debug)]
pub enum UlCmd {
    /// Show registered bindings from the location table, all or one AOR's (kamctl ul show).
    Show {
        /// user@domain; omit for every binding.
        aor: Option<String>,
    },
}

/// Runs an admin command as `serlua` does: its output on stdout, or one
/// error line on stderr and exit code 1.
pub fn run(cmd: Command) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("serlua: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(execute(cmd)) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("serlua: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs an admin command and returns what it prints.
pub async fn execute(cmd: Command) -> Result<String, AdminError> {
    match cmd {
        Command::Db { cmd: DbCmd::Migrate, opts } => {
            let mut db = Db::connect(&opts.db).await?;
            db.migrate().await?;
            let versions = db.load_versions().await?;
            if opts.json {
                let rows: Vec<String> = versions
                    .iter()
                    .map(|(t, v)| format!("{{\"table_name\":{},\"table_version\":{v}}}", json_str(t)))
                    .collect();
                return Ok(format!("[{}]\n", rows.join(",")));
            }
            let list: Vec<String> = versions.iter().map(|(t, v)| format!("{t} {v}")).collect();
            Ok(format!("{}: schema up to date ({})\n", db.url(), list.join(", ")))
        }
        Command::User { cmd, opts } => {
            let mut db = open(&opts.db).await?;
            match cmd {
                UserCmd::Add { aor, password } => {
                    let s = user_add(&mut db, &aor, &password).await?;
                    Ok(format!("added subscriber {}@{}\n", s.username, s.domain))
                }
                UserCmd::Passwd { aor, password } => {
                    let s = user_passwd(&mut db, &aor, &password).await?;
                    Ok(format!("changed the password of {}@{}\n", s.username, s.domain))
                }
                UserCmd::Rm { aor } => {
                    let (u, d) = user_rm(&mut db, &aor).await?;
                    Ok(format!("removed subscriber {u}@{d}\n"))
                }
                UserCmd::List => Ok(format_users(&db.load_subscribers().await?, opts.json)),
            }
        }
        Command::Domain { cmd, opts } => {
            let mut db = open(&opts.db).await?;
            match cmd {
                DomainCmd::Add { domain, did } => {
                    let d = domain_add(&mut db, &domain, did.as_deref()).await?;
                    Ok(format!("added domain {}\n", d.domain))
                }
                DomainCmd::Rm { domain } => {
                    let d = domain_rm(&mut db, &domain).await?;
                    Ok(format!("removed domain {d}\n"))
                }
                DomainCmd::List => Ok(format_domains(&db.load_domains().await?, opts.json)),
            }
        }
        Command::Trusted { cmd, opts } => {
            let mut db = open(&opts.db).await?;
            match cmd {
                TrustedCmd::Add {
                    ip,
                    proto,
                    from_pattern,
                    tag,
                    ruri_pattern,
                    priority,
                } => {
                    let row = trusted_row(
                        &ip,
                        proto.as_deref(),
                        from_pattern.as_deref(),
                        tag.as_deref(),
                        ruri_pattern.as_deref(),
                        priority,
                    )?;
                    let id = db.add_trusted(&row).await?;
                    Ok(format!("added trusted peer {} ({}), id {id}\n", row.src_ip, row.proto))
                }
                TrustedCmd::Rm { ip } => {
                    let (ip, n) = trusted_rm(&mut db, &ip).await?;
                    Ok(format!("removed {n} trusted entr{} of {ip}\n", if n == 1 { "y" } else { "ies" }))
                }
                TrustedCmd::List => Ok(format_trusted(&db.load_trusted().await?, opts.json)),
            }
        }
        Command::Alias { cmd, opts } => {
            let mut db = open(&opts.db).await?;
            match cmd {
                AliasCmd::Add { alias, target } => {
                    let b = alias_add(&mut db, &alias, &target).await?;
                    Ok(format!("added alias {} -> {}\n", aor_of(&b), b.contact))
                }
                AliasCmd::Rm { alias } => {
                    let (u, d) = alias_rm(&mut db, &alias).await?;
                    Ok(format!("removed alias {u}@{d}\n"))
                }
                AliasCmd::List => Ok(format_aliases(&db.load_bindings(UlTable::Aliases).await?, opts.json)),
            }
        }
        Command::Ul {
            cmd: UlCmd::Show { aor },
            opts,
        } => {
            let mut db = open(&opts.db).await?;
            let rows = ul_show(&mut db, aor.as_deref()).await?;
            Ok(format_bindings(&rows, Utc::now().naive_utc(), opts.json))
        }
    }
}

// ------------------------------------------------------------------ commands

/// Connects for an admin command; a SQLite database is created and
/// migrated on the spot (as the proxy does at start), PostgreSQL and MySQL
/// must have been migrated with `serlua db migrate` (a missing table says
/// so).
pub async fn open(url: &str) -> Result<Db, AdminError> {
    let mut db = Db::connect(url).await?;
    if db.backend() == Backend::Sqlite {
        db.migrate().await?;
    }
    Ok(db)
}

/// Splits an address-of-record — `user@domain`, optionally with a `sip:`
/// or `sips:` scheme — into user and lower-case domain, as `kamctl` reads
/// its AOR arguments. Refuses a missing or empty user or domain, spaces,
/// URI parameters, a port, and values longer than Kamailio's columns.
pub fn parse_aor(s: &str) -> Result<(String, String), AdminError> {
    let what = || format!("'{s}' is not an address of record: expected user@domain");
    let lower = s.to_ascii_lowercase();
    let rest = if lower.starts_with("sip:") {
        &s[4..]
    } else if lower.starts_with("sips:") {
        &s[5..]
    } else {
        s
    };
    let Some((user, domain)) = rest.split_once('@') else {
        return input(what());
    };
    if user.is_empty() || domain.is_empty() || domain.contains('@') {
        return input(what());
    }
    if user
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, ':' | ';' | '?' | '<' | '>' | '"'))
    {
        return input(format!("'{s}': the user part '{user}' has characters a SIP user cannot have"));
    }
    if user.chars().count() > MAX_USER {
        return input(format!("'{s}': the user part is longer than {MAX_USER} characters"));
    }
    let domain = check_domain(domain).map_err(|why| AdminError::Input(format!("'{s}': {why}")))?;
    Ok((user.to_string(), domain))
}

/// A host name or IP address as stored in `domain` columns: lower-case,
/// no port.
fn check_domain(d: &str) -> Result<String, String> {
    let d = d.to_ascii_lowercase();
    if d.chars().count() > MAX_DOMAIN {
        return Err(format!("the domain is longer than {MAX_DOMAIN} characters"));
    }
    if let Some(v6) = d.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        return match v6.parse::<std::net::Ipv6Addr>() {
            Ok(_) => Ok(d),
            Err(_) => Err(format!("'{d}' is not an IPv6 address")),
        };
    }
    let label_ok = |l: &str| !l.is_empty() && l.len() <= 63 && !l.starts_with('-') && !l.ends_with('-');
    let chars_ok = d.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if !chars_ok || !d.trim_end_matches('.').split('.').all(label_ok) {
        let why = if d.contains(':') {
            " (no port: a domain is a host name)"
        } else {
            ""
        };
        return Err(format!("'{d}' is not a domain name{why}"));
    }
    Ok(d)
}

fn check_password(p: &str) -> Result<(), AdminError> {
    if p.is_empty() {
        return input("the password is empty".to_string());
    }
    if p.chars().count() > MAX_PASSWORD {
        return input(format!(
            "the password is longer than {MAX_PASSWORD} characters (Kamailio's subscriber.password)"
        ));
    }
    Ok(())
}

/// `serlua user add AOR PASSWORD` (kamctl add): inserts a `subscriber`
/// row with the clear-text password and Kamailio's `ha1`/`ha1b` (realm =
/// domain). A subscriber that exists is a `Duplicate` error.
pub async fn user_add(db: &mut Db, aor: &str, password: &str) -> Result<Subscriber, AdminError> {
    let (user, domain) = parse_aor(aor)?;
    check_password(password)?;
    let s = Subscriber::new(&user, &domain, password);
    db.add_subscriber(&s).await?;
    Ok(s)
}

/// `serlua user passwd AOR PASSWORD` (kamctl passwd): replaces the
/// password and both digests; an unknown subscriber is an error.
pub async fn user_passwd(db: &mut Db, aor: &str, password: &str) -> Result<Subscriber, AdminError> {
    let (user, domain) = parse_aor(aor)?;
    check_password(password)?;
    let s = Subscriber::new(&user, &domain, password);
    if !db.set_password(&user, &domain, &s.password, &s.ha1, &s.ha1b).await? {
        return input(format!("no subscriber {user}@{domain}"));
    }
    Ok(s)
}

/// `serlua user rm AOR` (kamctl rm): deletes the `subscriber` row; an
/// unknown subscriber is an error. Bindings and aliases are left alone.
pub async fn user_rm(db: &mut Db, aor: &str) -> Result<(String, String), AdminError> {
    let (user, domain) = parse_aor(aor)?;
    if !db.remove_subscriber(&user, &domain).await? {
        return input(format!("no subscriber {user}@{domain}"));
    }
    Ok((user, domain))
}

/// `serlua domain add DOMAIN` (kamctl domain add): inserts a `domain`
/// row (lower-case); an existing domain is a `Duplicate` error.
pub async fn domain_add(db: &mut Db, domain: &str, did: Option<&str>) -> Result<DomainRow, AdminError> {
    let domain = check_domain(domain).map_err(AdminError::Input)?;
    if let Some(did) = did {
        if did.is_empty() || did.chars().count() > MAX_DOMAIN {
            return input(format!("the did must be 1 to {MAX_DOMAIN} characters"));
        }
    }
    let row = DomainRow {
        domain,
        did: did.map(str::to_string),
    };
    db.add_domain(&row).await?;
    Ok(row)
}

/// `serlua domain rm DOMAIN` (kamctl domain rm); an unknown domain is an
/// error.
pub async fn domain_rm(db: &mut Db, domain: &str) -> Result<String, AdminError> {
    let domain = check_domain(domain).map_err(AdminError::Input)?;
    if !db.remove_domain(&domain).await? {
        return input(format!("no domain {domain}"));
    }
    Ok(domain)
}

fn check_pattern(what: &str, p: &str) -> Result<(), AdminError> {
    if p.chars().count() > MAX_PATTERN {
        return input(format!(
            "the {what} is longer than {MAX_PATTERN} characters (Kamailio's trusted column)"
        ));
    }
    if let Err(e) = regex::RegexBuilder::new(p).case_insensitive(true).build() {
        let first = e.to_string().lines().last().unwrap_or("").trim().to_string();
        return input(format!("the {what} '{p}' is not a valid regular expression: {first}"));
    }
    Ok(())
}

fn parse_ip(ip: &str) -> Result<IpAddr, AdminError> {
    let bare = ip.strip_prefix('[').and_then(|r| r.strip_suffix(']')).unwrap_or(ip);
    bare.parse::<IpAddr>()
        .map_err(|_| AdminError::Input(format!("'{ip}' is not an IP address")))
}

/// Checks the arguments of `serlua trusted add IP [PROTO] [FROM_PATTERN]
/// [TAG]` (kamctl trusted add) and builds the `trusted` row: the IP must
/// parse (stored in canonical form), PROTO is one of [`TRUSTED_PROTOS`]
/// (default `any`), the patterns must compile as (case-insensitive)
/// regular expressions; an empty pattern or tag means none.
pub fn trusted_row(
    ip: &str,
    proto: Option<&str>,
    from_pattern: Option<&str>,
    tag: Option<&str>,
    ruri_pattern: Option<&str>,
    priority: i32,
) -> Result<TrustedRow, AdminError> {
    let src_ip = parse_ip(ip)?.to_string();
    let proto = proto.unwrap_or("any").to_ascii_lowercase();
    if !TRUSTED_PROTOS.contains(&proto.as_str()) {
        return input(format!(
            "'{proto}' is not a protocol: expected one of {}",
            TRUSTED_PROTOS.join(", ")
        ));
    }
    let from_pattern = from_pattern.filter(|p| !p.is_empty());
    let ruri_pattern = ruri_pattern.filter(|p| !p.is_empty());
    if let Some(p) = from_pattern {
        check_pattern("From pattern", p)?;
    }
    if let Some(p) = ruri_pattern {
        check_pattern("Request-URI pattern", p)?;
    }
    let tag = tag.filter(|t| !t.is_empty());
    if tag.is_some_and(|t| t.chars().count() > MAX_TAG) {
        return input(format!("the tag is longer than {MAX_TAG} characters"));
    }
    Ok(TrustedRow {
        id: None,
        src_ip,
        proto,
        from_pattern: from_pattern.map(str::to_string),
        ruri_pattern: ruri_pattern.map(str::to_string),
        tag: tag.map(str::to_string),
        priority,
    })
}

/// `serlua trusted rm IP` (kamctl trusted rm): deletes every row of that
/// source IP and returns the canonical IP and the count; none is an error.
pub async fn trusted_rm(db: &mut Db, ip: &str) -> Result<(String, usize), AdminError> {
    let ip = parse_ip(ip)?.to_string();
    match db.remove_trusted_ip(&ip).await? {
        0 => input(format!("no trusted entry for {ip}")),
        n => Ok((ip, n)),
    }
}

/// The `ruid` of the alias of `user@domain`: derived from the AOR, so two
/// concurrent `alias add` of one alias collide on the unique `ruid`.
fn alias_ruid(user: &str, domain: &str) -> String {
    let digest = Md5::digest(format!("{user}@{domain}").as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("alias-{hex}")
}

/// A target URI as stored in `aliases.contact`: `sip:`, `sips:` or `tel:`
/// (`sip:` added to a bare `user@host`).
fn parse_target(t: &str) -> Result<String, AdminError> {
    let lower = t.to_ascii_lowercase();
    let uri = if ["sip:", "sips:", "tel:"].iter().any(|s| lower.starts_with(s)) {
        t.to_string()
    } else {
        format!("sip:{t}")
    };
    let body = uri.split_once(':').map(|(_, b)| b).unwrap_or("");
    if body.is_empty() || uri.chars().any(|c| c.is_whitespace() || c.is_control() || c == '<' || c == '>') {
        return input(format!("'{t}' is not a SIP URI"));
    }
    if uri.chars().count() > MAX_ALIAS_TARGET {
        return input(format!("the target URI is longer than {MAX_ALIAS_TARGET} characters"));
    }
    Ok(uri)
}

/// `serlua alias add ALIAS_URI TARGET_URI` (kamctl alias add): a
/// permanent binding in the `aliases` table — username and domain of the
/// alias, `contact` = the target, `expires` = [`db::permanent_expires`] —
/// which `lookup("aliases")` follows. An alias that exists is a
/// `Duplicate` error (remove it first).
pub async fn alias_add(db: &mut Db, alias: &str, target: &str) -> Result<BindingRow, AdminError> {
    let (user, domain) = parse_aor(alias)?;
    let contact = parse_target(target)?;
    let existing = db.load_aor_bindings(UlTable::Aliases, &user, Some(&domain)).await?;
    if let Some(b) = existing.first() {
        return Err(DbError::Duplicate(format!("alias {user}@{domain} (-> {})", b.contact)).into());
    }
    let now = Utc::now().naive_utc();
    let row = BindingRow {
        ruid: alias_ruid(&user, &domain),
        username: user,
        domain: Some(domain),
        contact,
        received: None,
        path: None,
        expires: db::permanent_expires(),
        q: 1.0,
        callid: "Default-Call-ID".to_string(),
        cseq: 1,
        last_modified: now,
        flags: 0,
        cflags: 0,
        user_agent: String::new(),
        socket: None,
        methods: None,
        instance: None,
        reg_id: 0,
    };
    db.insert_binding(UlTable::Aliases, &row).await?;
    Ok(row)
}

/// `serlua alias rm ALIAS_URI` (kamctl alias rm): deletes the alias's
/// rows; an unknown alias is an error.
pub async fn alias_rm(db: &mut Db, alias: &str) -> Result<(String, String), AdminError> {
    let (user, domain) = parse_aor(alias)?;
    if db.delete_aor_bindings(UlTable::Aliases, &user, Some(&domain)).await? == 0 {
        return input(format!("no alias {user}@{domain}"));
    }
    Ok((user, domain))
}

/// `serlua ul show [AOR]` (kamctl ul show): the `location` rows, all or
/// one AOR's, ordered by AOR and q.
pub async fn ul_show(db: &mut Db, aor: Option<&str>) -> Result<Vec<BindingRow>, AdminError> {
    match aor {
        Some(aor) => {
            let (user, domain) = parse_aor(aor)?;
            Ok(db.load_aor_bindings(UlTable::Location, &user, Some(&domain)).await?)
        }
        None => Ok(db.load_bindings(UlTable::Location).await?),
    }
}

// ------------------------------------------------------------------ output

/// `user@domain` of a binding (just `user` without a domain).
pub fn aor_of(b: &BindingRow) -> String {
    match &b.domain {
        Some(d) => format!("{}@{d}", b.username),
        None => b.username.clone(),
    }
}

/// True when a binding carries the NAT mark (see [`NAT_FLAG_BIT`]).
pub fn is_nat(b: &BindingRow) -> bool {
    (b.flags | b.cflags) & NAT_FLAG_BIT != 0
}

/// Aligned columns, two spaces apart, the last one unpadded; "(none)"
/// when there are no rows.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    if rows.is_empty() {
        return "(none)\n".to_string();
    }
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len() - 1;
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                l.push_str(cell);
            } else {
                let _ = write!(l, "{cell:<w$}  ");
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(headers.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_opt(s: Option<&str>) -> String {
    s.map(json_str).unwrap_or_else(|| "null".to_string())
}

fn json_array(items: Vec<String>) -> String {
    format!("[{}]\n", items.join(","))
}

/// `user list`: user, domain, whether a clear-text password is stored,
/// ha1 (never the password itself).
pub fn format_users(rows: &[Subscriber], json: bool) -> String {
    if json {
        return json_array(
            rows.iter()
                .map(|s| {
                    format!(
                        "{{\"username\":{},\"domain\":{},\"password_set\":{},\"ha1\":{},\"ha1b\":{}}}",
                        json_str(&s.username),
                        json_str(&s.domain),
                        !s.password.is_empty(),
                        json_str(&s.ha1),
                        json_str(&s.ha1b)
                    )
                })
                .collect(),
        );
    }
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|s| {
            vec![
                format!("{}@{}", s.username, s.domain),
                if s.password.is_empty() { "no" } else { "yes" }.to_string(),
                s.ha1.clone(),
            ]
        })
        .collect();
    table(&["AOR", "PASSWORD", "HA1"], &rows)
}

/// `domain list`: domain and did.
pub fn format_domains(rows: &[DomainRow], json: bool) -> String {
    if json {
        return json_array(
            rows.iter()
                .map(|d| format!("{{\"domain\":{},\"did\":{}}}", json_str(&d.domain), json_opt(d.did.as_deref())))
                .collect(),
        );
    }
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|d| vec![d.domain.clone(), d.did.clone().unwrap_or_default()])
        .collect();
    table(&["DOMAIN", "DID"], &rows)
}

/// `trusted list`: every column of `trusted`, highest priority first.
pub fn format_trusted(rows: &[TrustedRow], json: bool) -> String {
    if json {
        return json_array(
            rows.iter()
                .map(|t| {
                    format!(
                        "{{\"id\":{},\"src_ip\":{},\"proto\":{},\"from_pattern\":{},\"ruri_pattern\":{},\"tag\":{},\"priority\":{}}}",
                        t.id.map(|i| i.to_string()).unwrap_or_else(|| "null".into()),
                        json_str(&t.src_ip),
                        json_str(&t.proto),
                        json_opt(t.from_pattern.as_deref()),
                        json_opt(t.ruri_pattern.as_deref()),
                        json_opt(t.tag.as_deref()),
                        t.priority
                    )
                })
                .collect(),
        );
    }
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|t| {
            vec![
                t.id.map(|i| i.to_string()).unwrap_or_default(),
                t.src_ip.clone(),
                t.proto.clone(),
                t.from_pattern.clone().unwrap_or_default(),
                t.ruri_pattern.clone().unwrap_or_default(),
                t.tag.clone().unwrap_or_default(),
                t.priority.to_string(),
            ]
        })
        .collect();
    table(&["ID", "SRC_IP", "PROTO", "FROM_PATTERN", "RURI_PATTERN", "TAG", "PRIORITY"], &rows)
}

fn fmt_time(t: NaiveDateTime) -> String {
    t.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// `alias list`: alias AOR, target, expiry ("permanent" for
/// [`db::is_permanent`] rows).
pub fn format_aliases(rows: &[BindingRow], json: bool) -> String {
    if json {
        return json_array(
            rows.iter()
                .map(|b| {
                    format!(
                        "{{\"alias\":{},\"target\":{},\"expires\":{},\"permanent\":{}}}",
                        json_str(&aor_of(b)),
                        json_str(&b.contact),
                        json_str(&fmt_time(b.expires)),
                        db::is_permanent(b.expires)
                    )
                })
                .collect(),
        );
    }
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|b| {
            let exp = if db::is_permanent(b.expires) {
                "permanent".to_string()
            } else {
                fmt_time(b.expires)
            };
            vec![aor_of(b), b.contact.clone(), exp]
        })
        .collect();
    table(&["ALIAS", "TARGET", "EXPIRES"], &rows)
}

/// Seconds left before `expires`: "permanent", "expired" or "N s".
fn time_left(expires: NaiveDateTime, now: NaiveDateTime) -> String {
    if db::is_permanent(expires) {
        return "permanent".to_string();
    }
    let left = (expires - now).num_seconds();
    if left <= 0 { "expired".to_string() } else { format!("{left} s") }
}

/// `ul show`: per binding its AOR, contact, received address, expiry (UTC)
/// and seconds left at `now`, q, raw `flags`/`cflags`, the NAT mark
/// ([`is_nat`]) and user agent; JSON adds every other column.
pub fn format_bindings(rows: &[BindingRow], now: NaiveDateTime, json: bool) -> String {
    if json {
        return json_array(
            rows.iter()
                .map(|b| {
                    let left = if db::is_permanent(b.expires) {
                        "null".to_string()
                    } else {
                        (b.expires - now).num_seconds().max(0).to_string()
                    };
                    format!(
                        "{{\"aor\":{},\"ruid\":{},\"contact\":{},\"received\":{},\"path\":{},\"expires\":{},\"expires_in\":{left},\
                         \"q\":{},\"callid\":{},\"cseq\":{},\"last_modified\":{},\"flags\":{},\"cflags\":{},\"nat\":{},\
                         \"user_agent\":{},\"socket\":{},\"methods\":{},\"instance\":{},\"reg_id\":{}}}",
                        json_str(&aor_of(b)),
                        json_str(&b.ruid),
                        json_str(&b.contact),
                        json_opt(b.received.as_deref()),
                        json_opt(b.path.as_deref()),
                        json_str(&fmt_time(b.expires)),
                        format_q(b.q),
                        json_str(&b.callid),
                        b.cseq,
                        json_str(&fmt_time(b.last_modified)),
                        b.flags,
                        b.cflags,
                        is_nat(b),
                        json_str(&b.user_agent),
                        json_opt(b.socket.as_deref()),
                        b.methods.map(|m| m.to_string()).unwrap_or_else(|| "null".into()),
                        json_opt(b.instance.as_deref()),
                        b.reg_id
                    )
                })
                .collect(),
        );
    }
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|b| {
            vec![
                aor_of(b),
                b.contact.clone(),
                b.received.clone().unwrap_or_default(),
                fmt_time(b.expires),
                time_left(b.expires, now),
                format_q(b.q),
                b.flags.to_string(),
                b.cflags.to_string(),
                if is_nat(b) { "nat" } else { "" }.to_string(),
                b.user_agent.clone(),
            ]
        })
        .collect();
    table(
        &[
            "AOR",
            "CONTACT",
            "RECEIVED",
            "EXPIRES (UTC)",
            "LEFT",
            "Q",
            "FLAGS",
            "CFLAGS",
            "NAT",
            "USER-AGENT",
        ],
        &rows,
    )
}

/// A q-value with at most three decimals (RFC 3261 §25.1 `qvalue`).
fn format_q(q: f32) -> String {
    let s = format!("{q:.3}");
    let s = s.trim_end_matches('0');
    s.strip_suffix('.').map(|i| format!("{i}.0")).unwrap_or_else(|| s.to_string())
}
