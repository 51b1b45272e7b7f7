//! VM placement (DESIGN.md §2): filter → score → select over an immutable snapshot of the
//! cluster state, returning a plan the leader proposes and apply re-checks.
//!
//! Not implemented yet: the "Virtual machines" issue fills this crate. It does no I/O, reads no
//! clock and spawns no task; time and randomness will be arguments.
