//! A raw PostgreSQL frontend that records every backend message as a normalised line, so two servers
//! (PostgreSQL directly and the gateway) can be compared message for message: rows, column types,
//! command tags, errors with SQLSTATE, notices, notifications, COPY traffic and transaction status.

use sha2::Digest;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Values longer than this are recorded as length and SHA-256 rather than hex.
const INLINE_VALUE: usize = 256;
/// A step that sees no ReadyForQuery within this time fails the case instead of hanging the suite.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// How to log in.
#[derive(Debug, Clone)]
pub struct Login {
    /// Server address.
    pub addr: String,
    /// Startup `user`.
    pub user: String,
    /// Startup `database`.
    pub database: String,
    /// Sent when the server asks for a cleartext password.
    pub password: Option<String>,
    /// Startup `options`, e.g. `-c search_path=x`.
    pub options: Option<String>,
}

/// One frontend action whose backend answer (up to ReadyForQuery) is recorded.
#[derive(Debug, Clone)]
pub enum Action {
    /// A simple Query message; `copy_in` answers CopyInResponse in order (`Err` = CopyFail message).
    Query {
        /// SQL text, possibly several statements or empty.
        sql: String,
        /// Data for each COPY FROM STDIN of this query.
        copy_in: Vec<Result<Vec<u8>, String>>,
    },
    /// Parse (named or unnamed), Bind, Describe portal, Execute, Sync.
    Extended {
        /// Statement name ("" = unnamed); when `sql` is None the statement must already exist.
        name: String,
        /// Text to Parse, if any.
        sql: Option<String>,
        /// Text-format parameters (None = NULL).
        params: Vec<Option<String>>,
        /// Ask for binary results.
        binary: bool,
        /// Execute row limit (0 = all).
        max_rows: i32,
    },
    /// Parse a named statement and Describe it, then Sync.
    Prepare {
        /// Statement name.
        name: String,
        /// SQL text.
        sql: String,
    },
    /// Close a named statement, then Sync.
    Close {
        /// Statement name.
        name: String,
    },
}

/// An open raw connection.
pub struct RawConn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Replaced by `<schema>` in recorded text, since each side runs in its own schema.
    schema: Option<String>,
}

fn put_msg(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    out.extend_from_slice(body);
}

fn cstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// Parse of `sql` as statement `name`, no declared parameter types.
fn put_parse(out: &mut Vec<u8>, name: &str, sql: &str) {
    let mut p = Vec::new();
    cstr(&mut p, name);
    cstr(&mut p, sql);
    p.extend_from_slice(&0i16.to_be_bytes());
    put_msg(out, b'P', &p);
}

/// Bind of statement `name` to the unnamed portal, without parameters, text results.
fn put_bind_plain(out: &mut Vec<u8>, name: &str) {
    let mut b = Vec::new();
    cstr(&mut b, "");
    cstr(&mut b, name);
    b.extend_from_slice(&[0; 6]);
    put_msg(out, b'B', &b);
}

/// Describe of statement (`S`) or portal (`P`) `name`.
fn put_describe(out: &mut Vec<u8>, kind: u8, name: &str) {
    let mut d = vec![kind];
    cstr(&mut d, name);
    put_msg(out, b'D', &d);
}

/// Execute of the unnamed portal, returning at most `max_rows` (0: all).
fn put_execute(out: &mut Vec<u8>, max_rows: i32) {
    let mut e = Vec::new();
    cstr(&mut e, "");
    e.extend_from_slice(&max_rows.to_be_bytes());
    put_msg(out, b'E', &e);
}

impl RawConn {
    /// Connect and log in; fails with the server's error text.
    pub async fn connect(login: &Login, schema: Option<String>) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(&login.addr).await?;
        stream.set_nodelay(true)?;
        let mut conn = Self {
            stream,
            buf: Vec::new(),
            schema,
        };
        let mut body = Vec::new();
        body.extend_from_slice(&196608i32.to_be_bytes());
        cstr(&mut body, "user");
        cstr(&mut body, &login.user);
        cstr(&mut body, "database");
        cstr(&mut body, &login.database);
        if let Some(o) = &login.options {
            cstr(&mut body, "options");
            cstr(&mut body, o);
        }
        body.push(0);
        let mut pkt = (body.len() as i32 + 4).to_be_bytes().to_vec();
        pkt.extend_from_slice(&body);
        conn.stream.write_all(&pkt).await?;
        loop {
            let (tag, body) = conn.next_frame().await?;
            match tag {
                b'R' => match i32::from_be_bytes(body[..4].try_into()?) {
                    0 => {}
                    3 => {
                        let Some(pw) = &login.password else {
                            anyhow::bail!("server asked for a password; none configured");
                        };
                        let mut p = Vec::new();
                        cstr(&mut p, pw);
                        let mut out = Vec::new();
                        put_msg(&mut out, b'p', &p);
                        conn.stream.write_all(&out).await?;
                    }
                    other => anyhow::bail!("unsupported authentication request {other}"),
                },
                b'E' => anyhow::bail!("login failed: {}", conn.describe(tag, &body)),
                b'Z' => return Ok(conn),
                _ => {}
            }
        }
    }

    async fn next_frame(&mut self) -> anyhow::Result<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes(self.buf[1..5].try_into()?) as usize;
                if self.buf.len() > len {
                    let tag = self.buf[0];
                    let body = self.buf[5..1 + len].to_vec();
                    self.buf.drain(..1 + len);
                    return Ok((tag, body));
                }
            }
            let mut chunk = vec![0u8; 64 * 1024];
            let n = self.stream.read(&mut chunk).await?;
            if n == 0 {
                anyhow::bail!("server closed the connection");
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Perform `action` and return one line per backend message up to and including ReadyForQuery.
    pub async fn run(&mut self, action: &Action) -> anyhow::Result<Vec<String>> {
        match tokio::time::timeout(STEP_TIMEOUT, self.run_inner(action)).await {
            Ok(r) => r,
            Err(_) => anyhow::bail!("no ReadyForQuery within {STEP_TIMEOUT:?}"),
        }
    }

    async fn run_inner(&mut self, action: &Action) -> anyhow::Result<Vec<String>> {
        let mut out = Vec::new();
        let mut copies: &[Result<Vec<u8>, String>] = &[];
        match action {
            Action::Query { sql, copy_in } => {
                let mut b = Vec::new();
                cstr(&mut b, sql);
                put_msg(&mut out, b'Q', &b);
                copies = copy_in;
            }
            Action::Extended {
                name,
                sql,
                params,
                binary,
                max_rows,
            } => {
                if let Some(sql) = sql {
                    put_parse(&mut out, name, sql);
                }
                let mut b = Vec::new();
                cstr(&mut b, "");
                cstr(&mut b, name);
                b.extend_from_slice(&0i16.to_be_bytes());
                b.extend_from_slice(&(params.len() as i16).to_be_bytes());
                for v in params {
                    match v {
                        None => b.extend_from_slice(&(-1i32).to_be_bytes()),
                        Some(s) => {
                            b.extend_from_slice(&(s.len() as i32).to_be_bytes());
                            b.extend_from_slice(s.as_bytes());
                        }
                    }
                }
                b.extend_from_slice(&1i16.to_be_bytes());
                b.extend_from_slice(&i16::from(*binary).to_be_bytes());
                put_msg(&mut out, b'B', &b);
                put_describe(&mut out, b'P', "");
                put_execute(&mut out, *max_rows);
                put_msg(&mut out, b'S', &[]);
            }
            Action::Prepare { name, sql } => {
                put_parse(&mut out, name, sql);
                put_describe(&mut out, b'S', name);
                put_msg(&mut out, b'S', &[]);
            }
            Action::Close { name } => {
                let mut c = vec![b'S'];
                cstr(&mut c, name);
                put_msg(&mut out, b'C', &c);
                put_msg(&mut out, b'S', &[]);
            }
        }
        self.stream.write_all(&out).await?;
        let mut lines = Vec::new();
        let mut copies = copies.iter();
        loop {
            let (tag, body) = self.next_frame().await?;
            lines.push(self.describe(tag, &body));
            match tag {
                b'Z' => return Ok(lines),
                b'G' => {
                    let mut msg = Vec::new();
                    match copies.next() {
                        Some(Ok(data)) => {
                            for chunk in data.chunks(64 * 1024) {
                                put_msg(&mut msg, b'd', chunk);
                            }
                            put_msg(&mut msg, b'c', &[]);
                        }
                        Some(Err(reason)) => {
                            let mut f = Vec::new();
                            cstr(&mut f, reason);
                            put_msg(&mut msg, b'f', &f);
                        }
                        None => {
                            let mut f = Vec::new();
                            cstr(&mut f, "case has no copy-in data");
                            put_msg(&mut msg, b'f', &f);
                        }
                    }
                    self.stream.write_all(&msg).await?;
                }
                _ => {}
            }
        }
    }

    /// A simple Query of `sql` (no COPY), as [`RawConn::run`] records it.
    pub async fn query(&mut self, sql: &str) -> anyhow::Result<Vec<String>> {
        self.run(&Action::Query {
            sql: sql.to_string(),
            copy_in: vec![],
        })
        .await
    }

    /// Sends what pg-cursor sends to open a cursor read: Parse and Bind of `sql` (unnamed), Describe
    /// portal, Execute with `max_rows`, then Flush — no Sync.
    pub async fn cursor_read(&mut self, sql: &str, max_rows: i32) -> anyhow::Result<()> {
        let mut out = Vec::new();
        put_parse(&mut out, "", sql);
        put_bind_plain(&mut out, "");
        put_describe(&mut out, b'P', "");
        self.stream.write_all(&out).await?;
        self.cursor_fetch(max_rows).await
    }

    /// Sends what asyncpg sends to prepare its next statement: Parse of `sql` as `name`, Describe of
    /// the statement, then Flush — no Sync.
    pub async fn prepare_ahead(&mut self, name: &str, sql: &str) -> anyhow::Result<()> {
        let mut out = Vec::new();
        put_parse(&mut out, name, sql);
        put_describe(&mut out, b'S', name);
        put_msg(&mut out, b'H', &[]);
        Ok(self.stream.write_all(&out).await?)
    }

    /// One batch: Parse, Bind and Execute of `sql` (unnamed), then Bind and Execute of the statement
    /// `name`, then Sync.
    pub async fn run_then_bind(&mut self, sql: &str, name: &str) -> anyhow::Result<()> {
        let mut out = Vec::new();
        put_parse(&mut out, "", sql);
        for statement in ["", name] {
            put_bind_plain(&mut out, statement);
            put_execute(&mut out, 0);
        }
        put_msg(&mut out, b'S', &[]);
        Ok(self.stream.write_all(&out).await?)
    }

    /// One batch as an executemany sends it: Parse of `sql` as `name`, then Bind (one text parameter
    /// each) and Execute per value, then Sync.
    pub async fn execute_many(
        &mut self,
        name: &str,
        sql: &str,
        values: &[&str],
    ) -> anyhow::Result<()> {
        let mut out = Vec::new();
        put_parse(&mut out, name, sql);
        for v in values {
            let mut b = Vec::new();
            cstr(&mut b, "");
            cstr(&mut b, name);
            b.extend_from_slice(&0i16.to_be_bytes());
            b.extend_from_slice(&1i16.to_be_bytes());
            b.extend_from_slice(&(v.len() as i32).to_be_bytes());
            b.extend_from_slice(v.as_bytes());
            b.extend_from_slice(&0i16.to_be_bytes());
            put_msg(&mut out, b'B', &b);
            put_execute(&mut out, 0);
        }
        put_msg(&mut out, b'S', &[]);
        Ok(self.stream.write_all(&out).await?)
    }

    /// Bind of the statement `name` (no parameters, text results) to the unnamed portal, Execute, Sync.
    pub async fn bind_execute_sync(&mut self, name: &str) -> anyhow::Result<()> {
        let mut out = Vec::new();
        put_bind_plain(&mut out, name);
        put_execute(&mut out, 0);
        put_msg(&mut out, b'S', &[]);
        Ok(self.stream.write_all(&out).await?)
    }

    /// Execute of the unnamed portal with `max_rows`, then Flush.
    pub async fn cursor_fetch(&mut self, max_rows: i32) -> anyhow::Result<()> {
        let mut out = Vec::new();
        put_execute(&mut out, max_rows);
        put_msg(&mut out, b'H', &[]);
        Ok(self.stream.write_all(&out).await?)
    }

    /// Sends Sync.
    pub async fn sync(&mut self) -> anyhow::Result<()> {
        let mut out = Vec::new();
        put_msg(&mut out, b'S', &[]);
        Ok(self.stream.write_all(&out).await?)
    }

    /// One line per backend message up to and including the first whose tag is in `until`.
    pub async fn read_until(&mut self, until: &[u8]) -> anyhow::Result<Vec<String>> {
        let read = async {
            let mut lines = Vec::new();
            loop {
                let (tag, body) = self.next_frame().await?;
                lines.push(self.describe(tag, &body));
                if until.contains(&tag) {
                    return Ok(lines);
                }
            }
        };
        match tokio::time::timeout(STEP_TIMEOUT, read).await {
            Ok(r) => r,
            Err(_) => anyhow::bail!("none of {until:?} within {STEP_TIMEOUT:?}"),
        }
    }

    /// One line per backend message until the server closes the connection.
    pub async fn read_to_close(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        let read = async {
            while let Ok((tag, body)) = self.next_frame().await {
                lines.push(self.describe(tag, &body));
            }
        };
        let _ = tokio::time::timeout(STEP_TIMEOUT, read).await;
        lines
    }

    /// Send Terminate and close.
    pub async fn close(mut self) {
        let mut out = Vec::new();
        put_msg(&mut out, b'X', &[]);
        let _ = self.stream.write_all(&out).await;
    }

    fn text(&self, bytes: &[u8]) -> String {
        let s = String::from_utf8_lossy(bytes).into_owned();
        match &self.schema {
            Some(schema) => s.replace(schema.as_str(), "<schema>"),
            None => s,
        }
    }

    fn value(&self, v: &[u8]) -> String {
        if v.len() > INLINE_VALUE {
            format!(
                "<{} bytes sha256 {}>",
                v.len(),
                hex::encode(sha2::Sha256::digest(v))
            )
        } else if let Ok(s) = std::str::from_utf8(v) {
            format!("{:?}", self.text(s.as_bytes()))
        } else {
            format!("x{}", hex::encode(v))
        }
    }

    /// One normalised line for a backend message: identical servers give identical lines. Process ids,
    /// table OIDs and the per-side schema name are left out; everything else is kept.
    fn describe(&self, tag: u8, body: &[u8]) -> String {
        let mut r = Reader { b: body, at: 0 };
        let t = tag as char;
        match tag {
            b'T' => {
                let n = r.i16();
                let cols: Vec<String> = (0..n)
                    .map(|_| {
                        let name = self.text(r.cstr());
                        let _table_oid = r.i32();
                        let attnum = r.i16();
                        let typ = r.i32();
                        let len = r.i16();
                        let typmod = r.i32();
                        let fmt = r.i16();
                        format!("{name}:{typ}/{len}/{typmod}/att{attnum}/f{fmt}")
                    })
                    .collect();
                format!("RowDescription [{}]", cols.join(", "))
            }
            b'D' => {
                let n = r.i16();
                let vals: Vec<String> = (0..n)
                    .map(|_| {
                        let len = r.i32();
                        if len < 0 {
                            "NULL".to_string()
                        } else {
                            self.value(r.take(len as usize))
                        }
                    })
                    .collect();
                format!("DataRow [{}]", vals.join(", "))
            }
            b'E' | b'N' => {
                let mut fields = Vec::new();
                while r.at < body.len() && body[r.at] != 0 {
                    let code = body[r.at] as char;
                    r.at += 1;
                    let v = self.text(r.cstr());
                    fields.push(format!("{code}={v:?}"));
                }
                format!(
                    "{} {}",
                    if tag == b'E' { "Error" } else { "Notice" },
                    fields.join(" ")
                )
            }
            b'A' => {
                let _pid = r.i32();
                let channel = self.text(r.cstr());
                let payload = self.text(r.cstr());
                format!("Notification {channel} {payload:?}")
            }
            b'C' => format!("CommandComplete {}", self.text(r.cstr())),
            b'Z' => format!("ReadyForQuery {}", body.first().map_or('?', |&b| b as char)),
            b'S' => {
                let k = self.text(r.cstr());
                let v = self.text(r.cstr());
                format!("ParameterStatus {k}={v}")
            }
            b'd' => format!("CopyData {}", self.value(body)),
            b'G' | b'H' | b'W' => format!("Copy{t}Response x{}", hex::encode(body)),
            b't' => format!("ParameterDescription x{}", hex::encode(body)),
            b'1' => "ParseComplete".into(),
            b'2' => "BindComplete".into(),
            b'3' => "CloseComplete".into(),
            b'n' => "NoData".into(),
            b'I' => "EmptyQueryResponse".into(),
            b's' => "PortalSuspended".into(),
            b'c' => "CopyDone".into(),
            _ => format!("Message {t} x{}", hex::encode(body)),
        }
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let end = (self.at + n).min(self.b.len());
        let s = &self.b[self.at..end];
        self.at = end;
        s
    }
    fn i16(&mut self) -> i16 {
        let s = self.take(2);
        s.try_into().map(i16::from_be_bytes).unwrap_or(0)
    }
    fn i32(&mut self) -> i32 {
        let s = self.take(4);
        s.try_into().map(i32::from_be_bytes).unwrap_or(0)
    }
    fn cstr(&mut self) -> &'a [u8] {
        let rest = &self.b[self.at.min(self.b.len())..];
        let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
        self.at += end + 1;
        &rest[..end]
    }
}
