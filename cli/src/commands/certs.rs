//! `paddock certs`: the cluster CA and the certificates it signs.

use std::path::PathBuf;

use clap::Subcommand;
use paddock_api::certs::{CertsDir, Role};

use crate::output::{exit, Failure};

#[derive(Debug, Subcommand)]
pub enum CertsCommand {
    /// Create the cluster CA (ca.crt, ca.key) in DIR.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Name written into the CA certificate.
        #[arg(long, default_value = "paddock")]
        cluster_name: String,
    },
    /// Issue NAME.crt/NAME.key for the node NAME, valid for the given addresses.
    Node {
        name: String,
        #[arg(long)]
        dir: PathBuf,
        /// IP addresses or DNS names the node is reached at, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        host: Vec<String>,
    },
    /// Issue NAME.crt/NAME.key for a client (a person or a script) with a role.
    Client {
        name: String,
        #[arg(long)]
        dir: PathBuf,
        /// admin: everything; operator: reads and writes; viewer: reads only.
        #[arg(long, value_parser = ["admin", "operator", "viewer"])]
        role: String,
    },
}

pub fn run(command: CertsCommand) -> Result<(), Failure> {
    match command {
        CertsCommand::Init { dir, cluster_name } => {
            let certs = CertsDir::new(&dir);
            certs.init_ca(&cluster_name)?;
            println!(
                "created the cluster CA in {} (keep ca.key secret)",
                dir.display()
            );
        }
        CertsCommand::Node { name, dir, host } => {
            CertsDir::new(&dir).issue_node(&name, &host)?;
            println!(
                "issued {}/{name}.crt for node {name} ({})",
                dir.display(),
                host.join(", ")
            );
        }
        CertsCommand::Client { name, dir, role } => {
            let role = Role::parse(&role).ok_or_else(|| {
                Failure::new(exit::INVALID, "unknown role: use admin, operator or viewer")
            })?;
            CertsDir::new(&dir).issue_client(&name, role)?;
            println!(
                "issued {}/{name}.crt for {name} with role {role}",
                dir.display()
            );
        }
    }
    Ok(())
}
