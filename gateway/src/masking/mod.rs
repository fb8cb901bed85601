//! Inline masking of sensitive result data, per connection, on the wire and in the HTTP API.
//!
//! A [`Masker`] holds one connection's compiled rules. For each result it builds a [`ResultPlan`] from the
//! column names and types, then masks values one at a time:
//! - a column rule replaces the whole value in its style; a detector rule replaces only what it found;
//! - a masked value of a text type (`text`, `varchar`, `bpchar`, `name`, `char`, `unknown`) becomes the
//!   styled text, in text and binary format alike (their binary form is the UTF-8 text);
//! - a masked value of any other type becomes **NULL**: an `int8` cannot carry `hash:…`, and a broken
//!   `json` would be worse than none;
//! - detectors read text-format values of every type and binary values of text, JSON, integer and
//!   numeric types, and binary built-in arrays of those (element by element; an array holding a finding
//!   becomes NULL); binary values of types the gateway cannot read (other arrays, records, enums,
//!   extension types) become NULL when detectors are on, and `inet`/`cidr` values become NULL when IP detectors
//!   are on. **Fail closed:** what cannot be inspected is not passed through.
//!
//! **Architecture invariant:** a connection without masking rules has no `Masker`; its bytes never
//! reach this module.

pub mod candidates;
pub mod copy;
pub mod datarow;
pub mod derived;
pub mod detect;
pub mod hash_cache;
pub mod messages;
pub mod rules;
pub mod stream;
pub mod style;
pub mod tables;
mod utf8;

/// A fixed linear congruential generator for tests over generated values: the same sequence on every
/// run. Each call `next(n)` gives a number in `0..n`.
#[cfg(test)]
pub(crate) fn fixed_sequence(seed: u64) -> impl FnMut(usize) -> usize {
    let mut state = seed;
    move |n| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as usize % n
    }
}

pub use detect::{Detector, DetectorSet, Finding};
pub use hash_cache::HashCache;
pub use rules::{CompiledRules, MaskRule, MaskingConfig, MaskingError};
pub use stream::WireMasker;
pub use style::{Style, StyleName};
pub use tables::{ColumnSource, TableLookup, TableNames};

use crate::upstream::{Column, ResultSet};

/// One connection's compiled masking rules; shared by its sessions.
#[derive(Debug)]
pub struct Masker {
    rules: CompiledRules,
}

/// How a column's values are read and replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeClass {
    /// Text types: masked values become styled text.
    Text,
    /// `json`, `jsonb`, `xml`: scanned as text, masked to NULL.
    Json,
    /// `int2`, `int4`, `int8`, `oid`: binary decoded for scanning, masked to NULL.
    Int,
    /// `numeric`: binary decoded for scanning, masked to NULL.
    Numeric,
    /// `float4`, `float8`: binary decoded for scanning, masked to NULL (a float8 holds every integer
    /// up to 2^53 exactly, so a card number stored as one is a card number).
    Float,
    /// `money`: binary (cents) decoded for scanning, masked to NULL.
    Money,
    /// `inet`, `cidr`: NULL whenever IP detectors are on.
    Inet,
    /// Types whose values cannot hold the detected formats in binary (bool, dates, uuid).
    Plain,
    /// `bytea`: its bytes are read as text (decoded from `\x…` hex or escape output in text format)
    /// for scanning, masked to NULL.
    Bytes,
    /// Built-in arrays: binary elements are read as their element type (the array names it) and the
    /// whole array becomes NULL when one is found to hold something.
    Array,
    /// Anything else (arrays, records, enums, domains, extension types): binary values are unreadable.
    Unknown,
}

impl TypeClass {
    /// The class of a PostgreSQL type OID.
    pub fn of(type_oid: u32) -> TypeClass {
        match type_oid {
            25 | 1043 | 1042 | 19 | 705 => TypeClass::Text,
            114 | 3802 | 142 => TypeClass::Json,
            20 | 21 | 23 | 26 => TypeClass::Int,
            1700 => TypeClass::Numeric,
            869 | 650 => TypeClass::Inet,
            // `"char"` (18) is one byte: no style's text fits it, and no detector matches one character.
            700 | 701 => TypeClass::Float,
            790 => TypeClass::Money,
            16 | 18 | 1082 | 1083 | 1114 | 1184 | 1186 | 1266 | 2950 => TypeClass::Plain,
            17 => TypeClass::Bytes,
            // Arrays of the types above (text, json, integer, numeric, inet and plain elements).
            1009 | 1015 | 1014 | 1003 | 199 | 3807 | 143 | 1005 | 1007 | 1016 | 1028 | 1231
            | 1041 | 651 | 1000 | 1001 | 1002 | 1021 | 1022 | 1182 | 1183 | 1115 | 1185 | 1187
            | 1270 | 2951 => TypeClass::Array,
            _ => TypeClass::Unknown,
        }
    }
}

/// The masking decision for one column of a result.
#[derive(Debug, Clone)]
pub struct ColumnPlan {
    /// Whole-value style from the first matching column rule.
    pub style: Option<Style>,
    /// True when detectors scan this column.
    pub detect: bool,
    /// Type class.
    pub class: TypeClass,
    /// Binary format (from RowDescription / CopyOutResponse).
    pub binary: bool,
}

impl ColumnPlan {
    /// True when values of this column need looking at.
    pub fn active(&self) -> bool {
        self.style.is_some() || self.detect
    }
}

/// PostgreSQL's own relations have OIDs below this (`FirstNormalObjectId`).
const FIRST_NORMAL_OID: u32 = 16384;

/// True for a system view's column of other sessions' statement text (`pg_stat_activity.query`): its
/// literals may be values of masked columns, which no column rule can follow into the text.
fn shows_statement_text(oid: u32, name: &str) -> bool {
    oid < FIRST_NORMAL_OID && name == "query"
}

/// The pseudo-type of statistics samples (`pg_statistic.stavaluesN`, `pg_stats.most_common_vals`).
const ANYARRAY: u32 = 2277;

/// Types that hold statistics samples of other columns: `anyarray` (`pg_statistic.stavalues1`,
/// `pg_stats.histogram_bounds`), and extended statistics' `pg_ndistinct`, `pg_dependencies` and
/// `pg_mcv_list` (`pg_statistic_ext_data.stxdmcv` holds most common values of masked columns).
const STATISTICS_TYPES: [u32; 4] = [ANYARRAY, 3361, 3402, 5017];

/// True for types whose text no detector can match: an `int2`, `int4` or `oid` prints as at most 11
/// characters, `-` and digits (too few digits for a card's 13, and neither the `+`, the separators
/// nor the dashes a phone number or SSN of up to 10 digits needs), and a `bool` as `t`/`f`. Their
/// text-format values are not scanned; binary values are still checked for a readable length.
/// `int8` and `numeric` are scanned.
fn too_short_for_detectors(type_oid: u32) -> bool {
    matches!(type_oid, 16 | 21 | 23 | 26)
}

/// The bytes of a `bytea` in PostgreSQL's text output: `\x` and hex digits (`bytea_output = hex`), or
/// the escape format (`\\` for a backslash, `\ooo` octal for other bytes); None when it is neither.
fn decode_bytea_text(raw: &[u8]) -> Option<Vec<u8>> {
    if let Some(hex) = raw.strip_prefix(b"\\x") {
        return hex::decode(hex).ok();
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        match raw[i] {
            b'\\' if raw.get(i + 1) == Some(&b'\\') => {
                out.push(b'\\');
                i += 2;
            }
            b'\\' => {
                let digits = raw.get(i + 1..i + 4)?;
                if !digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                    return None;
                }
                let value = digits.iter().fold(0u16, |v, d| v * 8 + u16::from(d - b'0'));
                out.push(u8::try_from(value).ok()?);
                i += 4;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Some(out)
}

/// Masking decisions for every column of one result.
#[derive(Debug, Clone, Default)]
pub struct ResultPlan {
    /// One entry per column.
    pub columns: Vec<ColumnPlan>,
}

impl ResultPlan {
    /// True when some column needs looking at.
    pub fn active(&self) -> bool {
        self.columns.iter().any(ColumnPlan::active)
    }
}

/// What a value becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Masked {
    /// Pass the original bytes.
    Unchanged,
    /// SQL NULL.
    Null,
    /// This text instead.
    Text(String),
}

/// What a value becomes, when its replacement text was written to a caller's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Pass the original bytes.
    Unchanged,
    /// SQL NULL.
    Null,
    /// The text appended to the caller's buffer.
    Text,
}

/// Buffers reused from value to value, and the session's cache of keyed-hash outputs.
#[derive(Debug, Default)]
pub struct MaskScratch {
    findings: Vec<Finding>,
    decoded: String,
    hashes: HashCache,
}

impl MaskScratch {
    /// Scratch space without a hash cache (for one-off values).
    pub fn uncached() -> Self {
        Self {
            findings: Vec::new(),
            decoded: String::new(),
            hashes: HashCache::disabled(),
        }
    }
}

/// A value the masker could not read; the row is withheld.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a value of a masked column is not valid UTF-8; set client_encoding to UTF8 on masked connections")]
pub struct UnreadableValue;

impl Masker {
    /// Compiles a connection's rules; `key` is the resolved hash key.
    pub fn new(config: &MaskingConfig, key: Option<&[u8]>) -> Result<Masker, MaskingError> {
        Ok(Masker {
            rules: CompiledRules::compile(config, key)?,
        })
    }

    /// The compiled rules.
    pub fn rules(&self) -> &CompiledRules {
        &self.rules
    }

    /// The plan for a column of this name, type and format from an unknown table.
    pub fn column(&self, name: &str, type_oid: u32, binary: bool) -> ColumnPlan {
        self.column_from(name, ColumnSource::Unknown, type_oid, binary)
    }

    /// The plan for a column of this name, table, type and format.
    pub fn column_from(
        &self,
        name: &str,
        source: ColumnSource<'_>,
        type_oid: u32,
        binary: bool,
    ) -> ColumnPlan {
        self.column_named(name, None, source, type_oid, binary)
    }

    /// Which computed (table-less) columns of `sql`'s `columns`-wide result may carry a column a rule
    /// masks by name.
    pub fn computed_exposure(
        &self,
        sql: &str,
        columns: usize,
        view_columns: Option<&[String]>,
    ) -> derived::Exposure {
        derived::exposure(sql, &self.rules, columns, view_columns)
    }

    /// The plan for column `attnum` of table `oid` (0: none) shown as `label`, its table and real name
    /// resolved through `tables`. Fail closed, whatever rule its label matches: a column without a table
    /// is redacted when `derived` (its statement computes it from a masked column, see
    /// [`Masker::computed_exposure`]), a whole row (attnum 0) of a table with a masked column (or whose
    /// columns are unknown) is redacted, and a table column whose real name a failed lookup left unknown
    /// is redacted on a connection with column rules (the label may be an alias of a masked column).
    pub fn column_in(
        &self,
        label: &str,
        (oid, attnum): (u32, i16),
        tables: &TableNames,
        (type_oid, binary): (u32, bool),
        derived: bool,
    ) -> ColumnPlan {
        let real = tables.column_name(oid, attnum);
        let source = tables.source(oid);
        let mut plan = self.column_named(label, real, source, type_oid, binary);
        // Every column of a statistics catalog may hold samples of masked columns (a whole
        // `pg_statistic` row, `pg_statistic_ext_data.stxdexpr`).
        let statistics = matches!(source, ColumnSource::Table { schema: "pg_catalog", table }
            if derived::is_statistics_catalog(table));
        let hidden = if statistics {
            self.rules.has_column_rules()
        } else if oid == 0 {
            derived
        } else if attnum == 0 {
            // A whole row of the table (`SELECT t FROM people t`): one value holding every column.
            self.rules.has_column_rules() && tables.row_exposes(oid, &self.rules)
        } else {
            self.rules.has_column_rules()
                && (tables.name_lost(oid, attnum)
                    || tables.unseen(oid)
                    || tables.view_exposes(oid, attnum)
                    || shows_statement_text(oid, real.unwrap_or(label)))
        };
        // A style picked by the label alone is not the hidden column's: `substr(ssn, 1, 4) AS email`
        // under a keep-last `*email*` rule showed four characters of a redacted column per alias, and
        // a keyed hash of chosen pieces is an oracle. Only redaction is safe for what is hidden.
        if hidden {
            plan.style = Some(Style::Redact);
        }
        plan
    }

    /// The plan for a column shown as `label` whose real name in its table is `real` (when known):
    /// a rule matching either masks it, so an alias never unmasks a column.
    pub fn column_named(
        &self,
        label: &str,
        real: Option<&str>,
        source: ColumnSource<'_>,
        type_oid: u32,
        binary: bool,
    ) -> ColumnPlan {
        let class = TypeClass::of(type_oid);
        let detectors = self.rules.detectors;
        let ip_on = self.ip_detectors_on();
        // An alias never picks a weaker style than the column's own: where the label and the real
        // name match rules with different styles (`SELECT ssn AS last4`), the value is redacted.
        let by_label = self.rules.column_style_in(label, source);
        let by_name = real.and_then(|r| self.rules.column_style_in(r, source));
        let mut style = match (by_label, by_name) {
            (Some(a), Some(b)) if !a.same_as(b) => Some(Style::Redact),
            (a, b) => a.or(b).cloned(),
        };
        if style.is_none() && class == TypeClass::Inet && ip_on {
            style = Some(Style::Redact);
        }
        // Statistics samples of every column, masked ones included.
        if style.is_none() && STATISTICS_TYPES.contains(&type_oid) && self.rules.has_column_rules()
        {
            style = Some(Style::Redact);
        }
        ColumnPlan {
            style,
            detect: !detectors.is_empty() && (binary || !too_short_for_detectors(type_oid)),
            class,
            binary,
        }
    }

    /// Masks one non-NULL value; `findings` is scratch space. Allocates the result: the hot paths use
    /// [`Masker::mask_value_into`].
    pub fn mask_value(
        &self,
        col: &ColumnPlan,
        raw: &[u8],
        findings: &mut Vec<Finding>,
    ) -> Result<Masked, UnreadableValue> {
        let mut scratch = MaskScratch {
            findings: std::mem::take(findings),
            ..MaskScratch::uncached()
        };
        let mut out = String::new();
        let outcome = self.mask_value_into(col, raw, &mut scratch, &mut out);
        *findings = scratch.findings;
        Ok(match outcome? {
            Outcome::Unchanged => Masked::Unchanged,
            Outcome::Null => Masked::Null,
            Outcome::Text => Masked::Text(out),
        })
    }

    /// Masks one non-NULL value; a replacement text is appended to `out`. Allocates nothing once
    /// `scratch` and `out` have grown to the session's values.
    pub fn mask_value_into(
        &self,
        col: &ColumnPlan,
        raw: &[u8],
        scratch: &mut MaskScratch,
        out: &mut String,
    ) -> Result<Outcome, UnreadableValue> {
        let MaskScratch {
            findings,
            decoded,
            hashes,
        } = scratch;
        if let Some(style) = &col.style {
            if col.class != TypeClass::Text {
                return Ok(Outcome::Null);
            }
            let text = std::str::from_utf8(raw).map_err(|_| UnreadableValue)?;
            style.apply_cached(text, out, hashes);
            return Ok(Outcome::Text);
        }
        if !col.detect {
            return Ok(Outcome::Unchanged);
        }
        let text: &str = match (col.binary, col.class) {
            (binary, TypeClass::Bytes) => {
                decoded.clear();
                if binary {
                    decoded.push_str(&String::from_utf8_lossy(raw));
                } else {
                    let bytes = decode_bytea_text(raw).ok_or(UnreadableValue)?;
                    decoded.push_str(&String::from_utf8_lossy(&bytes));
                }
                decoded
            }
            // A float in exponent form (`4.111111111111111e+15`) is an integer a client reads back
            // exactly: scanned in positional notation, as binary floats are.
            (false, TypeClass::Float) if raw.iter().any(|b| matches!(b, b'e' | b'E')) => {
                decoded.clear();
                write_float_text(raw, decoded).ok_or(UnreadableValue)?;
                decoded
            }
            // `money` is a 64-bit count of cents: scanned as the number it holds.
            (true, TypeClass::Money) => {
                decoded.clear();
                write_money(raw, decoded).ok_or(UnreadableValue)?;
                decoded
            }
            (false, _) | (true, TypeClass::Text) | (true, TypeClass::Json) => {
                let bytes = if col.binary && raw.first() == Some(&1) && col.class == TypeClass::Json
                {
                    // jsonb binary: a version byte, then the text.
                    &raw[1..]
                } else {
                    raw
                };
                // One pass rules detectors out and tells ASCII apart: most values end here, with
                // no UTF-8 validation (ASCII is valid UTF-8) and no detector run.
                let screen = candidates::screen(bytes, self.rules.detectors);
                if screen.candidates.is_empty() {
                    if !screen.ascii && !utf8::is_valid(bytes) {
                        return Err(UnreadableValue);
                    }
                    return Ok(Outcome::Unchanged);
                }
                let text = std::str::from_utf8(bytes).map_err(|_| UnreadableValue)?;
                detect::find_among(text, screen.candidates, findings);
                return self.replace_findings(col, text, findings, hashes, out);
            }
            // An `int2`/`int4` prints as at most 11 characters, `-` and digits: too few digits for a
            // card (13), and neither the `+`, the separators nor the dashes every phone number and SSN
            // of up to 10 digits needs. No detector can match; `int8` is decoded and scanned. (In text
            // format such columns are not scanned at all: see `too_short_for_detectors`.)
            (true, TypeClass::Int) if matches!(raw.len(), 2 | 4) => return Ok(Outcome::Unchanged),
            (true, TypeClass::Int) => {
                decoded.clear();
                write_int(raw, decoded).ok_or(UnreadableValue)?;
                decoded
            }
            (true, TypeClass::Numeric) => {
                decoded.clear();
                write_numeric(raw, decoded).ok_or(UnreadableValue)?;
                decoded
            }
            (true, TypeClass::Float) => {
                decoded.clear();
                write_float(raw, decoded).ok_or(UnreadableValue)?;
                decoded
            }
            (true, TypeClass::Plain) | (true, TypeClass::Inet) => return Ok(Outcome::Unchanged),
            (true, TypeClass::Array) => return Ok(self.scan_binary_array(raw, scratch)),
            (true, TypeClass::Unknown) => return Ok(Outcome::Null),
        };
        detect::find(text, self.rules.detectors, findings);
        self.replace_findings(col, text, findings, hashes, out)
    }

    /// True when an IP detector is on: binary `inet`/`cidr` values are then not passed through.
    fn ip_detectors_on(&self) -> bool {
        let detectors = self.rules.detectors;
        detectors.contains(Detector::Ipv4) || detectors.contains(Detector::Ipv6)
    }

    /// A binary array (`ndim`, flags, element type, dimensions, then length-prefixed elements): unchanged
    /// when no element holds anything the detectors find, NULL when one does or the array can't be read
    /// (an element can't be replaced in place, and a nested or unreadable element type is not guessed).
    fn scan_binary_array(&self, raw: &[u8], scratch: &mut MaskScratch) -> Outcome {
        let word = |at: usize| -> Option<i32> {
            Some(i32::from_be_bytes(raw.get(at..at + 4)?.try_into().ok()?))
        };
        let Some((ndim, element)) = word(0).zip(word(8)) else {
            return Outcome::Null;
        };
        let class = TypeClass::of(element as u32);
        if !(0..=6).contains(&ndim)
            || matches!(class, TypeClass::Array | TypeClass::Unknown)
            || (class == TypeClass::Inet && self.ip_detectors_on())
        {
            return Outcome::Null;
        }
        let plan = ColumnPlan {
            style: None,
            detect: true,
            class,
            binary: true,
        };
        let mut at = 12 + 8 * ndim as usize;
        let mut out = String::new();
        while at < raw.len() {
            let Some(len) = word(at) else {
                return Outcome::Null;
            };
            at += 4;
            if len < 0 {
                continue;
            }
            let Some(value) = raw.get(at..at + len as usize) else {
                return Outcome::Null;
            };
            at += len as usize;
            match self.mask_value_into(&plan, value, scratch, &mut out) {
                Ok(Outcome::Unchanged) => {}
                _ => return Outcome::Null,
            }
        }
        Outcome::Unchanged
    }

    /// Appends `text` with its `findings` styled to `out` (NULL for non-text types).
    fn replace_findings(
        &self,
        col: &ColumnPlan,
        text: &str,
        findings: &[Finding],
        hashes: &mut HashCache,
        out: &mut String,
    ) -> Result<Outcome, UnreadableValue> {
        if findings.is_empty() {
            return Ok(Outcome::Unchanged);
        }
        if col.class != TypeClass::Text {
            return Ok(Outcome::Null);
        }
        out.reserve(text.len() + 16);
        let mut at = 0;
        // Findings often cover the whole value: empty stretches are not pushed.
        for f in findings.iter() {
            if f.range.start > at {
                out.push_str(&text[at..f.range.start]);
            }
            let style = self.rules.detector_style(f.detector);
            let value = &text[f.range.clone()];
            if f.detector == Detector::Email {
                style.apply_to_email(value, out, hashes);
            } else {
                style.apply_cached(value, out, hashes);
            }
            at = f.range.end;
        }
        if at < text.len() {
            out.push_str(&text[at..]);
        }
        Ok(Outcome::Text)
    }

    /// Masks an HTTP API result set in place (text format), its columns' tables unknown; returns the
    /// number of fields masked.
    pub fn mask_result_set(&self, set: &mut ResultSet) -> u64 {
        self.mask_result_set_from(set, &[], &[], &TableNames::default())
    }

    /// Masks an HTTP API result set in place (text format); `table_oids` holds each column's table OID
    /// (missing: unknown), resolved through `tables`. Returns the number of fields masked.
    pub fn mask_result_set_from(
        &self,
        set: &mut ResultSet,
        table_oids: &[u32],
        attnums: &[i16],
        tables: &TableNames,
    ) -> u64 {
        let nothing = derived::Exposure::Nothing;
        self.mask_result_set_of(set, (table_oids, attnums), tables, &nothing)
    }

    /// As [`Masker::mask_result_set_from`]; columns without a table that `derived` covers (see
    /// [`Masker::computed_exposure`]) are redacted.
    pub fn mask_result_set_of(
        &self,
        set: &mut ResultSet,
        (table_oids, attnums): (&[u32], &[i16]),
        tables: &TableNames,
        derived: &derived::Exposure,
    ) -> u64 {
        let plan: Vec<ColumnPlan> = set
            .columns
            .iter()
            .enumerate()
            .map(|(i, Column { name, type_oid })| {
                let oid = table_oids.get(i).copied().unwrap_or(0);
                // Unknown is not 0, which names a whole row.
                let attnum = attnums.get(i).copied().unwrap_or(-1);
                self.column_in(
                    name,
                    (oid, attnum),
                    tables,
                    (*type_oid, false),
                    derived.covers(i),
                )
            })
            .collect();
        // Rows wider than their description (COPY output has none) are checked below even then.
        if !plan.iter().any(ColumnPlan::active) && set.rows.iter().all(|r| r.len() <= plan.len()) {
            return 0;
        }
        let mut scratch = MaskScratch::default();
        let mut masked = 0;
        for row in &mut set.rows {
            for (value, col) in row.iter_mut().zip(&plan) {
                let Some(text) = value.as_deref() else {
                    continue;
                };
                let mut out = String::new();
                // API values are Rust strings, so always readable.
                match self.mask_value_into(col, text.as_bytes(), &mut scratch, &mut out) {
                    Ok(Outcome::Unchanged) => continue,
                    Ok(Outcome::Text) => *value = Some(out),
                    Ok(Outcome::Null) | Err(_) => *value = None,
                }
                masked += 1;
            }
            // A row wider than its description has values no rule has seen: withhold them.
            if row.len() > plan.len() {
                masked += row[plan.len()..].iter().filter(|v| v.is_some()).count() as u64;
                row.truncate(plan.len());
            }
        }
        masked
    }
}

/// Appends the decimal text of a binary `int2`/`int4`/`int8`.
fn write_int(raw: &[u8], out: &mut String) -> Option<()> {
    use std::fmt::Write;
    let _ = match raw.len() {
        2 => write!(out, "{}", i16::from_be_bytes(raw.try_into().ok()?)),
        4 => write!(out, "{}", i32::from_be_bytes(raw.try_into().ok()?)),
        8 => write!(out, "{}", i64::from_be_bytes(raw.try_into().ok()?)),
        _ => return None,
    };
    Some(())
}

/// A binary `float4`/`float8` in positional notation (`4222222222222`, never `4.222222222222e12`),
/// so the digits of an integer it holds are there for the detectors.
fn write_float(raw: &[u8], out: &mut String) -> Option<()> {
    use std::fmt::Write;
    let _ = match raw.len() {
        4 => write!(out, "{}", f32::from_be_bytes(raw.try_into().ok()?)),
        8 => write!(out, "{}", f64::from_be_bytes(raw.try_into().ok()?)),
        _ => return None,
    };
    Some(())
}

/// A float's text (`4.111111111111111e+15`) in positional notation, as [`write_float`] writes binary ones.
fn write_float_text(raw: &[u8], out: &mut String) -> Option<()> {
    use std::fmt::Write;
    let value: f64 = std::str::from_utf8(raw).ok()?.trim().parse().ok()?;
    let _ = write!(out, "{value}");
    Some(())
}

/// A binary `money` (a count of cents) as its amount (`-12.50`).
fn write_money(raw: &[u8], out: &mut String) -> Option<()> {
    use std::fmt::Write;
    let cents = i64::from_be_bytes(raw.try_into().ok()?);
    let (sign, abs) = (if cents < 0 { "-" } else { "" }, cents.unsigned_abs());
    let _ = write!(out, "{sign}{}.{:02}", abs / 100, abs % 100);
    Some(())
}

/// The decimal text of a binary `numeric` (for tests; the masker appends with [`write_numeric`]).
#[cfg(test)]
fn decode_numeric(raw: &[u8]) -> Option<String> {
    let mut s = String::new();
    write_numeric(raw, &mut s)?;
    Some(s)
}

/// Appends the decimal text of a binary `numeric` (base-10000 digits with a weight); NaN and infinities
/// as words.
fn write_numeric(raw: &[u8], s: &mut String) -> Option<()> {
    use std::fmt::Write;
    let word = |i: usize| -> Option<i32> {
        Some(i32::from(i16::from_be_bytes([
            *raw.get(i)?,
            *raw.get(i + 1)?,
        ])))
    };
    let ndigits = word(0)?.max(0) as usize;
    let weight = word(2)?;
    let sign = u16::from_be_bytes([*raw.get(4)?, *raw.get(5)?]);
    let dscale = word(6)?.max(0) as usize;
    if raw.len() != 8 + 2 * ndigits {
        return None;
    }
    let word_for_special = match sign {
        0xC000 => Some("NaN"),
        0xD000 => Some("Infinity"),
        0xF000 => Some("-Infinity"),
        _ => None,
    };
    if let Some(w) = word_for_special {
        s.push_str(w);
        return Some(());
    }
    let digit = |i: i32| -> i32 {
        if i >= 0 && (i as usize) < ndigits {
            word(8 + 2 * i as usize).unwrap_or(0)
        } else {
            0
        }
    };
    if sign == 0x4000 {
        s.push('-');
    }
    if weight < 0 {
        s.push('0');
    } else {
        let _ = write!(s, "{}", digit(0));
        for i in 1..=weight {
            let _ = write!(s, "{:04}", digit(i));
        }
    }
    if dscale > 0 {
        s.push('.');
        let frac_start = s.len();
        let mut i = weight + 1;
        while s.len() - frac_start < dscale {
            let _ = write!(s, "{:04}", digit(i));
            i += 1;
        }
        s.truncate(frac_start + dscale);
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masker(rules: &str) -> Masker {
        let cfg: MaskingConfig = toml::from_str(rules).unwrap();
        Masker::new(&cfg, Some(b"k")).unwrap()
    }

    const RULES: &str = r#"
        [[rules]]
        columns = ["*email*"]
        style = "hash"
        [[rules]]
        detect = ["card", "ssn"]
        style = "keep_last"
        keep = 4
    "#;

    fn mask(m: &Masker, name: &str, oid: u32, binary: bool, raw: &[u8]) -> Masked {
        m.mask_value(&m.column(name, oid, binary), raw, &mut Vec::new())
            .unwrap()
    }

    #[tokio::test]
    async fn a_view_column_renaming_or_computed_from_a_masked_column_is_redacted() {
        struct Catalog;
        #[async_trait::async_trait]
        impl TableLookup for Catalog {
            async fn lookup(
                &self,
                _: &[u32],
            ) -> Result<Vec<(u32, tables::Relation)>, tables::LookupError> {
                Ok(vec![(
                    9,
                    tables::Relation::View {
                        definition: " SELECT c.id,\n    c.work_email AS contact,\n    lower(c.email) AS e2,\n    c.note\n   FROM customers c;".into(),
                        reads: Vec::new(),
                    },
                )])
            }
        }
        let m = masker(RULES);
        let mut names = TableNames::default();
        names.resolve(&Catalog, &[9], m.rules()).await;
        let style = |label: &str, attnum: i16| {
            m.column_in(label, (9, attnum), &names, (25, false), false)
                .style
                .map(|s| format!("{s:?}"))
        };
        assert_eq!(style("id", 1), None);
        assert_eq!(style("contact", 2).as_deref(), Some("Redact"));
        assert_eq!(style("e2", 3).as_deref(), Some("Redact"));
        assert_eq!(style("note", 4), None);
        // A view column whose own name a rule matches is still redacted: its name says nothing of
        // what it shows (`substr(ssn, 1, 4) AS email` under a hash rule for emails is an oracle).
        assert_eq!(style("email", 2).as_deref(), Some("Redact"));
        // The same view learned without its definition read under the rules: every column redacted.
        let mut unread = TableNames::default();
        unread.learn(
            &[9],
            vec![(
                9,
                tables::Relation::View {
                    definition: String::new(),
                    reads: Vec::new(),
                },
            )],
        );
        assert!(matches!(
            m.column_in("id", (9, 1), &unread, (25, false), false).style,
            Some(Style::Redact)
        ));
    }

    #[test]
    fn statistics_samples_are_redacted_on_connections_with_column_rules() {
        let m = masker(RULES);
        // `SELECT histogram_bounds FROM pg_stats`: a view column of type anyarray.
        let plan = m.column("histogram_bounds", 2277, false);
        assert!(matches!(plan.style, Some(Style::Redact)), "{plan:?}");
        assert!(m.column("attname", 19, false).style.is_none());
        let detect_only = masker("[[rules]]\ndetect = [\"card\"]\nstyle = \"redact\"");
        assert!(detect_only
            .column("histogram_bounds", 2277, false)
            .style
            .is_none());
    }

    #[tokio::test]
    async fn a_whole_row_of_a_table_with_a_masked_column_is_redacted() {
        struct Catalog;
        #[async_trait::async_trait]
        impl TableLookup for Catalog {
            async fn lookup(
                &self,
                oids: &[u32],
            ) -> Result<Vec<(u32, tables::Relation)>, tables::LookupError> {
                Ok(oids
                    .iter()
                    .map(|&oid| {
                        let table = if oid == 5 { "customers" } else { "orders" };
                        (
                            oid,
                            tables::Relation::Table {
                                schema: "public".into(),
                                table: table.into(),
                            },
                        )
                    })
                    .collect())
            }
            async fn columns(
                &self,
                oids: &[u32],
            ) -> Result<Vec<(u32, i16, String)>, tables::LookupError> {
                let mut out = Vec::new();
                for &oid in oids {
                    out.push((oid, 1, "id".to_string()));
                    let second = if oid == 5 { "work_email" } else { "amount" };
                    out.push((oid, 2, second.to_string()));
                }
                Ok(out)
            }
        }
        let m = masker(RULES);
        let mut names = TableNames::default();
        names.resolve(&Catalog, &[5, 6], m.rules()).await;
        // RowDescription of `SELECT c FROM customers c`: the table's OID, attnum 0, type `customers`.
        let row = |names: &TableNames, oid: u32| {
            m.column_in("c", (oid, 0), names, (16_384, false), false)
                .style
                .map(|s| format!("{s:?}"))
        };
        assert_eq!(row(&names, 5).as_deref(), Some("Redact"));
        assert_eq!(row(&names, 6), None, "no column of orders is masked");
        // A table not looked up (or a lookup that failed) may hold anything.
        assert_eq!(row(&TableNames::default(), 6).as_deref(), Some("Redact"));
        // Connections without column rules keep whole rows (detectors still read them).
        let detect_only = masker("[[rules]]\ndetect = [\"card\"]\nstyle = \"redact\"");
        assert!(detect_only
            .column_in("c", (5, 0), &TableNames::default(), (16_384, false), false)
            .style
            .is_none());
    }

    #[tokio::test]
    async fn a_table_column_whose_real_name_a_failed_lookup_hid_is_redacted() {
        struct Refused;
        #[async_trait::async_trait]
        impl TableLookup for Refused {
            async fn lookup(
                &self,
                _: &[u32],
            ) -> Result<Vec<(u32, tables::Relation)>, tables::LookupError> {
                Err(tables::LookupError("refused".into()))
            }
        }
        let m = masker(RULES);
        let mut names = TableNames::default();
        // Before any failure, an unknown table's aliased column is planned by its label.
        assert!(m
            .column_in("contact", (7, 2), &names, (25, false), false)
            .style
            .is_none());
        names.resolve(&Refused, &[7], m.rules()).await;
        // `SELECT email AS contact FROM t` while the catalog can't be read: the alias must not unmask it.
        let plan = m.column_in("contact", (7, 2), &names, (25, false), false);
        assert!(matches!(plan.style, Some(Style::Redact)));
        // Expressions not computed from a masked column keep their usual plans.
        assert!(m
            .column_in("total", (0, 0), &names, (25, false), false)
            .style
            .is_none());
        // A label matching a rule does not say what the column is (`ssn AS email`): redacted, not
        // given the label's weaker hash.
        let own = m.column_in("email", (7, 3), &names, (25, false), false);
        assert!(matches!(own.style, Some(Style::Redact)));
        // A computed column derived from a masked one, named after a rule with a weaker style.
        let computed = m.column_in("email", (0, 0), &names, (25, false), true);
        assert!(matches!(computed.style, Some(Style::Redact)));
        // A literal given that name is the statement's own text: the label's rule applies.
        let literal = m.column_in("email", (0, 0), &names, (25, false), false);
        assert!(matches!(literal.style, Some(Style::Hash(_))));
        // A detector-only connection has no column rule an alias could hide from.
        let detect_only = masker("[[rules]]\ndetect = [\"card\"]\nstyle = \"redact\"");
        assert!(detect_only
            .column_in("contact", (7, 2), &names, (25, false), false)
            .style
            .is_none());
    }

    #[test]
    fn types_too_short_for_any_detector_are_not_scanned_and_could_hide_nothing() {
        let all: DetectorSet = Detector::ALL.into_iter().collect();
        // The longest and most number-like texts these types print: no detector finds anything.
        let extremes = [
            i16::MIN.to_string(),
            i16::MAX.to_string(),
            i32::MIN.to_string(),
            i32::MAX.to_string(),
            u32::MAX.to_string(),
            "4111111111".into(),
            "-2125550100".into(),
            "123456789".into(),
            "t".into(),
            "f".into(),
        ];
        let mut findings = Vec::new();
        for text in &extremes {
            detect::find(text, all, &mut findings);
            assert!(findings.is_empty(), "{text:?} matched {findings:?}");
        }
        let m = masker("[[rules]]\ndetect = [\"card\", \"phone\", \"ssn\"]\nstyle = \"redact\"");
        for (oid, skipped) in [
            (16, true),
            (21, true),
            (23, true),
            (26, true),
            (20, false),
            (1700, false),
            (25, false),
        ] {
            assert_eq!(!m.column("c", oid, false).detect, skipped, "type {oid}");
            // Binary values are still read, so a malformed one is refused.
            assert!(m.column("c", oid, true).detect, "type {oid}");
        }
        // A column rule still masks such a column.
        assert_eq!(
            mask(&masker(RULES), "email_count", 23, false, b"7"),
            Masked::Null
        );
    }

    #[test]
    fn an_alias_never_picks_a_weaker_style_than_the_real_column() {
        let m = masker(
            "[[rules]]\ncolumns = [\"ssn\"]\nstyle = \"redact\"\n\
             [[rules]]\ncolumns = [\"kl\"]\nstyle = \"keep_last\"\nkeep = 4\n\
             [[rules]]\ncolumns = [\"kl2\"]\nstyle = \"keep_last\"\nkeep = 4",
        );
        let plan = |label: &str, real: &str| {
            m.column_named(label, Some(real), ColumnSource::Unknown, 25, false)
                .style
        };
        // `SELECT ssn AS kl`: the label's keep_last would show the last four characters.
        assert!(matches!(plan("kl", "ssn"), Some(Style::Redact)));
        // The same style either way stays.
        assert!(matches!(plan("kl2", "kl"), Some(Style::KeepLast(4))));
        // An alias matching nothing keeps the column's own style, and vice versa.
        assert!(matches!(plan("x", "kl"), Some(Style::KeepLast(4))));
        assert!(matches!(plan("kl", "name"), Some(Style::KeepLast(4))));
    }

    #[test]
    fn column_rule_styles_text_and_nulls_other_types() {
        let m = masker(RULES);
        let Masked::Text(t) = mask(&m, "email", 25, false, b"a@example.com") else {
            panic!("text column must get styled text")
        };
        assert!(t.starts_with("hash:"));
        assert_eq!(
            mask(&m, "email", 25, true, b"a@example.com"),
            Masked::Text(t)
        );
        assert_eq!(mask(&m, "email_count", 23, false, b"7"), Masked::Null);
        // A one-byte `"char"` can't hold a style's text (a binary decoder expects exactly one byte).
        assert_eq!(mask(&m, "email_kind", 18, true, b"a"), Masked::Null);
        assert_eq!(mask(&m, "email_kind", 18, false, b"a"), Masked::Null);
    }

    #[test]
    fn detectors_replace_only_what_they_find_in_text_columns() {
        let m = masker(RULES);
        assert_eq!(
            mask(
                &m,
                "note",
                25,
                false,
                "paid 4111 1111 1111 1111 ✓".as_bytes()
            ),
            Masked::Text("paid ***************1111 ✓".into())
        );
        assert_eq!(
            mask(&m, "note", 25, false, b"order 12345"),
            Masked::Unchanged
        );
    }

    #[test]
    fn detections_in_non_text_types_become_null_in_both_formats() {
        let m = masker(RULES);
        assert_eq!(mask(&m, "n", 20, false, b"4111111111111111"), Masked::Null);
        assert_eq!(
            mask(&m, "n", 20, true, &4111111111111111i64.to_be_bytes()),
            Masked::Null
        );
        assert_eq!(
            mask(&m, "n", 20, true, &42i64.to_be_bytes()),
            Masked::Unchanged
        );
        let mut jsonb = vec![1u8];
        jsonb.extend_from_slice(br#"{"ssn": "123-45-6789"}"#);
        assert_eq!(mask(&m, "j", 3802, true, &jsonb), Masked::Null);
        assert_eq!(mask(&m, "a", 1009, true, b"\0\0\0\x01"), Masked::Null);
        assert_eq!(
            mask(&m, "f", 701, true, &1.5f64.to_be_bytes()),
            Masked::Unchanged
        );
        // A card number stored as a float8 is exact, and found in binary as in text.
        assert_eq!(
            mask(&m, "f", 701, true, &4222222222222f64.to_be_bytes()),
            Masked::Null
        );
        assert_eq!(mask(&m, "f", 701, false, b"4222222222222"), Masked::Null);
        assert_eq!(
            mask(&m, "f", 700, true, &2.5f32.to_be_bytes()),
            Masked::Unchanged
        );
        assert!(m
            .mask_value(&m.column("f", 701, true), b"\0\0", &mut Vec::new())
            .is_err());
        // In text, PostgreSQL prints large floats in exponent form.
        assert_eq!(
            mask(&m, "f", 701, false, b"4.111111111111111e+15"),
            Masked::Null
        );
        assert_eq!(mask(&m, "f", 701, false, b"1.5e+3"), Masked::Unchanged);
        // money in binary: cents.
        assert_eq!(
            mask(&m, "m", 790, true, &411111111111111100i64.to_be_bytes()),
            Masked::Null
        );
        assert_eq!(
            mask(&m, "m", 790, true, &1250i64.to_be_bytes()),
            Masked::Unchanged
        );
    }

    #[test]
    fn binary_numeric_is_decoded_for_detection() {
        // 4111111111111111 = 4111 1111 1111 1111 in base 10000, weight 3.
        let mut raw = Vec::new();
        for w in [4i16, 3, 0, 0, 4111, 1111, 1111, 1111] {
            raw.extend_from_slice(&w.to_be_bytes());
        }
        assert_eq!(decode_numeric(&raw).as_deref(), Some("4111111111111111"));
        let m = masker(RULES);
        assert_eq!(mask(&m, "n", 1700, true, &raw), Masked::Null);
        // -12.5 : digits [12, 5000], weight 0, negative, dscale 1.
        let mut raw = Vec::new();
        for w in [2i16, 0, 0x4000, 1, 12, 5000] {
            raw.extend_from_slice(&w.to_be_bytes());
        }
        assert_eq!(decode_numeric(&raw).as_deref(), Some("-12.5"));
    }

    /// A one-dimensional binary array of `element` values (`None` = NULL).
    fn binary_array(element: u32, values: &[Option<&[u8]>]) -> Vec<u8> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&1i32.to_be_bytes());
        raw.extend_from_slice(&i32::from(values.iter().any(Option::is_none)).to_be_bytes());
        raw.extend_from_slice(&element.to_be_bytes());
        raw.extend_from_slice(&(values.len() as i32).to_be_bytes());
        raw.extend_from_slice(&1i32.to_be_bytes());
        for v in values {
            match v {
                Some(v) => {
                    raw.extend_from_slice(&(v.len() as i32).to_be_bytes());
                    raw.extend_from_slice(v);
                }
                None => raw.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        raw
    }

    #[test]
    fn binary_arrays_are_read_element_by_element_by_detectors() {
        let m = masker(RULES);
        // asyncpg's type introspection: `name[]` and `oid[]` columns pass unchanged.
        let names = binary_array(19, &[Some(b"id"), None, Some(b"email")]);
        assert_eq!(mask(&m, "attrnames", 1003, true, &names), Masked::Unchanged);
        let oids = binary_array(
            26,
            &[Some(&23u32.to_be_bytes()), Some(&25u32.to_be_bytes())],
        );
        assert_eq!(
            mask(&m, "attrtypoids", 1028, true, &oids),
            Masked::Unchanged
        );
        let dates = binary_array(1082, &[Some(&0i32.to_be_bytes())]);
        assert_eq!(mask(&m, "d", 1182, true, &dates), Masked::Unchanged);
        // An element holding a card number makes the array NULL, text or int8 alike.
        let cards = binary_array(25, &[Some(b"ok"), Some(b"4111 1111 1111 1111")]);
        assert_eq!(mask(&m, "notes", 1009, true, &cards), Masked::Null);
        let big = binary_array(20, &[Some(&4_111_111_111_111_111i64.to_be_bytes())]);
        assert_eq!(mask(&m, "n", 1016, true, &big), Masked::Null);
        // Unreadable: a truncated element, an array of arrays' element type, an unknown element type.
        let mut cut = binary_array(25, &[Some(b"abc")]);
        cut.truncate(cut.len() - 1);
        assert_eq!(mask(&m, "t", 1009, true, &cut), Masked::Null);
        let nested = binary_array(1009, &[]);
        assert_eq!(mask(&m, "t", 1009, true, &nested), Masked::Null);
        let enums = binary_array(99_999, &[Some(b"happy")]);
        assert_eq!(mask(&m, "t", 1009, true, &enums), Masked::Null);
        // Other arrays stay unreadable in binary.
        assert_eq!(
            mask(&m, "r", 3905, true, &binary_array(3904, &[])),
            Masked::Null
        );
    }

    #[test]
    fn bytea_is_read_as_the_text_its_bytes_hold_in_either_format() {
        let m = masker(RULES);
        let secret = b"paid with 4111 1111 1111 1111".as_slice();
        // Binary: the raw bytes; text: hex (`\x…`) or escape output.
        assert_eq!(mask(&m, "blob", 17, true, secret), Masked::Null);
        let hex_text = format!("\\x{}", hex::encode(secret));
        assert_eq!(
            mask(&m, "blob", 17, false, hex_text.as_bytes()),
            Masked::Null
        );
        let escaped = b"paid with 4111 1111 1111 1111\\000\\\\".as_slice();
        assert_eq!(mask(&m, "blob", 17, false, escaped), Masked::Null);
        // Bytes holding nothing detectable, or not text at all, pass.
        assert_eq!(
            mask(&m, "blob", 17, true, b"\x00\xff\x10"),
            Masked::Unchanged
        );
        assert_eq!(mask(&m, "blob", 17, false, b"\\x00ff10"), Masked::Unchanged);
        assert_eq!(
            mask(&m, "blob", 17, true, b"4111 1111 1111 1112"),
            Masked::Unchanged
        );
        // bytea[] elements too.
        let blobs = binary_array(17, &[Some(b"x"), Some(secret)]);
        assert_eq!(mask(&m, "blobs", 1001, true, &blobs), Masked::Null);
        // Text output that is neither format is unreadable.
        let col = m.column("blob", 17, false);
        assert_eq!(
            m.mask_value(&col, b"\\9", &mut Vec::new()),
            Err(UnreadableValue)
        );
    }

    #[test]
    fn non_utf8_text_in_a_masked_column_is_unreadable() {
        let m = masker(RULES);
        let col = m.column("email", 25, false);
        assert_eq!(
            m.mask_value(&col, &[0xff, 0xfe], &mut Vec::new()),
            Err(UnreadableValue)
        );
    }

    #[test]
    fn inet_columns_are_nulled_when_ip_detectors_are_on() {
        let m = masker("[[rules]]\ndetect=[\"ipv4\"]\nstyle=\"redact\"");
        assert_eq!(mask(&m, "addr", 869, false, b"10.0.0.1/32"), Masked::Null);
        assert_eq!(
            mask(&m, "host", 25, false, b"10.0.0.1"),
            Masked::Text("[redacted]".into())
        );
    }

    #[test]
    fn api_copy_output_without_a_description_is_withheld() {
        let m = masker(RULES);
        let mut set = ResultSet {
            columns: vec![],
            rows: vec![vec![Some("1\tjane@example.com\t123-45-6789".into())]],
            command_tag: Some("COPY 1".into()),
        };
        assert_eq!(m.mask_result_set(&mut set), 1);
        assert!(set.rows[0].is_empty());
    }

    #[test]
    fn api_result_sets_match_table_qualified_rules_against_resolved_tables() {
        use crate::masking::tables::Relation;
        let m = masker("[[rules]]\ncolumns=[\"customers.email\"]\nstyle=\"redact\"");
        let mut tables = TableNames::default();
        let table = |t: &str| Relation::Table {
            schema: "public".into(),
            table: t.into(),
        };
        tables.learn(&[1, 2], vec![(1, table("customers")), (2, table("staff"))]);
        let column = |name: &str| Column {
            name: name.into(),
            type_oid: 25,
        };
        let mut set = ResultSet {
            columns: vec![column("email"), column("email"), column("email")],
            rows: vec![vec![Some("a".into()), Some("b".into()), Some("c".into())]],
            command_tag: Some("SELECT 1".into()),
        };
        assert_eq!(
            m.mask_result_set_from(&mut set, &[1, 2, 0], &[], &tables),
            2
        );
        assert_eq!(
            set.rows[0],
            [
                Some("[redacted]".into()),
                Some("b".into()),
                Some("[redacted]".into())
            ]
        );
    }

    #[test]
    fn api_result_sets_are_masked_with_the_same_rules() {
        let m = masker(RULES);
        let mut set = ResultSet {
            columns: vec![
                Column {
                    name: "id".into(),
                    type_oid: 23,
                },
                Column {
                    name: "email".into(),
                    type_oid: 25,
                },
                Column {
                    name: "note".into(),
                    type_oid: 25,
                },
            ],
            rows: vec![
                vec![
                    Some("1".into()),
                    Some("a@example.com".into()),
                    Some("ssn 123-45-6789".into()),
                ],
                vec![Some("2".into()), None, Some("nothing here".into())],
            ],
            command_tag: Some("SELECT 2".into()),
        };
        assert_eq!(m.mask_result_set(&mut set), 2);
        assert_eq!(set.rows[0][0].as_deref(), Some("1"));
        assert!(set.rows[0][1].as_deref().unwrap().starts_with("hash:"));
        assert_eq!(set.rows[0][2].as_deref(), Some("ssn *******6789"));
        assert_eq!(set.rows[1][1], None);
        assert_eq!(set.rows[1][2].as_deref(), Some("nothing here"));
    }

    #[test]
    fn binary_int2_and_int4_values_never_hold_a_detection() {
        // The fast path skips them; the text of every boundary value finds nothing with all detectors.
        let all: detect::DetectorSet = Detector::ALL.into_iter().collect();
        let mut findings = Vec::new();
        for v in [
            i64::from(i32::MIN),
            i64::from(i32::MAX),
            -1_999_999_999,
            4_111_111_111,
            2_147_483_647,
            1_234_567_890,
            2_055_550_100,
            123_456_789,
            i64::from(i16::MIN),
            i64::from(i16::MAX),
            0,
        ] {
            if let Ok(v) = i32::try_from(v) {
                detect::find(&v.to_string(), all, &mut findings);
                assert!(findings.is_empty(), "{v}: {findings:?}");
            }
        }
        let m = Masker::new(
            &toml::from_str(
                "[[rules]]\ndetect=[\"email\",\"phone\",\"card\",\"iban\",\"ssn\",\"jwt\",\"api_key\",\"private_key\",\"ipv4\",\"ipv6\"]\nstyle=\"redact\"",
            )
            .unwrap(),
            None,
        )
        .unwrap();
        assert_eq!(
            mask(&m, "n", 23, true, &i32::MAX.to_be_bytes()),
            Masked::Unchanged
        );
        assert_eq!(
            mask(&m, "n", 21, true, &i16::MIN.to_be_bytes()),
            Masked::Unchanged
        );
        // A length that is no integer is unreadable, and int8 is still decoded and scanned.
        assert!(m
            .mask_value(&m.column("n", 23, true), &[0, 0, 1], &mut Vec::new())
            .is_err());
        assert_eq!(
            mask(&m, "n", 20, true, &4111111111111111i64.to_be_bytes()),
            Masked::Null
        );
    }

    #[test]
    fn detectors_still_refuse_non_utf8_text_that_no_detector_matches() {
        let m = masker(RULES);
        let col = m.column("note", 25, false);
        for raw in [&b"caf\xe9"[..], b"\xff", b"ok \xc3"] {
            assert_eq!(
                m.mask_value(&col, raw, &mut Vec::new()),
                Err(UnreadableValue),
                "{raw:?}"
            );
        }
        // Valid multi-byte text with nothing to find passes unchanged.
        assert_eq!(
            mask(&m, "note", 25, false, "Grüße aus Köln ✓".as_bytes()),
            Masked::Unchanged
        );
    }
}
