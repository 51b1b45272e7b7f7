//! The failure detector (DESIGN.md §5), on the leader only: a node whose agent has not
//! heartbeated for `lease + max election timeout + margin`, counted from the later of its last
//! heartbeat and the start of this leadership, is declared down (`NodeDown`, one log entry).
//! Apply then releases its HA VMs, which the placement controller places elsewhere with new
//! epochs, and marks its other VMs failed. Heartbeats themselves never reach the log.
//!
//! Nodes in maintenance are never declared down, and no node is while HA is disarmed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use paddock_model::{ClientRequest, Command, Health};
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
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = shutdown.changed() => return,
        }
        let metrics = raft.metrics().borrow().clone();
        if metrics.current_leader != Some(node_id) {
            continue;
        }
        let now = Instant::now();
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
                    (
                        n.name.clone(),
                        heard.silent_for(&n.name, metrics.current_term, now),
                    )
                })
                .filter(|(_, silent)| *silent > threshold)
                .collect()
        };
        for (name, silent) in silent {
            tracing::warn!(node = %name, silent_ms = silent.as_millis() as u64, "no heartbeat for longer than any lease: declaring the node down");
            let request = ClientRequest {
                id: None,
                command: Command::NodeDown { name: name.clone() },
            };
            if let Err(e) = proposer.write(request).await {
                tracing::warn!(node = %name, error = %e, "cannot commit the node down; retrying");
            }
        }
    }
}
