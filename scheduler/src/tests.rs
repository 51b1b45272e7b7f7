use std::collections::BTreeMap;

use paddock_model::vm::{Constraints, Desired, VmSpec, VmState};
use paddock_model::{ClientRequest, Command, Proposal, Response};
use proptest::prelude::*;

use super::*;

fn apply(state: &mut ClusterState, command: Command) -> Response {
    state
        .apply(&Proposal {
            at_ms: 1,
            requests: vec![ClientRequest::internal(command)],
        })
        .remove(0)
        .expect("command applies")
}

fn node(state: &mut ClusterState, name: &str, cpus: u32, memory_mib: u64, labels: &[(&str, &str)]) {
    apply(
        state,
        Command::NodeRegister {
            name: name.into(),
            capacity: Resources {
                cpus,
                memory_mib,
                disk_mib: 1 << 20,
            },
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            driver: "memvm".into(),
        },
    );
}

fn vm(state: &mut ClusterState, name: &str, cpus: u32, memory_mib: u64, constraints: Constraints) {
    apply(
        state,
        Command::VmCreate {
            name: name.into(),
            spec: VmSpec {
                cpus,
                memory_mib,
                disks: Vec::new(),
                labels: BTreeMap::new(),
                ha: false,
                priority: 0,
                constraints,
                guest: Default::default(),
            },
            desired: Desired::Running,
        },
    );
}

fn anti(group: &str) -> Constraints {
    Constraints {
        anti_affinity: Some(group.into()),
        ..Default::default()
    }
}

/// Plans and applies until nothing more can be placed; returns the last plan.
fn settle(state: &mut ClusterState) -> Plan {
    loop {
        let plan = plan_pending(state);
        if plan.placements.is_empty() {
            return plan;
        }
        let Response::Placed { refused, .. } = apply(
            state,
            Command::VmPlace {
                placements: plan.placements.clone(),
            },
        ) else {
            panic!("VmPlace answers Placed")
        };
        assert!(
            refused.is_empty(),
            "a fresh plan is never refused: {refused:?}"
        );
    }
}

#[test]
fn explains_why_a_vm_cannot_be_placed() {
    let mut state = ClusterState::default();
    for (name, memory) in [
        ("n1", 1024),
        ("n2", 1024),
        ("n3", 1024),
        ("n4", 8192),
        ("n5", 8192),
    ] {
        node(&mut state, name, 8, memory, &[]);
    }
    vm(&mut state, "db-1", 1, 4096, anti("db"));
    vm(&mut state, "db-2", 1, 4096, anti("db"));
    vm(&mut state, "db-3", 1, 4096, anti("db"));
    let plan = settle(&mut state);
    assert_eq!(
        plan.waiting,
        vec![(
            "db-3".to_string(),
            "5 nodes: 2 violate anti-affinity group db, 3 lack memory".to_string()
        )]
    );
    let placed: Vec<&str> = ["db-1", "db-2"]
        .iter()
        .map(|n| state.vms[*n].node().expect("test setup"))
        .collect();
    assert_ne!(placed[0], placed[1]);
}

#[test]
fn binpack_fills_and_spread_spreads() {
    for (policy, expect_nodes) in [("binpack", 1), ("spread", 3)] {
        let mut state = ClusterState::default();
        apply(
            &mut state,
            Command::SettingSet {
                key: "scheduler".into(),
                value: policy.into(),
            },
        );
        for name in ["n1", "n2", "n3"] {
            node(&mut state, name, 8, 8192, &[]);
        }
        for i in 0..3 {
            vm(&mut state, &format!("v{i}"), 1, 512, Constraints::default());
        }
        settle(&mut state);
        let used: std::collections::BTreeSet<&str> =
            state.vms.values().filter_map(|v| v.node()).collect();
        assert_eq!(used.len(), expect_nodes, "{policy}: {used:?}");
    }
}

#[test]
fn labels_affinity_and_preferences() {
    let mut state = ClusterState::default();
    node(&mut state, "n1", 8, 8192, &[("disk", "ssd")]);
    node(&mut state, "n2", 8, 8192, &[("disk", "hdd")]);
    node(&mut state, "n3", 8, 8192, &[("disk", "ssd")]);
    let ssd = Constraints {
        node_selector: BTreeMap::from([("disk".to_string(), "ssd".to_string())]),
        ..Default::default()
    };
    vm(&mut state, "fast", 1, 512, ssd);
    let together = Constraints {
        affinity: Some("web".into()),
        ..Default::default()
    };
    vm(&mut state, "web-1", 1, 512, together.clone());
    vm(&mut state, "web-2", 1, 512, together.clone());
    vm(&mut state, "web-3", 1, 512, together);
    vm(
        &mut state,
        "pinned",
        1,
        512,
        Constraints {
            prefer: vec!["n2".into()],
            ..Default::default()
        },
    );
    settle(&mut state);
    assert_ne!(state.vms["fast"].node(), Some("n2"));
    let web = state.vms["web-1"].node();
    assert!(web.is_some());
    assert_eq!(state.vms["web-2"].node(), web);
    assert_eq!(state.vms["web-3"].node(), web);
    assert_eq!(state.vms["pinned"].node(), Some("n2"));
}

#[test]
fn cordoned_and_down_nodes_get_nothing_and_priority_goes_first() {
    let mut state = ClusterState::default();
    node(&mut state, "n1", 2, 4096, &[]);
    node(&mut state, "n2", 8, 8192, &[]);
    apply(
        &mut state,
        Command::NodeCordon {
            name: "n2".into(),
            cordoned: true,
        },
    );
    vm(&mut state, "low", 2, 512, Constraints::default());
    apply(
        &mut state,
        Command::VmCreate {
            name: "zz-high".into(),
            spec: VmSpec {
                cpus: 2,
                memory_mib: 512,
                disks: Vec::new(),
                labels: BTreeMap::new(),
                ha: true,
                priority: 900,
                constraints: Constraints::default(),
                guest: Default::default(),
            },
            desired: Desired::Running,
        },
    );
    let plan = settle(&mut state);
    assert_eq!(state.vms["zz-high"].node(), Some("n1"));
    assert_eq!(
        plan.waiting,
        vec![(
            "low".to_string(),
            "2 nodes: 1 is cordoned, 1 lacks cpus".to_string()
        )]
    );
    assert_eq!(state.vms["low"].observed, VmState::Pending);
}

/// cpus, memory, anti-affinity group, affinity group, priority.
type VmInput = (u32, u64, Option<u8>, Option<u8>, u16);

#[derive(Debug, Clone)]
struct Input {
    nodes: Vec<(u32, u64, bool)>,
    vms: Vec<VmInput>,
    binpack: bool,
}

fn input() -> impl Strategy<Value = Input> {
    (
        proptest::collection::vec((1u32..16, 256u64..16_384, any::<bool>()), 1..12),
        proptest::collection::vec(
            (
                1u32..6,
                64u64..4096,
                proptest::option::of(0u8..4),
                proptest::option::weighted(0.2, 0u8..3),
                0u16..1000,
            ),
            0..60,
        ),
        any::<bool>(),
    )
        .prop_map(|(nodes, vms, binpack)| Input {
            nodes,
            vms,
            binpack,
        })
}

fn build(input: &Input) -> ClusterState {
    let mut state = ClusterState::default();
    if input.binpack {
        apply(
            &mut state,
            Command::SettingSet {
                key: "scheduler".into(),
                value: "binpack".into(),
            },
        );
    }
    for (i, (cpus, memory, ssd)) in input.nodes.iter().enumerate() {
        let labels: &[(&str, &str)] = if *ssd { &[("disk", "ssd")] } else { &[] };
        node(&mut state, &format!("n{i:02}"), *cpus, *memory, labels);
    }
    for (i, (cpus, memory, anti_group, affinity, priority)) in input.vms.iter().enumerate() {
        let constraints = Constraints {
            anti_affinity: anti_group.map(|g| format!("a{g}")),
            affinity: affinity.map(|g| format!("f{g}")),
            node_selector: if i % 5 == 0 {
                BTreeMap::from([("disk".to_string(), "ssd".to_string())])
            } else {
                BTreeMap::new()
            },
            prefer: Vec::new(),
        };
        apply(
            &mut state,
            Command::VmCreate {
                name: format!("vm{i:03}"),
                spec: VmSpec {
                    cpus: *cpus,
                    memory_mib: *memory,
                    disks: Vec::new(),
                    labels: BTreeMap::new(),
                    ha: false,
                    priority: *priority,
                    constraints,
                    guest: Default::default(),
                },
                desired: Desired::Running,
            },
        );
    }
    state
}

proptest! {
    #[test]
    fn never_overcommits_never_breaks_anti_affinity_and_is_deterministic(input in input()) {
        let mut state = build(&input);
        let first = plan_pending(&state);
        prop_assert_eq!(&first, &plan_pending(&build(&input)));
        settle(&mut state);
        let mut used: BTreeMap<&str, (u32, u64)> = BTreeMap::new();
        let mut anti: BTreeMap<(String, &str), u32> = BTreeMap::new();
        for vm in state.vms.values() {
            let Some(node) = vm.node() else { continue };
            let entry = used.entry(node).or_default();
            entry.0 += vm.spec.cpus;
            entry.1 += vm.spec.memory_mib;
            if let Some(group) = &vm.spec.constraints.anti_affinity {
                let count = anti.entry((group.clone(), node)).or_default();
                *count += 1;
                prop_assert_eq!(*count, 1, "two VMs of group {} on {}", group, node);
            }
            if vm.spec.constraints.node_selector.contains_key("disk") {
                prop_assert_eq!(state.nodes[node].labels.get("disk").map(String::as_str), Some("ssd"));
            }
        }
        for (node, (cpus, memory)) in used {
            let capacity = state.nodes[node].capacity;
            prop_assert!(cpus <= capacity.cpus && memory <= capacity.memory_mib);
            prop_assert_eq!(state.nodes[node].allocated.cpus, cpus);
        }
        // Every affinity group sits on one node.
        let mut affinity: BTreeMap<&str, &str> = BTreeMap::new();
        for vm in state.vms.values() {
            if let (Some(group), Some(node)) = (&vm.spec.constraints.affinity, vm.node()) {
                prop_assert_eq!(*affinity.entry(group.as_str()).or_insert(node), node);
            }
        }
    }
}
