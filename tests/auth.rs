//! Digest authentication through the real core (auth, auth_db, uri_db;
//! RFC 2617, RFC 7616, RFC 8760), driven without sockets on a virtual
//! clock. Client responses are computed here with the md-5/sha2 crates,
//! independently of the module's own helpers.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use md5::{Digest, Md5};
use serlua::app::{Overrides, instance};
use serlua::db::Subscriber;
use serlua::sip::{HeaderName, SipMessage};
use serlua::transport::{Incoming, Proto};
use serlua::worker::Worker;
use sha2::Sha256;

const UAC: &str = "127.0.0.1:5090";
const UAS: &str = "127.0.0.1:5070";
const REALM: &str = "example.com";

struct Net {
    w: Worker,
    now: Instant,
}

struct Out {
    dst: SocketAddr,
    msg: SipMessage,
}

/// The reference's REGISTER handling (route[2]) and INVITE handling
/// (route[3]), with a 200 in place of save() and a relay to the UAS.
fn script(qop: &str, params: &str) -> String {
    format!(
        r#"
listen = "udp:127.0.0.1:5060"
{params}
function route.main()
  if msg.method == "REGISTER" then
    if not www_authorize("", "subscriber") then www_challenge("", "{qop}") return end
    if not check_to() then sl_send_reply(401, "Unauthorized") return end
    consume_credentials()
    sl_send_reply(200, "OK")
    return
  end
  if not proxy_authorize("", "subscriber") then proxy_challenge("", "{qop}") return end
  if not check_from() then sl_send_reply(403, "Use From=ID") return end
  consume_credentials()
  rewritehostport("127.0.0.1:5070")
  if not t_relay() then sl_reply_error() end
end
"#
    )
}

fn sub(user: &str, password: &str) -> Subscriber {
    Subscriber {
        username: user.into(),
        domain: REALM.into(),
        password: password.into(),
        ha1: String::new(),
        ha1b: String::new(),
    }
}

impl Net {
    fn new(script: &str) -> Net {
        let now = Instant::now();
        let w = instance(Path::new("auth_test.lua"), Some(script.to_string()), &Overrides::default(), now).expect("script loads");
        w.env
            .shared
            .store
            .set_subscribers(vec![sub("alice", "secret"), sub("bob", "hunter2")]);
        Net { w, now }
    }

    fn recv(&mut self, text: &str) {
        self.recv_from(UAC, text)
    }

    fn recv_from(&mut self, from: &str, text: &str) {
        let data = Bytes::from(text.replace('\n', "\r\n"));
        self.w.handle(
            self.now,
            Incoming {
                local: 0,
                proto: Proto::Udp,
                src: from.parse().unwrap(),
                conn: None,
                data,
            },
        );
    }

    fn advance(&mut self, secs: u64) {
        self.now += Duration::from_secs(secs);
        self.w.handle_timeouts(self.now);
    }

    fn sent(&mut self) -> Vec<Out> {
        self.w
            .take_transmits()
            .into_iter()
            .map(|t| Out {
                dst: t.dst,
                msg: SipMessage::parse(t.data).expect("the proxy sends parsable messages"),
            })
            .collect()
    }

    /// Sends `req` and returns the one reply it got back.
    fn ask(&mut self, req: &str) -> SipMessage {
        self.recv(req);
        let mut out = self.sent();
        assert_eq!(out.len(), 1, "expected one reply");
        let o = out.remove(0);
        assert_eq!(o.dst, UAC.parse().unwrap());
        o.msg
    }
}

static BRANCH: AtomicU32 = AtomicU32::new(0);

fn next_branch() -> u32 {
    BRANCH.fetch_add(1, Ordering::Relaxed)
}

fn register(user: &str, to_user: &str, auth: Option<&str>) -> String {
    let b = next_branch();
    let auth = auth.map(|a| format!("Authorization: {a}\n")).unwrap_or_default();
    format!(
        "REGISTER sip:example.com SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bK-reg{b}
Max-Forwards: 70
From: <sip:{user}@example.com>;tag=r{b}
To: <sip:{to_user}@example.com>
Call-ID: reg-{b}@127.0.0.1
CSeq: {b} REGISTER
Contact: <sip:{user}@127.0.0.1:5090>
{auth}Content-Length: 0

"
    )
}

fn invite(from_user: &str, proxy_auth: &[String]) -> String {
    let b = next_branch();
    let auth: String = proxy_auth.iter().map(|a| format!("Proxy-Authorization: {a}\n")).collect();
    format!(
        "INVITE sip:carol@example.com SIP/2.0
Via: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bK-inv{b}
Max-Forwards: 70
From: <sip:{from_user}@example.com>;tag=i{b}
To: <sip:carol@example.com>
Call-ID: inv-{b}@127.0.0.1
CSeq: 1 INVITE
Contact: <sip:{from_user}@127.0.0.1:5090>
{auth}Content-Length: 0

"
    )
}

// ---- an independent digest client ------------------------------------------

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn h(alg: &str, s: &str) -> String {
    if alg.to_ascii_uppercase().starts_with("SHA-256") {
        hex(&Sha256::digest(s.as_bytes()))
    } else {
        hex(&Md5::digest(s.as_bytes()))
    }
}

#[derive(Debug, Clone)]
struct Challenge {
    realm: String,
    nonce: String,
    qop: Option<String>,
    algorithm: Option<String>,
    stale: bool,
}

fn param(v: &str, name: &str) -> Option<String> {
    let body = v.strip_prefix("Digest ")?;
    for part in body.split(", ") {
        if let Some((n, val)) = part.split_once('=') {
            if n.trim().eq_ignore_ascii_case(name) {
                return Some(val.trim_matches('"').to_string());
            }
        }
    }
    None
}

fn challenges(reply: &SipMessage, name: &HeaderName) -> Vec<Challenge> {
    reply
        .headers(name)
        .iter()
        .map(|v| {
            let v = String::from_utf8_lossy(v).to_string();
            Challenge {
                realm: param(&v, "realm").expect("realm"),
                nonce: param(&v, "nonce").expect("nonce"),
                qop: param(&v, "qop"),
                algorithm: param(&v, "algorithm"),
                stale: param(&v, "stale").is_some_and(|s| s.eq_ignore_ascii_case("true")),
            }
        })
        .collect()
}

fn www(reply: &SipMessage) -> Challenge {
    assert_eq!(reply.status(), Some(401));
    let c = challenges(reply, &HeaderName::WwwAuthenticate);
    assert!(!c.is_empty(), "401 without a challenge");
    c[0].clone()
}

struct Client<'a> {
    user: &'a str,
    password: &'a str,
    method: &'a str,
    uri: &'a str,
    alg: &'a str,
    /// (nc, cnonce) for qop=auth.
    qop: Option<(u32, &'a str)>,
}

impl Client<'_> {
    fn md5(user: &'static str, password: &'static str) -> Client<'static> {
        Client {
            user,
            password,
            method: "REGISTER",
            uri: "sip:example.com",
            alg: "MD5",
            qop: None,
        }
    }

    fn response(&self, ch: &Challenge) -> String {
        let mut ha1 = h(self.alg, &format!("{}:{}:{}", self.user, ch.realm, self.password));
        let cnonce = self.qop.map(|(_, c)| c).unwrap_or("sesscnonce");
        if self.alg.ends_with("-sess") {
            ha1 = h(self.alg, &format!("{ha1}:{}:{cnonce}", ch.nonce));
        }
        let ha2 = h(self.alg, &format!("{}:{}", self.method, self.uri));
        match self.qop {
            Some((nc, cnonce)) => h(self.alg, &format!("{ha1}:{}:{nc:08x}:{cnonce}:auth:{ha2}", ch.nonce)),
            None => h(self.alg, &format!("{ha1}:{}:{ha2}", ch.nonce)),
        }
    }

    fn header(&self, ch: &Challenge) -> String {
        let mut s = format!(
            r#"Digest username="{}", realm="{}", nonce="{}", uri="{}", response="{}", algorithm={}"#,
            self.user,
            ch.realm,
            ch.nonce,
            self.uri,
            self.response(ch),
            self.alg
        );
        match self.qop {
            Some((nc, cnonce)) => s += &format!(r#", qop=auth, nc={nc:08x}, cnonce="{cnonce}""#),
            None if self.alg.ends_with("-sess") => s += r#", cnonce="sesscnonce""#,
            None => {}
        }
        s
    }
}

fn first_challenge(n: &mut Net) -> Challenge {
    www(&n.ask(&register("alice", "alice", None)))
}

// ---- REGISTER (www_authorize / www_challenge / check_to) ---------------------

#[test]
fn register_is_challenged_then_accepted() {
    let mut n = Net::new(&script("0", ""));
    let r = n.ask(&register("alice", "alice", None));
    assert_eq!(r.status(), Some(401));
    assert!(r.to().tag().is_some(), "a locally generated reply carries a To-tag");
    let all = challenges(&r, &HeaderName::WwwAuthenticate);
    assert_eq!(all.len(), 1, "one challenge by default (MD5)");
    let ch = &all[0];
    assert_eq!(ch.realm, REALM, "realm \"\" is the To host of a REGISTER");
    assert_eq!(ch.algorithm.as_deref(), Some("MD5"));
    assert_eq!(ch.qop, None, "qop \"0\" offers no qop");
    assert!(!ch.stale);

    let ok = n.ask(&register("alice", "alice", Some(&Client::md5("alice", "secret").header(ch))));
    assert_eq!(ok.status(), Some(200));
    // Without qop the nonce may be reused until it expires (SER semantics).
    let again = n.ask(&register("alice", "alice", Some(&Client::md5("alice", "secret").header(ch))));
    assert_eq!(again.status(), Some(200));
}

#[test]
fn wrong_password_is_challenged_again() {
    let mut n = Net::new(&script("0", ""));
    let ch = first_challenge(&mut n);
    let r = n.ask(&register("alice", "alice", Some(&Client::md5("alice", "wrong").header(&ch))));
    let ch2 = www(&r);
    assert!(!ch2.stale);
    assert_ne!(ch2.nonce, ch.nonce, "every challenge has a fresh nonce");
}

#[test]
fn unknown_user_is_challenged() {
    let mut n = Net::new(&script("0", ""));
    let ch = first_challenge(&mut n);
    let r = n.ask(&register("mallory", "mallory", Some(&Client::md5("mallory", "secret").header(&ch))));
    assert!(!www(&r).stale);
}

#[test]
fn expired_nonce_gets_stale_true() {
    let mut n = Net::new(&script("0", ""));
    let ch = first_challenge(&mut n);
    let creds = Client::md5("alice", "secret").header(&ch);
    n.advance(299);
    assert_eq!(
        n.ask(&register("alice", "alice", Some(&creds))).status(),
        Some(200),
        "valid for nonce_expire (300 s)"
    );
    n.advance(2);
    let r = n.ask(&register("alice", "alice", Some(&creds)));
    let ch2 = www(&r);
    assert!(ch2.stale, "a correct response with an expired nonce: stale=true");
    // RFC 2617 §3.2.1: stale only when the response itself was right.
    let wrong = n.ask(&register("alice", "alice", Some(&Client::md5("alice", "nope").header(&ch))));
    assert!(!www(&wrong).stale);
    // The fresh nonce works.
    let ok = n.ask(&register("alice", "alice", Some(&Client::md5("alice", "secret").header(&ch2))));
    assert_eq!(ok.status(), Some(200));
}

#[test]
fn nonce_expire_parameter() {
    let mut n = Net::new(&script("0", r#"modparam("auth", "nonce_expire", 10)"#));
    let ch = first_challenge(&mut n);
    let creds = Client::md5("alice", "secret").header(&ch);
    n.advance(9);
    assert_eq!(n.ask(&register("alice", "alice", Some(&creds))).status(), Some(200));
    n.advance(2);
    assert!(www(&n.ask(&register("alice", "alice", Some(&creds)))).stale);
}

#[test]
fn qop_auth_nonce_count_must_grow() {
    let mut n = Net::new(&script("1", ""));
    let ch = first_challenge(&mut n);
    assert_eq!(ch.qop.as_deref(), Some("auth"));
    let with_nc = |nc: u32| {
        let mut c = Client::md5("alice", "secret");
        c.qop = Some((nc, "0a4f113b"));
        c.header(&ch)
    };
    assert_eq!(n.ask(&register("alice", "alice", Some(&with_nc(1)))).status(), Some(200));
    let replay = n.ask(&register("alice", "alice", Some(&with_nc(1))));
    assert!(!www(&replay).stale, "a replayed nonce-count is refused, not stale");
    assert_eq!(n.ask(&register("alice", "alice", Some(&with_nc(2)))).status(), Some(200));
    assert_eq!(
        n.ask(&register("alice", "alice", Some(&with_nc(5)))).status(),
        Some(200),
        "counts may skip"
    );
    assert_eq!(
        n.ask(&register("alice", "alice", Some(&with_nc(4)))).status(),
        Some(401),
        "but never go back"
    );
    // A second nonce has its own count.
    let ch2 = first_challenge(&mut n);
    let mut c = Client::md5("alice", "secret");
    c.qop = Some((1, "abc"));
    assert_eq!(n.ask(&register("alice", "alice", Some(&c.header(&ch2)))).status(), Some(200));
}

#[test]
fn ha1_only_subscribers_work_for_md5() {
    let mut n = Net::new(&script("0", ""));
    let md5 = |s: &str| hex(&Md5::digest(s.as_bytes()));
    n.w.env.shared.store.set_subscribers(vec![
        Subscriber {
            username: "alice".into(),
            domain: REALM.into(),
            password: String::new(),
            ha1: md5("alice:example.com:secret").to_uppercase(),
            ha1b: String::new(),
        },
        Subscriber {
            username: "bob".into(),
            domain: REALM.into(),
            password: String::new(),
            ha1: String::new(),
            ha1b: md5("bob@example.com:example.com:hunter2"),
        },
    ]);
    let ch = first_challenge(&mut n);
    let ok = n.ask(&register("alice", "alice", Some(&Client::md5("alice", "secret").header(&ch))));
    assert_eq!(ok.status(), Some(200), "ha1 column (any hex case)");
    let bad = n.ask(&register("alice", "alice", Some(&Client::md5("alice", "other").header(&ch))));
    assert_eq!(bad.status(), Some(401));
    // A username with @domain uses ha1b (Kamailio's convention); check_to
    // compares the user part.
    let ok = n.ask(&register(
        "bob",
        "bob",
        Some(&Client::md5("bob@example.com", "hunter2").header(&ch)),
    ));
    assert_eq!(ok.status(), Some(200), "ha1b column");
    // bob has no ha1: a plain username cannot authenticate.
    let no = n.ask(&register("bob", "bob", Some(&Client::md5("bob", "hunter2").header(&ch))));
    assert_eq!(no.status(), Some(401));
}

#[test]
fn md5_sess_works() {
    let mut n = Net::new(&script("1", ""));
    let ch = first_challenge(&mut n);
    let mut c = Client::md5("alice", "secret");
    c.alg = "MD5-sess";
    c.qop = Some((1, "cn0nce"));
    assert_eq!(n.ask(&register("alice", "alice", Some(&c.header(&ch)))).status(), Some(200));
}

#[test]
fn sha256_challenge_and_response() {
    let mut n = Net::new(&script("1", r#"modparam("auth", "algorithms", "SHA-256,MD5")"#));
    let r = n.ask(&register("alice", "alice", None));
    let all = challenges(&r, &HeaderName::WwwAuthenticate);
    assert_eq!(all.len(), 2, "one challenge per algorithm (RFC 8760)");
    assert_eq!(all[0].algorithm.as_deref(), Some("SHA-256"), "preferred first");
    assert_eq!(all[1].algorithm.as_deref(), Some("MD5"));
    let mut c = Client::md5("alice", "secret");
    c.alg = "SHA-256";
    c.qop = Some((1, "c1"));
    assert_eq!(n.ask(&register("alice", "alice", Some(&c.header(&all[0])))).status(), Some(200));
    let mut m = Client::md5("alice", "secret");
    // Both challenges share one nonce, so its count goes on.
    m.qop = Some((2, "c2"));
    assert_eq!(
        n.ask(&register("alice", "alice", Some(&m.header(&all[1])))).status(),
        Some(200),
        "MD5 still accepted"
    );
    let mut s = Client::md5("alice", "secret");
    s.alg = "SHA-256-sess";
    s.qop = Some((1, "c3"));
    let ch = first_challenge(&mut n);
    assert_eq!(n.ask(&register("alice", "alice", Some(&s.header(&ch)))).status(), Some(200));
    let mut wrong = Client::md5("alice", "guess");
    wrong.alg = "SHA-256";
    assert_eq!(n.ask(&register("alice", "alice", Some(&wrong.header(&ch)))).status(), Some(401));
}

#[test]
fn sha256_needs_the_clear_password_and_md5_only_when_offered() {
    let mut n = Net::new(&script("0", r#"modparam("auth", "algorithms", "SHA-256")"#));
    let md5 = |s: &str| hex(&Md5::digest(s.as_bytes()));
    n.w.env.shared.store.set_subscribers(vec![
        sub("alice", "secret"),
        Subscriber {
            username: "bob".into(),
            domain: REALM.into(),
            password: String::new(),
            ha1: md5("bob:example.com:hunter2"),
            ha1b: String::new(),
        },
    ]);
    let ch = first_challenge(&mut n);
    assert_eq!(ch.algorithm.as_deref(), Some("SHA-256"));
    let mut c = Client::md5("bob", "hunter2");
    c.alg = "SHA-256";
    assert_eq!(
        n.ask(&register("bob", "bob", Some(&c.header(&ch)))).status(),
        Some(401),
        "no clear password: refused"
    );
    let mut a = Client::md5("alice", "secret");
    a.alg = "SHA-256";
    assert_eq!(n.ask(&register("alice", "alice", Some(&a.header(&ch)))).status(), Some(200));
    let m = Client::md5("alice", "secret");
    assert_eq!(
        n.ask(&register("alice", "alice", Some(&m.header(&ch)))).status(),
        Some(401),
        "MD5 was not offered"
    );
}

#[test]
fn forged_nonce_is_refused_and_not_stale() {
    let mut n = Net::new(&script("0", ""));
    let mut ch = first_challenge(&mut n);
    // Flip one character of the nonce; the client computes a correct
    // response for the forged nonce.
    let mut bytes = ch.nonce.clone().into_bytes();
    bytes[5] = if bytes[5] == b'A' { b'B' } else { b'A' };
    ch.nonce = String::from_utf8(bytes).unwrap();
    let r = n.ask(&register("alice", "alice", Some(&Client::md5("alice", "secret").header(&ch))));
    assert!(!www(&r).stale);
    // A nonce from another proxy instance (another key) is refused too.
    let mut other = Net::new(&script("0", ""));
    let foreign = first_challenge(&mut other);
    let r = n.ask(&register("alice", "alice", Some(&Client::md5("alice", "secret").header(&foreign))));
    assert!(!www(&r).stale);
}

#[test]
fn unsupported_qop_and_options_are_refused_cleanly() {
    let mut n = Net::new(&script("1", ""));
    let ch = first_challenge(&mut n);
    let mut c = Client::md5("alice", "secret");
    c.qop = Some((1, "x"));
    let good = c.header(&ch);
    for bad in [
        good.replace("qop=auth", "qop=auth-int"),
        good.replace("algorithm=MD5", "algorithm=SHA-512-256"),
        good.clone() + ", userhash=true",
        good.replace("nc=00000001", "nc=1"),
        good.replace("nc=00000001", "nc=0000000g"),
    ] {
        let r = n.ask(&register("alice", "alice", Some(&bad)));
        assert_eq!(r.status(), Some(401), "{bad}");
        assert!(r.has_header(&HeaderName::WwwAuthenticate));
    }
    assert_eq!(n.ask(&register("alice", "alice", Some(&good))).status(), Some(200));
}

#[test]
fn malformed_credentials_get_a_challenge_not_an_error() {
    let mut n = Net::new(&script("0", ""));
    let ch = first_challenge(&mut n);
    let good = Client::md5("alice", "secret").header(&ch);
    let huge = format!(
        r#"Digest username="{}", realm="example.com", nonce="x", uri="sip:example.com", response="y""#,
        "a".repeat(3000)
    );
    let cases = vec![
        good.replace(r#"username="alice""#, "username=alice"),
        good.replace(r#"realm="example.com""#, "realm=example.com"),
        good.replace(r#"username="alice""#, r#"username="alice", username="bob""#),
        good.replace(r#"username="alice", "#, ""),
        good.replace(r#"username="alice""#, r#"username="""#),
        good.replace(r#"username="alice""#, r#"username="alice"#),
        good.replace(", ", " "),
        good.replace("Digest ", "Basic "),
        good.replace(r#"response=""#, r#"response="0"#),
        good.replace(r#"nonce=""#, r#"nonce="%%%"#),
        "Digest".to_string(),
        "Digest ,,,".to_string(),
        "Digest =".to_string(),
        r#"Digest username="\"#.to_string(),
        huge,
    ];
    for bad in &cases {
        let r = n.ask(&register("alice", "alice", Some(bad)));
        assert_eq!(r.status(), Some(401), "{bad}");
        assert!(r.has_header(&HeaderName::WwwAuthenticate), "{bad}");
    }
    // Credentials for another realm are not ours: challenged.
    let other = good.replace(r#"realm="example.com""#, r#"realm="other.net""#);
    assert_eq!(n.ask(&register("alice", "alice", Some(&other))).status(), Some(401));
    assert_eq!(n.ask(&register("alice", "alice", Some(&good))).status(), Some(200));
}

#[test]
fn check_to_refuses_another_users_aor() {
    let mut n = Net::new(&script("0", ""));
    let ch = first_challenge(&mut n);
    // alice authenticates correctly but tries to register bob's AOR.
    let r = n.ask(&register("alice", "bob", Some(&Client::md5("alice", "secret").header(&ch))));
    assert_eq!(r.status(), Some(401));
    assert!(
        !r.has_header(&HeaderName::WwwAuthenticate),
        "the script's plain 401, not a challenge"
    );
    // The user part compares case-sensitively (SER's uri_db).
    let r = n.ask(&register("alice", "Alice", Some(&Client::md5("alice", "secret").header(&ch))));
    assert!(!r.has_header(&HeaderName::WwwAuthenticate));
    assert_eq!(r.status(), Some(401));
}

#[test]
fn check_to_and_from_are_false_without_authorization() {
    let s = r#"
listen = "udp:127.0.0.1:5060"
function route.main()
  if check_to() or check_from() then sl_send_reply(500, "Oops") return end
  if not consume_credentials() then sl_send_reply(404, "Nothing") return end
end
"#;
    let mut n = Net::new(s);
    assert_eq!(n.ask(&register("alice", "alice", None)).status(), Some(404));
}

// ---- INVITE (proxy_authorize / proxy_challenge / check_from / consume) -------

#[test]
fn proxy_authorize_and_consume_credentials() {
    let mut n = Net::new(&script("0", ""));
    let r = n.ask(&invite("alice", &[]));
    assert_eq!(r.status(), Some(407));
    assert!(!r.has_header(&HeaderName::WwwAuthenticate));
    let ch = challenges(&r, &HeaderName::ProxyAuthenticate);
    assert_eq!(ch.len(), 1);
    assert_eq!(ch[0].realm, REALM, "realm \"\" is the From host for proxy_authorize");
    let mut c = Client::md5("alice", "secret");
    c.method = "INVITE";
    c.uri = "sip:carol@example.com";
    let ours = c.header(&ch[0]);
    let theirs = r#"Digest username="alice", realm="other.net", nonce="n", uri="sip:carol@example.com", response="0123456789abcdef0123456789abcdef""#.to_string();
    n.recv(&invite("alice", &[theirs.clone(), ours]));
    let out = n.sent();
    let fwd = out.iter().find(|o| o.msg.is_request()).expect("the INVITE is relayed");
    assert_eq!(fwd.dst, UAS.parse().unwrap());
    let left: Vec<String> = fwd
        .msg
        .headers(&HeaderName::ProxyAuthorization)
        .iter()
        .map(|v| String::from_utf8_lossy(v).to_string())
        .collect();
    assert_eq!(left, vec![theirs], "our credentials are consumed, the next proxy's are kept");
}

#[test]
fn consumed_credentials_leave_no_header() {
    let mut n = Net::new(&script("0", ""));
    let ch = challenges(&n.ask(&invite("bob", &[])), &HeaderName::ProxyAuthenticate);
    let mut c = Client::md5("bob", "hunter2");
    c.method = "INVITE";
    c.uri = "sip:carol@example.com";
    n.recv(&invite("bob", &[c.header(&ch[0])]));
    let out = n.sent();
    let fwd = out.iter().find(|o| o.msg.is_request()).expect("the INVITE is relayed");
    assert!(!fwd.msg.has_header(&HeaderName::ProxyAuthorization));
    assert!(!String::from_utf8_lossy(&fwd.msg.to_bytes()).contains("Proxy-Authorization"));
}

/// A reply from the UAS to a request the proxy forwarded.
fn reply_to(req: &SipMessage, status: u16, reason: &str) -> String {
    let mut s = format!("SIP/2.0 {status} {reason}\n");
    for v in req.headers(&HeaderName::Via) {
        s += &format!("Via: {}\n", String::from_utf8_lossy(&v));
    }
    let hv = |n: HeaderName| String::from_utf8_lossy(&req.header(&n).unwrap()).to_string();
    s += &format!("From: {}\nTo: {};tag=uas\n", hv(HeaderName::From), hv(HeaderName::To));
    s += &format!("Call-ID: {}\nCSeq: {}\nContent-Length: 0\n\n", req.call_id(), hv(HeaderName::CSeq));
    s
}

#[test]
fn consume_credentials_in_a_failure_route() {
    let s = r#"
listen = "udp:127.0.0.1:5060"
function route.main()
  if not proxy_authorize("", "subscriber") then proxy_challenge("", "0") return end
  t_on_failure("1")
  rewritehostport("127.0.0.1:5070")
  t_relay()
end
failure_route[1] = function()
  if consume_credentials() then
    rewritehostport("127.0.0.1:5071")
    t_relay()
  end
end
"#;
    let mut n = Net::new(s);
    let ch = challenges(&n.ask(&invite("alice", &[])), &HeaderName::ProxyAuthenticate);
    let mut c = Client::md5("alice", "secret");
    c.method = "INVITE";
    c.uri = "sip:carol@example.com";
    let theirs = r#"Digest username="alice", realm="other.net", nonce="n", uri="sip:carol@example.com", response="0123456789abcdef0123456789abcdef""#.to_string();
    n.recv(&invite("alice", &[c.header(&ch[0]), theirs.clone()]));
    let out = n.sent();
    let first = out.into_iter().find(|o| o.msg.is_request()).expect("relayed");
    assert_eq!(
        first.msg.headers(&HeaderName::ProxyAuthorization).len(),
        2,
        "not consumed in the request route"
    );
    n.recv_from(UAS, &reply_to(&first.msg, 486, "Busy Here"));
    let out = n.sent();
    let second = out
        .iter()
        .find(|o| o.msg.is_request() && o.dst == "127.0.0.1:5071".parse().unwrap())
        .expect("the failure route relays to the second target");
    let left: Vec<String> = second
        .msg
        .headers(&HeaderName::ProxyAuthorization)
        .iter()
        .map(|v| String::from_utf8_lossy(v).to_string())
        .collect();
    assert_eq!(
        left,
        vec![theirs],
        "credentials answering our nonce are consumed in the failure route"
    );
}

#[test]
fn check_from_with_another_user_gets_403() {
    let mut n = Net::new(&script("0", ""));
    let ch = challenges(&n.ask(&invite("bob", &[])), &HeaderName::ProxyAuthenticate);
    // alice's credentials on a request From bob.
    let mut c = Client::md5("alice", "secret");
    c.method = "INVITE";
    c.uri = "sip:carol@example.com";
    let r = n.ask(&invite("bob", &[c.header(&ch[0])]));
    assert_eq!(r.status(), Some(403));
}

#[test]
fn explicit_realm_and_check_from_host() {
    let s = r#"
listen = "udp:127.0.0.1:5060"
function route.main()
  if not proxy_authorize("example.com", "subscriber") then proxy_challenge("example.com", 0) return end
  if not check_from() then sl_send_reply(403, "Use From=ID") return end
  sl_send_reply(200, "OK")
end
"#;
    let mut n = Net::new(s);
    let text = invite("alice", &[]).replace("@example.com>;tag", "@EXAMPLE.com>;tag");
    let ch = challenges(&n.ask(&text), &HeaderName::ProxyAuthenticate);
    assert_eq!(ch[0].realm, "example.com");
    let mut c = Client::md5("alice", "secret");
    c.method = "INVITE";
    c.uri = "sip:carol@example.com";
    let creds = vec![c.header(&ch[0])];
    assert_eq!(
        n.ask(&invite("alice", &creds).replace("@example.com>;tag", "@EXAMPLE.com>;tag"))
            .status(),
        Some(200),
        "host compares case-insensitively"
    );
    let elsewhere = invite("alice", &creds).replace("sip:alice@example.com>;tag", "sip:alice@evil.org>;tag");
    assert_eq!(n.ask(&elsewhere).status(), Some(403), "From host must be the realm");
}

// ---- load-time checks ----------------------------------------------------------

#[test]
fn bad_arguments_and_parameters_fail_at_load() {
    let load = |body: &str, params: &str| {
        let s = format!("listen = \"udp:127.0.0.1:5060\"\n{params}\nfunction route.main()\n{body}\nend\n");
        instance(Path::new("bad.lua"), Some(s), &Overrides::default(), Instant::now()).err()
    };
    let e = load(r#"www_authorize("", "users")"#, "").expect("unknown table refused");
    assert!(e.contains("subscriber"), "{e}");
    assert!(load(r#"www_challenge("", "2")"#, "").is_some());
    assert!(load(r#"proxy_authorize("")"#, "").is_some(), "arity");
    assert!(load("", r#"modparam("auth", "algorithms", "SHA-1")"#).is_some());
    assert!(load("", r#"modparam("auth", "nonce_expire", 0)"#).is_some());
    assert!(load("", r#"modparam("auth", "nonce_expir", 10)"#).is_some());
    let e = load("", "onreply_route[1] = function() consume_credentials() end").expect("route kind checked");
    assert!(e.contains("consume_credentials"), "{e}");
    assert!(
        load(
            r#"www_authorize("", "subscriber"); www_challenge("", "1"); check_to(); consume_credentials()"#,
            ""
        )
        .is_none()
    );
}
