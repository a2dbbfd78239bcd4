//! The database behind the in-memory tables (diesel, through diesel-async
//! so all three backends use pure-Rust drivers): SQLite (embedded, the
//! default), PostgreSQL and MySQL/MariaDB, one code path. Table and column
//! names follow Kamailio's schema so an existing SER/Kamailio database
//! works unchanged. Migrations live in `schema/<backend>/`.
//!
//! Nothing here runs on a worker: the proxy's hot paths read in-memory
//! tables and queue their writes (see `store`); this module is used by the
//! database thread and by the admin CLI.
//!
//! A [`Db`] is one connection. Its methods are `async` and need a tokio
//! runtime with time and I/O enabled (`enable_all`), current-thread or
//! multi-thread. Datetimes are UTC and whole seconds, as Kamailio's.
//!
//! `subscriber`, `domain` and `trusted` go through diesel's query builder;
//! `location`/`aliases` through `sql_query` with typed binds, because the
//! same code serves two tables, their 18 columns exceed the 16 that diesel's
//! `table!` allows without its `32-column-tables` feature, and SQLite needs
//! its datetimes normalised in SQL (see [`Db::load_bindings`]).

pub mod model;

use std::time::Duration;

use chrono::{NaiveDateTime, Timelike, Utc};
use diesel::prelude::{BoolExpressionMethods, ExpressionMethods, QueryDsl};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::sql_types::{BigInt, Float, Integer, Nullable, Text, Timestamp};
use diesel::{QueryableByName, SqliteConnection};
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_async::{AsyncConnection, AsyncMysqlConnection, AsyncPgConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

pub use model::{BindingRow, DomainRow, Subscriber, TrustedRow, UlOp, UlTable, ha1, ha1b, is_permanent, permanent_expires};

/// A database error, for the admin (one line) and the logs.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The URL is not one serlua understands.
    #[error("bad database URL '{0}': {1}")]
    Url(String, String),
    /// Connecting failed (server down, refused, bad credentials, …).
    #[error("cannot connect to {0}: {1}")]
    Connect(String, String),
    /// A row that must be unique exists already.
    #[error("{0} already exists")]
    Duplicate(String),
    /// Migrations failed, or an existing table lacks a column serlua needs.
    #[error("migration failed: {0}")]
    Migration(String),
    /// The tables are missing: a PostgreSQL or MySQL database that was
    /// never migrated (the payload is the URL, without its password).
    #[error("{0} has no serlua/Kamailio tables; run `serlua db migrate --db {0}` first")]
    NotMigrated(String),
    /// Any other query error.
    #[error("database error: {0}")]
    Query(String),
}

/// Which database engine a URL names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite://PATH`, a plain path, or `sqlite::memory:`.
    Sqlite,
    /// `postgres://` or `postgresql://`.
    Postgres,
    /// `mysql://` (MySQL and MariaDB).
    Mysql,
}

impl Backend {
    /// The backend's name, as in `schema/<name>/`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
            Backend::Mysql => "mysql",
        }
    }
}

/// The default database: `serlua.db` in the working directory.
pub const DEFAULT_URL: &str = "sqlite://serlua.db";

/// How long [`Db::connect`] waits for a PostgreSQL or MySQL server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long SQLite waits for a lock held by another process (the proxy
/// and the admin CLI share the file) before failing with "database is
/// locked".
const SQLITE_BUSY_TIMEOUT_MS: u32 = 5000;

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("schema/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("schema/postgres");
const MYSQL_MIGRATIONS: EmbeddedMigrations = embed_migrations!("schema/mysql");

/// The columns serlua reads or writes, per table; [`Db::migrate`] checks
/// that an existing (Kamailio-made) table has every one of them.
const REQUIRED_COLUMNS: &[(&str, &[&str])] = &[
    ("version", &["table_name", "table_version"]),
    ("subscriber", &["username", "domain", "password", "ha1", "ha1b"]),
    ("location", &UL_COLUMNS),
    ("aliases", &UL_COLUMNS),
    ("domain", &["domain", "did", "last_modified"]),
    (
        "trusted",
        &["id", "src_ip", "proto", "from_pattern", "ruri_pattern", "tag", "priority"],
    ),
];

/// The usrloc columns serlua uses, in bind order (Kamailio's `server_id`,
/// `connection_id`, `keepalive` and `partition` keep their defaults).
const UL_COLUMNS: [&str; 18] = [
    "ruid",
    "username",
    "domain",
    "contact",
    "received",
    "path",
    "expires",
    "q",
    "callid",
    "cseq",
    "last_modified",
    "flags",
    "cflags",
    "user_agent",
    "socket",
    "methods",
    "instance",
    "reg_id",
];

mod tables {
    diesel::table! {
        version (id) {
            id -> Integer,
            table_name -> Text,
            table_version -> Integer,
        }
    }
    diesel::table! {
        subscriber (id) {
            id -> Integer,
            username -> Text,
            domain -> Text,
            password -> Text,
            ha1 -> Text,
            ha1b -> Text,
        }
    }
    diesel::table! {
        domain (id) {
            id -> Integer,
            #[sql_name = "domain"]
            name -> Text,
            did -> Nullable<Text>,
            last_modified -> Timestamp,
        }
    }
    diesel::table! {
        trusted (id) {
            id -> Integer,
            src_ip -> Text,
            proto -> Text,
            from_pattern -> Nullable<Text>,
            ruri_pattern -> Nullable<Text>,
            tag -> Nullable<Text>,
            priority -> Integer,
        }
    }
}

#[allow(clippy::large_enum_variant)] // one per Db, never moved in bulk
enum Conn {
    Sqlite(SyncConnectionWrapper<SqliteConnection>),
    Postgres(AsyncPgConnection),
    Mysql(AsyncMysqlConnection),
}

/// One connection to serlua's database (Kamailio's tables), on any of the
/// three backends. Every method maps diesel errors to [`DbError`]: unique
/// violations become [`DbError::Duplicate`], missing tables
/// [`DbError::NotMigrated`].
pub struct Db {
    /// None only after a migration task died (a panic); every call then fails.
    conn: Option<Conn>,
    backend: Backend,
    url: String,
}

/// Runs `$body` with `$c` bound to the concrete connection, whatever the
/// backend (the body is compiled once per connection type).
macro_rules! on_conn {
    ($db:expr, $c:ident => $body:expr) => {
        match $db.conn_mut()? {
            Conn::Sqlite($c) => $body,
            Conn::Postgres($c) => $body,
            Conn::Mysql($c) => $body,
        }
    };
}

/// Binds the 18 [`UL_COLUMNS`] of a [`BindingRow`] to a `sql_query`.
macro_rules! bind_binding {
    ($q:expr, $r:expr) => {
        $q.bind::<Text, _>(&$r.ruid)
            .bind::<Text, _>(&$r.username)
            .bind::<Nullable<Text>, _>(&$r.domain)
            .bind::<Text, _>(&$r.contact)
            .bind::<Nullable<Text>, _>(&$r.received)
            .bind::<Nullable<Text>, _>(&$r.path)
            .bind::<Timestamp, _>(whole_seconds($r.expires))
            .bind::<Float, _>($r.q)
            .bind::<Text, _>(&$r.callid)
            .bind::<Integer, _>($r.cseq)
            .bind::<Timestamp, _>(whole_seconds($r.last_modified))
            .bind::<Integer, _>($r.flags)
            .bind::<Integer, _>($r.cflags)
            .bind::<Text, _>(&$r.user_agent)
            .bind::<Nullable<Text>, _>(&$r.socket)
            .bind::<Nullable<Integer>, _>($r.methods)
            .bind::<Nullable<Text>, _>(&$r.instance)
            .bind::<Integer, _>($r.reg_id)
    };
}

#[derive(QueryableByName)]
struct BindingSql {
    #[diesel(sql_type = Text)]
    ruid: String,
    #[diesel(sql_type = Text)]
    username: String,
    #[diesel(sql_type = Nullable<Text>)]
    domain: Option<String>,
    #[diesel(sql_type = Text)]
    contact: String,
    #[diesel(sql_type = Nullable<Text>)]
    received: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    path: Option<String>,
    #[diesel(sql_type = Timestamp)]
    expires: NaiveDateTime,
    #[diesel(sql_type = Float)]
    q: f32,
    #[diesel(sql_type = Text)]
    callid: String,
    #[diesel(sql_type = Integer)]
    cseq: i32,
    #[diesel(sql_type = Timestamp)]
    last_modified: NaiveDateTime,
    #[diesel(sql_type = Integer)]
    flags: i32,
    #[diesel(sql_type = Integer)]
    cflags: i32,
    #[diesel(sql_type = Text)]
    user_agent: String,
    #[diesel(sql_type = Nullable<Text>)]
    socket: Option<String>,
    #[diesel(sql_type = Nullable<Integer>)]
    methods: Option<i32>,
    #[diesel(sql_type = Nullable<Text>)]
    instance: Option<String>,
    #[diesel(sql_type = Integer)]
    reg_id: i32,
}

impl From<BindingSql> for BindingRow {
    fn from(b: BindingSql) -> BindingRow {
        BindingRow {
            ruid: b.ruid,
            username: b.username,
            domain: b.domain,
            contact: b.contact,
            received: b.received,
            path: b.path,
            expires: whole_seconds(b.expires),
            q: b.q,
            callid: b.callid,
            cseq: b.cseq,
            last_modified: whole_seconds(b.last_modified),
            flags: b.flags,
            cflags: b.cflags,
            user_agent: b.user_agent,
            socket: b.socket,
            methods: b.methods,
            instance: b.instance,
            reg_id: b.reg_id,
        }
    }
}

#[derive(QueryableByName)]
struct LastId {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

#[derive(QueryableByName)]
struct DataVersion {
    #[diesel(sql_type = BigInt)]
    data_version: i64,
}

#[derive(QueryableByName)]
struct TableEngine {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Nullable<Text>)]
    engine: Option<String>,
}

/// The usrloc SQL for one backend and table (placeholders `?` or `$n`;
/// SQLite datetimes normalised, see [`Db::load_bindings`]).
struct UlSql {
    backend: Backend,
    table: &'static str,
}

impl UlSql {
    fn ph(&self, n: usize) -> String {
        match self.backend {
            Backend::Postgres => format!("${n}"),
            _ => "?".to_string(),
        }
    }

    /// A datetime column as a comparable, whole-second value. On SQLite the
    /// column may hold text (serlua, Kamailio's defaults) or a Julian-day
    /// REAL (what Kamailio's db_sqlite writes, half a second early);
    /// `datetime(col, '+0.5 seconds')` turns both into the same
    /// 'YYYY-MM-DD HH:MM:SS' text, rounded as Kamailio reads it back.
    fn dt(&self, col: &str) -> String {
        match self.backend {
            Backend::Sqlite => format!("datetime({col}, '+0.5 seconds')"),
            _ => col.to_string(),
        }
    }

    fn select(&self, filter: &str) -> String {
        let cols: Vec<String> = UL_COLUMNS
            .iter()
            .map(|c| match *c {
                "expires" | "last_modified" if self.backend == Backend::Sqlite => format!("{} AS {c}", self.dt(c)),
                _ => c.to_string(),
            })
            .collect();
        format!(
            "SELECT {} FROM {} {filter} ORDER BY username, domain, q DESC, ruid",
            cols.join(", "),
            self.table
        )
    }

    fn insert(&self) -> String {
        let phs: Vec<String> = (1..=UL_COLUMNS.len()).map(|n| self.ph(n)).collect();
        format!("INSERT INTO {} ({}) VALUES ({})", self.table, UL_COLUMNS.join(", "), phs.join(", "))
    }

    fn upsert(&self) -> String {
        let rest = &UL_COLUMNS[1..];
        match self.backend {
            Backend::Mysql => {
                let set: Vec<String> = rest.iter().map(|c| format!("{c} = VALUES({c})")).collect();
                format!("{} ON DUPLICATE KEY UPDATE {}", self.insert(), set.join(", "))
            }
            _ => {
                let set: Vec<String> = rest.iter().map(|c| format!("{c} = excluded.{c}")).collect();
                format!("{} ON CONFLICT (ruid) DO UPDATE SET {}", self.insert(), set.join(", "))
            }
        }
    }

    fn delete_ruid(&self) -> String {
        format!("DELETE FROM {} WHERE ruid = {}", self.table, self.ph(1))
    }

    fn aor_filter(&self, with_domain: bool) -> String {
        if with_domain {
            format!("WHERE username = {} AND domain = {}", self.ph(1), self.ph(2))
        } else {
            format!("WHERE username = {} AND domain IS NULL", self.ph(1))
        }
    }

    /// Expired rows; Kamailio's permanent contacts (`expires` = the epoch)
    /// are left alone, as Kamailio's usrloc timer does.
    fn delete_expired(&self) -> String {
        let e = self.dt("expires");
        format!("DELETE FROM {} WHERE {e} < {} AND {e} >= {}", self.table, self.ph(1), self.ph(2))
    }
}

/// Drops fractional seconds: Kamailio's datetimes are whole seconds
/// (`time_t`), MySQL's DATETIME too.
fn whole_seconds(t: NaiveDateTime) -> NaiveDateTime {
    t.with_nanosecond(0).unwrap_or(t)
}

/// The start of the day after the epoch: anything earlier is Kamailio's
/// "permanent" (`expires = 0`, possibly written in local time).
fn epoch_floor() -> NaiveDateTime {
    chrono::NaiveDate::from_ymd_opt(1970, 1, 2)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .expect("valid date")
}

/// Collapses a multi-line driver message into one line.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The URL without its password (in the user info or a `password=`
/// query parameter), for messages.
pub fn redact_url(url: &str) -> String {
    let Some(i) = url.find("://") else { return url.to_string() };
    let (scheme, rest) = (&url[..i + 3], &url[i + 3..]);
    let auth_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (auth, tail) = rest.split_at(auth_end);
    let auth = match auth.rfind('@') {
        Some(at) => {
            let user = auth[..at].split(':').next().unwrap_or("");
            format!("{user}@{}", &auth[at + 1..])
        }
        None => auth.to_string(),
    };
    let tail = match tail.find('?') {
        Some(q) => {
            let params: Vec<String> = tail[q + 1..]
                .split('&')
                .map(|p| {
                    if p.to_ascii_lowercase().starts_with("password=") {
                        "password=***".to_string()
                    } else {
                        p.to_string()
                    }
                })
                .collect();
            format!("{}?{}", &tail[..q], params.join("&"))
        }
        None => tail.to_string(),
    };
    format!("{scheme}{auth}{tail}")
}

enum Target {
    Sqlite(String),
    Postgres(String),
    Mysql(String),
}

fn parse_url(url: &str) -> Result<Target, DbError> {
    let bad = |why: &str| DbError::Url(redact_url(url), why.to_string());
    if url == "sqlite::memory:" || url == "sqlite://:memory:" {
        return Ok(Target::Sqlite(":memory:".to_string()));
    }
    if let Some(path) = url.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err(bad("no file name after sqlite://"));
        }
        return Ok(Target::Sqlite(path.to_string()));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Target::Postgres(url.to_string()));
    }
    if url.starts_with("mysql://") {
        return Ok(Target::Mysql(url.to_string()));
    }
    if let Some(rest) = url.strip_prefix("mariadb://") {
        return Ok(Target::Mysql(format!("mysql://{rest}")));
    }
    if !url.contains("://") && url.ends_with(".db") {
        return Ok(Target::Sqlite(url.to_string()));
    }
    Err(bad(
        "expected sqlite://PATH, a PATH ending in .db, sqlite::memory:, postgres://… or mysql://…",
    ))
}

/// tokio-postgres reports a failed TCP connect as just "error connecting
/// to server" once diesel-async has converted it; find the cause (refused,
/// unreachable, unknown host) by trying the server's address once more.
async fn with_socket_cause(msg: String, url: &str, default_port: u16) -> String {
    if !msg.ends_with("error connecting to server") {
        return msg;
    }
    let Some(rest) = url.split_once("://").map(|(_, r)| r) else {
        return msg;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let hostport = authority.rsplit_once('@').map(|(_, h)| h).unwrap_or(authority);
    if hostport.is_empty() || hostport.contains(',') {
        return msg;
    }
    let (host, port) = match hostport.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':').and_then(|p| p.parse().ok()).unwrap_or(default_port)),
            None => return msg,
        },
        None => match hostport.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().unwrap_or(default_port)),
            None => (hostport, default_port),
        },
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect((host, port))).await {
        Ok(Err(e)) => format!("{msg}: {e}"),
        _ => msg,
    }
}

/// Runs the embedded migrations on a connection, synchronously (call it
/// from a blocking task): diesel's migration harness over diesel-async's
/// [`AsyncConnectionWrapper`]. Returns the connection in every case.
fn run_migrations(conn: Conn) -> (Conn, Result<(), String>) {
    macro_rules! run {
        ($c:expr, $variant:ident, $migrations:expr) => {{
            let mut w: AsyncConnectionWrapper<_> = AsyncConnectionWrapper::from($c);
            let r = w.run_pending_migrations($migrations).map(|_| ()).map_err(|e| e.to_string());
            (Conn::$variant(w.into_inner()), r)
        }};
    }
    match conn {
        Conn::Sqlite(c) => run!(c, Sqlite, SQLITE_MIGRATIONS),
        Conn::Postgres(c) => run!(c, Postgres, POSTGRES_MIGRATIONS),
        Conn::Mysql(c) => run!(c, Mysql, MYSQL_MIGRATIONS),
    }
}

impl Db {
    /// Connects to `url`: `sqlite://PATH` (relative to the working
    /// directory, created if missing), a bare `PATH.db`, `sqlite::memory:`
    /// (a private in-memory database: every `Db` connected to it is its own,
    /// empty database), `postgres://user:pass@host:port/db` (or
    /// `postgresql://`; `?options=-csearch_path%3DSCHEMA` selects a schema)
    /// or `mysql://user:pass@host:port/db` (MySQL and MariaDB). A server
    /// that does not answer within [`CONNECT_TIMEOUT`] is an error. Does not
    /// migrate: call [`Db::migrate`].
    pub async fn connect(url: &str) -> Result<Db, DbError> {
        let shown = redact_url(url);
        let fail = |why: String| DbError::Connect(shown.clone(), one_line(&why));
        let (conn, backend) = match parse_url(url)? {
            Target::Sqlite(path) => {
                let mut c = SyncConnectionWrapper::<SqliteConnection>::establish(&path)
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                // Reading the schema fails now, not at the first query, when
                // the file is not a SQLite database.
                let setup = format!("PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}; SELECT count(*) FROM sqlite_master;");
                c.batch_execute(&setup).await.map_err(|e| fail(e.to_string()))?;
                (Conn::Sqlite(c), Backend::Sqlite)
            }
            Target::Postgres(u) => {
                let c = tokio::time::timeout(CONNECT_TIMEOUT, AsyncPgConnection::establish(&u))
                    .await
                    .map_err(|_| fail(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs())))?
                    .map_err(|e| e.to_string());
                let c = match c {
                    Ok(c) => c,
                    Err(e) => return Err(fail(with_socket_cause(e, &u, 5432).await)),
                };
                (Conn::Postgres(c), Backend::Postgres)
            }
            Target::Mysql(u) => {
                let c = tokio::time::timeout(CONNECT_TIMEOUT, AsyncMysqlConnection::establish(&u))
                    .await
                    .map_err(|_| fail(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs())))?
                    .map_err(|e| fail(e.to_string()))?;
                (Conn::Mysql(c), Backend::Mysql)
            }
        };
        Ok(Db {
            conn: Some(conn),
            backend,
            url: shown,
        })
    }

    /// The backend this connection talks to.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The URL connected to, without its password (for messages).
    pub fn url(&self) -> &str {
        &self.url
    }

    fn conn_mut(&mut self) -> Result<&mut Conn, DbError> {
        let url = &self.url;
        self.conn
            .as_mut()
            .ok_or_else(|| DbError::Query(format!("{url}: connection lost in a failed migration; reconnect")))
    }

    /// Maps a diesel error: unique violation → `Duplicate(what)`, missing
    /// table → `NotMigrated`, anything else → `Query` (one line).
    fn err(&self, e: DieselError, what: &str) -> DbError {
        match &e {
            DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _) => DbError::Duplicate(what.to_string()),
            DieselError::DatabaseError(_, info) => {
                let m = info.message();
                let missing_table = m.contains("no such table")
                    || (m.starts_with("relation ") && m.ends_with("does not exist"))
                    || (m.starts_with("Table ") && m.ends_with("doesn't exist"));
                if missing_table {
                    DbError::NotMigrated(self.url.clone())
                } else {
                    DbError::Query(one_line(&e.to_string()))
                }
            }
            _ => DbError::Query(one_line(&e.to_string())),
        }
    }

    /// Creates the tables serlua uses where they are missing — Kamailio
    /// 5.x's `version`, `subscriber`, `location`, `location_attrs`,
    /// `aliases`, `domain`, `domain_attrs` and `trusted`, with Kamailio's
    /// columns, defaults, indexes and `version` rows (what `kamdbctl
    /// create` makes) — then checks that every column serlua needs exists,
    /// so an existing Kamailio database is used as it is and an older one
    /// fails with the missing column named. Idempotent (diesel's migration
    /// table records what ran). Runs diesel_migrations on a blocking task.
    pub async fn migrate(&mut self) -> Result<(), DbError> {
        // Two proxies (or a proxy and `serlua user add`) starting on one new
        // SQLite file migrate it at the same moment; the loser of that race
        // finds the migrations applied when it tries again.
        let mut attempt = 0;
        loop {
            match self.migrate_once().await {
                Err(DbError::Migration(m))
                    if attempt < 3
                        && (m.contains("UNIQUE")
                            || m.contains("unique")
                            || m.contains("Duplicate")
                            || m.contains("already exists")
                            || m.contains("locked")) =>
                {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(200 * attempt)).await;
                }
                other => return other,
            }
        }
    }

    async fn migrate_once(&mut self) -> Result<(), DbError> {
        let url = self.url.clone();
        let conn = self
            .conn
            .take()
            .ok_or_else(|| DbError::Migration(format!("{url}: connection lost in an earlier failed migration")))?;
        let (conn, result) = tokio::task::spawn_blocking(move || run_migrations(conn))
            .await
            .map_err(|e| DbError::Migration(format!("{url}: migration task died: {e}")))?;
        self.conn = Some(conn);
        result.map_err(|e| DbError::Migration(format!("{url}: {}", one_line(&e))))?;
        self.check_columns().await?;
        if self.backend == Backend::Mysql {
            self.warn_non_transactional().await?;
        }
        Ok(())
    }

    async fn check_columns(&mut self) -> Result<(), DbError> {
        for (table, cols) in REQUIRED_COLUMNS {
            let all = format!("SELECT {} FROM {table} WHERE 1 = 0", cols.join(", "));
            let Err(first) = self.execute_sql(&all).await else { continue };
            for col in cols.iter() {
                if self.execute_sql(&format!("SELECT {col} FROM {table} WHERE 1 = 0")).await.is_err() {
                    return Err(DbError::Migration(format!(
                        "{}: table {table} has no column {col} (serlua needs Kamailio 5.x's {table} table; upgrade it with Kamailio's schema)",
                        self.url
                    )));
                }
            }
            return Err(DbError::Migration(format!("{}: table {table}: {first}", self.url)));
        }
        Ok(())
    }

    /// usrloc batches rely on transactions: a MyISAM table (old Kamailio
    /// scripts created `aliases` and `trusted` so) would apply half a batch.
    async fn warn_non_transactional(&mut self) -> Result<(), DbError> {
        let sql = "SELECT CAST(table_name AS CHAR) AS name, CAST(engine AS CHAR) AS engine FROM information_schema.tables \
                   WHERE table_schema = DATABASE() AND table_name IN ('location', 'aliases') AND engine <> 'InnoDB'";
        let rows: Result<Vec<TableEngine>, DieselError> = on_conn!(self, c => diesel::sql_query(sql).load(c).await);
        for t in rows.unwrap_or_default() {
            tracing::warn!(
                "{}: table {} uses the {} engine, which has no transactions: a failed usrloc batch may be half applied (ALTER TABLE {} ENGINE=InnoDB)",
                self.url,
                t.name,
                t.engine.as_deref().unwrap_or("?"),
                t.name
            );
        }
        Ok(())
    }

    /// Runs SQL statements as they are (maintenance and tests: e.g. a
    /// Kamailio DDL script). Several statements separated by `;` are
    /// allowed.
    pub async fn execute_sql(&mut self, sql: &str) -> Result<(), DbError> {
        let r = on_conn!(self, c => c.batch_execute(sql).await);
        r.map_err(|e| self.err(e, "row"))
    }

    /// SQLite's `PRAGMA data_version`: a number that changes when another
    /// connection (`serlua user add`, an admin's sqlite3, a second proxy)
    /// has committed to the database file since this connection last
    /// asked; this connection's own writes leave it alone. `None` on
    /// PostgreSQL and MySQL, which have no such counter: there every
    /// periodic reload reads the tables.
    pub async fn data_version(&mut self) -> Result<Option<i64>, DbError> {
        let Conn::Sqlite(c) = self.conn_mut()? else {
            return Ok(None);
        };
        let r: Result<Vec<DataVersion>, DieselError> = diesel::sql_query("PRAGMA data_version").load(c).await;
        let rows = r.map_err(|e| self.err(e, "data_version"))?;
        Ok(rows.into_iter().next().map(|v| v.data_version))
    }

    /// The `version` table (Kamailio's modules check it at start): table
    /// name and schema version, ordered by name.
    pub async fn load_versions(&mut self) -> Result<Vec<(String, i32)>, DbError> {
        use tables::version::dsl as v;
        let q = v::version.select((v::table_name, v::table_version)).order(v::table_name);
        let r: Result<Vec<(String, i32)>, _> = on_conn!(self, c => q.load(c).await);
        r.map_err(|e| self.err(e, "version"))
    }

    // ---------------------------------------------------------------- subscriber

    /// Every `subscriber` row (auth_db's table), ordered by domain and user.
    pub async fn load_subscribers(&mut self) -> Result<Vec<Subscriber>, DbError> {
        use tables::subscriber::dsl as s;
        let q = s::subscriber
            .select((s::username, s::domain, s::password, s::ha1, s::ha1b))
            .order((s::domain, s::username));
        type Row = (String, String, String, String, String);
        let r: Result<Vec<Row>, _> = on_conn!(self, c => q.load(c).await);
        let rows = r.map_err(|e| self.err(e, "subscriber"))?;
        Ok(rows
            .into_iter()
            .map(|(username, domain, password, ha1, ha1b)| Subscriber {
                username,
                domain,
                password,
                ha1,
                ha1b,
            })
            .collect())
    }

    /// Inserts a subscriber (`kamctl add`); `Duplicate` when
    /// username@domain exists.
    pub async fn add_subscriber(&mut self, sub: &Subscriber) -> Result<(), DbError> {
        use tables::subscriber::dsl as s;
        let q = diesel::insert_into(s::subscriber).values((
            s::username.eq(&sub.username),
            s::domain.eq(&sub.domain),
            s::password.eq(&sub.password),
            s::ha1.eq(&sub.ha1),
            s::ha1b.eq(&sub.ha1b),
        ));
        let r = on_conn!(self, c => q.execute(c).await);
        r.map(|_| ())
            .map_err(|e| self.err(e, &format!("subscriber {}@{}", sub.username, sub.domain)))
    }

    /// Replaces a subscriber's password and digests (`kamctl passwd`);
    /// false when there is no such subscriber.
    pub async fn set_password(&mut self, username: &str, domain: &str, password: &str, ha1: &str, ha1b: &str) -> Result<bool, DbError> {
        use tables::subscriber::dsl as s;
        let q = diesel::update(s::subscriber.filter(s::username.eq(username).and(s::domain.eq(domain)))).set((
            s::password.eq(password),
            s::ha1.eq(ha1),
            s::ha1b.eq(ha1b),
        ));
        let r = on_conn!(self, c => q.execute(c).await);
        r.map(|n| n > 0).map_err(|e| self.err(e, "subscriber"))
    }

    /// Deletes a subscriber (`kamctl rm`); false when there was none.
    pub async fn remove_subscriber(&mut self, username: &str, domain: &str) -> Result<bool, DbError> {
        use tables::subscriber::dsl as s;
        let q = diesel::delete(s::subscriber.filter(s::username.eq(username).and(s::domain.eq(domain))));
        let r = on_conn!(self, c => q.execute(c).await);
        r.map(|n| n > 0).map_err(|e| self.err(e, "subscriber"))
    }

    // ---------------------------------------------------------------- domain

    /// Every `domain` row (the domain module's table), ordered by name.
    pub async fn load_domains(&mut self) -> Result<Vec<DomainRow>, DbError> {
        use tables::domain::dsl as d;
        let q = d::domain.select((d::name, d::did)).order(d::name);
        let r: Result<Vec<(String, Option<String>)>, _> = on_conn!(self, c => q.load(c).await);
        let rows = r.map_err(|e| self.err(e, "domain"))?;
        Ok(rows.into_iter().map(|(domain, did)| DomainRow { domain, did }).collect())
    }

    /// Inserts a domain (`kamctl domain add`), `last_modified` = now;
    /// `Duplicate` when it exists.
    pub async fn add_domain(&mut self, row: &DomainRow) -> Result<(), DbError> {
        use tables::domain::dsl as d;
        let now = whole_seconds(Utc::now().naive_utc());
        let q = diesel::insert_into(d::domain).values((d::name.eq(&row.domain), d::did.eq(&row.did), d::last_modified.eq(now)));
        let r = on_conn!(self, c => q.execute(c).await);
        r.map(|_| ()).map_err(|e| self.err(e, &format!("domain {}", row.domain)))
    }

    /// Deletes a domain (`kamctl domain rm`); false when there was none.
    pub async fn remove_domain(&mut self, domain: &str) -> Result<bool, DbError> {
        use tables::domain::dsl as d;
        let q = diesel::delete(d::domain.filter(d::name.eq(domain)));
        let r = on_conn!(self, c => q.execute(c).await);
        r.map(|n| n > 0).map_err(|e| self.err(e, "domain"))
    }

    // ---------------------------------------------------------------- trusted

    /// Every `trusted` row (the permissions module's table), highest
    /// priority first, then by id.
    pub async fn load_trusted(&mut self) -> Result<Vec<TrustedRow>, DbError> {
        use tables::trusted::dsl as t;
        type Row = (i32, String, String, Option<String>, Option<String>, Option<String>, i32);
        let q = t::trusted
            .select((t::id, t::src_ip, t::proto, t::from_pattern, t::ruri_pattern, t::tag, t::priority))
            .order((t::priority.desc(), t::id.asc()));
        let r: Result<Vec<Row>, _> = on_conn!(self, c => q.load(c).await);
        let rows = r.map_err(|e| self.err(e, "trusted"))?;
        Ok(rows
            .into_iter()
            .map(|(id, src_ip, proto, from_pattern, ruri_pattern, tag, priority)| TrustedRow {
                id: Some(i64::from(id)),
                src_ip,
                proto,
                from_pattern,
                ruri_pattern,
                tag,
                priority,
            })
            .collect())
    }

    /// Inserts a trusted peer (`kamctl trusted add`; `row.id` is ignored)
    /// and returns its new id.
    pub async fn add_trusted(&mut self, row: &TrustedRow) -> Result<i64, DbError> {
        use tables::trusted::dsl as t;
        let values = (
            t::src_ip.eq(&row.src_ip),
            t::proto.eq(&row.proto),
            t::from_pattern.eq(&row.from_pattern),
            t::ruri_pattern.eq(&row.ruri_pattern),
            t::tag.eq(&row.tag),
            t::priority.eq(row.priority),
        );
        let what = format!("trusted {}", row.src_ip);
        let r: Result<i64, DieselError> = match self.conn_mut()? {
            Conn::Postgres(c) => diesel::insert_into(t::trusted)
                .values(values)
                .returning(t::id)
                .get_result::<i32>(c)
                .await
                .map(i64::from),
            Conn::Sqlite(c) => {
                c.transaction(async |c| {
                    diesel::insert_into(t::trusted).values(values).execute(c).await?;
                    diesel::sql_query("SELECT last_insert_rowid() AS id")
                        .get_result::<LastId>(c)
                        .await
                        .map(|l| l.id)
                })
                .await
            }
            Conn::Mysql(c) => {
                c.transaction(async |c| {
                    diesel::insert_into(t::trusted).values(values).execute(c).await?;
                    diesel::sql_query("SELECT CAST(LAST_INSERT_ID() AS SIGNED) AS id")
                        .get_result::<LastId>(c)
                        .await
                        .map(|l| l.id)
                })
                .await
            }
        };
        r.map_err(|e| self.err(e, &what))
    }

    /// Deletes the trusted row with this id; false when there was none.
    pub async fn remove_trusted(&mut self, id: i64) -> Result<bool, DbError> {
        use tables::trusted::dsl as t;
        let Ok(id) = i32::try_from(id) else { return Ok(false) };
        let q = diesel::delete(t::trusted.filter(t::id.eq(id)));
        let r = on_conn!(self, c => q.execute(c).await);
        r.map(|n| n > 0).map_err(|e| self.err(e, "trusted"))
    }

    /// Deletes every trusted row of this source IP (`kamctl trusted rm`)
    /// and returns how many there were.
    pub async fn remove_trusted_ip(&mut self, src_ip: &str) -> Result<usize, DbError> {
        use tables::trusted::dsl as t;
        let q = diesel::delete(t::trusted.filter(t::src_ip.eq(src_ip)));
        let r = on_conn!(self, c => q.execute(c).await);
        r.map_err(|e| self.err(e, "trusted"))
    }

    // ---------------------------------------------------------------- usrloc

    async fn query_bindings(&mut self, sql: String, binds: BindArgs<'_>) -> Result<Vec<BindingRow>, DbError> {
        let r: Result<Vec<BindingSql>, DieselError> = on_conn!(self, c => match binds {
            BindArgs::None => diesel::sql_query(sql).load(c).await,
            BindArgs::Time(t) => diesel::sql_query(sql).bind::<Timestamp, _>(t).load(c).await,
            BindArgs::User(u) => diesel::sql_query(sql).bind::<Text, _>(u).load(c).await,
            BindArgs::UserDomain(u, d) => diesel::sql_query(sql).bind::<Text, _>(u).bind::<Text, _>(d).load(c).await,
        });
        r.map(|rows| rows.into_iter().map(BindingRow::from).collect())
            .map_err(|e| self.err(e, "binding"))
    }

    fn ul(&self, table: UlTable) -> UlSql {
        UlSql {
            backend: self.backend,
            table: table.name(),
        }
    }

    /// Every row of `location` or `aliases` (usrloc's table), ordered by
    /// AOR, then q (highest first). On SQLite a datetime may be stored as
    /// text (serlua) or as the Julian-day number Kamailio's db_sqlite
    /// writes; both read back as the same whole second.
    pub async fn load_bindings(&mut self, table: UlTable) -> Result<Vec<BindingRow>, DbError> {
        let sql = self.ul(table).select("");
        self.query_bindings(sql, BindArgs::None).await
    }

    /// The rows whose `last_modified` is at or after `since` (at: datetimes
    /// are whole seconds, so a row changed in the second of the previous
    /// poll is returned again; match on `ruid`). For proxies sharing one
    /// database: poll with the newest `last_modified` seen. Deleted rows do
    /// not show up here.
    pub async fn load_bindings_changed_since(&mut self, table: UlTable, since: NaiveDateTime) -> Result<Vec<BindingRow>, DbError> {
        let ul = self.ul(table);
        let sql = ul.select(&format!("WHERE {} >= {}", ul.dt("last_modified"), ul.ph(1)));
        self.query_bindings(sql, BindArgs::Time(whole_seconds(since))).await
    }

    /// The rows of one AOR (`username@domain`; `domain` None for a
    /// table kept without domains), as `lookup()` would fall back to.
    pub async fn load_aor_bindings(&mut self, table: UlTable, username: &str, domain: Option<&str>) -> Result<Vec<BindingRow>, DbError> {
        let ul = self.ul(table);
        let sql = ul.select(&ul.aor_filter(domain.is_some()));
        let binds = match domain {
            Some(d) => BindArgs::UserDomain(username, d),
            None => BindArgs::User(username),
        };
        self.query_bindings(sql, binds).await
    }

    /// Inserts a binding; `Duplicate` when its `ruid` exists (the admin's
    /// `alias add`; usrloc's queue uses [`Db::upsert_binding`]/[`Db::apply`]).
    pub async fn insert_binding(&mut self, table: UlTable, row: &BindingRow) -> Result<(), DbError> {
        let sql = self.ul(table).insert();
        let r = on_conn!(self, c => bind_binding!(diesel::sql_query(sql.as_str()), row).execute(c).await);
        r.map(|_| ())
            .map_err(|e| self.err(e, &format!("{} binding {}", table.name(), row.ruid)))
    }

    /// Inserts a binding or updates the row with the same `ruid`.
    pub async fn upsert_binding(&mut self, table: UlTable, row: &BindingRow) -> Result<(), DbError> {
        self.apply(table, std::slice::from_ref(&UlOp::Upsert(row.clone()))).await
    }

    /// Deletes the row with this `ruid`; false when there was none.
    pub async fn delete_binding(&mut self, table: UlTable, ruid: &str) -> Result<bool, DbError> {
        let sql = self.ul(table).delete_ruid();
        let r = on_conn!(self, c => diesel::sql_query(sql.as_str()).bind::<Text, _>(ruid).execute(c).await);
        r.map(|n| n > 0).map_err(|e| self.err(e, "binding"))
    }

    /// Deletes every row of one AOR (`Contact: *`, `alias rm`) and returns
    /// how many there were.
    pub async fn delete_aor_bindings(&mut self, table: UlTable, username: &str, domain: Option<&str>) -> Result<usize, DbError> {
        let ul = self.ul(table);
        let sql = format!("DELETE FROM {} {}", ul.table, ul.aor_filter(domain.is_some()));
        let r = on_conn!(self, c => match domain {
            Some(d) => diesel::sql_query(sql.as_str()).bind::<Text, _>(username).bind::<Text, _>(d).execute(c).await,
            None => diesel::sql_query(sql.as_str()).bind::<Text, _>(username).execute(c).await,
        });
        r.map_err(|e| self.err(e, "binding"))
    }

    /// Deletes the rows whose `expires` is before `now` and returns how
    /// many (usrloc's timer). Rows with Kamailio's permanent mark
    /// (`expires` = the epoch) stay.
    pub async fn delete_expired(&mut self, table: UlTable, now: NaiveDateTime) -> Result<usize, DbError> {
        let sql = self.ul(table).delete_expired();
        let (now, floor) = (whole_seconds(now), epoch_floor());
        let r = on_conn!(self, c => diesel::sql_query(sql.as_str()).bind::<Timestamp, _>(now).bind::<Timestamp, _>(floor).execute(c).await);
        r.map_err(|e| self.err(e, "binding"))
    }

    /// Applies a batch of usrloc changes in one transaction, in order:
    /// either all of them or, on error, none (the error is returned and the
    /// caller retries the batch later). An empty batch does nothing.
    pub async fn apply(&mut self, table: UlTable, ops: &[UlOp]) -> Result<(), DbError> {
        if ops.is_empty() {
            return Ok(());
        }
        let ul = self.ul(table);
        let (upsert, delete) = (ul.upsert(), ul.delete_ruid());
        let (upsert, delete) = (upsert.as_str(), delete.as_str());
        let r: Result<(), DieselError> = on_conn!(self, c => c
            .transaction(async |c| {
                for op in ops {
                    match op {
                        UlOp::Upsert(row) => bind_binding!(diesel::sql_query(upsert), row).execute(c).await?,
                        UlOp::Delete(ruid) => diesel::sql_query(delete).bind::<Text, _>(ruid).execute(c).await?,
                    };
                }
                Ok(())
            })
            .await);
        r.map_err(|e| self.err(e, &format!("{} binding", table.name())))
    }
}

enum BindArgs<'a> {
    None,
    Time(NaiveDateTime),
    User(&'a str),
    UserDomain(&'a str, &'a str),
}
