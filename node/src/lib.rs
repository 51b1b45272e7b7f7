//! `paddockd`, the daemon every Paddock host runs: the API server, Raft, the leader's
//! controllers and the node agent. See DESIGN.md §1 for the picture.
//!
//! ```text
//!  gRPC (mutual TLS) ─▶ service::* (authenticate, convert) ─▶ ops (authorize, check)
//!                         ─▶ proposer (forward to the leader) ─▶ openraft ─▶ state machine
//!  HTTP ─▶ http (/healthz /readyz /metrics)
//!  daemon: wiring, start, graceful stop; membership: --peers / --join, learner promotion
//!  controllers (leader only): runner ─▶ planners {failure, placement, recovery, migration}
//!                             ─▶ commands (write_as_leader)
//!  agent (every node): reconcile(replica, instances, lease) ─▶ drivers::{memvm, libvirt}
//!                      ─▶ VmObserved; agent::migration: the migration worker
//!  liveness: heartbeats, leases, the grant; progress_board: live migration progress
//! ```

pub mod agent;
pub mod config;
pub mod controllers;
pub mod daemon;
pub mod drivers;
pub mod http;
pub mod identity;
pub mod images;
pub mod liveness;
pub mod membership;
pub mod metrics;
pub mod ops;
pub mod progress_board;
pub mod proposer;
pub mod rest;
pub mod service;
pub mod ui;
pub mod watchdog;
