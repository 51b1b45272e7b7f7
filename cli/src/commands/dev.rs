//! `paddock dev`: a local cluster on this machine for trying Paddock out — certificates, data
//! dirs and logs under one directory (default `.dev`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Subcommand;

use crate::output::{exit, Failure};
use paddock_testkit::libvirt_hosts::{LibvirtHosts, TestGuest};
use paddock_testkit::local_cluster::{find_paddockd, LocalCluster, LocalClusterSpec};

#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Start a local cluster (certificates made on first use) and keep it running until Ctrl-C.
    Up {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[arg(long, default_value = ".dev")]
        dir: PathBuf,
        /// gRPC port of n1; n2, n3... use the next ones, HTTP ports are 100 above.
        #[arg(long, default_value_t = 7001)]
        base_port: u16,
        /// Storage engine: redb or sled.
        #[arg(long, default_value = "redb")]
        storage: String,
        /// Start the nodes in the background and return; stop them with `paddock dev down`.
        #[arg(long)]
        detach: bool,
        /// Real VMs: each node on a libvirt host of its own (a network namespace with its own
        /// libvirtd and QEMU; root, libvirt and QEMU needed: testkit/libvirt/install.sh), and a
        /// tiny Linux test guest to boot. paddockd must be built with the libvirt feature.
        #[arg(long)]
        libvirt: bool,
        /// A flag for every paddockd, e.g. --paddockd-arg=--memvm-fill=64MiB; repeatable.
        #[arg(long = "paddockd-arg", allow_hyphen_values = true)]
        paddockd_args: Vec<String>,
    },
    /// Stop a cluster started with `dev up --detach`.
    Down {
        #[arg(long, default_value = ".dev")]
        dir: PathBuf,
    },
}

const PIDS_FILE: &str = "pids";
/// The dashboard token `dev up` prints.
const DEV_TOKEN: &str = "dev-admin";

pub async fn run(command: DevCommand) -> Result<(), Failure> {
    match command {
        DevCommand::Up {
            nodes,
            dir,
            base_port,
            storage,
            detach,
            libvirt,
            paddockd_args,
        } => {
            up(
                nodes,
                &dir,
                base_port,
                storage,
                detach,
                libvirt,
                paddockd_args,
            )
            .await
        }
        DevCommand::Down { dir } => down(&dir),
    }
}

async fn up(
    nodes: usize,
    dir: &Path,
    base_port: u16,
    storage: String,
    detach: bool,
    libvirt: bool,
    paddockd_args: Vec<String>,
) -> Result<(), Failure> {
    if !(1..=7).contains(&nodes) {
        return Err(Failure::new(
            exit::INVALID,
            "--nodes must be between 1 and 7",
        ));
    }
    if dir.join(PIDS_FILE).exists() {
        return Err(Failure::new(
            exit::ERROR,
            format!(
                "a detached cluster may be running from {}: stop it with `paddock dev down --dir {}` first",
                dir.display(),
                dir.display()
            ),
        ));
    }
    let dir = std::path::absolute(dir)?;
    let mut spec = LocalClusterSpec {
        nodes,
        base_port: Some(base_port),
        extra_args: [vec!["--storage".into(), storage], paddockd_args].concat(),
        hosts: Vec::new(),
    };
    // Real VMs: libvirt hosts for the nodes, torn down when this command ends.
    let real = if libvirt {
        Some(libvirt_hosts(&dir, nodes, detach, &mut spec)?)
    } else {
        None
    };
    let mut cluster = LocalCluster::prepare(&dir, &spec, find_paddockd()?)?;
    cluster.start_all()?;
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await?;
    let endpoints = cluster.endpoints().join(",");
    println!(
        "Paddock dev cluster is up: {} nodes, leader {}.",
        nodes, cluster.nodes[leader].name
    );
    for node in &cluster.nodes {
        println!(
            "  {:<4} grpc {}  http http://{}/metrics  api https://{}  log {}",
            node.name,
            node.address,
            node.http,
            node.api,
            node.log_path.display()
        );
    }
    // A dashboard login: the admin token of the dev cluster, made afresh on every `dev up`.
    let mut client = cluster.client(Duration::from_secs(10))?;
    let _ = client.token_revoke(DEV_TOKEN).await;
    let token = client
        .token_create(DEV_TOKEN, "admin", 0, "")
        .await
        .map_err(super::client_failure)?
        .token;
    std::fs::write(dir.join("token"), format!("{token}\n"))?;
    println!();
    println!(
        "Dashboard and HTTPS API (any node; the CA is {}):",
        cluster.certs.ca_cert().display()
    );
    for node in &cluster.nodes {
        println!(
            "  https://{}/ui    https://{}/api/v1/openapi.json",
            node.api, node.api
        );
    }
    println!(
        "  log in with the admin token (also in {}):",
        dir.join("token").display()
    );
    println!("  {token}");
    println!(
        "  curl --cacert {} -H \"Authorization: Bearer $(cat {})\" https://{}/api/v1/vms",
        cluster.certs.ca_cert().display(),
        dir.join("token").display(),
        cluster.nodes[0].api
    );
    println!();
    println!("Point the CLI at it:");
    println!("  export PADDOCK_ENDPOINT={endpoints}");
    println!("  export PADDOCK_CERTS_DIR={}", cluster.certs.dir.display());
    println!("  paddock cluster status");
    println!("  paddock kv put greeting hello && paddock kv get greeting");
    if let Some((_, guest)) = &real {
        let cmdline = format!("{} ip4=10.77.0.11/24", TestGuest::cmdline(16));
        println!(
            "  paddock vm create web-1 --cpus 1 --memory 128MiB --disk 1GiB --ha --disk-policy shared \\\n      --kernel {} --initrd {} --cmdline '{}' --wait",
            guest.kernel.display(),
            guest.initrd.display(),
            cmdline
        );
        println!(
            "  paddock vm list; paddock vm console web-1    (its IP; its live console, Ctrl-] leaves)\n  (the console log: {}/hN/paddock/vms/web-1/console.log on the host running it)",
            dir.join("hosts").display()
        );
    }
    // Both modes record the node processes, so `dev down` stops the cluster from any terminal.
    let pids: Vec<String> = cluster
        .nodes
        .iter()
        .filter_map(|n| n.child.as_ref())
        .map(|child| child.id().to_string())
        .collect();
    std::fs::write(dir.join(PIDS_FILE), pids.join("\n"))?;
    if detach {
        for node in &mut cluster.nodes {
            // Detached: the nodes outlive this process.
            drop(node.child.take());
        }
        println!();
        println!(
            "Running in the background; stop with: paddock dev down --dir {}",
            dir.display()
        );
        return Ok(());
    }
    println!();
    println!(
        "Ctrl-C (or `paddock dev down --dir {}` elsewhere) stops the cluster (data stays there).",
        dir.display()
    );
    let all_exited = async {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let exited = cluster.nodes.iter_mut().all(|n| {
                n.child
                    .as_mut()
                    .is_none_or(|c| c.try_wait().ok().flatten().is_some())
            });
            if exited {
                return;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {
            println!("stopping...");
        }
        () = all_exited => {
            println!("the nodes were stopped (paddock dev down)");
        }
    }
    cluster.stop_all();
    let _ = std::fs::remove_file(dir.join(PIDS_FILE));
    Ok(())
}

/// Libvirt hosts for `nodes` nodes under `dir/hosts` and the test guest under `dir/guest`;
/// the nodes in `spec` are placed on them.
fn libvirt_hosts(
    dir: &Path,
    nodes: usize,
    detach: bool,
    spec: &mut LocalClusterSpec,
) -> Result<(LibvirtHosts, TestGuest), Failure> {
    if detach {
        return Err(Failure::new(
            exit::INVALID,
            "--libvirt cannot --detach: the libvirt hosts live as long as `dev up` runs",
        ));
    }
    LibvirtHosts::can_run()
        .map_err(|why| Failure::new(exit::UNAVAILABLE, format!("--libvirt: {why}")))?;
    println!(
        "setting up {nodes} libvirt hosts (the first start of libvirtd probes QEMU, ~15 s)..."
    );
    // Fresh hosts each time (new addresses): the nodes' certificates are made again for them.
    let _ = std::fs::remove_dir_all(dir.join("hosts"));
    for i in 1..=nodes {
        for ext in ["crt", "key"] {
            let _ = std::fs::remove_file(dir.join(format!("certs/n{i}.{ext}")));
        }
    }
    let hosts = LibvirtHosts::up(&dir.join("hosts"), nodes)?;
    let guest = TestGuest::build(&dir.join("guest"))?;
    let kind = hosts.probe_domain_type(&guest);
    println!(
        "VMs run as {kind} domains (KVM booted the test guest: {})",
        kind == "kvm"
    );
    spec.extra_args.extend(hosts.node_args(kind));
    // The VMs' NIC on a bridge of each host (its gateway address lets the host see their IPs).
    for host in &hosts.hosts {
        host.add_bridge("vmbr0")?;
    }
    spec.extra_args
        .extend(["--vm-network", "bridge:vmbr0"].map(String::from));
    spec.hosts = hosts.hosts.iter().map(|h| h.node_host(&[])).collect();
    Ok((hosts, guest))
}

fn down(dir: &Path) -> Result<(), Failure> {
    let path = dir.join(PIDS_FILE);
    let text = std::fs::read_to_string(&path).map_err(|_| {
        Failure::new(
            exit::NOT_FOUND,
            format!(
                "no dev cluster is running from {} ({} is missing); pass the --dir it was started with",
                dir.display(),
                path.display()
            ),
        )
    })?;
    // Only processes that are still this cluster's paddockd (a stale file's pids may have been
    // reused by something else since).
    let pids: Vec<rustix::process::Pid> = text
        .lines()
        .filter_map(|l| l.trim().parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains("paddockd"))
        })
        .filter_map(rustix::process::Pid::from_raw)
        .collect();
    if pids.is_empty() {
        std::fs::remove_file(&path)?;
        println!(
            "no node of the dev cluster in {} was running; removed its stale process list",
            dir.display()
        );
        return Ok(());
    }
    for pid in &pids {
        let _ = rustix::process::kill_process(*pid, rustix::process::Signal::TERM);
    }
    // Give the daemons a moment to hand over and stop, then end their VMs (each node runs in
    // its own process group with its memvm guests).
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(5)
        && pids
            .iter()
            .any(|pid| Path::new(&format!("/proc/{}", pid.as_raw_nonzero())).exists())
    {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    for pid in &pids {
        let _ = rustix::process::kill_process_group(*pid, rustix::process::Signal::KILL);
    }
    // An attached `dev up` removes the list itself once its nodes are gone.
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    println!("stopped the dev cluster's nodes and their VMs");
    Ok(())
}
