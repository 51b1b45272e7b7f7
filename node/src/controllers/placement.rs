//! The placement planner: VMs that need a node are planned by the scheduler and proposed as one
//! `VmPlace` command; apply re-checks each placement, and refused ones are simply planned again
//! on the next wake. VMs that fit nowhere get their reason recorded (`VmWaiting`) and are placed
//! when capacity appears: every applied change (a node registers, a VM is deleted...) wakes the
//! runner.

use paddock_model::{ClusterState, Command};

use super::{LeaderMemory, Now};

/// One `VmPlace` for the VMs that fit, one `VmWaiting` for those whose reason changed.
pub fn plan(state: &ClusterState, _now: Now, _memory: &LeaderMemory) -> Vec<Command> {
    if !state.vms.values().any(|vm| vm.needs_placement()) {
        return Vec::new();
    }
    let mut plan = paddock_scheduler::plan_pending(state);
    // Only reasons that changed are worth a log entry.
    plan.waiting
        .retain(|(vm, reason)| state.vms.get(vm).and_then(|v| v.waiting.as_ref()) != Some(reason));
    let mut commands = Vec::new();
    if !plan.placements.is_empty() {
        commands.push(Command::VmPlace {
            placements: plan.placements,
        });
    }
    if !plan.waiting.is_empty() {
        commands.push(Command::VmWaiting {
            reasons: plan.waiting,
        });
    }
    commands
}

#[cfg(test)]
mod tests {
    use paddock_model::VmState;

    use super::*;
    use crate::controllers::testing::{apply, node, plan_fresh, spec, vm};

    fn planned(state: &ClusterState) -> Vec<Command> {
        plan_fresh(plan, state)
    }

    #[test]
    fn placement_cases() {
        // (case, nodes, vms (name, memory MiB), expected commands by kind and VM)
        type Case = (
            &'static str,
            &'static [&'static str],
            &'static [(&'static str, u64)],
            &'static [&'static str],
        );
        let cases: &[Case] = &[
            ("nothing to place", &["n1"], &[], &[]),
            ("one VM, one node", &["n1"], &[("a", 1024)], &["place a"]),
            ("no node registered yet", &[], &[("a", 1024)], &["wait a"]),
            (
                "full cluster: what fits is placed, the rest waits",
                &["n1"],
                &[("a", 3072), ("b", 3072)],
                &["place a", "wait b"],
            ),
            (
                "too big for any node",
                &["n1", "n2"],
                &[("huge", 1 << 20)],
                &["wait huge"],
            ),
        ];
        for (case, nodes, vms, expected) in cases {
            let mut state = ClusterState::default();
            for n in *nodes {
                node(&mut state, n);
            }
            for (name, memory) in *vms {
                vm(&mut state, name, spec(*memory, false), None);
            }
            let got: Vec<String> = planned(&state)
                .iter()
                .flat_map(|c| match c {
                    Command::VmPlace { placements } => placements
                        .iter()
                        .map(|p| format!("place {}", p.vm))
                        .collect::<Vec<_>>(),
                    Command::VmWaiting { reasons } => {
                        reasons.iter().map(|(vm, _)| format!("wait {vm}")).collect()
                    }
                    other => panic!("{case}: unexpected {other:?}"),
                })
                .collect();
            assert_eq!(got, *expected, "{case}");
        }
    }

    #[test]
    fn a_reason_already_recorded_is_not_proposed_again() {
        let mut state = ClusterState::default();
        node(&mut state, "n1");
        vm(&mut state, "huge", spec(1 << 20, false), None);
        let first = planned(&state);
        assert!(
            matches!(first.as_slice(), [Command::VmWaiting { .. }]),
            "{first:?}"
        );
        for command in first {
            apply(&mut state, 2, command);
        }
        assert!(
            planned(&state).is_empty(),
            "the same reason again is no news"
        );
    }

    #[test]
    fn running_vms_need_no_placement() {
        let mut state = ClusterState::default();
        node(&mut state, "n1");
        vm(
            &mut state,
            "a",
            spec(512, false),
            Some(("n1", VmState::Running)),
        );
        assert!(planned(&state).is_empty());
    }
}
