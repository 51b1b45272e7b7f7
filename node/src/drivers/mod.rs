//! Hypervisor drivers (DESIGN.md §6): one trait, what the agent needs to make a host match its
//! assignments. Calls may block (libvirt does); the agent runs them off the async runtime.

#[cfg(feature = "libvirt")]
pub mod libvirt;
pub mod memvm;

use paddock_migration::Progress;
use paddock_model::migration::MigrationMode;
use paddock_model::settings::MigrationPolicy;
use paddock_model::{Resources, VmSpec};
use serde::{Deserialize, Serialize};

/// One VM as the driver sees it on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub vm: String,
    /// The assignment epoch it was started for.
    pub epoch: u64,
    pub state: InstanceState,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstanceState {
    /// Started, not yet running (booting, allocating).
    Starting,
    Running,
    /// Asked to stop, still going.
    Stopping,
    /// Shut down cleanly; still defined on this host.
    Stopped,
    /// Ended on its own.
    Crashed(String),
    /// Waiting for an incoming live migration (not running yet).
    Incoming,
    /// Migrated away: the destination runs it; this copy must never run again.
    Migrated,
}

/// What the source side of a live migration needs to know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrateRequest {
    pub migration: u64,
    /// The destination's listener, `host:port`.
    pub to: String,
    pub mode: MigrationMode,
    /// What `auto` does when pre-copy stops converging.
    pub policy: MigrationPolicy,
    pub max_downtime_ms: u64,
    pub bandwidth: Option<u64>,
    pub streams: u16,
    /// The epoch the VM gets at the destination once switched.
    #[serde(default)]
    pub target_epoch: u64,
    /// The VM's disks are local to the node: copy them with the memory (libvirt:
    /// non-shared-incremental storage migration; the image is on both nodes).
    #[serde(default)]
    pub copy_storage: bool,
}

/// Which side of a migration a VM on this host is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MigrationRole {
    None,
    Source,
    Destination,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MigrationStatus {
    pub role: MigrationRole,
    pub migration: Option<u64>,
    pub progress: Option<Progress>,
}

/// Published by a destination once its incoming VM listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingReady {
    pub port: u16,
    /// Published instead of `host:port` when the source reaches the destination some other
    /// way (libvirt: the destination's libvirtd URI).
    pub address: Option<String>,
    pub prepare_ms: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DriverError(pub String);

/// An open serial console: what the guest prints arrives on `output` (closed when the console
/// ends); bytes sent on `input` are typed into it. Dropping both closes it.
#[derive(Debug)]
pub struct ConsoleSession {
    pub output: tokio::sync::mpsc::Receiver<Vec<u8>>,
    pub input: tokio::sync::mpsc::Sender<Vec<u8>>,
}

pub trait Driver: Send + Sync {
    /// `memvm` or `libvirt`, as registered in the inventory.
    fn name(&self) -> &'static str;
    /// Every VM this host has defined, running or not.
    fn list(&self) -> Result<Vec<Instance>, DriverError>;
    /// The state of one VM here, when the driver can tell it cheaply (libvirt: one lookup);
    /// `None` leaves it to the next pass's `list` (memvm: a guest reports itself running a
    /// moment after it starts, and a whole `list` per start would cost O(VMs) per start).
    fn state(&self, vm: &str) -> Result<Option<InstanceState>, DriverError> {
        let _ = vm;
        Ok(None)
    }
    /// Defines (if needed) and starts `vm` for assignment `epoch`.
    fn start(&self, vm: &str, epoch: u64, spec: &VmSpec) -> Result<(), DriverError>;
    /// Asks `vm` to shut down; returns at once (the next `list` shows `Stopping`, then `Stopped`).
    fn stop(&self, vm: &str) -> Result<(), DriverError>;
    /// Kills `vm` at once if it runs and forgets it (its disks stay: it may start here again).
    fn destroy(&self, vm: &str) -> Result<(), DriverError>;
    /// `vm` was deleted from the cluster and no longer runs here: remove what it left on this
    /// node (libvirt: its disks and console log; never an image).
    fn forget(&self, vm: &str) -> Result<(), DriverError> {
        let _ = vm;
        Ok(())
    }
    /// Woken when a VM here changes state by itself (libvirt lifecycle events), so the agent
    /// reports a crash at once instead of at its next periodic pass.
    fn changes(&self) -> Option<std::sync::Arc<tokio::sync::Notify>> {
        None
    }
    /// The file the node keeps `vm`'s serial console in, if the driver keeps one.
    fn console_log(&self, vm: &str) -> Option<std::path::PathBuf> {
        let _ = vm;
        None
    }
    /// The running guest's IP addresses; `None` when the driver cannot tell (memvm guests
    /// have no network).
    fn addresses(&self, vm: &str) -> Result<Option<Vec<String>>, DriverError> {
        let _ = vm;
        Ok(None)
    }
    /// `vm`'s interactive serial console (taken over from any other session).
    fn console(&self, vm: &str) -> Result<ConsoleSession, DriverError> {
        let _ = vm;
        Err(DriverError(format!(
            "the {} driver has no serial console (only libvirt VMs have one)",
            self.name()
        )))
    }

    /// Starts `vm` as the destination of `migration`, for assignment `epoch` once switched,
    /// listening on `listen_host`.
    fn prepare_incoming(
        &self,
        vm: &str,
        epoch: u64,
        spec: &VmSpec,
        migration: u64,
        listen_host: &str,
    ) -> Result<(), DriverError> {
        let _ = (vm, epoch, spec, migration, listen_host);
        Err(self.cannot_migrate())
    }
    /// The incoming VM's listener, once it is ready.
    fn incoming_ready(&self, vm: &str) -> Result<Option<IncomingReady>, DriverError> {
        let _ = vm;
        Err(self.cannot_migrate())
    }
    /// Starts migrating `vm` out (idempotent for the same migration).
    fn migrate_out(&self, vm: &str, request: &MigrateRequest) -> Result<(), DriverError> {
        let _ = (vm, request);
        Err(self.cannot_migrate())
    }
    /// Picks up an outgoing migration that an earlier paddockd of this node started (its job
    /// record says so) instead of starting it again. A driver whose guests carry their own
    /// migration state (memvm) just asks again: `migrate_out` is idempotent for them.
    fn resume_outgoing(&self, vm: &str, request: &MigrateRequest) -> Result<(), DriverError> {
        self.migrate_out(vm, request)
    }
    fn migration_status(&self, vm: &str) -> Result<MigrationStatus, DriverError> {
        let _ = vm;
        Err(self.cannot_migrate())
    }
    /// Tells either side the committed outcome of the ownership switch.
    fn migration_switch(&self, vm: &str, committed: bool) -> Result<(), DriverError> {
        let _ = (vm, committed);
        Err(self.cannot_migrate())
    }
    /// Stops an outgoing migration before its switch; the VM runs on here.
    fn migration_cancel(&self, vm: &str, reason: &str) -> Result<(), DriverError> {
        let _ = (vm, reason);
        Err(self.cannot_migrate())
    }
    fn cannot_migrate(&self) -> DriverError {
        DriverError(format!(
            "the {} driver cannot live-migrate (see docs/operations.md, live migration)",
            self.name()
        ))
    }
}

/// What this host offers, from flags or the host itself: the host's memory less `reserve_mib`
/// unless `memory_mib` says exactly.
pub fn host_capacity(
    cpus: Option<u32>,
    memory_mib: Option<u64>,
    reserve_mib: u64,
    disk_mib: Option<u64>,
    data_dir: &std::path::Path,
) -> Result<Resources, String> {
    let cpus = cpus.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1)
    });
    let memory_mib = match memory_mib {
        Some(exactly) => exactly,
        None => offered_memory(host_memory_mib(), reserve_mib)?,
    };
    let disk_mib = disk_mib.unwrap_or_else(|| {
        rustix::fs::statvfs(data_dir)
            .map(|s| s.f_bavail.saturating_mul(s.f_frsize) >> 20)
            .unwrap_or(0)
    });
    Ok(Resources {
        cpus,
        memory_mib,
        disk_mib,
    })
}

/// The host's memory in MiB (`MemTotal`), 1 GiB if it cannot be read.
fn host_memory_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map(|kib| kib / 1024)
        .unwrap_or(1024)
}

/// What is left for VMs of `host_mib` once `reserve_mib` is kept for the host.
fn offered_memory(host_mib: u64, reserve_mib: u64) -> Result<u64, String> {
    match host_mib.checked_sub(reserve_mib) {
        Some(left) if left > 0 => Ok(left),
        _ => Err(format!(
            "--reserve-memory {reserve_mib}MiB leaves nothing of this host's {host_mib}MiB for VMs; reserve less, or give --memory"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_kept_out_of_the_hosts_memory() {
        assert_eq!(offered_memory(16_384, 0), Ok(16_384));
        assert_eq!(offered_memory(16_384, 2_048), Ok(14_336));
        let refused = offered_memory(4_096, 4_096).expect_err("nothing left");
        assert!(refused.contains("leaves nothing"), "{refused}");
        assert!(offered_memory(4_096, 8_192).is_err());
        let exact = host_capacity(
            Some(2),
            Some(1_000),
            999_999,
            Some(10),
            std::path::Path::new("/"),
        );
        assert_eq!(exact.map(|r| r.memory_mib), Ok(1_000), "--memory is exact");
    }
}
