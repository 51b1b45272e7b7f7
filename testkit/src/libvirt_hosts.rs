//! Real libvirt hosts on one machine, for the real-QEMU tests and the chaos harness.
//!
//! Each host is a network namespace (`{tag}h{N}`, address `10.77.{subnet}.N`, a veth into a
//! bridge in the namespace `{tag}sw`, which this machine reaches at `.254`, so tests reach every
//! host and a host's network can be cut by taking its veth down) with its own mount and UTS namespace, where a
//! libvirtd runs with private `/etc/libvirt`, `/run/libvirt`, `/var/lib/libvirt`,
//! `/var/log/libvirt`, its own host UUID and host name: libvirt refuses to migrate to "the same
//! host" otherwise. Paddock's node for that host runs in the same network namespace
//! ([`LibvirtHost::launcher`]) and reaches its libvirtd through the daemon's unix socket.
//!
//! Needs root, iproute2, util-linux (nsenter, unshare), openssl and libvirtd + QEMU
//! (`testkit/libvirt/install.sh` installs them). [`LibvirtHosts::check`] says what is missing.
//! Everything is torn down by PID and name on drop, also after a failed test.
//!
//! Facts this relies on are measured in `shared/recipes/libvirt-pair.md`: `stdio_handler =
//! "file"` (no virtlogd without systemd), `user = "root"` (/dev/kvm is root-only; otherwise
//! libvirt re-probes QEMU on every call), `cgroup_controllers = []` (two daemons number their
//! domains alike), `-p` pid file inside the private /run/libvirt.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::local_cluster::NodeHost;

/// Where a host's Paddock node keeps its data, as the node sees it (every host alike, as
/// on real hosts; this machine sees host N's at `ROOT/hN/paddock`).
pub const PADDOCK_DIR: &str = "/var/lib/paddock";

/// Set to `1` to run the tests that need real libvirt hosts (they take minutes).
pub const SWITCH: &str = "PADDOCK_LIBVIRT_TESTS";

/// One libvirt host.
#[derive(Debug)]
pub struct LibvirtHost {
    /// `h1`, `h2`, ...: also its host name.
    pub name: String,
    pub netns: String,
    /// The host's address inside the test network.
    pub address: String,
    /// The host's private directories (`etc`, `run`, `lib`, `log`) and its libvirtd's output.
    pub dir: PathBuf,
    /// The veth end in the root namespace (down = host cut off).
    pub link: String,
    libvirtd: Option<Child>,
}

impl LibvirtHost {
    /// The URI Paddock (and virsh) on this machine use for this host's libvirtd.
    pub fn uri(&self) -> String {
        format!(
            "qemu:///system?socket={}",
            self.dir.join("run/libvirt-sock").display()
        )
    }

    /// Command prefix that runs a program on this host: in its libvirtd's network, mount
    /// and UTS namespaces (so it sees the host's private directories).
    pub fn launcher(&self) -> Vec<String> {
        let pid = self.libvirtd.as_ref().map_or(0, Child::id);
        vec![
            "nsenter".into(),
            format!("--target={pid}"),
            "--net".into(),
            "--mount".into(),
            "--uts".into(),
            "--".into(),
        ]
    }

    /// Adds a bridge `name` inside this host (what its VMs' NICs join with
    /// `--vm-network bridge:NAME`).
    pub fn add_bridge(&self, name: &str) -> anyhow::Result<()> {
        let ns = self.netns.as_str();
        run("ip", &["-n", ns, "link", "add", name, "type", "bridge"])?;
        // The guests' gateway: the host learns a guest's MAC and IP when it asks for it,
        // which is where libvirt's ARP source finds the guest's address.
        run("ip", &["-n", ns, "addr", "add", GUEST_GATEWAY, "dev", name])?;
        run("ip", &["-n", ns, "link", "set", name, "up"])
    }

    /// This host's Paddock data directory as this machine sees it.
    pub fn paddock_dir(&self) -> PathBuf {
        self.dir.join("paddock")
    }

    /// A Paddock node on this host, with the libvirt driver on this host's libvirtd.
    pub fn node_host(&self, extra: &[String]) -> NodeHost {
        let mut args = vec![
            "--driver".to_string(),
            "libvirt".into(),
            "--libvirt-uri".into(),
            "qemu:///system".into(),
        ];
        args.extend(extra.iter().cloned());
        NodeHost {
            address: self.address.clone(),
            launcher: self.launcher(),
            data_dir_inside: Some(PADDOCK_DIR.into()),
            args,
        }
    }

    /// PIDs of every process in this host's network namespace (its libvirtd, QEMUs, node).
    pub fn pids(&self) -> Vec<i32> {
        let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.netns])
            .output()
        else {
            return Vec::new();
        };
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }

    /// PIDs of this host's QEMU processes.
    pub fn qemu_pids(&self) -> Vec<i32> {
        self.pids()
            .into_iter()
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim().starts_with("qemu-system"))
            })
            .collect()
    }

    /// Runs virsh against this host's libvirtd.
    pub fn virsh(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("virsh")
            .arg("-c")
            .arg(self.uri())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("cannot run virsh")?;
        if !out.status.success() {
            bail!(
                "virsh {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Names of the domains this host's libvirtd runs.
    pub fn running_domains(&self) -> Vec<String> {
        self.virsh(&["list", "--name"])
            .map(|out| {
                out.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether this host's QEMU boots `guest` under `domain_type` (`kvm`, `qemu`): a transient
    /// domain must print the guest's `GUEST READY` within `within`. Some KVMs run only
    /// firmware guests, so "/dev/kvm exists" proves nothing; booting does.
    pub fn boots(&self, guest: &TestGuest, domain_type: &str, within: Duration) -> bool {
        let name = format!("paddock-probe-{domain_type}");
        let log = self.dir.join(format!("log/{name}.log"));
        let _ = std::fs::remove_file(&log);
        let xml = format!(
            "<domain type='{domain_type}'><name>{name}</name><memory unit='MiB'>128</memory><vcpu>1</vcpu>\
             <os><type arch='x86_64'>hvm</type><kernel>{}</kernel><initrd>{}</initrd><cmdline>{}</cmdline></os>\
             <devices><serial type='file'><source path='/var/log/libvirt/{name}.log'/><target port='0'/></serial></devices></domain>",
            guest.kernel.display(),
            guest.initrd.display(),
            TestGuest::cmdline(1),
        );
        let file = self.dir.join(format!("{name}.xml"));
        if std::fs::write(&file, xml).is_err()
            || self
                .virsh(&["create", &file.display().to_string()])
                .is_err()
        {
            return false;
        }
        let deadline = Instant::now() + within;
        let mut booted = false;
        while Instant::now() < deadline && !booted {
            booted = std::fs::read_to_string(&log).is_ok_and(|t| t.contains("GUEST READY"));
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = self.virsh(&["destroy", &name]);
        booted
    }

    /// `virsh domstate --reason NAME`, e.g. `paused (user)`.
    pub fn domain_state(&self, name: &str) -> Option<String> {
        self.virsh(&["domstate", "--reason", name])
            .ok()
            .map(|s| s.trim().to_string())
    }
}

/// N libvirt hosts; torn down on drop.
#[derive(Debug)]
pub struct LibvirtHosts {
    pub root: PathBuf,
    pub hosts: Vec<LibvirtHost>,
    /// The certificates libvirtd and QEMU use for migration TLS (`pki/`, `pki/qemu/`).
    pub pki: PathBuf,
    /// Storage every host sees at the same path (what `--shared-storage` names), declared
    /// to libvirt as shared (`shared_filesystems`), as an NFS or CephFS mount would be.
    pub shared: PathBuf,
    /// The network namespace with the bridge (`{tag}sw`).
    bridge: String,
}

/// Runs `program args` and fails with its stderr.
fn run(program: &str, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl LibvirtHosts {
    /// Why real libvirt hosts cannot be set up here, if they cannot: a reason to print when
    /// skipping.
    pub fn check() -> Result<(), String> {
        if std::env::var(SWITCH).as_deref() != Ok("1") {
            return Err(format!(
                "set {SWITCH}=1 to run the real-QEMU tests (root, libvirtd and QEMU needed: testkit/libvirt/install.sh)"
            ));
        }
        Self::can_run()
    }

    /// Whether this machine can run libvirt hosts at all: root and the programs needed.
    pub fn can_run() -> Result<(), String> {
        if !rustix::process::geteuid().is_root() {
            return Err("libvirt hosts need root (network namespaces, libvirtd)".into());
        }
        for program in [
            "libvirtd",
            "virsh",
            "qemu-system-x86_64",
            "qemu-img",
            "ip",
            "nsenter",
            "unshare",
            "openssl",
        ] {
            if !have(program) {
                return Err(format!(
                    "{program} is not installed (testkit/libvirt/install.sh installs QEMU, libvirt and the tools)"
                ));
            }
        }
        Ok(())
    }

    /// Sets up `n` hosts under `root` (a fresh directory).
    pub fn up(root: &Path, n: usize) -> anyhow::Result<LibvirtHosts> {
        assert!((1..=16).contains(&n), "1–16 hosts");
        std::fs::create_dir_all(root)?;
        let tag = format!("pk{:03x}", fastrand::u16(..4096));
        let subnet = fastrand::u8(1..=250);
        let mut hosts = LibvirtHosts {
            root: root.to_path_buf(),
            hosts: Vec::new(),
            pki: root.join("pki"),
            shared: root.join("shared"),
            bridge: format!("{tag}sw"),
        };
        std::fs::create_dir_all(&hosts.shared)?;
        let addresses: Vec<String> = (1..=n).map(|i| format!("10.77.{subnet}.{i}")).collect();
        make_certs(&hosts.pki, &addresses)?;
        // The bridge lives in a network namespace of its own: in the root namespace, a
        // firewall (Docker's FORWARD policy DROP with bridge-nf-call-iptables) may drop
        // bridged traffic. This machine reaches it through one more veth, at .254.
        run("ip", &["netns", "add", &hosts.switch()])?;
        let sw = ["-n", hosts.switch_ref()];
        run(
            "ip",
            &[&sw[..], &["link", "add", "sw0", "type", "bridge"]].concat(),
        )?;
        run("ip", &[&sw[..], &["link", "set", "sw0", "up"]].concat())?;
        let here = format!("{tag}up");
        run(
            "ip",
            &[
                "link",
                "add",
                &here,
                "type",
                "veth",
                "peer",
                "name",
                "uplink",
                "netns",
                hosts.switch_ref(),
            ],
        )?;
        run(
            "ip",
            &[&sw[..], &["link", "set", "uplink", "master", "sw0", "up"]].concat(),
        )?;
        run(
            "ip",
            &[
                "addr",
                "add",
                &format!("10.77.{subnet}.254/24"),
                "dev",
                &here,
            ],
        )?;
        run("ip", &["link", "set", &here, "up"])?;
        for (i, address) in addresses.iter().enumerate() {
            let name = format!("h{}", i + 1);
            let host = LibvirtHost {
                netns: format!("{tag}{name}"),
                link: format!("{tag}{name}b"),
                dir: root.join(&name),
                address: address.clone(),
                name,
                libvirtd: None,
            };
            hosts.hosts.push(host);
            hosts.network(i)?;
        }
        for i in 0..n {
            hosts.start_libvirtd(i, i + 1)?;
        }
        for host in &hosts.hosts {
            wait_for_libvirtd(host)?;
        }
        Ok(hosts)
    }

    fn network(&self, i: usize) -> anyhow::Result<()> {
        let host = &self.hosts[i];
        let inside = format!("{}e", host.netns);
        run("ip", &["netns", "add", &host.netns])?;
        run(
            "ip",
            &[
                "link", "add", &host.link, "type", "veth", "peer", "name", &inside,
            ],
        )?;
        run("ip", &["link", "set", &inside, "netns", &host.netns])?;
        run(
            "ip",
            &["link", "set", &host.link, "netns", self.switch_ref()],
        )?;
        let sw = ["-n", self.switch_ref()];
        run(
            "ip",
            &[&sw[..], &["link", "set", &host.link, "master", "sw0", "up"]].concat(),
        )?;
        let ns = ["-n", host.netns.as_str()];
        let cidr = format!("{}/24", host.address);
        run(
            "ip",
            &[&ns[..], &["addr", "add", &cidr, "dev", &inside]].concat(),
        )?;
        run("ip", &[&ns[..], &["link", "set", &inside, "up"]].concat())?;
        run("ip", &[&ns[..], &["link", "set", "lo", "up"]].concat())?;
        Ok(())
    }

    fn start_libvirtd(&mut self, i: usize, uuid_tail: usize) -> anyhow::Result<()> {
        let pki = self.pki.clone();
        let shared = self.shared.clone();
        let hosts_file = self.hosts_file();
        let host = &mut self.hosts[i];
        let d = &host.dir;
        for sub in ["run", "log/qemu", "lib", "etc", "paddock"] {
            std::fs::create_dir_all(d.join(sub))?;
        }
        run(
            "cp",
            &["-a", "/etc/libvirt/.", &d.join("etc").display().to_string()],
        )?;
        if Path::new("/var/lib/libvirt").exists() {
            run(
                "cp",
                &[
                    "-a",
                    "/var/lib/libvirt/.",
                    &d.join("lib").display().to_string(),
                ],
            )?;
        }
        std::fs::write(d.join("hosts"), &hosts_file)?;
        append(
            &d.join("etc/libvirtd.conf"),
            &format!(
                "\nlisten_tcp = 1\nauth_tcp = \"none\"\nlisten_tls = 1\nlisten_addr = \"{addr}\"\n\
                 ca_file = \"{pki}/cacert.pem\"\ncert_file = \"{pki}/servercert.pem\"\n\
                 key_file = \"{pki}/serverkey.pem\"\n\
                 host_uuid = \"00000000-0000-4000-8000-{uuid_tail:012x}\"\n\
                 log_outputs = \"3:file:/var/log/libvirt/libvirtd.log\"\n",
                addr = host.address,
                pki = pki.display(),
            ),
        )?;
        append(
            &d.join("etc/qemu.conf"),
            &format!(
                "\nuser = \"root\"\ngroup = \"root\"\nstdio_handler = \"file\"\n\
                 cgroup_controllers = [ ]\nmigration_host = \"{addr}\"\n\
                 migrate_tls_x509_cert_dir = \"{pki}/qemu\"\n\
                 shared_filesystems = [ \"{shared}\" ]\n",
                addr = host.address,
                pki = pki.display(),
                shared = shared.display(),
            ),
        )?;
        for dir in [
            "/run/libvirt",
            "/var/log/libvirt",
            "/var/lib/libvirt",
            "/etc/libvirt",
            PADDOCK_DIR,
        ] {
            std::fs::create_dir_all(dir)?;
        }
        spawn_libvirtd(host)
    }

    fn hosts_file(&self) -> String {
        let mut text = String::from("127.0.0.1 localhost\n");
        for host in &self.hosts {
            text.push_str(&format!("{} {}\n", host.address, host.name));
        }
        text
    }

    /// kill -9 every process of host `i` (node, fencing, libvirtd, QEMU): the host is gone.
    pub fn kill_host(&mut self, i: usize) {
        for _ in 0..3 {
            for pid in self.hosts[i].pids() {
                kill9(pid);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(mut child) = self.hosts[i].libvirtd.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Restarts host `i`'s libvirtd after [`kill_host`] (its domains are gone, as after a reboot).
    pub fn restart_libvirtd(&mut self, i: usize) -> anyhow::Result<()> {
        let pidfile = self.hosts[i].dir.join("run/libvirtd.pid");
        let _ = std::fs::remove_file(pidfile);
        let _ = std::fs::remove_file(self.hosts[i].dir.join("run/libvirt-sock"));
        spawn_libvirtd(&mut self.hosts[i])?;
        wait_for_libvirtd(&self.hosts[i])
    }

    /// Cuts host `i` off the network (`up = false`) or reconnects it.
    pub fn set_link(&self, i: usize, up: bool) -> anyhow::Result<()> {
        run(
            "ip",
            &[
                "-n",
                self.switch_ref(),
                "link",
                "set",
                &self.hosts[i].link,
                if up { "up" } else { "down" },
            ],
        )
    }

    /// `kvm` if the first host's KVM boots `guest` (within 20 s), else `qemu` (TCG): some KVMs
    /// run only firmware guests, so "/dev/kvm exists" proves nothing.
    pub fn probe_domain_type(&self, guest: &TestGuest) -> &'static str {
        let kvm = Path::new("/dev/kvm").exists()
            && self.hosts[0].boots(guest, "kvm", Duration::from_secs(20));
        if kvm {
            "kvm"
        } else {
            "qemu"
        }
    }

    /// The flags every Paddock node on these hosts needs: the domain type, the shared storage
    /// and how the libvirtds reach each other for migration.
    pub fn node_args(&self, domain_type: &str) -> Vec<String> {
        vec![
            "--libvirt-domain-type".into(),
            domain_type.into(),
            "--shared-storage".into(),
            self.shared.display().to_string(),
            "--libvirt-migrate-uri".into(),
            self.peer_uri_tls(),
        ]
    }

    /// The network namespace holding the bridge between the hosts.
    fn switch(&self) -> String {
        self.bridge.clone()
    }

    fn switch_ref(&self) -> &str {
        &self.bridge
    }

    fn tag(&self) -> &str {
        self.bridge.trim_end_matches("sw")
    }

    /// `qemu+tls://{host}/system?pkipath=…`: how one host's libvirtd reaches another's for
    /// migration, over libvirt's TLS.
    pub fn peer_uri_tls(&self) -> String {
        format!("qemu+tls://{{host}}/system?pkipath={}", self.pki.display())
    }
}

impl Drop for LibvirtHosts {
    fn drop(&mut self) {
        for host in &self.hosts {
            for name in host.running_domains() {
                let _ = host.virsh(&["destroy", &name]);
            }
        }
        for i in 0..self.hosts.len() {
            self.kill_host(i);
            let _ = run("ip", &["netns", "del", &self.hosts[i].netns]);
        }
        let _ = run("ip", &["netns", "del", &self.bridge]);
        let _ = run("ip", &["link", "del", &format!("{}up", self.tag())]);
    }
}

/// Starts `host`'s libvirtd in its namespaces with its private directories bind-mounted.
fn spawn_libvirtd(host: &mut LibvirtHost) -> anyhow::Result<()> {
    let d = host.dir.display();
    let script = format!(
        "hostname {name} && mount --bind {d}/hosts /etc/hosts && mount --bind {d}/etc /etc/libvirt \
         && mount --bind {d}/run /run/libvirt && mount --bind {d}/lib /var/lib/libvirt \
         && mount --bind {d}/log /var/log/libvirt && mount --bind {d}/paddock {PADDOCK_DIR} \
         && exec libvirtd --listen -p /run/libvirt/libvirtd.pid",
        name = host.name,
    );
    let out = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(host.dir.join("libvirtd.out"))?;
    let child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", host.netns))
        .args(["unshare", "--mount", "--uts", "--propagation", "private"])
        .args(["sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("cannot start libvirtd")?;
    host.libvirtd = Some(child);
    Ok(())
}

fn kill9(pid: i32) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

fn append(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

fn wait_for_libvirtd(host: &LibvirtHost) -> anyhow::Result<()> {
    // The first start probes QEMU's capabilities (about 12 s); later ones take about a second.
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        if host.virsh(&["version"]).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = std::fs::read_to_string(host.dir.join("libvirtd.out")).unwrap_or_default();
    bail!("libvirtd of {} did not answer in 90 s: {out}", host.name)
}

/// The QEMU processes seen on every host, polled from this machine: (host index, pid, first
/// seen, gone). With one VM under test, two entries that overlap in time are two copies of it
/// running at once.
#[derive(Debug, Default)]
pub struct QemuWatch {
    pub seen: Vec<(usize, i32, Instant, Option<Instant>)>,
}

impl QemuWatch {
    /// One look at every host's QEMU processes.
    pub fn look(&mut self, hosts: &LibvirtHosts) {
        let now = Instant::now();
        for (i, host) in hosts.hosts.iter().enumerate() {
            let pids = host.qemu_pids();
            for pid in &pids {
                let known = self
                    .seen
                    .iter()
                    .any(|(h, p, _, end)| *h == i && p == pid && end.is_none());
                if !known {
                    self.seen.push((i, *pid, now, None));
                }
            }
            for entry in self.seen.iter_mut().filter(|e| e.0 == i && e.3.is_none()) {
                if !pids.contains(&entry.1) {
                    entry.3 = Some(now);
                }
            }
        }
    }

    /// The first two QEMUs seen alive at once, if any.
    pub fn overlap(&self) -> Option<String> {
        for a in &self.seen {
            for b in &self.seen {
                let same = a.0 == b.0 && a.1 == b.1;
                if !same && a.2 <= b.2 && a.3.is_none_or(|end| end > b.2) {
                    return Some(format!(
                        "two QEMUs ran at once: host {} pid {} (gone {:?}) and host {} pid {} (seen {:?})",
                        a.0, a.1, a.3, b.0, b.1, b.2
                    ));
                }
            }
        }
        None
    }
}

/// One run of a QEMU process, by VM name, as [`QemuRuns`] saw it (wall-clock ms). `start_ms` is
/// the last look before it was first seen and `end_ms` the first look it was gone at, so the
/// interval covers the whole life of the process (up to one poll more).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QemuRun {
    pub host: usize,
    pub pid: i32,
    pub vm: String,
    pub start_ms: u64,
    pub end_ms: Option<u64>,
}

/// Every QEMU of every host, by VM name, polled from this machine with one scan of `/proc`
/// per look (processes are told apart by their network namespace): the chaos harness's
/// evidence for "no VM ran on two hosts at once" with real QEMU.
#[derive(Debug)]
pub struct QemuRuns {
    /// Network namespace inode of each host.
    namespaces: Vec<u64>,
    pub runs: Vec<QemuRun>,
    last_ms: u64,
}

impl QemuRuns {
    pub fn new(hosts: &LibvirtHosts) -> QemuRuns {
        use std::os::unix::fs::MetadataExt;
        let namespaces = hosts
            .hosts
            .iter()
            .map(|h| {
                std::fs::metadata(format!("/run/netns/{}", h.netns))
                    .map(|m| m.ino())
                    .unwrap_or(0)
            })
            .collect();
        QemuRuns {
            namespaces,
            runs: Vec::new(),
            last_ms: wall_ms(),
        }
    }

    /// One look at every QEMU process of the hosts.
    pub fn look(&mut self) {
        let now = wall_ms();
        let mut alive: Vec<(usize, i32, String)> = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<i32>().ok())
            else {
                continue;
            };
            let is_qemu = std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with("qemu-system"));
            if !is_qemu {
                continue;
            }
            let ns = std::fs::read_link(format!("/proc/{pid}/ns/net"))
                .ok()
                .and_then(|l| {
                    let l = l.to_string_lossy().into_owned();
                    l.strip_prefix("net:[")?
                        .strip_suffix(']')?
                        .parse::<u64>()
                        .ok()
                });
            let Some(host) = ns.and_then(|ns| self.namespaces.iter().position(|h| *h == ns)) else {
                continue;
            };
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            alive.push((host, pid, vm_of_cmdline(&cmdline)));
        }
        for (host, pid, vm) in &alive {
            let known = self
                .runs
                .iter()
                .any(|r| r.host == *host && r.pid == *pid && r.end_ms.is_none());
            if !known {
                self.runs.push(QemuRun {
                    host: *host,
                    pid: *pid,
                    vm: vm.clone(),
                    start_ms: self.last_ms,
                    end_ms: None,
                });
            }
        }
        for run in self.runs.iter_mut().filter(|r| r.end_ms.is_none()) {
            if !alive
                .iter()
                .any(|(h, p, _)| *h == run.host && *p == run.pid)
            {
                run.end_ms = Some(now);
            }
        }
        self.last_ms = now;
    }
}

/// The VM name of a QEMU command line (`-name guest=NAME,...`).
fn vm_of_cmdline(cmdline: &[u8]) -> String {
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    args.windows(2)
        .find(|w| w[0] == b"-name")
        .map(|w| {
            let value = String::from_utf8_lossy(w[1]);
            let first = value.split(',').next().unwrap_or_default();
            first.strip_prefix("guest=").unwrap_or(first).to_string()
        })
        .unwrap_or_default()
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One CA, one server certificate valid for every host address (libvirtd and QEMU), one
/// client certificate; laid out as libvirt (`pki/`, `?pkipath=`) and QEMU (`pki/qemu/`) want.
fn make_certs(pki: &Path, addresses: &[String]) -> anyhow::Result<()> {
    let qemu = pki.join("qemu");
    std::fs::create_dir_all(&qemu)?;
    let p = |name: &str| pki.join(name).display().to_string();
    run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "7",
            "-subj",
            "/CN=paddock test libvirt CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            &p("cakey.pem"),
            "-out",
            &p("cacert.pem"),
        ],
    )?;
    let san = addresses
        .iter()
        .map(|a| format!("IP:{a}"))
        .collect::<Vec<_>>()
        .join(",");
    for (who, eku) in [("server", "serverAuth"), ("client", "clientAuth")] {
        let ext = pki.join(format!("{who}.ext"));
        let mut text = format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage={eku}\n"
        );
        if who == "server" {
            text.push_str(&format!("subjectAltName={san}\n"));
        }
        std::fs::write(&ext, text)?;
        run(
            "openssl",
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN=paddock test {who}"),
                "-keyout",
                &p(&format!("{who}key.pem")),
                "-out",
                &p(&format!("{who}.csr")),
            ],
        )?;
        run(
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                &p(&format!("{who}.csr")),
                "-CA",
                &p("cacert.pem"),
                "-CAkey",
                &p("cakey.pem"),
                "-CAcreateserial",
                "-days",
                "7",
                "-extfile",
                &ext.display().to_string(),
                "-out",
                &p(&format!("{who}cert.pem")),
            ],
        )?;
        std::fs::copy(
            pki.join(format!("{who}cert.pem")),
            qemu.join(format!("{who}-cert.pem")),
        )?;
        std::fs::copy(
            pki.join(format!("{who}key.pem")),
            qemu.join(format!("{who}-key.pem")),
        )?;
    }
    std::fs::copy(pki.join("cacert.pem"), qemu.join("ca-cert.pem"))?;
    Ok(())
}

/// The address a host's VM bridge has (the test guests' gateway).
pub const GUEST_GATEWAY: &str = "10.77.0.1/24";

/// The test guest: a Debian kernel and an initramfs whose `/init` is `testkit/guest/init.c`.
#[derive(Debug, Clone)]
pub struct TestGuest {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
}

impl TestGuest {
    /// Builds the guest into `cache` (reused when present): downloads the kernel package with
    /// apt (through `testkit/libvirt/install.sh`'s private sources list when it exists) and
    /// compiles `/init` statically with gcc.
    pub fn build(cache: &Path) -> anyhow::Result<TestGuest> {
        std::fs::create_dir_all(cache)?;
        let guest = TestGuest {
            kernel: cache.join("vmlinuz"),
            initrd: cache.join("initramfs.gz"),
        };
        let first_module = GUEST_MODULES[0].rsplit('/').next().unwrap_or_default();
        let modules_fresh = cache
            .join("modules")
            .join(format!("10-{first_module}.ko"))
            .is_file();
        if !guest.kernel.exists() || !modules_fresh {
            fetch_kernel(cache)?;
        }
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/init.c");
        // Rebuilt when /init or the modules changed after it was built.
        let newest_input = [source.clone(), cache.join("modules")]
            .iter()
            .filter_map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .max();
        let stale = match (std::fs::metadata(&guest.initrd), newest_input) {
            (Ok(built), Some(input)) => built.modified()? < input,
            _ => true,
        };
        if stale {
            let root = cache.join("root");
            std::fs::create_dir_all(root.join("sys"))?;
            let _ = std::fs::remove_dir_all(root.join("m"));
            std::fs::create_dir_all(root.join("m"))?;
            for module in std::fs::read_dir(cache.join("modules"))? {
                let module = module?;
                std::fs::copy(module.path(), root.join("m").join(module.file_name()))?;
            }
            run(
                "gcc",
                &[
                    "-O2",
                    "-static",
                    "-o",
                    &root.join("init").display().to_string(),
                    &source.display().to_string(),
                ],
            )?;
            let script = format!(
                "cd {} && {{ printf 'init\\nsys\\nm\\n'; ls m/*.ko; }} | cpio -o -H newc 2>/dev/null | gzip -1 > {}",
                root.display(),
                guest.initrd.display()
            );
            run("sh", &["-c", &script])?;
        }
        Ok(guest)
    }

    /// A direct-boot VM of this guest rewriting `mib` MiB per round, preferring node `on`,
    /// with `disks` (e.g. one 64 MiB disk) kept by `disk_policy` (`local` or `shared`).
    pub fn spec(
        &self,
        mib: u32,
        memory_mib: u64,
        on: &str,
        ha: bool,
        disk_policy: &str,
        disks: Vec<paddock_api::pb::Disk>,
    ) -> paddock_api::pb::VmSpec {
        paddock_api::pb::VmSpec {
            cpus: 1,
            memory_mib,
            ha,
            prefer: vec![on.into()],
            kernel: self.kernel.display().to_string(),
            initrd: self.initrd.display().to_string(),
            cmdline: TestGuest::cmdline(mib),
            env: [("role".to_string(), "test".to_string())].into(),
            disk_policy: disk_policy.into(),
            disks,
            ..Default::default()
        }
    }

    /// The kernel command line for a guest rewriting `mib` MiB per round. The Debian kernel
    /// with this initramfs needs about 96 MiB of guest memory to boot (with 64 MiB it
    /// panics before printing anything, and `panic=-1` reboots it).
    pub fn cmdline(mib: u32) -> String {
        format!("console=ttyS0 quiet panic=-1 mib={mib}")
    }
}

/// The kernel modules the test guest loads for its virtio NIC (Debian builds them as modules),
/// in load order.
const GUEST_MODULES: &[&str] = &[
    "drivers/virtio/virtio_ring",
    "drivers/virtio/virtio",
    "drivers/virtio/virtio_pci_legacy_dev",
    "drivers/virtio/virtio_pci_modern_dev",
    "drivers/virtio/virtio_pci",
    "net/core/failover",
    "drivers/net/net_failover",
    "drivers/net/virtio_net",
];

fn fetch_kernel(cache: &Path) -> anyhow::Result<()> {
    let apt_dir =
        std::env::var("PADDOCK_APT_DIR").unwrap_or_else(|_| "/var/tmp/paddock-apt".into());
    let apt = if Path::new(&apt_dir).join("sources.list").exists() {
        format!(
            "-o Dir::Etc::sourcelist={apt_dir}/sources.list -o Dir::Etc::sourceparts=- -o Dir::State::lists={apt_dir}/lists -o Dir::Cache::archives={apt_dir}/archives"
        )
    } else {
        String::new()
    };
    let script = format!(
        "set -e; cd {dir}; k=$(apt-cache {apt} depends linux-image-amd64 | awk '/Depends: linux-image-[0-9]/{{print $2; exit}}'); \
         [ -n \"$k\" ] || {{ echo 'no linux-image package known to apt (run apt-get update or testkit/libvirt/install.sh)' >&2; exit 1; }}; \
         apt-get {apt} download -qq $k 2>/dev/null; dpkg-deb --fsys-tarfile ${{k}}_*.deb | tar -xO --wildcards './boot/vmlinuz-*' > vmlinuz.part; \
         rm -rf modules.part; mkdir modules.part; i=10; for m in {modules}; do \
           dpkg-deb --fsys-tarfile ${{k}}_*.deb | tar -xO --wildcards \"./lib/modules/*/kernel/$m.ko\" > modules.part/$i-$(basename $m).ko; i=$((i+1)); done; \
         rm -f ${{k}}_*.deb; rm -rf modules; mv modules.part modules; mv vmlinuz.part vmlinuz",
        dir = cache.display(),
        modules = GUEST_MODULES.join(" "),
    );
    run("sh", &["-c", &script]).context("cannot fetch the test guest's kernel")
}

#[cfg(test)]
mod tests {
    use super::vm_of_cmdline;

    #[test]
    fn the_vm_name_comes_from_qemus_command_line() {
        let cmdline = b"/usr/bin/qemu-system-x86_64\0-name\0guest=web-1,debug-threads=on\0-S\0";
        assert_eq!(vm_of_cmdline(cmdline), "web-1");
        assert_eq!(vm_of_cmdline(b"qemu\0-name\0plain\0"), "plain");
        assert_eq!(vm_of_cmdline(b"qemu\0-m\x00128\0"), "");
    }
}
