//! The `paddock` admin CLI as a library: the commands, and the local-cluster launcher that
//! `paddock dev up`, `paddock bench` and the integration tests share. Talks to nodes only
//! through the api crate.

pub mod bench;
pub mod commands;
pub mod output;
