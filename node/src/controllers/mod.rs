//! Controllers that run on the leader only (DESIGN.md §1). Each is a pure planner,
//! `plan(state, now, memory) -> Vec<Command>`: it reads the applied state, the instant and the
//! leader's memory (heartbeats heard, migration progress reported) and returns the commands to
//! propose. It changes nothing itself, so a new leader resumes where the old one stopped, and
//! each can be tested on made-up states and instants.
//!
//! ```text
//!   runner (one task, leader-gated): wakes on a newly applied index or every TICK
//!     └─ for each planner in PLANNERS: plan(&state, now, &memory) ─▶ commands
//!          └─ proposer.write_as_leader(command)   (never forwarded; stops at once when
//!                                                  leadership is lost)
//! ```
//!
//! Apply re-checks every command (Nomad's plan-apply): a plan made on a view that went stale
//! is refused and planned again on the next wake.
//!
//! A new controller (deployments, rebalancing) is one more planner in [`PLANNERS`].

pub mod failure;
pub mod migration;
pub mod placement;
pub mod recovery;
mod runner;

use std::time::{Duration, Instant};

use paddock_model::{ClusterState, Command};

pub use runner::Runner;

use crate::liveness::Heard;
use crate::progress_board::ProgressBoard;

/// The present instant, on both clocks planners need.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// This process's monotonic clock: silences, leadership age, report age.
    pub instant: Instant,
    /// Wall-clock milliseconds: the clock of `at_ms` and of the times stored in objects
    /// (`started_ms`, `switched_ms`).
    pub wall_ms: u64,
}

/// This node's current leadership, as the runner tracks it.
#[derive(Debug, Clone, Copy)]
pub struct Leadership {
    /// When this process first saw itself leading this term. What earlier leaders heard or
    /// were told is not here, so silence is never counted from before it.
    pub since: Instant,
    /// The later of `since` and the moment this process last resumed from a stall (SIGSTOP, a
    /// stalled VM): a process that slept wakes to find every node "silent" for as long as it
    /// slept, which is no evidence of anything.
    pub watching_since: Instant,
}

/// What the leader remembers outside the log.
pub struct LeaderMemory<'a> {
    pub leadership: Leadership,
    /// When each node last heartbeated this leader.
    pub heard: &'a Heard,
    /// The last progress each migration's source reported.
    pub board: &'a ProgressBoard,
    /// The longest Raft election timeout: part of the bound after which a silent node is down.
    pub election_max: Duration,
}

/// A leader controller's decisions.
pub type Planner = fn(&ClusterState, Now, &LeaderMemory) -> Vec<Command>;

/// Every leader controller, in the order the runner consults them on each wake: the failure
/// detector first (a node declared down releases its VMs to placement in the same wake).
pub const PLANNERS: &[(&str, Planner)] = &[
    ("failure", failure::plan),
    ("placement", placement::plan),
    ("recovery", recovery::plan),
    ("migration", migration::plan),
];

#[cfg(test)]
pub(crate) mod testing {
    //! Made-up clusters and instants for the planners' tests.

    use std::time::{Duration, Instant};

    use paddock_model::{
        ClientRequest, ClusterState, Command, Desired, Placement, Proposal, Resources, VmReport,
        VmSpec, VmState,
    };

    use super::{LeaderMemory, Leadership, Now, Planner};
    use crate::liveness::Heard;
    use crate::progress_board::ProgressBoard;

    /// Applies `command` at wall time `at_ms`, which must be accepted.
    pub fn apply(state: &mut ClusterState, at_ms: u64, command: Command) {
        let outcome = state.apply(&Proposal {
            at_ms,
            requests: vec![ClientRequest::internal(command)],
        });
        assert!(outcome.iter().all(Result::is_ok), "{outcome:?}");
    }

    pub fn node(state: &mut ClusterState, name: &str) {
        apply(
            state,
            1,
            Command::NodeRegister {
                name: name.into(),
                capacity: Resources {
                    cpus: 4,
                    memory_mib: 4096,
                    disk_mib: 10_000,
                },
                labels: Default::default(),
                driver: "memvm".into(),
            },
        );
    }

    pub fn spec(memory_mib: u64, ha: bool) -> VmSpec {
        VmSpec {
            cpus: 1,
            memory_mib,
            disks: vec![],
            labels: Default::default(),
            ha,
            priority: 0,
            constraints: Default::default(),
            guest: Default::default(),
        }
    }

    /// Creates `vm` and, with `on`, places it there and reports it `observed`.
    pub fn vm(state: &mut ClusterState, name: &str, spec: VmSpec, on: Option<(&str, VmState)>) {
        apply(
            state,
            1,
            Command::VmCreate {
                name: name.into(),
                spec,
                desired: Desired::Running,
            },
        );
        let Some((node, observed)) = on else {
            return;
        };
        apply(
            state,
            1,
            Command::VmPlace {
                placements: vec![Placement {
                    vm: name.into(),
                    node: node.into(),
                }],
            },
        );
        let epoch = state.vms[name].assignment.as_ref().map_or(0, |a| a.epoch);
        apply(
            state,
            1,
            Command::VmObserved {
                node: node.into(),
                reports: vec![VmReport {
                    vm: name.into(),
                    epoch,
                    state: observed,
                    reason: (observed == VmState::Failed).then(|| "crashed".into()),
                }],
            },
        );
    }

    /// What `plan` proposes on `state` at the start of a leadership that has heard nothing yet.
    pub fn plan_fresh(plan: Planner, state: &ClusterState) -> Vec<Command> {
        let (heard, board) = (Heard::default(), ProgressBoard::default());
        let t0 = Instant::now();
        let memory = LeaderMemory {
            leadership: leading_since(t0),
            heard: &heard,
            board: &board,
            election_max: Duration::from_millis(400),
        };
        plan(state, at(t0, 0, Duration::ZERO), &memory)
    }

    /// A leadership that began at `t0` and has watched without a stall since.
    pub fn leading_since(t0: Instant) -> Leadership {
        Leadership {
            since: t0,
            watching_since: t0,
        }
    }

    /// `after` past `t0` on the monotonic clock, and `wall0 + after` on the wall clock.
    pub fn at(t0: Instant, wall0: u64, after: Duration) -> Now {
        Now {
            instant: t0 + after,
            wall_ms: wall0 + after.as_millis() as u64,
        }
    }
}
