//! The Raft service: openraft RPCs between nodes, leader forwarding, leadership transfer.

use std::sync::Arc;

use paddock_api::forward::ForwardRequest;
use paddock_api::pb::{self, RaftMessage};
use paddock_model::codec;
use paddock_raft::Raft;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use super::member;
use crate::liveness::{self, Heard};
use crate::proposer::Proposer;

pub struct RaftService {
    pub raft: Raft,
    pub proposer: Arc<Proposer>,
    pub shared: paddock_raft::SharedState,
    pub heard: Arc<Heard>,
    /// Heartbeats are answered only while a quorum acknowledged this leader within this
    /// many milliseconds (the minimum election timeout).
    pub quorum_fresh_ms: u64,
}

impl RaftService {
    /// Grants `node` a lease ([`liveness::grant`] decides) and remembers hearing from it.
    pub fn grant(
        raft: &Raft,
        shared: &paddock_raft::SharedState,
        heard: &Heard,
        quorum_fresh_ms: u64,
        node: &str,
    ) -> Result<pb::HeartbeatResponse, Status> {
        let standing = {
            let m = raft.metrics();
            let m = m.borrow();
            liveness::LeaderStanding {
                leading: m.current_leader == Some(m.id),
                term: m.current_term,
                since_quorum_ack_ms: m.millis_since_quorum_ack,
                last_log_index: m.last_log_index.unwrap_or(0),
            }
        };
        let lease_ms = shared.read().state.settings.lease_ms;
        let granted =
            liveness::grant(standing, quorum_fresh_ms, lease_ms).map_err(|e| match e {
                liveness::NoLease::NotLeader => Status::failed_precondition(e.to_string()),
                liveness::NoLease::QuorumStale => Status::unavailable(e.to_string()),
            })?;
        heard.heartbeat(node, std::time::Instant::now());
        Ok(pb::HeartbeatResponse {
            lease_ms: granted.lease_ms,
            log_index: granted.log_index,
            term: granted.term,
        })
    }
}

fn decode<T: DeserializeOwned>(message: RaftMessage) -> Result<T, Status> {
    codec::decode(&message.data)
        .map_err(|e| Status::invalid_argument(format!("undecodable Raft message: {e}")))
}

fn encode<T: Serialize>(value: &T) -> Result<Response<RaftMessage>, Status> {
    codec::encode(value)
        .map(|data| Response::new(RaftMessage { data }))
        .map_err(|e| Status::internal(e.to_string()))
}

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        member(&request)?;
        let rpc = decode(request.into_inner())?;
        encode(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        member(&request)?;
        let rpc = decode(request.into_inner())?;
        encode(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        member(&request)?;
        let rpc = decode(request.into_inner())?;
        encode(&self.raft.install_snapshot(rpc).await)
    }

    async fn forward(
        &self,
        request: Request<RaftMessage>,
    ) -> Result<Response<RaftMessage>, Status> {
        member(&request)?;
        let forwarded: ForwardRequest = decode(request.into_inner())?;
        let reply = self.proposer.serve_as_leader(forwarded).await?;
        encode(&reply)
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        // The node is who its certificate says, whatever it might claim.
        let who = member(&request)?;
        Self::grant(
            &self.raft,
            &self.shared,
            &self.heard,
            self.quorum_fresh_ms,
            &who.name,
        )
        .map(Response::new)
    }

    async fn timeout_now(
        &self,
        request: Request<pb::TimeoutNowRequest>,
    ) -> Result<Response<pb::TimeoutNowResponse>, Status> {
        let who = member(&request)?;
        // Only the current leader may hand over its leadership.
        let leader_id = self.raft.metrics().borrow().current_leader;
        if leader_id != Some(paddock_model::node_id_for_name(&who.name)) {
            return Err(Status::failed_precondition(format!(
                "{} is not the leader this node follows",
                who.name
            )));
        }
        tracing::info!(from = %who.name, "leader hands over leadership: starting an election");
        self.raft
            .trigger()
            .elect()
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        Ok(Response::new(pb::TimeoutNowResponse {}))
    }
}
