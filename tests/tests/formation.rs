//! Clusters form by themselves from the same --peers list, in any start order.

use std::time::Duration;

use paddock_tests::{cluster, get, put, serial, spec, wait_applied, WAIT};

#[tokio::test(flavor = "multi_thread")]
async fn nodes_started_in_any_order_form_one_cluster() -> anyhow::Result<()> {
    let _serial = serial().await;
    for order in [[0, 1, 2], [2, 1, 0], [1, 2, 0]] {
        let (_dir, mut cluster) = cluster(spec(3))?;
        for i in order {
            cluster.start(i)?;
            tokio::time::sleep(Duration::from_millis(150)).await;
        }
        let leader = cluster.wait_for_leader(WAIT).await?;
        let status = cluster.status_of(leader).await?;
        assert_eq!(status.members.len(), 3, "order {order:?}");
        assert!(status.members.iter().all(|m| m.role == "voter"));
        let mut client = cluster.client(WAIT)?;
        put(&mut client, "formed", "yes").await?;
        assert_eq!(
            get(&mut client, "formed", false).await?.as_deref(),
            Some("yes")
        );
        cluster.stop_all();
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_started_much_later_joins_and_catches_up() -> anyhow::Result<()> {
    let _serial = serial().await;
    let (_dir, mut cluster) = cluster(spec(3))?;
    cluster.start(0)?;
    cluster.start(1)?;
    let leader = cluster.wait_for_leader(WAIT).await?;
    let mut client = cluster.client_of(
        vec![
            cluster.nodes[0].address.clone(),
            cluster.nodes[1].address.clone(),
        ],
        WAIT,
    )?;
    for i in 0..50 {
        put(&mut client, &format!("early/{i}"), "v").await?;
    }
    // The third node arrives well after the others have formed and written.
    tokio::time::sleep(Duration::from_secs(3)).await;
    cluster.start(2)?;
    let target = cluster.status_of(leader).await?.applied_index;
    wait_applied(&cluster, 2, target).await?;
    assert_eq!(
        paddock_tests::get_local(&cluster, 2, "early/49")
            .await?
            .as_deref(),
        Some("v")
    );
    let status = cluster.status_of(2).await?;
    assert_eq!(status.members.len(), 3);
    assert!(!status.leader.is_empty());
    cluster.stop_all();
    Ok(())
}
