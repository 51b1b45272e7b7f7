//! No acknowledged write is lost: kill -9 of whole clusters, a kill -9 loop per storage
//! engine, and catch-up of a lagging node by snapshot.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use paddock_tests::{
    cluster, fast_timings, get, get_local, list_local, put, serial, spec, wait_applied,
    LocalClusterSpec, WAIT,
};

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_every_node_loses_no_acknowledged_write() -> anyhow::Result<()> {
    let _serial = serial().await;
    let (_dir, mut cluster) = cluster(spec(3))?;
    cluster.start_all()?;
    cluster.wait_for_leader(WAIT).await?;
    let mut client = cluster.client(WAIT)?;
    for i in 0..200 {
        put(&mut client, &format!("k/{i}"), &i.to_string()).await?;
    }
    for i in 0..3 {
        cluster.kill(i);
    }
    cluster.start_all()?;
    cluster.wait_for_leader(WAIT).await?;
    for i in 0..200 {
        assert_eq!(
            get(&mut client, &format!("k/{i}"), false).await?,
            Some(i.to_string()),
            "k/{i}"
        );
    }
    cluster.stop_all();
    Ok(())
}

/// Kills a single-node cluster (every acknowledgement depends on this one store) while
/// writers are busy, restarts it, and checks that every acknowledged write survived.
async fn kill_loop(storage: &str) -> anyhow::Result<()> {
    let _serial = serial().await;
    let mut extra = fast_timings();
    extra.extend(["--storage".to_string(), storage.to_string()]);
    let (_dir, mut cluster) = cluster(LocalClusterSpec {
        nodes: 1,
        base_port: None,
        extra_args: extra,
        hosts: Vec::new(),
    })?;
    let acknowledged: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    for round in 0..5 {
        cluster.start(0)?;
        cluster.wait_for_leader(WAIT).await?;
        let mut writers = Vec::new();
        for w in 0..8 {
            let mut client = cluster.client(Duration::from_secs(2))?;
            let acknowledged = acknowledged.clone();
            writers.push(tokio::spawn(async move {
                for n in 0.. {
                    let key = format!("r{round}/w{w}/{n}");
                    if put(&mut client, &key, "x").await.is_err() {
                        break;
                    }
                    if let Ok(mut acked) = acknowledged.lock() {
                        acked.push((key, "x".into()));
                    }
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(300 + 150 * round)).await;
        cluster.kill(0);
        for w in writers {
            w.await?;
        }
        // The store must open again and hold everything acknowledged so far.
        cluster.start(0)?;
        cluster.wait_for_leader(WAIT).await?;
        let acked = acknowledged.lock().map(|a| a.clone()).unwrap_or_default();
        assert!(
            !acked.is_empty(),
            "round {round}: no write was acknowledged"
        );
        let stored = list_local(&cluster, 0, "").await?;
        for (key, value) in &acked {
            assert_eq!(
                stored.get(key),
                Some(value),
                "{storage}: lost acknowledged write {key}"
            );
        }
        eprintln!(
            "{storage} round {round}: {} acknowledged writes all present",
            acked.len()
        );
        cluster.kill(0);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn redb_store_survives_kill_9_during_writes() -> anyhow::Result<()> {
    kill_loop("redb").await
}

#[tokio::test(flavor = "multi_thread")]
async fn sled_store_survives_kill_9_during_writes() -> anyhow::Result<()> {
    kill_loop("sled").await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_missed_many_writes_catches_up_by_snapshot() -> anyhow::Result<()> {
    let _serial = serial().await;
    let mut extra = fast_timings();
    extra.extend(["--snapshot-every", "50", "--keep-logs", "10"].map(String::from));
    let (_dir, mut cluster) = cluster(LocalClusterSpec {
        nodes: 3,
        base_port: None,
        extra_args: extra,
        hosts: Vec::new(),
    })?;
    cluster.start_all()?;
    let leader = cluster.wait_for_leader(WAIT).await?;
    let lagging = (leader + 1) % 3;
    let stopped_at = cluster.status_of(lagging).await?.applied_index;
    cluster.kill(lagging);
    let mut client = cluster.client_of(
        cluster
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != lagging)
            .map(|(_, n)| n.address.clone())
            .collect(),
        WAIT,
    )?;
    for i in 0..300 {
        put(&mut client, &format!("s/{i}"), &i.to_string()).await?;
    }
    let leader = cluster.wait_for_leader(WAIT).await?;
    let leader_status = cluster.status_of(leader).await?;
    assert!(
        leader_status.purged_index > stopped_at,
        "the leader must have compacted away the entries the lagging node misses (purged {} <= {stopped_at})",
        leader_status.purged_index
    );
    cluster.start(lagging)?;
    wait_applied(&cluster, lagging, leader_status.applied_index).await?;
    assert_eq!(
        get_local(&cluster, lagging, "s/0").await?.as_deref(),
        Some("0")
    );
    assert_eq!(
        get_local(&cluster, lagging, "s/299").await?.as_deref(),
        Some("299")
    );
    let status = cluster.status_of(lagging).await?;
    assert!(
        status.snapshot_index > stopped_at,
        "the lagging node must hold a snapshot"
    );
    cluster.stop_all();
    Ok(())
}
