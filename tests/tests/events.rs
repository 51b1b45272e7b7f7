//! The event stream over HTTPS (Server-Sent Events): a follower whose node is killed resumes
//! on another node with Last-Event-ID and misses nothing that was committed.

use std::time::Duration;

use paddock_testkit::https::{tls_to, ApiConnection};
use paddock_tests::{cluster, serial, spec, WAIT};

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_resumes_on_another_node_and_misses_nothing() -> anyhow::Result<()> {
    let _serial = serial().await;
    let (_dir, mut cluster) = cluster(spec(3))?;
    cluster.start_all()?;
    let leader = cluster.wait_for_leader(WAIT).await?;
    let mut client = cluster.client(WAIT)?;
    let token = client
        .token_create("follower", "viewer", 0, "")
        .await?
        .token;
    let tls = tls_to(&cluster.certs.ca_cert())?;
    // Follow a node that is not the leader (killing it keeps the cluster writable at once).
    let followed = (leader + 1) % 3;
    let other = (leader + 2) % 3;

    // A writer makes events all along: each created VM is at least one event.
    let mut writer = cluster.client(WAIT)?;
    let writes = tokio::spawn(async move {
        for i in 0..40 {
            let spec = paddock_api::pb::VmSpec {
                cpus: 1,
                memory_mib: 16,
                ..Default::default()
            };
            writer.vm_create(&format!("e{i:02}"), spec, true).await?;
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        anyhow::Ok(())
    });

    let mut seen: Vec<u64> = Vec::new();
    let connection =
        ApiConnection::connect(&cluster.nodes[followed].api, tls.clone(), &token).await?;
    let mut stream = connection.events("/api/v1/events?since=0", None).await?;
    // Read a while, then kill the node mid-stream.
    while seen.len() < 15 {
        let (id, _) = tokio::time::timeout(WAIT, stream.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("the stream ended early"))?;
        seen.extend(id);
    }
    cluster.kill(followed);
    // The stream ends (or stalls) with the node; whatever was already buffered is kept.
    while let Ok(Some((id, _))) = tokio::time::timeout(Duration::from_secs(2), stream.next()).await
    {
        seen.extend(id);
    }
    let resumed_after = *seen.last().expect("events seen");
    // An EventSource reconnects with the last id it saw: here, to another node.
    let connection = ApiConnection::connect(&cluster.nodes[other].api, tls.clone(), &token).await?;
    let mut stream = connection
        .events("/api/v1/events", Some(resumed_after))
        .await?;
    writes.await??;
    let last = {
        let page = client
            .events(paddock_api::pb::EventsRequest {
                after: u64::MAX,
                ..Default::default()
            })
            .await?;
        page.last_seq
    };
    while seen.last().copied() < Some(last) {
        let (id, _) = tokio::time::timeout(WAIT, stream.next())
            .await?
            .ok_or_else(|| anyhow::anyhow!("the resumed stream ended"))?;
        seen.extend(id);
    }
    let expected: Vec<u64> = (1..=last).collect();
    assert_eq!(
        seen, expected,
        "every committed event exactly once, in order, across the failover (resumed after {resumed_after})"
    );
    eprintln!(
        "{} events followed; node {} killed after event {resumed_after}",
        seen.len(),
        cluster.nodes[followed].name
    );
    cluster.stop_all();
    Ok(())
}
