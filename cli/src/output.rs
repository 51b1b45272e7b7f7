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

/// Unix milliseconds as UTC `HH:MM:SS.mmm` (dates are rarely what an operator scans for).
pub fn clock(ms: u64) -> String {
    let day_ms = ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}

/// Unix milliseconds as UTC `YYYY-MM-DD HH:MM:SS`.
pub fn time_of(ms: u64) -> String {
    // Days to a civil date (Howard Hinnant's algorithm, proleptic Gregorian).
    let days = (ms / 86_400_000) as i64 + 719_468;
    let era = days.div_euclid(146_097);
    let doe = days.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {}", &clock(ms)[..8])
}

#[cfg(test)]
mod time_tests {
    #[test]
    fn dates() {
        assert_eq!(super::time_of(0), "1970-01-01 00:00:00");
        assert_eq!(super::time_of(1_796_169_600_000), "2026-12-02 00:00:00");
        assert_eq!(
            super::time_of(951_782_400_000 + 3_723_000),
            "2000-02-29 01:02:03"
        );
    }
}
