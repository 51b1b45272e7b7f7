//! Injecting and healing the faults of the schedule: kills, pauses, partitions, slow links,
//! restart-all, membership changes, host failures and migration faults.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use paddock_testkit::local_cluster::LocalCluster;
use paddock_testkit::proxy::{LinkMode, LinkProxy};
use serde_json::json;

use crate::faults::{FaultKind, PlannedFault};
use crate::recorder::Recorder;

/// What healing a fault means.
pub(crate) enum Healing {
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

pub(crate) async fn apply_fault(
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
pub(crate) async fn migration_fault(
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
pub(crate) fn partition(
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
pub(crate) async fn remove_member(
    cluster: &mut LocalCluster,
    target: usize,
    recorder: &Recorder,
) -> Healing {
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
pub(crate) fn signal(cluster: &LocalCluster, i: usize, signal: rustix::process::Signal) {
    cluster.signal_host(i, signal);
}

pub(crate) fn heal(
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
