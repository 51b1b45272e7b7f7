//! Joining through any member; learner promotion up to five voters; removal.

use std::time::{Duration, Instant};

use paddock_tests::{cluster, fast_timings, get_local, put, serial, spec, WAIT};

#[tokio::test(flavor = "multi_thread")]
async fn joined_nodes_become_voters_up_to_five_then_stay_learners() -> anyhow::Result<()> {
    let _serial = serial().await;
    let (_dir, mut cluster) = cluster(spec(3))?;
    cluster.start_all()?;
    let leader = cluster.wait_for_leader(WAIT).await?;
    let mut client = cluster.client(WAIT)?;
    put(&mut client, "before-join", "1").await?;
    // Join through a follower, then through another node: any member will do.
    let follower = (leader + 1) % 3;
    for (name, via) in [("n4", follower), ("n5", leader), ("n6", (leader + 2) % 3)] {
        let i = cluster.add_joining_node(name, via, fast_timings())?;
        cluster.start(i)?;
        let deadline = Instant::now() + WAIT;
        loop {
            let status = cluster.status_of(leader).await?;
            if status.members.iter().any(|m| m.name == name) {
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "{name} did not join");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Promotion happens once caught up; give the controller time, then check the final roles.
    let deadline = Instant::now() + WAIT;
    let status = loop {
        let leader = cluster.wait_for_leader(WAIT).await?;
        let status = cluster.status_of(leader).await?;
        let voters = status.members.iter().filter(|m| m.role == "voter").count();
        if voters == 5 {
            break status;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "expected 5 voters, have {voters}: {:?}",
            status.members
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let learners: Vec<_> = status
        .members
        .iter()
        .filter(|m| m.role == "learner")
        .map(|m| m.name.clone())
        .collect();
    assert_eq!(
        learners,
        vec!["n6".to_string()],
        "the sixth node must stay a learner"
    );
    assert_eq!(
        get_local(&cluster, 5, "before-join").await?.as_deref(),
        Some("1")
    );

    // Removing a voter makes room: the learner is promoted.
    let mut admin = cluster.client(WAIT)?;
    admin.remove_member("n4").await?;
    let n4 = cluster
        .nodes
        .iter()
        .position(|n| n.name == "n4")
        .unwrap_or(3);
    cluster.terminate(n4, Duration::from_secs(5));
    let deadline = Instant::now() + WAIT;
    loop {
        let leader = cluster.wait_for_leader(WAIT).await?;
        let status = cluster.status_of(leader).await?;
        let n6_voter = status
            .members
            .iter()
            .any(|m| m.name == "n6" && m.role == "voter");
        let n4_gone = status.members.iter().all(|m| m.name != "n4");
        if n6_voter && n4_gone {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "n6 not promoted after removing n4: {:?}",
            status.members
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    cluster.stop_all();
    Ok(())
}
