//! `paddock bench access`: what authorization and the audit log cost on the write path, how
//! fast a revoked token is refused everywhere, and how fast an audit chain verifies.

use std::time::{Duration, Instant};

use paddock_model::audit::{AuditLog, Entry};
use paddock_testkit::https::{tls_to, ApiConnection};
use serde_json::json;

use super::{ms, percentile, start_cluster_with, write_round};
use crate::output::Failure;

pub async fn run(
    clients: usize,
    duration: Duration,
    rounds: usize,
    revocations: usize,
    records: usize,
) -> Result<(), Failure> {
    println!("bench access: 3 nodes, {clients} clients, {duration:?} per write round, {rounds} rounds per mode");

    // 1. Writes with all of access control, with audit records but no decisions, and with
    // neither; interleaved so drift hits every mode.
    let value = "v".repeat(128);
    let modes = ["full", "audit-only", "none"];
    let mut rates: [Vec<f64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for round in 0..rounds {
        for (m, mode) in modes.iter().enumerate() {
            let args = vec!["--bench-access".to_string(), mode.to_string()];
            let (_dir, mut cluster) = start_cluster_with(3, args).await?;
            let result = write_round(&mut cluster, clients, duration, &value, "any").await?;
            let rate = result["writes_per_sec"].as_f64().unwrap_or(0.0);
            rates[m].push(rate);
            let audit = if *mode == "none" {
                0
            } else {
                let mut client = cluster.client(Duration::from_secs(30))?;
                client
                    .audit_list(paddock_api::pb::AuditListRequest {
                        limit: 1,
                        ..Default::default()
                    })
                    .await?
                    .last_seq
            };
            println!(
                "{}",
                json!({"bench": "access-writes", "round": round + 1, "access": mode,
                       "clients": clients, "audit_records": audit, "result": result})
            );
            cluster.stop_all();
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let (full, audit_only, none) = (mean(&rates[0]), mean(&rates[1]), mean(&rates[2]));
    let cost =
        |with: f64, without: f64| ((without - with) / without.max(1.0) * 1000.0).round() / 10.0;
    println!(
        "{}",
        json!({"bench": "access-writes-summary", "writes_per_sec_full": full.round(),
               "writes_per_sec_audit_only": audit_only.round(), "writes_per_sec_none": none.round(),
               "authorization_cost_percent": cost(full, audit_only),
               "audit_cost_percent": cost(audit_only, none),
               "total_cost_percent": cost(full, none)})
    );

    // 2. Revocation: from the revoke's acknowledgement (committed and applied on the leader)
    // until every node refuses the token.
    let (_dir, mut cluster) = start_cluster_with(3, Vec::new()).await?;
    let mut admin = cluster.client(Duration::from_secs(30))?;
    let tls = tls_to(&cluster.certs.ca_cert())?;
    let mut took = Vec::new();
    for i in 0..revocations {
        let name = format!("revoke-{i}");
        let token = admin.token_create(&name, "viewer", 0, "").await?.token;
        let mut connections = Vec::new();
        for node in &cluster.nodes {
            // Until each node has applied the token (it is new on followers too).
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut api = ApiConnection::connect(&node.api, tls.clone(), &token).await?;
            while api.json("GET", "/api/v1/whoami", None).await?.0 != 200 {
                if Instant::now() > deadline {
                    return Err(Failure::new(
                        1,
                        format!("{} never accepted token {name}", node.name),
                    ));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            connections.push(api);
        }
        admin.token_revoke(&name).await?;
        let acked = Instant::now();
        let mut slowest = Duration::ZERO;
        for api in &mut connections {
            loop {
                let (status, _) = api.json("GET", "/api/v1/whoami", None).await?;
                if status == 401 {
                    break;
                }
                if acked.elapsed() > Duration::from_secs(10) {
                    return Err(Failure::new(
                        1,
                        format!("token {name} still accepted after 10 s"),
                    ));
                }
            }
            slowest = slowest.max(acked.elapsed());
        }
        took.push(slowest);
    }
    took.sort();
    println!(
        "{}",
        json!({"bench": "access-revocation", "tries": took.len(),
               "p50_ms": ms(percentile(&took, 0.5)), "p99_ms": ms(percentile(&took, 0.99)),
               "max_ms": ms(percentile(&took, 1.0))})
    );

    // The cluster's own chain, recomputed by a node through the API.
    let last = admin
        .audit_list(paddock_api::pb::AuditListRequest {
            limit: 1,
            ..Default::default()
        })
        .await?
        .last_seq;
    let t = Instant::now();
    let checked = admin.audit_verify(0).await?;
    println!(
        "{}",
        json!({"bench": "access-verify-node", "records": checked.records, "last_seq": last,
               "broken_at": checked.broken_at, "ms": ms(t.elapsed())})
    );
    cluster.stop_all();

    // 3. Verification of a chain of `records` (in process: the model's code every node runs;
    // a cluster would need minutes of writes to hold a million records).
    let mut log = AuditLog::default();
    let t = Instant::now();
    for i in 0..records {
        log.append(
            i as u64,
            Entry {
                who: "alice".into(),
                via: "certificate (operator)".into(),
                from: "10.0.0.7:53122".into(),
                action: "vm.migrate".into(),
                target: format!("vm-{:06}", i % 10_000),
                outcome: "ok".into(),
                request: format!("{i:016x}"),
            },
            records,
            0,
        );
    }
    let built = t.elapsed();
    let t = Instant::now();
    let verified = log
        .verify(None)
        .map_err(|b| Failure::new(1, format!("chain broken at {}", b.seq)))?;
    let verify = t.elapsed();
    println!(
        "{}",
        json!({"bench": "access-verify", "records": verified.records,
               "append_ms": ms(built), "verify_ms": ms(verify),
               "verify_records_per_sec": (verified.records as f64 / verify.as_secs_f64()).round()})
    );
    Ok(())
}
