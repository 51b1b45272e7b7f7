//! The chaos harness (DESIGN.md §10): clusters of real `paddockd` processes behind fault
//! proxies, seeded fault schedules, workloads with Jepsen-style histories, and the checkers.
//!
//! Built so far: the history format ([`history`]) and the linearizability checker
//! ([`check::linearizable`]), both pure and tested on hand-made histories. Not built yet
//! (the "Chaos harness" issue): the fault proxies, the fault schedule, the workload runner,
//! the `paddock-chaos` binary and the checkers that need a live cluster (no lost write,
//! convergence, availability).

pub mod check;
pub mod history;
