//! Just enough MIME to read the mails: unfolded headers, multipart/alternative, quoted-printable and base64.

use base64::Engine;

#[derive(Debug, Clone)]
pub struct ParsedMail {
    pub headers: Vec<(String, String)>,
    pub text: String,
    pub html: String,
}

impl ParsedMail {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn split_head(raw: &str) -> (Vec<(String, String)>, &str) {
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .or_else(|| raw.split_once("\n\n"))
        .unwrap_or((raw, ""));
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in head.lines() {
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some(last) = headers.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    (headers, body)
}

fn get<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

pub fn decode_qp(s: &str) -> String {
    let mut out: Vec<u8> = Vec::new();
    let lines: Vec<&str> = s.split('\n').collect();
    for (i, line) in lines.iter().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let (line, soft) = match line.strip_suffix('=') {
            Some(l) => (l, true),
            None => (line, false),
        };
        let b = line.as_bytes();
        let mut j = 0;
        while j < b.len() {
            if b[j] == b'=' && j + 2 < b.len() {
                let hex = std::str::from_utf8(&b[j + 1..j + 3]).unwrap_or("");
                if let Ok(v) = u8::from_str_radix(hex, 16) {
                    out.push(v);
                    j += 3;
                    continue;
                }
            }
            out.push(b[j]);
            j += 1;
        }
        if !soft && i + 1 < lines.len() {
            out.push(b'\n');
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn decode_part(headers: &[(String, String)], body: &str) -> String {
    match get(headers, "Content-Transfer-Encoding").map(|s| s.to_ascii_lowercase()) {
        Some(e) if e == "quoted-printable" => decode_qp(body),
        Some(e) if e == "base64" => {
            let compact: String = body.chars().filter(|c| !c.is_whitespace()).collect();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(compact)
                .expect("valid base64 body");
            String::from_utf8(bytes).expect("utf-8 body")
        }
        _ => body.replace("\r\n", "\n"),
    }
}

pub fn parse(raw: &str) -> ParsedMail {
    let (headers, body) = split_head(raw);
    let ctype = get(&headers, "Content-Type").unwrap_or("").to_string();
    let mut text = String::new();
    let mut html = String::new();
    if let Some(b) = ctype.split("boundary=").nth(1) {
        let boundary = b
            .trim_matches('"')
            .split(';')
            .next()
            .unwrap()
            .trim_matches('"');
        let delim = format!("--{boundary}");
        for part in body.split(&delim).skip(1) {
            if part.starts_with("--") {
                break;
            }
            let part = part.trim_start_matches("\r\n");
            let (ph, pb) = split_head(part);
            let pct = get(&ph, "Content-Type").unwrap_or("").to_ascii_lowercase();
            let decoded = decode_part(&ph, pb);
            if pct.starts_with("text/plain") {
                text = decoded;
            } else if pct.starts_with("text/html") {
                html = decoded;
            }
        }
    } else {
        text = decode_part(&headers, body);
    }
    ParsedMail {
        headers,
        text,
        html,
    }
}

/// Every `{prefix}…` URL in `s`, up to the first whitespace or quote.
pub fn urls_with_prefix(s: &str, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.find(prefix) {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '"' || c == '<')
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

#[test]
fn quoted_printable_soft_breaks_and_escapes_decode() {
    assert_eq!(decode_qp("a=3Db=\r\nc\r\nd"), "a=bc\nd");
}
