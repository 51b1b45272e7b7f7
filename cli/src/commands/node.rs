//! `paddock node`: the host inventory (list, show, cordon) and Raft membership (remove).

use clap::Subcommand;
use paddock_api::pb::NodeInfo;
use serde_json::json;

use super::{client_failure, print_json, Global};
use crate::output::{exit, Failure, Output};

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Every node: state, capacity, free resources, labels and VMs.
    List {
        /// Read this node's replica without a round to the leader.
        #[arg(long)]
        stale: bool,
    },
    /// One node.
    Show { name: String },
    /// Place no new VMs on NAME (its VMs stay where they are).
    Cordon { name: String },
    /// Let NAME take new VMs again.
    Uncordon { name: String },
    /// Maintenance on: no new VMs on NAME, and no failover if it goes silent (its VMs are left
    /// alone). Off: back to normal.
    Maintenance {
        name: String,
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
    /// Remove a node from the Raft membership (stop its paddockd afterwards).
    Remove { name: String },
    /// Cordon NAME and live-migrate every running VM away; VMs that cannot move are reported.
    Drain {
        name: String,
        /// Follow the migrations until all ended.
        #[arg(long)]
        wait: bool,
    },
    /// Drain NAME for a shutdown: running VMs live-migrate, stopped ones leave too, then
    /// maintenance.
    Evacuate {
        name: String,
        #[arg(long)]
        wait: bool,
    },
}

pub async fn run(command: NodeCommand, global: &Global) -> Result<(), Failure> {
    match &command {
        NodeCommand::Drain { name, wait } => {
            return super::migration::drain(name, false, *wait, global).await
        }
        NodeCommand::Evacuate { name, wait } => {
            return super::migration::drain(name, true, *wait, global).await
        }
        _ => {}
    }
    let mut client = global.client()?;
    match command {
        NodeCommand::Drain { .. } | NodeCommand::Evacuate { .. } => {}
        NodeCommand::List { stale } => {
            let nodes = client.node_list(stale).await.map_err(client_failure)?;
            match global.output {
                Output::Json => print_json(&json!(nodes.iter().map(node_json).collect::<Vec<_>>())),
                Output::Table => print_table(&nodes),
            }
        }
        NodeCommand::Show { name } => {
            let nodes = client.node_list(false).await.map_err(client_failure)?;
            let node = nodes.iter().find(|n| n.name == name).ok_or_else(|| {
                Failure::new(
                    exit::NOT_FOUND,
                    format!("node {name} is not in the inventory; see `paddock node list`"),
                )
            })?;
            print_json(&node_json(node));
        }
        NodeCommand::Cordon { name } => {
            client
                .node_cordon(&name, true)
                .await
                .map_err(client_failure)?;
            println!("{name} cordoned: no new VMs will be placed there");
        }
        NodeCommand::Uncordon { name } => {
            client
                .node_cordon(&name, false)
                .await
                .map_err(client_failure)?;
            println!("{name} uncordoned");
        }
        NodeCommand::Maintenance { name, state } => {
            let on = state == "on";
            client
                .node_maintenance(&name, on)
                .await
                .map_err(client_failure)?;
            if on {
                println!("{name} in maintenance: no new VMs, no failover while it is away");
            } else {
                println!("{name} out of maintenance");
            }
        }
        NodeCommand::Remove { name } => {
            client.remove_member(&name).await.map_err(client_failure)?;
            println!("removed {name} from the cluster");
        }
    }
    Ok(())
}

/// The JSON form of a node (a contract: fields are only ever added).
pub fn node_json(node: &NodeInfo) -> serde_json::Value {
    json!({
        "name": node.name,
        "address": node.address,
        "state": node.state,
        "driver": node.driver,
        "cpus": node.cpus,
        "memory_mib": node.memory_mib,
        "disk_mib": node.disk_mib,
        "cpus_free": node.cpus_free,
        "memory_free_mib": node.memory_free_mib,
        "disk_free_mib": node.disk_free_mib,
        "labels": node.labels.iter().collect::<std::collections::BTreeMap<_, _>>(),
        "vms": node.vms,
    })
}

fn print_table(nodes: &[NodeInfo]) {
    println!(
        "{:<14} {:<10} {:>9} {:>16} {:>5}  LABELS",
        "NAME", "STATE", "CPUS", "MEMORY (MiB)", "VMS"
    );
    for n in nodes {
        let labels: Vec<String> = n
            .labels
            .iter()
            .collect::<std::collections::BTreeMap<_, _>>()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!(
            "{:<14} {:<10} {:>9} {:>16} {:>5}  {}",
            n.name,
            n.state,
            format!("{}/{}", n.cpus - n.cpus_free.min(n.cpus), n.cpus),
            format!(
                "{}/{}",
                n.memory_mib - n.memory_free_mib.min(n.memory_mib),
                n.memory_mib
            ),
            n.vms.len(),
            labels.join(",")
        );
    }
}
