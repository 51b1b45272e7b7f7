//! `paddock bench`: benchmarks on a fresh local cluster of real `paddockd` processes (gRPC,
//! mutual TLS, fsync on). Figures go to docs/benchmarks.md; nothing here asserts a time.

mod access;
mod api;
mod libvirt;
mod migration;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Subcommand;
use paddock_api::client::Client;
use serde_json::json;

use crate::output::{parse_duration, Failure};
use paddock_testkit::local_cluster::{find_paddockd, LocalCluster, LocalClusterSpec};

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// The HTTPS API and dashboard with many VMs and nodes: list latency from a follower, the
    /// dashboard's first page, SSE delivery to many followers, writes/s HTTPS vs gRPC.
    Api {
        #[arg(long, default_value_t = 10_000)]
        vms: usize,
        /// Nodes registered besides the 3 paddockd (silent: they show as down).
        #[arg(long, default_value_t = 97)]
        extra_nodes: usize,
        /// SSE clients following the event stream.
        #[arg(long, default_value_t = 50)]
        followers: usize,
        /// Concurrent writers for the HTTPS vs gRPC comparison.
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Measured time of each write round.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
    },
    /// Access control's cost and speed: writes/s at 64 clients with authorization and audit
    /// full, audit-only and none (paddockd --bench-access, interleaved rounds), token
    /// revocation seen by every node, and audit-chain verification of 1,000,000 records.
    Access {
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// Measured time of each write round.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        /// Rounds of each mode (on, off, on, off, ...).
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Token revocations timed.
        #[arg(long, default_value_t = 20)]
        revocations: usize,
        /// Audit records verified in process.
        #[arg(long, default_value_t = 1_000_000)]
        records: usize,
    },
    /// Committed writes/s and latency at several client counts.
    Writes {
        /// Concurrent clients per round, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
        clients: Vec<usize>,
        /// Measured time per round (after 1 s of warm-up).
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        duration: Duration,
        #[arg(long, default_value_t = 256)]
        value_size: usize,
        /// Storage engine of the nodes: redb or sled.
        #[arg(long, default_value = "redb")]
        storage: String,
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Which nodes the clients talk to: `any` (all endpoints, starting at a random one, so
        /// most writes are forwarded by a follower) or `leader` (a leader-aware client).
        #[arg(long, default_value = "any", value_parser = ["any", "leader"])]
        target: String,
    },
    /// kill -9 the leader under load; time until the first successful write. Repeated.
    Failover {
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[arg(long, default_value = "redb")]
        storage: String,
    },
    /// VM creates placed and running on memvm nodes; then `vm list` latency from a follower and
    /// node memory with many VMs in the state.
    Vms {
        /// VMs created running (each a memvm guest process of 1 MiB).
        #[arg(long, default_value_t = 2_000)]
        vms: usize,
        /// VMs in the state for the list and memory figures (the extra ones created stopped).
        #[arg(long, default_value_t = 10_000)]
        list_vms: usize,
        #[arg(long, default_value_t = 64)]
        clients: usize,
        /// VMs per create request (CreateMany, one log entry each); 1: one request per VM.
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// `vm list` calls timed.
        #[arg(long, default_value_t = 100)]
        lists: usize,
    },
    /// kill -9 a host running HA VMs; time until all of them run elsewhere. Repeated.
    #[command(name = "failover-vms")]
    FailoverVms {
        #[arg(long, default_value_t = 20)]
        vms: usize,
        #[arg(long, default_value_t = 20)]
        runs: usize,
    },
    /// Live migrations of memvm guests (idle, busy, flat out, bandwidth-limited, drain),
    /// next to raw loopback TCP and TLS. Build with --release first.
    Migration {
        /// Migrations per scenario (back and forth).
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Running 512 MiB guests on the drained node.
        #[arg(long, default_value_t = 20)]
        drain_vms: usize,
        /// Only this scenario.
        #[arg(long, value_parser = ["idle", "busy", "flat-out", "bandwidth", "drain"])]
        only: Option<String>,
    },
    /// Paddock on real QEMU next to virsh in the same run: VM start, live migration (pre-copy,
    /// post-copy), HA recovery of a killed host, fencing after paddockd-only kills. Root,
    /// QEMU and libvirt (testkit/libvirt/install.sh), paddockd built with the libvirt feature.
    Libvirt {
        /// Runs per scenario (fencing: twice as many kills).
        #[arg(long, default_value_t = 10)]
        runs: usize,
        #[arg(long, value_parser = ["create", "migration", "ha", "fencing"])]
        only: Option<String>,
        /// MiB the migrated 512 MiB guest rewrites per round (and verifies).
        #[arg(long, default_value_t = 256)]
        rewrite_mib: u32,
    },
    /// Node memory with many keys, and the time a restarted node takes to be ready.
    State {
        #[arg(long, default_value_t = 100_000)]
        keys: usize,
        #[arg(long, default_value_t = 256)]
        value_size: usize,
        #[arg(long, default_value = "redb")]
        storage: String,
    },
}

pub async fn run(command: BenchCommand) -> Result<(), Failure> {
    match command {
        BenchCommand::Api {
            vms,
            extra_nodes,
            followers,
            clients,
            duration,
        } => api::run(vms, extra_nodes, followers, clients, duration).await,
        BenchCommand::Writes {
            clients,
            duration,
            value_size,
            storage,
            nodes,
            target,
        } => writes(&clients, duration, value_size, &storage, nodes, &target).await,
        BenchCommand::Failover { runs, storage } => failover(runs, &storage).await,
        BenchCommand::Access {
            clients,
            duration,
            rounds,
            revocations,
            records,
        } => access::run(clients, duration, rounds, revocations, records).await,
        BenchCommand::State {
            keys,
            value_size,
            storage,
        } => state(keys, value_size, &storage).await,
        BenchCommand::FailoverVms { vms, runs } => failover_vms(vms, runs).await,
        BenchCommand::Libvirt {
            runs,
            only,
            rewrite_mib,
        } => libvirt::run(runs, only, rewrite_mib).await,
        BenchCommand::Migration {
            runs,
            drain_vms,
            only,
        } => migration::run(runs, drain_vms, only).await,
        BenchCommand::Vms {
            vms,
            list_vms,
            clients,
            batch,
            lists,
        } => self::vms(vms, list_vms, clients, batch.max(1), lists).await,
    }
}

/// Creates `names` with `clients` concurrent clients; returns how many failed.
async fn create_vms(
    cluster: &LocalCluster,
    names: Vec<String>,
    clients: usize,
    batch: usize,
    stopped: bool,
) -> Result<usize, Failure> {
    let batches: Arc<Vec<Vec<String>>> =
        Arc::new(names.chunks(batch).map(<[String]>::to_vec).collect());
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut client = cluster.client(Duration::from_secs(30))?;
        let batches = batches.clone();
        tasks.push(tokio::spawn(async move {
            let spec = paddock_api::pb::VmSpec {
                cpus: 1,
                memory_mib: 1,
                ..Default::default()
            };
            let mut failed = 0;
            for names in batches.iter().skip(c).step_by(clients) {
                let ok = if names.len() == 1 {
                    client
                        .vm_create(&names[0], spec.clone(), stopped)
                        .await
                        .is_ok()
                } else {
                    let vms = names.iter().map(|n| (n.clone(), spec.clone())).collect();
                    client.vm_create_many(vms, stopped).await.is_ok()
                };
                if !ok {
                    failed += names.len();
                }
            }
            failed
        }));
    }
    let mut failed = 0;
    for t in tasks {
        failed += t.await?;
    }
    Ok(failed)
}

async fn vms(
    vms: usize,
    list_vms: usize,
    clients: usize,
    batch: usize,
    lists: usize,
) -> Result<(), Failure> {
    let (_dir, mut cluster) = start_cluster_with(
        3,
        [
            "--cpus",
            "1000000",
            "--memory",
            "1000TiB",
            "--memvm-working-set",
            "1MiB",
            "--memvm-dirty-rate",
            "10",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await?;
    let mut watcher = cluster.client_of(
        vec![cluster.nodes[leader].address.clone()],
        Duration::from_secs(30),
    )?;
    while watcher.node_list(true).await?.len() < 3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("bench vms: 3 nodes (memvm), {vms} VMs created running by {clients} clients, {batch} per request");

    let started = Instant::now();
    let names: Vec<String> = (0..vms).map(|i| format!("vm-{i:06}")).collect();
    let failed = create_vms(&cluster, names, clients, batch, false).await?;
    let acked = started.elapsed();
    let (mut placed_at, mut running_at) = (None, None);
    while running_at.is_none() && started.elapsed() < Duration::from_secs(600) {
        let list = watcher.vm_list(true).await?;
        if placed_at.is_none() && list.iter().filter(|v| !v.node.is_empty()).count() >= vms - failed
        {
            placed_at = Some(started.elapsed());
        }
        if list.iter().filter(|v| v.state == "running").count() >= vms - failed {
            running_at = Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rate = |d: Option<Duration>| d.map(|d| ((vms - failed) as f64 / d.as_secs_f64()).round());
    println!(
        "{}",
        json!({"bench": "vm-creates", "vms": vms, "batch": batch, "failed": failed,
               "acked_s": ms(acked) / 1000.0, "acked_per_s": rate(Some(acked)),
               "all_placed_s": placed_at.map(|d| ms(d) / 1000.0), "placed_per_s": rate(placed_at),
               "all_running_s": running_at.map(|d| ms(d) / 1000.0), "running_per_s": rate(running_at)})
    );

    // More VMs, created stopped (no guests), for the list and memory figures.
    let extra: Vec<String> = (vms..list_vms.max(vms))
        .map(|i| format!("vm-{i:06}"))
        .collect();
    let failed_extra = create_vms(&cluster, extra, clients, 500, true).await?;
    let follower = (0..cluster.nodes.len()).find(|i| *i != leader).unwrap_or(0);
    let mut from_follower = cluster.client_of(
        vec![cluster.nodes[follower].address.clone()],
        Duration::from_secs(30),
    )?;
    let mut results = Vec::new();
    for stale in [false, true] {
        let mut took = Vec::new();
        let mut count = 0;
        for _ in 0..lists {
            let t = Instant::now();
            count = from_follower.vm_list(stale).await?.len();
            took.push(t.elapsed());
        }
        took.sort();
        results.push(json!({"stale": stale, "vms_listed": count,
            "p50_ms": ms(percentile(&took, 0.5)), "p99_ms": ms(percentile(&took, 0.99))}));
    }
    println!(
        "{}",
        json!({"bench": "vm-list", "from": cluster.nodes[follower].name, "failed_creates": failed_extra, "calls": lists, "results": results})
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let memory = cluster_memory(&cluster);
    println!(
        "{}",
        json!({"bench": "vm-memory", "vms_in_state": list_vms.max(vms), "memory": memory})
    );
    cluster.stop_all();
    Ok(())
}

async fn start_cluster(
    nodes: usize,
    storage: &str,
) -> Result<(tempfile::TempDir, LocalCluster), Failure> {
    start_cluster_with(nodes, vec!["--storage".into(), storage.into()]).await
}

/// A started local cluster of `nodes` with `extra_args` on every node, in a temporary dir.
async fn start_cluster_with(
    nodes: usize,
    extra_args: Vec<String>,
) -> Result<(tempfile::TempDir, LocalCluster), Failure> {
    let dir = tempfile::Builder::new()
        .prefix("paddock-bench-")
        .tempdir()?;
    let spec = LocalClusterSpec {
        nodes,
        base_port: None,
        extra_args,
        hosts: Vec::new(),
    };
    let mut cluster = LocalCluster::prepare(dir.path(), &spec, find_paddockd()?)?;
    cluster.start_all()?;
    cluster.wait_for_leader(Duration::from_secs(30)).await?;
    Ok((dir, cluster))
}

async fn put(client: &mut Client, key: String, value: String) -> bool {
    client.kv_put(&key, &value).await.is_ok()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e5).round() / 100.0
}

async fn writes(
    levels: &[usize],
    duration: Duration,
    value_size: usize,
    storage: &str,
    nodes: usize,
    target: &str,
) -> Result<(), Failure> {
    let (_dir, mut cluster) = start_cluster(nodes, storage).await?;
    let value = "v".repeat(value_size);
    println!("bench writes: {nodes} nodes, storage {storage}, {value_size}-byte values, {duration:?} per round");
    for &clients in levels {
        let round = write_round(&mut cluster, clients, duration, &value, target).await?;
        let mut result = json!({
            "bench": "writes", "storage": storage, "nodes": nodes, "clients": clients, "target": target,
            "value_bytes": value_size, "seconds": duration.as_secs_f64(),
        });
        if let (Some(out), Some(fields)) = (result.as_object_mut(), round.as_object()) {
            out.extend(fields.clone());
        }
        println!("{result}");
    }
    cluster.stop_all();
    Ok(())
}

/// One round of KV puts by `clients` concurrent clients for `duration` (after 1 s of warm-up):
/// writes, errors, writes/s, latency percentiles, elections during the round.
async fn write_round(
    cluster: &mut LocalCluster,
    clients: usize,
    duration: Duration,
    value: &str,
    target: &str,
) -> Result<serde_json::Value, Failure> {
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await?;
    let term_before = cluster.status_of(leader).await?.term;
    let warmup_end = Instant::now() + Duration::from_secs(1);
    let end = warmup_end + duration;
    let mut tasks = Vec::new();
    for task in 0..clients {
        let mut client = match target {
            "leader" => cluster.client_of(
                vec![cluster.nodes[leader].address.clone()],
                Duration::from_secs(10),
            )?,
            _ => cluster.client(Duration::from_secs(10))?,
        };
        let value = value.to_string();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            let mut n = 0u64;
            while Instant::now() < end {
                n += 1;
                let started = Instant::now();
                let ok = put(
                    &mut client,
                    format!("bench/{task}/{}", n % 1000),
                    value.clone(),
                )
                .await;
                if started >= warmup_end {
                    if ok {
                        latencies.push(started.elapsed());
                    } else {
                        errors += 1;
                    }
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (l, e) = task.await?;
        latencies.extend(l);
        errors += e;
    }
    latencies.sort();
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await?;
    let term_after = cluster.status_of(leader).await?.term;
    let rate = latencies.len() as f64 / duration.as_secs_f64();
    Ok(json!({
        "writes": latencies.len(), "errors": errors,
        "writes_per_sec": rate.round(),
        "p50_ms": ms(percentile(&latencies, 0.50)),
        "p99_ms": ms(percentile(&latencies, 0.99)),
        "max_ms": ms(percentile(&latencies, 1.0)),
        "elections_during_round": term_after.saturating_sub(term_before),
    }))
}

async fn failover(runs: usize, storage: &str) -> Result<(), Failure> {
    let (_dir, mut cluster) = start_cluster(3, storage).await?;
    println!("bench failover: 3 nodes, storage {storage}, {runs} runs; kill -9 of the leader under a steady write load");
    // Successful writes: (start, end).
    let log: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let mut client = cluster.client(Duration::from_secs(30))?;
        let log = log.clone();
        let stop = stop.clone();
        writers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let started = Instant::now();
                if put(&mut client, format!("failover/{w}"), n.to_string()).await {
                    if let Ok(mut log) = log.lock() {
                        log.push((started, Instant::now()));
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    let mut times = Vec::new();
    for run in 1..=runs {
        tokio::time::sleep(Duration::from_secs(3)).await;
        let leader = cluster.wait_for_leader(Duration::from_secs(30)).await?;
        let name = cluster.nodes[leader].name.clone();
        let killed_at = Instant::now();
        cluster.kill(leader);
        let recovered = loop {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let first = log.lock().ok().and_then(|log| {
                log.iter()
                    .filter(|(s, _)| *s >= killed_at)
                    .map(|(_, e)| *e)
                    .min()
            });
            if let Some(end) = first {
                break end;
            }
            if killed_at.elapsed() > Duration::from_secs(30) {
                return Err(Failure::new(
                    1,
                    "no write succeeded within 30 s of killing the leader",
                ));
            }
        };
        let took = recovered - killed_at;
        times.push(took);
        println!(
            "{}",
            json!({"bench": "failover", "run": run, "killed": name, "ms": ms(took)})
        );
        cluster.start(leader)?;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }
    times.sort();
    println!(
        "{}",
        json!({"bench": "failover", "runs": runs, "median_ms": ms(percentile(&times, 0.5)),
               "min_ms": ms(times[0]), "max_ms": ms(times[times.len() - 1])})
    );
    cluster.stop_all();
    Ok(())
}

/// Resident and peak memory of every running node, in MiB.
fn cluster_memory(cluster: &LocalCluster) -> Vec<serde_json::Value> {
    cluster
        .nodes
        .iter()
        .filter_map(|node| {
            let (rss, peak) = memory_mib(node.child.as_ref()?.id());
            Some(json!({"node": node.name, "rss_mib": rss, "peak_rss_mib": peak}))
        })
        .collect()
}

/// Resident and peak memory of a process, in MiB, from /proc.
fn memory_mib(pid: u32) -> (f64, f64) {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| (kb / 1024.0 * 10.0).round() / 10.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn state(keys: usize, value_size: usize, storage: &str) -> Result<(), Failure> {
    let (_dir, mut cluster) = start_cluster(3, storage).await?;
    println!("bench state: 3 nodes, storage {storage}, {keys} keys of {value_size} bytes");
    let value = "s".repeat(value_size);
    let loaded = Instant::now();
    let writers = 64;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut client = cluster.client(Duration::from_secs(30))?;
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut failed = 0;
            for i in (w..keys).step_by(writers) {
                if !put(&mut client, format!("state/{i:08}"), value.clone()).await {
                    failed += 1;
                }
            }
            failed
        }));
    }
    let mut failed = 0;
    for t in tasks {
        failed += t.await?;
    }
    let load_secs = loaded.elapsed().as_secs_f64();
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await?;
    let target = cluster.status_of(leader).await?.applied_index;
    // Let followers apply everything and the allocator settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let memory = cluster_memory(&cluster);
    println!(
        "{}",
        json!({"bench": "state", "keys": keys, "failed_writes": failed, "load_seconds": (load_secs * 10.0).round() / 10.0, "memory": memory})
    );

    // Restart a follower: time until it serves its own status with everything applied.
    let follower = (0..cluster.nodes.len()).find(|i| *i != leader).unwrap_or(0);
    cluster.terminate(follower, Duration::from_secs(10));
    let started = Instant::now();
    cluster.start(follower)?;
    let ready = loop {
        if let Ok(status) = cluster.status_of(follower).await {
            if status.applied_index >= target && !status.leader.is_empty() {
                break started.elapsed();
            }
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err(Failure::new(
                1,
                "the restarted node was not ready within 60 s",
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let (rss, peak) = cluster.nodes[follower]
        .child
        .as_ref()
        .map_or((0.0, 0.0), |c| memory_mib(c.id()));
    println!(
        "{}",
        json!({"bench": "restart", "node": cluster.nodes[follower].name, "keys": keys,
               "ready_ms": ms(ready), "rss_after_restart_mib": rss, "peak_rss_mib": peak})
    );
    cluster.stop_all();
    Ok(())
}

/// One 4-node cluster; each run puts `vms` HA VMs on one host (by preference), kills that host
/// with its guests, and times until every VM runs elsewhere; the host then comes back.
async fn failover_vms(vms: usize, runs: usize) -> Result<(), Failure> {
    let (_dir, mut cluster) = start_cluster_with(
        4,
        [
            "--cpus",
            "64",
            "--memory",
            "64GiB",
            "--memvm-working-set",
            "1MiB",
        ]
        .map(String::from)
        .to_vec(),
    )
    .await?;
    println!("bench failover-vms: 4 nodes (memvm), {vms} HA VMs on the killed host, {runs} runs, default timings");
    let mut took = Vec::new();
    for run in 0..runs {
        let leader = cluster.wait_for_leader(Duration::from_secs(30)).await?;
        // The victim is never the leader: this measures host failure, not leader failover.
        let victim = (leader + 1 + run % 3) % cluster.nodes.len();
        let victim_name = cluster.nodes[victim].name.clone();
        let others: Vec<String> = (0..cluster.nodes.len())
            .filter(|i| *i != victim)
            .map(|i| cluster.nodes[i].address.clone())
            .collect();
        let mut client = cluster.client_of(others, Duration::from_secs(30))?;
        while client
            .node_list(false)
            .await?
            .iter()
            .filter(|n| n.state == "ready")
            .count()
            < 4
        {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let names: Vec<String> = (0..vms).map(|i| format!("r{run}-ha-{i}")).collect();
        let batch = names
            .iter()
            .map(|n| {
                (
                    n.clone(),
                    paddock_api::pb::VmSpec {
                        cpus: 1,
                        memory_mib: 16,
                        ha: true,
                        prefer: vec![victim_name.clone()],
                        ..Default::default()
                    },
                )
            })
            .collect();
        client.vm_create_many(batch, false).await?;
        let ours = |list: &[paddock_api::pb::VmSummary], on_victim: bool| {
            list.iter()
                .filter(|v| v.name.starts_with(&format!("r{run}-")))
                .filter(|v| v.state == "running" && (v.node == victim_name) == on_victim)
                .count()
        };
        let started = Instant::now();
        while ours(&client.vm_list(false).await?, true) < vms {
            if started.elapsed() > Duration::from_secs(60) {
                return Err(Failure::new(
                    1,
                    "the VMs did not start on the victim within 60 s",
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        cluster.kill(victim);
        let killed = Instant::now();
        loop {
            if ours(&client.vm_list(true).await?, false) == vms {
                break;
            }
            if killed.elapsed() > Duration::from_secs(60) {
                return Err(Failure::new(1, "the VMs did not run elsewhere within 60 s"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let elapsed = killed.elapsed();
        took.push(elapsed);
        println!(
            "{}",
            json!({"run": run, "killed": victim_name, "all_running_elsewhere_ms": ms(elapsed)})
        );
        // Clean up and bring the host back for the next run.
        for name in &names {
            let _ = client.vm_delete(name).await;
        }
        cluster.start(victim)?;
    }
    took.sort();
    println!(
        "{}",
        json!({"bench": "failover-vms", "vms": vms, "runs": runs,
               "median_ms": ms(percentile(&took, 0.5)), "worst_ms": ms(took.last().copied().unwrap_or_default()),
               "best_ms": ms(took.first().copied().unwrap_or_default())})
    );
    cluster.stop_all();
    Ok(())
}
