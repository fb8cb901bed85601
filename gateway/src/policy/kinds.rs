//! The statement kinds a rule's `kinds` may name: every kind the classifier reports
//! ([`super::fallback::StatementTokens::kind`] and the parsed statements' fixed names). A kind outside
//! this list (a typo such as `DELTE`) could never match, so a block rule naming it would never fire.

/// Commands whose kind is their first word (`DELETE`, `VACUUM`), and the two-word and internal kinds
/// the classifier names (`START TRANSACTION`, `EMPTY` for a statement with no text, `UNKNOWN`).
const COMMANDS: &[&str] = &[
    "ABORT",
    "ANALYZE",
    "ANALYSE",
    "BEGIN",
    "CALL",
    "CHECKPOINT",
    "CLOSE",
    "CLUSTER",
    "COMMENT",
    "COMMIT",
    "COPY",
    "DEALLOCATE",
    "DECLARE",
    "DELETE",
    "DISCARD",
    "DO",
    "END",
    "EXECUTE",
    "EXPLAIN",
    "FETCH",
    "GRANT",
    "INSERT",
    "LISTEN",
    "LOAD",
    "LOCK",
    "MERGE",
    "MOVE",
    "NOTIFY",
    "PREPARE",
    "REASSIGN",
    "REFRESH",
    "REINDEX",
    "RELEASE",
    "RESET",
    "REVOKE",
    "ROLLBACK",
    "SAVEPOINT",
    "SECURITY",
    "SELECT",
    "SET",
    "SHOW",
    "START TRANSACTION",
    "TABLE",
    "TRUNCATE",
    "UNLISTEN",
    "UPDATE",
    "VACUUM",
    "VALUES",
    "WITH",
    "EMPTY",
    "UNKNOWN",
];

/// Object types after `CREATE`, `ALTER` and `DROP` as the classifier names them (`CREATE TABLE`,
/// `DROP MATERIALIZED VIEW`, `ALTER SYSTEM`).
const OBJECTS: &[&str] = &[
    "ACCESS METHOD",
    "AGGREGATE",
    "CAST",
    "COLLATION",
    "CONVERSION",
    "DATABASE",
    "DOMAIN",
    "EVENT TRIGGER",
    "EXTENSION",
    "FOREIGN DATA",
    "FOREIGN TABLE",
    "FUNCTION",
    "GROUP",
    "INDEX",
    "LANGUAGE",
    "LARGE",
    "MATERIALIZED VIEW",
    "OPERATOR",
    "OPERATOR CLASS",
    "OPERATOR FAMILY",
    "OWNED",
    "POLICY",
    "PRIVILEGES",
    "PROCEDURE",
    "PUBLICATION",
    "ROLE",
    "ROUTINE",
    "RULE",
    "SCHEMA",
    "SEQUENCE",
    "SERVER",
    "STATISTICS",
    "SUBSCRIPTION",
    "SYSTEM",
    "TABLE",
    "TABLESPACE",
    "TEXT SEARCH",
    "TRANSFORM",
    "TRIGGER",
    "TYPE",
    "USER",
    "USER MAPPING",
    "VIEW",
];

/// Verbs whose kind includes the object type.
const OBJECT_VERBS: &[&str] = &["CREATE", "ALTER", "DROP"];

/// True when `kind` (any case and spacing) is a kind the classifier can report.
pub fn is_known_kind(kind: &str) -> bool {
    let words: Vec<String> = kind
        .split_whitespace()
        .map(|w| w.to_ascii_uppercase())
        .collect();
    let kind = words.join(" ");
    if COMMANDS.contains(&kind.as_str()) || kind == "IMPORT FOREIGN SCHEMA" {
        return true;
    }
    match words.split_first() {
        Some((verb, object)) if OBJECT_VERBS.contains(&verb.as_str()) => {
            OBJECTS.contains(&object.join(" ").as_str())
        }
        _ => false,
    }
}

/// The valid kinds, for an error message.
pub fn describe_known_kinds() -> String {
    format!(
        "{}, IMPORT FOREIGN SCHEMA, or CREATE/ALTER/DROP followed by one of {}",
        COMMANDS.join(", "),
        OBJECTS.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::fallback::split_statements;

    #[test]
    fn typos_are_unknown_and_kinds_match_in_any_case_and_spacing() {
        for ok in [
            "DELETE",
            "delete",
            "Create  Table",
            "DROP MATERIALIZED VIEW",
            "alter system",
        ] {
            assert!(is_known_kind(ok), "{ok}");
        }
        for bad in ["DELTE", "CREATE TABEL", "DROP", "", "TABLE CREATE"] {
            assert!(!is_known_kind(bad), "{bad:?}");
        }
    }

    #[test]
    fn every_kind_the_classifier_names_for_common_statements_is_known() {
        for sql in [
            "DELETE FROM t",
            "CREATE UNIQUE INDEX i ON t (a)",
            "CREATE OR REPLACE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql",
            "DROP MATERIALIZED VIEW v",
            "ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO r",
            "CREATE FOREIGN DATA WRAPPER w",
            "IMPORT FOREIGN SCHEMA s FROM SERVER x INTO y",
            "COMMENT ON TABLE t IS 'x'",
            "VACUUM t",
            "CREATE TEMP TABLE t (a int)",
            "DROP OWNED BY r",
            "ALTER OPERATOR FAMILY f USING btree ADD OPERATOR 1 < (int, int)",
        ] {
            let parts = split_statements(sql).expect("splits");
            let kind = parts[0].kind();
            assert!(is_known_kind(&kind), "{sql}: {kind}");
        }
    }
}
