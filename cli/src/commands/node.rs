//! `paddock node`: cluster members. (Inventory, cordon and drain come with the VM work.)

use clap::Subcommand;

use super::{client_failure, Global};
use crate::output::Failure;

#[derive(Debug, Subcommand)]
pub enum NodeCommand {
    /// Remove a node from the Raft membership (stop its paddockd afterwards).
    Remove { name: String },
}

pub async fn run(command: NodeCommand, global: &Global) -> Result<(), Failure> {
    match command {
        NodeCommand::Remove { name } => {
            let mut client = global.client()?;
            client.remove_member(&name).await.map_err(client_failure)?;
            println!("removed {name} from the cluster");
        }
    }
    Ok(())
}
