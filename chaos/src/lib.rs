//! The chaos harness (DESIGN.md §10): clusters of real `paddockd` processes behind fault
//! proxies, seeded fault schedules, workloads with Jepsen-style histories, and the checkers
//! (linearizability, no lost acknowledged write, convergence, single-run VMs).
//!
//! Not implemented yet: the "Chaos harness" issue fills this crate. Until then the evidence
//! for the cluster core is the integration tests in `tests/`.
