//! Message framing on stream transports (RFC 3261 §18.3): on TCP the
//! Content-Length header is mandatory and delimits each message.

/// Why a stream cannot be framed; the connection is closed after an error
/// reply where one is possible.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("message larger than {0} bytes")]
    TooLarge(usize),
    #[error("Content-Length missing on a stream transport")]
    MissingContentLength,
    #[error("malformed Content-Length")]
    BadContentLength,
}

/// Looks for one complete message at the start of `buf`. Returns
/// `Ok(Some((skip, len)))` when `buf[skip..skip+len]` is a whole message
/// (`skip` counts leading CRLF keep-alives, RFC 5626 §3.5.1 "double CRLF"),
/// `Ok(None)` when more bytes are needed, or an error. `max` bounds the
/// header block plus body.
pub fn next_message(buf: &[u8], max: usize) -> Result<Option<(usize, usize)>, FrameError> {
    todo!("{}{max}", buf.len())
}
