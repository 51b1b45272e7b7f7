//! `paddock cluster`: the Raft cluster as a whole.

use clap::Subcommand;
use paddock_api::pb::ClusterStatus;
use serde_json::json;

use super::{client_failure, print_json, Global};
use crate::output::{Failure, Output};

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Leader, term, commit index and members (with reachability as the leader sees it).
    Status,
    /// Cluster-wide settings and their values.
    Settings,
    /// Change a cluster setting (admin), e.g. `cluster set scheduler binpack`.
    Set { key: String, value: String },
    /// Freeze (disarm) or resume (arm) automatic failover cluster-wide.
    Ha {
        #[arg(value_parser = ["arm", "disarm"])]
        action: String,
    },
}

pub async fn run(command: ClusterCommand, global: &Global) -> Result<(), Failure> {
    match command {
        ClusterCommand::Status => {
            let mut client = global.client()?;
            let status = client.status(false).await.map_err(client_failure)?;
            match global.output {
                Output::Json => print_json(&status_json(&status)),
                Output::Table => print_status_table(&status),
            }
        }
        ClusterCommand::Settings => {
            let mut client = global.client()?;
            let settings = client.settings().await.map_err(client_failure)?;
            match global.output {
                Output::Json => print_json(&serde_json::json!(settings)),
                Output::Table => {
                    for (key, value) in settings {
                        println!("{key:<16} {value}");
                    }
                }
            }
        }
        ClusterCommand::Ha { action } => {
            let mut client = global.client()?;
            let value = if action == "arm" { "armed" } else { "disarmed" };
            client
                .setting_set("ha", value)
                .await
                .map_err(client_failure)?;
            if action == "arm" {
                println!(
                    "HA armed: silent nodes are declared down and their HA VMs restarted elsewhere"
                );
            } else {
                println!("HA disarmed: no node will be declared down and nothing fails over until `paddock cluster ha arm`");
            }
        }
        ClusterCommand::Set { key, value } => {
            let mut client = global.client()?;
            client
                .setting_set(&key, &value)
                .await
                .map_err(client_failure)?;
            println!("{key} = {value}");
        }
    }
    Ok(())
}

/// The JSON form of `cluster status` (a contract: fields are only ever added).
pub fn status_json(status: &ClusterStatus) -> serde_json::Value {
    json!({
        "cluster_id": status.cluster_id,
        "answered_by": status.node,
        "leader": if status.leader.is_empty() { serde_json::Value::Null } else { json!(status.leader) },
        "term": status.term,
        "commit_index": status.commit_index,
        "applied_index": status.applied_index,
        "state_digest": status.state_digest,
        "storage": status.storage,
        "snapshot_index": status.snapshot_index,
        "purged_index": status.purged_index,
        "members": status.members.iter().map(|m| json!({
            "name": m.name,
            "address": m.address,
            "role": m.role,
            "reachable": m.reachable,
            "matched_index": m.matched_index,
        })).collect::<Vec<_>>(),
    })
}

fn print_status_table(status: &ClusterStatus) {
    let leader = if status.leader.is_empty() {
        "(none: election under way or no majority)"
    } else {
        status.leader.as_str()
    };
    println!("cluster   {}", status.cluster_id);
    println!("leader    {leader}");
    println!("term      {}", status.term);
    println!(
        "commit    {}   (applied on {}: {})",
        status.commit_index, status.node, status.applied_index
    );
    println!();
    println!(
        "{:<16} {:<24} {:<8} {:<10} {:>10}",
        "NAME", "ADDRESS", "ROLE", "REACHABLE", "MATCHED"
    );
    for m in &status.members {
        println!(
            "{:<16} {:<24} {:<8} {:<10} {:>10}",
            m.name,
            m.address,
            m.role,
            if m.reachable { "yes" } else { "no" },
            m.matched_index
        );
    }
}
