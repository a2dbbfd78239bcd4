//! Message framing on stream transports (RFC 3261 §18.3): on TCP the
//! Content-Length header is mandatory and delimits each message.

use memchr::memchr;

use super::header::{hid, index_of_name};
use super::parse::{find_crlf, find_crlfcrlf, parse_content_length, value_text};

/// Why a stream cannot be framed (RFC 3261 §18.3); the connection is
/// closed after an error reply where one is possible.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The header section or the whole message exceeds the limit given.
    #[error("message larger than {0} bytes")]
    TooLarge(usize),
    /// No Content-Length (mandatory on streams, RFC 3261 §18.3).
    #[error("Content-Length missing on a stream transport")]
    MissingContentLength,
    /// Content-Length is not a non-negative number, or appears more than
    /// once (RFC 4475 §3.1.2.3 `ncl`, §3.3.9 `mcl01`): the stream cannot be
    /// resynchronised.
    #[error("malformed Content-Length")]
    BadContentLength,
}

/// Looks for one complete message at the start of `buf`. Returns
/// `Ok(Some((skip, len)))` when `buf[skip..skip+len]` is a whole message
/// (`skip` counts leading CRLF keep-alives, RFC 5626 §3.5.1 "double CRLF"),
/// `Ok(None)` when more bytes are needed, or an error. `max` bounds the
/// header block plus body.
pub fn next_message(buf: &[u8], max: usize) -> Result<Option<(usize, usize)>, FrameError> {
    let mut skip = 0;
    while buf[skip..].starts_with(b"\r\n") {
        skip += 2;
    }
    let rest = &buf[skip..];
    if rest.is_empty() || rest == b"\r" {
        return Ok(None);
    }
    // The header section ends with the first empty line.
    let Some(end) = find_crlfcrlf(rest) else {
        if rest.len() > max {
            return Err(FrameError::TooLarge(max));
        }
        return Ok(None);
    };
    let head_len = end + 4;
    if head_len > max {
        return Err(FrameError::TooLarge(max));
    }
    let mut content_length: Option<usize> = None;
    // Header fields start after the start line; a field continues on lines
    // starting with SP/HTAB.
    let Some(first) = find_crlf(rest) else {
        return Ok(None);
    };
    let head = &rest[..end + 2];
    let mut p = first + 2;
    while p < head.len() {
        let mut q = p;
        let field_end = loop {
            match find_crlf(&head[q..]) {
                Some(i) if q + i + 2 < head.len() && matches!(head[q + i + 2], b' ' | b'\t') => {
                    q += i + 2;
                }
                Some(i) => break q + i,
                None => break head.len(),
            }
        };
        let line = &head[p..field_end];
        p = field_end + 2;
        let Some(colon) = memchr(b':', line) else {
            continue;
        };
        if index_of_name(line[..colon].trim_ascii_end()) != hid::CONTENT_LENGTH {
            continue;
        }
        if content_length.is_some() {
            return Err(FrameError::BadContentLength);
        }
        let v = parse_content_length(value_text(&line[colon + 1..]).trim()).map_err(|_| FrameError::BadContentLength)?;
        content_length = Some(v);
    }
    let cl = content_length.ok_or(FrameError::MissingContentLength)?;
    let total = head_len.checked_add(cl).filter(|t| *t <= max).ok_or(FrameError::TooLarge(max))?;
    if rest.len() < total {
        return Ok(None);
    }
    Ok(Some((skip, total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"OPTIONS sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/TCP h.example.com;branch=z9hG4bK1\r\nl: 5\r\n\r\nhello";

    #[test]
    fn frames_and_skips_keepalives() {
        let mut s = b"\r\n\r\n".to_vec();
        s.extend_from_slice(MSG);
        s.extend_from_slice(b"OPTIONS");
        assert_eq!(next_message(&s, 4096), Ok(Some((4, MSG.len()))));
        assert_eq!(next_message(&s[..20], 4096), Ok(None));
        assert_eq!(next_message(&s[..s.len() - 10], 4096), Ok(None));
        assert_eq!(next_message(b"\r\n\r\n", 4096), Ok(None));
    }

    #[test]
    fn errors() {
        assert_eq!(
            next_message(b"OPTIONS sip:a SIP/2.0\r\nVia: x\r\n\r\n", 4096),
            Err(FrameError::MissingContentLength)
        );
        assert_eq!(
            next_message(b"OPTIONS sip:a SIP/2.0\r\nContent-Length: -1\r\n\r\n", 4096),
            Err(FrameError::BadContentLength)
        );
        assert_eq!(
            next_message(b"OPTIONS sip:a SIP/2.0\r\nContent-Length: 1\r\nl: 1\r\n\r\nx", 4096),
            Err(FrameError::BadContentLength)
        );
        assert_eq!(next_message(MSG, 50), Err(FrameError::TooLarge(50)));
        assert_eq!(next_message(&[b'a'; 100], 50), Err(FrameError::TooLarge(50)));
        assert_eq!(
            next_message(b"OPTIONS sip:a SIP/2.0\r\nContent-Length: 99999999999999999999999\r\n\r\n", 4096),
            Err(FrameError::BadContentLength)
        );
    }
}
