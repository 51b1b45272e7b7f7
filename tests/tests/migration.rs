//! Live migration on real processes (DESIGN.md §7): a running memvm guest moves with its
//! memory, counter and device state and never runs on two nodes at once; cancel and a lost
//! destination roll back to the source; a killed source leaves the VM to HA; drain empties a
//! node; bad requests are refused with a reason.

use std::time::Duration;

use paddock_api::client::Client;
use paddock_api::pb;
use paddock_testkit::local_cluster::LocalCluster;
use paddock_tests::{
    intervals, memvm_cluster, migration_ended, serial, start_migration, until, vm_summary, WAIT,
};

/// Guests rewrite whole pages (incompressible), so a bandwidth cap makes a transfer slow.
async fn start() -> anyhow::Result<(tempfile::TempDir, LocalCluster)> {
    memvm_cluster(&["--memvm-working-set", "8MiB", "--memvm-dirty-bytes", "4096"]).await
}

fn on(node: &str, ha: bool) -> pb::VmSpec {
    pb::VmSpec {
        cpus: 1,
        memory_mib: 64,
        ha,
        prefer: vec![node.into()],
        ..Default::default()
    }
}

async fn vm(client: &mut Client, name: &str) -> anyhow::Result<pb::VmSummary> {
    vm_summary(client, name).await
}

async fn running_on(client: &mut Client, name: &str, node: &str) -> anyhow::Result<bool> {
    let v = vm(client, name).await?;
    Ok(v.state == "running" && v.node == node)
}

fn migrate(vm: &str, to: Option<&str>, mode: &str, bandwidth: u64) -> pb::MigrationCreateRequest {
    pb::MigrationCreateRequest {
        vm: vm.into(),
        to: to.unwrap_or_default().into(),
        mode: mode.into(),
        bandwidth,
        max_downtime_ms: 100,
        priority: 0,
        request_id: None,
    }
}

async fn create(client: &mut Client, request: pb::MigrationCreateRequest) -> anyhow::Result<u64> {
    start_migration(client, request).await
}

async fn ended(client: &mut Client, id: u64) -> anyhow::Result<pb::MigrationInfo> {
    migration_ended(client, id, WAIT).await
}

/// No two intervals of `vm` overlap: it never ran on two nodes at once.
fn ran_once(cluster: &LocalCluster, vm: &str) {
    let runs = intervals(cluster, vm);
    for pair in runs.windows(2) {
        assert!(
            pair[0].3 < pair[1].2,
            "{vm} ran twice at once: {:?} and {:?}",
            pair[0],
            pair[1]
        );
    }
}

/// The guest counter in `node`'s status file of `vm`.
fn counter(cluster: &LocalCluster, node: usize, vm: &str) -> Option<u64> {
    let path = cluster.nodes[node]
        .data_dir
        .join(format!("memvm/vms/{vm}/status.json"));
    let text = std::fs::read(path).ok()?;
    let status: serde_json::Value = serde_json::from_slice(&text).ok()?;
    status["counter"].as_u64()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_running_vm_moves_and_continues_exactly_in_every_mode() -> anyhow::Result<()> {
    let _serial = serial().await;
    let (_dir, mut cluster) = start().await?;
    let mut client = cluster.client(WAIT)?;
    client.vm_create("mover", on("n1", false), false).await?;
    until!(
        "mover running on n1",
        running_on(&mut client, "mover", "n1").await
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    let epoch_before = vm(&mut client, "mover").await?.epoch;

    let mut node = "n1".to_string();
    for (mode, to) in [("auto", "n2"), ("postcopy", "n3"), ("precopy", "n1")] {
        // A first pass shorter than the guest's 10 ms tick may find nothing dirtied, and then
        // the engine rightly completes by pre-copy: post-copy gets a pass that spans many
        // ticks (8 MiB of working set at 32 MiB/s).
        let bandwidth = if mode == "postcopy" { 32 << 20 } else { 0 };
        let id = create(&mut client, migrate("mover", Some(to), mode, bandwidth)).await?;
        let m = ended(&mut client, id).await?;
        assert_eq!(m.phase, "completed", "{mode}: {m:?}");
        assert_eq!(
            (m.source.as_str(), m.destination.as_str()),
            (node.as_str(), to)
        );
        assert!(m.downtime_ms.is_some(), "{m:?}");
        assert_eq!(
            m.source_verified,
            Some(true),
            "{mode}: memory sent = frozen source memory"
        );
        assert_eq!(m.postcopy, mode == "postcopy");
        let v = vm(&mut client, "mover").await?;
        assert_eq!(v.node, to);
        assert!(v.epoch > epoch_before);
        // The destination continues from the source's counter: no step lost or repeated.
        let paused_at = m.counter_at_pause.expect("counter at pause");
        let index = (to.as_bytes()[1] - b'1') as usize;
        until!(format!("{to} steps past {paused_at}"), {
            Ok(counter(&cluster, index, "mover").is_some_and(|c| c > paused_at))
        });
        until!(
            format!("mover running on {to}"),
            running_on(&mut client, "mover", to).await
        );
        node = to.to_string();
    }
    // Every source copy is gone; the VM ran exactly once at every instant.
    for (i, name) in ["n1", "n2", "n3"].iter().enumerate() {
        let dir = cluster.nodes[i].data_dir.join("memvm/vms/mover");
        until!(
            format!("only one copy ({name})"),
            Ok(dir.exists() == (*name == node))
        );
    }
    ran_once(&cluster, "mover");
    assert_eq!(intervals(&cluster, "mover").len(), 4);
    cluster.stop_all();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_and_a_lost_destination_roll_back_to_the_source() -> anyhow::Result<()> {
    let _serial = serial().await;
    let (_dir, mut cluster) = start().await?;
    let mut client = cluster.client(WAIT)?;
    client.vm_create("stay", on("n1", false), false).await?;
    until!(
        "stay running on n1",
        running_on(&mut client, "stay", "n1").await
    );
    // Let the guest fill its working set with incompressible pages.
    tokio::time::sleep(Duration::from_secs(3)).await;

    // Cancel while transferring (1 MiB/s for 8 MiB of busy pages: several seconds).
    let id = create(&mut client, migrate("stay", Some("n2"), "precopy", 1 << 20)).await?;
    until!(
        "transferring",
        Ok(client.migration_get(id).await?.phase == "transferring")
    );
    client.migration_cancel(id).await?;
    let m = ended(&mut client, id).await?;
    assert_eq!(m.phase, "cancelled");
    assert!(running_on(&mut client, "stay", "n1").await?);
    let before = counter(&cluster, 0, "stay").unwrap_or(0);
    until!(
        "stay still steps on n1",
        Ok(counter(&cluster, 0, "stay").unwrap_or(0) > before)
    );
    until!(
        "no copy left on n2",
        Ok(!cluster.nodes[1].data_dir.join("memvm/vms/stay").exists())
    );

    // The destination host dies mid-transfer: the source resumes, the migration rolls back.
    let id = create(&mut client, migrate("stay", Some("n3"), "precopy", 1 << 20)).await?;
    until!(
        "transferring",
        Ok(client.migration_get(id).await?.phase == "transferring")
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.kill(2);
    let m = ended(&mut client, id).await?;
    assert!(
        matches!(m.phase.as_str(), "rolled_back" | "failed"),
        "{m:?}"
    );
    assert!(running_on(&mut client, "stay", "n1").await?);
    let before = counter(&cluster, 0, "stay").unwrap_or(0);
    until!(
        "stay still steps on n1",
        Ok(counter(&cluster, 0, "stay").unwrap_or(0) > before)
    );
    ran_once(&cluster, "stay");
    assert!(intervals(&cluster, "stay").iter().all(|r| r.0 == "n1"));
    cluster.stop_all();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_killed_source_leaves_the_vm_to_ha_and_it_runs_once() -> anyhow::Result<()> {
    let _serial = serial().await;
    let (_dir, mut cluster) = start().await?;
    let mut client = cluster.client(WAIT)?;
    client.vm_create("ha-mover", on("n3", true), false).await?;
    until!(
        "ha-mover running on n3",
        running_on(&mut client, "ha-mover", "n3").await
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let id = create(
        &mut client,
        migrate("ha-mover", Some("n2"), "precopy", 1 << 20),
    )
    .await?;
    until!(
        "transferring",
        Ok(client.migration_get(id).await?.phase == "transferring")
    );
    cluster.kill(2);
    let m = ended(&mut client, id).await?;
    assert_eq!(m.phase, "failed", "{m:?}");
    until!("ha-mover running elsewhere", {
        let v = vm(&mut client, "ha-mover").await?;
        Ok(v.state == "running" && v.node != "n3")
    });
    // The half-received copy on n2 never ran; HA started the VM afresh.
    ran_once(&cluster, "ha-mover");
    cluster.stop_all();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn drain_moves_every_running_vm_and_bad_requests_are_refused() -> anyhow::Result<()> {
    let _serial = serial().await;
    let (_dir, mut cluster) = start().await?;
    let mut client = cluster.client(WAIT)?;
    for i in 0..4 {
        client
            .vm_create(&format!("d{i}"), on("n1", false), false)
            .await?;
    }
    client.vm_create("off", on("n1", false), true).await?;
    until!("all four running on n1", {
        let mut all = true;
        for i in 0..4 {
            all &= running_on(&mut client, &format!("d{i}"), "n1").await?;
        }
        Ok(all)
    });

    // Bad requests: each refused with the reason and the code of its kind.
    use tonic::Code;
    let refusal = |r: anyhow::Result<u64>| {
        let e = r.err().unwrap_or_else(|| anyhow::anyhow!("accepted"));
        let code = e
            .downcast_ref::<paddock_api::client::ClientError>()
            .and_then(|c| c.code());
        (e.to_string(), code)
    };
    let cases = [
        (
            migrate("nope", None, "auto", 0),
            "VM nope does not exist",
            Code::NotFound,
        ),
        (
            migrate("d0", Some("n9"), "auto", 0),
            "node n9 does not exist",
            Code::NotFound,
        ),
        (
            migrate("d0", Some("n1"), "auto", 0),
            "already runs on n1",
            Code::InvalidArgument,
        ),
        (
            migrate("d0", None, "sideways", 0),
            "mode must be",
            Code::InvalidArgument,
        ),
        (
            migrate("d0", None, "auto", 1000),
            "at least 1MiB",
            Code::InvalidArgument,
        ),
        (
            migrate("off", None, "auto", 0),
            "not on any node",
            Code::FailedPrecondition,
        ),
    ];
    for (request, expected, code) in cases {
        let (why, got) = refusal(create(&mut client, request).await);
        assert!(why.contains(expected), "{expected:?} not in {why:?}");
        assert_eq!(got, Some(code), "{why}");
    }
    let err = client
        .migration_cancel(999)
        .await
        .expect_err("no such migration");
    assert!(err.to_string().contains("999"), "{err}");

    let answer = client.node_drain("n1", false).await?;
    assert_eq!(answer.created.len(), 4, "{answer:?}");
    for c in &answer.created {
        let m = ended(&mut client, c.id).await?;
        assert_eq!(m.phase, "completed", "{m:?}");
        assert_eq!(m.reason, "drain n1");
    }
    until!("n1 drained", {
        let nodes = client.node_list(false).await?;
        Ok(nodes.iter().any(|n| n.name == "n1" && n.state == "drained"))
    });
    for i in 0..4 {
        // The destination reports it running shortly after the switch committed.
        until!(format!("d{i} running off n1"), {
            let v = vm(&mut client, &format!("d{i}")).await?;
            Ok(v.state == "running" && v.node != "n1")
        });
        ran_once(&cluster, &format!("d{i}"));
    }
    // A completed migration cannot be cancelled.
    let err = client
        .migration_cancel(answer.created[0].id)
        .await
        .expect_err("too late");
    assert!(err.to_string().contains("before its switch"), "{err}");
    client.node_cordon("n1", false).await?;
    cluster.stop_all();
    Ok(())
}
