//! Leader loss: kill -9 and graceful SIGTERM.

use std::time::{Duration, Instant};

use paddock_tests::{cluster, get, put, serial, spec, WAIT};

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_leader_elects_a_new_one_and_writes_continue() -> anyhow::Result<()> {
    let _serial = serial().await;
    let (_dir, mut cluster) = cluster(spec(3))?;
    cluster.start_all()?;
    let mut client = cluster.client(WAIT)?;
    for round in 0..2 {
        let leader = cluster.wait_for_leader(WAIT).await?;
        put(&mut client, &format!("before/{round}"), "1").await?;
        let old_term = cluster.status_of(leader).await?.term;
        cluster.kill(leader);
        // The client has every endpoint; the dead one is skipped, the write lands on the
        // new leader.
        put(&mut client, &format!("after/{round}"), "2").await?;
        let new_leader = cluster.wait_for_leader(WAIT).await?;
        assert_ne!(new_leader, leader);
        assert!(cluster.status_of(new_leader).await?.term > old_term);
        assert_eq!(
            get(&mut client, &format!("before/{round}"), false)
                .await?
                .as_deref(),
            Some("1")
        );
        cluster.start(leader)?;
    }
    cluster.stop_all();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_on_the_leader_hands_over_leadership_and_exits() -> anyhow::Result<()> {
    let _serial = serial().await;
    let (_dir, mut cluster) = cluster(spec(3))?;
    cluster.start_all()?;
    let leader = cluster.wait_for_leader(WAIT).await?;
    let mut client = cluster.client(WAIT)?;
    put(&mut client, "k", "v").await?;
    let started = Instant::now();
    let exited_by_itself = cluster.terminate(leader, Duration::from_secs(10));
    assert!(exited_by_itself, "paddockd must exit by itself on SIGTERM");
    let new_leader = cluster.wait_for_leader(WAIT).await?;
    assert_ne!(new_leader, leader);
    eprintln!("leader stopped and replaced in {:?}", started.elapsed());
    let log = std::fs::read_to_string(&cluster.nodes[leader].log_path)?;
    assert!(
        log.contains("leadership transfer"),
        "the leader must try to hand over:\n{log}"
    );
    put(&mut client, "k2", "v2").await?;
    cluster.stop_all();
    Ok(())
}
