//! Output format and exit codes shared by all commands. Scripts rely on both.

use std::fmt;

/// `-o table|json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Exit codes (a contract for scripts): one per kind of refusal, the same for every command.
pub mod exit {
    /// Any error not listed below (unreachable cluster, bad certificates, local I/O).
    pub const ERROR: u8 = 1;
    /// The request itself is wrong (bad value or name; clap's usage errors use 2 too).
    pub const INVALID: u8 = 2;
    /// The object named does not exist (a VM, node, migration, key).
    pub const NOT_FOUND: u8 = 3;
    /// `kv cas`: the current value differs from `--expect`.
    pub const CAS_MISMATCH: u8 = 4;
    /// An object of that name exists already.
    pub const ALREADY_EXISTS: u8 = 5;
    /// Valid, but not in the current state (wrong phase, being deleted): retry later may work.
    pub const FAILED_PRECONDITION: u8 = 6;
    /// No node has room for it.
    pub const NO_CAPACITY: u8 = 7;
    /// No leader or quorum reachable now: retrying may work.
    pub const UNAVAILABLE: u8 = 8;
    /// Not authenticated, or the role may not do this.
    pub const PERMISSION_DENIED: u8 = 9;
}

/// A command's failure: the message for stderr and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        let e: anyhow::Error = e.into();
        Failure::new(exit::ERROR, format!("{e:#}"))
    }
}

/// Parses `500ms`, `10s`, `2m` (shared with paddockd's flags).
pub use paddock_model::duration::parse as parse_duration;
