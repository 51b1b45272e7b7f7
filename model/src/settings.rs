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
    /// How often agents heartbeat the leader.
    pub heartbeat_ms: u64,
    /// How long a lease lasts from the moment the node sent its heartbeat.
    pub lease_ms: u64,
    /// Silence after which the leader declares a node down. The leader never uses less than
    /// `lease + its max election timeout + 1 s`, whatever this says.
    pub down_after_ms: u64,
    /// Live migrations out of one node at a time; more wait, by priority.
    pub migrations_per_node: u32,
    /// Live migrations in the cluster at a time.
    pub migrations_per_cluster: u32,
    /// What `--mode auto` does when pre-copy stops converging: post-copy or throttle.
    pub migration_policy: MigrationPolicy,
    /// Parallel data streams per migration.
    pub migration_streams: u32,
    /// Wire bytes per second all outgoing migrations of a node share (`None`: unlimited).
    pub migration_node_bandwidth: Option<u64>,
    /// Audit records kept (the oldest go first; the chain's base hash is kept).
    pub audit_keep: u32,
    /// Audit records older than this are dropped (0: no age limit).
    pub audit_max_age_ms: u64,
}

/// What a migration in mode `auto` does when pre-copy stops converging.
// Lowercase names for the JSON of the memvm control socket; postcard (the log) encodes the
// variant's index, so the names do not affect it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrationPolicy {
    /// Switch to post-copy: shortest downtime; the VM depends on both hosts until done.
    Postcopy,
    /// Slow the guest down (auto-converge): longer migration, never depends on two hosts.
    Throttle,
}

impl MigrationPolicy {
    pub fn parse(text: &str) -> Option<MigrationPolicy> {
        match text {
            "postcopy" => Some(MigrationPolicy::Postcopy),
            "throttle" => Some(MigrationPolicy::Throttle),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            MigrationPolicy::Postcopy => "postcopy",
            MigrationPolicy::Throttle => "throttle",
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            scheduler: SchedulerPolicy::Spread,
            ha_armed: true,
            restart_limit: 3,
            heartbeat_ms: 500,
            lease_ms: 3_000,
            down_after_ms: 4_500,
            migrations_per_node: 2,
            migrations_per_cluster: 5,
            migration_policy: MigrationPolicy::Postcopy,
            migration_streams: 2,
            migration_node_bandwidth: None,
            audit_keep: 50_000,
            audit_max_age_ms: 0,
        }
    }
}

/// The keys `paddock cluster set` accepts, with what they take.
pub const KEYS: &[(&str, &str)] = &[
    ("scheduler", "binpack | spread"),
    ("ha", "armed | disarmed"),
    ("restart_limit", "0–100"),
    ("heartbeat_ms", "100–10000, at most a third of lease_ms"),
    ("lease_ms", "1000–60000"),
    ("down_after_ms", "at least lease_ms + 1500"),
    ("migrations_per_node", "1–16"),
    ("migrations_per_cluster", "1–256"),
    ("migration_policy", "postcopy | throttle"),
    ("migration_streams", "1–8"),
    (
        "migration_node_bandwidth",
        "unlimited | SIZE per second, e.g. 500MiB",
    ),
    ("audit_keep", "100–1000000 records"),
    ("audit_max_age", "none | a duration such as 90d"),
];

fn number_in(key: &str, value: &str, range: std::ops::RangeInclusive<u32>) -> Result<u32, String> {
    value
        .parse::<u32>()
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| {
            format!(
                "{key} must be a number {}–{}, not {value:?}",
                range.start(),
                range.end()
            )
        })
}

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
            "heartbeat_ms" | "lease_ms" | "down_after_ms" => {
                let ms: u64 = value.parse().map_err(|_| {
                    format!("{key} must be a number of milliseconds, not {value:?}")
                })?;
                let mut next = self.clone();
                match key {
                    "heartbeat_ms" => next.heartbeat_ms = ms,
                    "lease_ms" => next.lease_ms = ms,
                    _ => next.down_after_ms = ms,
                }
                next.check_timings()?;
                *self = next;
                Ok(())
            }
            "migrations_per_node" => {
                self.migrations_per_node = number_in(key, value, 1..=16)?;
                Ok(())
            }
            "migrations_per_cluster" => {
                self.migrations_per_cluster = number_in(key, value, 1..=256)?;
                Ok(())
            }
            "migration_streams" => {
                self.migration_streams = number_in(key, value, 1..=8)?;
                Ok(())
            }
            "migration_policy" => {
                self.migration_policy = MigrationPolicy::parse(value).ok_or_else(|| {
                    format!("migration_policy must be postcopy or throttle, not {value:?}")
                })?;
                Ok(())
            }
            "migration_node_bandwidth" => {
                self.migration_node_bandwidth = if value == "unlimited" {
                    None
                } else {
                    let mib = crate::resources::parse_mib(value).map_err(|e| {
                        format!("migration_node_bandwidth must be unlimited or a size per second such as 500MiB: {e}")
                    })?;
                    if mib == 0 {
                        return Err("migration_node_bandwidth must be at least 1MiB".into());
                    }
                    Some(mib << 20)
                };
                Ok(())
            }
            "audit_keep" => {
                self.audit_keep = number_in(key, value, 100..=1_000_000)?;
                Ok(())
            }
            "audit_max_age" => {
                self.audit_max_age_ms = if value == "none" {
                    0
                } else {
                    let age = crate::duration::parse(value).map_err(|e| {
                        format!("audit_max_age must be none or a duration such as 90d: {e}")
                    })?;
                    if age.as_secs() < 3600 {
                        return Err("audit_max_age must be at least 1h, or none".into());
                    }
                    age.as_millis() as u64
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

    /// Refuses timings that would let a VM run twice or flap.
    fn check_timings(&self) -> Result<(), String> {
        if !(100..=10_000).contains(&self.heartbeat_ms) {
            return Err(format!(
                "heartbeat_ms must be 100–10000, not {}",
                self.heartbeat_ms
            ));
        }
        if !(1_000..=60_000).contains(&self.lease_ms) {
            return Err(format!(
                "lease_ms must be 1000–60000, not {}",
                self.lease_ms
            ));
        }
        if self.heartbeat_ms * 3 > self.lease_ms {
            return Err(format!(
                "heartbeat_ms {} is more than a third of lease_ms {}: a single lost heartbeat would fence healthy nodes; lower heartbeat_ms or raise lease_ms",
                self.heartbeat_ms, self.lease_ms
            ));
        }
        if self.down_after_ms < self.lease_ms + 1_500 {
            return Err(format!(
                "down_after_ms {} is shorter than lease_ms {} + 1500: a node could be declared down while its lease (and its VMs) still run, and its VMs would run twice; raise down_after_ms to at least {}",
                self.down_after_ms,
                self.lease_ms,
                self.lease_ms + 1_500
            ));
        }
        Ok(())
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
            ("heartbeat_ms".into(), self.heartbeat_ms.to_string()),
            ("lease_ms".into(), self.lease_ms.to_string()),
            ("down_after_ms".into(), self.down_after_ms.to_string()),
            (
                "migrations_per_node".into(),
                self.migrations_per_node.to_string(),
            ),
            (
                "migrations_per_cluster".into(),
                self.migrations_per_cluster.to_string(),
            ),
            (
                "migration_policy".into(),
                self.migration_policy.name().into(),
            ),
            (
                "migration_streams".into(),
                self.migration_streams.to_string(),
            ),
            (
                "migration_node_bandwidth".into(),
                self.migration_node_bandwidth
                    .map_or("unlimited".into(), |b| format!("{}MiB", b >> 20)),
            ),
            ("audit_keep".into(), self.audit_keep.to_string()),
            (
                "audit_max_age".into(),
                match self.audit_max_age_ms {
                    0 => "none".into(),
                    ms => crate::duration::format(std::time::Duration::from_millis(ms)),
                },
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_timings_are_refused_with_the_reason() {
        let mut settings = Settings::default();
        let err = settings
            .set("down_after_ms", "3500")
            .expect_err("too short");
        assert!(err.contains("run twice"), "{err}");
        let err = settings.set("heartbeat_ms", "1500").expect_err("too slow");
        assert!(err.contains("a third of lease_ms"), "{err}");
        let err = settings
            .set("lease_ms", "5000")
            .expect_err("down_after too short for it");
        assert!(err.contains("at least 6500"), "{err}");
        assert_eq!(
            settings,
            Settings::default(),
            "a refused change changes nothing"
        );
        settings.set("down_after_ms", "7000").expect("safe");
        settings.set("lease_ms", "5000").expect("safe now");
        assert_eq!((settings.lease_ms, settings.down_after_ms), (5000, 7000));
        assert!(settings.set("restart_limit", "lots").is_err());
        assert!(settings.set("nonsense", "1").is_err());
    }
}
