//! The admin CLI (`serlua user|domain|trusted|alias|ul|db …`), run as the
//! real binary against a temporary SQLite file, and against PostgreSQL and
//! MariaDB/MySQL when `SERLUA_TEST_POSTGRES_URL` / `SERLUA_TEST_MYSQL_URL`
//! are set (skipped with a "skipped: …" line otherwise; failing instead
//! when `SERLUA_REQUIRE_DB=1`). Every test has its own database.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use chrono::{Duration, Utc};
use serlua::db::{BindingRow, Db, Subscriber, UlTable};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Sqlite,
    Postgres,
    Mysql,
}

fn unique_name() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("serlua_a_{}_{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed), nanos)
}

/// A fresh database for one test; dropped (schema, database or file) with it.
struct TestDb {
    url: String,
    dir: PathBuf,
    drop_sql: Option<(String, String)>,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some((base, sql)) = self.drop_sql.take() {
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async {
                    if let Ok(mut db) = Db::connect(&base).await {
                        let _ = db.execute_sql(&sql).await;
                    }
                });
            })
            .join();
        }
    }
}

fn server_url(kind: Kind) -> Option<String> {
    let var = match kind {
        Kind::Sqlite => return Some(String::new()),
        Kind::Postgres => "SERLUA_TEST_POSTGRES_URL",
        Kind::Mysql => "SERLUA_TEST_MYSQL_URL",
    };
    match std::env::var(var) {
        Ok(u) if !u.is_empty() => Some(u),
        _ => {
            if std::env::var("SERLUA_REQUIRE_DB").as_deref() == Ok("1") {
                panic!("{var} not set, and SERLUA_REQUIRE_DB=1 requires this backend");
            }
            println!("skipped: {var} not set");
            None
        }
    }
}

fn block<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A fresh database; PostgreSQL and MySQL ones are migrated with `serlua
/// db migrate` when `migrate` is set (SQLite migrates itself on use).
fn fresh(kind: Kind, migrate: bool) -> Option<TestDb> {
    let base = server_url(kind)?;
    let dir = std::env::temp_dir().join(unique_name());
    std::fs::create_dir_all(&dir).unwrap();
    let t = match kind {
        Kind::Sqlite => TestDb {
            url: format!("sqlite://{}", dir.join("serlua.db").display()),
            dir,
            drop_sql: None,
        },
        Kind::Postgres => {
            let schema = unique_name();
            block(async {
                Db::connect(&base)
                    .await
                    .unwrap()
                    .execute_sql(&format!("CREATE SCHEMA {schema}"))
                    .await
                    .unwrap()
            });
            let sep = if base.contains('?') { '&' } else { '?' };
            TestDb {
                url: format!("{base}{sep}options=-csearch_path%3D{schema}"),
                dir,
                drop_sql: Some((base, format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))),
            }
        }
        Kind::Mysql => {
            let name = unique_name();
            block(async {
                Db::connect(&base)
                    .await
                    .unwrap()
                    .execute_sql(&format!("CREATE DATABASE {name}"))
                    .await
                    .unwrap()
            });
            let after = base.find("://").unwrap() + 3;
            let host = base[after..].split(['/', '?']).next().unwrap();
            TestDb {
                url: format!("{}{host}/{name}", &base[..after]),
                dir,
                drop_sql: Some((base, format!("DROP DATABASE IF EXISTS {name}"))),
            }
        }
    };
    if migrate && kind != Kind::Sqlite {
        let out = t.run(&["db", "migrate"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    Some(t)
}

impl TestDb {
    /// Runs `serlua ARGS --db URL` in the test's directory.
    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_serlua"))
            .args(args)
            .arg("--db")
            .arg(&self.url)
            .current_dir(&self.dir)
            .output()
            .unwrap()
    }

    /// Runs a command that must succeed and returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "serlua {args:?} failed: {}", stderr(&out));
        assert!(out.stderr.is_empty(), "{}", stderr(&out));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs a command that must fail with exit code 1, one line on stderr
    /// and nothing on stdout; returns that line.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "serlua {args:?} should fail: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "one line: {err:?}");
        assert!(err.starts_with("serlua: "), "{err}");
        err.trim_end().to_string()
    }

    fn db<T>(&self, f: impl AsyncFnOnce(&mut Db) -> T) -> T {
        block(async {
            let mut db = Db::connect(&self.url).await.unwrap();
            f(&mut db).await
        })
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

macro_rules! per_backend {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(#[test] fn $case() { super::$case(super::Kind::Sqlite) })*
        }
        mod postgres {
            $(#[test] fn $case() { super::$case(super::Kind::Postgres) })*
        }
        mod mysql {
            $(#[test] fn $case() { super::$case(super::Kind::Mysql) })*
        }
    };
}

per_backend!(users, domains, trusted_peers, aliases, ul_show, unmigrated_server_database);

fn users(kind: Kind) {
    let Some(t) = fresh(kind, true) else { return };
    assert_eq!(
        t.ok(&["user", "add", "alice@example.com", "secret"]),
        "added subscriber alice@example.com\n"
    );
    assert_eq!(
        t.ok(&["user", "add", "sip:bob@EXAMPLE.com", "pw2"]),
        "added subscriber bob@example.com\n"
    );
    let list = t.ok(&["user", "list"]);
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 3, "{list}");
    assert!(lines[0].starts_with("AOR") && lines[0].contains("HA1"), "{list}");
    let alice = Subscriber::new("alice", "example.com", "secret");
    assert!(
        lines[1].starts_with("alice@example.com  ") && lines[1].ends_with(&alice.ha1),
        "{list}"
    );
    assert!(lines[2].starts_with("bob@example.com"), "{list}");
    assert!(!list.contains("secret"), "no clear-text passwords listed");

    // A duplicate leaves the first row as it was.
    let e = t.fails(&["user", "add", "alice@example.com", "other"]);
    assert_eq!(e, "serlua: subscriber alice@example.com already exists");
    // No domain, empty parts, a port: refused before touching the database.
    for bad in ["alice", "alice@", "@example.com", "alice@example.com:5060", "al ice@example.com"] {
        let e = t.fails(&["user", "add", bad, "pw"]);
        assert!(e.contains(bad), "{e}");
    }
    assert_eq!(
        t.db(async |db| db.load_subscribers().await.unwrap()),
        vec![alice, Subscriber::new("bob", "example.com", "pw2")]
    );

    assert_eq!(
        t.ok(&["user", "passwd", "alice@example.com", "changed"]),
        "changed the password of alice@example.com\n"
    );
    assert_eq!(
        t.fails(&["user", "passwd", "carol@example.com", "x"]),
        "serlua: no subscriber carol@example.com"
    );
    let json = t.ok(&["user", "list", "--json"]);
    let ha1 = serlua::db::ha1("alice", "example.com", "changed");
    assert!(
        json.starts_with("[{\"username\":\"alice\",\"domain\":\"example.com\",\"password_set\":true,\"ha1\":\""),
        "{json}"
    );
    assert!(json.contains(&ha1), "{json}");
    assert_eq!(t.ok(&["user", "rm", "alice@example.com"]), "removed subscriber alice@example.com\n");
    assert_eq!(
        t.fails(&["user", "rm", "alice@example.com"]),
        "serlua: no subscriber alice@example.com"
    );
    assert_eq!(t.ok(&["user", "list"]).lines().count(), 2);
}

fn domains(kind: Kind) {
    let Some(t) = fresh(kind, true) else { return };
    assert_eq!(t.ok(&["domain", "list"]), "(none)\n");
    assert_eq!(t.ok(&["domain", "add", "Example.COM"]), "added domain example.com\n");
    t.ok(&["domain", "add", "voip.example.org", "--did", "org"]);
    assert_eq!(
        t.fails(&["domain", "add", "example.com"]),
        "serlua: domain example.com already exists"
    );
    t.fails(&["domain", "add", "bad_domain!"]);
    assert_eq!(
        t.ok(&["domain", "list"]),
        "DOMAIN            DID\nexample.com\nvoip.example.org  org\n"
    );
    assert_eq!(
        t.ok(&["domain", "list", "--json"]),
        "[{\"domain\":\"example.com\",\"did\":null},{\"domain\":\"voip.example.org\",\"did\":\"org\"}]\n"
    );
    assert_eq!(t.ok(&["domain", "rm", "example.com"]), "removed domain example.com\n");
    assert_eq!(t.fails(&["domain", "rm", "example.com"]), "serlua: no domain example.com");
}

fn trusted_peers(kind: Kind) {
    let Some(t) = fresh(kind, true) else { return };
    let e = t.fails(&["trusted", "add", "192.0.2.245", "any", "^sip:(.*@gw"]);
    assert!(e.contains("not a valid regular expression"), "{e}");
    assert!(t.fails(&["trusted", "add", "192.0.2.300"]).contains("not an IP address"));
    assert!(
        t.fails(&["trusted", "add", "192.0.2.245", "carrier-pigeon"])
            .contains("not a protocol")
    );
    assert_eq!(t.ok(&["trusted", "list"]), "(none)\n", "nothing written by the failed adds");

    assert_eq!(
        t.ok(&["trusted", "add", "192.0.2.245"]),
        "added trusted peer 192.0.2.245 (any), id 1\n"
    );
    t.ok(&[
        "trusted",
        "add",
        "192.0.2.246",
        "UDP",
        "^sip:.*@pstn\\.example\\.com$",
        "gw2",
        "--priority",
        "5",
    ]);
    t.ok(&["trusted", "add", "2001:DB8::1", "tls"]);
    let list = t.ok(&["trusted", "list"]);
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 4, "{list}");
    assert!(lines[0].starts_with("ID  SRC_IP") && lines[0].ends_with("PRIORITY"), "{list}");
    assert!(
        lines[1].contains("192.0.2.246") && lines[1].contains(" udp ") && lines[1].contains("gw2") && lines[1].ends_with('5'),
        "{list}"
    );
    assert!(list.contains("2001:db8::1"), "canonical IPv6: {list}");
    let rows = t.db(async |db| db.load_trusted().await.unwrap());
    assert_eq!(rows[0].from_pattern.as_deref(), Some("^sip:.*@pstn\\.example\\.com$"));
    assert_eq!(
        (rows[1].proto.as_str(), rows[1].from_pattern.as_deref(), rows[1].tag.as_deref()),
        ("any", None, None)
    );

    assert_eq!(t.ok(&["trusted", "rm", "192.0.2.245"]), "removed 1 trusted entry of 192.0.2.245\n");
    assert_eq!(
        t.fails(&["trusted", "rm", "192.0.2.245"]),
        "serlua: no trusted entry for 192.0.2.245"
    );
    assert!(
        t.ok(&["trusted", "list", "--json"])
            .contains("\"src_ip\":\"192.0.2.246\",\"proto\":\"udp\"")
    );
}

fn aliases(kind: Kind) {
    let Some(t) = fresh(kind, true) else { return };
    assert_eq!(
        t.ok(&["alias", "add", "sales@example.com", "sip:alice@example.com"]),
        "added alias sales@example.com -> sip:alice@example.com\n"
    );
    t.ok(&["alias", "add", "sip:support@example.com", "bob@example.net"]);
    let e = t.fails(&["alias", "add", "sales@example.com", "sip:carol@example.com"]);
    assert!(e.contains("alias sales@example.com") && e.contains("already exists"), "{e}");
    t.fails(&["alias", "add", "sales", "sip:carol@example.com"]);
    t.fails(&["alias", "add", "x@example.com", "sip:carol @example.com"]);
    let list = t.ok(&["alias", "list"]);
    assert_eq!(
        list,
        "ALIAS                TARGET                 EXPIRES\n\
         sales@example.com    sip:alice@example.com  permanent\n\
         support@example.com  sip:bob@example.net    permanent\n"
    );
    let rows = t.db(async |db| db.load_bindings(UlTable::Aliases).await.unwrap());
    assert_eq!(rows[0].expires, serlua::db::permanent_expires());
    assert_eq!(
        (rows[0].username.as_str(), rows[0].domain.as_deref()),
        ("sales", Some("example.com"))
    );
    assert_eq!(t.ok(&["alias", "rm", "sales@example.com"]), "removed alias sales@example.com\n");
    assert_eq!(t.fails(&["alias", "rm", "sales@example.com"]), "serlua: no alias sales@example.com");
    assert!(
        t.ok(&["alias", "list", "--json"])
            .contains("\"alias\":\"support@example.com\",\"target\":\"sip:bob@example.net\"")
    );
}

fn ul_show(kind: Kind) {
    let Some(t) = fresh(kind, true) else { return };
    assert_eq!(t.ok(&["ul", "show"]), "(none)\n");
    let now = Utc::now().naive_utc();
    let row = |ruid: &str, user: &str, contact: &str| BindingRow {
        ruid: ruid.into(),
        username: user.into(),
        domain: Some("example.com".into()),
        contact: contact.into(),
        received: None,
        path: None,
        expires: now + Duration::seconds(3600),
        q: 1.0,
        callid: format!("{ruid}@ua"),
        cseq: 7,
        last_modified: now,
        flags: 0,
        cflags: 0,
        user_agent: "Linphone/5.2".into(),
        socket: Some("udp:192.0.2.13:5060".into()),
        methods: None,
        instance: None,
        reg_id: 0,
    };
    let mut natted = row("uloc-1", "alice", "sip:alice@10.0.0.7:5060");
    natted.received = Some("sip:198.51.100.7:40123".into());
    natted.flags = 0x40;
    natted.q = 0.7;
    let plain = row("uloc-2", "bob", "sip:bob@192.0.2.50");
    t.db(async |db| {
        db.upsert_binding(UlTable::Location, &natted).await.unwrap();
        db.upsert_binding(UlTable::Location, &plain).await.unwrap();
    });
    let all = t.ok(&["ul", "show"]);
    let lines: Vec<&str> = all.lines().collect();
    assert_eq!(lines.len(), 3, "{all}");
    assert!(
        lines[0].starts_with("AOR") && lines[0].contains("RECEIVED") && lines[0].contains("NAT") && lines[0].ends_with("USER-AGENT"),
        "{all}"
    );
    let a = lines[1];
    for part in [
        "alice@example.com",
        "sip:alice@10.0.0.7:5060",
        "sip:198.51.100.7:40123",
        "0.7",
        " 64 ",
        " nat ",
        "Linphone/5.2",
    ] {
        assert!(a.contains(part), "{part:?} missing in {a:?}");
    }
    assert!(
        a.contains(" s ") || a.contains("3600 s") || a.contains("3599 s"),
        "seconds left: {a}"
    );
    assert!(lines[2].starts_with("bob@example.com") && !lines[2].contains(" nat "), "{all}");

    let one = t.ok(&["ul", "show", "alice@example.com"]);
    assert_eq!(one.lines().count(), 2, "{one}");
    assert!(one.contains("sip:alice@10.0.0.7:5060"));
    assert_eq!(t.ok(&["ul", "show", "carol@example.com"]), "(none)\n");
    t.fails(&["ul", "show", "alice"]);
    let json = t.ok(&["ul", "show", "alice@example.com", "--json"]);
    assert!(
        json.contains("\"received\":\"sip:198.51.100.7:40123\"") && json.contains("\"nat\":true") && json.contains("\"flags\":64"),
        "{json}"
    );
}

/// PostgreSQL and MySQL are not migrated implicitly: the error says what to
/// run; `db migrate` then works, twice. (SQLite migrates itself.)
fn unmigrated_server_database(kind: Kind) {
    let Some(t) = fresh(kind, false) else { return };
    if kind == Kind::Sqlite {
        assert_eq!(t.ok(&["user", "list"]), "(none)\n");
        assert!(t.ok(&["db", "migrate"]).contains("schema up to date"));
        return;
    }
    let e = t.fails(&["user", "list"]);
    assert!(e.contains("run `serlua db migrate --db "), "{e}");
    let out = t.ok(&["db", "migrate"]);
    assert!(
        out.contains("schema up to date") && out.contains("location 9") && out.contains("subscriber 7"),
        "{out}"
    );
    assert_eq!(t.ok(&["db", "migrate"]), out);
    assert_eq!(t.ok(&["user", "list"]), "(none)\n");
}

#[test]
fn refused_database_is_one_line() {
    let dir = std::env::temp_dir();
    for url in ["postgres://postgres:hunter2@127.0.0.1:1/test", "mysql://root@127.0.0.1:1/test"] {
        let out = Command::new(env!("CARGO_BIN_EXE_serlua"))
            .args(["user", "add", "a@example.com", "pw", "--db", url])
            .current_dir(&dir)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.starts_with("serlua: cannot connect to ") && err.contains("refused"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }
    let out = Command::new(env!("CARGO_BIN_EXE_serlua"))
        .args(["user", "list", "--db", "redis://x"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).starts_with("serlua: bad database URL"));
}

#[test]
fn the_default_database_is_serlua_db_in_the_working_directory() {
    let dir = std::env::temp_dir().join(unique_name());
    std::fs::create_dir_all(&dir).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_serlua"))
        .args(["domain", "add", "example.com"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir.join("serlua.db").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn parse_aor_accepts_what_kamctl_does() {
    use serlua::admin::parse_aor;
    assert_eq!(parse_aor("alice@Example.COM").unwrap(), ("alice".into(), "example.com".into()));
    assert_eq!(parse_aor("SIP:alice@example.com").unwrap(), ("alice".into(), "example.com".into()));
    assert_eq!(
        parse_aor("sips:Alice@[2001:DB8::1]").unwrap(),
        ("Alice".into(), "[2001:db8::1]".into())
    );
    assert_eq!(parse_aor("bob@192.0.2.1").unwrap(), ("bob".into(), "192.0.2.1".into()));
    for bad in [
        "alice",
        "alice@",
        "@x.com",
        "a@b@c",
        "a@b.com;transport=tcp",
        "a@-b.com",
        &format!("{}@x.com", "u".repeat(65)),
    ] {
        assert!(parse_aor(bad).is_err(), "{bad}");
    }
}
