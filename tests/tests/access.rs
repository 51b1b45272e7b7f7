//! Access control on a real cluster: custom roles, scoped bindings and tokens, decisions
//! explained, lists filtered to what a caller may see, and the audit log of every request —
//! the same hash-chain head on every node.

use paddock_api::certs::{Role, CLIENT_HINT};
use paddock_api::client::Client;
use paddock_api::pb;
use paddock_testkit::https::{tls_to, ApiConnection};
use paddock_tests::{cluster, serial, spec, WAIT};
use tonic::Code;

fn vm(team: &str) -> pb::VmSpec {
    pb::VmSpec {
        cpus: 1,
        memory_mib: 16,
        labels: [("team".to_string(), team.to_string())]
            .into_iter()
            .collect(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn scoped_roles_explained_decisions_and_an_audit_chain_every_node_agrees_on(
) -> anyhow::Result<()> {
    let _serial = serial().await;
    let (_dir, mut cluster) = cluster(spec(3))?;
    cluster.start_all()?;
    cluster.wait_for_leader(WAIT).await?;
    let endpoints = cluster.endpoints();
    let mut admin = cluster.client(WAIT)?;

    // A team role, bound to alice for the team's VMs only. Her certificate says viewer.
    admin
        .role_create(
            "web-operator",
            ["vm.create", "vm.start", "vm.stop", "vm.read", "vm.migrate"]
                .map(String::from)
                .to_vec(),
        )
        .await?;
    admin
        .user_binding(
            true,
            pb::BindRequest {
                user: "alice".into(),
                role: "web-operator".into(),
                scope: "team=web".into(),
            },
        )
        .await?;
    cluster.certs.issue_client("alice", Role::Viewer)?;
    let mut alice = Client::new(
        &endpoints,
        cluster.certs.client_tls("alice", CLIENT_HINT)?,
        WAIT,
    )?;

    alice.vm_create("web-1", vm("web"), true).await?;
    let refused = alice
        .vm_create("db-1", vm("db"), true)
        .await
        .expect_err("outside her scope");
    assert_eq!(refused.code(), Some(Code::PermissionDenied), "{refused}");
    assert!(
        refused.to_string().contains(
            "alice may not vm.create db-1: role web-operator (binding) is scoped to team=web, db-1 has team=db"
        ),
        "{refused}"
    );
    admin.vm_create("db-1", vm("db"), true).await?;
    let start = alice.vm_set_desired("db-1", true).await.expect_err("db-1");
    assert_eq!(start.code(), Some(Code::PermissionDenied), "{start}");
    alice.vm_set_desired("web-1", true).await?;

    // `auth can` explains, for oneself and (with user.read) for another user.
    let can = alice
        .can(pb::CanRequest {
            action: "vm.migrate".into(),
            vm: "db-1".into(),
            user: String::new(),
        })
        .await?;
    assert!(!can.allowed);
    assert_eq!(
        can.explanation,
        "alice may not vm.migrate db-1: role web-operator (binding) is scoped to team=web, db-1 has team=db"
    );
    let for_alice = admin
        .can(pb::CanRequest {
            action: "vm.migrate".into(),
            vm: "web-1".into(),
            user: "alice".into(),
        })
        .await?;
    assert!(for_alice.allowed, "{}", for_alice.explanation);
    let nosy = alice
        .can(pb::CanRequest {
            action: "vm.read".into(),
            vm: String::new(),
            user: "bob".into(),
        })
        .await
        .expect_err("alice may not read others' bindings");
    assert_eq!(nosy.code(), Some(Code::PermissionDenied), "{nosy}");
    let me = alice.whoami().await?;
    assert_eq!(me.name, "alice");
    assert_eq!(me.grants.len(), 2, "{:?}", me.grants);
    assert!(me.allowed.contains(&"vm.create".to_string()));

    // A token of the scoped role sees only the team's VMs in lists, on any node, and a VM
    // outside its scope is not found rather than shown.
    let team = admin
        .token_create("web-ci", "web-operator", 0, "team=web")
        .await?
        .token;
    let tls = tls_to(&cluster.certs.ca_cert())?;
    for node in &cluster.nodes {
        let mut api = ApiConnection::connect(&node.api, tls.clone(), &team).await?;
        let (status, page) = api.json("GET", "/api/v1/vms", None).await?;
        assert_eq!(status, 200, "{page}");
        let names: Vec<&str> = page["vms"]
            .as_array()
            .map(|v| v.iter().filter_map(|vm| vm["name"].as_str()).collect())
            .unwrap_or_default();
        assert_eq!(names, ["web-1"], "{page}");
        let (status, _) = api.json("GET", "/api/v1/vms/db-1", None).await?;
        assert_eq!(status, 404);
        let (status, problem) = api.json("POST", "/api/v1/vms/db-1/stop", None).await?;
        assert_eq!(status, 403, "{problem}");
        let (status, _) = api.json("GET", "/api/v1/tokens", None).await?;
        assert_eq!(status, 403);
    }
    // A role in use is not deleted.
    let busy = admin.role_delete("web-operator").await.expect_err("in use");
    assert_eq!(busy.code(), Some(Code::FailedPrecondition), "{busy}");

    // The audit log has every request, refusals included, with who and from where.
    let page = admin
        .audit_list(pb::AuditListRequest {
            who: "alice".into(),
            limit: 100,
            ..Default::default()
        })
        .await?;
    let seen: Vec<(&str, &str, bool)> = page
        .records
        .iter()
        .map(|r| (r.action.as_str(), r.target.as_str(), r.outcome == "ok"))
        .collect();
    for expected in [
        ("vm.create", "web-1", true),
        ("vm.create", "db-1", false),
        ("vm.start", "db-1", false),
        ("vm.start", "web-1", true),
        ("user.read", "", false),
    ] {
        assert!(seen.contains(&expected), "{expected:?} not in {seen:?}");
    }
    assert!(page
        .records
        .iter()
        .all(|r| r.from.starts_with("127.0.0.1:")));
    let refusals = admin
        .audit_list(pb::AuditListRequest {
            refused: true,
            who: "token:web-ci".into(),
            limit: 100,
            ..Default::default()
        })
        .await?;
    assert_eq!(refusals.records.len(), 3 * 2, "{:?}", refusals.records);

    // Every node recomputes the same chain.
    let last = admin
        .audit_list(pb::AuditListRequest {
            limit: 1,
            ..Default::default()
        })
        .await?
        .last_seq;
    let mut heads = Vec::new();
    for endpoint in &endpoints {
        let mut one = cluster.client_of(vec![endpoint.clone()], WAIT)?;
        // Wait until this replica has applied the last record, then verify up to it.
        let deadline = std::time::Instant::now() + WAIT;
        let answer = loop {
            let answer = one.audit_verify(last).await?;
            if answer.last_seq >= last || std::time::Instant::now() > deadline {
                break answer;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        assert_eq!(answer.broken_at, 0, "{answer:?}");
        assert_eq!(answer.last_seq, last, "{answer:?}");
        heads.push(answer.head);
    }
    assert!(heads.windows(2).all(|w| w[0] == w[1]), "{heads:?}");
    Ok(())
}
