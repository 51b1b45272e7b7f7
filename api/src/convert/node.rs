//! Nodes of the inventory.

use std::collections::BTreeMap;

use paddock_model::query::NodeEntry;
use paddock_model::{Command, Member};

use crate::pb;

/// `entry` as the API shows it; `members` gives the node's address (Raft membership).
pub fn node_info(entry: NodeEntry, members: &BTreeMap<String, Member>) -> pb::NodeInfo {
    let NodeEntry { node, vms } = entry;
    let address = members
        .get(&node.name)
        .map(|m| m.address.clone())
        .unwrap_or_default();
    let free = node.free();
    pb::NodeInfo {
        address,
        state: node.state_name().to_string(),
        cpus: node.capacity.cpus,
        memory_mib: node.capacity.memory_mib,
        disk_mib: node.capacity.disk_mib,
        cpus_free: free.cpus,
        memory_free_mib: free.memory_mib,
        disk_free_mib: free.disk_mib,
        labels: node.labels.into_iter().collect(),
        vms,
        driver: node.driver,
        name: node.name,
        heard_ms_ago: None,
    }
}

impl pb::CordonRequest {
    pub fn command(&self) -> Command {
        Command::NodeCordon {
            name: self.name.clone(),
            cordoned: self.cordoned,
        }
    }
}

impl pb::MaintenanceRequest {
    pub fn command(&self) -> Command {
        Command::NodeMaintenance {
            name: self.name.clone(),
            on: self.on,
        }
    }
}

impl pb::DrainRequest {
    pub fn command(&self) -> Command {
        Command::NodeDrain {
            name: self.name.clone(),
            evacuate: self.evacuate,
        }
    }
}
