//! Live migrations as replicated objects (DESIGN.md §7): the types here, their apply (and that
//! of node drains, which are built on migrations) in [`apply`].
//!
//! ```text
//!   pending ──Start──▶ preparing ──Prepared──▶ transferring ──Switch──▶ switching ──Finish──▶ completed
//!      │                   │                        │           (epoch + 1: ownership moves)
//!      │                   └────────Fail────────────┴──▶ failed ──RolledBack──▶ rolled_back
//!      └──────────Cancel (any phase before switching)──▶ cancelled (source confirms it resumed)
//! ```
//!
//! The ownership switch is one command: the VM's assignment moves from the source to the
//! destination with the epoch reserved at `Start`, only if the VM is still assigned to the
//! source at the epoch the migration started from. The destination resumes only after it has
//! been applied; the source resumes only after a committed `Fail`/`Cancel` or a refused
//! `Switch`. Destination resources are reserved from `Start` and released on failure.

mod apply;
mod progress;

use serde::{Deserialize, Serialize};

pub use progress::Progress;

/// The longest pause of the guest at the switch a migration aims for unless asked otherwise.
pub const DEFAULT_MAX_DOWNTIME_MS: u64 = 100;
/// Highest queue priority an operator may give a migration.
pub const MAX_PRIORITY: u16 = 1000;
/// Pre-copy gives up (rolls back) after this many rounds without converging, with any driver.
pub const MAX_PRECOPY_ROUNDS: u32 = 30;

/// Finished migrations kept for `paddock migration list/show`; older ones are dropped first.
pub const KEEP_FINISHED: usize = 1000;

/// How memory moves. Lowercase names for the JSON of the memvm control socket; postcard (the
/// log) encodes the variant's index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrationMode {
    /// Pre-copy, then post-copy (or throttling, per the `migration_policy` setting) when
    /// rounds stop shrinking.
    Auto,
    Precopy,
    Postcopy,
}

impl MigrationMode {
    pub fn parse(text: &str) -> Option<MigrationMode> {
        match text {
            "auto" => Some(MigrationMode::Auto),
            "precopy" => Some(MigrationMode::Precopy),
            "postcopy" => Some(MigrationMode::Postcopy),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            MigrationMode::Auto => "auto",
            MigrationMode::Precopy => "precopy",
            MigrationMode::Postcopy => "postcopy",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationOptions {
    pub mode: MigrationMode,
    /// Wire bytes per second for this migration (`None`: the node's share, if any).
    pub bandwidth: Option<u64>,
    pub max_downtime_ms: u64,
}

impl Default for MigrationOptions {
    fn default() -> MigrationOptions {
        MigrationOptions {
            mode: MigrationMode::Auto,
            bandwidth: None,
            max_downtime_ms: DEFAULT_MAX_DOWNTIME_MS,
        }
    }
}

impl MigrationOptions {
    /// Limits that do not depend on the state.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=60_000).contains(&self.max_downtime_ms) {
            return Err(format!(
                "max downtime must be 1 ms – 60 s, not {} ms",
                self.max_downtime_ms
            ));
        }
        if self.bandwidth.is_some_and(|b| b < 1 << 20) {
            return Err("bandwidth must be at least 1MiB (per second)".into());
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Pending,
    Preparing,
    Transferring,
    Switching,
    Completed,
    Failed,
    RolledBack,
    Cancelled,
}

impl Phase {
    pub fn name(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Preparing => "preparing",
            Phase::Transferring => "transferring",
            Phase::Switching => "switching",
            Phase::Completed => "completed",
            Phase::Failed => "failed",
            Phase::RolledBack => "rolled_back",
            Phase::Cancelled => "cancelled",
        }
    }

    /// Holds a migration slot (and the destination's reservation).
    pub fn active(self) -> bool {
        matches!(
            self,
            Phase::Preparing | Phase::Transferring | Phase::Switching
        )
    }

    /// Before the ownership switch: may still be cancelled or fail back to the source.
    pub fn before_switch(self) -> bool {
        matches!(
            self,
            Phase::Pending | Phase::Preparing | Phase::Transferring
        )
    }
}

/// Final figures, committed with the result (live ones are kept in the leader's memory).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationFigures {
    pub total_ms: u64,
    pub downtime_ms: Option<u64>,
    pub prepare_ms: u64,
    /// Bytes on the wire.
    pub bytes_transferred: u64,
    pub memory_bytes: u64,
    /// Guest memory carried by those bytes.
    pub memory_sent: u64,
    pub rounds: u32,
    pub postcopy: bool,
    pub throttle: u8,
    pub counter_at_pause: Option<u64>,
    pub digest: Option<String>,
    pub source_verified: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Migration {
    pub id: u64,
    pub vm: String,
    pub source: String,
    /// The source assignment's epoch when the migration was created.
    pub source_epoch: u64,
    /// Asked for with `--to`.
    pub requested: Option<String>,
    /// Chosen at start.
    pub destination: Option<String>,
    /// The epoch the VM gets on the destination at the switch (reserved at start).
    pub target_epoch: u64,
    /// Where the destination listens for the source's connections.
    pub address: Option<String>,
    pub options: MigrationOptions,
    pub priority: u16,
    /// Why it exists: "operator", "drain NODE", "evacuate NODE".
    pub reason: String,
    pub phase: Phase,
    pub error: Option<String>,
    /// Failed or cancelled after preparing: the source agent confirmed its guest runs on.
    pub source_resumed: bool,
    pub created_ms: u64,
    pub started_ms: Option<u64>,
    pub switched_ms: Option<u64>,
    pub ended_ms: Option<u64>,
    pub figures: MigrationFigures,
}
