//! Raw PostgreSQL protocol frames, for tests that send what no client library would.

use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// A startup packet for protocol 3.0, user `agent`, database `database`.
pub fn startup_packet(database: &str) -> Vec<u8> {
    let mut body = 196608i32.to_be_bytes().to_vec();
    for (k, v) in [("user", "agent"), ("database", database)] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend(body);
    packet
}

/// A frontend message: tag, length, body.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![tag];
    m.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    m.extend_from_slice(body);
    m
}

/// `s` with its NUL terminator.
pub fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// Reads whole backend frames until one tagged `last` arrives; returns the tags and bodies.
pub async fn read_frames_until(s: &mut TcpStream, last: u8) -> Vec<(u8, Vec<u8>)> {
    let mut frames = Vec::new();
    loop {
        let mut head = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut head))
            .await
            .unwrap_or_else(|_| panic!("no {:?} within 5 s; got {frames:?}", last as char))
            .unwrap();
        let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len - 4];
        s.read_exact(&mut body).await.unwrap();
        frames.push((head[0], body));
        if head[0] == last {
            return frames;
        }
    }
}

/// Logs in as `agent` with a cleartext `password` to database `database` and reads up to the first
/// ReadyForQuery.
pub async fn login(addr: std::net::SocketAddr, database: &str, password: &str) -> TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(&startup_packet(database)).await.unwrap();
    let mut auth = [0u8; 9];
    s.read_exact(&mut auth).await.unwrap();
    assert_eq!(&auth[..1], b"R", "asked for a password");
    s.write_all(&message(b'p', &cstr(password))).await.unwrap();
    read_frames_until(&mut s, b'Z').await;
    s
}
