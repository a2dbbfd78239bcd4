//! The database behind the in-memory tables (diesel, through diesel-async
//! so all three backends use pure-Rust drivers): SQLite (embedded, the
//! default), PostgreSQL and MySQL/MariaDB, one code path. Table and column
//! names follow Kamailio's schema so an existing SER/Kamailio database
//! works unchanged. Migrations live in `schema/<backend>/`.
//!
//! Nothing here runs on a worker: the proxy's hot paths read in-memory
//! tables and queue their writes (see `store`); this module is used by the
//! database thread and by the admin CLI.

pub mod model;

pub use model::{BindingRow, DomainRow, Subscriber, TrustedRow, UlTable};

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
    /// Migrations failed.
    #[error("migration failed: {0}")]
    Migration(String),
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

/// The default database: `serlua.db` in the working directory.
pub const DEFAULT_URL: &str = "sqlite://serlua.db";
