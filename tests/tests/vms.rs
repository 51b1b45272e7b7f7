//! VMs end to end on 3-node clusters with the memvm driver: placement with constraints,
//! lifecycle through a follower, capacity freed by deletes, adoption after a daemon restart,
//! and destruction of VMs a node finds no longer assigned to it.

use std::collections::BTreeMap;

use paddock_api::client::Client;
use paddock_api::pb;
use paddock_testkit::local_cluster::LocalCluster;
use paddock_testkit::memvm::{alive, host_guests};
use paddock_tests::{cluster, serial, spec, until, WAIT};

/// A 3-node cluster where node i offers `cpus[i]` vCPUs and 4 GiB, with zone labels
/// a, b, b and light memvm guests.
async fn start(cpus: [u32; 3]) -> anyhow::Result<(tempfile::TempDir, LocalCluster)> {
    let (dir, mut cluster) = cluster(spec(3))?;
    for (i, zone) in ["a", "b", "b"].iter().enumerate() {
        cluster.nodes[i].extra_args.extend(
            [
                "--cpus",
                &cpus[i].to_string(),
                "--memory",
                "4GiB",
                "--label",
                &format!("zone={zone}"),
                "--memvm-working-set",
                "1MiB",
                "--memvm-dirty-rate",
                "100",
            ]
            .map(String::from),
        );
    }
    cluster.start_all()?;
    cluster.wait_for_leader(WAIT).await?;
    let mut client = cluster.client(WAIT)?;
    until!("3 nodes registered", {
        Ok(client.node_list(false).await?.len() == 3)
    });
    Ok((dir, cluster))
}

fn spec_of(cpus: u32, memory_mib: u64) -> pb::VmSpec {
    pb::VmSpec {
        cpus,
        memory_mib,
        ..Default::default()
    }
}

async fn vms(client: &mut Client) -> anyhow::Result<BTreeMap<String, pb::VmSummary>> {
    Ok(client
        .vm_list(false)
        .await?
        .into_iter()
        .map(|v| (v.name.clone(), v))
        .collect())
}

async fn all_running(client: &mut Client, names: &[String]) -> anyhow::Result<bool> {
    let vms = vms(client).await?;
    Ok(names
        .iter()
        .all(|n| vms.get(n).is_some_and(|v| v.state == "running")))
}

fn follower_client(cluster: &mut LocalCluster, leader: usize) -> anyhow::Result<Client> {
    let follower = (leader + 1) % 3;
    cluster.client_of(vec![cluster.nodes[follower].address.clone()], WAIT)
}

#[tokio::test(flavor = "multi_thread")]
async fn thirty_vms_with_constraints_are_placed_and_run() -> anyhow::Result<()> {
    let _serial = serial().await;
    let (_dir, mut cluster) = start([16, 16, 16]).await?;
    let mut client = cluster.client(WAIT)?;
    let mut names = Vec::new();
    for i in 0..30 {
        let mut spec = spec_of(1, 64);
        match i % 5 {
            0 => spec.anti_affinity = format!("db{}", i % 2),
            1 => {
                spec.node_selector.insert("zone".into(), "a".into());
            }
            2 => spec.affinity = "cache".into(),
            3 => spec.prefer = vec!["n3".into()],
            _ => {}
        }
        let name = format!("vm-{i:02}");
        client.vm_create(&name, spec, false).await?;
        names.push(name);
    }
    // Three VMs per anti-affinity group fit on three nodes; the rest of the groups wait.
    until!("placeable VMs running", {
        let vms = vms(&mut client).await?;
        Ok(vms.values().filter(|v| v.state == "running").count() == 30)
    });
    let vms = vms(&mut client).await?;
    let node_of = |name: &str| vms[name].node.clone();
    let mut per_group: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut cache_nodes = std::collections::BTreeSet::new();
    for i in 0..30 {
        let name = format!("vm-{i:02}");
        match i % 5 {
            0 => per_group
                .entry(format!("db{}", i % 2))
                .or_default()
                .push(node_of(&name)),
            1 => assert_eq!(node_of(&name), "n1", "{name} selects zone=a"),
            2 => {
                cache_nodes.insert(node_of(&name));
            }
            3 => assert_eq!(node_of(&name), "n3", "{name} prefers n3"),
            _ => {}
        }
    }
    for (group, nodes) in per_group {
        let distinct: std::collections::BTreeSet<_> = nodes.iter().collect();
        assert_eq!(
            distinct.len(),
            nodes.len(),
            "group {group} shares a node: {nodes:?}"
        );
    }
    assert_eq!(
        cache_nodes.len(),
        1,
        "affinity group cache is split: {cache_nodes:?}"
    );
    // Every node's allocation matches its VMs.
    for node in client.node_list(false).await? {
        assert_eq!(
            node.cpus - node.cpus_free,
            node.vms.len() as u32,
            "{}",
            node.name
        );
    }
    cluster.stop_all();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn lifecycle_through_a_follower_and_deletes_make_room() -> anyhow::Result<()> {
    let _serial = serial().await;
    // 2 vCPUs per node: six 1-vCPU VMs fill the cluster.
    let (_dir, mut cluster) = start([2, 2, 2]).await?;
    let leader = cluster.wait_for_leader(WAIT).await?;
    let mut client = follower_client(&mut cluster, leader)?;
    let names: Vec<String> = (0..6).map(|i| format!("v{i}")).collect();
    for name in &names {
        client.vm_create(name, spec_of(1, 64), false).await?;
    }
    until!("six VMs running", all_running(&mut client, &names).await);
    client.vm_create("late", spec_of(1, 64), false).await?;
    until!("late waits with a reason", {
        let vm = client.vm_get("late", false).await?;
        Ok(vm.waiting == "3 nodes: 3 lack cpus")
    });
    // Stop and start through the follower.
    client.vm_set_desired("v0", false).await?;
    until!("v0 stopped", {
        Ok(client
            .vm_get("v0", false)
            .await?
            .summary
            .unwrap_or_default()
            .state
            == "stopped")
    });
    client.vm_set_desired("v0", true).await?;
    until!(
        "v0 running",
        all_running(&mut client, &["v0".to_string()]).await
    );
    // A stopped VM keeps its node; deleting one frees room for the waiting VM.
    client.vm_delete("v1").await?;
    until!(
        "late running",
        all_running(&mut client, &["late".to_string()]).await
    );
    let vm = client.vm_get("late", false).await?;
    assert!(vm.waiting.is_empty());
    assert!(vm.events.iter().any(|e| e.message.starts_with("waiting: ")));
    assert!(vm
        .events
        .iter()
        .any(|e| e.message.starts_with("scheduled on ")));
    // Many at once: all or none.
    let batch: Vec<(String, pb::VmSpec)> = (0..20)
        .map(|i| (format!("batch-{i}"), spec_of(1, 64)))
        .collect();
    client.vm_create_many(batch, true).await?;
    let clash = vec![
        ("batch-new".to_string(), spec_of(1, 64)),
        ("batch-3".to_string(), spec_of(1, 64)),
    ];
    let refused = client.vm_create_many(clash, true).await;
    assert!(format!("{:?}", refused.err()).contains("batch-3 already exists"));
    let all = vms(&mut client).await?;
    assert_eq!(all.keys().filter(|n| n.starts_with("batch-")).count(), 20);
    assert!(all
        .values()
        .filter(|v| v.name.starts_with("batch-"))
        .all(|v| v.desired == "stopped" && v.node.is_empty()));
    // Bad requests get clear refusals.
    let dup = client.vm_create("late", spec_of(1, 64), false).await;
    assert!(format!("{:?}", dup.err()).contains("already exists"));
    let zero = client.vm_create("zero", spec_of(0, 64), false).await;
    assert!(format!("{:?}", zero.err()).contains("cpus must be 1"));
    let missing = client.vm_set_desired("nope", true).await;
    assert!(format!("{:?}", missing.err()).contains("does not exist"));
    cluster.stop_all();
    Ok(())
}

/// PIDs of the memvm guests of node `i`, by VM name (from the driver's records).
fn guest_pids(cluster: &LocalCluster, i: usize) -> BTreeMap<String, u64> {
    host_guests(cluster)
        .into_iter()
        .filter(|g| g.node == cluster.nodes[i].name)
        .map(|g| (g.vm, g.pid))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_daemon_adopts_its_vms_and_destroys_those_no_longer_assigned(
) -> anyhow::Result<()> {
    let _serial = serial().await;
    let (_dir, mut cluster) = start([4, 4, 4]).await?;
    let mut client = cluster.client(WAIT)?;
    // Two VMs pinned (by preference) to n3.
    for name in ["keep", "drop"] {
        let mut spec = spec_of(1, 64);
        spec.prefer = vec!["n3".into()];
        client.vm_create(name, spec, false).await?;
    }
    let both = ["keep".to_string(), "drop".to_string()];
    until!("both running", all_running(&mut client, &both).await);
    let before = guest_pids(&cluster, 2);
    assert_eq!(before.len(), 2, "{before:?}");
    let epochs: BTreeMap<String, u64> = vms(&mut client)
        .await?
        .into_iter()
        .map(|(n, v)| (n, v.epoch))
        .collect();

    // The daemon dies (not the host): its guests keep running.
    cluster.kill_daemon(2);
    assert!(before.values().all(|pid| alive(*pid)));
    // While it is gone, one of its VMs is deleted.
    client.vm_delete("drop").await?;
    cluster.start(2)?;
    // It adopts the VM it still owns (same process, same epoch) and destroys the other.
    // Destroyed: the driver kills the guest, then removes its record.
    until!(
        "drop destroyed",
        Ok(!alive(before["drop"]) && !guest_pids(&cluster, 2).contains_key("drop"))
    );
    let vms_now = vms(&mut client).await?;
    assert_eq!(vms_now["keep"].state, "running");
    assert_eq!(vms_now["keep"].epoch, epochs["keep"]);
    assert!(
        alive(before["keep"]),
        "keep was restarted instead of adopted"
    );
    assert_eq!(guest_pids(&cluster, 2).get("keep"), Some(&before["keep"]));
    assert!(!guest_pids(&cluster, 2).contains_key("drop"));
    // Once n3 has confirmed the destruction, the name can be used again.
    until!("drop can be created again", {
        Ok(client.vm_create("drop", spec_of(1, 64), true).await.is_ok())
    });
    cluster.stop_all();
    Ok(())
}
