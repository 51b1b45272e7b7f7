//! Checkers run on a finished history. Later issues add theirs here (single-run VMs, HA
//! recovery bound) next to the linearizability checker.

pub mod linearizable;
