//! Mutual TLS: only certificates of the cluster CA get in, and roles limit what they may do.

use std::time::Duration;

use paddock_api::certs::{CertsDir, Role, CLIENT_HINT};
use paddock_api::client::Client;
use paddock_api::pb::{self, raft_client::RaftClient};
use paddock_tests::{cluster, get, put, serial, spec, WAIT};
use tonic::Code;

#[tokio::test(flavor = "multi_thread")]
async fn only_certificates_of_the_cluster_ca_and_role_get_in() -> anyhow::Result<()> {
    let _serial = serial().await;
    let (dir, mut cluster) = cluster(spec(3))?;
    cluster.start_all()?;
    cluster.wait_for_leader(WAIT).await?;
    let endpoints = cluster.endpoints();

    // A client whose certificate comes from another CA is refused at the handshake.
    let foreign = CertsDir::new(dir.path().join("foreign"));
    foreign.init_ca("other")?;
    foreign.issue_client("admin", Role::Admin)?;
    // It trusts our CA (so the server is accepted) but presents a foreign client certificate.
    std::fs::copy(cluster.certs.ca_cert(), foreign.dir.join("ca.crt.ours"))?;
    std::fs::rename(foreign.dir.join("ca.crt.ours"), foreign.ca_cert())?;
    let mut stranger = Client::new(
        &endpoints,
        foreign.client_tls("admin", CLIENT_HINT)?,
        Duration::from_secs(3),
    )?;
    assert!(
        put(&mut stranger, "k", "v").await.is_err(),
        "a foreign certificate must be refused"
    );

    // A viewer may read but not write.
    cluster.certs.issue_client("vera", Role::Viewer)?;
    let mut viewer = Client::new(
        &endpoints,
        cluster.certs.client_tls("vera", CLIENT_HINT)?,
        WAIT,
    )?;
    let refused = put(&mut viewer, "k", "v").await.expect_err("viewer write");
    assert_eq!(refused.code(), Some(Code::PermissionDenied), "{refused}");
    assert_eq!(get(&mut viewer, "k", false).await?, None);

    // A client certificate may not speak Raft.
    let mut admin = cluster.client(WAIT)?;
    let raft_refused = admin
        .call(|channel| async move {
            RaftClient::new(channel)
                .vote(pb::RaftMessage { data: vec![1] })
                .await
        })
        .await
        .expect_err("raft with a client certificate");
    assert_eq!(
        raft_refused.code(),
        Some(Code::PermissionDenied),
        "{raft_refused}"
    );
    cluster.stop_all();
    Ok(())
}
