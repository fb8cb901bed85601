//! Shared harness for the e-mail tests: a workflow on a fresh store, the e-mail notifier pointed at a fake
//! SMTP relay on loopback, the outbox worker, and the inbound router on a real loopback socket.
#![allow(dead_code)]

pub mod mime;
pub mod smtp;

use countersign_bot::testing::{fresh_sqlite, human, workload, TempDir};
use countersign_bot::{
    ApproverDirectory, ApproverGroup, NewRequest, RequestId, RequesterChain, StatementHash, Store,
    Submitted, Workflow,
};
use countersign_notifiers::email::{self, EmailConfig, EmailInbound, EmailNotifier, EmailSecrets};
use countersign_notifiers::{OutboxWorker, RetryPolicy};
use mime::ParsedMail;
use smtp::FakeSmtp;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub const KEY: &str = "test-link-key-0123456789abcdef0123456789";
pub const ALICE: &str = "alice@example.com";
pub const BOB: &str = "bob@example.com";
pub const CAROL: &str = "carol@example.com";
/// In `leads` only: a group requests escalate to, never their approver group.
pub const DAVE: &str = "dave@example.com";

pub fn directory() -> ApproverDirectory {
    ApproverDirectory::new([
        ApproverGroup {
            name: "dba".into(),
            members: vec![ALICE.into(), BOB.into(), CAROL.into()],
            idp_groups: vec![],
        },
        ApproverGroup {
            name: "leads".into(),
            members: vec![DAVE.into()],
            idp_groups: vec![],
        },
    ])
}

/// An agent acting for Alice, who is herself in the approver group.
pub fn agent_for_alice() -> RequesterChain {
    RequesterChain(vec![workload("deploy-agent"), human(ALICE)])
}

pub fn new_request(sql: &str, quorum: u32) -> NewRequest {
    NewRequest {
        connection: "prod".into(),
        statement: sql.into(),
        statement_hash: StatementHash::of_text(sql),
        requester: agent_for_alice(),
        rule: "destructive".into(),
        reasons: vec!["DELETE without WHERE".into()],
        approver_groups: vec!["dba".into()],
        quorum,
        ttl_secs: 3600,
        origin: "api".into(),
        session_id: None,
        reminders: Default::default(),
    }
}

pub fn config(smtp: SocketAddr, base: &str, link_ttl: &str) -> EmailConfig {
    toml::from_str(&format!(
        r#"
smtp_host = "127.0.0.1"
smtp_port = {port}
tls = "none"
from = "Countersign <countersign@example.com>"
reply_to = "dba-team@example.com"
link_signing_key_env = "CS_TEST_LINK_KEY"
link_ttl = "{link_ttl}"
public_base_url = "{base}"
"#,
        port = smtp.port()
    ))
    .expect("test config parses")
}

pub struct Harness {
    pub store: Arc<dyn Store>,
    pub workflow: Arc<Workflow>,
    pub worker: OutboxWorker,
    pub base: String,
    pub http: reqwest::Client,
    pub notifier: Arc<EmailNotifier>,
    server: tokio::task::JoinHandle<()>,
    _dir: Option<TempDir>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.server.abort();
    }
}

pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Harness {
    /// Everything on a fresh SQLite store, mail to `smtp`.
    pub async fn sqlite(smtp: SocketAddr, link_ttl: &str) -> Self {
        let (store, dir) = fresh_sqlite().await;
        Self::on(store, Some(dir), smtp, link_ttl).await
    }

    pub async fn on(
        store: Arc<dyn Store>,
        dir: Option<TempDir>,
        smtp: SocketAddr,
        link_ttl: &str,
    ) -> Self {
        install_crypto();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let cfg = config(smtp, &base, link_ttl);
        cfg.validate().expect("test config is valid");
        let secrets = EmailSecrets::from_lookup(&cfg, |_| Some(KEY.into())).unwrap();
        let notifier =
            Arc::new(EmailNotifier::new(&cfg, &secrets, store.clone(), directory()).unwrap());
        let workflow = Arc::new(Workflow::new(
            store.clone(),
            directory(),
            vec!["email".into()],
        ));
        let inbound = EmailInbound {
            workflow: workflow.clone(),
            store: store.clone(),
            signer: notifier.signer(),
            public_base_url: base.clone(),
        };
        let app = email::router(inbound);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let policy = RetryPolicy {
            base: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
            ..RetryPolicy::default()
        };
        let worker = OutboxWorker::new(store.clone(), vec![notifier.clone()], policy);
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        Self {
            store,
            workflow,
            worker,
            base,
            http,
            notifier,
            server,
            _dir: dir,
        }
    }

    pub async fn submit(&self, sql: &str, quorum: u32) -> RequestId {
        match self
            .workflow
            .submit(new_request(sql, quorum))
            .await
            .unwrap()
        {
            Submitted::Created(v) => v.request.id,
            other => panic!("expected a new request, got {other:?}"),
        }
    }

    /// Run the outbox worker until `smtp` has received `n` messages (or fail after a while).
    pub async fn deliver_until(&self, smtp: &FakeSmtp, n: usize) -> Vec<ParsedMail> {
        for _ in 0..200 {
            self.worker.run_once().await.unwrap();
            if smtp.received().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let got: Vec<ParsedMail> = smtp
            .received()
            .iter()
            .map(|m| mime::parse(&m.data))
            .collect();
        assert_eq!(got.len(), n, "expected {n} mails, got {}", got.len());
        got
    }

    pub async fn status(&self, id: RequestId) -> String {
        self.workflow
            .get(id)
            .await
            .unwrap()
            .request
            .status
            .to_string()
    }

    pub async fn get(&self, url: &str) -> (u16, String) {
        let r = self.http.get(url).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// POST the confirmation form the way a browser would.
    pub async fn post(&self, token: &str, csrf: &str, reason: &str) -> (u16, String) {
        let r = self
            .http
            .post(format!("{}/email/act", self.base))
            .form(&[("t", token), ("csrf", csrf), ("reason", reason)])
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// Open a link (GET) and press the button (POST) as a browser would.
    pub async fn click(&self, link: &str) -> (u16, String) {
        let (status, page) = self.get(link).await;
        assert_eq!(status, 200, "confirmation page: {page}");
        let (t, csrf) = form_fields(&page);
        self.post(&t, &csrf, "looks fine").await
    }

    pub async fn audit_actions(&self) -> Vec<(String, serde_json::Value)> {
        self.store
            .audit_records(0, 1000)
            .await
            .unwrap()
            .into_iter()
            .map(|r| (r.entry.action, r.entry.detail))
            .collect()
    }
}

/// The hidden `t` and `csrf` values of a confirmation page.
pub fn form_fields(page: &str) -> (String, String) {
    let field = |name: &str| {
        let marker = format!("name=\"{name}\" value=\"");
        let start = page.find(&marker).expect("form field present") + marker.len();
        let end = page[start..].find('"').unwrap() + start;
        page[start..end].to_string()
    };
    (field("t"), field("csrf"))
}

/// The mail addressed to `who`.
pub fn mail_to<'a>(mails: &'a [ParsedMail], who: &str) -> &'a ParsedMail {
    mails
        .iter()
        .find(|m| m.header("To").is_some_and(|t| t.contains(who)))
        .unwrap_or_else(|| panic!("no mail to {who}"))
}

/// (approve, deny) links of an approval mail, from its plain-text part.
pub fn vote_links(base: &str, mail: &ParsedMail) -> (String, String) {
    let links = mime::urls_with_prefix(&mail.text, &format!("{base}/email/act?t="));
    assert_eq!(links.len(), 2, "two vote links in:\n{}", mail.text);
    (links[0].clone(), links[1].clone())
}

pub fn token_of(link: &str) -> String {
    link.split("?t=").nth(1).unwrap().to_string()
}
