//! The placement controller: while this node leads, VMs that need a node are planned by the
//! scheduler and the plan proposed as one `VmPlace` command; apply re-checks each placement,
//! and refused ones are simply planned again on the next pass. VMs that fit nowhere get their
//! reason recorded (`VmWaiting`) and are placed when capacity appears: every applied change
//! (a node registers, a VM is deleted...) triggers a pass.

use std::sync::Arc;
use std::time::Duration;

use paddock_model::{ClientRequest, Command, Response};
use paddock_raft::{NodeId, Raft, SharedState};
use tokio::sync::watch;

use crate::proposer::Proposer;

const PASS_EVERY: Duration = Duration::from_secs(2);

pub async fn run(
    raft: Raft,
    node_id: NodeId,
    proposer: Arc<Proposer>,
    shared: SharedState,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut applied = raft.metrics();
    loop {
        let leading = raft.metrics().borrow().current_leader == Some(node_id);
        if leading {
            if let Err(e) = pass(&proposer, &shared).await {
                tracing::warn!(error = %e, "placement pass failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        tokio::select! {
            _ = applied.changed() => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            _ = tokio::time::sleep(PASS_EVERY) => {}
            _ = shutdown.changed() => return,
        }
    }
}

async fn pass(proposer: &Proposer, shared: &SharedState) -> anyhow::Result<()> {
    let plan = {
        let applied = shared.read();
        if !applied.state.vms.values().any(|vm| vm.needs_placement()) {
            return Ok(());
        }
        let mut plan = paddock_scheduler::plan_pending(&applied.state);
        // Only reasons that changed are worth a log entry.
        plan.waiting.retain(|(vm, reason)| {
            applied.state.vms.get(vm).and_then(|v| v.waiting.as_ref()) != Some(reason)
        });
        plan
    };
    let mut requests = Vec::new();
    if !plan.placements.is_empty() {
        requests.push(ClientRequest {
            id: None,
            command: Command::VmPlace {
                placements: plan.placements,
            },
        });
    }
    if !plan.waiting.is_empty() {
        requests.push(ClientRequest {
            id: None,
            command: Command::VmWaiting {
                reasons: plan.waiting,
            },
        });
    }
    for request in requests {
        if let Ok(Response::Placed { placed, refused }) = proposer.write(request).await? {
            if !refused.is_empty() {
                tracing::info!(
                    placed = placed.len(),
                    refused = refused.len(),
                    "stale placements refused; planning again"
                );
            } else {
                tracing::debug!(placed = placed.len(), "placed");
            }
        }
    }
    Ok(())
}
