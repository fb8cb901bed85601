//! Which database functions attribute notation could call on a row, per connection.
//!
//! PostgreSQL reads `q.name` as `name(q)` when `q` is a row with no column `name`, so
//! `SELECT p.archive FROM people p` runs a user function `archive(people)` that may write. The policy
//! reads no catalog; it keeps the `name` of every `q.name` ([`StatementFacts::qualified_names`]) and
//! the engine hands it the names of the functions that could be called that way: functions outside
//! `pg_catalog` and `information_schema` callable with one argument of a composite type or of a
//! polymorphic or record type. They are read when the gateway starts and every
//! [`REFRESH`]; until the first read succeeds, no such call is recognised (the statement itself can
//! only run once the database answers).
//!
//! The same read lists the functions outside `pg_catalog` that share a name with a vetted read-only
//! function ([`DatabaseFunctions::shadows`]): PostgreSQL resolves an unqualified call by argument types
//! before schema order, so `public.length(int)` captures `length(1)` even with `pg_catalog` first in
//! `search_path`. Extension-owned functions count too: `ALTER EXTENSION … ADD FUNCTION` adopts any
//! function, so membership proves nothing about what one does.
//!
//! [`StatementFacts::qualified_names`]: crate::policy::StatementFacts::qualified_names

use crate::policy::DatabaseFunctions;
use crate::upstream::{UpstreamPool, UpstreamTarget};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, RwLock};
use std::time::Duration;

/// How often the function lists are read again.
pub const REFRESH: Duration = Duration::from_secs(30);

/// One read for the lists, rows of `(list, name, function)`: `row` rows name user functions
/// callable on a whole row with one argument (the others having defaults); `shadow` rows name a vetted
/// read-only function and a `schema.name` outside `pg_catalog` that shares its name; `view` rows name a
/// view and its definition (`pg_get_viewdef`), which [`views_that_run_code`] reads. The second part
/// names its operators' schema so that it reads only built-ins whatever the database defines.
///
/// `SET LOCAL jit = off` first (the two run as one implicit transaction, which the setting does not
/// outlive): the recursive parts' cost estimates pass `jit_above_cost`, and compiling the plan took
/// nine seconds where running it takes a tenth of one.
static QUERY: LazyLock<String> = LazyLock::new(|| {
    let vetted: Vec<&str> = crate::policy::functions::read_only_names().collect();
    format!(
        "SET LOCAL jit = off; WITH RECURSIVE {CODE_CTES} \
         SELECT DISTINCT 'row', p.proname::text, NULL::text \
         FROM pg_catalog.pg_proc p \
         JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
         JOIN pg_catalog.pg_type t ON t.oid = p.proargtypes[0] \
         LEFT JOIN pg_catalog.pg_type e ON e.oid OPERATOR(pg_catalog.=) t.typelem \
           AND p.provariadic OPERATOR(pg_catalog.<>) 0::pg_catalog.oid \
         WHERE (n.nspname NOT IN ('pg_catalog', 'information_schema') OR p.oid >= 16384) \
           AND p.pronargs >= 1 AND p.pronargs - p.pronargdefaults <= 1 \
           AND (t.typtype IN ('c', 'p', 'd') OR t.typname IN ('record', 'anyelement') \
                OR e.typtype OPERATOR(pg_catalog.=) ANY ('{{c,p,d}}'::pg_catalog.\"char\"[])) \
         UNION ALL \
         SELECT DISTINCT 'shadow', p.proname::text, \
           pg_catalog.quote_ident(n.nspname) OPERATOR(pg_catalog.||) '.' OPERATOR(pg_catalog.||) pg_catalog.quote_ident(p.proname) \
         FROM pg_catalog.pg_proc p \
         JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
         WHERE (n.nspname OPERATOR(pg_catalog.<>) 'pg_catalog' OR p.oid OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid) \
           AND p.proname OPERATOR(pg_catalog.=) ANY ('{{{}}}'::pg_catalog.name[]) \
         UNION ALL \
         SELECT 'view', c.relname::text, pg_catalog.pg_get_viewdef(c.oid) \
         FROM pg_catalog.pg_class c \
         JOIN pg_catalog.pg_namespace cn ON cn.oid OPERATOR(pg_catalog.=) c.relnamespace \
         WHERE c.relkind OPERATOR(pg_catalog.=) 'v' \
           AND cn.nspname OPERATOR(pg_catalog.<>) ALL ('{{pg_catalog,information_schema}}'::pg_catalog.name[]) \
         UNION ALL {CODE_ROWS}",
        // The vetted names are lower-case words: nothing in them needs quoting in an array literal.
        vetted.join(",")
    )
});

/// Functions that may do more than compute a value: outside `pg_catalog`, those not written in C
/// (`internal` or `c`) or declared volatile (a SQL or PL function of any volatility can reach a volatile
/// writer), and `internal` ones running a volatile built-in's code whatever volatility they declare; in
/// `pg_catalog`, the volatile ones. `fn` names each as `schema.name`. Every operator here
/// is spelled `OPERATOR(pg_catalog.…)`, so the read runs no operator the database defines itself.
const CODE_CTES: &str = "unsafe AS ( \
      SELECT p.oid, pg_catalog.concat(pg_catalog.quote_ident(n.nspname), '.', pg_catalog.quote_ident(p.proname)) AS fn \
      FROM pg_catalog.pg_proc p \
      JOIN pg_catalog.pg_namespace n ON n.oid OPERATOR(pg_catalog.=) p.pronamespace \
      JOIN pg_catalog.pg_language l ON l.oid OPERATOR(pg_catalog.=) p.prolang \
      WHERE CASE WHEN n.nspname OPERATOR(pg_catalog.=) 'pg_catalog' AND p.oid OPERATOR(pg_catalog.<) 16384::pg_catalog.oid \
                 THEN p.provolatile OPERATOR(pg_catalog.=) 'v' \
                 ELSE NOT (l.lanname OPERATOR(pg_catalog.=) ANY ('{internal,c}'::pg_catalog.name[]) \
                           AND p.provolatile OPERATOR(pg_catalog.<>) 'v') \
                      OR (l.lanname OPERATOR(pg_catalog.=) 'internal' AND EXISTS ( \
                          SELECT 1 FROM pg_catalog.pg_proc b \
                          WHERE b.prosrc OPERATOR(pg_catalog.=) p.prosrc \
                            AND b.prolang OPERATOR(pg_catalog.=) p.prolang \
                            AND b.provolatile OPERATOR(pg_catalog.=) 'v' \
                            AND b.oid OPERATOR(pg_catalog.<) 16384::pg_catalog.oid)) END), \
    coded AS ( \
      SELECT x.typ, pg_catalog.concat('its cast from ', c.castsource::pg_catalog.regtype, ' to ', \
             c.casttarget::pg_catalog.regtype, ' runs ', u.fn) AS why \
      FROM pg_catalog.pg_cast c JOIN unsafe u ON u.oid OPERATOR(pg_catalog.=) c.castfunc \
      CROSS JOIN LATERAL (VALUES (c.castsource), (c.casttarget)) AS x(typ) \
      UNION ALL \
      SELECT r.rngtypid, pg_catalog.concat('its range support runs ', u.fn) \
      FROM pg_catalog.pg_range r JOIN unsafe u \
        ON u.oid OPERATOR(pg_catalog.=) ANY (ARRAY[r.rngcanonical, r.rngsubdiff]::pg_catalog.oid[]) \
      UNION ALL \
      SELECT x.typ, pg_catalog.concat('its operator ', o.oprname, ' runs ', u.fn) \
      FROM pg_catalog.pg_operator o JOIN unsafe u ON u.oid OPERATOR(pg_catalog.=) o.oprcode \
      CROSS JOIN LATERAL (VALUES (o.oprleft), (o.oprright)) AS x(typ) \
      UNION ALL \
      SELECT x.typ, pg_catalog.concat('its operator class support runs ', u.fn) \
      FROM pg_catalog.pg_amproc a JOIN unsafe u ON u.oid OPERATOR(pg_catalog.=) a.amproc \
      CROSS JOIN LATERAL (VALUES (a.amproclefttype), (a.amprocrighttype)) AS x(typ)), \
    edges(outer_typ, inner_typ, how) AS ( \
      SELECT o.oid, o.typbasetype, 'a domain over' FROM pg_catalog.pg_type o \
      WHERE o.typbasetype OPERATOR(pg_catalog.<>) 0::pg_catalog.oid \
      UNION ALL SELECT o.oid, o.typelem, 'an array of' FROM pg_catalog.pg_type o \
      WHERE o.typelem OPERATOR(pg_catalog.<>) 0::pg_catalog.oid \
      UNION ALL SELECT c.oid, a.atttypid, 'a row type holding' FROM pg_catalog.pg_attribute a \
      JOIN pg_catalog.pg_type c ON c.typrelid OPERATOR(pg_catalog.=) a.attrelid \
      WHERE a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped \
      UNION ALL SELECT x.typ, r.rngsubtype, 'a range of' FROM pg_catalog.pg_range r \
      CROSS JOIN LATERAL (VALUES (r.rngtypid), (r.rngmultitypid)) AS x(typ)), \
    user_coded(typ, why) AS ( \
      SELECT c.typ, c.why FROM coded c \
      WHERE c.typ OPERATOR(pg_catalog.>=) 16384::pg_catalog.oid \
      UNION \
      SELECT e.outer_typ, pg_catalog.concat('it is ', e.how, ' ', c.typ::pg_catalog.regtype, ', whose ', c.why) \
      FROM edges e JOIN coded c ON e.inner_typ OPERATOR(pg_catalog.=) c.typ \
      WHERE c.typ OPERATOR(pg_catalog.<) 16384::pg_catalog.oid AND e.how OPERATOR(pg_catalog.<>) 'a row type holding' \
      UNION \
      SELECT e.outer_typ, pg_catalog.concat('it is ', e.how, ' ', u.typ::pg_catalog.regtype, ', whose ', u.why) \
      FROM edges e JOIN user_coded u ON e.inner_typ OPERATOR(pg_catalog.=) u.typ), \
    checked(typ, def) AS ( \
      SELECT k.contypid, pg_catalog.pg_get_constraintdef(k.oid) FROM pg_catalog.pg_constraint k \
      WHERE k.contype OPERATOR(pg_catalog.=) 'c' AND k.contypid OPERATOR(pg_catalog.<>) 0::pg_catalog.oid \
      UNION \
      SELECT e.outer_typ, c.def FROM edges e JOIN checked c ON e.inner_typ OPERATOR(pg_catalog.=) c.typ \
      JOIN pg_catalog.pg_type ot ON ot.oid OPERATOR(pg_catalog.=) e.outer_typ \
      LEFT JOIN pg_catalog.pg_class oc ON oc.oid OPERATOR(pg_catalog.=) ot.typrelid \
      WHERE oc.oid IS NULL OR oc.relkind OPERATOR(pg_catalog.=) 'c'), \
    lineage(rel, anc) AS ( \
      SELECT c.oid, c.oid FROM pg_catalog.pg_class c \
      WHERE c.relkind OPERATOR(pg_catalog.=) ANY ('{r,p,f,m}'::pg_catalog.\"char\"[]) \
      UNION \
      SELECT l.rel, h.inhparent FROM lineage l \
      JOIN pg_catalog.pg_inherits h ON h.inhrelid OPERATOR(pg_catalog.=) l.anc)";

/// Rows naming what makes PostgreSQL run user code with no function in a statement's text: `type` rows
/// (a user type whose casts, operators, operator classes or range support run such code, by name),
/// `column` rows (a table or view with a column of such a type, whose reading may cast or compare
/// it; or a table whose index expressions or predicates, extended statistics, CHECK constraints or
/// partition key call such code: the planner folds constant calls of immutable functions there
/// while planning a read, and such a function may call a volatile one), `operator` rows (an operator between built-in types, spelled like a built-in one, running
/// such code) and `domain` rows (a domain and its CHECK, which [`lists`] classifies).
const CODE_ROWS: &str = "SELECT DISTINCT 'type', t.typname::text, c.why \
      FROM user_coded c JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) c.typ \
    UNION ALL \
    SELECT DISTINCT 'column', r.relname::text, \
      pg_catalog.concat('column ', pg_catalog.quote_ident(a.attname), ' has type ', \
      a.atttypid::pg_catalog.regtype, ': ', c.why) \
      FROM user_coded c \
      JOIN pg_catalog.pg_attribute a ON a.atttypid OPERATOR(pg_catalog.=) c.typ \
      JOIN pg_catalog.pg_class r ON r.oid OPERATOR(pg_catalog.=) a.attrelid \
      WHERE a.attnum OPERATOR(pg_catalog.>) 0 AND NOT a.attisdropped \
        AND r.relkind OPERATOR(pg_catalog.=) ANY ('{r,v,m,p,f}'::pg_catalog.\"char\"[]) \
    UNION ALL \
    SELECT DISTINCT 'operator', o.oprname::text, pg_catalog.concat(o.oid::pg_catalog.regoperator, ' runs ', u.fn) \
      FROM pg_catalog.pg_operator o JOIN unsafe u ON u.oid OPERATOR(pg_catalog.=) o.oprcode \
      WHERE o.oprleft OPERATOR(pg_catalog.<) 16384::pg_catalog.oid \
        AND o.oprright OPERATOR(pg_catalog.<) 16384::pg_catalog.oid \
    UNION ALL \
    SELECT DISTINCT 'domain', t.typname::text, c.def \
      FROM checked c JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) c.typ \
    UNION ALL \
    SELECT 'type', t.typname::text, c.why \
      FROM coded c JOIN pg_catalog.pg_type t ON t.oid OPERATOR(pg_catalog.=) c.typ \
      WHERE c.typ OPERATOR(pg_catalog.<) 16384::pg_catalog.oid \
    UNION ALL \
    SELECT DISTINCT 'global', '', pg_catalog.concat('an implicit cast from ', c.castsource::pg_catalog.regtype, \
      ' to ', c.casttarget::pg_catalog.regtype, ' runs ', u.fn, ', and PostgreSQL applies it wherever the types meet') \
      FROM pg_catalog.pg_cast c JOIN unsafe u ON u.oid OPERATOR(pg_catalog.=) c.castfunc \
      WHERE c.castcontext OPERATOR(pg_catalog.<>) 'e' \
        AND c.castsource OPERATOR(pg_catalog.<) 16384::pg_catalog.oid \
        AND c.casttarget OPERATOR(pg_catalog.<) 16384::pg_catalog.oid \
    UNION ALL \
    SELECT DISTINCT 'global', '', pg_catalog.concat('an implicit cast from the row type ', \
      c.castsource::pg_catalog.regtype, ' to ', c.casttarget::pg_catalog.regtype, \
      ' lets attribute notation on such rows (q.name) call any function of ', c.casttarget::pg_catalog.regtype) \
      FROM pg_catalog.pg_cast c JOIN pg_catalog.pg_type s ON s.oid OPERATOR(pg_catalog.=) c.castsource \
      WHERE c.castcontext OPERATOR(pg_catalog.=) 'i' AND s.typtype OPERATOR(pg_catalog.=) 'c' \
    UNION ALL \
    SELECT DISTINCT 'global', '', pg_catalog.concat('the default ', am.amname, ' operator class ', o.opcname, \
      ' for ', o.opcintype::pg_catalog.regtype, ' runs ', u.fn, \
      ', and PostgreSQL uses it wherever such values are sorted, grouped, hashed or compared') \
      FROM pg_catalog.pg_opclass o \
      JOIN pg_catalog.pg_am am ON am.oid OPERATOR(pg_catalog.=) o.opcmethod \
      JOIN pg_catalog.pg_amproc a ON a.amprocfamily OPERATOR(pg_catalog.=) o.opcfamily \
      JOIN unsafe u ON u.oid OPERATOR(pg_catalog.=) a.amproc \
      WHERE o.opcdefault AND o.opcintype OPERATOR(pg_catalog.<) 16384::pg_catalog.oid \
    UNION ALL \
    SELECT DISTINCT 'column', r.relname::text, pg_catalog.concat('index or partition key uses operator class ', \
      o.opcname, ', whose support runs ', u.fn) \
      FROM pg_catalog.pg_opclass o \
      JOIN pg_catalog.pg_amproc a ON a.amprocfamily OPERATOR(pg_catalog.=) o.opcfamily \
      JOIN unsafe u ON u.oid OPERATOR(pg_catalog.=) a.amproc \
      JOIN (SELECT i.indrelid, pg_catalog.unnest(i.indclass::pg_catalog.oid[]) FROM pg_catalog.pg_index i \
            UNION ALL SELECT p.partrelid, pg_catalog.unnest(p.partclass::pg_catalog.oid[]) \
            FROM pg_catalog.pg_partitioned_table p) k(rel, cls) ON k.cls OPERATOR(pg_catalog.=) o.oid \
      JOIN lineage l ON l.rel OPERATOR(pg_catalog.=) k.rel \
      JOIN pg_catalog.pg_class r ON r.oid OPERATOR(pg_catalog.=) l.anc \
    UNION ALL \
    SELECT DISTINCT 'column', r.relname::text, pg_catalog.concat('its ', x.what, ' calls ', u.fn, \
      ', which PostgreSQL may run while planning any statement that reads it') \
      FROM (SELECT i.indrelid, pg_catalog.concat('index ', pg_catalog.quote_ident(ic.relname)), d.refclassid, d.refobjid \
            FROM pg_catalog.pg_depend d \
            JOIN pg_catalog.pg_index i ON i.indexrelid OPERATOR(pg_catalog.=) d.objid \
            JOIN pg_catalog.pg_class ic ON ic.oid OPERATOR(pg_catalog.=) i.indexrelid \
            WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass \
            UNION ALL \
            SELECT s.stxrelid, pg_catalog.concat('statistics object ', pg_catalog.quote_ident(s.stxname)), d.refclassid, d.refobjid \
            FROM pg_catalog.pg_depend d \
            JOIN pg_catalog.pg_statistic_ext s ON s.oid OPERATOR(pg_catalog.=) d.objid \
            WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_statistic_ext'::pg_catalog.regclass \
            UNION ALL \
            SELECT k.conrelid, pg_catalog.concat('constraint ', pg_catalog.quote_ident(k.conname)), d.refclassid, d.refobjid \
            FROM pg_catalog.pg_depend d \
            JOIN pg_catalog.pg_constraint k ON k.oid OPERATOR(pg_catalog.=) d.objid \
            WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_constraint'::pg_catalog.regclass \
              AND k.conrelid OPERATOR(pg_catalog.<>) 0::pg_catalog.oid \
            UNION ALL \
            SELECT p.partrelid, 'partition key', d.refclassid, d.refobjid \
            FROM pg_catalog.pg_depend d \
            JOIN pg_catalog.pg_partitioned_table p ON p.partrelid OPERATOR(pg_catalog.=) d.objid \
            WHERE d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_class'::pg_catalog.regclass) \
        AS x(rel, what, refclassid, refobjid) \
      LEFT JOIN pg_catalog.pg_operator o ON o.oid OPERATOR(pg_catalog.=) x.refobjid \
        AND x.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_operator'::pg_catalog.regclass \
      JOIN unsafe u ON (x.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass \
          AND u.oid OPERATOR(pg_catalog.=) x.refobjid) OR u.oid OPERATOR(pg_catalog.=) o.oprcode \
      JOIN lineage l ON x.rel OPERATOR(pg_catalog.=) ANY (ARRAY[l.rel, l.anc]) \
      JOIN pg_catalog.pg_class r ON r.oid OPERATOR(pg_catalog.=) ANY (ARRAY[l.rel, l.anc]) \
    UNION ALL \
    SELECT DISTINCT 'column', c.relname::text, 'it is, or holds as a child or partition, a foreign table: reading it runs its foreign-data wrapper (a program, a server file, a query on another server)' \
      FROM pg_catalog.pg_foreign_table f JOIN lineage l ON l.rel OPERATOR(pg_catalog.=) f.ftrelid \
      JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) l.anc \
    UNION ALL \
    SELECT DISTINCT 'view_calls', c.relname::text, pg_catalog.concat('it calls ', u.fn) \
      FROM pg_catalog.pg_rewrite w \
      JOIN pg_catalog.pg_depend d ON d.objid OPERATOR(pg_catalog.=) w.oid \
        AND d.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
      LEFT JOIN pg_catalog.pg_operator o ON o.oid OPERATOR(pg_catalog.=) d.refobjid \
        AND d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_operator'::pg_catalog.regclass \
      JOIN unsafe u ON (d.refclassid OPERATOR(pg_catalog.=) 'pg_catalog.pg_proc'::pg_catalog.regclass \
          AND u.oid OPERATOR(pg_catalog.=) d.refobjid) OR u.oid OPERATOR(pg_catalog.=) o.oprcode \
      JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) w.ev_class \
      WHERE c.relkind OPERATOR(pg_catalog.=) ANY ('{v,m}'::pg_catalog.\"char\"[]) \
    UNION ALL \
    SELECT 'policy', c.relname::text, pg_catalog.pg_get_expr(e.expr, p.polrelid) \
      FROM pg_catalog.pg_policy p JOIN pg_catalog.pg_class c ON c.oid OPERATOR(pg_catalog.=) p.polrelid \
      CROSS JOIN LATERAL (VALUES (p.polqual), (p.polwithcheck)) AS e(expr) \
      WHERE e.expr IS NOT NULL";

use crate::policy::verdict::relation_key;

/// The lists from the rows of [`QUERY`].
fn lists(rows: impl IntoIterator<Item = Vec<Option<String>>>) -> DatabaseFunctions {
    let mut out = DatabaseFunctions::default();
    let mut definitions: Vec<(String, String)> = Vec::new();
    let mut view_calls: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut checks: Vec<(String, String, bool)> = Vec::new();
    for row in rows {
        let mut cells = row.into_iter();
        let (Some(Some(list)), Some(Some(name)), function) =
            (cells.next(), cells.next(), cells.next().flatten())
        else {
            continue;
        };
        match (list.as_str(), function) {
            // As stored: folded for names created unquoted, exact for quoted ones, as the classifier
            // keeps `q.name` (folded) and `q."Name"` (exact).
            ("row", _) => {
                out.row.insert(name);
            }
            ("shadow", Some(function)) => push_reason(&mut out.shadows, name, function),
            ("view", Some(definition)) => {
                definitions.push((relation_key(&name), definition));
            }
            ("view_calls", Some(why)) => push_reason(&mut view_calls, relation_key(&name), why),
            ("type", Some(why)) => push_reason(&mut out.types, name, why),
            ("column", Some(why)) => push_reason(&mut out.tables, relation_key(&name), why),
            ("operator", Some(why)) => push_reason(&mut out.operators, name, why),
            // Judged once the other lists are complete: a CHECK may use what they name.
            ("domain", Some(check)) => checks.push((name, check, false)),
            ("policy", Some(expr)) => checks.push((name, format!("CHECK ({expr})"), true)),
            ("global", Some(why)) if !out.global.contains(&why) => out.global.push(why),
            _ => {}
        }
    }
    // Checks, policies and views name one another (a policy reading a view, a view reading a table
    // whose policy runs code, a policy reading such a table): judged again with what each round
    // found until nothing changes. Every round only adds, so the rounds are bounded by the entries.
    for _round in 0..=checks.len() + definitions.len() {
        let so_far = out.clone();
        for (name, check, policy) in &checks {
            let Some(why) = check_runs_code(check, &so_far) else {
                continue;
            };
            if *policy {
                push_reason(
                    &mut out.tables,
                    relation_key(name),
                    format!("row-level security policy {why}"),
                );
            } else {
                push_reason(&mut out.types, name.clone(), format!("its {why}"));
            }
        }
        // A view's calls were resolved when it was made (pg_depend names them, `view_calls`), so a
        // name it shares with a function elsewhere does not matter there as it does in a statement's
        // text.
        let bound = DatabaseFunctions {
            shadows: BTreeMap::new(),
            ..out.clone()
        };
        out.views = views_that_run_code(&definitions, &bound, view_calls.clone());
        if out == so_far {
            break;
        }
    }
    out
}

/// Adds `why` to `name`'s list, each once, sorted.
fn push_reason(map: &mut BTreeMap<String, Vec<String>>, name: String, why: String) {
    let reasons = map.entry(name).or_default();
    if !reasons.contains(&why) {
        reasons.push(why);
        reasons.sort();
    }
}

/// The reasons the policy would not allow the statements of `facts`; `None` when it would allow them
/// all.
fn not_allowed_reasons(facts: &[crate::policy::StatementFacts]) -> Option<Vec<String>> {
    let mut not_allowed = facts
        .iter()
        .filter(|f| f.action != crate::policy::Action::Allow)
        .peekable();
    not_allowed.peek()?;
    Some(
        not_allowed
            .flat_map(|f| f.reasons.iter().cloned())
            .collect(),
    )
}

/// `sql` classified as a statement on this database: what it defines counts in a definition or CHECK as
/// in a statement (a function shadowing a built-in, an operator spelled like one, a type whose casts or
/// CHECK run code, a table read through a foreign-data wrapper).
fn classify_in(sql: &str, db: &DatabaseFunctions) -> Vec<crate::policy::StatementFacts> {
    let mut facts = crate::policy::classify::classify(sql);
    for f in facts.iter_mut() {
        if let Some(judged) = crate::policy::database_code_in(db, f) {
            *f = judged;
        }
    }
    facts
}

/// Why a CHECK (`pg_get_constraintdef`: `CHECK (expr)`, maybe `NOT VALID`) runs code the policy would
/// not allow in a statement, as `CHECK (expr) (reasons)`: its expression is classified as
/// `SELECT expr`. A check the classifier can't read counts as running code (fail closed).
fn check_runs_code(check: &str, db: &DatabaseFunctions) -> Option<String> {
    let expr = check
        .trim()
        .strip_suffix("NOT VALID")
        .unwrap_or(check)
        .trim()
        .strip_prefix("CHECK")
        .unwrap_or(check);
    let facts = classify_in(&format!("SELECT {expr}"), db);
    let not_allowed = not_allowed_reasons(&facts).unwrap_or_default();
    (!not_allowed.is_empty() || facts.len() != 1)
        .then(|| format!("{} ({})", check.trim(), not_allowed.join("; ")))
}

/// Views whose reading runs code the policy would not allow in a statement's text, each with why: a
/// view's definition is classified like a statement (user or volatile functions, `nextval` …), and a
/// view reading such a view inherits it. Pinned built-ins leave no trace in `pg_depend`, so the
/// definitions are read rather than the dependencies.
fn views_that_run_code(
    definitions: &[(String, String)],
    db: &DatabaseFunctions,
    calls: BTreeMap<String, Vec<String>>,
) -> BTreeMap<String, Vec<String>> {
    let mut flagged = calls;
    let mut reads: Vec<(&str, Vec<String>)> = Vec::new();
    for (name, definition) in definitions {
        let facts = classify_in(definition, db);
        if let Some(why) = not_allowed_reasons(&facts) {
            for why in why {
                push_reason(&mut flagged, name.clone(), why);
            }
        }
        let tables = facts
            .iter()
            .flat_map(|f| f.tables.iter())
            .map(|t| relation_key(t))
            .collect();
        reads.push((name, tables));
    }
    // Views over flagged views, to a fixed point.
    loop {
        let more: Vec<(String, String)> = reads
            .iter()
            .filter(|(name, _)| !flagged.contains_key(*name))
            .filter_map(|(name, tables)| {
                tables
                    .iter()
                    .find(|t| flagged.contains_key(*t))
                    .map(|t| (name.to_string(), t.clone()))
            })
            .collect();
        if more.is_empty() {
            return flagged;
        }
        for (name, via) in more {
            flagged.insert(name, vec![format!("reads view {via}, which does")]);
        }
    }
}

/// True when one of `command_tags` may have changed a database's functions: the lists are then read
/// again at once rather than at the next [`REFRESH`].
pub fn changes_functions<'a>(command_tags: impl IntoIterator<Item = Option<&'a str>>) -> bool {
    const TAGS: &[&str] = &[
        "CREATE FUNCTION",
        "ALTER FUNCTION",
        "DROP FUNCTION",
        "CREATE PROCEDURE",
        "CREATE AGGREGATE",
        "ALTER AGGREGATE",
        "DROP AGGREGATE",
        "CREATE EXTENSION",
        "ALTER EXTENSION",
        "DROP EXTENSION",
        "CREATE SCHEMA",
        "DROP SCHEMA",
        "ALTER SCHEMA",
        // What `DatabaseFunctions` also reads: views, and the objects that make a type run code.
        "CREATE VIEW",
        "ALTER VIEW",
        "CREATE OPERATOR",
        "ALTER OPERATOR",
        "CREATE CAST",
        "CREATE DOMAIN",
        "ALTER DOMAIN",
        "CREATE TYPE",
        "ALTER TYPE",
        "CREATE TABLE",
        "ALTER TABLE",
        "CREATE FOREIGN TABLE",
        "ALTER FOREIGN TABLE",
        "IMPORT FOREIGN SCHEMA",
        "CREATE MATERIALIZED VIEW",
        "ALTER MATERIALIZED VIEW",
        "CREATE POLICY",
        "ALTER POLICY",
        "CREATE INDEX",
        "CREATE RULE",
        "ALTER ROUTINE",
        "ALTER PROCEDURE",
        // Anything a procedure or a DO block may have created.
        "DO",
        "CALL",
    ];
    command_tags
        .into_iter()
        .flatten()
        .any(|tag| TAGS.iter().any(|p| tag.starts_with(p)))
}

/// The longest one connection's read may take; a connection that accepts and never answers must not
/// hold up the others' reads (nor the next refresh).
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Lists older than this (no read succeeded for two refreshes) are not trusted: the database may
/// have gained code since.
const STALE_AFTER: Duration = Duration::from_secs(2 * REFRESH.as_secs() + READ_TIMEOUT.as_secs());

/// What a connection whose lists are unknown (never read, or stale) is judged with: every statement
/// is reviewed, since any name in it may resolve to code the gateway has not seen (fail closed).
static UNKNOWN: LazyLock<Arc<DatabaseFunctions>> = LazyLock::new(|| {
    Arc::new(DatabaseFunctions {
        global: vec![format!(
            "the gateway could not read this database's functions and views (not yet, or not for {} s), so any name here may run code it has not seen; it retries every {} s",
            STALE_AFTER.as_secs(),
            REFRESH.as_secs()
        )],
        ..DatabaseFunctions::default()
    })
});

/// What a session judges its statements with while its own DDL (functions, views, types) is not yet
/// committed: invisible to the gateway's catalog reads, so every statement is reviewed (fail closed).
static PENDING_DDL: LazyLock<Arc<DatabaseFunctions>> = LazyLock::new(|| {
    Arc::new(DatabaseFunctions {
        global: vec![
            "this session changed the database's functions, views or types in a transaction that has not committed, which the gateway cannot read yet, so any name here may run code it has not seen; statements are judged normally again once it commits".to_string(),
        ],
        ..DatabaseFunctions::default()
    })
});

/// The lists a session judges with while its own catalog changes are uncommitted (every statement
/// reviewed).
pub fn pending_ddl() -> Arc<DatabaseFunctions> {
    Arc::clone(&PENDING_DDL)
}

/// The lists of a connection whose functions are not known (every statement reviewed).
pub fn unknown() -> Arc<DatabaseFunctions> {
    Arc::clone(&UNKNOWN)
}

/// True for the lists [`RowFunctions::get`] gives a connection it has no fresh read of.
pub fn is_unknown(lists: &Arc<DatabaseFunctions>) -> bool {
    Arc::ptr_eq(lists, &UNKNOWN)
}

/// `connection` and every other connection name on the same database (host, port and database).
fn on_same_database<'a>(
    upstreams: &'a HashMap<String, UpstreamTarget>,
    connection: &'a str,
) -> impl Iterator<Item = (&'a String, &'a UpstreamTarget)> {
    let database = upstreams
        .get(connection)
        .map(|t| (t.host.as_str(), t.port, t.database.as_str()));
    upstreams.iter().filter(move |(name, t)| {
        *name == connection || database == Some((t.host.as_str(), t.port, t.database.as_str()))
    })
}

/// The function lists per connection, as last read, with when they were read.
#[derive(Default)]
pub struct RowFunctions {
    by_connection: RwLock<HashMap<String, (Arc<DatabaseFunctions>, std::time::Instant)>>,
    /// A background read is queued and has not started: DDL finishing now is seen by it.
    queued: std::sync::atomic::AtomicBool,
    /// One read at a time.
    reading: tokio::sync::Mutex<()>,
    /// When a session last saw DDL commit on a connection's database (every connection name on it):
    /// until a read started after that, sessions wait for one before judging their next statement.
    changed: RwLock<HashMap<String, std::time::Instant>>,
    /// Some connection has such a change not read yet (the sessions' fast path skips the lock).
    any_changed: std::sync::atomic::AtomicBool,
}

impl RowFunctions {
    /// Reads the lists again soon, on a task of its own: the caller (the session recorder, after
    /// DDL it relayed) does not wait. Requests while one read is queued share it.
    pub fn refresh_soon(
        self: &Arc<Self>,
        pool: &Arc<UpstreamPool>,
        upstreams: &Arc<HashMap<String, UpstreamTarget>>,
    ) {
        use std::sync::atomic::Ordering;
        if tokio::runtime::Handle::try_current().is_err()
            || self.queued.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let (this, pool, upstreams) = (self.clone(), pool.clone(), upstreams.clone());
        tokio::spawn(async move {
            let _reading = this.reading.lock().await;
            // From here a new request queues another read: this one may start before its DDL ends.
            this.queued.store(false, Ordering::Release);
            this.read(&pool, upstreams.iter()).await;
        });
    }

    /// The lists last read for `connection`; when none was read, or not lately, lists that make
    /// every statement reviewed ([`UNKNOWN`]).
    pub fn get(&self, connection: &str) -> Arc<DatabaseFunctions> {
        let fresh = self
            .by_connection
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(connection)
            .filter(|(_, at)| at.elapsed() <= STALE_AFTER)
            .map(|(lists, _)| lists.clone());
        fresh.unwrap_or_else(|| UNKNOWN.clone())
    }

    /// Notes that DDL committed on `connection`'s database, for every connection name on it: their
    /// sessions wait for a read started after now before judging their next statement
    /// ([`RowFunctions::change_pending`]), so no session judges with lists the DDL made stale.
    pub fn note_change(&self, upstreams: &HashMap<String, UpstreamTarget>, connection: &str) {
        let now = std::time::Instant::now();
        let mut changed = self.changed.write().unwrap_or_else(|e| e.into_inner());
        for (name, _) in on_same_database(upstreams, connection) {
            changed.insert(name.clone(), now);
        }
        changed.entry(connection.to_string()).or_insert(now);
        self.any_changed
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// True while DDL noted on `connection`'s database has not been read since.
    pub fn change_pending(&self, connection: &str) -> bool {
        if !self.any_changed.load(std::sync::atomic::Ordering::Acquire) {
            return false;
        }
        let at = self
            .changed
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(connection)
            .copied();
        match at {
            Some(at) if !self.read_since(connection, at) => true,
            Some(_) => {
                let mut changed = self.changed.write().unwrap_or_else(|e| e.into_inner());
                if changed
                    .get(connection)
                    .is_some_and(|at| self.read_since(connection, *at))
                {
                    changed.remove(connection);
                }
                if changed.is_empty() {
                    self.any_changed
                        .store(false, std::sync::atomic::Ordering::Release);
                }
                false
            }
            None => false,
        }
    }

    /// True when `connection`'s lists were read successfully by a read that started at or after
    /// `asked` (reads are stamped with their start: one under way when a DDL committed may have missed it).
    pub fn read_since(&self, connection: &str, asked: std::time::Instant) -> bool {
        self.by_connection
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(connection)
            .is_some_and(|(_, at)| *at >= asked)
    }

    /// Reads the functions of every connection once; a connection whose database can't be read keeps
    /// what it had.
    pub async fn refresh(&self, pool: &UpstreamPool, upstreams: &HashMap<String, UpstreamTarget>) {
        let _reading = self.reading.lock().await;
        self.read(pool, upstreams.iter()).await;
    }

    /// Makes sure `connection`'s lists were read by a read started at or after `asked` (a session's
    /// committed DDL): reads only that database (for every connection name on it), and none when
    /// another session's read, queued for the lock ahead of this one, already started after `asked`. Sessions finishing DDL together share
    /// one read instead of each waiting for its own in turn. False when it could not be read.
    pub async fn refresh_since(
        &self,
        pool: &UpstreamPool,
        upstreams: &HashMap<String, UpstreamTarget>,
        connection: &str,
        asked: std::time::Instant,
    ) -> bool {
        let _reading = self.reading.lock().await;
        if !self.read_since(connection, asked) {
            // Every connection name on the same database: the DDL changed their catalog too.
            self.read(pool, on_same_database(upstreams, connection))
                .await;
        }
        self.read_since(connection, asked)
    }

    async fn read<'a>(
        &self,
        pool: &UpstreamPool,
        upstreams: impl Iterator<Item = (&'a String, &'a UpstreamTarget)>,
    ) {
        // All at once, each bounded: one unreachable database delays no other's read.
        let reads = upstreams.map(|(name, target)| async move {
            let started = std::time::Instant::now();
            let read =
                tokio::time::timeout(READ_TIMEOUT, pool.simple_query(name, target, &QUERY, true))
                    .await;
            (name, read, started)
        });
        for (name, read, started) in futures::future::join_all(reads).await {
            match read {
                Ok(Ok(out)) if out.error.is_none() => {
                    let names = lists(out.results.into_iter().flat_map(|r| r.rows));
                    let mut by_connection = self
                        .by_connection
                        .write()
                        .unwrap_or_else(|e| e.into_inner());
                    match by_connection.get_mut(name) {
                        // An unchanged list keeps its `Arc`, so sessions' verdict memos stay valid.
                        Some((old, at)) if **old == names => *at = started,
                        _ => {
                            by_connection.insert(name.clone(), (Arc::new(names), started));
                        }
                    }
                }
                Ok(Ok(out)) => {
                    tracing::warn!(connection = %name, error = ?out.error.map(|e| e.message), "could not read the database's functions and views; retrying later (statements are reviewed once the last read is stale)")
                }
                Ok(Err(e)) => {
                    tracing::warn!(connection = %name, error = %e, "could not read the database's functions and views; retrying later (statements are reviewed once the last read is stale)")
                }
                Err(_) => {
                    tracing::warn!(connection = %name, timeout_s = READ_TIMEOUT.as_secs(), "reading the database's functions and views timed out; retrying later (statements are reviewed once the last read is stale)")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_never_read_or_gone_stale_review_everything() {
        let rf = RowFunctions::default();
        let never = rf.get("db");
        assert!(is_unknown(&never));
        assert!(!never.global.is_empty());
        let now = std::time::Instant::now();
        let read = Arc::new(DatabaseFunctions::default());
        rf.by_connection
            .write()
            .unwrap()
            .insert("db".into(), (read.clone(), now));
        assert!(Arc::ptr_eq(&rf.get("db"), &read));
        let Some(long_ago) = now.checked_sub(STALE_AFTER + Duration::from_secs(1)) else {
            return; // (a machine up for less than that: nothing can be that old)
        };
        rf.by_connection
            .write()
            .unwrap()
            .insert("db".into(), (read, long_ago));
        assert!(is_unknown(&rf.get("db")));
    }

    fn row(cells: [Option<&str>; 3]) -> Vec<Option<String>> {
        cells.iter().map(|c| c.map(String::from)).collect()
    }

    #[test]
    fn types_tables_operators_and_domains_that_run_code_are_listed() {
        let got = lists([
            row([Some("type"), Some("mood"), Some("its cast runs public.f")]),
            row([Some("type"), Some("mood"), Some("its cast runs public.f")]),
            row([
                Some("column"),
                Some("feelings"),
                Some("column m has type mood"),
            ]),
            row([
                Some("operator"),
                Some("="),
                Some("=(integer,text) runs public.g"),
            ]),
            row([
                Some("domain"),
                Some("noted"),
                Some("CHECK ((public.noted(VALUE)))"),
            ]),
            row([
                Some("domain"),
                Some("stale"),
                Some("CHECK ((nextval('s') > 0)) NOT VALID"),
            ]),
            row([
                Some("domain"),
                Some("cardinal_number"),
                Some("CHECK ((VALUE >= 0))"),
            ]),
            row([Some("domain"), Some("garbled"), Some("CHECK ((VALUE >>>")]),
            row([Some("policy"), Some("guarded"), Some("public.noted(n)")]),
            row([
                Some("policy"),
                Some("open_t"),
                Some("(owner = CURRENT_USER)"),
            ]),
            row([
                Some("global"),
                Some(""),
                Some("an implicit cast from integer to date runs public.f"),
            ]),
        ]);
        assert!(
            got.tables["guarded"][0].starts_with("row-level security policy"),
            "{:?}",
            got.tables
        );
        // This database defines `=` (and an implicit cast): a CHECK comparing anything may use it.
        assert!(got.tables.contains_key("open_t"), "{:?}", got.tables);
        assert_eq!(
            got.global,
            ["an implicit cast from integer to date runs public.f"]
        );
        assert_eq!(got.types["mood"], ["its cast runs public.f"]);
        assert_eq!(got.tables["feelings"], ["column m has type mood"]);
        assert_eq!(got.operators["="], ["=(integer,text) runs public.g"]);
        let flagged: Vec<&String> = got.types.keys().collect();
        // A CHECK the classifier can't read counts as running code. Here even a CHECK over built-ins is flagged: this database's implicit cast applies wherever
        // the types meet (a database without one: `checks_over_built_ins_are_fine_…`).
        assert_eq!(
            flagged,
            ["cardinal_number", "garbled", "mood", "noted", "stale"]
        );
        assert!(got.types["stale"][0].contains("nextval"), "{:?}", got.types);
    }

    #[test]
    fn checks_over_built_ins_are_fine_where_the_database_defines_no_operators() {
        let got = lists([
            row([
                Some("policy"),
                Some("open_t"),
                Some("(owner = CURRENT_USER)"),
            ]),
            row([
                Some("domain"),
                Some("cardinal_number"),
                Some("CHECK ((VALUE >= 0))"),
            ]),
        ]);
        assert!(got.tables.is_empty(), "{:?}", got.tables);
        assert!(got.types.is_empty(), "{:?}", got.types);
        // With a shadowed name, a CHECK calling it is flagged like a statement would be.
        let got = lists([
            row([Some("shadow"), Some("length"), Some("public.length")]),
            row([
                Some("domain"),
                Some("d5"),
                Some("CHECK ((length(VALUE) > 0))"),
            ]),
        ]);
        assert!(
            got.types["d5"][0].contains("public.length"),
            "{:?}",
            got.types
        );
    }

    #[test]
    fn policies_and_views_that_read_each_other_are_followed_to_the_end() {
        let got = lists([
            row([Some("view"), Some("v_evil"), Some(" SELECT evil2() AS x;")]),
            // docs' policy reads the view; docs2's reads docs; a view over docs2 reads all of it.
            row([
                Some("policy"),
                Some("docs"),
                Some("(EXISTS ( SELECT 1 FROM v_evil))"),
            ]),
            row([
                Some("policy"),
                Some("docs2"),
                Some("(EXISTS ( SELECT 1 FROM docs))"),
            ]),
            row([
                Some("view"),
                Some("v_docs2"),
                Some(" SELECT docs2.id FROM docs2;"),
            ]),
            row([
                Some("policy"),
                Some("plain"),
                Some("(owner = CURRENT_USER)"),
            ]),
        ]);
        assert!(got.views.contains_key("v_evil"), "{:?}", got.views);
        for table in ["docs", "docs2"] {
            assert!(
                got.tables
                    .get(table)
                    .is_some_and(|why| why[0].starts_with("row-level security policy")),
                "{table}: {:?}",
                got.tables
            );
        }
        assert!(got.views.contains_key("v_docs2"), "{:?}", got.views);
        assert!(!got.tables.contains_key("plain"), "{:?}", got.tables);
    }

    #[test]
    fn one_read_fills_both_lists() {
        let got = lists([
            row([Some("row"), Some("archive"), None]),
            row([Some("shadow"), Some("length"), Some("public.length")]),
            row([Some("shadow"), Some("max"), Some("public.max")]),
            row([Some("shadow"), Some("max"), Some("app.max")]),
            row([Some("shadow"), Some("max"), Some("app.max")]),
            row([Some("view"), Some("v_side"), Some(" SELECT side() AS n;")]),
            row([
                Some("view"),
                Some("v_seq"),
                Some(" SELECT nextval('sq'::regclass) AS n;"),
            ]),
            row([
                Some("view"),
                Some("v_over"),
                Some(" SELECT v_side.n FROM v_side;"),
            ]),
            row([
                Some("view"),
                Some("v_plain"),
                Some(" SELECT log.v, length(log.v) AS l FROM log;"),
            ]),
            row([
                Some("view"),
                Some("v_shadow"),
                Some(" SELECT lower(1) AS x;"),
            ]),
            row([
                Some("view_calls"),
                Some("v_shadow"),
                Some("it calls public.lower"),
            ]),
            // Not a shape the query returns: ignored rather than guessed at.
            row([Some("shadow"), Some("lower"), None]),
            row([None, Some("x"), None]),
        ]);
        assert_eq!(got.row, ["archive".to_string()].into());
        let flagged: Vec<&String> = got.views.keys().collect();
        // v_plain's length was resolved to the built-in when the view was made (pg_depend names no
        // other), so public.length sharing its name does not matter; v_shadow's lower(1) was resolved
        // to public.lower, which pg_depend names.
        assert_eq!(flagged, ["v_over", "v_seq", "v_shadow", "v_side"]);
        assert_eq!(got.views["v_shadow"], ["it calls public.lower"]);
        assert!(
            got.views["v_side"].iter().any(|r| r.contains("side")),
            "{:?}",
            got.views
        );
        assert!(
            got.views["v_seq"].iter().any(|r| r.contains("nextval")),
            "{:?}",
            got.views
        );
        assert_eq!(
            got.shadows,
            [
                ("length".to_string(), vec!["public.length".to_string()]),
                (
                    "max".to_string(),
                    vec!["app.max".to_string(), "public.max".to_string()]
                ),
            ]
            .into()
        );
    }

    #[test]
    fn the_read_asks_for_every_vetted_name() {
        for name in crate::policy::functions::read_only_names() {
            assert!(
                QUERY.contains(&format!(",{name},"))
                    || QUERY.contains(&format!("{{{name},"))
                    || QUERY.contains(&format!(",{name}}}")),
                "{name}"
            );
        }
    }
}
