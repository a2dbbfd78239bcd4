//! The RFC 4475 and RFC 5118 torture-test messages under tests/torture/,
//! as the bytes that go on the wire.

/// The archived file as stored.
pub fn read(dir: &str, name: &str) -> Vec<u8> {
    let path = format!("{}/tests/torture/{dir}/{name}.dat", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// RFC 5118's archive is not wire bytes: its lines end in bare LF, the two
/// §4.10 files stop without the empty line that closes the header section,
/// and the declared Content-Length of the SDP messages matches neither the
/// LF nor the CRLF body. This is the one documented transformation to the
/// message each file describes: LF → CRLF, the header section closed, and
/// Content-Length set to the body's length. Nothing inside a start line,
/// header value or body changes.
pub fn wire5118(archived: &[u8]) -> Vec<u8> {
    let mut crlf = Vec::with_capacity(archived.len() + 64);
    for &b in archived {
        if b == b'\n' {
            crlf.push(b'\r');
        }
        crlf.push(b);
    }
    let text = String::from_utf8(crlf).expect("RFC 5118 messages are text");
    let (head, body) = match text.split_once("\r\n\r\n") {
        Some((h, b)) => (h.to_string(), b.to_string()),
        None => (text.trim_end_matches("\r\n").to_string(), String::new()),
    };
    let mut out = String::new();
    for line in head.split("\r\n") {
        if line.to_ascii_lowercase().starts_with("content-length:") {
            out.push_str(&format!("Content-Length: {}\r\n", body.len()));
        } else {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("\r\n");
    out.push_str(&body);
    out.into_bytes()
}

/// The message as it goes on the wire.
pub fn bytes_of(dir: &str, name: &str) -> Vec<u8> {
    let b = read(dir, name);
    if dir == "rfc5118" { wire5118(&b) } else { b }
}

/// Every message name in a corpus directory.
pub fn names(dir: &str) -> Vec<String> {
    let path = format!("{}/tests/torture/{dir}", env!("CARGO_MANIFEST_DIR"));
    let mut v: Vec<String> = std::fs::read_dir(path)
        .expect("corpus dir")
        .filter_map(|e| e.ok()?.file_name().to_string_lossy().strip_suffix(".dat").map(str::to_string))
        .collect();
    v.sort();
    v
}
