//! Reminders and escalation: a task that scans pending requests and, through the outbox, nudges approvers
//! after `remind_after` and escalates to further groups after a further `escalate_after`. Expiry notices are
//! the workflow's own `resolved` events with status `expired`.

use countersign_bot::events::WorkflowEvent;
use countersign_bot::store::StoreError;
use countersign_bot::{ReminderSettings, RequestStatus, Workflow};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;

/// The `[reminders]` section. Durations are written like `90s`, `15m`, `2h`, `1d`, or as a bare number of
/// seconds (`900`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemindersConfig {
    /// Delay after creation before the first reminder; also the spacing between reminders.
    #[serde(deserialize_with = "crate::duration::text_or_seconds")]
    pub remind_after: String,
    /// Reminders per request before only escalation remains.
    #[serde(default = "default_max_reminders")]
    pub max_reminders: u32,
    /// Further delay after the first reminder before escalating; none when unset.
    #[serde(default, deserialize_with = "crate::duration::option_text_or_seconds")]
    pub escalate_after: Option<String>,
    /// Approver groups to escalate to: their members are notified (vote links only for approvers).
    #[serde(default)]
    pub escalate_to: Vec<String>,
    /// How often pending requests are scanned.
    #[serde(
        default = "default_scan_every",
        deserialize_with = "crate::duration::text_or_seconds"
    )]
    pub scan_every: String,
}

fn default_max_reminders() -> u32 {
    1
}
fn default_scan_every() -> String {
    "30s".into()
}

/// A configuration mistake, naming the key and the fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("reminders.{key}: {problem}")]
pub struct RemindersConfigError {
    /// Offending key.
    pub key: &'static str,
    /// What is wrong and how to fix it.
    pub problem: String,
}

pub use crate::duration::parse_duration;

/// Validated reminder timings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReminderPlan {
    /// First reminder after creation, and spacing between reminders.
    pub remind_after: Duration,
    /// Reminders per request.
    pub max_reminders: u32,
    /// Escalation delay after the first reminder, with its targets.
    pub escalation: Option<(Duration, Vec<String>)>,
    /// Scan interval.
    pub scan_every: Duration,
}

impl RemindersConfig {
    /// Check the section and turn it into timings.
    pub fn validate(&self) -> Result<ReminderPlan, Vec<RemindersConfigError>> {
        let mut errors = Vec::new();
        let mut dur = |key: &'static str, v: &str| match parse_duration(v) {
            Some(d) if !d.is_zero() => Some(d),
            _ => {
                errors.push(RemindersConfigError {
                    key,
                    problem: format!(
                        "{v:?} is not a positive duration: write e.g. \"15m\", \"2h\" or \"90s\""
                    ),
                });
                None
            }
        };
        let remind_after = dur("remind_after", &self.remind_after);
        let scan_every = dur("scan_every", &self.scan_every);
        let escalate_after = self
            .escalate_after
            .as_deref()
            .map(|v| dur("escalate_after", v));
        match (&escalate_after, self.escalate_to.is_empty()) {
            (Some(_), true) => errors.push(RemindersConfigError {
                key: "escalate_to",
                problem: "escalate_after is set but escalate_to is empty: list the approver groups to escalate to".into(),
            }),
            (None, false) => errors.push(RemindersConfigError {
                key: "escalate_after",
                problem: "escalate_to is set but escalate_after is not: add e.g. escalate_after = \"1h\"".into(),
            }),
            _ => {}
        }
        match (remind_after, scan_every, escalate_after) {
            (Some(remind_after), Some(scan_every), esc) if errors.is_empty() => Ok(ReminderPlan {
                remind_after,
                max_reminders: self.max_reminders,
                escalation: esc.flatten().map(|d| (d, self.escalate_to.clone())),
                scan_every,
            }),
            _ => Err(errors),
        }
    }
}

/// Enqueues reminders (`{id}:reminder:{n}`) and escalations (`{id}:escalation`) for pending requests; the
/// keys make every notice at most once per sink, whichever replica scans. A request's own settings (from
/// its policy rule) take precedence over the global plan, field by field.
pub struct ReminderScheduler {
    workflow: Arc<Workflow>,
    global: Option<ReminderPlan>,
    scan_every: Duration,
}

/// The timings that apply to one request.
struct EffectivePlan {
    remind_after: Option<Duration>,
    max_reminders: u32,
    escalation: Option<(Duration, Vec<String>)>,
}

impl ReminderScheduler {
    /// A scheduler over the workflow's store and sinks, with `plan` for requests whose rule sets nothing.
    pub fn new(workflow: Arc<Workflow>, plan: ReminderPlan) -> Self {
        Self {
            workflow,
            scan_every: plan.scan_every,
            global: Some(plan),
        }
    }

    /// A scheduler for rule-level settings only (no `[reminders]` section): requests whose rule sets no
    /// timings are never reminded.
    pub fn rules_only(workflow: Arc<Workflow>, scan_every: Duration) -> Self {
        Self {
            workflow,
            global: None,
            scan_every,
        }
    }

    fn plan_for(&self, settings: &ReminderSettings) -> EffectivePlan {
        let global = self.global.as_ref();
        let remind_after = settings
            .remind_after_secs
            .map(Duration::from_secs)
            .or(global.map(|g| g.remind_after));
        let escalation = match settings.escalate_after_secs {
            Some(after) => {
                let targets = if settings.escalate_to.is_empty() {
                    global
                        .and_then(|g| g.escalation.as_ref())
                        .map(|(_, t)| t.clone())
                        .unwrap_or_default()
                } else {
                    settings.escalate_to.clone()
                };
                Some((Duration::from_secs(after), targets))
            }
            None => global.and_then(|g| g.escalation.clone()),
        };
        EffectivePlan {
            remind_after,
            max_reminders: global.map_or(1, |g| g.max_reminders),
            escalation: escalation.filter(|(_, targets)| !targets.is_empty()),
        }
    }

    /// Scan once at `now`; returns how many notices were enqueued (re-enqueueing a sent key is a no-op
    /// in the store and is counted too).
    pub async fn scan(&self, now: OffsetDateTime) -> Result<usize, StoreError> {
        let store = self.workflow.store();
        let sinks = self.workflow.sinks();
        let pending = store
            .list_requests(Some(RequestStatus::Pending), 1000)
            .await?;
        let mut sent = 0;
        for req in pending {
            if req.expires_at <= now {
                continue; // expiry sends its own notice
            }
            let plan = self.plan_for(&req.reminders);
            let age = (now - req.created_at).max(time::Duration::ZERO);
            let age = Duration::from_secs_f64(age.as_seconds_f64());
            let mut due: Vec<(String, Vec<String>)> = Vec::new();
            if let Some(remind_after) = plan.remind_after {
                let reminders =
                    (age.as_secs() / remind_after.as_secs().max(1)).min(plan.max_reminders as u64);
                if reminders > 0 {
                    due.push((format!("{}:reminder:{reminders}", req.id), vec![]));
                }
            }
            if let Some((after, groups)) = plan.escalation {
                // Escalation counts from the first reminder, or from creation when none applies.
                if age >= plan.remind_after.unwrap_or(Duration::ZERO) + after {
                    due.push((format!("{}:escalation", req.id), groups));
                }
            }
            if due.is_empty() {
                continue;
            }
            let Some(view) = store.get_request(req.id).await? else {
                continue;
            };
            for (key, escalated_to) in due {
                let event = WorkflowEvent::Reminder {
                    request: view.clone(),
                    escalated_to,
                };
                store.enqueue(&event, &key, sinks).await?;
                sent += 1;
            }
        }
        Ok(sent)
    }

    /// Scan every `scan_every` until the returned task is aborted.
    pub fn spawn(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.scan_every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = self.scan(countersign_bot::clock::now()).await {
                    tracing::warn!(error = %e, "reminder scan failed; retrying next tick");
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use countersign_bot::store::OutboxStatus;
    use countersign_bot::testing::{fresh_sqlite, human, workload};
    use countersign_bot::{
        ApproverDirectory, NewRequest, RequesterChain, StatementHash, Submitted,
    };

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("45"), Some(Duration::from_secs(45)));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("5w"), None);
    }

    #[test]
    fn escalation_needs_both_delay_and_targets() {
        let cfg: RemindersConfig =
            toml::from_str("remind_after = \"15m\"\nescalate_after = \"1h\"\n").expect("parse");
        let errs = cfg.validate().unwrap_err();
        assert_eq!(errs[0].key, "escalate_to");
    }

    async fn pending_request(wf: &Workflow) -> countersign_bot::RequestView {
        pending_with(
            wf,
            "DELETE FROM orders WHERE id = 1",
            ReminderSettings::default(),
        )
        .await
    }

    async fn pending_with(
        wf: &Workflow,
        sql: &str,
        reminders: ReminderSettings,
    ) -> countersign_bot::RequestView {
        let new = NewRequest {
            connection: "prod".into(),
            statement: sql.into(),
            statement_hash: StatementHash::of_text(sql),
            requester: RequesterChain(vec![workload("agent"), human("alice@example.com")]),
            rule: "deletes".into(),
            reasons: vec!["DELETE".into()],
            approver_groups: vec!["dba".into()],
            quorum: 2,
            ttl_secs: 86_400,
            origin: "http".into(),
            session_id: None,
            reminders,
        };
        match wf.submit(new).await.expect("submit") {
            Submitted::Created(v) => v,
            other => panic!("expected a new request, got {other:?}"),
        }
    }

    /// The global plan the tests run against: remind after 10 minutes once, escalate to dba-leads after an hour.
    fn global_plan() -> ReminderPlan {
        RemindersConfig {
            remind_after: "10m".into(),
            max_reminders: 1,
            escalate_after: Some("1h".into()),
            escalate_to: vec!["dba-leads".into()],
            scan_every: "30s".into(),
        }
        .validate()
        .expect("valid")
    }

    #[tokio::test]
    async fn reminder_then_escalation_are_enqueued_once_each() {
        let (store, _dir) = fresh_sqlite().await;
        let wf = Arc::new(Workflow::new(
            Arc::clone(&store),
            ApproverDirectory::default(),
            vec!["log".into()],
        ));
        let view = pending_request(&wf).await;
        let plan = global_plan();
        let sched = ReminderScheduler::new(Arc::clone(&wf), plan);
        let t0 = view.request.created_at;
        let kinds = |items: Vec<countersign_bot::store::OutboxItem>| {
            let mut k: Vec<String> = items
                .into_iter()
                .filter(|i| i.event_kind == "reminder")
                .map(|i| i.idempotency_key)
                .collect();
            k.sort();
            k
        };

        assert_eq!(
            sched
                .scan(t0 + time::Duration::minutes(5))
                .await
                .expect("scan"),
            0
        );
        sched
            .scan(t0 + time::Duration::minutes(11))
            .await
            .expect("scan");
        sched
            .scan(t0 + time::Duration::minutes(12))
            .await
            .expect("scan");
        let items = store
            .outbox_list(Some(OutboxStatus::Pending), 100)
            .await
            .expect("list");
        assert_eq!(
            kinds(items),
            [format!("log:{}:reminder:1", view.request.id)]
        );

        sched
            .scan(t0 + time::Duration::minutes(71))
            .await
            .expect("scan");
        let items = store
            .outbox_list(Some(OutboxStatus::Pending), 100)
            .await
            .expect("list");
        let escalation = items
            .iter()
            .find(|i| i.idempotency_key.ends_with(":escalation"))
            .expect("escalation enqueued");
        let event: WorkflowEvent = serde_json::from_str(&escalation.payload).expect("event");
        assert!(
            matches!(event, WorkflowEvent::Reminder { escalated_to, .. } if escalated_to == ["dba-leads"])
        );
        assert_eq!(kinds(items).len(), 2);
    }

    fn workflow_over(store: Arc<dyn countersign_bot::Store>) -> Arc<Workflow> {
        Arc::new(Workflow::new(
            store,
            ApproverDirectory::default(),
            vec!["log".into()],
        ))
    }

    async fn reminder_events(
        store: &Arc<dyn countersign_bot::Store>,
    ) -> Vec<(String, WorkflowEvent)> {
        let items = store
            .outbox_list(Some(OutboxStatus::Pending), 100)
            .await
            .expect("list");
        items
            .into_iter()
            .filter(|i| i.event_kind == "reminder")
            .map(|i| {
                let event = serde_json::from_str(&i.payload).expect("event");
                (i.idempotency_key, event)
            })
            .collect()
    }

    #[tokio::test]
    async fn rule_remind_after_reminds_only_its_own_request() {
        let (store, _dir) = fresh_sqlite().await;
        let wf = workflow_over(Arc::clone(&store));
        let quick = pending_with(
            &wf,
            "DELETE FROM quick WHERE id = 1",
            ReminderSettings {
                remind_after_secs: Some(1),
                ..Default::default()
            },
        )
        .await;
        let plain = pending_request(&wf).await;
        let sched = ReminderScheduler::rules_only(Arc::clone(&wf), Duration::from_secs(1));
        let t0 = quick.request.created_at.max(plain.request.created_at);

        sched
            .scan(t0 + time::Duration::seconds(2))
            .await
            .expect("scan");
        let events = reminder_events(&store).await;
        assert_eq!(
            events.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>(),
            [format!("log:{}:reminder:1", quick.request.id)]
        );
        assert!(matches!(
            &events[0].1,
            WorkflowEvent::Reminder { request, escalated_to }
                if request.request.id == quick.request.id && escalated_to.is_empty()
        ));
    }

    #[tokio::test]
    async fn rule_settings_override_the_global_plan_and_others_keep_it() {
        let (store, _dir) = fresh_sqlite().await;
        let wf = workflow_over(Arc::clone(&store));
        let ruled = pending_with(
            &wf,
            "DELETE FROM ruled WHERE id = 1",
            ReminderSettings {
                remind_after_secs: Some(1),
                escalate_after_secs: Some(60),
                escalate_to: vec!["#db-oncall".into()],
            },
        )
        .await;
        let plain = pending_request(&wf).await;
        let plan = global_plan();
        let sched = ReminderScheduler::new(Arc::clone(&wf), plan);
        let t0 = ruled.request.created_at.max(plain.request.created_at);

        sched
            .scan(t0 + time::Duration::seconds(62))
            .await
            .expect("scan");
        let events = reminder_events(&store).await;
        let mut keys: Vec<String> = events.iter().map(|(k, _)| k.clone()).collect();
        keys.sort();
        let mut want = vec![
            format!("log:{}:reminder:1", ruled.request.id),
            format!("log:{}:escalation", ruled.request.id),
        ];
        want.sort();
        assert_eq!(
            keys, want,
            "the plain request is not due under the global 10m plan"
        );
        let escalation = events
            .iter()
            .find(|(k, _)| k.ends_with(":escalation"))
            .map(|(_, e)| e)
            .expect("escalation");
        assert!(matches!(
            escalation,
            WorkflowEvent::Reminder { escalated_to, .. } if escalated_to == &["#db-oncall"]
        ));

        sched
            .scan(t0 + time::Duration::minutes(11))
            .await
            .expect("scan");
        let keys: Vec<String> = reminder_events(&store)
            .await
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert!(keys.contains(&format!("log:{}:reminder:1", plain.request.id)));
        assert!(!keys
            .iter()
            .any(|k| k == &format!("log:{}:escalation", plain.request.id)));
        assert_eq!(keys.len(), 3);
    }
}
