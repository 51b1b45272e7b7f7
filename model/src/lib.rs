//! The replicated state machine of Paddock: what the cluster knows and how it changes.
//!
//! ```text
//!   proposer (leader) ── Proposal{at, [ClientRequest]} ──▶ raft log ──▶ apply(state, proposal)
//!                                                                        │ pure: no clock,
//!                                                                        ▼ no I/O, no randomness
//!                                                            ClusterState + Vec<Outcome>
//! ```
//!
//! Everything here is deterministic: every node applies the same log to the same state and
//! reaches the same bytes (see [`ClusterState::digest`]). Time enters only as the `at_ms` the
//! proposer stamped into the [`Proposal`]. Encoding is postcard behind a format version
//! ([`codec`]), so new command kinds are appended at the end of their enums.

pub mod access;
pub mod audit;
pub mod codec;
pub mod command;
pub mod duration;
pub mod events;
pub mod ids;
pub mod image;
mod inventory;
pub mod migration;
pub mod node;
pub mod query;
pub mod resources;
pub mod settings;
pub mod state;
pub mod token;
pub mod vm;

pub use command::{
    ClientRequest, Command, Outcome, Placement, Proposal, Rejection, RejectionKind, Response,
    VmReport,
};
pub use ids::{node_id_for_name, RequestId};
pub use node::{Health, Node};
pub use query::{Query, QueryResult};
pub use resources::Resources;
pub use state::{ClusterState, Member, MemberRole};
pub use vm::{Desired, Vm, VmSpec, VmState};
