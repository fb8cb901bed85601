//! COPY … TO STDOUT: the statement gives the format and column names (CopyOutResponse has neither names
//! nor types), and each CopyData row is masked field by field. COPY output is text, so every column is
//! treated as a text column. What cannot be masked safely (binary COPY, unusual options, unknown column
//! names while column rules exist) is refused.

use super::rules::CompiledRules;
use super::{Finding, Masked, Masker, TypeClass};
use sqlparser::ast::{
    CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, Expr, SelectItem, SetExpr,
    Statement,
};

/// Why a COPY result is withheld.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyError {
    /// Binary COPY cannot be inspected.
    #[error("binary COPY output cannot be masked; use COPY … TO STDOUT in text or CSV format")]
    Binary,
    /// Options the masker does not parse.
    #[error("COPY option {0} is not supported on a masked connection; use the default delimiter, quote, escape and NULL")]
    Option(String),
    /// Column names are unknown but column rules exist.
    #[error("the columns of this COPY are unknown, so column masking rules cannot apply; list them: COPY t (a, b) TO STDOUT, or COPY (SELECT a, b FROM t) TO STDOUT")]
    UnknownColumns,
    /// The query computes an output column from a masked column.
    #[error("this COPY's query renames or computes a column from a masked column, which column rules cannot follow; select the column itself (COPY (SELECT email FROM t) TO STDOUT) or drop the expression")]
    Derived,
    /// The relations the query reads could not be looked up.
    #[error("the relations this COPY reads could not be looked up, so a view renaming a masked column could not be followed; retry, or COPY from the table itself")]
    Unresolved,
    /// Several COPY … TO statements in one query string.
    #[error("this query string holds several COPY … TO statements, and on a masked connection each must be masked by its own columns; send each COPY as a query of its own")]
    Several,
    /// The statement could not be read.
    #[error("the COPY statement could not be parsed for masking; write it as COPY t (a, b) TO STDOUT [WITH (FORMAT csv)]")]
    Unparsed,
    /// A CopyData row that doesn't parse.
    #[error("a COPY row from the upstream could not be parsed for masking")]
    BadRow,
    /// A value could not be read.
    #[error(transparent)]
    Unreadable(#[from] super::UnreadableValue),
}

/// How COPY rows are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    /// Tab-separated, backslash escapes, `\N` for NULL.
    Text,
    /// Comma-separated, `"` quoting, empty unquoted field for NULL.
    Csv,
}

/// A COPY TO STDOUT being masked.
#[derive(Debug)]
pub struct CopyPlan {
    /// The statements of the query string, read again once the views' masked columns are known.
    statements: Vec<Statement>,
    /// The query computes an output column from a masked column, which names cannot follow.
    derived: bool,
    format: CopyFormat,
    header_pending: bool,
    names: Option<Vec<String>>,
    /// The relations a `COPY (query)` reads ([`query_relations`]).
    relations: Vec<String>,
    /// Output names a view read by the query computes from (or renames) a masked column: redacted.
    exposed: Vec<String>,
    plan: Option<Vec<super::ColumnPlan>>,
    findings: Vec<Finding>,
    fields: Vec<Field>,
}

#[derive(Debug, Clone)]
struct Field {
    range: std::ops::Range<usize>,
    value: Option<String>,
}

/// Reads the COPY statement at the end of `sql` (a batch's texts are joined by `;\n`), for a connection
/// with `rules`.
pub fn plan_copy(sql: &str, rules: &CompiledRules) -> Result<CopyPlan, CopyError> {
    let stmts = super::derived::parse_bounded(sql).ok_or(CopyError::Unparsed)?;
    // Each CopyOutResponse of the query string is planned from this one statement: with two, the
    // first COPY's columns would be masked by the second's names.
    let copies_out = stmts
        .iter()
        .filter(|s| matches!(s, Statement::Copy { to: true, .. }))
        .count();
    if copies_out > 1 {
        return Err(CopyError::Several);
    }
    let derived = super::derived::exposes_beyond_named_columns(&stmts, rules, &[]);
    let statements = stmts.clone();
    let Some(Statement::Copy {
        source,
        to: true,
        options,
        legacy_options,
        ..
    }) = stmts
        .into_iter()
        .rev()
        .find(|s| matches!(s, Statement::Copy { to: true, .. }))
    else {
        return Err(CopyError::Unparsed);
    };
    let mut format = CopyFormat::Text;
    let mut header = false;
    for o in &options {
        match o {
            CopyOption::Format(f) if f.value.eq_ignore_ascii_case("csv") => {
                format = CopyFormat::Csv
            }
            CopyOption::Format(f) if f.value.eq_ignore_ascii_case("text") => {
                format = CopyFormat::Text
            }
            CopyOption::Format(_) => return Err(CopyError::Binary),
            CopyOption::Header(h) => header = *h,
            CopyOption::Encoding(e)
                if e.eq_ignore_ascii_case("utf8") || e.eq_ignore_ascii_case("utf-8") => {}
            other => return Err(CopyError::Option(other.to_string())),
        }
    }
    for o in &legacy_options {
        match o {
            CopyLegacyOption::Binary => return Err(CopyError::Binary),
            CopyLegacyOption::Csv(csv) => {
                format = CopyFormat::Csv;
                for c in csv {
                    match c {
                        CopyLegacyCsvOption::Header => header = true,
                        other => return Err(CopyError::Option(other.to_string())),
                    }
                }
            }
            other => return Err(CopyError::Option(other.to_string())),
        }
    }
    let relations = match &source {
        CopySource::Query(q) => query_relations(q),
        CopySource::Table { .. } => Vec::new(),
    };
    let names = match source {
        CopySource::Table { columns, .. } if !columns.is_empty() => {
            Some(columns.into_iter().map(|c| c.value).collect())
        }
        CopySource::Table { .. } => None,
        CopySource::Query(q) => match *q.body {
            SetExpr::Select(select) => select
                .projection
                .iter()
                .map(|item| match item {
                    SelectItem::UnnamedExpr(Expr::Identifier(i)) => Some(i.value.clone()),
                    SelectItem::UnnamedExpr(Expr::CompoundIdentifier(p)) => {
                        p.last().map(|i| i.value.clone())
                    }
                    SelectItem::ExprWithAlias { alias, .. } => Some(alias.value.clone()),
                    _ => None,
                })
                .collect(),
            _ => None,
        },
    };
    Ok(CopyPlan {
        statements,
        derived,
        format,
        header_pending: header,
        names,
        relations,
        exposed: Vec::new(),
        plan: None,
        findings: Vec::new(),
        fields: Vec::new(),
    })
}

/// The relations a `COPY (query) TO STDOUT` reads, as written (`s.t`, `"Mixed"`), its CTEs' names
/// included. (`COPY table TO` has none: PostgreSQL copies no view that way.)
fn query_relations(query: &sqlparser::ast::Query) -> Vec<String> {
    // A CTE's name is looked up too: which name a reference means depends on scopes this reading
    // does not follow (`… FROM v WHERE EXISTS (WITH v AS (…) …)` reads the real view `v`), and a
    // name that is no relation costs nothing.
    let mut names: Vec<String> = Vec::new();
    super::derived::add_relations(query, &mut names);
    names
}

impl CopyPlan {
    /// The relations the COPY's query reads, as written; empty for `COPY table TO`.
    pub fn relations(&self) -> &[String] {
        &self.relations
    }

    /// Redacts the output columns with these names (compared without regard to case): columns a view the
    /// query reads computes from masked ones, which the output names alone cannot show. A query that
    /// renames such a column or computes from it (`SELECT tax_id AS x`, `upper(tax_id)`) is refused,
    /// as other computed output is.
    pub fn redact_columns(&mut self, rules: &CompiledRules, names: Vec<String>) {
        if !names.is_empty()
            && super::derived::exposes_beyond_named_columns(&self.statements, rules, &names)
        {
            self.derived = true;
        }
        self.exposed = names;
    }

    /// Checks the CopyOutResponse body and fixes the column plan.
    pub fn start(&mut self, masker: &Masker, body: &[u8]) -> Result<(), CopyError> {
        let (&overall, rest) = body.split_first().ok_or(CopyError::BadRow)?;
        if overall != 0 {
            return Err(CopyError::Binary);
        }
        let n = rest
            .get(..2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
            .ok_or(CopyError::BadRow)?;
        if let Some(names) = &self.names {
            if names.len() != n.max(0) as usize {
                self.names = None;
            }
        }
        if !self.header_pending {
            self.fix_plan(masker, n.max(0) as usize)?;
        }
        Ok(())
    }

    fn fix_plan(&mut self, masker: &Masker, n: usize) -> Result<(), CopyError> {
        if self.names.is_none() && masker.rules().has_column_rules() {
            return Err(CopyError::UnknownColumns);
        }
        if self.derived {
            return Err(CopyError::Derived);
        }
        let plan = (0..n)
            .map(|i| {
                let name = self
                    .names
                    .as_ref()
                    .and_then(|v| v.get(i))
                    .map_or("", String::as_str);
                let mut col = masker.column(name, 25, false);
                col.class = TypeClass::Text;
                if self.exposed.iter().any(|e| e.eq_ignore_ascii_case(name)) {
                    col.style = Some(super::style::Style::Redact);
                }
                col
            })
            .collect();
        self.plan = Some(plan);
        Ok(())
    }

    /// Masks one CopyData payload (one row); returns the fields masked and, when any, the new payload.
    pub fn mask_row(
        &mut self,
        masker: &Masker,
        row: &[u8],
    ) -> Result<(u64, Option<Vec<u8>>), CopyError> {
        let text = std::str::from_utf8(row).map_err(|_| super::UnreadableValue)?;
        let line = text.strip_suffix('\n').ok_or(CopyError::BadRow)?;
        self.fields.clear();
        match self.format {
            CopyFormat::Text => split_text(line, &mut self.fields)?,
            CopyFormat::Csv => split_csv(line, &mut self.fields)?,
        }
        if self.header_pending {
            self.header_pending = false;
            if self.names.is_none() {
                self.names = Some(
                    self.fields
                        .iter()
                        .map(|f| f.value.clone().unwrap_or_default())
                        .collect(),
                );
            }
            self.fix_plan(masker, self.fields.len())?;
            return Ok((0, None));
        }
        let plan = self.plan.as_ref().ok_or(CopyError::BadRow)?;
        if plan.len() != self.fields.len() {
            return Err(CopyError::BadRow);
        }
        let mut out: Option<String> = None;
        let mut copied = 0;
        let mut masked = 0;
        for (field, col) in self.fields.iter().zip(plan) {
            let Some(value) = &field.value else { continue };
            if !col.active() {
                continue;
            }
            let replacement = match masker.mask_value(col, value.as_bytes(), &mut self.findings)? {
                Masked::Unchanged => continue,
                Masked::Null => None,
                Masked::Text(t) => Some(t),
            };
            masked += 1;
            let o = out.get_or_insert_with(|| String::with_capacity(row.len() + 16));
            o.push_str(&line[copied..field.range.start]);
            match (self.format, replacement) {
                (CopyFormat::Text, None) => o.push_str("\\N"),
                (CopyFormat::Text, Some(t)) => escape_text(&t, o),
                (CopyFormat::Csv, None) => {}
                (CopyFormat::Csv, Some(t)) => quote_csv(&t, o),
            }
            copied = field.range.end;
        }
        Ok((
            masked,
            out.map(|mut o| {
                o.push_str(&line[copied..]);
                o.push('\n');
                o.into_bytes()
            }),
        ))
    }
}

fn split_text(line: &str, out: &mut Vec<Field>) -> Result<(), CopyError> {
    let mut start = 0;
    for part in line.split('\t') {
        let range = start..start + part.len();
        start = range.end + 1;
        let value = if part == "\\N" {
            None
        } else {
            Some(unescape_text(part)?)
        };
        out.push(Field { range, value });
    }
    Ok(())
}

fn unescape_text(s: &str) -> Result<String, CopyError> {
    if !s.contains('\\') {
        return Ok(s.to_string());
    }
    let mut bytes = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            bytes.push(b[i]);
            i += 1;
            continue;
        }
        let c = *b.get(i + 1).ok_or(CopyError::BadRow)?;
        i += 2;
        match c {
            b'b' => bytes.push(8),
            b'f' => bytes.push(12),
            b'n' => bytes.push(b'\n'),
            b'r' => bytes.push(b'\r'),
            b't' => bytes.push(b'\t'),
            b'v' => bytes.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                let mut k = 0;
                while k < 2 && i < b.len() && (b'0'..=b'7').contains(&b[i]) {
                    v = v * 8 + u32::from(b[i] - b'0');
                    i += 1;
                    k += 1;
                }
                bytes.push(v as u8);
            }
            b'x' => {
                let hex: String = s[i..]
                    .chars()
                    .take(2)
                    .take_while(char::is_ascii_hexdigit)
                    .collect();
                i += hex.len();
                bytes.push(u8::from_str_radix(&hex, 16).map_err(|_| CopyError::BadRow)?);
            }
            other => bytes.push(other),
        }
    }
    String::from_utf8(bytes).map_err(|_| CopyError::Unreadable(super::UnreadableValue))
}

fn escape_text(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
}

fn split_csv(line: &str, out: &mut Vec<Field>) -> Result<(), CopyError> {
    let b = line.as_bytes();
    let mut i = 0;
    loop {
        let start = i;
        let value = if b.get(i) == Some(&b'"') {
            let mut v = String::new();
            i += 1;
            let mut seg = i;
            loop {
                let q = line[i..].find('"').ok_or(CopyError::BadRow)? + i;
                if b.get(q + 1) == Some(&b'"') {
                    v.push_str(&line[seg..=q]);
                    i = q + 2;
                    seg = i;
                } else {
                    v.push_str(&line[seg..q]);
                    i = q + 1;
                    break;
                }
            }
            Some(v)
        } else {
            let end = line[i..].find(',').map_or(line.len(), |k| k + i);
            let v = &line[i..end];
            i = end;
            (!v.is_empty()).then(|| v.to_string())
        };
        out.push(Field {
            range: start..i,
            value,
        });
        match b.get(i) {
            None => return Ok(()),
            Some(b',') => i += 1,
            Some(_) => return Err(CopyError::BadRow),
        }
    }
}

fn quote_csv(s: &str, out: &mut String) {
    out.push('"');
    out.push_str(&s.replace('"', "\"\""));
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::masking::MaskingConfig;

    fn masker() -> Masker {
        let cfg: MaskingConfig = toml::from_str(
            "[[rules]]\ncolumns=[\"ssn\"]\nstyle=\"redact\"\n[[rules]]\ndetect=[\"email\"]\nstyle=\"partial\"",
        )
        .unwrap();
        Masker::new(&cfg, None).unwrap()
    }

    #[test]
    fn the_relations_a_copy_query_reads_are_listed_with_cte_names_too() {
        for (sql, want) in [
            ("COPY (SELECT a FROM s.v) TO STDOUT", vec!["s.v"]),
            (
                "COPY (SELECT v.a, t.b FROM v JOIN \"Mixed\" t ON true WHERE x IN (SELECT y FROM w)) TO STDOUT",
                vec!["v", "\"Mixed\"", "w"],
            ),
            (
                "COPY (WITH w AS (SELECT a FROM v) SELECT a FROM w, (WITH u AS (SELECT 1 AS a) SELECT a FROM u) q) TO STDOUT",
                vec!["v", "w", "u"],
            ),
            // A CTE named like a view, nested elsewhere, does not hide the view the query reads.
            (
                "COPY (SELECT id, h FROM vp WHERE EXISTS (WITH vp AS (SELECT 1) SELECT 1 FROM vp)) TO STDOUT",
                vec!["vp"],
            ),
            ("COPY t (a) TO STDOUT", vec![]),
            ("COPY (SELECT 1) TO STDOUT", vec![]),
            ("not sql", vec![]),
        ] {
            let relations = plan_copy(sql, masker().rules()).map(|p| p.relations).unwrap_or_default();
            assert_eq!(relations, want, "{sql}");
        }
    }

    #[test]
    fn several_copies_in_one_query_string_are_refused() {
        let m = masker();
        let sql = "COPY (SELECT name, hashed FROM customers) TO STDOUT; COPY (SELECT id, name FROM customers) TO STDOUT";
        assert!(matches!(plan_copy(sql, m.rules()), Err(CopyError::Several)));
        // One COPY after other statements is still planned.
        assert!(plan_copy("SET x = 1; COPY (SELECT name FROM t) TO STDOUT", m.rules()).is_ok());
    }

    fn run(sql: &str, rows: &[&str]) -> Result<Vec<String>, CopyError> {
        let m = masker();
        let mut p = plan_copy(sql, m.rules())?;
        let ncols = rows.last().map_or(0, |r| {
            r.split(if p.format == CopyFormat::Csv {
                ','
            } else {
                '\t'
            })
            .count()
        });
        let mut body = vec![0u8];
        body.extend_from_slice(&(ncols as i16).to_be_bytes());
        p.start(&m, &body)?;
        rows.iter()
            .map(|r| {
                let (_, out) = p.mask_row(&m, r.as_bytes())?;
                Ok(out.map_or_else(|| r.to_string(), |o| String::from_utf8(o).unwrap()))
            })
            .collect()
    }

    #[test]
    fn text_copy_masks_named_columns_and_detected_values_with_escapes_intact() {
        let got = run(
            "COPY t (id, ssn, note) TO STDOUT",
            &[
                "1\t123-45-6789\tmail jane@example.com\\tnow\n",
                "2\t\\N\tno\\\\pe\n",
            ],
        )
        .unwrap();
        assert_eq!(
            got,
            [
                "1\t[redacted]\tmail j***@example.com\\tnow\n",
                "2\t\\N\tno\\\\pe\n"
            ]
        );
    }

    #[test]
    fn csv_copy_with_header_learns_names_and_requotes() {
        let got = run(
            "COPY (SELECT * FROM t) TO STDOUT WITH (FORMAT csv, HEADER true)",
            &[
                "id,ssn,note\n",
                "1,\"123-45-6789\",\"say \"\"hi\"\" to ana@example.com\"\n",
                "2,,\"\"\n",
            ],
        )
        .unwrap();
        assert_eq!(got[0], "id,ssn,note\n");
        assert_eq!(
            got[1],
            "1,\"[redacted]\",\"say \"\"hi\"\" to a**@example.com\"\n"
        );
        assert_eq!(got[2], "2,,\"\"\n");
    }

    #[test]
    fn copy_that_cannot_be_masked_safely_is_refused() {
        assert_eq!(
            run("COPY t TO STDOUT", &["1\t2\n"]).unwrap_err(),
            CopyError::UnknownColumns
        );
        assert_eq!(
            run("COPY t (a) TO STDOUT WITH (FORMAT binary)", &[]).unwrap_err(),
            CopyError::Binary
        );
        assert!(matches!(
            run("COPY t (a) TO STDOUT WITH (DELIMITER '|')", &[]),
            Err(CopyError::Option(_))
        ));
        assert_eq!(
            run("COPY t (a, b) TO STDOUT", &["1\t2"]).unwrap_err(),
            CopyError::BadRow
        );
        assert_eq!(
            run("COPY t (a, b) TO STDOUT", &["1\n", "1\t2\n"]).unwrap_err(),
            CopyError::BadRow
        );
        // Statistics catalogs hold sample values of masked columns under names no rule knows.
        for (sql, row) in [
            ("COPY pg_statistic (stavalues1) TO STDOUT", "{a}\n"),
            (
                "COPY pg_catalog.pg_statistic (starelid, stavalues1, stavalues2) TO STDOUT WITH (FORMAT csv)",
                "1,{a},{b}\n",
            ),
            ("COPY \"pg_statistic_ext_data\" (stxdmcv) TO STDOUT", "x\n"),
        ] {
            assert_eq!(run(sql, &[row]).unwrap_err(), CopyError::Derived, "{sql}");
        }
        assert!(run("COPY t (id) TO STDOUT", &["1\n"]).is_ok());
    }
}
