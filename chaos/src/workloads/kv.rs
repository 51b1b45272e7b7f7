//! The KV register workload: clients reading, writing and compare-and-swapping short-lived
//! keys through any node, recording every invocation and outcome; final reads after healing.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use paddock_api::client::{Client, ClientError};
use paddock_testkit::local_cluster::LocalCluster;
use serde_json::{json, Value};

use crate::check::FINAL_READERS;
use crate::history::{EventType, Function};
use crate::recorder::Recorder;

/// Keys live for a few seconds each, so every key's history stays small enough to check.
pub(crate) fn key_for(recorder: &Recorder, rng: &mut fastrand::Rng) -> String {
    let generation = recorder.start.elapsed().as_secs() / 5;
    format!("chaos/g{generation}/k{}", rng.u8(0..4))
}

pub(crate) async fn kv_worker(
    recorder: Arc<Recorder>,
    processes: Arc<AtomicU64>,
    endpoints: Vec<(String, String)>,
    tls: tonic::transport::ClientTlsConfig,
    seed: u64,
    end: Instant,
) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut last_values: BTreeMap<String, String> = BTreeMap::new();
    'process: while Instant::now() < end {
        let process = processes.fetch_add(1, Ordering::Relaxed);
        let (node, address) = endpoints[rng.usize(..endpoints.len())].clone();
        let Ok(mut client) = Client::new(&[address], tls.clone(), Duration::from_millis(1500))
        else {
            return;
        };
        let mut seq = 0u64;
        while Instant::now() < end {
            seq += 1;
            let key = key_for(&recorder, &mut rng);
            let value = format!("{process}-{seq}");
            let roll = rng.u8(0..10);
            let outcome = if roll < 4 {
                recorder.event(
                    EventType::Invoke,
                    process,
                    Function::Read,
                    &key,
                    Value::Null,
                    &node,
                );
                match client.kv_get(&key, false).await {
                    Ok(seen) => {
                        if let Some(v) = &seen {
                            last_values.insert(key.clone(), v.clone());
                        }
                        recorder.event(
                            EventType::Ok,
                            process,
                            Function::Read,
                            &key,
                            json!(seen),
                            &node,
                        );
                        true
                    }
                    Err(e) => record_error(
                        &recorder,
                        process,
                        Function::Read,
                        &key,
                        Value::Null,
                        &node,
                        &e,
                    ),
                }
            } else if roll < 8 {
                recorder.event(
                    EventType::Invoke,
                    process,
                    Function::Write,
                    &key,
                    json!(value),
                    &node,
                );
                match client.kv_put(&key, &value).await {
                    Ok(_) => {
                        last_values.insert(key.clone(), value.clone());
                        recorder.event(
                            EventType::Ok,
                            process,
                            Function::Write,
                            &key,
                            json!(value),
                            &node,
                        );
                        true
                    }
                    Err(e) => record_error(
                        &recorder,
                        process,
                        Function::Write,
                        &key,
                        json!(value),
                        &node,
                        &e,
                    ),
                }
            } else {
                let expected = last_values
                    .get(&key)
                    .cloned()
                    .unwrap_or_else(|| format!("{}-1", rng.u64(..process.max(1))));
                let pair = json!([expected, value]);
                recorder.event(
                    EventType::Invoke,
                    process,
                    Function::Cas,
                    &key,
                    pair.clone(),
                    &node,
                );
                match client.kv_cas(&key, Some(&expected), &value).await {
                    Ok(outcome) if outcome.swapped => {
                        last_values.insert(key.clone(), value.clone());
                        recorder.event(EventType::Ok, process, Function::Cas, &key, pair, &node);
                        true
                    }
                    Ok(_) => {
                        recorder.event(EventType::Fail, process, Function::Cas, &key, pair, &node);
                        true
                    }
                    Err(e) => {
                        record_error(&recorder, process, Function::Cas, &key, pair, &node, &e)
                    }
                }
            };
            if !outcome {
                // Unknown outcome: this process is over; continue as a new one.
                continue 'process;
            }
            tokio::time::sleep(Duration::from_millis(rng.u64(5..30))).await;
        }
    }
}

/// Records a failed call: `fail` when the server refused it before doing anything, `info`
/// (unknown) otherwise. Returns whether the process may go on.
pub(crate) fn record_error(
    recorder: &Recorder,
    process: u64,
    f: Function,
    key: &str,
    value: Value,
    node: &str,
    error: &ClientError,
) -> bool {
    use tonic::Code;
    let certain = matches!(
        error.code(),
        Some(
            Code::InvalidArgument
                | Code::PermissionDenied
                | Code::FailedPrecondition
                | Code::Unauthenticated
        )
    );
    if certain {
        recorder.event(EventType::Fail, process, f, key, value, node);
        true
    } else {
        recorder.event(EventType::Info, process, f, key, value, node);
        false
    }
}

pub(crate) async fn final_reads(
    cluster: &LocalCluster,
    recorder: &Recorder,
    out: &Path,
) -> anyhow::Result<()> {
    if let Ok(mut history) = recorder.history.lock() {
        history.flush()?;
    }
    let text = std::fs::read_to_string(out.join("history.jsonl"))?;
    let keys: std::collections::BTreeSet<String> = crate::history::parse(&text)?
        .into_iter()
        .map(|e| e.key)
        .collect();
    let mut client = cluster.client(Duration::from_secs(30))?;
    for (i, key) in keys.into_iter().enumerate() {
        // One process per key: a process runs one operation at a time.
        let process = FINAL_READERS + i as u64;
        recorder.event(
            EventType::Invoke,
            process,
            Function::Read,
            &key,
            Value::Null,
            "final",
        );
        let seen = client.kv_get(&key, false).await?;
        recorder.event(
            EventType::Ok,
            process,
            Function::Read,
            &key,
            json!(seen),
            "final",
        );
    }
    Ok(())
}
