//! SQL-level prepared statements of one wire session: which names an allowed `PREPARE` created
//! upstream, so that `EXECUTE name(args)` can be judged as the statement it runs instead of held.
//!
//! The policy judges `PREPARE name AS stmt` as `stmt` (see `policy::classify`), but cannot know what a
//! later `EXECUTE name` runs. This session state can: a name is remembered only once the upstream
//! answered that PREPARE with its `PREPARE` command tag (a PREPARE that failed created nothing; one
//! whose outcome is unknown counts as failed), and only for a query the policy allowed outright.
//! Anything that may create or drop names unseen — an approved statement, a protocol-level Parse or
//! Close of a named statement, a PREPARE or DEALLOCATE sent as a protocol Parse — forgets every name,
//! so an unknown name is held (fail closed). A session that never prepares pays nothing: the state is
//! an empty map and no in-flight query carries [`PendingOps`].

use crate::policy::{PreparedUse, Verdict};
use std::collections::HashMap;

/// Names created by allowed PREPAREs the upstream confirmed, with the statement each stores.
#[derive(Debug, Default)]
pub struct SqlPrepared {
    names: HashMap<String, String>,
    /// Bumped whenever the names are forgotten wholesale: a PREPARE forwarded before that (still in
    /// flight) is not remembered when its confirmation arrives, since what came after may have
    /// replaced its name upstream.
    generation: u64,
}

/// The PREPAREs and DEALLOCATEs of one forwarded simple query, waiting for its command tags.
#[derive(Debug)]
pub struct PendingOps {
    generation: u64,
    ops: Vec<PreparedUse>,
    /// Command tags of the query so far, in order.
    pub tags: Vec<String>,
}

impl SqlPrepared {
    /// The PREPAREs and DEALLOCATEs of an allowed simple query, to settle against its command tags;
    /// None (nothing to track) for the usual query that has none.
    pub fn pending(&self, verdict: &Verdict) -> Option<Box<PendingOps>> {
        let ops: Vec<PreparedUse> = verdict
            .statements
            .iter()
            .filter_map(|s| s.prepared.as_deref())
            .filter(|u| !matches!(u, PreparedUse::Execute { .. }))
            .cloned()
            .collect();
        (!ops.is_empty()).then(|| {
            Box::new(PendingOps {
                generation: self.generation,
                ops,
                tags: Vec::new(),
            })
        })
    }

    /// Applies a finished query's PREPAREs and DEALLOCATEs as far as its command tags confirm them.
    /// PostgreSQL runs a query's statements in order and stops at the first error, and only these
    /// statements answer with these tags, so the tags confirm a prefix of `ops`.
    pub fn settle(&mut self, pending: PendingOps) {
        let mut tags = pending.tags.iter().map(String::as_str);
        for op in pending.ops {
            let confirmed = |t: &str| match &op {
                PreparedUse::Prepare { .. } => t == "PREPARE",
                PreparedUse::Deallocate { name: Some(_) } => t == "DEALLOCATE",
                PreparedUse::Deallocate { name: None } => {
                    t == "DEALLOCATE ALL" || t == "DISCARD ALL"
                }
                PreparedUse::Execute { .. } => false,
            };
            if !tags.any(confirmed) {
                return;
            }
            match op {
                PreparedUse::Prepare { name, statement } => {
                    if pending.generation == self.generation {
                        self.names.insert(name, statement);
                    }
                }
                PreparedUse::Deallocate { name: Some(name) } => {
                    self.names.remove(&name);
                }
                PreparedUse::Deallocate { name: None } => self.names.clear(),
                PreparedUse::Execute { .. } => {}
            }
        }
    }

    /// Forgets every name: something may have created or dropped names without this session seeing
    /// which (see the module documentation).
    pub fn forget_all(&mut self) {
        self.generation += 1;
        self.names.clear();
    }

    /// For a query that is one `EXECUTE` of a remembered name, the SQL to judge in its place: the
    /// stored statement (so rules see its kind and tables) followed by `SELECT` of the arguments
    /// (they are evaluated, and may call functions). None otherwise: the EXECUTE stays as judged.
    pub fn execute_stand_in(&self, verdict: &Verdict) -> Option<String> {
        if self.names.is_empty() {
            return None;
        }
        let [facts] = &verdict.statements[..] else {
            return None;
        };
        let Some(PreparedUse::Execute { name, arguments }) = facts.prepared.as_deref() else {
            return None;
        };
        let statement = self.names.get(name)?;
        Some(match arguments {
            Some(arguments) => format!("{statement};\n{arguments}"),
            None => statement.clone(),
        })
    }
}

/// True when forwarding a statement with this verdict as a protocol-level Parse may create or drop
/// SQL-level names unseen (its command tags are not tracked there).
pub fn changes_names(verdict: &Verdict) -> bool {
    verdict.statements.iter().any(|s| {
        s.unparsed
            || matches!(
                s.prepared.as_deref(),
                Some(PreparedUse::Prepare { .. } | PreparedUse::Deallocate { .. })
            )
    })
}

/// What statements may do to the session's protocol-level prepared statements.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct NameEffects {
    /// `DEALLOCATE ALL` or `DISCARD ALL`: every name is dropped.
    pub drops_all: bool,
    /// Names a `DEALLOCATE name` drops.
    pub drops: Vec<String>,
    /// Names a SQL `PREPARE` may give another text (where the client's Parse made them first,
    /// PostgreSQL refuses it; where code dropped them, it succeeds).
    pub prepares: Vec<String>,
    /// User code may run ([`Verdict::code_free`] is false: a function, a `DO` block, a trigger of a
    /// write, a view, a cursor's query, a deferred trigger at `COMMIT`), which may deallocate any
    /// name and prepare it again (PL/pgSQL's `EXECUTE 'DEALLOCATE …'`): every name becomes stale.
    pub runs_code: bool,
    /// Of that code, what the text names itself (`DO`, `CALL`, a function not vetted read-only,
    /// text the policy could not read), as opposed to what a write's triggers or a view may run.
    pub names_code: bool,
}

impl NameEffects {
    /// True when names change at all.
    pub fn any(&self) -> bool {
        self.drops_all || self.runs_code || !self.drops.is_empty() || !self.prepares.is_empty()
    }
}

/// What `verdict`'s statements may do to protocol-level prepared statements.
pub fn name_effects(verdict: &Verdict) -> NameEffects {
    let mut effects = NameEffects {
        runs_code: !verdict.code_free,
        ..NameEffects::default()
    };
    for s in verdict.statements.iter() {
        effects.names_code |= s.unparsed
            || matches!(s.kind.as_str(), "DO" | "CALL")
            || s.functions.iter().any(|f| {
                let base = f.rsplit('.').next().unwrap_or(f);
                !crate::policy::functions::is_vetted_read_only(base)
            });
        match s.prepared.as_deref() {
            Some(PreparedUse::Deallocate { name: Some(name) }) => effects.drops.push(name.clone()),
            Some(PreparedUse::Deallocate { name: None }) => effects.drops_all = true,
            Some(PreparedUse::Prepare { name, .. }) => effects.prepares.push(name.clone()),
            _ => {}
        }
    }
    effects
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{classify, Action};
    use std::sync::Arc;

    fn verdict(sql: &str) -> Verdict {
        let statements = classify(sql);
        let code_free = statements
            .iter()
            .all(|s| s.action == Action::Allow && !crate::policy::runs_code_anyway(&s.kind));
        Verdict {
            action: statements
                .iter()
                .fold(Action::Allow, |a, s| a.strictest(s.action)),
            reasons: vec![],
            statements: Arc::from(statements),
            rule: "default".into(),
            review: None,
            code_free,
        }
    }

    fn run(state: &mut SqlPrepared, sql: &str, tags: &[&str]) {
        if let Some(mut p) = state.pending(&verdict(sql)) {
            p.tags = tags.iter().map(|t| t.to_string()).collect();
            state.settle(*p);
        }
    }

    #[test]
    fn only_a_confirmed_prepare_makes_a_name_known() {
        let mut s = SqlPrepared::default();
        assert!(s.pending(&verdict("SELECT 1")).is_none());
        assert_eq!(s.execute_stand_in(&verdict("EXECUTE p(1)")), None);
        // Failed: no PREPARE tag.
        run(&mut s, "PREPARE p AS SELECT $1", &[]);
        assert_eq!(s.execute_stand_in(&verdict("EXECUTE p(1)")), None);
        run(&mut s, "PREPARE p AS SELECT $1", &["PREPARE"]);
        assert_eq!(
            s.execute_stand_in(&verdict("EXECUTE P(nextval('s'))"))
                .as_deref(),
            Some("SELECT $1;\nSELECT (nextval('s'))")
        );
        assert_eq!(
            s.execute_stand_in(&verdict("EXECUTE p")).as_deref(),
            Some("SELECT $1")
        );
        // Not alone in its query: stays as judged.
        assert_eq!(s.execute_stand_in(&verdict("SELECT 1; EXECUTE p")), None);
        assert_eq!(s.execute_stand_in(&verdict("EXECUTE q")), None);
    }

    #[test]
    fn tags_confirm_the_prefix_that_ran() {
        let mut s = SqlPrepared::default();
        // The second PREPARE failed (the first error stops the query).
        run(
            &mut s,
            "PREPARE a AS SELECT 1; SELECT 2; PREPARE b AS SELECT 3",
            &["PREPARE", "SELECT 1"],
        );
        assert!(s.execute_stand_in(&verdict("EXECUTE a")).is_some());
        assert!(s.execute_stand_in(&verdict("EXECUTE b")).is_none());
        run(
            &mut s,
            "DEALLOCATE a; PREPARE b AS SELECT 3",
            &["DEALLOCATE", "PREPARE"],
        );
        assert!(s.execute_stand_in(&verdict("EXECUTE a")).is_none());
        assert!(s.execute_stand_in(&verdict("EXECUTE b")).is_some());
        // A failed DEALLOCATE forgets nothing.
        run(&mut s, "DEALLOCATE b", &[]);
        assert!(s.execute_stand_in(&verdict("EXECUTE b")).is_some());
        run(&mut s, "DISCARD ALL", &["DISCARD ALL"]);
        assert!(s.execute_stand_in(&verdict("EXECUTE b")).is_none());
        run(&mut s, "PREPARE c AS SELECT 1", &["PREPARE"]);
        run(&mut s, "DEALLOCATE ALL", &["DEALLOCATE ALL"]);
        assert!(s.execute_stand_in(&verdict("EXECUTE c")).is_none());
    }

    #[test]
    fn a_prepare_in_flight_when_names_are_forgotten_is_not_remembered() {
        let mut s = SqlPrepared::default();
        let mut early = s.pending(&verdict("PREPARE p AS SELECT 1")).unwrap();
        // E.g. an approved statement went upstream after it, and may have replaced `p`.
        s.forget_all();
        let mut late = s.pending(&verdict("PREPARE q AS SELECT 1")).unwrap();
        early.tags.push("PREPARE".into());
        late.tags.push("PREPARE".into());
        s.settle(*early);
        s.settle(*late);
        assert!(s.execute_stand_in(&verdict("EXECUTE p")).is_none());
        assert!(s.execute_stand_in(&verdict("EXECUTE q")).is_some());
    }

    #[test]
    fn deallocates_drop_names_and_code_makes_every_name_stale() {
        let effects = |sql: &str| name_effects(&verdict(sql));
        assert_eq!(
            effects("DEALLOCATE p"),
            NameEffects {
                drops: vec!["p".into()],
                ..NameEffects::default()
            }
        );
        assert!(effects("DEALLOCATE ALL").drops_all);
        assert!(effects("DISCARD ALL").drops_all);
        for code in [
            "DO $$ BEGIN EXECUTE 'DEALLOCATE pm'; END $$",
            "CALL p()",
            "SELECT my_function()",
            "SELECT pg_advisory_lock(1)",
            "SELEC 1",
            // A write's triggers, a cursor's query, deferred triggers at commit.
            "INSERT INTO log VALUES ('x')",
            "FETCH 1 FROM cur",
            "COMMIT",
            "EXECUTE q",
        ] {
            let e = effects(code);
            assert!(e.runs_code && !e.drops_all && e.drops.is_empty(), "{code}");
        }
        assert_eq!(effects("PREPARE p1 AS SELECT 1").prepares, ["p1"]);
        for plain in ["SELECT 1", "SELECT lower('A')", "BEGIN", "ROLLBACK"] {
            assert!(!effects(plain).any(), "{plain}");
        }
    }

    #[test]
    fn protocol_level_prepares_and_deallocates_change_names() {
        assert!(changes_names(&verdict("PREPARE p AS SELECT 1")));
        assert!(changes_names(&verdict("DEALLOCATE p")));
        assert!(changes_names(&verdict("DISCARD ALL")));
        assert!(!changes_names(&verdict("EXECUTE p")));
        assert!(!changes_names(&verdict("SELECT 1")));
    }
}
