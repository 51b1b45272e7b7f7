//! The one leader-gated loop that drives every planner of [`super::PLANNERS`].
//!
//! It wakes when this replica applies a new log index or every [`TICK`]; while this node leads
//! it asks each planner for commands on the applied state and proposes them with
//! [`Proposer::write_as_leader`] (a decision of this leadership, never forwarded to a later
//! one). It stops proposing the moment leadership is lost: the rest of the plan is dropped, and
//! the next leader plans afresh from the replicated state.

use std::sync::Arc;
use std::time::{Duration, Instant};

use paddock_model::{Command, Response};
use paddock_raft::{NodeId, Raft, SharedState};
use tokio::sync::watch;

use super::{LeaderMemory, Leadership, Now, PLANNERS};
use crate::liveness::Heard;
use crate::progress_board::ProgressBoard;
use crate::proposer::{ProposeError, Proposer};

/// Longest time between two planning passes (timeouts and silences need the clock to move).
const TICK: Duration = Duration::from_millis(200);
/// Shortest time between two passes woken by applied entries (bounds the work under a burst).
const MIN_GAP: Duration = Duration::from_millis(10);
/// A gap between two wakes longer than this means this process itself stalled.
const STALL: Duration = Duration::from_secs(1);

pub struct Runner {
    pub raft: Raft,
    pub node_id: NodeId,
    pub proposer: Arc<Proposer>,
    pub shared: SharedState,
    pub heard: Arc<Heard>,
    pub board: Arc<ProgressBoard>,
    pub election_max: Duration,
}

impl Runner {
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut metrics = self.raft.metrics();
        let mut leadership: Option<(u64, Leadership)> = None;
        let mut last_wake = Instant::now();
        let mut last_applied = None;
        loop {
            let now = Instant::now();
            let gap = now.duration_since(last_wake);
            last_wake = now;
            let (leader, term) = {
                let m = metrics.borrow();
                (m.current_leader, m.current_term)
            };
            if leader != Some(self.node_id) {
                leadership = None;
            } else {
                let current = match leadership {
                    Some((t, current)) if t == term => current,
                    _ => {
                        // The leader's memory of heartbeats keeps its own start of this term
                        // (the Nodes service's suspect list counts from it too).
                        let since = self.heard.leading_since(term, now);
                        Leadership {
                            since,
                            watching_since: since,
                        }
                    }
                };
                let mut current = current;
                if gap > STALL {
                    tracing::warn!(
                        stalled_ms = gap.as_millis() as u64,
                        "this process stalled; node silence is counted from now"
                    );
                    current.watching_since = now;
                }
                leadership = Some((term, current));
                self.pass(current).await;
            }
            // Sleep until a new index is applied, the tick, or shutdown.
            let deadline = tokio::time::Instant::now() + TICK;
            loop {
                tokio::select! {
                    changed = metrics.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        let (applied, lost) = {
                            let m = metrics.borrow();
                            (m.last_applied, m.current_leader != Some(self.node_id) && leadership.is_some())
                        };
                        if applied != last_applied || lost {
                            last_applied = applied;
                            tokio::time::sleep(MIN_GAP).await;
                            break;
                        }
                    }
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = shutdown.changed() => return,
                }
            }
        }
    }

    /// One planning pass under `leadership`.
    async fn pass(&self, leadership: Leadership) {
        let now = Now {
            instant: Instant::now(),
            wall_ms: crate::proposer::wall_clock_ms(),
        };
        let memory = LeaderMemory {
            leadership,
            heard: &self.heard,
            board: &self.board,
            election_max: self.election_max,
        };
        let planned: Vec<(&str, Vec<Command>)> = {
            let applied = self.shared.read();
            let state = &applied.state;
            // Reports of migrations that ended are of no more use.
            self.board.retain(|id| {
                state
                    .migrations
                    .get(&id)
                    .is_some_and(|m| m.ended_ms.is_none())
            });
            PLANNERS
                .iter()
                .map(|(name, plan)| (*name, plan(state, now, &memory)))
                .collect()
        };
        for (planner, commands) in planned {
            for command in commands {
                match self.proposer.write_as_leader(command).await {
                    Ok(Ok(Response::Placed { placed, refused })) if !refused.is_empty() => {
                        tracing::info!(
                            placed = placed.len(),
                            refused = refused.len(),
                            "stale placements refused; planning again"
                        );
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(rejection)) => {
                        // Planned on a view that went stale: the next pass plans again.
                        tracing::debug!(planner, %rejection, "planned command refused");
                    }
                    Err(ProposeError::NotLeader | ProposeError::ShuttingDown) => return,
                    Err(e) => {
                        tracing::warn!(planner, error = %e, "cannot propose; planning again");
                        return;
                    }
                }
            }
        }
    }
}
