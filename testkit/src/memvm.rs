//! Probes of the memvm guests of a [`LocalCluster`], read from the nodes' data directories:
//! the run intervals every guest records (the single-run checkers' evidence) and the guest
//! processes each host has.

use serde::{Deserialize, Serialize};

use crate::local_cluster::LocalCluster;

/// A guest process found on a host after healing.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostGuest {
    pub node: String,
    pub vm: String,
    pub epoch: u64,
    pub pid: u64,
    pub alive: bool,
}

/// One run of a VM on a node, as its memvm guest recorded it (wall-clock ms; the end is
/// written every 200 ms, so a killed guest may have run up to 200 ms past it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInterval {
    pub vm: String,
    pub node: String,
    pub epoch: u64,
    pub pid: u64,
    pub start_ms: u64,
    pub end_ms: u64,
    /// The guest ended cleanly (stopped, fenced, migrated away) and wrote its last step's
    /// time; otherwise it was killed and may have run up to 200 ms past `end_ms`.
    #[serde(default)]
    pub exact_end: bool,
}

/// Every run interval recorded under every node's `memvm/runs/`.
pub fn run_intervals(cluster: &LocalCluster) -> Vec<RunInterval> {
    let mut runs = Vec::new();
    for node in &cluster.nodes {
        let dir = node.data_dir.join("memvm/runs");
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if let Some(run) = std::fs::read(entry.path())
                .ok()
                .and_then(|b| serde_json::from_slice::<RunInterval>(&b).ok())
            {
                runs.push(run);
            }
        }
    }
    runs.sort_by(|a, b| (&a.vm, a.start_ms).cmp(&(&b.vm, b.start_ms)));
    runs
}

/// Every memvm guest recorded on every node (from the driver's directories), alive or not.
pub fn host_guests(cluster: &LocalCluster) -> Vec<HostGuest> {
    let mut guests = Vec::new();
    for node in &cluster.nodes {
        let dir = node.data_dir.join("memvm/vms");
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let record: serde_json::Value = std::fs::read(entry.path().join("guest.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            let (Some(pid), Some(epoch)) = (record["pid"].as_u64(), record["epoch"].as_u64())
            else {
                continue;
            };
            guests.push(HostGuest {
                node: node.name.clone(),
                vm: entry.file_name().to_string_lossy().to_string(),
                epoch,
                pid,
                alive: alive(pid),
            });
        }
    }
    guests
}

/// Whether process `pid` lives (exists and is not a zombie).
pub fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            !s.rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}
