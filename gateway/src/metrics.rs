//! Prometheus metrics: a small registry of atomics rendered in the text exposition format at `/metrics`.
//! Hot-path counters (every statement) are fixed arrays of atomics, so recording never locks; rare events
//! (refused votes) use a map under a mutex. Store-wide figures (outbox backlog) are read at scrape time, so
//! every replica reports the same fleet-wide backlog.

use countersign_bot::store::SinkBacklog;
use countersign_bot::{RequestView, WorkflowObserver};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Where a statement came in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrontDoor {
    /// `POST /v1/connections/{name}/query`.
    Api,
    /// The Postgres wire listener.
    Wire,
}

impl FrontDoor {
    const ALL: [FrontDoor; 2] = [FrontDoor::Api, FrontDoor::Wire];

    fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Wire => "wire",
        }
    }
}

/// What the policy decided, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Ran without review.
    Allow,
    /// Refused by policy.
    Block,
    /// Held for approval.
    Review,
}

impl Decision {
    const ALL: [Decision; 3] = [Decision::Allow, Decision::Block, Decision::Review];

    fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Block => "block",
            Self::Review => "review",
        }
    }
}

impl From<crate::policy::Action> for Decision {
    fn from(a: crate::policy::Action) -> Self {
        match a {
            crate::policy::Action::Allow => Self::Allow,
            crate::policy::Action::Block => Self::Block,
            crate::policy::Action::Review => Self::Review,
        }
    }
}

/// Why an upstream call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// Could not connect or the connection broke.
    Connection,
    /// The database answered with an error.
    Statement,
}

impl UpstreamFailure {
    const ALL: [UpstreamFailure; 2] = [UpstreamFailure::Connection, UpstreamFailure::Statement];

    fn as_str(self) -> &'static str {
        match self {
            Self::Connection => "connection",
            Self::Statement => "statement",
        }
    }
}

/// A cumulative histogram with fixed upper bounds (seconds).
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// A histogram with these bucket upper bounds, ascending.
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Record one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, n) in self.bounds.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Classification is in-process and cached: microseconds to a few milliseconds.
const CLASSIFY_BOUNDS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05,
];
/// Humans approve in seconds to hours.
const APPROVAL_BOUNDS: &[f64] = &[
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 14400.0, 86400.0,
];

/// Name, help text and value of one per-sink outbox gauge.
type BacklogGauge = (&'static str, &'static str, fn(&SinkBacklog) -> i64);

/// Every metric this process exports.
pub struct Metrics {
    statements: [[AtomicU64; 3]; 2],
    upstream_errors: [[AtomicU64; 2]; 2],
    held_now: AtomicI64,
    /// Time to classify one statement.
    pub classify: Histogram,
    /// Time from request creation to its resolution by a vote in this process.
    pub approval: Histogram,
    votes_refused: Mutex<BTreeMap<(String, String), u64>>,
    resolutions: Mutex<BTreeMap<String, u64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Decrements the held gauge when dropped, so a cancelled wait (client gone) is not counted forever.
pub struct HeldGuard<'a>(&'a AtomicI64);

impl Drop for HeldGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    /// All zero.
    pub fn new() -> Self {
        Self {
            statements: Default::default(),
            upstream_errors: Default::default(),
            held_now: AtomicI64::new(0),
            classify: Histogram::new(CLASSIFY_BOUNDS),
            approval: Histogram::new(APPROVAL_BOUNDS),
            votes_refused: Mutex::new(BTreeMap::new()),
            resolutions: Mutex::new(BTreeMap::new()),
        }
    }

    /// Count one statement's decision.
    pub fn statement(&self, door: FrontDoor, decision: Decision) {
        self.statements[door as usize][decision as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Statements counted so far for this front door and decision.
    pub fn statements(&self, door: FrontDoor, decision: Decision) -> u64 {
        self.statements[door as usize][decision as usize].load(Ordering::Relaxed)
    }

    /// Count one failed upstream call.
    pub fn upstream_error(&self, door: FrontDoor, kind: UpstreamFailure) {
        self.upstream_errors[door as usize][kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A statement is now held on a client connection, until the guard drops.
    pub fn hold(&self) -> HeldGuard<'_> {
        self.held_now.fetch_add(1, Ordering::Relaxed);
        HeldGuard(&self.held_now)
    }

    /// Statements held on client connections right now.
    pub fn held_now(&self) -> i64 {
        self.held_now.load(Ordering::Relaxed)
    }

    /// Refused votes with this code through this channel.
    pub fn votes_refused(&self, code: &str, channel: &str) -> u64 {
        let map = self.votes_refused.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&(code.to_string(), channel.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// The text exposition format; `backlog` is the store's outbox backlog, `None` when it could not be read.
    pub fn render(&self, backlog: Option<&[SinkBacklog]>) -> String {
        let mut out = String::with_capacity(4096);
        out.push_str("# HELP countersign_statements_total Statements decided, by front door and decision.\n# TYPE countersign_statements_total counter\n");
        for door in FrontDoor::ALL {
            for d in Decision::ALL {
                let _ = writeln!(
                    out,
                    "countersign_statements_total{{front_door=\"{}\",decision=\"{}\"}} {}",
                    door.as_str(),
                    d.as_str(),
                    self.statements(door, d)
                );
            }
        }
        self.classify.render(
            &mut out,
            "countersign_classification_seconds",
            "Time to classify a statement against the policy.",
        );
        let _ = writeln!(out, "# HELP countersign_held_statements Statements held on client connections now.\n# TYPE countersign_held_statements gauge\ncountersign_held_statements {}", self.held_now());
        self.approval.render(
            &mut out,
            "countersign_approval_seconds",
            "Time from an approval request's creation to its resolution by a vote on this replica.",
        );
        out.push_str("# HELP countersign_requests_resolved_total Requests resolved by a vote on this replica, by outcome.\n# TYPE countersign_requests_resolved_total counter\n");
        for (status, n) in self
            .resolutions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "countersign_requests_resolved_total{{status=\"{}\"}} {n}",
                escape(status)
            );
        }
        out.push_str("# HELP countersign_votes_refused_total Votes refused, by reason and channel.\n# TYPE countersign_votes_refused_total counter\n");
        for ((code, channel), n) in self
            .votes_refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "countersign_votes_refused_total{{reason=\"{}\",channel=\"{}\"}} {n}",
                escape(code),
                escape(channel)
            );
        }
        out.push_str("# HELP countersign_upstream_errors_total Failed upstream calls, by front door and kind.\n# TYPE countersign_upstream_errors_total counter\n");
        for door in FrontDoor::ALL {
            for kind in UpstreamFailure::ALL {
                let n = self.upstream_errors[door as usize][kind as usize].load(Ordering::Relaxed);
                let _ = writeln!(
                    out,
                    "countersign_upstream_errors_total{{front_door=\"{}\",kind=\"{}\"}} {n}",
                    door.as_str(),
                    kind.as_str()
                );
            }
        }
        let _ = writeln!(out, "# HELP countersign_store_up Whether the state store answered this scrape.\n# TYPE countersign_store_up gauge\ncountersign_store_up {}", u8::from(backlog.is_some()));
        let gauges: [BacklogGauge; 3] = [
            (
                "countersign_outbox_depth",
                "Undelivered notifications per channel, fleet-wide.",
                |b| b.pending,
            ),
            (
                "countersign_outbox_failing",
                "Undelivered notifications per channel whose last attempt failed, fleet-wide.",
                |b| b.failing,
            ),
            (
                "countersign_outbox_dead",
                "Dead-lettered notifications per channel, fleet-wide.",
                |b| b.dead,
            ),
        ];
        for (name, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for b in backlog.unwrap_or_default() {
                let _ = writeln!(out, "{name}{{sink=\"{}\"}} {}", escape(&b.sink), value(b));
            }
        }
        out
    }
}

impl WorkflowObserver for Metrics {
    fn resolved(&self, view: &RequestView) {
        let r = &view.request;
        let took = (r.updated_at - r.created_at).max(time::Duration::ZERO);
        self.approval
            .observe(Duration::try_from(took).unwrap_or_default());
        *self
            .resolutions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(r.status.as_str().to_string())
            .or_default() += 1;
    }

    fn vote_refused(&self, code: &str, channel: &str) {
        *self
            .votes_refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((code.to_string(), channel.to_string()))
            .or_default() += 1;
    }
}

/// Label values are ours or short channel names; escape anyway so a value can never break the format.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `GET /metrics`.
pub async fn scrape(
    axum::extract::State(st): axum::extract::State<crate::http::AppState>,
) -> impl axum::response::IntoResponse {
    let backlog = match st.engine.store().outbox_backlog().await {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::warn!(error = %e, "metrics: could not read the outbox backlog");
            None
        }
    };
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        st.engine.metrics.render(backlog.as_deref()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting {prefix:?} in\n{text}"))
    }

    #[test]
    fn statements_are_counted_per_front_door_and_decision() {
        let m = Metrics::new();
        m.statement(FrontDoor::Wire, Decision::Review);
        m.statement(FrontDoor::Wire, Decision::Review);
        m.statement(FrontDoor::Api, Decision::Block);
        let text = m.render(Some(&[]));
        assert_eq!(
            line(
                &text,
                "countersign_statements_total{front_door=\"wire\",decision=\"review\"}"
            ),
            "countersign_statements_total{front_door=\"wire\",decision=\"review\"} 2"
        );
        assert!(
            text.contains("countersign_statements_total{front_door=\"api\",decision=\"block\"} 1")
        );
        assert!(
            text.contains("countersign_statements_total{front_door=\"api\",decision=\"allow\"} 0")
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_sum_and_count() {
        let h = Histogram::new(&[0.001, 0.01, 0.1]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(5));
        h.observe(Duration::from_millis(50));
        h.observe(Duration::from_secs(2));
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "test");
        assert!(out.contains("x_seconds_bucket{le=\"0.001\"} 1\n"));
        assert!(out.contains("x_seconds_bucket{le=\"0.01\"} 2\n"));
        assert!(out.contains("x_seconds_bucket{le=\"0.1\"} 3\n"));
        assert!(out.contains("x_seconds_bucket{le=\"+Inf\"} 4\n"));
        assert!(out.contains("x_seconds_count 4\n"));
        assert!(out.contains("x_seconds_sum 2.0555\n"), "{out}");
    }

    #[test]
    fn held_gauge_drops_when_the_wait_ends_or_is_abandoned() {
        let m = Metrics::new();
        let a = m.hold();
        let b = m.hold();
        assert_eq!(m.held_now(), 2);
        drop(a);
        assert_eq!(m.held_now(), 1);
        drop(b);
        assert!(m.render(None).contains("countersign_held_statements 0\n"));
    }

    #[test]
    fn outbox_backlog_and_refusals_are_labelled_and_escaped() {
        let m = Metrics::new();
        m.vote_refused("requester_cannot_approve", "slack");
        m.vote_refused("requester_cannot_approve", "slack");
        let text = m.render(Some(&[SinkBacklog {
            sink: "webhook:\"x\"".into(),
            pending: 3,
            failing: 1,
            dead: 2,
        }]));
        assert!(text.contains("countersign_votes_refused_total{reason=\"requester_cannot_approve\",channel=\"slack\"} 2\n"));
        assert!(text.contains("countersign_outbox_depth{sink=\"webhook:\\\"x\\\"\"} 3\n"));
        assert!(text.contains("countersign_outbox_failing{sink=\"webhook:\\\"x\\\"\"} 1\n"));
        assert!(text.contains("countersign_outbox_dead{sink=\"webhook:\\\"x\\\"\"} 2\n"));
        assert!(text.contains("countersign_store_up 1\n"));
        assert!(m.render(None).contains("countersign_store_up 0\n"));
    }
}
