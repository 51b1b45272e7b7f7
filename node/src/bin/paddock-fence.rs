//! The fencing process of a libvirt host (started by paddockd, not by hand): see
//! `paddock_node::drivers::libvirt::fence`.

use std::path::PathBuf;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "paddock-fence",
    about = "Destroys this host's Paddock domains whenever the node's lease is not valid (started by paddockd)"
)]
struct Flags {
    /// The node's lease file (`BOOT_ID UNTIL_NS`, written by paddockd).
    #[arg(long)]
    lease_file: PathBuf,
    /// The libvirtd whose Paddock domains are fenced.
    #[arg(long)]
    libvirt_uri: String,
}

fn main() {
    let flags = Flags::parse();
    paddock_node::drivers::libvirt::fence::run(&flags.lease_file, &flags.libvirt_uri)
}
