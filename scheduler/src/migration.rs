//! Migration planning (DESIGN.md §7): which pending migrations start now, where they go, and
//! which drains are over. Pure, like the placement planner: the leader's migration controller
//! proposes what this returns, and apply re-checks every step.
//!
//! - **Limits**: at most `migrations_per_node` open migrations out of one source and
//!   `migrations_per_cluster` in all; the rest wait in the queue.
//! - **Queue**: highest priority first, then the oldest (lowest id).
//! - **Destination**: the one asked for, or the placement planner's pick among the nodes with
//!   the source's driver, never the source itself. Destinations chosen earlier in the same pass
//!   count against the room that is left, so two migrations never count on the same free memory.

use std::collections::BTreeMap;

use paddock_model::migration::{Migration, Phase};
use paddock_model::{ClientRequest, ClusterState, Command, Node, Proposal};

/// The commands that start pending migrations within the limits, highest priority first: a
/// `MigrationStart` for each that has a destination, a `MigrationFail` with the reason for each
/// that cannot start at all (no destination fits, the VM is gone). `now_ms` is the proposal
/// time apply would see.
pub fn plan_starts(state: &ClusterState, now_ms: u64) -> Vec<Command> {
    let mut pending: Vec<&Migration> = state
        .migrations
        .values()
        .filter(|m| m.phase == Phase::Pending)
        .collect();
    if pending.is_empty() {
        return Vec::new();
    }
    pending.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
    let mut per_node: BTreeMap<&str, u32> = BTreeMap::new();
    let mut total = 0u32;
    for m in state.migrations.values().filter(|m| m.phase.active()) {
        *per_node.entry(m.source.as_str()).or_default() += 1;
        total += 1;
    }
    let settings = &state.settings;
    // The state as it will be once the starts planned so far are applied.
    let mut planned = state.clone();
    let mut commands = Vec::new();
    for m in pending {
        if total >= settings.migrations_per_cluster {
            break;
        }
        if per_node.get(m.source.as_str()).copied().unwrap_or(0) >= settings.migrations_per_node {
            continue;
        }
        let start = match choose_destination(&planned, m) {
            Ok(destination) => Command::MigrationStart {
                id: m.id,
                destination,
            },
            Err(reason) => {
                commands.push(Command::MigrationFail { id: m.id, reason });
                continue;
            }
        };
        let outcome = planned.apply(&Proposal {
            at_ms: now_ms,
            requests: vec![ClientRequest {
                id: None,
                command: start.clone(),
                caller: None,
            }],
        });
        match outcome.into_iter().next() {
            Some(Ok(_)) => {
                commands.push(start);
                *per_node.entry(m.source.as_str()).or_default() += 1;
                total += 1;
            }
            // Apply would refuse the start (the destination asked for is full, say): the
            // migration cannot happen as asked.
            Some(Err(rejection)) => commands.push(Command::MigrationFail {
                id: m.id,
                reason: rejection.to_string(),
            }),
            None => {}
        }
    }
    commands
}

/// The node a migration goes to: the one asked for, or the scheduler's pick among the others
/// with the same driver.
pub fn choose_destination(state: &ClusterState, m: &Migration) -> Result<String, String> {
    if let Some(to) = &m.requested {
        return Ok(to.clone());
    }
    let vm = state
        .vms
        .get(&m.vm)
        .ok_or_else(|| format!("VM {} no longer exists", m.vm))?;
    let source_driver = state.nodes.get(&m.source).map(|n| n.driver.clone());
    // Plan it as if it needed a node, never its own, only on nodes with the same driver.
    let mut candidate = vm.clone();
    candidate.assignment = None;
    candidate.avoid = Some(m.source.clone());
    let same_driver = |n: &Node| Some(&n.driver) == source_driver.as_ref();
    // Only a mixed cluster needs a view without the other drivers' nodes.
    let filtered;
    let view = if state.nodes.values().all(same_driver) {
        state
    } else {
        let mut view = state.clone();
        view.nodes.retain(|_, n| same_driver(n));
        filtered = view;
        &filtered
    };
    let plan = crate::plan(view, &[&candidate], state.settings.scheduler);
    match plan.placements.first() {
        Some(p) => Ok(p.node.clone()),
        None => Err(format!(
            "no destination fits: {}",
            plan.waiting
                .first()
                .map_or("no other node", |(_, why)| why.as_str())
        )),
    }
}

/// `NodeDrained` for every drain whose node has no open migration out any more.
pub fn finished_drains(state: &ClusterState) -> Vec<Command> {
    state
        .nodes
        .values()
        .filter(|node| node.drain.as_ref().is_some_and(|d| !d.done))
        .filter(|node| {
            !state
                .migrations
                .values()
                .any(|m| m.source == node.name && m.ended_ms.is_none())
        })
        .map(|node| Command::NodeDrained {
            name: node.name.clone(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use paddock_model::migration::MigrationOptions;
    use paddock_model::{Desired, Placement, Resources, VmReport, VmSpec, VmState};

    use super::*;

    fn apply(state: &mut ClusterState, command: Command) {
        let outcome = state.apply(&Proposal {
            at_ms: 1,
            requests: vec![ClientRequest::internal(command)],
        });
        assert!(outcome.iter().all(Result::is_ok), "{outcome:?}");
    }

    fn node(state: &mut ClusterState, name: &str, driver: &str, memory_mib: u64) {
        apply(
            state,
            Command::NodeRegister {
                name: name.into(),
                capacity: Resources {
                    cpus: 8,
                    memory_mib,
                    disk_mib: 10_000,
                },
                labels: Default::default(),
                driver: driver.into(),
            },
        );
    }

    /// A running VM `name` of `memory_mib` on `node`, and a migration of it asked for.
    fn vm_to_move(state: &mut ClusterState, name: &str, on: &str, memory_mib: u64, priority: u16) {
        let spec = VmSpec {
            cpus: 1,
            memory_mib,
            disks: vec![],
            labels: Default::default(),
            ha: false,
            priority: 0,
            constraints: Default::default(),
            guest: Default::default(),
        };
        apply(
            state,
            Command::VmCreate {
                name: name.into(),
                spec,
                desired: Desired::Running,
            },
        );
        apply(
            state,
            Command::VmPlace {
                placements: vec![Placement {
                    vm: name.into(),
                    node: on.into(),
                }],
            },
        );
        let epoch = state.vms[name].assignment.as_ref().map_or(0, |a| a.epoch);
        apply(
            state,
            Command::VmObserved {
                node: on.into(),
                reports: vec![VmReport {
                    vm: name.into(),
                    epoch,
                    state: VmState::Running,
                    reason: None,
                }],
            },
        );
        apply(
            state,
            Command::MigrationCreate {
                vm: name.into(),
                destination: None,
                options: MigrationOptions::default(),
                priority,
                reason: "test".into(),
            },
        );
    }

    fn migration_of<'a>(state: &'a ClusterState, vm: &str) -> &'a Migration {
        state
            .migrations
            .values()
            .find(|m| m.vm == vm)
            .expect("migration exists")
    }

    /// (vm, destination) of each start, and (vm) of each fail, in plan order.
    fn summary(state: &ClusterState, commands: &[Command]) -> Vec<String> {
        let vm_of = |id: &u64| state.migrations[id].vm.clone();
        commands
            .iter()
            .map(|c| match c {
                Command::MigrationStart { id, destination } => {
                    format!("start {} -> {destination}", vm_of(id))
                }
                Command::MigrationFail { id, .. } => format!("fail {}", vm_of(id)),
                other => format!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn destinations_are_other_nodes_with_the_same_driver() {
        type Case = (
            &'static [(&'static str, &'static str)],
            Result<&'static str, &'static str>,
        );
        let cases: &[Case] = &[
            (&[("n1", "memvm"), ("n2", "memvm")], Ok("n2")),
            (
                &[("n1", "memvm"), ("n2", "libvirt"), ("n3", "memvm")],
                Ok("n3"),
            ),
            (
                &[("n1", "memvm"), ("n2", "libvirt")],
                Err("no destination fits"),
            ),
            (&[("n1", "memvm")], Err("no destination fits")),
        ];
        for (nodes, expected) in cases {
            let mut state = ClusterState::default();
            for (name, driver) in *nodes {
                node(&mut state, name, driver, 4096);
            }
            vm_to_move(&mut state, "v", "n1", 1024, 0);
            let chosen = choose_destination(&state, migration_of(&state, "v"));
            match (expected, chosen) {
                (Ok(want), Ok(got)) => assert_eq!(*want, got, "{nodes:?}"),
                (Err(prefix), Err(why)) => assert!(why.starts_with(prefix), "{nodes:?}: {why}"),
                (want, got) => panic!("{nodes:?}: wanted {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn starts_respect_the_node_and_cluster_limits_by_priority() {
        // (per node, per cluster, VMs started in order): three VMs leave n1, one leaves n2.
        let cases: &[(u32, u32, &[&str])] = &[
            (2, 5, &["hi", "mid", "other"]),
            (1, 5, &["hi", "other"]),
            (3, 5, &["hi", "mid", "other", "lo"]),
            (2, 1, &["hi"]),
            (2, 0, &[]),
        ];
        for (per_node, per_cluster, expected) in cases {
            let mut state = ClusterState::default();
            node(&mut state, "n1", "memvm", 8192);
            node(&mut state, "n2", "memvm", 8192);
            node(&mut state, "n3", "memvm", 16384);
            vm_to_move(&mut state, "lo", "n1", 512, 0);
            vm_to_move(&mut state, "hi", "n1", 512, 9);
            vm_to_move(&mut state, "mid", "n1", 512, 5);
            vm_to_move(&mut state, "other", "n2", 512, 1);
            state.settings.migrations_per_node = *per_node;
            state.settings.migrations_per_cluster = *per_cluster;
            let commands = plan_starts(&state, 10);
            let started: Vec<String> = commands
                .iter()
                .map(|c| match c {
                    Command::MigrationStart { id, destination } => {
                        assert_ne!(*destination, state.migrations[id].source);
                        state.migrations[id].vm.clone()
                    }
                    other => panic!("only starts expected, got {other:?}"),
                })
                .collect();
            assert_eq!(started, *expected, "limits {per_node}/{per_cluster}");
        }
    }

    #[test]
    fn starts_planned_together_never_count_on_the_same_room() {
        // n2 has room for one 3 GiB VM: the second migration must fail, not double-book it.
        let mut state = ClusterState::default();
        node(&mut state, "n1", "memvm", 8192);
        node(&mut state, "n2", "memvm", 4096);
        vm_to_move(&mut state, "a", "n1", 3072, 1);
        vm_to_move(&mut state, "b", "n1", 3072, 0);
        let commands = plan_starts(&state, 10);
        assert_eq!(summary(&state, &commands), ["start a -> n2", "fail b"]);
    }

    #[test]
    fn a_start_apply_would_refuse_becomes_a_failure_with_its_reason() {
        let mut state = ClusterState::default();
        node(&mut state, "n1", "memvm", 8192);
        node(&mut state, "n2", "memvm", 1024);
        vm_to_move(&mut state, "big", "n1", 4096, 0);
        // Asked for a node that cannot hold it: the planner does not second-guess the request,
        // apply refuses it, and the refusal is the migration's failure reason.
        let id = migration_of(&state, "big").id;
        if let Some(m) = state.migrations.get_mut(&id) {
            m.requested = Some("n2".into());
        }
        let commands = plan_starts(&state, 10);
        match commands.as_slice() {
            [Command::MigrationFail { id: failed, reason }] => {
                assert_eq!(*failed, id);
                assert!(!reason.is_empty());
            }
            other => panic!("expected one failure, got {other:?}"),
        }
    }

    #[test]
    fn a_drain_ends_when_its_node_has_no_open_migration() {
        let mut state = ClusterState::default();
        node(&mut state, "n1", "memvm", 8192);
        node(&mut state, "n2", "memvm", 8192);
        assert!(finished_drains(&state).is_empty(), "no drain, nothing ends");
        vm_to_move(&mut state, "v", "n1", 512, 0);
        apply(
            &mut state,
            Command::NodeDrain {
                name: "n1".into(),
                evacuate: false,
            },
        );
        assert!(
            finished_drains(&state).is_empty(),
            "a migration out of n1 is open"
        );
        let id = migration_of(&state, "v").id;
        apply(&mut state, Command::MigrationCancel { id });
        assert_eq!(
            finished_drains(&state),
            [Command::NodeDrained { name: "n1".into() }]
        );
    }
}
