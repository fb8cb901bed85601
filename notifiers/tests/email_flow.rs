//! E-mail approvals end to end: mails through a loopback SMTP relay, links driven over HTTP, state checked
//! in the store.

mod email_support;

use countersign_bot::events::{Notifier, WorkflowEvent};
use countersign_bot::testing::{fresh_pg, human};
use countersign_bot::{Decision, ExecutionSummary, VoteResult};
use countersign_notifiers::email::{LinkAction, LinkSigner};
use email_support::smtp::FakeSmtp;
use email_support::*;
use std::time::Duration;

fn refused_codes(actions: &[(String, serde_json::Value)]) -> Vec<String> {
    actions
        .iter()
        .filter(|(a, _)| a == "email.link_refused")
        .map(|(_, d)| d["code"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn each_approver_gets_a_personal_mail_and_two_clicks_approve_with_threaded_follow_ups() {
    let smtp = FakeSmtp::start().await;
    let h = Harness::sqlite(smtp.addr, "1h").await;
    let id = h.submit("DELETE FROM orders", 2).await;
    let mails = h.deliver_until(&smtp, 3).await;

    for who in [ALICE, BOB, CAROL] {
        let m = mail_to(&mails, who);
        assert!(m.header("Subject").unwrap().contains("Approval needed"));
        assert!(m
            .header("From")
            .unwrap()
            .contains("countersign@example.com"));
        assert!(m
            .header("Reply-To")
            .unwrap()
            .contains("dba-team@example.com"));
        assert!(m.text.contains("DELETE FROM orders") && m.html.contains("DELETE FROM orders"));
        // Alice is the human the agent acts for: told of the hold, with no vote links.
        if who == ALICE {
            assert!(m.text.contains("separation of duties"), "{}", m.text);
        } else {
            assert!(m.text.contains(&format!("they vote as {who}")));
        }
        assert!(m.text.contains("0 of 2 needed"));
    }
    let envelope: Vec<Vec<String>> = smtp.received().iter().map(|r| r.rcpt_to.clone()).collect();
    assert!(
        envelope.iter().all(|r| r.len() == 1),
        "one recipient per mail: {envelope:?}"
    );

    let (bob_approve, _) = vote_links(&h.base, mail_to(&mails, BOB));
    let (carol_approve, _) = vote_links(&h.base, mail_to(&mails, CAROL));
    let (s, page) = h.click(&bob_approve).await;
    assert_eq!(s, 200, "{page}");
    assert!(
        page.contains("now <strong>pending</strong> (1 of 2 approvals)"),
        "{page}"
    );
    let (s, page) = h.click(&carol_approve).await;
    assert_eq!(s, 200, "{page}");
    assert_eq!(h.status(id).await, "approved");
    let view = h.workflow.get(id).await.unwrap();
    assert_eq!(view.votes.len(), 2);
    assert!(view.votes.iter().all(|v| v.channel == "email"));
    assert_eq!(view.votes[0].reason.as_deref(), Some("looks fine"));

    // The statement runs; its result is mailed too.
    h.workflow
        .claim(id, &view.request.requester)
        .await
        .unwrap()
        .unwrap();
    h.workflow
        .finish(
            id,
            ExecutionSummary {
                command_tag: Some("DELETE 7".into()),
                rows: Some(7),
                error: None,
                duration_ms: 3,
            },
        )
        .await
        .unwrap();
    // 2 votes + resolution + execution, to 3 people.
    let mails = h.deliver_until(&smtp, 3 + 4 * 3).await;
    for who in [ALICE, BOB, CAROL] {
        let to_who: Vec<_> = mails
            .iter()
            .filter(|m| m.header("To").unwrap().contains(who))
            .collect();
        let root = to_who[0].header("Message-ID").unwrap().to_string();
        let stored = h
            .store
            .get_ref(id, "email", &format!("message-id:{who}"))
            .await
            .unwrap();
        assert_eq!(stored.as_deref(), Some(root.as_str()));
        assert_eq!(to_who.len(), 5);
        for f in &to_who[1..] {
            assert_eq!(f.header("In-Reply-To"), Some(root.as_str()));
            assert_eq!(f.header("References"), Some(root.as_str()));
            assert!(f.header("Subject").unwrap().starts_with("Re: "));
            assert_ne!(f.header("Message-ID"), Some(root.as_str()));
        }
        assert!(to_who
            .iter()
            .any(|m| m.text.contains("The request is now approved.")));
        assert!(to_who.iter().any(|m| m.text.contains("DELETE 7 (7 rows)")));
    }

    // The request page, reached from a follow-up mail, shows status, timeline and statement.
    let last = mails.last().unwrap();
    let page_link = mime_page_link(&h.base, last, id);
    let (s, page) = h.get(&page_link).await;
    assert_eq!(s, 200);
    assert!(page.contains("<strong>executed</strong>"), "{page}");
    assert!(page.contains("bob@example.com</strong> approved via email"));
    assert!(page.contains("carol@example.com</strong> approved via email"));
    assert!(page.contains("DELETE FROM orders"));
}

fn mime_page_link(
    base: &str,
    mail: &email_support::mime::ParsedMail,
    id: countersign_bot::RequestId,
) -> String {
    email_support::mime::urls_with_prefix(&mail.text, &format!("{base}/requests/{id}?t="))
        .into_iter()
        .next()
        .expect("request page link in the mail")
}

#[tokio::test]
async fn prefetching_every_link_with_get_leaves_the_request_pending() {
    let smtp = FakeSmtp::start().await;
    let h = Harness::sqlite(smtp.addr, "1h").await;
    let id = h.submit("DROP TABLE audit_log", 1).await;
    let mails = h.deliver_until(&smtp, 3).await;
    for m in &mails {
        // The requester's own mail has no vote links, only the request page.
        if !m.header("To").unwrap().contains(ALICE) {
            let (approve, deny) = vote_links(&h.base, m);
            for link in [&approve, &deny, &approve] {
                let (s, page) = h.get(link).await;
                assert_eq!(s, 200);
                assert!(page.contains("<form method=\"post\""));
            }
        }
        let (s, _) = h.get(&mime_page_link(&h.base, m, id)).await;
        assert_eq!(s, 200);
    }
    let view = h.workflow.get(id).await.unwrap();
    assert_eq!(view.request.status.as_str(), "pending");
    assert!(view.votes.is_empty());
    // The prefetched link still works for its human.
    let (bob_approve, _) = vote_links(&h.base, mail_to(&mails, BOB));
    let (s, _) = h.click(&bob_approve).await;
    assert_eq!(s, 200);
    assert_eq!(h.status(id).await, "approved");
}

#[tokio::test]
async fn a_link_works_once_and_its_reuse_is_refused_and_audited() {
    let smtp = FakeSmtp::start().await;
    let h = Harness::sqlite(smtp.addr, "1h").await;
    let id = h.submit("DELETE FROM sessions", 2).await;
    let mails = h.deliver_until(&smtp, 3).await;
    let (approve, _) = vote_links(&h.base, mail_to(&mails, BOB));
    let (_, page) = h.get(&approve).await;
    let (t, csrf) = form_fields(&page);
    assert_eq!(h.post(&t, &csrf, "").await.0, 200);
    let (s, page) = h.post(&t, &csrf, "").await;
    assert_eq!(s, 410, "{page}");
    assert!(page.contains("already used"));
    let (s, _) = h.get(&approve).await;
    assert_eq!(s, 410);
    assert_eq!(h.workflow.get(id).await.unwrap().votes.len(), 1);
    assert_eq!(
        refused_codes(&h.audit_actions().await),
        vec!["reused", "reused"]
    );
}

#[tokio::test]
async fn tampered_forged_and_malformed_links_are_refused_with_4xx_and_audited() {
    let smtp = FakeSmtp::start().await;
    let h = Harness::sqlite(smtp.addr, "1h").await;
    let id = h.submit("TRUNCATE payments", 1).await;
    let mails = h.deliver_until(&smtp, 3).await;
    let (_, deny) = vote_links(&h.base, mail_to(&mails, BOB));
    let token = token_of(&deny);

    // Swap the payload for one that says "approve" (and another recipient): the signature no longer holds.
    let parts: Vec<&str> = token.split('.').collect();
    let forged_signer = LinkSigner::new(b"an-attacker-key-an-attacker-key-".to_vec());
    let attacker = forged_signer
        .mint(id, CAROL, LinkAction::Approve, u64::MAX / 4)
        .unwrap();
    let payload = attacker.split('.').nth(1).unwrap();
    let tampered = format!("{}.{}.{}", parts[0], payload, parts[2]);
    let (s, page) = h.get(&format!("{}/email/act?t={tampered}", h.base)).await;
    assert_eq!(s, 401, "{page}");
    assert!(page.contains("forged or altered"));
    // Correctly shaped but signed with another key.
    let (s, _) = h.get(&format!("{}/email/act?t={attacker}", h.base)).await;
    assert_eq!(s, 401);
    let (s, _) = h.post(&attacker, "00", "").await;
    assert_eq!(s, 401);
    // Truncated by a mail client.
    let (s, _) = h
        .get(&format!("{}/email/act?t={}", h.base, &token[..20]))
        .await;
    assert_eq!(s, 400);
    let (s, _) = h.get(&format!("{}/email/act", h.base)).await;
    assert_eq!(s, 400);

    assert_eq!(h.status(id).await, "pending");
    assert!(h.workflow.get(id).await.unwrap().votes.is_empty());
    assert_eq!(
        refused_codes(&h.audit_actions().await),
        vec!["forged", "forged", "forged", "malformed", "malformed"]
    );
}

#[tokio::test]
async fn a_post_without_the_links_csrf_token_votes_nothing_and_leaves_the_link_usable() {
    let smtp = FakeSmtp::start().await;
    let h = Harness::sqlite(smtp.addr, "1h").await;
    let id = h.submit("DELETE FROM carts", 1).await;
    let mails = h.deliver_until(&smtp, 3).await;
    let (bob_approve, _) = vote_links(&h.base, mail_to(&mails, BOB));
    let (carol_approve, _) = vote_links(&h.base, mail_to(&mails, CAROL));
    let bob_token = token_of(&bob_approve);
    // A cross-site form would have the token (from a leaked link) but not the page's CSRF value.
    assert_eq!(h.post(&bob_token, "", "").await.0, 403);
    // Carol's page's CSRF value does not fit Bob's link.
    let (_, carol_page) = h.get(&carol_approve).await;
    let (_, carol_csrf) = form_fields(&carol_page);
    assert_eq!(h.post(&bob_token, &carol_csrf, "").await.0, 403);
    assert_eq!(h.status(id).await, "pending");
    assert_eq!(h.click(&bob_approve).await.0, 200);
    assert_eq!(h.status(id).await, "approved");
    assert_eq!(
        refused_codes(&h.audit_actions().await),
        vec!["csrf_mismatch", "csrf_mismatch"]
    );
}

#[tokio::test]
async fn an_expired_link_is_refused_with_410() {
    let smtp = FakeSmtp::start().await;
    let h = Harness::sqlite(smtp.addr, "1s").await;
    let id = h.submit("DELETE FROM logs", 1).await;
    let mails = h.deliver_until(&smtp, 3).await;
    let (approve, _) = vote_links(&h.base, mail_to(&mails, BOB));
    let (_, page) = h.get(&approve).await;
    let (t, csrf) = form_fields(&page);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let (s, page) = h.get(&approve).await;
    assert_eq!(s, 410, "{page}");
    assert!(page.contains("expired"));
    assert_eq!(h.post(&t, &csrf, "").await.0, 410);
    assert_eq!(h.status(id).await, "pending");
    assert_eq!(
        refused_codes(&h.audit_actions().await),
        vec!["expired", "expired"]
    );
}

#[tokio::test]
async fn link_expiry_never_outlives_the_request() {
    let smtp = FakeSmtp::start().await;
    let h = Harness::sqlite(smtp.addr, "7d").await;
    let id = h.submit("DELETE FROM t", 1).await;
    let mails = h.deliver_until(&smtp, 3).await;
    let (approve, _) = vote_links(&h.base, mail_to(&mails, BOB));
    let claims = h.notifier.signer().verify(&token_of(&approve)).unwrap();
    let expires = h
        .workflow
        .get(id)
        .await
        .unwrap()
        .request
        .expires_at
        .unix_timestamp() as u64;
    assert_eq!(
        claims.exp, expires,
        "link TTL 7d is capped by the request's 1h TTL"
    );
    assert_eq!(claims.sub, BOB);
    assert_eq!(claims.rid, id);
    assert_eq!(claims.act, LinkAction::Approve);
}

#[tokio::test]
async fn a_forwarded_link_votes_as_its_recipient_and_says_so() {
    let smtp = FakeSmtp::start().await;
    let h = Harness::sqlite(smtp.addr, "1h").await;
    let id = h.submit("DELETE FROM invoices", 2).await;
    let mails = h.deliver_until(&smtp, 3).await;
    // Bob forwards his mail; someone else (a fresh client: no cookies, nothing of Bob's) opens it.
    let (bob_approve, _) = vote_links(&h.base, mail_to(&mails, BOB));
    let other = reqwest::Client::new();
    let page = other
        .get(&bob_approve)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("You are voting as <strong>bob@example.com</strong>"),
        "{page}"
    );
    assert!(page.contains("forwarded"));
    let (t, csrf) = form_fields(&page);
    let r = other
        .post(format!("{}/email/act", h.base))
        .form(&[("t", t.as_str()), ("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let view = h.workflow.get(id).await.unwrap();
    assert_eq!(view.votes.len(), 1);
    assert_eq!(view.votes[0].voter_name, BOB);
    assert_eq!(view.votes[0].voter, human(BOB).canonical());
}

#[tokio::test]
async fn the_requester_in_the_approver_group_gets_no_vote_links_and_a_minted_one_is_refused() {
    let smtp = FakeSmtp::start().await;
    let h = Harness::sqlite(smtp.addr, "1h").await;
    let id = h.submit("DELETE FROM users", 1).await;
    let mails = h.deliver_until(&smtp, 3).await;
    let alice = mail_to(&mails, ALICE);
    assert!(
        email_support::mime::urls_with_prefix(&alice.text, &format!("{}/email/act?t=", h.base))
            .is_empty(),
        "{}",
        alice.text
    );
    assert!(
        alice.text.contains("separation of duties"),
        "{}",
        alice.text
    );
    assert!(alice.text.contains("DELETE FROM users"), "{}", alice.text);
    // Other approvers got theirs.
    assert!(!vote_links(&h.base, mail_to(&mails, BOB)).0.is_empty());
    // A link made out to the requester (as one from before this rule would be) is refused.
    let token = h
        .notifier
        .signer()
        .mint(id, ALICE, LinkAction::Approve, u64::MAX / 4)
        .unwrap();
    let alice_approve = format!("{}/email/act?t={token}", h.base);
    let (s, page) = h.click(&alice_approve).await;
    assert_eq!(s, 403, "{page}");
    assert!(page.contains("requester_cannot_approve"));
    assert!(page.contains("separation of duties"));
    assert_eq!(h.status(id).await, "pending");
    assert!(h.workflow.get(id).await.unwrap().votes.is_empty());
}

#[tokio::test]
async fn an_escalation_mails_the_escalate_to_groups_members_without_making_them_approvers() {
    let smtp = FakeSmtp::start().await;
    let h = Harness::sqlite(smtp.addr, "1h").await;
    let id = h.submit("DELETE FROM users", 1).await;
    h.deliver_until(&smtp, 3).await;
    let view = h.workflow.get(id).await.unwrap();
    let escalation = WorkflowEvent::Reminder {
        request: view,
        escalated_to: vec!["leads".into()],
    };
    h.notifier
        .deliver(&format!("{id}:escalation"), &escalation)
        .await
        .unwrap();
    let mails: Vec<_> = smtp.received()[3..]
        .iter()
        .map(|m| email_support::mime::parse(&m.data))
        .collect();
    // Dave (leads) is told, with the request page and no vote links.
    let dave = mail_to(&mails, DAVE);
    assert!(dave.text.contains("escalated to leads"), "{}", dave.text);
    assert!(dave.text.contains("DELETE FROM users"), "{}", dave.text);
    assert!(
        email_support::mime::urls_with_prefix(&dave.text, &format!("{}/email/act?t=", h.base))
            .is_empty(),
        "{}",
        dave.text
    );
    let page = email_support::mime::urls_with_prefix(&dave.text, &format!("{}/requests/", h.base));
    assert_eq!(page.len(), 1, "{}", dave.text);
    let (s, body) = h.get(&page[0]).await;
    assert_eq!(s, 200, "{body}");
    // The approvers are reminded with their links as before.
    assert!(!vote_links(&h.base, mail_to(&mails, BOB)).0.is_empty());
    // Escalation does not make Dave an approver: a link made out to him is refused.
    let token = h
        .notifier
        .signer()
        .mint(id, DAVE, LinkAction::Approve, u64::MAX / 4)
        .unwrap();
    let (s, page) = h.click(&format!("{}/email/act?t={token}", h.base)).await;
    assert_eq!(s, 403, "{page}");
    assert!(page.contains("not_an_approver"), "{page}");
    assert_eq!(h.status(id).await, "pending");
}

#[tokio::test]
async fn one_human_counts_once_across_channels() {
    let smtp = FakeSmtp::start().await;
    let h = Harness::sqlite(smtp.addr, "1h").await;
    let id = h.submit("UPDATE accounts SET balance = 0", 2).await;
    let mails = h.deliver_until(&smtp, 3).await;
    let api = h
        .workflow
        .vote(id, &human(BOB), Decision::Approve, None, "api")
        .await
        .unwrap();
    assert!(matches!(api, VoteResult::Recorded { .. }));
    let (bob_approve, _) = vote_links(&h.base, mail_to(&mails, BOB));
    let (s, page) = h.click(&bob_approve).await;
    assert_eq!(s, 409, "{page}");
    assert!(page.contains("already_voted"));
    let view = h.workflow.get(id).await.unwrap();
    assert_eq!(view.votes.len(), 1);
    assert_eq!(view.request.status.as_str(), "pending");
}

#[tokio::test]
async fn a_deny_link_vetoes_and_later_links_show_the_resolution_without_a_form() {
    let smtp = FakeSmtp::start().await;
    let h = Harness::sqlite(smtp.addr, "1h").await;
    let id = h.submit("DELETE FROM orders WHERE true", 2).await;
    let mails = h.deliver_until(&smtp, 3).await;
    let (_, bob_deny) = vote_links(&h.base, mail_to(&mails, BOB));
    assert_eq!(h.click(&bob_deny).await.0, 200);
    assert_eq!(h.status(id).await, "denied");
    let (carol_approve, _) = vote_links(&h.base, mail_to(&mails, CAROL));
    let (s, page) = h.get(&carol_approve).await;
    assert_eq!(s, 200);
    assert!(page.contains("already denied"));
    assert!(!page.contains("<form"));
}

#[tokio::test]
async fn the_request_page_needs_a_link_for_that_request() {
    let smtp = FakeSmtp::start().await;
    let h = Harness::sqlite(smtp.addr, "1h").await;
    let a = h.submit("DELETE FROM a", 1).await;
    let b = h.submit("DELETE FROM b", 1).await;
    let mails = h.deliver_until(&smtp, 6).await;
    let (s, _) = h.get(&format!("{}/requests/{a}", h.base)).await;
    assert_eq!(s, 401);
    let link_b = mails
        .iter()
        .flat_map(|m| {
            email_support::mime::urls_with_prefix(&m.text, &format!("{}/requests/{b}?t=", h.base))
        })
        .next()
        .unwrap();
    let (s, _) = h.get(&link_b.replace(&b.to_string(), &a.to_string())).await;
    assert_eq!(s, 403);
    let (s, page) = h.get(&link_b).await;
    assert_eq!(s, 200);
    assert!(page.contains("DELETE FROM b") && !page.contains("DELETE FROM a"));
    assert_eq!(
        refused_codes(&h.audit_actions().await),
        vec!["wrong_request"]
    );
}

#[tokio::test]
async fn statement_markup_is_escaped_in_mails_and_pages() {
    let smtp = FakeSmtp::start().await;
    let h = Harness::sqlite(smtp.addr, "1h").await;
    let sql = "DELETE FROM t WHERE note = '</pre><a href=\"https://evil.example/\">Approve</a><script>x()</script>'";
    h.submit(sql, 1).await;
    let mails = h.deliver_until(&smtp, 3).await;
    let m = mail_to(&mails, BOB);
    assert!(!m.html.contains("<a href=\"https://evil"));
    assert!(!m.html.contains("<script>"));
    let (approve, _) = vote_links(&h.base, m);
    let (_, page) = h.get(&approve).await;
    assert!(!page.contains("<a href=\"https://evil") && !page.contains("<script>"));
    assert!(page.contains("&lt;script&gt;x()&lt;/script&gt;"));
}

#[tokio::test]
async fn an_smtp_outage_loses_nothing_and_each_mail_arrives_once_on_postgres() {
    install_crypto();
    // Reserve a port, then leave it closed: the relay is down.
    let probe = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let h = Harness::on(fresh_pg().await, None, addr, "1h").await;
    let id = h.submit("DELETE FROM outage", 1).await;
    for _ in 0..3 {
        h.worker.run_once().await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let pending = h.store.outbox_list(None, 10).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert!(
        pending[0].attempts >= 1,
        "delivery was attempted: {pending:?}"
    );
    assert!(pending[0]
        .last_error
        .as_deref()
        .unwrap_or("")
        .contains("SMTP"));

    let smtp = FakeSmtp::start_on(addr).await;
    let mails = h.deliver_until(&smtp, 3).await;
    for _ in 0..5 {
        h.worker.run_once().await.unwrap();
    }
    assert_eq!(smtp.received().len(), 3, "no duplicates after recovery");
    for who in [ALICE, BOB, CAROL] {
        mail_to(&mails, who);
    }
    let (bob_approve, _) = vote_links(&h.base, mail_to(&mails, BOB));
    assert_eq!(h.click(&bob_approve).await.0, 200);
    assert_eq!(h.status(id).await, "approved");
}

#[tokio::test]
async fn a_transient_failure_for_one_recipient_resends_only_that_mail() {
    let smtp = FakeSmtp::start().await;
    smtp.fail_rcpt_once(CAROL);
    let h = Harness::sqlite(smtp.addr, "1h").await;
    h.submit("DELETE FROM partial", 1).await;
    let mails = h.deliver_until(&smtp, 3).await;
    for _ in 0..5 {
        h.worker.run_once().await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(smtp.received().len(), 3);
    let items = h.store.outbox_list(None, 10).await.unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(
        items[0].attempts, 2,
        "the 451 made the first attempt fail: {items:?}"
    );
    assert_eq!(items[0].status.as_str(), "delivered");
    for who in [ALICE, BOB, CAROL] {
        let n = mails
            .iter()
            .filter(|m| m.header("To").unwrap().contains(who))
            .count();
        assert_eq!(n, 1, "{who} got {n} mails");
    }
}
