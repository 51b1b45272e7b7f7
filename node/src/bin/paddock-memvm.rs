//! One memvm guest (started by paddockd's memvm driver, not by hand): see
//! `paddock_node::drivers::memvm::guest`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use paddock_node::drivers::memvm::guest::{run, GuestConfig, GuestTls, Incoming};

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
    /// Bytes rewritten in each page the guest touches (8–4096).
    #[arg(long, default_value_t = 8)]
    dirty_write_bytes: usize,
    /// MiB of memory filled with mixed content at boot (benchmarks).
    #[arg(long, default_value_t = 0)]
    fill_mib: u64,
    /// The node's certificates directory (ca.crt, NAME.crt, NAME.key), for migrations.
    #[arg(long)]
    certs_dir: Option<PathBuf>,
    /// Wait for incoming migration ID instead of booting ...
    #[arg(long, requires = "listen")]
    incoming: Option<u64>,
    /// ... listening at HOST:0 (the chosen port is written to incoming.json).
    #[arg(long)]
    listen: Option<String>,
}

fn main() -> ExitCode {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let flags = Flags::parse();
    let tls = flags.certs_dir.as_ref().map(|dir| GuestTls {
        ca: dir.join("ca.crt"),
        cert: dir.join(format!("{}.crt", flags.node)),
        key: dir.join(format!("{}.key", flags.node)),
    });
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
        dirty_write_bytes: flags.dirty_write_bytes.clamp(8, 4096),
        fill_mib: flags.fill_mib.min(flags.memory_mib),
        tls,
        incoming: flags
            .incoming
            .zip(flags.listen)
            .map(|(migration, listen)| Incoming { migration, listen }),
    };
    match run(&config) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("paddock-memvm {}: {e}", config.vm);
            ExitCode::FAILURE
        }
    }
}
