//! One chaos run: a cluster of real `paddockd` processes behind fault proxies, the workloads
//! ([`crate::workloads`]), the seeded faults ([`crate::faults`]), then healing, final reads and
//! the node states the checkers need. Everything lands in the output directory, recorded by
//! [`crate::recorder`].

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use paddock_testkit::local_cluster::{find_paddockd, LocalCluster, LocalClusterSpec};
use paddock_testkit::proxy::LinkProxy;

use crate::check::NodeFinal;
use crate::faults::inject::{apply_fault, heal, Healing};
use crate::faults::{schedule, FaultKind};
use crate::recorder::Recorder;
use crate::workloads::kv::{final_reads, kv_worker};
use crate::workloads::vm::{self, VmRecorder};

pub struct RunConfig {
    pub nodes: usize,
    pub duration: Duration,
    pub seed: u64,
    pub faults: Vec<FaultKind>,
    /// KV register clients (0: no KV workload).
    pub clients: usize,
    /// VM lifecycle clients (0: no VM workload).
    pub vm_clients: usize,
    pub out: PathBuf,
}

/// Runs the cluster, workload and faults; returns the fault windows (start, end) in ns.
pub async fn run(config: &RunConfig) -> anyhow::Result<Vec<(u64, u64)>> {
    std::fs::create_dir_all(&config.out)
        .with_context(|| format!("cannot create {}", config.out.display()))?;
    // Light memvm guests, so a 7-node run with the VM workload fits in memory.
    let spec = LocalClusterSpec {
        nodes: config.nodes,
        base_port: None,
        extra_args: [
            "--cpus",
            "8",
            "--memory",
            "4GiB",
            "--memvm-working-set",
            "1MiB",
            "--memvm-dirty-rate",
            "100",
            // Whole pages rewritten: a migration's working set is incompressible, so a
            // bandwidth-limited transfer lasts long enough to be hit by a fault.
            "--memvm-dirty-bytes",
            "4096",
        ]
        .map(String::from)
        .to_vec(),
        hosts: Vec::new(),
    };
    let mut cluster = LocalCluster::prepare(&config.out.join("cluster"), &spec, find_paddockd()?)?;
    // One proxy per directed link; node i dials node j through proxies[(i, j)].
    let mut proxies: BTreeMap<(usize, usize), LinkProxy> = BTreeMap::new();
    for i in 0..config.nodes {
        for j in 0..config.nodes {
            if i != j {
                let proxy = LinkProxy::start(cluster.nodes[j].address.clone()).await?;
                proxies.insert((i, j), proxy);
            }
        }
    }
    for i in 0..config.nodes {
        let routes: Vec<String> = (0..config.nodes)
            .filter(|j| *j != i)
            .map(|j| format!("{}={}", cluster.nodes[j].name, proxies[&(i, j)].address))
            .collect();
        cluster.nodes[i]
            .extra_args
            .extend(["--route".to_string(), routes.join(",")]);
    }
    cluster.start_all()?;
    cluster.wait_for_leader(Duration::from_secs(30)).await?;

    let recorder = Arc::new(Recorder {
        start: Instant::now(),
        history: Mutex::new(std::io::BufWriter::new(std::fs::File::create(
            config.out.join("history.jsonl"),
        )?)),
        faults: Mutex::new(std::fs::File::create(config.out.join("faults.jsonl"))?),
    });
    let end = Instant::now() + config.duration;
    let processes = Arc::new(AtomicU64::new(0));
    // Every client (KV and VM) may talk to any node, as the admin.
    let endpoints: Vec<(String, String)> = cluster
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.address.clone()))
        .collect();
    let tls = cluster.certs.client_tls(
        paddock_testkit::local_cluster::ADMIN,
        paddock_api::certs::CLIENT_HINT,
    )?;
    let mut workers = Vec::new();
    for worker in 0..config.clients {
        let recorder = recorder.clone();
        let processes = processes.clone();
        let (endpoints, tls) = (endpoints.clone(), tls.clone());
        let seed = config.seed.wrapping_mul(1000).wrapping_add(worker as u64);
        workers.push(tokio::spawn(async move {
            kv_worker(recorder, processes, endpoints, tls, seed, end).await;
        }));
    }

    let vm_recorder = Arc::new(VmRecorder {
        start: recorder.start,
        out: Mutex::new(std::fs::File::create(config.out.join("vm_ops.jsonl"))?),
    });
    for worker in 0..config.vm_clients {
        let (endpoints, tls) = (endpoints.clone(), tls.clone());
        let seed = config.seed.wrapping_mul(7919).wrapping_add(worker as u64);
        workers.push(tokio::spawn(vm::worker(
            vm_recorder.clone(),
            (worker as u64 + 1) * 1_000_000,
            endpoints,
            tls,
            seed,
            end,
        )));
    }

    let plan = schedule(config.seed, config.duration, &config.faults);
    let mut windows = Vec::new();
    for fault in &plan {
        let at = recorder.start + Duration::from_millis(fault.at_ms);
        tokio::time::sleep_until(at.into()).await;
        let started = recorder.now();
        let healed = apply_fault(fault, &mut cluster, &proxies, &recorder).await;
        tokio::time::sleep(Duration::from_millis(fault.hold_ms)).await;
        heal(&healed, &mut cluster, &proxies, &recorder);
        windows.push((started, recorder.now()));
    }
    for worker in workers {
        let _ = worker.await;
    }

    // Everything healed: final linearizable reads of every key, then the node states.
    heal(&Healing::Everything, &mut cluster, &proxies, &recorder);
    cluster.wait_for_leader(Duration::from_secs(30)).await?;
    final_reads(&cluster, &recorder, &config.out).await?;
    if config.vm_clients > 0 {
        vm::collect(&cluster, &config.out, Duration::from_secs(60)).await?;
    }
    if let Ok(mut out) = recorder.history.lock() {
        out.flush()?;
    }
    let nodes = settled_states(&cluster).await;
    std::fs::write(
        config.out.join("final_state.json"),
        serde_json::to_string_pretty(&nodes)?,
    )?;
    std::fs::write(
        config.out.join("fault_windows.json"),
        serde_json::to_string(&windows)?,
    )?;
    cluster.stop_all();
    Ok(windows)
}

/// Polls every node until they report the same applied index and state digest (or 30 s).
pub(crate) async fn settled_states(cluster: &LocalCluster) -> Vec<NodeFinal> {
    let started = Instant::now();
    loop {
        let mut nodes = Vec::new();
        for i in 0..cluster.nodes.len() {
            if let Ok(status) = cluster.status_of(i).await {
                nodes.push(NodeFinal {
                    node: status.node,
                    applied_index: status.applied_index,
                    state_digest: status.state_digest,
                });
            }
        }
        let agree = nodes.len() == cluster.nodes.len()
            && nodes.windows(2).all(|w| {
                w[0].applied_index == w[1].applied_index && w[0].state_digest == w[1].state_digest
            });
        if agree || started.elapsed() > Duration::from_secs(30) {
            return nodes;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
