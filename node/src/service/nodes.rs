//! The Nodes service: the inventory (list with suspects, cordon, maintenance, drain,
//! evacuate). Writes become commands in the log; reads are linearizable unless `stale`.

use std::sync::Arc;

use paddock_api::convert::node_info;
use paddock_api::pb::{self, nodes_client, nodes_server};
use paddock_model::{Query, QueryResult};
use paddock_raft::SharedState;
use tonic::{Request, Response, Status};

use super::{authorized, caller, leader_elsewhere, reply, unexpected, NO_LEADER};
use crate::ops::{Action, Ops};

pub struct NodesService {
    pub ops: Arc<Ops>,
    pub shared: SharedState,
    pub raft: paddock_raft::Raft,
    /// The leader's memory of heartbeats: nodes silent for more than two heartbeat intervals
    /// are listed as `suspect` (never committed: only `down` is).
    pub heard: Arc<crate::liveness::Heard>,
}

impl NodesService {
    /// On the leader: nodes it has not heard from for two heartbeat intervals are `suspect`.
    fn mark_suspects(&self, nodes: &mut [pb::NodeInfo]) {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.current_leader != Some(metrics.id) {
            return;
        }
        let heartbeat = self.shared.read().state.settings.heartbeat_ms;
        let now = std::time::Instant::now();
        for node in nodes {
            let silent = self.heard.silent_for(&node.name, metrics.current_term, now);
            node.heard_ms_ago = Some(silent.as_millis() as u64);
            if matches!(node.state.as_str(), "ready" | "cordoned")
                && silent.as_millis() as u64 > 2 * heartbeat
            {
                node.state = "suspect".into();
            }
        }
    }
}

#[tonic::async_trait]
impl nodes_server::Nodes for NodesService {
    async fn list(
        &self,
        request: Request<pb::NodeListRequest>,
    ) -> Result<Response<pb::NodeListResponse>, Status> {
        let who = authorized(&self.ops, &request, Action::NodeRead).await?;
        let stale = request.into_inner().stale;
        // Only the leader knows who is suspect: a linearizable list is answered by it.
        if !stale {
            let leader = leader_elsewhere(self.ops.proposer())
                .map_err(|_| Status::unavailable(format!("{NO_LEADER}, or pass --stale")))?;
            if let Some(address) = leader {
                let channel = self.ops.proposer().channel(&address)?;
                return nodes_client::NodesClient::new(channel)
                    .list(pb::NodeListRequest { stale: false })
                    .await;
            }
        }
        match self.ops.read(&who, Query::NodeList, stale).await? {
            QueryResult::Nodes(entries) => {
                let mut nodes: Vec<pb::NodeInfo> = {
                    let members = self.shared.read().state.members.clone();
                    entries
                        .into_iter()
                        .map(|e| node_info(e, &members))
                        .collect()
                };
                self.mark_suspects(&mut nodes);
                Ok(reply(self.ops.proposer(), pb::NodeListResponse { nodes }))
            }
            other => Err(unexpected(&other)),
        }
    }

    async fn cordon(
        &self,
        request: Request<pb::CordonRequest>,
    ) -> Result<Response<pb::CordonResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        self.ops
            .done(&who, r.request_id.map(Into::into), r.command())
            .await?;
        Ok(reply(self.ops.proposer(), pb::CordonResponse {}))
    }

    async fn drain(
        &self,
        request: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::MigrationCreateResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        super::migrations::created(&self.ops, &who, r.request_id, r.command()).await
    }

    async fn maintenance(
        &self,
        request: Request<pb::MaintenanceRequest>,
    ) -> Result<Response<pb::CordonResponse>, Status> {
        let who = caller(&request)?;
        let r = request.into_inner();
        self.ops
            .done(&who, r.request_id.map(Into::into), r.command())
            .await?;
        Ok(reply(self.ops.proposer(), pb::CordonResponse {}))
    }
}
