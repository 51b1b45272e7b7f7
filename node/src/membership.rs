//! How a node enters the cluster, and the leader's controller that promotes caught-up learners.
//!
//! - `--peers`: every node initializes Raft with the same full membership. openraft accepts
//!   `initialize` only on a node that has never seen a log or a vote, so repeating it on every
//!   start, or on a late starter the leader already reached, is harmless.
//! - `--join`: the node asks any member; the leader adds it as a learner; the controller below
//!   promotes it once caught up while the cluster has fewer than [`MAX_VOTERS`] voters.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::error::{InitializeError, RaftError};
use openraft::ChangeMembers;
use paddock_api::pb::cluster_client::ClusterClient;
use paddock_api::pb::JoinRequest;
use paddock_model::node_id_for_name;
use paddock_raft::{MemberNode, NodeId, Raft};
use tokio::sync::watch;
use tonic::transport::ClientTlsConfig;

/// Voters beyond this add latency and no useful fault tolerance; more nodes stay learners.
pub const MAX_VOTERS: usize = 5;
/// A learner within this many entries of the leader's log counts as caught up.
const CAUGHT_UP_LAG: u64 = 100;

/// Initializes Raft with the full `--peers` membership (ignored if already initialized).
pub async fn initialize(raft: &Raft, peers: &BTreeMap<String, String>) -> anyhow::Result<()> {
    let members: BTreeMap<NodeId, MemberNode> = peers
        .iter()
        .map(|(name, address)| {
            (
                node_id_for_name(name),
                MemberNode {
                    name: name.clone(),
                    address: address.clone(),
                },
            )
        })
        .collect();
    match raft.initialize(members).await {
        Ok(()) => {
            tracing::info!(
                members = peers.len(),
                "initialized a new cluster from --peers"
            );
            Ok(())
        }
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => Err(anyhow::anyhow!("cannot initialize the cluster: {e}")),
    }
}

/// Asks the member at `member` to add this node; retries while the cluster is unreachable or
/// electing. Returns the cluster id.
pub async fn join(
    member: &str,
    tls: &ClientTlsConfig,
    name: &str,
    address: &str,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<String> {
    let channel = paddock_raft::network::channel_to(member, tls).map_err(anyhow::Error::msg)?;
    let mut client = ClusterClient::new(channel);
    let mut delay = Duration::from_millis(200);
    let started = std::time::Instant::now();
    loop {
        let request = JoinRequest {
            name: name.to_string(),
            address: address.to_string(),
        };
        match client.join(request).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                tracing::info!(via = %member, leader = %reply.leader, cluster = %reply.cluster_id, "joined the cluster as a learner");
                return Ok(reply.cluster_id);
            }
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::DeadlineExceeded
                ) && started.elapsed() < Duration::from_secs(120) =>
            {
                tracing::warn!(via = %member, %status, "cannot join yet; retrying");
            }
            Err(status) => anyhow::bail!(
                "joining through {member} failed: {}; check that {member} is a running member of the cluster and that this node's certificate comes from its CA",
                status.message()
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => anyhow::bail!("shut down before the join completed"),
        }
        delay = (delay * 2).min(Duration::from_secs(3));
    }
}

/// On the leader: promotes caught-up learners to voters while there are fewer than
/// [`MAX_VOTERS`]. Runs until shutdown; idle on followers.
pub async fn run_promoter(raft: Raft, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.changed() => return,
        }
        let Some(learner) = learner_to_promote(&raft) else {
            continue;
        };
        tracing::info!(learner, "promoting caught-up learner to voter");
        if let Err(e) = raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([learner])), true)
            .await
        {
            tracing::warn!(error = %e, "promotion failed; will retry");
        }
    }
}

fn learner_to_promote(raft: &Raft) -> Option<NodeId> {
    let metrics = raft.metrics().borrow().clone();
    if metrics.current_leader != Some(metrics.id) {
        return None;
    }
    let membership = metrics.membership_config.membership();
    // Never stack a change on a change still in flight (joint consensus).
    if membership.get_joint_config().len() > 1 {
        return None;
    }
    let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
    if voters.len() >= MAX_VOTERS {
        return None;
    }
    let last = metrics.last_log_index.unwrap_or(0);
    let replication = metrics.replication.as_ref()?;
    membership
        .learner_ids()
        .filter(|id| {
            replication
                .get(id)
                .cloned()
                .flatten()
                .is_some_and(|matched| matched.index + CAUGHT_UP_LAG >= last)
        })
        .min_by_key(|id| {
            membership
                .get_node(id)
                .map(|n| n.name.clone())
                .unwrap_or_default()
        })
}
