//! A self-contained [`WireGate`] for tests, examples and benchmarks: static tokens, one prefix classifier
//! (DELETE → review, DROP DATABASE → block, everything else allowed) and programmable hold outcomes.
//! Not for production: it has no policy and no store.

use super::gate::{
    ExecutionOutcome, GateError, HoldOutcome, HoldTicket, ScramError, ScramVerifier, SessionInfo,
    StatementRecord, UpstreamTarget, WireAuthError, WireGate,
};
use crate::policy::{Action, ReviewRequirement, Verdict};
use countersign_bot::{
    Identity, IdentityKind, RequestId, RequesterChain, SessionId, StatementHash,
};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::OffsetDateTime;

/// The local PostgreSQL every test and bench uses (127.0.0.1:5432, trust auth, user `postgres`).
pub fn local_postgres(database: &str) -> super::UpstreamTarget {
    super::UpstreamTarget {
        host: "127.0.0.1".into(),
        port: 5432,
        user: "postgres".into(),
        password: None,
        database: database.into(),
        tls: Default::default(),
    }
}

/// Something the gate was told, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum GateEvent {
    /// `session_started`.
    SessionStarted(SessionId),
    /// `hold` for this text and hash.
    Hold {
        /// Statement text.
        sql: String,
        /// Hash bound to the request.
        hash: StatementHash,
        /// The request issued.
        id: RequestId,
    },
    /// `cancel_hold`.
    Cancelled(RequestId),
    /// `executed`.
    Executed(RequestId, ExecutionOutcome),
    /// One statement of `statements_finished`.
    Statement(StatementRecord),
    /// `session_ended`.
    SessionEnded(SessionId),
    /// `scram_refused` for this user.
    ScramRefused {
        /// The startup user.
        user: String,
        /// Why.
        error: ScramError,
    },
    /// `login_refused` for this user.
    LoginRefused {
        /// The startup user.
        user: String,
        /// The stable code.
        code: &'static str,
    },
}

/// A static gate: see the module docs.
pub struct StaticGate {
    connections: HashMap<String, UpstreamTarget>,
    tokens: HashMap<String, RequesterChain>,
    scram: HashMap<String, (ScramVerifier, RequesterChain)>,
    outcomes: Mutex<VecDeque<(Duration, HoldOutcome)>>,
    approved: Mutex<HashSet<StatementHash>>,
    events: Mutex<Vec<GateEvent>>,
    keep_events: bool,
    allow: Arc<Verdict>,
    review: Arc<Verdict>,
    block: Arc<Verdict>,
    masking: Option<Arc<crate::masking::Masker>>,
    table_lookup: Option<Arc<dyn crate::masking::TableLookup>>,
}

impl StaticGate {
    /// A gate with one connection name routed to `upstream` and one token for a workload `agent`.
    pub fn new(connection: &str, upstream: UpstreamTarget, token: &str) -> Self {
        let agent = Identity {
            issuer: "static".into(),
            subject: "agent".into(),
            email: None,
            unverified_email: None,
            kind: IdentityKind::Workload,
            groups: vec![],
        };
        let verdict = |action: Action, reason: &str| {
            Arc::new(Verdict {
                action,
                reasons: vec![reason.to_string()],
                statements: Arc::from([]),
                rule: "static-test".into(),
                review: (action == Action::Review).then(|| ReviewRequirement {
                    approver_groups: vec!["dba".into()],
                    quorum: 1,
                    ttl_secs: 3600,
                    reminders: Default::default(),
                }),
                code_free: false,
            })
        };
        Self {
            connections: HashMap::from([(connection.to_string(), upstream)]),
            tokens: HashMap::from([(token.to_string(), RequesterChain::single(agent))]),
            scram: HashMap::new(),
            outcomes: Mutex::default(),
            approved: Mutex::default(),
            events: Mutex::default(),
            keep_events: true,
            allow: verdict(Action::Allow, "read-only"),
            review: verdict(Action::Review, "DELETE needs approval"),
            block: verdict(Action::Block, "DROP DATABASE is never allowed"),
            masking: None,
            table_lookup: None,
        }
    }

    /// Queues the outcome of the next `wait`, delivered after `delay`; with none queued `wait` times out.
    pub fn push_outcome(&self, delay: Duration, outcome: HoldOutcome) {
        lock(&self.outcomes).push_back((delay, outcome));
    }

    /// Marks a statement hash as already approved: its next `hold` returns `Approved`.
    pub fn approve_in_advance(&self, hash: StatementHash) {
        lock(&self.approved).insert(hash);
    }

    /// Lets the workload `user` log in with SCRAM-SHA-256 against `verifier`.
    pub fn with_scram_user(mut self, user: &str, verifier: ScramVerifier) -> Self {
        let me = Identity {
            issuer: "static".into(),
            subject: user.into(),
            email: None,
            unverified_email: None,
            kind: IdentityKind::Workload,
            groups: vec![],
        };
        self.scram
            .insert(user.to_string(), (verifier, RequesterChain::single(me)));
        self
    }

    /// Masks results of every session with these rules. Table-qualified rules match by column name
    /// unless [`StaticGate::with_table_lookup`] is called too.
    pub fn with_masking(mut self, masker: crate::masking::Masker) -> Self {
        self.masking = Some(Arc::new(masker));
        self
    }

    /// Resolves result tables with catalog queries on the upstream, as the engine does, so
    /// table-qualified masking rules match real tables.
    pub fn with_table_lookup(mut self) -> Self {
        self.table_lookup = self.connections.iter().next().map(|(name, target)| {
            Arc::new(crate::upstream::CatalogLookup::new(name, target.clone()))
                as Arc<dyn crate::masking::TableLookup>
        });
        self
    }

    /// Stops keeping the event log (for long benchmarks, where it would grow without bound).
    pub fn without_event_log(mut self) -> Self {
        self.keep_events = false;
        self
    }

    /// Everything the gate was told so far.
    pub fn events(&self) -> Vec<GateEvent> {
        lock(&self.events).clone()
    }

    fn record(&self, event: GateEvent) {
        if self.keep_events {
            lock(&self.events).push(event);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn starts_with_keyword(sql: &str, keyword: &str) -> bool {
    let s = sql.trim_start().as_bytes();
    s.len() >= keyword.len() && s[..keyword.len()].eq_ignore_ascii_case(keyword.as_bytes())
}

#[async_trait::async_trait]
impl WireGate for StaticGate {
    async fn authenticate(
        &self,
        _connection: &str,
        user: &str,
        password: &str,
    ) -> Result<RequesterChain, WireAuthError> {
        self.tokens
            .get(password)
            .cloned()
            .ok_or_else(|| WireAuthError::BadPassword {
                user: user.to_string(),
            })
    }

    fn scram_verifier(&self, user: &str) -> Option<ScramVerifier> {
        self.scram.get(user).map(|(v, _)| v.clone())
    }

    async fn scram_verified(
        &self,
        connection: &str,
        user: &str,
    ) -> Result<RequesterChain, WireAuthError> {
        let chain = self
            .scram
            .get(user)
            .map(|(_, chain)| chain.clone())
            .ok_or_else(|| WireAuthError::BadPassword {
                user: user.to_string(),
            })?;
        if !self.connections.contains_key(connection) {
            return Err(WireAuthError::UnknownConnection {
                connection: connection.to_string(),
                configured: self.connections.keys().cloned().collect(),
            });
        }
        Ok(chain)
    }

    async fn scram_refused(&self, _connection: &str, user: &str, error: &ScramError) {
        self.record(GateEvent::ScramRefused {
            user: user.to_string(),
            error: error.clone(),
        });
    }

    async fn login_refused(
        &self,
        _connection: &str,
        user: &str,
        code: &'static str,
        _message: &str,
    ) {
        self.record(GateEvent::LoginRefused {
            user: user.to_string(),
            code,
        });
    }

    fn upstream(&self, connection: &str) -> Option<UpstreamTarget> {
        self.connections.get(connection).cloned()
    }

    fn masking(&self, _connection: &str) -> Option<Arc<crate::masking::Masker>> {
        self.masking.clone()
    }

    fn table_lookup(&self, _connection: &str) -> Option<Arc<dyn crate::masking::TableLookup>> {
        self.table_lookup.clone()
    }

    fn classify(
        &self,
        _connection: &str,
        _requester: &RequesterChain,
        sql: &str,
        _memo: &mut crate::policy::VerdictMemo,
    ) -> Arc<Verdict> {
        if starts_with_keyword(sql, "DELETE") {
            // With the statements' facts, as the engine's verdicts carry them.
            let mut v = (*self.review).clone();
            v.statements = crate::policy::classify::classify(sql).into();
            v.code_free = v
                .statements
                .iter()
                .all(|f| f.action == Action::Allow && !crate::policy::runs_code_anyway(&f.kind));
            Arc::new(v)
        } else if starts_with_keyword(sql, "DROP DATABASE") {
            self.block.clone()
        } else {
            let mut v = (*self.allow).clone();
            v.statements = crate::policy::classify::classify(sql).into();
            v.code_free = v
                .statements
                .iter()
                .all(|f| f.action == Action::Allow && !crate::policy::runs_code_anyway(&f.kind));
            Arc::new(v)
        }
    }

    async fn hold(
        &self,
        _session: &SessionInfo,
        sql: &str,
        hash: &StatementHash,
        _verdict: &Verdict,
    ) -> Result<HoldTicket, GateError> {
        let id = RequestId::new();
        self.record(GateEvent::Hold {
            sql: sql.to_string(),
            hash: *hash,
            id,
        });
        if lock(&self.approved).remove(hash) {
            return Ok(HoldTicket::Approved { id });
        }
        Ok(HoldTicket::Pending {
            id,
            approvers: vec!["dba".into()],
            expires_at: OffsetDateTime::now_utc() + time::Duration::hours(1),
            quorum: 1,
        })
    }

    async fn wait(&self, _id: RequestId, timeout: Duration) -> HoldOutcome {
        let next = lock(&self.outcomes).pop_front();
        match next {
            Some((delay, outcome)) if delay <= timeout => {
                tokio::time::sleep(delay).await;
                outcome
            }
            _ => {
                tokio::time::sleep(timeout).await;
                HoldOutcome::TimedOut
            }
        }
    }

    async fn cancel_hold(&self, id: RequestId, _session: &SessionInfo) {
        self.record(GateEvent::Cancelled(id));
    }

    async fn executed(&self, id: RequestId, outcome: ExecutionOutcome) {
        self.record(GateEvent::Executed(id, outcome));
    }

    async fn session_started(&self, session: &SessionInfo) {
        self.record(GateEvent::SessionStarted(session.id));
    }

    async fn statements_finished(&self, batch: Vec<StatementRecord>) {
        for record in batch {
            self.record(GateEvent::Statement(record));
        }
    }

    async fn session_ended(&self, session: &SessionInfo) {
        self.record(GateEvent::SessionEnded(session.id));
    }
}
