//! The VM workload: clients create, start, stop and delete a small set of VMs against random
//! nodes while faults fly, recording each operation in `vm_ops.jsonl` (invoke, then `ok`,
//! `fail` — certainly not applied — or `info` — unknown). After healing, [`collect`] records
//! what the cluster and the hosts ended up with (`vms_final.json`) for
//! [`crate::check::vms`].

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use paddock_api::client::{Client, ClientError};
use paddock_api::pb;
use paddock_testkit::local_cluster::LocalCluster;
use paddock_testkit::memvm::{host_guests, run_intervals, HostGuest, RunInterval};
use serde::{Deserialize, Serialize};

/// VM names the workload uses (`vm-0` …).
pub const VMS: usize = 8;

/// Wall-clock Unix milliseconds (the clock of the guests' run intervals).
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Whether workload VM `name` is an HA VM (the first half of the names are).
pub fn is_ha(name: &str) -> bool {
    name.strip_prefix("vm-")
        .and_then(|i| i.parse::<usize>().ok())
        .is_some_and(|i| i < VMS / 2)
}

/// One line of `vm_ops.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmOp {
    #[serde(rename = "type")]
    pub kind: String,
    pub process: u64,
    pub f: String,
    pub vm: String,
    pub time: u64,
    pub node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub struct VmRecorder {
    pub start: Instant,
    pub out: Mutex<std::fs::File>,
}

impl VmRecorder {
    fn record(
        &self,
        kind: &str,
        process: u64,
        f: &str,
        vm: &str,
        node: &str,
        error: Option<String>,
    ) {
        let op = VmOp {
            kind: kind.into(),
            process,
            f: f.into(),
            vm: vm.into(),
            time: self.start.elapsed().as_nanos() as u64,
            node: node.into(),
            error,
        };
        if let (Ok(mut out), Ok(line)) = (self.out.lock(), serde_json::to_string(&op)) {
            let _ = writeln!(out, "{line}");
        }
    }
}

/// Small guests: a chaos run keeps a few dozen of them alive on one machine. The first half
/// of the names are HA VMs (restarted elsewhere when their host is declared down), the others
/// are not (they fail with their host).
pub fn spec(vm: usize) -> pb::VmSpec {
    pb::VmSpec {
        cpus: 1,
        memory_mib: 64,
        ha: vm < VMS / 2,
        ..Default::default()
    }
}

/// Runs one VM client until `end`.
pub async fn worker(
    recorder: Arc<VmRecorder>,
    process_base: u64,
    endpoints: Vec<(String, String)>,
    tls: tonic::transport::ClientTlsConfig,
    seed: u64,
    end: Instant,
) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut process = process_base;
    while Instant::now() < end {
        let (node, address) = endpoints[rng.usize(..endpoints.len())].clone();
        let Ok(mut client) = Client::new(&[address], tls.clone(), Duration::from_millis(1500))
        else {
            return;
        };
        let index = rng.usize(..VMS);
        let vm = format!("vm-{index}");
        let f = ["create", "create", "start", "stop", "delete"][rng.usize(..5)];
        recorder.record("invoke", process, f, &vm, &node, None);
        let result = match f {
            "create" => client.vm_create(&vm, spec(index), false).await,
            "start" => client.vm_set_desired(&vm, true).await,
            "stop" => client.vm_set_desired(&vm, false).await,
            _ => client.vm_delete(&vm).await,
        };
        match result {
            Ok(()) => recorder.record("ok", process, f, &vm, &node, None),
            Err(e) => {
                let certain = matches!(
                    e.code(),
                    Some(
                        tonic::Code::InvalidArgument
                            | tonic::Code::NotFound
                            | tonic::Code::AlreadyExists
                            | tonic::Code::FailedPrecondition
                            | tonic::Code::ResourceExhausted
                    )
                );
                let kind = if certain { "fail" } else { "info" };
                recorder.record(kind, process, f, &vm, &node, Some(describe(&e)));
                if !certain {
                    // Unknown outcome: this process ends, as in the KV workload.
                    process += 1;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.u64(100..400))).await;
    }
}

fn describe(e: &ClientError) -> String {
    e.to_string().chars().take(200).collect()
}

/// The cluster's view of one VM after healing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterVm {
    pub name: String,
    pub node: Option<String>,
    pub epoch: u64,
    pub desired: String,
    pub state: String,
    pub waiting: String,
    #[serde(default)]
    pub ha: bool,
    /// Why it failed, if it did.
    #[serde(default)]
    pub reason: String,
}

/// What `vms_final.json` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VmsFinal {
    pub cluster: Vec<ClusterVm>,
    pub hosts: Vec<HostGuest>,
    /// Every run interval every guest recorded on every node during the run.
    #[serde(default)]
    pub runs: Vec<RunInterval>,
    /// How long after healing the observed states matched the desired ones (None: never,
    /// within the wait).
    pub settled_after_ms: Option<u64>,
    /// Every live migration of the run, as the cluster ended them.
    #[serde(default)]
    pub migrations: Vec<MigrationEnd>,
}

/// How one live migration ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MigrationEnd {
    pub id: u64,
    pub vm: String,
    pub source: String,
    pub destination: String,
    pub mode: String,
    pub phase: String,
    pub error: String,
    pub ended: bool,
    pub source_verified: Option<bool>,
    pub downtime_ms: Option<u64>,
}

/// Waits (up to `wait`) until every VM's observed state matches its desired state, then
/// records the cluster's VMs and every host's guests.
pub async fn collect(cluster: &LocalCluster, out: &Path, wait: Duration) -> anyhow::Result<()> {
    collect_with(cluster, out, wait, &|| host_guests(cluster), &|| {
        run_intervals(cluster)
    })
    .await
}

/// [`collect`] with the guests alive now and the run intervals from elsewhere (the libvirt
/// backend's QEMU watch).
pub async fn collect_with(
    cluster: &LocalCluster,
    out: &Path,
    wait: Duration,
    guests: &(dyn Fn() -> Vec<HostGuest> + Sync),
    runs: &(dyn Fn() -> Vec<RunInterval> + Sync),
) -> anyhow::Result<()> {
    let mut client = cluster.client(Duration::from_secs(30))?;
    let started = Instant::now();
    let mut settled_after_ms = None;
    let mut vms;
    loop {
        vms = client.vm_list(false).await?;
        let migrating = !client.migration_list(false).await?.is_empty();
        if !migrating && vms.iter().all(settled) && hosts_match(&guests(), &vms) {
            settled_after_ms = Some(started.elapsed().as_millis() as u64);
            break;
        }
        if started.elapsed() > wait {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut cluster_vms = Vec::new();
    for v in &vms {
        let detail = client.vm_get(&v.name, false).await.ok();
        cluster_vms.push(ClusterVm {
            name: v.name.clone(),
            node: (!v.node.is_empty()).then(|| v.node.clone()),
            epoch: v.epoch,
            desired: v.desired.clone(),
            state: v.state.clone(),
            waiting: detail
                .as_ref()
                .map(|d| d.waiting.clone())
                .unwrap_or_default(),
            ha: v.ha,
            reason: detail.map(|d| d.reason).unwrap_or_default(),
        });
    }
    let migrations = client
        .migration_list(true)
        .await?
        .into_iter()
        .map(|m| MigrationEnd {
            id: m.id,
            vm: m.vm,
            source: m.source,
            destination: m.destination,
            mode: m.mode,
            phase: m.phase,
            error: m.error,
            ended: m.ended_ms > 0,
            source_verified: m.source_verified,
            downtime_ms: m.downtime_ms,
        })
        .collect();
    let report = VmsFinal {
        cluster: cluster_vms,
        hosts: guests(),
        runs: runs(),
        settled_after_ms,
        migrations,
    };
    std::fs::write(
        out.join("vms_final.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    Ok(())
}

fn settled(vm: &pb::VmSummary) -> bool {
    match vm.desired.as_str() {
        "running" => {
            vm.state == "running"
                || (vm.node.is_empty() && (vm.state == "pending" || vm.state == "failed"))
        }
        _ => vm.state == "stopped" || vm.node.is_empty(),
    }
}

fn hosts_match(guests: &[HostGuest], vms: &[pb::VmSummary]) -> bool {
    crate::check::vms::host_problems(
        &vms.iter()
            .map(|v| ClusterVm {
                name: v.name.clone(),
                node: (!v.node.is_empty()).then(|| v.node.clone()),
                epoch: v.epoch,
                desired: v.desired.clone(),
                state: v.state.clone(),
                waiting: String::new(),
                ha: v.ha,
                reason: String::new(),
            })
            .collect::<Vec<_>>(),
        guests,
    )
    .is_empty()
}
