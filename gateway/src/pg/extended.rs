//! Extended-query bookkeeping: prepared statements and portals (so a named statement is classified
//! once, at Parse) and the batch of messages buffered until Sync.

use super::codec::{read_cstr, read_i16, read_i32, read_u16};
use crate::policy::{Action, Verdict};
use bytes::{Bytes, BytesMut};
use countersign_bot::{BoundParam, StatementHash};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// PostgreSQL's `NAMEDATALEN`: statement and portal names are keyed by their first
/// `NAMEDATALEN - 1` bytes upstream.
const NAMEDATALEN: usize = 64;

/// A statement or portal name as PostgreSQL keys it: its first 63 bytes (two names sharing those are
/// one name upstream, so they are one here too).
pub fn upstream_name(name: &[u8]) -> &[u8] {
    &name[..name.len().min(NAMEDATALEN - 1)]
}

/// A statement prepared through the gateway, with its verdict.
#[derive(Debug)]
pub struct Prepared {
    /// Statement text.
    pub sql: Arc<str>,
    /// Verdict from Parse time.
    pub verdict: Arc<Verdict>,
    /// Parameter type OIDs the Parse declared (0 = let PostgreSQL infer): they decide how a parameter's
    /// text is read (`'2024-01-02 12:00'` as a date is midnight), so an approval binds them too.
    pub param_types: Arc<[u32]>,
}

/// What an executed statement was bound with, for the approval hash: the raw Bind body and the
/// parameter types its Parse declared.
#[derive(Debug, Clone)]
pub struct Binding {
    /// Raw Bind body (parameters are read from it only when hashed).
    pub bind: Bytes,
    /// The statement's declared parameter types.
    pub param_types: Arc<[u32]>,
}

/// A bound portal: its statement and the raw Bind body (parameters are read from it only when needed).
#[derive(Debug, Clone)]
pub struct Portal {
    /// The statement the portal runs.
    pub statement: Arc<Prepared>,
    /// Raw Bind body.
    pub bind: Bytes,
    /// An approved batch ran it: a later Execute only fetches more rows of that execution (a cursor
    /// read in a transaction block), which PostgreSQL finished or suspended already.
    pub approved: bool,
    /// The batch whose Bind made it.
    pub bound_in: u64,
    /// Executes of any portal the session had sent when it was bound.
    pub executes_at_bind: u64,
    /// Executes of this portal since its Bind.
    pub own_executes: u64,
}

/// Prepared statements and portals of one session, keyed by name (the empty name is the unnamed one).
///
/// PostgreSQL skips every message after an error until Sync, and refuses to Parse a name that exists
/// (`42P05`), so a Parse or Close the gateway sees may not have happened upstream. Within a batch that
/// does not matter (an Execute that runs had everything before it succeed), but a later batch could
/// Bind a name the gateway believes holds a new text while PostgreSQL still holds the old one. So a
/// Parse that may replace another text is unsettled until its batch is answered: it happened when
/// PostgreSQL sent its ParseComplete (whatever failed later in the batch), and which text the name holds
/// is unknown when it did not. A later batch that binds it before then, or after it failed, is refused.
#[derive(Default)]
pub struct Catalog {
    statements: HashMap<Box<[u8]>, Named>,
    portals: HashMap<Box<[u8]>, Portal>,
    /// Names closed (or forgotten) in a batch not known to have succeeded: PostgreSQL may still hold
    /// them, with a text the gateway no longer knows.
    /// Each with the batch and the Close's place among that batch's Closes ([`BatchAnswer::closes`]).
    closing: HashMap<Box<[u8]>, (u64, u32)>,
    /// Set once a PREPARE statement went upstream: PostgreSQL may then hold names the gateway never saw.
    sql_prepare: bool,
    /// Number of the batch being received (batches end at Sync).
    batch: u64,
    /// Per batch, the names its Parses left unsettled or its Closes put in `closing`, so settling a
    /// batch visits only those (not every statement, once per Sync).
    touched: HashMap<u64, Vec<Box<[u8]>>>,
    /// Executes the session has sent, of any portal.
    executes: u64,
    /// Parses and Closes of the batch being received, so far: each one's place, which its answer
    /// (ParseComplete, CloseComplete) confirms.
    parses_sent: u32,
    closes_sent: u32,
    /// Bumped whenever names are marked stale.
    stale_epoch: u64,
    /// Per batch, the names parsed again inside it ([`Catalog::refresh_in_batch`]): the name, the
    /// place of that Parse, and the stale epoch then.
    refreshing: HashMap<u64, Vec<InBatchRefresh>>,
}

/// A name the gateway parses again inside a batch ([`Catalog::refresh_in_batch`]).
struct InBatchRefresh {
    name: Box<[u8]>,
    /// The place of that Parse among the batch's Parses.
    parse_at: u32,
    /// [`Catalog`]'s stale epoch when it was added.
    epoch: u64,
}

/// How the upstream answered a forwarded batch: whether without error, and how many ParseComplete and
/// CloseComplete messages it sent (PostgreSQL answers each Parse and Close it carries out, in order,
/// and skips the rest of a batch after an error, so the batch's first that many Parses and Closes
/// happened).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchAnswer {
    /// Answered without an ErrorResponse.
    pub succeeded: bool,
    /// ParseComplete messages received.
    pub parses: u32,
    /// CloseComplete messages received.
    pub closes: u32,
}

impl BatchAnswer {
    /// An answer whose ParseComplete and CloseComplete messages can't be told apart from another
    /// batch's: only its success counts.
    pub fn uncounted(succeeded: bool) -> Self {
        Self {
            succeeded,
            parses: 0,
            closes: 0,
        }
    }
}

struct Named {
    prepared: Arc<Prepared>,
    /// The batch whose Parse gave this name a text that may replace another one upstream, until that
    /// batch ends without error.
    unsettled: Option<u64>,
    /// The replacing Parse's place among its batch's Parses.
    parse_at: u32,
    /// The replacing Parse did not happen (its batch failed before its ParseComplete): which text
    /// PostgreSQL holds is unknown.
    ambiguous: bool,
    /// Code ran upstream since its Parse (a DO block, a function, an approved statement) that may have
    /// deallocated it and prepared its name again: the relay parses it again before a Bind uses it.
    stale: bool,
}

impl Catalog {
    /// Records a Parse with its declared parameter types; `classify` runs only when the name is new or
    /// its text changed.
    pub fn parse(
        &mut self,
        name: &[u8],
        sql: &str,
        param_types: &[u32],
        classify: impl FnOnce(&str) -> Arc<Verdict>,
    ) {
        let parse_at = self.parses_sent;
        self.parses_sent += 1;
        let same = |p: &Prepared| &*p.sql == sql && &*p.param_types == param_types;
        // PostgreSQL never replaces a named statement by Parse (`42P05`): while the name certainly
        // holds the text parsed before (settled, and no code ran since), it keeps holding it.
        if !name.is_empty()
            && self
                .statements
                .get(name)
                .is_some_and(|n| !n.stale && !n.ambiguous && n.unsettled.is_none())
        {
            return;
        }
        let replaces = match self.statements.get(name) {
            Some(existing) if same(&existing.prepared) && existing.unsettled.is_none() => {
                if !existing.ambiguous {
                    return;
                }
                true
            }
            Some(_) => true,
            None => self.closing.contains_key(name) || (self.sql_prepare && !name.is_empty()),
        };
        let prepared = match self.statements.get(name) {
            Some(existing) if same(&existing.prepared) => existing.prepared.clone(),
            // Same text, other parameter types: the verdict of the text stands (judged again when
            // either declares a database-defined type, which the verdict may carry).
            Some(existing)
                if &*existing.prepared.sql == sql
                    && !declares_user_type(&existing.prepared.param_types)
                    && !declares_user_type(param_types) =>
            {
                Arc::new(Prepared {
                    sql: existing.prepared.sql.clone(),
                    verdict: existing.prepared.verdict.clone(),
                    param_types: param_types.into(),
                })
            }
            _ => Arc::new(Prepared {
                sql: Arc::from(sql),
                verdict: with_declared_types(classify(sql), param_types),
                param_types: param_types.into(),
            }),
        };
        self.closing.remove(name);
        if replaces {
            self.touch(name);
        }
        self.statements.insert(
            name.into(),
            Named {
                prepared,
                unsettled: replaces.then_some(self.batch),
                parse_at,
                ambiguous: false,
                stale: false,
            },
        );
    }

    /// Marks every named statement stale: code that ran upstream may have deallocated it and given its
    /// name another text (PL/pgSQL's `EXECUTE 'DEALLOCATE …'; EXECUTE 'PREPARE …'`).
    pub fn mark_stale(&mut self) {
        self.stale_epoch += 1;
        for (name, n) in self.statements.iter_mut() {
            if !name.is_empty() {
                n.stale = true;
            }
        }
        // Code may also have prepared names the client never parsed: a Parse of one fails (42P05)
        // and must not be taken for the text upstream.
        self.sql_prepare = true;
    }

    /// Marks one name stale (a SQL `PREPARE` of it, or a failed parse again left it absent upstream).
    pub fn mark_stale_name(&mut self, name: &[u8]) {
        self.stale_epoch += 1;
        if let Some(n) = self.statements.get_mut(name) {
            if !name.is_empty() {
                n.stale = true;
            }
        }
    }

    /// Records a Bind of `statement` that is refused for now (its name is stale and cannot be parsed
    /// again ahead of this batch): it stays stale, to be parsed again before a later batch's Bind.
    pub fn bind_refused(&mut self, portal: &[u8], statement: &[u8], body: &[u8]) {
        let entry = Portal {
            statement: Arc::new(unknown_statement(statement)),
            bind: Bytes::copy_from_slice(body),
            approved: false,
            bound_in: self.batch,
            executes_at_bind: self.executes,
            own_executes: 0,
        };
        self.portals.insert(portal.into(), entry);
    }

    /// The statement to parse again before a Bind of `name`, when it is stale and its text is
    /// otherwise certain.
    pub fn stale(&self, name: &[u8]) -> Option<Arc<Prepared>> {
        self.settled_named(name)
            .filter(|n| n.stale)
            .map(|n| n.prepared.clone())
    }

    /// The statement named `name` whose text upstream is certain, to judge it again at a Bind.
    pub fn settled(&self, name: &[u8]) -> Option<Arc<Prepared>> {
        self.settled_named(name).map(|n| n.prepared.clone())
    }

    fn settled_named(&self, name: &[u8]) -> Option<&Named> {
        self.statements
            .get(name)
            .filter(|n| !n.ambiguous && n.unsettled.is_none())
    }

    /// Gives `name`'s statement the verdict `fresh` reached on its text now (the database's lists,
    /// the session's search_path or its rules' inputs changed since its Parse), unless it is that
    /// verdict already. True when it changed.
    pub fn rejudge(&mut self, name: &[u8], fresh: Arc<Verdict>) -> bool {
        let Some(n) = self.statements.get_mut(name) else {
            return false;
        };
        let verdict = with_declared_types(fresh, &n.prepared.param_types);
        if Arc::ptr_eq(&verdict, &n.prepared.verdict) {
            return false;
        }
        n.prepared = Arc::new(Prepared {
            sql: n.prepared.sql.clone(),
            verdict,
            param_types: n.prepared.param_types.clone(),
        });
        true
    }

    /// Counts a Close and a Parse of `name` the gateway adds to the batch being received (parsing it
    /// again before a Bind) and returns their places among the batch's Closes and Parses. The name stays
    /// stale until the batch's answer shows the Parse happened with no code marked since
    /// ([`Catalog::settle`]): a batch refused or failing before it leaves it to be parsed again later.
    pub fn refresh_in_batch(&mut self, name: &[u8]) -> (u32, u32) {
        let places = (self.closes_sent, self.parses_sent);
        self.closes_sent += 1;
        self.parses_sent += 1;
        self.refreshing
            .entry(self.batch)
            .or_default()
            .push(InBatchRefresh {
                name: name.into(),
                parse_at: places.1,
                epoch: self.stale_epoch,
            });
        places
    }

    /// `name` was closed and parsed again upstream with the text the gateway holds for it.
    pub fn refreshed(&mut self, name: &[u8]) {
        if let Some(n) = self.statements.get_mut(name) {
            n.stale = false;
        }
    }

    /// True when a portal other than `except` (which a Bind is replacing) was bound from `name`'s
    /// statement and may be open (closing the statement closes it).
    pub fn has_portals_of(&self, name: &[u8], except: &[u8]) -> bool {
        self.statements.get(name).is_some_and(|n| {
            self.portals
                .iter()
                .any(|(p, portal)| **p != *except && Arc::ptr_eq(&portal.statement, &n.prepared))
        })
    }

    /// True when a Bind of `statement` now would find its text uncertain only because the batch that
    /// last parsed it has not been answered yet (once it is, the text is known either way).
    pub fn awaits_settling(&self, statement: &[u8]) -> bool {
        matches!(self.statements.get(statement),
            Some(n) if !n.ambiguous && n.unsettled.is_some_and(|b| b != self.batch))
    }

    /// Records a Bind; an unknown statement, or one whose text upstream is uncertain, gets a blocking
    /// verdict (fail closed).
    pub fn bind(&mut self, portal: &[u8], statement: &[u8], body: &[u8]) {
        let prepared = match self.statements.get(statement) {
            Some(n) if n.ambiguous || n.unsettled.is_some_and(|b| b != self.batch) => {
                Arc::new(uncertain_statement(statement, &n.prepared.sql))
            }
            Some(n) => n.prepared.clone(),
            None => Arc::new(unknown_statement(statement)),
        };
        let entry = Portal {
            statement: prepared,
            bind: Bytes::copy_from_slice(body),
            approved: false,
            bound_in: self.batch,
            executes_at_bind: self.executes,
            own_executes: 0,
        };
        match self.portals.get_mut(portal) {
            Some(slot) => *slot = entry,
            None => {
                self.portals.insert(portal.into(), entry);
            }
        }
    }

    /// Marks `names` as run by an approved batch (see [`Portal::approved`]); a later Bind replaces it.
    pub fn approve_portals(&mut self, names: &[Box<[u8]>]) {
        for name in names {
            if let Some(p) = self.portals.get_mut(&**name) {
                p.approved = true;
            }
        }
    }

    /// The portal an Execute names, if bound.
    pub fn portal(&self, name: &[u8]) -> Option<&Portal> {
        self.portals.get(name)
    }

    /// Records a Close of a statement (`S`) or portal (`P`).
    pub fn close(&mut self, kind: u8, name: &[u8]) {
        match kind {
            b'S' => {
                self.statements.remove(name);
                self.closing
                    .insert(name.into(), (self.batch, self.closes_sent));
                self.touch(name);
            }
            _ => {
                self.portals.remove(name);
            }
        }
        self.closes_sent += 1;
    }

    /// Drops statements the upstream may never have seen (their Parse was in a batch that was
    /// refused); PostgreSQL may still hold an older text under those names.
    pub fn forget_statements(&mut self, names: &[Box<[u8]>]) {
        for n in names {
            self.statements.remove(n);
            // Never settled: no batch of that number reaches the upstream.
            self.closing.insert(n.clone(), (u64::MAX, 0));
        }
    }

    /// Notes that a PREPARE statement may have reached the upstream.
    pub fn saw_sql_prepare(&mut self) {
        self.sql_prepare = true;
    }

    /// Lists `name` for [`Catalog::settle`] of the batch being received.
    fn touch(&mut self, name: &[u8]) {
        self.touched
            .entry(self.batch)
            .or_default()
            .push(name.into());
    }

    /// Notes an Execute of portal `name`; true when another portal was executed since its Bind, which
    /// may have closed it (SQL `CLOSE`) and opened a cursor of that name (`DECLARE`, a function's `OPEN`).
    pub fn note_execute(&mut self, name: &[u8]) -> bool {
        let before = self.executes;
        self.executes += 1;
        match self.portals.get_mut(name) {
            Some(p) => {
                let others = before - p.executes_at_bind - p.own_executes;
                p.own_executes += 1;
                others > 0
            }
            None => false,
        }
    }

    /// The number of the batch being received.
    pub fn receiving(&self) -> u64 {
        self.batch
    }

    /// Forgets every named statement: a SQL `DEALLOCATE` (or `DISCARD ALL`) went upstream, which drops
    /// protocol-level statements too, after which a SQL `PREPARE` may give a name another text. A
    /// Bind of one is refused as unknown (26000, drivers prepare again) until the client parses it.
    pub fn forget_named(&mut self) {
        let names: Vec<Box<[u8]>> = self
            .statements
            .keys()
            .filter(|n| !n.is_empty())
            .cloned()
            .collect();
        self.forget_statements(&names);
    }

    /// Ends the batch being received (at Sync) and returns its number, for [`Catalog::settle`].
    pub fn end_batch(&mut self) -> u64 {
        let ended = self.batch;
        self.batch += 1;
        self.parses_sent = 0;
        self.closes_sent = 0;
        ended
    }

    /// Records how a forwarded batch was answered upstream: its Parses and Closes that PostgreSQL
    /// confirmed happened (all of them when it succeeded); which text a name holds after one that did
    /// not is unknown.
    pub fn settle(&mut self, batch: u64, answer: BatchAnswer) {
        for r in self.refreshing.remove(&batch).unwrap_or_default() {
            if (answer.succeeded || r.parse_at < answer.parses) && r.epoch == self.stale_epoch {
                self.refreshed(&r.name);
            }
        }
        if self.refreshing.keys().any(|b| *b < batch) {
            self.refreshing.retain(|b, _| *b > batch);
        }
        for name in self.touched.remove(&batch).unwrap_or_default() {
            if let Some(named) = self.statements.get_mut(&name) {
                if named.unsettled == Some(batch) {
                    named.unsettled = None;
                    named.ambiguous = !answer.succeeded && named.parse_at >= answer.parses;
                }
            }
            if let Some(&(b, at)) = self.closing.get(&name) {
                if b == batch && (answer.succeeded || at < answer.closes) {
                    self.closing.remove(&name);
                }
            }
        }
        // Batches are answered in order: an earlier one still listed never reached the upstream (it
        // was refused), so nothing will settle it.
        if self.touched.keys().any(|b| *b < batch) {
            self.touched.retain(|b, _| *b > batch);
        }
    }
}

fn uncertain_statement(name: &[u8], sql: &str) -> Prepared {
    let name = String::from_utf8_lossy(name);
    Prepared {
        sql: Arc::from(sql),
        param_types: Arc::from([]),
        verdict: Arc::new(Verdict {
            action: Action::Block,
            reasons: vec![format!(
                "prepared statement \"{name}\" was prepared again in a batch that has not completed without error, so the upstream may still hold an earlier text under that name; Close it, Parse it again and Sync before binding it"
            )],
            statements: Arc::from([]),
            rule: UNCERTAIN_STATEMENT_RULE.into(),
            review: None,
            code_free: false,
        }),
    }
}

/// The rule named by the verdict of a Bind of a name whose text upstream is uncertain: refused with
/// SQLSTATE 26000, as PostgreSQL answers a name it may not hold, so drivers that heal a lost prepared
/// statement (pgJDBC) prepare it again.
pub const UNCERTAIN_STATEMENT_RULE: &str = "uncertain_statement";

/// The rule named by the verdict of a statement whose text the gateway could not read in the session's
/// client encoding: it is refused with SQLSTATE 22021, as PostgreSQL refuses bytes it can't read.
pub const UNREADABLE_RULE: &str = "client_encoding";

/// The rule named by the verdict of a Bind of a statement name this session never parsed: refused with
/// SQLSTATE 26000, as PostgreSQL answers for a name it does not hold, so drivers re-prepare.
pub const UNKNOWN_STATEMENT_RULE: &str = "unknown_statement";

/// The catalog key and verdict of a Parse whose text can't be read in the client encoding: never run
/// (the gateway can't judge it), refused with `message` when bound or executed. The key starts with a
/// NUL, which no readable statement text holds, so it never matches a statement that was read.
pub fn unreadable_statement(text: &[u8], message: String) -> (String, Arc<Verdict>) {
    let key = format!("\0unreadable statement text 0x{}", hex::encode(text));
    (key, refusal(UNREADABLE_RULE, message))
}

/// The rule named by the verdict of a statement name whose Parse message could not be read: refused
/// with SQLSTATE 08P01, as PostgreSQL answers such a message.
pub const MALFORMED_RULE: &str = "malformed_message";

/// The catalog key and verdict of a name whose Parse message was malformed (PostgreSQL refused it, and
/// holds no new text under the name): never run. The key starts with a NUL, as
/// [`unreadable_statement`]'s does.
pub fn malformed_statement() -> (String, Arc<Verdict>) {
    (
        "\0malformed Parse message".to_string(),
        refusal(
            MALFORMED_RULE,
            "its Parse message was malformed (PostgreSQL refused it); send a well-formed Parse of it and Sync".into(),
        ),
    )
}

/// A block under one of the gateway's own protocol rules, refused with PostgreSQL's SQLSTATE for it.
fn refusal(rule: &str, reason: String) -> Arc<Verdict> {
    Arc::new(Verdict {
        action: Action::Block,
        reasons: vec![reason],
        statements: Arc::from([]),
        rule: rule.into(),
        review: None,
        code_free: false,
    })
}

/// The rule named by the verdict of an Execute of a portal this session never bound: refused with
/// SQLSTATE 34000, as PostgreSQL answers.
pub const UNKNOWN_PORTAL_RULE: &str = "unknown_portal";

/// What an Execute of portal `name`, which this session never bound, is judged as: refused (34000).
pub fn unknown_portal(name: &[u8]) -> Portal {
    let name = String::from_utf8_lossy(name);
    Portal {
        statement: Arc::new(Prepared {
            sql: Arc::from(format!("<unknown portal \"{name}\">")),
            param_types: Arc::from([]),
            verdict: refusal(
                UNKNOWN_PORTAL_RULE,
                format!(
                    "portal \"{name}\" does not exist (the gateway saw no Bind of it on this session)"
                ),
            ),
        }),
        bind: Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 0]),
        approved: false,
        bound_in: u64::MAX,
        executes_at_bind: 0,
        own_executes: 0,
    }
}

fn unknown_statement(name: &[u8]) -> Prepared {
    let name = String::from_utf8_lossy(name);
    Prepared {
        sql: Arc::from(format!("<unknown prepared statement \"{name}\">")),
        param_types: Arc::from([]),
        verdict: refusal(
            UNKNOWN_STATEMENT_RULE,
            format!(
                "prepared statement \"{name}\" does not exist (the gateway saw no Parse of it on this session); prepare it with the protocol Parse message"
            ),
        ),
    }
}

/// Longest statement text recorded for an allowed batch ([`Batch::recorded_sql`]).
pub const RECORDED_TEXT_LIMIT: usize = 1 << 20;

/// Longest statement text a batch needing a decision may have ([`Batch::sql_len`]): approvers read
/// it, and the store keeps it. A longer one (say, thousands of executions of a long statement
/// under one Sync) is refused with SQLSTATE 54000 rather than built.
pub const REVIEWED_TEXT_LIMIT: usize = 16 << 20;

/// Messages received since the last Sync, and what executing them requires.
#[derive(Default)]
pub struct Batch {
    /// Raw frames, forwarded as received once the batch is allowed.
    pub bytes: BytesMut,
    /// Verdict of the strictest executed statement (Parse alone runs nothing).
    pub verdict: Option<Arc<Verdict>>,
    /// Executed statements with their Bind bodies.
    pub executed: Vec<Portal>,
    /// Statement names parsed in this batch.
    pub parsed: Vec<Box<[u8]>>,
    /// Their texts, in order.
    pub parsed_sql: Vec<Arc<str>>,
    /// When the batch's first message arrived.
    pub started: Option<Instant>,
    /// Leading bytes of `bytes` before the first Bind or Execute that needs a decision: Parse,
    /// Describe and the Bind of an allowed statement run nothing that needs one, so they may go
    /// upstream on Flush even while the rest of the batch waits.
    pub forwardable: usize,
    /// Names of the portals the batch binds or executes (for [`Catalog::approve_portals`]).
    pub portal_names: Vec<Box<[u8]>>,
    /// COPY ends the client had sent at the batch's last Execute ([`super::backend::CopyMarks`]).
    pub copy_ends_at_execute: Option<u64>,
    /// Portals a Bind of a statement needing a decision added to `executed` that no Execute has
    /// named yet (so their Execute is not counted twice).
    pub bound_gated: Vec<Box<[u8]>>,
    /// The batch holds an Execute.
    pub executes: bool,
    /// A Bind or Execute of the batch runs code its text names (a `DO` block, a `CALL`, a function not
    /// vetted read-only, text the policy could not read), which may prepare names again: a stale name
    /// bound after it can't be parsed again ahead of the batch.
    pub ran_code: bool,
    /// A Bind or Execute in the batch may run code (anything not code-free: a write and its triggers,
    /// a function) that may prepare names again: a stale name bound after it is parsed again only
    /// once what precedes it has run (see `Relay::bind_follows_code`).
    pub code_pending: bool,
    /// The batch binds a named portal (a Sync of the gateway's own ends it outside a transaction).
    pub named_portals: bool,
    /// Answers to the gateway's own messages in the batch, by tag and place (see
    /// `backend::InFlight::hidden`).
    pub hidden: Vec<(u8, u32)>,
    /// Statement names the batch parsed or bound so far: parsing one of them again ahead of the
    /// batch would go before the batch's own Parse, or before the first execution it vouches for.
    used: Vec<Box<[u8]>>,
    /// An Execute names a portal bound before this batch, or one bound before another portal's
    /// Execute: PostgreSQL dropped it at that transaction's end, or a SQL `CLOSE` did, and a SQL cursor
    /// of that name (`DECLARE`, a function's `OPEN`) may run another query now, so the rows are not
    /// known to be the bound statement's.
    pub carries_portal: bool,
}

impl Batch {
    /// Notes that the batch parsed or binds the named statement `name` (the unnamed one aside).
    pub fn note_used(&mut self, name: &[u8]) {
        if !name.is_empty() && !self.used(name) {
            self.used.push(name.into());
        }
    }

    /// True when the batch parsed or bound the statement `name` already.
    pub fn used(&self, name: &[u8]) -> bool {
        self.used.iter().any(|u| **u == *name)
    }

    /// Notes an Execute of `portal`, named `name`.
    pub fn execute(&mut self, name: &[u8], portal: &Portal) {
        self.note_portal_name(name);
        if let Some(i) = self.bound_gated.iter().position(|n| **n == *name) {
            // Its Bind counted it already.
            self.bound_gated.remove(i);
            return;
        }
        self.note(portal);
        self.executed.push(portal.clone());
    }

    /// Notes a Bind of `portal`, named `name`: PostgreSQL plans the statement at Bind, and planning
    /// evaluates immutable functions over constants, which may call anything. A Bind of a statement that
    /// needs a decision is therefore judged as its execution; one that is allowed needs nothing.
    pub fn bind(&mut self, name: &[u8], portal: &Portal) {
        if portal.statement.verdict.action == Action::Allow {
            return;
        }
        self.note_portal_name(name);
        self.note(portal);
        self.executed.push(portal.clone());
        self.bound_gated.retain(|n| **n != *name);
        self.bound_gated.push(name.into());
    }

    fn note_portal_name(&mut self, name: &[u8]) {
        if !self.portal_names.iter().any(|n| **n == *name) {
            self.portal_names.push(name.into());
        }
    }

    fn note(&mut self, portal: &Portal) {
        let verdict = &portal.statement.verdict;
        if self.verdict.is_none() || verdict.action > self.action() {
            self.verdict = Some(verdict.clone());
        }
    }

    /// Strictest action over the executed statements; a batch that executes nothing is allowed.
    pub fn action(&self) -> Action {
        self.verdict.as_ref().map_or(Action::Allow, |v| v.action)
    }

    /// Bytes of [`Batch::sql`], without building it.
    pub fn sql_len(&self) -> usize {
        let texts: usize = self.executed.iter().map(|p| p.statement.sql.len()).sum();
        texts + 2 * self.executed.len().saturating_sub(1)
    }

    /// The batch's statement text for its record: [`Batch::sql`] when it is at most
    /// [`RECORDED_TEXT_LIMIT`] bytes, else its executions up to that size and a count of the rest.
    /// The exact text is only built for a batch that needs a decision; an allowed batch executing a
    /// long statement many times would otherwise cost memory many times what the client sent. The
    /// marks of what was left out are not SQL, so masking, which reads this text to learn what the
    /// result's columns are computed from, finds it unreadable and redacts every computed column.
    ///
    /// A batch that [carries a portal](Batch::carries_portal) gets a mark saying so, which is not SQL
    /// either: which query made its rows is not known.
    pub fn recorded_sql(&self) -> Arc<str> {
        let text = self.bounded_sql();
        if !self.carries_portal {
            return text;
        }
        Arc::from(format!(
            "{text}\n… and rows of a portal bound in an earlier batch"
        ))
    }

    fn bounded_sql(&self) -> Arc<str> {
        if self.sql_len() <= RECORDED_TEXT_LIMIT {
            return self.sql();
        }
        let mut out = String::new();
        let mut shown = 0;
        for p in &self.executed {
            let text = &*p.statement.sql;
            if shown > 0 && out.len() + text.len() + 2 > RECORDED_TEXT_LIMIT {
                break;
            }
            if shown > 0 {
                out.push_str(";\n");
            }
            // One text longer than the limit is cut at a character boundary.
            let mut end = text.len().min(RECORDED_TEXT_LIMIT);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            out.push_str(&text[..end]);
            shown += 1;
            if end < text.len() {
                out.push_str(&format!(" … {} more bytes not recorded", text.len() - end));
                break;
            }
        }
        let rest = self.executed.len() - shown;
        if rest > 0 {
            out.push_str(&format!(";\n… {rest} more executions not recorded"));
        }
        Arc::from(out)
    }

    /// The batch's statement text: executed statements joined by `;\n`.
    pub fn sql(&self) -> Arc<str> {
        match self.executed.as_slice() {
            [] => Arc::from(""),
            [one] => one.statement.sql.clone(),
            many => Arc::from(
                many.iter()
                    .map(|p| &*p.statement.sql)
                    .collect::<Vec<_>>()
                    .join(";\n"),
            ),
        }
    }

    /// The texts the batch parsed, when it executes nothing (for what error messages may quote).
    pub fn parsed_only(&self) -> Option<Arc<str>> {
        (self.executed.is_empty() && !self.parsed_sql.is_empty())
            .then(|| Arc::from(self.parsed_sql.join(";\n")))
    }

    /// Bindings of the executed statements, in order.
    pub fn binds(&self) -> Vec<Binding> {
        self.executed
            .iter()
            .map(|p| Binding {
                bind: p.bind.clone(),
                param_types: p.statement.param_types.clone(),
            })
            .collect()
    }

    /// Takes the batch, leaving an empty one.
    pub fn take(&mut self) -> Batch {
        Batch {
            // `split` keeps the spare capacity here for the next batch.
            bytes: self.bytes.split(),
            verdict: self.verdict.take(),
            executed: std::mem::take(&mut self.executed),
            parsed: std::mem::take(&mut self.parsed),
            parsed_sql: std::mem::take(&mut self.parsed_sql),
            started: self.started.take(),
            forwardable: std::mem::take(&mut self.forwardable),
            copy_ends_at_execute: self.copy_ends_at_execute.take(),
            bound_gated: std::mem::take(&mut self.bound_gated),
            executes: std::mem::take(&mut self.executes),
            ran_code: std::mem::take(&mut self.ran_code),
            code_pending: std::mem::take(&mut self.code_pending),
            named_portals: std::mem::take(&mut self.named_portals),
            hidden: std::mem::take(&mut self.hidden),
            used: std::mem::take(&mut self.used),
            portal_names: std::mem::take(&mut self.portal_names),
            carries_portal: std::mem::take(&mut self.carries_portal),
        }
    }
}

/// Parameter values of a Bind body, each in the form (text or binary) its format code gives, or None
/// when the body is malformed (PostgreSQL refuses such a Bind, so nothing runs).
pub fn bind_params(body: &[u8]) -> Option<Vec<BoundParam<'_>>> {
    let mut pos = 0;
    read_cstr(body, &mut pos)?;
    read_cstr(body, &mut pos)?;
    let format_count = usize::from(read_u16(body, &mut pos)?);
    let mut formats = Vec::with_capacity(format_count);
    for _ in 0..format_count {
        formats.push(read_i16(body, &mut pos)?);
    }
    let count = usize::from(read_u16(body, &mut pos)?);
    // No format codes: all text; one: it applies to every parameter; else one per parameter.
    if format_count > 1 && format_count != count {
        return None;
    }
    let mut params = Vec::with_capacity(count);
    for i in 0..count {
        let format = match formats.as_slice() {
            [] => 0,
            [one] => *one,
            many => many[i],
        };
        let len = read_i32(body, &mut pos)?;
        if len < 0 {
            params.push(BoundParam::Null);
            continue;
        }
        let end = pos.checked_add(len as usize)?;
        let value = body.get(pos..end)?;
        pos = end;
        params.push(match format {
            0 => BoundParam::Text(value),
            1 => BoundParam::Binary(value),
            _ => return None,
        });
    }
    Some(params)
}

/// The hash an approval is bound to: statement text plus all Bind parameters of the batch, with the
/// form each is sent in (the same bytes in text and in binary form are different values), and the
/// parameter types the statements declared, when any did.
pub fn statement_hash(sql: &str, binds: &[Binding]) -> StatementHash {
    if binds.is_empty() {
        return StatementHash::of_text(sql);
    }
    let mut params: Vec<BoundParam<'_>> = Vec::new();
    for b in binds {
        match bind_params(&b.bind) {
            Some(p) => params.extend(p),
            // A malformed Bind still must hash to something unique to its bytes.
            None => params.push(BoundParam::Text(&b.bind)),
        }
    }
    let hash = StatementHash::of_bound(sql, &params);
    if binds.iter().all(|b| b.param_types.iter().all(|&t| t == 0)) {
        // Nothing declared: PostgreSQL infers every type from the text, which the hash covers.
        return hash;
    }
    let mut declared = Vec::new();
    for b in binds {
        declared.extend_from_slice(&(b.param_types.len() as u32).to_be_bytes());
        for t in b.param_types.iter() {
            declared.extend_from_slice(&t.to_be_bytes());
        }
    }
    hash.with_context(&declared)
}

/// What approvers read for a held batch: its statement text and, when it was bound with parameters,
/// every value each Execute runs with, one per line after the text (as SQL comments), so what they
/// approve is what runs. Text values are SQL literals (`E'…'` escapes for control characters, so a
/// value can't add lines of its own); binary ones are decoded for common types, else shown as hex.
pub fn shown_statement(sql: &str, binds: &[Binding]) -> String {
    let params: Vec<Option<Vec<BoundParam<'_>>>> =
        binds.iter().map(|b| bind_params(&b.bind)).collect();
    if params.iter().all(|p| p.as_ref().is_some_and(Vec::is_empty)) {
        return sql.to_string();
    }
    let mut out = String::with_capacity(sql.len() + 64);
    // Only what PostgreSQL takes for white space is trimmed: a trailing U+3000 is part of a name there.
    out.push_str(sql.trim_end_matches(is_sql_space));
    out.push_str(
        "\n-- parameters, sent apart from the text above; the statement runs with these values:",
    );
    for (n, (b, params)) in binds.iter().zip(&params).enumerate() {
        let prefix = if binds.len() > 1 {
            format!("execution {}: ", n + 1)
        } else {
            String::new()
        };
        let Some(params) = params else {
            out.push_str(&format!(
                "\n-- {prefix}a malformed Bind message of {} bytes: 0x{}",
                b.bind.len(),
                hex::encode(&b.bind)
            ));
            continue;
        };
        for (i, p) in params.iter().enumerate() {
            let declared = b.param_types.get(i).copied().unwrap_or(0);
            out.push_str(&format!(
                "\n-- {prefix}${} = {}",
                i + 1,
                shown_param(p, declared)
            ));
        }
    }
    out
}

/// White space to PostgreSQL's scanner (`[ \t\n\r\f\v]`); any other character, Unicode spaces
/// included, can be part of a name.
pub fn is_sql_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0C' | '\x0B')
}

/// One parameter as approvers read it.
fn shown_param(p: &BoundParam<'_>, declared: u32) -> String {
    match p {
        BoundParam::Null => "NULL".to_string(),
        BoundParam::Text(v) => match std::str::from_utf8(v) {
            Ok(text) => sql_literal(text),
            Err(_) => format!("text that is not UTF-8, 0x{}", hex::encode(v)),
        },
        BoundParam::Binary(v) => shown_binary(v, declared),
    }
}

/// A string as a SQL literal that reads on one line: `'…'`, or `E'…'` escaping backslashes and
/// control characters when it has any.
fn sql_literal(text: &str) -> String {
    if !text.chars().any(|c| c.is_control() || c == '\\') {
        return format!("'{}'", text.replace('\'', "''"));
    }
    let mut out = String::from("E'");
    for c in text.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A binary-format parameter, decoded for the declared types whose binary form is plain, else hex.
fn shown_binary(v: &[u8], declared: u32) -> String {
    let int = |n: usize| -> Option<i64> {
        (v.len() == n).then(|| {
            let mut b = [0u8; 8];
            b[8 - n..].copy_from_slice(v);
            // Sign-extend from the value's width.
            i64::from_be_bytes(b) << (64 - 8 * n) >> (64 - 8 * n)
        })
    };
    let decoded = match declared {
        16 if v.len() == 1 => Some((v[0] != 0).to_string()),
        21 => int(2).map(|n| n.to_string()),
        23 | 26 => int(4).map(|n| n.to_string()),
        20 => int(8).map(|n| n.to_string()),
        700 if v.len() == 4 => Some(f32::from_be_bytes([v[0], v[1], v[2], v[3]]).to_string()),
        701 if v.len() == 8 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(v);
            Some(f64::from_be_bytes(b).to_string())
        }
        25 | 1043 | 19 | 1042 => std::str::from_utf8(v).ok().map(sql_literal),
        2950 if v.len() == 16 => uuid::Uuid::from_slice(v).ok().map(|u| format!("'{u}'")),
        _ => None,
    };
    if let Some(d) = decoded {
        return format!("{d} (binary, type {declared})");
    }
    if declared != 0 {
        return format!(
            "0x{} (binary, {} bytes, type {declared})",
            hex::encode(v),
            v.len()
        );
    }
    // Undeclared: PostgreSQL took the type from the statement's text (drivers such as tokio-postgres
    // declare none and send binary). The bytes are shown with how the plain types would read them.
    let mut readings = Vec::new();
    if let Some(n) = [2, 4, 8].into_iter().find_map(&int) {
        readings.push(format!("as an integer {n}"));
    }
    if let Ok(text) = std::str::from_utf8(v) {
        if !text.is_empty()
            && text
                .chars()
                .all(|c| !c.is_control() || matches!(c, '\n' | '\t' | '\r'))
        {
            readings.push(format!("as text {}", sql_literal(text)));
        }
    }
    let readings = if readings.is_empty() {
        String::new()
    } else {
        format!("; {}", readings.join(", "))
    };
    format!(
        "0x{} (binary, {} bytes, type from the statement{readings})",
        hex::encode(v),
        v.len()
    )
}

/// PostgreSQL's first OID for objects a database defines (`FirstNormalObjectId`).
const FIRST_USER_OID: u32 = 16384;

fn declares_user_type(param_types: &[u32]) -> bool {
    param_types.iter().any(|oid| *oid >= FIRST_USER_OID)
}

/// A Parse that declares a parameter of a database-defined type makes PostgreSQL run that type's input
/// function and domain CHECKs on the bound value, code the statement's text never names: held under the
/// built-in policy (a configured rule that decided stands; a block stays a block).
fn with_declared_types(verdict: Arc<Verdict>, param_types: &[u32]) -> Arc<Verdict> {
    if !declares_user_type(param_types)
        || verdict.action == Action::Block
        || verdict.rule != "default"
    {
        return verdict;
    }
    let declared: Vec<String> = param_types
        .iter()
        .enumerate()
        .filter(|(_, oid)| **oid >= FIRST_USER_OID)
        .map(|(i, oid)| format!("${} (type OID {oid})", i + 1))
        .collect();
    let mut judged = (*verdict).clone();
    judged.action = Action::Review;
    judged.reasons.insert(
        0,
        format!(
            "declares parameter {} as a database-defined type, whose input function or domain CHECK runs on the bound value and is not on the read-only list; send the parameter untyped (OID 0) or as a built-in type",
            declared.join(", ")
        ),
    );
    Arc::new(judged)
}

/// The parameter type OIDs of a Parse body after its query text (at `pos`); None when malformed.
pub fn parse_param_types(body: &[u8], mut pos: usize) -> Option<Vec<u32>> {
    let count = usize::from(read_u16(body, &mut pos)?);
    let mut types = Vec::with_capacity(count);
    for _ in 0..count {
        types.push(read_i32(body, &mut pos)? as u32);
    }
    Some(types)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use bytes::BufMut;

    /// A Bind of a statement that declared no parameter types.
    fn untyped(bind: Bytes) -> Binding {
        Binding {
            bind,
            param_types: Arc::from([]),
        }
    }

    /// A Bind body with text parameters (one format code, 0).
    fn bind_body(params: &[Option<&[u8]>]) -> Bytes {
        bind_body_in(&[0], params)
    }

    /// A Bind body with these parameter format codes.
    fn bind_body_in(formats: &[i16], params: &[Option<&[u8]>]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_slice(b"\0s1\0");
        b.put_i16(formats.len() as i16);
        for f in formats {
            b.put_i16(*f);
        }
        b.put_i16(params.len() as i16);
        for p in params {
            match p {
                None => b.put_i32(-1),
                Some(v) => {
                    b.put_i32(v.len() as i32);
                    b.put_slice(v);
                }
            }
        }
        b.put_i16(0);
        b.freeze()
    }

    #[test]
    fn code_makes_named_statements_stale_until_parsed_again_and_never_the_unnamed_one() {
        let mut c = Catalog::default();
        c.parse(b"pm", "SELECT 1", &[23], |_| verdict_of(Action::Allow));
        c.parse(b"", "SELECT 2", &[], |_| verdict_of(Action::Allow));
        c.end_batch();
        c.settle(c.receiving() - 1, BatchAnswer::uncounted(true));
        assert!(c.stale(b"pm").is_none());
        c.mark_stale();
        let stale = c.stale(b"pm").expect("stale after code ran");
        assert_eq!(
            (&*stale.sql, &*stale.param_types),
            ("SELECT 1", &[23u32][..])
        );
        assert!(
            c.stale(b"").is_none(),
            "code cannot prepare the unnamed statement"
        );
        c.refreshed(b"pm");
        assert!(c.stale(b"pm").is_none());
        // A portal bound from it, other than the one a Bind replaces, may be closed by a Close.
        c.bind(b"cur", b"pm", &bind_body(&[]));
        assert!(c.has_portals_of(b"pm", b""));
        assert!(!c.has_portals_of(b"pm", b"cur"));
    }

    #[test]
    fn bind_parameters_are_part_of_the_statement_hash() {
        let a = statement_hash(
            "DELETE FROM t WHERE id = $1",
            &[untyped(bind_body(&[Some(b"1")]))],
        );
        let b = statement_hash(
            "DELETE FROM t WHERE id = $1",
            &[untyped(bind_body(&[Some(b"2")]))],
        );
        let c = statement_hash(
            "DELETE FROM t WHERE id = $1",
            &[untyped(bind_body(&[Some(b"1")]))],
        );
        assert_ne!(a, b);
        assert_eq!(a, c);
        assert_eq!(
            a,
            StatementHash::of_parts("DELETE FROM t WHERE id = $1", &[Some(b"1")])
        );
    }

    #[test]
    fn the_same_parameter_bytes_in_binary_form_are_another_statement() {
        // "12345678" is the int8 12345678 in text form and 3544952156018063160 in binary form: an
        // approval of the one must not run the other.
        let sql = "DELETE FROM t WHERE id = $1";
        let value: &[u8] = b"12345678";
        let text = statement_hash(sql, &[untyped(bind_body_in(&[0], &[Some(value)]))]);
        let binary = statement_hash(sql, &[untyped(bind_body_in(&[1], &[Some(value)]))]);
        assert_ne!(text, binary);
        // No format codes means text; one code applies to every parameter; else one code each.
        assert_eq!(
            text,
            statement_hash(sql, &[untyped(bind_body_in(&[], &[Some(value)]))])
        );
        let two = [Some(value), Some(value)];
        assert_eq!(
            statement_hash(sql, &[untyped(bind_body_in(&[1], &two))]),
            statement_hash(sql, &[untyped(bind_body_in(&[1, 1], &two))])
        );
        assert_ne!(
            statement_hash(sql, &[untyped(bind_body_in(&[0, 1], &two))]),
            statement_hash(sql, &[untyped(bind_body_in(&[1, 0], &two))])
        );
        // Format codes PostgreSQL refuses leave the Bind malformed, hashed by its bytes.
        assert!(bind_params(&bind_body_in(&[2], &[Some(value)])).is_none());
        assert!(bind_params(&bind_body_in(&[0, 0], &[Some(value)])).is_none());
    }

    #[test]
    fn the_parameter_types_a_parse_declares_are_part_of_the_statement_hash() {
        // '2024-01-02 12:00' read as a date (1082) is midnight, as a timestamptz (1184) noon: an
        // approval of the one must not run the other.
        let sql = "DELETE FROM t WHERE at < $1";
        let bind = bind_body(&[Some(b"2024-01-02 12:00")]);
        let typed = |types: &[u32]| Binding {
            bind: bind.clone(),
            param_types: Arc::from(types),
        };
        let as_date = statement_hash(sql, &[typed(&[1082])]);
        let as_timestamptz = statement_hash(sql, &[typed(&[1184])]);
        assert_ne!(as_date, as_timestamptz);
        // Declaring nothing (or 0, "infer") is the hash of text and parameters alone.
        let inferred = statement_hash(sql, &[untyped(bind.clone())]);
        assert_eq!(inferred, statement_hash(sql, &[typed(&[0])]));
        assert_ne!(inferred, as_date);
    }

    #[test]
    fn a_batch_executing_a_long_statement_many_times_records_a_bounded_text() {
        let mut cat = Catalog::default();
        let long = format!("SELECT 1 /* {} */", "x".repeat(100_000));
        cat.parse(b"", &long, &[], |_| verdict_of(Action::Allow));
        cat.bind(b"", b"", &bind_body(&[]));
        let portal = cat.portal(b"").unwrap().clone();
        let mut batch = Batch::default();
        for _ in 0..1000 {
            batch.execute(b"", &portal);
        }
        assert_eq!(batch.sql_len(), 1000 * long.len() + 2 * 999);
        let recorded = batch.recorded_sql();
        assert!(
            recorded.len() <= RECORDED_TEXT_LIMIT + 100,
            "{}",
            recorded.len()
        );
        assert!(recorded.starts_with(&long));
        assert!(
            recorded.ends_with("990 more executions not recorded"),
            "{}",
            &recorded[recorded.len() - 60..]
        );
        assert!(
            crate::masking::derived::statement_texts(&recorded).is_none(),
            "not SQL: masking fails closed"
        );
        // A short batch is recorded exactly.
        let mut short = Batch::default();
        short.execute(b"", &portal);
        short.execute(b"", &portal);
        assert_eq!(*short.recorded_sql(), *short.sql());
        assert_eq!(short.sql_len(), short.sql().len());
        // One text longer than the limit is cut at a character boundary.
        let wide = "é".repeat(RECORDED_TEXT_LIMIT);
        cat.parse(b"w", &wide, &[], |_| verdict_of(Action::Allow));
        cat.bind(b"w", b"w", &bind_body(&[]));
        let mut one = Batch::default();
        one.execute(b"w", &cat.portal(b"w").unwrap().clone());
        assert!(one.recorded_sql().contains("more bytes not recorded"));
    }

    #[test]
    fn settling_a_batch_settles_only_what_it_parsed_or_closed() {
        let mut cat = Catalog::default();
        cat.parse(b"a", "SELECT 1", &[], |_| verdict_of(Action::Allow));
        let first = cat.end_batch();
        cat.settle(first, BatchAnswer::uncounted(true));
        // Re-parsed in batch 2 after code ran (unsettled), closed in batch 3; batch 3 fails.
        cat.mark_stale();
        cat.parse(b"a", "SELECT 2", &[], |_| verdict_of(Action::Allow));
        let second = cat.end_batch();
        cat.close(b'S', b"b");
        let third = cat.end_batch();
        assert!(cat.awaits_settling(b"a"));
        cat.settle(second, BatchAnswer::uncounted(true));
        assert!(!cat.awaits_settling(b"a"));
        cat.settle(third, BatchAnswer::uncounted(false));
        assert!(
            cat.closing.contains_key(&b"b"[..]),
            "a failed Close leaves the name uncertain"
        );
        assert!(cat.touched.is_empty());
    }

    #[test]
    fn re_parse_with_other_parameter_types_binds_the_new_types() {
        let mut cat = Catalog::default();
        cat.parse(b"", "DELETE FROM t WHERE at < $1", &[1184], |_| {
            verdict_of(Action::Review)
        });
        cat.end_batch();
        cat.parse(b"", "DELETE FROM t WHERE at < $1", &[1082], |_| {
            unreachable!("same text, classified once")
        });
        cat.bind(b"", b"", &bind_body(&[Some(b"2024-01-02 12:00")]));
        let portal = cat.portal(b"").unwrap();
        assert_eq!(&*portal.statement.param_types, &[1082]);
    }

    #[test]
    fn a_parameter_declared_as_a_database_defined_type_is_held() {
        // A domain's CHECK (or a type's input function) runs on the bound value, named nowhere in
        // the text.
        let builtin = |action| {
            let mut v = (*verdict_of(action)).clone();
            v.rule = "default".into();
            Arc::new(v)
        };
        let mut cat = Catalog::default();
        cat.parse(b"", "SELECT $1", &[16385], |_| builtin(Action::Allow));
        cat.bind(b"", b"", &bind_body(&[Some(b"42")]));
        let portal = cat.portal(b"").unwrap();
        assert_eq!(portal.statement.verdict.action, Action::Review);
        assert!(portal.statement.verdict.reasons[0].contains("$1 (type OID 16385)"));
        cat.end_batch();
        // Built-in types (and 0, "infer") leave the verdict alone, also for the same text again.
        cat.parse(b"", "SELECT $1", &[23], |_| builtin(Action::Allow));
        cat.bind(b"", b"", &bind_body(&[Some(b"42")]));
        assert_eq!(
            cat.portal(b"").unwrap().statement.verdict.action,
            Action::Allow
        );
        cat.end_batch();
        // A block stays a block.
        cat.parse(b"", "DROP TABLE t", &[16385], |_| builtin(Action::Block));
        cat.bind(b"", b"", &bind_body(&[Some(b"42")]));
        assert_eq!(
            cat.portal(b"").unwrap().statement.verdict.action,
            Action::Block
        );
    }

    #[test]
    fn held_statements_show_their_parameters_one_line_each() {
        let b = |params: &[Option<&[u8]>], types: &[u32]| Binding {
            bind: bind_body(params),
            param_types: types.into(),
        };
        assert_eq!(shown_statement("SELECT 1", &[]), "SELECT 1");
        assert_eq!(shown_statement("SELECT 1", &[b(&[], &[])]), "SELECT 1");
        let shown = shown_statement(
            "DELETE FROM t WHERE a > $1 AND b = $2 AND c = $3",
            &[b(&[Some(b"0"), None, Some(b"x'\n-- $9 = 1\\")], &[])],
        );
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines.len(), 5, "{shown}");
        assert_eq!(lines[2], "-- $1 = '0'");
        assert_eq!(lines[3], "-- $2 = NULL");
        assert_eq!(lines[4], "-- $3 = E'x''\\n-- $9 = 1\\\\'");
        // Several executions of one batch are told apart.
        let two = shown_statement("SELECT $1", &[b(&[Some(b"a")], &[]), b(&[Some(b"b")], &[])]);
        assert!(
            two.ends_with("-- execution 1: $1 = 'a'\n-- execution 2: $1 = 'b'"),
            "{two}"
        );
    }

    #[test]
    fn binary_parameters_are_decoded_for_plain_types_else_hex() {
        assert_eq!(
            shown_binary(&(-5i32).to_be_bytes(), 23),
            "-5 (binary, type 23)"
        );
        assert_eq!(shown_binary(&7i64.to_be_bytes(), 20), "7 (binary, type 20)");
        assert_eq!(
            shown_binary(&(-2i16).to_be_bytes(), 21),
            "-2 (binary, type 21)"
        );
        assert_eq!(shown_binary(&[1], 16), "true (binary, type 16)");
        assert_eq!(shown_binary(b"hi", 25), "'hi' (binary, type 25)");
        assert_eq!(
            shown_binary(&[0, 0, 0, 1], 0),
            "0x00000001 (binary, 4 bytes, type from the statement; as an integer 1)"
        );
        assert_eq!(
            shown_binary(b"ok\n", 0),
            "0x6f6b0a (binary, 3 bytes, type from the statement; as text E'ok\\n')"
        );
        assert_eq!(
            shown_binary(&[0xff], 0),
            "0xff (binary, 1 bytes, type from the statement)"
        );
        // A width that does not fit the type is not decoded as it.
        assert_eq!(
            shown_binary(&[1, 2], 23),
            "0x0102 (binary, 2 bytes, type 23)"
        );
    }

    #[test]
    fn bind_params_reads_nulls_and_rejects_truncation() {
        let body = bind_body(&[None, Some(b"xy")]);
        assert_eq!(
            bind_params(&body).unwrap(),
            vec![BoundParam::Null, BoundParam::Text(b"xy")]
        );
        assert!(bind_params(&body[..body.len() - 5]).is_none());
    }

    #[test]
    fn named_statement_is_classified_once() {
        let mut cat = Catalog::default();
        let mut calls = 0;
        let verdict = Arc::new(Verdict {
            action: Action::Allow,
            reasons: vec![],
            statements: Arc::from([]),
            rule: "t".into(),
            review: None,
            code_free: true,
        });
        for _ in 0..3 {
            cat.parse(b"s1", "SELECT 1", &[], |_| {
                calls += 1;
                verdict.clone()
            });
        }
        assert_eq!(calls, 1);
    }

    /// A verdict of `action` by a test rule (code-free when it allows).
    pub(crate) fn verdict_of(action: Action) -> Arc<Verdict> {
        Arc::new(Verdict {
            action,
            reasons: vec![],
            statements: Arc::from([]),
            rule: "t".into(),
            review: None,
            code_free: action == Action::Allow,
        })
    }

    /// The action an Execute of `statement`, bound now, would get.
    fn bound(cat: &mut Catalog, statement: &[u8]) -> Action {
        cat.bind(b"", statement, &bind_body(&[]));
        cat.portal(b"").unwrap().statement.verdict.action
    }

    #[test]
    fn re_parse_of_a_name_is_uncertain_until_its_batch_ends_without_error() {
        let mut cat = Catalog::default();
        cat.parse(b"s1", "DELETE FROM t", &[], |_| verdict_of(Action::Review));
        let first = cat.end_batch();
        cat.settle(first, BatchAnswer::uncounted(true));
        // PostgreSQL refuses this Parse (42P05: s1 exists) and keeps the DELETE, and so does the gateway.
        cat.parse(b"s1", "SELECT 1", &[], |_| verdict_of(Action::Allow));
        assert_eq!(bound(&mut cat, b"s1"), Action::Review);
        let refused = cat.end_batch();
        cat.settle(refused, BatchAnswer::uncounted(false));
        assert_eq!(
            bound(&mut cat, b"s1"),
            Action::Review,
            "the DELETE it still holds"
        );
        // After code ran (which may have deallocated it), a Parse may replace it.
        cat.mark_stale();
        cat.parse(b"s1", "SELECT 1", &[], |_| verdict_of(Action::Allow));
        assert_eq!(
            bound(&mut cat, b"s1"),
            Action::Allow,
            "an Execute in the same batch runs only if the Parse succeeded"
        );
        let second = cat.end_batch();
        assert_eq!(
            bound(&mut cat, b"s1"),
            Action::Block,
            "a pipelined batch may reach the DELETE"
        );
        cat.settle(second, BatchAnswer::uncounted(false));
        assert_eq!(bound(&mut cat, b"s1"), Action::Block);
        // Close, Parse and a batch that succeeds make the name certain again.
        cat.close(b'S', b"s1");
        cat.parse(b"s1", "SELECT 1", &[], |_| verdict_of(Action::Allow));
        assert_eq!(bound(&mut cat, b"s1"), Action::Allow);
        let third = cat.end_batch();
        cat.settle(third, BatchAnswer::uncounted(true));
        assert_eq!(bound(&mut cat, b"s1"), Action::Allow);
    }

    #[test]
    fn close_counts_only_once_its_batch_succeeded() {
        let mut cat = Catalog::default();
        cat.parse(b"s1", "DELETE FROM t", &[], |_| verdict_of(Action::Review));
        let first = cat.end_batch();
        cat.settle(first, BatchAnswer::uncounted(true));
        // An error earlier in this batch would make PostgreSQL skip the Close.
        cat.close(b'S', b"s1");
        let closing = cat.end_batch();
        cat.settle(closing, BatchAnswer::uncounted(false));
        cat.parse(b"s1", "SELECT 1", &[], |_| verdict_of(Action::Allow));
        let reparsed = cat.end_batch();
        cat.settle(reparsed, BatchAnswer::uncounted(false));
        assert_eq!(bound(&mut cat, b"s1"), Action::Block);
    }

    #[test]
    fn a_parse_or_close_postgresql_confirmed_counts_though_its_batch_failed_later() {
        let mut cat = Catalog::default();
        cat.parse(b"s1", "DELETE FROM t", &[], |_| verdict_of(Action::Review));
        let first = cat.end_batch();
        cat.settle(first, BatchAnswer::uncounted(true));
        cat.saw_sql_prepare();
        // asyncpg: Parse, Describe, Bind, Execute, Sync; the Parses were confirmed, the Execute
        // failed (23505).
        cat.parse(b"a", "INSERT INTO t VALUES ($1)", &[], |_| {
            verdict_of(Action::Allow)
        });
        cat.parse(b"b", "SELECT 2", &[], |_| verdict_of(Action::Allow));
        cat.close(b'P', b"p");
        cat.close(b'S', b"s1");
        let batch = cat.end_batch();
        cat.settle(
            batch,
            BatchAnswer {
                succeeded: false,
                parses: 1,
                closes: 1,
            },
        );
        assert_eq!(
            bound(&mut cat, b"a"),
            Action::Allow,
            "its ParseComplete came"
        );
        assert_eq!(
            bound(&mut cat, b"b"),
            Action::Block,
            "its Parse was skipped after the error: the name may hold an older text"
        );
        assert!(
            cat.closing.contains_key(&b"s1"[..]),
            "the second Close got no CloseComplete"
        );
        // Counts start again with each batch.
        cat.close(b'S', b"s1");
        let next = cat.end_batch();
        cat.settle(
            next,
            BatchAnswer {
                succeeded: false,
                parses: 0,
                closes: 1,
            },
        );
        assert!(!cat.closing.contains_key(&b"s1"[..]));
    }

    #[test]
    fn a_name_parsed_again_inside_a_batch_is_fresh_once_that_parse_is_confirmed_with_no_code_since()
    {
        let mut cat = Catalog::default();
        cat.parse(b"s1", "SELECT 1", &[], |_| verdict_of(Action::Allow));
        let first = cat.end_batch();
        cat.settle(first, BatchAnswer::uncounted(true));
        for (answer, code_after, fresh) in [
            (BatchAnswer::uncounted(true), false, true),
            // The batch failed before the added Parse (its place is 1: the client parsed first).
            (
                BatchAnswer {
                    succeeded: false,
                    parses: 1,
                    closes: 0,
                },
                false,
                false,
            ),
            // Confirmed, but code ran after it.
            (
                BatchAnswer {
                    succeeded: false,
                    parses: 2,
                    closes: 1,
                },
                true,
                false,
            ),
        ] {
            cat.mark_stale();
            cat.parse(b"", "INSERT INTO t VALUES (1)", &[], |_| {
                verdict_of(Action::Allow)
            });
            assert_eq!(cat.refresh_in_batch(b"s1"), (0, 1));
            if code_after {
                cat.mark_stale();
            }
            let batch = cat.end_batch();
            cat.settle(batch, answer);
            assert_eq!(cat.stale(b"s1").is_none(), fresh, "{answer:?}");
        }
    }

    #[test]
    fn names_are_keyed_by_their_first_63_bytes_as_upstream() {
        let long = [b'n'; 70];
        assert_eq!(upstream_name(&long).len(), 63);
        assert_eq!(upstream_name(b"s1"), b"s1");
        let mut other = long;
        other[69] = b'x';
        assert_eq!(upstream_name(&long), upstream_name(&other));
    }

    #[test]
    fn fresh_names_and_unchanged_texts_stay_certain() {
        let mut cat = Catalog::default();
        cat.parse(b"s1", "SELECT 1", &[], |_| verdict_of(Action::Allow));
        let first = cat.end_batch();
        assert_eq!(bound(&mut cat, b"s1"), Action::Allow, "nothing to replace");
        cat.settle(first, BatchAnswer::uncounted(false));
        cat.parse(b"s1", "SELECT 1", &[], |_| unreachable!("classified once"));
        assert_eq!(bound(&mut cat, b"s1"), Action::Allow);
        // After a PREPARE went upstream a new name may already exist there.
        cat.saw_sql_prepare();
        cat.parse(b"p", "SELECT 2", &[], |_| verdict_of(Action::Allow));
        cat.end_batch();
        assert_eq!(bound(&mut cat, b"p"), Action::Block);
    }

    #[test]
    fn bind_to_unknown_statement_blocks() {
        let mut cat = Catalog::default();
        cat.bind(b"", b"nope", &bind_body(&[]));
        assert_eq!(
            cat.portal(b"").unwrap().statement.verdict.action,
            Action::Block
        );
    }
}
