//! The restart policy, on the leader only: an HA VM that crashed on a live node is restarted
//! in place (new epoch) up to the `restart_limit` setting, then placed once elsewhere, then
//! left failed for an operator. Each step is one `VmRecover` command; apply decides, so a
//! new leader simply carries on from the replicated counters.

use std::sync::Arc;
use std::time::Duration;

use paddock_model::{ClientRequest, Command, Health, VmState};
use paddock_raft::{NodeId, Raft, SharedState};
use tokio::sync::watch;

use crate::proposer::Proposer;

const CHECK_EVERY: Duration = Duration::from_millis(500);

pub async fn run(
    raft: Raft,
    node_id: NodeId,
    proposer: Arc<Proposer>,
    shared: SharedState,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = shutdown.changed() => return,
        }
        if raft.metrics().borrow().current_leader != Some(node_id) {
            continue;
        }
        let crashed: Vec<(String, u64)> = {
            let applied = shared.read();
            let state = &applied.state;
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
                    let handled = vm.avoid.as_deref() == Some(a.node.as_str());
                    (node_ready && !handled).then(|| (vm.name.clone(), a.epoch))
                })
                .collect()
        };
        for (vm, epoch) in crashed {
            let request = ClientRequest {
                id: None,
                command: Command::VmRecover { vm, epoch },
            };
            if let Err(e) = proposer.write(request).await {
                tracing::warn!(error = %e, "cannot propose a restart; retrying");
            }
        }
    }
}
