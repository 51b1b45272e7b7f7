//! `paddock vm`: create, list, show, start, stop, restart, delete. `--wait` follows the VM
//! until its node reports the desired state, printing each step.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use paddock_api::client::Client;
use paddock_api::pb::{self, VmDetail, VmSummary};
use paddock_model::resources::parse_mib;
use serde_json::json;

use super::{client_failure, print_json, Global};
use crate::output::{exit, parse_duration, Failure, Output};

#[derive(Debug, Subcommand)]
pub enum VmCommand {
    /// Define a VM; it is placed and started unless --stopped.
    Create(Box<CreateArgs>),
    /// Every VM: node, observed and desired state, size, HA, epoch.
    List {
        #[arg(long)]
        stale: bool,
    },
    /// One VM with its spec, events and, while pending, why it cannot be placed.
    Show {
        name: String,
    },
    Start(Target),
    Stop(Target),
    /// Stop, then start again (on the same node).
    Restart(Target),
    /// Remove the VM; its node destroys it.
    Delete(Target),
    /// Live-migrate a running VM to another node (it keeps running).
    Migrate(super::migration::MigrateArgs),
    /// The VM's interactive serial console (libvirt VMs), from any node; Ctrl-] leaves.
    /// Without a terminal, standard input is typed in and output printed until --for ends.
    Console {
        name: String,
        /// Without a terminal: how long to stay after standard input ended.
        #[arg(long = "for", default_value = "2s", value_parser = parse_duration)]
        stay: std::time::Duration,
    },
    /// The VM's serial console log, kept by the node that runs it (libvirt VMs).
    Logs {
        name: String,
        /// Keep printing what the guest writes (Ctrl-C to stop).
        #[arg(long, short)]
        follow: bool,
        /// How much of the end of the log to show first.
        #[arg(long, default_value = "16KiB", value_parser = parse_mib_or_bytes)]
        tail: u32,
    },
}

/// `16KiB`, `1MiB` or a plain number of bytes (at most 1 MiB, what one call returns).
fn parse_mib_or_bytes(text: &str) -> Result<u32, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map_or((text, ""), |i| text.split_at(i));
    let n: u64 = number
        .parse()
        .map_err(|_| format!("invalid size {text:?}: use e.g. 4096, 16KiB or 1MiB"))?;
    let bytes = match unit {
        "" | "B" => n,
        "KiB" => n << 10,
        "MiB" => n << 20,
        _ => {
            return Err(format!(
                "invalid size {text:?}: use e.g. 4096, 16KiB or 1MiB"
            ))
        }
    };
    u32::try_from(bytes)
        .ok()
        .filter(|b| *b <= 1 << 20)
        .ok_or_else(|| format!("--tail {text}: at most 1MiB"))
}

#[derive(Debug, Args)]
pub struct Target {
    pub name: String,
    #[command(flatten)]
    pub wait: Wait,
}

#[derive(Debug, Args)]
pub struct Wait {
    /// Wait until the VM's node reports the desired state, showing progress.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub wait_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    pub name: String,
    #[arg(long)]
    pub cpus: u32,
    /// e.g. 512MiB, 2GiB.
    #[arg(long, value_parser = parse_mib)]
    pub memory: u64,
    /// Disk size, e.g. 20GiB; repeatable for several disks.
    #[arg(long = "disk", value_parser = parse_mib)]
    pub disks: Vec<u64>,
    /// Image for the first disk: a name from `paddock image list` (every node holds a verified
    /// copy), or an absolute path present on every node. The disk is a qcow2 overlay on it.
    #[arg(long)]
    pub image: Option<String>,
    /// VM label KEY=VALUE; repeatable.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Restart elsewhere when its node fails.
    #[arg(long)]
    pub ha: bool,
    /// Failover priority 0–1000 (higher first).
    #[arg(long, default_value_t = 0)]
    pub priority: u32,
    /// Never two VMs of GROUP on one node.
    #[arg(long)]
    pub anti_affinity: Option<String>,
    /// All VMs of GROUP on one node.
    #[arg(long)]
    pub affinity: Option<String>,
    /// Only nodes with label KEY=VALUE; repeatable.
    #[arg(long = "node-selector")]
    pub node_selector: Vec<String>,
    /// Preferred node; repeatable, first first.
    #[arg(long = "prefer")]
    pub prefer: Vec<String>,
    /// Direct kernel boot (libvirt): the kernel's path, the same on every node.
    #[arg(long)]
    pub kernel: Option<String>,
    /// Initial ramdisk for --kernel.
    #[arg(long)]
    pub initrd: Option<String>,
    /// Kernel command line for --kernel.
    #[arg(long)]
    pub cmdline: Option<String>,
    /// Guest metadata KEY=VALUE the guest can read (libvirt: SMBIOS OEM strings
    /// `paddock:KEY=VALUE`); repeatable.
    #[arg(long = "env")]
    pub env: Vec<String>,
    /// Where the disks live: local (on the node; an HA restart elsewhere starts from a fresh
    /// disk) or shared (on every node's --shared-storage; restarts and migrations reuse it).
    #[arg(long, default_value = "local")]
    pub disk_policy: String,
    /// Create without starting.
    #[arg(long)]
    pub stopped: bool,
    /// Create N VMs named NAME-1 … NAME-N with this spec, in batches of up to 1,000 per log
    /// entry (each batch all or none).
    #[arg(long)]
    pub count: Option<usize>,
    #[command(flatten)]
    pub wait: Wait,
}

fn key_values(flag: &str, items: &[String]) -> Result<BTreeMap<String, String>, Failure> {
    items
        .iter()
        .map(|item| {
            item.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| {
                    Failure::new(
                        exit::INVALID,
                        format!("{flag} {item:?} is not KEY=VALUE; use e.g. {flag} zone=a"),
                    )
                })
        })
        .collect()
}

pub async fn run(command: VmCommand, global: &Global) -> Result<(), Failure> {
    if let VmCommand::Migrate(args) = command {
        return super::migration::migrate(args, global).await;
    }
    let mut client = global.client()?;
    match command {
        VmCommand::Migrate(_) => {}
        VmCommand::Console { name, stay } => {
            return super::console::run(&mut client, &name, stay).await;
        }
        VmCommand::Logs { name, follow, tail } => {
            use std::io::Write;
            let mut chunk = client
                .vm_logs(&name, 0, true, tail)
                .await
                .map_err(client_failure)?;
            loop {
                let mut out = std::io::stdout().lock();
                out.write_all(&chunk.data)?;
                out.flush()?;
                drop(out);
                if !follow {
                    break;
                }
                if chunk.data.is_empty() {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                // Where the VM moved (migration, HA), its new node's log starts afresh.
                let node = chunk.node.clone();
                chunk = client
                    .vm_logs(&name, chunk.next_offset, false, 0)
                    .await
                    .map_err(client_failure)?;
                if chunk.node != node {
                    eprintln!("--- {name} now runs on {}", chunk.node);
                    chunk = client
                        .vm_logs(&name, 0, false, 0)
                        .await
                        .map_err(client_failure)?;
                }
            }
        }
        VmCommand::Create(args) => {
            let mut disks: Vec<pb::Disk> = args
                .disks
                .iter()
                .map(|size| pb::Disk {
                    size_mib: *size,
                    image: String::new(),
                })
                .collect();
            if let Some(image) = &args.image {
                match disks.first_mut() {
                    Some(first) => first.image = image.clone(),
                    None => {
                        return Err(Failure::new(
                            exit::INVALID,
                            "--image needs a --disk to put it on",
                        ))
                    }
                }
            }
            let spec = pb::VmSpec {
                cpus: args.cpus,
                memory_mib: args.memory,
                disks,
                labels: key_values("--label", &args.labels)?.into_iter().collect(),
                ha: args.ha,
                priority: args.priority,
                node_selector: key_values("--node-selector", &args.node_selector)?
                    .into_iter()
                    .collect(),
                anti_affinity: args.anti_affinity.unwrap_or_default(),
                affinity: args.affinity.unwrap_or_default(),
                prefer: args.prefer,
                kernel: args.kernel.unwrap_or_default(),
                initrd: args.initrd.unwrap_or_default(),
                cmdline: args.cmdline.unwrap_or_default(),
                env: key_values("--env", &args.env)?.into_iter().collect(),
                disk_policy: args.disk_policy,
            };
            let want = if args.stopped { "stopped" } else { "running" };
            if let Some(count) = args.count {
                if count == 0 {
                    return Err(Failure::new(exit::INVALID, "--count must be at least 1"));
                }
                let names: Vec<String> =
                    (1..=count).map(|i| format!("{}-{i}", args.name)).collect();
                for chunk in names.chunks(1000) {
                    let batch = chunk.iter().map(|n| (n.clone(), spec.clone())).collect();
                    client
                        .vm_create_many(batch, args.stopped)
                        .await
                        .map_err(client_failure)?;
                }
                eprintln!("created {} … {}", names[0], names[names.len() - 1]);
                if args.wait.wait {
                    wait_for_many(&mut client, &names, want, &args.wait).await?;
                }
                return Ok(());
            }
            client
                .vm_create(&args.name, spec, args.stopped)
                .await
                .map_err(client_failure)?;
            eprintln!("created {}", args.name);
            if args.wait.wait {
                wait_for(&mut client, &args.name, want, &args.wait).await?;
            }
        }
        VmCommand::List { stale } => {
            let vms = client.vm_list(stale).await.map_err(client_failure)?;
            match global.output {
                Output::Json => {
                    print_json(&json!(vms.iter().map(summary_json).collect::<Vec<_>>()))
                }
                Output::Table => {
                    println!(
                        "{:<24} {:<12} {:<9} {:<9} {:>4} {:>8} {:<3} {:>6}  IP",
                        "NAME", "NODE", "STATE", "DESIRED", "CPUS", "MEM MiB", "HA", "EPOCH"
                    );
                    for vm in &vms {
                        println!(
                            "{:<24} {:<12} {:<9} {:<9} {:>4} {:>8} {:<3} {:>6}  {}",
                            vm.name,
                            if vm.node.is_empty() { "-" } else { &vm.node },
                            vm.state,
                            vm.desired,
                            vm.cpus,
                            vm.memory_mib,
                            if vm.ha { "yes" } else { "no" },
                            vm.epoch,
                            vm.addresses.first().map_or("-", String::as_str),
                        );
                    }
                }
            }
        }
        VmCommand::Show { name } => {
            let vm = get(&mut client, &name).await?;
            match global.output {
                Output::Json => print_json(&detail_json(&vm)),
                Output::Table => print_detail(&vm),
            }
        }
        VmCommand::Start(target) => {
            client
                .vm_set_desired(&target.name, true)
                .await
                .map_err(client_failure)?;
            eprintln!("{}: desired running", target.name);
            if target.wait.wait {
                wait_for(&mut client, &target.name, "running", &target.wait).await?;
            }
        }
        VmCommand::Stop(target) => {
            client
                .vm_set_desired(&target.name, false)
                .await
                .map_err(client_failure)?;
            eprintln!("{}: desired stopped", target.name);
            if target.wait.wait {
                wait_for(&mut client, &target.name, "stopped", &target.wait).await?;
            }
        }
        VmCommand::Restart(target) => {
            // The stop must be observed before the start, or the agent sees no change at all.
            client
                .vm_set_desired(&target.name, false)
                .await
                .map_err(client_failure)?;
            let vm = get(&mut client, &target.name).await?;
            if vm.summary.as_ref().is_some_and(|s| !s.node.is_empty()) {
                wait_for(&mut client, &target.name, "stopped", &target.wait).await?;
            }
            client
                .vm_set_desired(&target.name, true)
                .await
                .map_err(client_failure)?;
            eprintln!("{}: restarting", target.name);
            if target.wait.wait {
                wait_for(&mut client, &target.name, "running", &target.wait).await?;
            }
        }
        VmCommand::Delete(target) => {
            client
                .vm_delete(&target.name)
                .await
                .map_err(client_failure)?;
            // Deletion is immediate in the cluster state; the node destroys the VM on its next pass.
            eprintln!("deleted {}", target.name);
        }
    }
    Ok(())
}

async fn get(client: &mut Client, name: &str) -> Result<VmDetail, Failure> {
    client.vm_get(name, false).await.map_err(client_failure)
}

/// Polls the VM until its observed state is `want`, printing each change; fails early when it
/// fails or cannot be placed for longer than the wait.
async fn wait_for(client: &mut Client, name: &str, want: &str, wait: &Wait) -> Result<(), Failure> {
    let started = Instant::now();
    let mut last = String::new();
    loop {
        let vm = get(client, name).await?;
        let summary = vm.summary.clone().unwrap_or_default();
        let line = if summary.node.is_empty() {
            if vm.waiting.is_empty() {
                format!("{}: {}", name, summary.state)
            } else {
                format!("{}: waiting for a node: {}", name, vm.waiting)
            }
        } else {
            format!(
                "{}: {} on {} (epoch {})",
                name, summary.state, summary.node, summary.epoch
            )
        };
        if line != last {
            eprintln!("  {:>6.1}s  {line}", started.elapsed().as_secs_f64());
            last = line;
        }
        if summary.state == want {
            return Ok(());
        }
        if summary.state == "failed" && summary.desired == want {
            return Err(Failure::new(
                exit::ERROR,
                format!("{name} failed: {}", vm.reason),
            ));
        }
        if started.elapsed() > wait.wait_timeout {
            return Err(Failure::new(
                exit::ERROR,
                format!(
                    "{name} is still {} after {:?} (wanted {want}); see `paddock vm show {name}`",
                    summary.state, wait.wait_timeout
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls the VM list until every one of `names` is `want`, printing the count as it changes.
async fn wait_for_many(
    client: &mut Client,
    names: &[String],
    want: &str,
    wait: &Wait,
) -> Result<(), Failure> {
    let wanted: std::collections::BTreeSet<&str> = names.iter().map(String::as_str).collect();
    let started = Instant::now();
    let mut last = usize::MAX;
    loop {
        let list = client.vm_list(false).await.map_err(client_failure)?;
        let ours: Vec<&VmSummary> = list
            .iter()
            .filter(|v| wanted.contains(v.name.as_str()))
            .collect();
        let done = ours.iter().filter(|v| v.state == want).count();
        let failed: Vec<&str> = ours
            .iter()
            .filter(|v| v.state == "failed")
            .map(|v| v.name.as_str())
            .collect();
        if done != last {
            eprintln!(
                "  {:>6.1}s  {done}/{} {want}",
                started.elapsed().as_secs_f64(),
                names.len()
            );
            last = done;
        }
        if done == names.len() {
            return Ok(());
        }
        if !failed.is_empty() {
            return Err(Failure::new(
                exit::ERROR,
                format!(
                    "{} failed: {}; see `paddock vm show NAME`",
                    failed.len(),
                    failed.join(", ")
                ),
            ));
        }
        if started.elapsed() > wait.wait_timeout {
            return Err(Failure::new(
                exit::ERROR,
                format!(
                    "only {done} of {} are {want} after {:?}; see `paddock vm list`",
                    names.len(),
                    wait.wait_timeout
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The JSON form of a VM in `vm list` (a contract: fields are only ever added).
pub fn summary_json(vm: &VmSummary) -> serde_json::Value {
    json!({
        "name": vm.name,
        "node": if vm.node.is_empty() { serde_json::Value::Null } else { json!(vm.node) },
        "state": vm.state,
        "desired": vm.desired,
        "cpus": vm.cpus,
        "memory_mib": vm.memory_mib,
        "ha": vm.ha,
        "epoch": vm.epoch,
        "addresses": vm.addresses,
    })
}

pub fn detail_json(vm: &VmDetail) -> serde_json::Value {
    let mut value = summary_json(&vm.summary.clone().unwrap_or_default());
    let spec = vm.spec.clone().unwrap_or_default();
    fn sorted(m: &std::collections::HashMap<String, String>) -> BTreeMap<&String, &String> {
        m.iter().collect()
    }
    value["spec"] = json!({
        "cpus": spec.cpus,
        "memory_mib": spec.memory_mib,
        "disks": spec.disks.iter().map(|d| json!({"size_mib": d.size_mib, "image": d.image})).collect::<Vec<_>>(),
        "labels": sorted(&spec.labels),
        "ha": spec.ha,
        "priority": spec.priority,
        "node_selector": sorted(&spec.node_selector),
        "anti_affinity": spec.anti_affinity,
        "affinity": spec.affinity,
        "prefer": spec.prefer,
        "kernel": spec.kernel,
        "initrd": spec.initrd,
        "cmdline": spec.cmdline,
        "env": sorted(&spec.env),
        "disk_policy": disk_policy(&spec),
    });
    value["reason"] = json!(vm.reason);
    value["waiting"] = json!(vm.waiting);
    value["created_ms"] = json!(vm.created_ms);
    value["events"] = json!(vm
        .events
        .iter()
        .map(|e| json!({"at_ms": e.at_ms, "message": e.message}))
        .collect::<Vec<_>>());
    value
}

/// The spec's disk policy, `local` when unset.
fn disk_policy(spec: &pb::VmSpec) -> &str {
    if spec.disk_policy.is_empty() {
        "local"
    } else {
        &spec.disk_policy
    }
}

fn print_detail(vm: &VmDetail) {
    let s = vm.summary.clone().unwrap_or_default();
    let spec = vm.spec.clone().unwrap_or_default();
    println!("name      {}", s.name);
    println!("state     {} (desired {})", s.state, s.desired);
    println!(
        "node      {}",
        if s.node.is_empty() {
            "-".to_string()
        } else {
            format!("{} (epoch {})", s.node, s.epoch)
        }
    );
    if !s.addresses.is_empty() {
        println!("ip        {}", s.addresses.join(", "));
    } else if s.state == "running" {
        println!("ip        - (not seen yet: the node reports what libvirt's DHCP leases or its ARP table show)");
    }
    println!("size      {} cpus, {} MiB", spec.cpus, spec.memory_mib);
    println!(
        "ha        {} (priority {})",
        if spec.ha { "yes" } else { "no" },
        spec.priority
    );
    if !spec.kernel.is_empty() {
        println!(
            "boot      kernel {} initrd {} cmdline {:?}",
            spec.kernel,
            if spec.initrd.is_empty() {
                "-"
            } else {
                &spec.initrd
            },
            spec.cmdline
        );
    }
    if !spec.disks.is_empty() {
        let disks: Vec<String> = spec
            .disks
            .iter()
            .map(|d| match d.image.as_str() {
                "" => format!("{} MiB", d.size_mib),
                image => format!("{} MiB on {image}", d.size_mib),
            })
            .collect();
        let policy = match disk_policy(&spec) {
            "shared" => "shared: restarts and migrations elsewhere reuse them",
            _ if spec.ha => "local: an HA restart on another node starts from fresh disks",
            _ => "local to the node",
        };
        println!("disks     {} ({policy})", disks.join(", "));
    }
    if !vm.waiting.is_empty() {
        println!("waiting   {}", vm.waiting);
    }
    if !vm.reason.is_empty() {
        println!("reason    {}", vm.reason);
    }
    println!("events:");
    for e in &vm.events {
        println!("  {}  {}", crate::output::clock(e.at_ms), e.message);
    }
}
