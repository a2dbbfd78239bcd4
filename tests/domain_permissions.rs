//! domain (is_uri_host_local, is_from_local), permissions
//! (allow_trusted) and lookup("aliases") over the in-memory tables.

use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use serlua::app::{Overrides, instance};
use serlua::db::{BindingRow, DomainRow, TrustedRow};
use serlua::sip::SipMessage;
use serlua::transport::{Incoming, Proto};
use serlua::worker::Worker;

const SCRIPT: &str = r#"
listen = "udp:127.0.0.1:5060"
function route.main()
  local r = {}
  if is_uri_host_local() then r[#r + 1] = "uri" end
  if is_from_local() then r[#r + 1] = "from" end
  if allow_trusted() then r[#r + 1] = "trusted" end
  if is_domain_local("sip:x@Example.COM") then r[#r + 1] = "example" end
  if lookup("aliases") then r[#r + 1] = "alias=" .. msg.ruri end
  sl_send_reply(200, table.concat(r, ","))
end
"#;

fn worker() -> Worker {
    let w = instance(Path::new("t.lua"), Some(SCRIPT.into()), &Overrides::default(), Instant::now()).expect("loads");
    let store = &w.env.shared.store;
    store.set_domains(vec![DomainRow {
        domain: "Example.com".into(),
        did: None,
    }]);
    store.set_trusted(vec![
        TrustedRow {
            id: None,
            src_ip: "127.0.0.9".into(),
            proto: "udp".into(),
            from_pattern: Some("^sip:.*@gw\\.example\\.net$".into()),
            ruri_pattern: None,
            tag: None,
            priority: 0,
        },
        TrustedRow {
            id: None,
            src_ip: "127.0.0.8".into(),
            proto: "any".into(),
            from_pattern: None,
            ruri_pattern: None,
            tag: None,
            priority: 0,
        },
        TrustedRow {
            id: None,
            src_ip: "127.0.0.7".into(),
            proto: "tcp".into(),
            from_pattern: None,
            ruri_pattern: None,
            tag: None,
            priority: 0,
        },
        TrustedRow {
            id: None,
            src_ip: "127.0.0.6".into(),
            proto: "any".into(),
            from_pattern: Some("(".into()),
            ruri_pattern: None,
            tag: None,
            priority: 0,
        },
    ]);
    let far = chrono::DateTime::from_timestamp(4_000_000_000, 0).unwrap().naive_utc();
    store.aliases.merge_rows(&[BindingRow {
        ruid: "a1".into(),
        username: "sales".into(),
        domain: Some("example.com".into()),
        contact: "sip:alice@example.com".into(),
        received: None,
        path: None,
        expires: far,
        q: 1.0,
        callid: "alias".into(),
        cseq: 1,
        last_modified: far,
        flags: 0,
        cflags: 0,
        user_agent: String::new(),
        socket: None,
        methods: None,
        instance: None,
        reg_id: 0,
    }]);
    w
}

fn ask(w: &mut Worker, src: &str, ruri: &str, from: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let text = format!(
        "OPTIONS {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP {src};branch=z9hG4bK-{n}\r\nFrom: <{from}>;tag=1\r\nTo: <{ruri}>\r\nCall-ID: q-{n}@x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    w.handle(
        Instant::now(),
        Incoming {
            local: 0,
            proto: Proto::Udp,
            src: src.parse().unwrap(),
            conn: None,
            data: Bytes::from(text),
        },
    );
    let out = w.take_transmits();
    assert_eq!(out.len(), 1);
    SipMessage::parse(out[0].data.clone()).unwrap().reason().unwrap().to_string()
}

#[test]
fn local_domains_are_case_insensitive_and_foreign_ones_are_not_local() {
    let mut w = worker();
    assert_eq!(
        ask(&mut w, "127.0.0.1:5090", "sip:bob@EXAMPLE.com", "sip:a@example.com"),
        "uri,from,example"
    );
    assert_eq!(ask(&mut w, "127.0.0.1:5090", "sip:bob@other.org", "sip:a@other.org"), "example");
}

#[test]
fn trusted_matches_ip_proto_and_from_pattern() {
    let mut w = worker();
    assert!(ask(&mut w, "127.0.0.9:5060", "sip:1@other.org", "sip:x@gw.example.net").contains("trusted"));
    assert!(
        !ask(&mut w, "127.0.0.9:5060", "sip:1@other.org", "sip:x@evil.example.net").contains("trusted"),
        "From pattern"
    );
    assert!(
        ask(&mut w, "127.0.0.8:5060", "sip:1@other.org", "sip:x@anything").contains("trusted"),
        "proto any"
    );
    assert!(
        !ask(&mut w, "127.0.0.7:5060", "sip:1@other.org", "sip:x@anything").contains("trusted"),
        "tcp only, this came over udp"
    );
    assert!(
        !ask(&mut w, "127.0.0.6:5060", "sip:1@other.org", "sip:x@anything").contains("trusted"),
        "a row with a bad pattern never matches"
    );
    assert!(
        !ask(&mut w, "127.0.0.5:5060", "sip:1@other.org", "sip:x@gw.example.net").contains("trusted"),
        "unknown address"
    );
}

#[test]
fn lookup_aliases_rewrites_to_the_target() {
    let mut w = worker();
    assert!(ask(&mut w, "127.0.0.1:5090", "sip:sales@example.com", "sip:a@example.com").ends_with("alias=sip:alice@example.com"));
    assert!(!ask(&mut w, "127.0.0.1:5090", "sip:support@example.com", "sip:a@example.com").contains("alias"));
}
