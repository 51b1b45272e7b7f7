//! One memvm guest (started by paddockd's memvm driver, not by hand): see
//! `paddock_node::drivers::memvm::guest`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use paddock_node::drivers::memvm::guest::{run, GuestConfig};

#[derive(Debug, Parser)]
#[command(
    name = "paddock-memvm",
    about = "A memvm guest process (started by paddockd)"
)]
struct Flags {
    #[arg(long)]
    vm: String,
    #[arg(long)]
    node: String,
    #[arg(long)]
    epoch: u64,
    #[arg(long)]
    memory_mib: u64,
    #[arg(long)]
    dir: PathBuf,
    #[arg(long)]
    runs_dir: PathBuf,
    #[arg(long, default_value_t = 2000)]
    dirty_pages_per_sec: u64,
    #[arg(long, default_value_t = 16)]
    working_set_mib: u64,
    /// The node's lease file; the guest halts when the lease in it ends.
    #[arg(long)]
    lease_file: PathBuf,
}

fn main() -> ExitCode {
    let flags = Flags::parse();
    let config = GuestConfig {
        vm: flags.vm,
        node: flags.node,
        epoch: flags.epoch,
        working_set_mib: flags.working_set_mib.min(flags.memory_mib),
        memory_mib: flags.memory_mib,
        dir: flags.dir,
        runs_dir: flags.runs_dir,
        dirty_pages_per_sec: flags.dirty_pages_per_sec,
        lease_file: flags.lease_file,
    };
    match run(&config) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("paddock-memvm {}: {e}", config.vm);
            ExitCode::FAILURE
        }
    }
}
