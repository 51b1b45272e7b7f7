//! Live migrations, on the leader only (DESIGN.md §7): starts pending migrations within the
//! limits (per source node and per cluster, by priority), picks destinations with the
//! scheduler, fails migrations that stall, and ends drains. The live progress sources report
//! is kept here, in the leader's memory ([`Board`]); final figures are committed with the
//! result.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use paddock_migration::Progress;
use paddock_model::migration::{Migration, MigrationFigures, Phase};
use paddock_model::{ClientRequest, ClusterState, Command, Outcome};
use paddock_raft::{NodeId, Raft, SharedState};
use tokio::sync::watch;

use crate::proposer::Proposer;

const CHECK_EVERY: Duration = Duration::from_millis(200);
/// A destination gets this long to allocate and populate its memory, plus per GiB.
const PREPARE_BASE: Duration = Duration::from_secs(30);
const PREPARE_PER_GIB: Duration = Duration::from_secs(10);
/// A transfer without a progress report for this long has failed (source stuck or gone).
const SILENT_TRANSFER: Duration = Duration::from_secs(20);
/// A switched migration whose source never reports the end is closed after this long.
const SWITCH_GRACE: Duration = Duration::from_secs(120);

/// Live progress of running migrations, as their sources last reported it.
#[derive(Debug, Default)]
pub struct Board {
    entries: Mutex<HashMap<u64, (Progress, Instant)>>,
}

impl Board {
    pub fn put(&self, id: u64, progress: Progress) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.insert(id, (progress, Instant::now()));
        }
    }

    /// The last report of `id` and how old it is.
    pub fn get(&self, id: u64) -> Option<(Progress, Duration)> {
        let entries = self.entries.lock().ok()?;
        entries.get(&id).map(|(p, at)| (p.clone(), at.elapsed()))
    }

    fn retain(&self, open: impl Fn(u64) -> bool) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.retain(|id, _| open(*id));
        }
    }
}

/// Final figures from a source's progress.
pub fn figures(progress: &Progress) -> MigrationFigures {
    MigrationFigures {
        total_ms: progress.total_ms,
        downtime_ms: progress.downtime_ms,
        prepare_ms: 0,
        bytes_transferred: progress.bytes_sent,
        memory_bytes: progress.memory_bytes,
        memory_sent: progress.memory_sent,
        rounds: progress.round + 1,
        postcopy: progress.postcopy,
        throttle: progress.throttle,
        counter_at_pause: progress.counter_at_pause,
        digest: progress.digest.clone(),
        source_verified: progress.source_verified,
    }
}

/// The controller's decisions hold only under this node's leadership: never forwarded.
async fn propose(proposer: &Proposer, command: Command) -> Option<Outcome> {
    match proposer.write_as_leader(command).await {
        Ok(outcome) => Some(outcome),
        Err(e) => {
            tracing::warn!(error = %e, "cannot propose a migration step; retrying");
            None
        }
    }
}

pub async fn run(
    raft: Raft,
    node_id: NodeId,
    proposer: Arc<Proposer>,
    shared: SharedState,
    board: Arc<Board>,
    mut shutdown: watch::Receiver<bool>,
) {
    // When this node became leader: reports made to an earlier leader are not here, so
    // silence is only counted from then.
    let mut leading_since: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = shutdown.changed() => return,
        }
        if raft.metrics().borrow().current_leader != Some(node_id) {
            leading_since = None;
            continue;
        }
        let since = *leading_since.get_or_insert_with(Instant::now);
        let state = {
            let applied = shared.read();
            let state = &applied.state;
            let busy = state.migrations.values().any(|m| m.ended_ms.is_none())
                || state
                    .nodes
                    .values()
                    .any(|n| n.drain.as_ref().is_some_and(|d| !d.done));
            if !busy {
                // Nothing to watch: no copy of the whole state every tick.
                board.retain(|_| false);
                continue;
            }
            state.clone()
        };
        board.retain(|id| {
            state
                .migrations
                .get(&id)
                .is_some_and(|m| m.ended_ms.is_none())
        });
        watch_open(&state, &proposer, &board, since).await;
        start_pending(&state, &proposer).await;
        end_drains(&state, &proposer).await;
    }
}

/// Fails migrations that stall, closes switched ones whose source went quiet.
async fn watch_open(state: &ClusterState, proposer: &Proposer, board: &Board, since: Instant) {
    let now_ms = crate::proposer::wall_clock_ms();
    for m in state.migrations.values().filter(|m| m.phase.active()) {
        let age = Duration::from_millis(now_ms.saturating_sub(m.started_ms.unwrap_or(now_ms)));
        let report = board.get(m.id);
        // Silent since the last report, but never longer than the migration has existed or
        // this node has led (a transfer that just began has not reported yet).
        let silent = report
            .as_ref()
            .map_or(Duration::MAX, |(_, age)| *age)
            .min(age)
            .min(since.elapsed());
        let command = match m.phase {
            Phase::Preparing => {
                let memory_gib = state
                    .vms
                    .get(&m.vm)
                    .map_or(0, |vm| vm.spec.memory_mib.div_ceil(1024));
                let limit = PREPARE_BASE + PREPARE_PER_GIB * memory_gib as u32;
                (age > limit && since.elapsed() > limit).then(|| Command::MigrationFail {
                    id: m.id,
                    reason: format!("the destination did not get ready in {} s", limit.as_secs()),
                })
            }
            Phase::Transferring if silent > SILENT_TRANSFER => Some(Command::MigrationFail {
                id: m.id,
                reason: format!(
                    "no progress from the source for {} s",
                    SILENT_TRANSFER.as_secs()
                ),
            }),
            Phase::Switching => {
                let switched =
                    Duration::from_millis(now_ms.saturating_sub(m.switched_ms.unwrap_or(now_ms)));
                (switched > SWITCH_GRACE && since.elapsed() > SWITCH_GRACE).then(|| {
                    Command::MigrationFinish {
                        id: m.id,
                        figures: report.map(|(p, _)| figures(&p)),
                    }
                })
            }
            _ => None,
        };
        if let Some(command) = command {
            tracing::warn!(migration = m.id, vm = %m.vm, ?command, "migration stalled");
            propose(proposer, command).await;
        }
    }
}

/// Starts pending migrations while the limits allow, highest priority first.
async fn start_pending(state: &ClusterState, proposer: &Proposer) {
    let mut pending: Vec<&Migration> = state
        .migrations
        .values()
        .filter(|m| m.phase == Phase::Pending)
        .collect();
    if pending.is_empty() {
        return;
    }
    pending.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
    let mut per_node: BTreeMap<String, u32> = BTreeMap::new();
    let mut total = 0u32;
    for m in state.migrations.values().filter(|m| m.phase.active()) {
        *per_node.entry(m.source.clone()).or_default() += 1;
        total += 1;
    }
    let settings = &state.settings;
    // Destinations chosen in this pass, so two migrations do not both count on the same room.
    let mut planned = state.clone();
    for m in pending {
        if total >= settings.migrations_per_cluster {
            break;
        }
        if per_node.get(&m.source).copied().unwrap_or(0) >= settings.migrations_per_node {
            continue;
        }
        let destination = match choose_destination(&planned, m) {
            Ok(node) => node,
            Err(why) => {
                propose(
                    proposer,
                    Command::MigrationFail {
                        id: m.id,
                        reason: why,
                    },
                )
                .await;
                continue;
            }
        };
        let command = Command::MigrationStart {
            id: m.id,
            destination: destination.clone(),
        };
        match propose(proposer, command.clone()).await {
            Some(Ok(_)) => {
                tracing::info!(migration = m.id, vm = %m.vm, from = %m.source, to = %destination, "migration started");
                planned.apply(&paddock_model::Proposal {
                    at_ms: crate::proposer::wall_clock_ms(),
                    requests: vec![ClientRequest { id: None, command }],
                });
                *per_node.entry(m.source.clone()).or_default() += 1;
                total += 1;
            }
            Some(Err(rejection)) => {
                propose(
                    proposer,
                    Command::MigrationFail {
                        id: m.id,
                        reason: rejection.to_string(),
                    },
                )
                .await;
            }
            None => return,
        }
    }
}

/// The node a migration goes to: the one asked for, or the scheduler's pick among the others.
fn choose_destination(state: &ClusterState, m: &Migration) -> Result<String, String> {
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
    let same_driver = |n: &paddock_model::Node| Some(&n.driver) == source_driver.as_ref();
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
    let plan = paddock_scheduler::plan(view, &[&candidate], state.settings.scheduler);
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

/// A drain ends when no migration from its node is open any more.
async fn end_drains(state: &ClusterState, proposer: &Proposer) {
    for node in state.nodes.values() {
        let Some(drain) = &node.drain else {
            continue;
        };
        if drain.done {
            continue;
        }
        let open = state
            .migrations
            .values()
            .any(|m| m.source == node.name && m.ended_ms.is_none());
        if !open {
            propose(
                proposer,
                Command::NodeDrained {
                    name: node.name.clone(),
                },
            )
            .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use paddock_model::migration::MigrationOptions;
    use paddock_model::{Desired, Proposal, Resources, VmSpec};

    use super::*;

    fn apply(state: &mut ClusterState, command: Command) {
        let outcome = state.apply(&Proposal {
            at_ms: 1,
            requests: vec![ClientRequest { id: None, command }],
        });
        assert!(outcome.iter().all(Result::is_ok), "{outcome:?}");
    }

    /// Nodes `(name, driver)`, VM `v` running on the first, and a migration of it asked for.
    fn cluster(nodes: &[(&str, &str)]) -> (ClusterState, Migration) {
        let mut state = ClusterState::default();
        for (name, driver) in nodes {
            apply(
                &mut state,
                Command::NodeRegister {
                    name: (*name).into(),
                    capacity: Resources {
                        cpus: 4,
                        memory_mib: 4096,
                        disk_mib: 10_000,
                    },
                    labels: Default::default(),
                    driver: (*driver).into(),
                },
            );
        }
        let spec = VmSpec {
            cpus: 1,
            memory_mib: 1024,
            disks: vec![],
            labels: Default::default(),
            ha: false,
            priority: 0,
            constraints: Default::default(),
        };
        apply(
            &mut state,
            Command::VmCreate {
                name: "v".into(),
                spec,
                desired: Desired::Running,
            },
        );
        apply(
            &mut state,
            Command::VmPlace {
                placements: vec![paddock_model::Placement {
                    vm: "v".into(),
                    node: nodes[0].0.into(),
                }],
            },
        );
        let epoch = state.vms["v"].assignment.as_ref().map_or(0, |a| a.epoch);
        apply(
            &mut state,
            Command::VmObserved {
                node: nodes[0].0.into(),
                reports: vec![paddock_model::VmReport {
                    vm: "v".into(),
                    epoch,
                    state: paddock_model::VmState::Running,
                    reason: None,
                }],
            },
        );
        apply(
            &mut state,
            Command::MigrationCreate {
                vm: "v".into(),
                destination: None,
                options: MigrationOptions::default(),
                priority: 0,
                reason: "test".into(),
            },
        );
        let migration = state.migrations.values().next().cloned().expect("created");
        (state, migration)
    }

    #[test]
    fn destinations_are_other_nodes_with_the_same_driver() {
        let (state, m) = cluster(&[("n1", "memvm"), ("n2", "memvm")]);
        assert_eq!(choose_destination(&state, &m), Ok("n2".to_string()));

        let (state, m) = cluster(&[("n1", "memvm"), ("n2", "libvirt"), ("n3", "memvm")]);
        assert_eq!(choose_destination(&state, &m), Ok("n3".to_string()));

        let (state, m) = cluster(&[("n1", "memvm"), ("n2", "libvirt")]);
        let refused = choose_destination(&state, &m).expect_err("no memvm node but the source");
        assert!(refused.starts_with("no destination fits"), "{refused}");
    }
}
