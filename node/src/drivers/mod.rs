//! Hypervisor drivers (DESIGN.md §6): one trait, what the agent needs to make a host match its
//! assignments. Calls may block (libvirt does); the agent runs them off the async runtime.

#[cfg(feature = "libvirt")]
pub mod libvirt;
pub mod memvm;

use paddock_model::{Resources, VmSpec};

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
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DriverError(pub String);

pub trait Driver: Send + Sync {
    /// `memvm` or `libvirt`, as registered in the inventory.
    fn name(&self) -> &'static str;
    /// Every VM this host has defined, running or not.
    fn list(&self) -> Result<Vec<Instance>, DriverError>;
    /// Defines (if needed) and starts `vm` for assignment `epoch`.
    fn start(&self, vm: &str, epoch: u64, spec: &VmSpec) -> Result<(), DriverError>;
    /// Asks `vm` to shut down; returns at once (the next `list` shows `Stopping`, then `Stopped`).
    fn stop(&self, vm: &str) -> Result<(), DriverError>;
    /// Kills `vm` at once if it runs and forgets it.
    fn destroy(&self, vm: &str) -> Result<(), DriverError>;
}

/// What this host offers, from flags or the host itself.
pub fn host_capacity(
    cpus: Option<u32>,
    memory_mib: Option<u64>,
    disk_mib: Option<u64>,
    data_dir: &std::path::Path,
) -> Resources {
    let cpus = cpus.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1)
    });
    let memory_mib = memory_mib.unwrap_or_else(|| {
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
    });
    let disk_mib = disk_mib.unwrap_or_else(|| {
        rustix::fs::statvfs(data_dir)
            .map(|s| s.f_bavail.saturating_mul(s.f_frsize) >> 20)
            .unwrap_or(0)
    });
    Resources {
        cpus,
        memory_mib,
        disk_mib,
    }
}
