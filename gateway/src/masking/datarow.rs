//! RowDescription → [`ResultPlan`], and DataRow rewriting with recomputed lengths.

use super::derived::Exposure;
use super::detect::DetectorSet;
use super::{ColumnPlan, MaskScratch, Masker, Outcome, ResultPlan, TableNames, TypeClass};
use bytes::{BufMut, BytesMut};

/// A backend message the masker could not parse; the result is withheld.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowError {
    /// RowDescription or DataRow layout is broken.
    #[error("malformed {0} from the upstream")]
    Malformed(&'static str),
    /// The DataRow has a different number of columns than its RowDescription.
    #[error("a DataRow has {got} columns but its RowDescription has {want}")]
    ColumnCount {
        /// Columns in the row.
        got: usize,
        /// Columns described.
        want: usize,
    },
    /// A DataRow arrived with no RowDescription the gateway saw.
    #[error("a DataRow arrived without a RowDescription")]
    Undescribed,
    /// A value could not be read.
    #[error(transparent)]
    Unreadable(#[from] super::UnreadableValue),
}

fn i16_at(b: &[u8], at: usize) -> Option<i16> {
    Some(i16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn i32_at(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// One field of a RowDescription.
struct FieldDescription<'a> {
    name: &'a str,
    table_oid: u32,
    attnum: i16,
    type_oid: u32,
    binary: bool,
}

/// The fields of a RowDescription body (after tag and length).
fn fields(body: &[u8]) -> Result<Vec<FieldDescription<'_>>, RowError> {
    let bad = || RowError::Malformed("RowDescription");
    let n = i16_at(body, 0).ok_or_else(bad)?.max(0) as usize;
    let mut at = 2;
    let mut fields = Vec::with_capacity(n);
    for _ in 0..n {
        let end = body[at..].iter().position(|&b| b == 0).ok_or_else(bad)? + at;
        let name = std::str::from_utf8(&body[at..end]).map_err(|_| bad())?;
        at = end + 1;
        // table oid (4), attnum (2), type oid (4), typlen (2), typmod (4), format (2)
        let table_oid = i32_at(body, at).ok_or_else(bad)? as u32;
        let attnum = i16_at(body, at + 4).ok_or_else(bad)?;
        let type_oid = i32_at(body, at + 6).ok_or_else(bad)? as u32;
        let format = i16_at(body, at + 16).ok_or_else(bad)?;
        at += 18;
        fields.push(FieldDescription {
            name,
            table_oid,
            attnum,
            type_oid,
            binary: format == 1,
        });
    }
    if at != body.len() {
        return Err(bad());
    }
    Ok(fields)
}

/// The plan for a RowDescription body (after tag and length), every column's table unknown.
pub fn plan_row_description(masker: &Masker, body: &[u8]) -> Result<ResultPlan, RowError> {
    plan_row_description_with(masker, body, &TableNames::default())
}

/// The plan for a RowDescription body, columns' tables resolved through `tables`.
pub fn plan_row_description_with(
    masker: &Masker,
    body: &[u8],
    tables: &TableNames,
) -> Result<ResultPlan, RowError> {
    plan(masker, body, tables, |_| Exposure::Nothing, || false)
}

/// The plan for a RowDescription body answering statement `sql`: as [`plan_row_description_with`], and
/// computed columns are redacted when `sql` computes them from a masked column (see [`super::derived`]).
/// `None` (the statement is not known) counts as computing them so on a connection with column rules.
pub fn plan_row_description_for(
    masker: &Masker,
    body: &[u8],
    tables: &TableNames,
    sql: Option<&str>,
    view_columns: Option<&[String]>,
) -> Result<ResultPlan, RowError> {
    plan(
        masker,
        body,
        tables,
        |n| match sql {
            Some(sql) => masker.computed_exposure(sql, n, view_columns),
            None if masker.rules().has_column_rules() => Exposure::All,
            None => Exposure::Nothing,
        },
        || sql.is_none_or(super::derived::fetches_from_a_cursor),
    )
}

/// `exposure` tells which computed columns to redact; `from_cursor` whether the rows come from a
/// cursor. Each is asked only when a column needs the answer (both parse the statement).
fn plan(
    masker: &Masker,
    body: &[u8],
    tables: &TableNames,
    exposure: impl FnOnce(usize) -> Exposure,
    from_cursor: impl FnOnce() -> bool,
) -> Result<ResultPlan, RowError> {
    let fields = fields(body)?;
    let derived = if fields.iter().any(|f| f.table_oid == 0) {
        exposure(fields.len())
    } else {
        Exposure::Nothing
    };
    // A cursor's rows were computed when it was declared, by the definition its views had then; a
    // view replaced since (a `WITH HOLD` cursor keeps no lock on it) says nothing of them.
    let views_as_declared_unknown = masker.rules().has_column_rules()
        && fields.iter().any(|f| tables.is_view(f.table_oid))
        && from_cursor();
    let columns = fields
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let mut column = masker.column_in(
                f.name,
                (f.table_oid, f.attnum),
                tables,
                (f.type_oid, f.binary),
                derived.covers(i),
            );
            if views_as_declared_unknown && column.style.is_none() && tables.is_view(f.table_oid) {
                column.style = Some(super::style::Style::Redact);
            }
            column
        })
        .collect();
    Ok(ResultPlan { columns })
}

/// True when a RowDescription body has a computed column (no table), whose exposure depends on the
/// statement and the views it reads.
pub fn has_computed_columns(body: &[u8]) -> bool {
    fields(body).is_ok_and(|f| f.iter().any(|f| f.table_oid == 0))
}

/// Table OIDs of a RowDescription body worth looking up before planning it: tables `tables` doesn't
/// know, when some column rule could mask (an output name may be an alias, so every table column
/// counts). Empty when nothing would change (or the body is malformed, which planning reports).
pub fn tables_to_resolve(masker: &Masker, body: &[u8], tables: &TableNames) -> Vec<u32> {
    if !masker.rules().has_column_rules() {
        return Vec::new();
    }
    tables.wanted(fields(body).unwrap_or_default().iter().map(|f| f.table_oid))
}

/// Scratch space reused across rows: value buffers, the session's hash cache, and the replacement
/// being built (so a row allocates nothing once the buffers have grown).
#[derive(Debug, Default)]
pub struct RowScratch {
    values: MaskScratch,
    text: String,
    /// Per column, the last value detectors left unchanged.
    clear: Vec<ClearValue>,
}

/// Values longer than this are not remembered as clear (copying and comparing them would cost more
/// than the scan they save).
const MAX_CLEAR_VALUE: usize = 256;

/// After this many values in a row that were not the remembered one, a column stops comparing and
/// remembering: its values are distinct (ids, hashes, notes), and the compare and the copy would be
/// paid for every value and never save a scan.
const MISSES_BEFORE_PAUSE: u32 = 8;

/// While paused, every this-many-th value is compared and remembered again, so a column whose values
/// start repeating is noticed.
const RETRY_EVERY: u32 = 32;

/// What a value detectors left unchanged depends on besides its bytes (see [`ClearValue`]).
type ClearKey = (bool, TypeClass, DetectorSet);

/// A value detectors left unchanged, with everything that outcome depends on besides the bytes: a
/// column without a whole-value style leaves a value unchanged as a function of its format, type class
/// and the detectors that are on. So the same bytes again in such a column are unchanged again,
/// whichever plan or masker saw them first (consecutive rows often repeat a timestamp, a status, a
/// placeholder).
///
/// Only exact bytes under an equal key are ever skipped; the miss count decides no outcome, only
/// whether looking is worth it.
#[derive(Debug, Default)]
struct ClearValue {
    /// None when nothing is remembered.
    key: Option<ClearKey>,
    value: Vec<u8>,
    /// Values looked up since the last one that was the remembered value.
    misses: u32,
}

/// The outcome of [`ClearValue::lookup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lookup {
    /// The remembered clear value under the same key: unchanged again.
    Clear,
    /// Not known: mask it, and remember it if it comes out unchanged.
    Remember,
    /// Not known: mask it, and don't remember it (the column can't be cached, or is paused).
    Skip,
}

impl ClearValue {
    fn key(col: &ColumnPlan, detectors: DetectorSet) -> Option<ClearKey> {
        (col.style.is_none() && col.detect).then_some((col.binary, col.class, detectors))
    }

    /// Looks `value`, under `key` (see [`ClearValue::key`]), up.
    fn lookup(&mut self, key: Option<ClearKey>, value: &[u8]) -> Lookup {
        if key.is_none() {
            return Lookup::Skip;
        }
        let trying = self.misses < MISSES_BEFORE_PAUSE || self.misses.is_multiple_of(RETRY_EVERY);
        if trying && self.key == key && self.value == value {
            self.misses = 0;
            return Lookup::Clear;
        }
        self.misses = self.misses.wrapping_add(1);
        if trying {
            Lookup::Remember
        } else {
            Lookup::Skip
        }
    }

    /// Remembers `value` as clear under `key`; a long value leaves the remembered one (still clear
    /// under its own key) in place.
    fn remember(&mut self, key: Option<ClearKey>, value: &[u8]) {
        if key.is_some() && value.len() <= MAX_CLEAR_VALUE {
            self.key = key;
            self.value.clear();
            self.value.extend_from_slice(value);
        }
    }
}

/// Masks one DataRow `frame` (tag included). Returns the number of fields masked; when it is non-zero the
/// rewritten frame was appended to `out`, otherwise `out` is as it was and the original frame can pass
/// unchanged.
///
/// One pass: nothing is copied until the first change; from then on the unchanged bytes between
/// changes are copied a stretch at a time, so a row costs one parse and a few copies.
pub fn mask_data_row(
    masker: &Masker,
    plan: &ResultPlan,
    frame: &[u8],
    out: &mut BytesMut,
    scratch: &mut RowScratch,
) -> Result<u64, RowError> {
    let start = out.len();
    let result = rewrite_row(masker, plan, frame, out, scratch);
    if !matches!(result, Ok(n) if n > 0) {
        out.truncate(start);
    }
    result
}

fn rewrite_row(
    masker: &Masker,
    plan: &ResultPlan,
    frame: &[u8],
    out: &mut BytesMut,
    scratch: &mut RowScratch,
) -> Result<u64, RowError> {
    let bad = || RowError::Malformed("DataRow");
    let body = frame.get(5..).ok_or_else(bad)?;
    let n = i16_at(body, 0).ok_or_else(bad)?;
    let n = usize::try_from(n).map_err(|_| bad())?;
    if n != plan.columns.len() {
        return Err(RowError::ColumnCount {
            got: n,
            want: plan.columns.len(),
        });
    }
    if scratch.clear.len() < n {
        scratch.clear.resize_with(n, ClearValue::default);
    }
    let detectors = masker.rules().detectors;
    let start = out.len();
    // Body bytes before `copied` are in `out` already (once the first change has started it).
    let mut copied = 0;
    let mut changed = 0u64;
    let mut at = 2;
    for (i, col) in plan.columns.iter().enumerate() {
        let field = at;
        let len = i32_at(body, at).ok_or_else(bad)?;
        at += 4;
        if len < 0 {
            if len != -1 {
                return Err(bad());
            }
            continue;
        }
        let end = at.checked_add(len as usize).ok_or_else(bad)?;
        let value = body.get(at..end).ok_or_else(bad)?;
        at = end;
        if !col.active() {
            continue;
        }
        let key = ClearValue::key(col, detectors);
        let lookup = scratch.clear[i].lookup(key, value);
        if lookup == Lookup::Clear {
            continue;
        }
        scratch.text.clear();
        let outcome = masker.mask_value_into(col, value, &mut scratch.values, &mut scratch.text)?;
        if outcome == Outcome::Unchanged {
            if lookup == Lookup::Remember {
                scratch.clear[i].remember(key, value);
            }
            continue;
        }
        if changed == 0 {
            out.reserve(frame.len() + scratch.text.len() + 16);
            out.put_u8(b'D');
            out.put_i32(0);
        }
        changed += 1;
        out.extend_from_slice(&body[copied..field]);
        copied = end;
        match outcome {
            Outcome::Null => out.put_i32(-1),
            _ => {
                out.put_i32(scratch.text.len() as i32);
                out.extend_from_slice(scratch.text.as_bytes());
            }
        }
    }
    if at != body.len() {
        return Err(bad());
    }
    if changed > 0 {
        out.extend_from_slice(&body[copied..]);
        crate::pg::codec::patch_len(out, start);
    }
    Ok(changed)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::masking::MaskingConfig;

    /// Encodes a RowDescription frame for (name, type oid, format) columns.
    pub fn row_description(cols: &[(&str, u32, i16)]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u8(b'T');
        b.put_i32(0);
        b.put_i16(cols.len() as i16);
        for (name, oid, format) in cols {
            b.put_slice(name.as_bytes());
            b.put_u8(0);
            b.put_i32(0);
            b.put_i16(0);
            b.put_i32(*oid as i32);
            b.put_i16(-1);
            b.put_i32(-1);
            b.put_i16(*format);
        }
        crate::pg::codec::patch_len(&mut b, 0);
        b
    }

    /// Encodes a DataRow frame.
    pub fn data_row(values: &[Option<&[u8]>]) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u8(b'D');
        b.put_i32(0);
        b.put_i16(values.len() as i16);
        for v in values {
            match v {
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v);
                }
                None => b.put_i32(-1),
            }
        }
        crate::pg::codec::patch_len(&mut b, 0);
        b
    }

    /// Decodes a DataRow frame's values.
    pub fn values_of(frame: &[u8]) -> Vec<Option<Vec<u8>>> {
        let body = &frame[5..];
        assert_eq!(
            i32_at(frame, 1).unwrap() as usize,
            frame.len() - 1,
            "length field"
        );
        let n = i16_at(body, 0).unwrap() as usize;
        let mut at = 2;
        (0..n)
            .map(|_| {
                let len = i32_at(body, at).unwrap();
                at += 4;
                (len >= 0).then(|| {
                    let v = body[at..at + len as usize].to_vec();
                    at += len as usize;
                    v
                })
            })
            .collect()
    }

    pub fn masker() -> Masker {
        let cfg: MaskingConfig = toml::from_str(
            r#"
            [[rules]]
            columns = ["ssn", "*email*"]
            style = "redact"
            [[rules]]
            detect = ["card", "email"]
            style = "partial"
            "#,
        )
        .unwrap();
        Masker::new(&cfg, None).unwrap()
    }

    fn plan(cols: &[(&str, u32, i16)]) -> ResultPlan {
        plan_row_description(&masker(), &row_description(cols)[5..]).unwrap()
    }

    #[test]
    fn masked_text_and_binary_values_get_correct_lengths_and_nulls_stay_null() {
        let m = masker();
        let p = plan(&[
            ("id", 23, 1),
            ("ssn", 25, 0),
            ("email", 1043, 1),
            ("note", 25, 0),
            ("n", 20, 0),
        ]);
        let row = data_row(&[
            Some(&7i32.to_be_bytes()),
            Some(b"123-45-6789"),
            None,
            Some("zahlt mit 4111111111111111 — danke".as_bytes()),
            Some(b"4111111111111111"),
        ]);
        let mut out = BytesMut::new();
        let n = mask_data_row(&m, &p, &row, &mut out, &mut RowScratch::default()).unwrap();
        assert_eq!(n, 3);
        let values = values_of(&out);
        assert_eq!(values[0].as_deref(), Some(&7i32.to_be_bytes()[..]));
        assert_eq!(values[1].as_deref(), Some(&b"[redacted]"[..]));
        assert_eq!(values[2], None);
        assert_eq!(
            String::from_utf8(values[3].clone().unwrap()).unwrap(),
            "zahlt mit ************1111 — danke"
        );
        assert_eq!(values[4], None);
    }

    #[test]
    fn rows_with_nothing_to_mask_pass_without_a_copy() {
        let m = masker();
        let p = plan(&[("id", 23, 0), ("note", 25, 0)]);
        let row = data_row(&[Some(b"1"), Some(b"plain words")]);
        let mut out = BytesMut::new();
        assert_eq!(
            mask_data_row(&m, &p, &row, &mut out, &mut RowScratch::default()),
            Ok(0)
        );
        assert!(out.is_empty());
    }

    #[test]
    fn very_wide_rows_are_rewritten_intact() {
        let m = masker();
        let cols: Vec<(String, u32, i16)> = (0..1500).map(|i| (format!("c{i}"), 25, 0)).collect();
        let cols_ref: Vec<(&str, u32, i16)> =
            cols.iter().map(|(n, o, f)| (n.as_str(), *o, *f)).collect();
        let p = plan(&cols_ref);
        let big = "x".repeat(100_000);
        let values: Vec<Option<&[u8]>> = (0..1500)
            .map(|i| match i % 3 {
                0 => Some(&b"jane@example.com"[..]),
                1 => Some(big.as_bytes()),
                _ => None,
            })
            .collect();
        let row = data_row(&values);
        let mut out = BytesMut::new();
        let n = mask_data_row(&m, &p, &row, &mut out, &mut RowScratch::default()).unwrap();
        assert_eq!(n, 500);
        let got = values_of(&out);
        assert_eq!(got.len(), 1500);
        assert_eq!(got[0].as_deref(), Some(&b"j***@example.com"[..]));
        assert_eq!(got[1].as_deref().map(<[u8]>::len), Some(100_000));
        assert_eq!(got[2], None);
    }

    #[test]
    fn unparseable_rows_are_errors() {
        let m = masker();
        let p = plan(&[("a", 25, 0), ("b", 25, 0)]);
        let mut out = BytesMut::new();
        let s = &mut RowScratch::default();
        let one = data_row(&[Some(b"x")]);
        assert!(matches!(
            mask_data_row(&m, &p, &one, &mut out, s),
            Err(RowError::ColumnCount { got: 1, want: 2 })
        ));
        let mut lying = data_row(&[Some(b"x"), Some(b"y")]);
        lying[10] = 200; // first value's length now runs past the end
        assert_eq!(
            mask_data_row(&m, &p, &lying, &mut out, s),
            Err(RowError::Malformed("DataRow"))
        );
        let mut trailing = data_row(&[Some(b"x"), None]);
        trailing.put_u8(0);
        assert_eq!(
            mask_data_row(&m, &p, &trailing, &mut out, s),
            Err(RowError::Malformed("DataRow"))
        );
        assert!(plan_row_description(&m, b"\x00\x01abc").is_err());
    }

    #[test]
    fn a_repeated_clear_value_is_skipped_but_never_a_value_that_must_be_masked() {
        let m = masker();
        let p = plan(&[("note", 25, 0), ("created", 25, 0)]);
        let s = &mut RowScratch::default();
        let created: &[u8] = b"2026-05-09 21:35:35.123456+00";
        let mut masked = Vec::new();
        for note in [
            &b"plain words"[..],
            b"plain words",
            b"paid 4111111111111111",
            b"plain words",
            b"paid 4111111111111111",
        ] {
            let mut out = BytesMut::new();
            let n = mask_data_row(&m, &p, &data_row(&[Some(note), Some(created)]), &mut out, s)
                .unwrap();
            masked.push(n);
            if n > 0 {
                let values = values_of(&out);
                assert_eq!(values[0].as_deref(), Some(&b"paid ************1111"[..]));
                assert_eq!(values[1].as_deref(), Some(created));
            }
        }
        assert_eq!(masked, [0, 0, 1, 0, 1]);
    }

    #[test]
    fn a_column_of_distinct_values_pauses_remembering_and_resumes_when_one_repeats() {
        let key = Some((false, TypeClass::Text, DetectorSet::default()));
        let other = Some((true, TypeClass::Text, DetectorSet::default()));
        let mut clear = ClearValue::default();
        for i in 0..MISSES_BEFORE_PAUSE {
            let v = format!("v{i}");
            assert_eq!(clear.lookup(key, v.as_bytes()), Lookup::Remember);
            clear.remember(key, v.as_bytes());
        }
        let last = format!("v{}", MISSES_BEFORE_PAUSE - 1);
        // Paused: not even the remembered value is compared, and nothing is remembered.
        for _ in MISSES_BEFORE_PAUSE..RETRY_EVERY {
            assert_eq!(clear.lookup(key, last.as_bytes()), Lookup::Skip);
        }
        // The retry finds the repeat, and the column is compared again from then on.
        assert_eq!(clear.lookup(key, last.as_bytes()), Lookup::Clear);
        assert_eq!(clear.lookup(key, last.as_bytes()), Lookup::Clear);
        // Only the same bytes under the same key are ever clear.
        assert_eq!(clear.lookup(other, last.as_bytes()), Lookup::Remember);
        assert_eq!(clear.lookup(key, b"v"), Lookup::Remember);
        assert_eq!(clear.lookup(None, last.as_bytes()), Lookup::Skip);
    }

    #[test]
    fn values_after_a_long_run_of_distinct_ones_are_still_masked() {
        let m = masker();
        let p = plan(&[("note", 25, 0)]);
        let s = &mut RowScratch::default();
        let card: &[u8] = b"paid 4111111111111111";
        let mut masked = 0;
        for i in 0..3 * RETRY_EVERY {
            for note in [format!("note {i}").as_bytes(), card, b"same"] {
                let mut out = BytesMut::new();
                masked += mask_data_row(&m, &p, &data_row(&[Some(note)]), &mut out, s).unwrap();
            }
        }
        assert_eq!(masked, u64::from(3 * RETRY_EVERY));
    }

    #[test]
    fn a_value_remembered_as_clear_is_still_masked_under_other_rules() {
        let card: &[u8] = b"4111111111111111";
        let s = &mut RowScratch::default();
        let mut out = BytesMut::new();
        // Clear for a masker detecting only e-mails...
        let cfg: MaskingConfig =
            toml::from_str("[[rules]]\ndetect=[\"email\"]\nstyle=\"redact\"").unwrap();
        let emails = Masker::new(&cfg, None).unwrap();
        let p = plan_row_description(&emails, &row_description(&[("note", 25, 0)])[5..]).unwrap();
        let row = data_row(&[Some(card)]);
        assert_eq!(mask_data_row(&emails, &p, &row, &mut out, s), Ok(0));
        // ...masked by one detecting cards, with the same scratch,
        let m = masker();
        let p = plan(&[("note", 25, 0)]);
        assert_eq!(mask_data_row(&m, &p, &row, &mut out, s), Ok(1));
        out.clear();
        // by a column rule in the same position,
        let p = plan(&[("ssn", 25, 0)]);
        let row = data_row(&[Some(b"plain words")]);
        let q = plan(&[("note", 25, 0)]);
        assert_eq!(mask_data_row(&m, &q, &row, &mut out, s), Ok(0));
        assert_eq!(mask_data_row(&m, &p, &row, &mut out, s), Ok(1));
        assert_eq!(values_of(&out)[0].as_deref(), Some(&b"[redacted]"[..]));
        out.clear();
        // and in a non-text column, where a detection becomes NULL.
        let p = plan(&[("n", 20, 0)]);
        assert_eq!(
            mask_data_row(&m, &p, &data_row(&[Some(card)]), &mut out, s),
            Ok(1)
        );
        assert_eq!(values_of(&out)[0], None);
    }
}
