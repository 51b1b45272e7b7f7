//! Virtual machines in the replicated state: spec, desired state, assignment (node, epoch),
//! the state the agent observed, and recent events. Also the placement predicate that both the
//! scheduler and apply use, so a plan and its re-check can never disagree.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::node::{Health, Node};
use crate::resources::{Lacking, Resources};

/// Events kept per VM (oldest dropped first).
pub const MAX_EVENTS: usize = 16;
/// Highest restart priority.
pub const MAX_PRIORITY: u16 = 1000;
/// Longest VM name.
pub const MAX_NAME_LEN: usize = 63;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    pub size_mib: u64,
    /// Image the disk is created from (libvirt: a path or volume), if any.
    pub image: Option<String>,
}

/// Where a VM may, must not, or would like to run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Constraints {
    /// Only nodes carrying all these labels.
    pub node_selector: BTreeMap<String, String>,
    /// Never two VMs of this group on one node.
    pub anti_affinity: Option<String>,
    /// All VMs of this group on one node.
    pub affinity: Option<String>,
    /// Nodes to use when they fit, first one first.
    pub prefer: Vec<String>,
}

/// What the operator asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    pub cpus: u32,
    pub memory_mib: u64,
    pub disks: Vec<Disk>,
    pub labels: BTreeMap<String, String>,
    /// Restarted elsewhere when its node fails.
    pub ha: bool,
    /// Failover order, 0–1000, higher first.
    pub priority: u16,
    pub constraints: Constraints,
    /// How the guest boots and what it is told (the libvirt driver; memvm ignores it).
    pub guest: Guest,
}

/// Where a VM's disks live, and so what a restart on another node starts from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskPolicy {
    /// On the node: an HA restart elsewhere starts from a fresh overlay of the image (the
    /// guest's writes stay behind on the failed node); a live migration copies the disks.
    #[default]
    Local,
    /// On the storage every node mounts at `--shared-storage`: HA restarts and migrations
    /// reuse the same disks.
    Shared,
}

impl DiskPolicy {
    pub fn parse(text: &str) -> Result<DiskPolicy, String> {
        match text {
            "local" => Ok(DiskPolicy::Local),
            "shared" => Ok(DiskPolicy::Shared),
            other => Err(format!(
                "disk policy {other:?} is unknown; use local or shared"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            DiskPolicy::Local => "local",
            DiskPolicy::Shared => "shared",
        }
    }
}

/// Boot source and guest metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guest {
    /// Direct kernel boot: a kernel path present on every node that may run the VM.
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub cmdline: Option<String>,
    /// Key/value pairs the guest reads (libvirt: SMBIOS OEM strings `paddock:KEY=VALUE`,
    /// with `paddock:hostname=` the VM's name).
    pub env: BTreeMap<String, String>,
    pub disk_policy: DiskPolicy,
}

/// Most guest metadata entries.
pub const MAX_GUEST_ENV: usize = 64;

impl Guest {
    fn validate(&self) -> Result<(), String> {
        if (self.initrd.is_some() || self.cmdline.is_some()) && self.kernel.is_none() {
            return Err("--initrd and --cmdline need --kernel (direct kernel boot)".into());
        }
        for path in [&self.kernel, &self.initrd].into_iter().flatten() {
            if !path.starts_with('/') {
                return Err(format!(
                    "boot file {path:?} is not an absolute path; give the path it has on every node"
                ));
            }
        }
        if self.env.len() > MAX_GUEST_ENV {
            return Err(format!("at most {MAX_GUEST_ENV} guest environment entries"));
        }
        for (key, value) in &self.env {
            let key_ok = !key.is_empty()
                && key.len() <= 64
                && key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
            if !key_ok {
                return Err(format!(
                    "guest environment key {key:?}: use 1–64 characters of A-Z, a-z, 0-9, '_', '-', '.'"
                ));
            }
            if value.len() > 1024 || value.contains(['\n', '\0']) {
                return Err(format!(
                    "guest environment value of {key}: at most 1024 characters, one line"
                ));
            }
        }
        Ok(())
    }
}

impl VmSpec {
    pub fn resources(&self) -> Resources {
        Resources {
            cpus: self.cpus,
            memory_mib: self.memory_mib,
            disk_mib: self.disks.iter().map(|d| d.size_mib).sum(),
        }
    }

    /// Checks limits that do not depend on the state.
    pub fn validate(&self) -> Result<(), String> {
        if self.cpus == 0 || self.cpus > 1024 {
            return Err(format!("cpus must be 1–1024, not {}", self.cpus));
        }
        if self.memory_mib == 0 || self.memory_mib > 16 << 20 {
            return Err(format!(
                "memory must be 1 MiB–16 TiB, not {} MiB",
                self.memory_mib
            ));
        }
        if self.priority > MAX_PRIORITY {
            return Err(format!(
                "priority must be 0–{MAX_PRIORITY}, not {}",
                self.priority
            ));
        }
        if self.disks.len() > 16 {
            return Err("at most 16 disks".into());
        }
        if self.constraints.prefer.len() > 16 {
            return Err("at most 16 preferred nodes".into());
        }
        let c = &self.constraints;
        if c.affinity.is_some() && c.affinity == c.anti_affinity {
            return Err("a VM cannot be in the same affinity and anti-affinity group".into());
        }
        self.guest.validate()
    }
}

/// Checks a VM name: 1–63 characters of `[a-z0-9-_.]`, starting with a letter or digit.
pub fn validate_vm_name(name: &str) -> Result<(), String> {
    let ok_len = !name.is_empty() && name.len() <= MAX_NAME_LEN;
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'));
    let ok_start = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if ok_len && ok_chars && ok_start {
        Ok(())
    } else {
        Err(format!(
            "invalid VM name {name:?}: use 1–{MAX_NAME_LEN} characters of a-z, 0-9, '-', '_', '.', starting with a letter or digit"
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Desired {
    Running,
    Stopped,
}

impl Desired {
    pub fn name(self) -> &'static str {
        match self {
            Desired::Running => "running",
            Desired::Stopped => "stopped",
        }
    }
}

/// What the agent of the assigned node last reported (or `Pending` before any report).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    Pending,
    Starting,
    Running,
    Stopping,
    Stopped,
    Failed,
}

impl VmState {
    pub fn name(self) -> &'static str {
        match self {
            VmState::Pending => "pending",
            VmState::Starting => "starting",
            VmState::Running => "running",
            VmState::Stopping => "stopping",
            VmState::Stopped => "stopped",
            VmState::Failed => "failed",
        }
    }
}

/// The node a VM is assigned to, and the epoch of that assignment. Epochs only grow: an agent
/// runs a VM only for the newest epoch assigned to itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub node: String,
    pub epoch: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmEvent {
    pub at_ms: u64,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vm {
    pub name: String,
    pub spec: VmSpec,
    pub desired: Desired,
    pub assignment: Option<Assignment>,
    pub observed: VmState,
    /// Why the VM failed, as the agent reported it.
    pub reason: Option<String>,
    /// Why the scheduler could not place it, while it waits.
    pub waiting: Option<String>,
    pub events: Vec<VmEvent>,
    pub created_ms: u64,
    /// Restarts after crashes in the current placement (HA restart policy).
    pub crash_restarts: u32,
    /// A node the scheduler should not use for this VM (it crashed there too often).
    pub avoid: Option<String>,
    /// The guest's IP addresses as its node last saw them (libvirt: DHCP leases or the host's
    /// ARP table), for the epoch they were seen at.
    pub addresses: Addresses,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Addresses {
    pub epoch: u64,
    pub ips: Vec<String>,
}

/// Most addresses kept per VM, and the longest one.
pub const MAX_ADDRESSES: usize = 16;
pub const MAX_ADDRESS_LEN: usize = 64;

impl Vm {
    /// The addresses of the running guest: none unless they were seen at the current epoch
    /// and the VM runs (a stopped or moved guest's old addresses mean nothing).
    pub fn current_addresses(&self) -> &[String] {
        match &self.assignment {
            Some(a) if a.epoch == self.addresses.epoch && self.observed == VmState::Running => {
                &self.addresses.ips
            }
            _ => &[],
        }
    }

    /// Records an event in the VM's own list and in the cluster's log.
    pub fn event(
        &mut self,
        log: &mut crate::events::EventLog,
        at_ms: u64,
        kind: crate::events::EventKind,
        message: String,
    ) {
        log.push(at_ms, kind, &self.name, message.clone());
        if self.events.len() >= MAX_EVENTS {
            self.events.remove(0);
        }
        self.events.push(VmEvent { at_ms, message });
    }

    /// Needs a node: wants to run, has none, and has not failed (a failed VM waits for an
    /// operator's start).
    pub fn needs_placement(&self) -> bool {
        self.desired == Desired::Running
            && self.assignment.is_none()
            && self.observed != VmState::Failed
    }

    pub fn node(&self) -> Option<&str> {
        self.assignment.as_ref().map(|a| a.node.as_str())
    }
}

/// Why a node cannot take a VM. The order is the order filters run in, and the order
/// explanations list them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Misfit {
    Down,
    Maintenance,
    Cordoned,
    /// The VM crashed on this node too often.
    CrashedHere,
    Labels,
    Affinity {
        group: String,
    },
    AntiAffinity {
        group: String,
    },
    Lacks(Lacking),
}

impl Misfit {
    /// "3 lack memory", "1 is down", "2 violate anti-affinity group db".
    pub fn describe(&self, count: usize) -> String {
        let (one, many) = match self {
            Misfit::Down => ("is down".to_string(), "are down".to_string()),
            Misfit::Maintenance => ("is in maintenance".into(), "are in maintenance".into()),
            Misfit::Cordoned => ("is cordoned".into(), "are cordoned".into()),
            Misfit::CrashedHere => (
                "is where it crashed too often".into(),
                "are where it crashed too often".into(),
            ),
            Misfit::Labels => (
                "does not match the node selector".into(),
                "do not match the node selector".into(),
            ),
            Misfit::Affinity { group } => (
                format!("is not where affinity group {group} runs"),
                format!("are not where affinity group {group} runs"),
            ),
            Misfit::AntiAffinity { group } => (
                format!("violates anti-affinity group {group}"),
                format!("violate anti-affinity group {group}"),
            ),
            Misfit::Lacks(what) => (
                format!("lacks {}", what.noun()),
                format!("lack {}", what.noun()),
            ),
        };
        format!("{count} {}", if count == 1 { one } else { many })
    }
}

/// The placement predicate: can `node` (with `free` resources left) take a VM of `spec`?
pub fn check_fit(
    node: &Node,
    free: &Resources,
    spec: &VmSpec,
    groups: &GroupIndex,
) -> Result<(), Misfit> {
    if node.health != Health::Ready {
        return Err(Misfit::Down);
    }
    if node.maintenance {
        return Err(Misfit::Maintenance);
    }
    if node.cordoned {
        return Err(Misfit::Cordoned);
    }
    let c = &spec.constraints;
    if !c
        .node_selector
        .iter()
        .all(|(k, v)| node.labels.get(k) == Some(v))
    {
        return Err(Misfit::Labels);
    }
    if let Some(group) = &c.affinity {
        if !groups.affinity_allows(group, &node.name) {
            return Err(Misfit::Affinity {
                group: group.clone(),
            });
        }
    }
    if let Some(group) = &c.anti_affinity {
        if groups.anti_affinity_on(group, &node.name) {
            return Err(Misfit::AntiAffinity {
                group: group.clone(),
            });
        }
    }
    if let Some(what) = spec.resources().lacking_in(free) {
        return Err(Misfit::Lacks(what));
    }
    Ok(())
}

/// Members of each group per node: group → node → number of VMs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupIndex {
    pub affinity: BTreeMap<String, BTreeMap<String, u32>>,
    pub anti_affinity: BTreeMap<String, BTreeMap<String, u32>>,
}

impl GroupIndex {
    pub fn add(&mut self, spec: &VmSpec, node: &str) {
        for (map, group) in [
            (&mut self.affinity, &spec.constraints.affinity),
            (&mut self.anti_affinity, &spec.constraints.anti_affinity),
        ] {
            if let Some(group) = group {
                *map.entry(group.clone())
                    .or_default()
                    .entry(node.to_string())
                    .or_default() += 1;
            }
        }
    }

    pub fn remove(&mut self, spec: &VmSpec, node: &str) {
        for (map, group) in [
            (&mut self.affinity, &spec.constraints.affinity),
            (&mut self.anti_affinity, &spec.constraints.anti_affinity),
        ] {
            let Some(group) = group else { continue };
            let Some(nodes) = map.get_mut(group) else {
                continue;
            };
            if let Some(count) = nodes.get_mut(node) {
                *count -= 1;
                if *count == 0 {
                    nodes.remove(node);
                }
            }
            if nodes.is_empty() {
                map.remove(group);
            }
        }
    }
}

impl GroupIndex {
    /// Whether a VM of anti-affinity group `group` is assigned to `node`.
    pub fn anti_affinity_on(&self, group: &str, node: &str) -> bool {
        self.anti_affinity
            .get(group)
            .is_some_and(|nodes| nodes.contains_key(node))
    }

    /// Whether no VM of affinity group `group` is assigned yet, or one is on `node`.
    pub fn affinity_allows(&self, group: &str, node: &str) -> bool {
        match self.affinity.get(group) {
            Some(nodes) if !nodes.is_empty() => nodes.contains_key(node),
            _ => true,
        }
    }
}
