//! HA on real processes (DESIGN.md §5): a killed host's HA VMs run again elsewhere and its
//! other VMs fail; a paused or isolated host's VMs are fenced by their lease before they run
//! anywhere else, and the host destroys its stale copies when it is back; failover carries on
//! when two hosts and then the leader die; maintenance and `ha disarm` hold failover; crashed
//! HA VMs restart in place, then elsewhere, then stay failed.

use std::time::{Duration, Instant};

use paddock_api::client::Client;
use paddock_api::pb;
use paddock_testkit::local_cluster::LocalCluster;
use paddock_tests::{cluster, intervals, memvm_cluster, serial, spec, until, vm_summary, WAIT};

async fn start() -> anyhow::Result<(tempfile::TempDir, LocalCluster)> {
    memvm_cluster(&["--memvm-working-set", "1MiB"]).await
}

fn on_n3(ha: bool) -> pb::VmSpec {
    pb::VmSpec {
        cpus: 1,
        memory_mib: 64,
        ha,
        prefer: vec!["n3".into()],
        ..Default::default()
    }
}

async fn vm(client: &mut Client, name: &str) -> anyhow::Result<pb::VmSummary> {
    vm_summary(client, name).await
}

/// `name`'s state in `paddock node list` (empty if it is not listed).
async fn node_state(client: &mut Client, name: &str) -> anyhow::Result<String> {
    Ok(client
        .node_list(false)
        .await?
        .into_iter()
        .find(|n| n.name == name)
        .map(|n| n.state)
        .unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_hosts_ha_vms_run_elsewhere_and_its_other_vms_fail() -> anyhow::Result<()> {
    let _serial = serial().await;
    let (_dir, mut cluster) = start().await?;
    let mut client = cluster.client(WAIT)?;
    client.vm_create("ha-1", on_n3(true), false).await?;
    client.vm_create("plain", on_n3(false), false).await?;
    until!("both running on n3", {
        let (a, b) = (
            vm(&mut client, "ha-1").await?,
            vm(&mut client, "plain").await?,
        );
        Ok(a.state == "running" && a.node == "n3" && b.state == "running" && b.node == "n3")
    });
    let before = vm(&mut client, "ha-1").await?.epoch;

    cluster.kill(2); // the whole host: paddockd and its guests
    let killed = Instant::now();
    // The leader sees it go quiet first (suspect, in memory), then commits it down.
    until!(
        "n3 suspect",
        Ok(node_state(&mut client, "n3").await? == "suspect")
    );
    until!("ha-1 running elsewhere", {
        let a = vm(&mut client, "ha-1").await?;
        Ok(a.state == "running" && a.node != "n3" && a.epoch > before)
    });
    let recovered = killed.elapsed();
    let plain = client.vm_get("plain", false).await?;
    let summary = plain.summary.clone().unwrap_or_default();
    assert_eq!(
        (summary.state.as_str(), summary.node.as_str()),
        ("failed", "")
    );
    assert_eq!(plain.reason, "host n3 down");
    assert_eq!(node_state(&mut client, "n3").await?, "down");
    let events: Vec<String> = client
        .vm_get("ha-1", false)
        .await?
        .events
        .into_iter()
        .map(|e| e.message)
        .collect();
    assert!(
        events.iter().any(|e| e.starts_with("node n3 down")),
        "{events:?}"
    );
    eprintln!("ha-1 running elsewhere {recovered:?} after the kill");

    // The host comes back and is ready again; the failed VM starts only when asked.
    cluster.start(2)?;
    until!(
        "n3 ready",
        Ok(node_state(&mut client, "n3").await? == "ready")
    );
    assert_eq!(vm(&mut client, "plain").await?.state, "failed");
    client.vm_set_desired("plain", true).await?;
    until!(
        "plain running again",
        Ok(vm(&mut client, "plain").await?.state == "running")
    );
    cluster.stop_all();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_host_is_fenced_before_its_vm_runs_elsewhere() -> anyhow::Result<()> {
    let _serial = serial().await;
    let (_dir, mut cluster) = start().await?;
    let mut client = cluster.client(WAIT)?;
    client.vm_create("ha-2", on_n3(true), false).await?;
    until!("ha-2 running on n3", {
        let a = vm(&mut client, "ha-2").await?;
        Ok(a.state == "running" && a.node == "n3")
    });
    // Pause the whole host well past its lease and the down threshold.
    cluster.signal_host(2, rustix::process::Signal::STOP);
    until!("ha-2 running elsewhere", {
        let a = vm(&mut client, "ha-2").await?;
        Ok(a.state == "running" && a.node != "n3")
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.signal_host(2, rustix::process::Signal::CONT);
    // The woken guest halts at once (its lease is over) and n3's agent destroys it.
    until!("no guest of ha-2 left on n3", {
        Ok(!cluster.nodes[2].data_dir.join("memvm/vms/ha-2").exists())
    });
    // Single run: the n3 interval ended before the other node's began.
    let runs = intervals(&cluster, "ha-2");
    let old = runs
        .iter()
        .find(|r| r.0 == "n3")
        .expect("an interval on n3");
    let new = runs
        .iter()
        .find(|r| r.0 != "n3")
        .expect("an interval elsewhere");
    assert!(
        old.3 < new.2,
        "ha-2 ran on n3 until {} and on {} from {}: {runs:?}",
        old.3,
        new.0,
        new.2
    );
    until!(
        "n3 ready again",
        Ok(node_state(&mut client, "n3").await? == "ready")
    );
    cluster.stop_all();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn no_failover_in_maintenance_or_while_disarmed() -> anyhow::Result<()> {
    let _serial = serial().await;
    let (_dir, mut cluster) = start().await?;
    let mut client = cluster.client(WAIT)?;
    client.vm_create("ha-3", on_n3(true), false).await?;
    until!("ha-3 running on n3", {
        let a = vm(&mut client, "ha-3").await?;
        Ok(a.state == "running" && a.node == "n3")
    });
    client.node_maintenance("n3", true).await?;
    cluster.kill(2);
    // Well past the down threshold (4.6 s with the tests' election timeouts).
    tokio::time::sleep(Duration::from_secs(7)).await;
    let a = vm(&mut client, "ha-3").await?;
    assert_eq!(a.node, "n3", "failed over while n3 was in maintenance");
    assert_eq!(node_state(&mut client, "n3").await?, "maintenance");

    // Disarmed, leaving maintenance does not trigger failover either...
    client.setting_set("ha", "disarmed").await?;
    client.node_maintenance("n3", false).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(vm(&mut client, "ha-3").await?.node, "n3");
    // ...arming does.
    client.setting_set("ha", "armed").await?;
    until!("ha-3 running elsewhere", {
        let a = vm(&mut client, "ha-3").await?;
        Ok(a.state == "running" && a.node != "n3")
    });
    cluster.stop_all();
    Ok(())
}

/// Makes the memvm guest of `vm` on node `i` crash.
fn crash(cluster: &LocalCluster, i: usize, vm: &str) -> anyhow::Result<()> {
    std::fs::write(
        cluster.nodes[i]
            .data_dir
            .join("memvm/vms")
            .join(vm)
            .join("crash"),
        b"",
    )?;
    Ok(())
}

fn index_of(cluster: &LocalCluster, node: &str) -> usize {
    cluster
        .nodes
        .iter()
        .position(|n| n.name == node)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashing_ha_vm_restarts_in_place_then_elsewhere_then_stays_failed() -> anyhow::Result<()>
{
    let _serial = serial().await;
    let (_dir, cluster) = start().await?;
    let mut client = cluster.client(WAIT)?;
    client.setting_set("restart_limit", "1").await?;
    client.vm_create("flaky", on_n3(true), false).await?;
    client.vm_create("plain", on_n3(false), false).await?;
    until!("both running on n3", {
        let (a, b) = (
            vm(&mut client, "flaky").await?,
            vm(&mut client, "plain").await?,
        );
        Ok(a.state == "running" && a.node == "n3" && b.state == "running")
    });
    let first = vm(&mut client, "flaky").await?.epoch;

    // 1st crash: restarted in place with a new epoch.
    crash(&cluster, 2, "flaky")?;
    until!("flaky restarted on n3", {
        let a = vm(&mut client, "flaky").await?;
        Ok(a.state == "running" && a.node == "n3" && a.epoch > first)
    });
    // 2nd crash: the limit is reached, so it moves.
    crash(&cluster, 2, "flaky")?;
    until!("flaky running elsewhere", {
        let a = vm(&mut client, "flaky").await?;
        Ok(a.state == "running" && a.node != "n3")
    });
    // 3rd crash, on the new node: left failed.
    let moved_to = vm(&mut client, "flaky").await?.node;
    crash(&cluster, index_of(&cluster, &moved_to), "flaky")?;
    until!(
        "flaky failed",
        Ok(vm(&mut client, "flaky").await?.state == "failed")
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(vm(&mut client, "flaky").await?.state, "failed");
    let events: Vec<String> = client
        .vm_get("flaky", false)
        .await?
        .events
        .into_iter()
        .map(|e| e.message)
        .collect();
    for expected in [
        "restart 1/1 in place on n3",
        "placing it elsewhere",
        "left failed",
    ] {
        assert!(
            events.iter().any(|e| e.contains(expected)),
            "{expected}: {events:?}"
        );
    }

    // A VM that is not HA is never restarted by itself.
    crash(&cluster, 2, "plain")?;
    until!(
        "plain failed",
        Ok(vm(&mut client, "plain").await?.state == "failed")
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(vm(&mut client, "plain").await?.state, "failed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_isolated_host_is_fenced_and_its_ha_vm_runs_elsewhere() -> anyhow::Result<()> {
    use paddock_testkit::proxy::{LinkMode, LinkProxy};
    let _serial = serial().await;
    let (_dir, mut cluster) = cluster(spec(3))?;
    // Every node-to-node link through a proxy, as in the chaos harness.
    let mut proxies = Vec::new();
    let mut touching_n3 = Vec::new();
    for i in 0..3 {
        let mut routes = Vec::new();
        for j in (0..3).filter(|j| *j != i) {
            let proxy = LinkProxy::start(cluster.nodes[j].address.clone()).await?;
            routes.push(format!("{}={}", cluster.nodes[j].name, proxy.address));
            if i == 2 || j == 2 {
                touching_n3.push(proxies.len());
            }
            proxies.push(proxy);
        }
        cluster.nodes[i].extra_args.extend([
            "--route".to_string(),
            routes.join(","),
            "--memvm-working-set".to_string(),
            "1MiB".to_string(),
        ]);
    }
    cluster.start_all()?;
    cluster.wait_for_leader(WAIT).await?;
    let mut client = cluster.client_of(
        vec![
            cluster.nodes[0].address.clone(),
            cluster.nodes[1].address.clone(),
        ],
        WAIT,
    )?;
    until!(
        "3 nodes registered",
        Ok(client.node_list(false).await?.len() == 3)
    );
    client.vm_create("ha-4", on_n3(true), false).await?;
    until!("ha-4 running on n3", {
        let a = vm(&mut client, "ha-4").await?;
        Ok(a.state == "running" && a.node == "n3")
    });
    for i in &touching_n3 {
        proxies[*i].set(LinkMode::Cut);
    }
    until!("ha-4 running elsewhere", {
        let a = vm(&mut client, "ha-4").await?;
        Ok(a.state == "running" && a.node != "n3")
    });
    for i in &touching_n3 {
        proxies[*i].set(LinkMode::Pass);
    }
    until!("n3's stale copy destroyed", {
        Ok(!cluster.nodes[2].data_dir.join("memvm/vms/ha-4").exists())
    });
    let runs = intervals(&cluster, "ha-4");
    let old = runs
        .iter()
        .find(|r| r.0 == "n3")
        .expect("an interval on n3");
    let new = runs
        .iter()
        .find(|r| r.0 != "n3")
        .expect("an interval elsewhere");
    assert!(old.3 < new.2, "ran on two nodes at once: {runs:?}");
    cluster.stop_all();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn failover_survives_the_leader_dying_and_two_hosts_dying_at_once() -> anyhow::Result<()> {
    let _serial = serial().await;
    let (_dir, mut cluster) = cluster(spec(5))?;
    for node in &mut cluster.nodes {
        node.extra_args
            .extend(["--cpus", "8", "--memvm-working-set", "1MiB"].map(String::from));
    }
    cluster.start_all()?;
    let leader = cluster.wait_for_leader(WAIT).await?;
    // Two victims that are not the leader.
    let victims: Vec<usize> = (1..=2).map(|k| (leader + k) % 5).collect();
    let names: Vec<String> = victims
        .iter()
        .map(|v| cluster.nodes[*v].name.clone())
        .collect();
    let survivors: Vec<String> = (0..5)
        .filter(|i| !victims.contains(i) && *i != leader)
        .map(|i| cluster.nodes[i].address.clone())
        .collect();
    let mut client = cluster.client_of(survivors, WAIT)?;
    until!(
        "5 nodes registered",
        Ok(client.node_list(false).await?.len() == 5)
    );
    for (i, name) in names.iter().enumerate() {
        for k in 0..3 {
            let spec = pb::VmSpec {
                cpus: 1,
                memory_mib: 32,
                ha: true,
                priority: (100 * k) as u32,
                prefer: vec![name.clone()],
                ..Default::default()
            };
            client.vm_create(&format!("v{i}-{k}"), spec, false).await?;
        }
    }
    let all: Vec<String> = (0..2)
        .flat_map(|i| (0..3).map(move |k| format!("v{i}-{k}")))
        .collect();
    until!("six VMs running on the victims", {
        let list = client.vm_list(false).await?;
        Ok(list
            .iter()
            .filter(|v| v.state == "running" && names.contains(&v.node))
            .count()
            == 6)
    });
    // Both victims die at once; as the leader starts failing them over, it dies too.
    for v in &victims {
        cluster.kill(*v);
    }
    tokio::time::sleep(Duration::from_millis(4_700)).await;
    cluster.kill(leader);
    // Three of five down leaves no majority: the old leader's host reboots at once (a new
    // leader among the three must carry the failover on from the replicated state).
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.start(leader)?;
    until!("every VM running on a survivor", {
        let list = client.vm_list(false).await?;
        Ok(all.iter().all(|n| {
            list.iter()
                .any(|v| &v.name == n && v.state == "running" && !names.contains(&v.node))
        }))
    });
    // Never on two nodes at once, never lost: one live guest per VM across the cluster.
    for name in &all {
        let runs = intervals(&cluster, name);
        for (i, a) in runs.iter().enumerate() {
            for b in &runs[i + 1..] {
                assert!(
                    a.0 == b.0 || a.3 < b.2 || b.3 < a.2,
                    "{name} ran on two nodes at once: {runs:?}"
                );
            }
        }
    }
    cluster.stop_all();
    Ok(())
}
