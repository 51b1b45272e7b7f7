//! Any node serves any request; a retried write is applied once; reads are linearizable by
//! default and local with --stale.

use paddock_api::pb::kv_client::KvClient;
use paddock_api::pb::{self};
use paddock_tests::{cluster, get, put, serial, spec, WAIT};

#[tokio::test(flavor = "multi_thread")]
async fn writes_and_reads_through_a_follower_reach_the_leader() -> anyhow::Result<()> {
    let _serial = serial().await;
    let (_dir, mut cluster) = cluster(spec(3))?;
    cluster.start_all()?;
    let leader = cluster.wait_for_leader(WAIT).await?;
    let follower = (leader + 1) % 3;
    let mut via_follower =
        cluster.client_of(vec![cluster.nodes[follower].address.clone()], WAIT)?;
    put(&mut via_follower, "through-follower", "ok").await?;
    // A linearizable read on the other follower sees it at once.
    let other = (leader + 2) % 3;
    let mut via_other = cluster.client_of(vec![cluster.nodes[other].address.clone()], WAIT)?;
    assert_eq!(
        get(&mut via_other, "through-follower", false)
            .await?
            .as_deref(),
        Some("ok")
    );
    let status = cluster.status_of(follower).await?;
    assert_eq!(status.leader, cluster.nodes[leader].name);
    cluster.stop_all();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retried_request_is_applied_once() -> anyhow::Result<()> {
    let _serial = serial().await;
    let (_dir, mut cluster) = cluster(spec(3))?;
    cluster.start_all()?;
    cluster.wait_for_leader(WAIT).await?;
    let mut client = cluster.client(WAIT)?;
    let id = client.next_request_id();
    let cas = |request_id: pb::RequestId| pb::CasRequest {
        key: "once".into(),
        expect_absent: true,
        expect: String::new(),
        value: "first".into(),
        request_id: Some(request_id),
    };
    let send = |request: pb::CasRequest| {
        let mut client = cluster.client(WAIT).expect("client");
        async move {
            client
                .call(|channel| {
                    let request = request.clone();
                    async move { KvClient::new(channel).cas(request).await }
                })
                .await
        }
    };
    let first = send(cas(id.into())).await?;
    assert!(first.swapped);
    // Someone else changes the key; then the first request is "retried" (same id, possibly via
    // another node): it must be answered from the record, not applied again.
    let mut someone_else = cluster.client(WAIT)?;
    put(&mut someone_else, "once", "second").await?;
    let retry = send(cas(id.into())).await?;
    assert!(retry.swapped, "the retry must get the first answer");
    assert_eq!(
        get(&mut client, "once", false).await?.as_deref(),
        Some("second")
    );
    // A new request with the same content is a new write and fails the CAS.
    let fresh = send(cas(someone_else.next_request_id().into())).await?;
    assert!(!fresh.swapped);
    assert_eq!(fresh.current, "second");
    cluster.stop_all();
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn stale_reads_serve_the_local_replica_without_a_leader() -> anyhow::Result<()> {
    let _serial = serial().await;
    let (_dir, mut cluster) = cluster(spec(3))?;
    cluster.start_all()?;
    let leader = cluster.wait_for_leader(WAIT).await?;
    let mut client = cluster.client(WAIT)?;
    put(&mut client, "k", "v").await?;
    let survivor = (leader + 1) % 3;
    paddock_tests::wait_applied(
        &cluster,
        survivor,
        cluster.status_of(leader).await?.applied_index,
    )
    .await?;
    for i in 0..3 {
        if i != survivor {
            cluster.kill(i);
        }
    }
    // No majority: a linearizable read must fail, a stale read answers from the replica.
    let mut alone = cluster.client_of(
        vec![cluster.nodes[survivor].address.clone()],
        std::time::Duration::from_secs(3),
    )?;
    assert!(get(&mut alone, "k", false).await.is_err());
    assert_eq!(get(&mut alone, "k", true).await?.as_deref(), Some("v"));
    cluster.stop_all();
    Ok(())
}
