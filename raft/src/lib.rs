//! Paddock's consensus layer: openraft's type configuration, the durable stores behind its
//! storage traits, and the gRPC network between nodes.
//!
//! ```text
//!             ┌──────────── openraft::Raft<TypeConfig> ────────────┐
//!             │                                                     │
//!   store::LogStore<B>          state_machine::StateMachine     network::Network
//!   (vote, log, committed;      (ClusterState in memory,        (tonic client per peer,
//!    B = redb | sled,            snapshots as files,             mutual TLS, postcard
//!    group-commit fsync)         shared with the API readers)     payloads)
//! ```

// openraft's `StorageError` (the error type its storage traits demand) is large; boxing it
// in our helpers would only move the allocation, so the lint is silenced for this crate.
#![allow(clippy::result_large_err)]

use std::fmt;

use serde::{Deserialize, Serialize};

pub mod network;
pub mod state_machine;
pub mod store;

pub use network::Network;
pub use state_machine::{Applied, SharedState, StateMachine};
pub use store::{open_store, AppendObserver, LogStore, StorageKind};

openraft::declare_raft_types!(
    /// The types Paddock's Raft runs on: a log entry carries a batch of client requests
    /// ([`paddock_model::Proposal`]) and answers one outcome per request.
    pub TypeConfig:
        D = paddock_model::Proposal,
        R = Vec<paddock_model::Outcome>,
        NodeId = u64,
        Node = MemberNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type NodeId = u64;
pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type Membership = openraft::Membership<NodeId, MemberNode>;
pub type StoredMembership = openraft::StoredMembership<NodeId, MemberNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, MemberNode>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, MemberNode>;

/// What the Raft membership knows of a node: its stable name and the address peers and clients
/// reach it at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberNode {
    pub name: String,
    pub address: String,
}

impl fmt::Display for MemberNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.address)
    }
}
