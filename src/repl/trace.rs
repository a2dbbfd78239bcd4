//! `serlua repl SCRIPT --trace FILE --index N`: the N-th message of a
//! recorded trace (1-based, as a Lua test indexes `tr[N]`) as the REPL's
//! message, keeping its source, destination and transport.
//!
//! This adapter is the only place that knows the trace reader's shape
//! ([`crate::trace::load`]).

use std::net::SocketAddr;
use std::path::Path;

use crate::transport::Proto;

/// What the REPL needs of one recorded message.
pub trait TraceLike {
    /// Where it came from (`IP:PORT`).
    fn src_text(&self) -> String;
    /// Where it went (`IP:PORT`).
    fn dst_text(&self) -> String;
    /// Its transport (`udp`, `tcp`).
    fn proto_text(&self) -> String;
    /// The SIP message bytes.
    fn bytes(&self) -> &[u8];
}

/// One message picked from a trace.
#[derive(Clone, Debug)]
pub struct Picked {
    /// Its source.
    pub src: SocketAddr,
    /// Its destination (the proxy, in a trace recorded in front of one).
    pub dst: Option<SocketAddr>,
    /// Its transport.
    pub proto: Proto,
    /// The message.
    pub data: Vec<u8>,
}

/// Why a trace message could not be had.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The reader failed (damaged file, unknown format).
    #[error("{0}")]
    Read(String),
    /// `--index` is outside the trace.
    #[error("{path}: --index {index} is outside the trace (it has {count} messages, numbered from 1)")]
    Index {
        /// The trace file.
        path: String,
        /// The index asked for.
        index: usize,
        /// How many messages the trace has.
        count: usize,
    },
    /// The message's source or transport is not usable.
    #[error("{path}: message {index}: {why}")]
    Bad {
        /// The trace file.
        path: String,
        /// The message number.
        index: usize,
        /// What is wrong.
        why: String,
    },
}

impl TraceLike for crate::trace::TraceMsg {
    fn src_text(&self) -> String {
        self.src.to_string()
    }
    fn dst_text(&self) -> String {
        self.dst.to_string()
    }
    fn proto_text(&self) -> String {
        self.proto.as_str().to_ascii_lowercase()
    }
    fn bytes(&self) -> &[u8] {
        &self.data
    }
}

/// Reads the trace at `path` with serlua's trace reader (pcap, pcapng,
/// SIP text).
fn load(path: &Path) -> Result<Vec<Box<dyn TraceLike>>, TraceError> {
    let msgs = crate::trace::load(path).map_err(|e| TraceError::Read(e.to_string()))?;
    Ok(msgs.into_iter().map(|m| Box::new(m) as Box<dyn TraceLike>).collect())
}

/// The `index`-th message (1-based) of the trace at `path`.
pub fn pick(path: &Path, index: usize) -> Result<Picked, TraceError> {
    let msgs = load(path)?;
    pick_from(&path.display().to_string(), &msgs, index)
}

/// The `index`-th message (1-based) of messages read from `path`.
pub fn pick_from<T: TraceLike + ?Sized, B: std::ops::Deref<Target = T>>(
    path: &str,
    msgs: &[B],
    index: usize,
) -> Result<Picked, TraceError> {
    let m = index.checked_sub(1).and_then(|i| msgs.get(i)).ok_or_else(|| TraceError::Index {
        path: path.to_string(),
        index,
        count: msgs.len(),
    })?;
    let bad = |why: String| TraceError::Bad {
        path: path.to_string(),
        index,
        why,
    };
    let src = m
        .src_text()
        .parse()
        .map_err(|_| bad(format!("source '{}' is not IP:PORT", m.src_text())))?;
    let proto = Proto::parse(&m.proto_text()).ok_or_else(|| bad(format!("transport '{}' is not udp or tcp", m.proto_text())))?;
    Ok(Picked {
        src,
        dst: m.dst_text().parse().ok(),
        proto,
        data: m.bytes().to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct M(&'static str, &'static str, &'static [u8]);
    impl TraceLike for M {
        fn src_text(&self) -> String {
            self.0.into()
        }
        fn dst_text(&self) -> String {
            "127.0.0.1:5060".into()
        }
        fn proto_text(&self) -> String {
            self.1.into()
        }
        fn bytes(&self) -> &[u8] {
            self.2
        }
    }

    #[test]
    fn picks_by_one_based_index() {
        let msgs = vec![
            Box::new(M("10.0.0.1:5060", "UDP", b"one")),
            Box::new(M("10.0.0.2:5062", "tcp", b"two")),
        ];
        let p = pick_from("t.pcap", &msgs, 2).unwrap();
        assert_eq!(p.src, "10.0.0.2:5062".parse().unwrap());
        assert_eq!(p.proto, Proto::Tcp);
        assert_eq!(p.data, b"two");
        assert!(matches!(pick_from("t.pcap", &msgs, 0), Err(TraceError::Index { count: 2, .. })));
        assert!(matches!(pick_from("t.pcap", &msgs, 3), Err(TraceError::Index { .. })));
        let bad = vec![Box::new(M("nowhere", "udp", b""))];
        assert!(matches!(pick_from("t.pcap", &bad, 1), Err(TraceError::Bad { .. })));
    }

    #[test]
    fn a_missing_trace_names_the_file() {
        let e = pick(Path::new("x.pcap"), 1).unwrap_err().to_string();
        assert!(e.contains("x.pcap"), "{e}");
    }
}
