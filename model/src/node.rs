//! The node inventory: what each host offers and how the cluster sees it. (Raft membership is
//! [`crate::Member`]; a node appears here when its agent registers.)

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::resources::Resources;

/// One host as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    /// What the node advertises (`--cpus`, `--memory`, disk).
    pub capacity: Resources,
    /// Sum of the VMs assigned here (running or stopped).
    pub allocated: Resources,
    pub labels: BTreeMap<String, String>,
    /// Hypervisor driver: `memvm` or `libvirt`.
    pub driver: String,
    /// Cordoned nodes keep their VMs but get no new ones.
    pub cordoned: bool,
    /// In maintenance: no new VMs, and no failover if the node goes silent (its VMs are left
    /// alone: the operator is working on it).
    pub maintenance: bool,
    pub health: Health,
    pub registered_ms: u64,
    /// Being drained (or evacuated) by live migration, or done with it.
    pub drain: Option<Drain>,
}

/// Liveness as committed to the log. Only transitions are committed, never heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Health {
    Ready,
    Down,
}

impl Node {
    pub fn free(&self) -> Resources {
        self.capacity.minus(&self.allocated)
    }

    /// The state `paddock node list` shows.
    pub fn state_name(&self) -> &'static str {
        if self.health == Health::Ready && !self.maintenance {
            match &self.drain {
                Some(d) if !d.done => return "draining",
                Some(d) if d.left.is_empty() => return "drained",
                _ => {}
            }
        }
        match (self.health, self.maintenance, self.cordoned) {
            (Health::Down, _, _) => "down",
            (Health::Ready, true, _) => "maintenance",
            (Health::Ready, false, true) => "cordoned",
            (Health::Ready, false, false) => "ready",
        }
    }

    /// Whether new VMs may be placed here at all.
    pub fn schedulable(&self) -> bool {
        self.health == Health::Ready && !self.cordoned && !self.maintenance
    }
}

/// A node being emptied by live migration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drain {
    /// Evacuate: stopped VMs leave too, and the node enters maintenance when done.
    pub evacuate: bool,
    pub started_ms: u64,
    pub done: bool,
    /// VMs still on the node when the drain ended (could not be migrated: see their
    /// migrations).
    pub left: Vec<String>,
}
