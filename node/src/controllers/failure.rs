//! The failure detector (DESIGN.md §5), on the leader only: a node whose agent has not
//! heartbeated for `lease + max election timeout + margin`, counted from the later of its last
//! heartbeat and the start of this leadership, is declared down (`NodeDown`, one log entry).
//! Apply then releases its HA VMs, which the placement controller places elsewhere with new
//! epochs, and marks its other VMs failed. Heartbeats themselves never reach the log.
//!
//! Nodes in maintenance are never declared down, and no node is while HA is disarmed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use paddock_model::{Command, Health};
use paddock_raft::{NodeId, Raft, SharedState};
use tokio::sync::watch;

use crate::liveness::{down_after, Heard};
use crate::proposer::Proposer;

const CHECK_EVERY: Duration = Duration::from_millis(200);

pub async fn run(
    raft: Raft,
    node_id: NodeId,
    proposer: Arc<Proposer>,
    shared: SharedState,
    heard: Arc<Heard>,
    election_max: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    // Silence is only evidence while this loop was watching: a process that was itself
    // paused (SIGSTOP, a stalled VM) wakes to find every node "silent" for as long as it
    // slept. After such a gap, silence counts from the moment it resumed.
    let mut last_tick = Instant::now();
    let mut watching_since = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = shutdown.changed() => return,
        }
        let now = Instant::now();
        let gap = now.duration_since(last_tick);
        last_tick = now;
        if gap > CHECK_EVERY * 5 {
            tracing::warn!(
                stalled_ms = gap.as_millis() as u64,
                "this process stalled; node silence is counted from now"
            );
            watching_since = now;
        }
        let metrics = raft.metrics().borrow().clone();
        if metrics.current_leader != Some(node_id) {
            continue;
        }
        let silent: Vec<(String, Duration)> = {
            let applied = shared.read();
            let settings = &applied.state.settings;
            let threshold = down_after(
                Duration::from_millis(settings.lease_ms),
                Duration::from_millis(settings.down_after_ms),
                election_max,
            );
            if !applied.state.settings.ha_armed {
                // Disarmed: failover is frozen cluster-wide.
                continue;
            }
            applied
                .state
                .nodes
                .values()
                .filter(|n| n.health == Health::Ready && !n.maintenance)
                .map(|n| {
                    let silent = heard.silent_for(&n.name, metrics.current_term, now);
                    (
                        n.name.clone(),
                        silent.min(now.duration_since(watching_since)),
                    )
                })
                .filter(|(_, silent)| *silent > threshold)
                .collect()
        };
        for (name, silent) in silent {
            tracing::warn!(node = %name, silent_ms = silent.as_millis() as u64, "no heartbeat for longer than any lease: declaring the node down");
            let command = Command::NodeDown { name: name.clone() };
            if let Err(e) = proposer.write_as_leader(command).await {
                tracing::warn!(node = %name, error = %e, "cannot commit the node down (no longer the leader?); will look again");
            }
        }
    }
}
