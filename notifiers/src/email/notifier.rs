//! `EmailNotifier`: one mail per approver for each event, threaded under the approval mail, idempotent per
//! outbox delivery key and recipient (a retry after a partial failure re-sends only what did not go out).

use super::compose::{
    approval_mail, escalation_notice_mail, follow_up_mail, requester_notice_mail, MailContent,
    VoteLinks,
};
use super::config::{EmailConfig, EmailConfigError, EmailSecrets, SmtpTls};
use super::token::{LinkAction, LinkSigner};
use countersign_bot::events::{DeliveryError, Notifier, WorkflowEvent};
use countersign_bot::identity::canonical_email;
use countersign_bot::{ApproverDirectory, RequestId, RequestView, Store};
use lettre::message::{Mailbox, MultiPart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// The sink name e-mail outbox rows carry.
pub const EMAIL_SINK: &str = "email";

/// Request-page links in mails stay usable this long (they can only view, never vote).
pub const VIEW_LINK_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Sends approval mails and threaded follow-ups over SMTP.
pub struct EmailNotifier {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    reply_to: Option<Mailbox>,
    signer: LinkSigner,
    link_ttl: Duration,
    base_url: String,
    store: Arc<dyn Store>,
    directory: ApproverDirectory,
    id_domain: String,
}

impl EmailNotifier {
    /// Build from validated configuration and its secrets.
    pub fn new(
        config: &EmailConfig,
        secrets: &EmailSecrets,
        store: Arc<dyn Store>,
        directory: ApproverDirectory,
    ) -> Result<Self, EmailConfigError> {
        config.validate()?;
        let host = config.smtp_host.trim();
        let tls = |wrap: fn(TlsParameters) -> Tls| {
            TlsParameters::new(host.to_string())
                .map(wrap)
                .map_err(|e| EmailConfigError::Invalid {
                    key: "smtp_host",
                    problem: format!("cannot set up TLS for {host:?} ({e}): check the host name"),
                })
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(config.port())
            .timeout(Some(Duration::from_secs(30)));
        builder = match config.tls {
            SmtpTls::Starttls => builder.tls(tls(Tls::Required)?),
            SmtpTls::Implicit => builder.tls(tls(Tls::Wrapper)?),
            SmtpTls::None => builder.tls(Tls::None),
        };
        if let Some((user, pass)) = &secrets.credentials {
            builder = builder.credentials(Credentials::new(user.clone(), pass.clone()));
        }
        let from = config.from_mailbox()?;
        let id_domain = from.email.domain().to_string();
        Ok(Self {
            transport: builder.build(),
            reply_to: config.reply_to_mailbox()?,
            from,
            signer: LinkSigner::new(secrets.link_key.clone()),
            link_ttl: config.link_ttl()?,
            base_url: config.base_url(),
            store,
            directory,
            id_domain,
        })
    }

    /// The signer, to share with [`super::EmailInbound`] so links verify with the same key.
    pub fn signer(&self) -> LinkSigner {
        self.signer.clone()
    }

    fn page_url(&self, id: RequestId, token: &str) -> String {
        format!("{}/requests/{id}?t={token}", self.base_url)
    }

    fn view_link(&self, id: RequestId, recipient: &str) -> Result<String, DeliveryError> {
        let exp = unix_secs(OffsetDateTime::now_utc()) + VIEW_LINK_TTL.as_secs();
        let t = self
            .signer
            .mint(id, recipient, LinkAction::View, exp)
            .map_err(|e| DeliveryError::Permanent(format!("cannot sign a link: {e}")))?;
        Ok(self.page_url(id, &t))
    }

    fn vote_links(&self, view: &RequestView, recipient: &str) -> Result<VoteLinks, DeliveryError> {
        let id = view.request.id;
        let now = unix_secs(OffsetDateTime::now_utc());
        let exp = (now + self.link_ttl.as_secs()).min(unix_secs(view.request.expires_at));
        let mint = |act| {
            self.signer
                .mint(id, recipient, act, exp)
                .map_err(|e| DeliveryError::Permanent(format!("cannot sign a link: {e}")))
        };
        let act = |t: String| format!("{}/email/act?t={t}", self.base_url);
        Ok(VoteLinks {
            approve: act(mint(LinkAction::Approve)?),
            deny: act(mint(LinkAction::Deny)?),
            page: self.view_link(id, recipient)?,
        })
    }

    /// The thread root for `(request, recipient)`: stored on first use, deterministic so a crash between
    /// sending and storing still yields the same id.
    async fn thread_root(
        &self,
        id: RequestId,
        recipient: &str,
    ) -> Result<(String, bool), DeliveryError> {
        let key = format!("message-id:{recipient}");
        if let Some(existing) = self
            .store
            .get_ref(id, EMAIL_SINK, &key)
            .await
            .map_err(retry)?
        {
            return Ok((existing, false));
        }
        let root = format!(
            "<request-{id}.{}@{}>",
            short_hash(recipient),
            self.id_domain
        );
        self.store
            .put_ref(id, EMAIL_SINK, &key, &root)
            .await
            .map_err(retry)?;
        Ok((root, true))
    }

    fn message(
        &self,
        to: &str,
        content: MailContent,
        message_id: String,
        in_reply_to: Option<String>,
    ) -> Result<Message, DeliveryError> {
        let to: Mailbox = to.parse().map_err(|e| {
            DeliveryError::Permanent(format!(
                "approver address {to:?} is not a mail address ({e}): fix it in the approver group"
            ))
        })?;
        let mut b = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(content.subject)
            .message_id(Some(message_id))
            .date_now();
        if let Some(r) = &self.reply_to {
            b = b.reply_to(r.clone());
        }
        if let Some(parent) = in_reply_to {
            b = b.in_reply_to(parent.clone()).references(parent);
        }
        b.multipart(MultiPart::alternative_plain_html(
            content.text,
            content.html,
        ))
        .map_err(|e| DeliveryError::Permanent(format!("cannot build the mail: {e}")))
    }

    /// True when `recipient` is an explicit member of one of the request's approver groups (the only
    /// recipients whose mails carry vote links).
    fn is_approver(&self, view: &RequestView, recipient: &str) -> bool {
        let mailbox = canonical_email(recipient);
        self.directory
            .member_emails(&view.request.approver_groups)
            .iter()
            .any(|m| canonical_email(m) == mailbox)
    }

    /// Compose and send this event's mail to one recipient.
    async fn send_one(
        &self,
        delivery_key: &str,
        event: &WorkflowEvent,
        view: &RequestView,
        recipient: &str,
    ) -> Result<(), DeliveryError> {
        let id = view.request.id;
        let (root, fresh_root) = self.thread_root(id, recipient).await?;
        let follow_up_id = format!(
            "<{}@{}>",
            short_hash(&format!("{delivery_key}|{recipient}")),
            self.id_domain
        );
        let requested = view
            .request
            .requester
            .0
            .iter()
            .filter_map(|who| who.email.as_deref())
            .any(|e| canonical_email(e) == canonical_email(recipient));
        let message = match event {
            // Separation of duties refuses their vote: they learn of the hold, and no vote links.
            WorkflowEvent::Created { .. } if requested => {
                let page = self.view_link(id, recipient)?;
                let content = requester_notice_mail(view, recipient, &page);
                self.message(recipient, content, root, None)?
            }
            WorkflowEvent::Reminder { .. } if requested => return Ok(()),
            // Escalated to someone who is not an approver: told, with the page, and no vote links.
            WorkflowEvent::Reminder { escalated_to, .. } if !self.is_approver(view, recipient) => {
                if view.request.status.is_resolved() {
                    return Ok(());
                }
                let page = self.view_link(id, recipient)?;
                let content = escalation_notice_mail(view, recipient, &page, escalated_to);
                if fresh_root {
                    self.message(recipient, content, root, None)?
                } else {
                    self.message(recipient, content, follow_up_id, Some(root))?
                }
            }
            WorkflowEvent::Created { .. } => {
                let links = self.vote_links(view, recipient)?;
                let content = approval_mail(view, recipient, &links, false);
                self.message(recipient, content, root, None)?
            }
            WorkflowEvent::Reminder { .. } => {
                if view.request.status.is_resolved() {
                    return Ok(());
                }
                let links = self.vote_links(view, recipient)?;
                let content = approval_mail(view, recipient, &links, true);
                if fresh_root {
                    self.message(recipient, content, root, None)?
                } else {
                    self.message(recipient, content, follow_up_id, Some(root))?
                }
            }
            _ => {
                let page = self.view_link(id, recipient)?;
                let Some(content) = follow_up_mail(event, view, &page) else {
                    return Ok(());
                };
                if fresh_root {
                    // No approval mail went out (e-mail enabled later): this one starts the thread.
                    self.message(recipient, content, root, None)?
                } else {
                    self.message(recipient, content, follow_up_id, Some(root))?
                }
            }
        };
        self.transport.send(message).await.map_err(|e| {
            if e.is_permanent() {
                DeliveryError::Permanent(format!(
                    "the SMTP relay refused the mail to {recipient}: {e}; check the address and the relay's policy"
                ))
            } else {
                DeliveryError::Retryable {
                    message: format!("SMTP delivery to {recipient} failed: {e}"),
                    retry_after: None,
                }
            }
        })?;
        Ok(())
    }
}

fn retry(e: impl std::fmt::Display) -> DeliveryError {
    DeliveryError::Retryable {
        message: format!("store unavailable: {e}"),
        retry_after: None,
    }
}

fn unix_secs(t: OffsetDateTime) -> u64 {
    t.unix_timestamp().max(0) as u64
}

fn short_hash(s: &str) -> String {
    hex::encode(&Sha256::digest(s.as_bytes())[..12])
}

#[async_trait::async_trait]
impl Notifier for EmailNotifier {
    fn sink(&self) -> &str {
        EMAIL_SINK
    }

    async fn deliver(
        &self,
        delivery_key: &str,
        event: &WorkflowEvent,
    ) -> Result<(), DeliveryError> {
        let view = match event {
            WorkflowEvent::VoteRefused { .. } => return Ok(()),
            WorkflowEvent::SessionSummary { requests, .. } => {
                let Some(first) = requests.first() else {
                    return Ok(());
                };
                match self.store.get_request(*first).await.map_err(retry)? {
                    Some(v) => v,
                    None => return Ok(()),
                }
            }
            WorkflowEvent::Created { request }
            | WorkflowEvent::VoteRecorded { request, .. }
            | WorkflowEvent::Resolved { request }
            | WorkflowEvent::Executed { request }
            | WorkflowEvent::Reminder { request, .. } => request.clone(),
        };
        let mut recipients: Vec<String> = self
            .directory
            .member_emails(&view.request.approver_groups)
            .into_iter()
            .map(|e| e.trim().to_lowercase())
            .collect();
        // An escalation also goes to the members of the groups it escalates to.
        if let WorkflowEvent::Reminder { escalated_to, .. } = event {
            let escalated = self.directory.member_emails(escalated_to);
            if escalated.is_empty() && !escalated_to.is_empty() {
                tracing::warn!(request_id = %view.request.id, groups = ?escalated_to,
                    "no e-mail addresses in the groups this request escalates to: add members to those approver groups to mail them");
            }
            recipients.extend(escalated.into_iter().map(|e| e.trim().to_lowercase()));
        }
        recipients.sort();
        recipients.dedup();
        if recipients.is_empty() {
            tracing::warn!(request_id = %view.request.id, groups = ?view.request.approver_groups,
                "no approver e-mail addresses for this request: add members to the approver group to mail them");
            return Ok(());
        }
        let mut retryable: Option<DeliveryError> = None;
        let mut permanent: Vec<String> = Vec::new();
        for recipient in &recipients {
            let sent_key = format!("sent:{delivery_key}:{recipient}");
            if self
                .store
                .get_ref(view.request.id, EMAIL_SINK, &sent_key)
                .await
                .map_err(retry)?
                .is_some()
            {
                continue;
            }
            match self.send_one(delivery_key, event, &view, recipient).await {
                Ok(()) => {
                    self.store
                        .put_ref(view.request.id, EMAIL_SINK, &sent_key, "1")
                        .await
                        .map_err(retry)?;
                }
                Err(DeliveryError::Permanent(m)) => {
                    tracing::error!(request_id = %view.request.id, recipient, error = %m, "mail not deliverable");
                    permanent.push(m);
                }
                Err(e @ DeliveryError::Retryable { .. }) => {
                    retryable.get_or_insert(e);
                }
            }
        }
        match (retryable, permanent.is_empty()) {
            (Some(e), _) => Err(e),
            (None, false) => Err(DeliveryError::Permanent(permanent.join("; "))),
            (None, true) => Ok(()),
        }
    }
}
