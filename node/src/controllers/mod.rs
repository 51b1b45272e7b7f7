//! Controllers that run on the leader only (DESIGN.md §1). They read the replica and propose
//! commands; they never change state themselves, so a new leader resumes where the old one
//! stopped.

pub mod failure;
pub mod migration;
pub mod placement;
pub mod recovery;
