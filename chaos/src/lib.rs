//! The chaos harness (DESIGN.md §10): clusters of real `paddockd` processes behind fault
//! proxies, seeded fault schedules, workloads with Jepsen-style histories, and the checkers.
//!
//! Built so far: `paddock-chaos run|check`, fault proxies per directed link (`paddock_testkit::proxy`), a
//! seeded fault schedule with kill, pause, partitions (isolate, isolate the leader,
//! majority/minority, one-way, bridge) and slow links ([`faults`], [`run`]), the KV register
//! workload, the history format ([`history`]) and the checkers ([`check`]: linearizability,
//! lost acknowledged writes, convergence, availability), restart-all and lossy (reset)
//! links, membership changes under load (remove a node, wipe it, join it again), and the VM
//! workload ([`workloads::vm`]) with its convergence checker ([`check::vms`]); with
//! `--backend libvirt` ([`libvirt`]) the host faults run against real QEMU hosts.

pub mod check;
pub mod faults;
pub mod history;
pub mod libvirt;
mod recorder;
pub mod run;
pub mod soak;
pub mod workloads;
