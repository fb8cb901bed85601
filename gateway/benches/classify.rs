//! Median per-call cost of `Policy::evaluate` on pgbench's statements, uncached and cached.
//! Run: `cargo bench -p countersign-gateway --bench classify`.

use std::time::{Duration, Instant};

use countersign_bot::{Identity, IdentityKind, RequesterChain};
use countersign_gateway::policy::{Policy, PolicyContext};

const ROUNDS: usize = 2_000;

/// pgbench's TPC-B-like script, with `{n}` replaced to make each text distinct.
const STATEMENTS: &[(&str, &str)] = &[
    ("BEGIN", "BEGIN;"),
    ("UPDATE accounts", "UPDATE pgbench_accounts SET abalance = abalance + -{n} WHERE aid = {n};"),
    ("SELECT abalance", "SELECT abalance FROM pgbench_accounts WHERE aid = {n};"),
    ("UPDATE tellers", "UPDATE pgbench_tellers SET tbalance = tbalance + -{n} WHERE tid = {n};"),
    ("UPDATE branches", "UPDATE pgbench_branches SET bbalance = bbalance + -{n} WHERE bid = {n};"),
    ("INSERT history", "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ({n}, 1, {n}, -{n}, CURRENT_TIMESTAMP);"),
    ("END", "END;"),
];

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

fn main() {
    let chain = RequesterChain::single(Identity {
        issuer: "static".into(),
        subject: "bench".into(),
        email: None,
        unverified_email: None,
        kind: IdentityKind::Workload,
        groups: vec![],
    });
    let ctx = PolicyContext {
        connection: "bench",
        requester: &chain,
        db_functions: None,
    };
    println!("{:<18} {:>14} {:>14}", "statement", "uncached", "cached");
    for (label, template) in STATEMENTS {
        // Fresh policy per statement so uncached texts never hit; BEGIN/END have no literal, so
        // their uncached figure uses a cache of capacity 1 alternating with a second text.
        let policy = Policy::builtin().with_cache_capacity(1);
        let mut uncached = Vec::with_capacity(ROUNDS);
        for i in 0..ROUNDS {
            let sql = if template.contains("{n}") {
                template.replace("{n}", &(i + 1).to_string())
            } else if i % 2 == 0 {
                template.to_string()
            } else {
                template.to_lowercase()
            };
            let start = Instant::now();
            std::hint::black_box(policy.evaluate(&ctx, &sql));
            uncached.push(start.elapsed());
        }
        let (hits, _) = policy.cache_stats();
        assert_eq!(hits, 0, "uncached run must not hit the cache");

        let policy = Policy::builtin();
        let sql = template.replace("{n}", "42");
        policy.evaluate(&ctx, &sql);
        let mut cached = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            let start = Instant::now();
            std::hint::black_box(policy.evaluate(&ctx, &sql));
            cached.push(start.elapsed());
        }
        println!(
            "{:<18} {:>11.2} µs {:>11.2} µs",
            label,
            median(uncached).as_secs_f64() * 1e6,
            median(cached).as_secs_f64() * 1e6
        );
    }
}
