//! `paddock bench migration`: live migrations of memvm guests between real paddockd processes
//! on this machine, next to raw loopback TCP and TLS measured in the same run.
//!
//! Scenarios (the targets): an idle 1 GiB guest with 768 MiB of mixed content; the same
//! guest dirtying 200 MB/s over 256 MiB; a 4 GiB guest rewriting 1 GiB as fast as it can; the
//! idle guest under a 100 MiB/s bandwidth limit; a drain of 20 running 512 MiB guests.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use paddock_api::client::Client;
use paddock_api::pb;

use super::start_cluster_with;
use crate::output::Failure;
use paddock_testkit::local_cluster::LocalCluster;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn fail(e: impl std::fmt::Display) -> Failure {
    Failure::new(crate::output::exit::ERROR, e.to_string())
}

/// Streams `total` bytes through `write` → `read` on loopback; returns bytes per second.
fn loopback<S: Read + Write + Send + 'static, C: Read + Write>(
    total: usize,
    accept: impl FnOnce(TcpStream) -> std::io::Result<S> + Send + 'static,
    connect: impl FnOnce(&str) -> std::io::Result<C>,
) -> std::io::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let address = listener.local_addr()?.to_string();
    let reader = std::thread::spawn(move || -> std::io::Result<usize> {
        let (tcp, _) = listener.accept()?;
        let mut stream = accept(tcp)?;
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0;
        while got < total {
            let n = stream.read(&mut buf)?;
            if n == 0 {
                break;
            }
            got += n;
        }
        Ok(got)
    });
    let mut stream = connect(&address)?;
    let chunk: Vec<u8> = (0..256 * 1024).map(|i| (i * 7 + i / 4096) as u8).collect();
    let started = Instant::now();
    let mut sent = 0;
    while sent < total {
        stream.write_all(&chunk)?;
        sent += chunk.len();
    }
    stream.flush()?;
    let got = reader
        .join()
        .map_err(|_| std::io::Error::other("reader panicked"))??;
    Ok(got as f64 / started.elapsed().as_secs_f64())
}

/// Raw TCP and mutual-TLS loopback throughput, single stream, with the cluster's certificates.
fn reference(cluster: &LocalCluster) -> Result<(f64, f64), Failure> {
    let total = 2usize << 30;
    let tcp = loopback(total, Ok, |a| {
        let s = TcpStream::connect(a)?;
        s.set_nodelay(true)?;
        Ok(s)
    })
    .map_err(fail)?;
    let certs = &cluster.certs;
    let server = paddock_migration::tls::server_config(
        &certs.ca_cert(),
        &certs.cert("n1"),
        &certs.key("n1"),
    )
    .map_err(fail)?;
    let client = paddock_migration::tls::client_config(
        &certs.ca_cert(),
        &certs.cert("n2"),
        &certs.key("n2"),
    )
    .map_err(fail)?;
    let tls = loopback(
        total / 2,
        move |tcp| paddock_migration::tls::accept(&server, tcp),
        |a| paddock_migration::tls::connect(&client, a),
    )
    .map_err(fail)?;
    Ok((tcp, tls))
}

/// A 2- or 3-node cluster whose guests run `load` (memvm flags).
async fn cluster_with(
    nodes: usize,
    load: &[&str],
) -> Result<(tempfile::TempDir, LocalCluster, Client), Failure> {
    let mut args: Vec<String> = ["--cpus", "64", "--memory", "64GiB"]
        .iter()
        .chain(load)
        .map(|s| s.to_string())
        .collect();
    args.extend(
        ["--election-min-ms", "1000", "--election-max-ms", "2000"]
            .iter()
            .map(|s| s.to_string()),
    );
    let (dir, cluster) = start_cluster_with(nodes, args).await?;
    let mut client = cluster.client(Duration::from_secs(30))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.node_list(false).await.map_or(0, |n| n.len()) < nodes {
        if Instant::now() > deadline {
            return Err(fail("nodes did not register in 30 s"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((dir, cluster, client))
}

async fn running(client: &mut Client, vm: &str, timeout: Duration) -> Result<String, Failure> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(detail) = client.vm_get(vm, false).await {
            let s = detail.summary.unwrap_or_default();
            if s.state == "running" {
                return Ok(s.node);
            }
        }
        if Instant::now() > deadline {
            return Err(fail(format!("{vm} did not run within {timeout:?}")));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_ended(client: &mut Client, id: u64) -> Result<pb::MigrationInfo, Failure> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Ok(m) = client.migration_get(id).await {
            if m.ended_ms > 0 {
                return Ok(m);
            }
        }
        if Instant::now() > deadline {
            return Err(fail(format!("migration {id} did not end in 300 s")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn migrate(
    client: &mut Client,
    vm: &str,
    to: &str,
    bandwidth: u64,
) -> Result<pb::MigrationInfo, Failure> {
    let answer = client
        .migration_create(pb::MigrationCreateRequest {
            vm: vm.into(),
            to: to.into(),
            mode: "auto".into(),
            bandwidth,
            max_downtime_ms: paddock_model::migration::DEFAULT_MAX_DOWNTIME_MS,
            priority: 0,
            request_id: None,
        })
        .await
        .map_err(fail)?;
    let id = answer
        .created
        .first()
        .map(|c| c.id)
        .ok_or_else(|| fail(format!("refused: {:?}", answer.refused)))?;
    wait_ended(client, id).await
}

fn line(name: &str, m: &pb::MigrationInfo) {
    let secs = m.total_ms as f64 / 1000.0;
    println!(
        "  {name:<34} {:<9} total {:>6} ms  downtime {:>4} ms  prepare {:>5} ms  wire {:>7.1} MiB  memory {:>7.1} MiB  {:>6.0} MiB/s memory  {:>6.0} MiB/s wire  rounds {:>2}{}{}  verified {}",
        m.phase,
        m.total_ms,
        m.downtime_ms.map_or("-".into(), |d| d.to_string()),
        m.prepare_ms,
        mib(m.bytes_transferred),
        mib(m.memory_bytes),
        if secs > 0.0 { mib(m.memory_bytes) / secs } else { 0.0 },
        if secs > 0.0 { mib(m.bytes_transferred) / secs } else { 0.0 },
        m.round + 1,
        if m.postcopy { "  post-copy" } else { "" },
        if m.throttle > 0 { format!("  throttle {}%", m.throttle) } else { String::new() },
        m.source_verified.map_or("-".into(), |v| v.to_string()),
    );
    if !m.error.is_empty() {
        println!("    error: {}", m.error);
    }
}

/// One scenario: a guest of `memory_mib` on n1 with `load`, migrated back and forth `runs`
/// times.
async fn scenario(
    name: &str,
    load: &[&str],
    memory_mib: u64,
    bandwidth: u64,
    runs: usize,
    show_reference: bool,
) -> Result<(), Failure> {
    let (_dir, mut cluster, mut client) = cluster_with(2, load).await?;
    if show_reference {
        let (tcp, tls) = reference(&cluster)?;
        println!(
            "  loopback, one stream, same run: raw TCP {:.2} GB/s, mutual TLS {:.2} GB/s",
            tcp / 1e9,
            tls / 1e9
        );
    }
    client
        .vm_create(
            "guest",
            pb::VmSpec {
                cpus: 1,
                memory_mib,
                prefer: vec!["n1".into()],
                ..Default::default()
            },
            false,
        )
        .await
        .map_err(fail)?;
    let mut at = running(&mut client, "guest", Duration::from_secs(120)).await?;
    // Let the workload reach its steady state.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for run in 0..runs {
        let to = if at == "n1" { "n2" } else { "n1" };
        let m = migrate(&mut client, "guest", to, bandwidth).await?;
        line(&format!("{name} #{}", run + 1), &m);
        if m.phase != "completed" {
            break;
        }
        at = running(&mut client, "guest", Duration::from_secs(60)).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    cluster.stop_all();
    Ok(())
}

/// 20 running guests of 512 MiB on n1, drained to n2 and n3.
async fn drain(vms: usize) -> Result<(), Failure> {
    let (_dir, mut cluster, mut client) = cluster_with(
        3,
        &[
            "--memvm-fill",
            "128MiB",
            "--memvm-dirty-rate",
            "200",
            "--memvm-working-set",
            "16MiB",
        ],
    )
    .await?;
    for i in 0..vms {
        client
            .vm_create(
                &format!("d{i}"),
                pb::VmSpec {
                    cpus: 1,
                    memory_mib: 512,
                    prefer: vec!["n1".into()],
                    ..Default::default()
                },
                false,
            )
            .await
            .map_err(fail)?;
    }
    for i in 0..vms {
        running(&mut client, &format!("d{i}"), Duration::from_secs(300)).await?;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    let answer = client.node_drain("n1", false).await.map_err(fail)?;
    let mut downtimes = Vec::new();
    let mut failed = answer.refused.len();
    for c in &answer.created {
        let m = wait_ended(&mut client, c.id).await?;
        if m.phase == "completed" {
            downtimes.push(m.downtime_ms.unwrap_or(0));
        } else {
            failed += 1;
            println!("  {} {}: {}", m.vm, m.phase, m.error);
        }
    }
    let took = started.elapsed();
    downtimes.sort_unstable();
    println!(
        "  drain n1 with {vms} running 512 MiB guests (128 MiB filled each; limits 2 per node, 5 per cluster): {} moved, {failed} failed, in {:.1} s; downtime median {} ms, worst {} ms",
        downtimes.len(),
        took.as_secs_f64(),
        downtimes.get(downtimes.len() / 2).copied().unwrap_or(0),
        downtimes.last().copied().unwrap_or(0),
    );
    cluster.stop_all();
    Ok(())
}

pub async fn run(runs: usize, drain_vms: usize, only: Option<String>) -> Result<(), Failure> {
    println!(
        "bench migration: memvm guests between paddockd processes on 127.0.0.1, mutual TLS, 2 streams, max downtime 100 ms"
    );
    let want = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let mixed = [
        "--memvm-fill",
        "768MiB",
        "--memvm-dirty-rate",
        "10",
        "--memvm-working-set",
        "1MiB",
    ];
    if want("idle") {
        println!("idle 1 GiB guest, 768 MiB of mixed content (35% zero, 25% text, 25% structured, 15% random):");
        scenario("idle 1 GiB", &mixed, 1024, 0, runs, true).await?;
    }
    if want("busy") {
        println!(
            "the same guest dirtying 200 MB/s (48,828 whole pages/s) over 256 MiB, mode auto:"
        );
        scenario(
            "busy 1 GiB, 200 MB/s",
            &[
                "--memvm-fill",
                "768MiB",
                "--memvm-dirty-rate",
                "48828",
                "--memvm-working-set",
                "256MiB",
                "--memvm-dirty-bytes",
                "4096",
            ],
            1024,
            0,
            runs,
            false,
        )
        .await?;
    }
    if want("flat-out") {
        println!("4 GiB guest rewriting 1 GiB as fast as it can (whole pages), mode auto:");
        scenario(
            "4 GiB, 1 GiB flat out",
            &[
                "--memvm-dirty-rate",
                "100000000",
                "--memvm-working-set",
                "1GiB",
                "--memvm-dirty-bytes",
                "4096",
            ],
            4096,
            0,
            runs,
            false,
        )
        .await?;
    }
    if want("bandwidth") {
        println!("idle 1 GiB guest (768 MiB mixed) with --bandwidth 100MiB:");
        scenario(
            "idle 1 GiB, 100 MiB/s limit",
            &mixed,
            1024,
            100 << 20,
            runs,
            false,
        )
        .await?;
    }
    if want("drain") {
        println!("drain:");
        drain(drain_vms).await?;
    }
    Ok(())
}
