//! Benchmark 7, audit (issue 12): verifying a session's hash-chained audit trail
//! (`agentd::caps::audit`) is pure code, so it runs anywhere (`agentd-bench audit` on the
//! host, or as part of the suite in the VM). 1M records of a realistic size (a call record,
//! ~150 bytes of JSON) are chained, then verified; the baseline in the same run is hashing
//! the same bytes without the chain's checks, so the ratio shows what verification adds.

use std::time::Instant;

use agentd::caps::audit::{Record, verify};
use anyhow::Result;
use serde_json::json;

use crate::report::{Section, Table, Target};

fn chain(n: u64) -> Vec<Record> {
    let mut out: Vec<Record> = Vec::with_capacity(n as usize);
    for i in 0..n {
        let body = format!(
            "{{\"n\":{i},\"argv\":[\"cargo\",\"test\",\"-q\"],\"state\":\"exited\",\"exit_code\":0,\"resource\":\"net:api.github.com:443\"}}"
        );
        let last = out.last().map(|r| (r.seq, r.hash.as_str()));
        let r = Record::next("bench0session", last, 1_700_000_000_000 + i, "call", body);
        out.push(r);
    }
    out
}

pub fn run(quick: bool) -> Result<Section> {
    let started = Instant::now();
    let n: u64 = if quick { 100_000 } else { 1_000_000 };
    let t = Instant::now();
    let c = chain(n);
    let build_s = t.elapsed().as_secs_f64();
    let head = c.last().map(|r| (r.seq, r.hash.as_str()));
    let t = Instant::now();
    let v = verify("bench0session", &c, head);
    let verify_s = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        v.ok,
        "the benchmark's own chain does not verify: {:?}",
        v.problem
    );
    // Baseline: the same record bytes hashed once each, no chain checks.
    let t = Instant::now();
    let mut x = 0u8;
    for r in &c {
        let h = agentd::caps::audit::hash(r.seq, r.at_ms, &r.kind, &r.body, &r.prev);
        x ^= h.as_bytes()[0];
    }
    let base_s = t.elapsed().as_secs_f64();
    std::hint::black_box(x);
    let per_1m = verify_s * 1_000_000.0 / n as f64;
    let mut tab = Table::new(
        "Audit chain verification",
        &["what", "records", "seconds", "per 1M records"],
    );
    tab.row(vec![
        "build (append)".into(),
        n.to_string(),
        format!("{build_s:.2}"),
        format!("{:.2} s", build_s * 1e6 / n as f64),
    ]);
    tab.row(vec![
        "verify".into(),
        n.to_string(),
        format!("{verify_s:.2}"),
        format!("{per_1m:.2} s"),
    ]);
    tab.row(vec![
        "baseline: hash only".into(),
        n.to_string(),
        format!("{base_s:.2}"),
        format!("{:.2} s", base_s * 1e6 / n as f64),
    ]);
    Ok(Section {
        name: "audit".into(),
        title: "Audit trail verification".into(),
        tables: vec![tab],
        targets: vec![Target {
            what: "verify 1M audit records".into(),
            goal: "≤ 5 s".into(),
            measured: format!("{per_1m:.2} s (verify / hash-only baseline {:.2}x)", verify_s / base_s.max(1e-9)),
            met: Some(per_1m <= 5.0),
        }],
        notes: vec![
            "Records are ~150-byte JSON call records; verification recomputes each SHA-256 and checks seq, prev link and the head.".into(),
            "Reading the records from SQLite is not included (the journal's select is the same for any consumer).".into(),
        ],
        files: Vec::new(),
        data: json!({"records": n, "build_s": build_s, "verify_s": verify_s, "hash_only_s": base_s}),
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}
