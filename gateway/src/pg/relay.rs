//! The per-connection relay: one task selects on both sockets, decodes only what policy needs from the
//! client, passes upstream bytes through (see `backend`), and holds risky statements on the live connection.

use super::backend::{statement_text, BackendTracker, CopyMarks, InFlight};
use super::cancel::{send_upstream_cancel, BackendKey, CancelSignal, UpstreamAddr};
use super::codec::{frame_header, put_error, read_cstr, send, sqlstate, Severity};
use super::error::WireError;
use super::extended::{
    parse_param_types, shown_statement, statement_hash, Batch, Binding, Catalog,
};
use super::gate::{GateError, HoldOutcome, HoldTicket, SessionInfo, WireGate};
use super::prepared::{changes_names, SqlPrepared};
use super::recorder::{FinishedStatement, Recorder};
use crate::masking::{Masker, TableLookup, WireMasker};
use crate::policy::{Action, PreparedUse, Verdict, VerdictMemo};
use bytes::{Buf, BufMut, BytesMut};
use countersign_bot::RequestId;
use countersign_bot::StatementHash;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// How long a session closed for a protocol violation keeps reading (and dropping) client input, so the
/// client gets to read the FATAL.
const LINGER: Duration = Duration::from_secs(2);

const READ_CHUNK: usize = 32 * 1024;
/// An extended-query batch this large goes upstream before its Sync, as far as it is allowed.
const EARLY_BATCH: usize = 256 * 1024;
/// A protocol Flush message.
const FLUSH: [u8; 5] = [b'H', 0, 0, 0, 4];
const SYNC: [u8; 5] = [b'S', 0, 0, 0, 4];

/// What the relay needs from the rest of the session.
pub struct SessionCtx {
    /// The engine.
    pub gate: Arc<dyn WireGate>,
    /// The recorded session.
    pub session: Arc<SessionInfo>,
    /// Where statement records go.
    pub recorder: Recorder,
    /// Cancel requests for this session.
    pub signal: Arc<CancelSignal>,
    /// How long to keep a client waiting on a hold.
    pub hold_wait: Duration,
    /// Largest client message accepted.
    pub max_message_size: usize,
    /// The connection's masking rules (None: results pass untouched).
    pub masking: Option<Arc<Masker>>,
    /// Resolves table OIDs for table-qualified masking rules (None: they match by column name).
    pub table_lookup: Option<Arc<dyn TableLookup>>,
    /// The upstream's ParameterStatus frames at login: a database or role default may already make
    /// PostgreSQL read statement text differently (see [`BackendTracker::misread`]).
    pub startup_status: BytesMut,
    /// Startup settings that decide how names resolve (`search_path`, or `options` setting it or a
    /// role), as `name=value`: part of every approval's context in this session.
    pub name_context: Vec<String>,
    /// Turns true when the gateway shuts down ([`super::server::WireServer::with_shutdown`]).
    pub shutdown: Option<tokio::sync::watch::Receiver<bool>>,
    /// Turns true when the shutdown's grace for running statements is over
    /// ([`super::server::WireServer::with_busy_cancel`]).
    pub cancel_busy: Option<tokio::sync::watch::Receiver<bool>>,
    /// Where and with which key to cancel this session's upstream statement.
    pub upstream_key: (UpstreamAddr, BackendKey),
}

/// How long a session whose statement was cancelled at shutdown waits for the upstream's answer.
const CANCEL_ANSWER: Duration = Duration::from_secs(3);

/// How long a hold waits for the answer to the part of its batch that went ahead on Flush.
const READY_PART_ANSWER: Duration = Duration::from_millis(100);

/// How much a held session reads ahead of its client (what it sends after the held statement) before
/// it stops reading until the decision.
const HOLD_READ_AHEAD: usize = 1024 * 1024;

/// While a held session's read-ahead is full, how often it checks that its client is still there.
const GONE_CHECK: Duration = Duration::from_secs(2);

/// How many statements that changed name resolution a session keeps for its approvals' context.
const MAX_NAME_CONTEXT: usize = 32;

/// A held statement as shown and hashed in a session that changed how names resolve (`search_path`,
/// role): the statements that did so follow its text, one per line, and the hash covers them, so an
/// approval given for one resolution (another session, the HTTP API) never runs under another.
fn with_name_context(
    shown: String,
    hash: StatementHash,
    context: &[String],
) -> (String, StatementHash) {
    if context.is_empty() {
        return (shown, hash);
    }
    let mut out = shown;
    out.push_str("\n-- in a session that earlier ran these, which decide what its names refer to:");
    let mut bound = Vec::new();
    for c in context {
        out.push_str("\n--   ");
        // On one line, as reasons are: a line break in it can't pass for the next context line.
        out.push_str(&countersign_bot::reveal::reveal_line(
            c.trim_matches(super::extended::is_sql_space),
        ));
        bound.extend_from_slice(&(c.len() as u64).to_be_bytes());
        bound.extend_from_slice(c.as_bytes());
    }
    (out, hash.with_context(&bound))
}

/// A statement or batch waiting for a human decision.
struct Held {
    /// Ends with a Sync the gateway added, whose ReadyForQuery the client must not see.
    swallow_ready: bool,
    bytes: BytesMut,
    sql: Arc<str>,
    binds: Vec<Binding>,
    verdict: Arc<Verdict>,
    received: Instant,
    /// The extended-protocol batch, for [`Catalog::settle`]; None for a simple query.
    batch: Option<u64>,
    /// Where it arrived among the client's COPY ends.
    copy: CopyMarks,
    /// Part of its batch went ahead on Flush (see [`Relay::settle_ready_part`]).
    after_ready_part: bool,
    /// Portals the batch binds or executes, marked approved when it is.
    portals: Vec<Box<[u8]>>,
    /// Answers to the gateway's own messages in it ([`InFlight::hidden`]).
    hidden: Vec<(u8, u32)>,
}

enum Step {
    NeedMore,
    Hold(Held),
    /// A unit decided at the client's Flush, or at a simple Query before its Sync, and ended with the
    /// gateway's own Sync (held, or already forwarded when `None`).
    DecidedAtFlush(Option<Held>),
    /// A Bind names a statement an earlier batch, not yet answered, parsed again: its answer tells
    /// which text the name holds upstream, so it is awaited before the Bind is read.
    AwaitAnswers,
    Terminate,
}

/// A gateway-made refusal, delivered through the upstream so transaction state stays true.
struct Refusal<'a> {
    sql: Arc<str>,
    binds: Vec<Binding>,
    decision: Action,
    request_id: Option<RequestId>,
    code: &'a str,
    message: String,
    received: Instant,
}

/// One client session's relay, generic over the client's and the upstream's socket halves (plain TCP or
/// TLS) so that each combination is compiled without dynamic dispatch.
pub struct Relay<CR, CW, SR, SW> {
    client_r: CR,
    client_w: CW,
    server_r: SR,
    server_w: SW,
    cbuf: BytesMut,
    sbuf: BytesMut,
    out: BytesMut,
    rewritten: BytesMut,
    inject: BytesMut,
    finished: Vec<FinishedStatement>,
    client_need: usize,
    backend: BackendTracker,
    catalog: Catalog,
    batch: Batch,
    /// SQL-level prepared statements the session created ([`SqlPrepared`]).
    sql_prepared: SqlPrepared,
    /// Bumped whenever what a prepared statement's name runs may have changed (a PREPARE, DEALLOCATE,
    /// named Parse, code, an approved execution): an approved `EXECUTE name` holds only in this
    /// session and only while this stays as it was.
    name_generation: u64,
    /// A statement of this session changed (or asked to change) its identity: `DISCARD ALL` would
    /// undo it unreviewed ([`identity_guard`]).
    identity_changed: bool,
    verdicts: VerdictMemo,
    /// A statement of this session changed the database's catalog and the lists were not read since.
    catalog_dirty: bool,
    /// An approved execution ran (it may have changed the catalog): read the lists once it is committed.
    catalog_refresh_due: bool,
    ctx: SessionCtx,
    /// The client has left: upstream output is still scanned (and recorded) but not sent.
    client_gone: bool,
    /// CopyDone and CopyFail messages the client has sent ([`CopyMarks`]).
    copy_ends: u64,
    /// Set while the unit being decided ends with a Sync the gateway added ([`InFlight::swallow_ready`]).
    swallow_next: bool,
    /// Set when a unit decided at Flush failed or was refused: client messages are dropped up to its Sync.
    skip_until_sync: bool,
    /// Set when the unit last decided went upstream only to be skipped (what went ahead had failed).
    unit_skipped: bool,
    /// Part of the current batch went ahead on Flush, and its answer may still be on its way.
    ready_part_sent: bool,
    /// The part sent ahead holds more than Flush messages (a lone Flush between batches asks for
    /// nothing upstream, and a stale name bound after it can still be parsed again ahead).
    ready_part_runs: bool,
    /// The answers the part sent ahead brings (a ParseComplete, a description, a CloseComplete
    /// each) while it holds only Parse, Describe, Close and Flush messages (a driver preparing its
    /// next statement); None once it holds anything else.
    ready_part_answers: Option<u32>,
    /// Bytes of a client CopyData message still to stream upstream unbuffered ([`Self::stream_copy_data`]).
    copy_data_left: usize,
}

impl<CR, CW, SR, SW> Relay<CR, CW, SR, SW>
where
    CR: AsyncRead + Unpin + Send,
    CW: AsyncWrite + Unpin + Send,
    SR: AsyncRead + Unpin + Send,
    SW: AsyncWrite + Unpin + Send,
{
    /// A relay over established client and upstream sockets; `sbuf` holds any upstream bytes read early.
    pub fn new(
        (client_r, client_w): (CR, CW),
        (server_r, server_w): (SR, SW),
        sbuf: BytesMut,
        ready_status: u8,
        ctx: SessionCtx,
    ) -> Self {
        Self {
            client_r,
            client_w,
            server_r,
            server_w,
            cbuf: BytesMut::with_capacity(READ_CHUNK),
            sbuf,
            out: BytesMut::with_capacity(READ_CHUNK),
            rewritten: BytesMut::new(),
            inject: BytesMut::new(),
            finished: Vec::new(),
            client_need: 0,
            backend: BackendTracker::new(ready_status)
                .with_masker(
                    ctx.masking
                        .clone()
                        .map(|m| WireMasker::new(m).with_lookup(ctx.table_lookup.clone())),
                )
                .with_settings(&ctx.startup_status),
            catalog: Catalog::default(),
            batch: Batch::default(),
            sql_prepared: SqlPrepared::default(),
            name_generation: 0,
            identity_changed: false,
            verdicts: VerdictMemo::default(),
            catalog_dirty: false,
            catalog_refresh_due: false,
            ctx,
            client_gone: false,
            copy_ends: 0,
            swallow_next: false,
            skip_until_sync: false,
            unit_skipped: false,
            ready_part_sent: false,
            ready_part_runs: false,
            ready_part_answers: Some(0),
            copy_data_left: 0,
        }
    }

    /// Relays until either side closes; a client protocol violation gets a FATAL 08P01 first.
    pub async fn run(mut self) -> Result<(), WireError> {
        let result = {
            let _counted = super::spin::SessionOnThread::enter();
            let result = self.relay().await;
            self.finish_approved_without_client().await;
            self.record_unfinished(&result);
            result
        };
        if let Err(WireError::Protocol(msg)) = &result {
            tracing::warn!(session = %self.ctx.session.id, error = %msg, "closing a wire session: protocol violation");
            let mut buf = BytesMut::new();
            put_error(
                &mut buf,
                Severity::Fatal,
                sqlstate::PROTOCOL_VIOLATION,
                msg,
                None,
            );
            let _ = send(&mut self.client_w, &buf).await;
            let _ = self.client_w.shutdown().await;
            self.linger().await;
            return result;
        }
        if let Err(WireError::Upstream(msg)) = &result {
            // Not a bare EOF: the client (and a pool) learns why, as from PostgreSQL's own FATALs.
            // Only at a frame boundary: after part of a large row or COPY chunk the client would read
            // the message as the rest of that frame, so it gets the bare close PostgreSQL's crash gives.
            // PostgreSQL's own FATAL (`pg_terminate_backend`, idle timeouts) already told the client.
            if self.backend.mid_frame_to_client() || self.backend.fatal_relayed {
                let _ = self.client_w.shutdown().await;
                return result;
            }
            let mut buf = BytesMut::new();
            put_error(
                &mut buf,
                Severity::Fatal,
                sqlstate::CONNECTION_FAILURE,
                &format!("the gateway lost its connection to the database ({msg}); reconnect"),
                None,
            );
            let _ = send(&mut self.client_w, &buf).await;
        }
        let _ = self.client_w.shutdown().await;
        result
    }

    /// After a FATAL, reads and drops what the client is still sending (a pipeline it wrote before
    /// reading anything) for a moment: closing a socket with unread input resets the connection, and the
    /// client's kernel then discards the FATAL before the client reads it.
    async fn linger(&mut self) {
        let until = tokio::time::Instant::now() + LINGER;
        let mut sink = vec![0u8; 64 * 1024];
        while let Ok(Ok(n)) = tokio::time::timeout_at(until, self.client_r.read(&mut sink)).await {
            if n == 0 {
                break;
            }
        }
    }

    async fn relay(&mut self) -> Result<(), WireError> {
        if !self.sbuf.is_empty() {
            self.on_server_data().await?;
        }
        // One future each for the whole session (not one per event).
        let stop = turns_true(self.ctx.shutdown.clone());
        tokio::pin!(stop);
        let out_of_grace = turns_true(self.ctx.cancel_busy.clone());
        tokio::pin!(out_of_grace);
        let mut stopping = false;
        loop {
            if stopping && self.idle() {
                self.end_for_shutdown().await;
                return Ok(());
            }
            reserve(&mut self.cbuf, self.client_need);
            reserve(&mut self.sbuf, self.backend.need);
            tokio::select! {
                _ = &mut stop, if !stopping => {
                    stopping = true;
                }
                _ = &mut out_of_grace, if stopping => {
                    return self.cancel_for_shutdown().await;
                }
                r = self.client_r.read_buf(&mut self.cbuf) => {
                    if r? == 0 {
                        // A client that shut down only its sending side still reads: it gets the
                        // results of what it sent, as from PostgreSQL (not during a COPY FROM STDIN,
                        // whose data only the client could send).
                        if !self.backend.in_flight.is_empty() && !self.backend.in_copy_in() {
                            self.drain_in_flight().await?;
                        }
                        return Ok(());
                    }
                    super::spin::activity();
                    if self.on_client_data().await? {
                        return Ok(());
                    }
                }
                r = self.server_r.read_buf(&mut self.sbuf) => {
                    if r? == 0 {
                        return Err(WireError::Upstream("the upstream closed the connection".into()));
                    }
                    super::spin::activity();
                    self.on_server_data().await?;
                }
            }
        }
    }

    /// Ends the session as PostgreSQL's own shutdown does: FATAL `57P01`, so clients and pools reconnect.
    async fn end_for_shutdown(&mut self) {
        let mut buf = BytesMut::new();
        put_error(
            &mut buf,
            Severity::Fatal,
            sqlstate::ADMIN_SHUTDOWN,
            "terminating connection due to administrator command: the gateway is shutting down; reconnect",
            None,
        );
        let _ = send(&mut self.client_w, &buf).await;
    }

    /// The shutdown's grace for running statements is over: cancels the upstream statement (as
    /// PostgreSQL's fast shutdown does), relays its answer, then ends the session with `57P01`. An
    /// upstream that does not answer the cancel in time gets its connection closed instead.
    async fn cancel_for_shutdown(&mut self) -> Result<(), WireError> {
        if !self.backend.in_flight.is_empty() && !self.backend.in_copy_in() {
            tracing::info!(session = %self.ctx.session.id, "cancelling a statement still running at shutdown");
            let (addr, key) = self.ctx.upstream_key.clone();
            tokio::spawn(async move {
                if let Err(e) = send_upstream_cancel(&addr, key).await {
                    tracing::warn!(error = %e, "could not cancel a statement upstream at shutdown");
                }
            });
            match tokio::time::timeout(CANCEL_ANSWER, self.drain_in_flight()).await {
                Ok(result) => result?,
                // Part of a message may have reached the client: a FATAL after it would be garbage.
                Err(_) => {
                    return Err(WireError::Upstream(
                        "the upstream did not answer a cancel at shutdown".into(),
                    ))
                }
            }
        }
        self.end_for_shutdown().await;
        Ok(())
    }

    /// Nothing of the session is under way: no statement upstream, no batch or message half received,
    /// no COPY.
    fn idle(&self) -> bool {
        self.backend.in_flight.is_empty()
            && !self.ready_part_sent
            && self.batch.bytes.is_empty()
            && self.cbuf.is_empty()
            && self.copy_data_left == 0
            && !self.backend.in_copy_in()
    }

    /// Handles all complete client frames; true when the client terminated.
    async fn on_client_data(&mut self) -> Result<bool, WireError> {
        // DDL another session committed on this database: its lists are read before this session
        // judges anything more (shared with every session waiting).
        if self
            .ctx
            .gate
            .catalog_change_pending(&self.ctx.session.connection)
        {
            let _ = self
                .ctx
                .gate
                .catalog_changed(&self.ctx.session.connection)
                .await;
        }
        loop {
            match self.next_client_step()? {
                Step::NeedMore => break,
                Step::Hold(held) => {
                    self.flush_out().await?;
                    self.hold(held).await?;
                }
                Step::DecidedAtFlush(held) => {
                    let errors = self.backend.errors;
                    self.flush_out().await?;
                    if let Some(held) = held {
                        self.hold(held).await?;
                    }
                    // The gateway's Sync ended PostgreSQL's skipping after an error in that unit (a
                    // refusal is one too), which the client still expects up to its own Sync: its
                    // answer is awaited and, after an error, the client's messages up to its Sync are
                    // dropped here instead.
                    self.drain_in_flight().await?;
                    let skipped = std::mem::take(&mut self.unit_skipped);
                    if self.backend.errors != errors || skipped {
                        self.skip_until_sync = true;
                    }
                }
                Step::AwaitAnswers => self.drain_in_flight().await?,
                Step::Terminate => {
                    // As PostgreSQL: what was sent before Terminate is answered before the close.
                    self.drain_in_flight().await?;
                    return Ok(true);
                }
            }
        }
        self.flush_out().await?;
        Ok(false)
    }

    /// Sends queued frames upstream. The flush matters for TLS: a TLS writer may keep accepted bytes
    /// in its record buffer, and a CopyDone stuck there hangs the session (on plain TCP it is free).
    ///
    /// The upstream's answers are read and relayed meanwhile: PostgreSQL stops reading while it
    /// cannot write, so a long pipeline (asyncpg's `executemany`, large results) sent without
    /// reading would leave both sides waiting on each other for good.
    async fn flush_out(&mut self) -> Result<(), WireError> {
        let mut sent = 0;
        while sent < self.out.len() {
            reserve(&mut self.sbuf, self.backend.need);
            tokio::select! {
                biased;
                w = self.server_w.write(&self.out[sent..]) => match w? {
                    0 => return Err(WireError::Upstream("the upstream stopped accepting data".into())),
                    n => sent += n,
                },
                r = self.server_r.read_buf(&mut self.sbuf) => {
                    if r? == 0 {
                        return Err(WireError::Upstream("the upstream closed the connection".into()));
                    }
                    self.on_server_data().await?;
                }
            }
        }
        if sent > 0 {
            self.server_w.flush().await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Hands finished statements to the recorder and keeps the session's view of the catalog current:
    /// DDL that changed functions, views or types is judged, until it is committed and the lists read
    /// again, with unknown lists (a function created in this transaction is invisible to the gateway's
    /// catalog reader); once committed, the lists are read before the session's next statement (every
    /// connection's, so other sessions learn of it too).
    async fn hand_over_finished(&mut self) {
        for f in self.finished.drain(..) {
            let gate = &self.ctx.gate;
            if f.command_tag
                .as_deref()
                .is_some_and(|tags| tags.split("; ").any(|t| gate.changes_catalog(t)))
            {
                self.catalog_dirty = true;
                // Other sessions wait for the read too (one that judged a statement on the view
                // just made with the old lists ran the view's function unreviewed).
                gate.note_catalog_change(&self.ctx.session.connection);
            }
            // An approved execution may have done anything (a function it called may run DDL): the
            // lists are read again once it is committed, before the session's next statement.
            self.catalog_refresh_due |= f.executed.is_some();
            self.ctx.recorder.statement(&self.ctx.session, f).await;
        }
        if self.catalog_dirty || self.catalog_refresh_due {
            if self.backend.status == b'I' && self.backend.in_flight.is_empty() {
                if self.catalog_dirty {
                    // Committed now: other sessions wait for this read too.
                    self.ctx
                        .gate
                        .note_catalog_change(&self.ctx.session.connection);
                }
                if self
                    .ctx
                    .gate
                    .catalog_changed(&self.ctx.session.connection)
                    .await
                {
                    self.catalog_dirty = false;
                    self.catalog_refresh_due = false;
                    self.verdicts.catalog_pending = false;
                } else {
                    // Not read: what the session sends stays reviewed until a read succeeds.
                    self.verdicts.catalog_pending = true;
                }
            } else if self.catalog_dirty {
                self.verdicts.catalog_pending = true;
            }
        }
    }

    async fn on_server_data(&mut self) -> Result<(), WireError> {
        loop {
            let (n, rewrote) = self
                .backend
                .scan(&self.sbuf, &mut self.rewritten, &mut self.finished)
                .map_err(|_| WireError::Upstream("malformed message from the upstream".into()))?;
            let sent = if self.client_gone {
                Ok(())
            } else if rewrote {
                self.client_w.write_all(&self.rewritten).await
            } else if n > 0 {
                self.client_w.write_all(&self.sbuf[..n]).await
            } else {
                Ok(())
            };
            self.rewritten.clear();
            self.sbuf.advance(n);
            if let Err(e) = sent {
                self.client_gone = true;
                self.hand_over_finished().await;
                return Err(e.into());
            }
            // The scan stopped before a RowDescription naming tables a masking rule needs: look them up
            // (on a separate upstream session, bounded by a timeout), then scan on from that frame. Once
            // per table per session; the client has everything before it already.
            let resolved = match self.backend.masker.as_mut() {
                Some(m) => m.resolve_tables().await,
                None => false,
            };
            if !resolved {
                break;
            }
        }
        self.hand_over_finished().await;
        for (batch, answer) in self.backend.settled.drain(..) {
            self.catalog.settle(batch, answer);
        }
        for name in self.backend.refresh_failed.drain(..) {
            self.catalog.mark_stale_name(&name);
        }
        for ops in self.backend.prepared_settled.drain(..) {
            self.sql_prepared.settle(ops);
        }
        if self.client_gone {
            return Ok(());
        }
        self.flush_inject().await?;
        // A TLS client would otherwise wait on bytes left in the record buffer (see `flush_out`).
        self.client_w.flush().await?;
        Ok(())
    }

    /// True while an approved statement is upstream and its result not yet recorded.
    fn approved_in_flight(&self) -> bool {
        self.backend.in_flight.iter().any(|f| f.executed.is_some())
    }

    /// When the session ends (the client left, or sent Terminate) with an approved statement upstream,
    /// lets it run to the end and records its result, discarding its output: an approved request must
    /// not be left `executing`. If the upstream fails first, the result is recorded as unknown.
    async fn finish_approved_without_client(&mut self) {
        if !self.approved_in_flight() {
            return;
        }
        self.client_gone = true;
        if self.backend.in_copy_in() {
            // Only the client could have sent the rest of the data: the COPY is ended here, or
            // PostgreSQL would wait for it (holding its locks) as long as the session lives.
            if self.copy_data_left > 0 {
                // Part of a CopyData frame went upstream; no message can follow it. Closing the
                // session aborts the COPY and its transaction.
                self.abandon_in_flight(
                    "the client left in the middle of COPY data; the gateway closed the upstream session, which aborted the COPY (none of its rows were committed)",
                );
                return;
            }
            tracing::info!(session = %self.ctx.session.id, "the client left during an approved COPY FROM STDIN; failing the COPY upstream");
            // And a Sync: a COPY started by the extended protocol answers only at the next one (the
            // client's Sync came during copy-in, where PostgreSQL ignores it). After a simple query's
            // COPY it adds a ReadyForQuery nobody reads.
            let mut fail = BytesMut::new();
            if postgres_protocol::message::frontend::copy_fail(
                "the client disconnected before the end of its COPY data",
                &mut fail,
            )
            .is_ok()
            {
                postgres_protocol::message::frontend::sync(&mut fail);
                self.out.extend_from_slice(&fail);
            }
        } else {
            tracing::info!(session = %self.ctx.session.id, "the client left during an approved execution; waiting for its result to record it");
        }
        let Err(e) = self.drain_approved().await else {
            return;
        };
        let error = format!(
            "the upstream connection failed before the approved statement's result arrived ({e}); whether it ran is unknown"
        );
        self.abandon_in_flight(&error);
    }

    /// Records every statement still upstream when the session ends: each was forwarded, so each gets
    /// a record, with why it never finished (a dead upstream's FATAL, or the connection's end).
    fn record_unfinished(&mut self, result: &Result<(), WireError>) {
        if self.backend.in_flight.is_empty() {
            return;
        }
        let reason = match result {
            Err(e) => format!("the session ended before the upstream answered: {e}"),
            Ok(()) => "the client left before the upstream answered".to_string(),
        };
        self.abandon_in_flight(&reason);
    }

    fn abandon_in_flight(&mut self, reason: &str) {
        self.backend.abandon(reason, &mut self.finished);
        for f in self.finished.drain(..) {
            self.ctx.recorder.statement_at_end(&self.ctx.session, f);
        }
    }

    async fn drain_approved(&mut self) -> Result<(), WireError> {
        self.drain_while(Self::approved_in_flight).await
    }

    /// Relays the upstream's answers until nothing sent is still upstream.
    async fn drain_in_flight(&mut self) -> Result<(), WireError> {
        self.drain_while(|r| !r.backend.in_flight.is_empty() && !r.backend.in_copy_in())
            .await
    }

    /// Reads and handles the upstream's answers while `more` holds (the client reads nothing more).
    async fn drain_while(&mut self, more: fn(&Self) -> bool) -> Result<(), WireError> {
        self.flush_out().await?;
        while more(self) {
            reserve(&mut self.sbuf, self.backend.need);
            if self.server_r.read_buf(&mut self.sbuf).await? == 0 {
                return Err(WireError::Upstream(
                    "the upstream closed the connection".into(),
                ));
            }
            self.on_server_data().await?;
        }
        Ok(())
    }

    /// Writes gateway notices, but only between upstream frames so they never split one.
    async fn flush_inject(&mut self) -> Result<(), WireError> {
        if !self.inject.is_empty() && self.backend.at_boundary() {
            self.client_w.write_all(&self.inject).await?;
            self.inject.clear();
        }
        Ok(())
    }

    fn next_client_step(&mut self) -> Result<Step, WireError> {
        loop {
            if self.copy_data_left > 0 && !self.stream_copy_data() {
                return Ok(Step::NeedMore);
            }
            let Some((tag, total)) = frame_header(&self.cbuf) else {
                return Ok(Step::NeedMore);
            };
            // COPY data the client sends before the Sync of the batch that starts the COPY belongs
            // after that batch's messages: an allowed batch goes ahead first; one waiting for a
            // decision keeps the data (held, then forwarded with it in order).
            let into_batch = matches!(tag, b'd' | b'c' | b'f')
                && !self.batch.bytes.is_empty()
                && !self.skip_until_sync
                && (self.batch.action() != Action::Allow || !self.forward_ready_part());
            // CopyData is opaque and goes upstream as it comes, so it need not fit in memory at once:
            // PostgreSQL takes one of up to 1 GiB (sqlx sends such), far beyond `max_message_size`.
            if tag == b'd' && !into_batch && total != usize::MAX && total > READ_CHUNK {
                self.client_need = 0;
                self.copy_data_left = total;
                continue;
            }
            // A type no frontend message has (a stray startup packet's zero, say) ends the session at
            // once, not after waiting for as many bytes as its bogus length asks.
            if !matches!(
                tag,
                b'Q' | b'P'
                    | b'B'
                    | b'E'
                    | b'C'
                    | b'D'
                    | b'H'
                    | b'S'
                    | b'd'
                    | b'c'
                    | b'f'
                    | b'X'
                    | b'F'
            ) {
                return Err(unexpected_type(tag));
            }
            if total == usize::MAX || total > self.ctx.max_message_size {
                return Err(WireError::Protocol(format!(
                    "invalid message length (limit {} bytes); the client sent a corrupt or oversized message",
                    self.ctx.max_message_size
                )));
            }
            if self.cbuf.len() < total {
                self.client_need = total;
                return Ok(Step::NeedMore);
            }
            self.client_need = 0;
            if self.skip_until_sync && tag != b'S' {
                // After an error in a unit decided at Flush, PostgreSQL would skip every message up to
                // the client's Sync.
                self.cbuf.advance(total);
                continue;
            }
            self.skip_until_sync = false;
            // A batch whose part went ahead on Flush counts as pending too: its statements have no
            // in-flight entry until a Sync ends them, and the Query's would otherwise come first
            // (its text then judging the flushed statement's rows).
            if matches!(tag, b'Q' | b'F') && (!self.batch.bytes.is_empty() || self.ready_part_sent)
            {
                // A simple Query (or function call) before the client's Sync: PostgreSQL runs the
                // pending extended-query messages first, then it. The gateway decides per Sync, so it
                // ends the pending messages with a Sync of its own, whose ReadyForQuery the client
                // never sees, and decides them first; the Query stays in the buffer for the next turn.
                // Their answer is awaited first: after an error in them PostgreSQL skips the Query
                // too, up to the client's Sync (the gateway's Sync ended that skipping upstream).
                return Ok(Step::DecidedAtFlush(self.decide_pending()?));
            }
            if tag == b'B' && self.bind_follows_code(total) && !self.refresh_in_batch(total) {
                // A stale name bound after code earlier in its batch (an allowed INSERT whose trigger
                // prepares the name again) that can't be parsed again inside the batch: parsed again
                // ahead of the batch, it would be replaced by that code before the Bind. What precedes
                // the Bind is ended with a Sync of the gateway's own and sent first (as before a simple
                // Query), so the name is parsed again after it; the Bind stays in the buffer for the
                // next turn.
                return Ok(Step::DecidedAtFlush(self.decide_pending()?));
            }
            if tag == b'B' && self.bind_awaits_answers(total) {
                return Ok(Step::AwaitAnswers);
            }
            let frame = self.cbuf.split_to(total);
            match tag {
                b'Q' => {
                    if let Some(held) = self.on_query(frame) {
                        return Ok(Step::Hold(held));
                    }
                }
                b'P' => self.on_parse(&frame)?,
                b'B' => self.on_bind(&frame)?,
                b'E' => self.on_execute(&frame)?,
                b'C' | b'D' => {
                    if tag == b'C' {
                        let (kind, name) = kind_and_name(&frame)?;
                        let name = self.name_upstream(name)?;
                        // Protocol-level statements share the names SQL EXECUTE runs.
                        if kind == b'S' && !name.is_empty() {
                            self.sql_prepared.forget_all();
                        }
                        self.catalog.close(kind, name);
                    }
                    self.add_to_batch(&frame)?;
                }
                b'H' => {
                    self.add_to_batch(&frame)?;
                    // The batch holds the gateway's own messages: what the client sent so far is
                    // answered now, ended with a Sync of the gateway's own (nothing of it can go
                    // ahead alone, see `forward_ready_part`).
                    if !self.batch.hidden.is_empty() {
                        return Ok(Step::DecidedAtFlush(self.decide_pending()?));
                    }
                    // A client that waits for the results of a statement needing a decision after a
                    // Flush (psycopg's pipelines and executemany with RETURNING, pg-cursor's reads)
                    // would wait forever for a Sync it only sends once answered: the statement is
                    // decided now, ended with a Sync of the gateway's own. Inside a transaction block
                    // a cursor read's portal survives that Sync; outside one the Sync ends the
                    // implicit transaction and the portal with it, so an approved cursor read gets its
                    // first rows and a later Execute on it PostgreSQL's 34000 (README).
                    // A refusal too: the client waits for the Execute's answer just the same.
                    if self.batch.executes && self.batch.action() != Action::Allow {
                        // What may go ahead goes first: if it fails (a Parse of a missing table),
                        // PostgreSQL skips the rest, and the hold settles without a request.
                        if self.forward_ready_part() {
                            forward(&mut self.backend.masker, &mut self.out, &FLUSH);
                        }
                        return Ok(Step::DecidedAtFlush(self.decide_pending()?));
                    }
                    // Flush asks for results so far. What precedes the first Bind or Execute that
                    // needs a decision goes now (the whole batch, Flush included, when nothing needs
                    // one), so a client that prepares and waits before Sync is answered.
                    if self.forward_ready_part() && self.batch.action() != Action::Allow {
                        forward(&mut self.backend.masker, &mut self.out, &FLUSH);
                    }
                }
                b'S' => {
                    self.add_to_batch(&frame)?;
                    if let Some(held) = self.on_sync() {
                        return Ok(Step::Hold(held));
                    }
                }
                // COPY FROM STDIN data: the COPY statement itself was classified.
                b'd' if into_batch => self.add_to_batch(&frame)?,
                b'd' => self.out.extend_from_slice(&frame),
                b'c' | b'f' => {
                    self.copy_ends += 1;
                    if into_batch {
                        self.add_to_batch(&frame)?;
                    } else {
                        self.out.extend_from_slice(&frame);
                    }
                }
                b'X' => {
                    self.out.extend_from_slice(&frame);
                    return Ok(Step::Terminate);
                }
                b'F' => {
                    let refusal = Refusal {
                        sql: Arc::from("<fast-path function call>"),
                        binds: vec![],
                        decision: Action::Block,
                        request_id: None,
                        code: sqlstate::FEATURE_NOT_SUPPORTED,
                        message: "fast-path function calls are not allowed through the gateway; call the function in SQL".into(),
                        received: Instant::now(),
                    };
                    self.refuse(refusal);
                }
                // Refused above, before its body was awaited.
                other => return Err(unexpected_type(other)),
            }
        }
    }

    /// True when the Bind at the head of the client buffer (`total` bytes) names a statement whose
    /// latest Parse is in a batch still upstream, whose answer can come without the client.
    fn bind_awaits_answers(&self, total: usize) -> bool {
        if self.backend.in_flight.is_empty() || self.backend.in_copy_in() {
            return false;
        }
        self.head_bind_names(total)
            .is_some_and(|(_, statement)| self.catalog.awaits_settling(statement))
    }

    /// The portal and statement names (as upstream keys them) of the Bind at the head of the client
    /// buffer (`total` bytes).
    fn head_bind_names(&self, total: usize) -> Option<(&[u8], &[u8])> {
        let mut pos = 5;
        let frame = self.cbuf.get(..total)?;
        let portal = read_cstr(frame, &mut pos)?;
        let statement = read_cstr(frame, &mut pos)?;
        Some((
            super::extended::upstream_name(portal),
            super::extended::upstream_name(statement),
        ))
    }

    /// True when a portal other than `except` bound from statement `name` may still be open (closing
    /// the statement would close it). Portals end with their transaction: with nothing in flight and
    /// no transaction open, none survives, whatever the catalog still lists.
    fn open_portals_of(&self, name: &[u8], except: &[u8]) -> bool {
        let portals_may_live = !(self.backend.in_flight.is_empty() && self.backend.status == b'I');
        portals_may_live && self.catalog.has_portals_of(name, except)
    }

    /// True when the Bind at the head of the client buffer (`total` bytes) names a stale statement
    /// ([`Self::refresh_stale`]) that its batch has not used yet, after a Bind or Execute of code in
    /// the batch, or after a part sent ahead on Flush that may run code or is not answered yet.
    fn bind_follows_code(&self, total: usize) -> bool {
        if !(self.batch.code_pending || (self.ready_part_runs && !self.ready_part_answered()))
            || self.backend.in_copy_in()
        {
            return false;
        }
        let Some((_, name)) = self.head_bind_names(total) else {
            return false;
        };
        // Outside a transaction block the Sync would end the implicit transaction and the portals
        // the batch bound before the Bind, which the client may still execute: the Bind is refused
        // then (26000, see `refresh_stale`) rather than break them.
        let ends_portals = self.backend.status == b'I' && self.batch.named_portals;
        self.catalog.stale(name).is_some() && !self.batch.used(name) && !ends_portals
    }

    /// Parses the stale statement the Bind at the head of the client buffer names again inside the batch,
    /// just before that Bind: a Close and a Parse of the gateway's own, whose answers the client never
    /// sees ([`InFlight::hidden`]). So the code earlier in the batch has run when the name is parsed
    /// again, and the batch stays one (one implicit transaction outside a transaction block). Possible
    /// while nothing of the batch went ahead and no portal of the statement may be open (closing the
    /// statement would close it); false otherwise.
    fn refresh_in_batch(&mut self, total: usize) -> bool {
        if self.ready_part_sent {
            return false;
        }
        let Some((portal, name)) = self.head_bind_names(total) else {
            return false;
        };
        let (portal, name) = (portal.to_vec(), name.to_vec());
        let Some(prepared) = self.catalog.stale(&name) else {
            return false;
        };
        if self.open_portals_of(&name, &portal) {
            return false;
        }
        let Some(wire_text) =
            super::backend::statement_bytes(&self.backend.client_encoding, &prepared.sql)
        else {
            return false;
        };
        let (close_at, parse_at) = self.catalog.refresh_in_batch(&name);
        self.batch.hidden.push((b'3', close_at));
        self.batch.hidden.push((b'1', parse_at));
        self.batch.note_used(&name);
        // Straight into the batch: `add_to_batch` could send it ahead.
        if self.batch.started.is_none() {
            self.batch.started = Some(Instant::now());
        }
        put_reparse(
            &mut self.batch.bytes,
            &name,
            &wire_text,
            &prepared.param_types,
        );
        true
    }

    /// Forwards what has arrived of a CopyData message being streamed; true once all of it has gone.
    fn stream_copy_data(&mut self) -> bool {
        let n = self.copy_data_left.min(self.cbuf.len());
        self.out.extend_from_slice(&self.cbuf.split_to(n));
        self.copy_data_left -= n;
        self.copy_data_left == 0
    }

    /// Sends the part of the batch that may go ahead of its verdict ([`Batch::forwardable`]); true when
    /// there was one.
    fn forward_ready_part(&mut self) -> bool {
        // The answers to the gateway's own messages are told apart by their place in the batch's
        // answers, which an InFlight entry (made at Sync) holds.
        if self.batch.forwardable == 0 || !self.batch.hidden.is_empty() {
            return false;
        }
        let ready = self.batch.bytes.split_to(self.batch.forwardable);
        self.batch.forwardable = 0;
        forward(&mut self.backend.masker, &mut self.out, &ready);
        if !self.ready_part_sent {
            self.backend.ahead_answers = 0;
        }
        self.ready_part_answers = self
            .ready_part_answers
            .zip(answers_expected(&ready))
            .map(|(a, b)| a + b);
        // Upstream with no InFlight entry until the batch's Sync: `ready_part_sent` stands for it.
        self.ready_part_sent = true;
        self.ready_part_runs |= !only_flushes(&ready);
        true
    }

    fn add_to_batch(&mut self, frame: &[u8]) -> Result<(), WireError> {
        if self.batch.started.is_none() {
            self.batch.started = Some(Instant::now());
        }
        self.batch.bytes.extend_from_slice(frame);
        // Until an Execute needs a decision, everything so far may go ahead on Flush.
        if self.batch.action() == Action::Allow {
            self.batch.forwardable = self.batch.bytes.len();
        }
        if self.batch.bytes.len() < EARLY_BATCH {
            return Ok(());
        }
        // A long pipeline (executemany: thousands of Bind/Execute before one Sync) need not sit in
        // memory until its Sync: what may go ahead on Flush goes now, so PostgreSQL works (and fails
        // early) as the client sends. What waits for a decision is bounded like one message.
        self.forward_ready_part();
        if self.batch.bytes.len() > self.ctx.max_message_size {
            return Err(WireError::Protocol(format!(
                "an extended-query batch waiting for a decision grew past {} bytes; send Sync after the statement that needs approval",
                self.ctx.max_message_size
            )));
        }
        Ok(())
    }

    fn classify(&mut self, sql: &str) -> Arc<Verdict> {
        let verdict = self.ctx.gate.classify(
            &self.ctx.session.connection,
            &self.ctx.session.requester,
            sql,
            &mut self.verdicts,
        );
        if verdict.statements.iter().any(|f| f.sets_name_resolution) {
            // Kept whether or not it runs: a statement that never ran only makes approvals narrower.
            // A statement sent again (a pool's reset on every release) is kept once, at its latest place.
            self.ctx.name_context.retain(|c| c != sql);
            if self.ctx.name_context.len() >= MAX_NAME_CONTEXT {
                // What falls out is not forgotten: the mark that takes its place binds this session's
                // approvals to this session (the hash covers it), whose earlier changes they can't show.
                let mark = format!(
                    "… and earlier ones, not shown: an approval holds in session {} only",
                    self.ctx.session.id
                );
                if self.ctx.name_context.first() == Some(&mark) {
                    self.ctx.name_context.remove(1);
                } else {
                    self.ctx.name_context[0] = mark;
                }
            }
            self.ctx.name_context.push(sql.to_string());
        }
        let identity_before = self.identity_changed;
        self.identity_changed |= verdict.statements.iter().any(|f| {
            f.reasons
                .iter()
                .any(|r| r.ends_with(crate::policy::CHANGES_IDENTITY))
        });
        let verdict = if identity_before {
            identity_guard(verdict)
        } else {
            verdict
        };
        misread_guard(&self.backend, self.ready_part_runs, sql, verdict)
    }

    fn on_query(&mut self, frame: BytesMut) -> Option<Held> {
        let received = Instant::now();
        let mut pos = 5;
        let text = read_cstr(&frame, &mut pos).unwrap_or(&frame[5..]);
        let sql = match statement_text(&self.backend.client_encoding, text) {
            Ok(sql) => sql,
            Err(message) => {
                self.refuse(Refusal {
                    sql: Arc::from(String::from_utf8_lossy(text).as_ref()),
                    binds: vec![],
                    decision: Action::Block,
                    request_id: None,
                    code: "22021",
                    message,
                    received,
                });
                return None;
            }
        };
        let sql = &*sql;
        let mut verdict = self.classify(sql);
        if verdict.action == Action::Review {
            // `EXECUTE name(args)` of a name this session saw an allowed PREPARE create: judged as
            // the statement it runs together with its arguments (rules included), not held blind.
            if let Some(stand_in) = self.sql_prepared.execute_stand_in(&verdict) {
                let judged = self.classify(&stand_in);
                verdict = misread_guard(&self.backend, self.ready_part_runs, sql, judged);
            }
        }
        let prepares = may_prepare(&verdict);
        let effects = super::prepared::name_effects(&verdict);
        if prepares {
            self.catalog.saw_sql_prepare();
        }
        self.change_names(&effects);
        if prepares || effects.any() {
            self.name_generation += 1;
        }
        match verdict.action {
            Action::Allow => {
                let prepared = self.sql_prepared.pending(&verdict);
                self.forward_query(&frame, sql, Action::Allow, received, prepared);
                None
            }
            Action::Block => {
                let message = blocked_message(&verdict);
                self.refuse(Refusal {
                    sql: Arc::from(sql),
                    binds: vec![],
                    decision: Action::Block,
                    request_id: None,
                    code: sqlstate::INSUFFICIENT_PRIVILEGE,
                    message,
                    received,
                });
                None
            }
            Action::Review if self.refused_by_failed_transaction(verdict.statements.first()) => {
                // PostgreSQL refuses it (25P02) without running it: it goes up to be refused at once.
                self.forward_query(&frame, sql, Action::Review, received, None);
                None
            }
            Action::Review => Some(Held {
                swallow_ready: false,
                sql: Arc::from(sql),
                bytes: frame,
                binds: vec![],
                verdict,
                received,
                batch: None,
                copy: self.query_marks(),
                after_ready_part: false,
                portals: vec![],
                hidden: Vec::new(),
            }),
        }
    }

    /// Sends a simple Query upstream as received, awaiting its answer as `decision`'s.
    fn forward_query(
        &mut self,
        frame: &[u8],
        sql: &str,
        decision: Action,
        received: Instant,
        prepared: Option<Box<super::prepared::PendingOps>>,
    ) {
        forward(&mut self.backend.masker, &mut self.out, frame);
        self.backend.in_flight.push_back(InFlight {
            parsed: None,
            sql: Arc::from(sql),
            binds: vec![],
            decision,
            request_id: None,
            executed: None,
            rejection: false,
            received,
            forwarded: received,
            batch: None,
            copy: self.query_marks(),
            prepared,
            swallow_ready: false,
            internal: None,
            hidden: Vec::new(),
        });
    }

    /// A statement or portal name as PostgreSQL keys it ([`super::extended::upstream_name`]). A name
    /// PostgreSQL may not keep byte for byte (non-ASCII, converted to another server encoding) ends
    /// the session: two names the gateway tells apart could be one upstream.
    fn name_upstream<'a>(&self, name: &'a [u8]) -> Result<&'a [u8], WireError> {
        if !self.backend.keeps_name_bytes(name) {
            return Err(WireError::Protocol(format!(
                "statement and portal names must be ASCII when client_encoding ({}) is not the server's encoding ({}); name them in ASCII",
                self.backend.client_encoding, self.backend.server_encoding
            )));
        }
        Ok(super::extended::upstream_name(name))
    }

    fn on_parse(&mut self, frame: &[u8]) -> Result<(), WireError> {
        let mut pos = 5;
        let name = read_cstr(frame, &mut pos)
            .map(|n| self.name_upstream(n))
            .transpose()?;
        let text = name.and_then(|_| read_cstr(frame, &mut pos));
        let param_types = text.and_then(|_| parse_param_types(frame, pos));
        let (Some(name), Some(text), Some(param_types)) = (name, text, param_types) else {
            // PostgreSQL answers a Parse it can't read with ERROR 08P01 and skips to Sync, keeping the
            // session: it goes as sent, for that answer. Nothing it names may run here.
            if let Some(name) = name {
                let (key, verdict) = super::extended::malformed_statement();
                self.catalog.parse(name, &key, &[], |_| verdict.clone());
                self.batch.parsed.push(name.into());
            }
            self.sql_prepared.forget_all();
            return self.add_to_batch(frame);
        };
        let sql = match statement_text(&self.backend.client_encoding, text) {
            Ok(sql) => sql,
            Err(message) => {
                // Not a protocol violation: refused like the statement it can't be read as, and the
                // session goes on (as PostgreSQL answers 22021).
                let (key, verdict) = super::extended::unreadable_statement(text, message);
                self.catalog
                    .parse(name, &key, &param_types, |_| verdict.clone());
                self.sql_prepared.forget_all();
                self.batch.parsed.push(name.into());
                return self.add_to_batch(frame);
            }
        };
        let sql = &*sql;
        let gate = &self.ctx.gate;
        let session = &self.ctx.session;
        let memo = &mut self.verdicts;
        let backend = &self.backend;
        let sent_ahead = self.ready_part_runs;
        let mut prepares = false;
        let mut renames = false;
        self.batch.note_used(name);
        self.catalog.parse(name, sql, &param_types, |sql| {
            let verdict = gate.classify(&session.connection, &session.requester, sql, memo);
            let verdict = misread_guard(backend, sent_ahead, sql, verdict);
            prepares = may_prepare(&verdict);
            renames = changes_names(&verdict);
            verdict
        });
        if prepares {
            self.catalog.saw_sql_prepare();
        }
        // A named Parse takes a name SQL EXECUTE runs; a PREPARE or DEALLOCATE sent this way is not
        // followed to its command tag. Either way, what a name runs is no longer known here.
        if renames || !name.is_empty() {
            self.sql_prepared.forget_all();
            self.name_generation += 1;
        }
        self.batch.parsed.push(name.into());
        if self.backend.masker.is_some() {
            self.batch.parsed_sql.push(Arc::from(sql));
        }
        self.add_to_batch(frame)
    }

    /// Applies what statements going upstream may do to prepared statement names: protocol-level ones,
    /// and the SQL-level names whose `EXECUTE` is judged as the `PREPARE` that made them (code, a
    /// write's trigger too, may `DEALLOCATE` and `PREPARE` them as anything).
    fn change_names(&mut self, effects: &super::prepared::NameEffects) {
        if effects.drops_all {
            self.catalog.forget_named();
        } else if !effects.drops.is_empty() {
            let names: Vec<Box<[u8]>> = effects.drops.iter().map(|n| n.as_bytes().into()).collect();
            self.catalog.forget_statements(&names);
        }
        for name in &effects.prepares {
            self.catalog.mark_stale_name(name.as_bytes());
        }
        if effects.runs_code {
            self.catalog.mark_stale();
            self.sql_prepared.forget_all();
        }
    }

    /// Before a Bind of a stale statement ([`super::extended::Catalog::mark_stale`]): closes and
    /// parses it again upstream, in a round trip of the gateway's own ahead of the batch, so the name
    /// holds exactly the text the gateway judged whatever code did to it. Drivers cache prepared names
    /// and never parse them again (psycopg, node-postgres), so refusing the name would break them.
    /// The round trip first describes the statement the name holds, which makes PostgreSQL check it
    /// against the catalog as a Bind would: when that fails (its result type changed under a column's
    /// ALTER: `0A000 cached plan must not change result type`; a table it reads was dropped), the
    /// Close and Parse are skipped and the Bind meets that same error, as it would without the gateway.
    /// A driver that caches a statement's row description (asyncpg, pgJDBC) then prepares it again
    /// instead of decoding rows of another shape with it.
    /// Where that round trip can't go first (part of the batch went ahead, or may have run code
    /// already, or the statement has open portals that closing it would close), this Bind is refused
    /// as unknown (26000) and the name stays stale, to be parsed again before a later batch's Bind.
    /// False when the Bind is refused.
    fn refresh_stale(&mut self, name: &[u8], portal: &[u8]) -> bool {
        let Some(prepared) = self.catalog.stale(name) else {
            return true;
        };
        // Parsed or bound earlier in this batch (executemany: one Parse, many Bind/Execute): the
        // batch itself put the judged text there. (Code between two of its uses in one batch — a
        // write's trigger, a function — preparing the name again is not seen: the name is parsed
        // again before the next batch.)
        if self.batch.used(name) {
            return true;
        }
        // The text as the client sent it (LATIN1 byte for byte).
        let Some(wire_text) =
            super::backend::statement_bytes(&self.backend.client_encoding, &prepared.sql)
        else {
            return false;
        };
        if (self.ready_part_runs && !self.ready_part_answered())
            || self.batch.ran_code
            || self.batch.code_pending
            || self.backend.in_copy_in()
            || self.open_portals_of(name, portal)
        {
            return false;
        }
        let mut frames = BytesMut::new();
        put_frame(&mut frames, b'D', &[b"S", name, b"\0"]);
        put_reparse(&mut frames, name, &wire_text, &prepared.param_types);
        put_frame(&mut frames, b'S', &[]);
        // Not through the masker: its answers never reach it either (see `InFlight::internal`).
        self.out.extend_from_slice(&frames);
        let now = Instant::now();
        self.backend.in_flight.push_back(InFlight {
            sql: prepared.sql.clone(),
            parsed: None,
            binds: vec![],
            decision: Action::Allow,
            request_id: None,
            executed: None,
            rejection: false,
            received: now,
            forwarded: now,
            batch: None,
            copy: CopyMarks {
                at_start: self.copy_ends,
                at_sync: Some(self.copy_ends),
            },
            prepared: None,
            swallow_ready: false,
            internal: Some(name.into()),
            hidden: Vec::new(),
        });
        self.catalog.refreshed(name);
        true
    }

    /// True when the part of the batch sent ahead only prepared and described statements, and
    /// PostgreSQL has answered all of it without error: a round trip of the gateway's own, Sync
    /// included, can follow it without ending anything it started (asyncpg prepares its next
    /// statement, then binds a cached one in the same batch).
    fn ready_part_answered(&self) -> bool {
        self.ready_part_answers.is_some_and(|expected| {
            self.backend.in_flight.is_empty()
                && !self.backend.failed_before_sync
                && self.backend.ahead_answers >= expected
        })
    }

    fn on_bind(&mut self, frame: &[u8]) -> Result<(), WireError> {
        let mut pos = 5;
        let portal = read_cstr(frame, &mut pos).ok_or_else(|| malformed("Bind"))?;
        let statement = read_cstr(frame, &mut pos).ok_or_else(|| malformed("Bind"))?;
        let (portal, statement) = (self.name_upstream(portal)?, self.name_upstream(statement)?);
        // Judged again on what its text means now: a view created since its Parse, the database's
        // lists read again, a search_path set (PostgreSQL analyses the text again then too).
        if let Some(p) = self.catalog.settled(statement) {
            let fresh = self.classify(&p.sql);
            self.catalog.rejudge(statement, fresh);
        }
        if self.refresh_stale(statement, portal) {
            self.catalog.bind(portal, statement, &frame[5..]);
        } else {
            self.catalog.bind_refused(portal, statement, &frame[5..]);
        }
        self.batch.note_used(statement);
        self.batch.named_portals |= !portal.is_empty();
        if let Some(p) = self.catalog.portal(portal) {
            self.batch.bind(portal, p);
            // Planning may fold the statement's functions: code may run at this Bind.
            if !p.statement.verdict.code_free {
                self.batch.ran_code |=
                    super::prepared::name_effects(&p.statement.verdict).names_code;
                self.batch.code_pending = true;
                self.catalog.mark_stale();
                self.sql_prepared.forget_all();
                self.name_generation += 1;
            }
        }
        self.add_to_batch(frame)
    }

    fn on_execute(&mut self, frame: &[u8]) -> Result<(), WireError> {
        let mut pos = 5;
        let portal = read_cstr(frame, &mut pos).ok_or_else(|| malformed("Execute"))?;
        let portal = self.name_upstream(portal)?;
        self.batch.executes = true;
        let receiving = self.catalog.receiving();
        let others_ran = self.catalog.note_execute(portal);
        let effects = match self.catalog.portal(portal) {
            Some(p) => {
                self.batch.carries_portal |= p.bound_in != receiving || others_ran;
                // Fetching on from an approved execution runs nothing new.
                if !p.approved {
                    self.batch.execute(portal, p);
                }
                super::prepared::name_effects(&p.statement.verdict)
            }
            // Executing an unbound portal fails upstream; fail closed here too.
            None => {
                self.batch
                    .execute(portal, &super::extended::unknown_portal(portal));
                Default::default()
            }
        };
        // PostgreSQL changes the names when this Execute runs: those parsed after it are unaffected.
        self.batch.ran_code |= effects.names_code;
        if effects.any() {
            self.batch.code_pending = true;
            self.change_names(&effects);
            self.name_generation += 1;
        }
        self.batch.copy_ends_at_execute = Some(self.copy_ends);
        self.add_to_batch(frame)
    }

    /// A simple query's place among the client's COPY ends.
    fn query_marks(&self) -> CopyMarks {
        CopyMarks {
            at_start: self.copy_ends,
            at_sync: None,
        }
    }

    /// True when the session's transaction has failed (nothing else upstream that could change that)
    /// and a statement string starting with `first` cannot end it: PostgreSQL refuses every statement
    /// in a failed transaction but those ending it (`25P02`), so such a statement runs nothing and
    /// needs no approval.
    fn refused_by_failed_transaction(&self, first: Option<&crate::policy::StatementFacts>) -> bool {
        const ENDS_OR_NESTS: &[&str] = &[
            "COMMIT",
            "END",
            "ROLLBACK",
            "ABORT",
            "PREPARE",
            "BEGIN",
            "START",
            "SAVEPOINT",
            "RELEASE",
            "UNKNOWN",
        ];
        let Some(first) = first else {
            return false;
        };
        let verb = first.kind.split_whitespace().next().unwrap_or("UNKNOWN");
        self.backend.status == b'E'
            && self.backend.in_flight.is_empty()
            && !self.ready_part_sent
            && !ENDS_OR_NESTS.iter().any(|v| verb.eq_ignore_ascii_case(v))
    }

    /// Ends the pending extended-query messages with a Sync of the gateway's own, whose ReadyForQuery
    /// the client never sees, and decides them now ([`Relay::on_sync`]).
    fn decide_pending(&mut self) -> Result<Option<Held>, WireError> {
        self.add_to_batch(&SYNC)?;
        self.swallow_next = true;
        let held = self.on_sync();
        self.swallow_next = false;
        Ok(held)
    }

    fn on_sync(&mut self) -> Option<Held> {
        let batch = self.batch.take();
        let number = self.catalog.end_batch();
        let received = batch.started.unwrap_or_else(Instant::now);
        let copy = CopyMarks {
            at_start: batch.copy_ends_at_execute.unwrap_or(self.copy_ends),
            at_sync: Some(self.copy_ends),
        };
        // The part that went ahead already failed upstream: PostgreSQL skips every message up to this
        // Sync, so the part that needed a decision can't run. It goes as sent (and is skipped) rather
        // than wait for humans, as PostgreSQL would answer at once.
        let mut skipped = std::mem::take(&mut self.backend.failed_before_sync);
        let after_ready_part = std::mem::take(&mut self.ready_part_sent);
        self.ready_part_runs = false;
        self.ready_part_answers = Some(0);
        let action = batch.action();
        // In a failed transaction PostgreSQL refuses the batch at its first message unless that one
        // ends the transaction: a batch running none that could is refused there at once too.
        skipped |= action == Action::Review
            && !after_ready_part
            && !batch.executed.is_empty()
            && batch.executed.iter().all(|p| {
                self.refused_by_failed_transaction(p.statement.verdict.statements.first())
            });
        self.unit_skipped = skipped;
        if action == Action::Allow || skipped {
            forward(&mut self.backend.masker, &mut self.out, &batch.bytes);
            self.backend.in_flight.push_back(InFlight {
                parsed: batch.parsed_only(),
                sql: batch.recorded_sql(),
                binds: batch.binds(),
                decision: action,
                request_id: None,
                executed: None,
                rejection: false,
                received,
                forwarded: Instant::now(),
                batch: Some(number),
                copy,
                prepared: None,
                swallow_ready: self.swallow_next,
                internal: None,
                hidden: batch.hidden.clone(),
            });
            return None;
        }
        let text_len = batch.sql_len();
        let too_long = text_len > super::extended::REVIEWED_TEXT_LIMIT;
        if action == Action::Block || too_long {
            self.catalog.forget_statements(&batch.parsed);
            let (code, message) = if too_long {
                (
                    sqlstate::PROGRAM_LIMIT_EXCEEDED,
                    format!(
                        "this batch needs a decision, and its {} executions come to {text_len} bytes of statement text, more than the {} bytes a review may show; send fewer executions per Sync",
                        batch.executed.len(),
                        super::extended::REVIEWED_TEXT_LIMIT
                    ),
                )
            } else {
                refusal_text(batch.verdict.as_deref())
            };
            self.refuse(Refusal {
                sql: batch.recorded_sql(),
                binds: batch.binds(),
                decision: Action::Block,
                request_id: None,
                code,
                message,
                received,
            });
            return None;
        }
        let verdict = batch.verdict.clone()?;
        Some(Held {
            swallow_ready: self.swallow_next,
            sql: batch.sql(),
            binds: batch.binds(),
            bytes: batch.bytes,
            verdict,
            received,
            batch: Some(number),
            copy,
            after_ready_part,
            portals: batch.portal_names,
            hidden: batch.hidden,
        })
    }

    /// Sends the refusal as a failing statement through the upstream, so the client sees ErrorResponse
    /// then ReadyForQuery in order and an open transaction really becomes failed (`E`).
    fn refuse(&mut self, r: Refusal<'_>) {
        if self.backend.masker.is_some() {
            let mut bytes = BytesMut::new();
            put_refusal(&mut bytes, r.code, &r.message);
            forward(&mut self.backend.masker, &mut self.out, &bytes);
        } else {
            put_refusal(&mut self.out, r.code, &r.message);
        }
        self.backend.in_flight.push_back(InFlight {
            parsed: None,
            sql: r.sql,
            binds: r.binds,
            decision: r.decision,
            request_id: r.request_id,
            executed: None,
            rejection: true,
            received: r.received,
            forwarded: Instant::now(),
            // A refused batch never settles: its Parses may or may not have gone upstream.
            batch: None,
            // Its own Sync, not the client's.
            copy: CopyMarks {
                at_start: self.copy_ends,
                at_sync: None,
            },
            prepared: None,
            swallow_ready: self.swallow_next,
            internal: None,
            hidden: Vec::new(),
        });
    }

    async fn hold(&mut self, held: Held) -> Result<(), WireError> {
        // Whatever ends the hold (the approved statement, or a refusal in its place) answers the
        // gateway's own Sync when the held batch ends with one.
        self.swallow_next = held.swallow_ready;
        let result = self.hold_inner(held).await;
        self.swallow_next = false;
        result
    }

    /// Gives the upstream a moment to answer the part of a held batch that went ahead on Flush: when it
    /// failed, PostgreSQL skips the held part, so no one need be asked to approve it. True when it
    /// failed. (A later failure during the hold is caught in [`Relay::wait_for_decision`].)
    async fn settle_ready_part(&mut self) -> Result<bool, WireError> {
        let deadline = tokio::time::sleep(READY_PART_ANSWER);
        tokio::pin!(deadline);
        loop {
            if self.backend.failed_before_sync {
                return Ok(true);
            }
            reserve(&mut self.sbuf, self.backend.need);
            tokio::select! {
                _ = &mut deadline => return Ok(false),
                r = self.server_r.read_buf(&mut self.sbuf) => {
                    if r? == 0 {
                        return Err(WireError::Upstream("the upstream closed the connection".into()));
                    }
                    self.on_server_data().await?;
                    self.client_w.flush().await?;
                }
            }
        }
    }

    async fn hold_inner(&mut self, held: Held) -> Result<(), WireError> {
        if held.after_ready_part && self.settle_ready_part().await? {
            self.backend.failed_before_sync = false;
            let decision = held.verdict.action;
            self.forward_held(held, decision, None);
            return Ok(());
        }
        if self.rejected_by_parser(&held).await {
            // Nothing of it can run: PostgreSQL answers with its own syntax error, as without the
            // gateway, and no one is asked to approve it.
            self.forward_held(held, Action::Allow, None);
            return Ok(());
        }
        // Approvers read the parameters with the text, and what this session did that changes which
        // objects its names resolve to; the hash binds both, so the approval is for what runs, here.
        // A held `SET search_path` is in the context already (it was classified): it has not run.
        let mut earlier: Vec<String> = self
            .ctx
            .name_context
            .iter()
            .filter(|c| **c != *held.sql)
            .cloned()
            .collect();
        // `EXECUTE name` runs whatever this session holds under that name, which its text does not
        // show: its approval is bound to this session and to its names as they are now.
        if held
            .verdict
            .statements
            .iter()
            .any(|s| matches!(s.prepared.as_deref(), Some(PreparedUse::Execute { .. })))
        {
            earlier.push(format!(
                "EXECUTE runs the statement prepared under its name in session {} (prepared names as of change {}); an approval holds there only",
                self.ctx.session.id, self.name_generation
            ));
        }
        let (shown, hash) = with_name_context(
            shown_statement(&held.sql, &held.binds),
            statement_hash(&held.sql, &held.binds),
            &earlier,
        );
        let gate = self.ctx.gate.clone();
        let id = match gate
            .hold(&self.ctx.session, &shown, &hash, &held.verdict)
            .await
        {
            Ok(HoldTicket::Approved { id }) => {
                self.forward_approved(held, id);
                return Ok(());
            }
            Ok(HoldTicket::Pending {
                id,
                approvers,
                expires_at,
                quorum,
            }) => {
                let expires = expires_at
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_else(|_| expires_at.to_string());
                let message = format!(
                    "statement held for approval, request {id}; approvers: {}; quorum {quorum}; expires {expires}",
                    if approvers.is_empty() { "(none configured)".to_string() } else { approvers.join(", ") }
                );
                put_error(&mut self.inject, Severity::Notice, "00000", &message, None);
                id
            }
            Err(e) => {
                let code = match e {
                    GateError::Refused(_) => sqlstate::INSUFFICIENT_PRIVILEGE,
                    GateError::Unavailable(_) => sqlstate::SYSTEM_ERROR,
                };
                self.refuse(refusal_of(&held, None, code, e.to_string()));
                return Ok(());
            }
        };
        self.flush_inject().await?;
        // The hold notice must reach a TLS client now, not after the decision.
        self.client_w.flush().await?;
        let signal = self.ctx.signal.clone();
        signal.set_holding(true);
        let since = signal.generation();
        let outcome = self.wait_for_decision(&*gate, id, &signal, since).await;
        signal.set_holding(false);
        let outcome = match outcome? {
            Some(o) => o,
            None => {
                gate.cancel_hold(id, &self.ctx.session).await;
                let message = "canceling statement due to user request".to_string();
                self.refuse(refusal_of(
                    &held,
                    Some(id),
                    sqlstate::QUERY_CANCELED,
                    message,
                ));
                return Ok(());
            }
        };
        let shutting_down = matches!(outcome, HoldOutcome::ShuttingDown);
        let message = match outcome {
            HoldOutcome::Approved => {
                self.forward_approved(held, id);
                return Ok(());
            }
            HoldOutcome::Denied { by, reason } => format!(
                "statement denied by {} (request {id}): {}",
                if by.is_empty() { "an approver".to_string() } else { by.join(", ") },
                reason.as_deref().unwrap_or("no reason given")
            ),
            HoldOutcome::Expired => {
                format!("approval request {id} expired without a decision; run the statement again to request approval anew")
            }
            HoldOutcome::Cancelled => format!("approval request {id} was cancelled; run the statement again to request approval anew"),
            HoldOutcome::RanElsewhere(result) => format!(
                "approval request {id} was approved and its single execution was claimed by another session running the same statement ({}); it did not run here and does not run again, so check its effect before sending it once more (which asks for a new approval)",
                countersign_bot::reveal::reveal_line(result.as_deref().unwrap_or("result not recorded")),
            ),
            HoldOutcome::ShuttingDown => format!("the gateway is shutting down; approval request {id} stays pending and survives the restart: once it is approved, re-run the identical statement (on any replica) to run it once"),
            HoldOutcome::TimedOut => format!(
                "approval request {id} is still pending after {:?} and stays pending; once it is approved, re-running the identical statement runs it once",
                self.ctx.hold_wait
            ),
            // Not "still pending after hold_wait": the wait ended early, and the store, not the
            // reviewers, is why. Nothing ran; the request is as the store last had it.
            HoldOutcome::Unavailable(why) => {
                self.refuse(refusal_of(
                    &held,
                    Some(id),
                    sqlstate::SYSTEM_ERROR,
                    format!(
                        "the gateway lost its state store while holding this statement ({why}); the statement was not run and approval request {id} is unchanged: re-run the identical statement once the store is reachable again (once approved, it runs once)"
                    ),
                ));
                return Ok(());
            }
        };
        // A shutdown is no refusal of the statement: clients and pools read 57P01 as "reconnect".
        let code = if shutting_down {
            sqlstate::ADMIN_SHUTDOWN
        } else {
            sqlstate::INSUFFICIENT_PRIVILEGE
        };
        self.refuse(refusal_of(&held, Some(id), code, message));
        Ok(())
    }

    /// True when the held batch was held for text the policy could not parse, and PostgreSQL's parser
    /// rejects its first message's text: PostgreSQL then runs none of it (a query string is parsed
    /// whole before any of it runs; in a batch that starts with the failing Parse, every later message
    /// is skipped up to Sync).
    async fn rejected_by_parser(&self, held: &Held) -> bool {
        if held.verdict.action != Action::Review
            || !held.verdict.statements.iter().any(|s| s.unparsed)
        {
            return false;
        }
        let Some(sql) = first_statement_text(&held.bytes) else {
            return false;
        };
        let rejected = self
            .ctx
            .gate
            .syntax_rejected(&self.ctx.session.connection, sql)
            .await;
        if rejected {
            tracing::info!(session = %self.ctx.session.id, "PostgreSQL cannot parse a statement the policy could not parse either; forwarded for its syntax error instead of held");
        }
        rejected
    }

    /// Waits for the engine while still relaying upstream traffic (e.g. earlier results, notifications).
    async fn wait_for_decision(
        &mut self,
        gate: &dyn WireGate,
        id: RequestId,
        signal: &CancelSignal,
        since: u64,
    ) -> Result<Option<HoldOutcome>, WireError> {
        let wait = gate.wait(id, self.ctx.hold_wait);
        tokio::pin!(wait);
        let cancelled = signal.cancelled_after(since);
        tokio::pin!(cancelled);
        let read_ahead = HOLD_READ_AHEAD.min(self.ctx.max_message_size);
        let mut still_there = tokio::time::interval(GONE_CHECK);
        still_there.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            reserve(&mut self.sbuf, self.backend.need);
            tokio::select! {
                outcome = &mut wait => return Ok(Some(outcome)),
                _ = &mut cancelled => return Ok(None),
                // With its read-ahead full the client is no longer read, so its leaving would go
                // unseen (and its request stay pending for humans): a notice written to a closed
                // socket fails by the second try.
                _ = still_there.tick(), if self.cbuf.len() > read_ahead => {
                    let mut notice = BytesMut::new();
                    put_error(
                        &mut notice,
                        Severity::Notice,
                        "00000",
                        &format!("statement still held for approval, request {id}"),
                        None,
                    );
                    let written = tokio::time::timeout(GONE_CHECK, async {
                        self.client_w.write_all(&notice).await?;
                        self.client_w.flush().await
                    })
                    .await;
                    if !matches!(written, Ok(Ok(()))) {
                        gate.cancel_hold(id, &self.ctx.session).await;
                        return Err(WireError::Io(std::io::Error::new(
                            std::io::ErrorKind::ConnectionAborted,
                            "the client went away (or stopped reading) during a hold; its approval request was cancelled",
                        )));
                    }
                }
                // A client that goes away during a hold must not leave its request pending for humans.
                // Anything else it sends is kept for after the hold, up to HOLD_READ_AHEAD: thousands of
                // held sessions each keeping `max_message_size` would be gigabytes.
                r = self.client_r.read_buf(&mut self.cbuf), if self.cbuf.len() <= read_ahead => {
                    if !matches!(r, Ok(n) if n > 0) {
                        gate.cancel_hold(id, &self.ctx.session).await;
                        return Err(WireError::Io(std::io::Error::new(
                            std::io::ErrorKind::ConnectionAborted,
                            "the client disconnected during a hold; its approval request was cancelled",
                        )));
                    }
                }
                r = self.server_r.read_buf(&mut self.sbuf) => {
                    if r? == 0 {
                        return Err(WireError::Upstream("the upstream closed the connection during a hold".into()));
                    }
                    self.on_server_data().await?;
                    // What went ahead of the held part failed: PostgreSQL will skip the held part,
                    // so there is nothing left to approve (the client has its error already).
                    if self.backend.failed_before_sync {
                        return Ok(None);
                    }
                }
            }
        }
    }

    fn forward_approved(&mut self, held: Held, id: RequestId) {
        // An approved statement may do anything, PREPARE or DEALLOCATE included (in a function too).
        self.sql_prepared.forget_all();
        self.name_generation += 1;
        self.change_names(&super::prepared::name_effects(&held.verdict));
        // Approved, it may run code its text does not show (a view's function, a trigger).
        self.catalog.mark_stale();
        self.catalog.approve_portals(&held.portals);
        self.forward_held(held, Action::Review, Some(id));
    }

    /// Sends a held batch upstream as received, recorded with `decision` and, when it runs as an
    /// approval, that request.
    fn forward_held(&mut self, held: Held, decision: Action, approved: Option<RequestId>) {
        forward(&mut self.backend.masker, &mut self.out, &held.bytes);
        self.backend.in_flight.push_back(InFlight {
            parsed: None,
            sql: held.sql,
            binds: held.binds,
            decision,
            request_id: approved,
            executed: approved,
            rejection: false,
            received: held.received,
            forwarded: Instant::now(),
            batch: held.batch,
            copy: held.copy,
            prepared: None,
            swallow_ready: self.swallow_next,
            internal: None,
            hidden: held.hidden,
        });
    }
}

/// `DISCARD ALL` includes `SET SESSION AUTHORIZATION DEFAULT`: after a statement that changed the
/// session's identity (an approved `SET ROLE` that took privileges away, say) it would undo that
/// change without the review `RESET ROLE` gets, so it is refused.
fn identity_guard(verdict: Arc<Verdict>) -> Arc<Verdict> {
    let discards = verdict.statements.iter().any(|f| {
        f.kind == "DISCARD"
            && matches!(
                f.prepared.as_deref(),
                Some(crate::policy::PreparedUse::Deallocate { name: None })
            )
    });
    if !discards || verdict.action == Action::Block {
        return verdict;
    }
    Arc::new(Verdict {
        action: Action::Block,
        reasons: vec!["DISCARD ALL resets the session identity, which a statement of this session changed (SET ROLE or SESSION AUTHORIZATION); RESET ROLE needs review, and so does undoing it this way: reconnect for a fresh session".to_string()],
        statements: verdict.statements.clone(),
        rule: "gateway".into(),
        review: None,
        code_free: false,
    })
}

/// True when `frames` are Flush messages only.
/// Appends a frontend message `tag` whose body is `parts` in order.
fn put_frame(out: &mut BytesMut, tag: u8, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    out.put_u8(tag);
    out.put_i32((len + 4) as i32);
    for p in parts {
        out.put_slice(p);
    }
}

/// Appends a Close of statement `name` and a Parse of `text` (as the client sent it) under that name
/// with `param_types`: the name parsed again with the text the gateway judged.
fn put_reparse(out: &mut BytesMut, name: &[u8], text: &[u8], param_types: &[u32]) {
    put_frame(out, b'C', &[b"S", name, b"\0"]);
    let mut types = Vec::with_capacity(2 + 4 * param_types.len());
    types.extend_from_slice(&(param_types.len() as i16).to_be_bytes());
    for t in param_types {
        types.extend_from_slice(&t.to_be_bytes());
    }
    put_frame(out, b'P', &[name, b"\0", text, b"\0", &types]);
}

/// The answers PostgreSQL sends `frames` when they hold only Parse, Describe, Close and Flush
/// messages: one ParseComplete, RowDescription or NoData, CloseComplete each (a statement's
/// ParameterDescription is not counted); None when they hold anything else.
fn answers_expected(mut frames: &[u8]) -> Option<u32> {
    let mut n = 0;
    while let Some((tag, total)) = frame_header(frames) {
        match tag {
            b'P' | b'D' | b'C' => n += 1,
            b'H' => {}
            _ => return None,
        }
        frames = frames.get(total..)?;
    }
    frames.is_empty().then_some(n)
}

fn only_flushes(mut frames: &[u8]) -> bool {
    while let Some((tag, total)) = super::codec::frame_header(frames) {
        if tag != b'H' || total > frames.len() {
            return false;
        }
        frames = &frames[total..];
    }
    frames.is_empty()
}

/// While PostgreSQL may read statement text differently from the policy (see
/// [`BackendTracker::misread`]), a statement whose reading could differ is refused: with a backslash
/// (`standard_conforming_strings` off makes it escape a quote) or a non-ASCII character (whose last byte
/// may be a backslash in the client encoding), the verdict could be about a statement PostgreSQL never
/// sees. ASCII text without a backslash reads the same either way. The same holds while a statement that
/// may change or undo those settings has not answered yet, or part of a batch went ahead unanswered (a
/// pipelined statement would be read after it).
fn misread_guard(
    backend: &BackendTracker,
    sent_ahead: bool,
    sql: &str,
    verdict: Arc<Verdict>,
) -> Arc<Verdict> {
    if verdict.action == Action::Block || super::backend::reads_the_same_anyhow(sql) {
        return verdict;
    }
    let why = match backend.misread.first() {
        Some((name, value)) => format!("this session has {name} = {value}"),
        // Until its answer (and ParameterStatus) arrives, what a statement upstream set is unknown.
        // (A refusal runs nothing of the statement it stands for.)
        None if backend
            .in_flight
            .iter()
            .any(|f| !f.rejection && may_change_text_reading(&f.sql)) =>
        {
            "a statement that may change how PostgreSQL reads statement text has not finished"
                .to_string()
        }
        None if sent_ahead => {
            "statements sent ahead of this one have not finished and may change how PostgreSQL reads statement text"
                .to_string()
        }
        None => return verdict,
    };
    Arc::new(Verdict {
        action: Action::Block,
        reasons: vec![format!(
            "{why}, so PostgreSQL may read the backslashes or non-ASCII characters in this statement differently from the policy; RESET standard_conforming_strings and client_encoding first, or send the statement in ASCII without backslashes"
        )],
        statements: verdict.statements.clone(),
        rule: "gateway".into(),
        review: None,
        code_free: false,
    })
}

/// Resolves once `signal` turns true, or its sender is gone (the process exiting); never without one.
async fn turns_true(signal: Option<tokio::sync::watch::Receiver<bool>>) {
    match signal {
        Some(mut rx) => {
            let _ = rx.wait_for(|s| *s).await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// True when `sql` may change `standard_conforming_strings` or `client_encoding`.
fn may_change_text_reading(sql: &str) -> bool {
    let sql = sql.to_ascii_lowercase();
    // Also what undoes a setting: RESET, DISCARD, and ending or rolling back the transaction that
    // set it (SET LOCAL, or SET in a transaction rolled back).
    [
        "conforming",
        "encoding",
        "names",
        "set_config",
        "reset",
        "discard",
        "rollback",
        "abort",
        "commit",
        "end",
        "prepare",
    ]
    .iter()
    .any(|w| sql.contains(w))
}

/// True when a statement may create a prepared statement upstream by name (PREPARE, or text the
/// policy could not parse), which the gateway's catalog then does not know.
fn may_prepare(verdict: &Verdict) -> bool {
    verdict.statements.iter().any(|s| {
        s.unparsed
            || s.kind == "PREPARE"
            || matches!(s.prepared.as_deref(), Some(PreparedUse::Prepare { .. }))
    })
}

/// Queues client frames for the upstream; on a masked connection the masker sees (and annotates) them.
fn forward(masker: &mut Option<Box<WireMasker>>, out: &mut BytesMut, frames: &[u8]) {
    match masker {
        Some(m) => m.forward_client(frames, out),
        None => out.extend_from_slice(frames),
    }
}

fn refusal_of<'a>(
    held: &Held,
    request_id: Option<RequestId>,
    code: &'a str,
    message: String,
) -> Refusal<'a> {
    Refusal {
        sql: held.sql.clone(),
        binds: held.binds.clone(),
        decision: Action::Review,
        request_id,
        code,
        message,
        received: held.received,
    }
}

fn reserve(buf: &mut BytesMut, need: usize) {
    let want = need.saturating_sub(buf.len()).max(READ_CHUNK / 4);
    if buf.capacity() - buf.len() < want {
        buf.reserve(want.max(READ_CHUNK));
    }
}

/// The text of a held unit's first message when that is a simple query or a Parse: nothing in the
/// unit runs before it. (A Bind before it would: PostgreSQL plans at Bind, and planning evaluates
/// immutable functions; a parameter's domain CHECK runs there too.)
fn first_statement_text(frames: &[u8]) -> Option<&str> {
    let (tag, total) = frame_header(frames)?;
    let body = frames.get(5..total)?;
    let mut pos = 0;
    match tag {
        b'Q' => {}
        b'P' => {
            read_cstr(body, &mut pos)?;
        }
        _ => return None,
    }
    std::str::from_utf8(read_cstr(body, &mut pos)?).ok()
}

fn unexpected_type(tag: u8) -> WireError {
    WireError::Protocol(format!(
        "unexpected message type 0x{tag:02x}; use protocol 3.0 messages"
    ))
}

fn malformed(what: &str) -> WireError {
    WireError::Protocol(format!("malformed {what} message"))
}

fn kind_and_name(frame: &[u8]) -> Result<(u8, &[u8]), WireError> {
    let kind = *frame.get(5).ok_or_else(|| malformed("Close"))?;
    let mut pos = 6;
    let name = read_cstr(frame, &mut pos).ok_or_else(|| malformed("Close"))?;
    Ok((kind, name))
}

/// The SQLSTATE and message a blocked batch is refused with: PostgreSQL's own for text the gateway
/// can't read (22021), statement names it never saw parsed (26000) and portals it never saw bound
/// (34000), else 42501 naming the rule.
fn refusal_text(verdict: Option<&Verdict>) -> (&'static str, String) {
    let own = verdict.and_then(|v| match v.rule.as_str() {
        super::extended::UNREADABLE_RULE => Some(("22021", v.reasons.join("; "))),
        super::extended::UNKNOWN_STATEMENT_RULE | super::extended::UNCERTAIN_STATEMENT_RULE => {
            Some(("26000", v.reasons.join("; ")))
        }
        super::extended::UNKNOWN_PORTAL_RULE => Some(("34000", v.reasons.join("; "))),
        super::extended::MALFORMED_RULE => Some(("08P01", v.reasons.join("; "))),
        _ => None,
    });
    own.unwrap_or_else(|| {
        (
            sqlstate::INSUFFICIENT_PRIVILEGE,
            verdict.map(blocked_message).unwrap_or_default(),
        )
    })
}

/// The message a blocked statement gets: the deciding rule and its reasons.
pub fn blocked_message(verdict: &Verdict) -> String {
    let reasons = if verdict.reasons.is_empty() {
        "no reason recorded".to_string()
    } else {
        verdict.reasons.join("; ")
    };
    format!(
        "statement blocked by policy rule \"{}\": {reasons}",
        verdict.rule
    )
}

/// Encodes Parse/Bind/Execute/Sync of a DO block that raises `code` with `message`.
fn put_refusal(out: &mut BytesMut, code: &str, message: &str) {
    const TAG: &str = "$countersign$";
    let literal = message
        .replace('\0', "")
        .replace(TAG, "$ countersign$")
        .replace('\\', "\\\\")
        .replace('\'', "''");
    let code: String = code
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .take(5)
        .collect();
    let sql = format!(
        "DO {TAG}BEGIN RAISE EXCEPTION USING ERRCODE = '{code}', MESSAGE = E'{literal}'; END{TAG}"
    );
    let start = out.len();
    out.put_u8(b'P');
    out.put_i32(0);
    out.put_u8(0);
    out.put_slice(sql.as_bytes());
    out.put_u8(0);
    out.put_i16(0);
    super::codec::patch_len(out, start);
    // Bind: unnamed portal and statement, no formats, no parameters, no result formats.
    out.put_slice(&[b'B', 0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0]);
    out.put_slice(&[b'E', 0, 0, 0, 9, 0, 0, 0, 0, 0]);
    out.put_slice(&[b'S', 0, 0, 0, 4]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discard_all_is_refused_once_the_session_changed_its_identity() {
        let verdict = |sql: &str| {
            let statements: Arc<[crate::policy::StatementFacts]> =
                crate::policy::classify(sql).into();
            Arc::new(Verdict {
                action: Action::Allow,
                reasons: vec![],
                statements,
                rule: "default".into(),
                review: None,
                code_free: true,
            })
        };
        let set_role = verdict("SET ROLE reporting");
        assert!(set_role.statements[0]
            .reasons
            .iter()
            .any(|r| r.ends_with(crate::policy::CHANGES_IDENTITY)));
        assert_eq!(identity_guard(verdict("DISCARD ALL")).action, Action::Block);
        assert_eq!(
            identity_guard(verdict("SELECT 1; DISCARD ALL")).action,
            Action::Block
        );
        assert_eq!(
            identity_guard(verdict("DISCARD PLANS")).action,
            Action::Allow
        );
        assert_eq!(identity_guard(verdict("SELECT 1")).action, Action::Allow);
    }

    #[test]
    fn refusal_escapes_quotes_and_backslashes_and_dollar_tag() {
        let mut out = BytesMut::new();
        put_refusal(&mut out, "42501", "it's \\ $countersign$ bad");
        let (tag, total) = frame_header(&out).unwrap();
        assert_eq!(tag, b'P');
        let text = String::from_utf8_lossy(&out[6..total]).to_string();
        assert!(text.contains("E'it''s \\\\ $ countersign$ bad'"), "{text}");
        assert_eq!(&out[out.len() - 5..], &[b'S', 0, 0, 0, 4]);
    }

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut f = vec![tag];
        f.extend_from_slice(&(4 + body.len() as u32).to_be_bytes());
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn a_bind_of_a_name_with_uncertain_text_is_refused_as_unknown() {
        let mut cat = crate::pg::extended::Catalog::default();
        cat.mark_stale();
        cat.parse(b"s1", "SELECT 1", &[], |_| {
            crate::pg::extended::tests::verdict_of(Action::Allow)
        });
        cat.end_batch();
        cat.bind(b"", b"s1", b"\0s1\0\0\0\0\0\0\0");
        let verdict = cat.portal(b"").unwrap().statement.verdict.clone();
        assert_eq!(refusal_text(Some(&verdict)).0, "26000");
    }

    #[test]
    fn a_part_sent_ahead_expects_one_answer_per_parse_describe_and_close() {
        let mut frames = frame(b'P', b"s\0SELECT 1\0\0\0");
        frames.extend(frame(b'D', b"Ss\0"));
        frames.extend(frame(b'H', b""));
        frames.extend(frame(b'C', b"Sold\0"));
        assert_eq!(answers_expected(&frames), Some(3));
        assert_eq!(answers_expected(&frame(b'H', b"")), Some(0));
        frames.extend(frame(b'B', b"\0s\0\0\0\0\0\0\0"));
        assert_eq!(
            answers_expected(&frames),
            None,
            "a Bind's answers are not counted"
        );
        assert_eq!(
            answers_expected(&frame(b'P', b"s\0")[..4]),
            None,
            "a cut frame"
        );
    }

    #[test]
    fn only_a_unit_starting_with_its_query_or_parse_is_shown_to_the_syntax_probe() {
        let query = frame(b'Q', b"SELEC 1\0");
        assert_eq!(first_statement_text(&query), Some("SELEC 1"));
        let parse = [frame(b'P', b"s1\0SELEC 1\0\0\0"), frame(b'S', b"")].concat();
        assert_eq!(first_statement_text(&parse), Some("SELEC 1"));
        // A Bind plans (and may run immutable functions or a domain CHECK) before the Parse fails.
        let bind_first = [
            frame(b'B', b"\0held\0\0\0\0\0\0\0"),
            frame(b'P', b"\0SELEC 1\0\0\0"),
            frame(b'S', b""),
        ]
        .concat();
        assert_eq!(first_statement_text(&bind_first), None);
        let describe_first = [frame(b'D', b"Sx\0"), frame(b'P', b"\0SELEC 1\0\0\0")].concat();
        assert_eq!(first_statement_text(&describe_first), None);
        assert_eq!(first_statement_text(&[b'Q', 0, 0]), None);
        assert_eq!(first_statement_text(&frame(b'Q', b"no end")), None);
    }
}
