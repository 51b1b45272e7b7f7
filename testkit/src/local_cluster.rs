//! A cluster of local `paddockd` processes on 127.0.0.1: what `paddock dev up` and the
//! benchmarks run, and what the integration tests drive (kill -9, restart, join).

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use paddock_api::certs::{CertsDir, Role, CLIENT_HINT};
use paddock_api::client::Client;
use paddock_api::pb::ClusterStatus;

/// Name of the admin client certificate made for a local cluster.
pub const ADMIN: &str = "admin";

/// One `paddockd` process of a [`LocalCluster`].
#[derive(Debug)]
pub struct LocalNode {
    pub name: String,
    /// gRPC address, 127.0.0.1:port.
    pub address: String,
    pub http: String,
    /// HTTPS API and dashboard address, ip:port.
    pub api: String,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    /// Flags added to every start of this node (storage engine, timings...).
    pub extra_args: Vec<String>,
    /// How the node entered the cluster: `--peers ...` or `--join ...`.
    pub bootstrap: Vec<String>,
    /// Where the node runs when not on this machine's loopback ([`NodeHost`]).
    pub host: Option<NodeHost>,
    pub child: Option<Child>,
}

/// A node that runs on a host of its own (a network namespace with its own address, e.g. a
/// [`crate::libvirt_hosts::LibvirtHost`]) instead of on 127.0.0.1.
#[derive(Debug, Clone)]
pub struct NodeHost {
    /// The host's address: the node listens there.
    pub address: String,
    /// Command prefix that runs a program on the host (`nsenter ... --`).
    pub launcher: Vec<String>,
    /// The node's data directory as the node sees it, when the host mounts it elsewhere
    /// (`LocalNode::data_dir` stays where this machine sees it).
    pub data_dir_inside: Option<PathBuf>,
    /// Flags for this node only (its libvirt URI...).
    pub args: Vec<String>,
}

/// Local nodes sharing one certificates directory.
#[derive(Debug)]
pub struct LocalCluster {
    pub dir: PathBuf,
    pub certs: CertsDir,
    pub paddockd: PathBuf,
    pub nodes: Vec<LocalNode>,
}

/// Settings of a new local cluster.
#[derive(Debug, Clone)]
pub struct LocalClusterSpec {
    pub nodes: usize,
    /// First gRPC port; `None` picks free ports.
    pub base_port: Option<u16>,
    /// Flags for every node, e.g. `["--storage", "sled"]`.
    pub extra_args: Vec<String>,
    /// One per node to run the nodes on hosts of their own; empty: all on 127.0.0.1.
    pub hosts: Vec<NodeHost>,
}

impl Default for LocalClusterSpec {
    fn default() -> Self {
        LocalClusterSpec {
            nodes: 3,
            base_port: None,
            extra_args: Vec::new(),
            hosts: Vec::new(),
        }
    }
}

/// The `paddockd` binary next to the running executable (cargo puts all binaries of a
/// workspace in one directory; test executables live one level below, in `deps/`).
pub fn find_paddockd() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the running executable")?;
    let mut dir = exe.parent().map(Path::to_path_buf);
    while let Some(d) = dir {
        let candidate = d.join("paddockd");
        if candidate.is_file() {
            return Ok(candidate);
        }
        dir = d.parent().map(Path::to_path_buf);
        if dir
            .as_deref()
            .is_some_and(|p| p.file_name().is_some_and(|n| n == "target"))
        {
            break;
        }
    }
    bail!(
        "cannot find the paddockd binary next to {}; build it with `cargo build --bins`",
        exe.display()
    )
}

/// A free TCP port on 127.0.0.1 for a node to listen on (released before returning).
///
/// Picked below Linux's ephemeral range (32768–60999 by default): a port from that range can be
/// taken by any outgoing connection's local end while its node is down, and the node could not
/// listen again when it restarts (the chaos harness restarts nodes all the time).
pub fn free_port() -> anyhow::Result<u16> {
    for _ in 0..1000 {
        let port = fastrand::u16(20_000..32_000);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free TCP port found on 127.0.0.1 between 20000 and 32000")
}

impl LocalCluster {
    /// Prepares certificates and node settings in `dir` (reusing existing certificates) without
    /// starting anything.
    pub fn prepare(
        dir: &Path,
        spec: &LocalClusterSpec,
        paddockd: PathBuf,
    ) -> anyhow::Result<LocalCluster> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let certs = CertsDir::new(dir.join("certs"));
        if !certs.ca_cert().exists() {
            certs.init_ca("local")?;
        }
        if !certs.cert(ADMIN).exists() {
            certs.issue_client(ADMIN, Role::Admin)?;
        }
        let mut cluster = LocalCluster {
            dir: dir.to_path_buf(),
            certs,
            paddockd,
            nodes: Vec::new(),
        };
        let mut ports = Vec::new();
        for i in 0..spec.nodes {
            let port = match spec.base_port {
                Some(base) => base + i as u16,
                None => free_port()?,
            };
            ports.push(port);
        }
        if !spec.hosts.is_empty() && spec.hosts.len() != spec.nodes {
            bail!(
                "{} hosts for {} nodes: give one host per node, or none",
                spec.hosts.len(),
                spec.nodes
            );
        }
        let address_of = |i: usize| {
            spec.hosts
                .get(i)
                .map_or("127.0.0.1".to_string(), |h| h.address.clone())
        };
        let peers = (0..spec.nodes)
            .map(|i| format!("n{}={}:{}", i + 1, address_of(i), ports[i]))
            .collect::<Vec<_>>()
            .join(",");
        for (i, port) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let (http_port, api_port) = match spec.base_port {
                Some(base) => (base + 100 + i as u16, base + 200 + i as u16),
                None => (free_port()?, free_port()?),
            };
            cluster.add_node(
                &name,
                *port,
                [http_port, api_port],
                vec!["--peers".into(), peers.clone()],
                spec.extra_args.clone(),
                spec.hosts.get(i).cloned(),
            )?;
        }
        Ok(cluster)
    }

    fn add_node(
        &mut self,
        name: &str,
        port: u16,
        [http_port, api_port]: [u16; 2],
        bootstrap: Vec<String>,
        extra_args: Vec<String>,
        host: Option<NodeHost>,
    ) -> anyhow::Result<usize> {
        let ip = host
            .as_ref()
            .map_or("127.0.0.1".to_string(), |h| h.address.clone());
        if !self.certs.cert(name).exists() {
            self.certs
                .issue_node(name, &[ip.clone(), "localhost".into()])?;
        }
        let data_dir = self.dir.join(name);
        self.nodes.push(LocalNode {
            name: name.to_string(),
            address: format!("{ip}:{port}"),
            http: format!("{ip}:{http_port}"),
            api: format!("{ip}:{api_port}"),
            log_path: self.dir.join(format!("{name}.log")),
            data_dir,
            extra_args,
            bootstrap,
            host,
            child: None,
        });
        Ok(self.nodes.len() - 1)
    }

    /// Adds a node that joins through `via` (an index of a running node); call [`start`] next.
    pub fn add_joining_node(
        &mut self,
        name: &str,
        via: usize,
        extra_args: Vec<String>,
    ) -> anyhow::Result<usize> {
        let via = self.nodes[via].address.clone();
        self.add_node(
            name,
            free_port()?,
            [free_port()?, free_port()?],
            vec!["--join".into(), via],
            extra_args,
            None,
        )
    }

    /// Turns stopped node `i` into a fresh node that joins through node `via`: its data dir is
    /// wiped (it must have been removed from the cluster first) and its next start uses
    /// `--join`.
    pub fn reset_to_join(&mut self, i: usize, via: usize) -> anyhow::Result<()> {
        if self.nodes[i].child.is_some() {
            bail!(
                "node {} still runs; stop it before wiping its data",
                self.nodes[i].name
            );
        }
        let via = self.nodes[via].address.clone();
        let node = &mut self.nodes[i];
        if node.data_dir.exists() {
            std::fs::remove_dir_all(&node.data_dir)
                .with_context(|| format!("cannot wipe {}", node.data_dir.display()))?;
        }
        node.bootstrap = vec!["--join".into(), via];
        Ok(())
    }

    /// Starts node `i` (no-op if it runs).
    pub fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[i];
        if node.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log_path)
            .with_context(|| format!("cannot open {}", node.log_path.display()))?;
        let mut command = match &node.host {
            Some(host) if !host.launcher.is_empty() => {
                let mut c = Command::new(&host.launcher[0]);
                c.args(&host.launcher[1..]).arg(&self.paddockd);
                c
            }
            _ => Command::new(&self.paddockd),
        };
        let data_dir = node
            .host
            .as_ref()
            .and_then(|h| h.data_dir_inside.clone())
            .unwrap_or_else(|| node.data_dir.clone());
        let host_args = node
            .host
            .as_ref()
            .map(|h| h.args.clone())
            .unwrap_or_default();
        let child = command
            .arg("--name")
            .arg(&node.name)
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--listen")
            .arg(&node.address)
            .arg("--http")
            .arg(&node.http)
            .arg("--api")
            .arg(&node.api)
            .arg("--certs-dir")
            .arg(&self.certs.dir)
            .args(&node.bootstrap)
            .args(&node.extra_args)
            .args(&host_args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Each node is a "host": its own process group, so its VMs (memvm guest processes)
            // die with it on kill -9 and stop with it on SIGSTOP.
            .process_group(0)
            .spawn()
            .with_context(|| format!("cannot start {}", self.paddockd.display()))?;
        node.child = Some(child);
        Ok(())
    }

    pub fn start_all(&mut self) -> anyhow::Result<()> {
        (0..self.nodes.len()).try_for_each(|i| self.start(i))
    }

    /// `kill -9` node `i` with its VMs (the whole host dies) and reap it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            signal_group(&child, rustix::process::Signal::KILL);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `kill -9` only node `i`'s paddockd: its VMs keep running, as when the daemon crashes
    /// on a real host.
    pub fn kill_daemon(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` to node `i`'s paddockd alone (not its process group).
    pub fn signal_daemon(&self, i: usize, signal: rustix::process::Signal) {
        if let Some(child) = &self.nodes[i].child {
            if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
                let _ = rustix::process::kill_process(pid, signal);
            }
        }
    }

    /// Sends `signal` to node `i`'s whole process group (paddockd and its VMs).
    pub fn signal_host(&self, i: usize, signal: rustix::process::Signal) {
        if let Some(child) = &self.nodes[i].child {
            signal_group(child, signal);
        }
    }

    /// SIGTERM node `i` and wait up to `grace` for it to exit (then kill it). Returns whether
    /// it exited by itself.
    pub fn terminate(&mut self, i: usize, grace: Duration) -> bool {
        let Some(mut child) = self.nodes[i].child.take() else {
            return true;
        };
        if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
        let started = Instant::now();
        while started.elapsed() < grace {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    pub fn is_running(&mut self, i: usize) -> bool {
        match self.nodes[i].child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The index of the node named `name`.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.address.clone()).collect()
    }

    /// A client of the whole cluster, as the local admin.
    pub fn client(&self, deadline: Duration) -> anyhow::Result<Client> {
        self.client_of(self.endpoints(), deadline)
    }

    pub fn client_of(&self, endpoints: Vec<String>, deadline: Duration) -> anyhow::Result<Client> {
        let tls = self.certs.client_tls(ADMIN, CLIENT_HINT)?;
        Ok(Client::new(&endpoints, tls, deadline)?)
    }

    /// Node `i`'s own view of the cluster.
    pub async fn status_of(&self, i: usize) -> anyhow::Result<ClusterStatus> {
        let mut client =
            self.client_of(vec![self.nodes[i].address.clone()], Duration::from_secs(2))?;
        let status = client.status(true).await?;
        Ok(status)
    }

    /// Waits until the running nodes agree on one leader; returns its index.
    pub async fn wait_for_leader(&mut self, timeout: Duration) -> anyhow::Result<usize> {
        let started = Instant::now();
        loop {
            let mut leaders = BTreeMap::new();
            let mut running = 0;
            for i in 0..self.nodes.len() {
                if !self.is_running(i) {
                    continue;
                }
                running += 1;
                if let Ok(status) = self.status_of(i).await {
                    if !status.leader.is_empty() {
                        *leaders.entry(status.leader).or_insert(0) += 1;
                    }
                }
            }
            if let Some((leader, votes)) = leaders.iter().max_by_key(|(_, v)| **v) {
                if *votes == running && leaders.len() == 1 {
                    if let Some(i) = self.nodes.iter().position(|n| &n.name == leader) {
                        if self.is_running(i) {
                            return Ok(i);
                        }
                    }
                }
            }
            if started.elapsed() > timeout {
                // Tests delete their directories on failure: the logs' ends go with the error.
                bail!(
                    "no leader agreed on by all running nodes within {timeout:?} (seen: {leaders:?}); see the node logs in {}{}",
                    self.dir.display(),
                    self.log_tails(12)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last `lines` lines of every node's log, for error messages.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            let text = std::fs::read_to_string(&node.log_path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(lines).collect();
            out.push_str(&format!(
                "\n--- {} ({}running), last lines of {}:",
                node.name,
                if node.child.is_some() { "" } else { "not " },
                node.log_path.display()
            ));
            for line in tail.into_iter().rev() {
                out.push_str("\n  ");
                out.push_str(line);
            }
        }
        out
    }

    /// Stops every node: SIGTERM, then kill after a grace period; then their VMs.
    pub fn stop_all(&mut self) {
        for i in 0..self.nodes.len() {
            let group = self.nodes[i].child.as_ref().map(|c| c.id());
            self.terminate(i, Duration::from_secs(5));
            if let Some(group) = group {
                kill_group(group, rustix::process::Signal::KILL);
            }
        }
    }
}

/// Signals the process group led by `child` (every node runs in its own group).
fn signal_group(child: &Child, signal: rustix::process::Signal) {
    kill_group(child.id(), signal);
}

/// Signals process group `group`.
pub fn kill_group(group: u32, signal: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(group as i32) {
        let _ = rustix::process::kill_process_group(pid, signal);
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                signal_group(&child, rustix::process::Signal::KILL);
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
