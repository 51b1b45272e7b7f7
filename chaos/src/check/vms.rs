//! VM checkers: after healing, the observed state of every VM converges to its desired state,
//! and the hosts agree with the cluster (every VM desired running has exactly one live guest,
//! on its assigned node, of its current epoch; no other guest lives anywhere).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use paddock_testkit::memvm::{HostGuest, RunInterval};

use crate::workloads::vm::{ClusterVm, VmsFinal};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VmReport {
    pub vms: usize,
    pub running: usize,
    /// VMs whose observed state did not reach the desired one.
    pub not_converged: Vec<String>,
    /// Disagreements between the hosts and the cluster.
    pub host_problems: Vec<String>,
    /// Times a VM ran on two nodes at once (from the guests' run intervals).
    #[serde(default)]
    pub ran_twice: Vec<String>,
    /// HA VMs of a failed host that did not run elsewhere within the bound.
    #[serde(default)]
    pub not_recovered: Vec<String>,
    /// Non-HA VMs of a failed host that ran elsewhere with no operator action.
    #[serde(default)]
    pub restarted_by_itself: Vec<String>,
    /// How long each HA VM of a failed host took to run elsewhere (ms after the failure).
    #[serde(default)]
    pub recovery_ms: Vec<u64>,
    #[serde(default)]
    pub intervals: usize,
    pub settled_after_ms: Option<u64>,
    /// Live migrations by how they ended.
    #[serde(default)]
    pub migrations: BTreeMap<String, usize>,
    /// Migrations that never ended, or completed without the source's memory proven equal to
    /// what the destination received.
    #[serde(default)]
    pub migration_problems: Vec<String>,
}

impl VmReport {
    pub fn valid(&self) -> bool {
        self.not_converged.is_empty()
            && self.host_problems.is_empty()
            && self.ran_twice.is_empty()
            && self.not_recovered.is_empty()
            && self.restarted_by_itself.is_empty()
            && self.migration_problems.is_empty()
    }
}

pub fn check(final_state: &VmsFinal) -> VmReport {
    let mut not_converged = Vec::new();
    for vm in &final_state.cluster {
        let host_down = vm.reason.starts_with("host ") && vm.reason.ends_with(" down");
        let ok = match (vm.desired.as_str(), &vm.node) {
            // A VM that is not HA fails with its host and waits for an operator: correct.
            (_, None) if vm.state == "failed" => !vm.ha && host_down,
            // Unplaced: fine only while it waits with a reason.
            (_, None) => vm.desired == "stopped" || !vm.waiting.is_empty(),
            ("running", Some(_)) => vm.state == "running",
            (_, Some(_)) => vm.state == "stopped",
        };
        if !ok {
            not_converged.push(format!(
                "{}: desired {}, observed {} on {}",
                vm.name,
                vm.desired,
                vm.state,
                vm.node.as_deref().unwrap_or("no node")
            ));
        }
    }
    VmReport {
        vms: final_state.cluster.len(),
        running: final_state
            .cluster
            .iter()
            .filter(|v| v.state == "running")
            .count(),
        not_converged,
        host_problems: host_problems(&final_state.cluster, &final_state.hosts),
        ran_twice: ran_twice(&final_state.runs),
        not_recovered: Vec::new(),
        restarted_by_itself: Vec::new(),
        recovery_ms: Vec::new(),
        intervals: final_state.runs.len(),
        settled_after_ms: final_state.settled_after_ms,
        migrations: final_state
            .migrations
            .iter()
            .fold(BTreeMap::new(), |mut by, m| {
                *by.entry(m.phase.clone()).or_default() += 1;
                by
            }),
        migration_problems: migration_problems(&final_state.migrations),
    }
}

/// Every migration ended; every completed one proved the destination's memory equal to the
/// frozen source's (the digest checked before the switch, and the source's full pass after).
pub fn migration_problems(migrations: &[crate::workloads::vm::MigrationEnd]) -> Vec<String> {
    let mut problems = Vec::new();
    for m in migrations {
        if !m.ended {
            problems.push(format!(
                "migration {} of {} never ended (phase {})",
                m.id, m.vm, m.phase
            ));
        } else if m.phase == "completed" && m.source_verified != Some(true) {
            problems.push(format!(
                "migration {} of {} ({}, {} → {}) completed without the memory proven intact (source verified: {:?})",
                m.id, m.vm, m.mode, m.source, m.destination, m.source_verified
            ));
        }
    }
    problems
}

/// A host failure the harness injected: `node` stopped working at `wall_ms`.
#[derive(Debug, Clone)]
pub struct HostFailure {
    pub node: String,
    pub wall_ms: u64,
}

/// A VM workload operation, with its wall-clock time.
#[derive(Debug, Clone)]
pub struct TimedOp {
    pub vm: String,
    pub f: String,
    pub wall_ms: u64,
}

/// Every HA VM that ran on a failed host when it failed must run again within `bound_ms`
/// (elsewhere, or on the same host if it came back before being declared down);
/// no other VM of that host may run elsewhere in that time unless the workload created or
/// started it. VMs the workload touched around the failure are left out (their fate is the
/// operator's doing, not HA's).
pub fn recovery(
    report: &mut VmReport,
    runs: &[RunInterval],
    failures: &[HostFailure],
    ops: &[TimedOp],
    is_ha: impl Fn(&str) -> bool,
    bound_ms: u64,
) {
    for failure in failures {
        let victims: Vec<&RunInterval> = runs
            .iter()
            .filter(|r| {
                r.node == failure.node
                    && r.start_ms <= failure.wall_ms
                    && failure.wall_ms <= r.end_ms + END_SLACK_MS
            })
            .collect();
        for victim in victims {
            let touched = ops.iter().any(|op| {
                op.vm == victim.vm
                    && op.wall_ms + 1_000 >= failure.wall_ms
                    && op.wall_ms <= failure.wall_ms + bound_ms
            });
            if touched {
                continue;
            }
            // Running again anywhere counts for HA: elsewhere after the host was declared down,
            // or on the same host when it came back (or the cluster had no majority) first.
            let again = runs
                .iter()
                .filter(|r| r.vm == victim.vm && r.start_ms > victim.start_ms)
                .filter(|r| r.start_ms + END_SLACK_MS >= failure.wall_ms)
                .map(|r| r.start_ms)
                .min();
            let elsewhere = runs
                .iter()
                .filter(|r| r.vm == victim.vm && r.node != failure.node)
                .filter(|r| r.start_ms + END_SLACK_MS >= failure.wall_ms)
                .map(|r| r.start_ms)
                .min();
            let took = if is_ha(&victim.vm) { again } else { elsewhere }
                .map(|start| start.saturating_sub(failure.wall_ms));
            if is_ha(&victim.vm) {
                match took {
                    Some(ms) if ms <= bound_ms => report.recovery_ms.push(ms),
                    Some(ms) => report.not_recovered.push(format!(
                        "{} (HA) of {} failed at {} ran again only after {ms} ms (bound {bound_ms} ms)",
                        victim.vm, failure.node, failure.wall_ms
                    )),
                    None => report.not_recovered.push(format!(
                        "{} (HA) of {} failed at {} never ran again",
                        victim.vm, failure.node, failure.wall_ms
                    )),
                }
            } else if let Some(ms) = took.filter(|ms| *ms <= bound_ms) {
                report.restarted_by_itself.push(format!(
                    "{} (not HA) of {} failed at {} ran on another node {ms} ms later with no start",
                    victim.vm, failure.node, failure.wall_ms
                ));
            }
        }
    }
    report.recovery_ms.sort_unstable();
}

/// A guest writes its interval's end every 200 ms; a killed one may have run that much longer.
const END_SLACK_MS: u64 = 200;

/// Single run: no two intervals of the same VM on different nodes overlap.
pub fn ran_twice(runs: &[RunInterval]) -> Vec<String> {
    let mut by_vm: BTreeMap<&str, Vec<&RunInterval>> = BTreeMap::new();
    for run in runs {
        by_vm.entry(run.vm.as_str()).or_default().push(run);
    }
    let mut found = Vec::new();
    for (vm, runs) in by_vm {
        for (i, a) in runs.iter().enumerate() {
            for b in &runs[i + 1..] {
                let slack = |r: &RunInterval| if r.exact_end { 0 } else { END_SLACK_MS };
                let overlap = a.start_ms < b.end_ms + slack(b) && b.start_ms < a.end_ms + slack(a);
                if a.node != b.node && overlap {
                    found.push(format!(
                        "{vm} ran on {} (epoch {}, {}–{} ms) and on {} (epoch {}, {}–{} ms) at once",
                        a.node, a.epoch, a.start_ms, a.end_ms, b.node, b.epoch, b.start_ms, b.end_ms
                    ));
                }
            }
        }
    }
    found
}

/// Where the hosts disagree with the cluster's VMs.
pub fn host_problems(cluster: &[ClusterVm], hosts: &[HostGuest]) -> Vec<String> {
    let mut problems = Vec::new();
    let by_name: BTreeMap<&str, &ClusterVm> =
        cluster.iter().map(|v| (v.name.as_str(), v)).collect();
    let mut live: BTreeMap<&str, Vec<&HostGuest>> = BTreeMap::new();
    for guest in hosts.iter().filter(|g| g.alive) {
        live.entry(guest.vm.as_str()).or_default().push(guest);
        match by_name.get(guest.vm.as_str()) {
            None => problems.push(format!(
                "{} runs on {} (pid {}) but the VM no longer exists",
                guest.vm, guest.node, guest.pid
            )),
            Some(vm) if vm.node.as_deref() != Some(guest.node.as_str()) => problems.push(format!(
                "{} runs on {} but is assigned to {}",
                guest.vm,
                guest.node,
                vm.node.as_deref().unwrap_or("no node")
            )),
            Some(vm) if vm.epoch != guest.epoch => problems.push(format!(
                "{} runs on {} with epoch {}, the assignment is epoch {}",
                guest.vm, guest.node, guest.epoch, vm.epoch
            )),
            Some(vm) if vm.desired != "running" => problems.push(format!(
                "{} runs on {} but is desired {}",
                guest.vm, guest.node, vm.desired
            )),
            Some(_) => {}
        }
    }
    for (vm, guests) in &live {
        if guests.len() > 1 {
            problems.push(format!("{vm} has {} live guests", guests.len()));
        }
    }
    for vm in cluster {
        let in_place = live.get(vm.name.as_str()).is_some_and(|guests| {
            guests
                .iter()
                .any(|g| Some(g.node.as_str()) == vm.node.as_deref() && g.epoch == vm.epoch)
        });
        if vm.desired == "running" && vm.node.is_some() && !in_place {
            problems.push(format!(
                "{} is desired running on {} but no guest of its epoch lives there",
                vm.name,
                vm.node.as_deref().unwrap_or_default()
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(name: &str, node: Option<&str>, epoch: u64, desired: &str, state: &str) -> ClusterVm {
        ClusterVm {
            name: name.into(),
            node: node.map(String::from),
            epoch,
            desired: desired.into(),
            state: state.into(),
            waiting: String::new(),
            ha: false,
            reason: String::new(),
        }
    }

    fn guest(node: &str, vm: &str, epoch: u64, alive: bool) -> HostGuest {
        HostGuest {
            node: node.into(),
            vm: vm.into(),
            epoch,
            pid: 1,
            alive,
        }
    }

    fn run(vm: &str, node: &str, epoch: u64, start_ms: u64, end_ms: u64) -> RunInterval {
        RunInterval {
            vm: vm.into(),
            node: node.into(),
            epoch,
            pid: 1,
            start_ms,
            end_ms,
            exact_end: false,
        }
    }

    #[test]
    fn ha_vms_of_a_failed_host_must_run_elsewhere_in_time_and_others_must_not() {
        let failures = [HostFailure {
            node: "n1".into(),
            wall_ms: 10_000,
        }];
        let runs = [
            run("h-ok", "n1", 1, 0, 10_050),
            run("h-ok", "n2", 2, 15_000, 30_000),
            run("h-late", "n1", 1, 0, 10_000),
            run("h-late", "n3", 2, 40_000, 50_000),
            run("p-moved", "n1", 1, 0, 10_000),
            run("p-moved", "n2", 2, 16_000, 20_000),
            run("p-started", "n1", 1, 0, 10_000),
            run("p-started", "n2", 2, 16_000, 20_000),
        ];
        let ops = [TimedOp {
            vm: "p-started".into(),
            f: "start".into(),
            wall_ms: 14_000,
        }];
        let mut report = VmReport::default();
        recovery(
            &mut report,
            &runs,
            &failures,
            &ops,
            |vm| vm.starts_with("h-"),
            15_000,
        );
        assert_eq!(report.recovery_ms, vec![5_000]);
        assert_eq!(report.not_recovered.len(), 1, "{report:?}");
        assert!(report.not_recovered[0].starts_with("h-late"));
        assert_eq!(report.restarted_by_itself.len(), 1, "{report:?}");
        assert!(report.restarted_by_itself[0].starts_with("p-moved"));
    }

    #[test]
    fn catches_a_vm_running_on_two_nodes_at_once() {
        let twice = ran_twice(&[
            run("a", "n1", 1, 1000, 5000),
            run("a", "n2", 2, 4000, 9000),
            run("b", "n1", 1, 1000, 5000),
            run("b", "n1", 1, 5100, 9000),
        ]);
        assert_eq!(twice.len(), 1, "{twice:?}");
        assert!(twice[0].starts_with("a ran on n1"));
        // Within the 200 ms the end may lag, it counts as overlapping too.
        assert_eq!(
            ran_twice(&[run("c", "n1", 1, 0, 1000), run("c", "n2", 2, 1100, 2000)]).len(),
            1
        );
        assert!(ran_twice(&[run("c", "n1", 1, 0, 1000), run("c", "n2", 2, 1300, 2000)]).is_empty());
        // A migrated-away source ended cleanly: its recorded end is exact, so a destination
        // that started 15 ms later did not overlap; a killed one might have.
        let mut source = run("m", "n1", 1, 0, 1000);
        let destination = run("m", "n2", 2, 1015, 2000);
        assert_eq!(ran_twice(&[source.clone(), destination.clone()]).len(), 1);
        source.exact_end = true;
        assert!(ran_twice(&[source.clone(), destination]).is_empty());
        assert_eq!(ran_twice(&[source, run("m", "n2", 2, 999, 2000)]).len(), 1);
    }

    #[test]
    fn migrations_must_end_and_completed_ones_must_prove_the_memory() {
        let end = |id, phase: &str, ended, verified| crate::workloads::vm::MigrationEnd {
            id,
            vm: "v".into(),
            source: "n1".into(),
            destination: "n2".into(),
            mode: "auto".into(),
            phase: phase.into(),
            error: String::new(),
            ended,
            source_verified: verified,
            downtime_ms: None,
        };
        assert!(migration_problems(&[
            end(1, "completed", true, Some(true)),
            end(2, "rolled_back", true, None)
        ])
        .is_empty());
        assert_eq!(
            migration_problems(&[
                end(3, "completed", true, Some(false)),
                end(4, "completed", true, None),
                end(5, "transferring", false, None)
            ])
            .len(),
            3
        );
    }

    #[test]
    fn a_converged_run_passes() {
        let report = check(&VmsFinal {
            cluster: vec![
                vm("a", Some("n1"), 3, "running", "running"),
                vm("b", Some("n2"), 4, "stopped", "stopped"),
            ],
            hosts: vec![guest("n1", "a", 3, true), guest("n2", "b", 4, false)],
            runs: vec![run("a", "n2", 1, 1000, 2000), run("a", "n1", 3, 2500, 9000)],
            settled_after_ms: Some(10),
            migrations: Vec::new(),
        });
        assert!(report.valid(), "{report:?}");
    }

    #[test]
    fn a_non_ha_vm_may_fail_with_its_host_but_an_ha_vm_may_not() {
        let mut plain = vm("p", None, 0, "running", "failed");
        plain.reason = "host n2 down".into();
        let mut ha = plain.clone();
        ha.name = "h".into();
        ha.ha = true;
        let report = check(&VmsFinal {
            cluster: vec![plain, ha],
            hosts: Vec::new(),
            runs: Vec::new(),
            settled_after_ms: Some(1),
            migrations: Vec::new(),
        });
        assert_eq!(report.not_converged.len(), 1, "{report:?}");
        assert!(report.not_converged[0].starts_with("h:"));
    }

    #[test]
    fn catches_unconverged_vms_and_stray_guests() {
        let report = check(&VmsFinal {
            cluster: vec![
                vm("a", Some("n1"), 3, "running", "starting"),
                vm("b", Some("n2"), 4, "running", "running"),
                vm("c", None, 0, "running", "pending"),
            ],
            hosts: vec![
                guest("n1", "a", 2, true),
                guest("n3", "b", 4, true),
                guest("n2", "gone", 1, true),
            ],
            runs: Vec::new(),
            settled_after_ms: None,
            migrations: Vec::new(),
        });
        assert!(!report.valid());
        assert_eq!(report.not_converged.len(), 2, "{report:?}");
        let problems = report.host_problems.join("\n");
        assert!(problems.contains("a runs on n1 with epoch 2"), "{problems}");
        assert!(
            problems.contains("b runs on n3 but is assigned to n2"),
            "{problems}"
        );
        assert!(problems.contains("gone runs on n2"), "{problems}");
        assert!(
            problems.contains("b is desired running on n2 but no guest"),
            "{problems}"
        );
    }
}
