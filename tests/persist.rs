//! usrloc persistence through the database thread: bindings written
//! behind the REGISTERs reach the database, survive a restart, and a
//! binding another proxy writes to a shared database is picked up.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serlua::app::{Overrides, script_config};
use serlua::core::Shared;
use serlua::db::{Db, UlTable};
use serlua::sip::SipMessage;
use serlua::transport::{Incoming, Proto};
use serlua::worker::Worker;

const SCRIPT: &str = r#"
listen = "udp:127.0.0.1:5060"
table_refresh = 1
modparam("usrloc", "sync_interval", 1)
function route.main()
  if msg.method == "REGISTER" then
    if not save("location") then sl_reply_error() end
    return
  end
  if not lookup("location") then sl_send_reply(404, "Not Found") return end
  sl_send_reply(299, msg.ruri)
end
"#;

struct Proxy {
    shared: Arc<Shared>,
    w: Worker,
    db: Option<serlua::persist::DbThread>,
}

impl Proxy {
    fn start(url: &str) -> Proxy {
        let now = Instant::now();
        let ov = Overrides {
            db: Some(url.to_string()),
            ..Default::default()
        };
        let (cfg, src) = script_config(Path::new("p.lua"), Some(SCRIPT.into()), &ov, now).expect("config");
        let shared = Arc::new(Shared::new(cfg));
        let db = serlua::persist::start(shared.clone()).expect("database loads");
        let w = Worker::from_source(shared.clone(), 0, Path::new("p.lua"), src, now).expect("loads");
        Proxy { shared, w, db: Some(db) }
    }

    fn send(&mut self, text: &str) -> SipMessage {
        self.w.handle(
            Instant::now(),
            Incoming {
                local: 0,
                proto: Proto::Udp,
                src: "127.0.0.1:5090".parse().unwrap(),
                conn: None,
                data: Bytes::from(text.replace('\n', "\r\n")),
            },
        );
        let out = self.w.take_transmits();
        assert_eq!(out.len(), 1);
        SipMessage::parse(out[0].data.clone()).unwrap()
    }

    fn stop(mut self) {
        if let Some(db) = self.db.take() {
            db.stop(Duration::from_secs(5));
        }
    }
}

fn register(user: &str, cseq: u32, expires: u32) -> String {
    format!(
        "REGISTER sip:example.com SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bK-{user}-{cseq}\nFrom: <sip:{user}@example.com>;tag=1\nTo: <sip:{user}@example.com>\nCall-ID: reg-{user}\nCSeq: {cseq} REGISTER\nContact: <sip:{user}@127.0.0.1:5090>\nExpires: {expires}\nContent-Length: 0\n\n"
    )
}

fn options(user: &str) -> String {
    format!(
        "OPTIONS sip:{user}@example.com SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bK-o-{user}\nFrom: <sip:x@example.com>;tag=1\nTo: <sip:{user}@example.com>\nCall-ID: opt-{user}\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n"
    )
}

fn rows(url: &str) -> Vec<serlua::db::BindingRow> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut db = Db::connect(url).await.unwrap();
        db.load_bindings(UlTable::Location).await.unwrap()
    })
}

fn wait_for(mut f: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < until, "timed out waiting");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bindings_are_written_behind_and_survive_a_restart() {
    let dir = std::env::temp_dir().join(format!("serlua-persist-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("a.db").display());
    let mut p = Proxy::start(&url);
    for i in 0..100 {
        assert_eq!(p.send(&register(&format!("u{i}"), 1, 3600)).status(), Some(200));
    }
    assert_eq!(p.send(&register("u7", 2, 0)).status(), Some(200), "unregister one");
    wait_for(|| rows(&url).len() == 99);
    let r = rows(&url).into_iter().find(|r| r.username == "u3").expect("row");
    assert_eq!(r.contact, "sip:u3@127.0.0.1:5090");
    assert_eq!(r.callid, "reg-u3");
    p.stop();
    // A new proxy on the same database routes to every binding.
    let mut p = Proxy::start(&url);
    assert_eq!(p.shared.store.location.binding_count(), 99);
    for i in [0, 42, 99] {
        assert_eq!(p.send(&options(&format!("u{i}"))).status(), Some(299));
    }
    assert_eq!(p.send(&options("u7")).status(), Some(404));
    p.stop();
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_binding_written_by_another_proxy_is_picked_up() {
    let dir = std::env::temp_dir().join(format!("serlua-persist-b-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("b.db").display());
    let mut a = Proxy::start(&url);
    let mut b = Proxy::start(&url);
    assert_eq!(a.send(&register("shared", 1, 3600)).status(), Some(200));
    wait_for(|| b.shared.store.location.binding_count() == 1);
    assert_eq!(b.send(&options("shared")).status(), Some(299));
    a.stop();
    b.stop();
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_subscriber_added_by_another_process_is_loaded_by_the_periodic_refresh() {
    let dir = std::env::temp_dir().join(format!("serlua-persist-c-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("c.db").display());
    let p = Proxy::start(&url);
    // A few refresh ticks with nothing else writing (they are skipped).
    std::thread::sleep(Duration::from_millis(2500));
    assert!(p.shared.store.subscriber("carol", "example.com").is_none());
    // `serlua user add` from another process: a commit on another connection.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut db = Db::connect(&url).await.unwrap();
        db.add_subscriber(&serlua::db::Subscriber::new("carol", "example.com", "pw"))
            .await
            .unwrap();
    });
    wait_for(|| p.shared.store.subscriber("carol", "example.com").is_some());
    p.stop();
    std::fs::remove_dir_all(&dir).ok();
}
