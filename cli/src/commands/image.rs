//! `paddock image`: disk images kept by every node (import once, every node fetches a copy).

use std::path::PathBuf;

use clap::Subcommand;
use paddock_api::pb;
use serde_json::json;

use super::{client_failure, print_json, Global};
use crate::output::{Failure, Output};

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Upload FILE (qcow2 or raw) as image NAME. The node called stores it under its sha256;
    /// every other node fetches a copy over the cluster's TLS and checks the hash. VMs name
    /// it with `vm create --disk SIZE --image NAME`.
    Import { name: String, file: PathBuf },
    /// Images with format, size, hash and how many nodes hold a verified copy.
    List {
        #[arg(long)]
        stale: bool,
    },
    /// Remove an image no VM uses; every node deletes its copy.
    Delete { name: String },
}

pub async fn run(command: ImageCommand, global: &Global) -> Result<(), Failure> {
    let mut client = global.client()?;
    let json = global.output == Output::Json;
    match command {
        ImageCommand::Import { name, file } => {
            let started = std::time::Instant::now();
            let info = client
                .image_import(&name, &file)
                .await
                .map_err(client_failure)?;
            if json {
                print_json(&image_json(&info));
            } else {
                let secs = started.elapsed().as_secs_f64();
                println!(
                    "imported {} ({}, {}, sha256 {}) to {} in {secs:.1} s; the other nodes fetch it now (see `paddock image list`)",
                    info.name,
                    info.format,
                    size(info.size_bytes),
                    info.sha256,
                    info.holders.join(", "),
                );
            }
        }
        ImageCommand::List { stale } => {
            let images = client.images(stale).await.map_err(client_failure)?;
            let nodes = client.node_list(stale).await.map_err(client_failure)?.len();
            if json {
                print_json(&json!(images.iter().map(image_json).collect::<Vec<_>>()));
                return Ok(());
            }
            println!(
                "{:<24} {:<6} {:>10} {:<14} {:>7}  HOLDERS",
                "NAME", "FORMAT", "SIZE", "SHA256", "COPIES"
            );
            for image in &images {
                println!(
                    "{:<24} {:<6} {:>10} {:<14} {:>7}  {}",
                    image.name,
                    image.format,
                    size(image.size_bytes),
                    &image.sha256[..image.sha256.len().min(12)],
                    format!("{}/{nodes}", image.holders.len()),
                    image.holders.join(","),
                );
            }
        }
        ImageCommand::Delete { name } => {
            client.image_delete(&name).await.map_err(client_failure)?;
            if json {
                print_json(&json!({"deleted": name}));
            } else {
                println!("deleted image {name}; every node removes its copy");
            }
        }
    }
    Ok(())
}

fn image_json(image: &pb::ImageInfo) -> serde_json::Value {
    json!({
        "name": image.name,
        "format": image.format,
        "size_bytes": image.size_bytes,
        "sha256": image.sha256,
        "imported_ms": image.imported_ms,
        "holders": image.holders,
    })
}

fn size(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}
