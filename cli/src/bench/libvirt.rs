//! `paddock bench libvirt`: Paddock on real QEMU, next to libvirt driven directly (virsh) in the
//! same run, on three libvirt hosts in network namespaces (testkit): VM start, live migration
//! (pre-copy and post-copy), HA recovery of a killed host, and fencing after paddockd-only
//! kills. Needs root, QEMU and libvirt (testkit/libvirt/install.sh) and a paddockd built with
//! `--features paddock-node/libvirt`.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use paddock_api::client::Client;
use paddock_api::pb;
use paddock_testkit::libvirt_hosts::{LibvirtHosts, QemuWatch, TestGuest};
use paddock_testkit::local_cluster::{find_paddockd, LocalCluster, LocalClusterSpec};

use super::{ms, percentile};
use crate::output::{exit, Failure};

const LONG: Duration = Duration::from_secs(180);

struct Bench {
    cluster: LocalCluster,
    hosts: LibvirtHosts,
    guest: TestGuest,
    kind: &'static str,
    _dir: tempfile::TempDir,
}

pub async fn run(runs: usize, only: Option<String>, rewrite_mib: u32) -> Result<(), Failure> {
    LibvirtHosts::can_run()
        .map_err(|why| Failure::new(exit::UNAVAILABLE, format!("bench libvirt: {why}")))?;
    let mut bench = Bench::up().await?;
    println!(
        "bench libvirt: 3 libvirt hosts (QEMU {} domains), {runs} runs per scenario",
        bench.kind
    );
    let all = only.is_none();
    let wants = |name: &str| all || only.as_deref() == Some(name);
    if wants("create") {
        bench.create(runs).await?;
    }
    if wants("migration") {
        bench.migration(runs, rewrite_mib).await?;
    }
    if wants("ha") {
        bench.ha(runs).await?;
    }
    if wants("fencing") {
        bench.fencing(runs * 2).await?;
    }
    Ok(())
}

fn fail(what: impl std::fmt::Display) -> Failure {
    Failure::new(exit::ERROR, what.to_string())
}

/// Polls `$check` (an expression, `.await` allowed) every 10 ms until it holds, failing after
/// [`LONG`].
macro_rules! until {
    ($what:expr, $check:expr) => {{
        let started = Instant::now();
        while !$check {
            if started.elapsed() > LONG {
                return Err(fail(format!("timed out waiting for {}", $what)));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }};
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    percentile(&values, 0.5)
}

impl Bench {
    async fn up() -> Result<Bench, Failure> {
        let dir = tempfile::Builder::new()
            .prefix("paddock-bench-libvirt-")
            .tempdir()?;
        let hosts = LibvirtHosts::up(&dir.path().join("hosts"), 3)?;
        let guest = TestGuest::build(&dir.path().join("guest"))?;
        let kind = hosts.probe_domain_type(&guest);
        let mut extra_args = hosts.node_args(kind);
        extra_args.extend(
            // The test guest is a bare /init: it ignores ACPI shutdown.
            [
                "--libvirt-shutdown-timeout",
                "2s",
                "--cpus",
                "8",
                "--memory",
                "8GiB",
            ]
            .map(String::from),
        );
        let spec = LocalClusterSpec {
            nodes: 3,
            base_port: None,
            extra_args,
            hosts: hosts.hosts.iter().map(|h| h.node_host(&[])).collect(),
        };
        let mut cluster =
            LocalCluster::prepare(&dir.path().join("cluster"), &spec, find_paddockd()?)?;
        cluster.start_all()?;
        cluster.wait_for_leader(LONG).await?;
        let bench = Bench {
            cluster,
            hosts,
            guest,
            kind,
            _dir: dir,
        };
        let mut client = bench.client()?;
        until!(
            "3 nodes registered",
            client.node_list(false).await.is_ok_and(|n| n.len() == 3)
        );
        Ok(bench)
    }

    fn client(&self) -> Result<Client, Failure> {
        Ok(self.cluster.client(Duration::from_secs(30))?)
    }

    /// The test guest on shared storage, with one 64 MiB disk or none.
    fn spec(&self, mib: u32, memory_mib: u64, on: &str, ha: bool, disk: bool) -> pb::VmSpec {
        let disks = if disk {
            vec![pb::Disk {
                size_mib: 64,
                image: String::new(),
            }]
        } else {
            Vec::new()
        };
        self.guest.spec(mib, memory_mib, on, ha, "shared", disks)
    }

    async fn state_of(&self, vm: &str) -> Option<(String, String)> {
        let mut client = self.client().ok()?;
        let summary = client.vm_get(vm, false).await.ok()?.summary?;
        Some((summary.state, summary.node))
    }

    async fn wait_running(&self, vm: &str) -> Result<String, Failure> {
        let mut node = String::new();
        let started = Instant::now();
        loop {
            if let Some((state, on)) = self.state_of(vm).await {
                if state == "running" {
                    node = on;
                }
            }
            if !node.is_empty() {
                return Ok(node);
            }
            if started.elapsed() > LONG {
                let last = self.state_of(vm).await;
                return Err(fail(format!("{vm} did not run within {LONG:?}: {last:?}")));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn delete(&self, vm: &str) -> Result<(), Failure> {
        let mut client = self.client()?;
        client.vm_delete(vm).await?;
        until!(
            format!("{vm} deleted"),
            client.vm_get(vm, false).await.is_err()
        );
        Ok(())
    }

    fn virsh(&self, host: usize, args: &[&str]) -> Result<String, Failure> {
        self.hosts.hosts[host].virsh(args).map_err(fail)
    }

    /// The domain XML Paddock made for `vm` on `host`, as a plain domain named `name` (no
    /// Paddock marks, no UUID: libvirt gives it one), for virsh to run the same guest.
    fn plain_xml(&self, host: usize, vm: &str, name: &str) -> Result<PathBuf, Failure> {
        let xml = self.virsh(host, &["dumpxml", "--migratable", vm])?;
        let mut plain = String::new();
        for line in xml.lines() {
            let t = line.trim_start();
            if t.starts_with("<uuid>") || t.starts_with("<description>") {
                continue;
            }
            plain.push_str(
                &line
                    .replace(
                        &format!("<name>{vm}</name>"),
                        &format!("<name>{name}</name>"),
                    )
                    .replace(&format!("/vms/{vm}/"), &format!("/vms/{name}/")),
            );
            plain.push('\n');
        }
        // Its console log's directory on every host (it may migrate anywhere).
        for h in &self.hosts.hosts {
            std::fs::create_dir_all(h.paddock_dir().join("vms").join(name))?;
        }
        let path = self.hosts.hosts[host]
            .paddock_dir()
            .join("vms")
            .join(name)
            .join("domain.xml");
        std::fs::write(&path, plain)?;
        Ok(path)
    }

    /// `vm create` until Paddock reports the domain running, next to `virsh create` of the
    /// same domain on the same host.
    async fn create(&self, runs: usize) -> Result<(), Failure> {
        let mut paddock = Vec::new();
        let mut virsh = Vec::new();
        let mut client = self.client()?;
        for run in 0..runs {
            let vm = format!("bc-{run}");
            let started = Instant::now();
            client
                .vm_create(&vm, self.spec(8, 128, "n2", false, false), false)
                .await?;
            let node = self.wait_running(&vm).await?;
            paddock.push(started.elapsed());
            let host = self.cluster.index_of(&node).unwrap_or(1);
            let xml = self.plain_xml(host, &vm, &format!("plain-{run}"))?;
            self.delete(&vm).await?;
            let file = xml.display().to_string();
            let (uri, xml_path) = (self.hosts.hosts[host].uri(), file.clone());
            let started = Instant::now();
            let out = Command::new("virsh")
                .args(["-c", &uri, "create", &xml_path])
                .output()?;
            virsh.push(started.elapsed());
            if !out.status.success() {
                return Err(fail(format!(
                    "virsh create: {}",
                    String::from_utf8_lossy(&out.stderr)
                )));
            }
            self.virsh(host, &["destroy", &format!("plain-{run}")])?;
        }
        let (p, v) = (median(paddock.clone()), median(virsh.clone()));
        println!(
            "create → running (direct-boot guest, no disk): Paddock `vm create` + wait median {:.1} ms (min {:.1}, max {:.1}); `virsh create` median {:.1} ms (min {:.1}, max {:.1}); Paddock's overhead {:+.1} ms",
            ms(p), ms(*paddock.iter().min().unwrap_or(&p)), ms(*paddock.iter().max().unwrap_or(&p)),
            ms(v), ms(*virsh.iter().min().unwrap_or(&v)), ms(*virsh.iter().max().unwrap_or(&v)),
            ms(p) - ms(v)
        );
        Ok(())
    }

    /// A 512 MiB guest rewriting `rewrite_mib` per round: Paddock's migration vs `virsh migrate --live --p2p
    /// --tls` of a plain copy of the same domain, pre-copy and post-copy, alternating.
    async fn migration(&self, runs: usize, rewrite_mib: u32) -> Result<(), Failure> {
        let mut client = self.client()?;
        client
            .vm_create("bm", self.spec(rewrite_mib, 512, "n1", false, false), false)
            .await?;
        self.wait_running("bm").await?;
        // Let the guest boot and start rewriting.
        tokio::time::sleep(Duration::from_secs(20)).await;
        let tls = self.hosts.peer_uri_tls();
        for mode in ["precopy", "postcopy"] {
            let mut ours = Vec::new();
            let mut theirs = Vec::new();
            for run in 0..runs {
                // Paddock: n1 → n2, then back.
                let to = if run % 2 == 0 { "n2" } else { "n1" };
                let answer = client
                    .migration_create(pb::MigrationCreateRequest {
                        vm: "bm".into(),
                        to: to.into(),
                        mode: mode.into(),
                        max_downtime_ms: 300,
                        ..Default::default()
                    })
                    .await?;
                let id = answer
                    .created
                    .first()
                    .map(|c| c.id)
                    .ok_or_else(|| fail(format!("refused: {:?}", answer.refused)))?;
                let started = Instant::now();
                let mut info = pb::MigrationInfo::default();
                while info.ended_ms == 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    info = client.migration_get(id).await?;
                    if started.elapsed() > LONG {
                        return Err(fail("a Paddock migration did not end"));
                    }
                }
                println!(
                    "  Paddock {mode} run {run} → {to}: {} in {} ms, downtime {:?} ms",
                    info.phase, info.total_ms, info.downtime_ms
                );
                if info.phase != "completed" {
                    return Err(fail(format!(
                        "Paddock {mode}: {} {}",
                        info.phase, info.error
                    )));
                }
                ours.push((
                    Duration::from_millis(info.total_ms),
                    info.downtime_ms.unwrap_or(0),
                    started.elapsed(),
                ));
                // The next migration needs it running at its destination again.
                self.wait_running("bm").await?;
            }
            // virsh: a plain copy of the same guest on h1, back and forth.
            let xml = self.plain_xml(self.index_of_running("bm").await?, "bm", "plain-m")?;
            let out = Command::new("virsh")
                .args([
                    "-c",
                    &self.hosts.hosts[0].uri(),
                    "create",
                    &xml.display().to_string(),
                ])
                .output()?;
            if !out.status.success() {
                return Err(fail(format!(
                    "virsh create: {}",
                    String::from_utf8_lossy(&out.stderr)
                )));
            }
            tokio::time::sleep(Duration::from_secs(20)).await;
            for run in 0..runs {
                let (from, to) = if run % 2 == 0 { (0, 1) } else { (1, 0) };
                let dest = tls.replace("{host}", &self.hosts.hosts[to].address);
                let mut args = vec![
                    "-c".to_string(),
                    self.hosts.hosts[from].uri(),
                    "migrate".into(),
                    "--live".into(),
                    "--p2p".into(),
                    "--tls".into(),
                ];
                if mode == "postcopy" {
                    args.extend(["--postcopy".into(), "--postcopy-after-precopy".into()]);
                } else {
                    // What Paddock asks for: the destination paused until the switch.
                    args.push("--suspend".into());
                }
                args.extend(["plain-m".into(), dest]);
                // libvirt's job-completed event on the source carries the final figures
                // (after post-copy the destination keeps no completed job).
                let events = Command::new("virsh")
                    .args(["-c", &self.hosts.hosts[from].uri(), "event", "plain-m"])
                    .args(["--event", "job-completed", "--timeout", "150"])
                    .stdout(std::process::Stdio::piped())
                    .spawn()?;
                tokio::time::sleep(Duration::from_millis(300)).await;
                let started = Instant::now();
                let out = Command::new("timeout")
                    .arg("300")
                    .arg("virsh")
                    .args(&args)
                    .output()?;
                let wall = started.elapsed();
                let event =
                    String::from_utf8_lossy(&events.wait_with_output()?.stdout).into_owned();
                if !out.status.success() {
                    return Err(fail(format!(
                        "virsh migrate: {}",
                        String::from_utf8_lossy(&out.stderr)
                    )));
                }
                if mode == "precopy" {
                    self.virsh(to, &["resume", "plain-m"])?;
                }
                let field = |name: &str| {
                    event
                        .lines()
                        .find_map(|l| l.trim().strip_prefix(name))
                        .and_then(|n| n.trim().parse::<u64>().ok())
                        .unwrap_or(0)
                };
                theirs.push((
                    Duration::from_millis(field("time_elapsed:")),
                    field("downtime:"),
                    wall,
                ));
            }
            let last = if runs % 2 == 1 { 1 } else { 0 };
            let _ = self.virsh(last, &["destroy", "plain-m"]);
            let summary = |label: &str, rows: &[(Duration, u64, Duration)]| {
                let total = median(rows.iter().map(|r| r.0).collect());
                let wall = median(rows.iter().map(|r| r.2).collect());
                let mut downtimes: Vec<u64> = rows.iter().map(|r| r.1).collect();
                downtimes.sort_unstable();
                let downtime = downtimes.get(downtimes.len() / 2).copied().unwrap_or(0);
                println!(
                    "  {label:<28} job median {:>7.1} ms, downtime median {downtime:>4} ms (all {downtimes:?}), wall median {:>7.1} ms",
                    ms(total),
                    ms(wall)
                );
            };
            println!(
                "migration {mode}, 512 MiB guest rewriting {rewrite_mib} MiB per round, QEMU TLS:"
            );
            summary("Paddock `vm migrate`", &ours);
            summary("virsh migrate --live --p2p --tls", &theirs);
        }
        self.delete("bm").await
    }

    async fn index_of_running(&self, vm: &str) -> Result<usize, Failure> {
        let node = self.wait_running(vm).await?;
        Ok(self.cluster.index_of(&node).unwrap_or(0))
    }

    /// Brings host `i` back after a kill: its libvirtd, then its node.
    async fn revive(&mut self, i: usize) -> Result<(), Failure> {
        self.hosts.restart_libvirtd(i)?;
        let host = self.hosts.hosts[i].node_host(&[]);
        self.cluster.nodes[i].host = Some(host);
        self.cluster.start(i)?;
        let mut client = self.client()?;
        let name = self.cluster.nodes[i].name.clone();
        until!(
            format!("{name} ready"),
            client
                .node_list(false)
                .await
                .is_ok_and(|nodes| nodes.iter().any(|n| n.name == name && n.state == "ready"))
        );
        Ok(())
    }

    /// Kill a whole host running 5 HA VMs (shared disks); time until all 5 run elsewhere.
    async fn ha(&mut self, runs: usize) -> Result<(), Failure> {
        let mut took = Vec::new();
        for run in 0..runs {
            let leader = self.cluster.wait_for_leader(LONG).await?;
            let victim = (leader + 1 + run % 2) % 3;
            let victim_name = self.cluster.nodes[victim].name.clone();
            let mut client = self.client()?;
            let names: Vec<String> = (0..5).map(|i| format!("h{run}-{i}")).collect();
            for name in &names {
                let mut spec = self.spec(2, 96, &victim_name, true, true);
                spec.cmdline.push_str(" ms=500");
                client.vm_create(name, spec, false).await?;
            }
            for name in &names {
                if self.wait_running(name).await? != victim_name {
                    return Err(fail(format!("{name} did not start on {victim_name}")));
                }
            }
            let started = Instant::now();
            self.cluster.kill(victim);
            self.hosts.kill_host(victim);
            for name in &names {
                until!(
                    format!("{name} running elsewhere"),
                    self.state_of(name)
                        .await
                        .is_some_and(|(state, node)| state == "running" && node != victim_name)
                );
            }
            took.push(started.elapsed());
            println!(
                "  run {run}: 5 HA VMs of {victim_name} running elsewhere after {:.2} s",
                started.elapsed().as_secs_f64()
            );
            self.revive(victim).await?;
            for name in &names {
                self.delete(name).await?;
            }
        }
        took.sort();
        println!(
            "HA recovery of 5 QEMU VMs (shared disks) after a host kill, {runs} runs: median {:.2} s, min {:.2} s, max {:.2} s",
            percentile(&took, 0.5).as_secs_f64(),
            took.first().map_or(0.0, Duration::as_secs_f64),
            took.last().map_or(0.0, Duration::as_secs_f64)
        );
        Ok(())
    }

    /// kill -9 only paddockd on the host running an HA VM, `kills` times: the fencing process
    /// must end its QEMU before the VM starts elsewhere.
    async fn fencing(&mut self, kills: usize) -> Result<(), Failure> {
        let mut client = self.client()?;
        let mut spec = self.spec(2, 96, "n2", true, true);
        spec.cmdline.push_str(" ms=500");
        client.vm_create("fence-1", spec, false).await?;
        let mut doubles = 0;
        let mut gaps = Vec::new();
        for kill in 0..kills {
            let from = self.wait_running("fence-1").await?;
            let i = self.cluster.index_of(&from).unwrap_or(0);
            let mut watch = QemuWatch::default();
            watch.look(&self.hosts);
            self.cluster.kill_daemon(i);
            let started = Instant::now();
            loop {
                watch.look(&self.hosts);
                let elsewhere = self
                    .state_of("fence-1")
                    .await
                    .is_some_and(|(state, node)| state == "running" && node != from);
                if elsewhere {
                    break;
                }
                if started.elapsed() > LONG {
                    return Err(fail("fence-1 did not run elsewhere"));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            watch.look(&self.hosts);
            if let Some(both) = watch.overlap() {
                doubles += 1;
                println!("  kill {kill}: DOUBLE RUN: {both}");
            }
            // From the old QEMU's end to the new one's start.
            let old_end = watch
                .seen
                .iter()
                .filter(|e| e.0 == i)
                .filter_map(|e| e.3)
                .max();
            let new_start = watch.seen.iter().filter(|e| e.0 != i).map(|e| e.2).max();
            if let (Some(end), Some(start)) = (old_end, new_start) {
                gaps.push(start.saturating_duration_since(end));
            }
            // The node comes back and adopts its fencing process.
            self.cluster.start(i)?;
            self.cluster.wait_for_leader(LONG).await?;
        }
        gaps.sort();
        println!(
            "fencing: {kills} paddockd-only kills, {doubles} double runs; old QEMU gone → new QEMU seen: median {:.2} s, min {:.2} s",
            percentile(&gaps, 0.5).as_secs_f64(),
            gaps.first().map_or(0.0, Duration::as_secs_f64)
        );
        self.delete("fence-1").await
    }
}
