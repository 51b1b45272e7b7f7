//! Real QEMU through libvirt (issue: real VMs): Paddock nodes on libvirt hosts in network
//! namespaces ([`paddock_testkit::libvirt_hosts`]), each with its own libvirtd, running a Linux
//! guest whose `/init` rewrites and verifies its memory every round (`testkit/guest/init.c`).
//!
//! Built with `--features libvirt`; runs only with `PADDOCK_LIBVIRT_TESTS=1` as root with
//! libvirtd and QEMU installed (`testkit/libvirt/install.sh`), and says why it skips otherwise.
//! Linux guests run under KVM when this machine's KVM boots them, else under TCG (probed by
//! booting, once per run).
#![cfg(feature = "libvirt")]

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use paddock_api::client::Client;
use paddock_api::pb;
use paddock_testkit::libvirt_hosts::{LibvirtHosts, QemuWatch, TestGuest};
use paddock_testkit::local_cluster::LocalCluster;
use paddock_tests::{
    cluster, fast_timings, migration_ended, serial, spec, start_migration, vm_summary,
};

/// Booting under TCG takes 10–15 s on a 2-core machine: waits here are longer than elsewhere.
const LONG: Duration = Duration::from_secs(120);

/// Polls `check` every 100 ms until it is true, failing after `within`.
macro_rules! wait_for {
    ($within:expr, $what:expr, $check:expr) => {{
        let started = Instant::now();
        loop {
            let ok: anyhow::Result<bool> = async { $check }.await;
            if ok.unwrap_or(false) {
                break;
            }
            anyhow::ensure!(
                started.elapsed() < $within,
                "timed out after {:?} waiting for {}",
                $within,
                $what
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }};
}

/// N real hosts with a Paddock node each.
struct Real {
    cluster: LocalCluster,
    hosts: LibvirtHosts,
    guest: TestGuest,
    shared: PathBuf,
    dir: tempfile::TempDir,
}

fn guest() -> anyhow::Result<TestGuest> {
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("paddock-guest");
    TestGuest::build(&cache)
}

/// `kvm` if this machine's KVM boots the test guest, else `qemu` (TCG); probed once per run.
fn domain_type(hosts: &LibvirtHosts, guest: &TestGuest) -> &'static str {
    static TYPE: OnceLock<&'static str> = OnceLock::new();
    TYPE.get_or_init(|| {
        let chosen = hosts.probe_domain_type(guest);
        eprintln!(
            "test guests run under {chosen} (KVM booted the test guest: {})",
            chosen == "kvm"
        );
        chosen
    })
}

async fn real(n: usize) -> anyhow::Result<Option<Real>> {
    if let Err(why) = LibvirtHosts::check() {
        eprintln!("skipped: {why}");
        return Ok(None);
    }
    let guest = guest()?;
    let (dir, _) = cluster(spec(1))?;
    let hosts = LibvirtHosts::up(&dir.path().join("hosts"), n)?;
    let kind = domain_type(&hosts, &guest);
    let shared = hosts.shared.clone();
    let mut cluster_spec = spec(n);
    cluster_spec.extra_args = fast_timings();
    cluster_spec.extra_args.extend(hosts.node_args(kind));
    cluster_spec.extra_args.extend(
        [
            "--vm-network",
            "bridge:vmbr0",
            // The test guest is a bare /init: it ignores ACPI shutdown.
            "--libvirt-shutdown-timeout",
            "3s",
            "--cpus",
            "8",
            "--memory",
            "4GiB",
        ]
        .map(String::from),
    );
    for host in &hosts.hosts {
        host.add_bridge("vmbr0")?;
        cluster_spec.hosts.push(host.node_host(&[]));
    }
    let paddockd = paddock_tests::binaries().join("paddockd");
    let mut cluster = LocalCluster::prepare(&dir.path().join("cluster"), &cluster_spec, paddockd)?;
    cluster.start_all()?;
    cluster.wait_for_leader(LONG).await?;
    let mut client = cluster.client(LONG)?;
    wait_for!(LONG, format!("{n} nodes registered"), {
        Ok(client.node_list(false).await?.len() == n)
    });
    Ok(Some(Real {
        cluster,
        hosts,
        guest,
        shared,
        dir,
    }))
}

impl Real {
    fn client(&self) -> anyhow::Result<Client> {
        self.cluster.client(Duration::from_secs(10))
    }

    fn index(&self, node: &str) -> usize {
        self.cluster.index_of(node).expect("a node of the cluster")
    }

    /// A direct-boot test guest rewriting `mib` MiB per round, with one 64 MiB disk.
    fn spec(&self, mib: u32, memory_mib: u64, on: &str, ha: bool, policy: &str) -> pb::VmSpec {
        let disk = pb::Disk {
            size_mib: 64,
            image: String::new(),
        };
        self.guest.spec(mib, memory_mib, on, ha, policy, vec![disk])
    }

    /// The serial console `node` keeps for `vm`.
    fn console(&self, node: &str, vm: &str) -> String {
        let host = &self.hosts.hosts[self.index(node)];
        std::fs::read_to_string(host.paddock_dir().join("vms").join(vm).join("console.log"))
            .unwrap_or_default()
    }

    /// Verified rounds in `node`'s console of `vm`, and whether any round was BAD.
    fn rounds(&self, node: &str, vm: &str) -> (usize, bool) {
        let text = self.console(node, vm);
        let ok = text
            .lines()
            .filter(|l| l.starts_with("round ") && l.contains(" ok "))
            .count();
        (ok, text.contains("BAD"))
    }

    async fn running_on(&self, vm: &str) -> anyhow::Result<Option<String>> {
        let mut client = self.client()?;
        let v = vm_summary(&mut client, vm).await?;
        Ok((v.state == "running").then_some(v.node))
    }

    /// Waits until `vm` runs and its guest has verified `rounds` more rounds on its node.
    async fn verifying(&self, vm: &str, rounds: usize) -> anyhow::Result<String> {
        let started = Instant::now();
        let mut before = None;
        loop {
            if let Ok(Some(node)) = self.running_on(vm).await {
                let done = self.rounds(&node, vm).0;
                let first = *before.get_or_insert(done);
                if done >= first + rounds {
                    anyhow::ensure!(
                        !self.rounds(&node, vm).1,
                        "{vm} saw a BAD round on {node}:\n{}",
                        self.console(&node, vm)
                    );
                    return Ok(node);
                }
            }
            if started.elapsed() > LONG {
                let mut client = self.client()?;
                let detail = client.vm_get(vm, false).await?;
                let node = detail.summary.clone().unwrap_or_default().node;
                let console = self.console(&node, vm);
                let tail: Vec<&str> = console.lines().rev().take(5).collect();
                anyhow::bail!(
                    "{vm} did not verify {rounds} rounds within {LONG:?}: {detail:?}\nconsole on {node} ends: {tail:?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn create(client: &mut Client, name: &str, spec: pb::VmSpec) -> anyhow::Result<()> {
    client.vm_create(name, spec, false).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_direct_boot_guest_runs_with_its_console_metadata_disk_and_nic() -> anyhow::Result<()> {
    let _serial = serial().await;
    let Some(real) = real(2).await? else {
        return Ok(());
    };
    let mut client = real.client()?;
    let mut spec = real.spec(16, 128, "n1", false, "local");
    spec.cmdline.push_str(" ip4=10.77.0.11/24");
    create(&mut client, "web-1", spec).await?;
    let node = real.verifying("web-1", 3).await?;
    assert_eq!(node, "n1");
    // Its IP, as n1's ARP table has it from the guest's traffic on the bridge.
    wait_for!(LONG, "web-1's IP reported", {
        let summary = vm_summary(&mut client, "web-1").await?;
        Ok(summary
            .addresses
            .iter()
            .any(|a| a.starts_with("10.77.0.11")))
    });
    let console = real.console("n1", "web-1");
    assert!(console.contains("GUEST env hostname=web-1"), "{console}");
    assert!(console.contains("GUEST env role=test"), "{console}");
    // `vm logs` through a node that does not run it: it asks n1.
    let mut via_n2 = real.cluster.client_of(
        vec![real.cluster.nodes[1].address.clone()],
        Duration::from_secs(10),
    )?;
    let chunk = via_n2.vm_logs("web-1", 0, false, 0).await?;
    assert_eq!(chunk.node, "n1");
    let text = String::from_utf8_lossy(&chunk.data);
    assert!(
        text.contains("GUEST READY") && text.contains("round 1 ok"),
        "{text}"
    );
    let more = via_n2.vm_logs("web-1", chunk.next_offset, false, 0).await?;
    assert!(more.next_offset >= chunk.next_offset);
    let tail = via_n2.vm_logs("web-1", 0, true, 64).await?;
    assert!(tail.data.len() <= 64 && tail.next_offset >= chunk.next_offset);
    // `vm console` through n2 (it relays to n1): typed lines reach the guest, which answers.
    let mut console = std::process::Command::new(paddock_tests::binaries().join("paddock"))
        .args(["--endpoint", &real.cluster.nodes[1].address])
        .arg("--certs-dir")
        .arg(&real.cluster.certs.dir)
        .args(["vm", "console", "web-1", "--for", "6s"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    {
        use std::io::Write;
        let mut stdin = console.stdin.take().expect("piped stdin");
        stdin.write_all(b"hello paddock\r")?;
    }
    let answer = console.wait_with_output()?;
    let printed = String::from_utf8_lossy(&answer.stdout);
    assert!(
        answer.status.success() && printed.contains("GUEST typed hello paddock"),
        "{printed}\n{}",
        String::from_utf8_lossy(&answer.stderr)
    );
    // Its own disk: a qcow2 file under the node's VM directory, attached as vda.
    let host = &real.hosts.hosts[0];
    let disk = host.paddock_dir().join("vms/web-1/disk0.qcow2");
    assert!(disk.exists(), "{} missing", disk.display());
    let xml = host.virsh(&["dumpxml", "web-1"])?;
    assert!(
        xml.contains("disk0.qcow2") && xml.contains("<target dev='vda' bus='virtio'/>"),
        "{xml}"
    );
    // A virtio NIC on the node's network, its MAC stable.
    let mac = mac_in(&xml).expect("a NIC with a MAC");
    assert!(mac.starts_with("52:54:00:"), "{mac}");
    assert!(xml.contains("<source bridge='vmbr0'/>"), "{xml}");

    // Restarted: the same MAC and disk, the guest boots again.
    client.vm_set_desired("web-1", false).await?;
    wait_for!(LONG, "web-1 stopped", {
        Ok(vm_summary(&mut client, "web-1").await?.state == "stopped")
    });
    client.vm_set_desired("web-1", true).await?;
    real.verifying("web-1", 1).await?;
    let again = host.virsh(&["dumpxml", "web-1"])?;
    assert!(again.contains(&mac), "the MAC changed across a restart");

    // Deleted: the domain and its files go, the image (none here) would stay.
    client.vm_delete("web-1").await?;
    wait_for!(LONG, "web-1 gone from n1", {
        Ok(!host.paddock_dir().join("vms/web-1").exists() && host.running_domains().is_empty())
    });
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crashed_qemu_is_seen_at_once_and_restarted() -> anyhow::Result<()> {
    let _serial = serial().await;
    let Some(real) = real(1).await? else {
        return Ok(());
    };
    let mut client = real.client()?;
    create(&mut client, "c1", real.spec(8, 96, "n1", true, "local")).await?;
    real.verifying("c1", 2).await?;
    let pids = real.hosts.hosts[0].qemu_pids();
    assert_eq!(pids.len(), 1, "one QEMU: {pids:?}");
    let killed = Instant::now();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pids[0]).expect("pid"),
        rustix::process::Signal::KILL,
    )?;
    // The lifecycle event wakes the agent: the failure is in the log within a second or so
    // (the agent's periodic pass alone would take up to its interval).
    let mut seen = None;
    wait_for!(Duration::from_secs(10), "c1 reported failed", {
        let detail = client.vm_get("c1", false).await?;
        let failed = detail
            .events
            .iter()
            .any(|e| e.message.contains("failed") || e.message.contains("crash"));
        if failed && seen.is_none() {
            seen = Some(killed.elapsed());
        }
        Ok(failed)
    });
    eprintln!("crash reported after {:?}", seen.unwrap_or_default());
    // Restarted by the HA restart policy.
    real.verifying("c1", 1).await?;
    Ok(())
}

/// Kills `what` on the host running `vm` and checks that the VM runs again on another host,
/// from its shared disk, with its old QEMU gone before the new one started. Returns the time
/// from the fault to the guest verifying its memory again elsewhere.
async fn fault_then_elsewhere(
    real: &mut Real,
    vm: &str,
    fault: impl FnOnce(&mut Real, usize),
) -> anyhow::Result<Duration> {
    let from = real.verifying(vm, 2).await?;
    let i = real.index(&from);
    let mut watch = QemuWatch::default();
    watch.look(&real.hosts);
    let at = Instant::now();
    fault(real, i);
    let mut elsewhere = String::new();
    let deadline = Instant::now() + LONG;
    loop {
        watch.look(&real.hosts);
        if let Ok(Some(node)) = real.running_on(vm).await {
            if node != from {
                elsewhere = node;
            }
        }
        if !elsewhere.is_empty() && real.rounds(&elsewhere, vm).0 >= 1 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{vm} did not run again elsewhere"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = at.elapsed();
    watch.look(&real.hosts);
    if let Some(both) = watch.overlap() {
        anyhow::bail!("{vm}: {both}");
    }
    anyhow::ensure!(
        !real.rounds(&elsewhere, vm).1,
        "BAD round after the restart"
    );
    // The same disk: the shared directory holds one disk for the VM.
    anyhow::ensure!(
        real.shared.join(vm).join("disk0.qcow2").exists(),
        "no shared disk"
    );
    Ok(took)
}

#[tokio::test(flavor = "multi_thread")]
async fn ha_restarts_the_vm_of_a_killed_host_from_its_shared_disk() -> anyhow::Result<()> {
    let _serial = serial().await;
    // Three nodes: the two that survive keep a majority.
    let Some(mut real) = real(3).await? else {
        return Ok(());
    };
    let mut client = real.client()?;
    create(&mut client, "ha-1", real.spec(8, 96, "n3", true, "shared")).await?;
    let took = fault_then_elsewhere(&mut real, "ha-1", |real, i| {
        // The whole host: its node, fencing process, libvirtd and QEMU.
        real.cluster.kill(i);
        real.hosts.kill_host(i);
    })
    .await?;
    eprintln!("host killed → guest verifying again elsewhere after {took:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn fencing_holds_when_only_paddockd_dies_or_stops_or_its_host_is_cut_off(
) -> anyhow::Result<()> {
    let _serial = serial().await;
    let Some(mut real) = real(3).await? else {
        return Ok(());
    };
    let mut client = real.client()?;
    create(&mut client, "f-1", real.spec(8, 96, "n3", true, "shared")).await?;

    // kill -9 paddockd only: libvirtd and QEMU live on, the fencing process ends the QEMU.
    let took =
        fault_then_elsewhere(&mut real, "f-1", |real, i| real.cluster.kill_daemon(i)).await?;
    eprintln!("paddockd killed → elsewhere after {took:?}");
    let fenced = std::fs::read_to_string(real.hosts.hosts[2].paddock_dir().join("fence.log"))?;
    assert!(fenced.contains("destroyed f-1"), "{fenced}");
    // The node comes back (its fencing process is adopted, not doubled) and runs nothing stale.
    real.cluster.start(2)?;
    wait_for!(LONG, "n3 back", Ok(real.cluster.status_of(2).await.is_ok()));
    let fences = real.hosts.hosts[2]
        .pids()
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim() == "paddock-fence")
        })
        .count();
    assert_eq!(fences, 1, "one fencing process per host");

    // SIGSTOP paddockd past its lease: the same, then SIGCONT and it rejoins.
    let took = fault_then_elsewhere(&mut real, "f-1", |real, i| {
        real.cluster.signal_host(i, rustix::process::Signal::STOP);
    })
    .await?;
    eprintln!("paddockd stopped → elsewhere after {took:?}");
    for i in 0..3 {
        real.cluster.signal_host(i, rustix::process::Signal::CONT);
    }

    // The host's network cut: it loses its lease, fences itself, the others restart the VM.
    let mut cut = None;
    let took = fault_then_elsewhere(&mut real, "f-1", |real, i| {
        real.hosts.set_link(i, false).expect("link down");
        cut = Some(i);
    })
    .await?;
    eprintln!("host cut off → elsewhere after {took:?}");
    if let Some(i) = cut {
        real.hosts.set_link(i, true)?;
    }
    Ok(())
}

fn migrate(vm: &str, to: &str, mode: &str, bandwidth: u64) -> pb::MigrationCreateRequest {
    pb::MigrationCreateRequest {
        vm: vm.into(),
        to: to.into(),
        mode: mode.into(),
        bandwidth,
        max_downtime_ms: 300,
        priority: 0,
        request_id: None,
    }
}

async fn ended(client: &mut Client, id: u64) -> anyhow::Result<pb::MigrationInfo> {
    migration_ended(client, id, LONG).await
}

fn mac_in(xml: &str) -> Option<String> {
    xml.split("<mac address='")
        .nth(1)
        .and_then(|rest| rest.split('\'').next())
        .map(String::from)
}

#[tokio::test(flavor = "multi_thread")]
async fn precopy_postcopy_and_auto_move_a_busy_guest_with_its_memory_intact() -> anyhow::Result<()>
{
    let _serial = serial().await;
    let Some(real) = real(2).await? else {
        return Ok(());
    };
    let mut client = real.client()?;
    create(
        &mut client,
        "m-1",
        real.spec(64, 256, "n1", false, "shared"),
    )
    .await?;
    real.verifying("m-1", 2).await?;
    let mac = mac_in(&real.hosts.hosts[0].virsh(&["dumpxml", "m-1"])?);
    for (mode, to) in [("precopy", "n2"), ("postcopy", "n1"), ("auto", "n2")] {
        let id = start_migration(&mut client, migrate("m-1", to, mode, 0)).await?;
        let info = ended(&mut client, id).await?;
        eprintln!(
            "{mode} → {to}: phase {} in {} ms, downtime {:?} ms, {} MiB sent, {} rounds{}",
            info.phase,
            info.total_ms,
            info.downtime_ms,
            info.bytes_transferred >> 20,
            info.round,
            if info.error.is_empty() {
                String::new()
            } else {
                format!(", error: {}", info.error)
            }
        );
        anyhow::ensure!(info.phase == "completed", "{mode}: {info:?}");
        let node = real.verifying("m-1", 2).await?;
        assert_eq!(node, to);
        let i = real.index(to);
        let state = real.hosts.hosts[i].domain_state("m-1").unwrap_or_default();
        assert!(state.starts_with("running"), "{state}");
        // Gone from the source; the same NIC at the destination.
        let source = 1 - i;
        assert!(real.hosts.hosts[source].running_domains().is_empty());
        assert_eq!(
            mac_in(&real.hosts.hosts[i].virsh(&["dumpxml", "m-1"])?),
            mac
        );
        for node in ["n1", "n2"] {
            anyhow::ensure!(
                !real.rounds(node, "m-1").1,
                "BAD round on {node} after {mode}"
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_and_a_killed_destination_roll_back_to_the_running_source() -> anyhow::Result<()> {
    let _serial = serial().await;
    let Some(mut real) = real(3).await? else {
        return Ok(());
    };
    let mut client = real.client()?;
    create(
        &mut client,
        "r-1",
        real.spec(64, 256, "n1", false, "shared"),
    )
    .await?;
    real.verifying("r-1", 2).await?;

    // 1 MiB/s for a guest rewriting 64 MiB per round: it cannot finish before the cancel.
    let id = start_migration(&mut client, migrate("r-1", "n2", "precopy", 1 << 20)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    client.migration_cancel(id).await?;
    let info = ended(&mut client, id).await?;
    assert_eq!(info.phase, "cancelled", "{info:?}");
    assert_eq!(real.verifying("r-1", 2).await?, "n1");
    assert!(
        real.hosts.hosts[1].running_domains().is_empty(),
        "nothing left on n2"
    );

    // The destination host dies mid-transfer: rolled back, the source runs on.
    let id = start_migration(&mut client, migrate("r-1", "n3", "precopy", 1 << 20)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    real.cluster.kill(2);
    real.hosts.kill_host(2);
    let info = ended(&mut client, id).await?;
    assert!(
        matches!(info.phase.as_str(), "failed" | "rolled_back"),
        "{info:?}"
    );
    assert_eq!(real.verifying("r-1", 2).await?, "n1");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_local_disk_moves_with_its_vm_and_drain_empties_a_host_of_five() -> anyhow::Result<()> {
    let _serial = serial().await;
    let Some(real) = real(2).await? else {
        return Ok(());
    };
    let mut client = real.client()?;
    // An image imported once reaches both hosts (the destination needs the base for the
    // non-shared-incremental copy of the overlay).
    let base = real.dir.path().join("base.qcow2");
    let made = std::process::Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2"])
        .arg(&base)
        .arg("64M")
        .status()?;
    anyhow::ensure!(made.success(), "qemu-img create failed");
    let image = client.image_import("base", &base).await?;
    wait_for!(LONG, "both hosts hold the image", {
        Ok(client.images(false).await?[0].holders.len() == 2)
    });
    // Local disk: copied with the memory (non-shared-incremental).
    let mut spec = real.spec(16, 128, "n1", false, "local");
    spec.disks[0].image = "base".into();
    // Quiet between rounds: five guests under TCG share two cores below.
    spec.cmdline.push_str(" ms=300");
    create(&mut client, "l-1", spec).await?;
    real.verifying("l-1", 2).await?;
    let id = start_migration(&mut client, migrate("l-1", "n2", "precopy", 0)).await?;
    let info = ended(&mut client, id).await?;
    anyhow::ensure!(info.phase == "completed", "{info:?}");
    assert_eq!(real.verifying("l-1", 1).await?, "n2");
    // The moved overlay still stands on the image's verified copy on n2.
    let overlay = real.hosts.hosts[1]
        .paddock_dir()
        .join("vms/l-1/disk0.qcow2");
    let info = std::process::Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(&overlay)
        .output()?;
    let info: serde_json::Value = serde_json::from_slice(&info.stdout)?;
    let backing = info["backing-filename"].as_str().unwrap_or_default();
    assert!(
        backing.ends_with(&format!("images/sha256-{}", image.sha256)),
        "{info}"
    );

    // Drain n2 with five VMs on it (small, quiet guests: TCG on 2 cores).
    // One at a time: booting four kernels at once under TCG starves them all.
    for i in 1..=4 {
        let mut spec = real.spec(1, 96, "n2", false, "shared");
        spec.cmdline.push_str(" ms=1000");
        create(&mut client, &format!("d-{i}"), spec).await?;
        real.verifying(&format!("d-{i}"), 1).await?;
    }
    let answer = client.node_drain("n2", false).await?;
    assert_eq!(answer.created.len(), 5, "{answer:?}");
    for created in &answer.created {
        let info = ended(&mut client, created.id).await?;
        anyhow::ensure!(info.phase == "completed", "{info:?}");
    }
    for vm in ["l-1", "d-1", "d-2", "d-3", "d-4"] {
        assert_eq!(real.verifying(vm, 1).await?, "n1");
    }
    assert!(real.hosts.hosts[1].running_domains().is_empty());
    Ok(())
}

/// The first round number the guest printed in `node`'s console of `vm`.
fn first_round(real: &Real, node: &str, vm: &str) -> Option<u64> {
    real.console(node, vm)
        .lines()
        .find_map(|l| l.strip_prefix("round ")?.split(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_source_paddockd_killed_mid_migration_takes_its_job_over_when_back() -> anyhow::Result<()>
{
    let _serial = serial().await;
    let Some(mut real) = real(3).await? else {
        return Ok(());
    };
    // The source is a follower, so the cluster keeps its leader and majority meanwhile.
    let leader = real.cluster.wait_for_leader(LONG).await?;
    let (s, d) = ((leader + 1) % 3, (leader + 2) % 3);
    let (from, to) = (format!("n{}", s + 1), format!("n{}", d + 1));
    let mut client = real.client()?;
    // 1 MiB rewritten per second: pre-copy converges even at 8 MiB/s.
    let mut spec = real.spec(1, 128, &from, false, "shared");
    spec.cmdline.push_str(" ms=1000");
    create(&mut client, "j-1", spec).await?;
    assert_eq!(real.verifying("j-1", 2).await?, from);
    // 8 MiB/s for 128 MiB of guest: libvirtd is still copying when paddockd dies.
    let id = start_migration(&mut client, migrate("j-1", &to, "precopy", 8 << 20)).await?;
    wait_for!(LONG, "the transfer under way", {
        Ok(client.migration_get(id).await?.phase == "transferring")
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    real.cluster.kill_daemon(s);
    real.cluster.start(s)?;
    let info = ended(&mut client, id).await?;
    anyhow::ensure!(info.phase == "completed", "{info:?}");
    assert_eq!(real.verifying("j-1", 2).await?, to);
    // Moved live, not restarted: the guest's rounds go on from where they were on the source.
    let went_on = first_round(&real, &to, "j-1").unwrap_or(0);
    assert!(
        went_on > 2,
        "the guest restarted on {to} (first round {went_on})"
    );
    let log = std::fs::read_to_string(&real.cluster.nodes[s].log_path)?;
    assert!(
        log.contains("taking over the migration"),
        "no takeover in the log"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_link_rolls_back_and_a_killed_leader_does_not_stop_a_migration() -> anyhow::Result<()>
{
    let _serial = serial().await;
    let Some(mut real) = real(3).await? else {
        return Ok(());
    };
    // Source and destination are followers: the leader's host is the one killed below.
    let leader = real.cluster.wait_for_leader(LONG).await?;
    let (s, d) = ((leader + 1) % 3, (leader + 2) % 3);
    let (from, to) = (format!("n{}", s + 1), format!("n{}", d + 1));
    let mut client = real.client()?;
    let mut spec = real.spec(1, 128, &from, false, "shared");
    spec.cmdline.push_str(" ms=1000");
    create(&mut client, "k-1", spec).await?;
    assert_eq!(real.verifying("k-1", 2).await?, from);

    // The destination's link is cut mid-transfer: rolled back, the source runs on.
    let id = start_migration(&mut client, migrate("k-1", &to, "precopy", 1 << 20)).await?;
    wait_for!(LONG, "the transfer under way", {
        Ok(client.migration_get(id).await?.phase == "transferring")
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    real.hosts.set_link(d, false)?;
    let info = ended(&mut client, id).await?;
    assert!(
        matches!(info.phase.as_str(), "failed" | "rolled_back"),
        "{info:?}"
    );
    assert_eq!(real.verifying("k-1", 2).await?, from);
    real.hosts.set_link(d, true)?;
    wait_for!(LONG, format!("{to} ready again"), {
        Ok(client
            .node_list(false)
            .await?
            .iter()
            .any(|n| n.name == to && n.state == "ready"))
    });

    // The leader dies mid-transfer: the next leader drives the migration to its end. (libvirt
    // may still be tearing the cut migration down: such a start is refused, saying so.)
    let deadline = Instant::now() + LONG;
    let id = 'started: loop {
        let id = start_migration(&mut client, migrate("k-1", &to, "precopy", 16 << 20)).await?;
        loop {
            let info = client.migration_get(id).await?;
            if info.phase == "transferring" {
                break 'started id;
            }
            if info.ended_ms > 0 {
                anyhow::ensure!(info.error.contains("still tearing down"), "{info:?}");
                break;
            }
            anyhow::ensure!(Instant::now() < deadline, "never transferring: {info:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    real.cluster.kill(leader);
    let info = ended(&mut client, id).await?;
    anyhow::ensure!(info.phase == "completed", "{info:?}");
    assert_eq!(real.verifying("k-1", 2).await?, to);
    // One copy: running on the destination, gone from the source.
    assert_eq!(real.hosts.hosts[d].running_domains(), ["k-1"]);
    assert!(real.hosts.hosts[s].running_domains().is_empty());
    Ok(())
}
