//! `paddockd`, the daemon every Paddock host runs: the API server, Raft, and (as later work
//! adds them) the leader's controllers and the node agent. See DESIGN.md §1 for the picture.
//!
//! ```text
//!  gRPC (mutual TLS) ─▶ service::{Kv, Cluster, Nodes, Vms, Settings, Raft} ─▶ proposer ─▶ openraft ─▶ state machine
//!  HTTP ─▶ http (/healthz /readyz /metrics)              │ forward to leader
//!  daemon: wiring, start, graceful stop; membership: --peers / --join, learner promotion
//!  controllers (leader only): placement ─▶ scheduler ─▶ VmPlace
//!  agent (every node): replica assignments ─▶ drivers::{memvm} ─▶ VmObserved
//! ```

pub mod agent;
pub mod config;
pub mod controllers;
pub mod daemon;
pub mod drivers;
pub mod http;
pub mod identity;
pub mod liveness;
pub mod membership;
pub mod metrics;
pub mod ops;
pub mod progress_board;
pub mod proposer;
pub mod service;
pub mod watchdog;
