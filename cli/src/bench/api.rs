//! `paddock bench api`: the HTTPS API and the dashboard with 10,000 VMs and 100 nodes —
//! list latency from a follower, the dashboard's first page, event delivery to 50 SSE
//! followers, and writes/s over HTTPS next to the same writes over gRPC, in one run.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use paddock_api::pb;
use paddock_model::{ClientRequest, Command, Resources};
use paddock_testkit::https::{tls_to, ApiConnection};
use serde_json::json;

use super::{create_vms, ms, percentile, start_cluster_with};
use crate::output::Failure;

/// Registers `count` nodes that never heartbeat (they turn `down`): rows for the dashboard's
/// node table, as a cluster with that many hosts has. Sent as node n1 (its certificate).
async fn register_silent_nodes(
    cluster: &paddock_testkit::local_cluster::LocalCluster,
    leader: usize,
    count: usize,
) -> Result<(), Failure> {
    let tls = cluster
        .certs
        .client_tls("n1", paddock_api::certs::NODE_HINT)?;
    let channel = paddock_raft::network::channel_to(&cluster.nodes[leader].address, &tls)
        .map_err(|e| Failure::new(crate::output::exit::ERROR, e.to_string()))?;
    let mut raft = pb::raft_client::RaftClient::new(channel);
    for i in 0..count {
        let request = paddock_api::forward::ForwardRequest::Write(Box::new(ClientRequest {
            id: None,
            command: Command::NodeRegister {
                name: format!("rack-{i:03}"),
                capacity: Resources {
                    cpus: 64,
                    memory_mib: 262_144,
                    disk_mib: 4_000_000,
                },
                labels: Default::default(),
                driver: "memvm".into(),
            },
            caller: None,
        }));
        let data = paddock_model::codec::encode(&request)
            .map_err(|e| Failure::new(crate::output::exit::ERROR, e.to_string()))?;
        raft.forward(pb::RaftMessage { data }).await.map_err(|e| {
            Failure::new(
                crate::output::exit::ERROR,
                format!("registering a node: {e}"),
            )
        })?;
    }
    Ok(())
}

/// `n` GETs of `path` in a row on one connection: each one's time and the last body's size.
async fn rounds(
    api: &mut ApiConnection,
    path: &str,
    n: usize,
) -> Result<(Vec<Duration>, usize), Failure> {
    let mut took = Vec::new();
    let mut bytes = 0;
    for _ in 0..n {
        let t = Instant::now();
        let (status, body) = api.raw("GET", path, None).await?;
        took.push(t.elapsed());
        if status != 200 {
            return Err(Failure::new(
                crate::output::exit::ERROR,
                format!("{path}: {status}"),
            ));
        }
        bytes = body.len();
    }
    Ok((took, bytes))
}

fn stats(mut took: Vec<Duration>) -> serde_json::Value {
    took.sort();
    json!({"n": took.len(), "p50_ms": ms(percentile(&took, 0.5)), "p99_ms": ms(percentile(&took, 0.99)), "max_ms": ms(percentile(&took, 1.0))})
}

pub async fn run(
    vms: usize,
    extra_nodes: usize,
    followers: usize,
    clients: usize,
    duration: Duration,
) -> Result<(), Failure> {
    let (_dir, mut cluster) = start_cluster_with(
        3,
        ["--cpus", "1000000", "--memory", "1000TiB"]
            .map(String::from)
            .to_vec(),
    )
    .await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(30)).await?;
    let follower = (leader + 1) % 3;
    let mut client = cluster.client(Duration::from_secs(30))?;
    while client.node_list(true).await?.len() < 3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    register_silent_nodes(&cluster, leader, extra_nodes).await?;
    let names: Vec<String> = (0..vms).map(|i| format!("vm-{i:06}")).collect();
    let failed = create_vms(&cluster, names, 4, 1000, true).await?;
    let token = client.token_create("bench", "admin", 0, "").await?.token;
    let tls = tls_to(&cluster.certs.ca_cert())?;
    let api_of = |i: usize| cluster.nodes[i].api.clone();
    println!("bench api: 3 paddockd + {extra_nodes} registered silent nodes, {} VMs, HTTPS to follower {}", vms - failed, cluster.nodes[follower].name);

    // 1. Lists from a follower: a page of 100, and all of them, over one kept-alive connection.
    let mut api = ApiConnection::connect(&api_of(follower), tls.clone(), &token).await?;
    let (page, page_bytes) = rounds(&mut api, "/api/v1/vms?limit=100", 500).await?;
    let (full, full_bytes) = rounds(&mut api, "/api/v1/vms?limit=10000", 30).await?;
    let (page_stale, _) = rounds(&mut api, "/api/v1/vms?limit=100&stale=true", 500).await?;
    // The same page over gRPC from the same follower, for reference.
    let mut grpc = cluster.client_of(
        vec![cluster.nodes[follower].address.clone()],
        Duration::from_secs(30),
    )?;
    let mut grpc_page = Vec::new();
    for _ in 0..500 {
        let t = Instant::now();
        grpc.call(|channel| async move {
            pb::vms_client::VmsClient::new(channel)
                .list(pb::VmListRequest {
                    limit: 100,
                    ..Default::default()
                })
                .await
        })
        .await?;
        grpc_page.push(t.elapsed());
    }
    println!(
        "{}",
        json!({"bench": "api-vm-list", "vms": vms - failed,
        "page_100": stats(page), "page_100_bytes": page_bytes,
        "page_100_stale": stats(page_stale), "page_100_grpc": stats(grpc_page),
        "all_10000": stats(full), "all_bytes": full_bytes})
    );

    // 2. The dashboard's first page (what a browser fetches first: the HTML).
    let (dash, dash_bytes) = rounds(&mut api, "/ui", 100).await?;
    println!(
        "{}",
        json!({"bench": "dashboard-first-page", "nodes": 3 + extra_nodes, "vms": vms - failed,
        "render": stats(dash), "bytes": dash_bytes})
    );

    // 3. Event delivery: `followers` SSE clients spread over the nodes; each created VM is one
    // event; latency from the create's acknowledgement (committed and applied on the leader)
    // to its arrival at each follower.
    // Per VM: when its create was sent, and when it was acknowledged.
    let mut sent: HashMap<String, (Instant, Instant)> = HashMap::new();
    let last_seq = client
        .events(pb::EventsRequest {
            after: u64::MAX,
            ..Default::default()
        })
        .await?
        .last_seq;
    let mut listeners = Vec::new();
    let events_per_run = 200;
    for i in 0..followers {
        let connection = ApiConnection::connect(&api_of(i % 3), tls.clone(), &token).await?;
        let mut stream = connection
            .events(
                &format!("/api/v1/events?kind=vm.created&since={last_seq}"),
                None,
            )
            .await?;
        listeners.push(tokio::spawn(async move {
            let mut arrived: Vec<(String, Instant)> = Vec::new();
            while arrived.len() < events_per_run {
                match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
                    Ok(Some((_, data))) => {
                        let subject = serde_json::from_str::<serde_json::Value>(&data)
                            .ok()
                            .and_then(|v| v["subject"].as_str().map(String::from))
                            .unwrap_or_default();
                        arrived.push((subject, Instant::now()));
                    }
                    _ => break,
                }
            }
            arrived
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let spec = pb::VmSpec {
        cpus: 1,
        memory_mib: 1,
        ..Default::default()
    };
    for i in 0..events_per_run {
        let name = format!("sse-{i:04}");
        let start = Instant::now();
        client.vm_create(&name, spec.clone(), true).await?;
        sent.insert(name, (start, Instant::now()));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (mut from_request, mut after_ack, mut before_ack) = (Vec::new(), Vec::new(), 0);
    for l in listeners {
        for (subject, at) in l.await? {
            if let Some((start, ack)) = sent.get(&subject) {
                from_request.push(at.saturating_duration_since(*start));
                if at < *ack {
                    before_ack += 1;
                }
                after_ack.push(at.saturating_duration_since(*ack));
            }
        }
    }
    println!(
        "{}",
        json!({"bench": "sse-delivery", "followers": followers, "events": events_per_run,
        "deliveries": from_request.len(), "arrived_before_the_writer_had_its_ack": before_ack,
        "from_request": stats(from_request), "after_ack": stats(after_ack)})
    );

    // 4. Writes/s at `clients` concurrent clients: HTTPS PUT /kv/entry vs gRPC Kv.Put, each
    // client on one node (spread over the three), same cluster, one after the other.
    let value = "x".repeat(128);
    let grpc_rate = {
        let deadline = Instant::now() + duration;
        let mut tasks = Vec::new();
        for c in 0..clients {
            let mut client = cluster.client_of(
                vec![cluster.nodes[c % 3].address.clone()],
                Duration::from_secs(30),
            )?;
            let value = value.clone();
            tasks.push(tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    if client
                        .kv_put(&format!("g/{c}/{done}"), &value)
                        .await
                        .is_ok()
                    {
                        done += 1;
                    }
                }
                done
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await?;
        }
        total as f64 / duration.as_secs_f64()
    };
    let https_rate = {
        let deadline = Instant::now() + duration;
        let mut tasks = Vec::new();
        for c in 0..clients {
            let mut api = ApiConnection::connect(&api_of(c % 3), tls.clone(), &token).await?;
            let value = value.clone();
            tasks.push(tokio::spawn(async move {
                let mut done = 0u64;
                while Instant::now() < deadline {
                    let body = json!({"key": format!("h/{c}/{done}"), "value": value});
                    if matches!(
                        api.json("PUT", "/api/v1/kv/entry", Some(&body)).await,
                        Ok((200, _))
                    ) {
                        done += 1;
                    }
                }
                done
            }));
        }
        let mut total = 0;
        for t in tasks {
            total += t.await?;
        }
        total as f64 / duration.as_secs_f64()
    };
    println!(
        "{}",
        json!({"bench": "api-vs-grpc-writes", "clients": clients, "seconds": duration.as_secs_f64(),
        "grpc_writes_per_s": grpc_rate.round(), "https_writes_per_s": https_rate.round(),
        "https_cost_percent": ((grpc_rate / https_rate.max(1.0) - 1.0) * 100.0 * 10.0).round() / 10.0})
    );
    cluster.stop_all();
    Ok(())
}
