//! VM placement (DESIGN.md §2): filter → score → select over the cluster state, returning a
//! plan the leader proposes and apply re-checks (a stale plan is refused and planned again).
//!
//! Pure: no I/O, no clock, no randomness. The same state and VMs give the same plan.
//! [`migration`] plans live migrations the same way: which pending ones start within the
//! limits, where they go, and which drains are over.
//!
//! - **Order**: VMs by restart priority (highest first), then name.
//! - **Filter**: [`paddock_model::vm::check_fit`] — the same predicate apply uses: node health,
//!   cordon, node selector, affinity group, anti-affinity group, free cpus/memory/disk. Free
//!   resources and group membership are updated as the batch is placed, so one pass places a
//!   whole batch without over-committing.
//! - **Candidates**: an affinity group already placed pins the node. Otherwise preferred nodes
//!   that fit win, in the order given. Otherwise nodes are walked in ring order from a start
//!   derived from the VM's name, and the first [`CANDIDATES`] that fit are scored (Nomad's
//!   "power of a few choices"; exact for clusters of up to that many nodes, and it keeps a
//!   placement cost independent of cluster size).
//! - **Score**: `binpack` takes the node left fullest, `spread` the node left emptiest
//!   (cpus and memory weighed equally); ties go to the node that comes first by name.
//! - **Explain**: a VM that fits nowhere gets the count of nodes failing each filter, e.g.
//!   "5 nodes: 3 lack memory, 2 violate anti-affinity group db".

use std::collections::BTreeMap;

pub mod migration;

use paddock_model::resources::Resources;
use paddock_model::settings::SchedulerPolicy;
use paddock_model::vm::{check_fit, GroupIndex, Misfit, Vm};
use paddock_model::{ClusterState, Node, Placement};

/// Fitting nodes scored per VM.
pub const CANDIDATES: usize = 16;

/// What the leader proposes: placements (one `VmPlace`) and why the others wait.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub placements: Vec<Placement>,
    pub waiting: Vec<(String, String)>,
}

/// Mutable view of the cluster while a batch is placed.
struct Index<'a> {
    nodes: Vec<&'a Node>,
    free: Vec<Resources>,
    position: BTreeMap<&'a str, usize>,
    groups: GroupIndex,
}

/// Plans every VM of `state` that needs a node.
pub fn plan_pending(state: &ClusterState) -> Plan {
    let vms: Vec<&Vm> = state
        .vms
        .values()
        .filter(|vm| vm.needs_placement())
        .collect();
    plan(state, &vms, state.settings.scheduler)
}

/// Places `vms` (which need a node) on the nodes of `state`.
pub fn plan(state: &ClusterState, vms: &[&Vm], policy: SchedulerPolicy) -> Plan {
    let nodes: Vec<&Node> = state.nodes.values().collect();
    let mut index = Index {
        free: nodes.iter().map(|n| n.free()).collect(),
        position: nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.as_str(), i))
            .collect(),
        nodes,
        groups: state.groups.clone(),
    };
    let mut order: Vec<&Vm> = vms.to_vec();
    order.sort_by(|a, b| {
        b.spec
            .priority
            .cmp(&a.spec.priority)
            .then_with(|| a.name.cmp(&b.name))
    });
    let mut plan = Plan::default();
    for vm in order {
        match index.choose(vm, policy) {
            Some(i) => {
                let node = index.nodes[i];
                index.free[i] = index.free[i].minus(&vm.spec.resources());
                index.groups.add(&vm.spec, &node.name);
                plan.placements.push(Placement {
                    vm: vm.name.clone(),
                    node: node.name.clone(),
                });
            }
            None => plan.waiting.push((vm.name.clone(), index.explain(vm))),
        }
    }
    plan
}

impl Index<'_> {
    fn fits(&self, i: usize, vm: &Vm) -> Result<(), Misfit> {
        if vm.avoid.as_deref() == Some(self.nodes[i].name.as_str()) {
            return Err(Misfit::CrashedHere);
        }
        check_fit(self.nodes[i], &self.free[i], &vm.spec, &self.groups)
    }

    fn choose(&self, vm: &Vm, policy: SchedulerPolicy) -> Option<usize> {
        let n = self.nodes.len();
        if n == 0 {
            return None;
        }
        if let Some(group) = &vm.spec.constraints.affinity {
            if let Some(nodes) = self.groups.affinity.get(group) {
                // The group is placed: its node (the first by name if a stale plan split it).
                return nodes
                    .keys()
                    .filter_map(|name| self.position.get(name.as_str()).copied())
                    .find(|&i| self.fits(i, vm).is_ok());
            }
        }
        for preferred in &vm.spec.constraints.prefer {
            if let Some(&i) = self.position.get(preferred.as_str()) {
                if self.fits(i, vm).is_ok() {
                    return Some(i);
                }
            }
        }
        let start = (name_hash(&vm.name) % n as u64) as usize;
        let mut best: Option<(u64, usize)> = None;
        let mut found = 0;
        for step in 0..n {
            let i = (start + step) % n;
            if self.fits(i, vm).is_err() {
                continue;
            }
            let score = self.score(i, vm, policy);
            // Higher score wins; on a tie the node first by name (lower index).
            if best.is_none_or(|(s, j)| score > s || (score == s && i < j)) {
                best = Some((score, i));
            }
            found += 1;
            if found == CANDIDATES {
                break;
            }
        }
        best.map(|(_, i)| i)
    }

    /// Higher is better: parts per million of cpus and memory left (spread) or used (binpack)
    /// after placing `vm` on node `i`.
    fn score(&self, i: usize, vm: &Vm, policy: SchedulerPolicy) -> u64 {
        let capacity = self.nodes[i].capacity;
        let after = self.free[i].minus(&vm.spec.resources());
        let share = |free: u64, total: u64| {
            free.saturating_mul(1_000_000)
                .checked_div(total)
                .unwrap_or(0)
        };
        let free = share(u64::from(after.cpus), u64::from(capacity.cpus))
            + share(after.memory_mib, capacity.memory_mib);
        match policy {
            SchedulerPolicy::Spread => free,
            SchedulerPolicy::Binpack => 2_000_000 - free.min(2_000_000),
        }
    }

    /// "5 nodes: 3 lack memory, 2 violate anti-affinity group db".
    fn explain(&self, vm: &Vm) -> String {
        if self.nodes.is_empty() {
            return "no nodes have registered yet".into();
        }
        let mut counts: BTreeMap<Misfit, usize> = BTreeMap::new();
        for i in 0..self.nodes.len() {
            if let Err(misfit) = self.fits(i, vm) {
                *counts.entry(misfit).or_default() += 1;
            }
        }
        let n = self.nodes.len();
        let parts: Vec<String> = counts.iter().map(|(m, c)| m.describe(*c)).collect();
        format!(
            "{n} node{}: {}",
            if n == 1 { "" } else { "s" },
            parts.join(", ")
        )
    }
}

/// FNV-1a of a VM name: where its walk over the nodes starts.
fn name_hash(name: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in name.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests;
