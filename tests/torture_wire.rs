//! RFC 4475 and RFC 5118 on the wire: each torture message is fed to a
//! proxy (the real core and route engine, no sockets) and what the proxy
//! sends back is checked against the handling the RFCs expect — routed by
//! the script, answered 400 naming the fault, 505 for a bad version, the
//! proxy's semantic rejections (416, 420, 400/501 for a CSeq mismatch),
//! 483 from the script's Max-Forwards check, or dropped.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use common::corpus::{bytes_of, names};
use serlua::app::{Overrides, instance};
use serlua::transport::{Incoming, Proto};

/// Answers every request it is given with 299, so "the script ran" is
/// visible; Max-Forwards is checked first as in the reference's sanity
/// section.
const SCRIPT: &str = r#"
listen = "udp:127.0.0.1:5060"
function route.main()
  if not mf_process_maxfwd_header(10) then sl_send_reply(483, "Too Many Hops"); return end
  sl_send_reply(299, "Routed")
end
"#;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// Well-formed: the script routed it.
    Routed,
    /// The core answers with this status, the reason naming the fault.
    Reply(u16),
    /// Nothing goes back (a response not for us, or nothing to reply to).
    Nothing,
}
use Expect::*;

fn expected(dir: &str, name: &str) -> Expect {
    match (dir, name) {
        // RFC 4475 §3.1.1: valid requests; §3.1.1.12/13 valid responses.
        ("rfc4475", "unreason" | "noreason") => Nothing,
        (
            "rfc4475",
            "wsinv" | "intmeth" | "esc01" | "escnull" | "esc02" | "lwsdisp" | "longreq" | "dblreq" | "semiuri" | "transports" | "mpart01",
        ) => Routed,
        // §3.1.2: invalid messages.
        (
            "rfc4475",
            "badinv01" | "clerr" | "ncl" | "scalar02" | "quotbal" | "ltgtruri" | "lwsruri" | "lwsstart" | "trws" | "escruri" | "badaspec"
            | "baddn" | "insuf" | "multi01" | "mcl01",
        ) => Reply(400),
        ("rfc4475", "badvers") => Reply(505),
        // A CSeq or status code too large: nothing trustworthy to answer with.
        ("rfc4475", "scalarlg" | "bigcode" | "test") => Nothing,
        // A date or Content-Type a proxy does not interpret is not its business.
        (
            "rfc4475",
            "baddate" | "regbadct" | "badbranch" | "invut" | "regaut01" | "cparam01" | "cparam02" | "regescrt" | "sdp01" | "inv2543"
            | "unksm2",
        ) => Routed,
        // §3.3: application-layer semantics a proxy enforces.
        ("rfc4475", "mismatch01") => Reply(400),
        ("rfc4475", "mismatch02") => Reply(501),
        ("rfc4475", "unkscm" | "novelsc") => Reply(416),
        ("rfc4475", "bext01") => Reply(420),
        ("rfc4475", "zeromf") => Reply(483),
        // A response whose Via is not ours (and names the broadcast address).
        ("rfc4475", "bcast") => Nothing,
        // RFC 5118: every IPv6 form is valid except ipv6-bad.
        ("rfc5118", "ipv6-bad") => Reply(400),
        ("rfc5118", _) => Routed,
        _ => panic!("no expectation for {dir}/{name}: add one"),
    }
}

fn run(dir: &str, name: &str) -> Vec<(SocketAddr, Vec<u8>)> {
    let now = Instant::now();
    let mut w = instance(Path::new("torture.lua"), Some(SCRIPT.to_string()), &Overrides::default(), now).expect("script loads");
    let src: SocketAddr = "127.0.0.1:5090".parse().unwrap();
    w.handle(
        now,
        Incoming {
            local: 0,
            proto: Proto::Udp,
            src,
            conn: None,
            data: Bytes::from(bytes_of(dir, name)),
        },
    );
    w.take_transmits().into_iter().map(|t| (t.dst, t.data.to_vec())).collect()
}

fn status_line(b: &[u8]) -> String {
    String::from_utf8_lossy(b).lines().next().unwrap_or("").to_string()
}

/// Feeds one message and checks what came back.
fn check(dir: &str, name: &str) {
    let want = expected(dir, name);
    let out = run(dir, name);
    let got = match out.as_slice() {
        [] => Nothing,
        [(dst, b)] => {
            let line = status_line(b);
            // RFC 3261 §18.2.2: to the source address (`received`), at the
            // Via's port (these messages ask for no rport).
            assert_eq!(
                dst.ip().to_string(),
                "127.0.0.1",
                "{dir}/{name}: the reply goes to the sender's address"
            );
            let code = line.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok());
            match code {
                Some(299) => Routed,
                Some(c) => {
                    assert!(
                        line.trim_end() != "SIP/2.0 400 Bad Request",
                        "{dir}/{name}: a 400 must name the fault: {line}"
                    );
                    Reply(c)
                }
                None => panic!("{dir}/{name}: sent something that is not a reply: {line}"),
            }
        }
        more => panic!("{dir}/{name}: {} messages sent, expected at most one", more.len()),
    };
    let detail = out.first().map(|(_, b)| status_line(b)).unwrap_or_default();
    assert_eq!(got, want, "{dir}/{name}: {detail}");
    if got == Reply(420) {
        let text = String::from_utf8_lossy(&out[0].1).to_string();
        assert!(
            text.lines().any(|l| l.starts_with("Unsupported: ") && l.len() > 13),
            "{dir}/{name}: a 420 lists the unsupported tags"
        );
    }
}

macro_rules! wire {
    ($($test:ident: $dir:literal / $name:literal;)*) => {
        $(
            #[test]
            fn $test() {
                check($dir, $name);
            }
        )*

        /// Every message of both corpora has a test here.
        #[test]
        fn corpus_is_complete() {
            let mut listed: Vec<String> = vec![$(format!("{}/{}", $dir, $name)),*];
            listed.sort();
            let mut on_disk: Vec<String> = ["rfc4475", "rfc5118"].iter().flat_map(|d| names(d).into_iter().map(move |n| format!("{d}/{n}"))).collect();
            on_disk.sort();
            assert_eq!(listed, on_disk);
            assert_eq!(listed.len(), 62, "50 messages of RFC 4475 and 12 of RFC 5118");
        }
    };
}

wire! {
    rfc4475_badaspec: "rfc4475" / "badaspec";
    rfc4475_badbranch: "rfc4475" / "badbranch";
    rfc4475_baddate: "rfc4475" / "baddate";
    rfc4475_baddn: "rfc4475" / "baddn";
    rfc4475_badinv01: "rfc4475" / "badinv01";
    rfc4475_badvers: "rfc4475" / "badvers";
    rfc4475_bcast: "rfc4475" / "bcast";
    rfc4475_bext01: "rfc4475" / "bext01";
    rfc4475_bigcode: "rfc4475" / "bigcode";
    rfc4475_clerr: "rfc4475" / "clerr";
    rfc4475_cparam01: "rfc4475" / "cparam01";
    rfc4475_cparam02: "rfc4475" / "cparam02";
    rfc4475_dblreq: "rfc4475" / "dblreq";
    rfc4475_esc01: "rfc4475" / "esc01";
    rfc4475_esc02: "rfc4475" / "esc02";
    rfc4475_escnull: "rfc4475" / "escnull";
    rfc4475_escruri: "rfc4475" / "escruri";
    rfc4475_insuf: "rfc4475" / "insuf";
    rfc4475_intmeth: "rfc4475" / "intmeth";
    rfc4475_inv2543: "rfc4475" / "inv2543";
    rfc4475_invut: "rfc4475" / "invut";
    rfc4475_longreq: "rfc4475" / "longreq";
    rfc4475_ltgtruri: "rfc4475" / "ltgtruri";
    rfc4475_lwsdisp: "rfc4475" / "lwsdisp";
    rfc4475_lwsruri: "rfc4475" / "lwsruri";
    rfc4475_lwsstart: "rfc4475" / "lwsstart";
    rfc4475_mcl01: "rfc4475" / "mcl01";
    rfc4475_mismatch01: "rfc4475" / "mismatch01";
    rfc4475_mismatch02: "rfc4475" / "mismatch02";
    rfc4475_mpart01: "rfc4475" / "mpart01";
    rfc4475_multi01: "rfc4475" / "multi01";
    rfc4475_ncl: "rfc4475" / "ncl";
    rfc4475_noreason: "rfc4475" / "noreason";
    rfc4475_novelsc: "rfc4475" / "novelsc";
    rfc4475_quotbal: "rfc4475" / "quotbal";
    rfc4475_regaut01: "rfc4475" / "regaut01";
    rfc4475_regbadct: "rfc4475" / "regbadct";
    rfc4475_regescrt: "rfc4475" / "regescrt";
    rfc4475_scalar02: "rfc4475" / "scalar02";
    rfc4475_scalarlg: "rfc4475" / "scalarlg";
    rfc4475_sdp01: "rfc4475" / "sdp01";
    rfc4475_semiuri: "rfc4475" / "semiuri";
    rfc4475_test: "rfc4475" / "test";
    rfc4475_transports: "rfc4475" / "transports";
    rfc4475_trws: "rfc4475" / "trws";
    rfc4475_unkscm: "rfc4475" / "unkscm";
    rfc4475_unksm2: "rfc4475" / "unksm2";
    rfc4475_unreason: "rfc4475" / "unreason";
    rfc4475_wsinv: "rfc4475" / "wsinv";
    rfc4475_zeromf: "rfc4475" / "zeromf";
    rfc5118_ipv4_mapped_ipv6: "rfc5118" / "ipv4-mapped-ipv6";
    rfc5118_ipv6_bad: "rfc5118" / "ipv6-bad";
    rfc5118_ipv6_bug_abnf_3_colons: "rfc5118" / "ipv6-bug-abnf-3-colons";
    rfc5118_ipv6_correct_abnf_2_colons: "rfc5118" / "ipv6-correct-abnf-2-colons";
    rfc5118_ipv6_good: "rfc5118" / "ipv6-good";
    rfc5118_ipv6_in_sdp: "rfc5118" / "ipv6-in-sdp";
    rfc5118_mult_ip_in_header: "rfc5118" / "mult-ip-in-header";
    rfc5118_mult_ip_in_sdp: "rfc5118" / "mult-ip-in-sdp";
    rfc5118_port_ambiguous: "rfc5118" / "port-ambiguous";
    rfc5118_port_unambiguous: "rfc5118" / "port-unambiguous";
    rfc5118_via_received_param_no_delim: "rfc5118" / "via-received-param-no-delim";
    rfc5118_via_received_param_with_delim: "rfc5118" / "via-received-param-with-delim";
}
