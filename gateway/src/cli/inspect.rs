//! Read-only and maintenance commands: policy explain, audit, requests, sessions, outbox.

use super::{load_config, AuditCommand, OutboxCommand, RequestsCommand, SessionsCommand};
use crate::config::Config;
use crate::policy::{Policy, PolicyContext};
use anyhow::{anyhow, Context};
use countersign_bot::audit::{verify_chain_to_head, AuditRecord, ChainCheck};
use countersign_bot::store::OutboxStatus;
use countersign_bot::{RequestStatus, RequesterChain, Store};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// A command's input names nothing usable (no store, a malformed argument): exit code 2, not 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

/// The store `serve` made. Only `serve` creates one: a read-only command on a SQLite store that is not
/// there says so instead of making an empty one (whose empty audit trail would "verify").
async fn open_store(cfg: &Config) -> anyhow::Result<Arc<dyn Store>> {
    let url = cfg.store.resolved_url()?;
    if let Some(file) = crate::config::StoreConfig::sqlite_file(&url) {
        if !file.exists() {
            return Err(InputError(format!(
                "no store at {} (start `countersign serve` once, or set [store] data_dir/url to the store)",
                file.display()
            ))
            .into());
        }
    }
    countersign_bot::store::open(&url)
        .await
        .with_context(|| "opening the state store from [store]".to_string())
}

/// The audit key `serve` seals with, if any (never creates one).
fn audit_key(cfg: &Config) -> anyhow::Result<Option<countersign_bot::audit::AuditKey>> {
    let url = cfg.store.resolved_url()?;
    Ok(cfg
        .store
        .audit_key(&url, crate::config::KeyFile::ReadOnly)?)
}

fn when(t: time::OffsetDateTime) -> String {
    let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    t.format(&f).unwrap_or_default()
}

fn clip(s: &str, n: usize) -> String {
    // ASCII white space only: a Unicode space is part of a name to PostgreSQL, and is shown.
    let one_line = s
        .split(|c: char| c.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    crate::engine::truncate(&one_line, n)
}

/// One field for the terminal: what an agent chose (statements, names, application names, reasons) may
/// hold escape sequences that redraw the screen, or invisible characters; they are shown as `⟦U+…⟧`.
fn shown(s: &str) -> String {
    countersign_bot::reveal::reveal_line(s).into_owned()
}

/// Print rows as an aligned table (every cell through [`shown`]).
fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|r| r.iter().map(|c| shown(c)).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    out!("{}", line(headers.iter().map(|h| h.to_string()).collect()));
    out!("{}", line(widths.iter().map(|w| "-".repeat(*w)).collect()));
    for r in rows {
        out!("{}", line(r));
    }
}

/// `policy explain`: built-in policy without a config; the config's rules with one.
pub fn policy_explain(
    config: Option<&PathBuf>,
    connection: Option<&str>,
    sql: Option<String>,
) -> anyhow::Result<ExitCode> {
    let (policy, connection) = match config {
        Some(p) => {
            let (cfg, _) = load_config(Some(p)).map_err(|e| anyhow!("{e}"))?;
            let names: Vec<String> = cfg.connections.iter().map(|c| c.name.clone()).collect();
            let connection = explain_connection(&names, connection)?;
            let policy = Policy::new(
                cfg.policy.rules,
                cfg.policy.defaults,
                &cfg.identity.issuers(),
            )
            .map_err(|e| anyhow!("{e}"))?;
            (policy, connection)
        }
        None => (
            Policy::builtin(),
            connection.unwrap_or("default").to_string(),
        ),
    };
    let connection = connection.as_str();
    let sql = match sql {
        Some(s) => s,
        None => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .context("reading SQL from stdin")?;
            s
        }
    };
    let requester = RequesterChain(vec![]);
    let verdict = policy.evaluate(
        &PolicyContext {
            connection,
            requester: &requester,
            db_functions: None,
        },
        &sql,
    );
    out!("{}", serde_json::to_string_pretty(&verdict)?);
    Ok(ExitCode::SUCCESS)
}

/// The connection `policy explain` evaluates on: the one named (which the config must define), else
/// the config's only connection. Rules scoped to connections match only a configured name.
fn explain_connection(configured: &[String], given: Option<&str>) -> Result<String, InputError> {
    let list = || configured.join(", ");
    match (given, configured) {
        (Some(name), []) => Ok(name.to_string()),
        (Some(name), _) if configured.iter().any(|c| c == name) => Ok(name.to_string()),
        (Some(name), _) => Err(InputError(format!(
            "--connection {name:?} is not a connection of this config; use one of: {}",
            list()
        ))),
        (None, [only]) => Ok(only.clone()),
        (None, []) => Ok("default".to_string()),
        (None, _) => Err(InputError(format!(
            "this config defines several connections, and rules may differ between them: pass --connection with one of: {}",
            list()
        ))),
    }
}

/// `SEQ:HASH` as `audit verify` prints the head.
fn parse_head(text: &str) -> Result<(i64, String), String> {
    let (seq, hash) = text
        .trim()
        .split_once(':')
        .ok_or_else(|| format!("{text:?} has no `:` between the sequence number and the hash"))?;
    let seq = seq
        .parse::<i64>()
        .map_err(|_| format!("{seq:?} is not a record number"))?;
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "{hash:?} is not a record hash (64 hex digits, as `audit verify` prints it)"
        ));
    }
    Ok((seq, hash.to_ascii_lowercase()))
}

async fn all_audit(
    store: &Arc<dyn Store>,
    mut each: impl FnMut(&[AuditRecord]) -> anyhow::Result<()>,
) -> anyhow::Result<u64> {
    let mut after = 0;
    let mut n = 0u64;
    loop {
        let page = store.audit_records(after, 5000).await?;
        if page.is_empty() {
            return Ok(n);
        }
        after = page.last().map(|r| r.seq).unwrap_or(after);
        n += page.len() as u64;
        each(&page)?;
    }
}

/// `audit verify | export`.
pub async fn audit(cfg: &Config, command: AuditCommand) -> anyhow::Result<ExitCode> {
    // A malformed argument is the caller's mistake, found before the store is read.
    let expected = match &command {
        AuditCommand::Verify {
            expect_head: Some(head),
        } => Some(parse_head(head).map_err(|why| {
            InputError(format!(
                "--expect-head: {why}; pass SEQ:HASH (a record number, a colon and 64 hex digits) as an earlier `audit verify` printed it"
            ))
        })?),
        _ => None,
    };
    let store = open_store(cfg).await?;
    match command {
        AuditCommand::Verify { .. } => {
            // Read before the records: appends meanwhile add records past the head, which are left
            // for the next run, and never make a head the records seem to fall short of.
            let key = audit_key(cfg)?;
            let head = store.audit_head().await?;
            let mut records = Vec::new();
            let n = all_audit(&store, |page| {
                records.extend_from_slice(page);
                if records.len() % 50_000 < page.len() && records.len() >= 50_000 {
                    eprintln!("read {} records…", records.len());
                }
                Ok(())
            })
            .await?;
            // Every append moves the head in its own transaction: a record past the head as read
            // after the records is one the gateway did not write.
            let head_after = store.audit_head().await?;
            let past = head_after.as_ref().map_or(0, |h| h.seq);
            if let Some(stray) = records.iter().find(|r| r.seq > past) {
                out!("audit chain BROKEN at record #{} ({n} record(s) read): it lies past the chain's head (#{past}), so it was added to the audit table directly, not by the gateway", stray.seq);
                return Ok(ExitCode::from(1));
            }
            let records = match &head {
                Some(head) => {
                    let read = records.iter().take_while(|r| r.seq <= head.seq).count();
                    &records[..read]
                }
                None => &records[..],
            };
            if key.is_none() {
                if let Some(sealed) = records.iter().find(|r| r.seal.is_some()) {
                    out!("audit chain NOT VERIFIED: records from #{} on are sealed, but no audit key is available ([store] audit_key_env / audit_key_file, or the SQLite store's countersign.db.audit-key): without it a rewrite that recomputed the hashes would pass; restore the key and run again", sealed.seq);
                    return Ok(ExitCode::from(2));
                }
            }
            match verify_chain_to_head(records, head.as_ref(), key.as_ref()) {
                ChainCheck::Intact { records: verified } => {
                    if let Some((seq, hash)) = &expected {
                        match records.iter().find(|r| r.seq == *seq) {
                            Some(r) if r.hash == *hash => {}
                            Some(_) => {
                                out!("audit chain BROKEN at record #{seq}: its hash is not the one an earlier verify printed, so the trail was rewritten from there");
                                return Ok(ExitCode::from(1));
                            }
                            None => {
                                out!("audit chain BROKEN: it ends at #{} but an earlier verify saw record #{seq}: records were cut from the end (and an older head put back)", records.last().map_or(0, |r| r.seq));
                                return Ok(ExitCode::from(1));
                            }
                        }
                    }
                    // Each request is created with its audit record in one transaction: a request
                    // the trail does not know means records were cut from its end.
                    let created: std::collections::HashSet<&str> = records
                        .iter()
                        .filter(|r| r.entry.action == "request.created")
                        .filter_map(|r| r.entry.request_id.as_deref())
                        .collect();
                    let requests = store.list_requests(None, u32::MAX).await?;
                    if let Some(orphan) = requests
                        .iter()
                        .find(|r| !created.contains(r.id.to_string().as_str()))
                    {
                        out!("audit chain BROKEN: request {} has no request.created record, though each is written with its request: records were cut from the end of the trail (and an older head put back)", orphan.id);
                        return Ok(ExitCode::from(1));
                    }
                    let seals = if key.is_some() {
                        "links, head and seals checked"
                    } else {
                        "links and head checked; seals NOT checked: no audit key is configured ([store] audit_key_env)"
                    };
                    out!("audit chain intact: {verified} record(s) verified ({seals}); every request has its record");
                    if let Some(last) = records.last() {
                        out!("head: {}:{} (keep it outside the store; `audit verify --expect-head {}:{}` then finds records cut from the end)", last.seq, last.hash, last.seq, last.hash);
                    }
                    Ok(ExitCode::SUCCESS)
                }
                ChainCheck::Broken { seq, problem } => {
                    out!("audit chain BROKEN at record #{seq} ({n} record(s) read): {problem}");
                    Ok(ExitCode::from(1))
                }
            }
        }
        AuditCommand::Export { output } => {
            let mut out: Box<dyn Write> = match &output {
                Some(p) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(p)
                        .with_context(|| format!("creating {}", p.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout())),
            };
            let n = all_audit(&store, |page| {
                for r in page {
                    serde_json::to_writer(&mut out, r)?;
                    out.write_all(b"\n")?;
                }
                Ok(())
            })
            .await?;
            out.flush()?;
            if output.is_some() {
                eprintln!("exported {n} audit record(s)");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `requests list | show`.
pub async fn requests(cfg: &Config, command: RequestsCommand) -> anyhow::Result<ExitCode> {
    let store = open_store(cfg).await?;
    match command {
        RequestsCommand::List {
            status,
            limit,
            json,
        } => {
            let status = status.map(|s| s.parse::<RequestStatus>()).transpose()?;
            let list = store.list_requests(status, limit).await?;
            if json {
                out!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(ExitCode::SUCCESS);
            }
            table(
                &[
                    "ID",
                    "STATUS",
                    "CONNECTION",
                    "REQUESTER",
                    "CREATED",
                    "STATEMENT",
                ],
                list.iter()
                    .map(|r| {
                        vec![
                            r.id.to_string(),
                            r.status.to_string(),
                            r.connection.clone(),
                            r.requester.display(),
                            when(r.created_at),
                            clip(&r.statement, 60),
                        ]
                    })
                    .collect(),
            );
            Ok(ExitCode::SUCCESS)
        }
        RequestsCommand::Show { id, json } => {
            let id = id
                .parse()
                .map_err(|_| anyhow!("{id:?} is not a request id (a UUID)"))?;
            let Some(v) = store.get_request(id).await? else {
                return Err(anyhow!(
                    "no request {id}; list them with `countersign requests list`"
                ));
            };
            if json {
                out!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            let r = &v.request;
            out!("request     {}", r.id);
            out!("status      {}", r.status);
            out!("connection  {}", shown(&r.connection));
            out!("requester   {}", shown(&r.requester.display()));
            out!("rule        {}", shown(&r.rule));
            for (i, reason) in r.reasons.iter().enumerate() {
                out!(
                    "{}{}",
                    if i == 0 {
                        "reasons     "
                    } else {
                        "            "
                    },
                    shown(reason)
                );
            }
            if let Some(warning) = countersign_bot::reveal::hidden_characters_warning(&r.statement)
            {
                out!("warning     {warning}");
            }
            out!(
                "quorum      {} of groups {}",
                r.quorum,
                r.approver_groups.join(", ")
            );
            out!(
                "created     {}   expires {}",
                when(r.created_at),
                when(r.expires_at)
            );
            out!("hash        {}", r.statement_hash);
            out!(
                "statement\n    {}",
                countersign_bot::reveal::reveal(&r.statement).replace('\n', "\n    ")
            );
            out!("votes");
            for vote in &v.votes {
                out!(
                    "    {}  {:<7}  {}  via {}{}",
                    when(vote.at),
                    vote.decision.as_str(),
                    shown(&vote.voter_name),
                    vote.channel,
                    vote.reason
                        .as_deref()
                        .map(|x| format!(": {}", shown(x)))
                        .unwrap_or_default()
                );
            }
            if let Some(e) = &r.execution {
                out!(
                    "execution   {} rows={} {}ms {}",
                    e.command_tag.as_deref().unwrap_or("-"),
                    e.rows.map(|n| n.to_string()).unwrap_or("-".into()),
                    e.duration_ms,
                    shown(e.error.as_deref().unwrap_or(""))
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `sessions list | show`.
pub async fn sessions(cfg: &Config, command: SessionsCommand) -> anyhow::Result<ExitCode> {
    let store = open_store(cfg).await?;
    match command {
        SessionsCommand::List { limit, json } => {
            let list = store.list_sessions(limit).await?;
            if json {
                out!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(ExitCode::SUCCESS);
            }
            table(
                &[
                    "ID",
                    "CONNECTION",
                    "REQUESTER",
                    "CLIENT",
                    "APPLICATION",
                    "STARTED",
                    "ENDED",
                ],
                list.iter()
                    .map(|s| {
                        vec![
                            s.id.to_string(),
                            s.connection.clone(),
                            s.requester.display(),
                            s.client_addr.clone().unwrap_or_default(),
                            s.application.clone().unwrap_or_default(),
                            when(s.started_at),
                            match (s.ended_at, &s.end_reason) {
                                // Not the real end: the last time the session was known to be open.
                                (Some(t), Some(_)) => format!("{} (gateway stopped)", when(t)),
                                (Some(t), None) => when(t),
                                (None, _) => "(open)".into(),
                            },
                        ]
                    })
                    .collect(),
            );
            Ok(ExitCode::SUCCESS)
        }
        SessionsCommand::Show { id, json } => {
            let id = id
                .parse()
                .map_err(|_| anyhow!("{id:?} is not a session id (a UUID)"))?;
            let Some((s, statements)) = store.get_session(id).await? else {
                return Err(anyhow!(
                    "no session {id}; list them with `countersign sessions list`"
                ));
            };
            if json {
                out!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({ "session": s, "statements": statements })
                    )?
                );
                return Ok(ExitCode::SUCCESS);
            }
            let summary = countersign_bot::sessions::SessionSummary::from_records(&s, &statements);
            out!(
                "session {}  {} on {}  from {}  ({}s; run {}, blocked {}, held {}, approved {})",
                s.id,
                shown(&s.requester.display()),
                shown(&s.connection),
                shown(&s.client_addr.clone().unwrap_or_default()),
                summary.duration_secs,
                summary.run,
                summary.blocked,
                summary.held,
                summary.approved
            );
            if let Some(reason) = &s.end_reason {
                out!("ended: {}", shown(reason));
            }
            table(
                &[
                    "AT",
                    "DECISION",
                    "OUTCOME",
                    "TAG",
                    "µs",
                    "REQUEST",
                    "STATEMENT",
                ],
                statements
                    .iter()
                    .map(|st| {
                        vec![
                            when(st.at),
                            st.decision.clone(),
                            st.outcome.clone(),
                            st.command_tag.clone().unwrap_or_default(),
                            st.duration_us.to_string(),
                            st.request_id.map(|r| r.to_string()).unwrap_or_default(),
                            clip(&st.sql, 60),
                        ]
                    })
                    .collect(),
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `outbox list | retry`.
pub async fn outbox(cfg: &Config, command: OutboxCommand) -> anyhow::Result<ExitCode> {
    let store = open_store(cfg).await?;
    match command {
        OutboxCommand::List { status, limit } => {
            let status = match status {
                Some(s) => Some(
                    OutboxStatus::parse(&s)
                        .ok_or_else(|| anyhow!("status {s:?}: use pending, delivered or dead"))?,
                ),
                None => None,
            };
            let list = store.outbox_list(status, limit).await?;
            table(
                &[
                    "ID",
                    "SINK",
                    "EVENT",
                    "STATUS",
                    "ATTEMPTS",
                    "REQUEST",
                    "LAST ERROR",
                ],
                list.iter()
                    .map(|o| {
                        vec![
                            o.id.to_string(),
                            o.sink.clone(),
                            o.event_kind.clone(),
                            o.status.as_str().to_string(),
                            o.attempts.to_string(),
                            o.request_id.clone().unwrap_or_default(),
                            clip(o.last_error.as_deref().unwrap_or(""), 50),
                        ]
                    })
                    .collect(),
            );
            Ok(ExitCode::SUCCESS)
        }
        OutboxCommand::Retry { id } => {
            let now = countersign_bot::clock::now_ms();
            if store.outbox_retry(id, now).await? {
                out!("outbox item {id} re-queued");
                Ok(ExitCode::SUCCESS)
            } else {
                Err(anyhow!("no dead-lettered outbox item {id}; see `countersign outbox list --status dead`"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explain_uses_the_only_connection_and_needs_a_configured_name_otherwise() {
        let one = ["prod".to_string()];
        assert_eq!(explain_connection(&one, None).unwrap(), "prod");
        let two = ["prod".to_string(), "staging".to_string()];
        let e = explain_connection(&two, None).unwrap_err().to_string();
        assert!(
            e.contains("--connection") && e.contains("prod, staging"),
            "{e}"
        );
        assert_eq!(
            explain_connection(&two, Some("staging")).unwrap(),
            "staging"
        );
        let e = explain_connection(&two, Some("default"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"default\"") && e.contains("prod, staging"),
            "{e}"
        );
        assert_eq!(explain_connection(&[], None).unwrap(), "default");
    }

    #[test]
    fn an_expected_head_needs_a_record_number_and_a_whole_hash() {
        let hash = "ab".repeat(32);
        assert_eq!(parse_head(&format!("5:{hash}")), Ok((5, hash.clone())));
        assert_eq!(
            parse_head(&format!(" 5:{} ", hash.to_uppercase())),
            Ok((5, hash.clone()))
        );
        let long = format!("5:{hash}0");
        for (bad, says) in [
            ("5:abc", "64 hex digits"),
            ("5:", "64 hex digits"),
            (long.as_str(), "64 hex digits"),
            ("nonsense", "no `:`"),
            ("x:abc", "not a record number"),
        ] {
            let e = parse_head(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
