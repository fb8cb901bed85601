//! CPU cost of masking the `masking` bench's 1,000-row × 10-column result, in process and without
//! PostgreSQL: RowDescription and DataRow frames are built once and fed to a [`WireMasker`] the way the
//! relay does. Stable under load when run with `valgrind --tool=callgrind` (instruction counts).
//! Run: `cargo bench -p countersign-gateway --bench masking_rows`.
//!
//! `MASK_ROWS_ONLY=<label substring>` runs only matching rule sets; `MASK_ROWS_ROUNDS=<n>` sets the rounds.
//! "fresh" starts a new session (cold per-session caches) for every result; "reused" keeps one session,
//! as a client repeating a query does.

use countersign_gateway::masking::stream::FrameAction;
use countersign_gateway::masking::{Masker, MaskingConfig, WireMasker};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The same rule sets as the `masking` bench.
const RULE_SETS: &[(&str, &str)] = &[
    ("columns (keep_last)", "[[rules]]\ncolumns = [\"*email*\", \"ssn\"]\nstyle = \"keep_last\""),
    ("all detectors", "[[rules]]\ndetect = [\"email\", \"phone\", \"card\", \"iban\", \"ssn\", \"jwt\", \"api_key\", \"private_key\", \"ipv4\", \"ipv6\"]\nstyle = \"partial\""),
    ("columns (hash)", "[[rules]]\ncolumns = [\"*email*\", \"ssn\"]\nstyle = \"hash\""),
];

const COLUMNS: [&str; 10] = [
    "id", "email", "ssn", "note", "token", "address", "amount", "created", "card", "filler",
];

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut f = vec![tag];
    f.extend_from_slice(&(4 + body.len() as i32).to_be_bytes());
    f.extend_from_slice(body);
    f
}

fn row_description(binary: bool) -> Vec<u8> {
    let mut b = (COLUMNS.len() as i16).to_be_bytes().to_vec();
    for (i, name) in COLUMNS.iter().enumerate() {
        b.extend_from_slice(name.as_bytes());
        b.push(0);
        // A table's columns, as in the `masking` bench (a computed column, table OID 0, would be
        // redacted whole under column rules when no statement says what it derives from).
        b.extend_from_slice(&16_384u32.to_be_bytes()); // table oid
        b.extend_from_slice(&(i as i16 + 1).to_be_bytes()); // attnum
        b.extend_from_slice(&(if i == 0 { 23u32 } else { 25 }).to_be_bytes());
        b.extend_from_slice(&(-1i16).to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.extend_from_slice(&i16::from(binary).to_be_bytes());
    }
    frame(b'T', &b)
}

/// The bench table's row `g` (see benches/masking.rs).
fn data_row(g: u32, binary: bool) -> Vec<u8> {
    let digest = Sha256::digest(g.to_string().as_bytes());
    let values: Vec<Vec<u8>> = vec![
        if binary {
            (g as i32).to_be_bytes().to_vec()
        } else {
            g.to_string().into_bytes()
        },
        format!("user{g}@example.com").into_bytes(),
        format!("{:0>3}-45-6789", g.to_string().get(..3).unwrap_or_default()).into_bytes(),
        format!("note number {g} about order {}", g * 7).into_bytes(),
        hex::encode(&digest[..16]).into_bytes(),
        format!("Grüße aus Köln, Straße {g}").into_bytes(),
        (g * 1000).to_string().into_bytes(),
        b"2026-05-09 21:35:35.123456+00".to_vec(),
        if g.is_multiple_of(10) {
            b"4111 1111 1111 1111".to_vec()
        } else {
            b"none".to_vec()
        },
        vec![b'x'; 40],
    ];
    let mut b = (values.len() as i16).to_be_bytes().to_vec();
    for v in values {
        b.extend_from_slice(&(v.len() as i32).to_be_bytes());
        b.extend_from_slice(&v);
    }
    frame(b'D', &b)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Masks every row once; returns the fields masked.
fn mask_result(w: &mut WireMasker, description: &[u8], rows: &[Vec<u8>]) -> u64 {
    assert_eq!(w.on_backend(b'T', description, None), FrameAction::Pass);
    for row in rows {
        match w.on_backend(b'D', row, None) {
            FrameAction::Pass => {}
            FrameAction::Replace => w.out.clear(),
            other => panic!("unexpected {other:?}"),
        }
    }
    w.take_masked()
}

fn main() {
    let only = std::env::var("MASK_ROWS_ONLY").unwrap_or_default();
    let rounds: usize = std::env::var("MASK_ROWS_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(200);
    println!("1,000 rows x 10 columns, in-process masking only, median of {rounds} results");
    for binary in [false, true] {
        let description = row_description(binary);
        let rows: Vec<Vec<u8>> = (1..=1000).map(|g| data_row(g, binary)).collect();
        for (label, rules) in RULE_SETS {
            if !label.contains(only.as_str()) {
                continue;
            }
            let cfg: MaskingConfig = toml::from_str(rules).expect("bench rules parse");
            let masker =
                Arc::new(Masker::new(&cfg, Some(b"bench-key")).expect("bench rules compile"));
            for reuse in [false, true] {
                let mut session = WireMasker::new(masker.clone());
                let mut samples = Vec::with_capacity(rounds);
                let mut masked = 0;
                for _ in 0..rounds {
                    if !reuse {
                        session = WireMasker::new(masker.clone());
                    }
                    let start = Instant::now();
                    masked = mask_result(&mut session, &description, &rows);
                    samples.push(start.elapsed());
                }
                println!(
                    "{:7} {label:20} {:7} {:>9.2?} per result ({masked} fields masked)",
                    if binary { "binary" } else { "text" },
                    if reuse { "reused" } else { "fresh" },
                    median(samples),
                );
            }
        }
    }
}
