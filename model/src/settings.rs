//! Cluster-wide settings, changed through the log (`paddock cluster set KEY VALUE`).

use serde::{Deserialize, Serialize};

/// How the scheduler ranks nodes that fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SchedulerPolicy {
    /// Fill the fullest node that fits first (keeps whole nodes free).
    Binpack,
    /// Use the emptiest node first (spreads failure impact; the default).
    Spread,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Settings {
    pub scheduler: SchedulerPolicy,
    /// Automatic failover on (armed) or frozen cluster-wide (`paddock cluster ha disarm`, e.g.
    /// during network work): silent nodes are then never declared down.
    pub ha_armed: bool,
    /// Crash restarts of an HA VM in place before it is moved (then failed).
    pub restart_limit: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            scheduler: SchedulerPolicy::Spread,
            ha_armed: true,
            restart_limit: 3,
        }
    }
}

/// The keys `paddock cluster set` accepts, with what they take.
pub const KEYS: &[(&str, &str)] = &[
    ("scheduler", "binpack | spread"),
    ("ha", "armed | disarmed"),
    ("restart_limit", "0–100"),
];

impl Settings {
    /// Sets `key` to `value`, or explains what is wrong.
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "scheduler" => {
                self.scheduler = match value {
                    "binpack" => SchedulerPolicy::Binpack,
                    "spread" => SchedulerPolicy::Spread,
                    other => {
                        return Err(format!(
                            "scheduler must be binpack or spread, not {other:?}"
                        ))
                    }
                };
                Ok(())
            }
            "ha" => {
                self.ha_armed = match value {
                    "armed" => true,
                    "disarmed" => false,
                    other => return Err(format!("ha must be armed or disarmed, not {other:?}")),
                };
                Ok(())
            }
            "restart_limit" => {
                self.restart_limit =
                    value
                        .parse::<u32>()
                        .ok()
                        .filter(|n| *n <= 100)
                        .ok_or_else(|| {
                            format!("restart_limit must be a number 0–100, not {value:?}")
                        })?;
                Ok(())
            }
            other => Err(format!(
                "unknown setting {other:?}; settings: {}",
                KEYS.iter()
                    .map(|(k, v)| format!("{k} ({v})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    /// Every setting as (key, value), for `paddock cluster settings`.
    pub fn list(&self) -> Vec<(String, String)> {
        let scheduler = match self.scheduler {
            SchedulerPolicy::Binpack => "binpack",
            SchedulerPolicy::Spread => "spread",
        };
        let ha = if self.ha_armed { "armed" } else { "disarmed" };
        vec![
            ("scheduler".into(), scheduler.into()),
            ("ha".into(), ha.into()),
            ("restart_limit".into(), self.restart_limit.to_string()),
        ]
    }
}
