//! The composition of policy, identity, workflow and upstreams that both front doors (HTTP API and wire
//! proxy) use. **Invariant:** no statement reaches an upstream without a verdict from [`Engine::classify`];
//! a `review` verdict runs only after [`countersign_bot::Workflow`] hands out its single execution.

mod build;
mod http_sessions;
mod recording;
pub mod row_functions;
mod wire_gate;

pub use build::EngineError;
pub use http_sessions::{HttpStatement, HTTP_SESSION_IDLE};

use crate::config::Config;
use crate::identity::{AuthError, Authenticator};
use crate::policy::{Policy, PolicyContext, Verdict};
use crate::upstream::{ExecError, QueryOutcome, UpstreamPool, UpstreamTarget};
use countersign_bot::audit::AuditEntry;
use countersign_bot::{
    ExecutionSummary, NewRequest, RequestId, RequesterChain, SessionId, StatementHash, Store,
    Submitted, Workflow, WorkflowError,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Everything the front doors need, built once from the config.
pub struct Engine {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// Statement classification and rules.
    pub policy: Policy,
    /// The approval workflow.
    pub workflow: Arc<Workflow>,
    /// Bearer-token authentication.
    pub auth: Authenticator,
    upstreams: Arc<HashMap<String, UpstreamTarget>>,
    maskers: HashMap<String, Arc<crate::masking::Masker>>,
    /// Catalog lookups for connections with table-qualified masking rules.
    table_lookups: HashMap<String, Arc<crate::upstream::CatalogLookup>>,
    /// Per connection, asks PostgreSQL whether it rejects text the policy could not parse.
    syntax_probes: HashMap<String, Arc<crate::pg::syntax_probe::SyntaxProbe>>,
    pool: Arc<UpstreamPool>,
    /// Functions attribute notation could call on a row, per connection.
    row_functions: Arc<row_functions::RowFunctions>,
    recorder: recording::StatementWriter,
    http_sessions: http_sessions::HttpSessions,
    /// Longest `?wait=` honoured.
    pub max_wait: Duration,
    /// Public base URL for links.
    pub base_url: String,
    /// Counters and histograms served at `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// What to do with a statement submitted through a front door.
#[derive(Debug, Clone)]
pub enum Admission {
    /// Run it now (allowed by policy).
    Run,
    /// Refuse it.
    Blocked,
    /// Approved earlier for this requester and claimed now: run it once, then report with [`Engine::finish`].
    RunApproved(RequestId),
    /// Held: a request is pending.
    Held(Box<countersign_bot::RequestView>),
}

/// A statement as it arrives at a front door.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    /// Connection name.
    pub connection: &'a str,
    /// Who sent it.
    pub requester: &'a RequesterChain,
    /// Exact text.
    pub sql: &'a str,
    /// Hash the approval binds to (text, plus parameters on the wire).
    pub hash: &'a StatementHash,
    /// Front door: `api` or `wire`.
    pub origin: &'a str,
    /// Recorded session, if any.
    pub session: Option<SessionId>,
}

impl Engine {
    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        self.workflow.store()
    }

    /// The upstream for a connection name.
    pub fn upstream_target(&self, connection: &str) -> Option<&UpstreamTarget> {
        self.upstreams.get(connection)
    }

    /// The masking rules of a connection, if it has any.
    pub fn masker(&self, connection: &str) -> Option<&Arc<crate::masking::Masker>> {
        self.maskers.get(connection)
    }

    /// Configured connection names.
    pub fn connection_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.upstreams.keys().cloned().collect();
        v.sort();
        v
    }

    /// Authenticate a bearer token; refusals are audited with the channel they came through.
    pub async fn authenticate(
        &self,
        bearer: &str,
        channel: &str,
    ) -> Result<RequesterChain, AuthError> {
        match self.auth.authenticate(bearer).await {
            Ok(chain) => Ok(chain),
            Err(e) => {
                let entry = AuditEntry::new("unknown", "auth.refused", channel)
                    .decision("refused")
                    .detail(serde_json::json!({ "code": e.code(), "message": e.to_string() }));
                if let Err(se) = self.store().append_audit(entry).await {
                    tracing::warn!(error = %se, "could not audit a refused token");
                }
                tracing::warn!(code = e.code(), channel, "authentication refused");
                Err(e)
            }
        }
    }

    /// Reads, for every connection, the functions attribute notation could call on a row and those
    /// that share a vetted function's name (see [`row_functions`]).
    pub async fn refresh_row_functions(&self) {
        self.row_functions
            .refresh(&self.pool, &self.upstreams)
            .await;
    }

    /// [`Engine::refresh_row_functions`] on a task of its own, for a caller that must not wait.
    pub fn refresh_row_functions_soon(&self) {
        self.row_functions.refresh_soon(&self.pool, &self.upstreams);
    }

    /// Runs [`Engine::refresh_row_functions`] now and every [`row_functions::REFRESH`].
    pub fn spawn_row_function_refresh(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let engine = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(row_functions::REFRESH);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                engine.refresh_row_functions().await;
            }
        })
    }

    /// Cancels the HTTP API's statements still running upstream (at shutdown, after their grace).
    pub async fn cancel_api_statements(&self) -> usize {
        self.pool.cancel_running().await
    }

    /// Classify `sql` for this requester on this connection (cached by text).
    pub fn classify(&self, connection: &str, requester: &RequesterChain, sql: &str) -> Verdict {
        let db_functions = self.db_functions(connection);
        self.timed_policy(connection, requester, &db_functions, |policy, ctx| {
            policy.evaluate(ctx, sql)
        })
    }

    /// Like `classify`, remembering verdicts in a memo owned by one session (fixed connection and
    /// requester), so repeated statements skip rule matching.
    pub fn classify_memo(
        &self,
        connection: &str,
        requester: &RequesterChain,
        sql: &str,
        memo: &mut crate::policy::VerdictMemo,
    ) -> Arc<Verdict> {
        let db_functions = if memo.catalog_pending {
            row_functions::pending_ddl()
        } else {
            self.db_functions(connection)
        };
        memo.for_db_functions(Some(&db_functions));
        self.timed_policy(connection, requester, &db_functions, |policy, ctx| {
            policy.evaluate_memo(ctx, sql, memo)
        })
    }

    /// Runs a policy evaluation, observing its duration in the classification histogram.
    fn timed_policy<T>(
        &self,
        connection: &str,
        requester: &RequesterChain,
        db_functions: &crate::policy::DatabaseFunctions,
        evaluate: impl FnOnce(&Policy, &PolicyContext<'_>) -> T,
    ) -> T {
        let started = std::time::Instant::now();
        let out = evaluate(
            &self.policy,
            &PolicyContext {
                connection,
                requester,
                db_functions: Some(db_functions),
            },
        );
        self.metrics.classify.observe(started.elapsed());
        out
    }

    /// The connection's function lists; with none fresh (every statement is then reviewed), a read
    /// is started at once rather than at the next refresh.
    fn db_functions(&self, connection: &str) -> Arc<crate::policy::DatabaseFunctions> {
        let lists = self.row_functions.get(connection);
        if row_functions::is_unknown(&lists) {
            self.refresh_row_functions_soon();
        }
        lists
    }

    /// Audits a statement that does not run: `action` with `decision`, its connection, rule and text,
    /// and one more detail (`key`, `value`).
    async fn audit_not_run(
        &self,
        incoming: &Incoming<'_>,
        verdict: &Verdict,
        (action, decision): (&str, &str),
        (key, value): (&str, serde_json::Value),
    ) -> Result<(), countersign_bot::store::StoreError> {
        let mut detail = serde_json::json!({
            "connection": incoming.connection,
            "rule": verdict.rule,
            "sql": truncate(incoming.sql, 4000),
        });
        detail[key] = value;
        let entry = AuditEntry::new(incoming.requester.key(), action, incoming.origin)
            .decision(decision)
            .statement(incoming.hash)
            .detail(detail);
        self.store().append_audit(entry).await?;
        Ok(())
    }

    /// True only when PostgreSQL's parser rejects `sql` on `connection` (see `pg::syntax_probe`).
    pub(crate) async fn syntax_rejected_by_postgres(&self, connection: &str, sql: &str) -> bool {
        match self.syntax_probes.get(connection) {
            Some(probe) => probe.rejects(sql).await,
            None => false,
        }
    }

    /// Decide a statement: run, block (audited) or hold (request created or reused).
    pub async fn admit(
        &self,
        incoming: &Incoming<'_>,
        verdict: &Verdict,
    ) -> Result<Admission, WorkflowError> {
        use crate::policy::Action;
        let Incoming {
            connection,
            requester,
            sql,
            hash,
            origin,
            session,
        } = *incoming;
        match verdict.action {
            Action::Allow => Ok(Admission::Run),
            Action::Block => {
                let reasons = serde_json::json!(verdict.reasons);
                self.audit_not_run(
                    incoming,
                    verdict,
                    ("statement.blocked", "block"),
                    ("reasons", reasons),
                )
                .await?;
                tracing::info!(connection, rule = %verdict.rule, "statement blocked");
                Ok(Admission::Blocked)
            }
            // Held only because the policy could not parse it, and PostgreSQL cannot either: running
            // it runs nothing and returns PostgreSQL's syntax error (see `pg::syntax_probe`).
            Action::Review
                if verdict.statements.iter().any(|s| s.unparsed)
                    && self.syntax_rejected_by_postgres(connection, sql).await =>
            {
                tracing::info!(connection, "PostgreSQL cannot parse a statement the policy could not parse either; run for its syntax error instead of held");
                Ok(Admission::Run)
            }
            Action::Review => {
                let review = verdict
                    .review
                    .clone()
                    .unwrap_or(crate::policy::ReviewRequirement {
                        approver_groups: self.config.policy.defaults.approver_groups.clone(),
                        quorum: 2,
                        ttl_secs: 3600,
                        reminders: Default::default(),
                    });
                let new = NewRequest {
                    connection: connection.to_string(),
                    statement: sql.to_string(),
                    statement_hash: *hash,
                    requester: requester.clone(),
                    rule: verdict.rule.clone(),
                    reasons: verdict.reasons.clone(),
                    approver_groups: review.approver_groups,
                    quorum: review.quorum,
                    ttl_secs: review.ttl_secs,
                    origin: origin.to_string(),
                    session_id: session,
                    reminders: review.reminders,
                };
                let submitted = match self.workflow.submit(new).await {
                    Err(e @ WorkflowError::RequesterWithoutEmail(_)) => {
                        let code = serde_json::json!("requester_without_email");
                        self.audit_not_run(
                            incoming,
                            verdict,
                            ("statement.refused", "refused"),
                            ("code", code),
                        )
                        .await?;
                        return Err(e);
                    }
                    other => other?,
                };
                Ok(match submitted {
                    Submitted::Created(v) | Submitted::AlreadyPending(v) => {
                        Admission::Held(Box::new(v))
                    }
                    Submitted::ApprovedAndClaimed(v) => Admission::RunApproved(v.request.id),
                })
            }
        }
    }

    /// Run SQL on a connection with the gateway's credential; results come back masked per the connection's rules.
    pub async fn execute(
        &self,
        connection: &str,
        sql: &str,
        verdict: &Verdict,
    ) -> Result<QueryOutcome, ExecError> {
        let target = self
            .upstreams
            .get(connection)
            .ok_or_else(|| ExecError::Protocol(format!("unknown connection {connection:?}")))?;
        let stateless = leaves_session_unchanged(verdict);
        let mut out = self
            .pool
            .simple_query(connection, target, sql, stateless)
            .await?;
        if row_functions::changes_functions(out.results.iter().map(|r| r.command_tag.as_deref())) {
            self.refresh_row_functions().await;
        }
        // Results are masked here, before any caller can see them: no front door can forget.
        if let Some(m) = self.masker(connection) {
            let mut tables = crate::masking::TableNames::default();
            // A result set has computed columns when a column has no table (or no table OID came).
            let computed = |oids: &[u32], width: usize| oids.contains(&0) || oids.len() < width;
            // Columns of the views the statement reads that carry a masked column: a computation
            // over them (`upper(tax_id)`) is redacted like one over the masked column itself.
            let mut view_columns = Some(Vec::new());
            if let Some(lookup) = self.table_lookups.get(connection) {
                let oids = tables_to_resolve(m, &out, &tables);
                if !oids.is_empty() {
                    tables.resolve(&**lookup, &oids, m.rules()).await;
                }
                if out.results.iter().enumerate().any(|(i, set)| {
                    computed(
                        out.table_oids.get(i).map_or(&[][..], Vec::as_slice),
                        set.columns.len(),
                    )
                }) {
                    let relations = crate::masking::derived::statement_relations(sql);
                    view_columns = tables
                        .view_columns_of(&**lookup, &relations, m.rules())
                        .await;
                }
            }
            let QueryOutcome {
                results,
                table_oids,
                attnums,
                ..
            } = &mut out;
            // Several statements give several result sets, one each: each set is judged by its own
            // statement when the string splits into as many as PostgreSQL answered, else all by the
            // whole string (read once; its exposure no longer depends on a set's width).
            let own_statements = (results.len() > 1)
                .then(|| crate::masking::derived::statement_texts(sql))
                .flatten()
                .filter(|texts| texts.len() == results.len());
            let nothing = crate::masking::derived::Exposure::Nothing;
            let mut derived = None;
            let mut masked = 0;
            for (i, set) in results.iter_mut().enumerate() {
                let oids = table_oids.get(i).map_or(&[][..], Vec::as_slice);
                let cols = attnums.get(i).map_or(&[][..], Vec::as_slice);
                let own;
                let exposure = if !computed(oids, set.columns.len()) {
                    &nothing
                } else if let Some(texts) = &own_statements {
                    own =
                        m.computed_exposure(&texts[i], set.columns.len(), view_columns.as_deref());
                    &own
                } else {
                    &*derived.get_or_insert_with(|| {
                        m.computed_exposure(sql, set.columns.len(), view_columns.as_deref())
                    })
                };
                masked += m.mask_result_set_of(set, (oids, cols), &tables, exposure);
            }
            out.masked_fields = masked;
            if let Some(e) = &mut out.error {
                crate::masking::messages::redact_upstream_error(e, sql);
            }
        }
        Ok(out)
    }

    /// Report the single execution of an approved request.
    pub async fn finish(&self, id: RequestId, mut summary: ExecutionSummary) {
        // The result goes to every channel: an error quoting row data would show approvers results.
        if let Some(error) = &summary.error {
            let statement = match self.workflow.get(id).await {
                Ok(view) => view.request.statement,
                Err(_) => String::new(),
            };
            if !crate::masking::messages::quotes_only_the_statement(error, &statement) {
                summary.error = Some(crate::masking::messages::WITHHELD_FROM_APPROVERS.to_string());
            }
        }
        if let Err(e) = self.workflow.finish(id, summary).await {
            tracing::error!(request_id = %id, error = %e, "could not record the execution result");
        }
    }

    /// Approver display names for a request's groups.
    pub fn approvers(&self, groups: &[String]) -> Vec<String> {
        self.workflow.directory().describe(groups)
    }
}

/// Table OIDs of an API result worth looking up for column masking rules: every table column
/// counts, since an output name may be an alias (see [`crate::masking::datarow::tables_to_resolve`]
/// for the wire's equivalent).
fn tables_to_resolve(
    masker: &crate::masking::Masker,
    out: &QueryOutcome,
    tables: &crate::masking::TableNames,
) -> Vec<u32> {
    if !masker.rules().has_column_rules() {
        return Vec::new();
    }
    tables.wanted(out.table_oids.iter().flatten().copied())
}

/// At most `max` characters of `s`.
pub fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

/// Execution summary from an outcome.
pub fn summarize(
    outcome: &Result<QueryOutcome, ExecError>,
    duration: Duration,
) -> ExecutionSummary {
    match outcome {
        Ok(o) => {
            let last = o.results.last();
            let tag = last.and_then(|r| r.command_tag.clone());
            ExecutionSummary {
                rows: tag.as_deref().and_then(crate::pg::codec::rows_of_tag),
                command_tag: tag,
                error: o
                    .error
                    .as_ref()
                    .map(|e| format!("{} ({})", e.message, e.sqlstate)),
                duration_ms: duration.as_millis() as u64,
            }
        }
        Err(e) => ExecutionSummary {
            command_tag: None,
            rows: None,
            error: Some(e.to_string()),
            duration_ms: duration.as_millis() as u64,
        },
    }
}

/// True when running the verdict's SQL leaves a pooled session as it found it: reads that call no
/// function. Anything else (SET, temp tables, `SELECT … INTO TEMP`, `set_config` in a SELECT, triggers
/// of a write, also one in a WITH) gets the session reset before reuse.
fn leaves_session_unchanged(verdict: &Verdict) -> bool {
    verdict.statements.iter().all(|s| {
        s.functions.is_empty()
            && !s.review_beyond_kind
            // A PREPARE has its statement's kind, and leaves a name behind in the session.
            && s.prepared.is_none()
            && matches!(
                s.kind.as_str(),
                "SELECT" | "VALUES" | "TABLE" | "SHOW" | "EXPLAIN"
            )
    })
}

#[cfg(test)]
mod session_reuse_tests {
    use super::leaves_session_unchanged;
    use crate::policy::{Policy, PolicyContext};
    use countersign_bot::RequesterChain;

    #[test]
    fn only_plain_reads_skip_the_session_reset() {
        let policy = Policy::builtin();
        let chain = RequesterChain(vec![]);
        let ctx = PolicyContext {
            connection: "c",
            requester: &chain,
            db_functions: None,
        };
        for (sql, unchanged) in [
            ("SELECT * FROM orders", true),
            ("TABLE orders; SHOW search_path", true),
            // An approved SELECT INTO TEMP leaves a temp table that would shadow `orders` for the
            // next caller of the pooled session.
            ("SELECT * INTO TEMP orders FROM orders", false),
            (
                "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
                false,
            ),
            ("WITH x AS (SELECT 1) DELETE FROM t", false),
            ("SELECT set_config('search_path', 'public', false)", false),
            ("SET search_path = public", false),
            ("PREPARE p AS SELECT * FROM orders", false),
        ] {
            let verdict = policy.evaluate(&ctx, sql);
            assert_eq!(leaves_session_unchanged(&verdict), unchanged, "{sql}");
        }
    }
}
