//! Masking rules as configured per connection, their validation, and the compiled form.
//!
//! ```toml
//! [[connections]]
//! name = "prod"
//! upstream_url_env = "PROD_URL"
//! [connections.masking]
//! hash_key_env = "COUNTERSIGN_MASK_KEY"          # needed by style = "hash"
//! [[connections.masking.rules]]
//! columns = ["*email*", "ssn", "users.phone"]    # column-name globs, case-insensitive
//! style = "hash"
//! [[connections.masking.rules]]
//! detect = ["card", "iban", "ssn", "jwt", "api_key", "private_key"]
//! style = "keep_last"
//! keep = 4
//! ```
//!
//! A pattern is `column`, `table.column` or `schema.table.column`, each part a glob. The table and schema
//! parts are matched against the table a result column comes from (resolved from RowDescription's table
//! OID, see [`super::tables`]). When that table is not known for certain (an expression, a view, a
//! partition, COPY output, a failed lookup) the column part alone decides: `users.phone` then masks every
//! column named `phone`, over-masking rather than leaking.

use super::detect::{Detector, DetectorSet};
use super::style::{Style, StyleName};
use super::tables::ColumnSource;
use globset::{GlobBuilder, GlobMatcher, GlobSet, GlobSetBuilder};
use serde::Deserialize;
use std::path::PathBuf;

/// `[connections.masking]`: the masking rules of one connection.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskingConfig {
    /// Rules; for a column, the first column rule that matches decides; for a detected value, the first
    /// rule listing its detector.
    #[serde(default)]
    pub rules: Vec<MaskRule>,
    /// Env var holding the key for `style = "hash"`.
    #[serde(default)]
    pub hash_key_env: Option<String>,
    /// File holding the key for `style = "hash"` (e.g. a mounted Secret).
    #[serde(default)]
    pub hash_key_file: Option<PathBuf>,
}

/// `[[connections.masking.rules]]`: either `columns` or `detect`, and a style.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskRule {
    /// Column globs (`*email*`, `ssn`, `users.card_*`, `billing.users.card_*`); the whole value is masked.
    #[serde(default)]
    pub columns: Vec<String>,
    /// Detectors run over every value; only the detected part is masked.
    #[serde(default)]
    pub detect: Vec<Detector>,
    /// How to replace.
    pub style: StyleName,
    /// Characters kept by `keep_last` (default 4).
    #[serde(default)]
    pub keep: Option<usize>,
}

impl MaskingConfig {
    /// True when some rule uses the keyed hash (so a key must be configured).
    pub fn needs_key(&self) -> bool {
        self.rules.iter().any(|r| r.style == StyleName::Hash)
    }

    /// Every problem as (key below `prefix`, message with the fix).
    pub fn problems(&self, prefix: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.rules.is_empty() {
            out.push((
                format!("{prefix}.rules"),
                "no rules: add [[…masking.rules]] entries or remove the masking section".into(),
            ));
        }
        for (i, r) in self.rules.iter().enumerate() {
            let key = format!("{prefix}.rules[{i}]");
            match (r.columns.is_empty(), r.detect.is_empty()) {
                (true, true) => out.push((
                    key.clone(),
                    "set `columns` (column-name globs) or `detect` (value detectors)".into(),
                )),
                (false, false) => out.push((
                    key.clone(),
                    "set either `columns` or `detect`, not both; split it into two rules".into(),
                )),
                _ => {}
            }
            for (j, c) in r.columns.iter().enumerate() {
                if let Err(e) = ColumnPattern::parse(c) {
                    out.push((format!("{key}.columns[{j}]"), format!("{c:?} {e}; write e.g. \"*email*\", \"users.ssn\" or \"public.users.ssn\"")));
                }
            }
            match (r.style, r.keep) {
                (StyleName::KeepLast, Some(0)) => out.push((
                    format!("{key}.keep"),
                    "0 keeps nothing; use style = \"redact\" instead".into(),
                )),
                (StyleName::KeepLast, _) | (_, None) => {}
                (_, Some(_)) => out.push((
                    format!("{key}.keep"),
                    "`keep` applies only to style = \"keep_last\"; remove it".into(),
                )),
            }
        }
        if self.hash_key_env.is_some() && self.hash_key_file.is_some() {
            out.push((
                format!("{prefix}.hash_key_env"),
                "set either `hash_key_env` or `hash_key_file`, not both".into(),
            ));
        }
        if self.needs_key() && self.hash_key_env.is_none() && self.hash_key_file.is_none() {
            out.push((
                format!("{prefix}.hash_key_env"),
                "a rule uses style = \"hash\" but no key is configured; set `hash_key_env` to an env var holding a random secret of 32+ bytes".into(),
            ));
        }
        out
    }
}

/// The rules could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum MaskingError {
    /// A column glob is invalid.
    #[error(
        "masking rule column glob {glob:?}: {reason}; fix the pattern in [connections.masking]"
    )]
    Glob {
        /// The pattern.
        glob: String,
        /// Why.
        reason: String,
    },
    /// A hash rule without a key.
    #[error("a masking rule uses style = \"hash\" but no key was given; set hash_key_env or hash_key_file")]
    MissingKey,
}

fn glob_of(part: &str) -> Result<globset::Glob, globset::Error> {
    GlobBuilder::new(part).case_insensitive(true).build()
}

/// A column pattern split into its parts.
struct ColumnPattern {
    column: globset::Glob,
    table: Option<GlobMatcher>,
    schema: Option<GlobMatcher>,
}

impl ColumnPattern {
    /// Parses `column`, `table.column` or `schema.table.column`; the error reads after the pattern.
    fn parse(pattern: &str) -> Result<Self, String> {
        // Quotes would be glob characters that no name holds: the rule would never match.
        if pattern.contains('"') {
            return Err(format!(
                "has double quotes; write names without them (matching ignores case): {}",
                pattern.replace('"', "")
            ));
        }
        let parts: Vec<&str> = pattern.split('.').collect();
        let glob = |p: &str| glob_of(p).map_err(|e| format!("is not a valid glob ({e})"));
        let (schema, table, column) = match parts[..] {
            [c] => (None, None, c),
            [t, c] => (None, Some(t), c),
            [s, t, c] => (Some(s), Some(t), c),
            _ => return Err("has more than three dot-separated parts".into()),
        };
        Ok(Self {
            column: glob(column)?,
            table: table.map(glob).transpose()?.map(|g| g.compile_matcher()),
            schema: schema.map(glob).transpose()?.map(|g| g.compile_matcher()),
        })
    }
}

/// The table and schema parts of one compiled column glob.
#[derive(Debug)]
struct Qualifier {
    /// The rule index (into `column_styles`).
    rule: usize,
    table: Option<GlobMatcher>,
    schema: Option<GlobMatcher>,
}

impl Qualifier {
    /// True when a column of `source` satisfies the table and schema parts; an unknown source does
    /// (fail closed).
    fn admits(&self, source: ColumnSource<'_>) -> bool {
        let ColumnSource::Table { schema, table } = source else {
            return true;
        };
        self.table.as_ref().is_none_or(|g| g.is_match(table))
            && self.schema.as_ref().is_none_or(|g| g.is_match(schema))
    }
}

/// Rules compiled for matching: one glob set over every column pattern, and detectors with their styles.
#[derive(Debug)]
pub struct CompiledRules {
    /// The column part of every pattern.
    columns: GlobSet,
    /// The rule and table/schema parts of each glob in `columns`.
    qualifiers: Vec<Qualifier>,
    /// The column parts of table-qualified patterns only (do they need a table lookup?).
    qualified_columns: GlobSet,
    column_styles: Vec<Style>,
    /// Detectors switched on by some rule.
    pub detectors: DetectorSet,
    detector_styles: Vec<(Detector, Style)>,
}

impl CompiledRules {
    /// Compiles `config`; `key` is the resolved hash key (required when a rule hashes).
    pub fn compile(config: &MaskingConfig, key: Option<&[u8]>) -> Result<Self, MaskingError> {
        let mut builder = GlobSetBuilder::new();
        let mut qualified = GlobSetBuilder::new();
        let mut qualifiers = Vec::new();
        let mut column_styles = Vec::new();
        let mut detector_styles: Vec<(Detector, Style)> = Vec::new();
        for rule in &config.rules {
            let style = match rule.style {
                StyleName::Redact => Style::Redact,
                StyleName::KeepLast => Style::KeepLast(rule.keep.unwrap_or(4)),
                StyleName::Partial => Style::Partial,
                StyleName::Hash => Style::hash(key.ok_or(MaskingError::MissingKey)?),
            };
            if !rule.columns.is_empty() {
                for c in &rule.columns {
                    let pattern = ColumnPattern::parse(c).map_err(|reason| MaskingError::Glob {
                        glob: c.clone(),
                        reason,
                    })?;
                    if pattern.table.is_some() {
                        qualified.add(pattern.column.clone());
                    }
                    builder.add(pattern.column);
                    qualifiers.push(Qualifier {
                        rule: column_styles.len(),
                        table: pattern.table,
                        schema: pattern.schema,
                    });
                }
                column_styles.push(style.clone());
            }
            for d in &rule.detect {
                if !detector_styles.iter().any(|(x, _)| x == d) {
                    detector_styles.push((*d, style.clone()));
                }
            }
        }
        let set_error = |e: globset::Error| MaskingError::Glob {
            glob: "(set)".into(),
            reason: e.to_string(),
        };
        Ok(Self {
            columns: builder.build().map_err(set_error)?,
            qualifiers,
            qualified_columns: qualified.build().map_err(set_error)?,
            column_styles,
            detectors: detector_styles.iter().map(|(d, _)| *d).collect(),
            detector_styles,
        })
    }

    /// The style of the first column rule matching `name` from an unknown table, if any: table-qualified
    /// patterns match by their column part.
    pub fn column_style(&self, name: &str) -> Option<&Style> {
        self.column_style_in(name, ColumnSource::Unknown)
    }

    /// The style of the first column rule matching column `name` of `source`, if any.
    pub fn column_style_in(&self, name: &str, source: ColumnSource<'_>) -> Option<&Style> {
        let rule = self
            .columns
            .matches(name)
            .into_iter()
            .map(|g| &self.qualifiers[g])
            .filter(|q| q.admits(source))
            .map(|q| q.rule)
            .min()?;
        self.column_styles.get(rule)
    }

    /// True when some column pattern has a table part.
    pub fn has_table_rules(&self) -> bool {
        !self.qualified_columns.is_empty()
    }

    /// True when a table-qualified pattern's column part matches `name`: only then does knowing the
    /// column's table change the decision.
    pub fn table_decides(&self, name: &str) -> bool {
        self.qualified_columns.is_match(name)
    }

    /// True when some rule masks by column name.
    pub fn has_column_rules(&self) -> bool {
        !self.column_styles.is_empty()
    }

    /// The style for a detected value.
    pub fn detector_style(&self, d: Detector) -> &Style {
        self.detector_styles
            .iter()
            .find(|(x, _)| *x == d)
            .map(|(_, s)| s)
            .unwrap_or(&Style::Redact)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> MaskingConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn quoted_names_in_a_column_pattern_are_refused_with_the_unquoted_spelling() {
        let cfg = parse("[[rules]]\ncolumns = ['\"Mixed\".cardno']\nstyle = \"redact\"");
        let e = CompiledRules::compile(&cfg, None).unwrap_err().to_string();
        assert!(
            e.contains("double quotes") && e.contains("Mixed.cardno"),
            "{e}"
        );
    }

    #[test]
    fn first_matching_column_rule_decides_and_matching_ignores_case_and_table() {
        let cfg = parse(
            r#"
            [[rules]]
            columns = ["users.SSN", "*email*"]
            style = "redact"
            [[rules]]
            columns = ["*"]
            style = "keep_last"
            keep = 2
            "#,
        );
        let rules = CompiledRules::compile(&cfg, None).unwrap();
        assert!(matches!(rules.column_style("ssn"), Some(Style::Redact)));
        assert!(matches!(
            rules.column_style("Work_Email"),
            Some(Style::Redact)
        ));
        assert!(matches!(
            rules.column_style("name"),
            Some(Style::KeepLast(2))
        ));
    }

    #[test]
    fn table_and_schema_parts_match_known_tables_and_unknown_tables_fall_back_to_the_column() {
        let cfg = parse(
            r#"
            [[rules]]
            columns = ["customers.email", "billing.*.iban", "staff_?.phone"]
            style = "redact"
            [[rules]]
            columns = ["note"]
            style = "partial"
            "#,
        );
        let rules = CompiledRules::compile(&cfg, None).unwrap();
        let t = |schema, table| ColumnSource::Table { schema, table };
        let hit = |name, source| rules.column_style_in(name, source).is_some();
        assert!(hit("email", t("public", "customers")));
        assert!(hit("EMAIL", t("shop", "Customers")));
        assert!(!hit("email", t("public", "staff")));
        assert!(hit("email", ColumnSource::Unknown), "fail closed");
        assert!(hit("iban", t("billing", "accounts")));
        assert!(!hit("iban", t("public", "accounts")));
        assert!(hit("phone", t("hr", "staff_a")));
        assert!(!hit("phone", t("hr", "staff_ab")));
        assert!(hit("note", t("any", "thing")));
        assert!(rules.table_decides("email") && !rules.table_decides("note"));
        let cfg = parse("[[rules]]\ncolumns=[\"a.b.c.d\"]\nstyle=\"redact\"");
        assert!(CompiledRules::compile(&cfg, None).is_err());
        assert_eq!(cfg.problems("m").len(), 1);
    }

    #[test]
    fn unknown_keys_and_detectors_are_rejected_by_the_parser() {
        assert!(toml::from_str::<MaskingConfig>(
            "[[rules]]\ncolumns=[\"a\"]\nstyle=\"redact\"\nextra=1"
        )
        .is_err());
        assert!(
            toml::from_str::<MaskingConfig>("[[rules]]\ndetect=[\"dna\"]\nstyle=\"redact\"")
                .is_err()
        );
        assert!(
            toml::from_str::<MaskingConfig>("[[rules]]\ncolumns=[\"a\"]\nstyle=\"blur\"").is_err()
        );
    }

    #[test]
    fn validation_names_each_problem_and_its_fix() {
        let cfg = parse(
            r#"
            [[rules]]
            style = "redact"
            [[rules]]
            columns = ["a["]
            detect = ["email"]
            style = "hash"
            keep = 3
            "#,
        );
        let problems = cfg.problems("connections[0].masking");
        let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            keys,
            [
                "connections[0].masking.rules[0]",
                "connections[0].masking.rules[1]",
                "connections[0].masking.rules[1].columns[0]",
                "connections[0].masking.rules[1].keep",
                "connections[0].masking.hash_key_env",
            ]
        );
        assert!(problems[4].1.contains("set `hash_key_env`"));
    }

    #[test]
    fn hash_rule_without_key_does_not_compile() {
        let cfg = parse("[[rules]]\ncolumns=[\"a\"]\nstyle=\"hash\"");
        assert!(matches!(
            CompiledRules::compile(&cfg, None),
            Err(MaskingError::MissingKey)
        ));
        assert!(CompiledRules::compile(&cfg, Some(b"k")).is_ok());
    }
}
