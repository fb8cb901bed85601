//! Frame layout `[tag:u8][len:i32][body]` and encoders for the few messages the gateway writes itself.

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Writes `bytes` and flushes: over TLS, written bytes may wait in the record buffer until a flush
/// (on plain TCP the flush costs nothing).
pub async fn send<S: AsyncWrite + Unpin>(stream: &mut S, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes).await?;
    stream.flush().await
}

/// SQLSTATE codes the gateway emits.
pub mod sqlstate {
    /// Policy refused the statement (block, denial, expiry, pending).
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
    /// The client cancelled a held statement.
    pub const QUERY_CANCELED: &str = "57014";
    /// Broken framing, unknown messages, startup timeout.
    pub const PROTOCOL_VIOLATION: &str = "08P01";
    /// The server is shutting down (`terminating connection due to administrator command`).
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    /// Wrong token.
    pub const INVALID_PASSWORD: &str = "28P01";
    /// Authentication refused for another reason (e.g. cleartext without TLS).
    pub const INVALID_AUTHORIZATION: &str = "28000";
    /// Unknown connection name.
    pub const INVALID_CATALOG_NAME: &str = "3D000";
    /// The upstream could not be reached.
    pub const CONNECTION_FAILURE: &str = "08006";
    /// Unsupported protocol version or message.
    pub const FEATURE_NOT_SUPPORTED: &str = "0A000";
    /// The engine failed while holding a statement.
    pub const SYSTEM_ERROR: &str = "58000";
    pub const PROGRAM_LIMIT_EXCEEDED: &str = "54000";
}

/// If `buf` starts with a complete header, the tag and the frame's total length (tag + length + body).
pub fn frame_header(buf: &[u8]) -> Option<(u8, usize)> {
    if buf.len() < 5 {
        return None;
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    // A negative or too-small length is reported as an impossible size; callers reject it.
    let total = if len < 4 {
        usize::MAX
    } else {
        len as usize + 1
    };
    Some((buf[0], total))
}

/// Reads a NUL-terminated string at `*pos`, advancing past the terminator.
pub fn read_cstr<'a>(body: &'a [u8], pos: &mut usize) -> Option<&'a [u8]> {
    let rest = body.get(*pos..)?;
    let end = rest.iter().position(|&b| b == 0)?;
    *pos += end + 1;
    Some(&rest[..end])
}

/// Reads a big-endian i16 at `*pos`.
pub fn read_i16(body: &[u8], pos: &mut usize) -> Option<i16> {
    let b = body.get(*pos..*pos + 2)?;
    *pos += 2;
    Some(i16::from_be_bytes([b[0], b[1]]))
}

/// Reads a big-endian u16 at `*pos`: the counts in Parse and Bind, which PostgreSQL reads unsigned
/// (up to 65,535 parameters).
pub fn read_u16(body: &[u8], pos: &mut usize) -> Option<u16> {
    let b = body.get(*pos..*pos + 2)?;
    *pos += 2;
    Some(u16::from_be_bytes([b[0], b[1]]))
}

/// Reads a big-endian i32 at `*pos`.
pub fn read_i32(body: &[u8], pos: &mut usize) -> Option<i32> {
    let b = body.get(*pos..*pos + 4)?;
    *pos += 4;
    Some(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Severity of a gateway-written error or notice.
#[derive(Debug, Clone, Copy)]
pub enum Severity {
    /// The session ends after this message.
    Fatal,
    /// Informational notice.
    Notice,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Fatal => "FATAL",
            Severity::Notice => "NOTICE",
        }
    }
}

/// Appends an ErrorResponse ('E') or, for `Severity::Notice`, a NoticeResponse ('N').
pub fn put_error(
    buf: &mut BytesMut,
    severity: Severity,
    code: &str,
    message: &str,
    hint: Option<&str>,
) {
    let tag = if matches!(severity, Severity::Notice) {
        b'N'
    } else {
        b'E'
    };
    let start = buf.len();
    buf.put_u8(tag);
    buf.put_i32(0);
    for (field, value) in [
        (b'S', severity.as_str()),
        (b'V', severity.as_str()),
        (b'C', code),
        (b'M', message),
    ]
    .into_iter()
    .chain(hint.map(|h| (b'H', h)))
    {
        buf.put_u8(field);
        put_cstr(buf, value.as_bytes());
    }
    buf.put_u8(0);
    patch_len(buf, start);
}

/// Appends ReadyForQuery with a transaction status (`I`, `T` or `E`).
pub fn put_ready(buf: &mut BytesMut, status: u8) {
    buf.put_u8(b'Z');
    buf.put_i32(5);
    buf.put_u8(status);
}

/// Appends an Authentication message with the given code and no payload.
pub fn put_auth(buf: &mut BytesMut, code: i32) {
    buf.put_u8(b'R');
    buf.put_i32(8);
    buf.put_i32(code);
}

/// Appends BackendKeyData.
pub fn put_backend_key(buf: &mut BytesMut, pid: i32, secret: i32) {
    buf.put_u8(b'K');
    buf.put_i32(12);
    buf.put_i32(pid);
    buf.put_i32(secret);
}

/// Appends `bytes` plus a NUL terminator, dropping any interior NUL that would break the framing.
pub fn put_cstr(buf: &mut BytesMut, bytes: &[u8]) {
    buf.extend(bytes.iter().copied().filter(|&b| b != 0));
    buf.put_u8(0);
}

/// Writes the length of the frame starting at `start` (its tag byte) into its header.
pub fn patch_len(buf: &mut BytesMut, start: usize) {
    let len = (buf.len() - start - 1) as i32;
    buf[start + 1..start + 5].copy_from_slice(&len.to_be_bytes());
}

/// The fields of an ErrorResponse/NoticeResponse body.
pub fn error_fields(body: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut pos = 0;
    std::iter::from_fn(move || {
        let field = *body.get(pos)?;
        if field == 0 {
            return None;
        }
        pos += 1;
        let value = read_cstr(body, &mut pos)?;
        Some((field, value))
    })
}

/// The rows count at the end of a CommandComplete tag (`INSERT 0 5` → 5, `SELECT 3` → 3); of several
/// statements' tags (`SELECT 1; INSERT 0 2`), the last one's.
pub fn rows_of_tag(tag: &str) -> Option<u64> {
    let last = tag.rsplit("; ").next().unwrap_or(tag);
    last.rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .filter(|_| last.contains(' '))
}

/// Reads one complete frame into `buf` (which may hold leftovers) and returns its tag and body.
///
/// Frames larger than `max` are refused so that a hostile peer can't make the gateway allocate at will.
pub async fn read_frame<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    max: usize,
) -> std::io::Result<(u8, bytes::Bytes)> {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some((tag, total)) = frame_header(buf) {
            let total = within_limit(total, max)?;
            if buf.len() >= total {
                let frame = buf.split_to(total).freeze();
                return Ok((tag, frame.slice(5..)));
            }
            buf.reserve(total - buf.len());
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// A frame's total length from [`frame_header`] when it is a possible one within `max`.
fn within_limit(total: usize, max: usize) -> std::io::Result<usize> {
    let refuse = |why: String| Err(std::io::Error::new(std::io::ErrorKind::InvalidData, why));
    if total == usize::MAX {
        return refuse("invalid message length (below 4)".into());
    }
    if total > max {
        return refuse(format!(
            "message of {total} bytes exceeds the limit of {max}"
        ));
    }
    Ok(total)
}

/// One frame read without reading past it: what the client pipelined after it (a query sent with
/// the password) stays in the stream for whoever reads next.
pub async fn read_frame_exact<S: tokio::io::AsyncRead + Unpin>(
    stream: &mut S,
    max: usize,
) -> std::io::Result<(u8, bytes::Bytes)> {
    use tokio::io::AsyncReadExt;
    let mut header = [0u8; 5];
    stream.read_exact(&mut header).await?;
    // (Five bytes are a whole header.)
    let (tag, total) = frame_header(&header).unwrap_or((header[0], usize::MAX));
    let total = within_limit(total, max)?;
    let mut body = vec![0u8; total - 5];
    stream.read_exact(&mut body).await?;
    Ok((tag, body.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_response_round_trips_through_field_parser() {
        let mut buf = BytesMut::new();
        put_error(&mut buf, Severity::Fatal, "42501", "no\0pe", Some("ask"));
        let (tag, total) = frame_header(&buf).unwrap();
        assert_eq!((tag, total), (b'E', buf.len()));
        let fields: Vec<_> = error_fields(&buf[5..]).collect();
        assert!(fields.contains(&(b'C', &b"42501"[..])));
        assert!(fields.contains(&(b'M', &b"nope"[..])));
        assert!(fields.contains(&(b'H', &b"ask"[..])));
    }

    #[test]
    fn negative_frame_length_is_reported_as_impossible() {
        assert_eq!(
            frame_header(&[b'Q', 0xff, 0xff, 0xff, 0xff]),
            Some((b'Q', usize::MAX))
        );
        assert_eq!(frame_header(&[b'Q', 0, 0]), None);
    }

    #[test]
    fn rows_are_read_from_the_command_tag() {
        assert_eq!(rows_of_tag("INSERT 0 5"), Some(5));
        assert_eq!(rows_of_tag("SELECT 3"), Some(3));
        assert_eq!(rows_of_tag("BEGIN"), None);
        assert_eq!(rows_of_tag("SELECT 1; INSERT 0 2"), Some(2));
        assert_eq!(rows_of_tag("INSERT 0 2; COMMIT"), None);
    }
}
