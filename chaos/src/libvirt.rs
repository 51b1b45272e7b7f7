//! `paddock-chaos run --backend libvirt`: the host faults against real QEMU.
//!
//! The hosts are the test kit's libvirt hosts (each its own network namespace with a libvirtd
//! and a paddockd; [`paddock_testkit::libvirt_hosts`]). HA VMs of the test guest run on shared
//! disks while KV clients write; the seeded schedule injects, on hosts other than the leader:
//!
//! - `kill`: kill -9 of paddockd alone (libvirtd, QEMU and the fencing process live on);
//! - `host-pause`: SIGSTOP of paddockd alone, past its lease (the fencing process must act);
//! - `host-isolate`: the host's link to the others cut;
//! - `host-down`: every process of the host killed (paddockd, fencing, libvirtd, QEMU); healed
//!   by starting libvirtd and paddockd again, as after a reboot.
//!
//! The evidence for "never two copies" is every QEMU process of every host, seen by a scan of
//! `/proc` every 20 ms ([`QemuRuns`]), turned into the same run intervals the memvm checkers
//! read; so single-run, HA recovery (15 s bound), convergence and linearizability are checked by
//! the same code as for memvm.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use paddock_testkit::libvirt_hosts::{LibvirtHosts, QemuRuns, TestGuest};
use paddock_testkit::local_cluster::{find_paddockd, LocalCluster, LocalClusterSpec};
use paddock_testkit::memvm::{HostGuest, RunInterval};
use serde_json::json;

use crate::faults::{schedule, FaultKind, PlannedFault};
use crate::recorder::Recorder;
use crate::run::{settled_states, RunConfig};
use crate::workloads::kv::{final_reads, kv_worker};
use crate::workloads::vm::{collect_with, VMS};

/// The faults this backend injects.
pub const FAULTS: [FaultKind; 4] = [
    FaultKind::Kill,
    FaultKind::HostPause,
    FaultKind::HostIsolate,
    FaultKind::HostDown,
];

/// HA VMs of the test guest (named as the memvm workload names its HA VMs, so the checkers
/// treat them alike), one preferring each host.
const MAX_VMS: usize = VMS / 2;

/// Refuses what this backend cannot do, saying what it can.
pub fn check_faults(faults: &[FaultKind]) -> anyhow::Result<()> {
    for fault in faults {
        anyhow::ensure!(
            FAULTS.contains(fault),
            "--backend libvirt injects kill, host-pause, host-isolate and host-down, not {fault:?}"
        );
    }
    Ok(())
}

enum Healing {
    Daemon(usize),
    Resume(usize),
    Link(usize),
    Host(usize),
    Nothing,
}

pub async fn run(config: &RunConfig, vms: usize) -> anyhow::Result<Vec<(u64, u64)>> {
    LibvirtHosts::can_run()
        .map_err(|why| anyhow::anyhow!("--backend libvirt needs real libvirt hosts: {why}"))?;
    check_faults(&config.faults)?;
    std::fs::create_dir_all(&config.out)
        .with_context(|| format!("cannot create {}", config.out.display()))?;
    let guest = TestGuest::build(&guest_cache())?;
    let mut hosts = LibvirtHosts::up(&config.out.join("hosts"), config.nodes)?;
    let kind = hosts.probe_domain_type(&guest);
    let mut spec = LocalClusterSpec {
        nodes: config.nodes,
        base_port: None,
        extra_args: hosts.node_args(kind),
        hosts: Vec::new(),
    };
    spec.extra_args.extend(
        [
            "--vm-network",
            "bridge:vmbr0",
            "--libvirt-shutdown-timeout",
            "3s",
            "--cpus",
            "8",
            "--memory",
            "4GiB",
        ]
        .map(String::from),
    );
    for host in &hosts.hosts {
        host.add_bridge("vmbr0")?;
        spec.hosts.push(host.node_host(&[]));
    }
    let mut cluster = LocalCluster::prepare(&config.out.join("cluster"), &spec, find_paddockd()?)?;
    cluster.start_all()?;
    cluster.wait_for_leader(Duration::from_secs(60)).await?;
    let mut client = cluster.client(Duration::from_secs(30))?;
    let started = Instant::now();
    while client.node_list(false).await?.len() < config.nodes {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the nodes did not register"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The QEMU watch starts before the first VM does.
    let watch = Arc::new(Mutex::new(QemuRuns::new(&hosts)));
    let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let watcher = {
        let (watch, watching) = (watch.clone(), watching.clone());
        std::thread::spawn(move || {
            while watching.load(std::sync::atomic::Ordering::Relaxed) {
                if let Ok(mut w) = watch.lock() {
                    w.look();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let vms = vms.clamp(1, MAX_VMS);
    for i in 0..vms {
        let on = cluster.nodes[i % config.nodes].name.clone();
        // Small and quiet: TCG guests on two cores, rewriting 1 MiB twice a second.
        let mut vm_spec = guest.spec(1, 96, &on, true, "shared", Vec::new());
        vm_spec.cmdline.push_str(" ms=500");
        client.vm_create(&format!("vm-{i}"), vm_spec, false).await?;
    }
    let started = Instant::now();
    loop {
        let list = client.vm_list(false).await?;
        if list.len() == vms && list.iter().all(|v| v.state == "running") {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(180),
            "the VMs did not all start: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let recorder = Arc::new(Recorder {
        start: Instant::now(),
        history: Mutex::new(std::io::BufWriter::new(std::fs::File::create(
            config.out.join("history.jsonl"),
        )?)),
        faults: Mutex::new(std::fs::File::create(config.out.join("faults.jsonl"))?),
    });
    let end = Instant::now() + config.duration;
    let endpoints: Vec<(String, String)> = cluster
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.address.clone()))
        .collect();
    let tls = cluster.certs.client_tls(
        paddock_testkit::local_cluster::ADMIN,
        paddock_api::certs::CLIENT_HINT,
    )?;
    let processes = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for worker in 0..config.clients {
        let (recorder, processes) = (recorder.clone(), processes.clone());
        let (endpoints, tls) = (endpoints.clone(), tls.clone());
        let seed = config.seed.wrapping_mul(1000).wrapping_add(worker as u64);
        workers.push(tokio::spawn(async move {
            kv_worker(recorder, processes, endpoints, tls, seed, end).await;
        }));
    }

    let plan = schedule(config.seed, config.duration, &config.faults);
    let mut windows = Vec::new();
    for fault in &plan {
        let at = recorder.start + Duration::from_millis(fault.at_ms);
        tokio::time::sleep_until(at.into()).await;
        let began = recorder.now();
        let healing = inject(fault, &mut cluster, &mut hosts, &recorder).await;
        tokio::time::sleep(Duration::from_millis(fault.hold_ms)).await;
        heal(healing, &mut cluster, &mut hosts, &recorder);
        windows.push((began, recorder.now()));
    }
    for worker in workers {
        let _ = worker.await;
    }

    cluster.wait_for_leader(Duration::from_secs(30)).await?;
    final_reads(&cluster, &recorder, &config.out).await?;
    // Settled: every VM runs again (a TCG boot takes seconds), then the evidence is written.
    let names: Vec<String> = cluster.nodes.iter().map(|n| n.name.clone()).collect();
    let hosts_now = {
        let (watch, names, hosts) = (watch.clone(), names.clone(), &hosts);
        move || {
            let runs = watch.lock().map(|w| w.runs.clone()).unwrap_or_default();
            host_guests(&runs, &names, hosts)
        }
    };
    let runs = move || {
        watch
            .lock()
            .map(|w| intervals(&w.runs, &names))
            .unwrap_or_default()
    };
    collect_with(
        &cluster,
        &config.out,
        Duration::from_secs(120),
        &hosts_now,
        &runs,
    )
    .await?;
    watching.store(false, std::sync::atomic::Ordering::Relaxed);
    let _ = watcher.join();
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
    drop(hosts);
    Ok(windows)
}

/// Where the test guest is built (kept between runs).
fn guest_cache() -> PathBuf {
    std::env::var_os("PADDOCK_GUEST_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new("/var/tmp/paddock-guest").to_path_buf())
}

async fn inject(
    fault: &PlannedFault,
    cluster: &mut LocalCluster,
    hosts: &mut LibvirtHosts,
    recorder: &Recorder,
) -> Healing {
    let n = cluster.nodes.len();
    let Ok(leader) = cluster.wait_for_leader(Duration::from_secs(2)).await else {
        return Healing::Nothing;
    };
    // Never the leader: these are host failures, not Raft failovers.
    let host = (leader + 1 + (fault.pick % (n as u64 - 1)) as usize) % n;
    let name = cluster.nodes[host].name.clone();
    let record = |what: &str| {
        recorder.fault(json!({"fault": what, "action": "start", "nodes": [name]}));
    };
    match fault.kind {
        FaultKind::Kill => {
            cluster.kill_daemon(host);
            record("kill");
            Healing::Daemon(host)
        }
        FaultKind::HostPause => {
            cluster.signal_daemon(host, rustix::process::Signal::STOP);
            record("host-pause");
            Healing::Resume(host)
        }
        FaultKind::HostIsolate => {
            match hosts.set_link(host, false) {
                Ok(()) => {
                    record("host-isolate");
                    Healing::Link(host)
                }
                Err(e) => {
                    recorder.fault(json!({"fault": "host-isolate", "action": "failed", "error": e.to_string()}));
                    Healing::Nothing
                }
            }
        }
        FaultKind::HostDown => {
            cluster.kill(host);
            hosts.kill_host(host);
            record("host-down");
            Healing::Host(host)
        }
        _ => Healing::Nothing,
    }
}

fn heal(
    healing: Healing,
    cluster: &mut LocalCluster,
    hosts: &mut LibvirtHosts,
    recorder: &Recorder,
) {
    let result = match healing {
        Healing::Daemon(i) => cluster.start(i),
        Healing::Resume(i) => {
            cluster.signal_daemon(i, rustix::process::Signal::CONT);
            Ok(())
        }
        Healing::Link(i) => hosts.set_link(i, true),
        Healing::Host(i) => hosts.restart_libvirtd(i).and_then(|()| cluster.start(i)),
        Healing::Nothing => Ok(()),
    };
    let error = result.err().map(|e| e.to_string());
    recorder.fault(json!({"fault": "heal", "action": "done", "error": error}));
}

/// The QEMU runs as the checkers' run intervals (node names for host indexes; a run still
/// alive ends now).
fn intervals(
    runs: &[paddock_testkit::libvirt_hosts::QemuRun],
    names: &[String],
) -> Vec<RunInterval> {
    let now = crate::workloads::vm::wall_ms();
    runs.iter()
        .filter(|r| !r.vm.is_empty())
        .map(|r| RunInterval {
            vm: r.vm.clone(),
            node: names.get(r.host).cloned().unwrap_or_default(),
            epoch: 0,
            pid: r.pid as u64,
            start_ms: r.start_ms,
            end_ms: r.end_ms.unwrap_or(now),
            // The end is the first look it was gone at: already an upper bound.
            exact_end: true,
        })
        .collect()
}

/// The QEMUs alive now, as the checkers' host guests, with the epoch their domain carries.
fn host_guests(
    runs: &[paddock_testkit::libvirt_hosts::QemuRun],
    names: &[String],
    hosts: &LibvirtHosts,
) -> Vec<HostGuest> {
    runs.iter()
        .filter(|r| r.end_ms.is_none() && !r.vm.is_empty())
        .map(|r| HostGuest {
            node: names.get(r.host).cloned().unwrap_or_default(),
            vm: r.vm.clone(),
            epoch: hosts.hosts[r.host]
                .virsh(&["desc", &r.vm])
                .ok()
                .and_then(|d| epoch_in(&d))
                .unwrap_or(0),
            pid: r.pid as u64,
            alive: true,
        })
        .collect()
}

/// The epoch in a Paddock domain's description (`paddock-epoch:E ...`).
fn epoch_in(description: &str) -> Option<u64> {
    description
        .split_whitespace()
        .find_map(|w| w.strip_prefix("paddock-epoch:")?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_come_from_the_domain_description() {
        assert_eq!(epoch_in("paddock-epoch:12"), Some(12));
        assert_eq!(epoch_in("paddock-epoch:7 paddock-incoming:3"), Some(7));
        assert_eq!(epoch_in("something else"), None);
    }

    #[test]
    fn only_the_host_faults_are_taken() {
        assert!(check_faults(&FAULTS).is_ok());
        let refused = check_faults(&[FaultKind::Partition]).expect_err("refused");
        assert!(refused.to_string().contains("host-down"), "{refused}");
    }
}
