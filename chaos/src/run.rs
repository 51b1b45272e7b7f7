//! One chaos run: a cluster of real `paddockd` processes behind fault proxies, a KV register
//! workload, the seeded faults, then healing, final reads and the node states the checkers
//! need. Everything lands in the output directory.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use paddock_api::client::{Client, ClientError};
use paddock_cli::local_cluster::{find_paddockd, LocalCluster, LocalClusterSpec};
use serde_json::{json, Value};

use crate::check::{NodeFinal, FINAL_READERS};
use crate::faults::{schedule, FaultKind, PlannedFault};
use crate::history::{Event, EventType, Function};
use crate::proxy::{LinkMode, LinkProxy};
use crate::vm_workload::{self, VmRecorder};

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

/// Events and fault records with times relative to the run's start.
struct Recorder {
    start: Instant,
    history: Mutex<std::io::BufWriter<std::fs::File>>,
    faults: Mutex<std::fs::File>,
}

impl Recorder {
    fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn event(
        &self,
        kind: EventType,
        process: u64,
        f: Function,
        key: &str,
        value: Value,
        node: &str,
    ) {
        let event = Event {
            kind,
            process,
            f,
            key: key.to_string(),
            value,
            time: self.now(),
            node: node.to_string(),
        };
        if let (Ok(mut out), Ok(line)) = (self.history.lock(), serde_json::to_string(&event)) {
            let _ = writeln!(out, "{line}");
        }
    }

    fn fault(&self, record: Value) {
        let mut record = record;
        record["time"] = json!(self.now());
        // Wall clock too: memvm guests record their run intervals in wall-clock ms.
        record["wall_ms"] = json!(crate::vm_workload::wall_ms());
        if let Ok(mut out) = self.faults.lock() {
            let _ = writeln!(out, "{record}");
        }
    }
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
        paddock_cli::local_cluster::ADMIN,
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
        workers.push(tokio::spawn(vm_workload::worker(
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
        vm_workload::collect(&cluster, &config.out, Duration::from_secs(60)).await?;
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

/// What healing a fault means.
enum Healing {
    Restart(usize),
    Resume(usize),
    /// A removed node starts again, fresh, with `--join`.
    Rejoin(usize),
    /// Killed hosts start again.
    RestartMany(Vec<usize>),
    /// Nothing to undo (a fault that could not be applied).
    Nothing,
    Links,
    Everything,
}

async fn apply_fault(
    fault: &PlannedFault,
    cluster: &mut LocalCluster,
    proxies: &BTreeMap<(usize, usize), LinkProxy>,
    recorder: &Recorder,
) -> Healing {
    let n = cluster.nodes.len();
    let leader = cluster.wait_for_leader(Duration::from_secs(2)).await.ok();
    let random = (fault.pick % n as u64) as usize;
    let target = if fault.pick.is_multiple_of(3) {
        leader.unwrap_or(random)
    } else {
        random
    };
    let name = cluster.nodes[target].name.clone();
    match fault.kind {
        FaultKind::Kill => {
            cluster.kill(target);
            recorder.fault(json!({"fault": "kill", "action": "start", "nodes": [name]}));
            Healing::Restart(target)
        }
        FaultKind::Pause => {
            signal(cluster, target, rustix::process::Signal::STOP);
            recorder.fault(json!({"fault": "pause", "action": "start", "nodes": [name]}));
            Healing::Resume(target)
        }
        FaultKind::RestartAll => {
            for i in 0..n {
                cluster.kill(i);
            }
            recorder.fault(json!({"fault": "restart-all", "action": "start"}));
            Healing::Everything
        }
        FaultKind::Membership => remove_member(cluster, target, recorder).await,
        FaultKind::HostDown | FaultKind::HostPause | FaultKind::HostIsolate => {
            // A host that is not the leader: this is about host failure, not Raft failover.
            let host = match leader {
                Some(l) => (l + 1 + (fault.pick % (n as u64 - 1)) as usize) % n,
                None => random,
            };
            let name = cluster.nodes[host].name.clone();
            match fault.kind {
                FaultKind::HostDown => {
                    cluster.kill(host);
                    recorder
                        .fault(json!({"fault": "host-down", "action": "start", "nodes": [name]}));
                    Healing::Restart(host)
                }
                FaultKind::HostPause => {
                    signal(cluster, host, rustix::process::Signal::STOP);
                    recorder
                        .fault(json!({"fault": "host-pause", "action": "start", "nodes": [name]}));
                    Healing::Resume(host)
                }
                _ => {
                    for ((from, to), proxy) in proxies {
                        if *from == host || *to == host {
                            proxy.set(LinkMode::Cut);
                        }
                    }
                    recorder.fault(
                        json!({"fault": "host-isolate", "action": "start", "nodes": [name]}),
                    );
                    Healing::Links
                }
            }
        }
        FaultKind::TwoHosts => {
            let count = if n >= 5 { 2 } else { 1 };
            let hosts: Vec<usize> = (1..=count)
                .map(|k| (leader.unwrap_or(0) + k + (fault.pick % 2) as usize) % n)
                .collect();
            let names: Vec<String> = hosts
                .iter()
                .map(|h| cluster.nodes[*h].name.clone())
                .collect();
            for h in &hosts {
                cluster.kill(*h);
            }
            recorder.fault(json!({"fault": "two-hosts", "action": "start", "nodes": names}));
            Healing::RestartMany(hosts)
        }
        FaultKind::LeaderFailover => {
            let Some(l) = leader else {
                recorder.fault(
                    json!({"fault": "leader-failover", "action": "skipped", "error": "no leader"}),
                );
                return Healing::Nothing;
            };
            let host = (l + 1 + (fault.pick % (n as u64 - 1)) as usize) % n;
            let host_name = cluster.nodes[host].name.clone();
            cluster.kill(host);
            recorder.fault(
                json!({"fault": "leader-failover", "action": "start", "nodes": [host_name]}),
            );
            // Just as the leader declares the host down (4.5 s), kill the leader too.
            tokio::time::sleep(Duration::from_millis(4_600)).await;
            let leader_name = cluster.nodes[l].name.clone();
            cluster.kill(l);
            recorder.fault(json!({"fault": "leader-failover", "action": "kill-leader", "nodes": [leader_name]}));
            Healing::RestartMany(vec![host, l])
        }
        FaultKind::Migration => migration_fault(fault, cluster, leader, recorder).await,
        FaultKind::Slow if (fault.pick >> 24) % 2 == 1 => {
            // Lossy: the node's connections are reset now and then.
            for ((from, to), proxy) in proxies {
                if *from == target || *to == target {
                    proxy.set(LinkMode::Flaky {
                        reset_per_mille: 50,
                    });
                }
            }
            recorder.fault(json!({"fault": "lossy", "action": "start", "nodes": [name], "reset_per_mille": 50}));
            Healing::Links
        }
        FaultKind::Slow => {
            let delay = 20 + (fault.pick >> 8) % 180;
            for ((from, to), proxy) in proxies {
                if *from == target || *to == target {
                    proxy.set(LinkMode::Slow {
                        delay_ms: delay,
                        jitter_ms: delay / 2,
                    });
                }
            }
            recorder.fault(
                json!({"fault": "slow", "action": "start", "nodes": [name], "delay_ms": delay}),
            );
            Healing::Links
        }
        FaultKind::Partition => {
            let (kind, cut) = partition(fault.pick, n, target, leader);
            for link in &cut {
                if let Some(proxy) = proxies.get(link) {
                    proxy.set(LinkMode::Cut);
                }
            }
            let names: Vec<String> = cut
                .iter()
                .map(|(a, b)| format!("{}->{}", cluster.nodes[*a].name, cluster.nodes[*b].name))
                .collect();
            recorder.fault(
                json!({"fault": "partition", "kind": kind, "action": "start", "cut": names}),
            );
            Healing::Links
        }
    }
}

/// Starts a slow live migration of a running VM and, once it transfers, hits it: kills or
/// pauses its source or destination host, kills the leader, or cuts the migration link (kills
/// the destination guest, which resets the connection).
async fn migration_fault(
    fault: &PlannedFault,
    cluster: &mut LocalCluster,
    leader: Option<usize>,
    recorder: &Recorder,
) -> Healing {
    let skip = |why: String| {
        recorder.fault(json!({"fault": "migration", "action": "skipped", "error": why}));
        Healing::Nothing
    };
    let Ok(mut client) = cluster.client(Duration::from_secs(5)) else {
        return skip("no client".into());
    };
    let running: Vec<_> = match client.vm_list(false).await {
        Ok(vms) => vms.into_iter().filter(|v| v.state == "running").collect(),
        Err(e) => return skip(e.to_string()),
    };
    if running.is_empty() {
        return skip("no running VM".into());
    }
    let vm = &running[(fault.pick % running.len() as u64) as usize];
    let index = |name: &str| cluster.nodes.iter().position(|n| n.name == name);
    let Some(source) = index(&vm.node) else {
        return skip(format!("{} is on an unknown node", vm.name));
    };
    let n = cluster.nodes.len();
    let dest = (source + 1 + ((fault.pick >> 4) % (n as u64 - 1)) as usize) % n;
    let mode = ["auto", "precopy", "postcopy"][((fault.pick >> 12) % 3) as usize];
    let request = paddock_api::pb::MigrationCreateRequest {
        vm: vm.name.clone(),
        to: cluster.nodes[dest].name.clone(),
        mode: mode.into(),
        bandwidth: 1 << 20,
        max_downtime_ms: 100,
        priority: 0,
        request_id: None,
    };
    let id = match client.migration_create(request).await {
        Ok(answer) => match answer.created.first() {
            Some(c) => c.id,
            None => return skip(format!("refused: {:?}", answer.refused)),
        },
        Err(e) => return skip(e.to_string()),
    };
    // Mid-transfer (or whatever phase it reached within 5 s).
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut phase = String::new();
    while std::time::Instant::now() < deadline {
        if let Ok(m) = client.migration_get(id).await {
            phase = m.phase;
            if phase != "pending" && phase != "preparing" {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let variant = [
        "kill-source",
        "kill-destination",
        "kill-leader",
        "pause-source",
        "pause-destination",
        "cut",
    ][((fault.pick >> 20) % 6) as usize];
    let all: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    let names = |i: usize| all[i].clone();
    let (healing, hit) = match variant {
        "kill-source" => {
            cluster.kill(source);
            (Healing::Restart(source), names(source))
        }
        "kill-destination" => {
            cluster.kill(dest);
            (Healing::Restart(dest), names(dest))
        }
        "kill-leader" => {
            let l = leader.unwrap_or(source);
            cluster.kill(l);
            (Healing::Restart(l), names(l))
        }
        "pause-source" => {
            signal(cluster, source, rustix::process::Signal::STOP);
            (Healing::Resume(source), names(source))
        }
        "pause-destination" => {
            signal(cluster, dest, rustix::process::Signal::STOP);
            (Healing::Resume(dest), names(dest))
        }
        _ => {
            // The destination guest dies: the migration link is reset mid-transfer.
            let guest = cluster.nodes[dest]
                .data_dir
                .join(format!("memvm/vms/{}/guest.json", vm.name));
            let pid = std::fs::read(&guest)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .and_then(|v| v["pid"].as_i64())
                .and_then(|pid| rustix::process::Pid::from_raw(pid as i32));
            if let Some(pid) = pid {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
            (Healing::Nothing, names(dest))
        }
    };
    recorder.fault(json!({
        "fault": "migration", "action": "start", "variant": variant, "migration": id,
        "vm": vm.name, "mode": mode, "phase": phase, "source": names(source),
        "destination": names(dest), "nodes": [hit],
    }));
    healing
}

/// The directed links a partition cuts.
fn partition(
    pick: u64,
    n: usize,
    target: usize,
    leader: Option<usize>,
) -> (&'static str, Vec<(usize, usize)>) {
    let both = |a: &[usize], b: &[usize]| {
        let mut links = Vec::new();
        for &x in a {
            for &y in b {
                links.push((x, y));
                links.push((y, x));
            }
        }
        links
    };
    let others = |x: usize| (0..n).filter(|i| *i != x).collect::<Vec<_>>();
    match (pick >> 16) % 5 {
        0 => ("isolate", both(&[target], &others(target))),
        1 => {
            let l = leader.unwrap_or(target);
            ("isolate-leader", both(&[l], &others(l)))
        }
        2 => {
            let mut order: Vec<usize> = (0..n).collect();
            fastrand::Rng::with_seed(pick).shuffle(&mut order);
            let minority = &order[..n / 2];
            let majority = &order[n / 2..];
            ("majority-minority", both(minority, majority))
        }
        3 => (
            "one-way",
            others(target).into_iter().map(|o| (target, o)).collect(),
        ),
        _ => {
            // Two halves that both reach the bridge node `target` but not each other.
            let rest = others(target);
            let (left, right) = rest.split_at(rest.len() / 2);
            ("bridge", both(left, right))
        }
    }
}

/// Removes node `target` from the cluster (a voter, or the leader itself), then stops it once
/// the cluster no longer lists it. If the removal cannot be confirmed the node is left alone.
async fn remove_member(cluster: &mut LocalCluster, target: usize, recorder: &Recorder) -> Healing {
    let name = cluster.nodes[target].name.clone();
    let removal = match cluster.client(Duration::from_secs(5)) {
        Ok(mut client) => client.remove_member(&name).await.map_err(|e| e.to_string()),
        Err(e) => Err(format!("{e:#}")),
    };
    // The call's outcome may be unknown (timeout): ask the cluster whether it still lists the node.
    let started = Instant::now();
    let removed = loop {
        let mut listed = None;
        for i in (0..cluster.nodes.len()).filter(|i| *i != target) {
            if let Ok(status) = cluster.status_of(i).await {
                if !status.leader.is_empty()
                    && status.leader != name
                    && status.leader == status.node
                {
                    listed = Some(status.members.iter().any(|m| m.name == name));
                    break;
                }
            }
        }
        match listed {
            Some(false) => break true,
            Some(true) if removal.is_err() && started.elapsed() > Duration::from_secs(3) => {
                break false
            }
            _ if started.elapsed() > Duration::from_secs(10) => break false,
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    if !removed {
        recorder.fault(json!({"fault": "membership", "action": "skipped", "nodes": [name], "error": removal.err()}));
        return Healing::Nothing;
    }
    cluster.kill(target);
    recorder.fault(
        json!({"fault": "membership", "action": "start", "nodes": [name], "change": "remove"}),
    );
    Healing::Rejoin(target)
}

/// Signals a whole host: its paddockd and its VMs.
fn signal(cluster: &LocalCluster, i: usize, signal: rustix::process::Signal) {
    cluster.signal_host(i, signal);
}

fn heal(
    healing: &Healing,
    cluster: &mut LocalCluster,
    proxies: &BTreeMap<(usize, usize), LinkProxy>,
    recorder: &Recorder,
) {
    match healing {
        Healing::Restart(i) => {
            let _ = cluster.start(*i);
            recorder.fault(
                json!({"fault": "kill", "action": "end", "nodes": [cluster.nodes[*i].name]}),
            );
        }
        Healing::Resume(i) => {
            signal(cluster, *i, rustix::process::Signal::CONT);
            recorder.fault(
                json!({"fault": "pause", "action": "end", "nodes": [cluster.nodes[*i].name]}),
            );
        }
        Healing::Rejoin(i) => {
            let via = (*i + 1) % cluster.nodes.len();
            let name = cluster.nodes[*i].name.clone();
            let outcome = cluster
                .reset_to_join(*i, via)
                .and_then(|()| cluster.start(*i));
            let error = outcome.err().map(|e| format!("{e:#}"));
            recorder.fault(json!({"fault": "membership", "action": "end", "nodes": [name], "join_via": cluster.nodes[via].name, "error": error}));
        }
        Healing::Nothing => {}
        Healing::RestartMany(hosts) => {
            let mut names = Vec::new();
            for h in hosts {
                let _ = cluster.start(*h);
                names.push(cluster.nodes[*h].name.clone());
            }
            recorder.fault(json!({"fault": "hosts", "action": "end", "nodes": names}));
        }
        Healing::Links => {
            for proxy in proxies.values() {
                proxy.set(LinkMode::Pass);
            }
            recorder.fault(json!({"fault": "links", "action": "end"}));
        }
        Healing::Everything => {
            for proxy in proxies.values() {
                proxy.set(LinkMode::Pass);
            }
            for i in 0..cluster.nodes.len() {
                signal(cluster, i, rustix::process::Signal::CONT);
                if !cluster.is_running(i) {
                    let _ = cluster.start(i);
                }
            }
            recorder.fault(json!({"fault": "all", "action": "end"}));
        }
    }
}

/// Keys live for a few seconds each, so every key's history stays small enough to check.
fn key_for(recorder: &Recorder, rng: &mut fastrand::Rng) -> String {
    let generation = recorder.start.elapsed().as_secs() / 5;
    format!("chaos/g{generation}/k{}", rng.u8(0..4))
}

async fn kv_worker(
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
fn record_error(
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

async fn final_reads(
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

/// Polls every node until they report the same applied index and state digest (or 30 s).
async fn settled_states(cluster: &LocalCluster) -> Vec<NodeFinal> {
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
