//! Linearizable reads across restarts. Regression test for a stale read the chaos harness
//! found (seed 5 of the first soak): after every node was killed and restarted, the old leader
//! came back as leader at once (openraft restores a committed vote), knew a commit index older
//! than what clients had been told, and answered a read after applying only that far.

use std::time::{Duration, Instant};

use paddock_tests::{cluster, get, put, serial, spec, WAIT};

#[tokio::test(flavor = "multi_thread")]
async fn a_read_right_after_restarting_every_node_sees_the_last_acknowledged_write(
) -> anyhow::Result<()> {
    let _serial = serial().await;
    let (_dir, mut cluster) = cluster(spec(3))?;
    cluster.start_all()?;
    cluster.wait_for_leader(WAIT).await?;
    let mut client = cluster.client(WAIT)?;
    let mut value = 0u64;
    for round in 0..8 {
        // Write as fast as one client can, then pull the plug on every node at once.
        let mut writer = cluster.client(Duration::from_secs(2))?;
        let started = Instant::now();
        while started.elapsed() < Duration::from_millis(300 + 40 * round) {
            value += 1;
            put(&mut writer, "register", &value.to_string()).await?;
        }
        let acknowledged = value;
        for i in 0..3 {
            cluster.kill(i);
        }
        cluster.start_all()?;
        // The first read that succeeds must already see the last acknowledged write.
        let seen: u64 = get(&mut client, "register", false)
            .await?
            .unwrap_or_default()
            .parse()?;
        assert_eq!(
            seen, acknowledged,
            "round {round}: read {seen} after {acknowledged} was acknowledged"
        );
        cluster.wait_for_leader(WAIT).await?;
    }
    cluster.stop_all();
    Ok(())
}
