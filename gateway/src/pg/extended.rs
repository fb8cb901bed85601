//! Extended-query bookkeeping: prepared statements and portals (so a named statement is classified
//! once, at Parse) and the batch of messages buffered until Sync.

use super::codec::{read_cstr, read_i16, read_i32};
use crate::policy::{Action, Verdict};
use bytes::{Bytes, BytesMut};
use countersign_bot::StatementHash;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// A statement prepared through the gateway, with its verdict.
#[derive(Debug)]
pub struct Prepared {
    /// Statement text.
    pub sql: Arc<str>,
    /// Verdict from Parse time.
    pub verdict: Arc<Verdict>,
}

/// A bound portal: its statement and the raw Bind body (parameters are read from it only when needed).
#[derive(Debug, Clone)]
pub struct Portal {
    /// The statement the portal runs.
    pub statement: Arc<Prepared>,
    /// Raw Bind body.
    pub bind: Bytes,
}

/// Prepared statements and portals of one session, keyed by name (the empty name is the unnamed one).
#[derive(Default)]
pub struct Catalog {
    statements: HashMap<Box<[u8]>, Arc<Prepared>>,
    portals: HashMap<Box<[u8]>, Portal>,
}

impl Catalog {
    /// Records a Parse; `classify` runs only when the name is new or its text changed.
    pub fn parse(&mut self, name: &[u8], sql: &str, classify: impl FnOnce(&str) -> Arc<Verdict>) {
        if let Some(existing) = self.statements.get(name) {
            if &*existing.sql == sql {
                return;
            }
        }
        let prepared = Arc::new(Prepared {
            sql: Arc::from(sql),
            verdict: classify(sql),
        });
        self.statements.insert(name.into(), prepared);
    }

    /// Records a Bind; an unknown statement gets a blocking verdict (fail closed).
    pub fn bind(&mut self, portal: &[u8], statement: &[u8], body: &[u8]) {
        let prepared = match self.statements.get(statement) {
            Some(p) => p.clone(),
            None => Arc::new(unknown_statement(statement)),
        };
        let entry = Portal {
            statement: prepared,
            bind: Bytes::copy_from_slice(body),
        };
        match self.portals.get_mut(portal) {
            Some(slot) => *slot = entry,
            None => {
                self.portals.insert(portal.into(), entry);
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
            }
            _ => {
                self.portals.remove(name);
            }
        }
    }

    /// Drops statements the upstream never saw (their Parse was in a batch that was refused).
    pub fn forget_statements(&mut self, names: &[Box<[u8]>]) {
        for n in names {
            self.statements.remove(n);
        }
    }
}

fn unknown_statement(name: &[u8]) -> Prepared {
    let name = String::from_utf8_lossy(name);
    Prepared {
        sql: Arc::from(format!("<unknown prepared statement \"{name}\">")),
        verdict: Arc::new(Verdict {
            action: Action::Block,
            reasons: vec![format!(
                "prepared statement \"{name}\" was not prepared through the gateway; prepare it with the protocol Parse message"
            )],
            statements: Arc::from([]),
            rule: "gateway".into(),
            review: None,
        }),
    }
}

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
    /// When the batch's first message arrived.
    pub started: Option<Instant>,
    /// Leading bytes of `bytes` before the first Execute that needs a decision: Parse, Bind and
    /// Describe run nothing, so
    /// they may go upstream on Flush even while the rest of the batch waits.
    pub forwardable: usize,
}

impl Batch {
    /// Notes an Execute of `portal`.
    pub fn execute(&mut self, portal: &Portal) {
        let verdict = &portal.statement.verdict;
        if self.verdict.is_none() || verdict.action > self.action() {
            self.verdict = Some(verdict.clone());
        }
        self.executed.push(portal.clone());
    }

    /// Strictest action over the executed statements; a batch that executes nothing is allowed.
    pub fn action(&self) -> Action {
        self.verdict.as_ref().map_or(Action::Allow, |v| v.action)
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

    /// Bind bodies of the executed statements, in order.
    pub fn binds(&self) -> Vec<Bytes> {
        self.executed.iter().map(|p| p.bind.clone()).collect()
    }

    /// Takes the batch, leaving an empty one.
    pub fn take(&mut self) -> Batch {
        Batch {
            // `split` keeps the spare capacity here for the next batch.
            bytes: self.bytes.split(),
            verdict: self.verdict.take(),
            executed: std::mem::take(&mut self.executed),
            parsed: std::mem::take(&mut self.parsed),
            started: self.started.take(),
            forwardable: std::mem::take(&mut self.forwardable),
        }
    }
}

/// Parameter values of a Bind body (`None` = SQL NULL), or None when the body is malformed.
pub fn bind_params(body: &[u8]) -> Option<Vec<Option<&[u8]>>> {
    let mut pos = 0;
    read_cstr(body, &mut pos)?;
    read_cstr(body, &mut pos)?;
    let formats = read_i16(body, &mut pos)?;
    pos += 2 * usize::try_from(formats).ok()?;
    let count = usize::try_from(read_i16(body, &mut pos)?).ok()?;
    let mut params = Vec::with_capacity(count);
    for _ in 0..count {
        let len = read_i32(body, &mut pos)?;
        if len < 0 {
            params.push(None);
        } else {
            let end = pos.checked_add(len as usize)?;
            params.push(Some(body.get(pos..end)?));
            pos = end;
        }
    }
    Some(params)
}

/// The hash an approval is bound to: statement text plus all Bind parameters of the batch.
pub fn statement_hash(sql: &str, binds: &[Bytes]) -> StatementHash {
    if binds.is_empty() {
        return StatementHash::of_text(sql);
    }
    let mut params: Vec<Option<&[u8]>> = Vec::new();
    for b in binds {
        match bind_params(b) {
            Some(p) => params.extend(p),
            // A malformed Bind still must hash to something unique to its bytes.
            None => params.push(Some(b)),
        }
    }
    StatementHash::of_parts(sql, &params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    fn bind_body(params: &[Option<&[u8]>]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_slice(b"\0s1\0");
        b.put_i16(1);
        b.put_i16(1);
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
    fn bind_parameters_are_part_of_the_statement_hash() {
        let a = statement_hash("DELETE FROM t WHERE id = $1", &[bind_body(&[Some(b"1")])]);
        let b = statement_hash("DELETE FROM t WHERE id = $1", &[bind_body(&[Some(b"2")])]);
        let c = statement_hash("DELETE FROM t WHERE id = $1", &[bind_body(&[Some(b"1")])]);
        assert_ne!(a, b);
        assert_eq!(a, c);
        assert_eq!(
            a,
            StatementHash::of_parts("DELETE FROM t WHERE id = $1", &[Some(b"1")])
        );
    }

    #[test]
    fn bind_params_reads_nulls_and_rejects_truncation() {
        let body = bind_body(&[None, Some(b"xy")]);
        assert_eq!(bind_params(&body).unwrap(), vec![None, Some(&b"xy"[..])]);
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
        });
        for _ in 0..3 {
            cat.parse(b"s1", "SELECT 1", |_| {
                calls += 1;
                verdict.clone()
            });
        }
        assert_eq!(calls, 1);
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
