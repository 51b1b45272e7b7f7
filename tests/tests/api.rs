//! The HTTPS API on a real cluster: tokens and roles, problems with the right status, any
//! node answering, revocation effective on every node.

use std::time::{Duration, Instant};

use paddock_testkit::https::{tls_to, ApiConnection};
use paddock_tests::{cluster, serial, spec, WAIT};
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn tokens_roles_problems_and_revocation() -> anyhow::Result<()> {
    let _serial = serial().await;
    let (_dir, mut cluster) = cluster(spec(3))?;
    cluster.start_all()?;
    cluster.wait_for_leader(WAIT).await?;
    let mut client = cluster.client(WAIT)?;
    let admin = client.token_create("ops", "operator", 0, "").await?.token;
    let viewer = client.token_create("look", "viewer", 3600, "").await?.token;
    let tls = tls_to(&cluster.certs.ca_cert())?;
    let mut api = Vec::new();
    for node in &cluster.nodes {
        api.push(ApiConnection::connect(&node.api, tls.clone(), &admin).await?);
    }

    // Any node takes the write (followers forward it) and any node reads it.
    let vm = json!({"name": "web-1", "spec": {"cpus": 1, "memory_mib": 16}, "stopped": true});
    let (status, created) = api[1].json("POST", "/api/v1/vms", Some(&vm)).await?;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["summary"]["name"], "web-1");
    let (status, page) = api[2]
        .json("GET", "/api/v1/vms?limit=10&q=web", None)
        .await?;
    assert_eq!(status, 200);
    assert_eq!(page["vms"][0]["name"], "web-1");
    assert!(page["next"].is_null());

    // Refusals are problems with the status of their kind and a message saying what to do.
    let (status, problem) = api[0].json("POST", "/api/v1/vms", Some(&vm)).await?;
    assert_eq!(
        (status, problem["kind"].as_str()),
        (409, Some("already_exists")),
        "{problem}"
    );
    let (status, problem) = api[0].json("GET", "/api/v1/vms/nope", None).await?;
    assert_eq!(
        (status, problem["kind"].as_str()),
        (404, Some("not_found")),
        "{problem}"
    );
    let bad = json!({"name": "", "spec": {"cpus": 1, "memory_mib": 16}});
    let (status, problem) = api[0].json("POST", "/api/v1/vms", Some(&bad)).await?;
    assert_eq!(
        (status, problem["kind"].as_str()),
        (422, Some("invalid")),
        "{problem}"
    );
    let (status, problem) = api[0].json("GET", "/api/v1/vms?limit=0", None).await?;
    assert_eq!(status, 422, "{problem}");
    let (status, _) = api[0]
        .json(
            "POST",
            "/api/v1/vms/web-1/migrate",
            Some(&json!({"priority": "high"})),
        )
        .await?;
    assert_eq!(status, 422);
    // An operator may not make tokens.
    let (status, problem) = api[0]
        .json(
            "POST",
            "/api/v1/tokens",
            Some(&json!({"name": "x", "role": "admin"})),
        )
        .await?;
    assert_eq!(
        (status, problem["kind"].as_str()),
        (403, Some("permission_denied")),
        "{problem}"
    );

    // A viewer reads, and is refused every change.
    let mut look = ApiConnection::connect(&cluster.nodes[0].api, tls.clone(), &viewer).await?;
    assert_eq!(look.json("GET", "/api/v1/nodes", None).await?.0, 200);
    let (status, problem) = look
        .json("POST", "/api/v1/vms/web-1/start", Some(&json!({})))
        .await?;
    assert_eq!(status, 403, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("token:look may not vm.start web-1: its roles (viewer from token look)"),
        "{problem}"
    );

    // No credentials, or a wrong secret: 401, and the secret is never echoed.
    let mut nobody = ApiConnection::connect(
        &cluster.nodes[0].api,
        tls.clone(),
        "pdk.look.0000000000000000000000000000000000000000000000000000000000000000",
    )
    .await?;
    let (status, problem) = nobody.json("GET", "/api/v1/vms", None).await?;
    assert_eq!(
        (status, problem["kind"].as_str()),
        (401, Some("unauthenticated")),
        "{problem}"
    );

    // Tokens are listed without secrets or hashes; a revoked token is refused on every node.
    let tokens = client.token_list().await?;
    assert_eq!(tokens.len(), 2);
    client.token_revoke("look").await?;
    let started = Instant::now();
    for node in &cluster.nodes {
        loop {
            let mut look = ApiConnection::connect(&node.api, tls.clone(), &viewer).await?;
            let (status, _) = look.json("GET", "/api/v1/vms", None).await?;
            if status == 401 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{} still accepts a revoked token",
                node.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    eprintln!(
        "revocation effective on every node after {:?}",
        started.elapsed()
    );

    // The document served is the committed one.
    let (status, spec) = api[0].raw("GET", "/api/v1/openapi.json", None).await?;
    assert_eq!(status, 200);
    let committed = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json"))?;
    assert!(
        spec.as_ref() == committed.as_slice(),
        "/api/v1/openapi.json differs from docs/openapi.json"
    );
    cluster.stop_all();
    Ok(())
}
