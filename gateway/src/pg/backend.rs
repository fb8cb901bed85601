//! Scans upstream bytes in place on their way to the client: tracks the transaction status, the
//! command tag and error of each statement in flight, and hides the gateway's own rejection round trips.
//! Everything else passes through untouched, including partial frames.

use super::codec::{error_fields, frame_header, read_cstr};
use super::extended::{BatchAnswer, Binding};
use super::prepared::PendingOps;
use super::recorder::FinishedStatement;
use crate::masking::messages;
use crate::masking::stream::{self, FrameAction, WireMasker};
use crate::policy::Action;
use bytes::{BufMut, BytesMut};
use countersign_bot::RequestId;
use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

/// How much of a unit's command tags its record keeps (several statements' tags, `; `-separated).
const MAX_TAGS_TEXT: usize = 200;

/// One simple query or Sync-terminated batch the upstream has yet to answer with ReadyForQuery.
#[derive(Debug)]
pub struct InFlight {
    /// Statement text for the record.
    pub sql: Arc<str>,
    /// For a batch that parses but runs nothing (a driver's Parse/Describe round): the text it parsed,
    /// which PostgreSQL's errors quote (masking keeps an error's text only when the statement holds it).
    pub parsed: Option<Arc<str>>,
    /// Bindings for the record's hash.
    pub binds: Vec<Binding>,
    /// Policy decision.
    pub decision: Action,
    /// The approval request, for held statements.
    pub request_id: Option<RequestId>,
    /// Set for an approved statement whose result must be reported.
    pub executed: Option<RequestId>,
    /// True when this is a gateway rejection: only its ErrorResponse and ReadyForQuery reach the client.
    pub rejection: bool,
    /// When the client's message arrived.
    pub received: Instant,
    /// When it was forwarded.
    pub forwarded: Instant,
    /// The extended-protocol batch ([`super::extended::Catalog::end_batch`]) this is, if one.
    pub batch: Option<u64>,
    /// Where it arrived among the client's ends of COPY FROM STDIN data.
    pub copy: CopyMarks,
    /// The PREPAREs and DEALLOCATEs of an allowed simple query, which its command tags confirm.
    pub prepared: Option<Box<PendingOps>>,
    /// The ReadyForQuery ending this answers a Sync the gateway added (a simple Query arrived before
    /// the client's Sync), so the client, which sent no Sync for it, never sees it.
    pub swallow_ready: bool,
    /// The gateway's own round trip parsing this stale statement name again: the client never sees its
    /// answers (notifications and notices excepted), and it is not recorded.
    pub internal: Option<Box<[u8]>>,
    /// Answers to messages the gateway added to the batch (a Close and Parse of a stale name before its
    /// Bind), as (tag, place among the batch's answers of that tag): hidden from the client.
    pub hidden: Vec<(u8, u32)>,
}

/// How many COPY FROM STDIN ends (CopyDone or CopyFail) the client had sent when a statement arrived.
/// PostgreSQL ignores a Sync it reads in copy-in mode, which lasts from the Execute that starts a COPY
/// FROM STDIN to the client's next CopyDone or CopyFail: tokio-postgres, for one, sends Bind, Execute
/// and Sync, then the data, CopyDone and Sync, and gets a single ReadyForQuery for both Syncs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CopyMarks {
    /// Ends sent before the statement began (a batch's last Execute, or the Query).
    pub at_start: u64,
    /// Ends sent before the batch's Sync; None when no client Sync ends it (a simple query, or a
    /// refusal the gateway sends in its place).
    pub at_sync: Option<u64>,
}

impl InFlight {
    /// The record of this statement, now that the upstream has answered (or failed).
    pub fn finished(
        self,
        command_tag: Option<String>,
        error: Option<String>,
        masked_fields: u64,
    ) -> FinishedStatement {
        FinishedStatement {
            sql: self.sql,
            binds: self.binds,
            decision: self.decision,
            request_id: self.request_id,
            executed: self.executed,
            duration: self.received.elapsed(),
            received_at: countersign_bot::clock::now() - self.received.elapsed(),
            run_time: self.forwarded.elapsed(),
            command_tag,
            error,
            masked_fields,
        }
    }
}

/// The settings among an upstream's login ParameterStatus `frames` under which PostgreSQL reads
/// statement text differently from the policy (see [`BackendTracker::misread`]).
pub fn misread_settings(frames: &[u8]) -> Vec<(String, String)> {
    BackendTracker::new(b'I').with_settings(frames).misread
}

/// True when PostgreSQL reads `sql` as the policy does whatever `standard_conforming_strings` and the
/// client encoding are: ASCII without a backslash.
pub fn reads_the_same_anyhow(sql: &str) -> bool {
    sql.is_ascii() && !sql.contains('\\')
}

/// Statement text as PostgreSQL reads it under the session's `client_encoding` (as reported: mostly
/// the canonical name, e.g. `UTF8`, `LATIN1`, but `UNICODE` as the client spelt it), or why the
/// gateway cannot read it. UTF8 and SQL_ASCII (no conversion: the server reads the bytes as UTF-8)
/// are read as UTF-8, LATIN1 byte for byte (U+0000–U+00FF, as PostgreSQL converts it); in any other
/// encoding only ASCII text is read, so the policy never judges a non-ASCII name or literal that
/// PostgreSQL would read as different characters.
/// The bytes a client in `client_encoding` sends for `text` that [`statement_text`] read: LATIN1 byte
/// for byte (its characters are U+0000–U+00FF), everything else as UTF-8 (other encodings are read
/// only when ASCII). None when a character has no LATIN1 byte.
pub fn statement_bytes<'a>(client_encoding: &str, text: &'a str) -> Option<Cow<'a, [u8]>> {
    if text.is_ascii() || !is_latin1(client_encoding) {
        return Some(Cow::Borrowed(text.as_bytes()));
    }
    text.chars()
        .map(|c| u8::try_from(u32::from(c)).ok())
        .collect::<Option<Vec<u8>>>()
        .map(Cow::Owned)
}

fn is_latin1(client_encoding: &str) -> bool {
    matches!(
        encoding_key(client_encoding).as_str(),
        "latin1" | "iso88591"
    )
}

/// An encoding name as PostgreSQL matches it: letters and digits only, lower-case (`UTF-8` is `utf8`).
fn encoding_key(client_encoding: &str) -> String {
    client_encoding
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

pub fn statement_text<'a>(client_encoding: &str, bytes: &'a [u8]) -> Result<Cow<'a, str>, String> {
    // Every client encoding PostgreSQL accepts reads ASCII as ASCII: most statements end here,
    // without looking at the encoding.
    if bytes.is_ascii() {
        return std::str::from_utf8(bytes)
            .map(Cow::Borrowed)
            .map_err(|_| "the query is not valid UTF-8; send UTF-8 text".to_string());
    }
    match encoding_key(client_encoding).as_str() {
        "" | "utf8" | "unicode" | "sqlascii" => std::str::from_utf8(bytes)
            .map(Cow::Borrowed)
            .map_err(|_| "the query is not valid UTF-8; send UTF-8 text".to_string()),
        "latin1" | "iso88591" => Ok(match std::str::from_utf8(bytes) {
            Ok(ascii) if ascii.is_ascii() => Cow::Borrowed(ascii),
            _ => Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect()),
        }),
        _ => match std::str::from_utf8(bytes) {
            Ok(ascii) if ascii.is_ascii() => Ok(Cow::Borrowed(ascii)),
            _ => Err(format!(
                "client_encoding is {client_encoding}, in which the gateway reads only ASCII statement text; use UTF8 or LATIN1, or send the statement in ASCII"
            )),
        },
    }
}

/// Upstream-side state of a session.
pub struct BackendTracker {
    /// Bytes of a pass-through frame still to come.
    skip: usize,
    /// Bytes of an oversized row on a masked connection still to drop (see [`MAX_MASKED_ROW`]).
    drop: usize,
    /// Last ReadyForQuery status (`I`, `T`, `E`).
    pub status: u8,
    /// ErrorResponses seen so far (the relay compares counts around a unit it decided at Flush).
    pub errors: u64,
    /// PostgreSQL sent a FATAL (or PANIC) to the client: it ends the session itself, and says why.
    pub fatal_relayed: bool,
    /// Statements in flight, oldest first.
    pub in_flight: VecDeque<InFlight>,
    /// Extended-protocol batches finished since the relay last looked, and how each was answered.
    pub settled: Vec<(u64, BatchAnswer)>,
    /// Statement names whose parsing again ([`InFlight::internal`]) failed since the relay last looked.
    pub refresh_failed: Vec<Box<[u8]>>,
    /// Simple queries with PREPAREs or DEALLOCATEs finished since the relay last looked, with their
    /// command tags ([`super::prepared::SqlPrepared::settle`]).
    pub prepared_settled: Vec<PendingOps>,
    /// Settings PostgreSQL reported (ParameterStatus) under which it reads statement text differently
    /// from the policy, as `(name, value)`: `standard_conforming_strings` off, or a client encoding whose
    /// characters can hold a backslash. Set however the change was made (an approved SET, a function).
    pub misread: Vec<(String, String)>,
    /// The `client_encoding` PostgreSQL last reported (empty before any report), for [`statement_text`].
    pub client_encoding: String,
    /// The `server_encoding` PostgreSQL reported at login (empty if it did not).
    pub server_encoding: String,
    tag: Option<String>,
    error: Option<String>,
    /// ParseComplete and CloseComplete messages answering the statement at the head of `in_flight`
    /// (or, with nothing in flight, the part of the next batch sent ahead on Flush).
    parses: u32,
    closes: u32,
    /// ParseComplete, CloseComplete, RowDescription and NoData messages received with nothing in
    /// flight: answers to the part of a batch sent ahead on Flush (the relay resets it when a batch
    /// first sends one).
    pub ahead_answers: u32,
    /// Bytes needed to complete the frame at the head of the buffer (for the reader's reservation).
    pub need: usize,
    /// Result masking, only on connections with masking rules.
    pub masker: Option<Box<WireMasker>>,
    /// Set by a CopyInResponse to the statement at the head of `in_flight`: the client's COPY end that
    /// starts copy-in mode's window is this one ([`CopyMarks`]); Syncs sent before it get no answer.
    copy_window: Option<u64>,
    /// CopyInResponses seen for the statement at the head (a simple query may run several COPYs).
    copies: u64,
    /// An ErrorResponse arrived with nothing in flight: the part of the current extended-query batch
    /// that went ahead of its Sync failed, so PostgreSQL skips the rest of the batch until Sync.
    /// Cleared by the next ReadyForQuery.
    pub failed_before_sync: bool,
}

/// The largest row a masked connection examines (a DataRow or COPY row, in bytes). Masking holds a row
/// whole, with masked copies of it: without a bound, a few allowed `SELECT`s of 200 MB values would take
/// gigabytes. A result with a larger row is withheld (fail closed), unless none of its columns is masked.
pub const MAX_MASKED_ROW: usize = 32 * 1024 * 1024;

/// The upstream sent something that is not a valid frame.
#[derive(Debug)]
pub struct BadFrame;

impl BackendTracker {
    /// State after the upstream's first ReadyForQuery.
    pub fn new(status: u8) -> Self {
        Self {
            skip: 0,
            drop: 0,
            status,
            errors: 0,
            fatal_relayed: false,
            in_flight: VecDeque::new(),
            settled: Vec::new(),
            refresh_failed: Vec::new(),
            prepared_settled: Vec::new(),
            misread: Vec::new(),
            client_encoding: String::new(),
            server_encoding: String::new(),
            tag: None,
            error: None,
            parses: 0,
            closes: 0,
            ahead_answers: 0,
            need: 0,
            masker: None,
            copy_window: None,
            copies: 0,
            failed_before_sync: false,
        }
    }

    /// Routes result frames through `masker` (a connection with masking rules).
    pub fn with_masker(mut self, masker: Option<WireMasker>) -> Self {
        self.masker = masker.map(Box::new);
        self
    }

    /// Notes the settings among `frames` (the upstream's ParameterStatus frames at login).
    pub fn with_settings(mut self, mut frames: &[u8]) -> Self {
        while let Some((tag, total)) = frame_header(frames) {
            let Some(frame) = frames.get(..total).filter(|_| total != usize::MAX) else {
                break;
            };
            if tag == b'S' {
                self.note_setting(&frame[5..]);
            }
            frames = &frames[total..];
        }
        self
    }

    /// True when PostgreSQL keeps the bytes of a statement or portal name the client sends as they
    /// are: it converts names from the client encoding to the server's, and conversions such as
    /// EUC_JP's map several byte sequences to one character (two names the gateway tells apart would
    /// be one upstream). ASCII converts to itself everywhere.
    pub fn keeps_name_bytes(&self, name: &[u8]) -> bool {
        name.is_ascii()
            || (!self.client_encoding.is_empty()
                && self
                    .client_encoding
                    .eq_ignore_ascii_case(&self.server_encoding))
    }

    /// True once the statement at the head of `in_flight` has started a COPY FROM STDIN, until it ends:
    /// the upstream may be waiting for data only the client can send.
    pub fn in_copy_in(&self) -> bool {
        self.copy_window.is_some()
    }

    /// True while part of an upstream frame has reached the client and the rest has not: a message of
    /// the gateway's own now would land inside that frame.
    pub fn mid_frame_to_client(&self) -> bool {
        self.skip > 0
    }

    /// True between frames: the gateway may inject its own message to the client.
    pub fn at_boundary(&self) -> bool {
        self.skip == 0 && self.drop == 0
    }

    /// Scans `buf`; returns how many bytes to consume and whether the client gets `rewritten`
    /// instead of `buf[..n]`. Finished statements are appended to `finished`. Stops early, before a
    /// RowDescription whose tables the masker must look up first ([`WireMasker::resolve_tables`]).
    pub fn scan(
        &mut self,
        buf: &[u8],
        rewritten: &mut BytesMut,
        finished: &mut Vec<FinishedStatement>,
    ) -> Result<(usize, bool), BadFrame> {
        let mut pos = self.skip.min(buf.len());
        self.skip -= pos;
        let mut copied = 0;
        let mut rewrote = false;
        if self.drop > 0 {
            // The rest of an oversized row: consumed, never forwarded.
            pos = self.drop.min(buf.len());
            self.drop -= pos;
            copied = pos;
            rewrote = true;
        }
        self.need = 0;
        while self.skip == 0 && self.drop == 0 {
            let Some((tag, total)) = frame_header(&buf[pos..]) else {
                break;
            };
            if total == usize::MAX {
                return Err(BadFrame);
            }
            let avail = buf.len() - pos;
            let rejecting = self.in_flight.front().is_some_and(|f| f.rejection);
            let internal = self.in_flight.front().is_some_and(|f| f.internal.is_some());
            let place = match tag {
                b'1' => Some((b'1', self.parses)),
                b'3' => Some((b'3', self.closes)),
                _ => None,
            };
            let injected = place.is_some_and(|p| {
                self.in_flight
                    .front()
                    .is_some_and(|f| f.hidden.contains(&p))
            });
            let hidden = injected
                || (rejecting && !matches!(tag, b'E' | b'Z' | b'N' | b'A' | b'S'))
                || (internal && !matches!(tag, b'N' | b'A' | b'S'))
                || (tag == b'Z' && self.in_flight.front().is_some_and(|f| f.swallow_ready));
            let masking = !internal && self.masker.is_some() && stream::wants(tag);
            let oversized =
                masking && !hidden && total > MAX_MASKED_ROW && matches!(tag, b'D' | b'd');
            // Frames nobody needs to read stream through without being held whole; so does an
            // oversized row of a result none of whose columns is masked.
            let streams = (!matches!(tag, b'Z' | b'C' | b'E' | b'S' | b'G') && !hidden && !masking)
                || (oversized
                    && tag == b'D'
                    && self
                        .masker
                        .as_ref()
                        .is_some_and(|m| m.passes_rows_unchanged()));
            if streams {
                self.count_completion(tag);
                if avail >= total {
                    pos += total;
                    continue;
                }
                self.skip = total - avail;
                pos = buf.len();
                break;
            }
            if let (true, Some(m)) = (oversized, self.masker.as_mut()) {
                // Masking needs the whole row in memory (and copies of it); past the limit the result
                // is withheld instead, and the row dropped as it streams by.
                m.withhold_oversized(total, MAX_MASKED_ROW);
                rewritten.extend_from_slice(&buf[copied..pos]);
                rewrote = true;
                let take = total.min(avail);
                pos += take;
                copied = pos;
                if take < total {
                    self.drop = total - take;
                    break;
                }
                continue;
            }
            if avail < total {
                self.need = total;
                break;
            }
            let frame = &buf[pos..pos + total];
            let body = &frame[5..];
            let mut action = FrameAction::Pass;
            if let (true, Some(m)) = (masking, self.masker.as_mut()) {
                action = m.on_backend(tag, frame, self.in_flight.front().map(|f| &*f.sql));
                match &action {
                    FrameAction::Refuse(message) => self.error = Some(message.clone()),
                    // Stop before this frame: the caller resolves its tables and scans again.
                    FrameAction::ResolveTables => break,
                    _ => {}
                }
                // PostgreSQL's own error and notice text can quote a masked value; the gateway's
                // rejections are its own text.
                if matches!(tag, b'E' | b'N')
                    && !rejecting
                    && action == FrameAction::Pass
                    && messages::redact_frame(
                        frame,
                        self.in_flight.front().map_or("", |f| match &f.parsed {
                            Some(parsed) if f.sql.is_empty() => parsed,
                            _ => &f.sql,
                        }),
                        &mut m.out,
                    )
                {
                    action = FrameAction::Replace;
                }
            }
            self.count_completion(tag);
            match tag {
                b'S' => self.note_setting(body),
                b'G' => {
                    if let Some(f) = self.in_flight.front() {
                        self.copy_window = Some(f.copy.at_start + self.copies);
                        self.copies += 1;
                    }
                }
                b'Z' => {
                    self.failed_before_sync = false;
                    self.status = body.first().copied().unwrap_or(b'I');
                    self.finish(finished);
                }
                b'C' if !matches!(action, FrameAction::Refuse(_)) => {
                    let mut p = 0;
                    let text = read_cstr(body, &mut p).unwrap_or(body);
                    let tag = String::from_utf8_lossy(text).into_owned();
                    if let Some(ops) = self.in_flight.front_mut().and_then(|f| f.prepared.as_mut())
                    {
                        ops.tags.push(tag.clone());
                    }
                    // A batch or multi-statement query keeps every statement's tag, so its record
                    // (and an approved pipeline's execution) shows each write, not the last SELECT's.
                    self.tag = Some(match self.tag.take() {
                        None => tag,
                        Some(mut tags) if tags.len() < MAX_TAGS_TEXT => {
                            tags.push_str("; ");
                            tags.push_str(&tag);
                            tags
                        }
                        Some(mut tags) => {
                            if !tags.ends_with('…') {
                                tags.push_str("; …");
                            }
                            tags
                        }
                    });
                }
                // The gateway's own round trip failed (its Describe or its Parse): the Bind that
                // follows meets PostgreSQL's own answer for that name, and the name is parsed again
                // before the next Bind.
                b'E' if internal => self.error = Some(String::new()),
                b'E' => {
                    self.errors = self.errors.wrapping_add(1);
                    self.fatal_relayed |= error_fields(body)
                        .any(|(f, v)| f == b'V' && (v == b"FATAL" || v == b"PANIC"));
                    if self.in_flight.is_empty() {
                        self.failed_before_sync = true;
                    }
                    // The record keeps what the client was shown.
                    let body = match (&action, self.masker.as_ref()) {
                        (FrameAction::Replace, Some(m)) => m.out.get(5..).unwrap_or_default(),
                        _ => body,
                    };
                    let message = error_fields(body)
                        .find(|(f, _)| *f == b'M')
                        .map(|(_, m)| m)
                        .unwrap_or_default();
                    self.error = Some(String::from_utf8_lossy(message).into_owned());
                }
                _ => {}
            }
            if hidden || (rejecting && tag == b'E') {
                rewritten.extend_from_slice(&buf[copied..pos]);
                if tag == b'E' && !internal {
                    put_without_context(rewritten, body);
                }
                copied = pos + total;
                rewrote = true;
            } else if action != FrameAction::Pass {
                rewritten.extend_from_slice(&buf[copied..pos]);
                if let (FrameAction::Replace | FrameAction::Refuse(_), Some(m)) =
                    (&action, self.masker.as_mut())
                {
                    rewritten.extend_from_slice(&m.out);
                    m.out.clear();
                }
                copied = pos + total;
                rewrote = true;
            }
            pos += total;
        }
        if rewrote {
            rewritten.extend_from_slice(&buf[copied..pos]);
        }
        Ok((pos, rewrote))
    }

    /// Counts a ParseComplete or CloseComplete for the statement at the head of `in_flight`, and the
    /// answers to a part sent ahead; the gateway's own round trips count for neither.
    fn count_completion(&mut self, tag: u8) {
        let head = self.in_flight.front();
        if head.is_some_and(|f| f.internal.is_some()) {
            return;
        }
        if head.is_none() && matches!(tag, b'1' | b'3' | b'T' | b'n') {
            self.ahead_answers = self.ahead_answers.saturating_add(1);
        }
        match tag {
            b'1' => self.parses = self.parses.saturating_add(1),
            b'3' => self.closes = self.closes.saturating_add(1),
            _ => {}
        }
    }

    /// Notes a ParameterStatus that changes how PostgreSQL reads statement text (see `misread`).
    fn note_setting(&mut self, body: &[u8]) {
        let mut p = 0;
        let (Some(name), Some(value)) = (read_cstr(body, &mut p), read_cstr(body, &mut p)) else {
            return;
        };
        let name = String::from_utf8_lossy(name);
        if name == "server_encoding" {
            self.server_encoding = String::from_utf8_lossy(value).into_owned();
            return;
        }
        if !matches!(&*name, "standard_conforming_strings" | "client_encoding") {
            return;
        }
        let value = String::from_utf8_lossy(value).into_owned();
        if name == "client_encoding" {
            self.client_encoding.clone_from(&value);
        }
        self.misread.retain(|(n, _)| *n != name);
        if crate::policy::settings::setting_verdict(&name, &value).0 != Action::Allow {
            self.misread.push((name.into_owned(), value));
        }
    }

    /// The session is over with statements still upstream (the upstream died mid-statement, or the
    /// client left): each becomes a record with the error it met. The head keeps what the upstream last
    /// said about it (its FATAL, say) ahead of `reason`; the statements queued behind it never ran.
    pub fn abandon(&mut self, reason: &str, finished: &mut Vec<FinishedStatement>) {
        let tag = self.tag.take();
        let error = match self.error.take() {
            Some(upstream) => format!("{upstream} ({reason})"),
            None => reason.to_string(),
        };
        self.copy_window = None;
        self.copies = 0;
        let masked = self.masker.as_mut().map_or(0, |m| m.take_masked());
        let mut rest = std::mem::take(&mut self.in_flight).into_iter();
        if let Some(head) = rest.next() {
            finished.push(head.finished(tag, Some(error), masked));
        }
        for f in rest {
            finished.push(f.finished(
                None,
                Some(format!("not run: the session ended first ({reason})")),
                0,
            ));
        }
    }

    fn finish(&mut self, finished: &mut Vec<FinishedStatement>) {
        let tag = self.tag.take();
        let error = self.error.take();
        let window = self.copy_window.take();
        self.copies = 0;
        let Some(mut f) = self.in_flight.pop_front() else {
            return;
        };
        if let Some(name) = f.internal.take() {
            // Its Describe failed (the statement no longer checks out against the catalog, and the
            // client's Bind meets the same error) and nothing after it ran, or its Parse failed after
            // the Close: either way the name is parsed again before its next Bind.
            if error.is_some() {
                self.refresh_failed.push(name);
            }
            return;
        }
        // (A round trip of the gateway's own leaves them to the batch whose part went ahead of it.)
        let (parses, closes) = (
            std::mem::take(&mut self.parses),
            std::mem::take(&mut self.closes),
        );
        if let Some(ops) = f.prepared.take() {
            self.prepared_settled.push(*ops);
        }
        let succeeded = error.is_none();
        let answered = self.ignored_syncs(&f, window);
        if let Some(batch) = f.batch {
            // One ReadyForQuery answering several batches (Syncs read in copy-in mode): whose
            // completions are whose is not known.
            let answer = match answered.is_empty() {
                true => BatchAnswer {
                    succeeded,
                    parses,
                    closes,
                },
                false => BatchAnswer::uncounted(succeeded),
            };
            self.settled.push((batch, answer));
        }
        let masked = self.masker.as_mut().map_or(0, |m| m.take_masked());
        finished.push(f.finished(tag, error, masked));
        // Their messages ran (or were skipped after an error) before this ReadyForQuery.
        for other in answered {
            if let Some(batch) = other.batch {
                self.settled
                    .push((batch, BatchAnswer::uncounted(succeeded)));
            }
            finished.push(other.finished(None, None, 0));
        }
    }

    /// The statements after `head` that the ReadyForQuery ending `head` also answers, when `head` started
    /// copy-in mode whose window is `window`: batches whose Sync PostgreSQL read in copy-in mode and
    /// ignored, and, when `head`'s own Sync was one of them, the batch whose Sync (the first after the
    /// copy ended) brought this ReadyForQuery.
    fn ignored_syncs(&mut self, head: &InFlight, window: Option<u64>) -> Vec<InFlight> {
        let Some(window) = window else {
            return Vec::new();
        };
        let mut answered = Vec::new();
        while self
            .in_flight
            .front()
            .is_some_and(|f| f.copy.at_sync == Some(window))
        {
            answered.extend(self.in_flight.pop_front());
        }
        if head.copy.at_sync == Some(window) {
            answered.extend(self.in_flight.pop_front());
        }
        answered
    }
}

/// Re-encodes an ErrorResponse without the PL/pgSQL context, file and line of the rejection's DO block.
fn put_without_context(out: &mut BytesMut, body: &[u8]) {
    let start = out.len();
    out.put_u8(b'E');
    out.put_i32(0);
    for (field, value) in error_fields(body) {
        if matches!(field, b'W' | b'F' | b'L' | b'R' | b'q' | b'P' | b'p') {
            continue;
        }
        out.put_u8(field);
        out.put_slice(value);
        out.put_u8(0);
    }
    out.put_u8(0);
    super::codec::patch_len(out, start);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pg::codec::{put_error, put_ready, Severity};

    fn in_flight(rejection: bool) -> InFlight {
        InFlight {
            parsed: None,
            sql: Arc::from("x"),
            binds: vec![],
            decision: Action::Allow,
            request_id: None,
            executed: None,
            rejection,
            received: Instant::now(),
            forwarded: Instant::now(),
            batch: None,
            copy: CopyMarks::default(),
            prepared: None,
            swallow_ready: false,
            internal: None,
            hidden: Vec::new(),
        }
    }

    #[test]
    fn a_finished_statement_carries_the_wall_time_it_was_received() {
        let mut f = in_flight(false);
        let Some(earlier) = f.received.checked_sub(std::time::Duration::from_secs(40)) else {
            return; // (a machine up for less than that)
        };
        f.received = earlier;
        let before = countersign_bot::clock::now();
        let done = f.finished(None, None, 0);
        // Received 40 s ago, whenever the record is handed on later.
        let age = before - done.received_at;
        assert!(
            age >= time::Duration::seconds(39) && age <= time::Duration::seconds(41),
            "{age}"
        );
        assert!(done.duration >= std::time::Duration::from_secs(40));
    }

    fn complete(tag: &str) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u8(b'C');
        b.put_i32(4 + tag.len() as i32 + 1);
        b.put_slice(tag.as_bytes());
        b.put_u8(0);
        b
    }

    fn parameter_status(name: &str, value: &str) -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u8(b'S');
        b.put_i32(4 + name.len() as i32 + 1 + value.len() as i32 + 1);
        b.put_slice(name.as_bytes());
        b.put_u8(0);
        b.put_slice(value.as_bytes());
        b.put_u8(0);
        b
    }

    #[test]
    fn the_gateways_own_round_trip_never_reaches_the_client_nor_the_record() {
        let frame = |tag: u8, body: &[u8]| {
            let mut b = BytesMut::new();
            b.put_u8(tag);
            b.put_i32(4 + body.len() as i32);
            b.put_slice(body);
            b
        };
        let mut t = BackendTracker::new(b'I');
        t.in_flight.push_back(InFlight {
            internal: Some(b"pm".to_vec().into()),
            hidden: Vec::new(),
            ..in_flight(false)
        });
        t.in_flight.push_back(in_flight(false));
        let error = frame(b'E', b"SERROR\0C42P01\0Mrelation \"t\" does not exist\0\0");
        let notify = frame(b'A', b"\0\0\0\x07chan\0payload\0");
        // The gateway's Close, Parse (failed) and Sync; a notification on the way; then the client's.
        let joined =
            |frames: &[BytesMut]| -> Vec<u8> { frames.iter().flat_map(|f| f.to_vec()).collect() };
        let data = joined(&[
            frame(b'3', b""),
            error,
            notify.clone(),
            frame(b'Z', b"I"),
            frame(b'2', b""),
            frame(b'C', b"SELECT 1\0"),
            frame(b'Z', b"I"),
        ]);
        let (mut out, mut finished) = (BytesMut::new(), Vec::new());
        let (n, rewrote) = t.scan(&data, &mut out, &mut finished).unwrap();
        assert_eq!((n, rewrote), (data.len(), true));
        let want = joined(&[
            notify,
            frame(b'2', b""),
            frame(b'C', b"SELECT 1\0"),
            frame(b'Z', b"I"),
        ]);
        assert_eq!(&out[..], &want[..]);
        assert_eq!(finished.len(), 1, "only the client's statement is recorded");
        assert_eq!(finished[0].error, None);
        assert_eq!(t.errors, 0);
        assert!(t.in_flight.is_empty());
        // Its Parse failed: the name is to be parsed again before the next Bind.
        assert_eq!(t.refresh_failed, [Box::<[u8]>::from(&b"pm"[..])]);
    }

    #[test]
    fn settings_that_change_how_postgres_reads_text_are_noted_until_made_safe_again() {
        let mut t = BackendTracker::new(b'I');
        let scan = |t: &mut BackendTracker, frames: &[BytesMut]| {
            let data: Vec<u8> = frames.iter().flat_map(|f| f.to_vec()).collect();
            let (n, rewrote) = t
                .scan(&data, &mut BytesMut::new(), &mut Vec::new())
                .unwrap();
            // Noted, never rewritten: the client gets the frames as they are.
            assert_eq!((n, rewrote), (data.len(), false));
        };
        scan(
            &mut t,
            &[
                parameter_status("application_name", "psql"),
                parameter_status("client_encoding", "UTF8"),
            ],
        );
        assert!(t.misread.is_empty());
        scan(
            &mut t,
            &[
                parameter_status("standard_conforming_strings", "off"),
                parameter_status("client_encoding", "GBK"),
            ],
        );
        assert_eq!(
            t.misread,
            [
                ("standard_conforming_strings".to_string(), "off".to_string()),
                ("client_encoding".to_string(), "GBK".to_string())
            ]
        );
        scan(
            &mut t,
            &[parameter_status("standard_conforming_strings", "on")],
        );
        assert_eq!(
            t.misread,
            [("client_encoding".to_string(), "GBK".to_string())]
        );
        scan(&mut t, &[parameter_status("client_encoding", "LATIN1")]);
        assert!(t.misread.is_empty());
    }

    /// A batch (`sql`, extended-protocol number `batch`) at `marks` among the client's COPY ends.
    fn batch_at(sql: &str, batch: u64, at_start: u64, at_sync: u64) -> InFlight {
        InFlight {
            parsed: None,
            sql: Arc::from(sql),
            batch: Some(batch),
            copy: CopyMarks {
                at_start,
                at_sync: Some(at_sync),
            },
            ..in_flight(false)
        }
    }

    fn copy_in_response() -> BytesMut {
        let mut b = BytesMut::new();
        b.put_u8(b'G');
        b.put_i32(4 + 3);
        b.put_slice(&[0, 0, 0]);
        b
    }

    /// Scans `frames` and returns each finished statement's text and command tag.
    fn answers(t: &mut BackendTracker, frames: &[BytesMut]) -> Vec<(String, Option<String>)> {
        let data: Vec<u8> = frames.iter().flat_map(|f| f.to_vec()).collect();
        let mut fin = Vec::new();
        t.scan(&data, &mut BytesMut::new(), &mut fin).unwrap();
        fin.into_iter()
            .map(|f| (f.sql.to_string(), f.command_tag))
            .collect()
    }

    fn ready() -> BytesMut {
        let mut b = BytesMut::new();
        put_ready(&mut b, b'I');
        b
    }

    #[test]
    fn only_ascii_names_are_kept_byte_for_byte_across_encodings() {
        let mut t = BackendTracker::new(b'I');
        t.client_encoding = "EUC_JP".into();
        t.server_encoding = "UTF8".into();
        assert!(t.keeps_name_bytes(b"s1"));
        assert!(
            !t.keeps_name_bytes(b"n\xad\xb9"),
            "EUC_JP maps two byte sequences to one character"
        );
        t.client_encoding = "UTF8".into();
        assert!(t.keeps_name_bytes("nämlich".as_bytes()));
        t.server_encoding = String::new();
        assert!(
            !t.keeps_name_bytes("nämlich".as_bytes()),
            "server encoding unknown"
        );
    }

    #[test]
    fn a_batch_answer_counts_its_parse_and_close_completions() {
        let mut t = BackendTracker::new(b'I');
        t.in_flight.push_back(batch_at("INSERT", 7, 0, 0));
        let mut frames = Vec::new();
        for tag in [b'1', b'3', b'1'] {
            let mut b = BytesMut::new();
            b.put_u8(tag);
            b.put_i32(4);
            frames.push(b);
        }
        let mut error = BytesMut::new();
        error.put_u8(b'E');
        error.put_i32(0);
        error.put_slice(b"SERROR\0C23505\0Mduplicate key\0\0");
        crate::pg::codec::patch_len(&mut error, 0);
        frames.push(error);
        frames.push(ready());
        answers(&mut t, &frames);
        assert_eq!(
            t.settled,
            [(
                7,
                BatchAnswer {
                    succeeded: false,
                    parses: 2,
                    closes: 1
                }
            )]
        );
        // The next batch counts from zero.
        t.in_flight.push_back(batch_at("SELECT", 8, 0, 0));
        answers(&mut t, &[ready()]);
        assert_eq!(t.settled[1], (8, BatchAnswer::uncounted(true)));
    }

    #[test]
    fn a_sync_sent_during_copy_in_shares_the_next_ready_for_query() {
        // Bind, Execute, Sync (read in copy-in mode: ignored), data, CopyDone, Sync; then a SELECT.
        let mut t = BackendTracker::new(b'I');
        t.in_flight
            .push_back(batch_at("COPY t FROM STDIN", 1, 0, 0));
        assert_eq!(answers(&mut t, &[copy_in_response()]), []);
        t.in_flight.push_back(batch_at("", 2, 1, 1));
        t.in_flight.push_back(batch_at("SELECT 1", 3, 1, 1));
        assert_eq!(
            answers(&mut t, &[complete("COPY 2"), ready()]),
            [
                ("COPY t FROM STDIN".to_string(), Some("COPY 2".to_string())),
                (String::new(), None)
            ]
        );
        assert_eq!(
            t.settled,
            [
                (1, BatchAnswer::uncounted(true)),
                (2, BatchAnswer::uncounted(true))
            ]
        );
        assert_eq!(
            answers(&mut t, &[complete("SELECT 1"), ready()]),
            [("SELECT 1".to_string(), Some("SELECT 1".to_string()))]
        );
        assert!(t.in_flight.is_empty());

        // Execute and Flush, data, CopyDone, then the batch's Sync: nothing was ignored.
        t.in_flight
            .push_back(batch_at("COPY t FROM STDIN", 4, 1, 2));
        t.in_flight.push_back(batch_at("SELECT 2", 5, 2, 2));
        answers(&mut t, &[copy_in_response(), complete("COPY 1"), ready()]);
        assert_eq!(t.in_flight.len(), 1, "SELECT 2 still waits for its answer");

        // A COPY that fails before copy-in mode: its Sync is answered, and so is the next one.
        let mut t = BackendTracker::new(b'I');
        t.in_flight
            .push_back(batch_at("COPY nope FROM STDIN", 1, 0, 0));
        t.in_flight.push_back(batch_at("", 2, 1, 1));
        let mut error = BytesMut::new();
        error.put_u8(b'E');
        let fields = b"SERROR\0C42P01\0Mno such table\0\0";
        error.put_i32(4 + fields.len() as i32);
        error.put_slice(fields);
        assert_eq!(answers(&mut t, &[error, ready()]).len(), 1);
        assert_eq!(answers(&mut t, &[ready()]).len(), 1);
    }

    #[test]
    fn statement_bytes_give_back_what_the_client_sent() {
        for (enc, raw) in [
            ("LATIN1", &b"SELECT 'caf\xe9'"[..]),
            ("UTF8", "SELECT 'café'".as_bytes()),
            ("EUC_JP", &b"SELECT 1"[..]),
        ] {
            let text = statement_text(enc, raw).unwrap();
            assert_eq!(&*statement_bytes(enc, &text).unwrap(), raw, "{enc}");
        }
    }

    #[test]
    fn statement_text_is_read_in_the_reported_client_encoding() {
        let mut t = BackendTracker::new(b'I');
        assert_eq!(t.client_encoding, "");
        let data: Vec<u8> = parameter_status("client_encoding", "LATIN1").to_vec();
        t.scan(&data, &mut BytesMut::new(), &mut Vec::new())
            .unwrap();
        assert_eq!(t.client_encoding, "LATIN1");
        // LATIN1 bytes are the code points U+0000–U+00FF, even where they happen to be valid UTF-8.
        assert_eq!(
            statement_text("LATIN1", b"SELECT 'caf\xe9'").unwrap(),
            "SELECT 'caf\u{e9}'"
        );
        assert_eq!(
            statement_text("LATIN1", "SELECT 'é'".as_bytes()).unwrap(),
            "SELECT '\u{c3}\u{a9}'"
        );
        for utf8 in ["", "UTF8", "SQL_ASCII", "UNICODE", "unicode"] {
            assert_eq!(
                statement_text(utf8, "SELECT 'é'".as_bytes()).unwrap(),
                "SELECT 'é'"
            );
            assert!(statement_text(utf8, b"SELECT '\xe9'").is_err());
        }
        // Elsewhere only ASCII is read; non-ASCII text is refused, valid UTF-8 or not.
        assert_eq!(statement_text("KOI8R", b"SELECT 1").unwrap(), "SELECT 1");
        for bytes in [&b"SELECT '\xc1'"[..], "SELECT 'é'".as_bytes()] {
            let err = statement_text("KOI8R", bytes).unwrap_err();
            assert!(err.contains("client_encoding is KOI8R"), "{err}");
        }
    }

    #[test]
    fn pass_through_frames_split_across_reads_are_forwarded_untouched() {
        let mut t = BackendTracker::new(b'I');
        t.in_flight.push_back(in_flight(false));
        let mut data = BytesMut::new();
        data.put_u8(b'D');
        data.put_i32(4 + 100);
        data.put_slice(&[7u8; 100]);
        data.extend_from_slice(&complete("SELECT 1"));
        put_ready(&mut data, b'T');
        let (mut rw, mut fin) = (BytesMut::new(), Vec::new());
        let (first, rewrote) = t.scan(&data[..50], &mut rw, &mut fin).unwrap();
        assert_eq!(first, 50);
        assert!(!rewrote);
        assert!(!t.at_boundary());
        let (rest, _) = t.scan(&data[50..], &mut rw, &mut fin).unwrap();
        assert_eq!(first + rest, data.len());
        assert!(rw.is_empty());
        assert_eq!(t.status, b'T');
        assert_eq!(fin.len(), 1);
        assert_eq!(fin[0].command_tag.as_deref(), Some("SELECT 1"));
    }

    #[test]
    fn rejection_round_trip_shows_only_error_and_ready() {
        let mut t = BackendTracker::new(b'T');
        t.in_flight.push_back(in_flight(true));
        let mut data = BytesMut::new();
        data.extend_from_slice(&[b'1', 0, 0, 0, 4, b'2', 0, 0, 0, 4]);
        put_error(&mut data, Severity::Fatal, "42501", "blocked", None);
        put_ready(&mut data, b'E');
        let (mut rw, mut fin) = (BytesMut::new(), Vec::new());
        let (n, rewrote) = t.scan(&data, &mut rw, &mut fin).unwrap();
        assert_eq!(n, data.len());
        assert!(rewrote);
        assert_eq!(rw[0], b'E');
        let (_, total) = frame_header(&rw).unwrap();
        assert_eq!(&rw[total..], &[b'Z', 0, 0, 0, 5, b'E']);
        assert_eq!(fin[0].error.as_deref(), Some("blocked"));
    }

    #[test]
    fn negative_length_from_upstream_is_an_error() {
        let mut t = BackendTracker::new(b'I');
        let (mut rw, mut fin) = (BytesMut::new(), Vec::new());
        assert!(t
            .scan(&[b'D', 0xff, 0xff, 0xff, 0xff], &mut rw, &mut fin)
            .is_err());
    }
}
