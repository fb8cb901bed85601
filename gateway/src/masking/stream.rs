//! One wire session's masking state, fed by the relay: it follows which RowDescription applies to which
//! DataRows and rewrites them; it refuses (withholds) results it cannot mask.
//!
//! Extended-protocol clients often Execute without a Describe (the description came at prepare time, and
//! the Bind chose the formats), so on masked connections every Execute is preceded by a gateway-injected
//! `Describe portal`; its RowDescription or NoData is consumed here and never reaches the client.

use super::copy::{plan_copy, CopyError, CopyPlan};
use super::datarow::{
    has_computed_columns, mask_data_row, plan_row_description_for, tables_to_resolve, RowScratch,
};
use super::tables::{invalidates_names, TableLookup, TableNames};
use super::{Masker, ResultPlan};
use bytes::{BufMut, BytesMut};
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// SQLSTATE of a withheld result: masking could not be applied to it.
pub const WITHHELD: &str = "0A000";

/// Backend tags the masker must see; every other frame passes without it.
pub fn wants(tag: u8) -> bool {
    matches!(
        tag,
        b'T' | b'n' | b'D' | b'H' | b'd' | b'c' | b'C' | b's' | b'E' | b'N' | b'A' | b'S' | b'Z'
    )
}

/// What happens to a backend frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameAction {
    /// Forward it as it is.
    Pass,
    /// Drop it (injected Describe answers, rows of a withheld result).
    Drop,
    /// Send [`WireMasker::out`] instead.
    Replace,
    /// Send [`WireMasker::out`] (an ErrorResponse) instead; the statement failed with this message.
    Refuse(String),
    /// Not decided yet: call [`WireMasker::resolve_tables`], then offer the same frame again. Given for
    /// a RowDescription naming tables a table-qualified rule needs to know.
    ResolveTables,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    ClientStatement,
    ClientPortal,
    Injected,
    Sync,
}

/// Masking state of one wire session.
#[derive(Debug)]
pub struct WireMasker {
    masker: Arc<Masker>,
    expect: VecDeque<Expect>,
    plan: Option<ResultPlan>,
    copy: Option<CopyPlan>,
    withhold: Option<String>,
    masked: u64,
    scratch: RowScratch,
    tables: TableNames,
    lookup: Option<Arc<dyn TableLookup>>,
    unresolved: Vec<u32>,
    /// Relations a COPY query reads, by name as written: the OIDs it may name (a name without a schema
    /// may name a relation of that name in any schema: this session's `search_path` is not the lookup
    /// session's), none when it names no relation (forgotten with the table names, after DDL).
    copy_relations: HashMap<String, Vec<u32>>,
    /// Names a COPY's planning waits for ([`FrameAction::ResolveTables`]).
    unresolved_names: Vec<String>,
    /// The last name lookup failed: the COPY offered again is refused (fail closed).
    names_failed: bool,
    /// After a failed relation lookup, statements with computed columns are planned without one (all
    /// their computed columns redacted) until then, rather than each waiting for a lookup that times out.
    names_retry_at: Option<std::time::Instant>,
    /// Replacement bytes for [`FrameAction::Replace`] / [`FrameAction::Refuse`]; the caller clears it.
    pub out: BytesMut,
}

impl WireMasker {
    /// A session on a connection with these rules.
    pub fn new(masker: Arc<Masker>) -> Self {
        Self {
            masker,
            expect: VecDeque::new(),
            plan: None,
            copy: None,
            withhold: None,
            masked: 0,
            scratch: RowScratch::default(),
            tables: TableNames::default(),
            lookup: None,
            unresolved: Vec::new(),
            copy_relations: HashMap::new(),
            unresolved_names: Vec::new(),
            names_failed: false,
            names_retry_at: None,
            out: BytesMut::new(),
        }
    }

    /// Resolves result columns' tables through `lookup`, so table-qualified rules match real tables.
    /// Without one they match by column name (over-masking).
    pub fn with_lookup(mut self, lookup: Option<Arc<dyn TableLookup>>) -> Self {
        self.lookup = lookup;
        self
    }

    /// After [`FrameAction::ResolveTables`]: looks the tables up (bounded by a timeout; a failure means
    /// column-name matching) so the frame can be offered again. Returns false when nothing was pending.
    pub async fn resolve_tables(&mut self) -> bool {
        if !self.unresolved_names.is_empty() {
            self.resolve_copy_relations().await;
            return true;
        }
        if self.unresolved.is_empty() {
            return false;
        }
        let oids = std::mem::take(&mut self.unresolved);
        match self.lookup.clone() {
            Some(lookup) => {
                let rules = self.masker.rules();
                self.tables.resolve(&*lookup, &oids, rules).await
            }
            None => self.tables.failed(),
        }
        true
    }

    /// A relation-name lookup failed: the COPY offered next is refused, and statements with computed
    /// columns are planned without a lookup for [`super::tables::RETRY_AFTER`].
    fn names_lookup_failed(&mut self) {
        self.names_failed = true;
        self.names_retry_at = Some(std::time::Instant::now() + super::tables::RETRY_AFTER);
    }

    /// Looks up the relations a COPY query names (their OIDs, then what each is), bounded like
    /// [`TableNames::resolve`]; a failure makes the COPY offered next refused.
    async fn resolve_copy_relations(&mut self) {
        let names = std::mem::take(&mut self.unresolved_names);
        let Some(lookup) = self.lookup.clone() else {
            self.names_lookup_failed();
            return;
        };
        let asked: Vec<String> = names
            .iter()
            .filter(|n| !self.copy_relations.contains_key(*n))
            .cloned()
            .collect();
        if !asked.is_empty() {
            match tokio::time::timeout(super::tables::LOOKUP_TIMEOUT, lookup.oids_of(&asked)).await
            {
                Ok(Ok(found)) => {
                    for name in asked {
                        let oids = found
                            .iter()
                            .filter(|(n, _)| *n == name)
                            .map(|(_, o)| *o)
                            .collect();
                        self.copy_relations.insert(name, oids);
                    }
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "relation lookup for a masked COPY failed");
                    self.names_lookup_failed();
                    return;
                }
                Err(_) => {
                    tracing::warn!("relation lookup for a masked COPY timed out");
                    self.names_lookup_failed();
                    return;
                }
            }
        }
        let oids = self.tables.wanted(
            names
                .iter()
                .filter_map(|n| self.copy_relations.get(n))
                .flatten()
                .copied(),
        );
        if !oids.is_empty() {
            let rules = self.masker.rules();
            self.tables.resolve(&*lookup, &oids, rules).await;
        }
    }

    /// For the `relations` a COPY query reads, on a connection with column rules: the names still to
    /// look up, or the output names its views compute from masked columns (an error when that can't be
    /// known).
    fn copy_view_columns(
        &mut self,
        relations: &[String],
        ctes: &[String],
    ) -> Result<Vec<String>, Vec<String>> {
        let pending: Vec<String> = relations
            .iter()
            .filter(|n| match self.copy_relations.get(*n) {
                None => true,
                Some(oids) => oids.iter().any(|oid| self.tables.wants(*oid)),
            })
            .cloned()
            .collect();
        if !pending.is_empty() {
            return Err(pending);
        }
        // Not known (an unseen name, a failed lookup): treated as a lookup failure by the caller.
        let relations_oids = &self.copy_relations;
        self.tables
            .view_columns_among(relations, ctes, |n| {
                relations_oids.get(n).cloned().unwrap_or_default()
            })
            .ok_or_else(Vec::new)
    }

    /// Fields masked since the last call (per statement, for the session record).
    pub fn take_masked(&mut self) -> u64 {
        std::mem::take(&mut self.masked)
    }

    /// Copies complete client frames bound upstream into `out`, noting Describes and Syncs and putting a
    /// `Describe portal` before each Execute.
    pub fn forward_client(&mut self, bytes: &[u8], out: &mut BytesMut) {
        let mut at = 0;
        while let Some((tag, total)) = crate::pg::codec::frame_header(&bytes[at..]) {
            let Some(frame) = bytes.get(at..at.saturating_add(total)) else {
                break;
            };
            match tag {
                b'D' => self.expect.push_back(if frame.get(5) == Some(&b'P') {
                    Expect::ClientPortal
                } else {
                    Expect::ClientStatement
                }),
                b'E' => {
                    let mut pos = 5;
                    let portal = crate::pg::codec::read_cstr(frame, &mut pos).unwrap_or_default();
                    out.put_u8(b'D');
                    out.put_i32(4 + 1 + portal.len() as i32 + 1);
                    out.put_u8(b'P');
                    out.put_slice(portal);
                    out.put_u8(0);
                    self.expect.push_back(Expect::Injected);
                }
                b'S' | b'Q' => self.expect.push_back(Expect::Sync),
                _ => {}
            }
            out.put_slice(frame);
            at += total;
        }
        out.put_slice(&bytes[at..]);
    }

    /// A ParameterStatus during the session: `application_name` is free text a statement can set from
    /// table data (`set_config('application_name', ssn, false)`), so it is masked as a notification's
    /// payload is. The other reported settings are validated values clients rely on.
    fn on_parameter_status(&mut self, body: &[u8]) -> FrameAction {
        let mut pos = 0;
        let (Some(name), Some(value)) = (
            crate::pg::codec::read_cstr(body, &mut pos),
            crate::pg::codec::read_cstr(body, &mut pos),
        ) else {
            return FrameAction::Drop;
        };
        if name != b"application_name" {
            return FrameAction::Pass;
        }
        let Some(replaced) = self.masked_free_text(value) else {
            return FrameAction::Pass;
        };
        self.replace_with(b'S', &[name, b"\0"], &replaced)
    }

    /// Sends, instead of the upstream's frame, frame `tag` of `head` then `text` as a C string.
    fn replace_with(&mut self, tag: u8, head: &[&[u8]], text: &str) -> FrameAction {
        self.out.clear();
        self.out.put_u8(tag);
        self.out.put_i32(0);
        for part in head {
            self.out.put_slice(part);
        }
        self.out.put_slice(text.as_bytes());
        self.out.put_u8(0);
        crate::pg::codec::patch_len(&mut self.out, 0);
        FrameAction::Replace
    }

    /// Free text from the server (a notification's payload, an application name) as it may reach the
    /// client: None when it passes unchanged. With column rules any such text is redacted (it may be
    /// a masked column's value under no column name); otherwise the detectors decide.
    fn masked_free_text(&mut self, text: &[u8]) -> Option<String> {
        let mut plan =
            self.masker
                .column_named("payload", None, super::ColumnSource::Unknown, 25, false);
        if plan.style.is_none() && self.masker.rules().has_column_rules() {
            plan.style = Some(super::Style::Redact);
        }
        let mut out = String::new();
        let mut scratch = super::MaskScratch::uncached();
        let replaced = match self
            .masker
            .mask_value_into(&plan, text, &mut scratch, &mut out)
        {
            Ok(super::Outcome::Unchanged) => return None,
            Ok(super::Outcome::Text) => out,
            Ok(super::Outcome::Null) | Err(_) => super::style::REDACTED.to_string(),
        };
        self.masked += 1;
        Some(replaced)
    }

    /// A NotificationResponse (`LISTEN`): its payload is text another session chose, and may come from
    /// a masked column (a trigger's `pg_notify('changes', row_to_json(NEW)::text)`). It is masked like
    /// a computed column whose statement is unknown: detectors run over it, and on a connection with
    /// column rules it is redacted. The channel name is kept.
    fn on_notification(&mut self, body: &[u8]) -> FrameAction {
        let mut pos = 4;
        let (Some(pid), Some(channel), Some(payload)) = (
            body.get(..4),
            crate::pg::codec::read_cstr(body, &mut pos),
            crate::pg::codec::read_cstr(body, &mut pos),
        ) else {
            // Not a notification the gateway can read: nothing of it reaches the client.
            return FrameAction::Drop;
        };
        let Some(replaced) = self.masked_free_text(payload) else {
            return FrameAction::Pass;
        };
        self.replace_with(b'A', &[pid, channel, b"\0"], &replaced)
    }

    /// True when the current result's rows pass unchanged (no column masked, nothing withheld), so a
    /// row need not be examined.
    pub fn passes_rows_unchanged(&self) -> bool {
        self.withhold.is_none() && self.plan.as_ref().is_some_and(|p| !p.active())
    }

    /// Withholds the current result because one of its rows (of `bytes`) is larger than `max`.
    pub fn withhold_oversized(&mut self, bytes: usize, max: usize) {
        self.withhold(format!(
            "a row of {bytes} bytes is larger than the {} MiB a masked connection examines; select the large column through a connection without masking, or select less of it (substring)",
            max / (1024 * 1024)
        ));
    }

    fn withhold(&mut self, why: impl ToString) -> FrameAction {
        if self.withhold.is_none() {
            self.withhold = Some(why.to_string());
        }
        FrameAction::Drop
    }

    fn refuse(&mut self, also_ready: Option<&[u8]>) -> FrameAction {
        let why = self.withhold.take().unwrap_or_default();
        let message =
            format!("the gateway withheld this result because it could not mask it: {why}");
        self.out.clear();
        put_error(&mut self.out, &message);
        if let Some(z) = also_ready {
            self.out.put_slice(z);
        }
        FrameAction::Refuse(message)
    }

    /// For a RowDescription with computed columns: the names of the columns of the views the statement
    /// reads that carry a masked column (a computation over them is over a masked value). `Ok(None)`
    /// when they can't be learned (every computed column is then redacted); `Err` when the statement's
    /// relations must be looked up first ([`WireMasker::resolve_tables`], then the frame again).
    fn view_columns_behind(
        &mut self,
        body: &[u8],
        sql: Option<&str>,
    ) -> Result<Option<Vec<String>>, ()> {
        let Some(sql) = sql else {
            return Ok(Some(Vec::new()));
        };
        if !self.masker.rules().has_column_rules() || !has_computed_columns(body) {
            return Ok(Some(Vec::new()));
        }
        let relations = super::derived::statement_relations(sql);
        if relations.names.is_empty() {
            return Ok(Some(Vec::new()));
        }
        let retrying = self
            .names_retry_at
            .is_some_and(|t| std::time::Instant::now() < t);
        if std::mem::take(&mut self.names_failed) || retrying {
            return Ok(None);
        }
        match self.copy_view_columns(&relations.names, &relations.ctes) {
            Ok(names) => Ok(Some(names)),
            Err(pending) if !pending.is_empty() => {
                self.unresolved_names = pending;
                Err(())
            }
            Err(_) => Ok(None),
        }
    }

    /// A RowDescription or NoData: the plan for the rows to come, unless it answers a statement Describe.
    fn on_description(
        &mut self,
        tag: u8,
        body: &[u8],
        sql: Option<&str>,
        view_columns: Option<&[String]>,
    ) -> FrameAction {
        let source = match self.expect.front() {
            Some(e @ (Expect::Injected | Expect::ClientPortal | Expect::ClientStatement)) => {
                let e = *e;
                self.expect.pop_front();
                Some(e)
            }
            _ => None,
        };
        if source != Some(Expect::ClientStatement) {
            // A statement Describe has no formats yet; everything else describes the rows to come.
            self.plan = None;
            if tag == b'T' {
                match plan_row_description_for(&self.masker, body, &self.tables, sql, view_columns)
                {
                    Ok(p) => self.plan = Some(p),
                    Err(e) => {
                        self.withhold(e);
                    }
                }
            }
        }
        if source == Some(Expect::Injected) {
            FrameAction::Drop
        } else {
            FrameAction::Pass
        }
    }

    /// Decides a complete backend frame with a tag [`wants`] returns true for. `sql` is the statement in
    /// flight (for COPY).
    pub fn on_backend(&mut self, tag: u8, frame: &[u8], sql: Option<&str>) -> FrameAction {
        let body = &frame[5..];
        match tag {
            b'T' if self.lookup.is_some()
                && self.expect.front() != Some(&Expect::ClientStatement) =>
            {
                // Decided before any state changes, so the frame can be offered again unchanged.
                self.unresolved = tables_to_resolve(&self.masker, body, &self.tables);
                if !self.unresolved.is_empty() {
                    return FrameAction::ResolveTables;
                }
                let views = match self.view_columns_behind(body, sql) {
                    Ok(views) => views,
                    Err(()) => return FrameAction::ResolveTables,
                };
                self.on_description(tag, body, sql, views.as_deref())
            }
            b'T' | b'n' => self.on_description(tag, body, sql, Some(&[])),
            b'A' => self.on_notification(body),
            b'S' => self.on_parameter_status(body),
            b'D' => {
                if self.withhold.is_some() {
                    return FrameAction::Drop;
                }
                let Some(plan) = &self.plan else {
                    return self.withhold(super::datarow::RowError::Undescribed);
                };
                if !plan.active() {
                    return FrameAction::Pass;
                }
                self.out.clear();
                match mask_data_row(&self.masker, plan, frame, &mut self.out, &mut self.scratch) {
                    Ok(0) => FrameAction::Pass,
                    Ok(n) => {
                        self.masked += n;
                        FrameAction::Replace
                    }
                    Err(e) => self.withhold(e),
                }
            }
            b'H' => {
                let mut plan = match plan_copy(sql.unwrap_or_default(), self.masker.rules()) {
                    Ok(p) => p,
                    Err(e) => return self.withhold(e),
                };
                if self.lookup.is_some() && self.masker.rules().has_column_rules() {
                    if std::mem::take(&mut self.names_failed) {
                        return self.withhold(CopyError::Unresolved);
                    }
                    let ctes = super::derived::statement_relations(sql.unwrap_or_default()).ctes;
                    match self.copy_view_columns(plan.relations(), &ctes) {
                        Ok(names) => plan.redact_columns(self.masker.rules(), names),
                        Err(pending) if !pending.is_empty() => {
                            self.unresolved_names = pending;
                            return FrameAction::ResolveTables;
                        }
                        Err(_) => return self.withhold(CopyError::Unresolved),
                    }
                }
                match plan.start(&self.masker, body).map(|()| plan) {
                    Ok(p) => {
                        self.copy = Some(p);
                        FrameAction::Pass
                    }
                    Err(e) => self.withhold(e),
                }
            }
            b'd' => {
                if self.withhold.is_some() {
                    return FrameAction::Drop;
                }
                let Some(copy) = &mut self.copy else {
                    return self.withhold("CopyData arrived without a CopyOutResponse");
                };
                match copy.mask_row(&self.masker, body) {
                    Ok((_, None)) => FrameAction::Pass,
                    Ok((n, Some(row))) => {
                        self.masked += n;
                        self.out.clear();
                        self.out.put_u8(b'd');
                        self.out.put_i32(4 + row.len() as i32);
                        self.out.put_slice(&row);
                        FrameAction::Replace
                    }
                    Err(e) => self.withhold(e),
                }
            }
            b'c' => {
                if self.withhold.is_some() {
                    FrameAction::Drop
                } else {
                    FrameAction::Pass
                }
            }
            b'C' | b's' => {
                if tag == b'C' && invalidates_names(body) {
                    self.tables.clear();
                }
                if tag == b'C' {
                    // The next statement may read views (or names) another statement has redefined.
                    self.tables.statement_ended();
                    self.copy_relations.clear();
                }
                self.copy = None;
                if self.withhold.is_some() {
                    self.refuse(None)
                } else {
                    FrameAction::Pass
                }
            }
            b'E' => {
                self.tables.statement_ended();
                self.copy_relations.clear();
                // The upstream skips to Sync after an error: the Describes it won't answer are void.
                while matches!(self.expect.front(), Some(e) if *e != Expect::Sync) {
                    self.expect.pop_front();
                }
                self.copy = None;
                self.withhold = None;
                FrameAction::Pass
            }
            b'Z' => {
                while let Some(e) = self.expect.pop_front() {
                    if e == Expect::Sync {
                        break;
                    }
                }
                self.plan = None;
                self.copy = None;
                if self.withhold.is_some() {
                    self.refuse(Some(frame))
                } else {
                    FrameAction::Pass
                }
            }
            _ => FrameAction::Pass,
        }
    }
}

fn put_error(out: &mut BytesMut, message: &str) {
    let start = out.len();
    out.put_u8(b'E');
    out.put_i32(0);
    for (field, value) in [
        (b'S', "ERROR"),
        (b'V', "ERROR"),
        (b'C', WITHHELD),
        (b'M', message),
    ] {
        out.put_u8(field);
        out.put_slice(value.replace('\0', "").as_bytes());
        out.put_u8(0);
    }
    out.put_u8(0);
    crate::pg::codec::patch_len(out, start);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::masking::datarow::tests::{data_row, masker, row_description, values_of};

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut f = vec![tag];
        f.extend_from_slice(&(4 + body.len() as i32).to_be_bytes());
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn an_application_name_set_mid_session_is_masked_and_other_settings_pass() {
        // masker() has column rules: any application_name reported mid-session may be table data.
        let mut w = WireMasker::new(Arc::new(masker()));
        let s = frame(b'S', b"application_name\x00123-45-6789\x00");
        assert_eq!(w.on_backend(b'S', &s, None), FrameAction::Replace);
        assert_eq!(
            &w.out[..],
            &frame(b'S', b"application_name\0[redacted]\0")[..]
        );
        let tz = frame(b'S', b"TimeZone\0UTC\0");
        assert_eq!(w.on_backend(b'S', &tz, None), FrameAction::Pass);
        assert_eq!(w.take_masked(), 1);
        // Detectors only: an application name holding nothing detectable passes.
        let detect = crate::masking::Masker::new(
            &toml::from_str("[[rules]]\ndetect = [\"ssn\"]\nstyle = \"redact\"").unwrap(),
            None,
        )
        .unwrap();
        let mut w = WireMasker::new(Arc::new(detect));
        let plain = frame(b'S', b"application_name\0psql\0");
        assert_eq!(w.on_backend(b'S', &plain, None), FrameAction::Pass);
        assert_eq!(w.on_backend(b'S', &s, None), FrameAction::Replace);
        assert!(!String::from_utf8_lossy(&w.out).contains("6789"));
    }

    #[test]
    fn execute_gets_an_injected_describe_whose_answer_is_hidden_and_used() {
        let mut w = WireMasker::new(Arc::new(masker()));
        let mut out = BytesMut::new();
        let mut client = frame(b'B', b"\0s1\0\0\0\0\0\0\0");
        client.extend(frame(b'E', b"\0\0\0\0\0"));
        client.extend(frame(b'S', b""));
        w.forward_client(&client, &mut out);
        let b_len = frame(b'B', b"\0s1\0\0\0\0\0\0\0").len();
        assert_eq!(&out[b_len..b_len + 7], &[b'D', 0, 0, 0, 6, b'P', 0]);
        assert_eq!(out.len(), client.len() + 7);

        let t = row_description(&[("ssn", 25, 1)]);
        assert_eq!(w.on_backend(b'T', &t, None), FrameAction::Drop);
        let row = data_row(&[Some(b"123-45-6789")]);
        assert_eq!(w.on_backend(b'D', &row, None), FrameAction::Replace);
        assert_eq!(values_of(&w.out)[0].as_deref(), Some(&b"[redacted]"[..]));
        assert_eq!(
            w.on_backend(b'C', &frame(b'C', b"SELECT 1\0"), None),
            FrameAction::Pass
        );
        assert_eq!(
            w.on_backend(b'Z', &frame(b'Z', b"I"), None),
            FrameAction::Pass
        );
        assert_eq!(w.take_masked(), 1);
        assert!(w.expect.is_empty());
    }

    #[test]
    fn client_describe_answers_pass_and_errors_void_pending_describes() {
        let mut w = WireMasker::new(Arc::new(masker()));
        let mut out = BytesMut::new();
        let mut client = frame(b'D', b"Ss1\0");
        client.extend(frame(b'E', b"\0\0\0\0\0"));
        client.extend(frame(b'S', b""));
        client.extend(frame(b'Q', b"SELECT 1\0"));
        w.forward_client(&client, &mut out);
        let t = row_description(&[("ssn", 25, 0)]);
        assert_eq!(w.on_backend(b'T', &t, None), FrameAction::Pass);
        assert_eq!(
            w.on_backend(b'E', &frame(b'E', b"\0"), None),
            FrameAction::Pass
        );
        assert_eq!(
            w.on_backend(b'Z', &frame(b'Z', b"I"), None),
            FrameAction::Pass
        );
        // The simple query's RowDescription is not mistaken for the voided injected Describe.
        assert_eq!(w.on_backend(b'T', &t, None), FrameAction::Pass);
        assert_eq!(
            w.on_backend(b'D', &data_row(&[Some(b"x")]), None),
            FrameAction::Replace
        );
    }

    #[test]
    fn unparseable_row_withholds_the_rest_and_the_completion_becomes_an_error() {
        let mut w = WireMasker::new(Arc::new(masker()));
        w.forward_client(&frame(b'Q', b"SELECT\0"), &mut BytesMut::new());
        let t = row_description(&[("a", 25, 0), ("b", 25, 0)]);
        assert_eq!(w.on_backend(b'T', &t, None), FrameAction::Pass);
        assert_eq!(
            w.on_backend(b'D', &data_row(&[Some(b"only one")]), None),
            FrameAction::Drop
        );
        assert_eq!(
            w.on_backend(b'D', &data_row(&[Some(b"x"), Some(b"y")]), None),
            FrameAction::Drop
        );
        let FrameAction::Refuse(msg) = w.on_backend(b'C', &frame(b'C', b"SELECT 2\0"), None) else {
            panic!("completion of a withheld result must be refused")
        };
        assert!(
            msg.contains("1 columns but its RowDescription has 2"),
            "{msg}"
        );
        assert_eq!(w.out[0], b'E');
        assert_eq!(
            w.on_backend(b'Z', &frame(b'Z', b"I"), None),
            FrameAction::Pass
        );
    }

    /// A lookup that knows OID 100 as `public.customers` and OID 200 as `public.staff`.
    struct TwoTables;

    #[async_trait::async_trait]
    impl TableLookup for TwoTables {
        async fn lookup(
            &self,
            oids: &[u32],
        ) -> Result<Vec<(u32, crate::masking::tables::Relation)>, crate::masking::tables::LookupError>
        {
            use crate::masking::tables::Relation;
            let table = |t: &str| Relation::Table {
                schema: "public".into(),
                table: t.into(),
            };
            Ok(oids
                .iter()
                .filter_map(|o| match o {
                    100 => Some((100, table("customers"))),
                    200 => Some((200, table("staff"))),
                    _ => None,
                })
                .collect())
        }
    }

    /// A RowDescription of text columns from the given table OIDs.
    fn described(cols: &[(&str, u32)]) -> Vec<u8> {
        let mut body = (cols.len() as i16).to_be_bytes().to_vec();
        for (name, table) in cols {
            body.extend_from_slice(name.as_bytes());
            body.push(0);
            body.extend_from_slice(&table.to_be_bytes());
            body.extend_from_slice(&1i16.to_be_bytes());
            body.extend_from_slice(&25u32.to_be_bytes());
            body.extend_from_slice(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0]);
        }
        frame(b'T', &body)
    }

    #[tokio::test]
    async fn table_qualified_rules_wait_for_the_lookup_then_mask_only_their_table() {
        let cfg: crate::masking::MaskingConfig =
            toml::from_str("[[rules]]\ncolumns=[\"customers.email\"]\nstyle=\"redact\"").unwrap();
        let masker = Arc::new(Masker::new(&cfg, None).unwrap());
        let mut w = WireMasker::new(masker).with_lookup(Some(Arc::new(TwoTables)));
        w.forward_client(&frame(b'Q', b"SELECT\0"), &mut BytesMut::new());
        // customers.email, staff.email, an expression (OID 0) and a dropped table (OID 300).
        let t = described(&[("email", 100), ("email", 200), ("email", 0), ("email", 300)]);
        assert_eq!(w.on_backend(b'T', &t, None), FrameAction::ResolveTables);
        assert!(w.resolve_tables().await);
        assert!(!w.resolve_tables().await, "nothing left pending");
        assert_eq!(w.on_backend(b'T', &t, None), FrameAction::Pass);
        let row = data_row(&[
            Some(b"a@x.io"),
            Some(b"b@x.io"),
            Some(b"c@x.io"),
            Some(b"d@x.io"),
        ]);
        assert_eq!(w.on_backend(b'D', &row, None), FrameAction::Replace);
        let values = values_of(&w.out);
        let redacted = Some(&b"[redacted]"[..]);
        assert_eq!(values[0].as_deref(), redacted, "customers.email");
        assert_eq!(values[1].as_deref(), Some(&b"b@x.io"[..]), "staff.email");
        assert_eq!(
            values[2].as_deref(),
            redacted,
            "OID 0 falls back to the column name"
        );
        assert_eq!(
            values[3].as_deref(),
            redacted,
            "an unknown OID falls back too"
        );
        // Known tables are not looked up again.
        assert_eq!(w.on_backend(b'T', &t, None), FrameAction::Pass);
    }

    #[tokio::test]
    async fn a_masked_copy_whose_relations_cannot_be_looked_up_is_refused() {
        // TwoTables resolves OIDs but no names (the trait's default): fail closed.
        let mut w = WireMasker::new(Arc::new(masker())).with_lookup(Some(Arc::new(TwoTables)));
        let sql = Some("COPY (SELECT id, tax_id FROM directory) TO STDOUT");
        let start = frame(b'H', &[0, 0, 2, 0, 0, 0, 0]);
        assert_eq!(w.on_backend(b'H', &start, sql), FrameAction::ResolveTables);
        assert!(w.resolve_tables().await);
        assert_eq!(w.on_backend(b'H', &start, sql), FrameAction::Drop);
        let row = frame(b'd', b"1\t123-45-6789\n");
        assert_eq!(w.on_backend(b'd', &row, sql), FrameAction::Drop);
        let FrameAction::Refuse(msg) = w.on_backend(b'C', &frame(b'C', b"COPY 1\0"), sql) else {
            panic!("the COPY must be refused")
        };
        assert!(msg.contains("could not be looked up"), "{msg}");
        // A COPY of a table names no view to look up.
        let sql = Some("COPY people (id, name) TO STDOUT");
        assert_eq!(w.on_backend(b'H', &start, sql), FrameAction::Pass);
    }

    #[tokio::test]
    async fn computed_columns_whose_views_cannot_be_looked_up_are_redacted_without_waiting_again() {
        // TwoTables resolves OIDs but no names: which views a statement reads stays unknown.
        let mut w = WireMasker::new(Arc::new(masker())).with_lookup(Some(Arc::new(TwoTables)));
        let sql = Some("SELECT upper(tax_id) FROM directory");
        let t = described(&[("upper", 0)]);
        assert_eq!(w.on_backend(b'T', &t, sql), FrameAction::ResolveTables);
        assert!(w.resolve_tables().await);
        assert_eq!(w.on_backend(b'T', &t, sql), FrameAction::Pass);
        let row = data_row(&[Some(b"SSNVALUE")]);
        assert_eq!(w.on_backend(b'D', &row, sql), FrameAction::Replace);
        assert_eq!(values_of(&w.out)[0].as_deref(), Some(&b"[redacted]"[..]));
        w.on_backend(b'C', &frame(b'C', b"SELECT 1\0"), sql);
        // The next statement is planned at once (no lookup storm while lookups fail), still redacted.
        assert_eq!(w.on_backend(b'T', &t, sql), FrameAction::Pass);
        assert_eq!(w.on_backend(b'D', &row, sql), FrameAction::Replace);
        // A statement naming no relation needs no lookup and stays clear.
        w.on_backend(b'C', &frame(b'C', b"SELECT 1\0"), sql);
        let plain = Some("SELECT upper('abc')");
        assert_eq!(w.on_backend(b'T', &t, plain), FrameAction::Pass);
        assert_eq!(
            w.on_backend(b'D', &data_row(&[Some(b"ABC")]), plain),
            FrameAction::Pass
        );
    }

    #[tokio::test]
    async fn without_a_lookup_table_qualified_rules_match_by_column_name() {
        let cfg: crate::masking::MaskingConfig =
            toml::from_str("[[rules]]\ncolumns=[\"customers.email\"]\nstyle=\"redact\"").unwrap();
        let mut w = WireMasker::new(Arc::new(Masker::new(&cfg, None).unwrap()));
        let t = described(&[("email", 200)]);
        assert_eq!(w.on_backend(b'T', &t, None), FrameAction::Pass);
        assert_eq!(
            w.on_backend(b'D', &data_row(&[Some(b"b@x.io")]), None),
            FrameAction::Replace
        );
    }

    #[test]
    fn datarow_without_description_is_withheld() {
        let mut w = WireMasker::new(Arc::new(masker()));
        assert_eq!(
            w.on_backend(b'D', &data_row(&[Some(b"x")]), None),
            FrameAction::Drop
        );
        let z = frame(b'Z', b"I");
        assert!(matches!(
            w.on_backend(b'Z', &z, None),
            FrameAction::Refuse(_)
        ));
        assert!(w.out.ends_with(&z));
    }
}
