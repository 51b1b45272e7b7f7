//! Wires one node together and runs it until shutdown.
//!
//! Start: certificates → identity checks → stores → Raft → gRPC + HTTP servers → bootstrap
//! (`--peers` initialize or `--join`) → leader controllers (promotion, placement) and the
//! agent with its hypervisor driver.
//! Stop (SIGTERM): a leader first hands leadership to an up-to-date voter, then Raft stops,
//! then the servers.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context;
use openraft::{Config, SnapshotPolicy};
use paddock_api::certs::{CertsDir, NODE_HINT};
use paddock_api::pb;
use paddock_model::node_id_for_name;
use paddock_raft::{open_store, Network, Raft, StateMachine};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use crate::agent::Agent;
use crate::config::{Bootstrap, DriverKind, NodeConfig};
use crate::controllers;
use crate::drivers::memvm::{GuestLoad, MemVm};
use crate::drivers::{host_capacity, Driver};
use crate::http::{self, HttpState};
use crate::identity::{self, Identity};
use crate::liveness::Heard;
use crate::membership;
use crate::metrics::NodeMetrics;
use crate::ops::Ops;
use crate::progress_board::ProgressBoard;
use crate::proposer::Proposer;
use crate::service::{
    ClusterService, EventsService, ImagesService, KvService, MigrationsService, NodesService,
    RaftService, SettingsService, TokensService, VmsService,
};

/// Largest gRPC message accepted: Raft batches and snapshot chunks.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Runs the node until `stop` resolves, then shuts down gracefully.
pub async fn run(
    config: NodeConfig,
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    let node_id = node_id_for_name(&config.name);
    let certs = CertsDir::new(&config.certs_dir);
    let server_tls = certs.server_tls(&config.name)?;
    let client_tls = certs.client_tls(&config.name, NODE_HINT)?;

    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))?;
    let cluster_id = Arc::new(OnceLock::new());
    let stored = identity::load(&config.data_dir)?;
    if let Some(stored) = &stored {
        identity::check_name(&config.data_dir, stored, &config.name)?;
        if let Bootstrap::Peers(peers) = &config.bootstrap {
            let given = identity::cluster_id_for_peers(peers);
            identity::check_cluster(&config.data_dir, stored, &given, "--peers")?;
        }
        if let Bootstrap::Join(member) = &config.bootstrap {
            check_join_target(member, &client_tls, &config.data_dir, stored).await?;
        }
        let _ = cluster_id.set(stored.cluster_id.clone());
    } else if config.bootstrap == Bootstrap::Existing {
        anyhow::bail!(
            "data dir {} holds no cluster yet: start a new node with --peers (to form a cluster) or --join HOST:PORT (to join one)",
            config.data_dir.display()
        );
    }
    if let (None, Bootstrap::Peers(peers)) = (&stored, &config.bootstrap) {
        remember_cluster(&config, &cluster_id, identity::cluster_id_for_peers(peers))?;
    }

    // What this node offers, checked before anything starts.
    let capacity = host_capacity(
        config.host.cpus,
        config.host.memory_mib,
        config.host.reserve_memory_mib,
        config.host.disk_mib,
        &config.data_dir,
    )
    .map_err(anyhow::Error::msg)?;
    let listener = TcpListener::bind(config.listen).await.with_context(|| {
        format!(
            "cannot listen on {}: is another paddockd using it? pick another --listen",
            config.listen
        )
    })?;
    let http_listener =
        match config.http {
            Some(address) => Some(TcpListener::bind(address).await.with_context(|| {
                format!("cannot listen on --http {address}; pick another address")
            })?),
            None => None,
        };
    let api_tls = match config.api {
        Some(_) => Some(certs.api_server_config(&config.name)?),
        None => None,
    };
    let api_listener =
        match config.api {
            Some(address) => Some(TcpListener::bind(address).await.with_context(|| {
                format!("cannot listen on --api {address}; pick another address")
            })?),
            None => None,
        };

    let driver = open_driver(&config)?;
    let log_store =
        open_store(config.storage, &config.data_dir.join("raft")).with_context(|| {
            format!(
                "cannot open the {} store in {}",
                config.storage.as_str(),
                config.data_dir.display()
            )
        })?;
    let metrics = Arc::new(NodeMetrics::new());
    let appends = metrics.append_seconds.clone();
    log_store.observe_appends(Arc::new(move |took| appends.observe(took.as_secs_f64())));
    let state_machine = StateMachine::open(&config.data_dir.join("snapshots"))?;
    let shared = state_machine.shared();
    let routes = paddock_raft::network::Routes::new(config.routes.clone());
    let network = Network::new(client_tls.clone(), routes.clone());
    let contact = network.contact();
    let raft_config = Config {
        cluster_name: "paddock".into(),
        heartbeat_interval: config.heartbeat.as_millis() as u64,
        election_timeout_min: config.election_min.as_millis() as u64,
        election_timeout_max: config.election_max.as_millis() as u64,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every),
        max_in_snapshot_log_to_keep: config.keep_logs,
        install_snapshot_timeout: 2_000,
        ..Default::default()
    }
    .validate()
    .context("invalid Raft settings")?;
    let raft = Raft::new(
        node_id,
        Arc::new(raft_config),
        network,
        log_store,
        state_machine,
    )
    .await
    .context("cannot start Raft")?;

    let proposer = Proposer::new(
        raft.clone(),
        node_id,
        shared.clone(),
        client_tls.clone(),
        routes,
        metrics.clone(),
    );
    let (shutdown_tx, shutdown) = watch::channel(false);

    let heard = Arc::new(Heard::default());
    metrics.attach(
        shared.clone(),
        heard.clone(),
        config.data_dir.join("snapshots"),
    );
    tokio::spawn(crate::metrics::follow(
        metrics.clone(),
        raft.clone(),
        shared.clone(),
    ));
    let quorum_fresh_ms = config.election_min.as_millis() as u64;
    let raft_service = pb::raft_server::RaftServer::new(RaftService {
        raft: raft.clone(),
        proposer: proposer.clone(),
        shared: shared.clone(),
        heard: heard.clone(),
        quorum_fresh_ms,
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    // Every client call goes through the operations layer (authorization, checks, proposing).
    let ops = Ops::new(proposer.clone(), shared.clone());
    if config.access != crate::ops::Enforcement::Full {
        tracing::warn!(access = ?config.access, "--bench-access: authorization decisions are off; for benchmarks only");
    }
    let ops = Arc::new(ops.with_enforcement(config.access));
    let cluster = Arc::new(ClusterService {
        raft: raft.clone(),
        ops: ops.clone(),
        shared: shared.clone(),
        contact,
        node_name: config.name.clone(),
        cluster_id: cluster_id.clone(),
        storage: config.storage.as_str(),
    });
    let cluster_service = pb::cluster_server::ClusterServer::from_arc(cluster.clone());
    let kv = Arc::new(KvService { ops: ops.clone() });
    let kv_service = pb::kv_server::KvServer::from_arc(kv.clone())
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let nodes = Arc::new(NodesService {
        ops: ops.clone(),
        shared: shared.clone(),
        raft: raft.clone(),
        heard: heard.clone(),
    });
    let nodes_service = pb::nodes_server::NodesServer::from_arc(nodes.clone())
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let vms = Arc::new(VmsService {
        ops: ops.clone(),
        node: config.name.clone(),
        driver: driver.clone(),
    });
    let vms_service = pb::vms_server::VmsServer::from_arc(vms.clone())
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let settings = Arc::new(SettingsService { ops: ops.clone() });
    let settings_service = pb::settings_server::SettingsServer::from_arc(settings.clone());
    let events = Arc::new(EventsService {
        ops: ops.clone(),
        raft: raft.clone(),
    });
    let events_service = pb::events_server::EventsServer::from_arc(events.clone());
    let tokens = Arc::new(TokensService { ops: ops.clone() });
    let tokens_service = pb::tokens_server::TokensServer::from_arc(tokens.clone());
    let access = Arc::new(crate::service::AccessService { ops: ops.clone() });
    let access_service = pb::access_server::AccessServer::from_arc(access.clone());
    let audit = Arc::new(crate::service::AuditService {
        ops: ops.clone(),
        node: config.name.clone(),
    });
    let audit_service = pb::audit_server::AuditServer::from_arc(audit.clone());
    let images =
        crate::images::ImageStore::open(&config.data_dir.join("images")).with_context(|| {
            format!(
                "cannot open the image store {}",
                config.data_dir.join("images").display()
            )
        })?;
    let images_service = pb::images_server::ImagesServer::new(ImagesService {
        ops: ops.clone(),
        node: config.name.clone(),
        store: images.clone(),
    });
    // Live progress of running migrations, kept by the leader.
    let board = Arc::new(ProgressBoard::default());
    let migrations = Arc::new(MigrationsService {
        ops: ops.clone(),
        board: board.clone(),
    });
    let migrations_service = pb::migrations_server::MigrationsServer::from_arc(migrations.clone());
    let mut grpc_shutdown = shutdown.clone();
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(server_tls)
            .context("invalid TLS settings")?
            .tcp_nodelay(true)
            .layer(crate::service::GuardLayer)
            .add_service(raft_service)
            .add_service(cluster_service)
            .add_service(kv_service)
            .add_service(nodes_service)
            .add_service(vms_service)
            .add_service(settings_service)
            .add_service(migrations_service)
            .add_service(images_service)
            .add_service(events_service)
            .add_service(tokens_service)
            .add_service(access_service)
            .add_service(audit_service)
            .serve_with_incoming_shutdown(without_nagle(listener), async move {
                let _ = grpc_shutdown.changed().await;
            }),
    );
    if let (Some(listener), Some(tls)) = (api_listener, api_tls) {
        let api = crate::rest::Api {
            ops: ops.clone(),
            raft: raft.clone(),
            services: Arc::new(crate::rest::Services {
                cluster,
                nodes,
                vms,
                migrations,
                kv,
                settings,
                events,
                tokens,
                access,
                audit,
            }),
            metrics: metrics.clone(),
            node: config.name.clone(),
        };
        tokio::spawn(crate::rest::serve(listener, tls, api, shutdown.clone()));
    }
    if let Some(listener) = http_listener {
        tokio::spawn(http::serve(
            listener,
            HttpState {
                raft: raft.clone(),
                metrics,
            },
            shutdown.clone(),
        ));
    }
    // Every listener is bound and served: ready for systemd (Type=notify).
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "cannot tell systemd this node is ready");
    }
    tracing::info!(
        name = %config.name,
        listen = %config.listen,
        advertise = %config.advertise,
        storage = config.storage.as_str(),
        "paddockd serving"
    );

    match &config.bootstrap {
        Bootstrap::Peers(peers) => membership::initialize(&raft, peers).await?,
        Bootstrap::Join(member) if stored.is_none() => {
            let joined = tokio::select! {
                joined = membership::join(member, &client_tls, &config.name, &config.advertise, shutdown.clone()) => joined,
                () = wait_for(&shutdown) => Err(anyhow::anyhow!("shut down before the join completed")),
            };
            match joined {
                Ok(id) => remember_cluster(&config, &cluster_id, id)?,
                Err(e) => {
                    let _ = raft.shutdown().await;
                    return Err(e);
                }
            }
        }
        Bootstrap::Join(_) | Bootstrap::Existing => {}
    }
    tokio::spawn(membership::run_promoter(raft.clone(), shutdown.clone()));
    let agent = Agent {
        name: config.name.clone(),
        driver,
        proposer: proposer.clone(),
        shared: shared.clone(),
        raft: raft.clone(),
        capacity,
        labels: config.host.labels.clone(),
        lease_file: crate::liveness::lease_path(&config.data_dir),
        heard: heard.clone(),
        quorum_fresh_ms,
        watchdog: config.host.watchdog.clone(),
        images: images.clone(),
        addresses_seen: Default::default(),
        start_failures: Default::default(),
    };
    if let Some(device) = &config.host.watchdog {
        // Fail at start if there is no device (opening it here would arm it).
        anyhow::ensure!(
            device.exists(),
            "--fencing watchdog: {} does not exist; load a watchdog driver (e.g. `modprobe softdog soft_margin=3`) or start without --fencing watchdog",
            device.display()
        );
    }
    tokio::spawn(
        crate::agent::migration::Worker {
            name: config.name.clone(),
            driver: agent.driver.clone(),
            proposer: proposer.clone(),
            shared: shared.clone(),
            board: board.clone(),
            images: images.clone(),
            journal: crate::agent::journal::Journal::open(&config.data_dir.join("migrations"))
                .with_context(|| {
                    format!(
                        "cannot open the migration job records in {}",
                        config.data_dir.join("migrations").display()
                    )
                })?,
        }
        .run(shutdown.clone()),
    );
    tokio::spawn(
        crate::images::sync::Sync {
            name: config.name.clone(),
            store: images.clone(),
            proposer: proposer.clone(),
            shared: shared.clone(),
            raft: raft.clone(),
        }
        .run(shutdown.clone()),
    );
    tokio::spawn(agent.run(shutdown.clone()));
    tokio::spawn(
        controllers::Runner {
            raft: raft.clone(),
            node_id,
            proposer: proposer.clone(),
            shared: shared.clone(),
            heard,
            board,
            election_max: config.election_max,
        }
        .run(shutdown.clone()),
    );

    stop.await;
    tracing::info!("shutting down");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    hand_over_leadership(&raft, &proposer).await;
    if let Err(e) = raft.shutdown().await {
        tracing::warn!(error = %e, "raft did not stop cleanly");
    }
    let _ = shutdown_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(3), grpc).await;
    tracing::info!("stopped");
    Ok(())
}

/// The hypervisor driver `--driver` asks for.
fn open_driver(config: &NodeConfig) -> anyhow::Result<Arc<dyn Driver>> {
    match config.host.driver {
        DriverKind::Memvm => Ok(Arc::new(MemVm::open(
            &config.data_dir,
            &config.name,
            GuestLoad {
                dirty_pages_per_sec: config.host.memvm_dirty_rate,
                working_set_mib: config.host.memvm_working_set_mib,
                dirty_write_bytes: config.host.memvm_dirty_bytes,
                fill_mib: config.host.memvm_fill_mib,
            },
            Some(&config.certs_dir),
        )?)),
        #[cfg(feature = "libvirt")]
        DriverKind::Libvirt => {
            use crate::drivers::libvirt::{self, disks::DiskStore, migration::MigrationConfig};
            let host = &config.host;
            let driver = libvirt::Libvirt::open(libvirt::LibvirtSettings {
                uri: host.libvirt_uri.clone(),
                domain_type: host.libvirt_domain_type,
                migration: MigrationConfig {
                    peer_uri: host.libvirt_migrate_uri.clone(),
                    tls: host.libvirt_migrate_tls,
                    timeout: host.libvirt_migrate_timeout,
                },
                network: host.vm_network.clone(),
                shutdown_timeout: host.libvirt_shutdown_timeout,
                disks: DiskStore {
                    local: config.data_dir.join("vms"),
                    shared: host.shared_storage.clone(),
                },
            })?;
            // QEMU does not read the lease: the fencing process destroys the domains when it
            // ends, even with this paddockd dead.
            libvirt::fence::ensure_running(&config.data_dir, &host.libvirt_uri)?;
            Ok(Arc::new(driver))
        }
        #[cfg(not(feature = "libvirt"))]
        DriverKind::Libvirt => anyhow::bail!(
            "this paddockd was built without the libvirt driver; rebuild it with `cargo build --release --features paddock-node/libvirt` (needs libvirt-dev and pkg-config), or use --driver memvm"
        ),
    }
}

/// Accepted connections with Nagle's algorithm off: tonic applies its own `tcp_nodelay` only
/// to listeners it binds itself, and Nagle plus delayed ACKs add ~40 ms to small RPCs.
fn without_nagle(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|stream| {
        if let Ok(stream) = &stream {
            let _ = stream.set_nodelay(true);
        }
        stream
    })
}

/// Stores the data dir's identity once this node belongs to cluster `id`, and serves that id.
fn remember_cluster(
    config: &NodeConfig,
    served: &OnceLock<String>,
    id: String,
) -> anyhow::Result<()> {
    identity::store(
        &config.data_dir,
        &Identity {
            cluster_id: id.clone(),
            node_name: config.name.clone(),
        },
    )?;
    let _ = served.set(id);
    Ok(())
}

/// A node that already belongs to a cluster and is started with `--join` must be pointed at a
/// member of that same cluster; an unreachable member is not an error (the node is a member
/// already and needs nobody to start).
async fn check_join_target(
    member: &str,
    tls: &tonic::transport::ClientTlsConfig,
    data_dir: &std::path::Path,
    stored: &Identity,
) -> anyhow::Result<()> {
    let Ok(channel) = paddock_raft::network::channel_to(member, tls) else {
        return Ok(());
    };
    let mut request = tonic::Request::new(pb::StatusRequest { local: true });
    request.set_timeout(Duration::from_secs(3));
    match pb::cluster_client::ClusterClient::new(channel)
        .status(request)
        .await
    {
        Ok(status) => {
            let theirs = status.into_inner().cluster_id;
            if !theirs.is_empty() {
                identity::check_cluster(data_dir, stored, &theirs, &format!("--join {member}"))?;
            }
            Ok(())
        }
        Err(status) => {
            tracing::warn!(%member, %status, "cannot check the --join member's cluster; starting as an existing member");
            Ok(())
        }
    }
}

async fn wait_for(shutdown: &watch::Receiver<bool>) {
    let mut shutdown = shutdown.clone();
    let _ = shutdown.wait_for(|stopped| *stopped).await;
}

/// If this node leads, asks the most up-to-date other voter to take over (Raft's TimeoutNow),
/// so clients see a new leader within one election round instead of an election timeout.
async fn hand_over_leadership(raft: &Raft, proposer: &Proposer) {
    let metrics = raft.metrics().borrow().clone();
    if metrics.current_leader != Some(metrics.id) {
        return;
    }
    raft.runtime_config().elect(false);
    let membership = metrics.membership_config.membership();
    let last = metrics.last_log_index.unwrap_or(0);
    let Some(replication) = metrics.replication.as_ref() else {
        return;
    };
    let successor = membership
        .voter_ids()
        .filter(|id| *id != metrics.id)
        .filter_map(|id| {
            let matched = replication.get(&id).cloned().flatten()?.index;
            Some((matched, id))
        })
        .max();
    let Some((matched, successor)) = successor else {
        return;
    };
    if matched < last {
        // Give the successor a moment to receive the tail of the log.
        let _ = raft
            .wait(Some(Duration::from_millis(500)))
            .metrics(
                |m| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(&successor).cloned().flatten())
                        .is_some_and(|l| l.index >= last)
                },
                "successor caught up",
            )
            .await;
    }
    let Some(node) = membership.get_node(&successor) else {
        return;
    };
    let Ok(channel) = proposer.channel(&node.address) else {
        return;
    };
    let mut client = pb::raft_client::RaftClient::new(channel);
    let request = pb::TimeoutNowRequest {
        from: metrics.id.to_string(),
    };
    match client.timeout_now(request).await {
        Ok(_) => {
            let handed_over = raft
                .wait(Some(Duration::from_secs(2)))
                .metrics(|m| m.current_leader != Some(m.id), "leadership handed over")
                .await
                .is_ok();
            tracing::info!(to = %node.name, handed_over, "leadership transfer");
        }
        Err(status) => tracing::warn!(to = %node.name, %status, "leadership transfer refused"),
    }
}
