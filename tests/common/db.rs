//! Database helpers shared by the integration tests that run against every
//! backend (tests/db.rs, tests/e2e_registrar.rs): SQLite always,
//! PostgreSQL when `SERLUA_TEST_POSTGRES_URL` is set, MariaDB/MySQL when
//! `SERLUA_TEST_MYSQL_URL` is set (e.g. `postgres://postgres@127.0.0.1:5432/test`,
//! `mysql://root@127.0.0.1:3306/test`). An unset URL skips that backend's
//! tests with a "skipped: …" line, unless `SERLUA_REQUIRE_DB=1`, which makes
//! them fail. Each test gets its own database: a fresh PostgreSQL schema
//! (selected with `search_path` in the URL) or a fresh MySQL database,
//! dropped when the test ends (also when it panics).

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use serlua::db::Db;

/// A database backend under test.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    Sqlite,
    Postgres,
    Mysql,
}

impl Kind {
    /// "sqlite", "postgres", "mysql".
    pub fn name(self) -> &'static str {
        match self {
            Kind::Sqlite => "sqlite",
            Kind::Postgres => "postgres",
            Kind::Mysql => "mysql",
        }
    }

    /// The environment variable naming the server (None for SQLite).
    pub fn url_var(self) -> Option<&'static str> {
        match self {
            Kind::Sqlite => None,
            Kind::Postgres => Some("SERLUA_TEST_POSTGRES_URL"),
            Kind::Mysql => Some("SERLUA_TEST_MYSQL_URL"),
        }
    }
}

/// A name no other test (of any process) uses: `PREFIX_PID_N_NANOS`,
/// valid as a PostgreSQL schema or MySQL database name.
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}_{}_{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed), nanos)
}

/// True when SERLUA_REQUIRE_DB=1: a backend whose URL is unset fails the
/// test instead of skipping it.
pub fn db_required() -> bool {
    std::env::var("SERLUA_REQUIRE_DB").as_deref() == Ok("1")
}

/// The server URL for a backend ("" for SQLite), or None (after printing
/// why) when the test must be skipped; panics when SERLUA_REQUIRE_DB=1
/// asks for the backend.
pub fn server_url(kind: Kind) -> Option<String> {
    let Some(var) = kind.url_var() else {
        return Some(String::new());
    };
    match std::env::var(var) {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            if db_required() {
                panic!("{var} not set, and SERLUA_REQUIRE_DB=1 requires this backend");
            }
            println!("skipped: {var} not set");
            None
        }
    }
}

/// `mysql://user@host:port/db?x` with another database name.
pub fn with_database(url: &str, name: &str) -> String {
    let after_scheme = url.find("://").unwrap() + 3;
    let (head, rest) = url.split_at(after_scheme);
    let (rest, query) = match rest.find('?') {
        Some(q) => rest.split_at(q),
        None => (rest, ""),
    };
    let host = rest.split('/').next().unwrap();
    format!("{head}{host}/{name}{query}")
}

/// `postgres://…` whose connections use `schema` (search_path).
pub fn with_schema(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-csearch_path%3D{schema}")
}

/// Runs a future to completion on a fresh current-thread runtime, on its
/// own thread (so it also works inside a `#[tokio::test]`).
pub fn block_on_thread<T: Send + 'static>(f: impl std::future::Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    })
    .join()
    .expect("database helper thread panicked")
}

/// Drops a per-test PostgreSQL schema or MySQL database, also when the
/// test panics.
pub struct Cleanup {
    pub base_url: String,
    pub sql: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (url, sql) = (self.base_url.clone(), self.sql.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                if let Ok(mut db) = Db::connect(&url).await {
                    let _ = db.execute_sql(&sql).await;
                }
            });
        })
        .join();
    }
}

/// Creates an empty PostgreSQL schema (kind Postgres) or MySQL database
/// (kind Mysql) named `name` on the server at `base`, and returns the URL
/// that reaches it plus the cleanup that drops it.
pub async fn create_isolated(kind: Kind, base: &str, name: &str) -> (String, Cleanup) {
    let mut admin = Db::connect(base)
        .await
        .unwrap_or_else(|e| panic!("{}: cannot connect to {base}: {e}", kind.name()));
    match kind {
        Kind::Sqlite => panic!("create_isolated: SQLite needs no server"),
        Kind::Postgres => {
            admin.execute_sql(&format!("CREATE SCHEMA {name}")).await.unwrap();
            let cleanup = Cleanup {
                base_url: base.to_string(),
                sql: format!("DROP SCHEMA IF EXISTS {name} CASCADE"),
            };
            (with_schema(base, name), cleanup)
        }
        Kind::Mysql => {
            admin.execute_sql(&format!("CREATE DATABASE {name}")).await.unwrap();
            let cleanup = Cleanup {
                base_url: base.to_string(),
                sql: format!("DROP DATABASE IF EXISTS {name}"),
            };
            (with_database(base, name), cleanup)
        }
    }
}

/// A database for one test that other processes (the serlua binary)
/// reach by URL: a SQLite file in `dir`, or an isolated PostgreSQL schema /
/// MySQL database, dropped with this value. Not migrated.
pub struct UrlDb {
    pub kind: Kind,
    /// The URL serlua and the test connect to.
    pub url: String,
    /// The server URL it was made on ("" for SQLite).
    pub base: String,
    _cleanup: Option<Cleanup>,
}

impl UrlDb {
    /// A fresh database of this kind, or None when the backend is skipped
    /// (see [`server_url`]). `dir` holds the SQLite file.
    pub fn create(kind: Kind, dir: &Path, prefix: &str) -> Option<UrlDb> {
        let base = server_url(kind)?;
        if kind == Kind::Sqlite {
            let file = dir.join(format!("{}.db", unique_name(prefix)));
            return Some(UrlDb {
                kind,
                url: format!("sqlite://{}", file.display()),
                base,
                _cleanup: None,
            });
        }
        let name = unique_name(prefix);
        let b = base.clone();
        let (url, cleanup) = block_on_thread(async move { create_isolated(kind, &b, &name).await });
        Some(UrlDb {
            kind,
            url,
            base,
            _cleanup: Some(cleanup),
        })
    }
}
