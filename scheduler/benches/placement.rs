//! Pure scheduler throughput: place 100,000 VMs with constraints on 5,000 nodes, on one core.
//! `cargo bench -p paddock-scheduler` (results in docs/benchmarks.md).

use std::collections::BTreeMap;
use std::time::Instant;

use paddock_model::vm::{Constraints, Desired, VmSpec};
use paddock_model::{ClientRequest, Command, Proposal, Resources};
use paddock_scheduler::plan_pending;

fn main() {
    let nodes: usize = arg("--nodes", 5_000);
    let vms: usize = arg("--vms", 100_000);
    let mut state = paddock_model::ClusterState::default();
    let mut commands = Vec::new();
    for i in 0..nodes {
        let mut labels = BTreeMap::new();
        labels.insert("zone".to_string(), format!("z{}", i % 4));
        if i % 3 == 0 {
            labels.insert("disk".to_string(), "ssd".to_string());
        }
        commands.push(Command::NodeRegister {
            name: format!("node-{i:05}"),
            capacity: Resources {
                cpus: 64,
                memory_mib: 256 * 1024,
                disk_mib: 4 << 20,
            },
            labels,
            driver: "memvm".into(),
        });
    }
    for i in 0..vms {
        // A fifth select ssd nodes, a tenth are in one of 500 anti-affinity groups, a fiftieth
        // in one of 200 affinity groups; sizes 1–4 cpus, 1–8 GiB.
        let constraints = Constraints {
            node_selector: if i % 5 == 0 {
                BTreeMap::from([("disk".to_string(), "ssd".to_string())])
            } else {
                BTreeMap::new()
            },
            anti_affinity: (i % 10 == 1).then(|| format!("anti-{}", i % 500)),
            affinity: (i % 50 == 2).then(|| format!("aff-{}", i % 200)),
            prefer: Vec::new(),
        };
        commands.push(Command::VmCreate {
            name: format!("vm-{i:06}"),
            spec: VmSpec {
                cpus: 1 + (i % 4) as u32,
                memory_mib: 1024 * (1 + (i % 8) as u64),
                disks: Vec::new(),
                labels: BTreeMap::new(),
                ha: i % 2 == 0,
                priority: (i % 1000) as u16,
                constraints,
                guest: Default::default(),
            },
            desired: Desired::Running,
        });
    }
    state.apply(&Proposal {
        at_ms: 1,
        requests: commands.into_iter().map(ClientRequest::internal).collect(),
    });
    for policy in ["spread", "binpack"] {
        let mut state = state.clone();
        state
            .settings
            .set("scheduler", policy)
            .expect("valid policy");
        let started = Instant::now();
        let plan = plan_pending(&state);
        let elapsed = started.elapsed();
        let placed = plan.placements.len();
        if let Some((vm, why)) = plan.waiting.first() {
            println!("  e.g. {vm} waits: {why}");
        }
        println!(
            "{policy}: {vms} VMs on {nodes} nodes: {placed} placed, {} waiting in {:.3} s = {:.0} placements/s",
            plan.waiting.len(),
            elapsed.as_secs_f64(),
            vms as f64 / elapsed.as_secs_f64()
        );
    }
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
