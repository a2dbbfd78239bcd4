//! The database layer (src/db) against every backend: SQLite always,
//! PostgreSQL when `SERLUA_TEST_POSTGRES_URL` is set, MariaDB/MySQL when
//! `SERLUA_TEST_MYSQL_URL` is set (e.g. `postgres://postgres@127.0.0.1:5432/test`,
//! `mysql://root@127.0.0.1:3306/test`). An unset URL skips that backend's
//! tests with a "skipped: …" line, unless `SERLUA_REQUIRE_DB=1`, which makes
//! them fail. Each test gets its own database: a private in-memory SQLite,
//! a fresh PostgreSQL schema (via `search_path`) or a fresh MySQL database,
//! dropped at the end.

use std::time::{Duration, Instant};

use chrono::{NaiveDate, NaiveDateTime};
use serlua::db::{Backend, BindingRow, Db, DbError, DomainRow, Subscriber, TrustedRow, UlOp, UlTable};

mod common;

use common::db::{Cleanup, Kind, create_isolated, server_url};

struct TestDb {
    db: Db,
    _cleanup: Option<Cleanup>,
}

fn unique_name() -> String {
    common::db::unique_name("serlua_t")
}

/// A fresh, empty database of this kind (not migrated).
async fn fresh(kind: Kind) -> Option<TestDb> {
    let base = server_url(kind)?;
    match kind {
        Kind::Sqlite => Some(TestDb {
            db: Db::connect("sqlite::memory:").await.unwrap(),
            _cleanup: None,
        }),
        Kind::Postgres | Kind::Mysql => {
            let (url, cleanup) = create_isolated(kind, &base, &unique_name()).await;
            Some(TestDb {
                db: Db::connect(&url).await.unwrap(),
                _cleanup: Some(cleanup),
            })
        }
    }
}

async fn migrated(kind: Kind) -> Option<TestDb> {
    let mut t = fresh(kind).await?;
    t.db.migrate().await.unwrap();
    Some(t)
}

/// One test per backend for each case: `sqlite::case`, `postgres::case`,
/// `mysql::case`.
macro_rules! per_backend {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test] async fn $case() { super::$case(super::Kind::Sqlite).await })*
        }
        mod postgres {
            $(#[tokio::test] async fn $case() { super::$case(super::Kind::Postgres).await })*
        }
        mod mysql {
            $(#[tokio::test] async fn $case() { super::$case(super::Kind::Mysql).await })*
        }
    };
}

per_backend!(
    migrate_is_idempotent,
    unmigrated_database_says_so,
    subscribers,
    domains,
    trusted_peers,
    bindings,
    aliases_table,
    batch_apply_is_atomic,
    datetimes_round_trip,
    migrate_keeps_existing_kamailio_tables,
    migrate_names_a_missing_column,
);

fn dt(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> NaiveDateTime {
    NaiveDate::from_ymd_opt(y, mo, d).unwrap().and_hms_opt(h, mi, s).unwrap()
}

fn binding(ruid: &str, user: &str, contact: &str, expires: NaiveDateTime) -> BindingRow {
    BindingRow {
        ruid: ruid.to_string(),
        username: user.to_string(),
        domain: Some("example.com".to_string()),
        contact: contact.to_string(),
        received: None,
        path: None,
        expires,
        q: 1.0,
        callid: format!("{ruid}@client"),
        cseq: 1,
        last_modified: dt(2026, 1, 1, 12, 0, 0),
        flags: 0,
        cflags: 0,
        user_agent: "test UA".to_string(),
        socket: None,
        methods: None,
        instance: None,
        reg_id: 0,
    }
}

async fn migrate_is_idempotent(kind: Kind) {
    let Some(mut t) = fresh(kind).await else { return };
    t.db.migrate().await.unwrap();
    let first = t.db.load_versions().await.unwrap();
    t.db.migrate().await.unwrap();
    t.db.migrate().await.unwrap();
    assert_eq!(first, t.db.load_versions().await.unwrap(), "no version row added twice");
    let names: Vec<&str> = first.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "aliases",
            "domain",
            "domain_attrs",
            "location",
            "location_attrs",
            "subscriber",
            "trusted",
            "version"
        ]
    );
    assert!(first.contains(&("subscriber".to_string(), 7)) && first.contains(&("location".to_string(), 9)));
    assert!(t.db.load_subscribers().await.unwrap().is_empty());
    assert!(t.db.load_domains().await.unwrap().is_empty());
    assert!(t.db.load_trusted().await.unwrap().is_empty());
    assert!(t.db.load_bindings(UlTable::Location).await.unwrap().is_empty());
    assert!(t.db.load_bindings(UlTable::Aliases).await.unwrap().is_empty());
    let expected = match kind {
        Kind::Sqlite => Backend::Sqlite,
        Kind::Postgres => Backend::Postgres,
        Kind::Mysql => Backend::Mysql,
    };
    assert_eq!(t.db.backend(), expected);
}

async fn unmigrated_database_says_so(kind: Kind) {
    let Some(mut t) = fresh(kind).await else { return };
    let e = t.db.load_subscribers().await.unwrap_err();
    assert!(matches!(e, DbError::NotMigrated(_)), "{e:?}");
    assert!(e.to_string().contains("serlua db migrate"), "{e}");
    let e = t.db.load_bindings(UlTable::Location).await.unwrap_err();
    assert!(matches!(e, DbError::NotMigrated(_)), "{e:?}");
}

async fn subscribers(kind: Kind) {
    let Some(mut t) = migrated(kind).await else { return };
    let alice = Subscriber::new("alice", "example.com", "secret");
    assert_eq!(alice.ha1, serlua::db::ha1("alice", "example.com", "secret"));
    t.db.add_subscriber(&alice).await.unwrap();
    t.db.add_subscriber(&Subscriber::new("bob", "example.com", "pw")).await.unwrap();
    t.db.add_subscriber(&Subscriber::new("alice", "example.net", "other"))
        .await
        .unwrap();
    let e =
        t.db.add_subscriber(&Subscriber::new("alice", "example.com", "again"))
            .await
            .unwrap_err();
    assert!(matches!(&e, DbError::Duplicate(w) if w == "subscriber alice@example.com"), "{e:?}");
    assert_eq!(e.to_string(), "subscriber alice@example.com already exists");
    let all = t.db.load_subscribers().await.unwrap();
    assert_eq!(all.len(), 3);
    assert_eq!(all[0], alice, "ordered by domain, then user");
    let new = Subscriber::new("alice", "example.com", "changed");
    assert!(
        t.db.set_password("alice", "example.com", &new.password, &new.ha1, &new.ha1b)
            .await
            .unwrap()
    );
    assert!(!t.db.set_password("carol", "example.com", "x", "y", "z").await.unwrap());
    assert_eq!(t.db.load_subscribers().await.unwrap()[0], new);
    assert!(t.db.remove_subscriber("alice", "example.com").await.unwrap());
    assert!(!t.db.remove_subscriber("alice", "example.com").await.unwrap());
    assert_eq!(t.db.load_subscribers().await.unwrap().len(), 2);
}

async fn domains(kind: Kind) {
    let Some(mut t) = migrated(kind).await else { return };
    t.db.add_domain(&DomainRow {
        domain: "example.com".into(),
        did: None,
    })
    .await
    .unwrap();
    t.db.add_domain(&DomainRow {
        domain: "a.example.org".into(),
        did: Some("org".into()),
    })
    .await
    .unwrap();
    let e =
        t.db.add_domain(&DomainRow {
            domain: "example.com".into(),
            did: None,
        })
        .await
        .unwrap_err();
    assert!(matches!(&e, DbError::Duplicate(w) if w == "domain example.com"), "{e:?}");
    assert_eq!(
        t.db.load_domains().await.unwrap(),
        vec![
            DomainRow {
                domain: "a.example.org".into(),
                did: Some("org".into())
            },
            DomainRow {
                domain: "example.com".into(),
                did: None
            }
        ]
    );
    assert!(t.db.remove_domain("example.com").await.unwrap());
    assert!(!t.db.remove_domain("example.com").await.unwrap());
    assert_eq!(t.db.load_domains().await.unwrap().len(), 1);
}

async fn trusted_peers(kind: Kind) {
    let Some(mut t) = migrated(kind).await else { return };
    let row = |ip: &str, prio: i32| TrustedRow {
        id: None,
        src_ip: ip.into(),
        proto: "any".into(),
        from_pattern: Some("^sip:.*@pstn\\.example\\.com$".into()),
        ruri_pattern: None,
        tag: Some("gw".into()),
        priority: prio,
    };
    let a = t.db.add_trusted(&row("192.0.2.245", 0)).await.unwrap();
    let b = t.db.add_trusted(&row("192.0.2.246", 5)).await.unwrap();
    let c = t.db.add_trusted(&row("192.0.2.245", 1)).await.unwrap();
    assert!(a < b && b < c, "{a} {b} {c}");
    let all = t.db.load_trusted().await.unwrap();
    assert_eq!(
        all.iter().map(|r| r.id.unwrap()).collect::<Vec<_>>(),
        vec![b, c, a],
        "highest priority first"
    );
    assert_eq!(
        all[0],
        TrustedRow {
            id: Some(b),
            ..row("192.0.2.246", 5)
        }
    );
    assert!(t.db.remove_trusted(b).await.unwrap());
    assert!(!t.db.remove_trusted(b).await.unwrap());
    assert_eq!(t.db.remove_trusted_ip("192.0.2.245").await.unwrap(), 2);
    assert_eq!(t.db.remove_trusted_ip("192.0.2.245").await.unwrap(), 0);
    assert!(t.db.load_trusted().await.unwrap().is_empty());
}

async fn bindings(kind: Kind) {
    let Some(mut t) = migrated(kind).await else { return };
    let table = UlTable::Location;
    let mut a = binding("uloc-a", "alice", "sip:alice@192.0.2.10:5060", dt(2026, 1, 1, 13, 0, 0));
    a.received = Some("sip:198.51.100.7:40000".into());
    a.path = Some("<sip:edge.example.com;lr>".into());
    a.flags = 0x40;
    a.cflags = 3;
    a.socket = Some("udp:192.0.2.13:5060".into());
    a.methods = Some(0x1fff);
    a.instance = Some("<urn:uuid:00000000-0000-1000-8000-000a95a0e128>".into());
    a.reg_id = 1;
    a.q = 0.5;
    let b = binding("uloc-b", "alice", "sip:alice@192.0.2.11", dt(2026, 1, 1, 11, 0, 0));
    let c = binding("uloc-c", "bob", "sip:bob@192.0.2.12", dt(2026, 1, 1, 14, 0, 0));
    for r in [&a, &b, &c] {
        t.db.upsert_binding(table, r).await.unwrap();
    }
    let all = t.db.load_bindings(table).await.unwrap();
    assert_eq!(all, vec![b.clone(), a.clone(), c.clone()], "by AOR, then q descending");

    // Update by ruid.
    let mut a2 = a.clone();
    a2.cseq = 2;
    a2.expires = dt(2026, 1, 1, 15, 0, 0);
    a2.last_modified = dt(2026, 1, 1, 12, 30, 0);
    a2.received = None;
    t.db.upsert_binding(table, &a2).await.unwrap();
    assert_eq!(
        t.db.load_aor_bindings(table, "alice", Some("example.com")).await.unwrap(),
        vec![b.clone(), a2.clone()]
    );
    assert!(t.db.load_aor_bindings(table, "alice", None).await.unwrap().is_empty());
    assert!(
        t.db.load_aor_bindings(table, "alice", Some("example.net"))
            .await
            .unwrap()
            .is_empty()
    );

    // A plain insert of an existing ruid is a duplicate.
    let e = t.db.insert_binding(table, &a).await.unwrap_err();
    assert!(matches!(e, DbError::Duplicate(_)), "{e:?}");

    // Changed since: at or after the second given.
    let changed = t.db.load_bindings_changed_since(table, dt(2026, 1, 1, 12, 30, 0)).await.unwrap();
    assert_eq!(changed, vec![a2.clone()]);
    assert_eq!(
        t.db.load_bindings_changed_since(table, dt(2026, 1, 1, 12, 0, 0))
            .await
            .unwrap()
            .len(),
        3
    );

    // Expiry: b (11:00) is gone at 12:00; a permanent (epoch) row stays.
    let mut perm = binding("uloc-p", "carol", "sip:carol@192.0.2.20", dt(1970, 1, 1, 0, 0, 0));
    perm.domain = None;
    t.db.upsert_binding(table, &perm).await.unwrap();
    assert_eq!(t.db.delete_expired(table, dt(2026, 1, 1, 12, 0, 0)).await.unwrap(), 1);
    assert_eq!(t.db.delete_expired(table, dt(2026, 1, 1, 12, 0, 0)).await.unwrap(), 0);
    assert_eq!(t.db.load_aor_bindings(table, "carol", None).await.unwrap(), vec![perm]);

    assert!(t.db.delete_binding(table, "uloc-c").await.unwrap());
    assert!(!t.db.delete_binding(table, "uloc-c").await.unwrap());
    assert_eq!(t.db.delete_aor_bindings(table, "alice", Some("example.com")).await.unwrap(), 1);
    assert_eq!(t.db.delete_aor_bindings(table, "carol", None).await.unwrap(), 1);
    assert!(t.db.load_bindings(table).await.unwrap().is_empty());
}

async fn aliases_table(kind: Kind) {
    let Some(mut t) = migrated(kind).await else { return };
    let mut al = binding("alias-1", "sales", "sip:alice@example.com", serlua::db::permanent_expires());
    al.user_agent = String::new();
    t.db.insert_binding(UlTable::Aliases, &al).await.unwrap();
    assert_eq!(t.db.load_bindings(UlTable::Aliases).await.unwrap(), vec![al.clone()]);
    assert!(
        t.db.load_bindings(UlTable::Location).await.unwrap().is_empty(),
        "tables are separate"
    );
    assert_eq!(t.db.delete_expired(UlTable::Aliases, dt(2099, 12, 31, 0, 0, 0)).await.unwrap(), 0);
    assert!(serlua::db::is_permanent(al.expires));
}

async fn batch_apply_is_atomic(kind: Kind) {
    let Some(mut t) = migrated(kind).await else { return };
    let table = UlTable::Location;
    let e = dt(2026, 1, 1, 13, 0, 0);
    let keep = binding("uloc-keep", "dave", "sip:dave@192.0.2.30", e);
    t.db.apply(table, &[UlOp::Upsert(keep.clone())]).await.unwrap();
    // The third operation violates a constraint: a test-only unique index
    // on callid (MySQL's ON DUPLICATE KEY UPDATE would turn that clash into
    // an update of the other row, so there a ruid longer than VARCHAR(64)
    // in strict mode).
    let mut clash = binding("uloc-3", "erin", "sip:erin@192.0.2.33", e);
    if kind == Kind::Mysql {
        t.db.execute_sql("SET SESSION sql_mode = 'STRICT_TRANS_TABLES'").await.unwrap();
        clash.ruid = "x".repeat(65);
    } else {
        t.db.execute_sql("CREATE UNIQUE INDEX test_callid_uniq ON location (callid)")
            .await
            .unwrap();
        clash.callid = "uloc-1@client".into();
    }
    let mut changed_keep = keep.clone();
    changed_keep.cseq = 9;
    let batch = vec![
        UlOp::Upsert(binding("uloc-1", "erin", "sip:erin@192.0.2.31", e)),
        UlOp::Upsert(changed_keep.clone()),
        UlOp::Upsert(clash),
        UlOp::Delete("uloc-keep".into()),
    ];
    let err = t.db.apply(table, &batch).await.unwrap_err();
    assert!(matches!(err, DbError::Duplicate(_) | DbError::Query(_)), "{err:?}");
    assert!(!err.to_string().contains('\n'));
    assert_eq!(
        t.db.load_bindings(table).await.unwrap(),
        vec![keep.clone()],
        "nothing of the failed batch applied"
    );
    // The connection is usable afterwards and a good batch applies whole.
    let good = vec![
        UlOp::Upsert(binding("uloc-1", "erin", "sip:erin@192.0.2.31", e)),
        UlOp::Upsert(changed_keep.clone()),
        UlOp::Delete("uloc-1".into()),
        UlOp::Delete("no-such-ruid".into()),
    ];
    t.db.apply(table, &good).await.unwrap();
    assert_eq!(t.db.load_bindings(table).await.unwrap(), vec![changed_keep]);
    t.db.apply(table, &[]).await.unwrap();
}

async fn datetimes_round_trip(kind: Kind) {
    let Some(mut t) = migrated(kind).await else { return };
    let cases = [
        dt(2026, 11, 27, 19, 39, 54),
        dt(1999, 12, 31, 23, 59, 59),
        dt(2038, 1, 19, 3, 14, 8),
        serlua::db::permanent_expires(),
        dt(1970, 1, 1, 0, 0, 0),
    ];
    for (i, when) in cases.iter().enumerate() {
        let mut r = binding(&format!("dt-{i}"), "frank", "sip:frank@192.0.2.40", *when);
        r.last_modified = *when;
        t.db.upsert_binding(UlTable::Location, &r).await.unwrap();
        let back =
            t.db.load_aor_bindings(UlTable::Location, "frank", Some("example.com"))
                .await
                .unwrap();
        let got = back.iter().find(|b| b.ruid == r.ruid).unwrap();
        assert_eq!((got.expires, got.last_modified), (*when, *when), "{kind:?}");
    }
    // Sub-second precision is dropped (Kamailio's datetimes are whole seconds).
    let precise = dt(2026, 1, 1, 0, 0, 1) + chrono::Duration::milliseconds(750);
    let r = binding("dt-frac", "grace", "sip:grace@192.0.2.41", precise);
    t.db.upsert_binding(UlTable::Location, &r).await.unwrap();
    let got =
        t.db.load_aor_bindings(UlTable::Location, "grace", Some("example.com"))
            .await
            .unwrap();
    assert_eq!(got[0].expires, dt(2026, 1, 1, 0, 0, 1));
}

/// Kamailio 5.x's own tables (as `kamdbctl create` makes them, here the
/// version, subscriber and location tables with their constraints), with
/// rows written the way Kamailio writes them.
fn kamailio_ddl(kind: Kind) -> String {
    let (id, ts, q, int) = match kind {
        Kind::Sqlite => ("id INTEGER PRIMARY KEY NOT NULL", "TIMESTAMP WITHOUT TIME ZONE", "REAL", "INTEGER"),
        Kind::Postgres => ("id SERIAL PRIMARY KEY NOT NULL", "TIMESTAMP WITHOUT TIME ZONE", "REAL", "INTEGER"),
        Kind::Mysql => (
            "id INT(10) UNSIGNED AUTO_INCREMENT PRIMARY KEY NOT NULL",
            "DATETIME",
            "FLOAT(10,2)",
            "INT(11)",
        ),
    };
    let p = if kind == Kind::Mysql { "" } else { "location_" };
    let part = if kind == Kind::Mysql { "`partition`" } else { "partition" };
    format!(
        "CREATE TABLE version ({id}, table_name VARCHAR(32) NOT NULL, table_version {int} DEFAULT 0 NOT NULL, \
           CONSTRAINT version_table_name_idx UNIQUE (table_name));
         INSERT INTO version (table_name, table_version) VALUES ('version', 1), ('subscriber', 7), ('location', 9);
         CREATE TABLE subscriber ({id}, username VARCHAR(64) DEFAULT '' NOT NULL, domain VARCHAR(64) DEFAULT '' NOT NULL,
           password VARCHAR(64) DEFAULT '' NOT NULL, ha1 VARCHAR(128) DEFAULT '' NOT NULL, ha1b VARCHAR(128) DEFAULT '' NOT NULL,
           CONSTRAINT subscriber_account_idx UNIQUE (username, domain));
         CREATE INDEX subscriber_username_idx ON subscriber (username);
         CREATE TABLE location ({id}, ruid VARCHAR(64) DEFAULT '' NOT NULL, username VARCHAR(64) DEFAULT '' NOT NULL,
           domain VARCHAR(64) DEFAULT NULL, contact VARCHAR(512) DEFAULT '' NOT NULL, received VARCHAR(128) DEFAULT NULL,
           path VARCHAR(512) DEFAULT NULL, expires {ts} DEFAULT '2030-05-28 21:32:15' NOT NULL, q {q} DEFAULT 1.0 NOT NULL,
           callid VARCHAR(255) DEFAULT 'Default-Call-ID' NOT NULL, cseq {int} DEFAULT 1 NOT NULL,
           last_modified {ts} DEFAULT '2000-01-01 00:00:01' NOT NULL, flags {int} DEFAULT 0 NOT NULL, cflags {int} DEFAULT 0 NOT NULL,
           user_agent VARCHAR(255) DEFAULT '' NOT NULL, socket VARCHAR(64) DEFAULT NULL, methods {int} DEFAULT NULL,
           instance VARCHAR(255) DEFAULT NULL, reg_id {int} DEFAULT 0 NOT NULL, server_id {int} DEFAULT 0 NOT NULL,
           connection_id {int} DEFAULT 0 NOT NULL, keepalive {int} DEFAULT 0 NOT NULL, {part} {int} DEFAULT 0 NOT NULL,
           CONSTRAINT {p}ruid_idx UNIQUE (ruid));
         CREATE INDEX {p}account_contact_idx ON location (username, domain, contact);
         CREATE INDEX {p}expires_idx ON location (expires);"
    )
}

/// Kamailio's db_sqlite stores a DATETIME as a Julian-day REAL, half a
/// second early (`timet_to_sqlite`); other backends take the literal.
fn kamailio_datetime(kind: Kind, t: NaiveDateTime) -> String {
    match kind {
        Kind::Sqlite => format!("{:?}", ((t.and_utc().timestamp() as f64) - 0.5) / 86400.0 + 2440587.5),
        _ => format!("'{}'", t.format("%Y-%m-%d %H:%M:%S")),
    }
}

async fn migrate_keeps_existing_kamailio_tables(kind: Kind) {
    let Some(mut t) = fresh(kind).await else { return };
    t.db.execute_sql(&kamailio_ddl(kind)).await.unwrap();
    let k = Subscriber::new("kam", "example.com", "kpass");
    let (exp, lm) = (dt(2030, 1, 1, 0, 0, 0), dt(2026, 6, 1, 8, 30, 15));
    t.db.execute_sql(&format!(
        "INSERT INTO subscriber (username, domain, password, ha1, ha1b) VALUES ('kam', 'example.com', 'kpass', '{}', '{}');
         INSERT INTO location (ruid, username, domain, contact, received, expires, q, callid, cseq, last_modified, flags, cflags, user_agent, methods)
           VALUES ('uloc-5f0a-1', 'kam', 'example.com', 'sip:kam@10.0.0.5:5062', 'sip:203.0.113.9:31000', {}, 0.8, 'c1@h', 42, {}, 0, 64, 'Kamailio UA', 8191)",
        k.ha1,
        k.ha1b,
        kamailio_datetime(kind, exp),
        kamailio_datetime(kind, lm)
    ))
    .await
    .unwrap();
    t.db.migrate().await.unwrap();
    t.db.migrate().await.unwrap();
    assert_eq!(t.db.load_subscribers().await.unwrap(), vec![k]);
    let rows = t.db.load_bindings(UlTable::Location).await.unwrap();
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(
        (r.ruid.as_str(), r.contact.as_str(), r.received.as_deref()),
        ("uloc-5f0a-1", "sip:kam@10.0.0.5:5062", Some("sip:203.0.113.9:31000"))
    );
    assert_eq!(
        (r.expires, r.last_modified),
        (exp, lm),
        "Kamailio's datetimes read back to the second"
    );
    assert_eq!(
        (r.q, r.cseq, r.cflags, r.methods, r.path.as_deref(), r.instance.as_deref()),
        (0.8, 42, 64, Some(8191), None, None)
    );
    // Kamailio's version rows stay single; ours are added for the tables it lacked.
    let versions = t.db.load_versions().await.unwrap();
    assert_eq!(versions.iter().filter(|(n, _)| n == "location").count(), 1);
    assert!(versions.contains(&("trusted".to_string(), 6)) && versions.contains(&("subscriber".to_string(), 7)));
    // serlua writes next to Kamailio's row, and its expiry sees both formats.
    let ours = binding("uloc-ours", "kam", "sip:kam@10.0.0.6", dt(2029, 1, 1, 0, 0, 0));
    t.db.upsert_binding(UlTable::Location, &ours).await.unwrap();
    assert_eq!(
        t.db.load_bindings_changed_since(UlTable::Location, lm).await.unwrap().len(),
        1,
        "only Kamailio's row changed after lm"
    );
    assert_eq!(t.db.delete_expired(UlTable::Location, dt(2029, 6, 1, 0, 0, 0)).await.unwrap(), 1);
    assert_eq!(t.db.load_bindings(UlTable::Location).await.unwrap()[0].ruid, "uloc-5f0a-1");
    assert_eq!(t.db.delete_expired(UlTable::Location, dt(2030, 1, 1, 0, 0, 1)).await.unwrap(), 1);
}

async fn migrate_names_a_missing_column(kind: Kind) {
    let Some(mut t) = fresh(kind).await else { return };
    // A pre-5.x subscriber table: no ha1b column.
    t.db.execute_sql(
        "CREATE TABLE subscriber (id INTEGER PRIMARY KEY, username VARCHAR(64) DEFAULT '' NOT NULL, \
         domain VARCHAR(64) DEFAULT '' NOT NULL, password VARCHAR(25) DEFAULT '' NOT NULL, ha1 VARCHAR(64) DEFAULT '' NOT NULL)",
    )
    .await
    .unwrap();
    let e = t.db.migrate().await.unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, DbError::Migration(_)), "{e:?}");
    assert!(msg.contains("table subscriber has no column ha1b"), "{msg}");
    assert!(!msg.contains('\n'));
}

#[tokio::test]
async fn sqlite_memory_databases_are_private() {
    let mut one = Db::connect("sqlite::memory:").await.unwrap();
    let mut two = Db::connect("sqlite::memory:").await.unwrap();
    one.migrate().await.unwrap();
    one.add_subscriber(&Subscriber::new("alice", "example.com", "pw")).await.unwrap();
    assert!(matches!(two.load_subscribers().await, Err(DbError::NotMigrated(_))));
    two.migrate().await.unwrap();
    assert!(two.load_subscribers().await.unwrap().is_empty());
    assert_eq!(one.load_subscribers().await.unwrap().len(), 1);
}

#[tokio::test]
async fn sqlite_file_is_created_and_persists() {
    let dir = std::env::temp_dir().join(unique_name());
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("serlua.db");
    let url = format!("sqlite://{}", path.display());
    {
        let mut db = Db::connect(&url).await.unwrap();
        db.migrate().await.unwrap();
        db.add_domain(&DomainRow {
            domain: "example.com".into(),
            did: None,
        })
        .await
        .unwrap();
    }
    assert!(path.exists());
    // A bare path ending in .db names the same file.
    let mut again = Db::connect(path.to_str().unwrap()).await.unwrap();
    again.migrate().await.unwrap();
    assert_eq!(again.load_domains().await.unwrap().len(), 1);
    // serlua writes Kamailio-style 'YYYY-MM-DD HH:MM:SS' text on SQLite.
    let b = binding("f-1", "h", "sip:h@192.0.2.50", dt(2026, 2, 3, 4, 5, 6));
    again.upsert_binding(UlTable::Location, &b).await.unwrap();
    drop(again);
    let out = std::process::Command::new("sqlite3")
        .arg(&path)
        .arg("SELECT expires, typeof(expires) FROM location")
        .output();
    if let Ok(out) = out {
        if out.status.success() {
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2026-02-03 04:05:06|text");
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn refused_connection_is_one_quick_line() {
    for url in [
        "postgres://postgres:hunter2@127.0.0.1:1/test",
        "mysql://root:hunter2@127.0.0.1:1/test",
    ] {
        let start = Instant::now();
        let e = match Db::connect(url).await {
            Err(e) => e,
            Ok(_) => panic!("{url} connected"),
        };
        assert!(start.elapsed() < Duration::from_secs(5), "{url}: {:?}", start.elapsed());
        let msg = e.to_string();
        assert!(matches!(e, DbError::Connect(..)), "{e:?}");
        assert!(msg.starts_with("cannot connect to ") && msg.contains("@127.0.0.1:1/test"), "{msg}");
        assert!(!msg.contains("hunter2"), "password leaked: {msg}");
        assert!(!msg.contains('\n'), "{msg}");
        println!("{msg}");
    }
}

#[tokio::test]
async fn bad_urls_are_refused() {
    for url in ["redis://localhost", "serlua", "sqlite://"] {
        let e = match Db::connect(url).await {
            Err(e) => e,
            Ok(_) => panic!("{url} accepted"),
        };
        assert!(matches!(e, DbError::Url(..)), "{url}: {e:?}");
    }
    let e = match Db::connect("sqlite:///nonexistent-dir-serlua/x.db").await {
        Err(e) => e,
        Ok(_) => panic!("opened a file in a missing directory"),
    };
    assert!(matches!(e, DbError::Connect(..)), "{e:?}");
    assert_eq!(
        serlua::db::redact_url("postgres://u:p@h:5432/db?password=x&a=b"),
        "postgres://u@h:5432/db?password=***&a=b"
    );
}

#[test]
fn ha1_follows_kamailio() {
    // RFC 2617 §3.5's example user, realm and password.
    assert_eq!(
        serlua::db::ha1("Mufasa", "testrealm@host.com", "Circle Of Life"),
        "939e7578ed9e3c518a452acee763bce9"
    );
    let s = Subscriber::new("alice", "example.com", "secret");
    assert_eq!(s.ha1b, serlua::db::ha1("alice@example.com", "example.com", "secret"));
}

/// The database thread may move a `Db` and its futures across threads.
#[test]
fn db_and_its_futures_are_send() {
    fn is_send<T: Send>(_: &T) {}
    fn check(db: &mut Db, ops: &[UlOp]) {
        is_send(&db.apply(UlTable::Location, ops));
        is_send(&db.load_bindings(UlTable::Aliases));
        is_send(&db.migrate());
    }
    let _ = check;
    fn db_is_send<T: Send>() {}
    db_is_send::<Db>();
}
