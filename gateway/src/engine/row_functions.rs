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
//! [`StatementFacts::qualified_names`]: crate::policy::StatementFacts::qualified_names

use crate::upstream::{UpstreamPool, UpstreamTarget};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// How often the function lists are read again.
pub const REFRESH: Duration = Duration::from_secs(30);

/// User functions callable on a whole row with one argument (the others having defaults).
const QUERY: &str = "SELECT DISTINCT p.proname \
     FROM pg_catalog.pg_proc p \
     JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
     JOIN pg_catalog.pg_type t ON t.oid = p.proargtypes[0] \
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
       AND p.pronargs >= 1 AND p.pronargs - p.pronargdefaults <= 1 \
       AND (t.typtype IN ('c', 'p') OR t.typname IN ('record', 'anyelement'))";

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
    ];
    command_tags
        .into_iter()
        .flatten()
        .any(|tag| TAGS.iter().any(|p| tag.starts_with(p)))
}

/// The function names per connection, as last read.
#[derive(Default)]
pub struct RowFunctions {
    by_connection: RwLock<HashMap<String, Arc<HashSet<String>>>>,
}

impl RowFunctions {
    /// The names last read for `connection`, if any read succeeded.
    pub fn get(&self, connection: &str) -> Option<Arc<HashSet<String>>> {
        self.by_connection
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(connection)
            .cloned()
    }

    /// Reads the functions of every connection once; a connection whose database can't be read keeps
    /// what it had.
    pub async fn refresh(&self, pool: &UpstreamPool, upstreams: &HashMap<String, UpstreamTarget>) {
        for (name, target) in upstreams {
            match pool.simple_query(name, target, QUERY, true).await {
                Ok(out) if out.error.is_none() => {
                    let names: HashSet<String> = out
                        .results
                        .into_iter()
                        .flat_map(|r| r.rows)
                        // As stored: folded for names created unquoted, exact for quoted ones, as the
                        // classifier keeps `q.name` (folded) and `q."Name"` (exact).
                        .filter_map(|row| row.into_iter().next().flatten())
                        .collect();
                    let mut by_connection = self
                        .by_connection
                        .write()
                        .unwrap_or_else(|e| e.into_inner());
                    // An unchanged list keeps its `Arc`, so sessions' verdict memos stay valid.
                    if by_connection.get(name).is_none_or(|old| **old != names) {
                        by_connection.insert(name.clone(), Arc::new(names));
                    }
                }
                Ok(out) => {
                    tracing::warn!(connection = %name, error = ?out.error.map(|e| e.message), "could not read the functions attribute notation could call; retrying later")
                }
                Err(e) => {
                    tracing::warn!(connection = %name, error = %e, "could not read the functions attribute notation could call; retrying later")
                }
            }
        }
    }
}
