//! Checkers run on a finished run directory. Later issues add theirs here (single-run VMs, HA
//! recovery bound) next to these.

pub mod linearizable;
pub mod vms;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::history::{self, Action, EventType, Operation};
use linearizable::Verdict;

/// Search steps allowed per key before the linearizability verdict is "unknown".
pub const STEP_BUDGET: u64 = 20_000_000;

/// What each node reported after every fault was healed (`final_state.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeFinal {
    pub node: String,
    pub applied_index: u64,
    pub state_digest: String,
}

/// The outcome of every checker (`report.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub valid: bool,
    pub operations: OpCounts,
    pub linearizable: LinearizableReport,
    pub lost_writes: Vec<String>,
    pub converged: bool,
    pub nodes: Vec<NodeFinal>,
    pub availability: Availability,
    /// The VM checkers, when the run had the VM workload.
    #[serde(default)]
    pub vms: Option<vms::VmReport>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OpCounts {
    pub total: usize,
    pub ok: usize,
    pub fail: usize,
    pub info: usize,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LinearizableReport {
    pub keys: usize,
    pub violations: Vec<String>,
    pub unknown: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Availability {
    /// Share of completed operations that succeeded (ok) outside fault windows.
    pub ok_share_without_faults: f64,
    /// Share over the whole run.
    pub ok_share: f64,
    /// Longest time without any successful operation, in milliseconds.
    pub longest_gap_ms: u64,
}

/// Runs every checker on the files of a run directory.
pub fn check_dir(dir: &Path, fault_windows: &[(u64, u64)]) -> anyhow::Result<Report> {
    let text = std::fs::read_to_string(dir.join("history.jsonl"))?;
    let events = history::parse(&text)?;
    let nodes: Vec<NodeFinal> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("final_state.json"))?)?;
    let by_key = history::operations_by_key(&events)?;

    let mut counts = OpCounts::default();
    for event in &events {
        match event.kind {
            EventType::Invoke => counts.total += 1,
            EventType::Ok => counts.ok += 1,
            EventType::Fail => counts.fail += 1,
            EventType::Info => counts.info += 1,
        }
    }
    let verdicts = linearizable::check_all(&by_key, STEP_BUDGET);
    let mut lin = LinearizableReport {
        keys: verdicts.len(),
        ..Default::default()
    };
    for (key, verdict) in &verdicts {
        match verdict {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable { stuck_at, .. } => lin
                .violations
                .push(format!("{key}: cannot place {stuck_at:?}")),
            Verdict::Unknown { steps } => lin
                .unknown
                .push(format!("{key}: gave up after {steps} steps")),
        }
    }
    let lost_writes = lost_writes(&by_key);
    let converged = !nodes.is_empty()
        && nodes.windows(2).all(|w| {
            w[0].applied_index == w[1].applied_index && w[0].state_digest == w[1].state_digest
        });
    let availability = availability(&events, fault_windows);
    let vms = match std::fs::read(dir.join("vms_final.json")) {
        Ok(bytes) => {
            let final_state: crate::workloads::vm::VmsFinal = serde_json::from_slice(&bytes)?;
            let mut report = vms::check(&final_state);
            let (failures, offset_ms) = host_failures(dir);
            let ops = timed_ops(dir, offset_ms);
            vms::recovery(
                &mut report,
                &final_state.runs,
                &failures,
                &ops,
                crate::workloads::vm::is_ha,
                RECOVERY_BOUND_MS,
            );
            Some(report)
        }
        Err(_) => None,
    };
    Ok(Report {
        valid: lin.violations.is_empty()
            && lin.unknown.is_empty()
            && lost_writes.is_empty()
            && converged
            && vms.as_ref().is_none_or(vms::VmReport::valid),
        vms,
        operations: counts,
        linearizable: lin,
        lost_writes,
        converged,
        nodes,
        availability,
    })
}

/// The final read of each key (processes from [`FINAL_READERS`]) must see the last acknowledged write
/// or one that may have been applied after it.
pub fn lost_writes(by_key: &BTreeMap<String, Vec<Operation>>) -> Vec<String> {
    let mut lost = Vec::new();
    for (key, ops) in by_key {
        let Some(final_read) = ops
            .iter()
            .filter(|o| o.process >= FINAL_READERS)
            .max_by_key(|o| o.call)
        else {
            continue;
        };
        let Action::Read(seen) = &final_read.action else {
            continue;
        };
        let written = |o: &Operation| match &o.action {
            Action::Write(v) => Some(v.clone()),
            Action::Cas { new, .. } => Some(new.clone()),
            Action::Read(_) => None,
        };
        let acked = ops
            .iter()
            .filter(|o| o.ret != u64::MAX && o.process < FINAL_READERS)
            .filter_map(|o| written(o).map(|v| (o, v)))
            .max_by_key(|(o, _)| o.ret);
        let Some((last, value)) = acked else {
            continue;
        };
        let later: Vec<String> = ops
            .iter()
            .filter(|o| o.process < FINAL_READERS && o.ret >= last.call)
            .filter_map(written)
            .collect();
        let explained =
            seen.as_ref() == Some(&value) || seen.as_ref().is_some_and(|s| later.contains(s));
        if !explained {
            lost.push(format!(
                "{key}: last acknowledged write {value:?} (at {} ns) is gone; the final read saw {seen:?}",
                last.ret
            ));
        }
    }
    lost
}

/// HA VMs of a failed host must run elsewhere within this (issue target: 15 s worst case).
pub const RECOVERY_BOUND_MS: u64 = 15_000;

/// The host failures in `faults.jsonl` (host-down, host-pause, host-isolate, two-hosts,
/// leader-failover and its killed leader), and the offset from run time to wall-clock ms.
fn host_failures(dir: &Path) -> (Vec<vms::HostFailure>, u64) {
    let text = std::fs::read_to_string(dir.join("faults.jsonl")).unwrap_or_default();
    let mut failures = Vec::new();
    let mut offset_ms = 0;
    for line in text.lines() {
        let Ok(record) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let (Some(time), Some(wall)) = (record["time"].as_u64(), record["wall_ms"].as_u64()) else {
            continue;
        };
        offset_ms = wall.saturating_sub(time / 1_000_000);
        let host_fault = matches!(
            record["fault"].as_str(),
            Some("host-down" | "host-pause" | "host-isolate" | "two-hosts" | "leader-failover")
        );
        let starts = matches!(record["action"].as_str(), Some("start" | "kill-leader"));
        if host_fault && starts {
            for node in record["nodes"].as_array().into_iter().flatten() {
                if let Some(node) = node.as_str() {
                    failures.push(vms::HostFailure {
                        node: node.to_string(),
                        wall_ms: wall,
                    });
                }
            }
        }
    }
    (failures, offset_ms)
}

/// The VM workload's operations with wall-clock times.
fn timed_ops(dir: &Path, offset_ms: u64) -> Vec<vms::TimedOp> {
    let text = std::fs::read_to_string(dir.join("vm_ops.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<crate::workloads::vm::VmOp>(l).ok())
        .filter(|op| op.kind == "invoke")
        .map(|op| vms::TimedOp {
            wall_ms: offset_ms + op.time / 1_000_000,
            vm: op.vm,
            f: op.f,
        })
        .collect()
}

/// Process ids from here on are the final reads made after healing (one per key).
pub const FINAL_READERS: u64 = 1 << 62;

fn availability(events: &[history::Event], fault_windows: &[(u64, u64)]) -> Availability {
    let in_fault = |t: u64| fault_windows.iter().any(|(s, e)| t >= *s && t <= *e);
    let completions: Vec<&history::Event> = events
        .iter()
        .filter(|e| e.kind != EventType::Invoke && e.process < FINAL_READERS)
        .collect();
    let share = |filter: &dyn Fn(&history::Event) -> bool| {
        let all: Vec<_> = completions.iter().filter(|e| filter(e)).collect();
        if all.is_empty() {
            return 1.0;
        }
        let ok = all.iter().filter(|e| e.kind != EventType::Info).count();
        (ok as f64 / all.len() as f64 * 1000.0).round() / 1000.0
    };
    let mut ok_times: Vec<u64> = completions
        .iter()
        .filter(|e| e.kind == EventType::Ok)
        .map(|e| e.time)
        .collect();
    ok_times.sort_unstable();
    let longest_gap_ms = ok_times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0) / 1_000_000;
    Availability {
        ok_share_without_faults: share(&|e| !in_fault(e.time)),
        ok_share: share(&|_| true),
        longest_gap_ms,
    }
}
