//! Which table a result column comes from, so `table.column` and `schema.table.column` rules match the
//! real table instead of every column of that name.
//!
//! RowDescription names a column's table only by OID. A session keeps a bounded cache of OID → name
//! ([`TableNames`]); OIDs it has not seen are looked up through a [`TableLookup`] (a catalog query on a
//! separate upstream session, see `crate::upstream::CatalogLookup`) before the result is planned.
//!
//! **Fail closed:** a column whose table is not known for certain — table OID 0 (an expression or a
//! function result), a view or materialized view (the OID is the view's; its columns come from other
//! tables), a partition or inheritance child (its parent's rules must still apply) or parent (its rows
//! include its children's, which a rule may name), a failed or timed-out
//! lookup — is matched by column name only, as if the rule had no table part: it is over-masked, never
//! leaked. A view's definition is read as a statement is (see [`super::derived`]): a view column
//! computed from, or renaming, a masked column is redacted. While a failed lookup leaves a table
//! column's real name unknown, a column no rule matches by its output name is redacted on a connection
//! with column rules (that name may be an alias).

use super::derived::{self, Exposure};
use super::rules::CompiledRules;
use lru::LruCache;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};

/// Tables a session remembers.
pub const CAPACITY: usize = 1024;
/// How long a remembered name is trusted (another session may rename the table).
pub const TTL: Duration = Duration::from_secs(300);
/// How long one lookup may take before the result is planned without it.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// After a failed lookup, how long a session plans by column name only before it tries again.
pub const RETRY_AFTER: Duration = Duration::from_secs(30);

/// What a table OID turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relation {
    /// An ordinary or foreign table that is nobody's child or parent: rules match its name.
    Table {
        /// Schema (namespace) name.
        schema: String,
        /// Table name.
        table: String,
    },
    /// A view or materialized view, with its definition (`pg_get_viewdef`): match by column name, and
    /// redact the columns its definition computes from masked columns.
    View {
        /// The view's query.
        definition: String,
        /// The definitions of the views it reads, however deeply: a column one of them renames from
        /// a masked column counts as masked in the view's own definition.
        reads: Vec<String>,
    },
    /// A partition, inheritance child or parent, partitioned table, or other relation: match by
    /// column name.
    Derived,
    /// Not visible to the gateway's catalog session: created (or renamed) in the client's open
    /// transaction, or dropped since. Nothing is known of its columns, so every one is redacted
    /// (fail closed); it is looked up again for the next statement.
    Unseen,
}

/// Where a result column comes from, as far as the gateway knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnSource<'a> {
    /// Not known for certain: table-qualified rules match by their column part only.
    Unknown,
    /// A column of this table.
    Table {
        /// Schema name.
        schema: &'a str,
        /// Table name.
        table: &'a str,
    },
}

/// A catalog lookup failed; the result is planned by column name (over-masking).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("could not look up table names for masking rules ({0}); table-qualified rules match every column of that name until a lookup succeeds")]
pub struct LookupError(pub String);

/// Resolves table OIDs to relations (implemented over an upstream session).
#[async_trait::async_trait]
pub trait TableLookup: Send + Sync {
    /// The relation of each OID that exists; OIDs missing from the answer are unknown.
    async fn lookup(&self, oids: &[u32]) -> Result<Vec<(u32, Relation)>, LookupError>;

    /// The real name of each column `(table OID, attnum, name)` of these relations, so a rule on
    /// `email` still masks `SELECT email AS e`. A lookup that can't tell answers nothing: columns are
    /// then matched by their output name only.
    async fn columns(&self, _oids: &[u32]) -> Result<Vec<(u32, i16, String)>, LookupError> {
        Ok(Vec::new())
    }

    /// The OIDs each relation name as written in SQL (`s.t`, `"Mixed"`) may name: resolved on the
    /// lookup's own session, and a name without a schema also as that name in every schema (the
    /// client's search_path may differ); a name that is no relation is missing from the answer. A lookup that can't
    /// resolve names says so (the caller then fails closed).
    async fn oids_of(&self, _names: &[String]) -> Result<Vec<(String, u32)>, LookupError> {
        Err(LookupError(
            "this lookup cannot resolve relation names".into(),
        ))
    }
}

impl std::fmt::Debug for dyn TableLookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TableLookup")
    }
}

/// One session's cache of table OIDs; see the module docs.
#[derive(Debug, Default)]
pub struct TableNames {
    /// Allocated on the first answer: most sessions never need it.
    known: Option<LruCache<u32, (Relation, Instant, u64)>>,
    /// Real column names by table OID, `(attnum, name)`; trusted as long as the table's entry in `known`.
    columns: Option<LruCache<u32, Vec<(i16, String)>>>,
    /// Which columns of a view its definition computes from masked columns, by view OID (read once per
    /// lookup, under the rules of [`TableNames::resolve`]).
    views: Option<LruCache<u32, Exposure>>,
    retry_at: Option<Instant>,
    /// Statements ended so far in this session: a view is trusted for the statement it was looked up
    /// for only, since any session (this one through a function or DO block, or another one) may
    /// replace its definition between two statements.
    statement: u64,
}

impl TableNames {
    /// What `oid` is, if looked up less than [`TTL`] ago.
    fn fresh(&self, oid: u32) -> Option<&Relation> {
        let (relation, at, _) = self.known.as_ref()?.peek(&oid)?;
        (at.elapsed() < TTL).then_some(relation)
    }

    /// The source of a column of table `oid` (0 for none).
    pub fn source(&self, oid: u32) -> ColumnSource<'_> {
        match self.fresh(oid) {
            Some(Relation::Table { schema, table }) => ColumnSource::Table { schema, table },
            _ => ColumnSource::Unknown,
        }
    }

    /// The real name of column `attnum` of table `oid`, when known (an output name may be an alias).
    pub fn column_name(&self, oid: u32, attnum: i16) -> Option<&str> {
        self.fresh(oid)?;
        let names = self.columns.as_ref()?.peek(&oid)?;
        names
            .iter()
            .find(|(n, _)| *n == attnum)
            .map(|(_, name)| name.as_str())
    }

    /// True when column `attnum` of relation `oid` is a view column its definition computes from (or
    /// renames) a masked column. A view whose definition was not read under the rules counts as
    /// computing every column so (fail closed).
    pub fn view_exposes(&self, oid: u32, attnum: i16) -> bool {
        if !matches!(self.fresh(oid), Some(Relation::View { .. })) {
            return false;
        }
        let Ok(column) = usize::try_from(attnum - 1) else {
            return true;
        };
        self.views
            .as_ref()
            .and_then(|v| v.peek(&oid))
            .is_none_or(|e| e.covers(column))
    }

    /// True when relation `oid` is a view or materialized view, as last looked up.
    pub fn is_view(&self, oid: u32) -> bool {
        matches!(self.fresh(oid), Some(Relation::View { .. }))
    }

    /// True when relation `oid` was looked up and the catalog session could not see it.
    pub fn unseen(&self, oid: u32) -> bool {
        matches!(self.fresh(oid), Some(Relation::Unseen))
    }

    /// The names of the columns of relation `oid` that [`TableNames::view_exposes`] (none when `oid` is
    /// not a view); `None` when it is a view whose column names are not known, or was not looked up.
    pub fn view_exposed_names(&self, oid: u32) -> Option<Vec<String>> {
        match self.fresh(oid)? {
            Relation::Unseen => return None,
            Relation::View { .. } => {}
            _ => return Some(Vec::new()),
        }
        let names = self.columns.as_ref()?.peek(&oid)?;
        if names.is_empty() {
            return None;
        }
        Some(
            names
                .iter()
                .filter(|(attnum, _)| self.view_exposes(oid, *attnum))
                .map(|(_, name)| name.clone())
                .collect(),
        )
    }

    /// True when a whole row of relation `oid` (a result column with attnum 0, `SELECT t FROM people t`)
    /// may carry a value some column rule masks: a column of it matches a rule, it is a view computing
    /// one, or its columns are not known for certain (fail closed).
    pub fn row_exposes(&self, oid: u32, rules: &CompiledRules) -> bool {
        if self.fresh(oid).is_none() {
            return true;
        }
        let Some(names) = self
            .columns
            .as_ref()
            .and_then(|c| c.peek(&oid))
            .filter(|n| !n.is_empty())
        else {
            return true;
        };
        let source = self.source(oid);
        names.iter().any(|(attnum, name)| {
            rules.column_style_in(name, source).is_some() || self.view_exposes(oid, *attnum)
        })
    }

    /// Reads the definitions of the views in `relations` under `rules` (see [`TableNames::view_exposes`]).
    fn learn_views(&mut self, relations: &[(u32, Relation)], rules: &CompiledRules) {
        for (oid, relation) in relations {
            if let Relation::View { definition, reads } = relation {
                self.views
                    .get_or_insert_with(|| {
                        LruCache::new(NonZeroUsize::new(CAPACITY).unwrap_or(NonZeroUsize::MIN))
                    })
                    .put(*oid, derived::view_exposure(definition, reads, rules));
            }
        }
    }

    /// True when column `attnum` of table `oid` is a real table column whose name a recent lookup failed
    /// to learn: its output name may be an alias hiding a masked column, so it must not pass unmasked.
    pub fn name_lost(&self, oid: u32, attnum: i16) -> bool {
        oid != 0
            && attnum > 0
            && self.retry_at.is_some_and(|t| Instant::now() < t)
            && self.column_name(oid, attnum).is_none()
    }

    /// Records the real column names of the relations in `asked`, replacing what was known of them.
    pub fn learn_columns(&mut self, asked: &[u32], answer: Vec<(u32, i16, String)>) {
        let columns = self.columns.get_or_insert_with(|| {
            LruCache::new(NonZeroUsize::new(CAPACITY).unwrap_or(NonZeroUsize::MIN))
        });
        for &oid in asked {
            columns.put(oid, Vec::new());
        }
        for (oid, attnum, name) in answer {
            if let Some(names) = columns.get_mut(&oid) {
                names.push((attnum, name));
            }
        }
    }

    /// True when `oid` should be looked up before planning: a real table OID not known (or known too
    /// long ago, or a view looked up for an earlier statement), and no recent lookup failed.
    pub fn wants(&self, oid: u32) -> bool {
        oid != 0
            && self.retry_at.is_none_or(|t| Instant::now() >= t)
            && (self.fresh(oid).is_none() || self.view_from_earlier_statement(oid))
    }

    fn view_from_earlier_statement(&self, oid: u32) -> bool {
        self.known
            .as_ref()
            .and_then(|k| k.peek(&oid))
            .is_some_and(|(relation, _, statement)| {
                matches!(relation, Relation::View { .. } | Relation::Unseen)
                    && *statement != self.statement
            })
    }

    /// A statement ended (its result, or its error, is complete): views are looked up afresh for
    /// the next one.
    pub fn statement_ended(&mut self) {
        self.statement = self.statement.wrapping_add(1);
    }

    /// The distinct OIDs among `oids` that [`TableNames::wants`] looked up, in first-seen order.
    pub fn wanted(&self, oids: impl IntoIterator<Item = u32>) -> Vec<u32> {
        let mut wanted = Vec::new();
        for oid in oids {
            if self.wants(oid) && !wanted.contains(&oid) {
                wanted.push(oid);
            }
        }
        wanted
    }

    /// Records a lookup's answer for `asked`; OIDs it doesn't mention are remembered as unseen (their
    /// relation is invisible to the catalog session, or gone: its columns are redacted).
    pub fn learn(&mut self, asked: &[u32], answer: Vec<(u32, Relation)>) {
        let now = Instant::now();
        self.retry_at = None;
        let known = self.known.get_or_insert_with(|| {
            LruCache::new(NonZeroUsize::new(CAPACITY).unwrap_or(NonZeroUsize::MIN))
        });
        for &oid in asked {
            known.put(oid, (Relation::Unseen, now, self.statement));
        }
        for (oid, relation) in answer {
            known.put(oid, (relation, now, self.statement));
        }
    }

    /// Notes a failed lookup: plan by column name until [`RETRY_AFTER`] has passed.
    pub fn failed(&mut self) {
        self.retry_at = Some(Instant::now() + RETRY_AFTER);
    }

    /// Forgets everything (after DDL in this session: a table may have been renamed or replaced).
    pub fn clear(&mut self) {
        self.known = None;
        self.columns = None;
        self.views = None;
    }

    /// Looks `oids` up (bounded by [`LOOKUP_TIMEOUT`]) and records the answer or the failure; views'
    /// definitions are read under `rules`.
    pub async fn resolve(&mut self, lookup: &dyn TableLookup, oids: &[u32], rules: &CompiledRules) {
        let both = async {
            let relations = lookup.lookup(oids).await?;
            let columns = lookup.columns(oids).await?;
            Ok::<_, LookupError>((relations, columns))
        };
        match tokio::time::timeout(LOOKUP_TIMEOUT, both).await {
            Ok(Ok((relations, columns))) => {
                self.learn_views(&relations, rules);
                self.learn(oids, relations);
                self.learn_columns(oids, columns);
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "table lookup for masking failed");
                self.failed();
            }
            Err(_) => {
                tracing::warn!(
                    timeout_ms = LOOKUP_TIMEOUT.as_millis() as u64,
                    "table lookup for masking timed out; matching table-qualified rules by column name"
                );
                self.failed();
            }
        }
    }
}

impl TableNames {
    /// The names of the columns of the views among a statement's `relations` that carry a masked
    /// column, looked up through `lookup`; `None` when that can't be learned.
    pub async fn view_columns_of(
        &mut self,
        lookup: &dyn TableLookup,
        relations: &derived::Relations,
        rules: &CompiledRules,
    ) -> Option<Vec<String>> {
        let derived::Relations { names, ctes } = relations;
        if names.is_empty() {
            return Some(Vec::new());
        }
        let found = tokio::time::timeout(LOOKUP_TIMEOUT, lookup.oids_of(names))
            .await
            .ok()?
            .map_err(|e| tracing::warn!(error = %e, "relation lookup for masking failed"))
            .ok()?;
        let wanted = self.wanted(found.iter().map(|(_, oid)| *oid));
        if !wanted.is_empty() {
            self.resolve(lookup, &wanted, rules).await;
        }
        self.view_columns_among(names, ctes, |n| {
            found
                .iter()
                .filter(|(f, _)| f == n)
                .map(|(_, oid)| *oid)
                .collect()
        })
    }

    /// The names of the columns carrying a masked column of the views among the relations `names`,
    /// each resolved to its OIDs by `oids_of` (none: no relation answers to the name); `None` when
    /// that can't be known: a name no relation answers to (created in the client's open transaction,
    /// say, and so maybe a view over anything) that is not one of the `ctes`, or a view whose columns
    /// are not known.
    pub fn view_columns_among(
        &self,
        names: &[String],
        ctes: &[String],
        oids_of: impl Fn(&str) -> Vec<u32>,
    ) -> Option<Vec<String>> {
        let mut exposed = Vec::new();
        for name in names {
            let oids = oids_of(name);
            if oids.is_empty() && !derived::names_a_cte(name, ctes) {
                return None;
            }
            for oid in oids {
                exposed.extend(self.view_exposed_names(oid)?);
            }
        }
        Some(exposed)
    }
}

/// True for DDL command tags after which cached table names may be stale.
pub fn invalidates_names(command_tag: &[u8]) -> bool {
    [&b"ALTER "[..], b"DROP ", b"CREATE "]
        .iter()
        .any(|p| command_tag.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Result<Vec<(u32, Relation)>, LookupError>);

    #[async_trait::async_trait]
    impl TableLookup for Fixed {
        async fn lookup(&self, _oids: &[u32]) -> Result<Vec<(u32, Relation)>, LookupError> {
            self.0.clone()
        }
    }

    fn no_rules() -> CompiledRules {
        CompiledRules::compile(&Default::default(), None).unwrap()
    }

    fn table(schema: &str, table: &str) -> Relation {
        Relation::Table {
            schema: schema.into(),
            table: table.into(),
        }
    }

    #[tokio::test]
    async fn answers_are_remembered_and_missing_oids_fall_back_to_column_names() {
        let mut names = TableNames::default();
        assert!(names.wants(10) && names.wants(11) && !names.wants(0));
        let lookup = Fixed(Ok(vec![(10, table("shop", "customers"))]));
        names.resolve(&lookup, &[10, 11], &no_rules()).await;
        assert_eq!(
            names.source(10),
            ColumnSource::Table {
                schema: "shop",
                table: "customers"
            }
        );
        assert_eq!(names.source(11), ColumnSource::Unknown);
        assert!(!names.wants(10) && !names.wants(11));
        assert_eq!(names.source(0), ColumnSource::Unknown);
        names.clear();
        assert!(names.wants(10));
    }

    #[tokio::test]
    async fn a_failed_lookup_plans_by_column_name_and_waits_before_retrying() {
        let mut names = TableNames::default();
        names
            .resolve(
                &Fixed(Err(LookupError("refused".into()))),
                &[10],
                &no_rules(),
            )
            .await;
        assert_eq!(names.source(10), ColumnSource::Unknown);
        assert!(!names.wants(10), "no lookup storm after a failure");
    }

    #[test]
    fn real_column_names_are_known_only_with_their_table() {
        let mut names = TableNames::default();
        names.learn_columns(&[7], vec![(7, 2, "email".into())]);
        assert_eq!(names.column_name(7, 2), None, "no table entry yet");
        names.learn(&[7], vec![(7, table("public", "customers"))]);
        assert_eq!(names.column_name(7, 2), Some("email"));
        assert_eq!(names.column_name(7, 3), None);
        assert_eq!(names.column_name(0, 2), None);
        names.clear();
        assert_eq!(names.column_name(7, 2), None);
    }

    #[tokio::test]
    async fn a_view_is_trusted_for_the_statement_it_was_looked_up_for_only() {
        let mut names = TableNames::default();
        let view = Relation::View {
            definition: " SELECT people.id FROM people;".into(),
            reads: Vec::new(),
        };
        let lookup = Fixed(Ok(vec![(10, table("shop", "customers")), (20, view)]));
        names.resolve(&lookup, &[10, 20], &no_rules()).await;
        assert!(!names.wants(10) && !names.wants(20));
        // Planned from what was just read; the next statement may see a replaced definition.
        assert!(!names.view_exposes(20, 1));
        names.statement_ended();
        assert!(names.wants(20), "the view is read again");
        assert!(!names.wants(10), "a table's name is kept");
        names.resolve(&lookup, &[20], &no_rules()).await;
        assert!(!names.wants(20));
    }

    #[test]
    fn ddl_tags_invalidate_and_others_do_not() {
        assert!(invalidates_names(b"ALTER TABLE"));
        assert!(invalidates_names(b"DROP VIEW"));
        assert!(!invalidates_names(b"SELECT 3"));
    }
}
