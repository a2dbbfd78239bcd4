//! The control socket (src/ctl.rs) over a `Control` of an in-process
//! proxy core (a `Shared` with a worker that registered bindings and holds
//! a live transaction), with hooks set here: every command in the plain
//! protocol and in JSON-RPC 2.0, garbage and over-long lines, the
//! connection limit, a reload that blocks while the socket keeps serving,
//! socket mode 0600, a second server refusing a live socket, a stale
//! socket replaced, the guard removing its file; and the `serlua ctl`
//! client (the real binary) against it: tables, --json, exit codes.
//!
//!   cargo test --test ctl

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};
use serlua::app::{Overrides, script_config};
use serlua::control::Control;
use serlua::core::Shared;
use serlua::ctl;
use serlua::transport::{Incoming, Proto};
use serlua::worker::Worker;

const SCRIPT: &str = r#"
listen = "udp:127.0.0.1:5060"
function route.main()
  if msg.method == "REGISTER" then
    if not save("location") then sl_reply_error() end
    return
  end
  -- Nobody answers there (nothing is sent in this test): the transaction stays.
  if not t_relay("127.0.0.1", 9) then sl_reply_error() end
end
"#;

/// What the hooks saw and how they answer.
#[derive(Default)]
struct Hooks {
    reload_fails: AtomicBool,
    reload_sleep_ms: AtomicUsize,
    reloads: AtomicUsize,
    table_reloads: AtomicUsize,
    log_level: Mutex<Option<String>>,
}

/// An in-process proxy core: shared state, one worker, a control plane.
struct Core {
    shared: Arc<Shared>,
    _worker: Worker,
    control: Arc<Control>,
    hooks: Arc<Hooks>,
    _dir: TempDir,
    dir: PathBuf,
}

/// A directory removed when the test ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A short, fresh directory (socket paths must stay under 108 bytes).
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("serlua-ctl-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn register(user: &str, port: u16, expires: u32) -> String {
    format!(
        "REGISTER sip:example.com SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-{user}-{port}\nFrom: <sip:{user}@example.com>;tag=1\nTo: <sip:{user}@example.com>\nCall-ID: reg-{user}-{port}\nCSeq: 1 REGISTER\nContact: <sip:{user}@127.0.0.1:{port}>\nExpires: {expires}\nUser-Agent: ctl-test\nContent-Length: 0\n\n"
    )
}

fn invite() -> String {
    "INVITE sip:carol@example.net SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1:5090;branch=z9hG4bK-inv-1\nMax-Forwards: 70\nFrom: <sip:alice@example.com>;tag=9\nTo: <sip:carol@example.net>\nCall-ID: ctl-invite-1\nCSeq: 1 INVITE\nContact: <sip:alice@127.0.0.1:5090>\nContent-Length: 0\n\n".to_string()
}

impl Core {
    fn new(name: &str) -> Core {
        let now = Instant::now();
        let ov = Overrides::default();
        let (cfg, src) = script_config(Path::new("ctl_test.lua"), Some(SCRIPT.into()), &ov, now).expect("config");
        let shared = Arc::new(Shared::new(cfg));
        let mut w = Worker::from_source(shared.clone(), 0, Path::new("ctl_test.lua"), src, now).expect("loads");
        let mut feed = |text: String| {
            w.handle(
                Instant::now(),
                Incoming {
                    local: 0,
                    proto: Proto::Udp,
                    src: "127.0.0.1:5090".parse().unwrap(),
                    conn: None,
                    data: Bytes::from(text.replace('\n', "\r\n")),
                },
            );
            w.take_transmits();
        };
        feed(register("alice", 5091, 3600));
        feed(register("alice", 5092, 1800));
        feed(register("bob", 5093, 3600));
        feed(invite());
        assert_eq!(shared.store.location.binding_count(), 3, "three bindings registered");
        shared.script_error("ctl_test.lua:7: attempt to index a nil value");
        let hooks = Arc::new(Hooks::default());
        let (h1, h2, h3) = (hooks.clone(), hooks.clone(), hooks.clone());
        let control = Control::new(shared.clone(), PathBuf::from("ctl_test.lua"))
            .with_reload(Box::new(move || {
                h1.reloads.fetch_add(1, Ordering::SeqCst);
                let ms = h1.reload_sleep_ms.load(Ordering::SeqCst);
                if ms > 0 {
                    std::thread::sleep(Duration::from_millis(ms as u64));
                }
                if h1.reload_fails.load(Ordering::SeqCst) {
                    Err("x.lua:3: boom".into())
                } else {
                    Ok("reloaded x.lua in 1 worker".into())
                }
            }))
            .with_reload_tables(Box::new(move || {
                h2.table_reloads.fetch_add(1, Ordering::SeqCst);
            }))
            .with_log_level(Box::new(move |l| {
                if l == "bogus" {
                    return Err("bad filter 'bogus'".into());
                }
                *h3.log_level.lock().unwrap() = Some(l.to_string());
                Ok(())
            }));
        let dir = temp_dir(name);
        Core {
            shared,
            _worker: w,
            control: Arc::new(control),
            hooks,
            _dir: TempDir(dir.clone()),
            dir,
        }
    }

    fn sock(&self) -> PathBuf {
        self.dir.join("serlua.ctl")
    }

    fn start(&self) -> ctl::CtlServer {
        ctl::start(self.control.clone(), &self.sock()).expect("control socket starts")
    }
}

/// A line-oriented client.
struct Client {
    rd: BufReader<UnixStream>,
    wr: UnixStream,
}

impl Client {
    fn connect(path: &Path) -> Client {
        let s = UnixStream::connect(path).unwrap_or_else(|e| panic!("connect {}: {e}", path.display()));
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        Client {
            rd: BufReader::new(s.try_clone().unwrap()),
            wr: s,
        }
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.wr.write_all(bytes).unwrap();
    }

    /// The next answer line, parsed; None at end of stream.
    fn recv(&mut self) -> Option<Value> {
        let mut line = String::new();
        let n = self.rd.read_line(&mut line).expect("answer within the timeout");
        if n == 0 {
            return None;
        }
        assert!(line.ends_with('\n'), "one answer per line: {line:?}");
        assert_eq!(line.matches('\n').count(), 1, "one line: {line:?}");
        Some(serde_json::from_str(&line).unwrap_or_else(|e| panic!("answer is JSON ({e}): {line}")))
    }

    fn ask(&mut self, req: &Value) -> Value {
        self.send_raw((req.to_string() + "\n").as_bytes());
        self.recv().expect("an answer")
    }

    /// Plain protocol: Ok(result) or Err(error text).
    fn cmd(&mut self, cmd: &str, args: &[&str]) -> Result<Value, String> {
        let r = self.ask(&json!({ "cmd": cmd, "args": args }));
        match r["ok"].as_bool() {
            Some(true) => Ok(r["result"].clone()),
            Some(false) => Err(r["error"].as_str().expect("error text").to_string()),
            None => panic!("no ok in {r}"),
        }
    }

    /// JSON-RPC: the whole response.
    fn rpc(&mut self, method: &str, params: Value, id: Value) -> Value {
        let r = self.ask(&json!({ "jsonrpc": "2.0", "method": method, "params": params, "id": id }));
        assert_eq!(r["jsonrpc"], "2.0", "{r}");
        assert_eq!(r["id"], id, "id echoed: {r}");
        r
    }
}

fn rpc_code(r: &Value) -> i64 {
    r["error"]["code"].as_i64().unwrap_or_else(|| panic!("an error object: {r}"))
}

// ---------------------------------------------------------------- plain

#[test]
fn plain_protocol_every_command() {
    let core = Core::new("plain");
    let _srv = core.start();
    let mut c = Client::connect(&core.sock());

    let v = c.cmd("version", &[]).unwrap();
    assert_eq!(v["name"], "serlua");
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(v["script"], "ctl_test.lua");

    let s = c.cmd("stats", &[]).unwrap();
    assert_eq!(s["registrations"]["bindings"], 3, "{s}");
    assert_eq!(s["received"]["requests"], 4, "{s}");
    assert_eq!(s["transactions"], 1, "{s}");
    assert!(s["errors"]["script"].as_u64().unwrap() >= 1, "{s}");

    // ul show: all, one AOR (with or without sip:), an unknown AOR.
    let all = c.cmd("ul show", &[]).unwrap();
    assert_eq!(all.as_array().unwrap().len(), 3, "{all}");
    let alice = c.cmd("ul show", &["alice@example.com"]).unwrap();
    let alice = alice.as_array().unwrap();
    assert_eq!(alice.len(), 2);
    assert!(alice.iter().all(|b| b["aor"] == "alice@example.com"));
    let contacts: Vec<&str> = alice.iter().map(|b| b["contact"].as_str().unwrap()).collect();
    assert!(
        contacts.contains(&"sip:alice@127.0.0.1:5091") && contacts.contains(&"sip:alice@127.0.0.1:5092"),
        "{contacts:?}"
    );
    assert_eq!(
        alice.iter().find(|b| b["contact"] == "sip:alice@127.0.0.1:5091").unwrap()["user_agent"],
        "ctl-test"
    );
    assert_eq!(c.cmd("ul show", &["sip:bob@example.com"]).unwrap().as_array().unwrap().len(), 1);
    assert_eq!(c.cmd("ul show", &["nobody@example.com"]).unwrap(), json!([]));
    // Arguments written in "cmd" work too.
    assert_eq!(c.cmd("ul show bob@example.com", &[]).unwrap().as_array().unwrap().len(), 1);

    // tm list: the INVITE that nobody answered.
    let tm = c.cmd("tm list", &[]).unwrap();
    let tm = tm.as_array().unwrap();
    assert_eq!(tm.len(), 1, "{tm:?}");
    assert_eq!(tm[0]["method"], "INVITE");
    assert_eq!(tm[0]["call_id"], "ctl-invite-1");
    assert_eq!(tm[0]["branches"].as_array().unwrap().len(), 1);

    assert_eq!(c.cmd("sessions", &[]).unwrap(), json!([]));

    let errs = c.cmd("errors", &[]).unwrap();
    assert!(
        errs.as_array()
            .unwrap()
            .iter()
            .any(|e| e["error"].as_str().unwrap().contains("ctl_test.lua:7:")),
        "{errs}"
    );

    // reload: the hook's answer, success and failure.
    assert_eq!(c.cmd("reload", &[]).unwrap(), "reloaded x.lua in 1 worker");
    core.hooks.reload_fails.store(true, Ordering::SeqCst);
    assert_eq!(c.cmd("reload", &[]).unwrap_err(), "x.lua:3: boom");
    assert_eq!(core.hooks.reloads.load(Ordering::SeqCst), 2);

    assert!(c.cmd("reload-tables", &[]).unwrap().as_str().unwrap().contains("reload"));
    assert_eq!(core.hooks.table_reloads.load(Ordering::SeqCst), 1);

    assert_eq!(c.cmd("log-level", &["debug"]).unwrap(), "log level set to debug");
    assert_eq!(core.hooks.log_level.lock().unwrap().as_deref(), Some("debug"));
    // SER's numeric levels map to filters.
    c.cmd("log-level", &["4"]).unwrap();
    assert_eq!(core.hooks.log_level.lock().unwrap().as_deref(), Some("debug"));
    assert!(c.cmd("log-level", &["bogus"]).unwrap_err().contains("bogus"));

    // ul rm: removes both of alice's bindings; again: an error.
    assert_eq!(c.cmd("ul rm", &["alice@example.com"]).unwrap(), json!({ "removed": 2 }));
    assert_eq!(core.shared.store.location.binding_count(), 1);
    assert!(c.cmd("ul rm", &["alice@example.com"]).unwrap_err().contains("no bindings"));

    // Names: dotted, underscored, upper case.
    assert!(c.cmd("UL.SHOW", &[]).is_ok());
    assert!(c.cmd("reload_tables", &[]).is_ok());
    assert!(c.cmd("tm.list", &[]).is_ok());

    // Unknown commands and wrong argument counts: errors naming the usage.
    let e = c.cmd("shutdown", &[]).unwrap_err();
    assert!(e.contains("unknown command 'shutdown'") && e.contains("ul show [AOR]"), "{e}");
    assert_eq!(c.cmd("ul rm", &[]).unwrap_err(), "usage: ul rm AOR");
    assert_eq!(c.cmd("ul show", &["a@b", "c@d"]).unwrap_err(), "usage: ul show [AOR]");
    assert_eq!(c.cmd("stats", &["x"]).unwrap_err(), "usage: stats");
    assert_eq!(c.cmd("log-level", &[]).unwrap_err(), "usage: log-level LEVEL");

    // An id is echoed; args may be left out; numbers are arguments too.
    let r = c.ask(&json!({ "cmd": "version", "id": "abc" }));
    assert_eq!((r["ok"].clone(), r["id"].clone()), (json!(true), json!("abc")));
    let r = c.ask(&json!({ "cmd": "log-level", "args": [3] }));
    assert_eq!(r["ok"], true, "{r}");
}

// ---------------------------------------------------------------- JSON-RPC

#[test]
fn jsonrpc_every_command() {
    let core = Core::new("rpc");
    let _srv = core.start();
    let mut c = Client::connect(&core.sock());

    let r = c.rpc("version", json!([]), json!(1));
    assert_eq!(r["result"]["name"], "serlua");
    let r = c.rpc("stats", json!([]), json!("two"));
    assert_eq!(r["result"]["registrations"]["bindings"], 3);
    let r = c.rpc("ul.show", json!(["alice@example.com"]), json!(3));
    assert_eq!(r["result"].as_array().unwrap().len(), 2);
    let r = c.rpc("ul.show", json!([]), json!(4));
    assert_eq!(r["result"].as_array().unwrap().len(), 3);
    let r = c.rpc("tm.list", json!([]), json!(5));
    assert_eq!(r["result"][0]["method"], "INVITE");
    let r = c.rpc("sessions", json!([]), json!(6));
    assert_eq!(r["result"], json!([]));
    let r = c.rpc("errors", json!([]), json!(7));
    assert!(!r["result"].as_array().unwrap().is_empty());
    let r = c.rpc("reload", json!([]), json!(8));
    assert_eq!(r["result"], "reloaded x.lua in 1 worker");
    core.hooks.reload_fails.store(true, Ordering::SeqCst);
    let r = c.rpc("reload", json!([]), json!(9));
    assert_eq!(rpc_code(&r), -32000);
    assert_eq!(r["error"]["message"], "x.lua:3: boom");
    assert!(r.get("result").is_none());
    let r = c.rpc("reload-tables", json!([]), json!(10));
    assert!(r["result"].is_string());
    let r = c.rpc("log-level", json!(["warn"]), json!(11));
    assert_eq!(r["result"], "log level set to warn");
    let r = c.rpc("log.level", json!(["bogus"]), json!(12));
    assert_eq!(rpc_code(&r), -32000);
    let r = c.rpc("ul.rm", json!(["bob@example.com"]), json!(13));
    assert_eq!(r["result"], json!({ "removed": 1 }));
    let r = c.rpc("ul.rm", json!(["bob@example.com"]), json!(14));
    assert_eq!(rpc_code(&r), -32000);

    // Method not found, invalid params (arity, types, by-name).
    let r = c.rpc("core.shutdown", json!([]), json!(20));
    assert_eq!(rpc_code(&r), -32601);
    let r = c.rpc("ul.rm", json!([]), json!(21));
    assert_eq!(rpc_code(&r), -32602);
    assert!(r["error"]["message"].as_str().unwrap().contains("ul rm AOR"));
    let r = c.rpc("ul.show", json!([{ "aor": "x" }]), json!(22));
    assert_eq!(rpc_code(&r), -32602);
    let r = c.rpc("ul.show", json!({ "aor": "alice@example.com" }), json!(23));
    assert_eq!(rpc_code(&r), -32602);
    // No params at all is fine.
    let r = c.ask(&json!({ "jsonrpc": "2.0", "method": "version", "id": 24 }));
    assert_eq!(r["result"]["name"], "serlua");

    // Invalid requests.
    let r = c.ask(&json!({ "jsonrpc": "1.0", "method": "version", "id": 30 }));
    assert_eq!((rpc_code(&r), r["id"].clone()), (-32600, json!(30)));
    let r = c.ask(&json!({ "jsonrpc": "2.0", "id": 31 }));
    assert_eq!(rpc_code(&r), -32600);
    let r = c.ask(&json!({ "jsonrpc": "2.0", "method": "version", "id": [1] }));
    assert_eq!((rpc_code(&r), r["id"].clone()), (-32600, Value::Null));
    // A parse error of something that claims to be JSON-RPC.
    c.send_raw(b"{\"jsonrpc\": \"2.0\", \"method\": \"stats\", \"id\": 1\n");
    let r = c.recv().unwrap();
    assert_eq!(
        (rpc_code(&r), r["id"].clone(), r["jsonrpc"].clone()),
        (-32700, Value::Null, json!("2.0"))
    );

    // A notification is run and not answered: the next answer is the
    // next request's.
    let before = core.hooks.table_reloads.load(Ordering::SeqCst);
    c.send_raw(b"{\"jsonrpc\":\"2.0\",\"method\":\"reload-tables\"}\n");
    let r = c.rpc("version", json!([]), json!(40));
    assert_eq!(r["result"]["name"], "serlua");
    assert_eq!(core.hooks.table_reloads.load(Ordering::SeqCst), before + 1);

    // A batch: answers for the requests with an id, in order.
    let r = c.ask(&json!([
        { "jsonrpc": "2.0", "method": "version", "id": 50 },
        { "jsonrpc": "2.0", "method": "nope", "id": 51 },
        { "jsonrpc": "2.0", "method": "reload-tables" },
        { "jsonrpc": "2.0", "method": "ul.show", "params": ["alice@example.com"], "id": 52 },
        7
    ]));
    let a = r.as_array().expect("a batch answer");
    assert_eq!(a.len(), 4, "{r}");
    assert_eq!(a[0]["id"], 50);
    assert_eq!((rpc_code(&a[1]), a[1]["id"].clone()), (-32601, json!(51)));
    assert_eq!(a[2]["result"].as_array().unwrap().len(), 2);
    assert_eq!(rpc_code(&a[3]), -32600);
    let r = c.ask(&json!([]));
    assert_eq!(rpc_code(&r), -32600);
}

// ---------------------------------------------------------------- garbage

#[test]
fn garbage_gets_errors_and_the_connection_stays_usable() {
    let core = Core::new("garbage");
    let _srv = core.start();
    let mut c = Client::connect(&core.sock());
    let garbage: &[&[u8]] = &[
        b"hello\n",
        b"{\n",
        b"\xff\xfe\x00\x01binary\n",
        b"42\n",
        b"\"stats\"\n",
        b"null\n",
        b"{}\n",
        b"{\"cmd\": 5}\n",
        b"{\"cmd\": \"ul show\", \"args\": \"alice\"}\n",
        b"{\"cmd\": \"ul show\", \"args\": [[1]]}\n",
        b"{\"cmd\": \"\"}\n",
        b"]]]]\n",
    ];
    for g in garbage {
        c.send_raw(g);
        let r = c.recv().unwrap_or_else(|| panic!("an answer to {:?}", String::from_utf8_lossy(g)));
        assert_eq!(r["ok"], false, "{r} for {:?}", String::from_utf8_lossy(g));
        assert!(r["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    // Blank lines are skipped; CRLF works.
    c.send_raw(b"\n\r\n   \n{\"cmd\":\"version\"}\r\n");
    assert_eq!(c.recv().unwrap()["ok"], true);
    // Several requests in one write: answered in order.
    c.send_raw(b"{\"cmd\":\"version\",\"id\":1}\n{\"cmd\":\"nope\",\"id\":2}\n{\"cmd\":\"sessions\",\"id\":3}\n");
    let ids: Vec<Value> = (0..3).map(|_| c.recv().unwrap()["id"].clone()).collect();
    assert_eq!(ids, vec![json!(1), json!(2), json!(3)]);
    // The last request without a newline before the end of the stream is
    // still answered.
    c.send_raw(b"{\"cmd\":\"version\"}");
    c.wr.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(c.recv().unwrap()["ok"], true);
    assert!(c.recv().is_none());
    // A client that vanishes mid-line does no harm.
    let mut d = UnixStream::connect(core.sock()).unwrap();
    d.write_all(b"{\"cmd\": \"sta").unwrap();
    drop(d);
    assert!(Client::connect(&core.sock()).cmd("stats", &[]).is_ok());
}

#[test]
fn an_over_long_line_is_refused_and_the_server_goes_on() {
    let core = Core::new("long");
    let _srv = core.start();
    let mut c = Client::connect(&core.sock());
    let mut big = br#"{"cmd": "ul show", "args": [""#.to_vec();
    big.extend(std::iter::repeat_n(b'a', ctl::MAX_LINE + 10));
    big.extend_from_slice(b"\"]}\n");
    // The server may close while we are still writing.
    let _ = c.wr.write_all(&big);
    let r = c.recv().expect("an error answer");
    assert_eq!(r["ok"], false);
    assert!(r["error"].as_str().unwrap().contains("longer than 65536"), "{r}");
    let mut rest = Vec::new();
    let _ = c.rd.read_to_end(&mut rest);
    assert!(rest.is_empty(), "the connection is closed after the error");
    // JSON-RPC form for a JSON-RPC request.
    let mut c = Client::connect(&core.sock());
    let mut big = br#"{"jsonrpc": "2.0", "method": "ul.show", "params": [""#.to_vec();
    big.extend(std::iter::repeat_n(b'a', ctl::MAX_LINE * 2));
    let _ = c.wr.write_all(&big);
    let r = c.recv().expect("an error answer");
    assert_eq!(rpc_code(&r), -32600, "{r}");
    // A line just under the limit is read.
    let mut c = Client::connect(&core.sock());
    let pad = "a".repeat(ctl::MAX_LINE - 100);
    let r = c.ask(&json!({ "cmd": "version", "pad": pad }));
    assert_eq!(r["ok"], true);
    // The server goes on.
    assert!(Client::connect(&core.sock()).cmd("stats", &[]).is_ok());
}

#[test]
fn connections_beyond_the_limit_get_an_error() {
    let core = Core::new("limit");
    let _srv = core.start();
    let mut held: Vec<Client> = (0..ctl::MAX_CONNECTIONS).map(|_| Client::connect(&core.sock())).collect();
    // Every held connection is being served.
    for c in held.iter_mut() {
        assert!(c.cmd("version", &[]).is_ok());
    }
    let mut extra = Client::connect(&core.sock());
    let r = extra.recv().expect("an error line");
    assert_eq!(r["ok"], false);
    assert!(r["error"].as_str().unwrap().contains("too many"), "{r}");
    assert!(extra.recv().is_none(), "then closed");
    // A slot frees when a client leaves.
    drop(held.pop());
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = Client::connect(&core.sock());
        let r = c.ask(&json!({ "cmd": "version" }));
        if r["ok"] == true {
            break;
        }
        assert!(Instant::now() < until, "no slot freed: {r}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_slow_reload_does_not_stop_the_socket() {
    let core = Core::new("slow");
    let _srv = core.start();
    core.hooks.reload_sleep_ms.store(1500, Ordering::SeqCst);
    let path = core.sock();
    let t = std::thread::spawn(move || {
        let started = Instant::now();
        let r = Client::connect(&path).cmd("reload", &[]);
        (r, started.elapsed())
    });
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let mut c = Client::connect(&core.sock());
    assert!(c.cmd("stats", &[]).is_ok());
    assert!(c.rpc("ul.show", json!([]), json!(1))["result"].is_array());
    assert!(
        started.elapsed() < Duration::from_millis(700),
        "stats answered during the reload: {:?}",
        started.elapsed()
    );
    let (r, took) = t.join().unwrap();
    assert_eq!(r.unwrap(), "reloaded x.lua in 1 worker");
    assert!(
        took >= Duration::from_millis(1400),
        "the reload answered when the hook returned: {took:?}"
    );
    // Two reloads at once run one after the other.
    core.hooks.reload_sleep_ms.store(300, Ordering::SeqCst);
    let started = Instant::now();
    let ts: Vec<_> = (0..2)
        .map(|_| {
            let path = core.sock();
            std::thread::spawn(move || Client::connect(&path).cmd("reload", &[]))
        })
        .collect();
    for t in ts {
        assert!(t.join().unwrap().is_ok());
    }
    assert!(
        started.elapsed() >= Duration::from_millis(590),
        "serialized: {:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------- the file

#[test]
fn the_socket_is_mode_0600_and_removed_when_the_server_stops() {
    let core = Core::new("mode");
    let srv = core.start();
    let m = std::fs::symlink_metadata(core.sock()).unwrap();
    assert!(m.file_type().is_socket());
    assert_eq!(m.permissions().mode() & 0o777, 0o600, "mode {:o}", m.permissions().mode() & 0o777);
    // No temporary file is left beside it.
    let names: Vec<String> = std::fs::read_dir(&core.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, vec!["serlua.ctl".to_string()]);
    srv.stop();
    assert!(!core.sock().exists(), "the socket file is removed");
    // ctl::remove: a socket goes, another kind of file stays.
    let file = core.dir.join("not-a-socket");
    std::fs::write(&file, "x").unwrap();
    ctl::remove(&file);
    assert!(file.exists());
    ctl::remove(&core.dir.join("missing"));
}

#[test]
fn a_second_server_refuses_a_live_socket() {
    let core = Core::new("second");
    let first = core.start();
    let err = ctl::start(core.control.clone(), &core.sock())
        .err()
        .expect("the second server refuses");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    assert!(err.to_string().contains("another serlua is answering there"), "{err}");
    let err = ctl::spawn(core.control.clone(), &core.sock()).expect_err("spawn refuses too");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    // The first one still answers, on the same file.
    assert!(Client::connect(&core.sock()).cmd("version", &[]).is_ok());
    drop(first);
    assert!(!core.sock().exists());
    // A path that is not a socket is never replaced.
    std::fs::write(core.sock(), "precious").unwrap();
    let err = ctl::start(core.control.clone(), &core.sock())
        .err()
        .expect("refuses a regular file");
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(core.sock()).unwrap(), "precious");
}

#[test]
fn a_stale_socket_is_replaced() {
    let core = Core::new("stale");
    // A proxy that died without cleaning up: the file stays, nobody listens.
    drop(std::os::unix::net::UnixListener::bind(core.sock()).unwrap());
    assert!(std::fs::symlink_metadata(core.sock()).unwrap().file_type().is_socket());
    assert_eq!(
        UnixStream::connect(core.sock()).unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    let srv = core.start();
    assert!(Client::connect(&core.sock()).cmd("version", &[]).is_ok());
    let m = std::fs::symlink_metadata(core.sock()).unwrap();
    assert_eq!(m.permissions().mode() & 0o777, 0o600);
    // A server whose file was replaced by a successor's leaves the
    // successor's file alone when it stops.
    std::fs::remove_file(core.sock()).unwrap();
    let successor = core.start();
    drop(srv);
    assert!(core.sock().exists(), "the successor's socket stays");
    assert!(Client::connect(&core.sock()).cmd("version", &[]).is_ok());
    drop(successor);
    assert!(!core.sock().exists());
}

#[test]
fn spawn_serves_until_removed() {
    let core = Core::new("spawn");
    let _h = ctl::spawn(core.control.clone(), &core.sock()).expect("spawn");
    assert!(Client::connect(&core.sock()).cmd("stats", &[]).is_ok());
    assert_eq!(std::fs::symlink_metadata(core.sock()).unwrap().permissions().mode() & 0o777, 0o600);
    ctl::remove(&core.sock());
    assert!(!core.sock().exists());
}

// ---------------------------------------------------------------- the client

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn serlua_ctl(dir: &Path, args: &[&str]) -> Out {
    let o = Command::new(env!("CARGO_BIN_EXE_serlua"))
        .current_dir(dir)
        .arg("ctl")
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("run serlua ctl");
    Out {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

#[test]
fn serlua_ctl_client() {
    let core = Core::new("client");
    let _srv = core.start();
    let sock = core.sock();
    let sock = sock.to_str().unwrap();
    let ok = |args: &[&str]| {
        let o = serlua_ctl(&core.dir, args);
        assert_eq!(o.code, Some(0), "serlua ctl {args:?}: {}{}", o.stdout, o.stderr);
        assert!(o.stderr.is_empty(), "{}", o.stderr);
        o.stdout
    };

    // The default path is serlua.ctl in the working directory.
    let out = ok(&["version"]);
    assert!(
        out.contains("name") && out.contains("serlua") && out.contains("uptime_seconds"),
        "{out}"
    );

    // stats: top-level values, then sections of aligned name/value lines.
    let out = ok(&["stats"]);
    assert!(out.lines().next().unwrap().starts_with("uptime_seconds"), "{out}");
    assert!(out.contains("\nregistrations\n"), "{out}");
    let line = out.lines().find(|l| l.trim_start().starts_with("bindings")).unwrap();
    assert!(line.starts_with("  ") && line.trim_end().ends_with(" 3"), "{line:?}");
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("requests_by_method.INVITE") && l.ends_with(" 1")),
        "{out}"
    );
    let out = ok(&["--ctl", sock, "--json", "stats"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["registrations"]["bindings"], 3);

    // ul show: the columns of `serlua ul show`.
    let out = ok(&["ul", "show", "--ctl", sock]);
    let mut lines = out.lines();
    let header = lines.next().unwrap();
    for col in [
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
    ] {
        assert!(header.contains(col), "{header}");
    }
    assert_eq!(lines.clone().count(), 3, "{out}");
    // Sorted by AOR, then contact.
    let contacts: Vec<&str> = lines.clone().map(|l| l.split_whitespace().nth(1).unwrap()).collect();
    assert_eq!(
        contacts,
        ["sip:alice@127.0.0.1:5091", "sip:alice@127.0.0.1:5092", "sip:bob@127.0.0.1:5093"],
        "{out}"
    );
    let alice = lines.find(|l| l.contains("sip:alice@127.0.0.1:5092")).unwrap();
    assert!(alice.starts_with("alice@example.com "), "{alice}");
    assert!(alice.contains("ctl-test") && alice.contains(" s "), "{alice}");
    // Columns are aligned: CONTACT starts at the same offset on every line.
    let at = header.find("CONTACT").unwrap();
    assert!(out.lines().skip(1).all(|l| l[at..].starts_with("sip:")), "{out}");
    let out = ok(&["ul", "show", "bob@example.com", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(ok(&["ul", "show", "nobody@example.com"]), "(none)\n");

    // tm list.
    let out = ok(&["tm", "list"]);
    let header = out.lines().next().unwrap();
    for col in ["ID", "METHOD", "CALL-ID", "STATE", "AGE", "BRANCHES"] {
        assert!(header.contains(col), "{header}");
    }
    let row = out.lines().nth(1).unwrap();
    assert!(
        row.contains("INVITE") && row.contains("ctl-invite-1") && row.contains("127.0.0.1:9") && row.contains(" s "),
        "{row}"
    );

    assert_eq!(ok(&["sessions"]), "(none)\n");
    let out = ok(&["errors"]);
    assert!(
        out.starts_with("TIME (UTC)") && out.contains("ctl_test.lua:7: attempt to index a nil value"),
        "{out}"
    );

    // reload: exit 0 with the summary; a failing one exits 1 printing file:line.
    assert_eq!(ok(&["reload"]), "reloaded x.lua in 1 worker\n");
    core.hooks.reload_fails.store(true, Ordering::SeqCst);
    let o = serlua_ctl(&core.dir, &["reload"]);
    assert_eq!(o.code, Some(1), "{}{}", o.stdout, o.stderr);
    assert!(o.stdout.is_empty());
    assert!(o.stderr.starts_with("x.lua:3: boom\n"), "{}", o.stderr);
    core.hooks.reload_fails.store(false, Ordering::SeqCst);

    assert!(ok(&["reload-tables"]).contains("reload"));
    assert_eq!(ok(&["log-level", "debug"]), "log level set to debug\n");
    assert_eq!(ok(&["log-level", "-1"]), "log level set to error\n");

    // ul rm, then an error for the same AOR: one line, exit 1.
    assert_eq!(ok(&["ul", "rm", "alice@example.com"]), "removed 2 bindings of alice@example.com\n");
    let o = serlua_ctl(&core.dir, &["ul", "rm", "alice@example.com"]);
    assert_eq!(o.code, Some(1));
    assert_eq!(o.stderr.lines().count(), 1, "{}", o.stderr);
    assert!(o.stderr.contains("no bindings"), "{}", o.stderr);
    let o = serlua_ctl(&core.dir, &["ul", "rm", "bob@example.com", "--json"]);
    assert_eq!(serde_json::from_str::<Value>(&o.stdout).unwrap(), json!({ "removed": 1 }));

    // No proxy there.
    let o = serlua_ctl(&core.dir, &["--ctl", "/nonexistent/serlua.ctl", "stats"]);
    assert_eq!(o.code, Some(1));
    assert_eq!(
        o.stderr,
        "serlua: cannot connect to /nonexistent/serlua.ctl: is serlua running? (start it, or pass --ctl PATH)\n"
    );
    let empty = core.dir.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = serlua_ctl(&empty, &["stats"]);
    assert_eq!(o.code, Some(1));
    assert_eq!(
        o.stderr,
        "serlua: cannot connect to serlua.ctl: is serlua running? (start it, or pass --ctl PATH)\n"
    );
    // A bad command line is clap's error (exit 2).
    assert_eq!(serlua_ctl(&core.dir, &["ul", "rm"]).code, Some(2));
}

#[test]
fn format_of_stats_sections() {
    let v = json!({
        "uptime_seconds": 5, "transactions": 2, "draining": false,
        "received": { "requests": 10, "requests_by_method": { "INVITE": 4, "ACK": 6 }, "replies_by_class": {} },
        "workers": [ { "worker": 0, "queue_bytes": 0 }, { "worker": 1, "queue_bytes": 768 } ],
        "extra": { "x": null },
    });
    let out = ctl::format("stats", &[], &v);
    // Names are padded to the longest in their section.
    let expected = "\
uptime_seconds  5
transactions    2
draining        false

received
  requests                   10
  requests_by_method.ACK     6
  requests_by_method.INVITE  4

workers
  WORKER  QUEUE-BYTES
  0       0
  1       768

extra
  x  -
";
    assert_eq!(out, expected);
}
