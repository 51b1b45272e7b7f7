//! Helpers for Paddock's integration tests: fresh local clusters of real `paddockd`
//! processes (gRPC, mutual TLS, fsync on) in temporary directories, and KV calls on them.
//!
//! Each test binary runs its cluster tests one at a time ([`serial`]): several clusters at once
//! on a 2-core machine would make elections flaky and prove nothing.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::Context;
use paddock_api::client::{Client, ClientError};
pub use paddock_testkit::local_cluster::{LocalCluster, LocalClusterSpec};

/// Builds `paddockd` and `paddock` once per test binary (a no-op when fresh), so tests never
/// run a stale daemon, and returns the directory holding them.
pub fn binaries() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let exe = std::env::current_exe().expect("test executable path");
        // target/<profile>/deps/<test> → target/<profile>
        let profile_dir = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("test executable lives in target/<profile>/deps")
            .to_path_buf();
        let mut build = Command::new(env!("CARGO"));
        build.args(["build", "--quiet", "--workspace", "--bins"]);
        if cfg!(feature = "libvirt") {
            build.args(["--features", "paddock-node/libvirt"]);
        }
        if profile_dir.file_name().is_some_and(|p| p == "release") {
            build.arg("--release");
        }
        let status = build.status().expect("running cargo build");
        assert!(status.success(), "building paddockd and paddock failed");
        profile_dir
    })
    .clone()
}

/// Serializes cluster tests within one test binary (an async lock: it is held across the
/// whole test, and a failed test must not poison it for the others).
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// A prepared (not started) cluster in a fresh temporary directory.
pub fn cluster(spec: LocalClusterSpec) -> anyhow::Result<(tempfile::TempDir, LocalCluster)> {
    let paddockd = binaries().join("paddockd");
    let dir = tempfile::Builder::new().prefix("paddock-test-").tempdir()?;
    let cluster = LocalCluster::prepare(dir.path(), &spec, paddockd)?;
    Ok((dir, cluster))
}

/// Short Raft timings keep the tests quick; the defaults are tuned for production.
pub fn fast_timings() -> Vec<String> {
    [
        "--heartbeat-ms",
        "50",
        "--election-min-ms",
        "300",
        "--election-max-ms",
        "600",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A cluster of `nodes` with [`fast_timings`].
pub fn spec(nodes: usize) -> LocalClusterSpec {
    LocalClusterSpec {
        nodes,
        base_port: None,
        extra_args: fast_timings(),
        hosts: Vec::new(),
    }
}

pub const WAIT: Duration = Duration::from_secs(30);

pub async fn put(client: &mut Client, key: &str, value: &str) -> Result<(), ClientError> {
    client.kv_put(key, value).await.map(|_| ())
}

pub async fn get(
    client: &mut Client,
    key: &str,
    stale: bool,
) -> Result<Option<String>, ClientError> {
    client.kv_get(key, stale).await
}

/// Reads `key` from node `i`'s own replica (no forwarding, no read-index).
pub async fn get_local(
    cluster: &LocalCluster,
    i: usize,
    key: &str,
) -> anyhow::Result<Option<String>> {
    let mut client = cluster.client_of(
        vec![cluster.nodes[i].address.clone()],
        Duration::from_secs(5),
    )?;
    get(&mut client, key, true).await.context("stale read")
}

/// Every key and value under `prefix` in node `i`'s own replica, in one paged listing.
pub async fn list_local(
    cluster: &LocalCluster,
    i: usize,
    prefix: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let mut client = cluster.client_of(
        vec![cluster.nodes[i].address.clone()],
        Duration::from_secs(5),
    )?;
    Ok(client.kv_list(prefix, true).await?.into_iter().collect())
}

/// Waits until node `i` has applied at least `index`.
pub async fn wait_applied(cluster: &LocalCluster, i: usize, index: u64) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    loop {
        if let Ok(status) = cluster.status_of(i).await {
            if status.applied_index >= index {
                return Ok(());
            }
        }
        anyhow::ensure!(
            started.elapsed() < WAIT,
            "node {i} did not apply index {index} in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls an async condition every 100 ms until it is true; fails the test (returns an error)
/// after [`WAIT`]. The condition is a block evaluating to `anyhow::Result<bool>` (`?` works).
#[macro_export]
macro_rules! until {
    ($what:expr, $check:expr) => {{
        let started = std::time::Instant::now();
        loop {
            let ok: anyhow::Result<bool> = async { $check }.await;
            if ok.unwrap_or(false) {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < $crate::WAIT,
                "timed out waiting for {}",
                $what
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }};
}

/// A started 3-node cluster of memvm hosts (8 CPUs and 4 GiB each, plus `memvm` flags) with
/// every node registered in the inventory.
pub async fn memvm_cluster(memvm: &[&str]) -> anyhow::Result<(tempfile::TempDir, LocalCluster)> {
    let (dir, mut cluster) = cluster(spec(3))?;
    for node in &mut cluster.nodes {
        node.extra_args
            .extend(["--cpus", "8", "--memory", "4GiB"].map(String::from));
        node.extra_args.extend(memvm.iter().map(|s| s.to_string()));
    }
    cluster.start_all()?;
    cluster.wait_for_leader(WAIT).await?;
    let mut client = cluster.client(WAIT)?;
    until!(
        "3 nodes registered",
        Ok(client.node_list(false).await?.len() == 3)
    );
    Ok((dir, cluster))
}

/// `name` as `vm list` shows it.
pub async fn vm_summary(
    client: &mut Client,
    name: &str,
) -> anyhow::Result<paddock_api::pb::VmSummary> {
    Ok(client
        .vm_get(name, false)
        .await?
        .summary
        .unwrap_or_default())
}

/// Run intervals of `vm` recorded by the memvm guests on every node: (node, epoch, start, end),
/// oldest first.
pub fn intervals(cluster: &LocalCluster, vm: &str) -> Vec<(String, u64, u64, u64)> {
    let mut runs: Vec<_> = paddock_testkit::memvm::run_intervals(cluster)
        .into_iter()
        .filter(|r| r.vm == vm)
        .map(|r| (r.node, r.epoch, r.start_ms, r.end_ms))
        .collect();
    runs.sort_by_key(|r| r.2);
    runs
}

/// Asks for one live migration; its id, or the refusal as an error.
pub async fn start_migration(
    client: &mut Client,
    request: paddock_api::pb::MigrationCreateRequest,
) -> anyhow::Result<u64> {
    let answer = client.migration_create(request).await?;
    answer
        .created
        .first()
        .map(|c| c.id)
        .ok_or_else(|| anyhow::anyhow!("refused: {:?}", answer.refused))
}

/// Waits up to `within` for migration `id` to end; its last record.
pub async fn migration_ended(
    client: &mut Client,
    id: u64,
    within: Duration,
) -> anyhow::Result<paddock_api::pb::MigrationInfo> {
    let started = std::time::Instant::now();
    loop {
        let last = client.migration_get(id).await?;
        if last.ended_ms > 0 {
            return Ok(last);
        }
        anyhow::ensure!(
            started.elapsed() < within,
            "migration {id} did not end within {within:?}: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
