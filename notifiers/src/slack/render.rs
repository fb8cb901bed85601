//! Block Kit content for every Slack message Countersign sends.
//!
//! Request content is only ever placed in `plain_text` objects and rich-text runs, escaped by
//! [`escape`](super::escape); buttons carry `approve:<id>` / `deny:<id>` values.

use super::escape::{escape_short, escape_text, shorten, truncate_chars};
use countersign_bot::request::{Decision, RequestStatus, RequestView, Vote};
use countersign_bot::sessions::SessionSummary;
use countersign_bot::RequestId;
use serde_json::{json, Value};
use slack_morphism::prelude::{SlackBlock, SlackMessageContent, SlackView};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// `action_id` of the Approve button.
pub const APPROVE_ACTION: &str = "countersign_approve";
/// `action_id` of the Deny button.
pub const DENY_ACTION: &str = "countersign_deny";
/// `action_id` of the link button to the request page (Slack reports its clicks too; they are ignored).
pub const OPEN_ACTION: &str = "countersign_open";
/// `callback_id` of the deny-reason modal.
pub const DENY_MODAL_CALLBACK: &str = "countersign_deny_reason";
/// Block and action id of the modal's reason input.
pub const REASON_INPUT: &str = "reason";

/// Built content did not match Slack's Block Kit model (a bug in this module, never input-dependent).
#[derive(Debug, thiserror::Error)]
#[error("internal error building Slack blocks: {0}; please report this as a Countersign bug")]
pub struct RenderError(#[from] serde_json::Error);

/// Where the deny modal came from, carried in its `private_metadata`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DenyOrigin {
    /// Request being denied.
    pub request: RequestId,
    /// Channel of the clicked message.
    pub channel: String,
    /// Timestamp of the clicked message.
    pub ts: String,
}

/// Renders messages for one deployment (its statement length limit).
#[derive(Debug, Clone)]
pub struct MessageRenderer {
    max_statement_chars: usize,
}

fn plain(s: &str, max: usize) -> Value {
    let shown = countersign_bot::reveal::reveal(s);
    json!({ "type": "plain_text", "text": escape_short(&shown, max), "emoji": false })
}

/// Reasons shown one per line, each capped, so a long one (quoting a huge name) can't push the others
/// out of the section; past [`MAX_REASONS`] a count says how many more there are.
fn reasons_text(reasons: &[String]) -> String {
    let mut lines: Vec<String> = reasons
        .iter()
        .take(MAX_REASONS)
        .map(|r| {
            format!(
                "• {}",
                shorten(&countersign_bot::reveal::reveal_line(r), 250)
            )
        })
        .collect();
    if reasons.len() > MAX_REASONS {
        lines.push(format!("… and {} more", reasons.len() - MAX_REASONS));
    }
    format!("Why review:\n{}", lines.join("\n"))
}

/// At most this many reasons are listed in a message (10 × 250 characters fit Slack's 3,000).
const MAX_REASONS: usize = 10;

fn fixed(s: &str) -> Value {
    json!({ "type": "plain_text", "text": s, "emoji": true })
}

fn when(t: OffsetDateTime) -> String {
    t.format(&Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

fn content(fallback: String, blocks: Vec<Value>) -> Result<SlackMessageContent, RenderError> {
    let blocks: Vec<SlackBlock> = serde_json::from_value(Value::Array(blocks))?;
    Ok(SlackMessageContent::new()
        .with_text(fallback)
        .with_blocks(blocks))
}

fn status_icon(s: RequestStatus) -> &'static str {
    match s {
        RequestStatus::Pending => "⏳",
        RequestStatus::Approved | RequestStatus::Executing => "✅",
        RequestStatus::Executed => "✅",
        RequestStatus::Denied | RequestStatus::Failed => "⛔",
        RequestStatus::Expired | RequestStatus::Cancelled => "⌛",
    }
}

/// Most lines of a statement a request message shows.
const MAX_STATEMENT_LINES: usize = 40;

fn vote_line(v: &Vote) -> String {
    let verb = match v.decision {
        Decision::Approve => "✅ approved",
        Decision::Deny => "⛔ denied",
    };
    // The voter's name and reason are theirs to write: one line each, so they can't pass for more
    // timeline lines.
    let mut line = format!(
        "{verb} by {} at {}",
        countersign_bot::reveal::reveal_line(&v.voter_name),
        when(v.at)
    );
    if let Some(r) = v.reason.as_deref().filter(|r| !r.trim().is_empty()) {
        let r = countersign_bot::reveal::reveal_line(r);
        line.push_str(&format!(": {}", truncate_chars(&r, 300).0));
    }
    line
}

impl MessageRenderer {
    /// A renderer showing statements up to `max_statement_chars` characters.
    pub fn new(max_statement_chars: usize) -> Self {
        Self {
            max_statement_chars: max_statement_chars.max(100),
        }
    }

    /// Whether request messages show `statement` whole (only then can it be approved from Slack).
    pub fn shows_whole(&self, statement: &str) -> bool {
        !self
            .shown_part(&countersign_bot::reveal::reveal(statement))
            .1
    }

    /// The part of a (revealed) statement a message shows, and whether that cuts it short: at most
    /// `max_statement_chars` characters and [`MAX_STATEMENT_LINES`] lines (Slack folds a tall message
    /// behind "See more", where a tail padded down with blank lines would go unread).
    fn shown_part<'a>(&self, statement: &'a str) -> (&'a str, bool) {
        let (shown, cut) = truncate_chars(statement, self.max_statement_chars);
        match shown.match_indices('\n').nth(MAX_STATEMENT_LINES - 1) {
            Some((i, _)) => (&shown[..i], true),
            None => (shown, cut),
        }
    }

    /// The request message: connection and risk, requester chain, statement, quorum progress, expiry,
    /// votes; Approve (with a confirm dialog) and Deny while pending and `interactive`.
    pub fn request_message(
        &self,
        view: &RequestView,
        interactive: bool,
    ) -> Result<SlackMessageContent, RenderError> {
        let r = &view.request;
        let header = format!(
            "{} Approval {} on {}",
            status_icon(r.status),
            if r.status == RequestStatus::Pending {
                "needed"
            } else {
                "request"
            },
            r.connection
        );
        let mut fields = vec![
            plain(&format!("Connection: {}", r.connection), 2000),
            plain(&format!("Requester: {}", r.requester.display()), 2000),
            plain(&format!("Rule: {}", r.rule), 2000),
            plain(&format!("Status: {}", r.status), 2000),
            plain(
                &format!("Approvals: {} of {}", view.approvals(), r.quorum),
                2000,
            ),
        ];
        if r.status == RequestStatus::Pending {
            fields.push(plain(&format!("Expires: {}", when(r.expires_at)), 2000));
        }
        let mut blocks = vec![
            json!({ "type": "header", "text": plain(&header, 150) }),
            json!({ "type": "section", "fields": fields }),
        ];
        if !r.reasons.is_empty() {
            blocks
                .push(json!({ "type": "section", "text": plain(&reasons_text(&r.reasons), 3000) }));
        }
        if let Some(warning) = countersign_bot::reveal::hidden_characters_warning(&r.statement) {
            blocks.push(json!({ "type": "section", "text": plain(&format!("⚠ {warning}"), 3000) }));
        }
        let statement = countersign_bot::reveal::reveal(&r.statement);
        let (shown, truncated) = self.shown_part(&statement);
        blocks.push(json!({ "type": "rich_text", "elements": [
            { "type": "rich_text_preformatted", "elements": [ { "type": "text", "text": escape_text(shown) } ] }
        ]}));
        if truncated {
            let total = statement.chars().count();
            blocks.push(json!({ "type": "context", "elements": [ fixed(&format!(
                "Statement truncated: {} of {total} characters shown, so it can't be approved from Slack. Approve it from the e-mail approval page or the API, which show it in full; Deny works here.",
                shown.chars().count())) ] }));
        }
        if !view.votes.is_empty() {
            let lines: Vec<String> = view.votes.iter().map(vote_line).collect();
            blocks.push(json!({ "type": "section", "text": plain(&lines.join("\n"), 3000) }));
        }
        if let Some(ex) = &r.execution {
            blocks.push(json!({ "type": "section", "text": plain(&execution_line(ex), 3000) }));
        }
        blocks.push(
            json!({ "type": "context", "elements": [ fixed(&format!("Request {}", r.id)) ] }),
        );
        let mut actions = Vec::new();
        if r.status == RequestStatus::Pending && interactive && !truncated {
            actions.push(json!({ "type": "button", "action_id": APPROVE_ACTION, "style": "primary",
                "text": fixed("Approve"), "value": format!("approve:{}", r.id),
                "confirm": { "title": fixed("Approve this statement?"),
                    "text": fixed("Your approval lets this exact statement run once on the connection shown."),
                    "confirm": fixed("Approve"), "deny": fixed("Cancel") } }));
        }
        if r.status == RequestStatus::Pending && interactive {
            actions.push(
                json!({ "type": "button", "action_id": DENY_ACTION, "style": "danger",
                "text": fixed("Deny"), "value": format!("deny:{}", r.id) }),
            );
        }
        if !actions.is_empty() {
            blocks.push(
                json!({ "type": "actions", "block_id": "countersign_actions", "elements": actions }),
            );
        }
        let fallback = format!(
            "{} Countersign request {} on {}: {}",
            status_icon(r.status),
            r.id,
            escape_short(&r.connection, 200),
            r.status
        );
        content(fallback, blocks)
    }

    fn reply(&self, text: &str) -> Result<SlackMessageContent, RenderError> {
        content(
            escape_short(text, 3000),
            vec![json!({ "type": "section", "text": plain(text, 3000) })],
        )
    }

    /// Thread reply for a counted vote.
    pub fn vote_reply(
        &self,
        view: &RequestView,
        vote: &Vote,
    ) -> Result<SlackMessageContent, RenderError> {
        self.reply(&format!(
            "{} ({} of {} approvals)",
            vote_line(vote),
            view.approvals(),
            view.request.quorum
        ))
    }

    /// Thread reply for a refused vote: the reason, never who tried (their identity is private).
    pub fn refusal_reply(
        &self,
        code: &str,
        reason: &str,
    ) -> Result<SlackMessageContent, RenderError> {
        let why = match code {
            "requester_cannot_approve" => {
                "the voter is in the requester chain (separation of duties)"
            }
            "workload_cannot_vote" => "workload identities cannot vote",
            "voter_without_email" => "the voter has no verified e-mail address",
            "not_an_approver" => "the voter is not in an approver group for this request",
            "already_voted" => "the voter had already voted",
            "resolved" | "expired" => "the request was no longer pending",
            _ => reason,
        };
        self.reply(&format!("🚫 A vote was refused: {why}."))
    }

    /// Thread reply when the request is resolved.
    pub fn resolution_reply(&self, view: &RequestView) -> Result<SlackMessageContent, RenderError> {
        let r = &view.request;
        self.reply(&format!(
            "{} Request {}: {} ({} of {} approvals).",
            status_icon(r.status),
            r.id,
            r.status,
            view.approvals(),
            r.quorum
        ))
    }

    /// Thread reply with the execution result (rows, duration, error; never data).
    pub fn execution_reply(&self, view: &RequestView) -> Result<SlackMessageContent, RenderError> {
        match &view.request.execution {
            Some(ex) => self.reply(&execution_line(ex)),
            None => self.reply(&format!("Statement {}.", view.request.status)),
        }
    }

    /// Thread reply nudging approvers.
    pub fn reminder_reply(&self, view: &RequestView) -> Result<SlackMessageContent, RenderError> {
        self.reply(&format!(
            "⏰ Still waiting: {} of {} approvals; expires {}.",
            view.approvals(),
            view.request.quorum,
            when(view.request.expires_at)
        ))
    }

    /// Thread reply (and, in an escalation group's own channel, the message) for an escalation: the
    /// groups it escalates to, their members mentioned by Slack user id (`mentions`, ids Slack gave us).
    /// Group names are configuration, escaped anyway; nothing from the request goes into the mrkdwn.
    pub fn escalation_reply(
        &self,
        view: &RequestView,
        groups: &[String],
        mentions: &[String],
    ) -> Result<SlackMessageContent, RenderError> {
        let groups = escape_text(&groups.join(", "));
        let who: Vec<String> = mentions
            .iter()
            .filter(|u| u.chars().all(|c| c.is_ascii_alphanumeric()))
            .map(|u| format!("<@{u}>"))
            .collect();
        let text = format!(
            "⏫ Escalated to {groups}{}: still waiting, {} of {} approvals; expires {}. Request `{}` on {}.",
            if who.is_empty() {
                String::new()
            } else {
                format!(" ({})", who.join(" "))
            },
            view.approvals(),
            view.request.quorum,
            when(view.request.expires_at),
            view.request.id,
            escape_text(&view.request.connection),
        );
        content(
            text.clone(),
            vec![json!({ "type": "section", "text": { "type": "mrkdwn", "text": text } })],
        )
    }

    /// Thread reply summarising the session that held the request.
    pub fn session_summary_reply(
        &self,
        s: &SessionSummary,
    ) -> Result<SlackMessageContent, RenderError> {
        let mut text = format!(
            "📋 Session ended on {} after {} s: {} statements run, {} blocked, {} held, {} approved, {} rows affected.",
            s.connection, s.duration_secs, s.run, s.blocked, s.held, s.approved, s.rows_affected);
        if let Some(id) = s.session_id {
            text.push_str(&format!(" Full record: `countersign sessions show {id}`"));
        }
        self.reply(&text)
    }

    /// Direct message to the requester's human when the request is resolved.
    pub fn requester_dm(&self, view: &RequestView) -> Result<SlackMessageContent, RenderError> {
        let r = &view.request;
        self.reply(&format!(
            "{} Your request {} on {} was {}. Details: `countersign requests show {}`",
            status_icon(r.status),
            r.id,
            r.connection,
            r.status,
            r.id
        ))
    }

    /// A short ephemeral answer to one person.
    pub fn ephemeral(&self, text: &str) -> Result<SlackMessageContent, RenderError> {
        self.reply(text)
    }

    /// The modal that asks a denier for a reason.
    pub fn deny_modal(&self, origin: &DenyOrigin) -> Result<SlackView, RenderError> {
        let metadata = serde_json::to_string(origin)?;
        Ok(serde_json::from_value(json!({
            "type": "modal",
            "callback_id": DENY_MODAL_CALLBACK,
            "title": fixed("Deny request"),
            "submit": fixed("Deny"),
            "close": fixed("Cancel"),
            "private_metadata": metadata,
            "blocks": [
                { "type": "section", "text": plain(&format!("Deny request {}? Give the requester a reason.", origin.request), 3000) },
                { "type": "input", "block_id": REASON_INPUT, "label": fixed("Reason"),
                  "element": { "type": "plain_text_input", "action_id": REASON_INPUT, "multiline": true, "max_length": 2000 } }
            ]
        }))?)
    }
}

fn execution_line(ex: &countersign_bot::ExecutionSummary) -> String {
    match &ex.error {
        Some(err) => format!(
            "⛔ Execution failed after {} ms: {}",
            ex.duration_ms,
            // PostgreSQL quotes values in its errors: one line, as the statement's own text can't be.
            truncate_chars(&countersign_bot::reveal::reveal_line(err), 500).0
        ),
        None => format!(
            "▶ Executed in {} ms: {}{}",
            ex.duration_ms,
            ex.command_tag.as_deref().unwrap_or("done"),
            ex.rows.map(|n| format!(", {n} rows")).unwrap_or_default()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use countersign_bot::testing::{human, workload};
    use countersign_bot::{ApprovalRequest, RequesterChain, StatementHash};

    pub(crate) fn sample_view(sql: &str) -> RequestView {
        let now = OffsetDateTime::now_utc();
        RequestView {
            request: ApprovalRequest {
                id: RequestId::new(),
                connection: "prod".into(),
                statement: sql.into(),
                statement_hash: StatementHash::of_text(sql),
                requester: RequesterChain(vec![workload("agent"), human("alice@example.com")]),
                rule: "writes".into(),
                reasons: vec!["DELETE without WHERE <!here>".into()],
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

    fn json_of(c: &SlackMessageContent) -> String {
        serde_json::to_string(c).unwrap()
    }

    #[test]
    fn pending_request_has_confirmed_approve_and_deny_buttons() {
        let r = MessageRenderer::new(2000);
        let v = sample_view("DELETE FROM orders");
        let j = json_of(&r.request_message(&v, true).unwrap());
        assert!(
            j.contains(&format!("\"value\":\"approve:{}\"", v.request.id)),
            "{j}"
        );
        assert!(j.contains(&format!("\"value\":\"deny:{}\"", v.request.id)));
        assert!(j.contains("\"confirm\":{"));
        // No link to the request page: it opens only from an e-mail approval link.
        assert!(!j.contains("/requests/"), "{j}");
    }

    #[test]
    fn resolved_request_has_no_vote_buttons() {
        let r = MessageRenderer::new(2000);
        let mut v = sample_view("DELETE FROM orders");
        v.request.status = RequestStatus::Denied;
        let j = json_of(&r.request_message(&v, true).unwrap());
        assert!(
            !j.contains(APPROVE_ACTION) && !j.contains(DENY_ACTION),
            "{j}"
        );
        assert!(!j.contains("countersign_actions"), "{j}");
    }

    #[test]
    fn sql_with_mrkdwn_and_broadcasts_is_inert() {
        let r = MessageRenderer::new(2000);
        let v = sample_view(
            "UPDATE t SET note = '<!channel> *urgent* <https://evil.example|login> `x`'",
        );
        let j = json_of(&r.request_message(&v, true).unwrap());
        assert!(
            !j.contains("<!channel>") && !j.contains("<!here>") && !j.contains("<https://evil"),
            "{j}"
        );
        assert!(j.contains("&lt;!channel&gt;"));
        // Request content only sits in plain_text objects or rich-text runs: there is no mrkdwn object at all.
        assert!(!j.contains("\"mrkdwn\""), "{j}");
    }

    #[test]
    fn vote_reasons_names_and_upstream_errors_stay_on_one_line() {
        let vote = Vote {
            request_id: RequestId::new(),
            voter: human("bob@example.com").canonical(),
            voter_name: "bob@example.com".into(),
            decision: Decision::Approve,
            reason: Some("ok\n✅ approved by carol@example.com".into()),
            channel: "api".into(),
            at: OffsetDateTime::UNIX_EPOCH,
        };
        let line = vote_line(&vote);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("ok⟦U+000A⟧✅ approved by carol"), "{line}");
        let failed = countersign_bot::ExecutionSummary {
            command_tag: None,
            rows: None,
            error: Some("invalid input: \"1\n\n▶ Executed in 2 ms\"".into()),
            duration_ms: 1,
        };
        let line = execution_line(&failed);
        assert!(!line.contains('\n') && line.contains("⟦U+000A⟧"), "{line}");
        // The gateway's own symbols carry no variation selector for reveal to flag.
        assert!(!execution_line(&countersign_bot::ExecutionSummary {
            error: None,
            ..failed
        })
        .contains('\u{FE0F}'));
    }

    #[test]
    fn long_statements_are_truncated_and_cannot_be_approved_from_slack() {
        let r = MessageRenderer::new(100);
        let v = sample_view(&format!("SELECT {}", "x, ".repeat(500)));
        let j = json_of(&r.request_message(&v, true).unwrap());
        assert!(
            j.contains("Statement truncated: 100 of 1507 characters shown, so it can't be approved from Slack"),
            "{j}"
        );
        assert!(!j.contains(APPROVE_ACTION), "{j}");
        assert!(j.contains(DENY_ACTION), "{j}");
        assert!(j.len() < 4000);
        assert!(!r.shows_whole(&v.request.statement));
        assert!(r.shows_whole("SELECT 1"));
        // Short, but tall enough to fold: its tail would go unread.
        let tall = format!("SELECT 1{}DROP TABLE t", "\n".repeat(60));
        assert!(!r.shows_whole(&tall));
        assert!(r.shows_whole(&format!("SELECT 1{}", "\n1".repeat(39))));
        // Revealed characters count: 13 overrides are 104 visible characters.
        assert!(r.shows_whole(&"\u{202E}".repeat(5)));
        assert!(!r.shows_whole(&"\u{202E}".repeat(13)));
    }

    #[test]
    fn hidden_characters_are_shown_with_a_warning_and_reasons_stay_on_their_lines() {
        let r = MessageRenderer::new(2000);
        let mut v =
            sample_view("DELETE FROM orders WHERE id > 0 /*\u{202E} \u{2066}AND id = 1\u{2069} */");
        v.request.reasons = vec![
            "DELETE removes data on orders\n\nApprove: https://evil.example/approve".into(),
            format!("calls {}: not on the read-only list", "a".repeat(4000)),
            "DROP TABLE is not on the read-only list".into(),
        ];
        let j = json_of(&r.request_message(&v, true).unwrap());
        assert!(!j.contains('\u{202E}') && !j.contains('\u{2066}'), "{j}");
        assert!(
            j.contains("/*⟦U+202E⟧ ⟦U+2066⟧AND id = 1⟦U+2069⟧ */"),
            "{j}"
        );
        assert!(
            j.contains("3 invisible, space-like or direction-changing characters"),
            "{j}"
        );
        assert!(j.contains("orders⟦U+000A⟧⟦U+000A⟧Approve:"), "{j}");
        // A huge reason is capped, and the reasons after it are still shown.
        assert!(j.contains("DROP TABLE is not on the read-only list"), "{j}");
    }

    #[test]
    fn many_reasons_are_listed_up_to_a_cap_with_a_count_of_the_rest() {
        let r = MessageRenderer::new(2000);
        let mut v = sample_view("SELECT f0(), f1()");
        v.request.reasons = (0..25).map(|i| format!("calls f{i}")).collect();
        let j = json_of(&r.request_message(&v, true).unwrap());
        assert!(j.contains("• calls f9") && !j.contains("calls f10"), "{j}");
        assert!(j.contains("… and 15 more"), "{j}");
    }

    #[test]
    fn refusal_reply_does_not_name_the_voter() {
        let r = MessageRenderer::new(2000);
        let j = json_of(
            &r.refusal_reply("requester_cannot_approve", "you are alice@example.com")
                .unwrap(),
        );
        assert!(!j.contains("alice"), "{j}");
        assert!(j.contains("separation of duties"));
    }

    #[test]
    fn deny_modal_carries_its_origin() {
        let r = MessageRenderer::new(2000);
        let origin = DenyOrigin {
            request: RequestId::new(),
            channel: "C1".into(),
            ts: "1.2".into(),
        };
        let j = serde_json::to_value(r.deny_modal(&origin).unwrap()).unwrap();
        let meta: DenyOrigin =
            serde_json::from_str(j["private_metadata"].as_str().unwrap()).unwrap();
        assert_eq!(meta, origin);
        assert_eq!(j["callback_id"], DENY_MODAL_CALLBACK);
    }
}
