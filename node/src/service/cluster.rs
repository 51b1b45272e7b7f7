//! The Cluster service: status, joining and removing members.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::ChangeMembers;
use paddock_api::pb::cluster_client::ClusterClient;
use paddock_api::pb::{self, cluster_server};
use paddock_model::node_id_for_name;
use paddock_raft::network::PeerContact;
use paddock_raft::{MemberNode, NodeId, Raft, SharedState};
use tonic::{Request, Response, Status};

use super::{authorized, leader_elsewhere};
use crate::ops::{Action, Ops};

/// A member counts as reachable if it answered the leader within this window.
const REACHABLE_WINDOW: Duration = Duration::from_secs(2);

pub struct ClusterService {
    pub raft: Raft,
    pub ops: Arc<Ops>,
    pub shared: SharedState,
    pub contact: PeerContact,
    pub node_name: String,
    pub cluster_id: Arc<std::sync::OnceLock<String>>,
    pub storage: &'static str,
}

impl ClusterService {
    fn local_status(&self) -> pb::ClusterStatus {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let leader_name = metrics
            .current_leader
            .and_then(|id| membership.get_node(&id).map(|n| n.name.clone()))
            .unwrap_or_default();
        let is_leader = metrics.current_leader == Some(metrics.id);
        let mut members: Vec<pb::Member> = membership
            .nodes()
            .map(|(id, node)| {
                let matched = metrics
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id).cloned().flatten())
                    .map_or(0, |l| l.index);
                pb::Member {
                    name: node.name.clone(),
                    address: node.address.clone(),
                    role: if voters.contains(id) {
                        "voter"
                    } else {
                        "learner"
                    }
                    .to_string(),
                    reachable: *id == metrics.id
                        || (is_leader && self.contact.answered_within(*id, REACHABLE_WINDOW)),
                    matched_index: if *id == metrics.id {
                        metrics.last_log_index.unwrap_or(0)
                    } else {
                        matched
                    },
                }
            })
            .collect();
        members.sort_by(|a, b| a.name.cmp(&b.name));
        let (applied_index, digest) = {
            let applied = self.shared.read();
            (
                applied.last_applied.map_or(0, |l| l.index),
                applied.state.digest(),
            )
        };
        pb::ClusterStatus {
            cluster_id: self.cluster_id.get().cloned().unwrap_or_default(),
            node: self.node_name.clone(),
            leader: leader_name,
            term: metrics.current_term,
            commit_index: 0,
            applied_index,
            members,
            state_digest: format!("{digest:016x}"),
            storage: self.storage.to_string(),
            snapshot_index: metrics.snapshot.map_or(0, |l| l.index),
            purged_index: metrics.purged.map_or(0, |l| l.index),
        }
    }

    /// A client of the leader's Cluster service, or `Unavailable` while there is none.
    fn leader_client(&self) -> Result<Option<ClusterClient<tonic::transport::Channel>>, Status> {
        match leader_elsewhere(self.ops.proposer())? {
            Some(address) => Ok(Some(ClusterClient::new(
                self.ops.proposer().channel(&address)?,
            ))),
            None => Ok(None),
        }
    }
}

fn membership_error(e: RaftError<NodeId, ClientWriteError<NodeId, MemberNode>>) -> Status {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => {
            Status::unavailable("leadership changed during the membership change; retry")
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            Status::failed_precondition(format!(
                "membership change refused: {e}; retry when the previous change has finished"
            ))
        }
        RaftError::Fatal(e) => Status::unavailable(format!("node is stopping: {e}")),
    }
}

#[tonic::async_trait]
impl cluster_server::Cluster for ClusterService {
    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::ClusterStatus>, Status> {
        authorized(&self.ops, &request, Action::ClusterStatus).await?;
        let mut status = self.local_status();
        status.commit_index = self
            .raft
            .with_raft_state(|s| s.committed.map_or(0, |l| l.index))
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        if request.into_inner().local {
            return Ok(Response::new(status));
        }
        // Reachability is the leader's knowledge: ask it, fall back to our own view.
        if let Ok(Some(mut leader)) = self.leader_client() {
            let mut ask = Request::new(pb::StatusRequest { local: true });
            ask.set_timeout(Duration::from_secs(1));
            if let Ok(answer) = leader.status(ask).await {
                let leader_view = answer.into_inner();
                for member in &mut status.members {
                    if let Some(seen) = leader_view.members.iter().find(|m| m.name == member.name) {
                        member.reachable = seen.reachable;
                        member.matched_index = seen.matched_index;
                    }
                }
            }
        }
        Ok(Response::new(status))
    }

    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        authorized(&self.ops, &request, Action::MemberAdd).await?;
        if let Some(mut leader) = self.leader_client()? {
            return leader.join(request.into_inner()).await;
        }
        let pb::JoinRequest { name, address } = request.into_inner();
        paddock_model::ids::validate_node_name(&name).map_err(Status::invalid_argument)?;
        let id = node_id_for_name(&name);
        let membership = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        if let Some(existing) = membership.get_node(&id) {
            if existing.address != address {
                return Err(Status::already_exists(format!(
                    "node {name} is already a member at {}; remove it first (paddock node remove {name}) or give the new node another name",
                    existing.address
                )));
            }
        } else if let Some((_, other)) = membership.nodes().find(|(_, n)| n.address == address) {
            return Err(Status::already_exists(format!(
                "address {address} already belongs to member {}; give each node its own address",
                other.name
            )));
        } else {
            tracing::info!(%name, %address, "adding node as learner");
            self.raft
                .add_learner(id, MemberNode { name, address }, false)
                .await
                .map_err(membership_error)?;
        }
        let leader = self.node_name.clone();
        Ok(Response::new(pb::JoinResponse {
            cluster_id: self.cluster_id.get().cloned().unwrap_or_default(),
            leader,
        }))
    }

    async fn remove_member(
        &self,
        request: Request<pb::RemoveMemberRequest>,
    ) -> Result<Response<pb::RemoveMemberResponse>, Status> {
        authorized(&self.ops, &request, Action::MemberRemove).await?;
        if let Some(mut leader) = self.leader_client()? {
            return leader.remove_member(request.into_inner()).await;
        }
        let name = request.into_inner().name;
        let id = node_id_for_name(&name);
        let membership = self
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone();
        if membership.get_node(&id).is_none() {
            return Err(Status::not_found(format!(
                "{name} is not a member; see `paddock cluster status`"
            )));
        }
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let change = if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(Status::failed_precondition(format!(
                    "{name} is the only voter; a cluster cannot remove its last voter"
                )));
            }
            ChangeMembers::RemoveVoters(BTreeSet::from([id]))
        } else {
            ChangeMembers::RemoveNodes(BTreeSet::from([id]))
        };
        tracing::info!(%name, "removing member");
        self.raft
            .change_membership(change, false)
            .await
            .map_err(membership_error)?;
        Ok(Response::new(pb::RemoveMemberResponse {}))
    }
}
