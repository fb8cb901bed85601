//! What the mails say: the approval mail with its two links, and the threaded follow-ups. Plain text and
//! HTML alternatives; every request value is escaped for HTML and set apart in plain text.

use crate::web::html::{escape, format_time};
use countersign_bot::events::WorkflowEvent;
use countersign_bot::{Decision, RequestView};

/// Statements longer than this are cut in mails; the request page shows them in full.
pub const MAX_STATEMENT_CHARS: usize = 2000;

/// A mail's subject and bodies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailContent {
    /// Subject line (built only from configuration values and ids, never from request text).
    pub subject: String,
    /// Plain-text body.
    pub text: String,
    /// HTML body.
    pub html: String,
}

/// The links one recipient's approval mail carries.
#[derive(Debug, Clone)]
pub struct VoteLinks {
    /// Confirmation page for approving.
    pub approve: String,
    /// Confirmation page for denying.
    pub deny: String,
    /// The request page.
    pub page: String,
}

/// The thread's subject: the policy rule and connection (configuration) and a short request id.
pub fn thread_subject(view: &RequestView) -> String {
    let r = &view.request;
    let id = r.id.to_string();
    let short = id.get(id.len().saturating_sub(8)..).unwrap_or(&id);
    clean_header(&format!(
        "Approval needed: {} on {} [{}]",
        r.rule, r.connection, short
    ))
}

// Header values must be one line; lettre encodes non-ASCII, but control characters never belong there.
fn clean_header(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The statement cut to [`MAX_STATEMENT_CHARS`], and whether it was cut.
pub fn truncate_statement(sql: &str) -> (&str, bool) {
    match sql.char_indices().nth(MAX_STATEMENT_CHARS) {
        Some((i, _)) => (&sql[..i], true),
        None => (sql, false),
    }
}

fn quoted_statement(sql: &str) -> String {
    // Indented, so nothing in the statement can pass for the mail's own text or links.
    sql.lines()
        .map(|l| format!("    | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn facts_text(view: &RequestView) -> String {
    let r = &view.request;
    format!(
        "Request:      {}\nConnection:   {}\nRequested by: {}\nRule:         {}\nApprovals:    {} of {} needed\nExpires:      {}\nWhy:          {}\n",
        r.id,
        r.connection,
        r.requester.display(),
        r.rule,
        view.approvals(),
        r.quorum,
        format_time(r.expires_at),
        countersign_bot::reveal::reveal_line(&r.reasons.join("; ")),
    )
}

fn facts_html(view: &RequestView) -> String {
    let r = &view.request;
    format!(
        "<table><tr><th align=\"left\">Request</th><td><code>{}</code></td></tr>\
<tr><th align=\"left\">Connection</th><td>{}</td></tr>\
<tr><th align=\"left\">Requested by</th><td>{}</td></tr>\
<tr><th align=\"left\">Rule</th><td>{}</td></tr>\
<tr><th align=\"left\">Approvals</th><td>{} of {} needed</td></tr>\
<tr><th align=\"left\">Expires</th><td>{}</td></tr>\
<tr><th align=\"left\">Why</th><td>{}</td></tr></table>",
        escape(&r.id.to_string()),
        escape(&r.connection),
        escape(&r.requester.display()),
        escape(&r.rule),
        view.approvals(),
        r.quorum,
        escape(&format_time(r.expires_at)),
        escape(&r.reasons.join("; ")),
    )
}

fn statement_parts(view: &RequestView, page: &str) -> (String, String) {
    let (sql, cut) = truncate_statement(&view.request.statement);
    let warning = countersign_bot::reveal::hidden_characters_warning(&view.request.statement);
    let text = format!(
        "{}Statement:\n{}\n{}",
        warning
            .as_deref()
            .map(|w| format!("{w}\n\n"))
            .unwrap_or_default(),
        quoted_statement(&countersign_bot::reveal::reveal(sql)),
        if cut {
            format!("    | … (truncated; full statement: {page})\n")
        } else {
            String::new()
        }
    );
    let html = format!(
        "{}<p><strong>Statement</strong></p><pre style=\"background:#f4f4f4;padding:8px;white-space:pre-wrap\">{}{}</pre>",
        warning.as_deref().map(|w| format!("<p><strong>{}</strong></p>", escape(w))).unwrap_or_default(),
        escape(sql),
        if cut {
            format!(
                "\n… <a href=\"{}\">truncated: see the full statement</a>",
                escape(page)
            )
        } else {
            String::new()
        }
    );
    (text, html)
}

fn wrap_html(inner: &str) -> String {
    format!("<!DOCTYPE html><html><head><meta charset=\"utf-8\"></head><body style=\"font-family:sans-serif\">{inner}</body></html>")
}

/// The mail for an approver who is in the request's requester chain (the human an agent acts for, say):
/// what was asked and that others decide, with the request page but no vote links — separation of
/// duties refuses their vote anyway, and a link that can only be refused invites confusion.
pub fn requester_notice_mail(view: &RequestView, recipient: &str, page: &str) -> MailContent {
    notice_mail(
        view,
        recipient,
        page,
        "A statement you asked for (or that an agent acting for you sent) is held for review.",
        "You are in this request's requester chain, so separation of duties leaves the decision to the other approvers; you will get the outcome in this thread.",
    )
}

/// The escalation mail for a member of an `escalate_to` group who is not one of the request's approvers:
/// the request is still waiting, with the request page but no vote links. Escalation tells people; it
/// does not make them approvers (the workflow would refuse their vote), so links that can only be
/// refused are left out.
pub fn escalation_notice_mail(
    view: &RequestView,
    recipient: &str,
    page: &str,
    escalated_to: &[String],
) -> MailContent {
    let groups = escalated_to.join(", ");
    let who = view.request.approver_groups.join(", ");
    notice_mail(
        view,
        recipient,
        page,
        &format!(
            "Escalation: this statement is still waiting for review, and the request is escalated to {groups}."
        ),
        &format!(
            "Only members of the request's approver groups ({who}) can vote on it; please make sure one of them reviews it."
        ),
    )
}

/// A mail about a request for someone who does not vote on it: `lead`, the request's facts and
/// statement, `why`, and the request page, without vote links.
fn notice_mail(
    view: &RequestView,
    recipient: &str,
    page: &str,
    lead: &str,
    why: &str,
) -> MailContent {
    let (stmt_text, stmt_html) = statement_parts(view, page);
    let text = format!(
        "{lead}\n\n{facts}\n{stmt_text}\n{why}\nRequest page: {page}\n\nThis mail was sent to {recipient}.\n",
        facts = facts_text(view),
    );
    let html = wrap_html(&format!(
        "<p>{lead}</p>{facts}{stmt_html}<p>{why}</p><p><a href=\"{page}\">Open the request page</a></p>\
<p style=\"color:#666\">This mail was sent to <strong>{rcpt}</strong>.</p>",
        lead = escape(lead),
        why = escape(why),
        facts = facts_html(view),
        page = escape(page),
        rcpt = escape(recipient),
    ));
    MailContent {
        subject: thread_subject(view),
        text,
        html,
    }
}

/// The approval mail for one recipient (also used for reminders).
pub fn approval_mail(
    view: &RequestView,
    recipient: &str,
    links: &VoteLinks,
    reminder: bool,
) -> MailContent {
    let lead = if reminder {
        "Reminder: this statement is still waiting for your review."
    } else {
        "A statement is held until enough reviewers approve it."
    };
    let (stmt_text, stmt_html) = statement_parts(view, &links.page);
    let text = format!(
        "{lead}\n\n{facts}\n{stmt_text}\nApprove: {approve}\nDeny:    {deny}\nRequest page: {page}\n\n\
Each link opens a confirmation page; nothing is decided until you press its button. \
The links are personal: they vote as {recipient}, work once, and must not be forwarded.\n",
        facts = facts_text(view),
        approve = links.approve,
        deny = links.deny,
        page = links.page,
    );
    let html = wrap_html(&format!(
        "<p>{lead}</p>{facts}{stmt_html}\
<p><a href=\"{approve}\" style=\"padding:8px 16px;background:#1a7f37;color:#fff;text-decoration:none\">Approve…</a> \
<a href=\"{deny}\" style=\"padding:8px 16px;background:#cf222e;color:#fff;text-decoration:none\">Deny…</a></p>\
<p><a href=\"{page}\">Open the request page</a></p>\
<p style=\"color:#666\">Each link opens a confirmation page; nothing is decided until you press its button. \
The links are personal: they vote as <strong>{who}</strong>, work once, and must not be forwarded.</p>",
        facts = facts_html(view),
        approve = escape(&links.approve),
        deny = escape(&links.deny),
        page = escape(&links.page),
        who = escape(recipient),
    ));
    MailContent {
        subject: thread_subject(view),
        text,
        html,
    }
}

/// A threaded follow-up for a vote, resolution, execution or session summary. `None` for events that
/// are not mailed (refused votes: the refused person sees the refusal where they voted).
pub fn follow_up_mail(
    event: &WorkflowEvent,
    view: &RequestView,
    page: &str,
) -> Option<MailContent> {
    let r = &view.request;
    let (text_line, html_line) = match event {
        WorkflowEvent::VoteRecorded { vote, .. } => {
            let what = match vote.decision {
                Decision::Approve => "approved",
                Decision::Deny => "denied",
            };
            // Theirs to write: one line each, so they can't pass for more of the mail's own lines.
            let reason = countersign_bot::reveal::reveal_line(vote.reason.as_deref().unwrap_or(""));
            let voter = countersign_bot::reveal::reveal_line(&vote.voter_name);
            let progress = format!(
                "{} of {} approvals; status {}",
                view.approvals(),
                r.quorum,
                r.status
            );
            (
                format!(
                    "{} {what} via {}{}{}. ({progress})",
                    voter,
                    vote.channel,
                    if reason.is_empty() { "" } else { ": " },
                    reason
                ),
                format!(
                    "<p><strong>{}</strong> {what} via {}{}. ({})</p>",
                    escape(&voter),
                    escape(&vote.channel),
                    if reason.is_empty() {
                        String::new()
                    } else {
                        format!(": “{}”", escape(&reason))
                    },
                    escape(&progress)
                ),
            )
        }
        WorkflowEvent::Resolved { .. } => {
            let line = format!("The request is now {}.", r.status);
            (
                line.clone(),
                format!("<p><strong>{}</strong></p>", escape(&line)),
            )
        }
        WorkflowEvent::Executed { .. } => {
            let line = match &r.execution {
                Some(e) => match &e.error {
                    // PostgreSQL quotes values in its errors: one line, as the agent's text can't be.
                    Some(err) => format!(
                        "The approved statement failed: {}",
                        countersign_bot::reveal::reveal_line(err)
                    ),
                    None => format!(
                        "The approved statement ran: {}{} in {} ms.",
                        e.command_tag.as_deref().unwrap_or("OK"),
                        e.rows.map(|n| format!(" ({n} rows)")).unwrap_or_default(),
                        e.duration_ms
                    ),
                },
                None => format!("The request is now {}.", r.status),
            };
            (line.clone(), format!("<p>{}</p>", escape(&line)))
        }
        WorkflowEvent::SessionSummary { summary, .. } => {
            let line = format!(
                "The session of {} on {} ended after {} s: {} statements ran, {} blocked, {} held, {} approved.",
                summary.requester,
                summary.connection,
                summary.duration_secs,
                summary.run,
                summary.blocked,
                summary.held,
                summary.approved
            );
            (line.clone(), format!("<p>{}</p>", escape(&line)))
        }
        WorkflowEvent::Created { .. }
        | WorkflowEvent::Reminder { .. }
        | WorkflowEvent::VoteRefused { .. } => return None,
    };
    let text = format!("{text_line}\n\nRequest page: {page}\n");
    let html = wrap_html(&format!(
        "{html_line}<p><a href=\"{}\">Open the request page</a></p>",
        escape(page)
    ));
    Some(MailContent {
        subject: format!("Re: {}", thread_subject(view)),
        text,
        html,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use countersign_bot::request::ApprovalRequest;
    use countersign_bot::{RequestId, RequestStatus, RequesterChain, StatementHash};
    use time::OffsetDateTime;

    fn view(sql: &str) -> RequestView {
        let now = OffsetDateTime::now_utc();
        RequestView {
            request: ApprovalRequest {
                id: RequestId::new(),
                connection: "prod".into(),
                statement: sql.into(),
                statement_hash: StatementHash::of_text(sql),
                requester: RequesterChain::single(countersign_bot::testing::workload("agent")),
                rule: "deletes".into(),
                reasons: vec!["DELETE <without> WHERE".into()],
                approver_groups: vec!["dba".into()],
                quorum: 2,
                status: RequestStatus::Pending,
                origin: "api".into(),
                session_id: None,
                created_at: now,
                expires_at: now,
                updated_at: now,
                execution: None,
                reminders: Default::default(),
            },
            votes: vec![],
        }
    }

    fn links() -> VoteLinks {
        VoteLinks {
            approve: "http://127.0.0.1/email/act?t=a".into(),
            deny: "http://127.0.0.1/email/act?t=d".into(),
            page: "http://127.0.0.1/requests/x?t=v".into(),
        }
    }

    #[test]
    fn statement_markup_cannot_forge_links_in_the_html_mail() {
        let m = approval_mail(
            &view("DELETE FROM t; -- <a href=\"https://evil.example\">Approve</a>"),
            "bob@example.com",
            &links(),
            false,
        );
        assert!(!m.html.contains("<a href=\"https://evil"));
        assert!(m
            .html
            .contains("&lt;a href=&quot;https://evil.example&quot;&gt;"));
        assert!(m.html.contains("DELETE &lt;without&gt; WHERE"));
        assert!(m.text.contains("    | DELETE FROM t;"));
    }

    #[test]
    fn long_statements_are_truncated_with_a_link_to_the_request_page() {
        let sql = format!("UPDATE t SET v = '{}'", "é".repeat(5000));
        let m = approval_mail(&view(&sql), "bob@example.com", &links(), false);
        assert!(m
            .text
            .contains("truncated; full statement: http://127.0.0.1/requests/x?t=v"));
        assert!(m.html.contains("truncated: see the full statement"));
        assert!(m.text.len() < sql.len());
    }

    #[test]
    fn subject_is_one_line_and_names_no_request_text() {
        let mut v = view("DELETE FROM t");
        v.request.rule = "evil\r\nBcc: x@example.com".into();
        let s = thread_subject(&v);
        assert!(!s.contains('\n') && !s.contains('\r'));
        assert!(!s.contains("DELETE"));
    }

    #[test]
    fn follow_ups_reply_in_the_thread_and_refusals_are_not_mailed() {
        let v = view("DELETE FROM t");
        let resolved = WorkflowEvent::Resolved { request: v.clone() };
        let m = follow_up_mail(&resolved, &v, "http://p").unwrap();
        assert_eq!(m.subject, format!("Re: {}", thread_subject(&v)));
        let refused = WorkflowEvent::VoteRefused {
            request: v.clone(),
            voter_name: "x".into(),
            channel: "email".into(),
            code: "not_an_approver".into(),
            reason: "r".into(),
        };
        assert!(follow_up_mail(&refused, &v, "http://p").is_none());
    }
}
