//! Result columns computed from masked columns.
//!
//! Column rules find a column through RowDescription (its table and real name). A column computed by an
//! expression has neither — `lower(email)`, `email || ''`, `(SELECT ssn FROM people LIMIT 1)`, a UNION,
//! `row_to_json(u)` — so a rule naming `email` would never see it. [`exposure`] reads the statement instead:
//! when a select list anywhere in it mentions a column some rule masks (or a whole row), computed result
//! columns are redacted. A `RETURNING` list counts as a select list. Statements that don't parse count as
//! exposing (fail closed), and so do `FETCH`, `EXECUTE` and `MERGE`, whose rows come from a query this
//! statement doesn't show (a cursor's or a prepared statement's, declared earlier). Detectors still run on
//! every text column either way. The statistics catalogs (`pg_stats` and kin) hold sample values of every
//! column, so whatever a statement computes from them counts as exposing too.

use super::rules::CompiledRules;
use sqlparser::ast::{
    visit_expressions, CopySource, Expr, Ident, Query, SelectItem, SetExpr, Statement, TableFactor,
    Visit, Visitor,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use std::ops::ControlFlow;

/// Which computed columns of a result may carry a masked column's values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exposure {
    /// None of them.
    Nothing,
    /// Every computed column (the statement could not be mapped column by column).
    All,
    /// Output column `i` when `.0[i]` (a single SELECT whose select list maps one-to-one to the result).
    Columns(Vec<bool>),
}

impl Exposure {
    /// True when computed output column `i` must be redacted.
    pub fn covers(&self, i: usize) -> bool {
        match self {
            Self::Nothing => false,
            Self::All => true,
            Self::Columns(c) => c.get(i).copied().unwrap_or(true),
        }
    }
}

/// Which computed columns of `sql`'s `columns`-wide result may carry a masked column's values.
/// `view_columns` are the names of the columns of the views `sql` reads that carry one (see
/// [`statement_relations`]); `None` when they could not be learned, which exposes every computed
/// column of a statement that reads any relation.
pub fn exposure(
    sql: &str,
    rules: &CompiledRules,
    columns: usize,
    view_columns: Option<&[String]>,
) -> Exposure {
    match view_columns {
        Some(names) => exposure_with(sql, rules, Text::Statement(names), columns),
        None if rules.has_column_rules() && !statement_relations(sql).names.is_empty() => {
            Exposure::All
        }
        None => exposure_with(sql, rules, Text::Statement(&[]), columns),
    }
}

/// The relations a statement reads, and the CTEs it defines.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Relations {
    /// As written (`s.t`, `"Mixed"`), references to CTEs included: which a name means depends on
    /// scopes this reading does not follow.
    pub names: Vec<String>,
    /// The CTEs' names (lower-case unless quoted): a name among `names` that is one of them and no
    /// relation of the database is the CTE, not an unknown relation.
    pub ctes: Vec<String>,
}

/// The relations `sql` reads and the CTEs it defines, from one parse; none when it does not parse
/// (its exposure is then decided without them).
pub fn statement_relations(sql: &str) -> Relations {
    let mut relations = Relations::default();
    for statement in parse_bounded(sql).unwrap_or_default() {
        add_relations(&statement, &mut relations.names);
        add_ctes(&statement, &mut relations.ctes);
    }
    relations
}

/// The statements of `sql`, each as text of its own (`None` when it does not parse).
pub fn statement_texts(sql: &str) -> Option<Vec<String>> {
    Some(
        parse_bounded(sql)?
            .iter()
            .map(ToString::to_string)
            .collect(),
    )
}

/// Adds the relations `node` reads (as written, each once) to `names`: table factors, not set-returning
/// function calls in FROM (which the select-list reading judges as calls).
pub(super) fn add_relations(node: &impl Visit, names: &mut Vec<String>) {
    struct Relations<'a>(&'a mut Vec<String>);
    impl Visitor for Relations<'_> {
        type Break = ();
        fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
            if let TableFactor::Table {
                name, args: None, ..
            } = factor
            {
                let written = name.to_string();
                if !self.0.contains(&written) {
                    self.0.push(written);
                }
            }
            ControlFlow::Continue(())
        }
    }
    let _ = node.visit(&mut Relations(names));
}

/// Adds the names of the CTEs `statement` defines (lower-case unless quoted) to `ctes`.
fn add_ctes(statement: &Statement, ctes: &mut Vec<String>) {
    struct Ctes<'a>(&'a mut Vec<String>);
    impl Visitor for Ctes<'_> {
        type Break = ();
        fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
            for cte in query.with.iter().flat_map(|w| &w.cte_tables) {
                let name = &cte.alias.name;
                self.0.push(match name.quote_style {
                    Some(_) => name.value.clone(),
                    None => name.value.to_ascii_lowercase(),
                });
            }
            ControlFlow::Continue(())
        }
    }
    let _ = statement.visit(&mut Ctes(ctes));
}

/// True when relation name `written` (as in a statement) is one of `ctes`.
pub fn names_a_cte(written: &str, ctes: &[String]) -> bool {
    let bare = match written.strip_prefix('"').and_then(|w| w.strip_suffix('"')) {
        Some(quoted) => quoted.to_string(),
        None => written.to_ascii_lowercase(),
    };
    ctes.contains(&bare)
}

/// What kind of SQL is read.
#[derive(Clone, Copy)]
enum Text<'a> {
    /// A client's statement: `t.name` may be a function call on `t`'s whole row in attribute
    /// notation (`p.row_to_json`, `p.concat`, `p.array_agg`), which no catalog-free reading can tell
    /// from a column.
    /// With the (lower-case) names of the columns of the views it reads that carry a masked column:
    /// `upper(tax_id)` over a view's `ssn AS tax_id` is computed from a masked column.
    Statement(&'a [String]),
    /// A view definition as `pg_get_viewdef` prints it (function calls in function notation), with
    /// the (lower-case) names of the columns of the views it reads that carry a masked column.
    View(&'a [String]),
}

/// `sql` parsed, or `None` when it does not parse or holds an expression chain too long to walk without
/// overflowing the stack (see [`crate::policy::fallback::MAX_CHAIN_TOKENS`]); callers fail closed.
pub(super) fn parse_bounded(sql: &str) -> Option<Vec<Statement>> {
    if crate::policy::fallback::exceeds_chain_limit(sql)
        || crate::policy::fallback::has_unicode_identifier(sql)
    {
        return None;
    }
    Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()
}

/// True when the statements rename or spread columns in ways the name-based reading below cannot
/// follow: a column alias list (`people t(a, b, c)` makes `c` the third column, whatever its name), or
/// `*` / `TABLE` anywhere but the plain top-level select list (in a set operation or a subquery
/// their columns come out as computed ones, with no table to match). Callers then redact every
/// computed column.
fn defeats_name_tracking(statements: &[Statement]) -> bool {
    struct Finder {
        depth: usize,
        top_is_set_operation: bool,
        found: bool,
    }
    fn has_table(set: &SetExpr) -> bool {
        match set {
            SetExpr::Table(_) => true,
            SetExpr::SetOperation { left, right, .. } => has_table(left) || has_table(right),
            SetExpr::Query(q) => has_table(&q.body),
            _ => false,
        }
    }
    impl sqlparser::ast::Visitor for Finder {
        type Break = ();
        fn pre_visit_query(&mut self, query: &sqlparser::ast::Query) -> ControlFlow<()> {
            self.depth += 1;
            if self.depth == 1 {
                self.top_is_set_operation = !matches!(*query.body, SetExpr::Select(_));
            }
            if has_table(&query.body) && (self.depth > 1 || self.top_is_set_operation) {
                self.found = true;
            }
            ControlFlow::Continue(())
        }
        fn post_visit_query(&mut self, _query: &sqlparser::ast::Query) -> ControlFlow<()> {
            self.depth -= 1;
            ControlFlow::Continue(())
        }
        fn pre_visit_select(&mut self, select: &sqlparser::ast::Select) -> ControlFlow<()> {
            let spreads = select.projection.iter().any(|i| {
                matches!(
                    i,
                    SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
                )
            });
            if spreads && (self.depth > 1 || self.top_is_set_operation) {
                self.found = true;
            }
            ControlFlow::Continue(())
        }
        fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
            // Relations whose columns may be a table's (function arguments in FROM are read
            // elsewhere, and VALUES holds only the statement's own literals).
            let alias = match factor {
                TableFactor::Derived { subquery, .. }
                    if matches!(*subquery.body, SetExpr::Values(_)) =>
                {
                    None
                }
                // `generate_series(1, 3) AS g(n)`: a function call, not a table.
                TableFactor::Table { args: Some(_), .. } => None,
                TableFactor::Table { alias, .. }
                | TableFactor::Derived { alias, .. }
                | TableFactor::NestedJoin { alias, .. } => alias.as_ref(),
                _ => None,
            };
            if alias.is_some_and(|a| !a.columns.is_empty()) {
                self.found = true;
            }
            ControlFlow::Continue(())
        }
    }
    let mut finder = Finder {
        depth: 0,
        top_is_set_operation: false,
        found: false,
    };
    for statement in statements {
        finder.depth = 0;
        let _ = sqlparser::ast::Visit::visit(statement, &mut finder);
    }
    finder.found
}

/// As [`exposure`], for this kind of SQL.
fn exposure_with(sql: &str, rules: &CompiledRules, text: Text<'_>, columns: usize) -> Exposure {
    if !rules.has_column_rules() {
        return Exposure::Nothing;
    }
    let Some(statements) = parse_bounded(sql) else {
        return Exposure::All;
    };
    let seen = Seen::of(&statements);
    if seen.opaque
        || seen.reads_statistics()
        || names_statement_text(sql)
        || defeats_name_tracking(&statements)
    {
        return Exposure::All;
    }
    let exposing = |item: &SelectItem| item_exposes(item, &seen.relations, rules, text);
    let (outer, inner) = seen.outer_and_inner();
    // A masked column handed to a function or VALUES in FROM comes out as that relation's columns.
    if seen.from.iter().any(exposing) {
        return Exposure::All;
    }
    let any = outer.iter().chain(inner).any(exposing);
    // Column by column only when the outer select list is the result's shape and nothing nested (a
    // subquery or CTE an outer column could read through) mentions a masked column.
    let one_to_one = statements.len() == 1
        && seen.plain_top
        && outer.len() == columns
        && !outer.iter().any(|i| {
            matches!(
                i,
                SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
            )
        });
    match (any, one_to_one && !inner.iter().any(exposing)) {
        (false, _) => Exposure::Nothing,
        (true, true) => Exposure::Columns(outer.iter().map(exposing).collect()),
        (true, false) => Exposure::All,
    }
}

/// Which columns of a view (by position) its `definition` computes from a masked column — renaming one
/// counts, since the view's column name hides it. `reads` are the definitions of the views it reads
/// (however deeply): their columns carrying a masked column count as masked. A definition that doesn't
/// parse exposes every column.
pub fn view_exposure(definition: &str, reads: &[String], rules: &CompiledRules) -> Exposure {
    if !rules.has_column_rules() {
        return Exposure::Nothing;
    }
    let Some(extra) = exposed_names(reads, rules) else {
        return Exposure::All;
    };
    let Some(statements) = parse_bounded(definition) else {
        return Exposure::All;
    };
    let width = Seen::of(&statements).outer_and_inner().0.len();
    exposure_with(definition, rules, Text::View(&extra), width)
}

/// The output names (lower case) of the columns of the views `definitions` that carry a masked column,
/// under the rules and each other (repeated until nothing new is found, so a chain of views is followed).
/// `None` when a definition can't be read or an exposed column has no name to follow (fail closed).
fn exposed_names(definitions: &[String], rules: &CompiledRules) -> Option<Vec<String>> {
    let mut names: Vec<String> = Vec::new();
    loop {
        let known = names.len();
        for definition in definitions {
            let statements = parse_bounded(definition)?;
            let seen = Seen::of(&statements);
            let outer = seen.outer_and_inner().0;
            let exposure = exposure_with(definition, rules, Text::View(&names), outer.len());
            for (i, item) in outer.iter().enumerate() {
                if !exposure.covers(i) {
                    continue;
                }
                let name = output_name(item)?;
                if !names.contains(&name) {
                    names.push(name);
                }
            }
        }
        if names.len() == known {
            return Some(names);
        }
    }
}

/// The name a select-list item gives its column, as `pg_get_viewdef` prints it (lower case).
fn output_name(item: &SelectItem) -> Option<String> {
    let ident = match item {
        SelectItem::ExprWithAlias { alias, .. } => alias,
        SelectItem::UnnamedExpr(Expr::Identifier(i)) => i,
        SelectItem::UnnamedExpr(Expr::CompoundIdentifier(parts)) => parts.last()?,
        _ => return None,
    };
    Some(ident.value.to_lowercase())
}

/// For COPY (query) TO STDOUT, whose output columns are planned by name: true when `statements` (already
/// parsed) compute an output column from a masked column, or from one of `view_columns` (the
/// lower-case names of columns of the views it reads that carry a masked one). Plain column
/// references in the outermost select list are masked by that name, so only everything else counts.
pub fn exposes_beyond_named_columns(
    statements: &[Statement],
    rules: &CompiledRules,
    view_columns: &[String],
) -> bool {
    if !rules.has_column_rules() {
        return false;
    }
    // Output names say nothing once an alias list renamed columns by position
    // (`users u(x, y, name)` makes `name` the email).
    if defeats_name_tracking(statements) {
        return true;
    }
    let seen = Seen::of(statements);
    if seen.reads_statistics()
        || statements
            .iter()
            .any(|s| names_statement_text(&s.to_string()))
    {
        return true;
    }
    let (outer, inner) = seen.outer_and_inner();
    // A plain reference is a column masked by its name, unless it names a whole row (`SELECT t FROM
    // people t`), which holds every column.
    let named = |item: &&SelectItem| match item {
        SelectItem::UnnamedExpr(Expr::Identifier(i)) => !seen.relations.contains(&i.value),
        // `u.email` is masked by its output name, column or not; `p.row_to_json` may be a function.
        SelectItem::UnnamedExpr(Expr::CompoundIdentifier(parts)) => {
            !attribute_call(parts, &seen.relations, rules)
        }
        _ => false,
    };
    outer
        .iter()
        .filter(|item| !named(item))
        .chain(inner)
        .chain(&seen.from)
        .any(|item| item_exposes(item, &seen.relations, rules, Text::Statement(view_columns)))
}

/// Built-in functions and types that attribute notation can apply to a whole row (PostgreSQL 15's
/// `pg_catalog` functions taking one `record`, polymorphic or variadic `"any"` argument, and the
/// string and JSON types a row casts to in function notation, `p.text` being `text(p)`), sorted. User
/// functions called that way are held for review by the policy (see `engine::row_functions`).
const ROW_CALLABLE: &[&str] = &[
    "any_out",
    "anycompatible_out",
    "anycompatiblenonarray_out",
    "anyelement_out",
    "anynonarray_out",
    "array_agg",
    "bpchar",
    "char",
    "character",
    "citext",
    "concat",
    "count",
    "cume_dist",
    "dense_rank",
    "first_value",
    "hash_record",
    "json",
    "json_agg",
    "json_build_array",
    "json_build_object",
    "jsonb",
    "jsonb_agg",
    "jsonb_build_array",
    "jsonb_build_object",
    "lag",
    "last_value",
    "lead",
    "mode",
    "name",
    "num_nonnulls",
    "num_nulls",
    "percent_rank",
    "pg_collation_for",
    "pg_column_compression",
    "pg_column_size",
    "pg_typeof",
    "quote_literal",
    "quote_nullable",
    "rank",
    "record_out",
    "record_send",
    "row_to_json",
    "text",
    "to_json",
    "to_jsonb",
    "varchar",
    "xml",
];

/// True when `q.name` may be a function applied to relation `q`'s whole row in attribute notation
/// (PostgreSQL reads `p.to_json` as `to_json(p)` when `p` has no column `to_json`; aggregates and
/// variadic functions too: `p.array_agg`, `p.concat`): `q` names a relation of the statement, no rule
/// masks `name`, and `name` is one of [`ROW_CALLABLE`]. A column of that name is then over-masked;
/// any other qualified name (`o.amount` in `sum(o.amount)`) reads as the column it almost always is.
/// A subquery whose output has a column `name` (`FROM (SELECT t.typname AS name …) ti`, asyncpg's type
/// lookup) reads `ti.name` as that column, as PostgreSQL does, when every relation the statement names
/// `ti` has it (see [`RowNames::has_column`]).
fn attribute_call(parts: &[Ident], relations: &RowNames, rules: &CompiledRules) -> bool {
    let [.., qualifier, name] = parts else {
        return false;
    };
    let lower = name.value.to_lowercase();
    rules.column_style(&name.value).is_none()
        && relations.contains(&qualifier.value)
        && !relations.has_column(&qualifier.value, &name.value)
        && ROW_CALLABLE.binary_search(&lower.as_str()).is_ok()
}

/// The relation names and aliases of a statement, with the output columns of the subqueries whose
/// select lists name them. Names are kept as PostgreSQL compares them, lower-cased and cut to 63 bytes
/// (`<63 a's>x` and `<63 a's>y` are one name upstream), so two spellings of one name are one here.
#[derive(Default)]
struct RowNames {
    /// Every relation name and alias in FROM clauses (and a write's target), once per mention.
    names: Vec<String>,
    /// (alias, column names it certainly has), once per subquery read in FROM.
    columns: Vec<(String, Vec<String>)>,
}

/// An identifier as PostgreSQL compares it: lower-cased (quoted spellings too, which can only make
/// more names meet) and cut to NAMEDATALEN - 1 bytes at a character boundary.
fn name_key(name: &str) -> String {
    let mut key = name.to_lowercase();
    let mut cut = key.len().min(63);
    while !key.is_char_boundary(cut) {
        cut -= 1;
    }
    key.truncate(cut);
    key
}

impl RowNames {
    fn add_name(&mut self, name: &str) {
        self.names.push(name_key(name));
    }

    fn add_columns(&mut self, relation: &str, columns: &[String]) {
        self.columns.push((
            name_key(relation),
            columns.iter().map(|c| name_key(c)).collect(),
        ));
    }

    fn contains(&self, name: &str) -> bool {
        let key = name_key(name);
        self.names.contains(&key)
    }

    /// True when every mention of `relation` in the statement is a subquery with a `column`: a name
    /// an alias of a table shares anywhere (`FROM secrets t … (SELECT 1 AS text) t`) may be that
    /// table where the qualified name stands, and `t.text` its whole row as text. (A CTE is not
    /// trusted this way: which relation its name means depends on scopes this does not follow.)
    fn has_column(&self, relation: &str, column: &str) -> bool {
        let (relation, column) = (name_key(relation), name_key(column));
        let mentions = self.names.iter().filter(|n| **n == relation).count();
        let with_column = self
            .columns
            .iter()
            .filter(|(r, cols)| *r == relation && cols.contains(&column))
            .count();
        mentions > 0 && mentions == with_column
    }
}

/// The output column names a query certainly has: its alias list, else the select list's aliases and
/// plain column references (`*` and unnamed expressions add none).
fn output_columns(listed: &[sqlparser::ast::TableAliasColumnDef], query: &Query) -> Vec<String> {
    if !listed.is_empty() {
        return listed.iter().map(|c| c.name.value.to_lowercase()).collect();
    }
    let SetExpr::Select(select) = &*query.body else {
        return Vec::new();
    };
    select
        .projection
        .iter()
        .filter_map(|item| match item {
            SelectItem::ExprWithAlias { alias, .. } => Some(alias.value.to_lowercase()),
            SelectItem::UnnamedExpr(Expr::Identifier(i)) => Some(i.value.to_lowercase()),
            SelectItem::UnnamedExpr(Expr::CompoundIdentifier(parts)) => {
                parts.last().map(|i| i.value.to_lowercase())
            }
            _ => None,
        })
        .collect()
}

/// Catalogs holding sample values of every analysed column (most common values, histogram bounds),
/// masked ones included: whatever a statement computes from them may carry a masked value.
const STATISTICS: &[&str] = &[
    "pg_statistic",
    "pg_stats",
    "pg_stats_ext",
    "pg_stats_ext_exprs",
    "pg_statistic_ext_data",
];

/// True when `sql` holds a `FETCH` (a SQL cursor's rows, computed when it was declared).
pub fn fetches_from_a_cursor(sql: &str) -> bool {
    match parse_bounded(sql) {
        Some(statements) => statements
            .iter()
            .any(|s| matches!(s, Statement::Fetch { .. })),
        // Not parsed: maybe a FETCH (fail closed).
        None => true,
    }
}

/// True when a call of `name` is one of PostgreSQL's vetted built-in functions: unqualified or in
/// `pg_catalog`, and on the policy's read-only list.
fn is_builtin_call(name: &sqlparser::ast::ObjectName) -> bool {
    let parts: Vec<String> = name
        .0
        .iter()
        .map(|p| match p.as_ident() {
            Some(i) if i.quote_style.is_some() => i.value.clone(),
            Some(i) => i.value.to_ascii_lowercase(),
            None => p.to_string(),
        })
        .collect();
    match parts.as_slice() {
        [base] | [_, base] if parts.len() == 1 || parts[0] == "pg_catalog" => {
            crate::policy::functions::is_vetted_read_only(base)
        }
        // The SQL functions PostgreSQL defines in `information_schema` for its views (pgJDBC's
        // metadata queries call `_pg_expandarray`); only a superuser can add to that schema.
        [schema, base] if schema == "information_schema" => {
            crate::policy::functions::is_information_schema_helper(base)
        }
        _ => false,
    }
}

/// True for a statistics catalog's name ([`STATISTICS`]).
pub fn is_statistics_catalog(name: &str) -> bool {
    STATISTICS.contains(&name)
}

/// Views and functions showing other sessions' statement text, whose literals may be values of masked
/// columns: whatever a statement computes from them (`lower(query)`, a whole row, a view's renamed
/// column) may carry one. The plain `query` column is redacted by its table (see
/// `masking::shows_statement_text`).
const STATEMENT_TEXT: &[&str] = &[
    "pg_stat_activity",
    "pg_stat_statements",
    "pg_stat_get_activity",
    "pg_stat_get_backend_activity",
];

/// Functions that read tables or run queries named in their string arguments (`query_to_xml('SELECT
/// ssn FROM people', …)`, `table_to_xml('people', …)`, `ts_stat('SELECT …')`): the select list shows
/// no masked column, yet the result holds them.
const READS_FROM_TEXT: &[&str] = &[
    "query_to_xml",
    "cursor_to_xml",
    "table_to_xml",
    "schema_to_xml",
    "database_to_xml",
    "ts_stat",
    "ts_rewrite",
];

/// True when `sql` names a function of [`STATEMENT_TEXT`] or [`READS_FROM_TEXT`] anywhere (a call in a
/// select list is no relation; `query_to_xml` covers `query_to_xml_and_xmlschema`): identifiers can't
/// be spelled with escapes outside `U&""`, which fails closed earlier.
fn names_statement_text(sql: &str) -> bool {
    let lower = sql.to_ascii_lowercase();
    STATEMENT_TEXT
        .iter()
        .chain(READS_FROM_TEXT)
        .any(|name| lower.contains(name))
}

/// True when one select-list item mentions a masked column or a whole row of a relation.
fn item_exposes(
    item: &SelectItem,
    relations: &RowNames,
    rules: &CompiledRules,
    text: Text<'_>,
) -> bool {
    let (Text::View(extra) | Text::Statement(extra)) = text;
    let masked = |name: &str| {
        rules.column_style(name).is_some() || extra.iter().any(|e| e.eq_ignore_ascii_case(name))
    };
    let expr = match item {
        SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => e,
        // `*` and `t.*` list real columns, which RowDescription names.
        _ => return false,
    };
    // `row_to_json(t.*)`, `json_agg(t.*)`: a function over whole rows.
    if expr.to_string().contains(".*") {
        return true;
    }
    let hit = visit_expressions(expr, |e| {
        let exposed = match e {
            // A function that is not PostgreSQL's own may read a masked column itself (`SELECT
            // card_of(1)`), whatever its arguments.
            Expr::Function(f) => !is_builtin_call(&f.name),
            Expr::Identifier(i) => masked(&i.value) || relations.contains(&i.value),
            Expr::CompoundIdentifier(parts) => {
                parts.last().is_some_and(|i| masked(&i.value))
                    || (matches!(text, Text::Statement(_))
                        && attribute_call(parts, relations, rules))
            }
            _ => false,
        };
        if exposed {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    hit.is_break()
}

/// Every select-list item and every relation name or alias in a statement, subqueries included.
#[derive(Default)]
struct Seen {
    items: Vec<SelectItem>,
    relations: RowNames,
    /// How many of `items` belong to the outermost query.
    top: Option<usize>,
    /// The outermost query is a single SELECT (not a set operation or VALUES).
    plain_top: bool,
    /// Expressions in FROM that become rows: arguments of functions in FROM (`unnest(ARRAY[ssn])`,
    /// `json_each_text(to_json(p))`) and rows of VALUES, as select-list items.
    from: Vec<SelectItem>,
    /// A statement returns rows of a query it doesn't show: `FETCH` (a cursor's), `EXECUTE` (a prepared
    /// statement's), `MERGE` (its `RETURNING` is not parsed).
    opaque: bool,
}

impl Seen {
    fn of(statements: &[Statement]) -> Self {
        let mut seen = Self::default();
        for statement in statements {
            let _ = statement.visit(&mut seen);
        }
        seen
    }

    /// True when a relation of the statement is a statistics catalog ([`STATISTICS`]). (Those showing
    /// statements, [`STATEMENT_TEXT`], are found by name in the text: see [`names_statement_text`].)
    fn reads_statistics(&self) -> bool {
        self.relations
            .names
            .iter()
            .any(|r| STATISTICS.contains(&r.as_str()))
    }

    /// The outermost query's select-list items, and every other one.
    fn outer_and_inner(&self) -> (&[SelectItem], &[SelectItem]) {
        self.items
            .split_at(self.top.unwrap_or(0).min(self.items.len()))
    }

    fn select_items(&mut self, set: &SetExpr) {
        match set {
            SetExpr::Select(s) => self.items.extend(s.projection.iter().cloned()),
            SetExpr::SetOperation { left, right, .. } => {
                self.select_items(left);
                self.select_items(right);
            }
            SetExpr::Values(values) => self.from.extend(
                values
                    .rows
                    .iter()
                    .flat_map(|row| row.content.iter())
                    .map(|e| SelectItem::UnnamedExpr(e.clone())),
            ),
            // Nested queries are visited on their own.
            _ => {}
        }
    }
}

impl Visitor for Seen {
    type Break = ();

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<()> {
        // A write's target names a row its RETURNING list can read whole (`ON CONFLICT DO UPDATE …
        // RETURNING people::text` returns the stored row).
        if let Statement::Insert(i) = statement {
            if let sqlparser::ast::TableObject::TableName(name) = &i.table {
                if let Some(last) = name.0.last() {
                    self.relations.add_name(last.to_string().trim_matches('"'));
                }
            }
            if let Some(a) = &i.table_alias {
                self.relations.add_name(&a.alias.value);
            }
        }
        let returning = match statement {
            Statement::Insert(i) => i.returning.as_ref(),
            Statement::Update(u) => u.returning.as_ref(),
            Statement::Delete(d) => d.returning.as_ref(),
            // `CALL p(NULL)` returns a procedure's OUT and INOUT parameters: values its code
            // computed, which may be read from masked columns.
            Statement::Fetch { .. }
            | Statement::Execute { .. }
            | Statement::Merge(_)
            | Statement::Call(_) => {
                self.opaque = true;
                None
            }
            // `COPY pg_statistic TO STDOUT` reads the relation it names as a query's FROM would.
            Statement::Copy {
                source: CopySource::Table { table_name, .. },
                ..
            } => {
                if let Some(last) = table_name.0.last() {
                    self.relations.add_name(last.to_string().trim_matches('"'));
                }
                None
            }
            _ => None,
        };
        // A RETURNING list is the statement's result: the outermost select list, even when an
        // `INSERT … SELECT` or `UPDATE … FROM (subquery)` nests queries inside; in a CTE
        // (`WITH u AS (UPDATE … RETURNING ssn) SELECT …`) it is an inner one.
        if let Some(items) = returning {
            self.items.extend(items.iter().cloned());
            if self.top.is_none() {
                self.top = Some(self.items.len());
                self.plain_top = true;
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<()> {
        if self.top.is_none() {
            self.plain_top = matches!(*query.body, SetExpr::Select(_));
        }
        self.select_items(&query.body);
        self.top.get_or_insert(self.items.len());
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<()> {
        let computes = match factor {
            TableFactor::Table { args, .. } => args.is_some(),
            TableFactor::Derived { .. } | TableFactor::NestedJoin { .. } => false,
            _ => true,
        };
        // A function in FROM that is not PostgreSQL's own returns rows its code computed (`FROM
        // lf()` reading `SELECT ssn FROM people`), named as it likes: like a cursor's.
        match factor {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            }
            | TableFactor::Function { name, .. }
                if !is_builtin_call(name) =>
            {
                self.opaque = true;
            }
            _ => {}
        }
        if computes {
            let _ = visit_expressions(factor, |e| {
                self.from.push(SelectItem::UnnamedExpr(e.clone()));
                ControlFlow::<()>::Continue(())
            });
        }
        if let TableFactor::Table { name, .. } = factor {
            if let Some(last) = name.0.last() {
                self.relations.add_name(last.to_string().trim_matches('"'));
            }
        }
        if let TableFactor::Derived {
            subquery,
            alias: Some(alias),
            ..
        } = factor
        {
            let columns = output_columns(&alias.columns, subquery);
            self.relations.add_columns(&alias.name.value, &columns);
        }
        // Every alias names a row: `j` in `FROM (users u CROSS JOIN t) j` or `FROM (SELECT …) s` is
        // a whole row of whatever the join or subquery holds, masked columns included.
        let alias = match factor {
            TableFactor::Table { alias, .. }
            | TableFactor::Derived { alias, .. }
            | TableFactor::NestedJoin { alias, .. }
            | TableFactor::TableFunction { alias, .. }
            | TableFactor::Function { alias, .. }
            | TableFactor::UNNEST { alias, .. }
            | TableFactor::JsonTable { alias, .. }
            | TableFactor::Pivot { alias, .. }
            | TableFactor::Unpivot { alias, .. } => alias.as_ref(),
            _ => None,
        };
        if let Some(a) = alias {
            self.relations.add_name(&a.name.value);
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::masking::MaskingConfig;

    fn exposes(sql: &str, rules: &CompiledRules) -> bool {
        exposure(sql, rules, usize::MAX, Some(&[])) != Exposure::Nothing
    }

    fn copy_exposes(sql: &str, rules: &CompiledRules) -> bool {
        let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap();
        exposes_beyond_named_columns(&statements, rules, &[])
    }

    fn rules() -> CompiledRules {
        let cfg: MaskingConfig = toml::from_str(
            "[[rules]]\ncolumns = [\"*email*\", \"people.ssn\"]\nstyle = \"redact\"",
        )
        .unwrap();
        CompiledRules::compile(&cfg, None).unwrap()
    }

    #[test]
    fn a_chain_too_long_to_walk_exposes_everything_without_overflowing_the_stack() {
        // 200,000 `||` links: parsing and walking this tree aborted the gateway (stack overflow).
        let sql = format!("SELECT name{} FROM users", " || name".repeat(200_000));
        let (view, copy) = std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(move || {
                let r = rules();
                let view = view_exposure(&sql, &[], &r);
                let copy = crate::masking::copy::plan_copy(&format!("COPY ({sql}) TO STDOUT"), &r);
                (view, copy.is_err())
            })
            .unwrap()
            .join()
            .expect("masking must not overflow a 2 MiB stack");
        assert_eq!(view, Exposure::All);
        assert!(copy, "an unparsable COPY is refused");
        assert_eq!(
            exposure("SELECT name || name FROM users", &rules(), 1, Some(&[])),
            Exposure::Nothing
        );
    }

    #[test]
    fn whatever_is_computed_from_other_sessions_statements_is_exposed() {
        let r = rules();
        for sql in [
            "SELECT lower(query) FROM pg_stat_activity",
            "SELECT substr(a.query, 1, 200) FROM pg_catalog.pg_stat_activity a",
            "SELECT a FROM pg_stat_activity a",
            "SELECT (pg_stat_get_activity(NULL)).query",
            "SELECT s.query || '' FROM \"pg_stat_statements\" s",
            // Queries and tables named in strings.
            "SELECT query_to_xml('select ssn from people', true, false, '')",
            "SELECT table_to_xml('people', true, false, '')",
            "SELECT * FROM ts_stat('select to_tsvector(''simple'', ssn) from people')",
        ] {
            assert_eq!(exposure(sql, &r, 1, Some(&[])), Exposure::All, "{sql}");
        }
        // A view renaming the column: every column of it counts as masked.
        let view =
            " SELECT pg_stat_activity.pid, pg_stat_activity.query AS q FROM pg_stat_activity;";
        assert!(view_exposure(view, &[], &r).covers(1));
        // Elsewhere, computed columns over unmasked ones stay clear.
        assert_eq!(
            exposure("SELECT lower(query) FROM app_queries", &r, 1, Some(&[])),
            Exposure::Nothing
        );
    }

    #[test]
    fn computed_columns_over_masked_columns_are_found() {
        let r = rules();
        for (sql, exposing) in [
            ("SELECT lower(email) FROM users", true),
            ("SELECT email || '' AS contact FROM users", true),
            ("SELECT u.work_email::text FROM users u", true),
            ("SELECT (SELECT ssn FROM people LIMIT 1) AS x", true),
            ("SELECT name FROM a UNION SELECT email FROM users", true),
            ("SELECT row_to_json(u) FROM users u", true),
            // A whole row of an aliased join or subquery holds the masked columns too.
            ("SELECT j::text FROM (users u CROSS JOIN (SELECT 1) z) j", true),
            ("SELECT json_agg(j)::text FROM (users u CROSS JOIN LATERAL (SELECT 1) z) AS j", true),
            ("SELECT s FROM (SELECT * FROM users) s", true),
            ("SELECT to_jsonb(users.*) FROM users", true),
            ("SELECT json_agg(u.*) FROM users AS u", true),
            (
                "WITH c AS (SELECT upper(email) AS e FROM users) SELECT e FROM c",
                true,
            ),
            ("SELEC lower(email) FROM users", true),
            ("SELECT count(*) FROM users WHERE email = 'a@b.c'", false),
            ("SELECT id, name, amount * 2 FROM orders", false),
            ("SELECT * FROM users", false),
            // Attribute notation: `p.row_to_json` is row_to_json(p), a whole row.
            ("SELECT p.row_to_json FROM people p", true),
            ("SELECT upper(p.concat) FROM people p", true),
            ("SELECT people.array_agg FROM people", true),
            ("SELECT p.text FROM people p", true),
            ("SELECT length(p.Json) FROM people p", true),
            // Ordinary qualified columns in expressions stay clear: joins and grouping still work.
            (
                "SELECT c.id, count(o.id), sum(o.amount) FROM customers c JOIN orders o ON o.cid = c.id GROUP BY c.id",
                false,
            ),
            ("SELECT upper(p.city) || '-' || p.zip FROM people p", false),
            // A qualifier that names no relation of the statement is not a row.
            ("SELECT s.x FROM (SELECT 1 AS x) s", false),
            // Masked columns handed to functions or VALUES in FROM.
            ("SELECT x FROM people, unnest(ARRAY[ssn]) AS x", true),
            (
                "SELECT value FROM people p, json_each_text(to_json(p))",
                true,
            ),
            (
                "SELECT x FROM people p JOIN LATERAL (VALUES (p.ssn)) v(x) ON true",
                true,
            ),
            ("SELECT n FROM generate_series(1, 3) AS g(n)", false),
            ("SELECT * FROM (VALUES (1, 'a')) v(n, s)", false),
            // RETURNING is a select list; FETCH and EXECUTE show no query to read.
            ("UPDATE users SET n = 1 RETURNING lower(email)", true),
            ("DELETE FROM users u RETURNING u", true),
            (
                "INSERT INTO users (email) SELECT 'a' RETURNING email || ''",
                true,
            ),
            ("UPDATE users SET n = 1 RETURNING n * 2", false),
            // Statistics hold sample values of masked columns.
            (
                "SELECT histogram_bounds::text FROM pg_stats WHERE attname = 'ssn'",
                true,
            ),
            (
                "SELECT array_to_string(s.most_common_vals, ',') FROM pg_catalog.pg_stats s",
                true,
            ),
            ("SELECT stavalues1::text FROM pg_statistic", true),
            ("COPY pg_statistic (stavalues1) TO STDOUT", true),
            ("SELECT query FROM pg_stat_get_backend_activity(1) AS query", true),
            (
                "WITH u AS (UPDATE users SET n = 1 RETURNING lower(email) AS x) SELECT x FROM u",
                true,
            ),
            (
                "WITH u AS (UPDATE users SET n = 1 RETURNING n * 2 AS x) SELECT x FROM u",
                false,
            ),
            // Column alias lists rename a table's columns by position.
            ("SELECT md5(c), lower(c) FROM people t(a, b, c)", true),
            ("SELECT lower(c) FROM (SELECT * FROM people) s(a, b, c)", true),
            ("SELECT lower(j.z) FROM (people JOIN other USING (id)) AS j(a, b, z)", true),
            ("SELECT CASE WHEN true THEN c END FROM people t(a, b, c)", true),
            // `*` and TABLE in a set operation or subquery come out as computed columns.
            ("SELECT 0, 'x', 'y', 'z' UNION ALL TABLE people", true),
            ("SELECT 0, 'x', 'y', 'z' UNION ALL SELECT * FROM people", true),
            ("SELECT 0, 'x' UNION ALL SELECT p.* FROM people p", true),
            ("SELECT * FROM (SELECT 1, 2 UNION ALL TABLE people) s", true),
            // U&"…" names are not decoded: nothing can be told about them.
            ("SELECT lower(U&\"\\0073sn\") FROM people", true),
            ("FETCH ALL FROM c", true),
            ("FETCH NEXT IN c", true),
            ("EXECUTE p", true),
            ("EXECUTE p(1, 2)", true),
        ] {
            assert_eq!(exposes(sql, &r), exposing, "{sql}");
        }
    }

    #[test]
    fn view_columns_renaming_or_computed_from_masked_columns_are_found() {
        use Exposure::{All, Columns, Nothing};
        let r = rules();
        // Definitions as `pg_get_viewdef` prints them.
        for (definition, want) in [
            (
                " SELECT people.id,\n    people.ssn AS tax_id\n   FROM people;",
                Columns(vec![false, true]),
            ),
            (
                " SELECT u.id,\n    upper(u.email) AS contact,\n    u.name\n   FROM users u;",
                Columns(vec![false, true, false]),
            ),
            (
                " SELECT row_to_json(u.*) AS j\n   FROM users u;",
                Columns(vec![true]),
            ),
            (
                " SELECT u.id\n   FROM users u\n  WHERE u.email IS NOT NULL;",
                Nothing,
            ),
            (
                " SELECT s.x\n   FROM ( SELECT users.email AS x\n           FROM users) s;",
                All,
            ),
            (
                " SELECT users.name\n   FROM users\nUNION\n SELECT users.email AS name\n   FROM users;",
                All,
            ),
            ("SELEC garbled", All),
            // pg_stats as `pg_get_viewdef` prints it, shortened.
            (
                " SELECT n.nspname AS schemaname,\n    a.attname,\n    s.stavalues1 AS most_common_vals\n   FROM pg_statistic s\n     JOIN pg_attribute a ON a.attrelid = s.starelid;",
                All,
            ),
        ] {
            assert_eq!(view_exposure(definition, &[], &r), want, "{definition}");
        }
        let none = CompiledRules::compile(&MaskingConfig::default(), None).unwrap();
        assert_eq!(
            view_exposure(" SELECT people.ssn AS x FROM people;", &[], &none),
            Nothing
        );
    }

    #[test]
    fn views_over_views_follow_renamed_masked_columns() {
        use Exposure::{All, Columns, Nothing};
        let r = rules();
        let renames = " SELECT people.id,\n    people.ssn AS tax_id\n   FROM people;".to_string();
        let hashes = " SELECT d.id,\n    md5(d.tax_id) AS h\n   FROM directory d;".to_string();
        for (definition, reads, want) in [
            // directory renames ssn; a view over it renames or computes from tax_id.
            (
                " SELECT directory.id,\n    directory.tax_id AS x\n   FROM directory;",
                vec![renames.clone()],
                Columns(vec![false, true]),
            ),
            (
                " SELECT d.id,\n    upper(d.tax_id) AS y\n   FROM directory d;",
                vec![renames.clone()],
                Columns(vec![false, true]),
            ),
            // Three deep: h is computed from tax_id, which renames ssn.
            (
                " SELECT v.h AS z\n   FROM hashed v;",
                vec![hashes.clone(), renames.clone()],
                Columns(vec![true]),
            ),
            // Only filtering on the renamed column exposes nothing.
            (
                " SELECT directory.id\n   FROM directory\n  WHERE directory.tax_id IS NOT NULL;",
                vec![renames.clone()],
                Nothing,
            ),
            // A definition it reads that can't be parsed: everything.
            (
                " SELECT v.id\n   FROM v;",
                vec!["SELEC garbled".into()],
                All,
            ),
        ] {
            assert_eq!(view_exposure(definition, &reads, &r), want, "{definition}");
        }
    }

    #[test]
    fn procedure_outputs_and_user_functions_in_from_count_as_computed_by_code() {
        let r = rules();
        for (sql, exposing) in [
            ("CALL leak_proc(NULL)", true),
            ("CALL public.leak_proc(NULL, NULL)", true),
            ("SELECT * FROM lf()", true),
            ("SELECT v FROM lf() x", true),
            ("SELECT x.* FROM public.lf() x", true),
            ("SELECT * FROM users u, LATERAL lf2(u.id)", true),
            ("SELECT * FROM generate_series(1, 3)", false),
            ("SELECT * FROM pg_catalog.generate_series(1, 3) g", false),
            (
                "SELECT (i.keys).x FROM (SELECT information_schema._pg_expandarray(ARRAY[1, 2]) AS keys) i",
                false,
            ),
            (
                "SELECT * FROM information_schema._pg_expandarray(ARRAY[1, 2])",
                false,
            ),
            ("SELECT * FROM myschema._pg_expandarray(ARRAY[1])", true),
        ] {
            assert_eq!(exposes(sql, &r), exposing, "{sql}");
        }
    }

    #[test]
    fn a_subquery_or_cte_column_named_like_a_row_function_is_that_column() {
        let r = rules();
        for (sql, exposing) in [
            // asyncpg's type lookup reads `ti.name` of a subquery that has a column `name`.
            ("SELECT ti.name FROM (SELECT 'a' AS name) ti", false),
            (
                "SELECT ti.text FROM (SELECT t.typname AS text FROM pg_type t) ti",
                false,
            ),
            (
                "SELECT ti.name FROM (SELECT typname AS name FROM pg_type) AS ti UNION ALL SELECT ti.name FROM (SELECT typname AS name FROM pg_type) ti",
                false,
            ),
            // A CTE is not trusted: which relation its name means depends on scopes (a quoted
            // "People" is not people; a CTE's own body, an earlier sibling and another statement
            // see the table).
            (
                "WITH RECURSIVE tree(oid, name) AS (SELECT oid, typname FROM pg_type) SELECT tt.name FROM tree tt",
                true,
            ),
            ("WITH c AS (SELECT 1 AS name) SELECT c.name FROM c", true),
            (
                "WITH \"Users\" AS (SELECT 1 AS to_json) SELECT users.to_json->>'email' FROM users",
                true,
            ),
            (
                "WITH users AS (SELECT users.to_json FROM users) SELECT to_json FROM users",
                true,
            ),
            (
                "WITH users AS (SELECT 1 AS to_json) SELECT 1; SELECT users.to_json FROM users",
                true,
            ),
            // Identifiers PostgreSQL cuts to 63 bytes: `<A>x` is the table's row.
            (
                "SELECT aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaax::text FROM users AS aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaay",
                true,
            ),
            (
                "SELECT aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaax.to_json FROM users AS aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaay",
                true,
            ),
            // The INSERT target's stored row, returned by ON CONFLICT DO UPDATE.
            (
                "INSERT INTO users(id) VALUES (1) ON CONFLICT (id) DO UPDATE SET id = users.id RETURNING users::text",
                true,
            ),
            (
                "INSERT INTO users AS p (id) VALUES (1) ON CONFLICT (id) DO UPDATE SET id = p.id RETURNING p.to_json",
                true,
            ),
            // Without a column of that name, the whole row: `text(t)`.
            ("SELECT t.text FROM users t", true),
            ("SELECT ti.name FROM (SELECT * FROM users) ti", true),
            // The same alias names a table elsewhere in the statement.
            (
                "SELECT t.text FROM users t WHERE EXISTS (SELECT 1 FROM (SELECT 1 AS text) t)",
                true,
            ),
            // A CTE out of scope where the table of its name is read, or not the CTE at all.
            (
                "SELECT t.text FROM (WITH users AS (SELECT 1 AS text) SELECT 1) x, users t",
                true,
            ),
            (
                "WITH users AS (SELECT 1 AS text) SELECT t.text FROM public.users t",
                true,
            ),
            (
                "WITH users AS (SELECT 1 AS text) SELECT (WITH users AS (SELECT 2 AS x) SELECT u.text FROM users u)",
                true,
            ),
        ] {
            assert_eq!(exposes(sql, &r), exposing, "{sql}");
        }
    }

    #[test]
    fn row_callable_names_are_sorted_lower_case_so_binary_search_finds_each() {
        assert!(ROW_CALLABLE.windows(2).all(|w| w[0] < w[1]));
        for name in ROW_CALLABLE {
            assert_eq!(name.to_lowercase(), *name);
            assert!(ROW_CALLABLE.binary_search(name).is_ok());
        }
    }

    #[test]
    fn copy_queries_count_only_what_their_names_do_not_cover() {
        let r = rules();
        for (sql, exposing) in [
            ("COPY (SELECT id, email FROM users) TO STDOUT", false),
            ("COPY (SELECT u.email FROM users u) TO STDOUT", false),
            ("COPY (SELECT email AS contact FROM users) TO STDOUT", true),
            ("COPY (SELECT lower(email) AS e FROM users) TO STDOUT", true),
            (
                "COPY (SELECT x FROM (SELECT email AS x FROM users) s) TO STDOUT",
                true,
            ),
            (
                "COPY (SELECT id, amount * 2 AS twice FROM orders) TO STDOUT",
                false,
            ),
            ("COPY users TO STDOUT", false),
            ("COPY (SELECT p.to_json FROM people p) TO STDOUT", true),
            (
                "COPY (SELECT value FROM people p, json_each_text(to_json(p))) TO STDOUT",
                true,
            ),
            // A whole row in COPY holds the masked columns.
            ("COPY (SELECT u FROM users u) TO STDOUT", true),
            ("COPY (SELECT users FROM users) TO STDOUT", true),
            // Alias lists rename by position: `name` is the third column, the email.
            (
                "COPY (SELECT name FROM users u(x, y, name)) TO STDOUT",
                true,
            ),
            (
                "COPY (SELECT name FROM (users JOIN t USING (id)) AS j(id, a, name)) TO STDOUT",
                true,
            ),
            (
                "COPY (SELECT histogram_bounds FROM pg_stats) TO STDOUT",
                true,
            ),
        ] {
            assert_eq!(copy_exposes(sql, &r), exposing, "{sql}");
        }
    }

    #[test]
    fn a_single_select_is_judged_column_by_column() {
        let r = rules();
        let cols = |v: &[bool]| Exposure::Columns(v.to_vec());
        for (sql, n, expected) in [
            (
                "SELECT upper(email), n * 2 FROM people",
                2,
                cols(&[true, false]),
            ),
            (
                "SELECT id, lower(email) AS e FROM users",
                2,
                cols(&[false, true]),
            ),
            ("SELECT count(*) FROM users", 1, Exposure::Nothing),
            // Nested mentions, set operations and wildcards can't be mapped to columns.
            (
                "SELECT x, 1 FROM (SELECT lower(email) AS x FROM users) s",
                2,
                Exposure::All,
            ),
            (
                "SELECT 1 UNION SELECT length(email) FROM users",
                1,
                Exposure::All,
            ),
            ("SELECT *, lower(email) FROM users", 4, Exposure::All),
            ("SELECT 1; SELECT lower(email) FROM users", 1, Exposure::All),
            ("not sql at all", 1, Exposure::All),
            (
                "UPDATE users SET n = 1 RETURNING id, lower(email)",
                2,
                cols(&[false, true]),
            ),
            (
                "INSERT INTO users SELECT * FROM (SELECT lower(email) FROM users) s RETURNING id",
                1,
                Exposure::All,
            ),
            ("FETCH ALL FROM c", 1, Exposure::All),
            // A function that is not PostgreSQL's own may read a masked column itself.
            ("SELECT card_of(1), 2", 2, cols(&[true, false])),
            ("SELECT public.upper('a')", 1, cols(&[true])),
            (
                "SELECT pg_catalog.upper('a'), upper('b')",
                2,
                Exposure::Nothing,
            ),
        ] {
            assert_eq!(exposure(sql, &r, n, Some(&[])), expected, "{sql}");
        }
        // Computed over a view's column that carries a masked one (`ssn AS tax_id`).
        let over_view = "SELECT id, upper(tax_id), string_agg(contact, ',') FROM v_ren GROUP BY id";
        assert_eq!(
            statement_relations(over_view).names,
            ["v_ren"],
            "the relations to look up"
        );
        let views = ["tax_id".to_string(), "contact".to_string()];
        assert_eq!(
            exposure(over_view, &r, 3, Some(&views)),
            cols(&[false, true, true])
        );
        assert_eq!(exposure(over_view, &r, 3, Some(&[])), Exposure::Nothing);
        // Views not learned: every computed column of a statement reading a relation is redacted.
        assert_eq!(exposure(over_view, &r, 3, None), Exposure::All);
        assert_eq!(exposure("SELECT 1 + 1", &r, 1, None), Exposure::Nothing);
        assert_eq!(
            statement_relations("WITH c AS (SELECT 1) SELECT * FROM c JOIN s.t ON true, \"Mixed\""),
            Relations {
                names: vec!["c".into(), "s.t".into(), "\"Mixed\"".into()],
                ctes: vec!["c".into()],
            }
        );
        assert!(
            Exposure::Columns(vec![false]).covers(3),
            "unknown columns are covered"
        );
    }

    #[test]
    fn connections_without_column_rules_never_expose() {
        let cfg: MaskingConfig =
            toml::from_str("[[rules]]\ndetect = [\"email\"]\nstyle = \"redact\"").unwrap();
        let r = CompiledRules::compile(&cfg, None).unwrap();
        assert!(!exposes("SELECT lower(email) FROM users", &r));
    }
}
