//! A small SMTP server for tests: EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, QUIT; captures each message.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// One message as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    pub data: String,
}

#[derive(Default)]
struct Shared {
    received: Vec<Received>,
    // Recipients whose next RCPT gets a transient 451 (once each).
    fail_rcpt_once: HashSet<String>,
}

/// A running fake SMTP relay.
pub struct FakeSmtp {
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    task: JoinHandle<()>,
}

impl FakeSmtp {
    pub async fn start() -> Self {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(addr: SocketAddr) -> Self {
        let listener = TcpListener::bind(addr).await.expect("bind fake SMTP");
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let s = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(session(sock, s.clone()));
            }
        });
        Self { addr, shared, task }
    }

    /// Make the next RCPT TO for `addr` fail with 451 (transient).
    pub fn fail_rcpt_once(&self, addr: &str) {
        self.shared
            .lock()
            .unwrap()
            .fail_rcpt_once
            .insert(addr.to_lowercase());
    }

    pub fn received(&self) -> Vec<Received> {
        self.shared.lock().unwrap().received.clone()
    }

    pub fn stop(self) {
        self.task.abort();
    }
}

async fn session(sock: tokio::net::TcpStream, shared: Arc<Mutex<Shared>>) {
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    let _ = w.write_all(b"220 fake-smtp ESMTP ready\r\n").await;
    let mut from = String::new();
    let mut rcpt: Vec<String> = Vec::new();
    let mut line = String::new();
    loop {
        line.clear();
        match r.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let cmd = line.trim_end().to_string();
        let upper = cmd.to_ascii_uppercase();
        let reply: String = if upper.starts_with("EHLO") {
            "250-fake-smtp\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n".into()
        } else if upper.starts_with("HELO") || upper.starts_with("NOOP") {
            "250 OK\r\n".into()
        } else if upper.starts_with("RSET") {
            from.clear();
            rcpt.clear();
            "250 OK\r\n".into()
        } else if upper.starts_with("MAIL FROM:") {
            from = angle(&cmd);
            rcpt.clear();
            "250 OK\r\n".into()
        } else if upper.starts_with("RCPT TO:") {
            let to = angle(&cmd).to_lowercase();
            let fail = shared.lock().unwrap().fail_rcpt_once.remove(&to);
            if fail {
                "451 4.3.0 try again later\r\n".into()
            } else {
                rcpt.push(to);
                "250 OK\r\n".into()
            }
        } else if upper == "DATA" {
            if w.write_all(b"354 end with <CRLF>.<CRLF>\r\n")
                .await
                .is_err()
            {
                return;
            }
            let mut data = String::new();
            loop {
                let mut l = String::new();
                match r.read_line(&mut l).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                if l == ".\r\n" || l == ".\n" {
                    break;
                }
                // Dot-unstuffing (RFC 5321 4.5.2).
                let l = l.strip_prefix('.').map(str::to_string).unwrap_or(l);
                data.push_str(&l);
            }
            shared.lock().unwrap().received.push(Received {
                mail_from: from.clone(),
                rcpt_to: rcpt.clone(),
                data,
            });
            "250 OK queued\r\n".into()
        } else if upper.starts_with("QUIT") {
            let _ = w.write_all(b"221 bye\r\n").await;
            return;
        } else {
            "502 not implemented\r\n".into()
        };
        if w.write_all(reply.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn angle(cmd: &str) -> String {
    let start = cmd.find('<').map(|i| i + 1).unwrap_or(0);
    let end = cmd[start..]
        .find('>')
        .map(|i| i + start)
        .unwrap_or(cmd.len());
    cmd[start..end].to_string()
}
