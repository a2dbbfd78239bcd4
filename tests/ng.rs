//! The ng protocol end to end, on 127.0.0.1 only: `NgClient` against
//! serlua's own ng server (with a fake relay behind it), against a real
//! rtpengine when one is installed, and the `serlua relay` command line.

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use serlua::relay::ng::{NgClient, NgServer, serve};
use serlua::relay::{LegStats, MediaRelay, OfferAnswer, RelayError, SessionInfo, StreamInfo};

/// A relay that keeps sessions in a list and tags the SDP it returns.
#[derive(Default)]
struct Fake {
    label: String,
    sessions: Mutex<Vec<SessionInfo>>,
    seen: Mutex<Vec<String>>,
}

impl Fake {
    fn new(label: &str) -> Arc<Fake> {
        Arc::new(Fake {
            label: label.into(),
            ..Fake::default()
        })
    }
}

impl MediaRelay for Fake {
    fn offer(&self, req: &OfferAnswer<'_>) -> Result<Vec<u8>, RelayError> {
        self.seen.lock().push(req.call_id.into());
        if req.sdp == b"bad" {
            return Err(RelayError::BadSdp("no v= line".into()));
        }
        let mut s = self.sessions.lock();
        s.retain(|x| x.call_id != req.call_id);
        s.push(SessionInfo {
            call_id: req.call_id.into(),
            from_tag: req.from_tag.into(),
            to_tag: None,
            caller: String::new(),
            callee: String::new(),
            created: SystemTime::now(),
            relay: self.label.clone(),
            streams: vec![StreamInfo {
                media: "audio".into(),
                codecs: vec!["PCMU/8000".into()],
                caller: LegStats {
                    announced: Some(SocketAddr::from(([127, 0, 0, 1], 4000))),
                    relay: Some(SocketAddr::from(([127, 0, 0, 1], 30000))),
                    ..LegStats::default()
                },
                callee: LegStats::default(),
            }],
        });
        Ok(format!("{}:", self.label)
            .into_bytes()
            .into_iter()
            .chain(req.sdp.iter().copied())
            .collect())
    }
    fn answer(&self, req: &OfferAnswer<'_>) -> Result<Vec<u8>, RelayError> {
        self.seen.lock().push(req.call_id.into());
        let mut s = self.sessions.lock();
        let x = s
            .iter_mut()
            .find(|x| x.call_id == req.call_id)
            .ok_or(RelayError::NotFound(req.call_id.into()))?;
        x.to_tag = req.to_tag.map(String::from);
        Ok(req.sdp.to_vec())
    }
    fn delete(&self, call_id: &str, _: Option<&str>, _: Option<&str>) -> Result<(), RelayError> {
        self.seen.lock().push(call_id.into());
        let mut s = self.sessions.lock();
        let n = s.len();
        s.retain(|x| x.call_id != call_id);
        if s.len() == n {
            Err(RelayError::NotFound(call_id.into()))
        } else {
            Ok(())
        }
    }
    fn query(&self, call_id: &str) -> Result<SessionInfo, RelayError> {
        self.sessions
            .lock()
            .iter()
            .find(|x| x.call_id == call_id)
            .cloned()
            .ok_or(RelayError::NotFound(call_id.into()))
    }
    fn list(&self) -> Result<Vec<SessionInfo>, RelayError> {
        Ok(self.sessions.lock().clone())
    }
    fn ping(&self) -> Result<(), RelayError> {
        Ok(())
    }
    fn name(&self) -> String {
        self.label.clone()
    }
}

fn server(fake: &Arc<Fake>) -> NgServer {
    serve("127.0.0.1:0".parse().unwrap(), fake.clone()).unwrap()
}

fn spec(addr: SocketAddr) -> String {
    format!("ng:udp:{addr}")
}

fn oa<'a>(call_id: &'a str, to_tag: Option<&'a str>, sdp: &'a [u8]) -> OfferAnswer<'a> {
    OfferAnswer {
        call_id,
        from_tag: "caller-tag",
        to_tag,
        sdp,
        ..OfferAnswer::default()
    }
}

#[test]
fn client_against_our_server() {
    let fake = Fake::new("one");
    let srv = server(&fake);
    let name = spec(srv.local_addr());
    let c = NgClient::new(&[&name], Duration::from_millis(200)).unwrap();
    assert_eq!(c.name(), name);
    c.ping().unwrap();

    assert_eq!(c.offer(&oa("c1", None, b"v=0\r\n")).unwrap(), b"one:v=0\r\n");
    assert_eq!(c.answer(&oa("c1", Some("callee-tag"), b"v=0\r\n")).unwrap(), b"v=0\r\n");
    let s = c.query("c1").unwrap();
    assert_eq!(
        (s.call_id.as_str(), s.from_tag.as_str(), s.to_tag.as_deref()),
        ("c1", "caller-tag", Some("callee-tag"))
    );
    assert_eq!(s.relay, name);
    assert_eq!(s.streams.len(), 1);
    assert_eq!(s.streams[0].caller.announced, Some(SocketAddr::from(([127, 0, 0, 1], 4000))));
    assert_eq!(s.streams[0].caller.relay, Some(SocketAddr::from(([127, 0, 0, 1], 30000))));

    c.offer(&oa("c2", None, b"v=0\r\n")).unwrap();
    let mut ids: Vec<_> = c.list().unwrap().into_iter().map(|s| (s.call_id, s.from_tag)).collect();
    ids.sort();
    assert_eq!(ids, [("c1".into(), "caller-tag".into()), ("c2".into(), "caller-tag".to_string())]);

    c.delete("c1", Some("caller-tag"), None).unwrap();
    assert!(matches!(c.delete("c1", Some("caller-tag"), None), Err(RelayError::NotFound(id)) if id == "c1"));
    assert!(matches!(c.query("c1"), Err(RelayError::NotFound(_))));
    assert!(matches!(c.answer(&oa("nope", Some("t"), b"v=0")), Err(RelayError::NotFound(_))));
    match c.offer(&oa("c3", None, b"bad")) {
        Err(RelayError::Remote { relay, reason }) => {
            assert_eq!(relay, name);
            assert!(reason.contains("no v= line"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(c.offer(&oa("c3", None, b"")), Err(RelayError::NoSdp)));
    // lookup_only: no session, no offer sent.
    let before = fake.seen.lock().len();
    let lookup = OfferAnswer {
        lookup_only: true,
        ..oa("c9", None, b"v=0\r\n")
    };
    assert!(matches!(c.offer(&lookup), Err(RelayError::NotFound(_))));
    assert_eq!(fake.seen.lock().len(), before);
    let lookup = OfferAnswer {
        lookup_only: true,
        ..oa("c2", None, b"v=1\r\n")
    };
    assert_eq!(c.offer(&lookup).unwrap(), b"one:v=1\r\n");
}

#[test]
fn a_call_sticks_to_the_relay_its_call_id_hashes_to() {
    let fakes = [Fake::new("a"), Fake::new("b"), Fake::new("c")];
    let servers: Vec<_> = fakes.iter().map(server).collect();
    let names: Vec<_> = servers.iter().map(|s| spec(s.local_addr())).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let c = NgClient::new(&names, Duration::from_millis(200)).unwrap();
    let c2 = NgClient::new(&names, Duration::from_millis(200)).unwrap();
    for n in 0..30 {
        let id = format!("{n}-3848276298220188511@192.0.2.4");
        c.offer(&oa(&id, None, b"v=0\r\n")).unwrap();
        c2.answer(&oa(&id, Some("t"), b"v=0\r\n")).unwrap();
        assert_eq!(c.query(&id).unwrap().relay, names[c.relay_for(&id)]);
        c2.delete(&id, Some("caller-tag"), None).unwrap();
        let holders: Vec<usize> = (0..3).filter(|&i| fakes[i].seen.lock().contains(&id)).collect();
        assert_eq!(holders, [c.relay_for(&id)], "{id}: every message at one relay");
        assert_eq!(fakes[holders[0]].seen.lock().iter().filter(|x| **x == id).count(), 3);
    }
    let used = fakes.iter().filter(|f| !f.seen.lock().is_empty()).count();
    assert!(used >= 2, "calls spread over the relays");
}

/// A relay address with a socket bound that never answers.
fn silent() -> (UdpSocket, String) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    let name = spec(s.local_addr().unwrap());
    (s, name)
}

fn id_for(c: &NgClient, relay: usize, from: usize) -> String {
    (from..)
        .map(|n| format!("call-{n}@example.org"))
        .find(|id| c.relay_for(id) == relay)
        .unwrap()
}

#[test]
fn a_silent_relay_is_skipped_within_the_bounded_wait() {
    let (_hold, dead) = silent();
    let fake = Fake::new("live");
    let srv = server(&fake);
    let live = spec(srv.local_addr());
    // Default wait: 3 tries x 200 ms.
    let c = NgClient::new(&[&dead, &live], Duration::from_millis(200))
        .unwrap()
        .with_down_for(Duration::from_millis(1500));
    assert_eq!(c.name(), format!("{dead},{live}"));

    let first = id_for(&c, 0, 0);
    let t = Instant::now();
    c.offer(&oa(&first, None, b"v=0\r\n")).unwrap();
    let took = t.elapsed();
    assert!(took >= Duration::from_millis(550) && took < Duration::from_millis(1500), "{took:?}");
    assert!(fake.seen.lock().contains(&first));
    assert_eq!(c.query(&first).unwrap().relay, live, "the rest of the call follows");

    // The dead relay is now skipped: no more waiting.
    let second = id_for(&c, 0, 1000);
    let t = Instant::now();
    c.offer(&oa(&second, None, b"v=0\r\n")).unwrap();
    assert!(t.elapsed() < Duration::from_millis(300), "{:?}", t.elapsed());
    assert!(fake.seen.lock().contains(&second));

    // Once its time out is over it is tried again (and found still dead).
    std::thread::sleep(Duration::from_millis(1600));
    let third = id_for(&c, 0, 2000);
    let t = Instant::now();
    c.offer(&oa(&third, None, b"v=0\r\n")).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(550), "{:?}", t.elapsed());
}

#[test]
fn unreachable_only_when_every_relay_is_down() {
    let (_a, dead_a) = silent();
    let (_b, dead_b) = silent();
    let c = NgClient::new(&[&dead_a, &dead_b], Duration::from_millis(100))
        .unwrap()
        .with_tries(2);
    let t = Instant::now();
    assert!(matches!(c.offer(&oa("x", None, b"v=0\r\n")), Err(RelayError::Unreachable(_))));
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(380) && took < Duration::from_millis(1200),
        "2 relays x 2 tries x 100 ms: {took:?}"
    );
    let t = Instant::now();
    assert!(matches!(c.query("x"), Err(RelayError::Unreachable(_))));
    assert!(t.elapsed() < Duration::from_millis(50), "both marked down: no wait");
    assert!(matches!(c.list(), Err(RelayError::Unreachable(_))));
}

// ---------------------------------------------------------------------------
// A real rtpengine.

const RTPENGINE: &str = "/usr/bin/rtpengine";

/// Kills the rtpengine this test started when the test ends, however.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// rtpengine's arguments for a userspace-only daemon on 127.0.0.1.
fn rtpengine_args(ng_port: u16, port_min: u16, port_max: u16) -> Vec<String> {
    vec![
        "--foreground".into(),
        "--log-stderr".into(),
        "--table=-1".into(),
        "--interface=127.0.0.1".into(),
        format!("--listen-ng=127.0.0.1:{ng_port}"),
        format!("--port-min={port_min}"),
        format!("--port-max={port_max}"),
        "--delete-delay=0".into(),
        "--log-level=6".into(),
    ]
}

#[test]
fn client_against_a_real_rtpengine() {
    if !std::path::Path::new(RTPENGINE).exists() {
        if std::env::var("SERLUA_REQUIRE_RTPENGINE").as_deref() == Ok("1") {
            panic!("{RTPENGINE} is missing and SERLUA_REQUIRE_RTPENGINE=1");
        }
        eprintln!("NOTICE: {RTPENGINE} not installed: client_against_a_real_rtpengine skipped");
        return;
    }
    let ng_port = free_udp_port();
    // A port window of its own, away from other tests' relays.
    let port_min = 42000 + (std::process::id() % 100) as u16 * 100;
    let port_max = port_min + 99;
    let args = rtpengine_args(ng_port, port_min, port_max);
    eprintln!("starting {RTPENGINE} {}", args.join(" "));
    let child = Command::new(RTPENGINE)
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let _daemon = Daemon(child);

    let name = format!("ng:udp:127.0.0.1:{ng_port}");
    let c = NgClient::new(&[&name], Duration::from_millis(200))
        .unwrap()
        .with_down_for(Duration::ZERO);
    let t = Instant::now();
    while c.ping().is_err() {
        assert!(t.elapsed() < Duration::from_secs(10), "rtpengine did not answer ping within 10 s");
        std::thread::sleep(Duration::from_millis(100));
    }

    let call_id = format!("serlua-ng-test-{}@127.0.0.1", std::process::id());
    let offer = b"v=0\r\no=alice 2890844526 2890844526 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 20000 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n";
    let out = String::from_utf8(c.offer(&oa(&call_id, None, offer)).unwrap()).unwrap();
    eprintln!("offer rewritten:\n{out}");
    let port = media_port(&out);
    assert!((port_min..=port_max).contains(&port), "m= port {port} in rtpengine's range");
    assert_ne!(port, 20000);
    assert!(out.contains("c=IN IP4 127.0.0.1"), "{out}");

    let answer = b"v=0\r\no=bob 2808844564 2808844564 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 20002 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n";
    let out = String::from_utf8(c.answer(&oa(&call_id, Some("callee-tag"), answer)).unwrap()).unwrap();
    eprintln!("answer rewritten:\n{out}");
    let aport = media_port(&out);
    assert!((port_min..=port_max).contains(&aport), "m= port {aport} in rtpengine's range");
    assert_ne!(aport, port);

    let s = c.query(&call_id).unwrap();
    eprintln!("query: {s:#?}");
    assert_eq!(s.call_id, call_id);
    assert_eq!(s.relay, name);
    assert_eq!(s.from_tag, "caller-tag");
    assert_eq!(s.to_tag.as_deref(), Some("callee-tag"));
    assert_eq!(s.streams.len(), 1);
    assert_eq!(s.streams[0].media, "audio");
    assert_eq!(s.streams[0].caller.announced, Some(SocketAddr::from(([127, 0, 0, 1], 20000))));
    assert_eq!(s.streams[0].callee.announced, Some(SocketAddr::from(([127, 0, 0, 1], 20002))));
    // The caller sends to the port the answer announced, and vice versa.
    assert_eq!(s.streams[0].caller.relay.map(|a| a.port()), Some(aport));
    assert_eq!(s.streams[0].callee.relay.map(|a| a.port()), Some(port));
    let age = SystemTime::now().duration_since(s.created).unwrap();
    assert!(age < Duration::from_secs(60), "created {age:?} ago");
    assert!(c.list().unwrap().iter().any(|x| x.call_id == call_id));

    c.delete(&call_id, Some("caller-tag"), None).unwrap();
    assert!(matches!(c.query(&call_id), Err(RelayError::NotFound(_))));
    assert!(matches!(c.delete(&call_id, Some("caller-tag"), None), Err(RelayError::NotFound(_))));
}

fn media_port(sdp: &str) -> u16 {
    let m = sdp.lines().find(|l| l.starts_with("m=audio ")).expect("an m=audio line");
    m.split(' ').nth(1).and_then(|p| p.parse().ok()).expect("a port")
}

// ---------------------------------------------------------------------------
// `serlua relay`.

fn serlua() -> Command {
    Command::new(env!("CARGO_BIN_EXE_serlua"))
}

#[test]
fn relay_command_refuses_bad_arguments() {
    let cases: &[(&[&str], &str)] = &[
        (&["--ports", "4000-3000"], "--ports"),
        (&["--ports", "30000"], "MIN-MAX"),
        (&["--ports", "0-10"], "1 to 65535"),
        (&["--ports", "30000-30000"], "at least"),
        (&["--advertise", "relay.example.org"], "not an IP address"),
        (&["--ng", "tcp:127.0.0.1:2223"], "udp:"),
        (&["--ng", "udp:127.0.0.1"], "IP:PORT"),
        (&["--bind", "nope"], "not an IP address"),
        (&["--threads", "0"], "--threads"),
        (&["--media-timeout", "0"], "--media-timeout"),
    ];
    for (bad, want) in cases {
        let mut opts = vec![
            ("--ng", "udp:127.0.0.1:0"),
            ("--advertise", "127.0.0.1"),
            ("--ports", "30000-30100"),
        ];
        match opts.iter_mut().find(|(k, _)| *k == bad[0]) {
            Some(o) => o.1 = bad[1],
            None => opts.push((bad[0], bad[1])),
        }
        let mut args = vec!["relay"];
        opts.iter().for_each(|(k, v)| args.extend([*k, *v]));
        let out = serlua().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {err}");
        assert!(err.contains(want), "{bad:?}: wanted {want:?} in {err}");
    }
    let out = serlua().args(["relay", "--ports", "30000-30100"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("--advertise"));
}

/// Until the embedded engine is written the command stops with its error;
/// once it is, it runs until SIGTERM and then exits 0.
#[test]
fn relay_command_starts_and_stops_on_sigterm() {
    let ng_port = free_udp_port();
    let mut child = serlua()
        .args([
            "relay",
            "--ng",
            &format!("udp:127.0.0.1:{ng_port}"),
            "--ports",
            "44000-44099",
            "--advertise",
            "127.0.0.1",
            "--media-timeout",
            "30",
            "--threads",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!("serlua relay exited at start ({status}): {}", String::from_utf8_lossy(&out.stderr));
        }
        if t.elapsed() > Duration::from_secs(1) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Running: it answers ng pings, and stops cleanly on SIGTERM.
    let c = NgClient::new(&[&format!("ng:udp:127.0.0.1:{ng_port}")], Duration::from_millis(200)).unwrap();
    c.ping().unwrap();
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on the child this test spawned.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(t.elapsed() < Duration::from_secs(5), "still running 5 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(child.wait().unwrap().code(), Some(0));
}
