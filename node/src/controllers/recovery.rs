//! The restart policy, on the leader only: an HA VM that crashed on a live node is restarted
//! in place (new epoch) up to the `restart_limit` setting, then placed once elsewhere, then
//! left failed for an operator. Each step is one `VmRecover` command; apply decides, so a
//! new leader simply carries on from the replicated counters.

use paddock_model::{ClusterState, Command, Health, VmState};

use super::{LeaderMemory, Now};

/// `VmRecover` for every failed HA VM on a ready node that has not been moved off it yet.
pub fn plan(state: &ClusterState, _now: Now, _memory: &LeaderMemory) -> Vec<Command> {
    state
        .vms
        .values()
        .filter(|vm| vm.spec.ha && vm.observed == VmState::Failed)
        .filter_map(|vm| {
            let a = vm.assignment.as_ref()?;
            let node_ready = state
                .nodes
                .get(&a.node)
                .is_some_and(|n| n.health == Health::Ready);
            // `avoid` names the node it crashed on once apply decided to move it.
            let handled = vm.avoid.as_deref() == Some(a.node.as_str());
            (node_ready && !handled).then(|| Command::VmRecover {
                vm: vm.name.clone(),
                epoch: a.epoch,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controllers::testing::{apply, node, plan_fresh, spec, vm};

    fn planned(state: &ClusterState) -> Vec<Command> {
        plan_fresh(plan, state)
    }

    /// Node n1 with HA VM `v` crashed on it.
    fn crashed_ha_vm() -> ClusterState {
        let mut state = ClusterState::default();
        node(&mut state, "n1");
        vm(
            &mut state,
            "v",
            spec(512, true),
            Some(("n1", VmState::Failed)),
        );
        state
    }

    #[test]
    fn recovery_cases() {
        // (case, ha, observed, node down, expected restart)
        let cases: &[(&str, bool, VmState, bool, bool)] = &[
            (
                "crashed HA VM on a ready node",
                true,
                VmState::Failed,
                false,
                true,
            ),
            (
                "crashed VM without HA",
                false,
                VmState::Failed,
                false,
                false,
            ),
            ("running HA VM", true, VmState::Running, false, false),
            (
                "crashed HA VM on a node that is down (failover's job)",
                true,
                VmState::Failed,
                true,
                false,
            ),
        ];
        for (case, ha, observed, node_down, expected) in cases {
            let mut state = ClusterState::default();
            node(&mut state, "n1");
            vm(&mut state, "v", spec(512, *ha), Some(("n1", *observed)));
            if *node_down {
                if let Some(n) = state.nodes.get_mut("n1") {
                    n.health = Health::Down;
                }
            }
            let got = planned(&state);
            assert_eq!(!got.is_empty(), *expected, "{case}: {got:?}");
        }
    }

    #[test]
    fn a_vm_apply_already_moved_off_its_node_is_left_to_placement() {
        let mut state = crashed_ha_vm();
        // Past restart_limit apply marks the node to avoid and releases the VM: placement's
        // job, not another restart here.
        if let Some(v) = state.vms.get_mut("v") {
            v.avoid = Some("n1".into());
        }
        assert!(planned(&state).is_empty());
    }

    #[test]
    fn the_restart_names_the_current_epoch_and_is_not_repeated_once_applied() {
        let mut state = crashed_ha_vm();
        let epoch = state.vms["v"].assignment.as_ref().map_or(0, |a| a.epoch);
        let commands = planned(&state);
        assert_eq!(
            commands,
            [Command::VmRecover {
                vm: "v".into(),
                epoch
            }]
        );
        for command in commands {
            apply(&mut state, 2, command);
        }
        // Restarted in place at a new epoch: no longer failed, nothing more to do.
        assert!(planned(&state).is_empty(), "{:?}", state.vms["v"]);
    }
}
