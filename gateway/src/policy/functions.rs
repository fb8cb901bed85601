//! What the built-in policy knows about functions: a vetted read-only allowlist, functions that
//! touch the server's files (block), and functions with known side effects (review).

use super::verdict::Action;

/// Functions that read or write the server's filesystem, or load files into the database.
const SERVER_FILE_ACCESS: &[&str] = &[
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_dir",
    "pg_stat_file",
    "pg_file_write",
    "pg_file_read",
    "pg_file_rename",
    "pg_file_unlink",
    "pg_file_sync",
    "pg_logdir_ls",
    "pg_ls_logdir",
    "pg_ls_waldir",
    "pg_ls_tmpdir",
    "pg_ls_archive_statusdir",
    "pg_ls_logicalmapdir",
    "pg_ls_logicalsnapdir",
    "pg_ls_replslotdir",
    "lo_import",
    "lo_export",
];

/// Functions with side effects a human should see, with the reason shown to them.
const SIDE_EFFECTS: &[(&str, &str)] = &[
    ("nextval", "changes a sequence"),
    ("setval", "changes a sequence"),
    ("set_config", "changes a server setting at run time"),
    ("pg_notify", "sends a notification to listeners"),
    ("dblink", "runs SQL on another server"),
    ("dblink_exec", "runs SQL on another server"),
    ("dblink_connect", "opens a connection to another server"),
    ("dblink_connect_u", "opens a connection to another server"),
    ("dblink_send_query", "runs SQL on another server"),
    ("lo_from_bytea", "writes a large object"),
    ("lo_create", "writes a large object"),
    ("lo_creat", "writes a large object"),
    ("lo_put", "writes a large object"),
    ("lo_unlink", "deletes a large object"),
    ("lowrite", "writes a large object"),
    ("lo_truncate", "writes a large object"),
    ("pg_sleep", "holds a server backend while sleeping"),
    ("pg_sleep_for", "holds a server backend while sleeping"),
    ("pg_sleep_until", "holds a server backend while sleeping"),
    ("pg_terminate_backend", "terminates another session"),
    ("pg_cancel_backend", "cancels another session's query"),
    ("pg_reload_conf", "reloads the server configuration"),
    ("pg_rotate_logfile", "rotates the server log"),
    ("pg_switch_wal", "forces a WAL switch"),
    ("pg_create_restore_point", "writes to the WAL"),
    ("pg_advisory_lock", "takes an advisory lock"),
    ("pg_advisory_xact_lock", "takes an advisory lock"),
    ("pg_try_advisory_lock", "takes an advisory lock"),
    ("pg_drop_replication_slot", "drops a replication slot"),
    (
        "pg_create_logical_replication_slot",
        "creates a replication slot",
    ),
    (
        "pg_create_physical_replication_slot",
        "creates a replication slot",
    ),
    ("query_to_xml", "runs the SQL text it is given"),
    (
        "query_to_xml_and_xmlschema",
        "runs the SQL text it is given",
    ),
    ("cursor_to_xml", "reads from a cursor"),
];

/// Functions vetted as read-only: calling them changes nothing and reads nothing outside the
/// tables the statement names. Sorted, so lookups can binary-search.
const READ_ONLY: &[&str] = &[
    "abs",
    // The default privileges of an object kind for an owner; pg_dump compares ACLs with it.
    "acldefault",
    "age",
    // ARRAY(subquery), the constructor psql's \d uses; the subquery is classified on its own.
    "array",
    "array_agg",
    "array_append",
    "array_cat",
    "array_length",
    "array_lower",
    "array_position",
    "array_positions",
    "array_remove",
    "array_to_json",
    "array_to_string",
    "array_upper",
    "avg",
    "bit_and",
    "bit_or",
    "bool_and",
    "bool_or",
    "btrim",
    "cardinality",
    "cbrt",
    "ceil",
    "ceiling",
    "char_length",
    "character_length",
    "chr",
    "clock_timestamp",
    "coalesce",
    "col_description",
    "concat",
    "concat_ws",
    "corr",
    "count",
    "current_database",
    "current_date",
    "current_role",
    "current_schema",
    "current_schemas",
    "current_setting",
    "current_time",
    "current_timestamp",
    "current_user",
    "currval",
    "date_part",
    "date_trunc",
    "daterange",
    "decode",
    "dense_rank",
    "div",
    "encode",
    "every",
    "exp",
    "extract",
    "first_value",
    "floor",
    "format",
    "format_type",
    "gen_random_uuid",
    "generate_series",
    "generate_subscripts",
    "getdatabaseencoding",
    "greatest",
    "has_column_privilege",
    "has_database_privilege",
    "has_schema_privilege",
    "has_table_privilege",
    "inet_client_addr",
    "inet_server_addr",
    "inet_server_port",
    "initcap",
    "int4range",
    "int8range",
    "isempty",
    "json_agg",
    "json_array_elements",
    "json_array_elements_text",
    "json_array_length",
    "json_build_array",
    "json_build_object",
    "json_each",
    "json_each_text",
    "json_extract_path",
    "json_extract_path_text",
    "json_object_agg",
    "json_object_keys",
    "json_typeof",
    "jsonb_agg",
    "jsonb_array_elements",
    "jsonb_array_elements_text",
    "jsonb_array_length",
    "jsonb_build_array",
    "jsonb_build_object",
    "jsonb_each",
    "jsonb_each_text",
    "jsonb_extract_path",
    "jsonb_extract_path_text",
    "jsonb_object_agg",
    "jsonb_object_keys",
    "jsonb_path_exists",
    "jsonb_path_query",
    "jsonb_pretty",
    "jsonb_set",
    "jsonb_strip_nulls",
    "jsonb_typeof",
    "justify_days",
    "justify_hours",
    "justify_interval",
    "lag",
    "last_value",
    "lead",
    "least",
    "left",
    "length",
    "ln",
    "localtime",
    "localtimestamp",
    "log",
    "lower",
    "lpad",
    "ltrim",
    "make_date",
    "make_interval",
    "make_time",
    "make_timestamp",
    "make_timestamptz",
    "max",
    "md5",
    "min",
    "mod",
    "now",
    "nth_value",
    "ntile",
    "nullif",
    "numrange",
    "obj_description",
    "octet_length",
    "overlay",
    "percent_rank",
    "percentile_cont",
    "percentile_disc",
    // Release only this session's advisory locks, as DISCARD ALL does; pools (asyncpg) run them when a
    // connection is returned.
    "pg_advisory_unlock",
    "pg_advisory_unlock_all",
    "pg_advisory_unlock_shared",
    "pg_backend_pid",
    "pg_blocking_pids",
    "pg_char_to_encoding",
    "pg_collation_is_visible",
    "pg_column_compression",
    "pg_column_size",
    "pg_conf_load_time",
    "pg_conversion_is_visible",
    "pg_current_snapshot",
    "pg_database_size",
    // Catalog introspection psql's \dx+, \db+, \dF+ and pgJDBC's metadata run.
    "pg_describe_object",
    "pg_encoding_to_char",
    // Exports this transaction's snapshot so another session (pg_dump -j) reads the same data; it
    // changes no data, and PostgreSQL allows it on a read-only standby.
    "pg_export_snapshot",
    "pg_function_is_visible",
    "pg_get_constraintdef",
    "pg_get_expr",
    "pg_get_function_arguments",
    "pg_get_function_identity_arguments",
    "pg_get_function_result",
    "pg_get_function_sqlbody",
    "pg_get_functiondef",
    "pg_get_indexdef",
    "pg_get_keywords",
    "pg_get_object_address",
    "pg_get_partition_constraintdef",
    "pg_get_partkeydef",
    "pg_get_publication_tables",
    "pg_get_replica_identity_index",
    "pg_get_ruledef",
    "pg_get_serial_sequence",
    "pg_get_statisticsobjdef",
    "pg_get_statisticsobjdef_columns",
    "pg_get_statisticsobjdef_expressions",
    "pg_get_triggerdef",
    "pg_get_userbyid",
    "pg_get_viewdef",
    "pg_has_role",
    "pg_identify_object",
    "pg_identify_object_as_address",
    "pg_index_column_has_property",
    "pg_index_has_property",
    "pg_indexam_has_property",
    "pg_indexes_size",
    "pg_is_in_recovery",
    "pg_jit_available",
    "pg_listening_channels",
    "pg_my_temp_schema",
    "pg_opclass_is_visible",
    "pg_operator_is_visible",
    "pg_opfamily_is_visible",
    // Splits an options array (reloptions, fdwoptions) into name/value rows.
    "pg_options_to_table",
    "pg_partition_ancestors",
    "pg_partition_root",
    "pg_partition_tree",
    "pg_postmaster_start_time",
    "pg_relation_filenode",
    "pg_relation_is_publishable",
    "pg_relation_size",
    "pg_sequence_last_value",
    "pg_sequence_parameters",
    "pg_settings_get_flags",
    "pg_size_bytes",
    "pg_size_pretty",
    "pg_statistics_obj_is_visible",
    "pg_table_is_visible",
    "pg_table_size",
    "pg_tablespace_location",
    "pg_tablespace_size",
    "pg_total_relation_size",
    "pg_ts_config_is_visible",
    "pg_ts_dict_is_visible",
    "pg_ts_parser_is_visible",
    "pg_ts_template_is_visible",
    "pg_type_is_visible",
    "pg_typeof",
    "position",
    "power",
    "quote_ident",
    "quote_literal",
    "quote_nullable",
    "random",
    "rank",
    "regclass",
    "regexp_match",
    "regexp_matches",
    "regexp_replace",
    "regexp_split_to_array",
    "regexp_split_to_table",
    "repeat",
    "replace",
    "reverse",
    "right",
    "round",
    "row",
    "row_number",
    "row_to_json",
    "rpad",
    "rtrim",
    "session_user",
    "shobj_description",
    "sign",
    "split_part",
    "sqrt",
    "starts_with",
    "statement_timestamp",
    "stddev",
    "stddev_pop",
    "stddev_samp",
    "string_agg",
    "string_to_array",
    "strpos",
    "substr",
    "substring",
    "sum",
    "timeofday",
    "to_char",
    "to_date",
    "to_hex",
    "to_json",
    "to_jsonb",
    "to_number",
    "to_regclass",
    "to_timestamp",
    "transaction_timestamp",
    "translate",
    "trim",
    "trunc",
    "ts_parse",
    "ts_token_type",
    "tsrange",
    "tstzrange",
    "txid_current_snapshot",
    "unnest",
    "upper",
    "user",
    "variance",
    "version",
    "width_bucket",
];

/// Session settings that drivers set at connect time and that grant nothing (formats, timeouts, and
/// planner settings, which change plans, never data or identity; not `work_mem`, whose size is the
/// server's memory); sorted, lower-case.
const HARMLESS_SETTINGS: &[&str] = &[
    "application_name",
    "bytea_output",
    "client_encoding",
    "client_min_messages",
    "cursor_tuple_fraction",
    "datestyle",
    "default_transaction_deferrable",
    "default_transaction_isolation",
    "default_transaction_read_only",
    "effective_cache_size",
    "effective_io_concurrency",
    "extra_float_digits",
    "from_collapse_limit",
    "geqo",
    "idle_in_transaction_session_timeout",
    "idle_session_timeout",
    "intervalstyle",
    "jit",
    "join_collapse_limit",
    "lc_messages",
    "lc_monetary",
    "lc_numeric",
    "lc_time",
    "lock_timeout",
    "max_parallel_workers_per_gather",
    "parallel_setup_cost",
    "parallel_tuple_cost",
    "plan_cache_mode",
    "random_page_cost",
    // Only narrows what the session may read: views and foreign tables are refused (pg_dump sets it).
    "restrict_nonsystem_relation_kind",
    // Off makes a query that row security would filter fail instead; it never bypasses a policy.
    "row_security",
    "search_path",
    "seq_page_cost",
    "standard_conforming_strings",
    "statement_timeout",
    // Where a sequential scan starts (pg_dump turns it off so rows come out in physical order).
    "synchronize_seqscans",
    "timezone",
    "timezone_abbreviations",
    "transaction_isolation",
    "transaction_read_only",
    "xmloption",
];

/// Settings that change who the session acts as.
const IDENTITY_SETTINGS: &[&str] = &["role", "session_authorization"];

/// `pg_catalog` relations read only with review, with what they hold: the server's configuration
/// files (`postgresql.auto.conf` may hold a `primary_conninfo` password, `pg_hba.conf` the network
/// layout) and build, as the file functions behind them would be; and credentials (role password
/// hashes, crackable offline, and foreign servers' user mappings).
const REVIEWED_RELATIONS: &[(&[&str], &str)] = &[
    (
        &[
            "pg_config",
            "pg_file_settings",
            "pg_hba_file_rules",
            "pg_ident_file_mappings",
        ],
        "the server's configuration files",
    ),
    (
        &[
            "pg_authid",
            "pg_shadow",
            "pg_user_mapping",
            "pg_user_mappings",
        ],
        "credentials (password hashes or user mappings)",
    ),
    (
        &[
            "pg_statistic",
            "pg_stats",
            "pg_statistic_ext_data",
            "pg_stats_ext",
            "pg_stats_ext_exprs",
        ],
        "planner statistics, samples of the values of every table's columns (pg_authid's password hashes included)",
    ),
];

/// The built-in verdict on reading relation `name` (lower-case, possibly `schema.name`), when it has
/// one.
pub fn relation_check(name: &str) -> Option<(Action, String)> {
    let base = name.rsplit('.').next().unwrap_or(name);
    REVIEWED_RELATIONS
        .iter()
        .find(|(names, _)| names.contains(&base))
        .map(|(_, holds)| (Action::Review, format!("reads {base}: {holds}")))
}

/// The built-in verdict on one function call, by its lower-cased name (schema-qualified or not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionCheck {
    /// Block, review or allow.
    pub action: Action,
    /// Why, for a human; empty when the function is vetted read-only.
    pub reason: String,
}

/// Classify a call to `name` (lower-case, possibly `schema.name`).
///
/// Blocked names are matched whatever the schema; the allowlist applies only to unqualified or
/// `pg_catalog` names, since a user schema can define a function of the same name.
pub fn check_function(name: &str) -> FunctionCheck {
    let (schema, base) = match name.rsplit_once('.') {
        Some((schema, base)) => (Some(schema), base),
        None => (None, name),
    };
    if SERVER_FILE_ACCESS.contains(&base) {
        return FunctionCheck {
            action: Action::Block,
            reason: format!("calls {base}: server file access"),
        };
    }
    let builtin_schema = matches!(schema, None | Some("pg_catalog"));
    if let Some((_, why)) = SIDE_EFFECTS.iter().find(|(f, _)| *f == base) {
        return FunctionCheck {
            action: Action::Review,
            reason: format!("calls {name}: {why}"),
        };
    }
    if (builtin_schema && READ_ONLY.binary_search(&base).is_ok())
        || (schema == Some("information_schema") && is_information_schema_helper(base))
    {
        return FunctionCheck {
            action: Action::Allow,
            reason: String::new(),
        };
    }
    FunctionCheck {
        action: Action::Review,
        reason: format!("calls {name}: not on the read-only function list"),
    }
}

/// Read-only helpers of the `information_schema` views (pgJDBC's getPrimaryKeys and getIndexInfo call
/// `_pg_expandarray`), vetted only when called with that schema: only a superuser can create functions
/// there, while an unqualified `_pg_…` could name anyone's function. Sorted.
const INFORMATION_SCHEMA_READ_ONLY: &[&str] = &[
    "_pg_char_max_length",
    "_pg_char_octet_length",
    "_pg_datetime_precision",
    "_pg_expandarray",
    "_pg_index_position",
    "_pg_interval_type",
    "_pg_numeric_precision",
    "_pg_numeric_precision_radix",
    "_pg_numeric_scale",
    "_pg_truetypid",
    "_pg_truetypmod",
];

/// True when `base` (lower-case) is one of PostgreSQL's own read-only helpers in `information_schema`.
pub fn is_information_schema_helper(base: &str) -> bool {
    INFORMATION_SCHEMA_READ_ONLY.binary_search(&base).is_ok()
}

/// True when `base` (an unqualified, lower-case name) is on the vetted read-only function list.
pub fn is_vetted_read_only(base: &str) -> bool {
    READ_ONLY.binary_search(&base).is_ok() || matches!(base, "set_config" | "nextval")
}

/// Every name on the vetted read-only function list (lower-case).
pub fn read_only_names() -> impl Iterator<Item = &'static str> {
    READ_ONLY
        .iter()
        .copied()
        // Read by their arguments rather than listed: a function of the same name elsewhere may
        // capture an unqualified call of them too.
        .chain(["set_config", "nextval"])
}

/// True for session settings safe to change without review (compared case-insensitively).
pub fn is_harmless_setting(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    // `enable_*` are the planner's method switches (enable_seqscan, enable_hashjoin, …).
    HARMLESS_SETTINGS.binary_search(&name.as_str()).is_ok() || name.starts_with("enable_")
}

/// True for settings that change the session's identity (`role`, `session_authorization`).
pub fn is_identity_setting(name: &str) -> bool {
    IDENTITY_SETTINGS.contains(&name.to_ascii_lowercase().as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_lists_are_sorted_so_binary_search_finds_every_entry() {
        assert!(
            READ_ONLY.windows(2).all(|w| w[0] < w[1]),
            "READ_ONLY must be sorted and unique"
        );
        assert!(HARMLESS_SETTINGS.windows(2).all(|w| w[0] < w[1]));
        assert!(INFORMATION_SCHEMA_READ_ONLY.windows(2).all(|w| w[0] < w[1]));
        assert!(
            READ_ONLY.len() >= 100,
            "allowlist has {} names",
            READ_ONLY.len()
        );
    }

    #[test]
    fn file_access_blocks_even_when_schema_qualified() {
        assert_eq!(
            check_function("pg_catalog.pg_read_file").action,
            Action::Block
        );
        assert_eq!(check_function("evil.pg_ls_dir").action, Action::Block);
    }

    #[test]
    fn allowlisted_name_in_a_user_schema_needs_review() {
        assert_eq!(check_function("lower").action, Action::Allow);
        assert_eq!(check_function("pg_catalog.lower").action, Action::Allow);
        assert_eq!(check_function("public.lower").action, Action::Review);
    }

    #[test]
    fn harmless_settings_match_case_insensitively() {
        assert!(is_harmless_setting("DateStyle"));
        assert!(is_harmless_setting("TimeZone"));
        assert!(!is_harmless_setting("session_replication_role"));
        assert!(is_identity_setting("ROLE"));
    }
}
